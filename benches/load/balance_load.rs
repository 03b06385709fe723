//! Balancing under a slow endpoint: three echo backends, one of them 10x slower than the
//! other two, behind kingress with `load-balance: round_robin` and then `ewma`. Reports,
//! for each algorithm, the share of requests every endpoint got and the latency the
//! client saw (p50, p90, p99, max).
//!
//! What it does:
//! 1. starts `kingress echo --listen 127.0.0.1:P --name NAME --delay-ms D` three times:
//!    `fast-1` and `fast-2` (D = `--fast-delay-ms`, 2) and `slow` (D = `--slow-delay-ms`,
//!    20), on free ports, and waits until each answers 200;
//! 2. for each algorithm: writes a manifests folder (a Service `web` with port `http` 80,
//!    one EndpointSlice per echo port on 127.0.0.1, an Ingress of class `kingress` for host
//!    `bench.local`, `/` Prefix to `web:80`, with the annotation
//!    `nginx.ingress.kubernetes.io/load-balance`), starts `kingress run` on it, polls
//!    `/readyz` and then `/` with `Host: bench.local` until both answer 200, and checks
//!    that `/debug/config` reports that algorithm for the path;
//! 3. drives `--concurrency` HTTP/1.1 keep-alive connections, each sending one request
//!    after another: `--warmup-secs` of warm-up (discarded; EWMA learns meanwhile), then
//!    `--duration-secs` measured. A request counts when it starts in the measured window;
//!    its latency is from sending the request to the end of the response body, and its
//!    backend is the `name` field of the echo's JSON answer. Non-200 answers and
//!    transport errors are counted as errors. Meanwhile, once a second, it reads each
//!    endpoint's EWMA latency estimate and in-flight count from `/debug/config` (what the
//!    balancer believed; the estimate is kept under round_robin too);
//! 4. prints a table per algorithm, stops kingress (SIGTERM, by PID), and at the end a
//!    summary of both and stops the echo backends. Every child is stopped on error and
//!    on Ctrl-C too.
//!
//! Only 127.0.0.1 is ever contacted. Logs and manifests stay in the printed work folder.
//!
//! ```text
//! target/release/balance-load [--concurrency 32] [--duration-secs 15] [--warmup-secs 3]
//!     [--fast-delay-ms 2] [--slow-delay-ms 20] [--kingress target/release/kingress]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use kingress_benches::procs::{Proc, free_ports, local, log_tail};
const BENCH_HOST: &str = "bench.local";
const ALGORITHMS: [&str; 2] = ["round_robin", "ewma"];
const READY_TIMEOUT: Duration = Duration::from_secs(30);

struct Opts {
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    fast_delay_ms: u64,
    slow_delay_ms: u64,
    kingress: PathBuf,
}

fn usage() -> String {
    "usage: balance-load [--concurrency 32] [--duration-secs 15] [--warmup-secs 3] \
     [--fast-delay-ms 2] [--slow-delay-ms 20] [--kingress target/release/kingress]"
        .to_string()
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        concurrency: 32,
        duration: Duration::from_secs(15),
        warmup: Duration::from_secs(3),
        fast_delay_ms: 2,
        slow_delay_ms: 20,
        kingress: PathBuf::from("target/release/kingress"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(usage());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value\n{}", usage()))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value:?}: {e}");
        match flag.as_str() {
            "--concurrency" => o.concurrency = value.parse().map_err(|e| bad(&e))?,
            "--duration-secs" => o.duration = Duration::from_secs_f64(value.parse().map_err(|e| bad(&e))?),
            "--warmup-secs" => o.warmup = Duration::from_secs_f64(value.parse().map_err(|e| bad(&e))?),
            "--fast-delay-ms" => o.fast_delay_ms = value.parse().map_err(|e| bad(&e))?,
            "--slow-delay-ms" => o.slow_delay_ms = value.parse().map_err(|e| bad(&e))?,
            "--kingress" => o.kingress = PathBuf::from(value),
            _ => return Err(format!("unknown flag {flag}\n{}", usage())),
        }
    }
    if o.concurrency == 0 || o.duration.is_zero() {
        return Err(format!(
            "--concurrency and --duration-secs must be above 0\n{}",
            usage()
        ));
    }
    Ok(o)
}

/// One GET on a fresh connection: the status and body, or None on any error or after 1 s.
async fn get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, Bytes)> {
    let attempt = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
        let conn = tokio::spawn(conn);
        let req = Request::get(path).header(HOST, host).body(Empty::<Bytes>::new()).ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        conn.abort();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
}

/// Polls until `GET path` answers 200, or fails after [`READY_TIMEOUT`].
async fn wait_200(proc: &mut Proc, addr: SocketAddr, host: &str, path: &str) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let got = get(addr, host, path).await.map(|(status, _)| status);
        if got == Some(200) {
            return Ok(());
        }
        proc.check_running()?;
        if Instant::now() >= deadline {
            bail!(
                "timed out after {READY_TIMEOUT:?} waiting for 200 from http://{addr}{path} (Host: {host}; last: {got:?}); {}",
                log_tail(&proc.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The manifests for one algorithm: Service `web`, one EndpointSlice per echo port, the Ingress.
fn write_manifests(dir: &Path, algorithm: &str, echo_ports: &[u16]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut web = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  ports:\n  \
         - {name: http, port: 80, targetPort: 8080}\n",
    );
    for (i, port) in echo_ports.iter().enumerate() {
        write!(
            web,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-{i}\n  \
             namespace: default\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports:\n\
             - {{name: http, port: {port}, protocol: TCP}}\nendpoints:\n- addresses: [127.0.0.1]\n  \
             conditions: {{ready: true}}\n"
        )?;
    }
    std::fs::write(dir.join("web.yaml"), web)?;
    let ingress = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: bench\n  namespace: default\n  \
         annotations:\n    nginx.ingress.kubernetes.io/load-balance: {algorithm}\nspec:\n  \
         ingressClassName: kingress\n  rules:\n  - host: {BENCH_HOST}\n    http:\n      paths:\n      \
         - path: /\n        pathType: Prefix\n        backend:\n          \
         service: {{name: web, port: {{number: 80}}}}\n"
    );
    std::fs::write(dir.join("ingress.yaml"), ingress)?;
    Ok(())
}

/// What one connection (or all of them, merged) saw in the measured window.
#[derive(Default)]
struct Tally {
    /// Latencies in µs, per backend name.
    latencies: BTreeMap<String, Vec<u32>>,
    /// Answers that were not 200.
    bad_status: u64,
    /// Connect, send or read failures, and 200s without a `name`.
    transport: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (name, mut l) in other.latencies {
            self.latencies.entry(name).or_default().append(&mut l);
        }
        self.bad_status += other.bad_status;
        self.transport += other.transport;
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// One keep-alive connection sending requests back to back until `end` (reconnecting
/// after an error); records the requests started at or after `measure_from`.
async fn connection(addr: SocketAddr, measure_from: Instant, end: Instant) -> Tally {
    let mut t = Tally::default();
    'connect: while Instant::now() < end {
        let started = Instant::now();
        let stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(_) => {
                if started >= measure_from {
                    t.transport += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
            t.transport += u64::from(started >= measure_from);
            continue;
        };
        let conn = tokio::spawn(conn);
        loop {
            if Instant::now() >= end {
                conn.abort();
                break 'connect;
            }
            if sender.ready().await.is_err() {
                conn.abort();
                continue 'connect;
            }
            let req = Request::get("/")
                .header(HOST, BENCH_HOST)
                .body(Empty::<Bytes>::new())
                .expect("a valid request");
            let start = Instant::now();
            let measured = start >= measure_from;
            let result = match sender.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    resp.into_body().collect().await.map(|b| (status, b.to_bytes()))
                }
                Err(e) => Err(e),
            };
            let elapsed = start.elapsed();
            match result {
                Ok((status, body)) if status == hyper::StatusCode::OK => {
                    let name = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string));
                    if measured {
                        match name {
                            Some(name) => t.latencies.entry(name).or_default().push(micros(elapsed)),
                            None => t.transport += 1,
                        }
                    }
                }
                Ok(_) => t.bad_status += u64::from(measured),
                Err(_) => {
                    t.transport += u64::from(measured);
                    conn.abort();
                    continue 'connect;
                }
            }
        }
    }
    t
}

/// `GET /debug/config` on the admin listener, as JSON.
async fn debug_config(admin: SocketAddr) -> Option<serde_json::Value> {
    let (status, body) = get(admin, "localhost", "/debug/config").await?;
    (status == 200).then(|| serde_json::from_slice(&body).ok()).flatten()
}

/// The balancer of `BENCH_HOST`'s `/` path, as /debug/config reports it.
fn path_balance(config: &serde_json::Value) -> Option<String> {
    let servers = config.get("servers")?.as_array()?;
    let server = servers
        .iter()
        .find(|s| s.get("host").and_then(|h| h.as_str()) == Some(BENCH_HOST))?;
    let paths = server.get("paths")?.as_array()?;
    let path = paths
        .iter()
        .find(|p| p.get("path").and_then(|p| p.as_str()) == Some("/"))?;
    Some(path.get("balance")?.as_str()?.to_string())
}

/// Per backend name: the EWMA latency estimates (ms) and in-flight counts sampled.
type BalancerView = BTreeMap<String, (Vec<f64>, Vec<f64>)>;

/// Samples each endpoint's EWMA latency estimate and in-flight count from /debug/config
/// once a second during the measured window: what the balancer believed.
async fn sample_balancer(
    admin: SocketAddr,
    names: Vec<(u16, String)>,
    measure_from: Instant,
    end: Instant,
) -> BalancerView {
    let mut view = BalancerView::new();
    let mut next = measure_from;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        next += Duration::from_secs(1);
        let Some(config) = debug_config(admin).await else {
            continue;
        };
        let Some(backends) = config.get("backends").and_then(|b| b.as_object()) else {
            continue;
        };
        for endpoint in backends.values().filter_map(|v| v.as_array()).flatten() {
            let addr = endpoint.get("address").and_then(|a| a.as_str());
            let port = addr.and_then(|a| a.parse::<SocketAddr>().ok()).map(|a| a.port());
            let Some((_, name)) = names.iter().find(|(p, _)| Some(*p) == port) else {
                continue;
            };
            let entry = view.entry(name.clone()).or_default();
            if let Some(ms) = endpoint.get("latencyMs").and_then(|l| l.as_f64()) {
                entry.0.push(ms);
            }
            if let Some(n) = endpoint.get("inFlight").and_then(|l| l.as_f64()) {
                entry.1.push(n);
            }
        }
    }
    view
}

/// min / median / max of some samples, formatted.
fn spread(samples: &[f64], unit: &str) -> String {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    match (s.first(), s.get(s.len() / 2), s.last()) {
        (Some(min), Some(median), Some(max)) => format!("{min:.1} / {median:.1} / {max:.1}{unit}"),
        _ => "-".into(),
    }
}

/// Nearest-rank percentile of sorted values, in ms.
fn pct_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

struct Outcome {
    algorithm: String,
    requests: usize,
    per_second: f64,
    /// (backend, requests, p50 ms, p99 ms), in `names` order.
    backends: Vec<(String, usize, f64, f64)>,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    bad_status: u64,
    transport: u64,
    view: BalancerView,
}

fn outcome(algorithm: &str, tally: Tally, view: BalancerView, names: &[String], duration: Duration) -> Outcome {
    let mut all: Vec<u32> = Vec::new();
    let mut backends = Vec::new();
    let mut known: Vec<&String> = names.iter().collect();
    // Any unexpected name (there should be none) is listed too.
    known.extend(tally.latencies.keys().filter(|k| !names.contains(k)));
    for name in known {
        let mut l = tally.latencies.get(name).cloned().unwrap_or_default();
        l.sort_unstable();
        backends.push((name.clone(), l.len(), pct_ms(&l, 50.0), pct_ms(&l, 99.0)));
        all.extend_from_slice(&l);
    }
    all.sort_unstable();
    Outcome {
        algorithm: algorithm.to_string(),
        requests: all.len(),
        per_second: all.len() as f64 / duration.as_secs_f64(),
        backends,
        p50: pct_ms(&all, 50.0),
        p90: pct_ms(&all, 90.0),
        p99: pct_ms(&all, 99.0),
        max: all.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
        bad_status: tally.bad_status,
        transport: tally.transport,
        view,
    }
}

fn share(o: &Outcome, n: usize) -> f64 {
    if o.requests == 0 {
        0.0
    } else {
        n as f64 * 100.0 / o.requests as f64
    }
}

fn summary_header(names: &[String]) -> String {
    let mut h = String::from("| algorithm | requests/s |");
    let mut sep = String::from("|---|---|");
    for n in names {
        write!(h, " {n} share |").ok();
        sep.push_str("---|");
    }
    h.push_str(" p50 | p90 | p99 | max | errors |");
    sep.push_str("---|---|---|---|---|");
    format!("{h}\n{sep}")
}

fn summary_row(o: &Outcome, names: &[String]) -> String {
    let mut r = format!("| {} | {:.0} |", o.algorithm, o.per_second);
    for name in names {
        let n = o.backends.iter().find(|b| &b.0 == name).map_or(0, |b| b.1);
        write!(r, " {:.1}% |", share(o, n)).ok();
    }
    write!(
        r,
        " {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
        o.p50,
        o.p90,
        o.p99,
        o.max,
        o.bad_status + o.transport
    )
    .ok();
    r
}

fn print_outcome(o: &Outcome, names: &[String], opts: &Opts) {
    println!(
        "\n### {} ({} connections, {:.0} s measured after {:.0} s warm-up)\n",
        o.algorithm,
        opts.concurrency,
        opts.duration.as_secs_f64(),
        opts.warmup.as_secs_f64()
    );
    println!("{}", summary_header(names));
    println!("{}", summary_row(o, names));
    println!("\n| backend | requests | share | p50 | p99 |\n|---|---|---|---|---|");
    for (name, n, p50, p99) in &o.backends {
        println!("| {name} | {n} | {:.1}% | {p50:.2} ms | {p99:.2} ms |", share(o, *n));
    }
    println!(
        "\nrequests measured: {}; errors: {} non-200, {} transport",
        o.requests, o.bad_status, o.transport
    );
    println!(
        "\nWhat the balancer believed (/debug/config, sampled once a second while measuring):\n\n\
         | backend | EWMA latency estimate, min / median / max | in-flight, min / median / max |\n|---|---|---|"
    );
    for (name, (latency, in_flight)) in &o.view {
        println!("| {name} | {} | {} |", spread(latency, " ms"), spread(in_flight, ""));
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

async fn run_algorithm(
    opts: &Opts,
    work: &Path,
    algorithm: &str,
    echo_ports: &[u16],
    names: &[String],
) -> Result<Outcome> {
    let manifests = work.join(format!("manifests-{algorithm}"));
    write_manifests(&manifests, algorithm, echo_ports)?;
    let ports = free_ports(3)?;
    let (http, https, admin) = (local(ports[0]), local(ports[1]), local(ports[2]));
    let args: Vec<String> = vec![
        "run".into(),
        "--manifests".into(),
        manifests.display().to_string(),
        "--http-listen".into(),
        http.to_string(),
        "--https-listen".into(),
        https.to_string(),
        "--admin-listen".into(),
        admin.to_string(),
    ];
    let mut kingress = Proc::spawn(
        &format!("kingress ({algorithm})"),
        &opts.kingress,
        &args,
        work.join(format!("kingress-{algorithm}.log")),
    )?;
    wait_200(&mut kingress, admin, "localhost", "/readyz").await?;
    wait_200(&mut kingress, http, BENCH_HOST, "/").await?;
    let config = debug_config(admin).await.context("reading /debug/config")?;
    let balance = path_balance(&config);
    if balance.as_deref() != Some(algorithm) {
        bail!("kingress serves {BENCH_HOST}/ with balance {balance:?}, not {algorithm}; see /debug/config");
    }

    eprintln!(
        "{algorithm}: {} connections to http://{http}/ (Host: {BENCH_HOST}), {:.0} s warm-up then {:.0} s measured; \
         load average before: {}",
        opts.concurrency,
        opts.warmup.as_secs_f64(),
        opts.duration.as_secs_f64(),
        loadavg()
    );
    let measure_from = Instant::now() + opts.warmup;
    let end = measure_from + opts.duration;
    let tasks: Vec<_> = (0..opts.concurrency)
        .map(|_| tokio::spawn(connection(http, measure_from, end)))
        .collect();
    let port_names = echo_ports.iter().copied().zip(names.iter().cloned()).collect();
    let sampler = tokio::spawn(sample_balancer(admin, port_names, measure_from, end));
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.context("a load connection panicked")?);
    }
    let view = sampler.await.context("the /debug/config sampler panicked")?;
    kingress.check_running()?;
    kingress.stop();
    eprintln!("{algorithm}: done; load average now {}", loadavg());
    Ok(outcome(algorithm, tally, view, names, opts.duration))
}

async fn run(opts: Opts) -> Result<()> {
    if !opts.kingress.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p kingress`",
            opts.kingress.display()
        );
    }
    let work = tempfile::Builder::new()
        .prefix("kingress-balance.")
        .tempdir()
        .context("creating the work folder")?
        .keep();
    eprintln!("work folder (logs, manifests): {}", work.display());

    let backends = [
        ("fast-1", opts.fast_delay_ms),
        ("fast-2", opts.fast_delay_ms),
        ("slow", opts.slow_delay_ms),
    ];
    let names: Vec<String> = backends.iter().map(|(n, _)| n.to_string()).collect();
    let echo_ports = free_ports(backends.len())?;
    let mut echoes = Vec::new();
    for ((name, delay), port) in backends.iter().zip(&echo_ports) {
        let args: Vec<String> = vec![
            "echo".into(),
            "--listen".into(),
            local(*port).to_string(),
            "--name".into(),
            name.to_string(),
            "--delay-ms".into(),
            delay.to_string(),
        ];
        echoes.push(Proc::spawn(
            &format!("echo {name}"),
            &opts.kingress,
            &args,
            work.join(format!("echo-{name}.log")),
        )?);
    }
    for (echo, port) in echoes.iter_mut().zip(&echo_ports) {
        wait_200(echo, local(*port), "localhost", "/").await?;
    }

    let mut outcomes = Vec::new();
    for algorithm in ALGORITHMS {
        let o = run_algorithm(&opts, &work, algorithm, &echo_ports, &names).await?;
        print_outcome(&o, &names, &opts);
        outcomes.push(o);
    }
    for echo in &mut echoes {
        echo.check_running()?;
    }
    drop(echoes);

    println!(
        "\n### Summary: {} cores, {} connections, {:.0} s measured after {:.0} s warm-up; \
         delays {} ms (fast-1, fast-2) and {} ms (slow)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        opts.concurrency,
        opts.duration.as_secs_f64(),
        opts.warmup.as_secs_f64(),
        opts.fast_delay_ms,
        opts.slow_delay_ms
    );
    println!("{}", summary_header(&names));
    for o in &outcomes {
        println!("{}", summary_row(o, &names));
    }
    if let [rr, ewma] = outcomes.as_slice() {
        let slow = |o: &Outcome| share(o, o.backends.iter().find(|b| b.0 == "slow").map_or(0, |b| b.1));
        println!(
            "\nslow backend's share: round_robin {:.1}%, ewma {:.1}%; client p99: round_robin {:.2} ms, ewma {:.2} ms",
            slow(rr),
            slow(ewma),
            rr.p99,
            ewma.p99
        );
    }
    println!("\nlogs: {}", work.display());
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Ctrl-C drops `run`, and with it every child process guard (each stops its child).
    let result = tokio::select! {
        r = run(opts) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("balance-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
