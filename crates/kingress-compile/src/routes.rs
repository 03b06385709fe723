//! Ingresses (and the Services they name) into a routing [`Config`].
//!
//! Ingresses are applied oldest first (creationTimestamp, then namespace/name; objects
//! without a timestamp, as in a folder of manifests, sort before all others and among
//! themselves by namespace/name). The first Ingress to claim a (host, path, pathType)
//! keeps it; a later one gets a diagnostic for that path and serves the rest.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::Ingress;
use kingress_model::host::HostPattern;
use kingress_model::{BackendId, Config, ConfigBuilder, Diagnostic, Route, RouteSource};

use crate::policy::{ANNOTATION_PREFIX, controller_defaults, ingress_policy, read_bool};
use crate::validate::{PortRef, Protocol, ServiceRef, ValidService, validate_ingress, validate_service};
use crate::{CompileOptions, Snapshot, namespace_of, object_ref, ours_oldest_first};

/// Services by (namespace, name), checked once per compile.
pub(crate) struct ServiceIndex {
    valid: HashMap<(String, String), ValidService>,
    rejected: HashSet<(String, String)>,
}

impl ServiceIndex {
    pub(crate) fn build(snapshot: &Snapshot, diagnostics: &mut Vec<Diagnostic>) -> Self {
        let mut valid = HashMap::new();
        let mut rejected = HashSet::new();
        for svc in &snapshot.services {
            let key = (
                namespace_of(&svc.metadata).to_string(),
                svc.metadata.name.clone().unwrap_or_default(),
            );
            match validate_service(svc) {
                Ok(v) => {
                    valid.insert(key, v);
                }
                Err(errors) => {
                    diagnostics.push(Diagnostic::object(
                        object_ref("Service", &svc.metadata),
                        format!("invalid, skipped: {}", errors.join("; ")),
                    ));
                    rejected.insert(key);
                }
            }
        }
        Self { valid, rejected }
    }

    /// The backend id of `namespace/service:port`, and why it cannot serve (if so).
    fn resolve(&self, namespace: &str, backend: &ServiceRef) -> (BackendId, Option<String>) {
        let key = (namespace.to_string(), backend.name.clone());
        let raw_id = || BackendId::new(namespace, &backend.name, &backend.port.as_key());
        let Some(svc) = self.valid.get(&key) else {
            let why = if self.rejected.contains(&key) {
                format!(
                    "service \"{}\" is invalid (see its diagnostic); its paths answer 503",
                    backend.name
                )
            } else {
                format!(
                    "service \"{}\" not found; its paths answer 503 until it exists",
                    backend.name
                )
            };
            return (raw_id(), Some(why));
        };
        if svc.external_name.is_some() {
            return (
                raw_id(),
                Some(format!(
                    "service \"{}\" is of type ExternalName, which is not supported yet; its paths answer 503",
                    backend.name
                )),
            );
        }
        let found = svc.ports.iter().find(|p| {
            p.protocol == Protocol::Tcp
                && match &backend.port {
                    PortRef::Number(n) => p.port == *n,
                    PortRef::Name(name) => p.name == *name,
                }
        });
        match found {
            Some(p) => (BackendId::new(namespace, &backend.name, &p.port.to_string()), None),
            None => (
                raw_id(),
                Some(format!(
                    "service \"{}\" has no TCP port {}; its paths answer 503",
                    backend.name,
                    match &backend.port {
                        PortRef::Number(n) => n.to_string(),
                        PortRef::Name(n) => format!("named {n:?}"),
                    }
                )),
            ),
        }
    }
}

/// Builds the routing table from the Ingresses of our class.
pub fn compile_routes(snapshot: &Snapshot, options: &CompileOptions) -> (Config, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let services = ServiceIndex::build(snapshot, &mut diagnostics);
    let settings = controller_defaults(
        snapshot,
        options.config_map.as_ref(),
        &options.defaults,
        &mut diagnostics,
    );

    let ingresses = ours_oldest_first(snapshot, &options.class);

    let tls_hosts = TlsHosts::of(&ingresses);
    let mut builder = ConfigBuilder::new();
    builder.set_hsts(settings.hsts.clone());
    for ing in ingresses {
        let mut obj = object_ref("Ingress", &ing.metadata);
        let namespace = namespace_of(&ing.metadata).to_string();
        obj.namespace = namespace.clone();
        let valid = match validate_ingress(ing) {
            Ok(v) => v,
            Err(errors) => {
                diagnostics.push(Diagnostic::object(
                    obj,
                    format!("invalid, skipped: {}", errors.join("; ")),
                ));
                continue;
            }
        };
        for w in &valid.warnings {
            diagnostics.push(Diagnostic::object(obj.clone(), w.clone()));
        }
        let (policy, mut problems) = ingress_policy(ing.metadata.annotations.as_ref(), &settings.policy);
        let (mut ssl_redirect, mut force_ssl_redirect) = (settings.ssl_redirect, settings.force_ssl_redirect);
        for (key, slot) in [
            ("ssl-redirect", &mut ssl_redirect),
            ("force-ssl-redirect", &mut force_ssl_redirect),
        ] {
            let value = ing
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(&format!("{ANNOTATION_PREFIX}{key}")))
                .map(String::as_str);
            let mut bad = Vec::new();
            read_bool(value, key, slot, &mut bad);
            problems.extend(bad.into_iter().map(|p| format!("annotation {ANNOTATION_PREFIX}{p}")));
        }
        for p in problems {
            diagnostics.push(Diagnostic::object(obj.clone(), p));
        }
        let policy = Arc::new(policy);
        let redirect_for = |host: &str| force_ssl_redirect || (ssl_redirect && tls_hosts.covers(host));
        let mut route_for = |backend: &ServiceRef, host: &str, path: &str, path_type| {
            let (id, problem) = services.resolve(&namespace, backend);
            if let Some(problem) = problem {
                diagnostics.push(Diagnostic::object(obj.clone(), problem));
            }
            Arc::new(Route {
                backend: id,
                source: RouteSource {
                    ingress: obj.clone(),
                    host: host.to_string(),
                    path: path.to_string(),
                    path_type,
                },
                policy: policy.clone(),
                https_redirect: redirect_for(host),
            })
        };

        let default_route = valid.default_backend.as_ref().map(|b| route_for(b, "", "", None));
        let mut conflicts = Vec::new();
        // With no rules, the defaultBackend is the catch-all: it answers every host
        // without a server of its own.
        if let (Some(default_route), true) = (&default_route, valid.rules.is_empty())
            && let Err(r) = builder.set_default_backend(None, default_route.clone())
        {
            conflicts.push(default_conflict(&builder, None, &r));
        }
        for rule in &valid.rules {
            let host = rule.host.as_ref();
            let host_text = host.map(HostPattern::as_rule).unwrap_or_default();
            builder.ensure_server(host);
            if let Some(default_route) = &default_route
                && let Err(r) = builder.set_default_backend(host, default_route.clone())
            {
                conflicts.push(default_conflict(&builder, host, &r));
            }
            for p in &rule.paths {
                let route = route_for(&p.backend, &host_text, &p.path, Some(p.path_type));
                if let Err(route) = builder.add_path(host, &p.path, p.path_type, route) {
                    let owner = builder
                        .path_owner(host, &p.path, p.path_type)
                        .map(|r| r.source.ingress.clone());
                    let owner = match owner {
                        Some(o) if o == obj => "an earlier path of this Ingress".to_string(),
                        Some(o) => format!("{o} (older)"),
                        None => "another Ingress".to_string(),
                    };
                    conflicts.push(Some(format!(
                        "path {:?} ({}) on host {:?} is already served by {owner}; this path is ignored",
                        p.path,
                        p.path_type.as_str(),
                        display_host(&route.source.host),
                    )));
                }
            }
        }
        for c in conflicts.into_iter().flatten() {
            diagnostics.push(Diagnostic::object(obj.clone(), c));
        }
    }
    (builder.build(), diagnostics)
}

/// A second default backend for a server: a diagnostic only when it names another backend.
fn default_conflict(builder: &ConfigBuilder, host: Option<&HostPattern>, rejected: &Route) -> Option<String> {
    let current = builder.default_backend(host)?;
    if current.backend == rejected.backend {
        return None;
    }
    let host_text = host.map(HostPattern::as_rule).unwrap_or_default();
    Some(format!(
        "defaultBackend for host {:?} is already set by {} (older) to {}; this one is ignored",
        display_host(&host_text),
        current.source.ingress,
        current.backend
    ))
}

fn display_host(h: &str) -> &str {
    if h.is_empty() { "*" } else { h }
}

pub(crate) fn port_key_for(ns_name: &(String, String), port: u16) -> BackendId {
    BackendId::new(&ns_name.0, &ns_name.1, &port.to_string())
}

/// The hosts our Ingresses list under `spec.tls` (lowercased, as written): a server with
/// TLS, whose plain-HTTP requests are redirected (ingress-nginx's `ssl-redirect`).
struct TlsHosts(HashSet<String>);

impl TlsHosts {
    fn of(ingresses: &[&Ingress]) -> Self {
        let hosts = ingresses
            .iter()
            .filter_map(|i| i.spec.as_ref()?.tls.as_ref())
            .flatten()
            .filter_map(|t| t.hosts.as_ref())
            .flatten()
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .collect();
        Self(hosts)
    }

    /// Whether a rule host (as written; "" for none) has TLS: listed itself, or covered
    /// by a listed single-label wildcard.
    fn covers(&self, host: &str) -> bool {
        if host.is_empty() {
            return false;
        }
        let host = host.to_ascii_lowercase();
        if self.0.contains(&host) {
            return true;
        }
        match host.split_once('.') {
            Some((first, rest)) if first != "*" => self.0.contains(&format!("*.{rest}")),
            _ => false,
        }
    }
}
