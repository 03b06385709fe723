//! L4 compile: ServiceLB claims, the conflict rule, tcp/udp-services, passthrough.

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use serde_json::{Value, json};

use super::*;
use crate::compile_endpoints;

fn lb_service(name: &str, created: &str, extra_spec: Value, ports: Value) -> Service {
    let mut spec = json!({"type": "LoadBalancer", "ports": ports});
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
        "spec": spec,
    }))
    .unwrap()
}

fn annotated(mut svc: Service, key: &str, value: &str) -> Service {
    svc.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.to_string(), value.to_string());
    svc
}

fn config_map(name: &str, data: Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "ingress"},
        "data": data,
    }))
    .unwrap()
}

fn options(service_lb: bool) -> CompileOptions {
    CompileOptions {
        l4: L4Options {
            service_lb,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn ports(t: &L4Table) -> Vec<(String, String)> {
    t.ports().map(|(p, r)| (p.to_string(), r.backend.to_string())).collect()
}

fn reasons(d: &[Diagnostic]) -> Vec<String> {
    d.iter().map(|d| format!("{}: {}", d.subject, d.reason)).collect()
}

#[test]
fn service_lb_claims_every_tcp_and_udp_port_of_load_balancer_services() {
    let snapshot = Snapshot {
        services: vec![
            lb_service(
                "dns",
                "2026-01-01T00:00:00Z",
                json!({}),
                json!([{"name": "dns-tcp", "port": 53, "targetPort": 5353}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
            ),
            // ClusterIP: not ours.
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "internal", "namespace": "default"},
                "spec": {"ports": [{"port": 9000}]}}))
            .unwrap(),
            // Another load balancer implementation's class.
            lb_service(
                "metallb",
                "2026-01-01T00:00:00Z",
                json!({"loadBalancerClass": "metallb.io/x"}),
                json!([{"port": 7000}]),
            ),
            lb_service(
                "mine",
                "2026-01-01T00:00:00Z",
                json!({"loadBalancerClass": "kingress.dev/l4"}),
                json!([{"port": 7001}]),
            ),
        ],
        ..Default::default()
    };
    let (t, d) = compile_l4(&snapshot, &options(true));
    assert_eq!(
        ports(&t),
        vec![
            ("53/TCP".to_string(), "default/dns:53".to_string()),
            ("53/UDP".to_string(), "default/dns:udp:53".to_string()),
        ]
    );
    assert!(d.is_empty(), "{:?}", reasons(&d));

    let mut with_class = options(true);
    with_class.l4.class = Some("kingress.dev/l4".into());
    let (t, _) = compile_l4(&snapshot, &with_class);
    assert!(t.port(&L4Port::tcp(7001)).is_some());
    assert!(t.port(&L4Port::tcp(7000)).is_none());

    // Off by default.
    let (t, _) = compile_l4(&snapshot, &options(false));
    assert!(t.is_empty());
}

#[test]
fn the_older_service_keeps_a_contested_port_and_the_other_is_told() {
    let newer = lb_service("newer", "2026-03-01T00:00:00Z", json!({}), json!([{"port": 5432}]));
    let older = lb_service("older", "2026-02-01T00:00:00Z", json!({}), json!([{"port": 5432}]));
    // Listed newer first: the order of the list must not matter.
    let snapshot = Snapshot {
        services: vec![newer, older],
        ..Default::default()
    };
    let (t, d) = compile_l4(&snapshot, &options(true));
    assert_eq!(
        ports(&t),
        vec![("5432/TCP".to_string(), "default/older:5432".to_string())]
    );
    let r = reasons(&d);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].starts_with("Service default/newer:"), "{r:?}");
    assert!(r[0].contains("already claimed by Service default/older"), "{r:?}");
}

#[test]
fn own_listeners_and_own_service_are_not_claimed() {
    let snapshot = Snapshot {
        services: vec![
            lb_service(
                "kingress",
                "2026-01-01T00:00:00Z",
                json!({}),
                json!([{"name": "http", "port": 80}, {"name": "https", "port": 443}]),
            ),
            lb_service(
                "web",
                "2026-01-02T00:00:00Z",
                json!({}),
                json!([{"name": "http", "port": 80}, {"name": "alt", "port": 8080}]),
            ),
        ],
        ..Default::default()
    };
    let mut o = options(true);
    o.l4.own_service = Some(("default".into(), "kingress".into()));
    o.l4.reserved = vec![
        (L4Port::tcp(80), "HTTP listener".into()),
        (L4Port::tcp(443), "HTTPS listener".into()),
    ];
    let (t, d) = compile_l4(&snapshot, &o);
    assert_eq!(
        ports(&t),
        vec![("8080/TCP".to_string(), "default/web:8080".to_string())]
    );
    let r = reasons(&d);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(
        r[0].contains("Service default/web") && r[0].contains("kingress's own HTTP listener"),
        "{r:?}"
    );
}

#[test]
fn proxy_annotations_and_sctp() {
    let svc = lb_service(
        "db",
        "2026-01-01T00:00:00Z",
        json!({}),
        json!([{"name": "pg", "port": 5432}, {"name": "s", "port": 9, "protocol": "SCTP"}]),
    );
    let svc = annotated(
        annotated(svc, PROXY_PROTOCOL_ANNOTATION, "v2"),
        ACCEPT_PROXY_PROTOCOL_ANNOTATION,
        "true",
    );
    let bad = annotated(
        lb_service("bad", "2026-01-01T00:00:00Z", json!({}), json!([{"port": 6000}])),
        PROXY_PROTOCOL_ANNOTATION,
        "v3",
    );
    let snapshot = Snapshot {
        services: vec![svc, bad],
        ..Default::default()
    };
    let (t, d) = compile_l4(&snapshot, &options(true));
    let pg = t.port(&L4Port::tcp(5432)).cloned();
    assert_eq!(
        pg.as_ref().map(|r| (r.send_proxy, r.accept_proxy)),
        Some((Some(ProxyVersion::V2), true))
    );
    assert_eq!(t.port(&L4Port::tcp(6000)).map(|r| r.send_proxy), Some(None));
    let r = reasons(&d);
    assert!(r.iter().any(|r| r.contains("SCTP is not supported")), "{r:?}");
    assert!(
        r.iter()
            .any(|r| r.contains("Service default/bad") && r.contains("\"v3\" is not v1 or v2")),
        "{r:?}"
    );
}

#[test]
fn tcp_and_udp_services_config_maps() {
    let db = serde_json::from_value::<Service>(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": "apps"},
        "spec": {"ports": [{"name": "pg", "port": 5432, "targetPort": 15432}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}))
    .unwrap();
    let tcp = config_map(
        "tcp-services",
        json!({
            "9000": "apps/db:5432",
            "9001": "apps/db:pg:PROXY",
            "9002": "apps/db:5432::PROXY",
            "9003": "apps/missing:80",
            "9004": "apps/db:53",
            "notaport": "apps/db:5432",
            "9005": "apps/db",
        }),
    );
    let udp = config_map(
        "udp-services",
        json!({"5353": "apps/db:53", "5354": "apps/db:dns:PROXY"}),
    );
    let snapshot = Snapshot {
        services: vec![db],
        config_maps: vec![tcp, udp],
        ..Default::default()
    };
    let mut o = options(false);
    o.l4.tcp_services = Some(("ingress".into(), "tcp-services".into()));
    o.l4.udp_services = Some(("ingress".into(), "udp-services".into()));
    let (t, d) = compile_l4(&snapshot, &o);
    let get = |p: L4Port| {
        t.port(&p)
            .map(|r| (r.backend.to_string(), r.accept_proxy, r.send_proxy))
    };
    assert_eq!(get(L4Port::tcp(9000)), Some(("apps/db:5432".into(), false, None)));
    assert_eq!(get(L4Port::tcp(9001)), Some(("apps/db:5432".into(), true, None)));
    assert_eq!(
        get(L4Port::tcp(9002)),
        Some(("apps/db:5432".into(), false, Some(ProxyVersion::V1)))
    );
    // Unresolved: the port is still claimed (it opens and refuses until the Service exists).
    assert!(get(L4Port::tcp(9003)).is_some());
    // Port 53 of db is UDP: no TCP port 53.
    assert!(get(L4Port::tcp(9004)).is_some());
    assert_eq!(get(L4Port::udp(5353)), Some(("apps/db:udp:53".into(), false, None)));
    assert!(get(L4Port::udp(5354)).is_none());
    assert!(get(L4Port::tcp(9005)).is_none());
    let r = reasons(&d);
    for needle in [
        "\"9003\": service \"apps/missing\" not found",
        "\"9004\": service \"apps/db\" has no TCP port 53",
        "\"notaport\": the key is not a port number",
        "\"9005\": \"apps/db\" is not NAMESPACE/SERVICE:PORT",
        "\"5354\": PROXY protocol applies to TCP only",
    ] {
        assert!(r.iter().any(|r| r.contains(needle)), "{needle} not in {r:?}");
    }

    // A config map named but absent is reported.
    let (_, d) = compile_l4(&Snapshot::default(), &o);
    assert_eq!(d.len(), 2, "{:?}", reasons(&d));
}

#[test]
fn config_map_entries_claim_before_service_lb() {
    let svc = lb_service("web", "2026-01-01T00:00:00Z", json!({}), json!([{"port": 9000}]));
    let tcp = config_map("tcp-services", json!({"9000": "default/web:9000"}));
    let snapshot = Snapshot {
        services: vec![svc],
        config_maps: vec![tcp],
        ..Default::default()
    };
    let mut o = options(true);
    o.l4.tcp_services = Some(("ingress".into(), "tcp-services".into()));
    let (t, d) = compile_l4(&snapshot, &o);
    assert_eq!(
        t.port(&L4Port::tcp(9000)).map(|r| r.source.object.kind.clone()),
        Some("ConfigMap".to_string())
    );
    assert!(
        reasons(&d)
            .iter()
            .any(|r| r.contains("Service default/web")
                && r.contains("already claimed by ConfigMap ingress/tcp-services"))
    );
}

fn passthrough_ingress(name: &str, created: &str, host: &str, enabled: bool) -> Ingress {
    let mut annotations = serde_json::Map::new();
    if enabled {
        annotations.insert("nginx.ingress.kubernetes.io/ssl-passthrough".into(), json!("true"));
    }
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created, "annotations": annotations},
        "spec": {"ingressClassName": "kingress", "rules": [{"host": host, "http": {"paths": [
            {"path": "/api", "pathType": "Prefix", "backend": {"service": {"name": "other", "port": {"number": 80}}}},
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "tls-app", "port": {"name": "https"}}}}
        ]}}]},
    }))
    .unwrap()
}

#[test]
fn ssl_passthrough_hosts_by_sni() {
    let svc: Service = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "tls-app", "namespace": "default"},
        "spec": {"ports": [{"name": "https", "port": 443, "targetPort": 8443}]}}))
    .unwrap();
    let snapshot = Snapshot {
        services: vec![svc],
        ingresses: vec![
            passthrough_ingress("second", "2026-02-01T00:00:00Z", "Secure.Example.com", true),
            passthrough_ingress("first", "2026-01-01T00:00:00Z", "secure.example.com", true),
            passthrough_ingress("plain", "2026-01-01T00:00:00Z", "plain.example.com", false),
        ],
        ..Default::default()
    };
    let mut o = options(false);
    o.l4.ssl_passthrough = true;
    let (t, d) = compile_l4(&snapshot, &o);
    let hosts: Vec<(String, String, String)> = t
        .passthrough_hosts()
        .into_iter()
        .map(|(h, r)| (h.to_string(), r.backend.to_string(), r.source.object.name.clone()))
        .collect();
    assert_eq!(
        hosts,
        vec![(
            "secure.example.com".into(),
            "default/tls-app:443".into(),
            "first".into()
        )]
    );
    let r = reasons(&d);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(
        r[0].contains("Ingress default/second") && r[0].contains("already passed through by Ingress default/first")
    );

    // Without --enable-ssl-passthrough: nothing passes through, each annotated Ingress is told.
    let (t, d) = compile_l4(&snapshot, &options(false));
    assert!(!t.has_passthrough());
    assert_eq!(d.len(), 2, "{:?}", reasons(&d));
}

#[test]
fn udp_ports_get_endpoints_of_their_own() {
    let svc = lb_service(
        "dns",
        "2026-01-01T00:00:00Z",
        json!({}),
        json!([{"name": "tcp", "port": 53}, {"name": "udp", "port": 53, "protocol": "UDP"}]),
    );
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "dns-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "dns"}},
        "addressType": "IPv4",
        "ports": [{"name": "tcp", "port": 5353, "protocol": "TCP"}, {"name": "udp", "port": 5300, "protocol": "UDP"}],
        "endpoints": [{"addresses": ["10.0.0.1"]}],
    }))
    .unwrap();
    let snapshot = Snapshot {
        services: vec![svc],
        endpoint_slices: vec![slice],
        ..Default::default()
    };
    let (table, _) = compile_endpoints(&snapshot);
    let addrs = |id: &BackendId| {
        table
            .get(id)
            .map(|s| s.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    };
    assert_eq!(
        addrs(&BackendId::new("default", "dns", "53")),
        Some(vec!["10.0.0.1:5353".to_string()])
    );
    assert_eq!(
        addrs(&udp_backend("default", "dns", 53)),
        Some(vec!["10.0.0.1:5300".to_string()])
    );
}
