use std::collections::HashMap;

use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::*;

const MS: Nanos = 1_000_000;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080))
}

fn id() -> BackendId {
    BackendId::new("ns", "svc", "80")
}

fn table(n: usize) -> EndpointTable {
    table_of(&(0..n).map(addr).collect::<Vec<_>>())
}

fn table_of(addrs: &[SocketAddr]) -> EndpointTable {
    let mut t = EndpointTable::new();
    t.insert(id(), EndpointSet::new(addrs.to_vec()));
    t.insert(BackendId::new("ns", "empty", "80"), EndpointSet::default());
    t
}

fn balanced(n: usize) -> Balanced {
    Balanced::new(table(n), None, SECOND, HealthPolicy::default())
}

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(7)
}

fn ep(p: Pick) -> Chosen {
    match p {
        Pick::Endpoint(c) => c,
        other => panic!("{other:?}"),
    }
}

fn counts(b: &Balanced, strategy: Strategy<'_>, picks: usize, now: Nanos) -> HashMap<SocketAddr, usize> {
    let mut r = rng();
    let mut out = HashMap::new();
    for _ in 0..picks {
        *out.entry(ep(b.pick(&id(), strategy, &[], now, &mut r)).addr)
            .or_default() += 1;
    }
    out
}

#[test]
fn round_robin_visits_every_endpoint_evenly() {
    let b = balanced(3);
    let c = counts(&b, Strategy::RoundRobin, 300, SECOND);
    assert_eq!(c.len(), 3);
    assert!(c.values().all(|n| *n == 100), "{c:?}");
}

#[test]
fn retries_skip_tried_endpoints_for_every_strategy() {
    let b = balanced(2);
    let mut r = rng();
    for s in [
        Strategy::RoundRobin,
        Strategy::Ewma,
        Strategy::Hash(12345),
        Strategy::Cookie {
            value: None,
            mode: AffinityMode::Balanced,
        },
        Strategy::Cookie {
            value: None,
            mode: AffinityMode::Persistent,
        },
    ] {
        let first = ep(b.pick(&id(), s, &[], SECOND, &mut r)).addr;
        let second = ep(b.pick(&id(), s, &[first], SECOND, &mut r)).addr;
        assert_ne!(first, second, "{s:?}");
        assert!(
            matches!(b.pick(&id(), s, &[first, second], SECOND, &mut r), Pick::NoEndpoint),
            "{s:?}"
        );
    }
}

#[test]
fn empty_and_unknown_backends() {
    let b = balanced(1);
    let mut r = rng();
    let empty = BackendId::new("ns", "empty", "80");
    assert!(matches!(
        b.pick(&empty, Strategy::RoundRobin, &[], 0, &mut r),
        Pick::NoEndpoint
    ));
    let unknown = BackendId::new("ns", "nope", "80");
    assert!(matches!(
        b.pick(&unknown, Strategy::Ewma, &[], 0, &mut r),
        Pick::UnknownBackend
    ));
}

#[test]
fn rotation_survives_an_endpoint_update() {
    let mut r = rng();
    let a = balanced(2);
    let first = ep(a.pick(&id(), Strategy::RoundRobin, &[], 0, &mut r)).addr;
    let b = Balanced::new(table(2), Some(&a), 2 * SECOND, HealthPolicy::default());
    let second = ep(b.pick(&id(), Strategy::RoundRobin, &[], 0, &mut r)).addr;
    assert_ne!(first, second, "the cursor carried over, so the next endpoint follows");
}

#[test]
fn ewma_avoids_the_slow_endpoint() {
    let b = balanced(3);
    let now = 5 * SECOND;
    for (i, rtt) in [(0, MS), (1, MS), (2, 10 * MS)] {
        b.stats(&addr(i)).unwrap().observe(rtt, 0, now);
    }
    let c = counts(&b, Strategy::Ewma, 10_000, now);
    let slow = c.get(&addr(2)).copied().unwrap_or(0);
    // With no load in flight, the slow one only wins a pair against... nobody: it loses
    // every comparison, and P2C never draws it twice.
    assert_eq!(slow, 0, "{c:?}");
    let fast = (
        c.get(&addr(0)).copied().unwrap_or(0),
        c.get(&addr(1)).copied().unwrap_or(0),
    );
    assert!(fast.0 > 3_000 && fast.1 > 3_000, "{c:?}");
}

#[test]
fn ewma_weighs_in_flight_requests() {
    let b = balanced(2);
    let now = 5 * SECOND;
    b.stats(&addr(0)).unwrap().observe(MS, 0, now);
    b.stats(&addr(1)).unwrap().observe(4 * MS, 0, now);
    let mut r = rng();
    // Load up the fast endpoint: 1 ms x 8 in flight scores worse than 4 ms x 1.
    let guards: Vec<InFlight> = (0..7).map(|_| b.stats(&addr(0)).unwrap().begin()).collect();
    assert_eq!(ep(b.pick(&id(), Strategy::Ewma, &[], now, &mut r)).addr, addr(1));
    drop(guards);
    assert_eq!(ep(b.pick(&id(), Strategy::Ewma, &[], now, &mut r)).addr, addr(0));
}

#[test]
fn ewma_with_many_endpoints_spreads_over_the_fast_ones() {
    let b = balanced(100);
    let now = 5 * SECOND;
    for i in 0..100 {
        let rtt = if i % 10 == 0 { 20 * MS } else { MS };
        b.stats(&addr(i)).unwrap().observe(rtt, 0, now);
    }
    let c = counts(&b, Strategy::Ewma, 100_000, now);
    let slow: usize = (0..100)
        .step_by(10)
        .map(|i| c.get(&addr(i)).copied().unwrap_or(0))
        .sum();
    // P2C: a slow endpoint only wins when drawn with another slow one (about 1%).
    assert!(slow < 2_000, "slow endpoints got {slow} of 100000");
    assert!(c.len() >= 90, "{}", c.len());
}

#[test]
fn scores_survive_updates_and_new_endpoints_start_fair() {
    let now = 5 * SECOND;
    let a = balanced(2);
    a.stats(&addr(0)).unwrap().observe(2 * MS, 2, now);
    a.stats(&addr(1)).unwrap().observe(4 * MS, 4, now);
    let b = Balanced::new(table(3), Some(&a), now, HealthPolicy::default());
    assert!(Arc::ptr_eq(a.stats(&addr(0)).unwrap(), b.stats(&addr(0)).unwrap()));
    let seeded = b.stats(&addr(2)).unwrap().latency(now).unwrap();
    assert!((seeded - 3.0 * MS as f64).abs() < 1.0, "mean of the others: {seeded}");
    assert_eq!(b.stats(&addr(2)).unwrap().typical_load(), 3.0, "and their mean load");
    // It is not flooded: it gets about its share, not everything.
    let c = counts(&b, Strategy::Ewma, 3_000, now);
    let new = c.get(&addr(2)).copied().unwrap_or(0);
    assert!(new < 2_000, "{c:?}");
    // A removed endpoint's stats stay alive for the requests that hold them.
    let held = b.stats(&addr(2)).unwrap().begin();
    let c2 = Balanced::new(table(2), Some(&b), now, HealthPolicy::default());
    assert!(c2.stats(&addr(2)).is_none());
    assert_eq!(held.stats().in_flight(), 1);
}

#[test]
fn hashing_is_stable_and_spread() {
    let b = balanced(10);
    let mut r = rng();
    let pick = |b: &Balanced, key: &str, r: &mut SmallRng| {
        ep(b.pick(&id(), Strategy::Hash(hash64(key.as_bytes())), &[], 0, r)).addr
    };
    let first = pick(&b, "user-1", &mut r);
    for _ in 0..10 {
        assert_eq!(pick(&b, "user-1", &mut r), first);
    }
    let mut owners = HashMap::<SocketAddr, usize>::new();
    for k in 0..10_000 {
        *owners.entry(pick(&b, &format!("user-{k}"), &mut r)).or_default() += 1;
    }
    assert_eq!(owners.len(), 10);
    assert!(owners.values().all(|n| (700..1_300).contains(n)), "{owners:?}");

    // Scale 10 -> 11: about 1/11 of the keys move, all of them to the new endpoint.
    let c = Balanced::new(table(11), Some(&b), 0, HealthPolicy::default());
    let mut moved = 0;
    for k in 0..10_000 {
        let key = format!("user-{k}");
        let (before, after) = (pick(&b, &key, &mut r), pick(&c, &key, &mut r));
        if before != after {
            assert_eq!(after, addr(10));
            moved += 1;
        }
    }
    assert!((500..1_400).contains(&moved), "moved {moved} of 10000");
}

#[test]
fn persistent_affinity_pins_and_falls_back() {
    let b = balanced(3);
    let mut r = rng();
    let s = |v| Strategy::Cookie {
        value: v,
        mode: AffinityMode::Persistent,
    };
    let first = ep(b.pick(&id(), s(None), &[], 0, &mut r));
    let cookie = first.cookie.clone().expect("a new session gets a cookie");
    assert_eq!(cookie.len(), 16);
    for _ in 0..20 {
        let again = ep(b.pick(&id(), s(Some(&cookie)), &[], 0, &mut r));
        assert_eq!(again.addr, first.addr);
        assert!(again.cookie.is_none(), "an honoured cookie is not set again");
    }
    // Garbage and foreign cookies: a new pin.
    let long = "f".repeat(200);
    for bad in ["zz", "", "0000000000000001", long.as_str()] {
        assert!(
            ep(b.pick(&id(), s(Some(bad)), &[], 0, &mut r)).cookie.is_some(),
            "{bad:?}"
        );
    }
    // The pinned endpoint is removed: fall back to the balancer and re-pin.
    let others: Vec<SocketAddr> = (0..3).map(addr).filter(|a| *a != first.addr).collect();
    let c = Balanced::new(table_of(&others), Some(&b), 0, HealthPolicy::default());
    let moved = ep(c.pick(&id(), s(Some(&cookie)), &[], 0, &mut r));
    assert_ne!(moved.addr, first.addr);
    let new_cookie = moved.cookie.expect("re-pinned");
    assert_eq!(ep(c.pick(&id(), s(Some(&new_cookie)), &[], 0, &mut r)).addr, moved.addr);
}

#[test]
fn balanced_affinity_keeps_sessions_and_spreads_new_ones() {
    let b = balanced(4);
    let mut r = rng();
    let s = |v| Strategy::Cookie {
        value: v,
        mode: AffinityMode::Balanced,
    };
    let mut sessions = Vec::new();
    let mut per_endpoint = HashMap::<SocketAddr, usize>::new();
    for _ in 0..2_000 {
        let c = ep(b.pick(&id(), s(None), &[], 0, &mut r));
        *per_endpoint.entry(c.addr).or_default() += 1;
        sessions.push((c.cookie.expect("new session"), c.addr));
    }
    assert!(
        per_endpoint.values().all(|n| (350..650).contains(n)),
        "{per_endpoint:?}"
    );
    for (cookie, at) in &sessions {
        let c = ep(b.pick(&id(), s(Some(cookie)), &[], 0, &mut r));
        assert_eq!(c.addr, *at);
        assert!(c.cookie.is_none());
    }
    // Scale up 4 -> 5: about 1/5 of the sessions move (to the new endpoint only).
    let c = Balanced::new(table(5), Some(&b), 0, HealthPolicy::default());
    let moved = sessions
        .iter()
        .filter(|(cookie, at)| ep(c.pick(&id(), s(Some(cookie)), &[], 0, &mut r)).addr != *at)
        .count();
    assert!((200..650).contains(&moved), "moved {moved} of 2000");
}

#[test]
fn ejected_endpoints_are_skipped_until_they_recover() {
    let health = HealthPolicy {
        max_fails: 2,
        ejection: SECOND,
        max_ejection: 10 * SECOND,
    };
    let b = Balanced::new(table(3), None, 0, health);
    let bad = addr(1);
    let stats = b.stats(&bad).unwrap();
    assert!(!stats.record_failure(SECOND, &health));
    assert!(stats.record_failure(SECOND, &health));
    let mut r = rng();
    for s in [Strategy::RoundRobin, Strategy::Ewma, Strategy::Hash(99)] {
        for _ in 0..50 {
            assert_ne!(ep(b.pick(&id(), s, &[], SECOND + 1, &mut r)).addr, bad, "{s:?}");
        }
    }
    // The period is over: live traffic reaches it again, and a success restores it.
    let back = counts(&b, Strategy::RoundRobin, 30, 2 * SECOND + 1);
    assert_eq!(back.get(&bad), Some(&10));
    stats.record_success();
    assert!(!stats.is_ejected(2 * SECOND));
}

#[test]
fn when_every_endpoint_is_ejected_all_are_tried() {
    let health = HealthPolicy {
        max_fails: 1,
        ejection: 10 * SECOND,
        max_ejection: 10 * SECOND,
    };
    let b = Balanced::new(table(2), None, 0, health);
    for i in 0..2 {
        assert!(b.stats(&addr(i)).unwrap().record_failure(SECOND, &health));
    }
    let mut r = rng();
    let first = ep(b.pick(&id(), Strategy::Ewma, &[], SECOND, &mut r)).addr;
    let second = ep(b.pick(&id(), Strategy::Ewma, &[first], SECOND, &mut r)).addr;
    assert_ne!(first, second);
    let c = counts(&b, Strategy::RoundRobin, 10, SECOND);
    assert_eq!(c.len(), 2, "not a 503: {c:?}");
}

fn backend(i: usize) -> BackendId {
    BackendId::new("ns", &format!("svc{i}"), "80")
}

/// A table of backends `svc{i}` over the given addresses, sharing the `Arc`s of `reuse`
/// for the backends whose addresses are the same (as the endpoint cache does).
fn shared_table(backends: &[Vec<SocketAddr>], reuse: Option<&EndpointTable>) -> EndpointTable {
    let mut t = EndpointTable::new();
    for (i, addrs) in backends.iter().enumerate() {
        let set = EndpointSet::new(addrs.clone());
        match reuse.and_then(|r| r.get(&backend(i))).filter(|s| ***s == set) {
            Some(old) => t.insert_shared(backend(i), old.clone()),
            None => t.insert(backend(i), set),
        }
    }
    t
}

#[test]
fn untouched_backends_are_carried_over_whole() {
    let now = SECOND;
    let gen1 = shared_table(&[vec![addr(0), addr(1)], vec![addr(2), addr(3)]], None);
    let a = Balanced::new(gen1.clone(), None, now, HealthPolicy::default());
    let mut r = rng();
    // svc0 builds its ring and advances its cursor.
    let hashed = ep(a.pick(&backend(0), Strategy::Hash(42), &[], now, &mut r)).addr;
    let first = ep(a.pick(&backend(1), Strategy::RoundRobin, &[], now, &mut r)).addr;
    let gen2 = shared_table(&[vec![addr(0), addr(1)], vec![addr(2), addr(4)]], Some(&gen1));
    let b = Balanced::new(gen2, Some(&a), now, HealthPolicy::default());
    let (old0, new0) = (
        a.backends.get(&backend(0)).unwrap(),
        b.backends.get(&backend(0)).unwrap(),
    );
    assert!(Arc::ptr_eq(old0, new0), "the unchanged backend is the same state");
    assert!(new0.ring.get().is_some(), "with its ring");
    assert_eq!(
        ep(b.pick(&backend(0), Strategy::Hash(42), &[], now, &mut r)).addr,
        hashed
    );
    let (old1, new1) = (
        a.backends.get(&backend(1)).unwrap(),
        b.backends.get(&backend(1)).unwrap(),
    );
    assert!(!Arc::ptr_eq(old1, new1), "the changed one is rebuilt");
    assert!(Arc::ptr_eq(&old1.cursor, &new1.cursor), "keeping its rotation");
    assert_ne!(
        ep(b.pick(&backend(1), Strategy::RoundRobin, &[], now, &mut r)).addr,
        first
    );
    assert!(Arc::ptr_eq(a.stats(&addr(2)).unwrap(), b.stats(&addr(2)).unwrap()));
    assert!(b.stats(&addr(3)).is_none(), "a removed address is gone");
    assert!(b.stats(&addr(4)).is_some());
    // A table equal to the previous one but built anew (a full rescan) is carried too.
    let again = shared_table(&[vec![addr(0), addr(1)], vec![addr(2), addr(4)]], None);
    let c = Balanced::new(again, Some(&b), now, HealthPolicy::default());
    assert!(Arc::ptr_eq(
        b.backends.get(&backend(1)).unwrap(),
        c.backends.get(&backend(1)).unwrap()
    ));
}

#[test]
fn shared_and_moving_addresses_keep_their_stats() {
    let now = 5 * SECOND;
    // addr(0) is in both backends; addr(1) only in svc1.
    let gen1 = shared_table(&[vec![addr(0)], vec![addr(0), addr(1)]], None);
    let a = Balanced::new(gen1.clone(), None, now, HealthPolicy::default());
    a.stats(&addr(0)).unwrap().observe(2 * MS, 1, now);
    let s0 = a.stats(&addr(0)).unwrap().clone();
    let s1 = a.stats(&addr(1)).unwrap().clone();
    assert!(Arc::ptr_eq(&a.backends.get(&backend(0)).unwrap().stats[0], &s0));
    // svc1 drops addr(0): svc0 still has it, with the same stats. addr(1) moves from svc1
    // to svc0 in the same generation and keeps its stats, in whichever order the backends
    // are visited.
    let gen2 = shared_table(&[vec![addr(0), addr(1)], vec![addr(2)]], Some(&gen1));
    let b = Balanced::new(gen2.clone(), Some(&a), now, HealthPolicy::default());
    assert!(Arc::ptr_eq(b.stats(&addr(0)).unwrap(), &s0));
    assert!(Arc::ptr_eq(b.stats(&addr(1)).unwrap(), &s1));
    let b0 = b.backends.get(&backend(0)).unwrap();
    assert!(Arc::ptr_eq(&b0.stats[0], &s0) && Arc::ptr_eq(&b0.stats[1], &s1));
    // svc0 drops addr(0): no backend has it any more.
    let gen3 = shared_table(&[vec![addr(1)], vec![addr(2)]], Some(&gen2));
    let c = Balanced::new(gen3, Some(&b), now, HealthPolicy::default());
    assert!(c.stats(&addr(0)).is_none());
    assert!(Arc::ptr_eq(c.stats(&addr(1)).unwrap(), &s1));
}

/// After any sequence of generations the shared stats are exactly the addresses of the
/// current table, and an address that stays keeps its stats.
#[test]
fn stats_follow_the_tables_through_many_generations() {
    let mut r = rng();
    let mut table: Option<EndpointTable> = None;
    let mut current: Option<Balanced> = None;
    for generation in 0..300 {
        let backends: Vec<Vec<SocketAddr>> = (0..6)
            .map(|_| (0..r.gen_range(0..5)).map(|_| addr(r.gen_range(0..12))).collect())
            .collect();
        // Often leave a backend as it was.
        let backends: Vec<Vec<SocketAddr>> = backends
            .into_iter()
            .enumerate()
            .map(|(i, new)| match (&table, r.gen_bool(0.5)) {
                (Some(t), true) => t.get(&backend(i)).map(|s| s.addrs.clone()).unwrap_or(new),
                _ => new,
            })
            .collect();
        let next_table = shared_table(&backends, table.as_ref());
        let next = Balanced::new(next_table.clone(), current.as_ref(), SECOND, HealthPolicy::default());
        let want: std::collections::BTreeSet<SocketAddr> = backends.iter().flatten().copied().collect();
        let have: std::collections::BTreeSet<SocketAddr> = next.stats.keys().copied().collect();
        assert_eq!(have, want, "generation {generation}");
        for i in 0..backends.len() {
            let b = next.backends.get(&backend(i)).unwrap();
            for (a, s) in b.set.addrs.iter().zip(&b.stats) {
                assert!(Arc::ptr_eq(next.stats(a).unwrap(), s), "generation {generation}");
            }
            assert_eq!(b.stats.len(), b.set.addrs.len());
        }
        if let Some(prev) = &current {
            for a in want.iter().filter(|a| prev.stats(a).is_some()) {
                assert!(
                    Arc::ptr_eq(prev.stats(a).unwrap(), next.stats(a).unwrap()),
                    "generation {generation}"
                );
            }
        }
        table = Some(next_table);
        current = Some(next);
    }
}
