//! Services and EndpointSlices into an [`EndpointTable`].
//!
//! Every TCP port of every valid Service gets an entry `namespace/service:port`, even with
//! no endpoint (then it answers 503); every UDP port one keyed `namespace/service:udp:port`
//! (for the L4 plane). The endpoints of a Service port are those of the
//! EndpointSlices labelled `kubernetes.io/service-name: <service>` in the same namespace,
//! from the slice port whose name equals the Service port's name (the slice carries the
//! resolved target port number). An endpoint serves unless `conditions.ready` is false
//! or `conditions.terminating` is true, as kube-proxy and ingress-nginx read them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kingress_model::{Diagnostic, EndpointSet, EndpointTable, udp_backend};

use crate::routes::{ServiceIndex, port_key_for};
use crate::validate::Protocol;
use crate::{Snapshot, namespace_of, object_ref};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Builds the endpoint table from Services and EndpointSlices.
pub fn compile_endpoints(snapshot: &Snapshot) -> (EndpointTable, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    // Invalid Services are reported by compile_routes, which reruns whenever Services
    // change; here they are only skipped.
    let services = ServiceIndex::build(snapshot, &mut Vec::new());

    // (namespace, service) -> (slice port name, protocol) -> addresses
    type PortAddrs = HashMap<(String, Protocol), Vec<SocketAddr>>;
    let mut by_service: HashMap<(String, String), PortAddrs> = HashMap::new();
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
        if svc.external_name.is_some() {
            continue;
        }
        let ports = by_service.get(key);
        for p in &svc.ports {
            let id = match p.protocol {
                Protocol::Tcp => port_key_for(key, p.port),
                // Only L4 (ServiceLB, udp-services) forwards UDP.
                Protocol::Udp => udp_backend(&key.0, &key.1, p.port),
                Protocol::Sctp => continue,
            };
            let addrs = ports
                .and_then(|m| m.get(&(p.name.clone(), p.protocol)))
                .cloned()
                .unwrap_or_default();
            table.insert(id, EndpointSet::new(addrs));
        }
    }
    (table, diagnostics)
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
