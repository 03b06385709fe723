//! Kubernetes mode at scale: `kingress run --kubeconfig` against an in-process fake API
//! server ([`kingress_fake_apiserver::FakeApiServer`]) holding N Ingresses, N Services and
//! EndpointSlices with E endpoints in all (10,000 and 100,000 by default). Measures the
//! initial sync, the memory of the kingress process, and change-to-live latency from a
//! watch event.
//!
//! What it does, in order:
//! 1. starts two echo backends (`kingress echo --name live-a` and `live-b`) on free ports
//!    of 127.0.0.1, and waits until each answers 200;
//! 2. starts the fake API server on its own tokio runtime (one worker thread) and loads
//!    it, timed: the IngressClass `kingress`; N Services `web-NNNNN` spread over 100
//!    namespaces `team-NN` (ClusterIP, port `http` 80 -> 8080, labels, selector); their
//!    EndpointSlices (E/N endpoints each, at most 100 per slice as the EndpointSlice
//!    controller cuts them, fake pod IPs 10.64.0.0/10 with node, zone and Pod targetRef,
//!    ready); N Ingresses `web-NNNNN`, one host `hN.bench` each with 2 Prefix paths (`/` to
//!    the Service's port by name, `/api/v1` by number), Helm labels and annotations, every
//!    4th with `load-balance: ewma`, every 7th with `proxy-next-upstream-tries: "2"`. No
//!    traffic goes to the fake IPs. One more Service `live` in `default` has a real
//!    endpoint (the echo `live-a`) and an Ingress `live` for host `live.bench` (`/live`
//!    Prefix);
//! 3. writes a kubeconfig for the fake server and starts `kingress --log-format json run
//!    --kubeconfig K --http-listen .. --https-listen .. --admin-listen .. --worker-threads W`
//!    (stdout and stderr to `kingress.log` in the work folder). It polls `/readyz` every
//!    5 ms (and the log) and reports the time from the spawn to the log line "initial sync
//!    from the API server complete" and to the first `/readyz` 200, the `elapsed_us` of the
//!    first "configuration published" (compare + compile + publish) and the CPU time
//!    kingress used until ready (utime + stime from `/proc/PID/stat`);
//! 4. waits `--settle-secs` (2) and reads VmRSS and VmHWM (the peak) from
//!    `/proc/PID/status`;
//! 5. route changes, `--changes` times (200): checks that `GET /pK` (Host `live.bench`)
//!    does not answer 200, replaces the `live` Ingress with one whose paths are `/live` and
//!    `/pK` (Exact) with `FakeApiServer::apply`, takes the time when `apply` returns (the
//!    watch event has then been queued to the open watch streams), then sends `GET /pK`
//!    back to back on one keep-alive connection, with no pause (or `--poll-us` between
//!    requests), until it answers 200. It then waits for kingress's "configuration
//!    published" log line of that change and keeps its `elapsed_us` and
//!    `routes_recompiled`;
//! 6. endpoint changes, `--changes` times: replaces the EndpointSlice of `live` so that it
//!    points at the other echo process, and polls `GET /live` the same way until the
//!    echo's `name` in the JSON answer is the new one. Its log lines must say
//!    `routes_recompiled: false`. During both series VmRSS is read every 50 changes;
//! 7. reads VmRSS and VmHWM again, fetches `/debug/config` once (timed) and counts what
//!    kingress serves (servers, paths, backends, endpoints, diagnostics), stops kingress
//!    (SIGTERM, by PID) and the echo backends, and prints a markdown table.
//!
//! Every child is stopped by PID when the program ends, on error and on Ctrl-C too. Only
//! 127.0.0.1 is ever contacted. The kubeconfig and logs stay in the printed work folder.
//!
//! ```text
//! target/release/kube-scale [--ingresses 10000] [--endpoints 100000] [--changes 200]
//!     [--kingress target/release/kingress] [--worker-threads 2] [--poll-us 0] [--settle-secs 2]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use kingress_fake_apiserver::FakeApiServer;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use kingress_benches::procs::{Proc, free_ports, local, log_tail};
const LIVE_HOST: &str = "live.bench";
const LIVE_NS: &str = "default";
/// Namespaces the N Ingresses and Services are spread over.
const NAMESPACES: usize = 100;
/// The EndpointSlice controller's default `--max-endpoints-per-slice`.
const MAX_PER_SLICE: usize = 100;
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// A change not live after this is counted as failed.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the "configuration published" line of a change once it is live.
const LOG_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(
    name = "kube-scale",
    about = "kingress in Kubernetes mode against a fake API server with N Ingresses and E endpoints: \
             initial sync, memory, change-to-live latency from a watch event"
)]
struct Opts {
    /// Ingresses (each with its own Service and host) besides the `live` one.
    #[arg(long, default_value_t = 10_000)]
    ingresses: usize,
    /// Endpoints in all over the N Services' EndpointSlices (fake IPs, never contacted).
    #[arg(long, default_value_t = 100_000)]
    endpoints: usize,
    /// Route changes to measure, and as many endpoint changes.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// The kingress binary.
    #[arg(long, default_value = "target/release/kingress")]
    kingress: PathBuf,
    /// Passed to `kingress run --worker-threads`.
    #[arg(long, default_value_t = 2)]
    worker_threads: usize,
    /// Pause between two polls of a change, in µs (0: back to back).
    #[arg(long, default_value_t = 0)]
    poll_us: u64,
    /// Wait after /readyz before reading the memory, in seconds.
    #[arg(long, default_value_t = 2.0)]
    settle_secs: f64,
}

// ---------------------------------------------------------------------------------------
// Child processes

// ---------------------------------------------------------------------------------------
// /proc

/// VmRSS and VmHWM of a process, in KiB.
fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/PID/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32, clk_tck: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/PID/stat")?;
    // The fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok((ticks(14) + ticks(15)) / clk_tck)
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---------------------------------------------------------------------------------------
// kingress's JSON log

/// One "configuration published" line.
#[derive(Clone, Debug)]
struct Publish {
    elapsed_us: u64,
    routes_recompiled: bool,
    endpoints_rebuilt: bool,
    certificates_rebuilt: bool,
    diagnostics: u64,
    /// The line's timestamp (when the apply ended), in µs since the Unix epoch.
    at_unix_us: Option<i64>,
}

/// `2026-11-21T18:19:04.653362Z` (tracing-subscriber's JSON timestamps, UTC) in µs since
/// the Unix epoch.
fn rfc3339_unix_us(ts: &str) -> Option<i64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let digits: String = frac.chars().take(6).collect();
    let micros = format!("{digits:0<6}").parse::<i64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + micros)
}

fn now_unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Reads the lines appended to a log file since the last call.
struct LogTail {
    file: File,
    offset: u64,
    partial: String,
    initial_sync: bool,
    publishes: Vec<Publish>,
    warnings: Vec<String>,
}

impl LogTail {
    fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            file: File::open(path).with_context(|| format!("opening {}", path.display()))?,
            offset: 0,
            partial: String::new(),
            initial_sync: false,
            publishes: Vec::new(),
            warnings: Vec::new(),
        })
    }

    /// Reads what was appended and parses the complete lines.
    fn poll(&mut self) -> Result<()> {
        self.file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        self.offset += self.file.read_to_end(&mut buf)? as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(nl) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=nl).collect();
            let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
                continue;
            };
            let message = v.get("message").and_then(Value::as_str).unwrap_or_default();
            let level = v.get("level").and_then(Value::as_str).unwrap_or_default();
            if level == "WARN" || level == "ERROR" {
                self.warnings.push(line.trim().to_string());
            }
            if message == "initial sync from the API server complete" {
                self.initial_sync = true;
            } else if message == "configuration published" {
                let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
                self.publishes.push(Publish {
                    elapsed_us: num("elapsed_us"),
                    routes_recompiled: flag("routes_recompiled"),
                    endpoints_rebuilt: flag("endpoints_rebuilt"),
                    certificates_rebuilt: flag("certificates_rebuilt"),
                    at_unix_us: v.get("timestamp").and_then(Value::as_str).and_then(rfc3339_unix_us),
                    diagnostics: num("diagnostics"),
                });
            }
        }
        Ok(())
    }

    /// Waits (polling every 2 ms) until more than `seen` publishes were logged, and
    /// returns the new ones.
    async fn publishes_after(&mut self, seen: usize) -> Result<Vec<Publish>> {
        let deadline = Instant::now() + LOG_TIMEOUT;
        loop {
            self.poll()?;
            if self.publishes.len() > seen {
                // A little longer, in case the change was published twice.
                tokio::time::sleep(Duration::from_millis(2)).await;
                self.poll()?;
                return Ok(self.publishes[seen..].to_vec());
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP client: one keep-alive connection

struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
    /// Connections opened (1 when keep-alive held throughout).
    connects: u64,
}

impl Conn {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            sender: None,
            connects: 0,
        }
    }

    /// `GET path` with `Host: host`: the status and body. Reconnects once on a closed
    /// connection.
    async fn get(&mut self, host: &str, path: &str) -> Result<(u16, Bytes)> {
        let mut last = anyhow!("no attempt");
        for _ in 0..2 {
            match tokio::time::timeout(Duration::from_secs(5), self.try_get(host, path)).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => last = e,
                Err(_) => last = anyhow!("GET http://{}{path} (Host: {host}) timed out after 5 s", self.addr),
            }
            self.sender = None;
        }
        Err(last)
    }

    async fn try_get(&mut self, host: &str, path: &str) -> Result<(u16, Bytes)> {
        if self.sender.is_none() {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
            self.connects += 1;
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await?;
        let req = Request::get(path).header(HOST, host).body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

fn echo_name(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("name")?
        .as_str()
        .map(str::to_string)
}

/// Polls `GET path` (fresh keep-alive connection) every 20 ms until it answers 200.
async fn wait_200(proc: &mut Proc, addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut conn = Conn::new(addr);
    loop {
        let got = conn.get(host, path).await.ok().map(|(s, _)| s);
        if got == Some(200) {
            return Ok(());
        }
        proc.check_running()?;
        if Instant::now() >= deadline {
            bail!(
                "timed out after {timeout:?} waiting for 200 from http://{addr}{path} (Host: {host}; last: {got:?}); {}",
                log_tail(&proc.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The objects

fn namespace(i: usize) -> String {
    format!("team-{:02}", i % NAMESPACES)
}

fn web(i: usize) -> String {
    format!("web-{i:05}")
}

/// A pod IP in 10.64.0.0/10 for endpoint number `j`.
fn pod_ip(j: usize) -> String {
    format!("10.{}.{}.{}", 64 + (j >> 16) % 64, (j >> 8) & 0xff, j & 0xff)
}

fn ingress_class() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "kingress", "labels": {"app.kubernetes.io/name": "kingress"}},
        "spec": {"controller": "kingress.dev/ingress-controller"}})
}

fn labels(name: &str, ns: &str) -> Value {
    json!({"app.kubernetes.io/name": name, "app.kubernetes.io/instance": name,
        "app.kubernetes.io/part-of": ns, "app.kubernetes.io/managed-by": "Helm"})
}

fn service(name: &str, ns: &str, cluster_ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels(name, ns),
            "annotations": {"meta.helm.sh/release-name": name, "meta.helm.sh/release-namespace": ns}},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "selector": {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": name},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster"}})
}

/// An EndpointSlice of `service` with the given (address, port) endpoints, all ready.
fn endpoint_slice(name: &str, ns: &str, service: &str, port: u16, addresses: &[String], first: usize) -> Value {
    let endpoints: Vec<Value> = addresses
        .iter()
        .enumerate()
        .map(|(k, addr)| {
            let n = first + k;
            json!({"addresses": [addr],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{:03}", n % 50),
                "zone": format!("zone-{}", ["a", "b", "c"][n % 3]),
                "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("{service}-7d9f8b6c5-{n:05x}")}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns,
            "labels": {"kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "app.kubernetes.io/name": service},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service,
                "uid": format!("00000000-0000-4000-8000-{:012x}", first), "controller": true,
                "blockOwnerDeletion": true}]},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints})
}

fn web_ingress(i: usize) -> Value {
    let (name, ns) = (web(i), namespace(i));
    let mut annotations = json!({"meta.helm.sh/release-name": name, "meta.helm.sh/release-namespace": ns});
    if i.is_multiple_of(4) {
        annotations["nginx.ingress.kubernetes.io/load-balance"] = json!("ewma");
    }
    if i.is_multiple_of(7) {
        annotations["nginx.ingress.kubernetes.io/proxy-next-upstream-tries"] = json!("2");
    }
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": ns, "labels": labels(&name, &ns), "annotations": annotations},
        "spec": {"ingressClassName": "kingress", "rules": [{"host": format!("h{i}.bench"), "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": name, "port": {"name": "http"}}}},
            {"path": "/api/v1", "pathType": "Prefix",
                "backend": {"service": {"name": name, "port": {"number": 80}}}}]}}]}})
}

/// The `live` Ingress: `/live` (Prefix), and `/pK` (Exact) for a route change.
fn live_ingress(extra: Option<&str>) -> Value {
    let backend = json!({"service": {"name": "live", "port": {"name": "http"}}});
    let mut paths = vec![json!({"path": "/live", "pathType": "Prefix", "backend": backend})];
    if let Some(p) = extra {
        paths.push(json!({"path": p, "pathType": "Exact", "backend": backend}));
    }
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "live", "namespace": LIVE_NS, "labels": labels("live", LIVE_NS),
            "annotations": {"meta.helm.sh/release-name": "live", "meta.helm.sh/release-namespace": LIVE_NS}},
        "spec": {"ingressClassName": "kingress", "rules": [{"host": LIVE_HOST, "http": {"paths": paths}}]}})
}

fn live_slice(port: u16) -> Value {
    endpoint_slice("live-x7k2p", LIVE_NS, "live", port, &["127.0.0.1".to_string()], 0)
}

/// What was loaded into the fake API server.
struct Loaded {
    slices: usize,
    endpoints: usize,
    took: Duration,
}

fn load(api: &FakeApiServer, opts: &Opts, live_port: u16) -> Loaded {
    let started = Instant::now();
    let n = opts.ingresses;
    api.apply(ingress_class());
    let (mut slices, mut endpoints) = (0, 0);
    for i in 0..n {
        let (name, ns) = (web(i), namespace(i));
        api.apply(service(&name, &ns, &format!("10.96.{}.{}", (i >> 8) & 0xff, i & 0xff)));
        // E/N endpoints each; the first E%N Services one more.
        let count = opts.endpoints / n + usize::from(i < opts.endpoints % n);
        let addresses: Vec<String> = (endpoints..endpoints + count).map(pod_ip).collect();
        for (c, chunk) in addresses.chunks(MAX_PER_SLICE).enumerate() {
            let slice_name = format!("{name}-{:05x}", (i * 31 + c * 7919) % 0xfffff);
            api.apply(endpoint_slice(
                &slice_name,
                &ns,
                &name,
                8080,
                chunk,
                endpoints + c * MAX_PER_SLICE,
            ));
            slices += 1;
        }
        endpoints += count;
        api.apply(web_ingress(i));
    }
    api.apply(service("live", LIVE_NS, "10.96.255.254"));
    api.apply(live_slice(live_port));
    api.apply(live_ingress(None));
    Loaded {
        slices,
        endpoints,
        took: started.elapsed(),
    }
}

fn kubeconfig(dir: &Path, url: &str) -> Result<PathBuf> {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{url}\"}}\nusers:\n- name: u\n  \
         user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: fake, user: u, namespace: default}}\n\
         current-context: c\n"
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

// ---------------------------------------------------------------------------------------
// Figures

/// Nearest-rank percentile of sorted values.
fn pct<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us_as_ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1e3)
}

/// "p50 X, p90 X, p99 X, max X" of latencies.
fn spread(samples: &[Duration]) -> String {
    let mut s = samples.to_vec();
    s.sort();
    format!(
        "p50 {}, p90 {}, p99 {}, max {} (min {})",
        ms(pct(&s, 50.0)),
        ms(pct(&s, 90.0)),
        ms(pct(&s, 99.0)),
        ms(pct(&s, 100.0)),
        ms(pct(&s, 0.0)),
    )
}

/// "p50 X, p99 X, max X" of log `elapsed_us` values.
fn spread_us(samples: &[u64]) -> String {
    let mut s = samples.to_vec();
    s.sort_unstable();
    format!(
        "p50 {}, p90 {}, p99 {}, max {}",
        us_as_ms(pct(&s, 50.0)),
        us_as_ms(pct(&s, 90.0)),
        us_as_ms(pct(&s, 99.0)),
        us_as_ms(pct(&s, 100.0)),
    )
}

/// What a series of changes gave.
#[derive(Default)]
struct Series {
    latencies: Vec<Duration>,
    /// kingress's VmRSS (KiB) after every 50th change (and the last).
    rss_kib: Vec<u64>,
    /// Polls sent in all.
    polls: u64,
    /// Changes not live within CHANGE_TIMEOUT.
    timeouts: usize,
    /// `elapsed_us` of every publish logged for these changes.
    elapsed_us: Vec<u64>,
    /// Publishes logged, and how many of them recompiled the routes / rebuilt endpoints.
    publishes: usize,
    routes_recompiled: usize,
    endpoints_rebuilt: usize,
    certificates_rebuilt: usize,
    /// Changes for which no publish was logged within LOG_TIMEOUT.
    unlogged: usize,
    /// Per change live and published once: from `apply` returning to the start of
    /// kingress's `Controller::apply` (the log line's timestamp minus its `elapsed_us`):
    /// watch delivery and decoding, the source's coalescing, snapshot rebuild and clone,
    /// the hand-over to the blocking thread. Wall clocks of both processes (same machine).
    before_apply: Vec<Duration>,
    /// And from there to live (the compile up to the table swap, and the poll that sees it).
    apply_to_live: Vec<Duration>,
}

impl Series {
    /// Every 50 changes (and after the last): kingress's RSS, and a progress line.
    fn progress(&mut self, what: &str, k: usize, total: usize, live: Option<Duration>, kingress: &Proc) -> Result<()> {
        if (k + 1).is_multiple_of(50) || k + 1 == total {
            let (rss, _) = memory_kib(kingress.pid())?;
            self.rss_kib.push(rss);
            eprintln!(
                "{what}: {}/{total} done; last {}; VmRSS {}",
                k + 1,
                live.map_or("timed out".into(), ms),
                mib(rss)
            );
        }
        Ok(())
    }

    fn record(&mut self, applied_unix_us: i64, live: Option<Duration>, p: &[Publish]) {
        if p.is_empty() {
            self.unlogged += 1;
        }
        if let (Some(live), [one]) = (live, p)
            && let Some(end) = one.at_unix_us
        {
            let start = end - i64::try_from(one.elapsed_us).unwrap_or(i64::MAX);
            let before = Duration::from_micros(u64::try_from(start - applied_unix_us).unwrap_or(0));
            self.before_apply.push(before);
            self.apply_to_live.push(live.saturating_sub(before));
        }
        self.publishes += p.len();
        self.routes_recompiled += p.iter().filter(|p| p.routes_recompiled).count();
        self.endpoints_rebuilt += p.iter().filter(|p| p.endpoints_rebuilt).count();
        self.certificates_rebuilt += p.iter().filter(|p| p.certificates_rebuilt).count();
        self.elapsed_us.extend(p.iter().map(|p| p.elapsed_us));
    }
}

async fn pause(poll_us: u64) {
    if poll_us > 0 {
        tokio::time::sleep(Duration::from_micros(poll_us)).await;
    }
}

/// Route changes: a new Exact path on the `live` Ingress, until it answers 200.
async fn route_changes(
    api: &FakeApiServer,
    opts: &Opts,
    http: SocketAddr,
    log: &mut LogTail,
    kingress: &mut Proc,
) -> Result<Series> {
    let mut s = Series::default();
    let mut conn = Conn::new(http);
    for k in 0..opts.changes {
        let path = format!("/p{k}");
        let (before, _) = conn.get(LIVE_HOST, &path).await?;
        if before == 200 {
            bail!("{path} answers 200 before the change; the measurement would be wrong");
        }
        log.poll()?;
        let seen = log.publishes.len();
        api.apply(live_ingress(Some(&path)));
        let applied = Instant::now();
        let applied_unix_us = now_unix_us();
        let live = loop {
            s.polls += 1;
            let (status, _) = conn.get(LIVE_HOST, &path).await?;
            if status == 200 {
                break Some(applied.elapsed());
            }
            if applied.elapsed() > CHANGE_TIMEOUT {
                break None;
            }
            pause(opts.poll_us).await;
        };
        match live {
            Some(d) => s.latencies.push(d),
            None => {
                s.timeouts += 1;
                kingress.check_running()?;
                eprintln!("route change {k}: {path} not live after {CHANGE_TIMEOUT:?}");
                if s.timeouts >= 5 {
                    bail!("5 route changes were not live; {}", log_tail(&kingress.log));
                }
            }
        }
        let p = log.publishes_after(seen).await?;
        s.record(applied_unix_us, live, &p);
        s.progress("route changes", k, opts.changes, live, kingress)?;
    }
    eprintln!("route changes: {} polls on {} connection(s)", s.polls, conn.connects);
    Ok(s)
}

/// Endpoint changes: the `live` EndpointSlice moves between the two echo processes,
/// until the answer comes from the new one.
async fn endpoint_changes(
    api: &FakeApiServer,
    opts: &Opts,
    http: SocketAddr,
    echoes: &[(String, u16); 2],
    log: &mut LogTail,
    kingress: &mut Proc,
) -> Result<Series> {
    let mut s = Series::default();
    let mut conn = Conn::new(http);
    for k in 0..opts.changes {
        // live-a serves at the start: the first change moves to live-b.
        let (from, to) = if k % 2 == 0 {
            (&echoes[0], &echoes[1])
        } else {
            (&echoes[1], &echoes[0])
        };
        let (status, body) = conn.get(LIVE_HOST, "/live").await?;
        let now = echo_name(&body);
        if status != 200 || now.as_deref() != Some(from.0.as_str()) {
            bail!(
                "before endpoint change {k}: /live answered {status} from {now:?}, expected 200 from {}",
                from.0
            );
        }
        log.poll()?;
        let seen = log.publishes.len();
        api.apply(live_slice(to.1));
        let applied = Instant::now();
        let applied_unix_us = now_unix_us();
        let live = loop {
            s.polls += 1;
            let (status, body) = conn.get(LIVE_HOST, "/live").await?;
            if status == 200 && echo_name(&body).as_deref() == Some(to.0.as_str()) {
                break Some(applied.elapsed());
            }
            if applied.elapsed() > CHANGE_TIMEOUT {
                break None;
            }
            pause(opts.poll_us).await;
        };
        match live {
            Some(d) => s.latencies.push(d),
            None => {
                s.timeouts += 1;
                kingress.check_running()?;
                bail!(
                    "endpoint change {k}: /live still not answered by {} after {CHANGE_TIMEOUT:?}",
                    to.0
                );
            }
        }
        let p = log.publishes_after(seen).await?;
        s.record(applied_unix_us, live, &p);
        s.progress("endpoint changes", k, opts.changes, live, kingress)?;
    }
    eprintln!("endpoint changes: {} polls on {} connection(s)", s.polls, conn.connects);
    Ok(s)
}

/// What /debug/config says kingress serves.
struct Served {
    servers: usize,
    paths: usize,
    backends: usize,
    endpoints: usize,
    diagnostics: usize,
    bytes: usize,
    took: Duration,
}

async fn served(admin: SocketAddr) -> Result<Served> {
    let started = Instant::now();
    let mut conn = Conn::new(admin);
    let (status, body) = conn.get("localhost", "/debug/config").await?;
    let took = started.elapsed();
    if status != 200 {
        bail!("/debug/config answered {status}");
    }
    let v: Value = serde_json::from_slice(&body).context("/debug/config is not JSON")?;
    let arr = |k: &str| v.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
    let servers = arr("servers");
    let paths = servers
        .iter()
        .map(|s| s.get("paths").and_then(Value::as_array).map_or(0, Vec::len))
        .sum();
    let backends = v
        .get("backends")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    Ok(Served {
        servers: servers.len(),
        paths,
        backends: backends.len(),
        endpoints: backends.values().map(|e| e.as_array().map_or(0, Vec::len)).sum(),
        diagnostics: arr("diagnostics").len(),
        bytes: body.len(),
        took,
    })
}

// ---------------------------------------------------------------------------------------

async fn run(opts: Opts, api_rt: tokio::runtime::Handle) -> Result<()> {
    if !opts.kingress.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p kingress -p kingress-benches --locked`",
            opts.kingress.display()
        );
    }
    if opts.ingresses == 0 && opts.endpoints > 0 {
        bail!("--endpoints needs --ingresses above 0 (the endpoints belong to their Services)");
    }
    let clk_tck = clk_tck();
    let work = tempfile::Builder::new()
        .prefix("kingress-kube-scale.")
        .tempdir()
        .context("creating the work folder")?
        .keep();
    eprintln!("work folder (kubeconfig, logs): {}", work.display());
    eprintln!("load average at start: {}", loadavg());

    // 1. The two echo backends of `live`.
    let echo_ports = free_ports(2)?;
    let echoes: [(String, u16); 2] = [
        ("live-a".to_string(), echo_ports[0]),
        ("live-b".to_string(), echo_ports[1]),
    ];
    let mut echo_procs = Vec::new();
    for (name, port) in &echoes {
        let args = vec![
            "echo".to_string(),
            "--listen".into(),
            local(*port).to_string(),
            "--name".into(),
            name.clone(),
        ];
        let mut p = Proc::spawn(
            &format!("echo {name}"),
            &opts.kingress,
            &args,
            work.join(format!("echo-{name}.log")),
        )?;
        wait_200(&mut p, local(*port), "localhost", "/", Duration::from_secs(30)).await?;
        echo_procs.push(p);
    }

    // 2. The fake API server, on its own runtime, loaded.
    let api = api_rt
        .spawn(FakeApiServer::start())
        .await
        .context("starting the fake API server")?;
    eprintln!("fake API server at {}; loading objects...", api.url());
    let loaded = load(&api, &opts, echoes[0].1);
    eprintln!(
        "loaded {} Ingresses, {} Services, {} EndpointSlices ({} endpoints) + the live ones in {:.2} s",
        opts.ingresses,
        opts.ingresses,
        loaded.slices,
        loaded.endpoints,
        loaded.took.as_secs_f64()
    );

    // 3. kingress, until ready.
    let kubeconfig = kubeconfig(&work, &api.url())?;
    let ports = free_ports(3)?;
    let (http, https, admin) = (local(ports[0]), local(ports[1]), local(ports[2]));
    let args: Vec<String> = vec![
        "--log-format".into(),
        "json".into(),
        "run".into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--http-listen".into(),
        http.to_string(),
        "--https-listen".into(),
        https.to_string(),
        "--admin-listen".into(),
        admin.to_string(),
        "--worker-threads".into(),
        opts.worker_threads.to_string(),
    ];
    let load_before = loadavg();
    let own_cpu_spawn = cpu_secs(std::process::id(), clk_tck)?;
    let spawned = Instant::now();
    let mut kingress = Proc::spawn("kingress", &opts.kingress, &args, work.join("kingress.log"))?;
    let pid = kingress.pid();
    let mut log = LogTail::open(&kingress.log)?;
    let mut admin_conn = Conn::new(admin);
    let mut synced_at = None;
    let ready_at = loop {
        log.poll()?;
        if synced_at.is_none() && log.initial_sync {
            synced_at = Some(spawned.elapsed());
        }
        if let Ok((200, _)) = admin_conn.get("localhost", "/readyz").await {
            break spawned.elapsed();
        }
        kingress.check_running()?;
        if spawned.elapsed() > READY_TIMEOUT {
            bail!("not ready after {READY_TIMEOUT:?}; {}", log_tail(&kingress.log));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let cpu_ready = cpu_secs(pid, clk_tck)?;
    let own_cpu_ready = cpu_secs(std::process::id(), clk_tck)? - own_cpu_spawn;
    log.poll()?;
    let synced_at = synced_at.unwrap_or(ready_at);
    let first = log.publishes.first().cloned();
    eprintln!(
        "ready after {} (initial sync logged by {}); first publish {:?}",
        ms(ready_at),
        ms(synced_at),
        first
    );
    let requests = api.requests();
    let lists = requests
        .iter()
        .filter(|(m, t)| m == "GET" && !t.contains("watch=true") && !t.contains("/leases/"))
        .count();
    wait_200(&mut kingress, http, LIVE_HOST, "/live", Duration::from_secs(30)).await?;

    // 4. Memory after the settle.
    tokio::time::sleep(Duration::from_secs_f64(opts.settle_secs)).await;
    let (rss_settled, hwm_settled) = memory_kib(pid)?;
    let cpu_settled = cpu_secs(pid, clk_tck)?;
    eprintln!(
        "after {:.0} s of settle: VmRSS {}, VmHWM {}; load average {}",
        opts.settle_secs,
        mib(rss_settled),
        mib(hwm_settled),
        loadavg()
    );

    // 5. and 6. The changes.
    let load_changes = loadavg();
    let changes_started = Instant::now();
    let cpu_before_changes = cpu_secs(pid, clk_tck)?;
    let routes = route_changes(&api, &opts, http, &mut log, &mut kingress).await?;
    let cpu_routes = cpu_secs(pid, clk_tck)? - cpu_before_changes;
    let cpu_before_endpoints = cpu_secs(pid, clk_tck)?;
    let endpoints = endpoint_changes(&api, &opts, http, &echoes, &mut log, &mut kingress).await?;
    let cpu_endpoints = cpu_secs(pid, clk_tck)? - cpu_before_endpoints;
    let changes_took = changes_started.elapsed();

    // 7. Memory again, what is served, then stop.
    let (rss_end, hwm_end) = memory_kib(pid)?;
    let served = served(admin).await?;
    let (rss_after_debug, hwm_after_debug) = memory_kib(pid)?;
    kingress.check_running()?;
    log.poll()?;
    kingress.stop();
    drop(echo_procs);
    drop(api);

    // The report.
    let n = opts.ingresses;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\n### kube-scale: {n} Ingresses, {} endpoints; {} route + {} endpoint changes; {cores} cores\n",
        loaded.endpoints, opts.changes, opts.changes
    );
    println!("| figure | value |\n|---|---|");
    println!(
        "| objects in the fake API server | {n} Ingresses (2 paths each) in {} namespaces, {n} Services, {} EndpointSlices with {} endpoints; plus IngressClass `kingress` and the `live` Service, EndpointSlice and Ingress |",
        NAMESPACES.min(n),
        loaded.slices,
        loaded.endpoints
    );
    println!(
        "| loading them (`FakeApiServer::apply`, one by one) | {:.2} s |",
        loaded.took.as_secs_f64()
    );
    println!(
        "| spawn → \"initial sync from the API server complete\" (log) | {} |",
        ms(synced_at)
    );
    println!("| spawn → `/readyz` 200 | **{}** |", ms(ready_at));
    println!(
        "| initial sync logged → `/readyz` 200 (snapshot, compile, publish) | {} |",
        ms(ready_at.saturating_sub(synced_at))
    );
    if let Some(f) = &first {
        println!(
            "| first publish (`Controller::apply`, log `elapsed_us`) | {} ({} diagnostics) |",
            us_as_ms(f.elapsed_us),
            f.diagnostics
        );
    }
    println!(
        "| kingress CPU until ready (utime + stime) | {cpu_ready:.2} s |\n| this process's CPU meanwhile (the fake API server serving the lists, and the polls) | {own_cpu_ready:.2} s |\n| GET requests other than watches and Leases (list pages) until ready | {lists} |"
    );
    println!(
        "| VmRSS after ready + {:.0} s settle | **{}** |\n| VmHWM (peak) by then | **{}** |",
        opts.settle_secs,
        mib(rss_settled),
        mib(hwm_settled)
    );
    println!(
        "| VmRSS / VmHWM after the changes | {} / {} |",
        mib(rss_end),
        mib(hwm_end)
    );
    let every_50 = |s: &Series| {
        s.rss_kib
            .iter()
            .map(|k| format!("{:.0}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "| VmRSS every 50 route changes, then every 50 endpoint changes (MiB) | {} / {} |",
        every_50(&routes),
        every_50(&endpoints)
    );
    println!(
        "| route change → live (`apply` returned → first 200), {} changes | **{}** |",
        routes.latencies.len(),
        spread(&routes.latencies)
    );
    println!(
        "| route changes: `Controller::apply` (log `elapsed_us`: compare, compile, publish, drop the previous snapshot) | {} |",
        spread_us(&routes.elapsed_us)
    );
    println!(
        "| route changes: `apply` returned → kingress's `Controller::apply` began (log timestamp − `elapsed_us`) | {} |",
        spread(&routes.before_apply)
    );
    println!(
        "| route changes: `Controller::apply` began → live | {} |",
        spread(&routes.apply_to_live)
    );
    println!(
        "| route changes: publishes logged / recompiled routes / rebuilt endpoints / rebuilt certificates / changes without a log line / not live in {} s | {} / {} / {} / {} / {} / {} |",
        CHANGE_TIMEOUT.as_secs(),
        routes.publishes,
        routes.routes_recompiled,
        routes.endpoints_rebuilt,
        routes.certificates_rebuilt,
        routes.unlogged,
        routes.timeouts
    );
    println!(
        "| endpoint change → live (`apply` returned → answer from the new echo), {} changes | **{}** |",
        endpoints.latencies.len(),
        spread(&endpoints.latencies)
    );
    println!(
        "| endpoint changes: `Controller::apply` (log `elapsed_us`) | {} |",
        spread_us(&endpoints.elapsed_us)
    );
    println!(
        "| endpoint changes: `apply` returned → `Controller::apply` began | {} |",
        spread(&endpoints.before_apply)
    );
    println!(
        "| endpoint changes: `Controller::apply` began → live | {} |",
        spread(&endpoints.apply_to_live)
    );
    println!(
        "| endpoint changes: publishes logged / **recompiled routes** / rebuilt endpoints / rebuilt certificates / changes without a log line | {} / **{}** / {} / {} / {} |",
        endpoints.publishes,
        endpoints.routes_recompiled,
        endpoints.endpoints_rebuilt,
        endpoints.certificates_rebuilt,
        endpoints.unlogged
    );
    println!(
        "| kingress CPU during the route / endpoint changes | {cpu_routes:.2} s / {cpu_endpoints:.2} s ({:.1} s wall for both series) |",
        changes_took.as_secs_f64()
    );
    println!(
        "| polls sent (route / endpoint changes) | {} / {} (pause between polls: {} µs) |",
        routes.polls, endpoints.polls, opts.poll_us
    );
    println!(
        "| `/debug/config`: servers / paths / backends / endpoints / diagnostics | {} / {} / {} / {} / {} ({:.1} MB, {}) |",
        served.servers,
        served.paths,
        served.backends,
        served.endpoints,
        served.diagnostics,
        served.bytes as f64 / 1e6,
        ms(served.took)
    );
    println!(
        "| VmRSS / VmHWM after `/debug/config` | {} / {} |",
        mib(rss_after_debug),
        mib(hwm_after_debug)
    );
    println!(
        "| load average before kingress started / before the changes / at the end | {load_before} / {load_changes} / {} |",
        loadavg()
    );
    println!("| kingress CPU after the settle (startup included) | {cpu_settled:.2} s |");
    if !log.warnings.is_empty() {
        println!(
            "\nkingress logged {} warnings or errors; the first ones:\n",
            log.warnings.len()
        );
        for w in log.warnings.iter().take(5) {
            println!("    {w}");
        }
    }
    println!("\nlogs: {}", work.display());
    Ok(())
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    // The client side (polls, log, processes) on this thread; the fake API server on a
    // runtime of its own with one worker thread.
    let runtimes = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| {
            let api_rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("fake-apiserver")
                .enable_all()
                .build()?;
            Ok((rt, api_rt))
        });
    let (rt, api_rt) = match runtimes {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kube-scale: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C drops `run`, and with it every child process guard (each stops its child).
    let result = rt.block_on(async {
        tokio::select! {
            r = run(opts, api_rt.handle().clone()) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    api_rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-scale: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<u64> = (1..=200).collect();
        assert_eq!(pct(&s, 50.0), 100);
        assert_eq!(pct(&s, 99.0), 198);
        assert_eq!(pct(&s, 100.0), 200);
        assert_eq!(pct(&s, 0.0), 1);
        assert_eq!(pct::<u64>(&[], 50.0), 0);
    }

    #[test]
    fn log_timestamps_parse_to_unix_micros() {
        assert_eq!(rfc3339_unix_us("1970-01-01T00:00:00.000001Z"), Some(1));
        assert_eq!(
            rfc3339_unix_us("2026-11-21T18:19:04.653362Z"),
            Some(1_795_285_144_653_362)
        );
        assert_eq!(rfc3339_unix_us("2000-03-01T00:00:00Z"), Some(951_868_800_000_000));
        assert_eq!(rfc3339_unix_us("2026-11-21T18:19:04.5Z"), Some(1_795_285_144_500_000));
        assert_eq!(rfc3339_unix_us("garbage"), None);
    }

    #[test]
    fn pod_ips_are_distinct() {
        let ips: std::collections::BTreeSet<String> = (0..200_000).map(pod_ip).collect();
        assert_eq!(ips.len(), 200_000);
    }

    #[test]
    fn objects_have_the_shapes_kingress_reads() {
        let i = web_ingress(8);
        assert_eq!(i["metadata"]["namespace"], "team-08");
        assert_eq!(i["spec"]["rules"][0]["host"], "h8.bench");
        assert_eq!(i["spec"]["rules"][0]["http"]["paths"].as_array().unwrap().len(), 2);
        assert_eq!(
            i["metadata"]["annotations"]["nginx.ingress.kubernetes.io/load-balance"],
            "ewma"
        );
        let s = endpoint_slice("web-00008-1", "team-08", "web-00008", 8080, &[pod_ip(3)], 3);
        assert_eq!(s["metadata"]["labels"]["kubernetes.io/service-name"], "web-00008");
        assert_eq!(s["ports"][0]["name"], "http");
        assert_eq!(s["endpoints"][0]["addresses"][0], "10.64.0.3");
        let l = live_ingress(Some("/p3"));
        assert_eq!(l["spec"]["rules"][0]["http"]["paths"][1]["path"], "/p3");
    }
}
