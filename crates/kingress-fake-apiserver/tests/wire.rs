//! The fake API server on the wire, with a raw HTTP/1.1 client: what kube-rs hides (chunked
//! watch endings, clean or abrupt; refused connections; JSON shapes of lists and errors).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use kingress_fake_apiserver::FakeApiServer;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(15);

async fn send(server: &FakeApiServer, method: &str, target: &str, body: Option<(&str, &Value)>) -> TcpStream {
    let addr = server.url().trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n");
    let body = body.map(|(ct, v)| (ct, v.to_string()));
    if let Some((ct, b)) = &body {
        req.push_str(&format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    if let Some((_, b)) = &body {
        req.push_str(b);
    }
    stream.write_all(req.as_bytes()).await.unwrap();
    stream
}

/// Reads until EOF; the raw bytes as text.
async fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    timeout(DEADLINE, stream.read_to_end(&mut out)).await.unwrap().unwrap();
    String::from_utf8(out).unwrap()
}

/// Reads until `needle` has arrived; everything read so far.
async fn read_until(stream: &mut TcpStream, seen: &mut String, needle: &str) {
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = timeout(DEADLINE, stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "EOF before {needle:?} in {seen:?}");
        seen.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
}

/// A complete response with a Content-Length body: (status, body as JSON).
async fn request(server: &FakeApiServer, method: &str, target: &str, body: Option<(&str, &Value)>) -> (u16, Value) {
    let mut stream = send(server, method, target, body).await;
    let raw = read_all(&mut stream).await;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    (status, serde_json::from_str(body).unwrap())
}

/// The watch events in a raw chunked response.
fn events(raw: &str) -> Vec<Value> {
    raw.split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn config_map(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}}})
}

#[tokio::test]
async fn list_get_and_error_shapes() {
    let server = FakeApiServer::start().await;
    server.apply(config_map("a"));
    let (status, list) = request(&server, "GET", "/api/v1/namespaces/default/configmaps", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["kind"], "ConfigMapList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["metadata"]["resourceVersion"], server.resource_version());
    assert_eq!(list["items"][0]["kind"], "ConfigMap");
    assert_eq!(list["items"][0]["apiVersion"], "v1");
    let uid = list["items"][0]["metadata"]["uid"].as_str().unwrap();
    assert_eq!(uid.len(), 36);
    let created = list["items"][0]["metadata"]["creationTimestamp"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 20, "{created}");

    let (status, err) = request(&server, "GET", "/api/v1/namespaces/default/configmaps/nope", None).await;
    assert_eq!(status, 404);
    assert_eq!(
        err,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "configmaps \"nope\" not found", "reason": "NotFound",
            "details": {"name": "nope", "group": "", "kind": "configmaps"}, "code": 404
        })
    );
    let (status, err) = request(&server, "GET", "/api/v1/replicationcontrollers", None).await;
    assert_eq!((status, err["reason"].as_str()), (404, Some("NotFound")));
    let (status, err) = request(
        &server,
        "POST",
        "/api/v1/configmaps",
        Some(("application/json", &config_map("b"))),
    )
    .await;
    assert_eq!((status, err["reason"].as_str()), (405, Some("MethodNotAllowed")));
    let (status, err) = request(&server, "GET", "/api/v1/configmaps?labelSelector=a%20b%20c", None).await;
    assert_eq!((status, err["reason"].as_str()), (400, Some("BadRequest")));
    let (status, version) = request(&server, "GET", "/version", None).await;
    assert_eq!((status, version["gitVersion"].as_str()), (200, Some("v1.30.0")));

    server.fail_next(1, 403);
    let (status, err) = request(&server, "GET", "/version", None).await;
    assert_eq!(
        (status, err["reason"].as_str(), err["code"].as_u64()),
        (403, Some("Forbidden"), Some(403))
    );

    // Unknown patch types are refused; a merge patch on a missing object is 404.
    let patch = json!({"data": {"x": "y"}});
    let (status, _) = request(
        &server,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/a",
        Some(("text/plain", &patch)),
    )
    .await;
    assert_eq!(status, 415);
    let (status, _) = request(
        &server,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/zz",
        Some(("application/merge-patch+json", &patch)),
    )
    .await;
    assert_eq!(status, 404);
    let (status, patched) = request(
        &server,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/a",
        Some(("application/strategic-merge-patch+json", &patch)),
    )
    .await;
    assert_eq!((status, patched["data"]["x"].as_str()), (200, Some("y")));
}

#[tokio::test]
async fn watch_streams_end_cleanly_or_abruptly() {
    let server = FakeApiServer::start().await;
    let rv = server.resource_version();
    let target = format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}");

    // compact(): the stream ends with the last chunk.
    let mut stream = send(&server, "GET", &target, None).await;
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "\r\n\r\n").await;
    assert!(seen.starts_with("HTTP/1.1 200 OK\r\n"), "{seen}");
    assert!(seen.to_lowercase().contains("transfer-encoding: chunked"), "{seen}");
    server.apply(config_map("a"));
    read_until(&mut stream, &mut seen, "\"type\":\"ADDED\"").await;
    server.compact();
    seen.push_str(&read_all(&mut stream).await);
    assert!(seen.ends_with("\r\n0\r\n\r\n"), "{seen:?}");

    // drop_watches(): no last chunk, the connection just closes.
    let rv = server.resource_version();
    let target = format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}");
    let mut stream = send(&server, "GET", &target, None).await;
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "\r\n\r\n").await;
    server.apply(config_map("b"));
    read_until(&mut stream, &mut seen, "\"type\":\"ADDED\"").await;
    server.drop_watches();
    seen.push_str(&read_all(&mut stream).await);
    assert!(!seen.ends_with("0\r\n\r\n"), "{seen:?}");
    assert!(seen.contains("\"name\":\"b\""));

    // A compacted version: one ERROR event, then the end.
    let mut stream = send(&server, "GET", "/api/v1/configmaps?watch=true&resourceVersion=1", None).await;
    let raw = read_all(&mut stream).await;
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    let events = events(&raw);
    assert_eq!(events.len(), 1, "{raw}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["kind"], "Status");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
    assert!(raw.ends_with("\r\n0\r\n\r\n"), "{raw:?}");
}

#[tokio::test]
async fn watch_timeout_selectors_and_initial_events() {
    let server = FakeApiServer::start().await;
    server.apply(config_map("a"));
    let mut other = config_map("b");
    other["metadata"]["labels"] = json!({"app": "api"});
    server.apply(other);

    // No resourceVersion: synthetic ADDED for what the selector matches; the timeout ends the
    // stream cleanly, and without allowWatchBookmarks there is no bookmark.
    let target = "/api/v1/namespaces/default/configmaps?watch=true&labelSelector=app%3Dweb&timeoutSeconds=1";
    let mut stream = send(&server, "GET", target, None).await;
    let raw = read_all(&mut stream).await;
    assert_eq!(raw.matches("\"type\":\"ADDED\"").count(), 1, "{raw}");
    assert!(raw.contains("\"name\":\"a\""));
    assert!(!raw.contains("BOOKMARK"));
    assert!(raw.ends_with("\r\n0\r\n\r\n"));

    // sendInitialEvents: the initial events end with an annotated bookmark.
    let target = "/api/v1/configmaps?watch=true&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1";
    let mut stream = send(&server, "GET", target, None).await;
    let raw = read_all(&mut stream).await;
    assert_eq!(raw.matches("\"type\":\"ADDED\"").count(), 2, "{raw}");
    assert!(raw.contains("\"k8s.io/initial-events-end\":\"true\""), "{raw}");
    assert_eq!(
        raw.matches("BOOKMARK").count(),
        2,
        "the initial-events-end one and the timeout one: {raw}"
    );

    // ... and needs resourceVersionMatch=NotOlderThan.
    let (status, err) = request(
        &server,
        "GET",
        "/api/v1/configmaps?watch=true&allowWatchBookmarks=true&sendInitialEvents=true",
        None,
    )
    .await;
    assert_eq!((status, err["reason"].as_str()), (422, Some("Invalid")));
}

#[tokio::test]
async fn a_down_server_closes_connections() {
    let server = FakeApiServer::start().await;
    let (status, _) = request(&server, "GET", "/version", None).await;
    assert_eq!(status, 200);
    server.set_down(true);
    let mut stream = send(&server, "GET", "/version", None).await;
    let mut buf = Vec::new();
    // Closed without an answer (EOF or a reset).
    let read = timeout(DEADLINE, stream.read_to_end(&mut buf)).await.unwrap();
    assert!(read.is_err() || buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    server.set_down(false);
    let (status, _) = request(&server, "GET", "/version", None).await;
    assert_eq!(status, 200);
    let requests = server.requests();
    assert_eq!(
        requests.len(),
        2,
        "the refused connection made no request: {requests:?}"
    );
}

#[tokio::test]
async fn a_client_hanging_up_closes_its_watch() {
    let server = FakeApiServer::start().await;
    let mut stream = send(&server, "GET", "/api/v1/configmaps?watch=true", None).await;
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "\r\n\r\n").await;
    assert_eq!(server.open_watches(), 1);
    drop(stream);
    let deadline = std::time::Instant::now() + DEADLINE;
    while server.open_watches() != 0 {
        assert!(std::time::Instant::now() < deadline, "the watch is still open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
