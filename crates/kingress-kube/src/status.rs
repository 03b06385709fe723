//! Ingress status: the leader writes `status.loadBalancer.ingress` of every Ingress it
//! serves, from `--publish-status-address` or the load-balancer addresses of the
//! `--publish-service` Service, as ingress-nginx does. It follows every published snapshot
//! and leadership change, and re-checks every 30 s (a Service's address can change
//! without an Ingress changing). Only differences are written.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use kingress_compile::ClassOptions;
use kingress_compile::class::ClassFilter;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::election::Leadership;
use crate::source::Stores;

#[derive(Clone, Debug, Default)]
pub struct StatusOptions {
    pub class: ClassOptions,
    /// `--publish-service NAMESPACE/NAME`.
    pub publish_service: Option<(String, String)>,
    /// `--publish-status-address ADDR[,ADDR]`: wins over the Service.
    pub publish_status_address: Vec<String>,
    /// `--update-status-on-shutdown`.
    pub update_on_shutdown: bool,
}

pub struct StatusWriter {
    task: JoinHandle<()>,
    client: Client,
    stores: Stores,
    options: StatusOptions,
    leadership: Arc<Leadership>,
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const RECHECK: Duration = Duration::from_secs(30);

impl StatusWriter {
    pub fn start(
        client: Client,
        stores: Stores,
        published: Arc<Notify>,
        leadership: Arc<Leadership>,
        options: StatusOptions,
    ) -> Self {
        let task = tokio::spawn(run(
            client.clone(),
            stores.clone(),
            published,
            leadership.clone(),
            options.clone(),
        ));
        Self {
            task,
            client,
            stores,
            options,
            leadership,
        }
    }

    /// Stops; with `--update-status-on-shutdown`, the leader first clears the status it
    /// wrote.
    pub async fn shutdown(self) {
        self.task.abort();
        if self.options.update_on_shutdown && self.leadership.is_leader() {
            sync(&self.client, &self.stores, &self.options, Some(Vec::new())).await;
        }
    }
}

async fn run(
    client: Client,
    stores: Stores,
    published: Arc<Notify>,
    leadership: Arc<Leadership>,
    options: StatusOptions,
) {
    loop {
        if leadership.is_leader() {
            sync(&client, &stores, &options, None).await;
        }
        tokio::select! {
            _ = published.notified() => {}
            _ = leadership.changed() => {}
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// Writes `desired` (or the addresses now published) to every Ingress of ours whose
/// status differs.
async fn sync(
    client: &Client,
    stores: &Stores,
    options: &StatusOptions,
    desired: Option<Vec<IngressLoadBalancerIngress>>,
) {
    let desired = match desired {
        Some(d) => d,
        None => match addresses(client, options).await {
            Some(d) => d,
            // Nothing to publish (no flag, or the Service has no address yet).
            None => return,
        },
    };
    let classes: Vec<_> = stores.ingress_classes.state().iter().map(|c| (**c).clone()).collect();
    let filter = ClassFilter::new(&options.class, &classes);
    for ingress in stores.ingresses.state() {
        if !filter.is_ours(&ingress) || current(&ingress) == desired {
            continue;
        }
        let (Some(ns), name) = (ingress.namespace(), ingress.name_any()) else {
            continue;
        };
        let api: Api<Ingress> = Api::namespaced(client.clone(), &ns);
        let patch = json!({"status": {"loadBalancer": {"ingress": desired}}});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::debug!(ingress = %format!("{ns}/{name}"), "status updated"),
            Err(e) => tracing::warn!(ingress = %format!("{ns}/{name}"), error = %e, "cannot update the Ingress status"),
        }
    }
}

fn current(ingress: &Ingress) -> Vec<IngressLoadBalancerIngress> {
    ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
}

/// The addresses to publish, sorted: `--publish-status-address`, else the
/// `--publish-service`'s load-balancer ingress. `None` when there is nothing to publish.
async fn addresses(client: &Client, options: &StatusOptions) -> Option<Vec<IngressLoadBalancerIngress>> {
    let mut out: BTreeMap<String, IngressLoadBalancerIngress> = BTreeMap::new();
    if !options.publish_status_address.is_empty() {
        return Some(
            status_addresses(&options.publish_status_address)
                .into_iter()
                .map(|a| IngressLoadBalancerIngress {
                    ip: a.ip,
                    hostname: a.hostname,
                    ..Default::default()
                })
                .collect(),
        );
    }
    let (ns, name) = options.publish_service.as_ref()?;
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc = match api.get_opt(name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            tracing::debug!(service = %format!("{ns}/{name}"), "--publish-service not found");
            return None;
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the --publish-service Service");
            return None;
        }
    };
    let lb = svc.status.and_then(|s| s.load_balancer).and_then(|lb| lb.ingress)?;
    for i in lb {
        let key = i.ip.clone().or(i.hostname.clone()).unwrap_or_default();
        if key.is_empty() {
            continue;
        }
        out.insert(
            key,
            IngressLoadBalancerIngress {
                ip: i.ip,
                hostname: i.hostname,
                ..Default::default()
            },
        );
    }
    Some(out.into_values().collect())
}

/// A status address: an IP, or else a host name.
pub(crate) struct StatusAddress {
    pub ip: Option<String>,
    pub hostname: Option<String>,
}

/// Addresses as flags and node lists give them, trimmed, sorted, without duplicates or
/// empty ones: IPs as `ip`, anything else as `hostname` (as ingress-nginx writes them).
pub(crate) fn status_addresses<S: AsRef<str>>(raw: &[S]) -> Vec<StatusAddress> {
    let unique: std::collections::BTreeSet<&str> = raw
        .iter()
        .map(|a| a.as_ref().trim())
        .filter(|a| !a.is_empty())
        .collect();
    unique
        .into_iter()
        .map(|a| {
            if a.parse::<IpAddr>().is_ok() {
                StatusAddress {
                    ip: Some(a.to_string()),
                    hostname: None,
                }
            } else {
                StatusAddress {
                    ip: None,
                    hostname: Some(a.to_string()),
                }
            }
        })
        .collect()
}
