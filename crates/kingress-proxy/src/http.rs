//! The HTTP request phases (pingora `ProxyHttp`).
//!
//! - `request_filter`: load the tables once, look up the route (404 when none), check the
//!   body limit (413), answer 503 when the backend has no ready endpoint; read what the
//!   route's balancer needs (hash key, affinity cookie).
//! - `upstream_peer`: the route's balancer picks among the endpoints not tried yet by
//!   this request (round-robin, EWMA, consistent hash or cookie affinity); the attempt
//!   counts as in flight on that endpoint until the request ends.
//! - `fail_to_connect` / `error_while_proxy`: the failure counts against the endpoint
//!   (passive ejection) and, when `proxy-next-upstream` covers it and tries remain, the
//!   request moves to another endpoint. A request that was already sent moves only if
//!   its method is idempotent (or `non_idempotent` is set) and its body was buffered.
//! - `upstream_response_filter`: the response latency feeds the endpoint's EWMA.
//! - `upstream_request_filter`: the header contract of ingress-nginx (X-Request-ID,
//!   X-Real-IP, X-Forwarded-*, X-Original-Forwarded-For, no `Proxy`).
//! - `response_filter`: `Server: kingress` when the backend sent none; the affinity cookie.
//! - `fail_to_proxy`: our error page, 504 for upstream timeouts, 502 for other upstream
//!   failures.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use kingress_balance::{Balanced, InFlight, Nanos, Pick, Strategy};
use kingress_model::{Balance, Route};
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::{H1UpgradePolicy, HttpPeer, HttpUpstreamRequestPolicy};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, HttpProxy, ProxyHttp, Session};

use crate::balance::{Failure, RequestFacts, classify, cookie, hash_key, policy_covers, set_cookie, with_rng};
use crate::errors::{SERVER, error_page, status_for};
use crate::settings::ProxySettings;
use crate::state::Tables;

/// The HTTP gateway: routing, limits, balancing and the header contract.
pub struct Gateway {
    tables: Arc<Tables>,
    settings: ProxySettings,
}

/// Per-request state, carried across the phases.
#[derive(Default)]
pub struct RequestCtx {
    route: Option<Arc<Route>>,
    /// The endpoint generation this request started with, kept to its end so retries
    /// pick from the same set.
    endpoints: Option<Arc<Balanced>>,
    /// Endpoints already attempted, in order.
    tried: Vec<SocketAddr>,
    /// The attempt in progress: in flight on its endpoint until dropped.
    attempt: Option<Attempt>,
    /// `upstream-hash-by`: the hash of this request's key.
    hash_key: u64,
    /// Cookie affinity: the session cookie the request came with.
    affinity_cookie: Option<String>,
    /// Cookie affinity: the cookie to set on the response.
    set_cookie: Option<String>,
    request_id: String,
    body_bytes: u64,
    /// HTTPS: the Strict-Transport-Security value to add to the response.
    hsts: Option<Arc<str>>,
}

struct Attempt {
    in_flight: InFlight,
    started: Nanos,
    /// The upstream's response header arrived: the attempt succeeded as far as
    /// balancing is concerned, and the request can no longer move.
    answered: bool,
}

impl Gateway {
    pub fn new(tables: Arc<Tables>, settings: ProxySettings) -> Self {
        Self { tables, settings }
    }

    /// Answers with our error page (headers only for HEAD). `keepalive: false` closes
    /// the connection after it (the request body was not read, or the exchange failed).
    async fn respond(&self, session: &mut Session, status: u16, keepalive: bool) -> Result<bool> {
        let (header, body) = error_page(status)?;
        if !keepalive {
            session.set_keepalive(None);
        }
        let head_only = session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(header), head_only).await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }

    /// 308 to `location`, as ingress-nginx's ssl-redirect.
    async fn redirect(&self, session: &mut Session, location: &str) -> Result<bool> {
        let (mut header, body) = error_page(308)?;
        header.insert_header(header::LOCATION, location)?;
        let head_only = session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(header), head_only).await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }

    fn endpoint_count(ctx: &RequestCtx) -> usize {
        match (&ctx.route, &ctx.endpoints) {
            (Some(route), Some(eps)) => eps.endpoints(&route.backend).map_or(0, |s| s.len()),
            _ => 0,
        }
    }

    /// Ends a failed attempt: counts it against the endpoint (when `blame`) and says
    /// whether the route's `proxy-next-upstream` lets the request move on.
    fn end_failed_attempt(&self, ctx: &mut RequestCtx, failure: Failure, blame: bool) -> bool {
        if let (Some(a), Some(eps)) = (ctx.attempt.take(), &ctx.endpoints)
            && blame
        {
            let addr = ctx.tried.last().copied();
            if a.in_flight.stats().record_failure(self.tables.now(), eps.health()) {
                tracing::warn!(endpoint = ?addr, "endpoint ejected after consecutive failures");
            }
        }
        let Some(route) = &ctx.route else { return false };
        let policy = &route.policy.retry;
        let attempts = ctx.tried.len();
        policy_covers(policy, failure)
            && attempts < usize::try_from(policy.tries).unwrap_or(usize::MAX)
            && attempts < Self::endpoint_count(ctx)
    }
}

/// Builds the pingora proxy application around a [`Gateway`].
pub fn build_proxy(tables: Arc<Tables>, settings: ProxySettings) -> Arc<HttpProxy<Gateway>> {
    let conf = ServerConf {
        upstream_keepalive_pool_size: settings.upstream_pool_size,
        ..ServerConf::default()
    };
    let conf = Arc::new(conf);
    let mut proxy = pingora_proxy::http_proxy(&conf, Gateway::new(tables, settings));
    let mut options = HttpServerOptions::default();
    options.h2c = false;
    proxy.server_options = Some(options);
    Arc::new(proxy)
}

/// Certificate issuers (ACME HTTP-01) must reach these over plain HTTP.
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// `https://host[:port]/path?query` for a plain-HTTP request; the port is omitted when
/// it is 443 or unknown.
fn https_location(req: &RequestHeader, port: Option<u16>) -> Option<String> {
    let raw = request_host(req)?;
    let host = kingress_model::host::normalize_request_host(raw)?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    let uri = req.uri.path_and_query().map_or("/", |p| p.as_str());
    Some(match port {
        Some(p) if p != 443 => format!("https://{host}:{p}{uri}"),
        _ => format!("https://{host}{uri}"),
    })
}

fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
}

fn server_port(session: &Session) -> Option<u16> {
    session.server_addr().and_then(|a| a.as_inet()).map(|a| a.port())
}

fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// 32 lowercase hex characters, as nginx's `$request_id`.
fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// All values of a header joined with ", " (how nginx exposes `$http_x_forwarded_for`).
fn joined(req: &RequestHeader, name: &str) -> Option<String> {
    let mut values = req.headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    let mut out = first.to_string();
    for v in values {
        out.push_str(", ");
        out.push_str(v);
    }
    Some(out)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = req
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .unwrap_or_else(new_request_id);

        let config = self.tables.config();
        let route = config.lookup(request_host(req), req.uri.path()).cloned();
        let Some(route) = route else {
            tracing::debug!(host = ?request_host(req), path = req.uri.path(), "no route: 404");
            return self.respond(session, 404, true).await;
        };
        let tls = is_tls(session);
        if tls {
            ctx.hsts = config.hsts().cloned();
        } else if route.https_redirect
            && !req.uri.path().starts_with(ACME_CHALLENGE)
            && let Some(location) = https_location(req, self.settings.https_redirect_port)
        {
            return self.redirect(session, &location).await;
        }

        if let Some(limit) = self.settings.max_body_bytes {
            let declared = req
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_some_and(|len| len > limit) {
                // The body is not read: the connection cannot be reused.
                return self.respond(session, 413, false).await;
            }
        }

        let endpoints = self.tables.endpoints();
        let ready = endpoints.endpoints(&route.backend).is_some_and(|s| !s.is_empty());
        if !ready {
            tracing::debug!(backend = %route.backend, "no ready endpoint: 503");
            return self.respond(session, 503, true).await;
        }
        match &route.policy.balance {
            Balance::Hash(key) => {
                let facts = RequestFacts {
                    req,
                    host: request_host(req),
                    client: client_ip(session),
                    tls: is_tls(session),
                };
                ctx.hash_key = hash_key(&key.parts, &facts);
            }
            Balance::Cookie(c) => ctx.affinity_cookie = cookie(req, &c.name).map(str::to_string),
            Balance::RoundRobin | Balance::Ewma => {}
        }
        ctx.route = Some(route);
        ctx.endpoints = Some(endpoints);
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes = ctx.body_bytes.saturating_add(b.len() as u64);
            if self.settings.max_body_bytes.is_some_and(|limit| ctx.body_bytes > limit) {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body larger than the limit");
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let (Some(route), Some(endpoints)) = (&ctx.route, &ctx.endpoints) else {
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
        };
        let strategy = match &route.policy.balance {
            Balance::RoundRobin => Strategy::RoundRobin,
            Balance::Ewma => Strategy::Ewma,
            Balance::Hash(_) => Strategy::Hash(ctx.hash_key),
            Balance::Cookie(c) => Strategy::Cookie {
                // session-cookie-change-on-failure: a retry starts a new session.
                value: if c.change_on_failure && !ctx.tried.is_empty() {
                    None
                } else {
                    ctx.affinity_cookie.as_deref()
                },
                mode: c.mode,
            },
        };
        let now = self.tables.now();
        let pick = with_rng(|rng| endpoints.pick(&route.backend, strategy, &ctx.tried, now, rng));
        match pick {
            Pick::Endpoint(chosen) => {
                if let (Some(value), Balance::Cookie(c)) = (chosen.cookie, &route.policy.balance) {
                    // A new session takes the cookie of the endpoint that serves it; an
                    // existing one moves only with session-cookie-change-on-failure.
                    if ctx.affinity_cookie.is_none() || ctx.tried.is_empty() || c.change_on_failure {
                        ctx.set_cookie = Some(value);
                    }
                }
                let addr = chosen.addr;
                ctx.tried.push(addr);
                ctx.attempt = Some(Attempt {
                    in_flight: chosen.stats.begin(),
                    started: now,
                    answered: false,
                });
                let protocol = route.policy.protocol;
                // No SNI to backends (an IP address as the name), and their certificate is
                // not verified: ingress-nginx's proxy-ssl-server-name and proxy-ssl-verify off.
                let sni = if protocol.tls() {
                    addr.ip().to_string()
                } else {
                    String::new()
                };
                let mut peer = HttpPeer::new(addr, protocol.tls(), sni);
                let o = &mut peer.options;
                if protocol.tls() {
                    o.verify_cert = false;
                    o.verify_hostname = false;
                }
                if protocol.h2() {
                    // gRPC: HTTP/2 only (h2c with prior knowledge without TLS), many streams
                    // on one connection.
                    o.set_http_version(2, 2);
                    o.max_h2_streams = 100;
                }
                o.connection_timeout = Some(self.settings.connect_timeout);
                o.read_timeout = Some(self.settings.read_timeout);
                o.write_timeout = Some(self.settings.send_timeout);
                o.idle_timeout = Some(self.settings.upstream_idle_timeout);
                o.tcp_keepalive = None;
                // Tunnel every Upgrade (WebSocket and others) as nginx does; the other
                // hop-by-hop fields are still stripped for ordinary requests.
                o.http_upstream_request_policy = HttpUpstreamRequestPolicy {
                    h1_upgrade: H1UpgradePolicy::Preserve,
                    ..HttpUpstreamRequestPolicy::standard()
                };
                Ok(Box::new(peer))
            }
            Pick::NoEndpoint | Pick::UnknownBackend => {
                Error::e_explain(ErrorType::HTTPStatus(503), "no ready endpoint left to try")
            }
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent: any method may move to another endpoint.
        let failure = classify(&e);
        let retry = self.end_failed_attempt(ctx, failure, true);
        tracing::debug!(peer = %peer, attempts = ctx.tried.len(), retry, error = %e, "upstream connect failed");
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let answered = ctx.attempt.as_ref().is_none_or(|a| a.answered);
        let upstream_fault = matches!(e.esource(), pingora_error::ErrorSource::Upstream);
        if answered || !upstream_fault || session.response_written().is_some() {
            // The response has begun (or the client went away): it cannot move.
            e.set_retry(false);
            return e;
        }
        let method_ok = session.req_header().method.is_idempotent()
            || ctx.route.as_ref().is_some_and(|r| r.policy.retry.non_idempotent);
        let body_kept = !session.as_ref().retry_buffer_truncated();
        let failure = classify(&e);
        // A pooled connection the upstream had already closed is not the endpoint's fault.
        let stale = client_reused && failure == Failure::Error;
        let retry = self.end_failed_attempt(ctx, failure, !stale) && method_ok && body_kept;
        tracing::debug!(peer = %peer, attempts = ctx.tried.len(), retry, error = %e, "upstream attempt failed");
        e.set_retry(retry);
        e
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if response.status.is_informational() && response.status != http::StatusCode::SWITCHING_PROTOCOLS {
            return Ok(());
        }
        if let Some(a) = ctx.attempt.as_mut().filter(|a| !a.answered) {
            a.answered = true;
            let now = self.tables.now();
            a.in_flight.observe(now.saturating_sub(a.started), now);
            a.in_flight.stats().record_success();
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let downstream = session.req_header();
        let original_xff = joined(downstream, "x-forwarded-for");
        let forwarded_host = request_host(downstream).map(str::to_string);
        let scheme = if is_tls(session) { "https" } else { "http" };
        let client = client_ip(session).map(|ip| ip.to_string()).unwrap_or_default();
        let port = server_port(session).map(|p| p.to_string()).unwrap_or_default();

        // httpoxy: never pass a client's Proxy header on.
        upstream.remove_header("proxy");
        upstream.remove_header("x-forwarded-for");
        upstream.remove_header("x-original-forwarded-for");

        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        upstream.insert_header("x-real-ip", client.as_str())?;
        upstream.insert_header("x-forwarded-for", client.as_str())?;
        if let Some(host) = forwarded_host {
            upstream.insert_header("x-forwarded-host", host)?;
        }
        upstream.insert_header("x-forwarded-port", port)?;
        upstream.insert_header("x-forwarded-proto", scheme)?;
        upstream.insert_header("x-forwarded-scheme", scheme)?;
        upstream.insert_header("x-scheme", scheme)?;
        if let Some(v) = original_xff.and_then(|xff| HeaderValue::from_str(&xff).ok()) {
            upstream.insert_header("x-original-forwarded-for", v)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if !response.headers.contains_key(header::SERVER) {
            response.insert_header(header::SERVER, SERVER)?;
        }
        if let Some(hsts) = &ctx.hsts
            && !response.headers.contains_key(header::STRICT_TRANSPORT_SECURITY)
        {
            response.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts.as_ref())?;
        }
        if let (Some(value), Some(route)) = (ctx.set_cookie.take(), &ctx.route)
            && let Balance::Cookie(c) = &route.policy.balance
        {
            let line = set_cookie(
                c,
                &value,
                &route.source.path,
                is_tls(session),
                std::time::SystemTime::now(),
            );
            if let Ok(v) = HeaderValue::from_str(&line) {
                response.append_header(header::SET_COOKIE, v)?;
            }
        }
        Ok(())
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        // The request is over: it no longer loads its endpoint.
        ctx.attempt = None;
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let code = status_for(e);
        tracing::debug!(code, error = %e, tried = ?ctx.tried, "request failed");
        if code > 0
            && session.response_written().is_none()
            && let Err(write_error) = self.respond(session, code, false).await
        {
            tracing::debug!(error = %write_error, "could not send the error page");
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // Failures are per request: they are answered and counted, not logged at error.
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_locations_keep_host_path_and_query() {
        let mut req = RequestHeader::build("GET", b"/a/b?x=1&y=2", None).unwrap();
        req.insert_header("host", "Example.COM:8080").unwrap();
        assert_eq!(
            https_location(&req, Some(8443)).as_deref(),
            Some("https://example.com:8443/a/b?x=1&y=2")
        );
        assert_eq!(
            https_location(&req, Some(443)).as_deref(),
            Some("https://example.com/a/b?x=1&y=2")
        );
        assert_eq!(
            https_location(&req, None).as_deref(),
            Some("https://example.com/a/b?x=1&y=2")
        );
        let no_host = RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(https_location(&no_host, Some(8443)), None);
    }

    #[test]
    fn request_ids_are_32_lowercase_hex() {
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(id, new_request_id());
    }
}
