//! The L4 data plane: TCP and UDP ports forwarded to endpoints without reading HTTP
//! (ServiceLB parity, ingress-nginx's tcp-services and udp-services).
//!
//! [`L4Manager`] keeps the open listeners equal to the published [`L4Table`]: it binds
//! the ports that appear and closes those that go, letting the connections (and UDP
//! flows) already open on a removed port finish, up to [`L4Settings::drain_timeout`].
//! A port that cannot be bound is a [`Diagnostic`] and is retried.
//!
//! Every new connection or flow reads its route (backend, PROXY protocol flags) from the
//! current table generation and picks its endpoint from the current endpoint table, so
//! endpoint and PROXY changes never rebind a port.
//!
//! # Layout
//! - [`tcp`]: one TCP connection: the optional PROXY header in, the endpoint connect with
//!   retries ([`tcp::connect_endpoint`]), the optional PROXY header out, and the byte relay
//!   ([`tcp::relay`], splice(2) through a pipe, half-close and RST propagated, idle timeout).
//!   SSL passthrough reuses `connect_endpoint` and `relay`.
//! - [`udp`]: one UDP port: a flow per client address, each with its own connected socket
//!   to its endpoint, in a bounded table.
//! - [`manager`]: [`L4Manager`]: binding, closing, draining, retrying.
//!
//! [`L4Table`]: kingress_model::L4Table
//! [`Diagnostic`]: kingress_model::Diagnostic

pub mod manager;
pub mod tcp;
pub mod udp;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

pub use manager::{L4Manager, L4PortStats};
pub use tcp::{ConnectError, RelayMode, Upstream, connect_endpoint, relay, relay_with};

/// Timeouts and limits of the L4 ports, with ingress-nginx's stream defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4Settings {
    /// The address every L4 port is bound on (`--l4-bind`).
    pub bind: IpAddr,
    /// One endpoint connect (`proxy-connect-timeout`, 5 s).
    pub connect_timeout: Duration,
    /// A TCP connection with no byte either way for this long is closed
    /// (`proxy-stream-timeout`, 600 s).
    pub idle_timeout: Duration,
    /// Endpoints tried per connection when connects fail
    /// (`proxy-stream-next-upstream-tries`, 3).
    pub connect_tries: u32,
    /// A UDP flow with no datagram either way for this long ends.
    pub udp_idle_timeout: Duration,
    /// Flows per UDP port; when full, the least recently active flow is evicted.
    pub max_udp_flows: usize,
    /// How long the connections and flows of a removed port may go on (`--l4-drain-timeout`).
    pub drain_timeout: Duration,
    /// How often a port that could not be bound is tried again.
    pub bind_retry: Duration,
    /// How long a client has to send its whole PROXY header (ports that expect one).
    pub proxy_header_timeout: Duration,
    /// splice(2) (default) or a userspace copy.
    pub relay: tcp::RelayMode,
}

impl Default for L4Settings {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            connect_tries: 3,
            udp_idle_timeout: Duration::from_secs(30),
            max_udp_flows: 16384,
            drain_timeout: Duration::from_secs(30),
            bind_retry: Duration::from_secs(1),
            proxy_header_timeout: Duration::from_secs(5),
            relay: tcp::RelayMode::Splice,
        }
    }
}
