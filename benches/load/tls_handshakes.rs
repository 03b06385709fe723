//! New TLS handshakes per second against one HTTPS listener on 127.0.0.1: every
//! connection is a full handshake (session resumption is disabled in the client).
//!
//! `--concurrency` tasks (32) each loop for `--warmup-secs` (1, not counted) plus
//! `--duration-secs` (10): TCP connect, a full TLS handshake with SNI `--sni`
//! (bench.local), ALPN http/1.1, and then, by `--mode`:
//!
//! - `handshake` (the default): send close_notify and wait for the server to close
//!   (reading to EOF, which also drains the TLS 1.3 session tickets the server sends);
//! - `request`: send `GET / HTTP/1.1`, `Host: SNI`, `Connection: close`, read the
//!   answer to EOF and count it as done only when its status is 200.
//!
//! The client is tokio + tokio-rustls with the ring provider, TLS 1.3 only (or 1.2 only
//! with `--tls12`), no resumption, and the server's certificate accepted without checks
//! (a custom verifier: the client costs nothing but its key exchange). A connection
//! counts when it completes inside the measured window. Latency is from the start of the
//! TCP connect to the end of the handshake (so a wait in the server's accept queue or
//! for a handshake slot is in it). It prints handshakes/s, errors, p50/p90/p99/max
//! latency and what was negotiated, then a `RESULT` line for scripts.
//!
//! `--gen-cert DIR` instead writes a self-signed ECDSA P-256 certificate for `--sni` to
//! `DIR/tls.crt` and `DIR/tls.key` (PKCS#8) and exits (tls.sh uses `openssl` when present).
//!
//! Only loopback addresses are accepted for `--connect`.
//!
//! ```text
//! target/release/tls-handshakes --connect 127.0.0.1:18443 [--sni bench.local]
//!     [--concurrency 32] [--duration-secs 10] [--warmup-secs 1] [--tls12] [--mode handshake|request]
//! target/release/tls-handshakes --gen-cert DIR [--sni bench.local]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// One attempt may take this long at most; then it is an error.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Handshake, then close_notify; wait for the server to close.
    Handshake,
    /// Handshake, then one `GET /` with `Connection: close`, read to EOF.
    Request,
}

#[derive(Parser, Debug)]
#[command(
    name = "tls-handshakes",
    about = "New TLS handshakes per second against a loopback HTTPS listener"
)]
struct Args {
    /// The HTTPS listener (loopback only).
    #[arg(long, required_unless_present = "gen_cert")]
    connect: Option<SocketAddr>,
    /// SNI name (and Host header in request mode).
    #[arg(long, default_value = "bench.local")]
    sni: String,
    /// Concurrent connection loops.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Seconds of load before the measured window (not counted).
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
    /// TLS 1.2 only (default: TLS 1.3 only).
    #[arg(long)]
    tls12: bool,
    #[arg(long, value_enum, default_value_t = Mode::Handshake)]
    mode: Mode,
    /// Write a self-signed ECDSA P-256 certificate for --sni to DIR/tls.crt and DIR/tls.key, and exit.
    #[arg(long, value_name = "DIR")]
    gen_cert: Option<PathBuf>,
}

fn connector(tls12: bool) -> Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(kingress_test_support::AcceptAnyServerCert))
        .with_no_client_auth();
    // Every connection is a full handshake.
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// What one connection negotiated (reported once).
struct Negotiated {
    version: String,
    suite: String,
    group: String,
    alpn: String,
    chain: usize,
}

struct Attempt {
    /// Connect start to handshake done.
    handshake: Duration,
    negotiated: Option<Negotiated>,
}

async fn attempt(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: &ServerName<'static>,
    request: Option<&[u8]>,
    describe: bool,
) -> Result<Attempt> {
    let start = Instant::now();
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true).context("nodelay")?;
    let mut tls = connector.connect(name.clone(), tcp).await.context("handshake")?;
    let handshake = start.elapsed();
    let negotiated = describe.then(|| {
        let c = tls.get_ref().1;
        Negotiated {
            version: c.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
            suite: c
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            group: c
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
                .unwrap_or_default(),
            alpn: c
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_else(|| "-".into()),
            chain: c.peer_certificates().map(<[_]>::len).unwrap_or(0),
        }
    });
    let mut buf = Vec::with_capacity(4096);
    match request {
        None => {
            // close_notify, then wait for the server's close (drains session tickets).
            tls.shutdown().await.context("close_notify")?;
            read_to_close(&mut tls, &mut buf)
                .await
                .context("waiting for the server's close")?;
        }
        Some(req) => {
            tls.write_all(req).await.context("write request")?;
            tls.flush().await.context("flush request")?;
            read_to_close(&mut tls, &mut buf).await.context("read response")?;
            let status = buf.get(9..12).map(|s| String::from_utf8_lossy(s).into_owned());
            if !buf.starts_with(b"HTTP/1.1 ") || status.as_deref() != Some("200") {
                bail!("status {}", status.unwrap_or_else(|| "(none)".into()));
            }
        }
    }
    Ok(Attempt { handshake, negotiated })
}

/// Reads until EOF. A peer that closes TCP without close_notify is EOF too.
async fn read_to_close<S: AsyncReadExt + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

#[derive(Default)]
struct TaskStats {
    /// Handshake latencies (µs) of attempts completed in the measured window.
    latencies_us: Vec<u64>,
    /// Completed attempts, warm-up included (for CPU per handshake).
    all_done: u64,
    errors: BTreeMap<String, u64>,
    negotiated: Option<Negotiated>,
}

fn gen_cert(dir: &std::path::Path, name: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()])?;
    std::fs::write(dir.join("tls.crt"), c.cert.pem())?;
    std::fs::write(dir.join("tls.key"), c.signing_key.serialize_pem())?;
    println!("wrote {0}/tls.crt and {0}/tls.key (ECDSA P-256, {name})", dir.display());
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.gen_cert {
        return gen_cert(dir, &args.sni);
    }
    let addr = args.connect.context("--connect is required")?;
    if !addr.ip().is_loopback() {
        bail!("--connect must be a loopback address, not {addr}");
    }
    let connector = connector(args.tls12)?;
    let name = ServerName::try_from(args.sni.clone())?;
    let request = format!("GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", args.sni).into_bytes();
    let mode = match args.mode {
        Mode::Handshake => "handshake only (then close_notify and wait for the server's close)",
        Mode::Request => "handshake + GET / (Connection: close) read to EOF",
    };
    let version = if args.tls12 { "TLS 1.2" } else { "TLS 1.3" };
    println!(
        "tls-handshakes: {addr}, SNI {}, {version}, no resumption, {mode}; {} tasks, {} s warm-up + {} s",
        args.sni, args.concurrency, args.warmup_secs, args.duration_secs
    );

    let t0 = Instant::now();
    let measure_from = t0 + Duration::from_secs(args.warmup_secs);
    let end = measure_from + Duration::from_secs(args.duration_secs);
    let mut tasks = Vec::new();
    for i in 0..args.concurrency.max(1) {
        let connector = connector.clone();
        let name = name.clone();
        let request = request.clone();
        let mode = args.mode;
        tasks.push(tokio::spawn(async move {
            let mut st = TaskStats::default();
            let mut describe = i == 0;
            while Instant::now() < end {
                let req = (mode == Mode::Request).then_some(request.as_slice());
                let r = tokio::time::timeout(ATTEMPT_TIMEOUT, attempt(&connector, addr, &name, req, describe)).await;
                let done = Instant::now();
                match r {
                    Ok(Ok(a)) => {
                        st.all_done += 1;
                        if a.negotiated.is_some() {
                            st.negotiated = a.negotiated;
                            describe = false;
                        }
                        if done >= measure_from && done <= end {
                            st.latencies_us.push(a.handshake.as_micros() as u64);
                        }
                    }
                    Ok(Err(e)) => {
                        if done >= measure_from && done <= end {
                            *st.errors.entry(format!("{e:#}")).or_default() += 1;
                        }
                    }
                    Err(_) => {
                        if done >= measure_from && done <= end {
                            *st.errors.entry("timed out".into()).or_default() += 1;
                        }
                    }
                }
            }
            st
        }));
    }
    let mut latencies = Vec::new();
    let mut all_done = 0u64;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut negotiated = None;
    for t in tasks {
        let st = t.await?;
        latencies.extend(st.latencies_us);
        all_done += st.all_done;
        for (k, v) in st.errors {
            *errors.entry(k).or_default() += v;
        }
        if negotiated.is_none() {
            negotiated = st.negotiated;
        }
    }
    latencies.sort_unstable();
    let secs = args.duration_secs.max(1) as f64;
    let done = latencies.len() as u64;
    let error_count: u64 = errors.values().sum();
    let rate = done as f64 / secs;
    if let Some(n) = &negotiated {
        println!(
            "negotiated: {} {} {}, ALPN {}, {} certificate(s) in the chain",
            n.version, n.suite, n.group, n.alpn, n.chain
        );
    }
    let (p50, p90, p99, max) = (
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
    println!(
        "{rate:.1} handshakes/s ({done} in {secs} s; {all_done} with the warm-up); errors {error_count}; \
         connect+handshake latency p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
    );
    for (e, n) in &errors {
        println!("  error x{n}: {e}");
    }
    let mode = match args.mode {
        Mode::Handshake => "handshake",
        Mode::Request => "request",
    };
    println!(
        "RESULT mode={mode} tls={} rate={rate:.1} done={done} all={all_done} errors={error_count} p50_ms={p50:.2} p90_ms={p90:.2} p99_ms={p99:.2} max_ms={max:.2}",
        if args.tls12 { "1.2" } else { "1.3" }
    );
    if done == 0 {
        bail!("no handshake completed");
    }
    Ok(())
}
