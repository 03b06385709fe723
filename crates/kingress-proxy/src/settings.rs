//! Data-plane settings. Defaults are ingress-nginx's.

use std::time::Duration;

use kingress_balance::HealthPolicy;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySettings {
    /// `proxy-connect-timeout`: 5 s.
    pub connect_timeout: Duration,
    /// `proxy-read-timeout`: 60 s between two reads from the upstream.
    pub read_timeout: Duration,
    /// `proxy-send-timeout`: 60 s between two writes to the upstream.
    pub send_timeout: Duration,
    /// `proxy-body-size` (client_max_body_size): 1 MiB; `None` for no limit.
    pub max_body_bytes: Option<u64>,
    /// How long an idle pooled upstream connection is kept (`upstream-keepalive-timeout`).
    pub upstream_idle_timeout: Duration,
    /// Idle connections kept per upstream pool (`upstream-keepalive-connections`-like).
    pub upstream_pool_size: usize,
    /// How long `serve` waits for open connections to finish once shutdown starts.
    pub shutdown_grace: Duration,
    /// Passive outlier ejection of endpoints that keep failing.
    pub health: HealthPolicy,
    /// The HTTPS port put in ssl-redirect Locations (`--https-redirect-port`); `None` or
    /// 443: no port in the URL.
    pub https_redirect_port: Option<u16>,
    /// How long a TLS handshake may take, waiting for a slot included.
    pub tls_handshake_timeout: Duration,
    /// TLS handshakes in progress at most, per listener.
    pub max_tls_handshakes: usize,
    /// How long a client has to send its whole PROXY header (ingress-nginx: 5 s), when the
    /// routing table says one comes first (`use-proxy-protocol`).
    pub proxy_protocol_header_timeout: Duration,
    /// A passthrough connection with no byte either way for this long is closed
    /// (`proxy-stream-timeout`, 600 s).
    pub passthrough_idle_timeout: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_body_bytes: Some(1024 * 1024),
            upstream_idle_timeout: Duration::from_secs(60),
            upstream_pool_size: 1024,
            shutdown_grace: Duration::from_secs(4),
            health: HealthPolicy::default(),
            https_redirect_port: None,
            tls_handshake_timeout: Duration::from_secs(10),
            max_tls_handshakes: 256,
            proxy_protocol_header_timeout: Duration::from_secs(5),
            passthrough_idle_timeout: Duration::from_secs(600),
        }
    }
}
