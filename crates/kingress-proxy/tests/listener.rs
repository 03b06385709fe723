//! The listener over real sockets on 127.0.0.1: PROXY protocol on the HTTP and HTTPS
//! listeners (the client address reaches X-Forwarded-For / X-Real-IP), and SSL
//! passthrough by SNI beside TLS termination on the same port.
//!
//! Backends: the echo server (it answers with the request's headers as JSON) and a small
//! rustls server with its own CA, which the passthrough client verifies end to end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kingress_model::{
    BackendId, BackendPolicy, ConfigBuilder, EndpointSet, EndpointTable, L4Route, L4Source, L4Table, ObjectRef,
    ProxyVersion, Route, RouteSource,
};
use kingress_proxy::proxy_protocol::encode;
use kingress_proxy::{ListenerOptions, ProxySettings, Tables, TlsListener, serve};
use kingress_test_support::{EchoHandle, TestCa, echo, raw_request};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const WEB: &str = "web.test";
const SECURE: &str = "secure.test";
const BACKEND_BODY: &str = "from-the-passthrough-backend";

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// kingress's certificate resolver in these tests: one certificate for every name.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A TLS backend with its own certificate for [`SECURE`]: reads one request head and
/// answers [`BACKEND_BODY`].
async fn tls_backend(ca: &TestCa) -> (SocketAddr, JoinHandle<()>) {
    let config = ca.server_config(&[SECURE]);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BACKEND_BODY}",
                    BACKEND_BODY.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, task)
}

fn route(service: &str) -> Arc<Route> {
    Arc::new(Route {
        backend: BackendId::new("default", service, "80"),
        source: RouteSource {
            ingress: ObjectRef::new("Ingress", "default", service),
            host: String::new(),
            path: String::new(),
            path_type: None,
        },
        policy: Arc::new(BackendPolicy::default()),
        https_redirect: false,
    })
}

fn secure_backend() -> BackendId {
    BackendId::new("default", "secure", "443")
}

/// kingress on two listeners (HTTP, HTTPS) in front of an echo backend (default backend
/// for every host) and, for [`SECURE`], a TLS backend passed through when enabled.
struct Env {
    http: SocketAddr,
    https: SocketAddr,
    kingress_ca: CertificateDer<'static>,
    backend_ca: CertificateDer<'static>,
    tables: Arc<Tables>,
    _echo: EchoHandle,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What a test turns on.
#[derive(Clone, Copy, Default)]
struct Mode {
    /// The routing table's `use-proxy-protocol`.
    proxy_protocol: bool,
    /// [`SECURE`] in the L4 table's passthrough hosts (as compile puts it there with
    /// `--enable-ssl-passthrough`).
    passthrough: bool,
}

const PROXY_PROTOCOL: Mode = Mode {
    proxy_protocol: true,
    passthrough: false,
};
const PASSTHROUGH: Mode = Mode {
    proxy_protocol: false,
    passthrough: true,
};

/// Starts an [`Env`]; `secure_endpoints` are extra endpoints of the passthrough backend,
/// tried before the TLS backend (e.g. a closed port).
async fn start(mode: Mode, secure_endpoints: &[SocketAddr]) -> Env {
    let settings = ProxySettings::default();
    let echo = echo("web").await;
    let kingress_ca = TestCa::new("kingress test CA");
    let backend_ca = TestCa::new("backend test CA");
    let (backend_addr, backend_task) = tls_backend(&backend_ca).await;

    let tables = Tables::new();
    let mut config = ConfigBuilder::new();
    config.set_default_backend(None, route("web")).unwrap();
    config.set_use_proxy_protocol(mode.proxy_protocol);
    tables.publish_config(config.build());
    let mut endpoints = EndpointTable::new();
    endpoints.insert(
        BackendId::new("default", "web", "80"),
        EndpointSet::new(vec![echo.addr()]),
    );
    let mut secure = secure_endpoints.to_vec();
    secure.push(backend_addr);
    endpoints.insert(secure_backend(), EndpointSet::new(secure));
    tables.publish_endpoints(endpoints);
    let mut l4 = L4Table::new();
    if mode.passthrough {
        l4.claim_passthrough(
            SECURE,
            L4Route {
                backend: secure_backend(),
                source: L4Source {
                    object: ObjectRef::new("Ingress", "default", "secure"),
                    detail: SECURE.into(),
                },
                accept_proxy: false,
                send_proxy: None,
            },
        )
        .unwrap();
    }
    tables.publish_l4(l4);
    tables.set_ready(true);

    // kingress's own certificate is valid for the passthrough host too, so that a client
    // trusting kingress's CA can tell when kingress terminates that host.
    let (cert, key) = kingress_ca.leaf(&[WEB, SECURE]);
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    let resolver = Arc::new(Fixed(Arc::new(CertifiedKey::new(vec![cert], signer))));
    let tls = Arc::new(TlsListener::new(resolver, Duration::from_secs(10), 16).unwrap());

    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, https_addr) = (http.local_addr().unwrap(), https.local_addr().unwrap());
    let apps = vec![kingress_proxy::build_proxy(tables.clone(), settings.clone())];
    let grace = Duration::from_millis(100);
    let tasks = vec![
        backend_task,
        tokio::spawn(serve(
            http,
            apps.clone(),
            std::future::pending(),
            grace,
            None,
            ListenerOptions::http(tables.clone(), &settings),
        )),
        tokio::spawn(serve(
            https,
            apps,
            std::future::pending(),
            grace,
            None,
            ListenerOptions::https(tls, tables.clone(), &settings),
        )),
    ];
    Env {
        http: http_addr,
        https: https_addr,
        kingress_ca: kingress_ca.der,
        backend_ca: backend_ca.der,
        tables,
        _echo: echo,
        tasks,
    }
}

fn get(host: &str) -> Vec<u8> {
    format!("GET /anything HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// The body of an HTTP/1.1 response read to the end of the connection.
fn body_of(response: &[u8]) -> &[u8] {
    let at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(response)));
    &response[at + 4..]
}

/// The echo's view of the request's headers.
fn echoed_headers(body: &[u8]) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(body)));
    v["headers"].clone()
}

/// Reads until the peer closes; an error (a reset, a TLS close without close_notify)
/// also ends the read. Returns what was read.
async fn read_until_closed<R: AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An HTTPS request to `addr`: an optional PROXY header in clear first, then TLS with
/// `sni`, trusting only `root`. Returns the server's leaf certificate and the response.
async fn https_request(
    addr: SocketAddr,
    proxy_header: Option<Vec<u8>>,
    root: &CertificateDer<'static>,
    sni: &str,
) -> Result<(CertificateDer<'static>, Vec<u8>), std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tcp = TcpStream::connect(addr).await?;
    if let Some(header) = proxy_header {
        tcp.write_all(&header).await?;
    }
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    tls.write_all(&get(sni)).await?;
    Ok((leaf, read_until_closed(&mut tls).await))
}

/// Sends `bytes` on a new connection and reads until it closes.
async fn send_and_read(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // The server may close (and reset) before taking everything: that is the point.
    let _ = tcp.write_all(bytes).await;
    read_until_closed(&mut tcp).await
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn proxy_v1_on_http_sets_forwarded_for_and_real_ip() {
    let env = start(PROXY_PROTOCOL, &[]).await;
    let mut request = encode(ProxyVersion::V1, addr("203.0.113.7:40000"), env.http);
    request.extend_from_slice(&get(WEB));
    let response = raw_request(env.http, &request).await;
    assert_eq!(response.status, 200);
    let h = echoed_headers(&response.body);
    assert_eq!(h["x-forwarded-for"], "203.0.113.7");
    assert_eq!(h["x-real-ip"], "203.0.113.7");
}

#[tokio::test]
async fn proxy_v2_on_http_sets_forwarded_for_and_real_ip() {
    let env = start(PROXY_PROTOCOL, &[]).await;
    // IPv6 client, IPv4 listener: encode maps both to IPv6.
    let mut request = encode(ProxyVersion::V2, addr("[2001:db8::5]:40000"), env.http);
    request.extend_from_slice(&get(WEB));
    let response = raw_request(env.http, &request).await;
    assert_eq!(response.status, 200);
    let h = echoed_headers(&response.body);
    assert_eq!(h["x-forwarded-for"], "2001:db8::5");
    assert_eq!(h["x-real-ip"], "2001:db8::5");
}

#[tokio::test]
async fn proxy_header_split_from_the_request_is_replayed() {
    // The header alone in one write, the request in a later one, and the reverse case
    // (header and request start in one write) is the v1 test above.
    let env = start(PROXY_PROTOCOL, &[]).await;
    let mut tcp = TcpStream::connect(env.http).await.unwrap();
    let header = encode(ProxyVersion::V2, addr("198.51.100.9:1"), env.http);
    let (a, b) = header.split_at(5);
    tcp.write_all(a).await.unwrap();
    tcp.flush().await.unwrap();
    tcp.write_all(b).await.unwrap();
    tcp.write_all(&get(WEB)).await.unwrap();
    let response = read_until_closed(&mut tcp).await;
    let h = echoed_headers(body_of(&response));
    assert_eq!(h["x-forwarded-for"], "198.51.100.9");
}

#[tokio::test]
async fn proxy_on_https_sets_forwarded_for() {
    let env = start(PROXY_PROTOCOL, &[]).await;
    for version in [ProxyVersion::V1, ProxyVersion::V2] {
        let header = encode(version, addr("192.0.2.44:5555"), env.https);
        let (leaf, response) = https_request(env.https, Some(header), &env.kingress_ca, WEB)
            .await
            .unwrap();
        assert!(!leaf.is_empty());
        let h = echoed_headers(body_of(&response));
        assert_eq!(h["x-forwarded-for"], "192.0.2.44", "{version:?}");
        assert_eq!(h["x-real-ip"], "192.0.2.44", "{version:?}");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}

#[tokio::test]
async fn malformed_or_missing_proxy_header_closes_only_that_connection() {
    let env = start(PROXY_PROTOCOL, &[]).await;
    let bad: [&[u8]; 4] = [
        b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\nGET / HTTP/1.1\r\nHost: web.test\r\n\r\n",
        b"PROXY TCP4 1.2.3.4\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff",
        // No header at all: a plain request is not served.
        b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n",
    ];
    for bytes in bad {
        for listener in [env.http, env.https] {
            let answer = send_and_read(listener, bytes).await;
            assert!(answer.is_empty(), "answered {:?}", String::from_utf8_lossy(&answer));
        }
    }
    // An open connection with a header still to come is not disturbed by them either.
    let mut slow = TcpStream::connect(env.http).await.unwrap();
    slow.write_all(b"PROXY TCP4 10.9.8.7 ").await.unwrap();
    let mut request = encode(ProxyVersion::V1, addr("203.0.113.8:1"), env.http);
    request.extend_from_slice(&get(WEB));
    let response = raw_request(env.http, &request).await;
    assert_eq!(echoed_headers(&response.body)["x-forwarded-for"], "203.0.113.8");
    slow.write_all(b"10.0.0.1 1 80\r\n").await.unwrap();
    slow.write_all(&get(WEB)).await.unwrap();
    let response = read_until_closed(&mut slow).await;
    assert_eq!(echoed_headers(body_of(&response))["x-forwarded-for"], "10.9.8.7");
}

#[tokio::test]
async fn without_use_proxy_protocol_a_header_is_not_read() {
    let env = start(Mode::default(), &[]).await;
    let response = raw_request(env.http, &get(WEB)).await;
    assert_eq!(echoed_headers(&response.body)["x-forwarded-for"], "127.0.0.1");
    // A PROXY line is then just a bad request line.
    let mut request = encode(ProxyVersion::V1, addr("203.0.113.7:1"), env.http);
    request.extend_from_slice(&get(WEB));
    let answer = send_and_read(env.http, &request).await;
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn ssl_passthrough_by_sni_beside_termination_on_the_same_port() {
    let env = start(PASSTHROUGH, &[]).await;
    // The passthrough host: the client verifies the backend's own certificate (its own
    // CA), so the handshake went through kingress untouched.
    let (leaf, response) = https_request(env.https, None, &env.backend_ca, SECURE).await.unwrap();
    assert!(!leaf.is_empty());
    assert!(response.starts_with(b"HTTP/1.1 200"));
    assert_eq!(body_of(&response), BACKEND_BODY.as_bytes());
    // The backend's CA does not vouch for kingress's certificate: the other host is
    // terminated by kingress, with its certificate, and proxied as HTTP.
    assert!(https_request(env.https, None, &env.backend_ca, WEB).await.is_err());
    let (_, response) = https_request(env.https, None, &env.kingress_ca, WEB).await.unwrap();
    let h = echoed_headers(body_of(&response));
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    // The SNI match is case-insensitive.
    let (_, response) = https_request(env.https, None, &env.backend_ca, "SECURE.test")
        .await
        .unwrap();
    assert_eq!(body_of(&response), BACKEND_BODY.as_bytes());
}

#[tokio::test]
async fn passthrough_table_changes_apply_to_new_connections() {
    let env = start(PASSTHROUGH, &[]).await;
    assert!(https_request(env.https, None, &env.backend_ca, SECURE).await.is_ok());
    // Without passthrough hosts the ClientHello is not even read: kingress terminates.
    env.tables.publish_l4(L4Table::new());
    let (_, response) = https_request(env.https, None, &env.kingress_ca, SECURE).await.unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200"));
    assert!(echoed_headers(body_of(&response)).is_object());
}

#[tokio::test]
async fn without_passthrough_hosts_every_host_is_terminated() {
    let env = start(Mode::default(), &[]).await;
    assert!(https_request(env.https, None, &env.backend_ca, SECURE).await.is_err());
    let (_, response) = https_request(env.https, None, &env.kingress_ca, SECURE).await.unwrap();
    assert!(echoed_headers(body_of(&response)).is_object());
}

#[tokio::test]
async fn passthrough_after_a_proxy_header_sends_the_backend_none() {
    let env = start(
        Mode {
            proxy_protocol: true,
            passthrough: true,
        },
        &[],
    )
    .await;
    // The backend would fail the handshake on a PROXY header in front of the ClientHello.
    for version in [ProxyVersion::V1, ProxyVersion::V2] {
        let header = encode(version, addr("192.0.2.1:1"), env.https);
        let (_, response) = https_request(env.https, Some(header), &env.backend_ca, SECURE)
            .await
            .unwrap();
        assert_eq!(body_of(&response), BACKEND_BODY.as_bytes(), "{version:?}");
    }
    // The terminated host on the same port still gets the PROXY source.
    let header = encode(ProxyVersion::V1, addr("192.0.2.2:1"), env.https);
    let (_, response) = https_request(env.https, Some(header), &env.kingress_ca, WEB)
        .await
        .unwrap();
    assert_eq!(echoed_headers(body_of(&response))["x-forwarded-for"], "192.0.2.2");
}

#[tokio::test]
async fn passthrough_moves_to_another_endpoint_when_a_connect_fails() {
    // A port that was just closed: connecting to it is refused.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let env = start(PASSTHROUGH, &[closed]).await;
    // Round-robin starts at either endpoint; every connection gets through.
    for _ in 0..4 {
        let (_, response) = https_request(env.https, None, &env.backend_ca, SECURE).await.unwrap();
        assert_eq!(body_of(&response), BACKEND_BODY.as_bytes());
    }
}

#[tokio::test]
async fn garbage_client_hello_is_closed_and_the_listener_keeps_serving() {
    let env = start(PASSTHROUGH, &[]).await;
    let garbage: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: secure.test\r\n\r\n",
        // A handshake record whose message is not a ClientHello.
        &[0x16, 3, 1, 0, 6, 2, 0, 0, 2, 0xde, 0xad],
        // A ClientHello cut short by its own length fields.
        &[0x16, 3, 1, 0, 8, 1, 0, 0, 4, 3, 3, 0, 0],
        &[0xff; 64],
    ];
    for bytes in garbage {
        let answer = send_and_read(env.https, bytes).await;
        // Closed, at most with a TLS alert (a record of type 21): never a response.
        assert!(
            answer.is_empty() || answer[0] == 21,
            "answered {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    let (_, response) = https_request(env.https, None, &env.backend_ca, SECURE).await.unwrap();
    assert_eq!(body_of(&response), BACKEND_BODY.as_bytes());
    let (_, response) = https_request(env.https, None, &env.kingress_ca, WEB).await.unwrap();
    assert!(echoed_headers(body_of(&response)).is_object());
}
