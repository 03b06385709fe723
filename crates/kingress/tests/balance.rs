//! Balancing end to end: algorithms chosen by annotation, affinity cookies, retries
//! and ejection, through the real proxy over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use kingress_proxy::{HealthPolicy, ProxySettings};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const P: &str = "nginx.ingress.kubernetes.io/";

/// An Ingress routing `host` `/` to Service `svc`, with annotations.
fn ingress(name: &str, host: &str, svc: &str, annotations: &[(&str, &str)]) -> String {
    let plain = ingress_yaml(name, host, &[("/", "Prefix", svc)]);
    let notes: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("\"{P}{k}\": \"{v}\""))
        .collect();
    plain.replacen(
        "namespace: default}",
        &format!("namespace: default, annotations: {{{}}}}}", notes.join(", ")),
        1,
    )
}

async fn echo_slow(name: &str, delay: Duration) -> EchoHandle {
    kingress_echo::spawn(EchoOptions {
        name: name.to_string(),
        delay,
    })
    .await
    .unwrap()
}

fn name_of(v: &serde_json::Value) -> String {
    v["name"].as_str().unwrap_or_default().to_string()
}

/// Echo backends "a", "b" and "c", and their ports.
async fn three_echoes() -> (Vec<EchoHandle>, Vec<u16>) {
    let backends = vec![echo("a").await, echo("b").await, echo("c").await];
    let ports = backends.iter().map(|b| b.addr().port()).collect();
    (backends, ports)
}

/// What the tests look at in an answer.
struct Reply {
    status: u16,
    /// The echo's name ("" when the answer is not the echo's).
    to: String,
    set_cookie: Option<String>,
}

async fn send(env: &Env, method: reqwest::Method, host: &str, headers: &[(&str, String)]) -> Reply {
    let mut req = env
        .client
        .request(method, env.url("/"))
        .header("host", host)
        .body("payload");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let set_cookie = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    Reply {
        status,
        to: name_of(&body),
        set_cookie,
    }
}

/// GET through the gateway, expecting 200.
async fn get_ok(env: &Env, host: &str, headers: &[(&str, String)]) -> Reply {
    let r = send(env, reqwest::Method::GET, host, headers).await;
    assert_eq!(r.status, 200, "{host}");
    r
}

/// A backend that accepts, reads the request head and then closes without answering
/// (or, silent, keeps the connection open and never answers); counts the connections
/// it got.
struct Hangup {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Hangup {
    async fn start() -> Self {
        Self::start_with(false).await
    }

    async fn silent() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(silent: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    if silent {
                        // Hold the connection open until the client gives up.
                        while !matches!(s.read(&mut buf).await, Ok(0) | Err(_)) {}
                    }
                    drop(s);
                });
            }
        });
        Self { addr, accepted, task }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops accepting and frees the port.
    async fn stop(self) -> SocketAddr {
        self.task.abort();
        let _ = self.task.await;
        self.addr
    }
}

fn no_ejection() -> ProxySettings {
    ProxySettings {
        health: HealthPolicy {
            max_fails: 0,
            ..HealthPolicy::default()
        },
        ..ProxySettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_even_and_the_default() {
    let (_backends, ports) = three_echoes().await;
    let files = vec![
        ("svc.yaml", service_yaml("s", &ports)),
        ("ing.yaml", ingress("i", "rr.test", "s", &[])),
    ];
    let env = start(&files, ProxySettings::default()).await;
    let mut counts = HashMap::<String, usize>::new();
    for _ in 0..30 {
        *counts.entry(name_of(&env.echo_json("rr.test", "/").await)).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|n| *n == 10), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ewma_sends_little_to_a_slow_endpoint() {
    let (a, b) = (echo("fast-a").await, echo("fast-b").await);
    let slow = echo_slow("slow", Duration::from_millis(60)).await;
    let ports = [a.addr().port(), b.addr().port(), slow.addr().port()];
    let files = vec![
        ("svc.yaml", service_yaml("s", &ports)),
        ("ing.yaml", ingress("i", "ewma.test", "s", &[("load-balance", "ewma")])),
    ];
    let env = start(&files, ProxySettings::default()).await;
    let mut counts = HashMap::<String, usize>::new();
    for _ in 0..150 {
        *counts
            .entry(name_of(&env.echo_json("ewma.test", "/").await))
            .or_default() += 1;
    }
    let to_slow = counts.get("slow").copied().unwrap_or(0);
    // Round-robin would send 50. Once the slow endpoint has been measured it loses
    // every comparison with a fast one.
    assert!(to_slow < 20, "{counts:?}");
    assert!(counts.get("fast-a").copied().unwrap_or(0) > 30, "{counts:?}");
    assert!(counts.get("fast-b").copied().unwrap_or(0) > 30, "{counts:?}");

    // /debug/config shows the algorithm and what the balancer learnt.
    let dump = env.debug_config().await;
    let server = dump["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["host"] == "ewma.test")
        .unwrap();
    assert_eq!(server["paths"][0]["balance"], "ewma");
    let eps = dump["backends"]["default/s:80"].as_array().unwrap();
    let slow_ep = eps.iter().find(|e| e["address"] == slow.addr().to_string()).unwrap();
    assert!(slow_ep["latencyMs"].as_f64().unwrap() > 10.0, "{slow_ep}");
    assert_eq!(slow_ep["ejected"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_keys_and_moves_few_on_scale_down() {
    let (_backends, ports) = three_echoes().await;
    let files = vec![
        ("svc.yaml", service_yaml("s", &ports)),
        (
            "ing.yaml",
            ingress("i", "hash.test", "s", &[("upstream-hash-by", "$http_x_user")]),
        ),
    ];
    let env = start(&files, ProxySettings::default()).await;
    let owner = |user: String| {
        let env = &env;
        async move { get_ok(env, "hash.test", &[("x-user", user)]).await.to }
    };
    let mut before = HashMap::new();
    for u in 0..40 {
        let user = format!("user-{u}");
        let first = owner(user.clone()).await;
        for _ in 0..2 {
            assert_eq!(owner(user.clone()).await, first, "{user} moved without a change");
        }
        before.insert(user, first);
    }
    let used: HashSet<&String> = before.values().collect();
    assert_eq!(used.len(), 3, "40 keys over 3 endpoints use them all: {before:?}");

    // Scale down: "c" goes. Only c's keys move.
    write_atomic(&env.file("svc.yaml"), &service_yaml("s", &ports[..2]));
    let c_user = before.iter().find(|(_, o)| *o == "c").map(|(u, _)| u.clone()).unwrap();
    poll_until(WAIT, "c's keys to move", || {
        let c_user = c_user.clone();
        let owner = &owner;
        async move { (owner(c_user).await != "c").then_some(()) }
    })
    .await;
    for (user, was) in &before {
        let now = owner(user.clone()).await;
        if was == "c" {
            assert_ne!(now, "c");
        } else {
            assert_eq!(&now, was, "{user} moved although its endpoint stayed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_pins_sessions_and_falls_back() {
    let (_backends, ports) = three_echoes().await;
    let files = vec![
        ("svc.yaml", service_yaml("s", &ports)),
        (
            "balanced.yaml",
            ingress(
                "balanced",
                "sticky.test",
                "s",
                &[
                    ("affinity", "cookie"),
                    ("session-cookie-name", "route"),
                    ("session-cookie-max-age", "60"),
                    ("session-cookie-samesite", "Lax"),
                ],
            ),
        ),
        (
            "persistent.yaml",
            ingress(
                "persistent",
                "pin.test",
                "s",
                &[("affinity", "cookie"), ("affinity-mode", "persistent")],
            ),
        ),
    ];
    let env = start(&files, ProxySettings::default()).await;
    let get = |host: &'static str, cookie: Option<String>| {
        let env = &env;
        async move {
            let headers: Vec<(&str, String)> = cookie.into_iter().map(|c| ("cookie", c)).collect();
            let r = get_ok(env, host, &headers).await;
            (r.to, r.set_cookie)
        }
    };

    // A new session gets a cookie with the configured attributes...
    let (first, set) = get("sticky.test", None).await;
    let set = set.expect("Set-Cookie on a new session");
    assert!(set.starts_with("route="), "{set}");
    for attr in ["; Path=/", "; Max-Age=60", "; HttpOnly", "; SameSite=Lax"] {
        assert!(set.contains(attr), "{attr} missing in {set}");
    }
    assert!(
        !set.contains("Secure"),
        "plain HTTP without session-cookie-secure: {set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    // ... and every request of that session goes to the same endpoint.
    for _ in 0..15 {
        let (to, set) = get("sticky.test", Some(format!("other=1; {cookie}"))).await;
        assert_eq!(to, first);
        assert!(set.is_none(), "an honoured cookie is not set again");
    }
    // New sessions spread over the endpoints.
    let mut spread = HashSet::new();
    for _ in 0..30 {
        spread.insert(get("sticky.test", None).await.0);
    }
    assert!(spread.len() >= 2, "{spread:?}");

    // Persistent mode: the pinned endpoint goes away; the session falls back to the
    // balancer and is pinned again.
    let (pinned, set) = get("pin.test", None).await;
    let cookie = set.expect("cookie").split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("INGRESSCOOKIE="), "the default name: {cookie}");
    for _ in 0..5 {
        assert_eq!(get("pin.test", Some(cookie.clone())).await.0, pinned);
    }
    let index = ["a", "b", "c"].iter().position(|n| *n == pinned).unwrap();
    let remaining: Vec<u16> = ports
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, p)| *p)
        .collect();
    write_atomic(&env.file("svc.yaml"), &service_yaml("s", &remaining));
    let (moved, set) = poll_until(WAIT, "the session to move off the removed endpoint", || {
        let get = &get;
        let cookie = cookie.clone();
        let pinned = pinned.clone();
        async move {
            let (to, set) = get("pin.test", Some(cookie)).await;
            (to != pinned).then_some((to, set))
        }
    })
    .await;
    let new_cookie = set
        .expect("re-pinned with a new cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(new_cookie, cookie);
    for _ in 0..5 {
        assert_eq!(get("pin.test", Some(new_cookie.clone())).await.0, moved);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_request_is_retried_only_when_idempotent() {
    let hangup = Hangup::start().await;
    let good = echo("good").await;
    let ports = [hangup.addr.port(), good.addr().port()];
    let files = vec![
        ("svc.yaml", service_yaml("s", &ports)),
        ("ing.yaml", ingress("i", "post.test", "s", &[])),
        (
            "ing2.yaml",
            ingress(
                "i2",
                "anyway.test",
                "s",
                &[("proxy-next-upstream", "error timeout non_idempotent")],
            ),
        ),
    ];
    let env = start(&files, no_ejection()).await;
    let send = |method: reqwest::Method, host: &'static str| {
        let env = &env;
        async move { send(env, method, host, &[]).await.status }
    };
    // GET (idempotent): the hang-up moves to the good endpoint, every time.
    for _ in 0..6 {
        assert_eq!(send(reqwest::Method::GET, "post.test").await, 200);
    }
    let after_gets = hangup.accepted();
    assert!(
        after_gets >= 3,
        "round-robin sent GETs to the hang-up too: {after_gets}"
    );
    // POST: the request was sent, so it is not repeated elsewhere: 502.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(send(reqwest::Method::POST, "post.test").await);
    }
    let failed = statuses.iter().filter(|s| **s == 502).count();
    assert_eq!(failed, hangup.accepted() - after_gets, "{statuses:?}");
    assert!(failed >= 3, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 502), "{statuses:?}");
    // proxy-next-upstream: non_idempotent allows it.
    for _ in 0..6 {
        assert_eq!(send(reqwest::Method::POST, "anyway.test").await, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoints_are_ejected_and_come_back() {
    let hangup = Hangup::start().await;
    let good = echo("good").await;
    let ports = [hangup.addr.port(), good.addr().port()];
    let files = vec![
        ("svc.yaml", service_yaml("s", &ports)),
        ("ing.yaml", ingress("i", "eject.test", "s", &[])),
    ];
    let settings = ProxySettings {
        health: HealthPolicy {
            max_fails: 2,
            ejection: 3_000_000_000,
            max_ejection: 3_000_000_000,
        },
        ..ProxySettings::default()
    };
    let env = start(&files, settings).await;
    // Every request succeeds; the hang-up is tried until its second failure.
    let mut n = 0;
    while hangup.accepted() < 2 {
        assert_eq!(env.get("eject.test", "/").await.0, 200);
        n += 1;
        assert!(n < 20, "round-robin never reached the failing endpoint");
    }
    for _ in 0..10 {
        assert_eq!(env.get("eject.test", "/").await.0, 200);
    }
    assert_eq!(hangup.accepted(), 2, "an ejected endpoint gets no traffic");

    // It recovers (an echo now answers on its port): after the ejection period live
    // traffic reaches it again and it stays in.
    let addr = hangup.stop().await;
    let listener = TcpListener::bind(addr).await.unwrap();
    let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = EchoOptions {
        name: "recovered".into(),
        ..EchoOptions::default()
    };
    tokio::spawn(kingress_echo::serve(listener, opts, async move {
        let _ = rx.await;
    }));
    poll_until(Duration::from_secs(20), "the endpoint to be back", || async {
        (name_of(&env.echo_json("eject.test", "/").await) == "recovered").then_some(())
    })
    .await;
    let mut counts = HashMap::<String, usize>::new();
    for _ in 0..10 {
        *counts
            .entry(name_of(&env.echo_json("eject.test", "/").await))
            .or_default() += 1;
    }
    assert_eq!(counts.get("recovered"), Some(&5), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_endpoint_is_ejected_they_are_still_tried() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let files = vec![
        ("svc.yaml", service_yaml("s", &[dead])),
        ("ing.yaml", ingress("i", "dead.test", "s", &[])),
    ];
    let settings = ProxySettings {
        health: HealthPolicy {
            max_fails: 1,
            ..HealthPolicy::default()
        },
        ..ProxySettings::default()
    };
    let env = start(&files, settings).await;
    for _ in 0..3 {
        // 502 (tried and refused), not 503 (nothing to try).
        assert_eq!(env.get("dead.test", "/").await.0, 502);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_endpoint_finishes_its_requests() {
    let (old, new) = (echo("old").await, echo("new").await);
    let files = vec![
        ("svc.yaml", service_yaml("s", &[old.addr().port()])),
        ("ing.yaml", ingress("i", "roll.test", "s", &[("load-balance", "ewma")])),
    ];
    let env = start(&files, ProxySettings::default()).await;
    assert_eq!(name_of(&env.echo_json("roll.test", "/").await), "old");
    // A slow request is in flight on "old" while the rollout replaces it.
    let slow = {
        let client = env.client.clone();
        let url = env.url("/slow");
        tokio::spawn(async move {
            let resp = client
                .get(url)
                .header("host", "roll.test")
                .header("x-echo-delay-ms", "1500")
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), name_of(&resp.json().await.unwrap()))
        })
    };
    poll_until(WAIT, "the slow request to be in flight on old", || async {
        let eps = env.gateway.tables().endpoints();
        (eps.stats(&old.addr()).map(|s| s.in_flight()) == Some(1)).then_some(())
    })
    .await;
    write_atomic(&env.file("svc.yaml"), &service_yaml("s", &[new.addr().port()]));
    poll_until(WAIT, "traffic to reach the new endpoint", || async {
        (name_of(&env.echo_json("roll.test", "/").await) == "new").then_some(())
    })
    .await;
    assert_eq!(slow.await.unwrap(), (200, "old".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_configmap_sets_defaults_live() {
    let hangup = Hangup::start().await;
    let good = echo("good").await;
    let config_map = |tries: u32| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: kingress, namespace: ingress}}\ndata:\n  \
             proxy-next-upstream-tries: \"{tries}\"\n  load-balance: round_robin\n"
        )
    };
    let files = vec![
        ("svc.yaml", service_yaml("s", &[hangup.addr.port(), good.addr().port()])),
        ("ing.yaml", ingress("i", "cm.test", "s", &[])),
        ("cm.yaml", config_map(1)),
    ];
    let compile = kingress_compile::CompileOptions {
        config_map: Some(("ingress".into(), "kingress".into())),
        ..Default::default()
    };
    let env = start_with(&files, no_ejection(), compile).await;
    // One try: the requests that meet the hang-up fail.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(env.get("cm.test", "/").await.0);
    }
    assert!(statuses.contains(&502) && statuses.contains(&200), "{statuses:?}");
    let dump = env.debug_config().await;
    let server = dump["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["host"] == "cm.test")
        .unwrap();
    assert_eq!(server["paths"][0]["tries"], 1);

    // The ConfigMap changes: two tries, every request succeeds.
    write_atomic(&env.file("cm.yaml"), &config_map(2));
    poll_until(WAIT, "the new tries to be live", || async {
        let dump = env.debug_config().await;
        let server = dump["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["host"] == "cm.test")
            .cloned();
        (server.unwrap()["paths"][0]["tries"] == 2).then_some(())
    })
    .await;
    for _ in 0..6 {
        assert_eq!(env.get("cm.test", "/").await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pinned_endpoint_changes_the_cookie_only_when_asked() {
    let hangup = Hangup::start().await;
    let good = echo("good").await;
    let files = vec![
        ("svc.yaml", service_yaml("s", &[hangup.addr.port(), good.addr().port()])),
        (
            "keep.yaml",
            ingress(
                "keep",
                "keep.test",
                "s",
                &[("affinity", "cookie"), ("affinity-mode", "persistent")],
            ),
        ),
        (
            "change.yaml",
            ingress(
                "change",
                "change.test",
                "s",
                &[
                    ("affinity", "cookie"),
                    ("affinity-mode", "persistent"),
                    ("session-cookie-change-on-failure", "true"),
                ],
            ),
        ),
    ];
    let env = start(&files, no_ejection()).await;
    // A session pinned to the endpoint that hangs up.
    let pinned = format!("INGRESSCOOKIE={:016x}", kingress_balance::endpoint_key(&hangup.addr));
    let get = |host: &'static str| {
        let env = &env;
        let pinned = pinned.clone();
        async move {
            // 200: retried on the other endpoint.
            let r = get_ok(env, host, &[("cookie", pinned)]).await;
            (r.to, r.set_cookie)
        }
    };
    let before = hangup.accepted();
    let (to, set) = get("keep.test").await;
    assert_eq!(hangup.accepted(), before + 1, "the pinned endpoint was tried first");
    assert_eq!(to, "good");
    assert!(set.is_none(), "the session stays pinned: {set:?}");

    let (to, set) = get("change.test").await;
    assert_eq!(to, "good");
    let set = set.expect("session-cookie-change-on-failure re-pins the session");
    let expected = format!("INGRESSCOOKIE={:016x};", kingress_balance::endpoint_key(&good.addr()));
    assert!(set.starts_with(&expected), "{set}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_timeout_moves_idempotent_requests_only() {
    let silent = Hangup::silent().await;
    let good = echo("good").await;
    let files = vec![
        ("svc.yaml", service_yaml("s", &[silent.addr.port(), good.addr().port()])),
        ("ing.yaml", ingress("i", "slow.test", "s", &[])),
    ];
    let settings = ProxySettings {
        read_timeout: Duration::from_millis(300),
        ..no_ejection()
    };
    let env = start(&files, settings).await;
    // Round-robin over two endpoints: a GET that meets the silent endpoint times out
    // there and moves on; every GET answers 200.
    for _ in 0..4 {
        let r = send(&env, reqwest::Method::GET, "slow.test", &[]).await;
        assert_eq!((r.status, r.to.as_str()), (200, "good"));
    }
    assert!(silent.accepted() >= 1, "round-robin reached the silent endpoint");
    // A POST that times out on the silent endpoint is not sent again: 504.
    let mut timed_out = 0;
    for _ in 0..4 {
        let before = silent.accepted();
        let status = send(&env, reqwest::Method::POST, "slow.test", &[]).await.status;
        if silent.accepted() > before {
            assert_eq!(status, 504, "the POST met the silent endpoint and stayed there");
            timed_out += 1;
        } else {
            assert_eq!(status, 200);
        }
    }
    assert!(timed_out >= 1);
}
