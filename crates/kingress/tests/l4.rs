//! The L4 plane end to end, from a folder of manifests: ServiceLB ports (TCP and UDP),
//! the port-conflict rule, a port that cannot be bound, tcp-services with PROXY.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;

use common::*;
use kingress_compile::{CompileOptions, L4Options};
use kingress_proxy::ProxySettings;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A free TCP and UDP port number on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A TCP backend that greets each connection with "NAME\n", then echoes.
async fn tcp_backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A UDP backend that answers each datagram with "NAME:" and the datagram.
async fn udp_backend(name: &'static str) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let mut reply = format!("{name}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&reply, from).await;
        }
    });
    addr
}

/// A LoadBalancer Service `name` with a TCP port and a UDP port, created at `created`.
fn lb_service(name: &str, created: &str, tcp: u16, udp: Option<u16>) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}\nspec:\n  type: LoadBalancer\n  ports:\n  - {{name: tcp, port: {tcp}, protocol: TCP}}\n"
    );
    if let Some(udp) = udp {
        out.push_str(&format!("  - {{name: udp, port: {udp}, protocol: UDP}}\n"));
    }
    out
}

/// The EndpointSlice of `service` with its TCP (and UDP) target ports on 127.0.0.1.
fn slice(service: &str, tcp: u16, udp: Option<u16>) -> String {
    let mut out = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nendpoints:\n- addresses: [127.0.0.1]\nports:\n- {{name: tcp, port: {tcp}, protocol: TCP}}\n"
    );
    if let Some(udp) = udp {
        out.push_str(&format!("- {{name: udp, port: {udp}, protocol: UDP}}\n"));
    }
    out
}

fn service_lb() -> CompileOptions {
    CompileOptions {
        l4: L4Options {
            service_lb: true,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Connects to `port` and reads the backend's greeting line.
async fn greet(port: u16) -> Option<(String, BufReader<TcpStream>)> {
    let s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let n = tokio::time::timeout(WAIT, r.read_line(&mut line)).await.ok()?.ok()?;
    (n > 0).then(|| (line.trim().to_string(), r))
}

async fn echo_once(conn: &mut BufReader<TcpStream>, msg: &str) -> String {
    conn.get_mut().write_all(format!("{msg}\n").as_bytes()).await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(WAIT, conn.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    line.trim().to_string()
}

async fn udp_ask(port: u16, msg: &str) -> Option<String> {
    let s = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    s.send_to(msg.as_bytes(), ("127.0.0.1", port)).await.ok()?;
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(std::time::Duration::from_millis(500), s.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_lb_ports_follow_the_service_and_open_connections_drain() {
    let (a_tcp, a_udp) = (tcp_backend("a").await, udp_backend("a").await);
    let b_tcp = tcp_backend("b").await;
    let (tcp_port, udp_port) = (free_port(), free_port());
    let env = start_with(
        &[
            (
                "svc.yaml",
                lb_service("app", "2026-01-01T00:00:00Z", tcp_port, Some(udp_port)),
            ),
            ("slice.yaml", slice("app", a_tcp.port(), Some(a_udp.port()))),
        ],
        ProxySettings::default(),
        service_lb(),
    )
    .await;

    // Ready means the ports of the Services present at start are open: no polling.
    let (hello, mut held) = greet(tcp_port).await.expect("the TCP port is open once ready");
    assert_eq!(hello, "a");
    assert_eq!(echo_once(&mut held, "one").await, "one");
    assert_eq!(udp_ask(udp_port, "ping").await.as_deref(), Some("a:ping"));

    let config = env.debug_config().await;
    let ports = config["l4"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert_eq!(ports[0]["backend"], format!("default/app:{tcp_port}"));
    assert_eq!(ports[0]["source"], "Service default/app");

    // New endpoints: new connections go there, the open one stays with its backend.
    write_atomic(&env.file("slice.yaml"), &slice("app", b_tcp.port(), Some(a_udp.port())));
    poll_until(WAIT, "new connections to reach backend b", || async {
        greet(tcp_port).await.filter(|(name, _)| name == "b").map(|_| ())
    })
    .await;
    assert_eq!(echo_once(&mut held, "two").await, "two");

    // The Service goes: its ports close; the open connection finishes its work.
    std::fs::remove_file(env.file("svc.yaml")).unwrap();
    poll_until(WAIT, "the TCP port to close", || async {
        TcpStream::connect(("127.0.0.1", tcp_port)).await.is_err().then_some(())
    })
    .await;
    poll_until(WAIT, "the UDP port to stop answering", || async {
        udp_ask(udp_port, "ping").await.is_none().then_some(())
    })
    .await;
    assert_eq!(echo_once(&mut held, "three").await, "three");
    held.get_mut().shutdown().await.unwrap();
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    env.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contested_port_stays_with_the_older_service() {
    let (old_b, new_b) = (tcp_backend("older").await, tcp_backend("newer").await);
    let port = free_port();
    let env = start_with(
        &[
            ("newer.yaml", lb_service("newer", "2026-03-01T00:00:00Z", port, None)),
            ("newer-slice.yaml", slice("newer", new_b.port(), None)),
            ("older.yaml", lb_service("older", "2026-02-01T00:00:00Z", port, None)),
            ("older-slice.yaml", slice("older", old_b.port(), None)),
        ],
        ProxySettings::default(),
        service_lb(),
    )
    .await;
    let (hello, _) = greet(port).await.expect("open");
    assert_eq!(hello, "older");
    let config = env.debug_config().await;
    let diags: Vec<String> = serde_json::from_value(config["diagnostics"].clone()).unwrap();
    assert!(
        diags
            .iter()
            .any(|d| d.contains("Service default/newer") && d.contains("already claimed by Service default/older")),
        "{diags:?}"
    );

    // The older one goes: the newer takes the port over.
    std::fs::remove_file(env.file("older.yaml")).unwrap();
    poll_until(WAIT, "the newer Service to get the port", || async {
        greet(port).await.filter(|(n, _)| n == "newer").map(|_| ())
    })
    .await;
    env.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_a_diagnostic_then_bound_once_free() {
    let backend = tcp_backend("app").await;
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = blocker.local_addr().unwrap().port();
    let env = start_with(
        &[
            ("svc.yaml", lb_service("app", "2026-01-01T00:00:00Z", port, None)),
            ("slice.yaml", slice("app", backend.port(), None)),
        ],
        ProxySettings::default(),
        service_lb(),
    )
    .await;
    let config = env.debug_config().await;
    let diags: Vec<String> = serde_json::from_value(config["diagnostics"].clone()).unwrap();
    assert!(
        diags
            .iter()
            .any(|d| d.contains("Service default/app") && d.contains("cannot be bound")),
        "{diags:?}"
    );
    // Still serving HTTP meanwhile.
    assert_eq!(env.get("x", "/").await.0, 404);
    drop(blocker);
    poll_until(WAIT, "the port to be bound once free", || async {
        greet(port).await.filter(|(n, _)| n == "app").map(|_| ())
    })
    .await;
    // The diagnostic is gone once the port is bound.
    let config = env.debug_config().await;
    let diags: Vec<String> = serde_json::from_value(config["diagnostics"].clone()).unwrap();
    assert!(!diags.iter().any(|d| d.contains("cannot be bound")), "{diags:?}");
    env.gateway.shutdown().await;
}

/// A backend that reads one PROXY v1 line and sends it back, then closes.
async fn proxy_v1_reporter() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                let mut line = String::new();
                if r.read_line(&mut line).await.is_ok() {
                    let _ = r.get_mut().write_all(line.as_bytes()).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_services_config_map_sends_proxy_v1() {
    let backend = proxy_v1_reporter().await;
    let port = free_port();
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: default}\nspec:\n  ports:\n  - {name: pg, port: 5432}\n";
    let slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: db-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: db}}\naddressType: IPv4\nendpoints:\n- addresses: [127.0.0.1]\nports:\n- {{name: pg, port: {}}}\n",
        backend.port()
    );
    let cm = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: tcp-services, namespace: ingress}}\ndata:\n  \"{port}\": \"default/db:pg::PROXY\"\n"
    );
    let compile = CompileOptions {
        l4: L4Options {
            tcp_services: Some(("ingress".into(), "tcp-services".into())),
            ..Default::default()
        },
        ..Default::default()
    };
    let env = start_with(
        &[("db.yaml", service.to_string()), ("slice.yaml", slice), ("cm.yaml", cm)],
        ProxySettings::default(),
        compile,
    )
    .await;
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let client_port = s.local_addr().unwrap().port();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    tokio::time::timeout(WAIT, r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, format!("PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {port}\r\n"));
    env.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_proxy_protocol_from_the_config_map_puts_the_real_client_in_x_forwarded_for() {
    let (env, _backend) = {
        let backend = echo("web").await;
        let cm = |on: bool| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: kingress, namespace: ingress}}\ndata:\n  use-proxy-protocol: \"{on}\"\n"
            )
        };
        let compile = CompileOptions {
            config_map: Some(("ingress".into(), "kingress".into())),
            ..Default::default()
        };
        let env = start_with(
            &[
                ("svc.yaml", service_yaml("web", &[backend.addr().port()])),
                ("ing.yaml", ingress_yaml("web", "p.test", &[("/", "Prefix", "web")])),
                ("cm.yaml", cm(true)),
            ],
            ProxySettings::default(),
            compile,
        )
        .await;
        // Live: switch it off and on again through the ConfigMap.
        write_atomic(&env.file("cm.yaml"), &cm(false));
        let url = env.url("/");
        poll_until(WAIT, "plain requests once use-proxy-protocol is off", || async {
            let r = env.client.get(&url).header("host", "p.test").send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        write_atomic(&env.file("cm.yaml"), &cm(true));
        (env, backend)
    };
    let request = b"GET / HTTP/1.1\r\nHost: p.test\r\nConnection: close\r\n\r\n";
    // v1 from a load balancer in front: the echo sees the PROXY source.
    let seen = poll_until(WAIT, "a PROXY v1 request to be served", || async {
        let mut bytes = b"PROXY TCP4 203.0.113.9 127.0.0.1 41000 80\r\n".to_vec();
        bytes.extend_from_slice(request);
        let r = raw_request(env.gateway.http_addr, &bytes).await;
        (r.status == 200).then_some(r)
    })
    .await;
    let echoed: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(echoed["headers"]["x-forwarded-for"], "203.0.113.9", "{echoed}");
    assert_eq!(echoed["headers"]["x-real-ip"], "203.0.113.9", "{echoed}");
    // v2, binary.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0x00, 12, 198, 51, 100, 7, 127, 0, 0, 1, 0xa0, 0x28, 0x00, 0x50,
    ]);
    v2.extend_from_slice(request);
    let r = raw_request(env.gateway.http_addr, &v2).await;
    assert_eq!(r.status, 200);
    let echoed: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(echoed["headers"]["x-forwarded-for"], "198.51.100.7", "{echoed}");
    // Without a header the connection is closed, and the listener keeps serving.
    let mut s = TcpStream::connect(env.gateway.http_addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "served without a PROXY header"
    );
    let mut bytes = b"PROXY TCP4 203.0.113.10 127.0.0.1 41000 80\r\n".to_vec();
    bytes.extend_from_slice(request);
    assert_eq!(raw_request(env.gateway.http_addr, &bytes).await.status, 200);
    env.gateway.shutdown().await;
}

mod passthrough {
    use std::sync::Arc;

    use rustls::pki_types::ServerName;

    use super::*;

    /// A TLS backend with a certificate for `host` signed by `ca` that answers every
    /// connection with "backend says hi".
    async fn tls_backend(ca: &TestCa, host: &str) -> SocketAddr {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(ca.server_config(&[host])));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.write_all(b"backend says hi").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_client_verifies_the_backends_own_certificate() {
        let ca = TestCa::new("backend CA");
        let backend = tls_backend(&ca, "secure.test").await;
        let service = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: secure, namespace: default}}\nspec:\n  ports:\n  - {{name: https, port: 443}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: secure-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: secure}}\naddressType: IPv4\nendpoints:\n- addresses: [127.0.0.1]\nports:\n- {{name: https, port: {}}}\n",
            backend.port()
        );
        let ingress = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: secure\n  namespace: default\n  annotations: {nginx.ingress.kubernetes.io/ssl-passthrough: \"true\"}\nspec:\n  ingressClassName: kingress\n  rules:\n  - host: secure.test\n    http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: secure, port: {name: https}}}}\n";
        let compile = CompileOptions {
            l4: L4Options {
                ssl_passthrough: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let env = start_with(
            &[("svc.yaml", service), ("ing.yaml", ingress.to_string())],
            ProxySettings::default(),
            compile,
        )
        .await;
        let https = env.gateway.https_addr.unwrap();

        // Trusting only the backend's CA: the handshake succeeds only if the bytes went
        // through unterminated.
        let config = ca.client_config();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(https).await.unwrap();
        let mut tls = connector
            .connect(ServerName::try_from("secure.test").unwrap(), tcp)
            .await
            .expect("the backend's own certificate, verified by the client");
        let mut body = Vec::new();
        let _ = tls.read_to_end(&mut body).await;
        assert_eq!(body, b"backend says hi");

        // Another host on the same port is terminated by kingress (its fake certificate,
        // which the backend's CA does not sign).
        let tcp = TcpStream::connect(https).await.unwrap();
        let other = connector
            .connect(ServerName::try_from("other.test").unwrap(), tcp)
            .await;
        assert!(
            other.is_err(),
            "kingress's own certificate must not verify against the backend CA"
        );
        env.gateway.shutdown().await;
    }
}
