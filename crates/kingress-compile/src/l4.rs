//! The L4 table: ServiceLB ports, ingress-nginx's tcp/udp-services ConfigMaps, and SSL
//! passthrough hosts, into an [`L4Table`].
//!
//! Claims, in this order; the first claim of a port (protocol and number) keeps it and
//! every later one gets a diagnostic:
//! 1. the ports of kingress's own listeners (`--http-listen`, `--https-listen`): never
//!    given to a Service;
//! 2. the tcp-services, then the udp-services ConfigMap, by port number (the operator's
//!    explicit word);
//! 3. ServiceLB mode (`--l4-services`): every port of every Service of type LoadBalancer
//!    whose `spec.loadBalancerClass` is unset or `--l4-class`, oldest Service first (as
//!    k3s's ServiceLB leaves the second claimant's svclb pod Pending).
//!
//! The controller's own Service (`--publish-service`) is skipped quietly in ServiceLB
//! mode: its ports are kingress's HTTP and HTTPS listeners already.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kingress_model::host::HostPattern;
use kingress_model::{
    BackendId, Diagnostic, L4Port, L4Protocol, L4Route, L4Source, L4Table, ObjectRef, ProxyVersion, udp_backend,
};

use crate::policy::ANNOTATION_PREFIX;
use crate::routes::{ServiceIndex, port_key_for};
use crate::validate::{PortRef, Protocol, ServiceRef, validate_ingress};
use crate::{CompileOptions, Snapshot, namespace_of, object_ref, ours_oldest_first};

/// The Service annotation that makes kingress write a PROXY protocol header (`v1` or
/// `v2`) to the Service's endpoints, on ServiceLB ports and tcp-services entries alike.
pub const PROXY_PROTOCOL_ANNOTATION: &str = "kingress.io/proxy-protocol";

/// The Service annotation that makes a ServiceLB port read a PROXY protocol header
/// (v1 or v2) from each client first (`"true"`), for a port behind another load balancer.
pub const ACCEPT_PROXY_PROTOCOL_ANNOTATION: &str = "kingress.io/accept-proxy-protocol";

/// What the L4 table is built from.
#[derive(Clone, Debug, Default)]
pub struct L4Options {
    /// `--l4-services`: claim the ports of LoadBalancer Services.
    pub service_lb: bool,
    /// `--l4-class`: also claim Services whose `spec.loadBalancerClass` is this.
    pub class: Option<String>,
    /// `--tcp-services-configmap NAMESPACE/NAME`.
    pub tcp_services: Option<(String, String)>,
    /// `--udp-services-configmap NAMESPACE/NAME`.
    pub udp_services: Option<(String, String)>,
    /// `--enable-ssl-passthrough`.
    pub ssl_passthrough: bool,
    /// Ports kingress listens on itself, with what they are (`HTTP listener`).
    pub reserved: Vec<(L4Port, String)>,
    /// `--publish-service`: kingress's own Service, not claimed in ServiceLB mode.
    pub own_service: Option<(String, String)>,
}

/// Builds the L4 table. Never fails: problems are diagnostics.
pub fn compile_l4(snapshot: &Snapshot, options: &CompileOptions) -> (L4Table, Vec<Diagnostic>) {
    let l4 = &options.l4;
    let mut diagnostics = Vec::new();
    let mut table = L4Table::new();
    let passthrough_key = format!("{ANNOTATION_PREFIX}{SSL_PASSTHROUGH_ANNOTATION}");
    let any_passthrough = snapshot.ingresses.iter().any(|i| {
        i.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(&passthrough_key))
    });
    // Nothing asks for L4: no work per route change (at 10,000 Ingresses and Services
    // the index below costs milliseconds).
    if !l4.service_lb && l4.tcp_services.is_none() && l4.udp_services.is_none() && !any_passthrough {
        return (table, diagnostics);
    }
    let services = ServiceIndex::build(snapshot, &mut Vec::new());
    let mut reserved: BTreeMap<L4Port, &str> = BTreeMap::new();
    for (port, what) in &l4.reserved {
        reserved.entry(*port).or_insert(what.as_str());
    }

    let claim = |table: &mut L4Table, port: L4Port, route: L4Route, diagnostics: &mut Vec<Diagnostic>| {
        if let Some(what) = reserved.get(&port) {
            diagnostics.push(Diagnostic::object(
                route.source.object.clone(),
                format!(
                    "{}: port {port} is kingress's own {what}; not forwarded",
                    route.source.detail
                ),
            ));
            return;
        }
        let object = route.source.object.clone();
        let detail = route.source.detail.clone();
        if let Err(holder) = table.claim(port, route) {
            diagnostics.push(Diagnostic::object(
                object,
                format!(
                    "{detail}: port {port} is already claimed by {} ({}); not forwarded while it is",
                    holder.source.object, holder.source.detail
                ),
            ));
        }
    };

    for (which, protocol) in [(&l4.tcp_services, L4Protocol::Tcp), (&l4.udp_services, L4Protocol::Udp)] {
        let Some((namespace, name)) = which else { continue };
        let found = snapshot
            .config_maps
            .iter()
            .find(|cm| namespace_of(&cm.metadata) == namespace && cm.metadata.name.as_deref() == Some(name.as_str()));
        let Some(cm) = found else {
            let flag = match protocol {
                L4Protocol::Tcp => "--tcp-services-configmap",
                L4Protocol::Udp => "--udp-services-configmap",
            };
            diagnostics.push(Diagnostic::object(
                ObjectRef::new("ConfigMap", namespace.as_str(), name.as_str()),
                format!("the {flag} ConfigMap does not exist; no {protocol} services from it"),
            ));
            continue;
        };
        for (port, route) in services_config_map(cm, protocol, snapshot, &services, &mut diagnostics) {
            claim(&mut table, port, route, &mut diagnostics);
        }
    }

    if l4.service_lb {
        let mut lbs: Vec<&Service> = snapshot
            .services
            .iter()
            .filter(|s| is_service_lb(s, l4.class.as_deref()))
            .collect();
        lbs.sort_by(|a, b| claim_order(a).cmp(&claim_order(b)));
        for svc in lbs {
            let namespace = namespace_of(&svc.metadata);
            let name = svc.metadata.name.as_deref().unwrap_or_default();
            if l4
                .own_service
                .as_ref()
                .is_some_and(|(ns, n)| ns == namespace && n == name)
            {
                continue;
            }
            let object = object_ref("Service", &svc.metadata);
            let key = (namespace.to_string(), name.to_string());
            let Some(valid) = services.get(&key) else {
                continue; // invalid: compile_routes reports it
            };
            let (send_proxy, accept_proxy, problems) = service_proxy_settings(svc);
            for p in problems {
                diagnostics.push(Diagnostic::object(object.clone(), p));
            }
            for p in &valid.ports {
                let detail = if p.name.is_empty() {
                    format!("port {}", p.port)
                } else {
                    format!("port {} ({})", p.port, p.name)
                };
                let (port, backend) = match p.protocol {
                    Protocol::Tcp => (L4Port::tcp(p.port), port_key_for(&key, p.port)),
                    Protocol::Udp => (L4Port::udp(p.port), udp_backend(namespace, name, p.port)),
                    Protocol::Sctp => {
                        diagnostics.push(Diagnostic::object(
                            object.clone(),
                            format!("{detail}: SCTP is not supported; not forwarded"),
                        ));
                        continue;
                    }
                };
                let route = L4Route {
                    backend,
                    source: L4Source {
                        object: object.clone(),
                        detail,
                    },
                    accept_proxy,
                    send_proxy: if p.protocol == Protocol::Tcp { send_proxy } else { None },
                };
                claim(&mut table, port, route, &mut diagnostics);
            }
        }
    }

    if any_passthrough {
        passthrough(
            snapshot,
            options,
            &passthrough_key,
            &services,
            &mut table,
            &mut diagnostics,
        );
    }
    (table, diagnostics)
}

/// Oldest first (creationTimestamp, then namespace/name), by borrowed keys: nothing is
/// allocated per comparison.
fn claim_order(s: &Service) -> (Option<&Time>, &str, Option<&str>) {
    (
        s.metadata.creation_timestamp.as_ref(),
        namespace_of(&s.metadata),
        s.metadata.name.as_deref(),
    )
}

/// A Service ServiceLB would serve: type LoadBalancer, no class or ours.
fn is_service_lb(svc: &Service, class: Option<&str>) -> bool {
    let Some(spec) = svc.spec.as_ref() else { return false };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return false;
    }
    match spec.load_balancer_class.as_deref() {
        None | Some("") => true,
        Some(c) => class == Some(c),
    }
}

/// The Service's PROXY annotations: (send, accept, problems).
fn service_proxy_settings(svc: &Service) -> (Option<ProxyVersion>, bool, Vec<String>) {
    let annotations = svc.metadata.annotations.as_ref();
    let get = |k: &str| annotations.and_then(|a| a.get(k)).map(|v| v.trim());
    let mut problems = Vec::new();
    let send = match get(PROXY_PROTOCOL_ANNOTATION) {
        None | Some("") => None,
        Some(v) if v.eq_ignore_ascii_case("v1") => Some(ProxyVersion::V1),
        Some(v) if v.eq_ignore_ascii_case("v2") => Some(ProxyVersion::V2),
        Some(other) => {
            problems.push(format!(
                "{PROXY_PROTOCOL_ANNOTATION}: {other:?} is not v1 or v2; ignored"
            ));
            None
        }
    };
    let mut accept = false;
    crate::policy::read_bool(
        get(ACCEPT_PROXY_PROTOCOL_ANNOTATION),
        ACCEPT_PROXY_PROTOCOL_ANNOTATION,
        &mut accept,
        &mut problems,
    );
    (send, accept, problems)
}

/// The entries of a tcp-services or udp-services ConfigMap:
/// `"PORT": "NAMESPACE/SERVICE:PORT[:PROXY][:PROXY]"`. The service port is a number or a
/// name; the first `PROXY` decodes a PROXY header from clients, the second sends one (v1)
/// to the backend (v2 with the Service's [`PROXY_PROTOCOL_ANNOTATION`]).
fn services_config_map(
    cm: &ConfigMap,
    protocol: L4Protocol,
    snapshot: &Snapshot,
    services: &ServiceIndex,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<(L4Port, L4Route)> {
    let object = object_ref("ConfigMap", &cm.metadata);
    let mut out = Vec::new();
    for (key, value) in cm.data.iter().flatten() {
        let mut problem = |reason: String| {
            diagnostics.push(Diagnostic::object(
                object.clone(),
                format!("{key:?}: {reason}; entry skipped"),
            ))
        };
        let port = match key.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                problem("the key is not a port number between 1 and 65535".to_string());
                continue;
            }
        };
        let entry = match parse_entry(value) {
            Ok(e) => e,
            Err(reason) => {
                problem(reason);
                continue;
            }
        };
        if protocol == L4Protocol::Udp && (entry.decode_proxy || entry.encode_proxy) {
            problem("PROXY protocol applies to TCP only".to_string());
            continue;
        }
        let svc_key = (entry.namespace.clone(), entry.service.name.clone());
        let svc_object = snapshot.services.iter().find(|s| {
            namespace_of(&s.metadata) == entry.namespace && s.metadata.name.as_deref() == Some(&entry.service.name)
        });
        let annotation_proxy = svc_object.map(service_proxy_settings).and_then(|(send, _, _)| send);
        let backend = match services.port_of(&svc_key, &entry.service.port, protocol_of(protocol)) {
            Ok(number) => match protocol {
                L4Protocol::Tcp => port_key_for(&svc_key, number),
                L4Protocol::Udp => udp_backend(&entry.namespace, &entry.service.name, number),
            },
            Err(reason) => {
                diagnostics.push(Diagnostic::object(
                    object.clone(),
                    format!("{key:?}: {reason}; the port stays open and refuses connections until it resolves"),
                ));
                BackendId::new(
                    &entry.namespace,
                    &entry.service.name,
                    &format!("unresolved:{}", entry.service.port.as_key()),
                )
            }
        };
        let send_proxy = match (entry.encode_proxy, annotation_proxy) {
            (_, Some(v)) => Some(v),
            (true, None) => Some(ProxyVersion::V1),
            (false, None) => None,
        };
        out.push((
            L4Port { protocol, port },
            L4Route {
                backend,
                source: L4Source {
                    object: object.clone(),
                    detail: format!("{key}: {}", value.trim()),
                },
                accept_proxy: entry.decode_proxy,
                send_proxy,
            },
        ));
    }
    out
}

fn protocol_of(p: L4Protocol) -> Protocol {
    match p {
        L4Protocol::Tcp => Protocol::Tcp,
        L4Protocol::Udp => Protocol::Udp,
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    namespace: String,
    service: ServiceRef,
    decode_proxy: bool,
    encode_proxy: bool,
}

/// `NAMESPACE/SERVICE:PORT[:PROXY][:PROXY]`, as ingress-nginx reads it.
fn parse_entry(value: &str) -> Result<Entry, String> {
    let parts: Vec<&str> = value.trim().split(':').collect();
    let (Some(target), Some(port)) = (parts.first(), parts.get(1)) else {
        return Err(format!("{value:?} is not NAMESPACE/SERVICE:PORT[:PROXY][:PROXY]"));
    };
    if parts.len() > 4 {
        return Err(format!("{value:?} has more than four ':'-separated fields"));
    }
    let Some((namespace, service)) = target.split_once('/') else {
        return Err(format!("{target:?} is not NAMESPACE/SERVICE"));
    };
    if namespace.is_empty() || service.is_empty() || service.contains('/') {
        return Err(format!("{target:?} is not NAMESPACE/SERVICE"));
    }
    let port = match port.parse::<u16>() {
        Ok(0) => return Err("service port 0 is not valid".to_string()),
        Ok(n) => PortRef::Number(n),
        Err(_) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            PortRef::Name(port.to_string())
        }
        Err(_) => return Err(format!("service port {port:?} is not a number or a port name")),
    };
    let flag = |i: usize| -> Result<bool, String> {
        match parts.get(i).copied() {
            None | Some("") => Ok(false),
            Some("PROXY") => Ok(true),
            Some(other) => Err(format!("field {} is {other:?}: only PROXY or nothing", i + 1)),
        }
    };
    Ok(Entry {
        namespace: namespace.to_string(),
        service: ServiceRef {
            name: service.to_string(),
            port,
        },
        decode_proxy: flag(2)?,
        encode_proxy: flag(3)?,
    })
}

/// The ssl-passthrough annotation.
pub const SSL_PASSTHROUGH_ANNOTATION: &str = "ssl-passthrough";

/// SSL passthrough: the hosts of our Ingresses annotated `ssl-passthrough: "true"`,
/// oldest Ingress first, each to the backend of its rule's `/` path (else its first
/// path, else the Ingress's default backend), as ingress-nginx picks it.
fn passthrough(
    snapshot: &Snapshot,
    options: &CompileOptions,
    key: &str,
    services: &ServiceIndex,
    table: &mut L4Table,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let wants = |ing: &Ingress| {
        ing.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .is_some_and(|v| v.trim() == "true")
    };
    for ing in ours_oldest_first(snapshot, &options.class) {
        if !wants(ing) {
            continue;
        }
        let object = object_ref("Ingress", &ing.metadata);
        if !options.l4.ssl_passthrough {
            diagnostics.push(Diagnostic::object(
                object,
                format!("{key} needs --enable-ssl-passthrough; TLS to its hosts is terminated as usual"),
            ));
            continue;
        }
        let Ok(valid) = validate_ingress(ing) else {
            continue; // reported by compile_routes
        };
        let namespace = namespace_of(&ing.metadata);
        for rule in &valid.rules {
            let Some(host) = rule.host.as_ref() else {
                diagnostics.push(Diagnostic::object(
                    object.clone(),
                    "ssl-passthrough: a rule without a host cannot be chosen by SNI; skipped",
                ));
                continue;
            };
            let host = match host {
                HostPattern::Exact(h) => h.clone(),
                HostPattern::Wildcard(_) => {
                    diagnostics.push(Diagnostic::object(
                        object.clone(),
                        format!(
                            "ssl-passthrough: wildcard host {:?} is not supported (exact SNI only); skipped",
                            host.as_rule()
                        ),
                    ));
                    continue;
                }
            };
            let chosen = rule
                .paths
                .iter()
                .find(|p| p.path == "/")
                .or_else(|| rule.paths.first())
                .map(|p| &p.backend)
                .or(valid.default_backend.as_ref());
            let Some(backend) = chosen else { continue };
            let (id, why) = services.resolve(namespace, backend);
            if let Some(why) = why {
                diagnostics.push(Diagnostic::object(
                    object.clone(),
                    format!("ssl-passthrough {host}: {why}"),
                ));
            }
            let route = L4Route {
                backend: id,
                source: L4Source {
                    object: object.clone(),
                    detail: host.clone(),
                },
                accept_proxy: false,
                send_proxy: None,
            };
            if let Err(holder) = table.claim_passthrough(&host, route) {
                diagnostics.push(Diagnostic::object(
                    object.clone(),
                    format!(
                        "ssl-passthrough: host {host} is already passed through by {}",
                        holder.source.object
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;
