//! ServiceLB status: in ServiceLB mode (`--l4-services`) the leader writes
//! `status.loadBalancer.ingress` of every LoadBalancer Service whose ports kingress
//! serves, as k3s's ServiceLB does, so `kubectl get svc` shows an EXTERNAL-IP and
//! controllers waiting for one proceed.
//!
//! The addresses are `--publish-status-address` when given; otherwise the addresses of the
//! nodes the kingress pods run on (this pod's siblings: the pods of its namespace with
//! its labels, less the per-revision ones), each node's ExternalIP, else its InternalIP.
//! A Service kingress stops serving has the status it wrote cleared.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Pod, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::election::Leadership;
use crate::source::Stores;
use crate::status::status_addresses;

/// Labels that differ between two replicas of one DaemonSet or Deployment.
const PER_REVISION_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
];

/// The Services (namespace, name) whose ports kingress serves now.
pub type ServedServices = Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>;

#[derive(Clone, Debug, Default)]
pub struct ServiceStatusOptions {
    /// `--publish-status-address`: wins over the node addresses.
    pub publish_status_address: Vec<String>,
    /// This pod (POD_NAMESPACE, POD_NAME), to find the nodes kingress runs on.
    pub pod: Option<(String, String)>,
    /// `--update-status-on-shutdown`: the leader clears what it wrote when it stops.
    pub update_on_shutdown: bool,
}

pub struct ServiceStatusWriter {
    task: JoinHandle<()>,
    client: Client,
    stores: Stores,
    served: ServedServices,
    leadership: Arc<Leadership>,
    options: ServiceStatusOptions,
    written: Arc<Mutex<BTreeSet<(String, String)>>>,
}

impl Drop for ServiceStatusWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const RECHECK: Duration = Duration::from_secs(30);

impl ServiceStatusWriter {
    /// Follows every publish (`published`) and leadership change, and re-checks every 30 s
    /// (a node's address can change without any object we watch changing).
    pub fn start(
        client: Client,
        stores: Stores,
        served: ServedServices,
        published: Arc<Notify>,
        leadership: Arc<Leadership>,
        options: ServiceStatusOptions,
    ) -> Self {
        let written = Arc::new(Mutex::new(BTreeSet::new()));
        let task = tokio::spawn({
            let (client, stores, served, leadership, options, written) = (
                client.clone(),
                stores.clone(),
                served.clone(),
                leadership.clone(),
                options.clone(),
                written.clone(),
            );
            async move {
                loop {
                    if leadership.is_leader() {
                        let desired = addresses(&client, &options).await;
                        sync(&client, &stores, &served(), desired.as_deref(), &written).await;
                    }
                    tokio::select! {
                        _ = published.notified() => {}
                        _ = leadership.changed() => {}
                        _ = tokio::time::sleep(RECHECK) => {}
                    }
                }
            }
        });
        Self {
            task,
            client,
            stores,
            served,
            leadership,
            options,
            written,
        }
    }

    /// Stops; with `--update-status-on-shutdown`, the leader first clears the status of
    /// the Services it serves.
    pub async fn shutdown(self) {
        self.task.abort();
        if self.options.update_on_shutdown && self.leadership.is_leader() {
            sync(&self.client, &self.stores, &(self.served)(), Some(&[]), &self.written).await;
        }
    }
}

/// Writes `desired` to every served Service whose status differs, and clears the status
/// of the Services written before that are no longer served. `None`: no address known
/// yet, nothing is written.
async fn sync(
    client: &Client,
    stores: &Stores,
    served: &[(String, String)],
    desired: Option<&[LoadBalancerIngress]>,
    written: &Mutex<BTreeSet<(String, String)>>,
) {
    let Some(desired) = desired else { return };
    let served: BTreeSet<(String, String)> = served.iter().cloned().collect();
    let before: BTreeSet<(String, String)> = written.lock().map(|w| w.clone()).unwrap_or_default();
    let targets = served
        .iter()
        .map(|k| (k, desired))
        .chain(before.difference(&served).map(|k| (k, &[] as &[LoadBalancerIngress])));
    for ((ns, name), want) in targets {
        let at = ObjectRef::<Service>::new(name).within(ns);
        let Some(svc) = stores.services.get(&at) else {
            continue; // gone: nothing to write
        };
        if current(&svc) == want {
            continue;
        }
        let api: Api<Service> = Api::namespaced(client.clone(), ns);
        let patch = json!({"status": {"loadBalancer": {"ingress": want}}});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::debug!(service = %format!("{ns}/{name}"), "service status updated"),
            // Tried again on the next sync.
            Err(e) => tracing::warn!(service = %format!("{ns}/{name}"), error = %e, "cannot update the Service status"),
        }
    }
    // What kingress serves is what it owns the status of: a Service it stops serving is
    // cleared on the next sync (above) and then forgotten.
    if let Ok(mut w) = written.lock() {
        *w = served;
    }
}

fn current(svc: &Service) -> Vec<LoadBalancerIngress> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
}

/// The addresses to publish, sorted; `None` when none is known.
async fn addresses(client: &Client, options: &ServiceStatusOptions) -> Option<Vec<LoadBalancerIngress>> {
    let raw = if options.publish_status_address.is_empty() {
        let (ns, pod) = options.pod.as_ref()?;
        node_addresses(client, ns, pod).await?
    } else {
        options.publish_status_address.clone()
    };
    let out: Vec<LoadBalancerIngress> = status_addresses(&raw)
        .into_iter()
        .map(|a| LoadBalancerIngress {
            ip: a.ip,
            hostname: a.hostname,
            ..Default::default()
        })
        .collect();
    (!out.is_empty()).then_some(out)
}

/// The ExternalIP (else InternalIP) of every node a running sibling of this pod is on.
async fn node_addresses(client: &Client, ns: &str, pod: &str) -> Option<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let me = match pods.get_opt(pod).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            tracing::debug!(pod = %format!("{ns}/{pod}"), "own pod not found; no Service status without --publish-status-address");
            return None;
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the own pod");
            return None;
        }
    };
    let selector: Vec<String> = me
        .labels()
        .iter()
        .filter(|(k, _)| !PER_REVISION_LABELS.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let siblings = if selector.is_empty() {
        vec![me]
    } else {
        match pods.list(&ListParams::default().labels(&selector.join(","))).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the kingress pods");
                return None;
            }
        }
    };
    let node_names: BTreeSet<String> = siblings
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect();
    let nodes: Api<Node> = Api::all(client.clone());
    let mut out = Vec::new();
    for name in node_names {
        let node = match nodes.get_opt(&name).await {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(node = %name, error = %e, "cannot read the node");
                continue;
            }
        };
        let addrs = node.status.and_then(|s| s.addresses).unwrap_or_default();
        let pick = |kind: &str| addrs.iter().find(|a| a.type_ == kind).map(|a| a.address.clone());
        if let Some(a) = pick("ExternalIP").or_else(|| pick("InternalIP")) {
            out.push(a);
        }
    }
    Some(out)
}
