//! Kubernetes mode end to end: kube-rs's real client against an in-process server that
//! speaks the API server's list/watch protocol, and real traffic through the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::*;
use kingress::gateway::{GatewayHandle, GatewayOptions, KubeMode, Source};
use kingress_compile::CompileOptions;
use kingress_fake_apiserver::FakeApiServer;
use kingress_proxy::ProxySettings;
use serde_json::{Value, json};

/// A kubeconfig pointing at the fake server.
fn kubeconfig(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{url}\"}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: fake, user: u, namespace: default}}\ncurrent-context: c\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
}

fn slice(name: &str, service: &str, port: u16) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]})
}

fn ingress(name: &str, host: &str, paths: &[(&str, &str)]) -> Value {
    let paths: Vec<Value> = paths
        .iter()
        .map(|(p, svc)| {
            json!({"path": p, "pathType": "Prefix",
                "backend": {"service": {"name": svc, "port": {"number": 80}}}})
        })
        .collect();
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ingressClassName": "kingress", "rules": [{"host": host, "http": {"paths": paths}}]}})
}

struct KubeEnv {
    api: FakeApiServer,
    env: Env,
}

fn fast_election(identity: &str) -> kingress_kube::ElectionOptions {
    kingress_kube::ElectionOptions {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
        ..kingress_kube::ElectionOptions::new("default".into(), "kingress-leader".into(), identity.into())
    }
}

/// A Kubernetes-mode gateway on `api` as `identity`; `tweak` adjusts the mode.
async fn start_kube(
    api: &FakeApiServer,
    dir: &std::path::Path,
    identity: &str,
    compile: CompileOptions,
    tweak: impl FnOnce(&mut KubeMode),
) -> GatewayHandle {
    let mut mode = KubeMode {
        kubeconfig: Some(kubeconfig(dir, &api.url())),
        election_id: "kingress-leader".into(),
        namespace: "default".into(),
        identity: identity.into(),
        election: Some(fast_election(identity)),
        ..KubeMode::default()
    };
    tweak(&mut mode);
    let options = GatewayOptions {
        source: Source::Kube(Box::new(mode)),
        compile,
        proxy: ProxySettings::default(),
        worker_threads: None,
        default_ssl_certificate: None,
        https_redirect_port: None,
        l4: common::loopback_l4(),
    };
    start_gateway(options).await
}

/// [`start_kube`] publishing two status addresses.
async fn start_kube_gateway(api: &FakeApiServer, dir: &std::path::Path, identity: &str) -> GatewayHandle {
    start_kube(api, dir, identity, CompileOptions::default(), |m| {
        m.publish_status_address = vec!["10.0.0.7".into(), "lb.example.com".into()];
    })
    .await
}

async fn kube_env(backend_port: u16) -> KubeEnv {
    let api = FakeApiServer::start().await;
    api.apply(service("web"));
    api.apply(slice("web-1", "web", backend_port));
    api.apply(ingress("site", "k.test", &[("/", "web")]));
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_kube_gateway(&api, dir.path(), "replica-a").await;
    let env = Env {
        dir,
        gateway,
        client: client(),
    };
    KubeEnv { api, env }
}

async fn ready(env: &Env) -> bool {
    env.client
        .get(env.admin("/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_then_changes_of_every_kind_are_served() {
    let a = echo("a").await;
    let b = echo("b").await;
    let k = kube_env(a.addr().port()).await;
    let env = &k.env;
    poll_until(WAIT, "/readyz after the initial sync", || async {
        ready(env).await.then_some(())
    })
    .await;
    assert_eq!(env.echo_json("k.test", "/x").await["name"], "a");

    // Ingress modified: a new path to a new Service.
    k.api.apply(service("other"));
    k.api.apply(slice("other-1", "other", b.addr().port()));
    k.api.apply(ingress("site", "k.test", &[("/", "web"), ("/b", "other")]));
    // ("/" already answers /b from a: wait for the backend to change, not the status.)
    poll_until(WAIT, "/b to route to b", || async {
        (env.echo_json("k.test", "/b/1").await["name"] == "b").then_some(())
    })
    .await;

    // EndpointSlice changed: web now points at b.
    k.api.apply(slice("web-1", "web", b.addr().port()));
    poll_until(WAIT, "web to move to b", || async {
        (env.echo_json("k.test", "/").await["name"] == "b").then_some(())
    })
    .await;

    // Service deleted: its paths answer 503; Ingress deleted: 404.
    assert!(k.api.delete("v1", "Service", Some("default"), "other"));
    env.wait_status("k.test", "/b", 503).await;
    assert!(k.api.delete("networking.k8s.io/v1", "Ingress", Some("default"), "site"));
    env.wait_status("k.test", "/", 404).await;

    // IngressClass: an Ingress without a class is ours once our class is the default.
    let mut classless = ingress("classless", "c.test", &[("/", "web")]);
    classless["spec"].as_object_mut().unwrap().remove("ingressClassName");
    k.api.apply(classless);
    k.api
        .apply(json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "kingress", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": "kingress.dev/ingress-controller"}}));
    env.wait_status("c.test", "/", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_relists_and_an_api_server_outage_keeps_serving() {
    let a = echo("a").await;
    let k = kube_env(a.addr().port()).await;
    let env = &k.env;
    env.wait_status("k.test", "/", 200).await;

    // The watch history is compacted and the streams end: the watchers get 410 on
    // resume and relist. A change made meanwhile is seen.
    k.api.compact();
    k.api.drop_watches();
    k.api.apply(ingress("site2", "k2.test", &[("/", "web")]));
    env.wait_status("k2.test", "/", 200).await;

    // The API server goes away: the last good configuration keeps serving.
    k.api.set_down(true);
    for _ in 0..20 {
        assert_eq!(env.get("k.test", "/").await.0, 200);
        assert_eq!(env.get("k2.test", "/").await.0, 200);
    }
    assert!(ready(env).await, "still ready: it serves the last good configuration");
    // It comes back (a restart, resourceVersions intact): changes flow again.
    k.api.set_down(false);
    k.api.apply(ingress("site3", "k3.test", &[("/", "web")]));
    env.wait_status("k3.test", "/", 200).await;
    assert_eq!(env.get("k.test", "/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_the_api_server_is_unreachable_at_start() {
    let a = echo("a").await;
    let api = FakeApiServer::start().await;
    api.apply(service("web"));
    api.apply(slice("web-1", "web", a.addr().port()));
    api.apply(ingress("site", "k.test", &[("/", "web")]));
    api.fail_next(6, 403);
    api.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_kube_gateway(&api, dir.path(), "replica-a").await;
    let env = Env {
        dir,
        gateway,
        client: client(),
    };
    // /healthz answers, /readyz does not while nothing was listed.
    let health = env.client.get(env.admin("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(!ready(&env).await);
    // The API server comes up (and answers 403 for a while, as a real one warming its
    // RBAC caches does): retried with backoff until the first sync.
    api.set_down(false);
    poll_until(
        Duration::from_secs(30),
        "/readyz after the API server came up",
        || async { ready(&env).await.then_some(()) },
    )
    .await;
    assert_eq!(env.get("k.test", "/").await.0, 200);
}

fn status_of(api: &FakeApiServer, name: &str) -> Value {
    api.get("networking.k8s.io/v1", "Ingress", Some("default"), name)
        .map(|i| i["status"]["loadBalancer"]["ingress"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_writes_status_and_events_and_a_second_replica_takes_over() {
    let a = echo("a").await;
    let k = kube_env(a.addr().port()).await;
    let env = &k.env;
    env.wait_status("k.test", "/", 200).await;
    // Status: the published addresses, IPs as ip and names as hostname.
    let expected = json!([{"ip": "10.0.0.7"}, {"hostname": "lb.example.com"}]);
    poll_until(WAIT, "the Ingress status", || async {
        (status_of(&k.api, "site") == expected).then_some(())
    })
    .await;
    // An Ingress of another class is left alone.
    let mut foreign = ingress("foreign", "f.test", &[("/", "web")]);
    foreign["spec"]["ingressClassName"] = json!("nginx");
    k.api.apply(foreign);
    // An invalid Ingress gets an Event.
    k.api.apply(ingress("broken", "b.test", &[("no-slash", "web")]));
    poll_until(WAIT, "an Event on the invalid Ingress", || async {
        k.api
            .list("events.k8s.io/v1", "Event")
            .iter()
            .any(|e| e["regarding"]["name"] == "broken" && e["type"] == "Warning")
            .then_some(())
    })
    .await;
    assert_eq!(status_of(&k.api, "foreign"), Value::Null);

    // A second replica: it does not lead while the first renews.
    let dir_b = tempfile::tempdir().unwrap();
    let b = start_kube_gateway(&k.api, dir_b.path(), "replica-b").await;
    let holder = |api: &FakeApiServer| {
        api.get("coordination.k8s.io/v1", "Lease", Some("default"), "kingress-leader")
            .map(|l| l["spec"]["holderIdentity"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(holder(&k.api), "replica-a");
    // The first stops (releasing the Lease): the second takes over and keeps the
    // status current for new Ingresses.
    let KubeEnv { api, env } = k;
    env.gateway.shutdown().await;
    poll_until(WAIT, "replica-b to lead", || async {
        (holder(&api) == "replica-b").then_some(())
    })
    .await;
    api.apply(ingress("later", "l.test", &[("/", "web")]));
    poll_until(WAIT, "replica-b to write status", || async {
        (status_of(&api, "later") == expected).then_some(())
    })
    .await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_secrets_and_the_controller_configmap_come_from_the_api_server() {
    let a = echo("a").await;
    let api = FakeApiServer::start().await;
    api.apply(service("web"));
    api.apply(slice("web-1", "web", a.addr().port()));
    let mut site = ingress("site", "k.test", &[("/", "web")]);
    site["spec"]["tls"] = json!([{"hosts": ["k.test"], "secretName": "k-tls"}]);
    api.apply(site);
    api.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kingress-controller", "namespace": "default"},
        "data": {"proxy-next-upstream-tries": "2"}}));
    let dir = tempfile::tempdir().unwrap();
    let compile = CompileOptions {
        config_map: Some(("default".into(), "kingress-controller".into())),
        ..CompileOptions::default()
    };
    let gateway = start_kube(&api, dir.path(), "replica-a", compile, |_| {}).await;
    let env = Env {
        dir,
        gateway,
        client: client(),
    };
    async fn tries(env: &Env) -> Option<Value> {
        let dump = env.debug_config().await;
        dump["servers"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["host"] == "k.test").cloned())
            .map(|s| s["paths"][0]["tries"].clone())
    }
    poll_until(WAIT, "the ConfigMap's tries", || async {
        (tries(&env).await == Some(json!(2))).then_some(())
    })
    .await;
    // The Secret appears: k.test gets its certificate.
    let c = rcgen::generate_simple_self_signed(vec!["k.test".to_string()]).unwrap();
    api.apply(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "k-tls", "namespace": "default"},
        "stringData": {"tls.crt": c.cert.pem(), "tls.key": c.signing_key.serialize_pem()}}),
    );
    poll_until(WAIT, "the certificate from the Secret", || async {
        let dump = env.debug_config().await;
        dump["certificates"]
            .as_array()
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["host"] == "k.test" && c["secret"] == "default/k-tls")
            })
            .then_some(())
    })
    .await;
    // Secrets are watched with the API server filtering them to TLS ones.
    assert!(
        api.requests()
            .iter()
            .any(|(_, q)| q.contains("fieldSelector=type%3Dkubernetes.io%2Ftls")
                || q.contains("fieldSelector=type=kubernetes.io/tls")),
        "the Secret watch asks for TLS Secrets only"
    );
    // The ConfigMap changes.
    api.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kingress-controller", "namespace": "default"},
        "data": {"proxy-next-upstream-tries": "5"}}));
    poll_until(WAIT, "the new tries", || async {
        (tries(&env).await == Some(json!(5))).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_namespace_limits_what_is_served() {
    let a = echo("a").await;
    let api = FakeApiServer::start().await;
    for ns in ["team", "default"] {
        let in_ns = |mut v: Value| {
            v["metadata"]["namespace"] = json!(ns);
            v
        };
        api.apply(in_ns(service("web")));
        api.apply(in_ns(slice("web-1", "web", a.addr().port())));
        api.apply(in_ns(ingress("site", &format!("{ns}.test"), &[("/", "web")])));
    }
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_kube(&api, dir.path(), "replica-a", CompileOptions::default(), |m| {
        m.watch_namespace = Some("team".into());
        m.namespace = "team".into();
    })
    .await;
    let env = Env {
        dir,
        gateway,
        client: client(),
    };
    env.wait_status("team.test", "/", 200).await;
    assert_eq!(
        env.get("default.test", "/").await.0,
        404,
        "another namespace is not watched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_lb_mode_forwards_and_writes_the_service_status_from_the_nodes() {
    // A TCP backend that greets, as a pod of the Service.
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"hello from db\n").await;
        }
    });
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let api = FakeApiServer::start().await;
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "pg", "port": port, "protocol": "TCP"}]}}));
    api.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "db-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": backend_port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"]}]}));
    // Two kingress pods (a DaemonSet) on two nodes, one with an ExternalIP; a pod of
    // another app on a third node does not count.
    for (pod, node, app) in [
        ("kingress-a", "node-1", "kingress"),
        ("kingress-b", "node-2", "kingress"),
        ("other", "node-3", "web"),
    ] {
        api.apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": "default",
                "labels": {"app": app, "controller-revision-hash": format!("rev-{pod}")}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running"}}));
    }
    for (node, addresses) in [
        ("node-1", json!([{"type": "InternalIP", "address": "192.0.2.1"}])),
        (
            "node-2",
            json!([{"type": "InternalIP", "address": "192.0.2.2"}, {"type": "ExternalIP", "address": "198.51.100.2"}]),
        ),
        ("node-3", json!([{"type": "InternalIP", "address": "192.0.2.3"}])),
    ] {
        api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
            "status": {"addresses": addresses}}));
    }
    let dir = tempfile::tempdir().unwrap();
    let compile = CompileOptions {
        l4: kingress_compile::L4Options {
            service_lb: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let gateway = start_kube(&api, dir.path(), "kingress-a", compile, |_| {}).await;

    // Forwarded as soon as ready.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut greeting = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(&mut s), &mut greeting)
        .await
        .unwrap();
    assert_eq!(greeting, "hello from db\n");

    let lb = |api: &FakeApiServer| {
        api.get("v1", "Service", Some("default"), "db")
            .map(|s| s["status"]["loadBalancer"]["ingress"].clone())
            .unwrap_or(Value::Null)
    };
    let expected = json!([{"ip": "192.0.2.1"}, {"ip": "198.51.100.2"}]);
    poll_until(WAIT, "the Service status from the nodes", || async {
        (lb(&api) == expected).then_some(())
    })
    .await;

    // The Service stops being a LoadBalancer: its port closes and its status is cleared.
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"type": "ClusterIP", "ports": [{"name": "pg", "port": port, "protocol": "TCP"}]}}));
    poll_until(WAIT, "the port to close", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    poll_until(WAIT, "the Service status to be cleared", || async {
        let v = lb(&api);
        (v.is_null() || v == json!([])).then_some(())
    })
    .await;
    gateway.shutdown().await;
}
