//! The admin listener: /healthz, /readyz, /debug/config.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::controller::Controller;

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// The current configuration as JSON: servers, paths (with their balancer), backends and
/// their endpoints (in-flight requests, EWMA latency, ejection), diagnostics.
pub fn debug_config(controller: &Controller) -> serde_json::Value {
    let tables = controller.tables();
    let config = tables.config();
    let endpoints = tables.endpoints();
    let (config_generation, endpoints_generation) = tables.generations();
    let servers: Vec<serde_json::Value> = config
        .servers()
        .into_iter()
        .map(|(host, server)| {
            let paths: Vec<serde_json::Value> = server
                .paths
                .entries()
                .into_iter()
                .map(|(path, ty, route)| {
                    json!({
                        "path": path, "pathType": ty.as_str(),
                        "backend": route.backend.as_str(),
                        "ingress": route.source.ingress.to_string(),
                        "balance": route.policy.balance.name(),
                        "tries": route.policy.retry.tries,
                    })
                })
                .collect();
            json!({
                "host": if host.is_empty() { "*".to_string() } else { host },
                "paths": paths,
                "defaultBackend": server.default_backend.as_ref().map(|r| json!({
                    "backend": r.backend.as_str(), "ingress": r.source.ingress.to_string(),
                })),
            })
        })
        .collect();
    let now = tables.now();
    let endpoint = |a: &std::net::SocketAddr| match endpoints.stats(a) {
        Some(s) => json!({
            "address": a.to_string(),
            "inFlight": s.in_flight(),
            "latencyMs": s.latency(now).map(|ns| (ns / 1e4).round() / 100.0),
            "ejected": s.is_ejected(now),
        }),
        None => json!({"address": a.to_string()}),
    };
    let mut backends: Vec<(String, Vec<serde_json::Value>)> = endpoints
        .table()
        .iter()
        .map(|(id, set)| (id.to_string(), set.addrs.iter().map(endpoint).collect()))
        .collect();
    backends.sort_by(|a, b| a.0.cmp(&b.0));
    let backends: serde_json::Map<String, serde_json::Value> =
        backends.into_iter().map(|(k, v)| (k, json!(v))).collect();
    let diagnostics: Vec<String> = controller.diagnostics().iter().map(|d| d.to_string()).collect();
    let certificates: Vec<serde_json::Value> = controller
        .certificates()
        .load()
        .hosts()
        .into_iter()
        .map(|(host, secret)| json!({"host": host, "secret": secret}))
        .collect();
    let l4_table = tables.l4();
    let stats = controller.l4().map(|m| m.stats()).unwrap_or_default();
    let l4_ports: Vec<serde_json::Value> = l4_table
        .ports()
        .map(|(port, route)| {
            let live = stats.iter().find(|s| s.port == *port && !s.draining);
            json!({
                "port": port.port,
                "protocol": port.protocol.to_string(),
                "backend": route.backend.as_str(),
                "source": route.source.object.to_string(),
                "detail": route.source.detail,
                "acceptProxy": route.accept_proxy,
                "sendProxy": route.send_proxy.map(|v| v.as_str()),
                "listening": live.map(|s| s.local.to_string()),
                "open": live.map(|s| s.open),
                "total": live.map(|s| s.total),
                "dropped": live.map(|s| s.dropped),
            })
        })
        .collect();
    let draining: Vec<serde_json::Value> = stats
        .iter()
        .filter(|s| s.draining)
        .map(|s| json!({"port": s.port.port, "protocol": s.port.protocol.to_string(), "open": s.open}))
        .collect();
    let passthrough: Vec<serde_json::Value> = l4_table
        .passthrough_hosts()
        .into_iter()
        .map(|(host, route)| json!({"host": host, "backend": route.backend.as_str(), "ingress": route.source.object.to_string()}))
        .collect();
    json!({
        "ready": tables.is_ready(),
        "configGeneration": config_generation,
        "endpointsGeneration": endpoints_generation,
        "servers": servers,
        "backends": backends,
        "certificates": certificates,
        "l4": {"ports": l4_ports, "draining": draining, "passthrough": passthrough},
        "diagnostics": diagnostics,
    })
}

async fn handle(
    controller: Arc<Controller>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if controller.tables().is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/debug/config" => {
            let body = serde_json::to_vec_pretty(&debug_config(&controller)).unwrap_or_default();
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// Serves the admin endpoints until `shutdown` completes.
pub async fn serve(listener: TcpListener, controller: Arc<Controller>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let controller = controller.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(controller.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        }
    }
}
