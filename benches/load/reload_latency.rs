//! Change-to-live latency of a manifest edit: how long after an Ingress file is written
//! in the watched folder does kingress serve the new path?
//!
//! Against a running `kingress run --manifests DIR`, repeatedly (200 times by default):
//! 1. checks that `GET /r<k>` with `Host: <host>` answers 404 (the path is not live);
//! 2. writes `DIR/<file>` with an Ingress for `<host>` whose only path is `/r<k>` (Exact),
//!    to `<service>` port `<port>`, and takes the time just before the write;
//! 3. polls `GET /r<k>` on the HTTP listener every `--poll-us` microseconds (a fresh
//!    connection each time) until it answers 200, and records write-to-200.
//!
//! Then prints min, p50, p90, p99 and max (nearest rank). The Service must exist and have
//! a ready endpoint (benches/load/run.sh sets that up); nothing but `--http` (which must
//! be a loopback address) is ever contacted.
//!
//! ```text
//! cargo run --release -p kingress-benches --bin reload-latency -- \
//!     --manifests DIR --http 127.0.0.1:18080 [--iterations 200] [--host reload.local] \
//!     [--service echo] [--port 80] [--file reload-bench.yaml] [--poll-us 1000]
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

struct Args {
    manifests: PathBuf,
    http: SocketAddr,
    iterations: usize,
    host: String,
    service: String,
    port: u16,
    file: String,
    poll: Duration,
    timeout: Duration,
}

fn usage() -> String {
    "usage: reload-latency --manifests DIR --http 127.0.0.1:PORT [--iterations N] [--host H] \
     [--service S] [--port P] [--file NAME.yaml] [--poll-us US] [--timeout-ms MS]"
        .to_string()
}

fn parse_args() -> Result<Args, String> {
    let mut manifests = None;
    let mut http = None;
    let mut args = Args {
        manifests: PathBuf::new(),
        http: SocketAddr::from(([127, 0, 0, 1], 0)),
        iterations: 200,
        host: "reload.local".into(),
        service: "echo".into(),
        port: 80,
        file: "reload-bench.yaml".into(),
        poll: Duration::from_millis(1),
        timeout: Duration::from_secs(5),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(usage());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value\n{}", usage()))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value:?}: {e}");
        match flag.as_str() {
            "--manifests" => manifests = Some(PathBuf::from(&value)),
            "--http" => http = Some(value.parse::<SocketAddr>().map_err(|e| bad(&e))?),
            "--iterations" => args.iterations = value.parse().map_err(|e| bad(&e))?,
            "--host" => args.host = value,
            "--service" => args.service = value,
            "--port" => args.port = value.parse().map_err(|e| bad(&e))?,
            "--file" => args.file = value,
            "--poll-us" => args.poll = Duration::from_micros(value.parse().map_err(|e| bad(&e))?),
            "--timeout-ms" => args.timeout = Duration::from_millis(value.parse().map_err(|e| bad(&e))?),
            _ => return Err(format!("unknown flag {flag}\n{}", usage())),
        }
    }
    args.manifests = manifests.ok_or_else(|| format!("--manifests is required\n{}", usage()))?;
    args.http = http.ok_or_else(|| format!("--http is required\n{}", usage()))?;
    if !args.http.ip().is_loopback() {
        return Err(format!("--http {} is not a loopback address", args.http));
    }
    if args.iterations == 0 {
        return Err("--iterations must be at least 1".into());
    }
    Ok(args)
}

/// The status code of `GET path` with `Host: host`, on a fresh connection.
fn status(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::with_capacity(1024);
    stream.read_to_end(&mut response)?;
    let head = std::str::from_utf8(response.get(..12).unwrap_or_default()).unwrap_or_default();
    head.strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))
}

fn manifest(args: &Args, k: usize) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\n\
         kind: Ingress\n\
         metadata:\n  name: reload-bench\n  namespace: default\n\
         spec:\n  ingressClassName: kingress\n  rules:\n  - host: {host}\n    http:\n      paths:\n\
         \x20     - path: /r{k}\n        pathType: Exact\n        backend:\n\
         \x20         service: {{name: {service}, port: {{number: {port}}}}}\n",
        host = args.host,
        service = args.service,
        port = args.port,
    )
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn run(args: &Args) -> Result<(), String> {
    // The first measured write creates (or replaces) the file.
    let file = args.manifests.join(&args.file);
    let mut samples = Vec::with_capacity(args.iterations);
    let mut polls = 0u64;
    let started = Instant::now();
    // A run-unique offset, so paths of an earlier run (left in the file) are never live.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() % 100_000 * 1_000)
        .unwrap_or(0) as usize;
    for i in 0..args.iterations {
        let k = base + i;
        let path = format!("/r{k}");
        let before = status(args.http, &args.host, &path).map_err(|e| format!("GET {path} before the edit: {e}"))?;
        if before == 200 {
            return Err(format!(
                "{path} answers 200 before the edit; the measurement would be wrong"
            ));
        }
        let body = manifest(args, k);
        let written = Instant::now();
        std::fs::write(&file, body).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        loop {
            polls += 1;
            if matches!(status(args.http, &args.host, &path), Ok(200)) {
                break;
            }
            if written.elapsed() > args.timeout {
                return Err(format!("{path} not live {} after the write", ms(args.timeout)));
            }
            std::thread::sleep(args.poll);
        }
        samples.push(written.elapsed());
        // Let the watcher settle so every write is measured on its own.
        std::thread::sleep(Duration::from_millis(20));
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "change-to-live over {} edits of {} ({} polls, {:.1} s):",
        samples.len(),
        file.display(),
        polls,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  min {}  p50 {}  p90 {}  p99 {}  max {}  mean {}",
        ms(percentile(&samples, 0.0)),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 90.0)),
        ms(percentile(&samples, 99.0)),
        ms(percentile(&samples, 100.0)),
        ms(mean),
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reload-latency: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(100));
        assert_eq!(percentile(&s, 99.0), Duration::from_millis(198));
        assert_eq!(percentile(&s, 100.0), Duration::from_millis(200));
        assert_eq!(percentile(&s, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn manifest_is_an_ingress_for_the_new_path() {
        let args = Args {
            manifests: PathBuf::from("/tmp"),
            http: SocketAddr::from(([127, 0, 0, 1], 1)),
            iterations: 1,
            host: "reload.local".into(),
            service: "echo".into(),
            port: 80,
            file: "x.yaml".into(),
            poll: Duration::from_millis(1),
            timeout: Duration::from_secs(1),
        };
        let m = manifest(&args, 7);
        assert!(m.contains("  - host: reload.local\n"), "{m}");
        assert!(m.contains("      - path: /r7\n        pathType: Exact\n"), "{m}");
        assert!(
            m.contains("          service: {name: echo, port: {number: 80}}\n"),
            "{m}"
        );
    }
}
