//! TLS end to end: certificates by SNI, rotation, redirects, HSTS and HTTP/2, with a
//! real rustls client over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use kingress_proxy::ProxySettings;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

fn connector(alpn: &[&[u8]]) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// Connects with `sni` (an IP address: no SNI is sent).
async fn connect(addr: SocketAddr, sni: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    connector(alpn).connect(name, tcp).await.unwrap()
}

fn presented(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// A self-signed certificate for `names`: (DER, tls Secret YAML).
fn cert_secret(secret: &str, names: &[&str]) -> (Vec<u8>, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let c = rcgen::generate_simple_self_signed(names).unwrap();
    let yaml = secret_yaml(secret, &c.cert.pem(), &c.signing_key.serialize_pem());
    (c.cert.der().to_vec(), yaml)
}

/// A kubernetes.io/tls Secret with PEM `cert` and `key` in stringData.
fn secret_yaml(secret: &str, cert: &str, key: &str) -> String {
    let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {secret}, namespace: default}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert),
        indent(key)
    )
}

/// An Ingress for `host` `/` to Service `svc`, with a tls section and annotations.
fn tls_ingress(
    name: &str,
    host: &str,
    svc: &str,
    tls: Option<(&[&str], &str)>,
    annotations: &[(&str, &str)],
) -> String {
    let mut out = ingress_yaml(name, host, &[("/", "Prefix", svc)]);
    if !annotations.is_empty() {
        let notes: Vec<String> = annotations
            .iter()
            .map(|(k, v)| format!("\"nginx.ingress.kubernetes.io/{k}\": \"{v}\""))
            .collect();
        out = out.replacen(
            "namespace: default}",
            &format!("namespace: default, annotations: {{{}}}}}", notes.join(", ")),
            1,
        );
    }
    if let Some((hosts, secret)) = tls {
        let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
        out = out.replacen(
            "  ingressClassName: kingress\n",
            &format!(
                "  ingressClassName: kingress\n  tls:\n  - hosts: [{}]\n    secretName: {secret}\n",
                hosts.join(", ")
            ),
            1,
        );
    }
    out
}

async fn https_get(stream: &mut TlsStream<TcpStream>, host: &str, path: &str) -> RawResponse {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_response_from(stream).await
}

/// Reads one HTTP/1.1 response (Content-Length bodies) from any stream.
async fn read_response_from<S: AsyncReadExt + Unpin>(s: &mut S) -> RawResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let status = head.lines().next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
            return RawResponse {
                status,
                body: buf[end + 4..end + 4 + len].to_vec(),
                head,
            };
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

struct TlsEnv {
    env: Env,
    _backend: EchoHandle,
    exact_der: Vec<u8>,
    wild_der: Vec<u8>,
}

impl TlsEnv {
    fn https(&self) -> SocketAddr {
        self.env.gateway.https_addr.unwrap()
    }
}

async fn tls_env() -> TlsEnv {
    let backend = echo("web").await;
    let (exact_der, exact) = cert_secret("exact", &["a.test"]);
    let (wild_der, wild) = cert_secret("wild", &["*.wild.test"]);
    let files = vec![
        ("svc.yaml", service_yaml("web", &[backend.addr().port()])),
        ("exact.yaml", exact),
        ("wild.yaml", wild),
        (
            "a.yaml",
            tls_ingress("a", "a.test", "web", Some((&["a.test"], "exact")), &[]),
        ),
        (
            "w.yaml",
            tls_ingress("w", "*.wild.test", "web", Some((&["*.wild.test"], "wild")), &[]),
        ),
        ("plain.yaml", tls_ingress("plain", "plain.test", "web", None, &[])),
        (
            "optout.yaml",
            tls_ingress(
                "optout",
                "optout.test",
                "web",
                Some((&["optout.test"], "exact")),
                &[("ssl-redirect", "false")],
            ),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, contents) in &files {
        write_atomic(&dir.path().join(name), contents);
    }
    let gateway = start_on(dir.path(), ProxySettings::default()).await;
    TlsEnv {
        env: Env {
            dir,
            gateway,
            client: client(),
        },
        _backend: backend,
        exact_der,
        wild_der,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_follows_the_sni() {
    let t = tls_env().await;
    let h1: &[&[u8]] = &[b"http/1.1"];
    assert_eq!(presented(&connect(t.https(), "a.test", h1).await), t.exact_der);
    assert_eq!(
        presented(&connect(t.https(), "A.Test", h1).await),
        t.exact_der,
        "case-insensitive"
    );
    assert_eq!(presented(&connect(t.https(), "x.wild.test", h1).await), t.wild_der);
    let default = presented(&connect(t.https(), "other.test", h1).await);
    assert_ne!(default, t.exact_der);
    assert_ne!(default, t.wild_der);
    assert_eq!(
        presented(&connect(t.https(), "deep.x.wild.test", h1).await),
        default,
        "a wildcard covers one label"
    );
    // No SNI at all (an IP address): the default certificate.
    assert_eq!(presented(&connect(t.https(), "127.0.0.1", h1).await), default);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_requests_are_proxied_with_hsts_and_https_headers() {
    let t = tls_env().await;
    let mut s = connect(t.https(), "a.test", &[b"http/1.1"]).await;
    for _ in 0..2 {
        let r = https_get(&mut s, "a.test", "/x").await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("strict-transport-security").as_deref(),
            Some("max-age=31536000; includeSubDomains")
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["headers"]["x-forwarded-proto"], "https");
        assert_eq!(v["headers"]["x-forwarded-port"], t.https().port().to_string());
    }
    // Plain HTTP responses carry no HSTS.
    let (status, _) = t.env.get("plain.test", "/").await;
    assert_eq!(status, 200);
    let resp = t
        .env
        .client
        .get(t.env.url("/"))
        .header("host", "plain.test")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("strict-transport-security").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_tls_host_is_redirected_like_ingress_nginx() {
    let t = tls_env().await;
    let port = t.https().port();
    let raw = |host: &str, path: &str| {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let addr = t.env.gateway.http_addr;
        async move { raw_request(addr, req.as_bytes()).await }
    };
    let r = raw("a.test", "/p/q?x=1").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some(format!("https://a.test:{port}/p/q?x=1")));
    let r = raw("A.TEST:8080", "/").await;
    assert_eq!(r.header("location"), Some(format!("https://a.test:{port}/")));
    // Wildcard TLS hosts redirect too.
    assert_eq!(raw("x.wild.test", "/").await.status, 308);
    // Certificate issuers reach their challenge over plain HTTP.
    assert_eq!(raw("a.test", "/.well-known/acme-challenge/token").await.status, 200);
    // No tls section, or ssl-redirect: "false": served over plain HTTP.
    assert_eq!(raw("plain.test", "/").await.status, 200);
    assert_eq!(raw("optout.test", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_share_one_connection() {
    let t = tls_env().await;
    let s = connect(t.https(), "a.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut calls = Vec::new();
    for i in 0..10 {
        let req = http::Request::builder()
            .uri(format!("https://a.test/stream/{i}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        calls.push(sender.send_request(req));
    }
    for (i, call) in futures::future::join_all(calls).await.into_iter().enumerate() {
        let resp = call.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert!(resp.headers().contains_key("strict-transport-security"));
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["path"], format!("/stream/{i}"));
        assert_eq!(v["host"], "a.test");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_handshakes_and_keeps_open_connections() {
    let t = tls_env().await;
    let h1: &[&[u8]] = &[b"http/1.1"];
    let mut open = connect(t.https(), "a.test", h1).await;
    assert_eq!(https_get(&mut open, "a.test", "/").await.status, 200);
    let (new_der, new_secret) = cert_secret("exact", &["a.test"]);
    write_atomic(&t.env.file("exact.yaml"), &new_secret);
    poll_until(WAIT, "the new certificate to be served", || async {
        (presented(&connect(t.https(), "a.test", h1).await) == new_der).then_some(())
    })
    .await;
    // The connection made before the rotation still works.
    assert_eq!(presented(&open), t.exact_der);
    assert_eq!(https_get(&mut open, "a.test", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_secrets_are_diagnostics_and_the_host_gets_the_default_certificate() {
    let t = tls_env().await;
    let h1: &[&[u8]] = &[b"http/1.1"];
    let default = presented(&connect(t.https(), "other.test", h1).await);
    // The key of another certificate: does not match.
    let (_, good) = cert_secret("exact", &["a.test"]);
    let (_, other) = cert_secret("x", &["a.test"]);
    let key_of = |yaml: &str| yaml[yaml.find("  tls.key: |").unwrap()..].to_string();
    let crt_of = |yaml: &str| yaml[..yaml.find("  tls.key: |").unwrap()].to_string();
    write_atomic(
        &t.env.file("exact.yaml"),
        &format!("{}{}", crt_of(&good), key_of(&other)),
    );
    poll_until(WAIT, "a.test to fall back to the default certificate", || async {
        (presented(&connect(t.https(), "a.test", h1).await) == default).then_some(())
    })
    .await;
    let diags = t.env.debug_config().await["diagnostics"].to_string();
    assert!(diags.contains("Secret default/exact"), "{diags}");
    // Everything else still serves, over TLS too.
    assert_eq!(presented(&connect(t.https(), "x.wild.test", h1).await), t.wild_der);
    let mut s = connect(t.https(), "a.test", h1).await;
    assert_eq!(https_get(&mut s, "a.test", "/").await.status, 200);
    // Garbage, then a certificate for another host.
    write_atomic(
        &t.env.file("exact.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: exact, namespace: default}\ntype: kubernetes.io/tls\nstringData: {tls.crt: nonsense, tls.key: nonsense}\n",
    );
    poll_until(WAIT, "the garbage diagnostic", || async {
        let d = t.env.debug_config().await["diagnostics"].to_string();
        (d.contains("Secret default/exact") && !d.contains("does not match")).then_some(())
    })
    .await;
    let (_, elsewhere) = cert_secret("exact", &["b.test"]);
    write_atomic(&t.env.file("exact.yaml"), &elsewhere);
    poll_until(WAIT, "the not-covered diagnostic", || async {
        let d = t.env.debug_config().await["diagnostics"].to_string();
        (d.contains("a.test") && d.contains("Ingress default/a")).then_some(())
    })
    .await;
    assert_eq!(presented(&connect(t.https(), "a.test", h1).await), default);
    // An expired certificate.
    write_atomic(&t.env.file("exact.yaml"), &expired_secret("exact", "a.test"));
    poll_until(WAIT, "the expired diagnostic", || async {
        let d = t.env.debug_config().await["diagnostics"].to_string();
        (d.contains("Secret default/exact") && d.contains("expired")).then_some(())
    })
    .await;
    assert_eq!(presented(&connect(t.https(), "a.test", h1).await), default);
}

/// A tls Secret whose certificate for `host` expired in 2001.
fn expired_secret(secret: &str, host: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    secret_yaml(secret, &cert.pem(), &key.serialize_pem())
}

// ---- backend protocols: gRPC with trailers (h2c and h2 over TLS), HTTPS ----

type BoxBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

/// A backend answering every request with "reply to PATH" and, for HTTP/2, the trailers
/// gRPC sends (grpc-status: 0, grpc-message: ok). `tls`: serve over TLS with that ALPN.
async fn proto_backend(h2: bool, tls: Option<&'static [u8]>) -> SocketAddr {
    use http_body_util::BodyExt;
    use hyper::body::Frame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.map(|alpn| {
        let c = rcgen::generate_simple_self_signed(vec!["backend.test".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(c.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![c.cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = vec![alpn.to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let _ = req.into_body().collect().await;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    trailers.insert("grpc-message", http::HeaderValue::from_static("ok"));
                    let frames = vec![
                        Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(format!("reply to {path}")))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let body: BoxBody = http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed();
                    let resp = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(body)
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let exec = hyper_util::rt::TokioExecutor::new();
                match (acceptor, h2) {
                    (Some(a), true) => {
                        let Ok(s) = a.accept(tcp).await else { return };
                        let io = hyper_util::rt::TokioIo::new(s);
                        let _ = hyper::server::conn::http2::Builder::new(exec)
                            .serve_connection(io, service)
                            .await;
                    }
                    (Some(a), false) => {
                        let Ok(s) = a.accept(tcp).await else { return };
                        let io = hyper_util::rt::TokioIo::new(s);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                    (None, true) => {
                        let io = hyper_util::rt::TokioIo::new(tcp);
                        let _ = hyper::server::conn::http2::Builder::new(exec)
                            .serve_connection(io, service)
                            .await;
                    }
                    (None, false) => {
                        let io = hyper_util::rt::TokioIo::new(tcp);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_trailers_pass_through_to_h2c_and_tls_backends_and_https_backends_work() {
    let grpc = proto_backend(true, None).await;
    let grpcs = proto_backend(true, Some(b"h2")).await;
    let https = proto_backend(false, Some(b"http/1.1")).await;
    let files = vec![
        ("grpc-svc.yaml", service_yaml("grpc", &[grpc.port()])),
        ("grpcs-svc.yaml", service_yaml("grpcs", &[grpcs.port()])),
        ("https-svc.yaml", service_yaml("tlsweb", &[https.port()])),
        (
            "grpc.yaml",
            tls_ingress("g", "grpc.test", "grpc", None, &[("backend-protocol", "GRPC")]),
        ),
        (
            "grpcs.yaml",
            tls_ingress("gs", "grpcs.test", "grpcs", None, &[("backend-protocol", "GRPCS")]),
        ),
        (
            "https.yaml",
            tls_ingress("h", "tlsweb.test", "tlsweb", None, &[("backend-protocol", "HTTPS")]),
        ),
    ];
    let env = start(&files, ProxySettings::default()).await;
    let https_addr = env.gateway.https_addr.unwrap();
    for host in ["grpc.test", "grpcs.test"] {
        let s = connect(https_addr, host, &[b"h2"]).await;
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(s),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("https://{host}/echo.Echo/Say"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{host}");
        let collected = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers passed through");
        assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{host}");
        assert_eq!(trailers.get("grpc-message").unwrap(), "ok", "{host}");
        assert_eq!(&collected.to_bytes()[..], b"reply to /echo.Echo/Say", "{host}");
    }
    // HTTPS backend, plain HTTP client.
    let (status, body) = env.get("tlsweb.test", "/over-tls").await;
    assert_eq!((status, body.as_str()), (200, "reply to /over-tls"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_stalled_handshakes_is_bounded_and_timed_out() {
    let backend = echo("web").await;
    let files = vec![
        ("svc.yaml", service_yaml("web", &[backend.addr().port()])),
        ("ing.yaml", tls_ingress("i", "a.test", "web", None, &[])),
    ];
    let settings = ProxySettings {
        tls_handshake_timeout: std::time::Duration::from_millis(500),
        max_tls_handshakes: 4,
        ..ProxySettings::default()
    };
    let env = start(&files, settings).await;
    let https = env.gateway.https_addr.unwrap();
    let mut established = connect(https, "a.test", &[b"http/1.1"]).await;
    assert_eq!(https_get(&mut established, "a.test", "/").await.status, 200);
    // Twenty clients connect and never send a ClientHello.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(TcpStream::connect(https).await.unwrap());
    }
    // The established connection is not affected.
    for _ in 0..3 {
        assert_eq!(https_get(&mut established, "a.test", "/").await.status, 200);
    }
    // Each stalled connection is closed by the handshake timeout...
    for s in &mut stalled {
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("closed within the deadline");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    // ... and new handshakes get through again.
    let mut fresh = connect(https, "a.test", &[b"http/1.1"]).await;
    assert_eq!(https_get(&mut fresh, "a.test", "/").await.status, 200);
}
