//! Kubernetes mode: the API server as a source, and what a production ingress controller
//! writes back.
//!
//! - [`source`]: one kube-runtime watcher and reflector store per kind (IngressClass,
//!   Ingress, Service, EndpointSlice, kubernetes.io/tls Secrets, the controller
//!   ConfigMap) feeding the same [`Snapshot`](kingress_compile::Snapshot) the manifest
//!   folder feeds. Nothing is published until every kind has finished its first list;
//!   after that an unreachable API server never empties what serves: the stores keep the
//!   last state and the watchers resume (from their resourceVersion, or by relisting on
//!   410 Gone) with jittered backoff.
//! - [`status`]: the leader writes `status.loadBalancer.ingress` of the Ingresses it serves.
//! - [`events`]: new diagnostics become Warning Events on their objects.
//! - [`election`]: leader election on a Lease, so one replica writes status and Events.
//! - [`client`]: a kube client from `--kubeconfig`, `$KUBECONFIG`, `~/.kube/config`, or
//!   the in-cluster service account.

pub mod client;
pub mod election;
pub mod events;
pub mod service_status;
pub mod source;
pub mod status;

pub use client::client;
pub use election::{Election, ElectionOptions, Leadership};
pub use events::{EventPublisher, EventSink};
pub use service_status::{ServedServices, ServiceStatusOptions, ServiceStatusWriter};
pub use source::{KubeOptions, KubeSource, Stores};
pub use status::{StatusOptions, StatusWriter};
