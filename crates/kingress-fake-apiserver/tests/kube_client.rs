//! kube-rs's real client, watcher, reflector and event recorder against the fake API server: if
//! these pass, the fake speaks the protocol the way kube-rs expects it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kingress_fake_apiserver::FakeApiServer;
use kingress_test_support::poll_until;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, ResourceExt, VersionMatch, WatchEvent, WatchParams,
};
use kube::runtime::events::{Event as RecorderEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(15);

fn ingress(name: &str, host: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"ingressClassName": "kingress", "rules": [{"host": host}]}
    })
}

fn config_map(name: &str, namespace: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"k": name}
    })
}

fn api_error(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(status) => (status.code, status.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn describe_error(err: &watcher::Error) -> String {
    let code = |e: &kube::Error| match e {
        kube::Error::Api(s) => s.code.to_string(),
        _ => "io".to_string(),
    };
    match err {
        watcher::Error::InitialListFailed(e) => format!("InitialListFailed({})", code(e)),
        watcher::Error::WatchStartFailed(e) => format!("WatchStartFailed({})", code(e)),
        watcher::Error::WatchError(s) => format!("WatchError({})", s.code),
        watcher::Error::WatchFailed(e) => format!("WatchFailed({})", code(e)),
        watcher::Error::NoResourceVersion => "NoResourceVersion".to_string(),
    }
}

/// A watcher (with a reflector and the default backoff) driven by its own task, so it makes
/// progress while the test does other things. Events arrive as strings: `Init`, `InitApply(a)`,
/// `InitDone`, `Apply(a)`, `Delete(a)`, or `Err:WatchError(410)` and the like.
struct Watched {
    events: mpsc::UnboundedReceiver<String>,
    store: Store<Ingress>,
    task: JoinHandle<()>,
}

impl Watched {
    fn start(api: Api<Ingress>, config: watcher::Config) -> Self {
        let (store, writer) = reflector::store();
        let (tx, events) = mpsc::unbounded_channel();
        let mut stream = reflector::reflector(writer, watcher(api, config))
            .default_backoff()
            .boxed();
        let task = tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                let line = match &ev {
                    Ok(ev) => ev.to_string(),
                    Err(e) => format!("Err:{}", describe_error(e)),
                };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { events, store, task }
    }

    async fn next(&mut self) -> String {
        tokio::time::timeout(DEADLINE, self.events.recv())
            .await
            .expect("timed out waiting for a watcher event")
            .expect("the watcher ended")
    }

    /// The next events that are not errors.
    async fn next_ok(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            let ev = self.next().await;
            if !ev.starts_with("Err:") {
                out.push(ev);
            }
        }
        out
    }

    /// Every event up to and including the first one equal to `last`.
    async fn until(&mut self, last: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let ev = self.next().await;
            let done = ev == last;
            out.push(ev);
            if done {
                return out;
            }
        }
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.store.state().iter().map(|i| i.name_any()).collect();
        names.sort();
        names
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_for_watch(server: &FakeApiServer, n: usize) {
    poll_until(DEADLINE, "the watch to be open", || async {
        (server.open_watches() == n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn lease_create_get_list_replace_and_conflicts() {
    let server = FakeApiServer::start().await;
    let leases: Api<Lease> = Api::default_namespaced(server.client());
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("kingress-leader".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }),
    };
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    assert_eq!(created.namespace().as_deref(), Some("default"));
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let rv1 = created.resource_version().unwrap();

    let err = leases.create(&PostParams::default(), &lease).await.unwrap_err();
    assert_eq!(api_error(err), (409, "AlreadyExists".to_string()));

    let got = leases.get("kingress-leader").await.unwrap();
    assert_eq!(got.spec.as_ref().unwrap().holder_identity.as_deref(), Some("a"));
    let list = leases.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.metadata.resource_version.as_deref(), Some(rv1.as_str()));

    // b takes the lease with the version it read.
    let mut take = got.clone();
    take.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let replaced = leases
        .replace("kingress-leader", &PostParams::default(), &take)
        .await
        .unwrap();
    assert_ne!(replaced.resource_version().unwrap(), rv1);
    assert_eq!(replaced.metadata.generation, Some(2));
    assert_eq!(replaced.metadata.uid, created.metadata.uid);

    // a, with the stale version, loses.
    let mut stale = got.clone();
    stale.spec.as_mut().unwrap().holder_identity = Some("a".into());
    stale.spec.as_mut().unwrap().lease_transitions = Some(1);
    let err = leases
        .replace("kingress-leader", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (409, "Conflict".to_string()));
    // Leases refuse unconditional updates too.
    let mut blind = stale.clone();
    blind.metadata.resource_version = None;
    let err = leases
        .replace("kingress-leader", &PostParams::default(), &blind)
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (409, "Conflict".to_string()));
    let stored = server
        .get("coordination.k8s.io/v1", "Lease", Some("default"), "kingress-leader")
        .unwrap();
    assert_eq!(stored["spec"]["holderIdentity"], "b");

    // A merge patch carrying a stale resourceVersion is a conflict as well.
    let patch = json!({"metadata": {"resourceVersion": rv1}, "spec": {"holderIdentity": "c"}});
    let err = leases
        .patch("kingress-leader", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (409, "Conflict".to_string()));

    let err = leases.get("nope").await.unwrap_err();
    assert_eq!(api_error(err), (404, "NotFound".to_string()));
    assert!(leases.get_opt("nope").await.unwrap().is_none());

    // Leases answer a delete with a Status of success, not the object.
    let deleted = leases
        .delete("kingress-leader", &DeleteParams::default())
        .await
        .unwrap();
    let status = deleted.right().expect("a Status");
    assert_eq!(status.details.unwrap().name, "kingress-leader");
    assert!(leases.get_opt("kingress-leader").await.unwrap().is_none());

    let requests = server.requests();
    assert!(
        requests.iter().any(|(m, p)| m == "PUT"
            && p.starts_with("/apis/coordination.k8s.io/v1/namespaces/default/leases/kingress-leader")),
        "{requests:?}"
    );
}

#[tokio::test]
async fn watcher_syncs_then_follows_changes() {
    let server = FakeApiServer::start().await;
    server.apply(ingress("a", "a.example"));
    server.apply(ingress("b", "b.example"));
    let mut w = Watched::start(Api::all(server.client()), watcher::Config::default());
    assert_eq!(w.next_ok(4).await, ["Init", "InitApply(a)", "InitApply(b)", "InitDone"]);

    server.apply(ingress("c", "c.example"));
    assert_eq!(w.next_ok(1).await, ["Apply(c)"]);
    server.apply(ingress("a", "a2.example"));
    assert_eq!(w.next_ok(1).await, ["Apply(a)"]);
    let a = w.store.state().into_iter().find(|i| i.name_any() == "a").unwrap();
    assert_eq!(
        a.spec.as_ref().unwrap().rules.as_ref().unwrap()[0].host.as_deref(),
        Some("a2.example")
    );
    assert_eq!(a.metadata.generation, Some(2));
    assert!(server.delete("networking.k8s.io/v1", "Ingress", Some("default"), "b"));
    assert_eq!(w.next_ok(1).await, ["Delete(b)"]);
    assert_eq!(w.names(), ["a", "c"]);

    // What kube-runtime's watcher sent: a paginated list (500 per page), then a watch from the
    // list's version with bookmarks and the default 290 s timeout.
    let requests = server.requests();
    assert_eq!(
        requests[0],
        ("GET".into(), "/apis/networking.k8s.io/v1/ingresses?&limit=500".into())
    );
    assert_eq!(
        requests[1],
        (
            "GET".into(),
            "/apis/networking.k8s.io/v1/ingresses?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=3"
                .into()
        )
    );
}

#[tokio::test]
async fn watcher_relists_after_compaction_and_resumes_after_dropped_watches() {
    let server = FakeApiServer::start().await;
    server.apply(ingress("a", "a.example"));
    server.apply(ingress("b", "b.example"));
    let mut w = Watched::start(Api::all(server.client()), watcher::Config::default());
    assert_eq!(w.next_ok(4).await, ["Init", "InitApply(a)", "InitApply(b)", "InitDone"]);
    wait_for_watch(&server, 1).await;

    // Another kind moves the global version on; the Ingress watch has not seen it, so after the
    // compaction its version is too old: 410, then a fresh list.
    server.apply(config_map("x", "default"));
    server.compact();
    let events = w.until("InitDone").await;
    assert_eq!(
        events,
        [
            "Err:WatchError(410)",
            "Init",
            "InitApply(a)",
            "InitApply(b)",
            "InitDone"
        ]
    );

    // An abrupt end resumes from the last version: no relist, nothing missed.
    wait_for_watch(&server, 1).await;
    server.drop_watches();
    server.apply(ingress("c", "c.example"));
    let events = w.until("Apply(c)").await;
    assert!(
        events.iter().all(|e| e == "Apply(c)" || e.starts_with("Err:")),
        "{events:?}"
    );
    assert_eq!(w.names(), ["a", "b", "c"]);
}

#[tokio::test]
async fn bookmarks_reach_the_client_and_move_the_watcher_on() {
    let server = FakeApiServer::start().await;
    server.apply(ingress("a", "a.example"));
    let api: Api<Ingress> = Api::all(server.client());

    // Raw watch: a bookmark on demand, and one right before the timeout closes the stream.
    let list = api.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let wp = WatchParams::default().timeout(1);
    let mut stream = api.watch(&wp, &rv).await.unwrap().boxed();
    wait_for_watch(&server, 1).await;
    server.apply(config_map("x", "default"));
    server.bookmark();
    let current = server.resource_version();
    match tokio::time::timeout(DEADLINE, stream.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Bookmark(b)) => {
            assert_eq!(b.metadata.resource_version, current);
            assert_eq!(b.types.kind, "Ingress");
            assert_eq!(b.types.api_version, "networking.k8s.io/v1");
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    match tokio::time::timeout(DEADLINE, stream.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Bookmark(b)) => assert_eq!(b.metadata.resource_version, current),
        other => panic!("expected the bookmark before the timeout, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(DEADLINE, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .is_none()
    );
    drop(stream);

    // The watcher takes the bookmark's version: after the compaction it resumes, no relist.
    let mut w = Watched::start(api, watcher::Config::default());
    assert_eq!(w.next_ok(3).await, ["Init", "InitApply(a)", "InitDone"]);
    wait_for_watch(&server, 1).await;
    server.apply(config_map("y", "default"));
    server.bookmark();
    server.compact();
    server.apply(ingress("c", "c.example"));
    assert_eq!(w.until("Apply(c)").await, ["Apply(c)"]);
}

#[tokio::test]
async fn injected_failures_are_seen_then_requests_work() {
    let server = FakeApiServer::start().await;
    server.apply(ingress("a", "a.example"));
    let api: Api<Ingress> = Api::all(server.client());
    server.fail_next(2, 500);
    for _ in 0..2 {
        let err = api.list(&ListParams::default()).await.unwrap_err();
        assert_eq!(api_error(err), (500, "InternalError".to_string()));
    }
    assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 1);

    // A watcher reports a forbidden list, backs off, and then syncs.
    server.fail_next(1, 403);
    let mut w = Watched::start(api, watcher::Config::default());
    // kube-runtime emits Init before it lists, so a failed list shows as Init, Err, Init, ...
    assert_eq!(
        w.until("InitDone").await,
        ["Init", "Err:InitialListFailed(403)", "Init", "InitApply(a)", "InitDone"]
    );
}

#[tokio::test]
async fn watcher_recovers_when_the_server_comes_back() {
    let server = FakeApiServer::start().await;
    server.apply(ingress("a", "a.example"));
    server.apply(ingress("b", "b.example"));
    let api: Api<Ingress> = Api::all(server.client());
    let mut w = Watched::start(api.clone(), watcher::Config::default());
    assert_eq!(w.next_ok(4).await, ["Init", "InitApply(a)", "InitApply(b)", "InitDone"]);
    wait_for_watch(&server, 1).await;

    server.set_down(true);
    assert_eq!(server.open_watches(), 0);
    let err = api.list(&ListParams::default()).await.unwrap_err();
    assert!(
        !matches!(err, kube::Error::Api(_)),
        "a transport error, not an answer: {err:?}"
    );
    // Changes while the server is down (as another API server replica would take them).
    server.delete("networking.k8s.io/v1", "Ingress", Some("default"), "a");
    server.apply(ingress("d", "d.example"));
    server.set_down(false);

    // The watcher resumes from its version and replays what it missed.
    let events = w.until("Apply(d)").await;
    let ok: Vec<&String> = events.iter().filter(|e| !e.starts_with("Err:")).collect();
    assert_eq!(ok, ["Delete(a)", "Apply(d)"], "{events:?}");
    assert_eq!(w.names(), ["b", "d"]);
}

#[tokio::test]
async fn pagination_is_a_consistent_snapshot() {
    let server = FakeApiServer::start().await;
    for i in 0..5 {
        server.apply(config_map(&format!("cm-{i}"), "default"));
    }
    server.apply(config_map("elsewhere", "other"));
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");

    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let mut token = first.metadata.continue_.clone();
    let mut names: Vec<String> = first.items.iter().map(|c| c.name_any()).collect();
    // Changes after the first page do not show in the later ones.
    server.apply(config_map("cm-5", "default"));
    server.delete("v1", "ConfigMap", Some("default"), "cm-4");
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = api
            .list(&ListParams::default().limit(2).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(page.metadata.resource_version, first.metadata.resource_version);
        names.extend(page.items.iter().map(|c| c.name_any()));
        token = page.metadata.continue_;
    }
    assert_eq!(names, ["cm-0", "cm-1", "cm-2", "cm-3", "cm-4"]);

    // All namespaces, and a token from before a compaction.
    let all: Api<ConfigMap> = Api::all(server.client());
    let page = all.list(&ListParams::default().limit(4)).await.unwrap();
    let names: Vec<String> = page.items.iter().map(|c| c.name_any()).collect();
    assert_eq!(names, ["cm-0", "cm-1", "cm-2", "cm-3"]);
    let t = page.metadata.continue_.unwrap();
    server.apply(config_map("cm-6", "default"));
    server.compact();
    let err = all
        .list(&ListParams::default().limit(4).continue_token(&t))
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (410, "Expired".to_string()));
}

#[tokio::test]
async fn exact_and_too_old_versions() {
    let server = FakeApiServer::start().await;
    server.apply(config_map("a", "default"));
    let old = server.resource_version();
    server.apply(config_map("b", "default"));
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");

    let then = api
        .list(&ListParams::default().at(&old).matching(VersionMatch::Exact))
        .await
        .unwrap();
    assert_eq!(then.items.iter().map(|c| c.name_any()).collect::<Vec<_>>(), ["a"]);
    assert_eq!(then.metadata.resource_version.as_deref(), Some(old.as_str()));
    let any = api.list(&ListParams::default().match_any()).await.unwrap();
    assert_eq!(any.items.len(), 2);

    server.compact();
    let err = api
        .list(&ListParams::default().at(&old).matching(VersionMatch::Exact))
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (410, "Expired".to_string()));
    let mut stream = api.watch(&WatchParams::default(), &old).await.unwrap().boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(status)) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(stream.try_next().await.unwrap().is_none());
}

#[tokio::test]
async fn patch_status_updates_only_the_status() {
    let server = FakeApiServer::start().await;
    server.apply(ingress("a", "a.example"));
    let api: Api<Ingress> = Api::namespaced(server.client(), "default");
    let mut w = Watched::start(api.clone(), watcher::Config::default());
    assert_eq!(w.next_ok(3).await, ["Init", "InitApply(a)", "InitDone"]);

    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}, "spec": {"rules": []}});
    let patched = api
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let ip = |i: &Ingress| {
        i.status
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap()
            .ingress
            .as_ref()
            .unwrap()[0]
            .ip
            .clone()
    };
    assert_eq!(ip(&patched).as_deref(), Some("10.0.0.1"));
    assert_eq!(
        patched.spec.as_ref().unwrap().rules.as_ref().unwrap().len(),
        1,
        "spec untouched"
    );
    assert_eq!(patched.metadata.generation, Some(1));
    assert_eq!(w.next_ok(1).await, ["Apply(a)"]);
    assert_eq!(ip(&w.store.state()[0]).as_deref(), Some("10.0.0.1"));

    // The same status again changes nothing: same version, no event.
    let again = api
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(again.resource_version(), patched.resource_version());

    // A replace of the main resource leaves the status alone.
    let mut replaced = again.clone();
    replaced.status = None;
    replaced.metadata.labels = Some([("tier".to_string(), "edge".to_string())].into());
    let replaced = api.replace("a", &PostParams::default(), &replaced).await.unwrap();
    assert_eq!(ip(&replaced).as_deref(), Some("10.0.0.1"));
    assert_eq!(w.next_ok(1).await, ["Apply(a)"]);

    // Server-side apply of the status.
    let apply = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "status": {"loadBalancer": {"ingress": [{"hostname": "lb.example"}]}}
    });
    let applied = api
        .patch_status("a", &PatchParams::apply("kingress").force(), &Patch::Apply(&apply))
        .await
        .unwrap();
    let lb = applied.status.unwrap().load_balancer.unwrap().ingress.unwrap();
    assert_eq!(lb[0].hostname.as_deref(), Some("lb.example"));
    assert_eq!(w.next_ok(1).await, ["Apply(a)"]);

    let requests = server.requests();
    assert!(
        requests.iter().any(|(m, p)| m == "PATCH"
            && p == "/apis/networking.k8s.io/v1/namespaces/default/ingresses/a/status?&force=true&fieldManager=kingress"),
        "{requests:?}"
    );
}

#[tokio::test]
async fn recorder_publishes_events_k8s_io_events() {
    let server = FakeApiServer::start().await;
    let stored = server.apply(ingress("a", "a.example"));
    let client = server.client();
    let ing: Ingress = serde_json::from_value(stored).unwrap();
    let reporter = Reporter {
        controller: "kingress".into(),
        instance: Some("kingress-0".into()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let event = RecorderEvent {
        type_: EventType::Warning,
        reason: "InvalidBackend".into(),
        note: Some("service web has no port 80".into()),
        action: "Sync".into(),
        secondary: None,
    };
    recorder.publish(&event, &ing.object_ref(&())).await.unwrap();
    let events: Api<K8sEvent> = Api::namespaced(client, "default");
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let e = &list.items[0];
    assert_eq!(e.reason.as_deref(), Some("InvalidBackend"));
    assert_eq!(e.note.as_deref(), Some("service web has no port 80"));
    assert_eq!(e.reporting_controller.as_deref(), Some("kingress"));
    assert_eq!(e.regarding.as_ref().unwrap().name.as_deref(), Some("a"));
    assert!(e.series.is_none());

    // The same event again becomes a series, by merge patch.
    recorder.publish(&event, &ing.object_ref(&())).await.unwrap();
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].series.as_ref().unwrap().count, 2);
    let methods: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|(_, p)| p.starts_with("/apis/events.k8s.io/v1/namespaces/default/events"))
        .map(|(m, _)| m)
        .collect();
    assert_eq!(methods, ["POST", "GET", "PATCH", "GET"]);
    // The fake keeps core/v1 Events apart from events.k8s.io/v1 ones.
    assert!(server.list("v1", "Event").is_empty());
}

#[tokio::test]
async fn selectors_filter_lists_and_watches() {
    let server = FakeApiServer::start().await;
    server.apply(ingress("a", "a.example"));
    let mut other = ingress("b", "b.example");
    other["metadata"]["labels"] = json!({"app": "api"});
    server.apply(other.clone());
    let api: Api<Ingress> = Api::all(server.client());

    let mut w = Watched::start(api.clone(), watcher::Config::default().labels("app=web"));
    assert_eq!(w.next_ok(3).await, ["Init", "InitApply(a)", "InitDone"]);
    // Relabelled into the selection: ADDED; out of it: DELETED.
    other["metadata"]["labels"] = json!({"app": "web"});
    server.apply(other.clone());
    assert_eq!(w.next_ok(1).await, ["Apply(b)"]);
    other["metadata"]["labels"] = json!({});
    server.apply(other);
    assert_eq!(w.next_ok(1).await, ["Delete(b)"]);

    let names = |l: kube::core::ObjectList<Ingress>| l.items.iter().map(|i| i.name_any()).collect::<Vec<_>>();
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("app in (web,api)"))
                .await
                .unwrap()
        ),
        ["a"]
    );
    assert_eq!(
        names(api.list(&ListParams::default().labels("!app")).await.unwrap()),
        ["b"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("metadata.name=b"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("metadata.namespace!=default"))
                .await
                .unwrap()
        ),
        Vec::<String>::new()
    );
    let err = api
        .list(&ListParams::default().fields("spec.rules=x"))
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (400, "BadRequest".to_string()));

    for (name, ty) in [("tls", "kubernetes.io/tls"), ("opaque", "Opaque")] {
        server.apply(json!({
            "apiVersion": "v1", "kind": "Secret", "type": ty,
            "metadata": {"name": name, "namespace": "default"}
        }));
    }
    let secrets: Api<Secret> = Api::all(server.client());
    let tls = secrets
        .list(&ListParams::default().fields("type=kubernetes.io/tls"))
        .await
        .unwrap();
    assert_eq!(tls.items.iter().map(|s| s.name_any()).collect::<Vec<_>>(), ["tls"]);
}

#[tokio::test]
async fn streaming_list_watcher() {
    let server = FakeApiServer::start().await;
    server.apply(ingress("a", "a.example"));
    server.apply(ingress("b", "b.example"));
    let api: Api<Ingress> = Api::all(server.client());
    let mut w = Watched::start(api, watcher::Config::default().streaming_lists());
    assert_eq!(w.next_ok(4).await, ["Init", "InitApply(a)", "InitApply(b)", "InitDone"]);
    server.apply(ingress("c", "c.example"));
    assert_eq!(w.next_ok(1).await, ["Apply(c)"]);
    let (_, first) = &server.requests()[0];
    assert_eq!(
        first,
        "/apis/networking.k8s.io/v1/ingresses?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0"
    );
}

#[tokio::test]
async fn metadata_lists_finalizers_and_apply_creates() {
    let server = FakeApiServer::start().await;
    let client: Client = server.client();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // Server-side apply creates a missing object.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "finalizers": ["kingress.dev/x"]}, "data": {"a": "1"}});
    let created = api
        .patch("cfg", &PatchParams::apply("kingress"), &Patch::Apply(&cm))
        .await
        .unwrap();
    assert_eq!(created.data.unwrap()["a"], "1");

    let meta = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(meta.items.len(), 1);
    assert_eq!(meta.items[0].metadata.name.as_deref(), Some("cfg"));

    // With a finalizer, delete only marks the object; removing the finalizer completes it.
    let marked = api.delete("cfg", &DeleteParams::default()).await.unwrap();
    let marked = marked.left().expect("the marked object");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(api.get_opt("cfg").await.unwrap().is_some());
    // JSON patch, sent raw (kube's `Patch::Json` needs the json-patch crate).
    let ops = json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "kingress.dev/x"},
        {"op": "remove", "path": "/metadata/finalizers/0"}
    ]);
    let req = http::Request::patch("/api/v1/namespaces/default/configmaps/cfg")
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(serde_json::to_vec(&ops).unwrap())
        .unwrap();
    let last: ConfigMap = client.request(req).await.unwrap();
    assert!(last.metadata.finalizers.unwrap_or_default().is_empty());
    assert!(api.get_opt("cfg").await.unwrap().is_none());
}

#[tokio::test]
async fn cluster_scoped_ingress_classes_and_discovery() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let classes: Api<IngressClass> = Api::all(client.clone());
    let class: IngressClass = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": "kingress"},
        "spec": {"controller": "kingress.dev/ingress-controller"}
    }))
    .unwrap();
    let created = classes.create(&PostParams::default(), &class).await.unwrap();
    assert_eq!(created.metadata.namespace, None);
    let list = classes.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(
        server
            .get("networking.k8s.io/v1", "IngressClass", None, "kingress")
            .is_some()
    );

    let discovery = kube::Discovery::new(client).run().await.unwrap();
    assert!(discovery.has_group("networking.k8s.io"));
    let gvk = kube::api::GroupVersionKind::gvk("networking.k8s.io", "v1", "Ingress");
    let (resource, caps) = discovery.resolve_gvk(&gvk).unwrap();
    assert_eq!(resource.plural, "ingresses");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(caps.subresources.iter().any(|(r, _)| r.plural == "status"));
}
