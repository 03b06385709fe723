//! The data planes: they only read the published tables.
//!
//! Today the HTTP plane: a pingora [`ProxyHttp`](pingora_proxy::ProxyHttp) implementation
//! ([`http::Gateway`]) driven by our own accept loop ([`listener::serve`]) so listeners can
//! be bound by the caller (port 0 in tests) and shut down with a future. TLS, L4 ports and
//! metrics plug in beside it.
//!
//! # Layout
//! - [`state`]: [`Tables`], the atomically swapped routing table and endpoint table, and
//!   the readiness flag.
//! - [`settings`]: timeouts and limits, with ingress-nginx's defaults.
//! - [`http`]: the request phases: lookup, limits, endpoint pick, the ingress-nginx header
//!   contract, retries, error pages.
//! - `balance`: what a route's balancer reads from a request (hash key, affinity cookie),
//!   the Set-Cookie it answers with, and which failures may move to another endpoint.
//! - [`l4`]: the TCP/UDP ports (ServiceLB, tcp/udp-services): [`l4::L4Manager`] opens and
//!   closes them to match the L4 table; splice relay, UDP flows, PROXY protocol out.
//! - [`listener`]: accept loop with graceful shutdown.
//! - [`errors`]: error pages and the mapping of failures to status codes.
//! - [`proxy_protocol`]: reading and writing HAProxy's PROXY protocol header (v1 and v2).
//! - [`passthrough`]: SSL passthrough: the ClientHello's SNI read without terminating TLS.

mod balance;
pub mod errors;
pub mod http;
pub mod l4;
pub mod listener;
pub mod passthrough;
pub mod proxy_protocol;
pub mod settings;
pub mod state;

pub use http::{Gateway, build_proxy};
pub use kingress_balance::HealthPolicy;
pub use listener::{ListenerOptions, TlsListener, WorkerPool, serve};
pub use settings::ProxySettings;
pub use state::Tables;
