//! An in-process fake Kubernetes API server, for testing code that uses kube-rs's real client
//! (`kube::Client`, `Api`, `kube_runtime::watcher`/`reflector`, the event `Recorder`, Lease-based
//! leader election written on plain REST) without a cluster.
//!
//! It speaks the API server's wire protocol as the API concepts documentation describes it
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/>), over plain HTTP/1.1 on
//! 127.0.0.1 with real JSON:
//!
//! - **list**: `labelSelector`, `fieldSelector`, `limit`/`continue` (a consistent snapshot per
//!   paginated list), `resourceVersion` + `resourceVersionMatch` (`NotOlderThan`, `Exact`), 410
//!   Expired for versions older than the last [`FakeApiServer::compact`];
//! - **watch** (`watch=true`): chunked, one event per line, resumable from any version not
//!   compacted away, synthetic ADDED events for `resourceVersion` unset or "0", bookmarks,
//!   `timeoutSeconds`, streaming lists (`sendInitialEvents=true`), an ERROR event (410 Expired)
//!   for a compacted version;
//! - **get, create, replace** (409 Conflict on a stale `resourceVersion`), **patch** (merge,
//!   strategic merge treated as merge, JSON patch, server-side apply treated as a merge that
//!   creates), **delete** (preconditions, finalizers), **`/status`** for kinds that have it;
//! - failures on demand: injected error statuses, dropped watches, a server that is down.
//!
//! What it is not: no authentication, admission, validation of object contents, defaulting,
//! field ownership for server-side apply, or shared storage between the core/v1 and
//! events.k8s.io/v1 Event APIs (they are two separate stores here). The kinds served are in
//! `resources.rs`, one line each.
//!
//! # Layout
//!
//! - `resources`: the resource table and request path parsing.
//! - `store`: the objects, the change log watches replay from, and the open watches.
//! - `ops`: the verbs' semantics on the store.
//! - `server`: HTTP: connections, routing, watch streaming.
//! - `selector`, `patch`, `status`: label/field selectors, merge/JSON patches, `Status` errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod ops;
mod patch;
mod resources;
mod selector;
mod server;
mod status;
mod store;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::resources::{RESOURCES, by_kind};
use crate::store::{Store, meta_str, remove_meta, set_meta};

/// State shared by the handle and the connection tasks.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// `(method, path+query)` of every request, in arrival order.
    requests: Mutex<Vec<(String, String)>>,
    /// Requests still to fail, and the status to fail them with.
    failures: Mutex<(usize, u16)>,
    /// Refuse connections (close them at once).
    down: AtomicBool,
    /// Bumped to end every open connection abruptly.
    kill: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, method: &str, target: &str) {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((method.to_string(), target.to_string()));
    }

    /// The status to fail this request with, if failures were asked for.
    fn take_failure(&self) -> Option<u16> {
        let mut f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        (f.0 > 0).then(|| {
            f.0 -= 1;
            f.1
        })
    }

    fn kill_connections(&self) {
        self.kill.send_modify(|n| *n += 1);
    }
}

/// A fake Kubernetes API server on 127.0.0.1, running on the current tokio runtime until dropped.
///
/// The test-side methods ([`apply`](Self::apply), [`delete`](Self::delete), ...) act on the store
/// directly, as another client of the cluster would, and the changes reach open watches at once.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl FakeApiServer {
    /// Binds 127.0.0.1:0 and starts serving plain HTTP/1.1.
    pub async fn start() -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake API server to 127.0.0.1:0");
        let addr = listener.local_addr().expect("the fake API server's address");
        let (kill, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            requests: Mutex::new(Vec::new()),
            failures: Mutex::new((0, 500)),
            down: AtomicBool::new(false),
            kill,
        });
        let accept = tokio::spawn(server::serve(listener, shared.clone()));
        tracing::debug!(%addr, "fake API server started");
        FakeApiServer { shared, addr, accept }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client configuration for this server: `kube::Config::new(url)`, so default namespace
    /// "default", no authentication, and kube's defaults otherwise (among them `default_retry`,
    /// which retries 429, 503 and 504 answers up to 15 times: inject 500 or 403 with
    /// [`fail_next`](Self::fail_next) for a failure the caller sees).
    pub fn client_config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("the fake API server's URL"))
    }

    /// A `kube::Client` built from [`client_config`](Self::client_config).
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.client_config()).expect("a kube client for the fake API server")
    }

    /// Creates or replaces an object, as another client would. `obj` needs `apiVersion`, `kind`,
    /// `metadata.name` and, for namespaced kinds, `metadata.namespace`. The server sets
    /// `metadata.resourceVersion` (the next value of a global counter), and keeps `metadata.uid`
    /// and `metadata.creationTimestamp` when given (from the stored object otherwise, or new
    /// ones on create), so tests can set ages. `metadata.generation` is 1 on create and goes up
    /// when anything outside `metadata` and `status` changes, unless given. Unlike a PUT through
    /// the API, `.status` is stored as given, and every call is a change (ADDED or MODIFIED to
    /// the matching watches), even when nothing differs. Returns the stored object.
    ///
    /// Panics on a kind the server does not serve, or a missing name or namespace.
    pub fn apply(&self, mut obj: Value) -> Value {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("").to_string();
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
        let res = resource(&api_version, &kind);
        let rt = &RESOURCES[res];
        let name = meta_str(&obj, "name")
            .unwrap_or_else(|| panic!("apply: {kind} without metadata.name"))
            .to_string();
        let namespace = if rt.namespaced() {
            meta_str(&obj, "namespace")
                .unwrap_or_else(|| panic!("apply: {kind} {name} without metadata.namespace"))
                .to_string()
        } else {
            remove_meta(&mut obj, "namespace");
            String::new()
        };
        let key = (namespace, name);
        let mut store = self.shared.store();
        remove_meta(&mut obj, "resourceVersion");
        let old = store.objects[res].get(&key).cloned();
        for field in ["uid", "creationTimestamp"] {
            if obj.pointer(&format!("/metadata/{field}")).is_none() {
                let value = match old.as_ref().and_then(|o| o.pointer(&format!("/metadata/{field}"))) {
                    Some(v) => v.clone(),
                    None if field == "uid" => json!(store::uid()),
                    None => store::now(),
                };
                set_meta(&mut obj, field, value);
            }
        }
        if obj.pointer("/metadata/generation").is_none() {
            let generation = match &old {
                None => 1,
                Some(old) => {
                    let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
                    if ops::spec_of(old) == ops::spec_of(&obj) {
                        g
                    } else {
                        g + 1
                    }
                }
            };
            set_meta(&mut obj, "generation", json!(generation));
        }
        store.commit(res, key, Some(obj)).expect("the stored object")
    }

    /// Deletes an object at once (finalizers are not waited for), as another client would. The
    /// matching watches get DELETED with its last state and a new resourceVersion. False when
    /// there was no such object.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let res = resource(api_version, kind);
        let key = key(res, namespace, name);
        let mut store = self.shared.store();
        if !store.objects[res].contains_key(&key) {
            return false;
        }
        store.commit(res, key, None);
        true
    }

    /// The stored object, if any.
    pub fn get(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let res = resource(api_version, kind);
        self.shared.store().objects[res]
            .get(&key(res, namespace, name))
            .cloned()
    }

    /// Every stored object of a kind, by namespace and name.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let res = resource(api_version, kind);
        self.shared.store().objects[res].values().cloned().collect()
    }

    /// The current resourceVersion (of the last change), as lists report it.
    pub fn resource_version(&self) -> String {
        self.shared.store().rv.to_string()
    }

    /// Makes every resourceVersion older than the current one "too old", as an etcd compaction
    /// does: a watch from an older version gets an ERROR event (410 Expired) and ends; a list
    /// with `resourceVersionMatch=Exact` or a `continue` token from an older version gets 410.
    /// The current version itself stays valid, so a client that has seen everything resumes
    /// without relisting. Also ends the open watch streams, cleanly (they resume).
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Ends every open watch stream abruptly (no final chunk, connection closed), as when the API
    /// server restarts.
    pub fn drop_watches(&self) {
        self.shared.store().abort_watches();
    }

    /// Down: ends every open connection (watches included) abruptly and closes each new one at
    /// once. Up again: serves normally, with the stored objects and resourceVersions intact.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.shared.store().abort_watches();
            self.shared.kill_connections();
        }
    }

    /// The next `n` requests (any path) answer `status` with a `Status` body (reason from the
    /// code: 500 InternalError, 403 Forbidden, ...). Note that kube's client retries 429, 503 and
    /// 504 on its own by default.
    pub fn fail_next(&self, n: usize, status: u16) {
        *self.shared.failures.lock().unwrap_or_else(PoisonError::into_inner) = (n, status);
    }

    /// Sends a BOOKMARK at the current resourceVersion on every open watch that asked for
    /// `allowWatchBookmarks=true`.
    pub fn bookmark(&self) {
        self.shared.store().bookmark();
    }

    /// `(method, path+query)` of every request so far, failed ones included.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The watch streams open now.
    pub fn open_watches(&self) -> usize {
        self.shared.store().open_watches()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.store().abort_watches();
        self.shared.kill_connections();
    }
}

fn resource(api_version: &str, kind: &str) -> usize {
    by_kind(api_version, kind).unwrap_or_else(|| panic!("the fake API server does not serve {api_version} {kind}"))
}

fn key(res: usize, namespace: Option<&str>, name: &str) -> store::Key {
    let ns = if RESOURCES[res].namespaced() {
        namespace.unwrap_or("")
    } else {
        ""
    };
    (ns.to_string(), name.to_string())
}
