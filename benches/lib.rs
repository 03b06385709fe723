//! Inputs for the kingress benches: a deterministic, cluster-shaped snapshot of `n`
//! Ingresses (with the Services and EndpointSlices they name) and a matching mix of
//! requests.
//!
//! The shape (for `n` = 10,000):
//! - 85% of the Ingresses name one of 2,000 exact hosts (`app<h>.team<t>.example.com`,
//!   one in ten `app<h>.zone<z>.example.com`), so several Ingresses merge on a host;
//!   the first Ingress of every fourth host also claims `/` (Prefix);
//! - 10% name one of 100 wildcard hosts (`*.zone<z>.example.com`); the first Ingress of
//!   every second zone claims `/`;
//! - 5% have rules without a host (the default server), never `/`, so unknown hosts miss;
//! - every Ingress has 1 to 4 paths of depth 1 to 4, Exact, Prefix and
//!   ImplementationSpecific mixed, to its own Service (two ports, named and numbered
//!   port references mixed) in one of 16 namespaces, with an EndpointSlice of 1 to 3
//!   ready endpoints and the odd not-ready or terminating one;
//! - creation timestamps are set, so compile sorts them as it would in a cluster.
//!
//! Nothing is random at run time: the same `n` always gives the same objects and requests.

pub mod procs;

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kingress_compile::Snapshot;
use serde_json::{Value, json};

/// Distinct exact hosts (when there are enough Ingresses to name them all).
pub const EXACT_HOSTS: usize = 2_000;
/// Distinct wildcard hosts `*.zone<z>.example.com`.
pub const WILDCARD_ZONES: usize = 100;
/// Namespaces the objects spread over.
pub const NAMESPACES: usize = 16;

/// A small deterministic generator (SplitMix64); enough to spread choices evenly.
#[derive(Clone, Debug)]
pub struct Mix(u64);

impl Mix {
    pub fn new(seed: u64) -> Self {
        Mix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        // The modulo bias is irrelevant for a benchmark's spread.
        (self.next_u64() % n as u64) as usize
    }
}

/// Where an Ingress's rule points.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostKind {
    Exact(String),
    /// The suffix after `*.`.
    Wildcard(String),
    None,
}

#[derive(Clone, Debug)]
struct PathPlan {
    path: String,
    path_type: &'static str,
}

/// One generated Ingress, before it becomes JSON.
#[derive(Clone, Debug)]
struct IngressPlan {
    index: usize,
    namespace: String,
    host: HostKind,
    /// Whether this Ingress also claims `/` (Prefix) on its host.
    root: bool,
    paths: Vec<PathPlan>,
}

impl IngressPlan {
    fn service(&self) -> String {
        format!("svc-{}", self.index)
    }

    /// The backend id every path of this Ingress resolves to.
    fn backend(&self) -> String {
        format!("{}/{}:80", self.namespace, self.service())
    }
}

const WORDS: [&str; 12] = [
    "api", "v1", "v2", "users", "orders", "static", "assets", "admin", "health", "items", "search", "cart",
];

fn plan(n: usize) -> Vec<IngressPlan> {
    let mut first_on_exact: HashSet<String> = HashSet::new();
    let mut first_on_zone: HashSet<String> = HashSet::new();
    (0..n)
        .map(|i| {
            let mut mix = Mix::new(0x6B69_6E67_7265_7373 ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            let namespace = format!("team-{:02}", i % NAMESPACES);
            let kind = mix.below(100);
            let (host, root) = if kind < 85 {
                let h = i % EXACT_HOSTS;
                let name = if h.is_multiple_of(10) {
                    format!("app{h}.zone{}.example.com", h % WILDCARD_ZONES)
                } else {
                    format!("app{h}.team{}.example.com", h % 40)
                };
                let root = h.is_multiple_of(4) && first_on_exact.insert(name.clone());
                (HostKind::Exact(name), root)
            } else if kind < 95 {
                let z = mix.below(WILDCARD_ZONES);
                let suffix = format!("zone{z}.example.com");
                let root = z.is_multiple_of(2) && first_on_zone.insert(suffix.clone());
                (HostKind::Wildcard(suffix), root)
            } else {
                (HostKind::None, false)
            };
            let count = 1 + mix.below(4);
            let paths = (0..count)
                .map(|j| {
                    // `/s<i>-<j>` keeps every (host, path) unique, so the snapshot has no
                    // conflicts; more segments give the prefix table several lengths.
                    let mut path = format!("/s{i}-{j}");
                    for _ in 0..mix.below(4) {
                        path.push('/');
                        path.push_str(WORDS.get(mix.below(WORDS.len())).copied().unwrap_or("x"));
                    }
                    let path_type = match mix.below(10) {
                        0..=2 => "Exact",
                        3..=7 => "Prefix",
                        _ => "ImplementationSpecific",
                    };
                    PathPlan { path, path_type }
                })
                .collect();
            IngressPlan {
                index: i,
                namespace,
                host,
                root,
                paths,
            }
        })
        .collect()
}

/// `2025-01-01T00:00:00Z` plus `seconds` (under 28 days).
fn timestamp(seconds: usize) -> String {
    let day = seconds / 86_400 % 28;
    let rest = seconds % 86_400;
    format!(
        "2025-01-{:02}T{:02}:{:02}:{:02}Z",
        day + 1,
        rest / 3_600,
        rest / 60 % 60,
        rest % 60
    )
}

fn ingress_json(p: &IngressPlan) -> Value {
    let backend = |named: bool| {
        if named {
            json!({"service": {"name": p.service(), "port": {"name": "http"}}})
        } else {
            json!({"service": {"name": p.service(), "port": {"number": 80}}})
        }
    };
    let mut paths: Vec<Value> = Vec::new();
    if p.root {
        paths.push(json!({"path": "/", "pathType": "Prefix", "backend": backend(false)}));
    }
    for (j, path) in p.paths.iter().enumerate() {
        paths.push(json!({"path": path.path, "pathType": path.path_type, "backend": backend(j % 2 == 1)}));
    }
    let rule = match &p.host {
        HostKind::Exact(h) => json!({"host": h, "http": {"paths": paths}}),
        HostKind::Wildcard(s) => json!({"host": format!("*.{s}"), "http": {"paths": paths}}),
        HostKind::None => json!({"http": {"paths": paths}}),
    };
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": format!("ing-{}", p.index),
            "namespace": p.namespace,
            "creationTimestamp": timestamp(p.index * 7),
            "labels": {"app": p.service(), "bench": "kingress"},
        },
        "spec": {"ingressClassName": "kingress", "rules": [rule]},
    })
}

fn service_json(p: &IngressPlan) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": p.service(), "namespace": p.namespace},
        "spec": {
            "selector": {"app": p.service()},
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"},
            ],
        },
    })
}

fn slice_json(p: &IngressPlan) -> Value {
    let mut mix = Mix::new(p.index as u64);
    let i = p.index;
    let endpoints: Vec<Value> = (0..1 + mix.below(3))
        .map(|k| {
            let ip = format!("10.{}.{}.{}", (i >> 8) & 0xff, i & 0xff, k + 1);
            let conditions = match mix.below(20) {
                0 => json!({"ready": false}),
                1 => json!({"ready": true, "terminating": true}),
                _ => json!({"ready": true}),
            };
            json!({"addresses": [ip], "conditions": conditions})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{}-{:05x}", p.service(), i * 2_654_435_761 % 0xfffff),
            "namespace": p.namespace,
            "labels": {"kubernetes.io/service-name": p.service()},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "metrics", "port": 9090, "protocol": "TCP"},
        ],
        "endpoints": endpoints,
    })
}

fn decode<T: k8s_openapi::serde::de::DeserializeOwned>(v: Value) -> T {
    match serde_json::from_value(v) {
        Ok(t) => t,
        Err(e) => panic!("generated object does not decode: {e}"),
    }
}

/// `n` Ingresses of class `kingress`, one Service and one EndpointSlice each (the name
/// says 10k because that is the size the benches use; any `n` works).
pub fn snapshot_10k(n: usize) -> Snapshot {
    let plans = plan(n);
    Snapshot {
        ingress_classes: Vec::new(),
        ingresses: plans.iter().map(|p| decode::<Ingress>(ingress_json(p))).collect(),
        services: plans.iter().map(|p| decode::<Service>(service_json(p))).collect(),
        endpoint_slices: plans.iter().map(|p| decode::<EndpointSlice>(slice_json(p))).collect(),
        secrets: Vec::new(),
        config_maps: Vec::new(),
    }
}

/// What kind of request a [`Request`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// A path of an Ingress on an exact host (host sometimes upper-cased, with a port).
    ExactHost,
    /// A path of an Ingress on a wildcard host, through a random first label.
    Wildcard,
    /// A path of a host-less Ingress, with no Host or an unknown one.
    DefaultServer,
    /// An unknown host, a known host with an unlisted path, or two labels under a
    /// wildcard: the controller's 404 unless the host has a `/` route.
    Miss,
}

/// One request of the mix and where it must go.
#[derive(Clone, Debug)]
pub struct Request {
    /// Empty for "no Host header".
    pub host: String,
    pub path: String,
    pub kind: RequestKind,
    /// The backend id (`namespace/service:port`) it routes to, `None` for a 404.
    pub expect: Option<String>,
}

/// `count` requests against [`snapshot_10k`]`(n)`, with their expected backends:
/// about 45% exact hosts, 20% wildcard hosts, 10% the default server, 25% misses.
pub fn request_mix_expected(n: usize, count: usize) -> Vec<Request> {
    let plans = plan(n);
    let pick = |kind: fn(&HostKind) -> bool| -> Vec<&IngressPlan> { plans.iter().filter(|p| kind(&p.host)).collect() };
    let exact = pick(|h| matches!(h, HostKind::Exact(_)));
    let wildcard = pick(|h| matches!(h, HostKind::Wildcard(_)));
    let no_host = pick(|h| matches!(h, HostKind::None));
    let mut root_of: HashMap<String, String> = HashMap::new();
    for p in &plans {
        if p.root {
            let key = match &p.host {
                HostKind::Exact(h) => h.clone(),
                HostKind::Wildcard(s) => format!("*.{s}"),
                HostKind::None => String::new(),
            };
            root_of.insert(key, p.backend());
        }
    }

    let mut mix = Mix::new(0x0072_6571_7565_7374);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let roll = mix.below(100);
        let (group, kind) = if roll < 45 {
            (&exact, RequestKind::ExactHost)
        } else if roll < 65 {
            (&wildcard, RequestKind::Wildcard)
        } else if roll < 75 {
            (&no_host, RequestKind::DefaultServer)
        } else {
            (&exact, RequestKind::Miss)
        };
        let Some(p) = group.get(mix.below(group.len().max(1))) else {
            continue; // too few Ingresses for this kind
        };
        if kind == RequestKind::Miss {
            let r = mix.below(1_000_000);
            let (host, root_key) = match mix.below(3) {
                0 => (format!("unknown{r}.example.org"), None),
                1 => match &p.host {
                    HostKind::Exact(h) => (h.clone(), Some(h.clone())),
                    _ => continue,
                },
                _ => (format!("a{r}.b.zone{}.example.com", r % WILDCARD_ZONES), None),
            };
            let expect = root_key.and_then(|k| root_of.get(&k).cloned());
            out.push(Request {
                host,
                path: format!("/missing/{r}"),
                kind,
                expect,
            });
            continue;
        }
        let Some(path) = p.paths.get(mix.below(p.paths.len())) else {
            continue;
        };
        let request_path = match path.path_type {
            "Exact" => path.path.clone(),
            "Prefix" => match mix.below(3) {
                0 => path.path.clone(),
                1 => format!("{}/", path.path),
                _ => format!("{}/item/{}", path.path, mix.below(10_000)),
            },
            _ => format!(
                "{}{}",
                path.path,
                ["", "-x", "/y/z"].get(mix.below(3)).copied().unwrap_or("")
            ),
        };
        let host = match &p.host {
            HostKind::Exact(h) => match mix.below(4) {
                0 => h.to_ascii_uppercase(),
                1 => format!("{h}:8080"),
                _ => h.clone(),
            },
            HostKind::Wildcard(s) => format!("w{}.{s}", mix.below(100_000)),
            HostKind::None => {
                if mix.below(2) == 0 {
                    String::new()
                } else {
                    format!("nobody{}.example.net", mix.below(100_000))
                }
            }
        };
        out.push(Request {
            host,
            path: request_path,
            kind,
            expect: Some(p.backend()),
        });
    }
    out
}

/// `count` (host, path) pairs against [`snapshot_10k`]`(n)`: exact hosts, wildcard hosts,
/// the default server and misses (see [`request_mix_expected`]). An empty host means the
/// request has no Host header.
pub fn request_mix(n: usize, count: usize) -> Vec<(String, String)> {
    request_mix_expected(n, count)
        .into_iter()
        .map(|r| (r.host, r.path))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kingress_compile::{CompileOptions, compile};
    use kingress_model::BackendId;

    #[test]
    fn snapshot_compiles_cleanly_and_every_request_routes_as_expected() {
        let n = 10_000;
        let snapshot = snapshot_10k(n);
        assert_eq!(snapshot.ingresses.len(), n);
        assert_eq!(snapshot.services.len(), n);
        assert_eq!(snapshot.endpoint_slices.len(), n);
        let compiled = compile(&snapshot, &CompileOptions::default());
        let texts: Vec<String> = compiled.diagnostics.iter().take(5).map(|d| d.to_string()).collect();
        assert!(
            compiled.diagnostics.is_empty(),
            "{} diagnostics: {texts:?}",
            compiled.diagnostics.len()
        );

        // Shape: ~2,000 exact hosts + ~100 wildcards + the default server; 1-4 paths each.
        let servers = compiled.config.servers();
        assert!(
            servers.len() > EXACT_HOSTS && servers.len() <= EXACT_HOSTS + WILDCARD_ZONES + 1,
            "{}",
            servers.len()
        );
        assert!(servers.iter().filter(|(h, _)| h.starts_with("*.")).count() > 90);
        let routes = compiled.config.route_count();
        assert!(routes > 2 * n && routes < 3 * n, "{routes}");
        // Two ports per Service, every one in the endpoint table.
        assert_eq!(compiled.endpoints.len(), 2 * n);
        let some = compiled
            .endpoints
            .get(&BackendId::new("team-01", "svc-1", "80"))
            .unwrap();
        assert!(!some.is_empty());

        let requests = request_mix_expected(n, 20_000);
        for kind in [
            RequestKind::ExactHost,
            RequestKind::Wildcard,
            RequestKind::DefaultServer,
            RequestKind::Miss,
        ] {
            let count = requests.iter().filter(|r| r.kind == kind).count();
            assert!(count > 1_000, "{kind:?}: {count}");
        }
        assert!(
            requests
                .iter()
                .any(|r| r.kind == RequestKind::Miss && r.expect.is_none())
        );
        assert!(
            requests
                .iter()
                .any(|r| r.kind == RequestKind::Miss && r.expect.is_some())
        );
        assert!(requests.iter().any(|r| r.host.is_empty()));
        for r in &requests {
            let host = (!r.host.is_empty()).then_some(r.host.as_str());
            let got = compiled
                .config
                .lookup(host, &r.path)
                .map(|route| route.backend.to_string());
            assert_eq!(got, r.expect, "{r:?}");
        }
        let pairs = request_mix(n, 100);
        assert_eq!(pairs.len(), 100);
        assert_eq!(pairs.first().map(|p| &p.0), requests.first().map(|r| &r.host));
    }

    #[test]
    fn generation_is_deterministic() {
        let a = snapshot_10k(300);
        let b = snapshot_10k(300);
        assert_eq!(a.ingresses, b.ingresses);
        assert_eq!(a.endpoint_slices, b.endpoint_slices);
        assert_eq!(request_mix(300, 50), request_mix(300, 50));
        assert!(compile(&a, &CompileOptions::default()).diagnostics.is_empty());
    }
}
