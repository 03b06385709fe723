//! Route lookup and compile over a 10,000-Ingress snapshot.
//!
//! Measures, on the snapshot of [`kingress_benches::snapshot_10k`] (10,000 Ingresses of
//! class `kingress` over ~2,000 exact hosts, 100 wildcard hosts and the default server,
//! with their 10,000 Services and EndpointSlices):
//! - `lookup/10k`: one [`kingress_model::Config::lookup`] (host normalisation, server
//!   choice, path table), the time per request over a fixed mix of exact-host,
//!   wildcard, default-server and missing requests ([`kingress_benches::request_mix`]);
//! - `compile/10k`: [`kingress_compile::compile`], the whole snapshot to routes and
//!   endpoints (what a change costs the controller before it publishes);
//! - `compile_routes/10k` and `compile_endpoints/10k`: the two halves on their own
//!   (an EndpointSlice change only recompiles endpoints).
//!
//! Decoding the objects is not measured: the snapshot is built once, outside the timings.
//!
//! Run with:
//!
//! ```text
//! cargo bench -p kingress-benches --bench route_lookup
//! cargo bench -p kingress-benches --bench route_lookup -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kingress_benches::RequestKind;
use kingress_compile::{CompileOptions, compile, compile_endpoints, compile_routes};

const INGRESSES: usize = 10_000;
/// Requests in the lookup mix; the bench cycles through them one per iteration.
const MIX: usize = 4_096;

fn lookup(c: &mut Criterion) {
    let snapshot = kingress_benches::snapshot_10k(INGRESSES);
    let compiled = compile(&snapshot, &CompileOptions::default());
    let mix = kingress_benches::request_mix_expected(INGRESSES, MIX);
    let share = |kind| mix.iter().filter(|r| r.kind == kind).count() * 100 / mix.len().max(1);
    eprintln!(
        "snapshot: {} Ingresses, {} servers, {} path routes, {} backends, {} diagnostics; \
         mix of {}: {}% exact host, {}% wildcard, {}% default server, {}% miss ({}% 404)",
        snapshot.ingresses.len(),
        compiled.config.servers().len(),
        compiled.config.route_count(),
        compiled.endpoints.len(),
        compiled.diagnostics.len(),
        mix.len(),
        share(RequestKind::ExactHost),
        share(RequestKind::Wildcard),
        share(RequestKind::DefaultServer),
        share(RequestKind::Miss),
        mix.iter().filter(|r| r.expect.is_none()).count() * 100 / mix.len().max(1),
    );
    let requests: Vec<(Option<String>, String)> = kingress_benches::request_mix(INGRESSES, MIX)
        .into_iter()
        .map(|(host, path)| ((!host.is_empty()).then_some(host), path))
        .collect();

    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(1));
    group.bench_function("10k", |b| {
        let mut next = requests.iter().cycle();
        b.iter(|| {
            let Some((host, path)) = next.next() else {
                return false;
            };
            black_box(
                compiled
                    .config
                    .lookup(black_box(host.as_deref()), black_box(path))
                    .is_some(),
            )
        });
    });
    group.finish();
}

fn compile_benches(c: &mut Criterion) {
    let snapshot = kingress_benches::snapshot_10k(INGRESSES);
    let options = CompileOptions::default();
    // Dropping the result (tens of thousands of Arcs and Strings) is not part of compile.
    let drop_outside = BatchSize::PerIteration;

    let mut group = c.benchmark_group("compile");
    group.sample_size(20);
    group.bench_function("10k", |b| {
        b.iter_batched(|| (), |()| compile(black_box(&snapshot), &options), drop_outside)
    });
    group.finish();

    let mut group = c.benchmark_group("compile_routes");
    group.sample_size(20);
    group.bench_function("10k", |b| {
        b.iter_batched(|| (), |()| compile_routes(black_box(&snapshot), &options), drop_outside)
    });
    group.finish();

    let mut group = c.benchmark_group("compile_endpoints");
    group.sample_size(20);
    group.bench_function("10k", |b| {
        b.iter_batched(|| (), |()| compile_endpoints(black_box(&snapshot)), drop_outside)
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = lookup, compile_benches
}
criterion_main!(benches);
