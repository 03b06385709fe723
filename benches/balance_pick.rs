//! The cost of one balancer pick ([`kingress_balance::Balanced::pick`]), per algorithm,
//! for backends of 10, 100 and 1,000 endpoints.
//!
//! Every endpoint has EWMA latency samples (1.0 ms to ~1.5 ms, a different one each), so
//! the `ewma` case scores real numbers. Groups:
//! - `round_robin`: the shared cursor;
//! - `ewma`: peak-EWMA, power of two choices;
//! - `ewma_with_tried`: the same with 2 addresses already tried (a retry);
//! - `hash`: consistent hashing, a different key hash per iteration from a precomputed
//!   list of 4,096 (the ring is built before measuring, as it is lazily on first use);
//! - `cookie_persistent`: a valid persistent-affinity cookie (from a first pick);
//! - `cookie_balanced`: an existing balanced-affinity session key (hashed on every pick).
//!
//! The returned [`Pick`] (which holds an `Arc` clone of the endpoint's stats) is dropped
//! inside the iteration, as the proxy does. No I/O, time passed in.
//!
//! ```text
//! cargo bench -p kingress-benches --bench balance_pick -- --warm-up-time 1 --measurement-time 2
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kingress_balance::{Balanced, HealthPolicy, Pick, SECOND, Strategy, hash64};
use kingress_model::{AffinityMode, BackendId, EndpointSet, EndpointTable};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const SIZES: [usize; 3] = [10, 100, 1000];
/// Request keys for the `hash` case, cycled one per iteration.
const KEYS: usize = 4096;
/// The time of every pick: one second after the samples.
const NOW: u64 = 3 * SECOND;

struct Fixture {
    balanced: Balanced,
    id: BackendId,
    addrs: Vec<SocketAddr>,
}

fn fixture(n: usize) -> Fixture {
    let addrs: Vec<SocketAddr> = (0..n)
        .map(|i| SocketAddr::from((Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8 + 1), 8080)))
        .collect();
    let id = BackendId::new("ns", "svc", "80");
    let mut table = EndpointTable::new();
    table.insert(id.clone(), EndpointSet::new(addrs.clone()));
    let balanced = Balanced::new(table, None, SECOND, HealthPolicy::default());
    for (i, addr) in addrs.iter().enumerate() {
        let stats = balanced.stats(addr).unwrap();
        // A few samples each: 1.0 ms to ~1.5 ms, different per endpoint.
        for k in 0..4u64 {
            let rtt = 1_000_000 + (i as u64 % 500) * 1_000 + k * 10_000;
            stats.observe(rtt, 0, 2 * SECOND + k * 1_000_000);
        }
    }
    Fixture { balanced, id, addrs }
}

fn drop_pick(p: Pick) {
    black_box(p.addr());
    drop(p);
}

fn picks(c: &mut Criterion) {
    let fixtures: Vec<(usize, Fixture)> = SIZES.iter().map(|&n| (n, fixture(n))).collect();
    let hashes: Vec<u64> = (0..KEYS).map(|i| hash64(format!("client-{i}").as_bytes())).collect();

    let mut group = c.benchmark_group("round_robin");
    group.throughput(Throughput::Elements(1));
    for (n, f) in &fixtures {
        let mut rng = SmallRng::seed_from_u64(1);
        group.bench_with_input(BenchmarkId::from_parameter(n), f, |b, f| {
            b.iter(|| drop_pick(f.balanced.pick(&f.id, Strategy::RoundRobin, &[], NOW, &mut rng)));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("ewma");
    group.throughput(Throughput::Elements(1));
    for (n, f) in &fixtures {
        let mut rng = SmallRng::seed_from_u64(2);
        group.bench_with_input(BenchmarkId::from_parameter(n), f, |b, f| {
            b.iter(|| drop_pick(f.balanced.pick(&f.id, Strategy::Ewma, &[], NOW, &mut rng)));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("ewma_with_tried");
    group.throughput(Throughput::Elements(1));
    for (n, f) in &fixtures {
        let mut rng = SmallRng::seed_from_u64(3);
        let tried = [f.addrs[0], f.addrs[f.addrs.len() / 2]];
        group.bench_with_input(BenchmarkId::from_parameter(n), f, |b, f| {
            b.iter(|| drop_pick(f.balanced.pick(&f.id, Strategy::Ewma, black_box(&tried), NOW, &mut rng)));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("hash");
    group.throughput(Throughput::Elements(1));
    for (n, f) in &fixtures {
        let mut rng = SmallRng::seed_from_u64(4);
        // The ring is built on first use per generation: build it outside the timing.
        assert!(matches!(
            f.balanced.pick(&f.id, Strategy::Hash(1), &[], NOW, &mut rng),
            Pick::Endpoint(_)
        ));
        let mut k = 0usize;
        group.bench_with_input(BenchmarkId::from_parameter(n), f, |b, f| {
            b.iter(|| {
                k = (k + 1) % KEYS;
                drop_pick(f.balanced.pick(&f.id, Strategy::Hash(hashes[k]), &[], NOW, &mut rng))
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("cookie_persistent");
    group.throughput(Throughput::Elements(1));
    for (n, f) in &fixtures {
        let mut rng = SmallRng::seed_from_u64(5);
        let mode = AffinityMode::Persistent;
        // A new session gets its cookie; this also builds the key index outside the timing.
        let cookie = match f
            .balanced
            .pick(&f.id, Strategy::Cookie { value: None, mode }, &[], NOW, &mut rng)
        {
            Pick::Endpoint(c) => c.cookie.expect("a new persistent session gets a cookie"),
            other => panic!("no endpoint: {other:?}"),
        };
        let warm = f.balanced.pick(
            &f.id,
            Strategy::Cookie {
                value: Some(&cookie),
                mode,
            },
            &[],
            NOW,
            &mut rng,
        );
        assert!(
            matches!(&warm, Pick::Endpoint(c) if c.cookie.is_none()),
            "the cookie is valid"
        );
        group.bench_with_input(BenchmarkId::from_parameter(n), f, |b, f| {
            b.iter(|| {
                let strategy = Strategy::Cookie {
                    value: Some(black_box(cookie.as_str())),
                    mode,
                };
                drop_pick(f.balanced.pick(&f.id, strategy, &[], NOW, &mut rng))
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("cookie_balanced");
    group.throughput(Throughput::Elements(1));
    for (n, f) in &fixtures {
        let mut rng = SmallRng::seed_from_u64(6);
        let mode = AffinityMode::Balanced;
        // A new session gets its key (and the ring is built outside the timing).
        let session = match f
            .balanced
            .pick(&f.id, Strategy::Cookie { value: None, mode }, &[], NOW, &mut rng)
        {
            Pick::Endpoint(c) => c.cookie.expect("a new balanced session gets a cookie"),
            other => panic!("no endpoint: {other:?}"),
        };
        group.bench_with_input(BenchmarkId::from_parameter(n), f, |b, f| {
            b.iter(|| {
                let strategy = Strategy::Cookie {
                    value: Some(black_box(session.as_str())),
                    mode,
                };
                drop_pick(f.balanced.pick(&f.id, strategy, &[], NOW, &mut rng))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, picks);
criterion_main!(benches);
