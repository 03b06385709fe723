//! The L4 data plane over real sockets on 127.0.0.1: TCP and UDP ports opened by
//! [`L4Manager`] from a published [`L4Table`], forwarding to test backends.
//!
//! No sleeps as synchronisation: state is polled with a deadline (`poll_until`).
//! `KINGRESS_L4_TRANSFER_BYTES` sets the size of the SHA-256 transfer (default 1 GiB).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use kingress_model::{
    BackendId, EndpointSet, EndpointTable, L4Port, L4Route, L4Source, L4Table, ObjectRef, ProxyVersion, udp_backend,
};
use kingress_proxy::Tables;
use kingress_proxy::l4::{L4Manager, L4Settings, RelayMode};
use kingress_test_support::poll_until;
use ring::digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// How long any awaited state may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind((LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind((LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn settings() -> L4Settings {
    L4Settings {
        bind: LOCALHOST,
        connect_timeout: Duration::from_secs(2),
        bind_retry: Duration::from_millis(50),
        ..L4Settings::default()
    }
}

fn backend(name: &str) -> BackendId {
    BackendId::new("default", name, "80")
}

fn route(backend: BackendId, accept_proxy: bool, send_proxy: Option<ProxyVersion>) -> L4Route {
    L4Route {
        source: L4Source {
            object: ObjectRef::new("Service", "default", backend.as_str()),
            detail: "test".into(),
        },
        backend,
        accept_proxy,
        send_proxy,
    }
}

fn publish_endpoints(tables: &Tables, sets: &[(&BackendId, &[SocketAddr])]) {
    let mut table = EndpointTable::new();
    for (id, addrs) in sets {
        table.insert((*id).clone(), EndpointSet::new(addrs.to_vec()));
    }
    tables.publish_endpoints(table);
}

fn table(ports: Vec<(L4Port, L4Route)>) -> L4Table {
    let mut t = L4Table::new();
    for (port, route) in ports {
        assert!(t.claim(port, route).is_ok());
    }
    t
}

/// An echo backend: every connection gets `greeting` then its own bytes back; its EOF
/// becomes our EOF (shutdown(Write)).
async fn echo_backend(greeting: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(greeting).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Starts a manager with one TCP port to `backend_id`'s endpoints.
async fn one_tcp_port(
    settings: L4Settings,
    id: &BackendId,
    endpoints: &[SocketAddr],
    accept_proxy: bool,
    send_proxy: Option<ProxyVersion>,
) -> (Arc<Tables>, Arc<L4Manager>, SocketAddr) {
    let tables = Tables::new();
    publish_endpoints(&tables, &[(id, endpoints)]);
    let port = L4Port::tcp(free_tcp_port());
    tables.publish_l4(table(vec![(port, route(id.clone(), accept_proxy, send_proxy))]));
    let manager = L4Manager::start(tables.clone(), settings);
    assert!(manager.failures().is_empty(), "{:?}", manager.failures());
    let addr = manager
        .bound()
        .into_iter()
        .find(|(p, _)| *p == port)
        .map(|(_, a)| a)
        .expect("port bound by start");
    (tables, manager, addr)
}

async fn read_exact_vec(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut buf))
        .await
        .expect("read in time")
        .expect("read");
    buf
}

/// Reads until EOF; an error (reset) counts as an end too and is returned.
async fn read_to_end(s: &mut TcpStream) -> (Vec<u8>, io::Result<()>) {
    let mut out = Vec::new();
    let r = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("EOF in time")
        .map(|_| ());
    (out, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_through_an_l4_port() {
    let id = backend("echo");
    let echo = echo_backend(b"").await;
    let (_tables, manager, addr) = one_tcp_port(settings(), &id, &[echo], false, None).await;
    for _ in 0..3 {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"hello, l4").await.expect("write");
        assert_eq!(read_exact_vec(&mut c, 9).await, b"hello, l4");
    }
    let stats = manager.stats();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].total, 3);
}

/// A backend that hashes what it receives and echoes it back; the digest comes out of
/// the channel at EOF.
async fn hashing_echo(hash: bool) -> (SocketAddr, tokio::sync::oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (digest_tx, digest_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.expect("accept");
        let (mut r, mut w) = s.into_split();
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = r.read(&mut buf).await.expect("backend read");
            if n == 0 {
                break;
            }
            if hash {
                ctx.update(&buf[..n]);
            }
            w.write_all(&buf[..n]).await.expect("backend write");
        }
        w.shutdown().await.expect("backend shutdown");
        let _ = digest_tx.send(ctx.finish().as_ref().to_vec());
    });
    (addr, digest_rx)
}

/// Sends `size` generated bytes to `addr` (a [`hashing_echo`], directly or through a
/// port) while reading them back; checks the three SHA-256 digests and returns GB/s
/// each way.
///
/// Without `hash` nothing is hashed (only the byte count is checked): the measurement's
/// own SHA-256 would otherwise be most of the CPU.
async fn transfer(
    addr: SocketAddr,
    size: u64,
    backend_digest: tokio::sync::oneshot::Receiver<Vec<u8>>,
    hash: bool,
) -> f64 {
    // 1 MiB of pseudo-random bytes, sent from a moving offset so chunks differ.
    let mut pattern = vec![0u8; (1 << 20) + 4096];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in pattern.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let started = std::time::Instant::now();
    let client = TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = client.into_split();
    let writer = tokio::spawn(async move {
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut sent: u64 = 0;
        let mut i: usize = 0;
        while sent < size {
            let offset = (i * 7919) % 4096;
            let len = usize::try_from((size - sent).min(1 << 20)).expect("fits");
            let chunk = &pattern[offset..offset + len];
            if hash {
                ctx.update(chunk);
            }
            w.write_all(chunk).await.expect("client write");
            sent += len as u64;
            i += 1;
        }
        w.shutdown().await.expect("client shutdown");
        ctx.finish().as_ref().to_vec()
    });
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut received: u64 = 0;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf).await.expect("client read");
        if n == 0 {
            break;
        }
        if hash {
            ctx.update(&buf[..n]);
        }
        received += n as u64;
    }
    let sent_digest = writer.await.expect("writer");
    let received_digest = ctx.finish().as_ref().to_vec();
    let backend_digest = backend_digest.await.expect("backend digest");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(received, size);
    if !hash {
        return size as f64 / secs / 1e9;
    }
    assert_eq!(sent_digest, backend_digest, "the backend got what the client sent");
    assert_eq!(sent_digest, received_digest, "the client got it back intact");
    size as f64 / secs / 1e9
}

fn transfer_size() -> u64 {
    std::env::var("KINGRESS_L4_TRANSFER_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 30)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_keeps_its_sha256() {
    let size = transfer_size();
    let (backend_addr, digest) = hashing_echo(true).await;
    let id = backend("sink");
    let (_tables, _manager, addr) = one_tcp_port(settings(), &id, &[backend_addr], false, None).await;
    let rate = transfer(addr, size, digest, true).await;
    eprintln!("L4 transfer (splice): {size} bytes each way, {rate:.2} GB/s each way");
}

/// The relay's throughput: direct, through a port with splice, through a port with the
/// userspace copy, one after the other on the same machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: cargo test --release -p kingress-proxy --test l4 -- --ignored --nocapture"]
async fn relay_throughput() {
    let size = transfer_size();
    for round in 0..3 {
        let (direct, digest) = hashing_echo(false).await;
        let direct_rate = transfer(direct, size, digest, false).await;
        let mut rates = Vec::new();
        for mode in [RelayMode::Splice, RelayMode::Copy] {
            let (backend_addr, digest) = hashing_echo(false).await;
            let s = L4Settings {
                relay: mode,
                ..settings()
            };
            let (_tables, _manager, addr) = one_tcp_port(s, &backend("bench"), &[backend_addr], false, None).await;
            rates.push(transfer(addr, size, digest, false).await);
        }
        eprintln!(
            "round {round}: {size} bytes each way: direct {direct_rate:.2} GB/s, splice {:.2} GB/s, copy {:.2} GB/s",
            rates[0], rates[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_reaches_the_backend_and_its_answer_comes_back() {
    // The backend reads to EOF, then answers with the byte count and closes.
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    let backend_addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("backend read to EOF");
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .expect("answer after EOF");
        s.shutdown().await.expect("shutdown");
    });
    let id = backend("half");
    let (_tables, _manager, addr) = one_tcp_port(settings(), &id, &[backend_addr], false, None).await;
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"twelve bytes").await.expect("write");
    c.shutdown().await.expect("half-close");
    let (answer, end) = read_to_end(&mut c).await;
    end.expect("a clean EOF");
    assert_eq!(answer, b"got 12 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_propagated_both_ways() {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    let backend_addr = listener.local_addr().expect("addr");
    let id = backend("rst");
    let (_tables, _manager, addr) = one_tcp_port(settings(), &id, &[backend_addr], false, None).await;

    // Client resets: the backend's read fails with a reset.
    let c = TcpStream::connect(addr).await.expect("connect");
    let (mut b, _) = listener.accept().await.expect("accept");
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(c);
    let (_, end) = read_to_end(&mut b).await;
    assert_eq!(end.expect_err("a reset").kind(), io::ErrorKind::ConnectionReset);

    // Backend resets: the client's read fails with a reset.
    let mut c = TcpStream::connect(addr).await.expect("connect");
    let (b, _) = listener.accept().await.expect("accept");
    socket2::SockRef::from(&b)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(b);
    let (_, end) = read_to_end(&mut c).await;
    assert_eq!(end.expect_err("a reset").kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_moves_to_the_next_endpoint() {
    let refusing: SocketAddr = (LOCALHOST, free_tcp_port()).into();
    let echo = echo_backend(b"").await;
    let id = backend("retry");
    let (tables, _manager, addr) = one_tcp_port(settings(), &id, &[refusing, echo], false, None).await;
    // Round-robin starts on each endpoint in turn: every connection must reach the echo.
    for _ in 0..4 {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"x").await.expect("write");
        assert_eq!(read_exact_vec(&mut c, 1).await, b"x");
    }
    let endpoints = tables.endpoints();
    let stats = endpoints.stats(&refusing).expect("stats of the refusing endpoint");
    assert_eq!(stats.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoint_closes_the_client() {
    let id = backend("empty");
    let (_tables, _manager, addr) = one_tcp_port(settings(), &id, &[], false, None).await;
    // The reset may come before tokio's connect has checked the socket's error.
    match TcpStream::connect(addr).await {
        Ok(mut c) => {
            let (data, _) = read_to_end(&mut c).await;
            assert!(data.is_empty());
        }
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_returns_each_reply_to_its_client() {
    let echo = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind");
    let echo_addr = echo.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = echo.send_to(&reply, from).await;
        }
    });
    let id = udp_backend("default", "dns", 53);
    let tables = Tables::new();
    publish_endpoints(&tables, &[(&id, &[echo_addr])]);
    let port = L4Port::udp(free_udp_port());
    tables.publish_l4(table(vec![(port, route(id.clone(), false, None))]));
    let manager = L4Manager::start(tables.clone(), settings());
    let addr = manager.bound().first().map(|(_, a)| *a).expect("bound");

    let a = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind a");
    let b = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind b");
    let mut buf = vec![0u8; 2048];
    for round in 0..3 {
        a.send_to(format!("a{round}").as_bytes(), addr).await.expect("send a");
        b.send_to(format!("b{round}").as_bytes(), addr).await.expect("send b");
        // UDP on loopback does not lose datagrams in practice; the deadline guards a hang.
        for (sock, name) in [(&a, "a"), (&b, "b")] {
            let (n, from) = tokio::time::timeout(DEADLINE, sock.recv_from(&mut buf))
                .await
                .expect("reply in time")
                .expect("recv");
            assert_eq!(from, addr, "the reply comes from the L4 port");
            assert_eq!(&buf[..n], format!("echo:{name}{round}").as_bytes());
        }
    }
    let stats = manager.stats();
    assert_eq!((stats[0].open, stats[0].total), (2, 2), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_port_refuses_new_connections_and_drains_open_ones() {
    let echo = echo_backend(b"").await;
    let id = backend("drain");
    let (tables, manager, addr) = one_tcp_port(settings(), &id, &[echo], false, None).await;
    let mut open = TcpStream::connect(addr).await.expect("connect");
    open.write_all(b"before").await.expect("write");
    assert_eq!(read_exact_vec(&mut open, 6).await, b"before");

    tables.publish_l4(L4Table::new());
    assert!(manager.apply().is_empty());
    assert!(manager.bound().is_empty());
    let refused = TcpStream::connect(addr).await.expect_err("the port is closed");
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);

    open.write_all(b"after").await.expect("write while draining");
    assert_eq!(read_exact_vec(&mut open, 5).await, b"after");
    let stats = manager.stats();
    assert!(stats[0].draining && stats[0].open == 1, "{stats:?}");

    // Back in the table: bound again on the same address while the old one drains.
    let port = stats[0].port;
    tables.publish_l4(table(vec![(port, route(id.clone(), false, None))]));
    assert!(manager.apply().is_empty());
    assert_eq!(manager.bound(), vec![(port, addr)]);
    let mut again = TcpStream::connect(addr).await.expect("connect");
    again.write_all(b"again").await.expect("write");
    assert_eq!(read_exact_vec(&mut again, 5).await, b"again");
    drop(again);
    tables.publish_l4(L4Table::new());
    manager.apply();
    drop(open);
    poll_until(DEADLINE, "the drained port to be forgotten", || {
        let empty = manager.stats().is_empty();
        async move { empty.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_closes_what_is_left() {
    let echo = echo_backend(b"").await;
    let id = backend("drain-timeout");
    let s = L4Settings {
        drain_timeout: Duration::from_millis(200),
        ..settings()
    };
    let (tables, manager, addr) = one_tcp_port(s, &id, &[echo], false, None).await;
    let mut open = TcpStream::connect(addr).await.expect("connect");
    open.write_all(b"x").await.expect("write");
    assert_eq!(read_exact_vec(&mut open, 1).await, b"x");
    tables.publish_l4(L4Table::new());
    manager.apply();
    let (_, _) = read_to_end(&mut open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_endpoints_take_new_connections_and_leave_open_ones() {
    let a = echo_backend(b"A").await;
    let b = echo_backend(b"B").await;
    let id = backend("moving");
    let (tables, _manager, addr) = one_tcp_port(settings(), &id, &[a], false, None).await;
    let mut first = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(read_exact_vec(&mut first, 1).await, b"A");

    publish_endpoints(&tables, &[(&id, &[b])]);
    let mut second = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(read_exact_vec(&mut second, 1).await, b"B");
    first.write_all(b"still").await.expect("write");
    assert_eq!(read_exact_vec(&mut first, 5).await, b"still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_a_diagnostic_then_bound_once_free() {
    let blocker = std::net::TcpListener::bind((LOCALHOST, 0)).expect("bind");
    let port = L4Port::tcp(blocker.local_addr().expect("addr").port());
    let echo = echo_backend(b"").await;
    let id = backend("busy");
    let tables = Tables::new();
    publish_endpoints(&tables, &[(&id, &[echo])]);
    tables.publish_l4(table(vec![(port, route(id.clone(), false, None))]));
    let manager = L4Manager::start(tables.clone(), settings());
    let diagnostics = manager.apply();
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    let reason = &diagnostics[0].reason;
    assert!(
        reason.contains(&format!("port {port} on 127.0.0.1 cannot be bound")) && reason.contains("retrying"),
        "{reason}"
    );
    assert!(manager.bound().is_empty());

    drop(blocker);
    let addr = poll_until(DEADLINE, "the port to be bound", || {
        let bound = manager.bound().first().map(|(_, a)| *a);
        async move { bound }
    })
    .await;
    assert!(manager.failures().is_empty());
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"ok").await.expect("write");
    assert_eq!(read_exact_vec(&mut c, 2).await, b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_port_opens_without_an_explicit_apply() {
    let echo = echo_backend(b"").await;
    let id = backend("later");
    let tables = Tables::new();
    publish_endpoints(&tables, &[(&id, &[echo])]);
    let manager = L4Manager::start(tables.clone(), settings());
    assert!(manager.bound().is_empty());
    let port = L4Port::tcp(free_tcp_port());
    tables.publish_l4(table(vec![(port, route(id.clone(), false, None))]));
    let addr = poll_until(DEADLINE, "the published port to open", || {
        let bound = manager.bound().first().map(|(_, a)| *a);
        async move { bound }
    })
    .await;
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"hi").await.expect("write");
    assert_eq!(read_exact_vec(&mut c, 2).await, b"hi");
}

/// Accepts one connection, parses its PROXY header with ppp, returns (header addresses,
/// the bytes after it).
async fn accept_proxied(listener: &TcpListener, after: usize) -> (ppp::v2::Addresses, bool, Vec<u8>) {
    let (mut s, _) = listener.accept().await.expect("accept");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .expect("header in time")
            .expect("read");
        assert!(n > 0, "EOF before the PROXY header");
        buf.extend_from_slice(&chunk[..n]);
        let parsed = match ppp::HeaderResult::parse(&buf) {
            ppp::HeaderResult::V1(Ok(h)) => {
                let a = match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => ppp::v2::Addresses::IPv4(a),
                    ppp::v1::Addresses::Tcp6(a) => ppp::v2::Addresses::IPv6(a),
                    ppp::v1::Addresses::Unknown => ppp::v2::Addresses::Unspecified,
                };
                Some((a, false, h.header.len()))
            }
            ppp::HeaderResult::V2(Ok(h)) => Some((h.addresses, true, h.len())),
            r => {
                use ppp::PartialResult;
                assert!(r.is_incomplete(), "bad PROXY header: {r:?}");
                None
            }
        };
        if let Some((addresses, v2, len)) = parsed {
            let mut rest = buf[len..].to_vec();
            while rest.len() < after {
                let n = s.read(&mut chunk).await.expect("read");
                assert!(n > 0, "EOF before the data");
                rest.extend_from_slice(&chunk[..n]);
            }
            return (addresses, v2, rest);
        }
    }
}

fn v4(source: SocketAddr, destination: SocketAddr) -> ppp::v2::Addresses {
    (source, destination).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v1_then_v2_reach_the_backend_without_a_rebind() {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    let backend_addr = listener.local_addr().expect("addr");
    let id = backend("proxied");
    let (tables, manager, addr) = one_tcp_port(settings(), &id, &[backend_addr], false, Some(ProxyVersion::V1)).await;

    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"ping").await.expect("write");
    let (addresses, is_v2, rest) = accept_proxied(&listener, 4).await;
    assert!(!is_v2);
    assert_eq!(addresses, v4(c.local_addr().expect("addr"), addr));
    assert_eq!(rest, b"ping");

    // The Service's annotation now asks for v2: the next connection gets it.
    let port = manager.bound()[0].0;
    tables.publish_l4(table(vec![(port, route(id.clone(), false, Some(ProxyVersion::V2)))]));
    manager.apply();
    assert_eq!(manager.bound()[0].1, addr);
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"pong").await.expect("write");
    let (addresses, is_v2, rest) = accept_proxied(&listener, 4).await;
    assert!(is_v2);
    assert_eq!(addresses, v4(c.local_addr().expect("addr"), addr));
    assert_eq!(rest, b"pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_proxy_header_is_the_client_and_a_malformed_one_closes() {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    let backend_addr = listener.local_addr().expect("addr");
    let id = backend("relayed");
    // The third header is an incomplete v2 one: it ends with the header timeout.
    let s = L4Settings {
        proxy_header_timeout: Duration::from_millis(300),
        ..settings()
    };
    let (_tables, _manager, addr) = one_tcp_port(s, &id, &[backend_addr], true, Some(ProxyVersion::V1)).await;

    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"PROXY TCP4 1.2.3.4 nonsense\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x99",
    ] {
        let mut bad = TcpStream::connect(addr).await.expect("connect");
        bad.write_all(garbage).await.expect("write");
        let (data, _) = read_to_end(&mut bad).await;
        assert!(data.is_empty());
    }

    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 80\r\nhello")
        .await
        .expect("write");
    let (addresses, _, rest) = accept_proxied(&listener, 5).await;
    let client: SocketAddr = "203.0.113.7:4242".parse().expect("addr");
    assert_eq!(addresses, v4(client, addr));
    assert_eq!(rest, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed() {
    let echo = echo_backend(b"").await;
    let id = backend("idle");
    let s = L4Settings {
        idle_timeout: Duration::from_millis(200),
        ..settings()
    };
    let (_tables, manager, addr) = one_tcp_port(s, &id, &[echo], false, None).await;
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"x").await.expect("write");
    assert_eq!(read_exact_vec(&mut c, 1).await, b"x");
    let (data, end) = read_to_end(&mut c).await;
    assert!(data.is_empty());
    end.expect("closed with a FIN");
    poll_until(DEADLINE, "the connection to be counted closed", || {
        let open = manager.stats()[0].open;
        async move { (open == 0).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_ports_and_then_the_connections() {
    let echo = echo_backend(b"").await;
    let id = backend("shutdown");
    let (_tables, manager, addr) = one_tcp_port(settings(), &id, &[echo], false, None).await;
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"x").await.expect("write");
    assert_eq!(read_exact_vec(&mut c, 1).await, b"x");
    manager.shutdown(Duration::from_millis(100)).await;
    let (data, _) = read_to_end(&mut c).await;
    assert!(data.is_empty());
    assert!(TcpStream::connect(addr).await.is_err());
    assert!(manager.bound().is_empty() && manager.stats().is_empty());
}

/// A UDP echo backend answering `echo:<datagram>`.
async fn udp_echo_backend() -> SocketAddr {
    let echo = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind");
    let addr = echo.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = echo.send_to(&reply, from).await;
        }
    });
    addr
}

async fn one_udp_port(settings: L4Settings) -> (Arc<Tables>, Arc<L4Manager>, L4Port, SocketAddr) {
    let echo = udp_echo_backend().await;
    let id = udp_backend("default", "udp", 53);
    let tables = Tables::new();
    publish_endpoints(&tables, &[(&id, &[echo])]);
    let port = L4Port::udp(free_udp_port());
    tables.publish_l4(table(vec![(port, route(id, false, None))]));
    let manager = L4Manager::start(tables.clone(), settings);
    let addr = manager.bound().first().map(|(_, a)| *a).expect("bound");
    (tables, manager, port, addr)
}

async fn udp_roundtrip(sock: &UdpSocket, to: SocketAddr, msg: &str) {
    sock.send_to(msg.as_bytes(), to).await.expect("send");
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(DEADLINE, sock.recv_from(&mut buf))
        .await
        .expect("reply in time")
        .expect("recv");
    assert_eq!(from, to);
    assert_eq!(&buf[..n], format!("echo:{msg}").as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_end_when_idle_and_a_full_table_evicts_the_oldest() {
    let s = L4Settings {
        max_udp_flows: 1,
        udp_idle_timeout: Duration::from_millis(300),
        ..settings()
    };
    let (_tables, manager, _port, addr) = one_udp_port(s).await;
    let a = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind");
    let b = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind");
    udp_roundtrip(&a, addr, "a").await;
    udp_roundtrip(&b, addr, "b").await;
    let stats = manager.stats();
    assert_eq!((stats[0].total, stats[0].evicted), (2, 1), "{stats:?}");
    poll_until(DEADLINE, "the flows to end when idle", || {
        let open = manager.stats()[0].open;
        async move { (open == 0).then_some(()) }
    })
    .await;
    // A new datagram starts a new flow.
    udp_roundtrip(&a, addr, "again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_udp_port_serves_its_flows_only_and_comes_back_on_the_same_socket() {
    let (tables, manager, port, addr) = one_udp_port(settings()).await;
    let route = tables.l4().port(&port).cloned().expect("route");
    let a = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind");
    let b = UdpSocket::bind((LOCALHOST, 0)).await.expect("bind");
    udp_roundtrip(&a, addr, "a1").await;

    tables.publish_l4(L4Table::new());
    manager.apply();
    assert!(manager.bound().is_empty());
    udp_roundtrip(&a, addr, "a2").await;
    b.send_to(b"b1", addr).await.expect("send");
    poll_until(DEADLINE, "the new client's datagram to be dropped", || {
        let dropped = manager.stats()[0].dropped;
        async move { (dropped >= 1).then_some(()) }
    })
    .await;

    tables.publish_l4(table(vec![(port, (*route).clone())]));
    manager.apply();
    assert_eq!(manager.bound(), vec![(port, addr)]);
    udp_roundtrip(&b, addr, "b2").await;
    udp_roundtrip(&a, addr, "a3").await;
}

/// A connected pair of TCP streams on loopback.
async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (a.expect("connect"), b.expect("accept").0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_counts_the_bytes_of_both_directions() {
    let (mut client, client_side) = socket_pair().await;
    let (upstream_side, mut upstream) = socket_pair().await;
    let relay = tokio::spawn(kingress_proxy::l4::relay(client_side, upstream_side, DEADLINE));
    client.write_all(b"abc").await.expect("write");
    client.shutdown().await.expect("half-close");
    assert_eq!(read_exact_vec(&mut upstream, 3).await, b"abc");
    upstream.write_all(b"hello").await.expect("write");
    upstream.shutdown().await.expect("half-close");
    let (rest, end) = read_to_end(&mut upstream).await;
    assert!(rest.is_empty() && end.is_ok());
    let (answer, end) = read_to_end(&mut client).await;
    assert_eq!(answer, b"hello");
    end.expect("clean EOF");
    assert_eq!(relay.await.expect("join").expect("relay"), (3, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_endpoint_says_why_it_failed() {
    use kingress_proxy::l4::{ConnectError, connect_endpoint};
    let tables = Tables::new();
    let refused_a: SocketAddr = (LOCALHOST, free_tcp_port()).into();
    let refused_b: SocketAddr = (LOCALHOST, free_tcp_port()).into();
    let (empty, dead) = (backend("empty"), backend("dead"));
    publish_endpoints(&tables, &[(&empty, &[]), (&dead, &[refused_a, refused_b])]);
    let s = settings();
    assert!(matches!(
        connect_endpoint(&tables, &backend("missing"), &s).await,
        Err(ConnectError::UnknownBackend(_))
    ));
    assert!(matches!(
        connect_endpoint(&tables, &empty, &s).await,
        Err(ConnectError::NoEndpoint(_))
    ));
    match connect_endpoint(&tables, &dead, &s).await {
        Err(ConnectError::Failed { tries, last, .. }) => {
            assert_eq!(tries, 2, "each endpoint once");
            assert_eq!(last.kind(), io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let endpoints = tables.endpoints();
    assert_eq!(endpoints.stats(&refused_a).expect("stats").in_flight(), 0);
}
