//! Services and EndpointSlices into an [`EndpointTable`].
//!
//! Every TCP port of every valid Service gets an entry `namespace/service:port`, even with
//! no endpoint (then it answers 503); every UDP port one keyed `namespace/service:udp:port`
//! (for the L4 plane). The endpoints of a Service port are those of the
//! EndpointSlices labelled `kubernetes.io/service-name: <service>` in the same namespace,
//! from the slice port whose name equals the Service port's name (the slice carries the
//! resolved target port number). An endpoint serves unless `conditions.ready` is false
//! or `conditions.terminating` is true, as kube-proxy and ingress-nginx read them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kingress_model::{BackendId, Diagnostic, EndpointSet, EndpointTable, udp_backend};

use crate::routes::{ServiceIndex, port_key_for};
use crate::validate::{Protocol, ValidService, validate_service};
use crate::{ObjectKey, Snapshot, namespace_of, object_ref};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Builds the endpoint table from Services and EndpointSlices.
pub fn compile_endpoints(snapshot: &Snapshot) -> (EndpointTable, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    // Invalid Services are reported by compile_routes, which reruns whenever Services
    // change; here they are only skipped.
    let services = ServiceIndex::build(snapshot, &mut Vec::new());

    // (namespace, service) -> (slice port name, protocol) -> addresses
    let mut by_service: HashMap<ServiceKey, PortAddrs> = HashMap::new();
    for slice in &snapshot.endpoint_slices {
        match slice_addresses(slice) {
            Ok(Some((service, ports))) => {
                let entry = by_service
                    .entry((namespace_of(&slice.metadata).to_string(), service))
                    .or_default();
                for (k, mut addrs) in ports {
                    entry.entry(k).or_default().append(&mut addrs);
                }
            }
            Ok(None) => {}
            Err(reason) => diagnostics.push(Diagnostic::object(
                object_ref("EndpointSlice", &slice.metadata),
                format!("invalid, skipped: {reason}"),
            )),
        }
    }

    let mut table = EndpointTable::new();
    for (key, svc) in services.iter() {
        let ports = by_service.get(key);
        let entries = service_entries(key, svc, |name, protocol| {
            ports
                .and_then(|m| m.get(&(name.to_string(), protocol)))
                .cloned()
                .unwrap_or_default()
        });
        for (id, set) in entries {
            table.insert(id, set);
        }
    }
    diagnostics.sort();
    (table, diagnostics)
}

/// `(namespace, service)`: the Service and the EndpointSlices labelled with its name.
type ServiceKey = (String, String);
/// A slice's ready addresses per (slice port name, protocol).
type PortAddrs = HashMap<(String, Protocol), Vec<SocketAddr>>;

/// The endpoint table, kept up to date one object at a time: a change recompiles only
/// the Service it belongs to (its own Service, or the one its slice is labelled with),
/// so an EndpointSlice event costs work in proportion to that Service, not to every
/// endpoint. Filled with a whole snapshot it builds the table [`compile_endpoints`]
/// builds (a test compares the two after every step of a sequence of changes); both
/// make a Service's entries with the same function.
///
/// Objects are known by [`ObjectKey`]: a second object under the same key replaces the
/// first, as on the API server. The table keeps the `Arc` of every backend whose set did
/// not change, so the balancer can carry its state over without looking at it.
#[derive(Debug, Default)]
pub struct EndpointCache {
    groups: HashMap<ServiceKey, Group>,
    /// The group each slice contributes to, to take it out again on change or delete.
    slice_groups: HashMap<ObjectKey, ServiceKey>,
    /// Invalid slices, skipped.
    slice_diagnostics: BTreeMap<ObjectKey, Diagnostic>,
    /// Groups changed since the table was last brought up to date.
    dirty: HashSet<ServiceKey>,
    table: EndpointTable,
}

/// One Service and its slices.
#[derive(Debug, Default)]
struct Group {
    /// `None` while the Service is missing or invalid (its backends are then absent).
    service: Option<ValidService>,
    slices: HashMap<ObjectKey, PortAddrs>,
    /// The backends this group put in the table.
    ids: Vec<BackendId>,
}

impl EndpointCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every Service and EndpointSlice of a snapshot.
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        let mut cache = Self::new();
        for svc in &snapshot.services {
            cache.set_service(&ObjectKey::of(&svc.metadata), Some(svc));
        }
        for slice in &snapshot.endpoint_slices {
            cache.set_slice(&ObjectKey::of(&slice.metadata), Some(slice));
        }
        cache
    }

    /// The Service under `key` is now `svc` (`None`: deleted).
    pub fn set_service(&mut self, key: &ObjectKey, svc: Option<&Service>) {
        // Invalid Services are reported by compile_routes, which reruns whenever Services
        // change; here they are only skipped.
        let group = (group_namespace(&key.namespace).to_string(), key.name.clone());
        let service = svc.and_then(|s| validate_service(s).ok());
        if service.is_none() && !self.groups.contains_key(&group) {
            return;
        }
        self.groups.entry(group.clone()).or_default().service = service;
        self.dirty.insert(group);
    }

    /// The EndpointSlice under `key` is now `slice` (`None`: deleted).
    pub fn set_slice(&mut self, key: &ObjectKey, slice: Option<&EndpointSlice>) {
        if let Some(old) = self.slice_groups.remove(key) {
            if let Some(g) = self.groups.get_mut(&old) {
                g.slices.remove(key);
            }
            self.dirty.insert(old);
        }
        self.slice_diagnostics.remove(key);
        let Some(slice) = slice else {
            return;
        };
        match slice_addresses(slice) {
            Ok(Some((service, ports))) => {
                let group = (namespace_of(&slice.metadata).to_string(), service);
                self.groups
                    .entry(group.clone())
                    .or_default()
                    .slices
                    .insert(key.clone(), ports);
                self.slice_groups.insert(key.clone(), group.clone());
                self.dirty.insert(group);
            }
            Ok(None) => {}
            Err(reason) => {
                let d = Diagnostic::object(
                    object_ref("EndpointSlice", &slice.metadata),
                    format!("invalid, skipped: {reason}"),
                );
                self.slice_diagnostics.insert(key.clone(), d);
            }
        }
    }

    /// The table, after recompiling the Services changed since the last call.
    pub fn table(&mut self) -> &EndpointTable {
        for key in std::mem::take(&mut self.dirty) {
            self.rebuild(key);
        }
        &self.table
    }

    /// The invalid EndpointSlices, sorted.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut d: Vec<Diagnostic> = self.slice_diagnostics.values().cloned().collect();
        d.sort();
        d
    }

    fn rebuild(&mut self, key: ServiceKey) {
        let Some(group) = self.groups.get_mut(&key) else {
            return;
        };
        let mut old: HashMap<BackendId, Arc<EndpointSet>> = HashMap::new();
        for id in group.ids.drain(..) {
            if let Some(set) = self.table.remove(&id) {
                old.insert(id, set);
            }
        }
        if let Some(svc) = &group.service {
            let slices = &group.slices;
            let entries = service_entries(&key, svc, |name, protocol| {
                let k = (name.to_string(), protocol);
                slices
                    .values()
                    .filter_map(|ports| ports.get(&k))
                    .flatten()
                    .copied()
                    .collect()
            });
            for (id, set) in entries {
                // An unchanged set keeps its Arc: the balancer then keeps its state as is.
                let set = match old.remove(&id) {
                    Some(previous) if *previous == set => previous,
                    _ => Arc::new(set),
                };
                group.ids.push(id.clone());
                self.table.insert_shared(id, set);
            }
        }
        if group.service.is_none() && group.slices.is_empty() {
            self.groups.remove(&key);
        }
    }
}

/// The table entries of one Service: every TCP port gets one, even with no endpoint
/// (then it answers 503). `addrs(port name, protocol)` gives the slices' addresses for
/// the slice port of that name.
fn service_entries(
    key: &ServiceKey,
    svc: &ValidService,
    addrs: impl Fn(&str, Protocol) -> Vec<SocketAddr>,
) -> Vec<(BackendId, EndpointSet)> {
    let mut entries = Vec::new();
    if svc.external_name.is_some() {
        return entries;
    }
    for p in &svc.ports {
        let id = match p.protocol {
            Protocol::Tcp => port_key_for(key, p.port),
            // Only the L4 plane (ServiceLB, udp-services) forwards UDP.
            Protocol::Udp => udp_backend(group_namespace(&key.0), &key.1, p.port),
            Protocol::Sctp => continue,
        };
        entries.push((id, EndpointSet::new(addrs(&p.name, p.protocol))));
    }
    entries
}

/// The namespace a Service key names, as [`namespace_of`] reads it from metadata.
fn group_namespace(ns: &str) -> &str {
    if ns.is_empty() { crate::DEFAULT_NAMESPACE } else { ns }
}

/// The service a slice belongs to and its ready addresses per (port name, protocol).
/// `Ok(None)` for slices that belong to no Service (no label) or carry FQDN addresses.
#[allow(clippy::type_complexity)]
fn slice_addresses(
    slice: &EndpointSlice,
) -> Result<Option<(String, HashMap<(String, Protocol), Vec<SocketAddr>>)>, String> {
    let Some(service) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|s| !s.is_empty())
    else {
        return Ok(None);
    };
    match slice.address_type.as_str() {
        "IPv4" | "IPv6" => {}
        "FQDN" => return Ok(None),
        other => return Err(format!("addressType {other:?} is not one of IPv4, IPv6, FQDN")),
    }
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let Some(number) = p.port else {
            continue; // "all ports": not usable without a number
        };
        let number = match u16::try_from(number) {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("ports[{i}].port {number} is not between 1 and 65535")),
        };
        let protocol = Protocol::parse(p.protocol.as_deref())
            .ok_or_else(|| format!("ports[{i}].protocol {:?} is not one of TCP, UDP, SCTP", p.protocol))?;
        ports.push((p.name.clone().unwrap_or_default(), protocol, number));
    }
    let mut out: HashMap<(String, Protocol), Vec<SocketAddr>> = HashMap::new();
    for (j, ep) in slice.endpoints.iter().enumerate() {
        let conditions = ep.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready) != Some(false);
        let terminating = conditions.and_then(|c| c.terminating) == Some(true);
        if !ready || terminating {
            continue;
        }
        for (k, raw) in ep.addresses.iter().enumerate() {
            let ip: IpAddr = raw
                .parse()
                .map_err(|_| format!("endpoints[{j}].addresses[{k}] {raw:?} is not an IP address"))?;
            for (name, protocol, number) in &ports {
                out.entry((name.clone(), *protocol))
                    .or_default()
                    .push(SocketAddr::new(ip, *number));
            }
        }
    }
    Ok(Some((service.clone(), out)))
}
