//! Tests against a real server on 127.0.0.1:0, with a hand-written HTTP/1.1 client.

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::{EchoOptions, spawn};

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a complete response (the connection was closed after it).
fn parse(raw: &[u8]) -> Resp {
    let end = find(raw, b"\r\n\r\n").expect("end of head");
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else if let Some((_, len)) = headers.iter().find(|(n, _)| n == "content-length") {
        let len: usize = len.parse().unwrap();
        assert!(rest.len() >= len, "short body: {} < {len}", rest.len());
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Resp { status, headers, body }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = find(raw, b"\r\n").expect("chunk size line");
        let size_str = std::str::from_utf8(&raw[..line_end]).unwrap();
        let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap();
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        assert_eq!(&raw[size..size + 2], b"\r\n");
        raw = &raw[size + 2..];
    }
}

/// Sends `request` (which should say `Connection: close`) and reads the answer.
async fn roundtrip(addr: SocketAddr, request: &[u8]) -> Resp {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse(&raw)
}

async fn get(addr: SocketAddr, extra_headers: &str) -> Resp {
    let req = format!("GET / HTTP/1.1\r\nHost: echo\r\n{extra_headers}Connection: close\r\n\r\n");
    roundtrip(addr, req.as_bytes()).await
}

fn named(name: &str) -> EchoOptions {
    EchoOptions {
        name: name.to_owned(),
        ..EchoOptions::default()
    }
}

#[tokio::test]
async fn get_with_query_and_repeated_header() {
    let echo = spawn(named("backend-a")).await.unwrap();
    let mut stream = TcpStream::connect(echo.addr()).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream
        .write_all(
            b"GET /some/path?x=1&y=two HTTP/1.1\r\n\
              Host: example.test:8080\r\n\
              X-Rep: a\r\n\
              Accept: */*\r\n\
              X-Rep: b\r\n\
              Connection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let resp = parse(&raw);

    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.header("server"), None);
    let v = resp.json();
    assert_eq!(v["name"], "backend-a");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/some/path?x=1&y=two");
    assert_eq!(v["host"], "example.test:8080");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["headers"]["x-rep"], "a, b");
    assert_eq!(v["headers"]["accept"], "*/*");
    assert_eq!(v["headers"]["host"], "example.test:8080");
    assert_eq!(v["body_length"], 0);
    assert_eq!(v["remote_addr"], local.to_string());

    let list = v["header_list"].as_array().unwrap();
    let reps: Vec<&Value> = list.iter().filter(|p| p[0] == "x-rep").collect();
    assert_eq!(reps, [&json!(["x-rep", "a"]), &json!(["x-rep", "b"])]);
    assert!(list.contains(&json!(["accept", "*/*"])));
    assert!(list.contains(&json!(["connection", "close"])));
    echo.shutdown().await;
}

#[tokio::test]
async fn http_1_0_without_host() {
    let echo = spawn(EchoOptions::default()).await.unwrap();
    let resp = roundtrip(echo.addr(), b"DELETE /x HTTP/1.0\r\n\r\n").await;
    assert_eq!(resp.status, 200);
    let v = resp.json();
    assert_eq!(v["version"], "HTTP/1.0");
    assert_eq!(v["method"], "DELETE");
    assert_eq!(v["host"], "");
    assert_eq!(v["name"], "");
}

#[tokio::test]
async fn chunked_post_body_length() {
    const TOTAL: usize = 3 * 1024 * 1024;
    let echo = spawn(named("b")).await.unwrap();
    let mut stream = TcpStream::connect(echo.addr()).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let chunk = vec![b'z'; 50_000];
    let mut sent = 0;
    while sent < TOTAL {
        let n = chunk.len().min(TOTAL - sent);
        stream.write_all(format!("{n:x}\r\n").as_bytes()).await.unwrap();
        stream.write_all(&chunk[..n]).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
        sent += n;
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let resp = parse(&raw);
    assert_eq!(resp.status, 200);
    let v = resp.json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["body_length"], TOTAL);
    assert_eq!(v["headers"]["transfer-encoding"], "chunked");
}

#[tokio::test]
async fn status_control() {
    let echo = spawn(named("s")).await.unwrap();
    let resp = get(echo.addr(), "x-echo-status: 503\r\n").await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.json()["name"], "s");

    let resp = get(echo.addr(), "x-echo-status: 204\r\n").await;
    assert_eq!(resp.status, 204);
    assert!(resp.body.is_empty());
}

#[tokio::test]
async fn set_header_control() {
    let echo = spawn(named("h")).await.unwrap();
    let resp = get(
        echo.addr(),
        "x-echo-set-header: Server: backend\r\n\
         x-echo-set-header: X-Multi: 1\r\n\
         x-echo-set-header: X-Multi: 2\r\n\
         x-echo-set-header: Content-Type: text/x-test\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("server"), Some("backend"));
    assert_eq!(resp.header("content-type"), Some("text/x-test"));
    let multi: Vec<&str> = resp
        .headers
        .iter()
        .filter(|(n, _)| n == "x-multi")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(multi, ["1", "2"]);
    assert_eq!(resp.json()["name"], "h");
}

#[tokio::test]
async fn malformed_controls_are_ignored() {
    let echo = spawn(named("m")).await.unwrap();
    let resp = get(
        echo.addr(),
        "x-echo-status: abc\r\n\
         x-echo-delay-ms: -5\r\n\
         x-echo-set-header: no-colon-here\r\n\
         x-echo-set-header: bad name: v\r\n\
         x-echo-set-header: Content-Length: 3\r\n\
         x-echo-response-bytes: lots\r\n\
         x-echo-mode: sideways\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.json()["name"], "m");

    let resp = get(echo.addr(), "x-echo-status: 42\r\n").await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn body_mode_streams_the_request_back() {
    const LEN: usize = 1024 * 1024 + 17;
    let echo = spawn(named("b")).await.unwrap();
    let payload: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let stream = TcpStream::connect(echo.addr()).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let to_send = payload.clone();
    // Write and read at the same time: the answer streams while the body arrives.
    let writer = tokio::spawn(async move {
        let head = format!(
            "PUT /data HTTP/1.1\r\nHost: echo\r\nx-echo-mode: body\r\n\
             Content-Length: {LEN}\r\nConnection: close\r\n\r\n"
        );
        wr.write_all(head.as_bytes()).await.unwrap();
        for chunk in to_send.chunks(10_000) {
            wr.write_all(chunk).await.unwrap();
        }
        wr
    });
    let mut raw = Vec::new();
    rd.read_to_end(&mut raw).await.unwrap();
    drop(writer.await.unwrap());
    let resp = parse(&raw);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/octet-stream"));
    assert_eq!(resp.body.len(), LEN);
    assert!(resp.body == payload, "echoed body differs");
}

#[tokio::test]
async fn body_mode_is_full_duplex() {
    // The first half of the body comes back before the second half is sent.
    let echo = spawn(named("d")).await.unwrap();
    let mut stream = TcpStream::connect(echo.addr()).await.unwrap();
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: echo\r\nx-echo-mode: body\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&raw, b"hello").is_none() {
        let n = stream.read(&mut buf).await.unwrap();
        assert_ne!(n, 0, "connection closed early");
        raw.extend_from_slice(&buf[..n]);
    }
    stream.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    stream.read_to_end(&mut raw).await.unwrap();
    let resp = parse(&raw);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"hello world");
}

#[tokio::test]
async fn response_bytes_control() {
    const N: usize = 200_000;
    let echo = spawn(named("r")).await.unwrap();
    let req = format!(
        "POST / HTTP/1.1\r\nHost: echo\r\nx-echo-response-bytes: {N}\r\n\
         Content-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    let resp = roundtrip(echo.addr(), req.as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-echo-request-body-length"), Some("5"));
    assert_eq!(resp.body.len(), N);
    let pattern = b"0123456789abcdef";
    assert!(
        resp.body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern[i % pattern.len()])
    );

    let resp = get(echo.addr(), "x-echo-response-bytes: 0\r\n").await;
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_empty());
    assert_eq!(resp.header("x-echo-request-body-length"), Some("0"));
}

#[tokio::test]
async fn delay_control_still_answers() {
    let echo = spawn(EchoOptions {
        name: "slow".to_owned(),
        delay: std::time::Duration::from_millis(1),
    })
    .await
    .unwrap();
    let resp = get(echo.addr(), "x-echo-delay-ms: 5\r\n").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["name"], "slow");
}

#[tokio::test]
async fn websocket_echo() {
    let echo = spawn(named("ws")).await.unwrap();
    let stream = TcpStream::connect(echo.addr()).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{}/chat", echo.addr()), stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));

    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![1u8, 2, 3]));

    ws.send(Message::Ping("p".into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Pong("p".into()));

    ws.close(None).await.unwrap();
    // The server answers the close; the stream then ends.
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Close(_)) => {}
            Ok(other) => panic!("unexpected message {other:?}"),
            Err(_) => break,
        }
    }
    echo.shutdown().await;
}

#[tokio::test]
async fn websocket_without_key_is_rejected() {
    let echo = spawn(named("ws")).await.unwrap();
    let resp = get(echo.addr(), "Upgrade: websocket\r\n").await;
    assert_eq!(resp.status, 400);
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let echo = spawn(named("h2")).await.unwrap();
    let stream = TcpStream::connect(echo.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("http://example.test/h2?q=1")
        .header("x-rep", "1")
        .header("x-rep", "2")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["version"], "HTTP/2");
    assert_eq!(v["host"], "example.test");
    assert_eq!(v["path"], "/h2?q=1");
    assert_eq!(v["headers"]["x-rep"], "1, 2");
    drop(sender);
    conn.await.unwrap().unwrap();
    echo.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let echo = spawn(named("g")).await.unwrap();
    let addr = echo.addr();

    // An idle keep-alive connection must not hold shutdown up.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 4096];
    let mut raw = Vec::new();
    while find(&raw, b"\r\n\r\n").is_none() {
        let n = idle.read(&mut buf).await.unwrap();
        assert_ne!(n, 0);
        raw.extend_from_slice(&buf[..n]);
    }

    // An in-flight request: half of its body has been echoed back.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(
        b"POST / HTTP/1.1\r\nHost: echo\r\nx-echo-mode: body\r\n\
          Content-Length: 10\r\n\r\nfirst",
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    while find(&raw, b"first").is_none() {
        let n = busy.read(&mut buf).await.unwrap();
        assert_ne!(n, 0);
        raw.extend_from_slice(&buf[..n]);
    }

    let shutdown = tokio::spawn(echo.shutdown());
    busy.write_all(b"-last").await.unwrap();
    busy.read_to_end(&mut raw).await.unwrap();
    let resp = parse(&raw);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"first-last");

    shutdown.await.unwrap();
    // The idle connection was closed, and nobody listens any more.
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).await.unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn drop_stops_the_server() {
    let echo = spawn(named("d")).await.unwrap();
    let mut conn = TcpStream::connect(echo.addr()).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 4096];
    let mut raw = Vec::new();
    while find(&raw, b"\r\n\r\n").is_none() {
        let n = conn.read(&mut buf).await.unwrap();
        assert_ne!(n, 0);
        raw.extend_from_slice(&buf[..n]);
    }
    drop(echo);
    // The keep-alive connection is closed by the aborted server.
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest).await;
}
