//! End to end over real sockets: a gateway on 127.0.0.1:0 serving a folder of manifests,
//! real echo backends, real HTTP clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::*;
use kingress_proxy::ProxySettings;
use tokio::io::AsyncWriteExt;

fn name_of(v: &serde_json::Value) -> &str {
    v["name"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_path_precedence() {
    let (exact, wild, any, api, impls, ex) = (
        echo("exact").await,
        echo("wild").await,
        echo("any").await,
        echo("api").await,
        echo("impl").await,
        echo("ex").await,
    );
    let files = vec![
        (
            "svc.yaml",
            [
                service_yaml("exact", &[exact.addr().port()]),
                service_yaml("wild", &[wild.addr().port()]),
                service_yaml("any", &[any.addr().port()]),
                service_yaml("api", &[api.addr().port()]),
                service_yaml("impl", &[impls.addr().port()]),
                service_yaml("ex", &[ex.addr().port()]),
            ]
            .join("---\n"),
        ),
        (
            "a.yaml",
            ingress_yaml(
                "a",
                "foo.example.com",
                &[
                    ("/", "Prefix", "exact"),
                    ("/api", "Prefix", "api"),
                    ("/api", "Exact", "ex"),
                    ("/files", "ImplementationSpecific", "impl"),
                ],
            ),
        ),
        ("b.yaml", ingress_yaml("b", "*.example.com", &[("/", "Prefix", "wild")])),
        ("c.yaml", ingress_yaml("c", "", &[("/", "Prefix", "any")])),
    ];
    let env = start(&files, ProxySettings::default()).await;
    let cases = [
        ("foo.example.com", "/", "exact"),
        ("FOO.example.com:8080", "/x", "exact"),
        ("bar.example.com", "/", "wild"),
        ("a.b.example.com", "/", "any"),
        ("example.com", "/", "any"),
        ("other.test", "/api", "any"),
        ("foo.example.com", "/api", "ex"),
        ("foo.example.com", "/api/", "api"),
        ("foo.example.com", "/api/v1", "api"),
        ("foo.example.com", "/apix", "exact"),
        ("foo.example.com", "/filesystem", "impl"),
        ("foo.example.com", "/files/a", "impl"),
    ];
    for (host, path, want) in cases {
        let v = env.echo_json(host, path).await;
        assert_eq!(name_of(&v), want, "{host}{path}");
        assert_eq!(v["path"], path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_contract_matches_ingress_nginx() {
    let (env, _backend) = start_one("b", "h.test", ProxySettings::default()).await;
    let resp = env
        .client
        .get(env.url("/p?q=1"))
        .header("host", "h.test:1234")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-real-ip", "198.51.100.1")
        .header("proxy", "http://evil.invalid")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["server"], "kingress", "no Server from the backend: ours");
    let v: serde_json::Value = resp.json().await.unwrap();
    let h = &v["headers"];
    let port = env.gateway.http_addr.port().to_string();
    assert_eq!(h["host"], "h.test:1234", "Host passed through unchanged");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "client XFF not trusted");
    assert_eq!(h["x-original-forwarded-for"], "203.0.113.9");
    assert_eq!(h["x-forwarded-host"], "h.test:1234");
    assert_eq!(h["x-forwarded-port"], port.as_str());
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-scheme"], "http");
    assert_eq!(h["x-scheme"], "http");
    assert!(h.get("proxy").is_none(), "httpoxy: Proxy removed");
    let id = h["x-request-id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    // Exactly one of each contract header.
    let list = v["header_list"].as_array().unwrap();
    for name in ["x-forwarded-for", "x-real-ip", "x-request-id", "x-forwarded-proto"] {
        assert_eq!(list.iter().filter(|p| p[0] == name).count(), 1, "{name}: {list:?}");
    }

    // A client-sent X-Request-ID is kept; hop-by-hop headers are not forwarded.
    let resp = env
        .client
        .get(env.url("/"))
        .header("host", "h.test")
        .header("x-request-id", "abc-123")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["headers"]["x-request-id"], "abc-123");
    assert!(v["headers"].get("x-hop").is_none());
    assert!(v["headers"].get("keep-alive").is_none());
    // A backend's own Server header is kept.
    let resp = env
        .client
        .get(env.url("/"))
        .header("host", "h.test")
        .header("x-echo-set-header", "Server: backend")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["server"], "backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_404_502_503_504_413() {
    let slow = echo("slow").await;
    // A port with nothing listening: bind then drop.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let files = vec![
        (
            "svc.yaml",
            [
                service_yaml("slow", &[slow.addr().port()]),
                service_yaml("dead", &[dead]),
                service_yaml("empty", &[]),
            ]
            .join("---\n"),
        ),
        (
            "ing.yaml",
            [ingress_yaml(
                "a",
                "e.test",
                &[
                    ("/slow", "Prefix", "slow"),
                    ("/dead", "Prefix", "dead"),
                    ("/empty", "Prefix", "empty"),
                    ("/ghost", "Prefix", "ghost"),
                ],
            )]
            .join("---\n"),
        ),
    ];
    let settings = ProxySettings {
        read_timeout: Duration::from_millis(300),
        ..ProxySettings::default()
    };
    let env = start(&files, settings).await;
    let (status, body) = env.get("e.test", "/nothing").await;
    assert_eq!(status, 404);
    assert!(body.contains("404 Not Found"));
    assert_eq!(env.get("nohost.test", "/").await.0, 404);
    assert_eq!(env.get("e.test", "/empty").await.0, 503, "Service without endpoints");
    assert_eq!(env.get("e.test", "/ghost").await.0, 503, "Service does not exist");
    assert_eq!(env.get("e.test", "/dead").await.0, 502, "connection refused");
    let resp = env
        .client
        .get(env.url("/slow"))
        .header("host", "e.test")
        .header("x-echo-delay-ms", "2000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504, "read timeout");
    assert_eq!(resp.headers()["server"], "kingress");
    // Bodies over 1 MiB: 413, by Content-Length and by chunked streaming.
    let big = vec![b'x'; 1024 * 1024 + 1];
    let resp = env
        .client
        .post(env.url("/slow"))
        .header("host", "e.test")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // Chunked (no length declared): the proxy counts as the body streams and answers
    // 413 once it passes the limit. The reader runs while the body is still being sent.
    let tcp = tokio::net::TcpStream::connect(env.gateway.http_addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr
            .write_all(b"POST /slow HTTP/1.1\r\nHost: e.test\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await;
        for chunk in big.chunks(64 * 1024) {
            // The proxy may stop reading once it has answered: write errors are expected.
            if wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.is_err()
                || wr.write_all(chunk).await.is_err()
                || wr.write_all(b"\r\n").await.is_err()
            {
                return;
            }
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
    });
    let mut body = Vec::new();
    let (status, _) = read_streamed(&mut rd, |d| body.extend_from_slice(d)).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    writer.await.unwrap();
    // Exactly the limit is fine.
    let ok = vec![b'x'; 1024 * 1024];
    let resp = env
        .client
        .post(env.url("/slow"))
        .header("host", "e.test")
        .body(ok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["body_length"], 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_and_retry_past_dead_endpoints() {
    let (a, b) = (echo("a").await, echo("b").await);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let files = vec![
        ("svc.yaml", service_yaml("s", &[a.addr().port(), b.addr().port(), dead])),
        ("ing.yaml", ingress_yaml("i", "rr.test", &[("/", "Prefix", "s")])),
    ];
    let env = start(&files, ProxySettings::default()).await;
    let mut counts = std::collections::HashMap::new();
    for _ in 0..60 {
        let v = env.echo_json("rr.test", "/").await;
        *counts.entry(name_of(&v).to_string()).or_insert(0) += 1;
    }
    // Every request succeeded; the dead endpoint's turns went to the others.
    assert_eq!(counts.values().sum::<i32>(), 60);
    assert!(counts["a"] >= 20 && counts["b"] >= 20, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_downstream_and_pooled_upstream() {
    let (env, _backend) = start_one("b", "k.test", ProxySettings::default()).await;
    let mut s = tokio::net::TcpStream::connect(env.gateway.http_addr).await.unwrap();
    let mut upstream_ports = std::collections::HashSet::new();
    for i in 0..5 {
        s.write_all(format!("GET /{i} HTTP/1.1\r\nHost: k.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 200, "request {i} on the same client connection");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        upstream_ports.insert(v["remote_addr"].as_str().unwrap().to_string());
    }
    assert_eq!(
        upstream_ports.len(),
        1,
        "one pooled upstream connection served all: {upstream_ports:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_large_bodies_stream_both_ways() {
    let settings = ProxySettings {
        max_body_bytes: None,
        ..ProxySettings::default()
    };
    let (env, _backend) = start_one("b", "big.test", settings).await;
    // 32 MiB up, chunked, counted by the backend as it streams through.
    let chunk: Vec<u8> = (0..=255u8).cycle().take(256 * 1024).collect();
    let tcp = tokio::net::TcpStream::connect(env.gateway.http_addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let sent = chunk.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(b"POST /up HTTP/1.1\r\nHost: big.test\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..128 {
            wr.write_all(format!("{:x}\r\n", sent.len()).as_bytes()).await.unwrap();
            wr.write_all(&sent).await.unwrap();
            wr.write_all(b"\r\n").await.unwrap();
        }
        wr.write_all(b"0\r\n\r\n").await.unwrap();
        wr
    });
    let mut body = Vec::new();
    let (status, _) = read_streamed(&mut rd, |d| body.extend_from_slice(d)).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["body_length"], 128 * 256 * 1024);
    writer.await.unwrap();
    // 1 MiB echoed back byte for byte, the response streaming while the request is sent.
    let tcp = tokio::net::TcpStream::connect(env.gateway.http_addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let sent = chunk.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(
            b"POST /duplex HTTP/1.1\r\nHost: big.test\r\nx-echo-mode: body\r\nContent-Length: 1048576\r\n\r\n",
        )
        .await
        .unwrap();
        for _ in 0..4 {
            wr.write_all(&sent).await.unwrap();
        }
        wr
    });
    let mut offset = 0usize;
    let (status, total) = read_streamed(&mut rd, |data| {
        for b in data {
            assert_eq!(*b, chunk[offset % chunk.len()], "byte {offset}");
            offset += 1;
        }
    })
    .await;
    assert_eq!((status, total), (200, 1024 * 1024));
    writer.await.unwrap();
    // 64 MiB down.
    let resp = env
        .client
        .get(env.url("/down"))
        .header("host", "big.test")
        .header("x-echo-response-bytes", (64u64 << 20).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), 64 << 20);
    // A raw chunked request.
    let r = raw_request(
        env.gateway.http_addr,
        b"POST /c HTTP/1.1\r\nHost: big.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["body_length"], 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue() {
    let (env, _backend) = start_one("b", "c.test", ProxySettings::default()).await;
    let mut s = tokio::net::TcpStream::connect(env.gateway.http_addr).await.unwrap();
    s.write_all(b"PUT /x HTTP/1.1\r\nHost: c.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let interim = read_response(&mut s).await;
    assert_eq!(interim.status, 100, "{}", interim.head);
    s.write_all(b"hello").await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["body_length"], 5);
    // Over the limit: 413 at once, without reading the body.
    let r = raw_request(
        env.gateway.http_addr,
        b"PUT /x HTTP/1.1\r\nHost: c.test\r\nContent-Length: 99999999\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_is_tunnelled_both_ways() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (env, _backend) = start_one("ws", "ws.test", ProxySettings::default()).await;
    let tcp = tokio::net::TcpStream::connect(env.gateway.http_addr).await.unwrap();
    let request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request("ws://ws.test/chat").unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..10 {
        ws.send(Message::Text(format!("hello {i}").into())).await.unwrap();
        let m = ws.next().await.unwrap().unwrap();
        assert_eq!(m, Message::Text(format!("hello {i}").into()));
    }
    ws.send(Message::Binary(vec![0u8, 1, 2, 255].into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Binary(vec![0u8, 1, 2, 255].into())
    );
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_service_answers_503_then_serves_when_it_appears() {
    let backend = echo("late").await;
    let files = vec![("ing.yaml", ingress_yaml("i", "late.test", &[("/", "Prefix", "late")]))];
    let env = start(&files, ProxySettings::default()).await;
    assert_eq!(env.get("late.test", "/").await.0, 503);
    let cfg = env.debug_config().await;
    let diags = cfg["diagnostics"].to_string();
    assert!(
        diags.contains("Ingress default/i: service \\\"late\\\" not found"),
        "{diags}"
    );
    write_atomic(&env.file("svc.yaml"), &service_yaml("late", &[backend.addr().port()]));
    env.wait_status("late.test", "/", 200).await;
    assert_eq!(name_of(&env.echo_json("late.test", "/").await), "late");
    let cfg = env.debug_config().await;
    assert_eq!(cfg["diagnostics"].as_array().unwrap().len(), 0, "{cfg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_and_objects_never_take_down_the_rest() {
    let backend = echo("b").await;
    let files = vec![
        ("svc.yaml", service_yaml("b", &[backend.addr().port()])),
        ("good.yaml", ingress_yaml("good", "good.test", &[("/", "Prefix", "b")])),
        (
            "other.yaml",
            ingress_yaml("other", "other.test", &[("/", "Prefix", "b")]),
        ),
    ];
    let env = start(&files, ProxySettings::default()).await;
    assert_eq!(env.get("other.test", "/").await.0, 200);
    // A file that stops parsing keeps its last good version.
    write_atomic(
        &env.file("other.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: [oops\n",
    );
    poll_until(WAIT, "the parse error to be reported", || async {
        let cfg = env.debug_config().await;
        let d = cfg["diagnostics"].to_string();
        (d.contains("other.yaml:") && d.contains("last good version keeps serving")).then_some(())
    })
    .await;
    assert_eq!(env.get("other.test", "/").await.0, 200);
    // An invalid object is skipped with a diagnostic naming it; the rest serves.
    let bad = ingress_yaml("bad", "bad.test", &[("/", "Prefix", "b")]).replace("number: 80", "number: 99999");
    let port_text = ingress_yaml("typo", "typo.test", &[("/", "Prefix", "b")]).replace("number: 80", "number: eighty");
    write_atomic(&env.file("bad.yaml"), &format!("{bad}---\n{port_text}"));
    poll_until(WAIT, "the invalid objects to be reported", || async {
        let d = env.debug_config().await["diagnostics"].to_string();
        (d.contains("Ingress default/bad: invalid, skipped") && d.contains("Ingress default/typo: invalid, skipped"))
            .then_some(())
    })
    .await;
    assert_eq!(env.get("good.test", "/").await.0, 200);
    assert_eq!(env.get("bad.test", "/").await.0, 404);
    // Garbage of every kind: still serving.
    write_atomic(&env.file("junk.yaml"), "\u{0}\u{1}{{{{[[[[");
    write_atomic(&env.file("junk.json"), "{\"kind\": 5, \"items\": [1,2,3]}");
    write_atomic(
        &env.file("list.yaml"),
        "apiVersion: v1\nkind: List\nitems: [1, {kind: Service}, {apiVersion: v1, kind: Service, metadata: {name: x}, spec: {ports: [{port: -1}]}}]\n",
    );
    poll_until(WAIT, "junk to be seen", || async {
        let d = env.debug_config().await["diagnostics"].to_string();
        (d.contains("junk.yaml") && d.contains("Service default/x")).then_some(())
    })
    .await;
    assert_eq!(env.get("good.test", "/").await.0, 200);
    let health = env.client.get(env.admin("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reload_drops_no_request() {
    let (a, b) = (echo("a").await, echo("b").await);
    let files = vec![
        (
            "svc.yaml",
            [
                service_yaml("a", &[a.addr().port()]),
                service_yaml("b", &[b.addr().port()]),
            ]
            .join("---\n"),
        ),
        ("ing.yaml", ingress_yaml("i", "live.test", &[("/", "Prefix", "a")])),
    ];
    let env = start(&files, ProxySettings::default()).await;
    let addr = env.gateway.http_addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Two clients loop requests (one keep-alive pool, one long-lived raw connection).
    let mut loops = Vec::new();
    for _ in 0..2 {
        let stop = stop.clone();
        let client = client();
        loops.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client
                    .get(format!("http://{addr}/"))
                    .header("host", "live.test")
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    // Flip the backend and add/remove hosts many times while they run.
    let mut seen_b = false;
    for i in 0..20 {
        let target = if i % 2 == 0 { "b" } else { "a" };
        let extra = format!("extra{i}.test");
        write_atomic(
            &env.file("ing.yaml"),
            &[
                ingress_yaml("i", "live.test", &[("/", "Prefix", target)]),
                ingress_yaml("x", &extra, &[("/", "Prefix", "a")]),
            ]
            .join("---\n"),
        );
        env.wait_status(&extra, "/", 200).await;
        let v = env.echo_json("live.test", "/").await;
        assert_eq!(name_of(&v), target, "the change is live once the new host answers");
        seen_b |= target == "b";
    }
    assert!(seen_b);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loops {
        let (ok, failed) = l.await.unwrap();
        assert!(ok > 0);
        assert!(failed.is_empty(), "requests failed during reloads: {failed:?}");
    }
}

/// A one-shot HTTP backend that tells when a request arrived and answers only when told.
async fn held_backend() -> (
    u16,
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (arrived_tx, arrived_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
        let _ = arrived_tx.send(());
        let _ = go_rx.await;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
            .await
            .unwrap();
        let _ = s.shutdown().await;
    });
    (port, arrived_rx, go_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_graceful_shutdown() {
    let (port, arrived, go) = held_backend().await;
    let files = vec![
        ("svc.yaml", service_yaml("b", &[port])),
        ("ing.yaml", ingress_yaml("i", "s.test", &[("/", "Prefix", "b")])),
    ];
    let env = start(&files, ProxySettings::default()).await;
    let ready = env.client.get(env.admin("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready once the first configuration is live");
    let health = env.client.get(env.admin("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // A request in flight when shutdown starts still completes.
    let in_flight = {
        let client = env.client.clone();
        let url = env.url("/slow");
        tokio::spawn(async move {
            let r = client.get(url).header("host", "s.test").send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    arrived.await.unwrap();
    let addr = env.gateway.http_addr;
    let admin = env.admin("/readyz");
    let client = env.client.clone();
    let shutdown = tokio::spawn(env.gateway.shutdown());
    // While draining, /readyz says 503 and new connections are refused.
    poll_until(WAIT, "/readyz to turn 503 while draining", || async {
        let r = client.get(&admin).send().await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    poll_until(WAIT, "the listener to close", || async {
        tokio::net::TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
    go.send(()).unwrap();
    assert_eq!(in_flight.await.unwrap(), (200, "done".to_string()));
    shutdown.await.unwrap();
}
