//! `compile()`: a snapshot of Kubernetes objects in, an immutable routing configuration
//! and a list of diagnostics out.
//!
//! All Ingress semantics live here: class selection, host and path precedence, merging
//! of several Ingresses on one host, backend resolution through Services to
//! EndpointSlices. The functions are pure: no I/O, no clock, no async runtime. A bad
//! object never fails the table; it becomes a [`Diagnostic`] and everything else serves.
//!
//! It is not: a watcher (see `kingress-sources`), nor a data plane (see `kingress-proxy`).
//!
//! # Layout
//! - [`class`]: which Ingresses are ours (spec.ingressClassName, the legacy annotation,
//!   the default IngressClass, `--watch-ingress-without-class`).
//! - [`routes`]: Ingresses and Services into a [`Config`]; [`RouteCache`] reuses each
//!   unchanged Ingress's own compile between compiles.
//! - [`policy`]: balancing and retry settings from the ConfigMap and annotations.
//! - [`endpoints`]: Services and EndpointSlices into an [`EndpointTable`]; kept apart so
//!   endpoint churn is compiled (and published) without touching the routes;
//!   [`EndpointCache`] recompiles only the Services whose objects changed.
//! - [`l4`]: ServiceLB ports, tcp/udp-services and SSL passthrough hosts into an
//!   [`L4Table`](kingress_model::L4Table).

pub mod class;
pub mod endpoints;
pub mod l4;
pub mod policy;
pub mod routes;
mod validate;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kingress_model::{Config, Diagnostic, EndpointTable, ObjectRef};

pub use class::ClassOptions;
pub use endpoints::{EndpointCache, compile_endpoints};
pub use l4::{L4Options, compile_l4};
pub use policy::{ANNOTATION_PREFIX, PolicyDefaults, parse_config_map_ref};
pub use routes::{RouteCache, compile_routes};

/// The Kubernetes objects kingress reads, as the sources decoded them. Order does not
/// matter: compile sorts what it needs to be deterministic.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub ingress_classes: Vec<IngressClass>,
    pub ingresses: Vec<Ingress>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Only `kubernetes.io/tls` Secrets matter; TLS termination reads them.
    pub secrets: Vec<Secret>,
    /// Read for the controller ConfigMap (`--configmap`) and, later, tcp/udp-services.
    pub config_maps: Vec<ConfigMap>,
}

/// The controller settings compile needs.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    pub class: ClassOptions,
    /// `--configmap NAMESPACE/NAME`: the controller-wide settings (load-balance, ...).
    pub config_map: Option<(String, String)>,
    /// Defaults from flags, under the ConfigMap's.
    pub defaults: PolicyDefaults,
    /// What the L4 table is built from (ServiceLB mode, tcp/udp-services, passthrough).
    pub l4: L4Options,
}

/// What [`compile`] produces.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub config: Config,
    pub endpoints: EndpointTable,
    /// Sorted, without duplicates.
    pub diagnostics: Vec<Diagnostic>,
}

/// Compiles a whole snapshot: routes and endpoints.
pub fn compile(snapshot: &Snapshot, options: &CompileOptions) -> Compiled {
    let (config, mut diagnostics) = compile_routes(snapshot, options);
    let (endpoints, endpoint_diagnostics) = compile_endpoints(snapshot);
    diagnostics.extend(endpoint_diagnostics);
    diagnostics.sort();
    diagnostics.dedup();
    Compiled {
        config,
        endpoints,
        diagnostics,
    }
}

/// The Ingresses of our class, oldest first (creationTimestamp, then namespace/name;
/// objects without a timestamp, as in a folder of manifests, first): the order in which
/// they claim hosts and paths, for routes and certificates alike.
pub fn ours_oldest_first<'a>(snapshot: &'a Snapshot, class: &ClassOptions) -> Vec<&'a Ingress> {
    let filter = class::ClassFilter::new(class, &snapshot.ingress_classes);
    let mut ingresses: Vec<&Ingress> = snapshot.ingresses.iter().filter(|i| filter.is_ours(i)).collect();
    ingresses.sort_by(|a, b| {
        let key = |i: &'a Ingress| {
            (
                i.metadata.creation_timestamp.as_ref(),
                namespace_of(&i.metadata),
                i.metadata.name.as_deref(),
            )
        };
        key(a).cmp(&key(b))
    });
    ingresses
}

/// An object's identity within its kind: its namespace and name as written (empty when
/// missing). Watch events name objects this way; incremental compiles key on it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of(meta: &ObjectMeta) -> Self {
        Self::new(
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }

    /// Orders metadata as `ObjectKey::of` would, without building the keys.
    pub fn cmp_meta(a: &ObjectMeta, b: &ObjectMeta) -> std::cmp::Ordering {
        meta_key(a).cmp(&meta_key(b))
    }

    /// Orders an object's metadata against this key.
    pub fn cmp_to(&self, meta: &ObjectMeta) -> std::cmp::Ordering {
        (self.namespace.as_str(), self.name.as_str()).cmp(&meta_key(meta))
    }
}

fn meta_key(meta: &ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// `Kind namespace/name` of an object's metadata; a missing name reads `<unnamed>`.
pub(crate) fn object_ref(kind: &str, meta: &ObjectMeta) -> ObjectRef {
    ObjectRef::new(
        kind,
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_else(|| "<unnamed>".to_string()),
    )
}

/// The namespace objects without one live in, as `kubectl apply` would place them.
pub const DEFAULT_NAMESPACE: &str = "default";

pub(crate) fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE)
}

#[cfg(test)]
mod tests;
