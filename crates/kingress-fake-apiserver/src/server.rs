//! The HTTP/1.1 side: accepting connections (or refusing them while "down"), routing requests to
//! the verbs, and streaming watch responses.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::debug;

use crate::Shared;
use crate::ops::{self, Query, WatchStart};
use crate::resources::{RESOURCES, Route, Target, route};
use crate::status::ApiError;
use crate::store::{WatchMsg, partial};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// Accepts connections until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                debug!(error = %e, "fake apiserver accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Subscribe before looking at `down`: set_down(true) sets `down` and then ends the
        // connections, so this one is either refused here or ended with the others.
        let mut kill = shared.kill.subscribe();
        if shared.down.load(Ordering::SeqCst) {
            drop(tcp);
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(shared.clone(), req));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                res = conn => {
                    if let Err(e) = res {
                        debug!(error = %e, "fake apiserver connection ended");
                    }
                }
                // Dropping the connection closes the socket mid-response, as a dying server does.
                _ = kill.changed() => {}
            }
        });
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |pq| pq.as_str().to_string());
    debug!(%method, %target, "fake apiserver request");
    shared.record(method.as_str(), &target);
    if let Some(code) = shared.take_failure() {
        return Ok(error(&ApiError::new(code, format!("injected failure ({code})"))));
    }
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let header = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let meta_only = header(header::ACCEPT).contains("as=PartialObjectMetadata");
    let content_type = header(header::CONTENT_TYPE);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(error(&ApiError::bad_request(format!("reading the request body: {e}")))),
    };
    let request = ReadRequest {
        method,
        query,
        meta_only,
        content_type,
        body,
    };
    Ok(dispatch(&shared, &path, &request).unwrap_or_else(|e| error(&e)))
}

/// A request, read.
struct ReadRequest {
    method: Method,
    query: Query,
    meta_only: bool,
    content_type: String,
    body: Bytes,
}

fn dispatch(shared: &Arc<Shared>, path: &str, req: &ReadRequest) -> Result<Response<Body>, ApiError> {
    let route = route(path);
    if !matches!(route, Route::Object(_)) && req.method != Method::GET {
        return Err(method_not_allowed());
    }
    match route {
        Route::Version => Ok(json_response(200, &version())),
        Route::Health => Ok(full(200, "text/plain", Bytes::from_static(b"ok"))),
        Route::CoreVersions => Ok(json_response(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        )),
        Route::Groups => Ok(json_response(200, &groups())),
        Route::Resources { group, version } => resource_list(&group, &version)
            .map(|v| json_response(200, &v))
            .ok_or_else(ApiError::not_found_path),
        Route::NotFound => Err(ApiError::not_found_path()),
        Route::Object(target) => object(shared, &target, req),
    }
}

fn object(shared: &Arc<Shared>, t: &Target, req: &ReadRequest) -> Result<Response<Body>, ApiError> {
    let rt = &RESOURCES[t.res];
    let status_only = match t.subresource.as_deref() {
        None => false,
        Some("status") if rt.has_status() => true,
        Some(_) => return Err(ApiError::not_found_path()),
    };
    let ns = t.namespace.as_deref();
    let q = &req.query;
    let dry_run = q.get("dryRun").is_some();
    let body = || -> Result<Value, ApiError> {
        serde_json::from_slice(&req.body).map_err(|e| ApiError::bad_request(format!("decoding the request body: {e}")))
    };
    // A namespaced kind's all-namespace collection is for reading only.
    let writable_collection = ns.is_some() || !rt.namespaced();
    let single = |(code, obj): (u16, Value)| {
        let is_status = obj.get("kind").and_then(Value::as_str) == Some("Status");
        let obj = if req.meta_only && !is_status {
            partial(&obj)
        } else {
            obj
        };
        json_response(code, &obj)
    };
    let mut store = shared.store();
    match (&req.method, t.name.as_deref()) {
        (&Method::GET, None) if q.flag("watch") == Some(true) => {
            let start = ops::start_watch(&mut store, t.res, ns, q, req.meta_only)?;
            drop(store);
            let timeout = q
                .get("timeoutSeconds")
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|s| *s > 0)
                .map(Duration::from_secs);
            Ok(watch_response(shared, start, timeout))
        }
        (&Method::GET, None) => Ok(json_response(200, &ops::list(&store, t.res, ns, q, req.meta_only)?)),
        (&Method::GET, Some(name)) => ops::get(&store, t.res, ns, name).map(|o| single((200, o))),
        (&Method::POST, None) if writable_collection && !status_only => {
            ops::create(&mut store, t.res, ns, body()?, dry_run).map(|o| single((201, o)))
        }
        (&Method::PUT, Some(name)) => {
            ops::update(&mut store, t.res, ns, name, body()?, status_only, dry_run).map(single)
        }
        (&Method::PATCH, Some(name)) => ops::patch(
            &mut store,
            t.res,
            ns,
            name,
            &req.content_type,
            &req.body,
            status_only,
            q.get("fieldManager"),
            dry_run,
        )
        .map(single),
        (&Method::DELETE, Some(name)) if !status_only => {
            let options = if req.body.is_empty() { Value::Null } else { body()? };
            ops::delete(&mut store, t.res, ns, name, &options, dry_run).map(single)
        }
        (&Method::DELETE, None) if writable_collection => {
            let options = if req.body.is_empty() { Value::Null } else { body()? };
            let list = ops::delete_collection(&mut store, t.res, ns, q, &options, dry_run)?;
            Ok(json_response(200, &list))
        }
        _ => Err(method_not_allowed()),
    }
}

fn method_not_allowed() -> ApiError {
    ApiError::new(405, "the server does not allow this method on the requested resource")
}

/// Removes its watch from the store when the response body goes (the client hung up, or the
/// stream ended).
struct WatchGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.shared.store().remove_watcher(self.id);
    }
}

struct WatchState {
    rx: mpsc::UnboundedReceiver<WatchMsg>,
    deadline: Option<tokio::time::Instant>,
    /// Taken from `rx` at the timeout, sent before the stream ends.
    pending: VecDeque<WatchMsg>,
    /// Nothing more comes after `pending`.
    closing: bool,
    guard: WatchGuard,
}

impl WatchState {
    /// `timeoutSeconds` is up: stop receiving, send what was queued and (when bookmarks are
    /// allowed) a BOOKMARK at the current version, then end cleanly.
    fn close_on_timeout(&mut self) {
        let mut store = self.guard.shared.store();
        let watcher = store.remove_watcher(self.guard.id);
        let rv = store.rv;
        drop(store);
        while let Ok(msg) = self.rx.try_recv() {
            self.pending.push_back(msg);
        }
        if let Some(w) = watcher.filter(|w| w.bookmarks) {
            self.pending.push_back(WatchMsg::Line(w.bookmark_line(rv, false)));
        }
        self.closing = true;
    }
}

fn watch_response(shared: &Arc<Shared>, start: WatchStart, timeout: Option<Duration>) -> Response<Body> {
    let (id, rx) = match start {
        WatchStart::Expired(line) => {
            let stream = futures::stream::iter([Ok::<_, BoxError>(Frame::data(line))]);
            return streaming(BodyExt::boxed(StreamBody::new(stream)));
        }
        WatchStart::Open { id, rx } => (id, rx),
    };
    let state = WatchState {
        rx,
        deadline: timeout.map(|t| tokio::time::Instant::now() + t),
        pending: VecDeque::new(),
        closing: false,
        guard: WatchGuard {
            shared: shared.clone(),
            id,
        },
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(msg) = st.pending.pop_front() {
                return match msg {
                    WatchMsg::Line(line) => Some((Ok(Frame::data(line)), st)),
                    WatchMsg::Abort => {
                        st.pending.clear();
                        st.closing = true;
                        let err: BoxError = "watch aborted by the fake API server".into();
                        Some((Err(err), st))
                    }
                };
            }
            if st.closing {
                return None;
            }
            let msg = match st.deadline {
                Some(deadline) => tokio::select! {
                    msg = st.rx.recv() => msg,
                    () = tokio::time::sleep_until(deadline) => {
                        st.close_on_timeout();
                        continue;
                    }
                },
                None => st.rx.recv().await,
            };
            match msg {
                Some(msg) => st.pending.push_back(msg),
                // The store let go of the watch (compact): a clean end.
                None => return None,
            }
        }
    });
    streaming(BodyExt::boxed(StreamBody::new(stream)))
}

/// A chunked JSON response.
fn streaming(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn full(code: u16, content_type: &'static str, body: Bytes) -> Response<Body> {
    let body = Full::new(body).map_err(|never: Infallible| match never {}).boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    full(code, "application/json", Bytes::from(v.to_string()))
}

fn error(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "30",
        "gitVersion": "v1.30.0",
        "gitCommit": "7c48c2bd72b9bf5c44d21d7338cc7bea77d0ad2a",
        "gitTreeState": "clean",
        "buildDate": "2024-04-17T17:27:03Z",
        "goVersion": "go1.22.2",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// `/apis`: the groups of the resource table (the core group is under `/api`).
fn groups() -> Value {
    let mut groups: Vec<Value> = Vec::new();
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for rt in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if seen.contains(&(rt.group, rt.version)) {
            continue;
        }
        seen.push((rt.group, rt.version));
        let gv = json!({"groupVersion": rt.api_version(), "version": rt.version});
        groups.push(json!({"name": rt.group, "versions": [gv.clone()], "preferredVersion": gv}));
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/api/v1`, `/apis/{group}/{version}`: the resources of one group version.
fn resource_list(group: &str, version: &str) -> Option<Value> {
    let verbs = json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ]);
    let mut resources = Vec::new();
    for rt in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        resources.push(json!({
            "name": rt.plural,
            "singularName": rt.kind.to_lowercase(),
            "namespaced": rt.namespaced(),
            "kind": rt.kind,
            "verbs": verbs,
        }));
        if rt.has_status() {
            resources.push(json!({
                "name": format!("{}/status", rt.plural),
                "singularName": "",
                "namespaced": rt.namespaced(),
                "kind": rt.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    (!resources.is_empty()).then(|| {
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
    })
}
