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
use kingress_model::{BackendId, Config, ConfigBuilder, Diagnostic, ObjectRef, PathType, Route, RouteSource};

use crate::policy::{ANNOTATION_PREFIX, ControllerSettings, controller_defaults, ingress_policy, read_bool};
use crate::validate::{PortRef, Protocol, ServiceRef, ValidService, validate_ingress, validate_service};
use crate::{CompileOptions, Snapshot, namespace_of, object_ref, ours_oldest_first};

/// Services by (namespace, name), checked once per compile.
#[derive(Debug)]
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

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&(String, String), &ValidService)> {
        self.valid.iter()
    }

    pub(crate) fn get(&self, key: &(String, String)) -> Option<&ValidService> {
        self.valid.get(key)
    }

    /// The number of the Service port `port` (by number or name) of `protocol`, or why
    /// there is none.
    pub(crate) fn port_of(&self, key: &(String, String), port: &PortRef, protocol: Protocol) -> Result<u16, String> {
        let Some(svc) = self.valid.get(key) else {
            return Err(if self.rejected.contains(key) {
                format!("service \"{}/{}\" is invalid (see its diagnostic)", key.0, key.1)
            } else {
                format!("service \"{}/{}\" not found", key.0, key.1)
            });
        };
        if svc.external_name.is_some() {
            return Err(format!(
                "service \"{}/{}\" is of type ExternalName, which is not supported",
                key.0, key.1
            ));
        }
        svc.ports
            .iter()
            .find(|p| {
                p.protocol == protocol
                    && match port {
                        PortRef::Number(n) => p.port == *n,
                        PortRef::Name(name) => p.name == *name,
                    }
            })
            .map(|p| p.port)
            .ok_or_else(|| {
                format!(
                    "service \"{}/{}\" has no {} port {}",
                    key.0,
                    key.1,
                    protocol.as_str(),
                    port.as_key()
                )
            })
    }

    /// The backend id of `namespace/service:port`, and why it cannot serve (if so).
    pub(crate) fn resolve(&self, namespace: &str, backend: &ServiceRef) -> (BackendId, Option<String>) {
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

impl Context {
    /// A routing table builder with the controller-wide settings (HSTS, PROXY protocol).
    fn builder(&self) -> ConfigBuilder {
        let mut builder = ConfigBuilder::new();
        builder.set_hsts(self.settings.hsts.clone());
        builder.set_use_proxy_protocol(self.settings.use_proxy_protocol);
        builder
    }
}

/// Builds the routing table from the Ingresses of our class.
pub fn compile_routes(snapshot: &Snapshot, options: &CompileOptions) -> (Config, Vec<Diagnostic>) {
    let ingresses = ours_oldest_first(snapshot, &options.class);
    let context = Context::build(snapshot, options, TlsHosts::of(&ingresses));
    let mut diagnostics = context.diagnostics.clone();
    let mut builder = context.builder();
    for ing in ingresses {
        assemble(&mut builder, &prepare(ing, &context, ""), &mut diagnostics);
    }
    (builder.build(), diagnostics)
}

/// What the Ingresses are compiled against.
#[derive(Debug)]
struct Context {
    services: ServiceIndex,
    settings: ControllerSettings,
    /// From the Services and the ConfigMap, reported on every compile.
    diagnostics: Vec<Diagnostic>,
    tls_hosts: TlsHosts,
}

impl Context {
    fn build(snapshot: &Snapshot, options: &CompileOptions, tls_hosts: TlsHosts) -> Self {
        let mut diagnostics = Vec::new();
        let services = ServiceIndex::build(snapshot, &mut diagnostics);
        let settings = controller_defaults(
            snapshot,
            options.config_map.as_ref(),
            &options.defaults,
            &mut diagnostics,
        );
        Self {
            services,
            settings,
            diagnostics,
            tls_hosts,
        }
    }
}

/// [`compile_routes`] that keeps, between compiles, what each Ingress contributes on
/// its own (validation, policy, its routes with their backends resolved) and redoes only
/// the claims: which Ingress holds each host and path, oldest first, and the conflicts.
/// At 10,000 Ingresses one changed Ingress then costs the ordering and the assembly of
/// the table, not the compile of every Ingress.
///
/// An Ingress is reused while its `metadata.resourceVersion` is the one it was compiled
/// at (the API server changes it on every write); one without a resourceVersion (a
/// manifest folder) is compiled every time. What every Ingress depends on is checked on
/// each compile (the `spec.tls` hosts) or must be announced with [`RouteCache::invalidate`]
/// (Services, the controller ConfigMap). The options must be the same on every compile.
#[derive(Debug, Default)]
pub struct RouteCache {
    context: Option<Context>,
    /// namespace → name → compiled Ingress (nested so a lookup borrows the names).
    ingresses: HashMap<String, HashMap<String, Prepared>>,
    /// Counts compiles; an entry not used by the last one is dropped.
    generation: u64,
}

/// One Ingress, compiled on its own.
#[derive(Debug)]
struct Prepared {
    resource_version: String,
    generation: u64,
    obj: ObjectRef,
    /// Validation, policy and backend problems, in the order compile_routes reports them.
    diagnostics: Vec<Diagnostic>,
    /// `None`: invalid, skipped.
    claims: Option<Claims>,
}

/// A rule's paths: (path, type, route).
type PathRoutes = Vec<(String, PathType, Arc<Route>)>;

#[derive(Debug)]
struct Claims {
    default_route: Option<Arc<Route>>,
    /// Each rule's host and its paths, in the Ingress's order.
    rules: Vec<(Option<HostPattern>, PathRoutes)>,
}

impl RouteCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets every compiled Ingress: to be called when Services or the controller
    /// ConfigMap change.
    pub fn invalidate(&mut self) {
        self.context = None;
        self.ingresses.clear();
    }

    /// The routing table of `snapshot`, as [`compile_routes`] builds it.
    pub fn compile(&mut self, snapshot: &Snapshot, options: &CompileOptions) -> (Config, Vec<Diagnostic>) {
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let ingresses = ours_oldest_first(snapshot, &options.class);
        let tls_hosts = TlsHosts::of(&ingresses);
        let context = match self.context.take() {
            Some(c) if c.tls_hosts == tls_hosts => c,
            Some(c) => {
                // The TLS hosts decide redirects in every route.
                self.ingresses.clear();
                Context { tls_hosts, ..c }
            }
            None => {
                self.ingresses.clear();
                Context::build(snapshot, options, tls_hosts)
            }
        };
        let mut diagnostics = context.diagnostics.clone();
        let mut builder = context.builder();
        for ing in ingresses {
            let namespace = namespace_of(&ing.metadata);
            let name = ing.metadata.name.as_deref().unwrap_or_default();
            let version = ing.metadata.resource_version.as_deref().filter(|v| !v.is_empty());
            let cached = self
                .ingresses
                .get_mut(namespace)
                .and_then(|m| m.get_mut(name))
                .filter(|p| version.is_some_and(|v| v == p.resource_version));
            let prepared = match cached {
                Some(p) => p,
                None => {
                    let p = prepare(ing, &context, version.unwrap_or_default());
                    let slot = self
                        .ingresses
                        .entry(namespace.to_string())
                        .or_default()
                        .entry(name.to_string());
                    match slot {
                        std::collections::hash_map::Entry::Occupied(mut o) => {
                            o.insert(p);
                            o.into_mut()
                        }
                        std::collections::hash_map::Entry::Vacant(v) => v.insert(p),
                    }
                }
            };
            prepared.generation = generation;
            assemble(&mut builder, prepared, &mut diagnostics);
        }
        // Deleted Ingresses, and those no longer ours.
        for by_name in self.ingresses.values_mut() {
            by_name.retain(|_, p| p.generation == generation);
        }
        self.ingresses.retain(|_, m| !m.is_empty());
        self.context = Some(context);
        (builder.build(), diagnostics)
    }
}

/// One Ingress's own part of the compile: everything that does not depend on the
/// other Ingresses.
fn prepare(ing: &Ingress, context: &Context, resource_version: &str) -> Prepared {
    let (services, settings, tls_hosts) = (&context.services, &context.settings, &context.tls_hosts);
    let mut diagnostics = Vec::new();
    let mut obj = object_ref("Ingress", &ing.metadata);
    let namespace = namespace_of(&ing.metadata).to_string();
    obj.namespace = namespace.clone();
    let mut prepared = Prepared {
        resource_version: resource_version.to_string(),
        generation: 0,
        obj: obj.clone(),
        diagnostics: Vec::new(),
        claims: None,
    };
    let valid = match validate_ingress(ing) {
        Ok(v) => v,
        Err(errors) => {
            diagnostics.push(Diagnostic::object(
                obj,
                format!("invalid, skipped: {}", errors.join("; ")),
            ));
            prepared.diagnostics = diagnostics;
            return prepared;
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
    let mut rules = Vec::with_capacity(valid.rules.len());
    for rule in valid.rules {
        let host_text = rule.host.as_ref().map(HostPattern::as_rule).unwrap_or_default();
        let paths = rule
            .paths
            .iter()
            .map(|p| {
                let route = route_for(&p.backend, &host_text, &p.path, Some(p.path_type));
                (p.path.clone(), p.path_type, route)
            })
            .collect();
        rules.push((rule.host, paths));
    }
    prepared.diagnostics = diagnostics;
    prepared.claims = Some(Claims { default_route, rules });
    prepared
}

/// Adds one Ingress's routes to the table: the first to claim a server's default
/// backend or a (host, path, type) keeps it; the later claims are reported.
fn assemble(builder: &mut ConfigBuilder, prepared: &Prepared, diagnostics: &mut Vec<Diagnostic>) {
    diagnostics.extend(prepared.diagnostics.iter().cloned());
    let Some(claims) = &prepared.claims else {
        return;
    };
    let obj = &prepared.obj;
    let mut conflicts = Vec::new();
    // With no rules, the defaultBackend is the catch-all: it answers every host
    // without a server of its own.
    if let (Some(default_route), true) = (&claims.default_route, claims.rules.is_empty())
        && let Err(r) = builder.set_default_backend(None, default_route.clone())
    {
        conflicts.push(default_conflict(builder, None, &r));
    }
    for (host, paths) in &claims.rules {
        let host = host.as_ref();
        builder.ensure_server(host);
        if let Some(default_route) = &claims.default_route
            && let Err(r) = builder.set_default_backend(host, default_route.clone())
        {
            conflicts.push(default_conflict(builder, host, &r));
        }
        for (path, path_type, route) in paths {
            if let Err(route) = builder.add_path(host, path, *path_type, route.clone()) {
                let owner = builder
                    .path_owner(host, path, *path_type)
                    .map(|r| r.source.ingress.clone());
                let owner = match owner {
                    Some(o) if o == *obj => "an earlier path of this Ingress".to_string(),
                    Some(o) => format!("{o} (older)"),
                    None => "another Ingress".to_string(),
                };
                conflicts.push(Some(format!(
                    "path {:?} ({}) on host {:?} is already served by {owner}; this path is ignored",
                    path,
                    path_type.as_str(),
                    display_host(&route.source.host),
                )));
            }
        }
    }
    for c in conflicts.into_iter().flatten() {
        diagnostics.push(Diagnostic::object(obj.clone(), c));
    }
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
#[derive(Debug, PartialEq, Eq)]
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
