//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does it: the holder renews `renewTime` every retry period; another replica takes the
//! Lease over once `renewTime + leaseDurationSeconds` has passed. Every write carries the
//! Lease's resourceVersion, so two replicas racing for it cannot both win (the API server
//! answers the loser 409 Conflict). A leader that cannot renew within the renew deadline
//! stops acting as leader before its Lease can expire.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use rand::Rng;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

#[derive(Clone, Debug)]
pub struct ElectionOptions {
    /// The Lease's namespace (POD_NAMESPACE).
    pub namespace: String,
    /// `--election-id`: the Lease's name.
    pub name: String,
    /// This replica (POD_NAME, else the hostname).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl ElectionOptions {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(namespace: String, name: String, identity: String) -> Self {
        Self {
            namespace,
            name,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether this replica leads, and a wake-up when that changes.
#[derive(Debug, Default)]
pub struct Leadership {
    leader: AtomicBool,
    changed: Notify,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn set(&self, leader: bool, identity: &str) {
        if self.leader.swap(leader, Ordering::AcqRel) != leader {
            if leader {
                tracing::info!(%identity, "became the leader");
            } else {
                tracing::info!(%identity, "no longer the leader");
            }
            self.changed.notify_waiters();
        }
    }
}

/// The running election. Dropping it stops campaigning (the Lease then expires).
pub struct Election {
    pub leadership: Arc<Leadership>,
    task: JoinHandle<()>,
    api: Api<Lease>,
    options: ElectionOptions,
}

impl Drop for Election {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Election {
    pub fn start(client: Client, options: ElectionOptions) -> Self {
        let api: Api<Lease> = Api::namespaced(client, &options.namespace);
        let leadership = Arc::new(Leadership::default());
        let task = tokio::spawn(campaign(api.clone(), options.clone(), leadership.clone()));
        Self {
            leadership,
            task,
            api,
            options,
        }
    }

    /// Stops campaigning and, when leading, releases the Lease so another replica takes
    /// over at once instead of waiting for it to expire.
    pub async fn release(self) {
        self.task.abort();
        if !self.leadership.is_leader() {
            return;
        }
        self.leadership.set(false, &self.options.identity);
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.options.name).await {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() == Some(self.options.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                if let Err(e) = self
                    .api
                    .replace(&self.options.name, &PostParams::default(), &lease)
                    .await
                {
                    tracing::debug!(error = %e, "could not release the Lease; it will expire");
                }
            }
        }
    }
}

async fn campaign(api: Api<Lease>, options: ElectionOptions, leadership: Arc<Leadership>) {
    let mut last_renew: Option<Instant> = None;
    loop {
        match try_acquire_or_renew(&api, &options).await {
            Ok(true) => {
                last_renew = Some(Instant::now());
                leadership.set(true, &options.identity);
            }
            Ok(false) => {
                last_renew = None;
                leadership.set(false, &options.identity);
            }
            Err(e) => {
                tracing::debug!(error = %e, "Lease update failed");
                // Keep leading only while the last renewal is within the renew deadline.
                if last_renew.is_none_or(|t| t.elapsed() >= options.renew_deadline) {
                    leadership.set(false, &options.identity);
                }
            }
        }
        let jitter = rand::thread_rng().gen_range(0.0..0.2);
        tokio::time::sleep(options.retry_period.mul_f64(1.0 + jitter)).await;
    }
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// One round: Ok(true) when this replica holds the Lease afterwards.
async fn try_acquire_or_renew(api: &Api<Lease>, options: &ElectionOptions) -> Result<bool, kube::Error> {
    let duration_secs = i32::try_from(options.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&options.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(options.name.clone()),
                namespace: Some(options.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(options.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(micro_now()),
                renew_time: Some(micro_now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let mine = spec.holder_identity.as_deref() == Some(options.identity.as_str());
    let held_by_someone = spec.holder_identity.as_deref().is_some_and(|h| !h.is_empty());
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renewed), Some(secs)) => renewed.0 + SignedDuration::from_secs(i64::from(secs)) < Timestamp::now(),
        _ => true,
    };
    if !mine && held_by_someone && !expired {
        return Ok(false);
    }
    if !mine {
        spec.acquire_time = Some(micro_now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        spec.holder_identity = Some(options.identity.clone());
    }
    spec.renew_time = Some(micro_now());
    spec.lease_duration_seconds = Some(duration_secs);
    // The object carries its resourceVersion: a concurrent writer makes this a 409.
    match api.replace(&options.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
