//! [`L4Table`]: the TCP/UDP ports kingress forwards without reading HTTP, and the hosts
//! whose TLS connections it passes through unterminated.
//!
//! Three inputs compile into it (see `kingress-compile`'s `l4` module):
//! - ServiceLB mode (`--l4-services`): every port of every Service of type LoadBalancer
//!   (what k3s's svclb pods claim with iptables);
//! - ingress-nginx's tcp-services / udp-services ConfigMaps;
//! - Ingresses with `nginx.ingress.kubernetes.io/ssl-passthrough: "true"`
//!   (`--enable-ssl-passthrough`): their hosts, chosen by SNI on the HTTPS port.
//!
//! The table is published on its own atomic swap: the L4 listener manager opens and
//! closes ports to match it, and every new connection reads its route from the current
//! generation, so a Service whose endpoints or PROXY setting change needs no rebind.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::config::BackendId;
use crate::diag::ObjectRef;

/// The transport of an L4 port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for L4Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            L4Protocol::Tcp => "TCP",
            L4Protocol::Udp => "UDP",
        })
    }
}

/// A listening port: protocol and number. The bind address is the controller's
/// (`--l4-bind`), the same for every port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct L4Port {
    pub protocol: L4Protocol,
    pub port: u16,
}

impl L4Port {
    pub fn tcp(port: u16) -> Self {
        Self {
            protocol: L4Protocol::Tcp,
            port,
        }
    }

    pub fn udp(port: u16) -> Self {
        Self {
            protocol: L4Protocol::Udp,
            port,
        }
    }
}

impl fmt::Display for L4Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// The PROXY protocol version kingress writes to a backend before the client's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProxyVersion {
    /// The text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

impl ProxyVersion {
    /// `v1` or `v2`, as the annotation and /debug/config write it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        }
    }
}

/// Where an L4 route came from, for logs, diagnostics and /debug/config.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct L4Source {
    /// The Service (ServiceLB mode), the tcp/udp-services ConfigMap, or the Ingress
    /// (passthrough).
    pub object: ObjectRef,
    /// What in it: the Service port's name or number, the ConfigMap key, the host.
    pub detail: String,
}

/// What one L4 port (or passthrough host) forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4Route {
    /// The endpoints key: the same table the HTTP routes use. UDP Service ports are keyed
    /// [`udp_backend`].
    pub backend: BackendId,
    pub source: L4Source,
    /// Read a PROXY protocol header (v1 or v2) from each client first, and take the
    /// client address from it (tcp-services' first `PROXY` field).
    pub accept_proxy: bool,
    /// Write a PROXY protocol header to the backend first (tcp-services' second `PROXY`
    /// field: v1; the Service annotation `kingress.io/proxy-protocol: v1|v2`).
    pub send_proxy: Option<ProxyVersion>,
}

/// The endpoints key of a UDP Service port (TCP ports use `namespace/service:port`, the
/// key HTTP routes use).
pub fn udp_backend(namespace: &str, service: &str, port: u16) -> BackendId {
    BackendId::new(namespace, service, &format!("udp:{port}"))
}

/// The L4 ports and the SSL passthrough hosts of one generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L4Table {
    ports: BTreeMap<L4Port, Arc<L4Route>>,
    /// Lowercase host names (exact match on the SNI) to their backend.
    passthrough: HashMap<String, Arc<L4Route>>,
}

impl L4Table {
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims `port` for `route`. The first claim wins: returns the route that already
    /// holds the port, leaving it in place, when there is one.
    pub fn claim(&mut self, port: L4Port, route: L4Route) -> Result<(), Arc<L4Route>> {
        match self.ports.get(&port) {
            Some(holder) => Err(holder.clone()),
            None => {
                self.ports.insert(port, Arc::new(route));
                Ok(())
            }
        }
    }

    pub fn port(&self, port: &L4Port) -> Option<&Arc<L4Route>> {
        self.ports.get(port)
    }

    /// Every port, in (protocol, number) order.
    pub fn ports(&self) -> impl Iterator<Item = (&L4Port, &Arc<L4Route>)> {
        self.ports.iter()
    }

    /// Claims a passthrough host (lowercased). The first claim wins, as for ports.
    pub fn claim_passthrough(&mut self, host: &str, route: L4Route) -> Result<(), Arc<L4Route>> {
        let host = host.to_ascii_lowercase();
        match self.passthrough.get(&host) {
            Some(holder) => Err(holder.clone()),
            None => {
                self.passthrough.insert(host, Arc::new(route));
                Ok(())
            }
        }
    }

    /// The passthrough route for an SNI host name, if any (case-insensitive).
    pub fn passthrough(&self, sni: &str) -> Option<&Arc<L4Route>> {
        if self.passthrough.is_empty() {
            return None;
        }
        if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            self.passthrough.get(&sni.to_ascii_lowercase())
        } else {
            self.passthrough.get(sni)
        }
    }

    pub fn has_passthrough(&self) -> bool {
        !self.passthrough.is_empty()
    }

    /// Every passthrough host, sorted.
    pub fn passthrough_hosts(&self) -> Vec<(&str, &Arc<L4Route>)> {
        let mut v: Vec<(&str, &Arc<L4Route>)> = self.passthrough.iter().map(|(h, r)| (h.as_str(), r)).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.passthrough.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(svc: &str) -> L4Route {
        L4Route {
            backend: BackendId::new("ns", svc, "80"),
            source: L4Source {
                object: ObjectRef::new("Service", "ns", svc),
                detail: "80".into(),
            },
            accept_proxy: false,
            send_proxy: None,
        }
    }

    #[test]
    fn first_claim_keeps_the_port_and_protocols_are_separate() {
        let mut t = L4Table::new();
        assert!(t.claim(L4Port::tcp(53), route("a")).is_ok());
        let holder = t.claim(L4Port::tcp(53), route("b")).err().map(|r| r.backend.clone());
        assert_eq!(holder, Some(BackendId::new("ns", "a", "80")));
        assert!(t.claim(L4Port::udp(53), route("b")).is_ok());
        let ports: Vec<String> = t.ports().map(|(p, _)| p.to_string()).collect();
        assert_eq!(ports, vec!["53/TCP", "53/UDP"]);
    }

    #[test]
    fn passthrough_hosts_match_case_insensitively() {
        let mut t = L4Table::new();
        assert!(!t.has_passthrough());
        assert!(t.claim_passthrough("Secure.Example.com", route("a")).is_ok());
        assert!(t.claim_passthrough("secure.example.com", route("b")).is_err());
        assert!(t.passthrough("SECURE.example.COM").is_some());
        assert!(t.passthrough("other.example.com").is_none());
        assert_eq!(udp_backend("ns", "dns", 53).as_str(), "ns/dns:udp:53");
    }
}
