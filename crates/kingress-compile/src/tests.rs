//! Table-driven tests of compile(): objects in, routes, endpoints and diagnostics out.
//! Several cases are the Kubernetes Ingress documentation's own examples.

use serde_json::{Value, json};

use super::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kingress_model::BackendId;

fn ingress_with(name: &str, extra_meta: Value, spec: Value) -> Ingress {
    let mut meta = json!({"name": name, "namespace": "default"});
    if let (Some(m), Some(extra)) = (meta.as_object_mut(), extra_meta.as_object()) {
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": meta, "spec": spec,
    }))
    .unwrap()
}

fn ingress(name: &str, spec: Value) -> Ingress {
    let mut spec = spec;
    if let Some(s) = spec.as_object_mut() {
        s.entry("ingressClassName").or_insert(json!("kingress"));
    }
    ingress_with(name, json!({}), spec)
}

fn service(name: &str, ports: Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": ports},
    }))
    .unwrap()
}

fn slice(name: &str, service: &str, ports: Value, endpoints: Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
    }))
    .unwrap()
}

/// A Service `name` with one port 80 (named "http") backed by `ip:8080`.
fn svc_with_endpoint(name: &str, ip: &str) -> (Service, EndpointSlice) {
    (
        service(name, json!([{"name": "http", "port": 80, "targetPort": 8080}])),
        slice(
            &format!("{name}-abc"),
            name,
            json!([{"name": "http", "port": 8080}]),
            json!([{"addresses": [ip]}]),
        ),
    )
}

fn path(p: &str, ty: &str, svc: &str) -> Value {
    json!({"path": p, "pathType": ty, "backend": {"service": {"name": svc, "port": {"number": 80}}}})
}

fn snapshot(ingresses: Vec<Ingress>, services: &[&str]) -> Snapshot {
    let mut s = Snapshot {
        ingresses,
        ..Default::default()
    };
    for (i, name) in services.iter().enumerate() {
        let (svc, sl) = svc_with_endpoint(name, &format!("10.0.0.{}", i + 1));
        s.services.push(svc);
        s.endpoint_slices.push(sl);
    }
    s
}

fn route(c: &Compiled, host: &str, p: &str) -> Option<String> {
    let host = if host.is_empty() { None } else { Some(host) };
    c.config.lookup(host, p).map(|r| r.backend.to_string())
}

fn diag_texts(c: &Compiled) -> Vec<String> {
    c.diagnostics.iter().map(|d| d.to_string()).collect()
}

fn run(s: &Snapshot) -> Compiled {
    compile(s, &CompileOptions::default())
}

#[test]
fn simple_fanout_example() {
    let ing = ingress(
        "simple-fanout-example",
        json!({"rules": [{"host": "foo.bar.com", "http": {"paths": [
            path("/foo", "Prefix", "service1"), path("/bar", "Prefix", "service2")]}}]}),
    );
    let c = run(&snapshot(vec![ing], &["service1", "service2"]));
    assert_eq!(
        route(&c, "foo.bar.com", "/foo/x").as_deref(),
        Some("default/service1:80")
    );
    assert_eq!(route(&c, "foo.bar.com", "/bar").as_deref(), Some("default/service2:80"));
    assert_eq!(route(&c, "foo.bar.com", "/baz"), None);
    assert_eq!(route(&c, "other.com", "/foo"), None);
    assert!(c.diagnostics.is_empty(), "{:?}", diag_texts(&c));
    let eps = c.endpoints.get(&BackendId::new("default", "service1", "80")).unwrap();
    assert_eq!(eps.addrs, vec!["10.0.0.1:8080".parse().unwrap()]);
}

#[test]
fn name_based_virtual_hosting_example_with_catch_all_rule() {
    let ing = ingress(
        "name-virtual-host-ingress-no-third-host",
        json!({"rules": [
            {"host": "first.bar.com", "http": {"paths": [path("/", "Prefix", "service1")]}},
            {"host": "second.bar.com", "http": {"paths": [path("/", "Prefix", "service2")]}},
            {"http": {"paths": [path("/", "Prefix", "service3")]}},
        ]}),
    );
    let c = run(&snapshot(vec![ing], &["service1", "service2", "service3"]));
    assert_eq!(route(&c, "first.bar.com", "/").as_deref(), Some("default/service1:80"));
    assert_eq!(
        route(&c, "second.bar.com", "/x").as_deref(),
        Some("default/service2:80")
    );
    assert_eq!(route(&c, "third.bar.com", "/x").as_deref(), Some("default/service3:80"));
    assert_eq!(route(&c, "", "/x").as_deref(), Some("default/service3:80"));
}

#[test]
fn hostname_wildcards_example() {
    let ing = ingress(
        "ingress-wildcard-host",
        json!({"rules": [
            {"host": "foo.bar.com", "http": {"paths": [path("/bar", "Prefix", "service1")]}},
            {"host": "*.foo.com", "http": {"paths": [path("/foo", "Prefix", "service2")]}},
        ]}),
    );
    let c = run(&snapshot(vec![ing], &["service1", "service2"]));
    assert_eq!(route(&c, "foo.bar.com", "/bar").as_deref(), Some("default/service1:80"));
    assert_eq!(route(&c, "bar.foo.com", "/foo").as_deref(), Some("default/service2:80"));
    assert_eq!(route(&c, "baz.bar.foo.com", "/foo"), None);
    assert_eq!(route(&c, "foo.com", "/foo"), None);
}

#[test]
fn default_backend_example_and_catch_all() {
    // An Ingress with only a defaultBackend is the catch-all for every host.
    let catch_all = ingress(
        "test-ingress",
        json!({"defaultBackend": {"service": {"name": "test", "port": {"number": 80}}}}),
    );
    // An Ingress's defaultBackend answers the unmatched paths of its own hosts only.
    let own = ingress(
        "own",
        json!({
            "defaultBackend": {"service": {"name": "owndefault", "port": {"name": "http"}}},
            "rules": [{"host": "own.com", "http": {"paths": [path("/api", "Prefix", "api")]}}],
        }),
    );
    let c = run(&snapshot(vec![catch_all, own], &["test", "owndefault", "api"]));
    assert_eq!(route(&c, "anything.com", "/x").as_deref(), Some("default/test:80"));
    assert_eq!(route(&c, "own.com", "/api/v1").as_deref(), Some("default/api:80"));
    assert_eq!(route(&c, "own.com", "/other").as_deref(), Some("default/owndefault:80"));
    assert!(c.diagnostics.is_empty(), "{:?}", diag_texts(&c));
}

#[test]
fn merging_and_conflicts_oldest_wins() {
    let older = ingress_with(
        "b-older",
        json!({"creationTimestamp": "2024-01-01T00:00:00Z"}),
        json!({"ingressClassName": "kingress", "rules": [{"host": "shop.com", "http": {"paths": [
            path("/", "Prefix", "old"), path("/cart", "Exact", "cart")]}}]}),
    );
    let newer = ingress_with(
        "a-newer",
        json!({"creationTimestamp": "2025-01-01T00:00:00Z"}),
        json!({"ingressClassName": "kingress", "rules": [{"host": "shop.com", "http": {"paths": [
            path("/", "Prefix", "new"), path("/api", "Prefix", "api")]}}]}),
    );
    let c = run(&snapshot(vec![newer, older], &["old", "new", "cart", "api"]));
    // Paths of both merge on the host; the true conflict on "/" goes to the older one.
    assert_eq!(route(&c, "shop.com", "/").as_deref(), Some("default/old:80"));
    assert_eq!(route(&c, "shop.com", "/api/x").as_deref(), Some("default/api:80"));
    assert_eq!(route(&c, "shop.com", "/cart").as_deref(), Some("default/cart:80"));
    let d = diag_texts(&c);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].starts_with("Ingress default/a-newer: path \"/\" (Prefix) on host \"shop.com\""),
        "{d:?}"
    );
    assert!(d[0].contains("Ingress default/b-older"), "{d:?}");
}

#[test]
fn without_timestamps_namespace_then_name_decides() {
    let a = ingress(
        "a",
        json!({"rules": [{"host": "x.com", "http": {"paths": [path("/", "Prefix", "s1")]}}]}),
    );
    let b = ingress(
        "b",
        json!({"rules": [{"host": "x.com", "http": {"paths": [path("/", "Prefix", "s2")]}}]}),
    );
    let c = run(&snapshot(vec![b, a], &["s1", "s2"]));
    assert_eq!(route(&c, "x.com", "/").as_deref(), Some("default/s1:80"));
    assert_eq!(c.diagnostics.len(), 1);
}

#[test]
fn precedence_longest_then_exact_before_prefix() {
    let ing = ingress(
        "p",
        json!({"rules": [{"host": "p.com", "http": {"paths": [
            path("/", "Prefix", "root"),
            path("/app", "Prefix", "prefix"),
            path("/app", "Exact", "exact"),
            path("/app/admin", "ImplementationSpecific", "impl"),
        ]}}]}),
    );
    let c = run(&snapshot(vec![ing], &["root", "prefix", "exact", "impl"]));
    assert_eq!(route(&c, "p.com", "/app").as_deref(), Some("default/exact:80"));
    assert_eq!(route(&c, "p.com", "/app/").as_deref(), Some("default/prefix:80"));
    assert_eq!(route(&c, "p.com", "/app/adminx").as_deref(), Some("default/impl:80"));
    assert_eq!(route(&c, "p.com", "/apple").as_deref(), Some("default/root:80"));
}

#[test]
fn class_selection_filters_ingresses() {
    let ours = ingress(
        "ours",
        json!({"rules": [{"host": "a.com", "http": {"paths": [path("/", "Prefix", "s1")]}}]}),
    );
    let theirs = ingress_with(
        "theirs",
        json!({}),
        json!({"ingressClassName": "nginx", "rules": [{"host": "b.com", "http": {"paths": [path("/", "Prefix", "s1")]}}]}),
    );
    let classless = ingress_with(
        "classless",
        json!({}),
        json!({"rules": [{"host": "c.com", "http": {"paths": [path("/", "Prefix", "s1")]}}]}),
    );
    let legacy = ingress_with(
        "legacy",
        json!({"annotations": {"kubernetes.io/ingress.class": "kingress"}}),
        json!({"rules": [{"host": "d.com", "http": {"paths": [path("/", "Prefix", "s1")]}}]}),
    );
    let s = snapshot(vec![ours, theirs, classless, legacy], &["s1"]);
    let c = run(&s);
    assert!(route(&c, "a.com", "/").is_some());
    assert!(route(&c, "b.com", "/").is_none());
    assert!(route(&c, "c.com", "/").is_none());
    assert!(route(&c, "d.com", "/").is_some());
    let opts = CompileOptions {
        class: ClassOptions {
            watch_ingress_without_class: true,
            ..ClassOptions::default()
        },
        ..CompileOptions::default()
    };
    let c = compile(&s, &opts);
    assert!(route(&c, "c.com", "/").is_some());
}

#[test]
fn missing_service_keeps_the_route_with_a_diagnostic() {
    let ing = ingress(
        "m",
        json!({"rules": [{"host": "m.com", "http": {"paths": [path("/", "Prefix", "ghost")]}}]}),
    );
    let c = run(&snapshot(vec![ing], &[]));
    assert_eq!(route(&c, "m.com", "/").as_deref(), Some("default/ghost:80"));
    assert!(c.endpoints.get(&BackendId::new("default", "ghost", "80")).is_none());
    let d = diag_texts(&c);
    assert_eq!(
        d,
        vec!["Ingress default/m: service \"ghost\" not found; its paths answer 503 until it exists"]
    );
}

#[test]
fn port_by_name_resolves_to_the_service_port_number() {
    let ing = ingress(
        "n",
        json!({"rules": [{"host": "n.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}},
            {"path": "/bad", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "nope"}}}},
            {"path": "/num", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 81}}}},
        ]}}]}),
    );
    let c = run(&snapshot(vec![ing], &["web"]));
    assert_eq!(route(&c, "n.com", "/").as_deref(), Some("default/web:80"));
    let d = diag_texts(&c);
    assert!(d.iter().any(|x| x.contains("no TCP port named \"nope\"")), "{d:?}");
    assert!(d.iter().any(|x| x.contains("no TCP port 81")), "{d:?}");
}

#[test]
fn invalid_ingress_is_skipped_and_the_rest_serves() {
    let bad = ingress(
        "bad",
        json!({"rules": [{"host": "bad.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "s1", "port": {"number": 70000}}}}]}}]}),
    );
    let bad_host = ingress(
        "badhost",
        json!({"rules": [{"host": "foo.*.com", "http": {"paths": [path("/", "Prefix", "s1")]}}]}),
    );
    let bad_type = ingress(
        "badtype",
        json!({"rules": [{"host": "t.com", "http": {"paths": [path("/", "Regex", "s1")]}}]}),
    );
    let relative = ingress(
        "relative",
        json!({"rules": [{"host": "r.com", "http": {"paths": [path("foo", "Prefix", "s1")]}}]}),
    );
    let empty = ingress("empty", json!({}));
    let good = ingress(
        "good",
        json!({"rules": [{"host": "good.com", "http": {"paths": [path("/", "Prefix", "s1")]}}]}),
    );
    let c = run(&snapshot(vec![bad, bad_host, bad_type, relative, empty, good], &["s1"]));
    assert!(route(&c, "good.com", "/").is_some());
    assert!(route(&c, "bad.com", "/").is_none());
    assert!(route(&c, "t.com", "/").is_none());
    let d = diag_texts(&c);
    assert_eq!(d.len(), 5, "{d:?}");
    assert!(
        d.iter()
            .any(|x| x.starts_with("Ingress default/bad: invalid, skipped:") && x.contains("70000"))
    );
    assert!(
        d.iter()
            .any(|x| x.starts_with("Ingress default/badhost: invalid") && x.contains("wildcard"))
    );
    assert!(
        d.iter()
            .any(|x| x.starts_with("Ingress default/badtype: invalid") && x.contains("\"Regex\""))
    );
    assert!(
        d.iter()
            .any(|x| x.starts_with("Ingress default/relative: invalid") && x.contains("absolute"))
    );
    assert!(
        d.iter()
            .any(|x| x.starts_with("Ingress default/empty: invalid") && x.contains("defaultBackend or rules"))
    );
}

#[test]
fn invalid_service_is_skipped_and_its_paths_answer_503() {
    let ing = ingress(
        "i",
        json!({"rules": [{"host": "i.com", "http": {"paths": [path("/", "Prefix", "broken")]}}]}),
    );
    let mut s = snapshot(vec![ing], &[]);
    s.services.push(service("broken", json!([{"port": 0}])));
    let c = run(&s);
    assert_eq!(route(&c, "i.com", "/").as_deref(), Some("default/broken:80"));
    assert!(c.endpoints.get(&BackendId::new("default", "broken", "80")).is_none());
    let d = diag_texts(&c);
    assert!(
        d.iter()
            .any(|x| x.starts_with("Service default/broken: invalid, skipped:")),
        "{d:?}"
    );
    assert!(
        d.iter()
            .any(|x| x.starts_with("Ingress default/i: service \"broken\" is invalid")),
        "{d:?}"
    );
}

#[test]
fn endpoint_conditions_and_port_names() {
    let svc = service(
        "multi",
        json!([{"name": "http", "port": 80}, {"name": "admin", "port": 9000}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
    );
    let sl = slice(
        "multi-1",
        "multi",
        json!([{"name": "http", "port": 8080}, {"name": "admin", "port": 9090}]),
        json!([
            {"addresses": ["10.1.0.1"]},
            {"addresses": ["10.1.0.2"], "conditions": {"ready": true}},
            {"addresses": ["10.1.0.3"], "conditions": {"ready": false}},
            {"addresses": ["10.1.0.4"], "conditions": {"ready": true, "terminating": true}},
        ]),
    );
    let sl2 = slice(
        "multi-2",
        "multi",
        json!([{"name": "http", "port": 8080}]),
        json!([{"addresses": ["10.1.0.5"]}]),
    );
    let other = slice(
        "other-1",
        "other",
        json!([{"name": "http", "port": 1}]),
        json!([{"addresses": ["10.9.9.9"]}]),
    );
    let s = Snapshot {
        services: vec![svc],
        endpoint_slices: vec![sl, sl2, other],
        ..Default::default()
    };
    let (t, d) = compile_endpoints(&s);
    assert!(d.is_empty(), "{d:?}");
    let http = t.get(&BackendId::new("default", "multi", "80")).unwrap();
    let want: Vec<std::net::SocketAddr> = ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.5:8080"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(http.addrs, want);
    let admin = t.get(&BackendId::new("default", "multi", "9000")).unwrap();
    assert_eq!(admin.addrs.len(), 2);
    assert!(
        t.get(&BackendId::new("default", "multi", "53")).is_none(),
        "UDP ports are not HTTP backends"
    );
}

#[test]
fn bad_endpoint_slice_is_a_diagnostic() {
    let (svc, _) = svc_with_endpoint("web", "10.0.0.1");
    let bad = slice(
        "web-bad",
        "web",
        json!([{"name": "http", "port": 8080}]),
        json!([{"addresses": ["not-an-ip"]}]),
    );
    let s = Snapshot {
        services: vec![svc],
        endpoint_slices: vec![bad],
        ..Default::default()
    };
    let (t, d) = compile_endpoints(&s);
    assert_eq!(t.get(&BackendId::new("default", "web", "80")).map(|e| e.len()), Some(0));
    assert_eq!(d.len(), 1);
    assert!(
        d[0].to_string()
            .starts_with("EndpointSlice default/web-bad: invalid, skipped")
    );
}

#[test]
fn conflicting_default_backends_report_the_newer() {
    let a = ingress(
        "a",
        json!({"defaultBackend": {"service": {"name": "s1", "port": {"number": 80}}}}),
    );
    let b = ingress(
        "b",
        json!({"defaultBackend": {"service": {"name": "s2", "port": {"number": 80}}}}),
    );
    let c = run(&snapshot(vec![b, a], &["s1", "s2"]));
    assert_eq!(route(&c, "x", "/").as_deref(), Some("default/s1:80"));
    let d = diag_texts(&c);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].starts_with("Ingress default/b: defaultBackend"), "{d:?}");
}

#[test]
fn compile_is_deterministic() {
    let mk = || {
        let mut v = Vec::new();
        for i in 0..50 {
            v.push(ingress(
                &format!("i{i}"),
                json!({"rules": [{"host": format!("h{}.com", i % 7), "http": {"paths": [path(&format!("/p{}", i % 5), "Prefix", "s1")]}}]}),
            ));
        }
        v
    };
    let mut rev = mk();
    rev.reverse();
    let a = run(&snapshot(mk(), &["s1"]));
    let b = run(&snapshot(rev, &["s1"]));
    assert_eq!(diag_texts(&a), diag_texts(&b));
    for h in 0..7 {
        for p in 0..5 {
            let host = format!("h{h}.com");
            let path = format!("/p{p}");
            let ra = a
                .config
                .lookup(Some(&host), &path)
                .map(|r| r.source.ingress.name.clone());
            let rb = b
                .config
                .lookup(Some(&host), &path)
                .map(|r| r.source.ingress.name.clone());
            assert_eq!(ra, rb);
        }
    }
}

// ---- balancing and retry policy: annotations over the ConfigMap over flags ----

fn annotated(name: &str, host: &str, annotations: Value) -> Ingress {
    let spec = json!({
        "ingressClassName": "kingress",
        "rules": [{"host": host, "http": {"paths": [path("/app", "Prefix", "s1")]}}],
    });
    ingress_with(name, json!({"annotations": annotations}), spec)
}

fn policy_of(c: &Compiled, host: &str) -> kingress_model::BackendPolicy {
    let r = c.config.lookup(Some(host), "/app").expect("route");
    (*r.policy).clone()
}

fn config_map(data: Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kingress", "namespace": "ingress"},
        "data": data,
    }))
    .unwrap()
}

fn cm_options() -> CompileOptions {
    CompileOptions {
        config_map: Some(("ingress".into(), "kingress".into())),
        ..CompileOptions::default()
    }
}

const P: &str = "nginx.ingress.kubernetes.io/";

#[test]
fn balancing_annotations_choose_the_algorithm() {
    use kingress_model::{AffinityMode, Balance, HashPart, SameSite};
    let s = snapshot(
        vec![
            annotated("plain", "plain.com", json!({})),
            annotated("ewma", "ewma.com", json!({format!("{P}load-balance"): "ewma"})),
            annotated(
                "hash",
                "hash.com",
                json!({format!("{P}load-balance"): "ewma", format!("{P}upstream-hash-by"): "$http_x_user"}),
            ),
            annotated(
                "sticky",
                "sticky.com",
                json!({
                    format!("{P}affinity"): "cookie",
                    format!("{P}upstream-hash-by"): "$request_uri",
                    format!("{P}affinity-mode"): "persistent",
                    format!("{P}session-cookie-name"): "route",
                    format!("{P}session-cookie-max-age"): "3600",
                    format!("{P}session-cookie-samesite"): "Lax",
                    format!("{P}session-cookie-secure"): "true",
                    format!("{P}session-cookie-path"): "/app",
                }),
            ),
        ],
        &["s1"],
    );
    let c = run(&s);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    assert_eq!(policy_of(&c, "plain.com").balance, Balance::RoundRobin);
    assert_eq!(policy_of(&c, "ewma.com").balance, Balance::Ewma);
    match policy_of(&c, "hash.com").balance {
        Balance::Hash(k) => assert_eq!(k.parts, vec![HashPart::Header("x-user".into())]),
        other => panic!("{other:?}"),
    }
    match policy_of(&c, "sticky.com").balance {
        Balance::Cookie(ck) => {
            assert_eq!(ck.name, "route");
            assert_eq!(ck.mode, AffinityMode::Persistent);
            assert_eq!(ck.max_age, Some(3600));
            assert_eq!(ck.samesite, Some(SameSite::Lax));
            assert!(ck.secure);
            assert_eq!(ck.path.as_deref(), Some("/app"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_policy_annotations_are_diagnostics_and_defaults_stay() {
    use kingress_model::Balance;
    let s = snapshot(
        vec![annotated(
            "bad",
            "bad.com",
            json!({
                format!("{P}load-balance"): "fastest",
                format!("{P}upstream-hash-by"): "$nonsense",
                format!("{P}affinity"): "ip",
                format!("{P}proxy-next-upstream-tries"): "many",
                format!("{P}proxy-next-upstream"): "error http_502",
            }),
        )],
        &["s1"],
    );
    let c = run(&s);
    let p = policy_of(&c, "bad.com");
    assert_eq!(p.balance, Balance::RoundRobin);
    assert_eq!(p.retry.tries, 3);
    assert!(p.retry.on_error && !p.retry.on_timeout);
    let reasons: Vec<String> = c.diagnostics.iter().map(|d| d.to_string()).collect();
    for needle in ["fastest", "$nonsense", "\"ip\"", "\"many\"", "http_502"] {
        assert!(
            reasons
                .iter()
                .any(|r| r.contains(needle) && r.contains("Ingress default/bad")),
            "{needle}: {reasons:#?}"
        );
    }
}

#[test]
fn the_configmap_sets_defaults_that_annotations_override() {
    use kingress_model::Balance;
    let mut s = snapshot(
        vec![
            annotated("plain", "plain.com", json!({})),
            annotated(
                "rr",
                "rr.com",
                json!({format!("{P}load-balance"): "round_robin", format!("{P}proxy-next-upstream-tries"): "1"}),
            ),
        ],
        &["s1"],
    );
    s.config_maps.push(config_map(json!({
        "load-balance": "ewma",
        "proxy-next-upstream": "error timeout non_idempotent",
        "proxy-next-upstream-tries": "5",
        "unrelated-key": "whatever",
    })));
    let c = compile(&s, &cm_options());
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let plain = policy_of(&c, "plain.com");
    assert_eq!(plain.balance, Balance::Ewma);
    assert_eq!(plain.retry.tries, 5);
    assert!(plain.retry.non_idempotent);
    let rr = policy_of(&c, "rr.com");
    assert_eq!(rr.balance, Balance::RoundRobin);
    assert_eq!(rr.retry.tries, 1);

    // Without --configmap the ConfigMap is not read; flags give the tries.
    let opts = CompileOptions {
        defaults: PolicyDefaults {
            tries: 7,
            ..PolicyDefaults::default()
        },
        ..CompileOptions::default()
    };
    let c = compile(&s, &opts);
    assert_eq!(policy_of(&c, "plain.com").balance, Balance::RoundRobin);
    assert_eq!(policy_of(&c, "plain.com").retry.tries, 7);

    // A bad ConfigMap value is reported against the ConfigMap.
    s.config_maps = vec![config_map(json!({"load-balance": "random"}))];
    let c = compile(&s, &cm_options());
    assert!(
        c.diagnostics
            .iter()
            .any(|d| d.to_string().contains("ConfigMap ingress/kingress") && d.to_string().contains("random")),
        "{:?}",
        c.diagnostics
    );
    // A missing one too, and built-in defaults apply.
    s.config_maps.clear();
    let c = compile(&s, &cm_options());
    assert!(c.diagnostics.iter().any(|d| d.to_string().contains("does not exist")));
    assert_eq!(policy_of(&c, "plain.com").balance, Balance::RoundRobin);
}

// ---- HTTPS redirects and HSTS ----

fn with_tls(name: &str, host: &str, tls_hosts: Value, annotations: Value) -> Ingress {
    let spec = json!({
        "ingressClassName": "kingress",
        "tls": [{"hosts": tls_hosts, "secretName": "cert"}],
        "rules": [{"host": host, "http": {"paths": [path("/app", "Prefix", "s1")]}}],
    });
    ingress_with(name, json!({"annotations": annotations}), spec)
}

fn redirects(c: &Compiled, host: &str) -> bool {
    c.config.lookup(Some(host), "/app").expect("route").https_redirect
}

#[test]
fn hosts_with_tls_redirect_unless_told_not_to() {
    let s = snapshot(
        vec![
            with_tls("secure", "secure.com", json!(["secure.com"]), json!({})),
            with_tls("wild", "a.wild.com", json!(["*.wild.com"]), json!({})),
            with_tls(
                "optout",
                "optout.com",
                json!(["optout.com"]),
                json!({format!("{P}ssl-redirect"): "false"}),
            ),
            annotated("plain", "plain.com", json!({})),
            annotated(
                "forced",
                "forced.com",
                json!({format!("{P}force-ssl-redirect"): "true"}),
            ),
            annotated("bad", "bad.com", json!({format!("{P}force-ssl-redirect"): "yes"})),
        ],
        &["s1"],
    );
    let c = run(&s);
    assert!(redirects(&c, "secure.com"));
    assert!(redirects(&c, "a.wild.com"), "covered by a wildcard tls host");
    assert!(!redirects(&c, "optout.com"));
    assert!(!redirects(&c, "plain.com"), "no tls section");
    assert!(redirects(&c, "forced.com"));
    assert!(!redirects(&c, "bad.com"));
    assert!(
        c.diagnostics
            .iter()
            .any(|d| d.to_string().contains("force-ssl-redirect") && d.to_string().contains("\"yes\"")),
        "{:?}",
        c.diagnostics
    );
    assert_eq!(
        c.config.hsts().map(|h| h.to_string()),
        Some("max-age=31536000; includeSubDomains".to_string())
    );
}

#[test]
fn the_configmap_turns_redirects_and_hsts_off_or_changes_them() {
    let mut s = snapshot(
        vec![with_tls("secure", "secure.com", json!(["secure.com"]), json!({}))],
        &["s1"],
    );
    s.config_maps
        .push(config_map(json!({"ssl-redirect": "false", "hsts": "false"})));
    let c = compile(&s, &cm_options());
    assert!(!redirects(&c, "secure.com"));
    assert_eq!(c.config.hsts(), None);
    s.config_maps = vec![config_map(json!({
        "hsts-max-age": "600", "hsts-include-subdomains": "false", "hsts-preload": "true",
    }))];
    let c = compile(&s, &cm_options());
    assert!(redirects(&c, "secure.com"));
    assert_eq!(
        c.config.hsts().map(|h| h.to_string()),
        Some("max-age=600; preload".to_string())
    );
}

#[test]
fn use_proxy_protocol_comes_from_the_flag_under_the_configmap() {
    let mut s = snapshot(vec![], &[]);
    let mut options = cm_options();
    assert!(!compile(&s, &options).config.use_proxy_protocol());
    options.defaults.use_proxy_protocol = true;
    assert!(compile(&s, &options).config.use_proxy_protocol());
    s.config_maps.push(config_map(json!({"use-proxy-protocol": "false"})));
    assert!(!compile(&s, &options).config.use_proxy_protocol());
    options.defaults.use_proxy_protocol = false;
    s.config_maps = vec![config_map(json!({"use-proxy-protocol": "true"}))];
    assert!(compile(&s, &options).config.use_proxy_protocol());
    // The route cache carries it as a full compile does.
    let mut cache = RouteCache::new();
    assert!(cache.compile(&s, &options).0.use_proxy_protocol());
}

#[test]
fn backend_protocol_annotation() {
    use kingress_model::BackendProtocol;
    let s = snapshot(
        vec![
            annotated("g", "g.com", json!({format!("{P}backend-protocol"): "grpc"})),
            annotated("h", "h.com", json!({format!("{P}backend-protocol"): "HTTPS"})),
            annotated("f", "f.com", json!({format!("{P}backend-protocol"): "FCGI"})),
            annotated("d", "d.com", json!({})),
        ],
        &["s1"],
    );
    let c = run(&s);
    assert_eq!(policy_of(&c, "g.com").protocol, BackendProtocol::Grpc);
    assert_eq!(policy_of(&c, "h.com").protocol, BackendProtocol::Https);
    assert_eq!(policy_of(&c, "f.com").protocol, BackendProtocol::Http);
    assert_eq!(policy_of(&c, "d.com").protocol, BackendProtocol::Http);
    assert!(
        c.diagnostics.iter().any(|d| d.to_string().contains("FCGI")),
        "{:?}",
        c.diagnostics
    );
}

/// The endpoint cache after a sequence of changes equals a full compile of the objects
/// it ends with, at every step, and keeps the `Arc` of every backend it did not touch.
#[test]
fn incremental_endpoints_equal_a_full_compile() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    #[derive(Default)]
    struct World {
        services: BTreeMap<ObjectKey, Service>,
        slices: BTreeMap<ObjectKey, EndpointSlice>,
        cache: EndpointCache,
    }
    impl World {
        fn service(&mut self, name: &str, svc: Option<Service>) {
            let key = ObjectKey::new("default", name);
            self.cache.set_service(&key, svc.as_ref());
            match svc {
                Some(s) => self.services.insert(key, s),
                None => self.services.remove(&key),
            };
        }
        fn slice(&mut self, name: &str, slice: Option<EndpointSlice>) {
            let key = ObjectKey::new("default", name);
            self.cache.set_slice(&key, slice.as_ref());
            match slice {
                Some(s) => self.slices.insert(key, s),
                None => self.slices.remove(&key),
            };
        }
        /// Checks the cache against a full compile and returns its table.
        fn check(&mut self, step: &str) -> kingress_model::EndpointTable {
            let snapshot = Snapshot {
                services: self.services.values().cloned().collect(),
                endpoint_slices: self.slices.values().cloned().collect(),
                ..Default::default()
            };
            let (full, full_diags) = compile_endpoints(&snapshot);
            let table = self.cache.table().clone();
            assert_eq!(table, full, "{step}");
            assert_eq!(self.cache.diagnostics(), full_diags, "{step}");
            table
        }
    }
    // A UDP port too: whatever the table makes of it, both paths must agree.
    let http = |name: &str| {
        service(
            name,
            json!([{"name": "http", "port": 80}, {"name": "admin", "port": 9000},
                {"name": "dns", "port": 53, "protocol": "UDP"}]),
        )
    };
    let eps = |name: &str, svc: &str, ips: &[&str]| {
        let endpoints: Vec<Value> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
        let ports = json!([{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]);
        slice(name, svc, ports, json!(endpoints))
    };
    let addrs = |t: &kingress_model::EndpointTable, svc: &str, port: &str| -> Option<Vec<String>> {
        t.get(&BackendId::new("default", svc, port))
            .map(|s| s.addrs.iter().map(|a| a.to_string()).collect())
    };

    let mut w = World::default();
    w.service("a", Some(http("a")));
    w.service("b", Some(http("b")));
    w.slice("a-1", Some(eps("a-1", "a", &["10.0.0.1", "10.0.0.2"])));
    w.slice("a-2", Some(eps("a-2", "a", &["10.0.0.3"])));
    w.slice("b-1", Some(eps("b-1", "b", &["10.0.1.1"])));
    let t1 = w.check("initial");
    assert_eq!(
        addrs(&t1, "a", "80").unwrap(),
        ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
    );
    assert_eq!(
        addrs(&t1, "a", "9000"),
        Some(vec![]),
        "a port with no slice port is empty, not absent"
    );

    w.slice("a-1", Some(eps("a-1", "a", &["10.0.0.4"])));
    let t2 = w.check("a slice modified");
    assert_eq!(addrs(&t2, "a", "80").unwrap(), ["10.0.0.3:8080", "10.0.0.4:8080"]);
    let same = |x: &kingress_model::EndpointTable, y: &kingress_model::EndpointTable, svc: &str, port: &str| {
        let id = BackendId::new("default", svc, port);
        matches!((x.get(&id), y.get(&id)), (Some(p), Some(q)) if Arc::ptr_eq(p, q))
    };
    assert!(same(&t1, &t2, "b", "80"), "an untouched Service keeps its Arc");
    assert!(
        same(&t1, &t2, "a", "9000"),
        "an unchanged port of a touched Service too"
    );
    assert!(!same(&t1, &t2, "a", "80"));

    w.slice("a-2", Some(eps("a-2", "b", &["10.0.0.3"])));
    let t3 = w.check("a slice relabelled to another Service");
    assert_eq!(addrs(&t3, "a", "80").unwrap(), ["10.0.0.4:8080"]);
    assert_eq!(addrs(&t3, "b", "80").unwrap(), ["10.0.0.3:8080", "10.0.1.1:8080"]);

    w.slice("b-1", None);
    let t4 = w.check("a slice deleted");
    assert_eq!(addrs(&t4, "b", "80").unwrap(), ["10.0.0.3:8080"]);

    w.service("a", None);
    let t5 = w.check("a Service deleted, its slices stay");
    assert_eq!(addrs(&t5, "a", "80"), None);
    w.service("a", Some(service("a", json!([{"name": "http", "port": 8081}]))));
    let t6 = w.check("the Service is back on another port");
    assert_eq!(addrs(&t6, "a", "80"), None);
    assert_eq!(addrs(&t6, "a", "8081").unwrap(), ["10.0.0.4:8080"]);

    let bad = slice(
        "b-bad",
        "b",
        json!([{"name": "http", "port": 8080}]),
        json!([{"addresses": ["not-an-ip"]}]),
    );
    w.slice("b-bad", Some(bad));
    w.check("an invalid slice");
    assert_eq!(w.cache.diagnostics().len(), 1);
    w.slice("b-bad", None);
    w.check("the invalid slice deleted");
    assert!(w.cache.diagnostics().is_empty());

    w.slice("c-1", Some(eps("c-1", "c", &["10.0.2.1"])));
    assert_eq!(addrs(&w.check("a slice before its Service"), "c", "80"), None);
    w.service("c", Some(http("c")));
    assert_eq!(
        addrs(&w.check("the Service arrives"), "c", "80").unwrap(),
        ["10.0.2.1:8080"]
    );

    let mut external = http("b");
    if let Some(spec) = external.spec.as_mut() {
        spec.type_ = Some("ExternalName".into());
        spec.external_name = Some("example.com".into());
    }
    w.service("b", Some(external));
    assert_eq!(addrs(&w.check("b becomes ExternalName"), "b", "80"), None);
    let invalid = service("c", json!([{"name": "http", "port": 0}]));
    w.service("c", Some(invalid));
    assert_eq!(addrs(&w.check("c becomes invalid"), "c", "80"), None);
    w.slice("c-1", None);
    w.service("c", None);
    w.check("c gone");
}

/// Everything a routing table answers, in a fixed order, for comparing two tables.
#[allow(clippy::type_complexity)]
fn dump(
    c: &kingress_model::Config,
) -> (
    Option<String>,
    Vec<(
        String,
        Option<kingress_model::Route>,
        Vec<(String, kingress_model::PathType, kingress_model::Route)>,
    )>,
) {
    let servers = c
        .servers()
        .into_iter()
        .map(|(host, s)| {
            let mut paths: Vec<_> = s
                .paths
                .entries()
                .into_iter()
                .map(|(p, t, r)| (p.to_string(), t, (**r).clone()))
                .collect();
            paths.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
            (host, s.default_backend.as_ref().map(|r| (**r).clone()), paths)
        })
        .collect();
    (c.hsts().map(|h| h.to_string()), servers)
}

/// The route cache over a sequence of Ingress changes gives, at every step, the table
/// and the diagnostics (same order) of a full compile, while reusing the Ingresses whose
/// resourceVersion did not change.
#[test]
fn incremental_routes_equal_a_full_compile() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    let versioned = |name: &str, rv: u32, created: &str, spec: Value| {
        ingress_with(
            name,
            json!({"resourceVersion": rv.to_string(), "creationTimestamp": created}),
            spec,
        )
    };
    let rules = |host: &str, paths: Vec<Value>| json!({"ingressClassName": "kingress", "rules": [{"host": host, "http": {"paths": paths}}]});
    let mut ingresses: BTreeMap<&str, Ingress> = BTreeMap::new();
    ingresses.insert(
        "old",
        versioned(
            "old",
            1,
            "2024-01-01T00:00:00Z",
            rules("shop.com", vec![path("/", "Prefix", "a"), path("/cart", "Exact", "a")]),
        ),
    );
    ingresses.insert(
        "new",
        versioned(
            "new",
            2,
            "2025-01-01T00:00:00Z",
            rules("shop.com", vec![path("/", "Prefix", "b"), path("/api", "Prefix", "b")]),
        ),
    );
    ingresses.insert(
        "other",
        versioned(
            "other",
            3,
            "2025-02-01T00:00:00Z",
            rules("other.com", vec![path("/", "Prefix", "missing")]),
        ),
    );
    let options = CompileOptions::default();
    let mut cache = RouteCache::new();
    let mut services = vec!["a", "b"];
    let check = |cache: &mut RouteCache, ingresses: &BTreeMap<&str, Ingress>, services: &[&str], step: &str| {
        let s = snapshot(ingresses.values().cloned().collect(), services);
        let (full, full_diags) = compile_routes(&s, &options);
        let (incremental, diags) = cache.compile(&s, &options);
        assert_eq!(dump(&incremental), dump(&full), "{step}");
        assert_eq!(diags, full_diags, "{step}");
        incremental
    };
    let first = check(&mut cache, &ingresses, &services, "initial");
    assert_eq!(
        first.lookup(Some("shop.com"), "/").map(|r| r.backend.to_string()),
        Some("default/a:80".to_string())
    );

    // Only "new" changes: "other"'s routes are the same Arcs.
    ingresses.insert(
        "new",
        versioned(
            "new",
            4,
            "2025-01-01T00:00:00Z",
            rules("shop.com", vec![path("/", "Prefix", "b"), path("/v2", "Prefix", "b")]),
        ),
    );
    let second = check(&mut cache, &ingresses, &services, "a younger Ingress changed");
    let other = |c: &kingress_model::Config| c.lookup(Some("other.com"), "/").cloned();
    assert!(matches!((other(&first), other(&second)), (Some(x), Some(y)) if Arc::ptr_eq(&x, &y)));
    let api = second.lookup(Some("shop.com"), "/api").map(|r| r.source.path.clone());
    assert_eq!(
        api.as_deref(),
        Some("/"),
        "the removed /api path falls back to the older /"
    );

    ingresses.remove("old");
    let third = check(&mut cache, &ingresses, &services, "the older owner deleted");
    assert_eq!(
        third.lookup(Some("shop.com"), "/").map(|r| r.backend.to_string()),
        Some("default/b:80".to_string()),
        "the younger Ingress gets the path"
    );

    // TLS on one Ingress changes the redirects of another's routes on that host.
    let mut tls = rules("shop.com", vec![path("/tls", "Prefix", "a")]);
    tls["tls"] = json!([{"hosts": ["shop.com"], "secretName": "cert"}]);
    ingresses.insert("secure", versioned("secure", 5, "2025-03-01T00:00:00Z", tls));
    let fourth = check(&mut cache, &ingresses, &services, "a TLS host added");
    assert!(fourth.lookup(Some("shop.com"), "/").is_some_and(|r| r.https_redirect));

    ingresses.insert(
        "new",
        versioned(
            "new",
            6,
            "2025-01-01T00:00:00Z",
            rules("shop.com", vec![path("no-slash", "Prefix", "b")]),
        ),
    );
    check(&mut cache, &ingresses, &services, "an Ingress made invalid");

    // Services: announced with invalidate().
    services.push("missing");
    cache.invalidate();
    check(&mut cache, &ingresses, &services, "a Service added");

    // Without a resourceVersion an Ingress is compiled every time.
    let mut plain = ingress("plain", rules("plain.com", vec![path("/", "Prefix", "a")]));
    ingresses.insert("plain", plain.clone());
    check(&mut cache, &ingresses, &services, "an Ingress without resourceVersion");
    if let Some(spec) = plain.spec.as_mut() {
        spec.ingress_class_name = Some("someone-else".into());
    }
    ingresses.insert("plain", plain);
    let last = check(
        &mut cache,
        &ingresses,
        &services,
        "no longer ours, without resourceVersion",
    );
    assert!(last.lookup(Some("plain.com"), "/").is_none());
}
