//! TCP throughput and new connections per second through an L4 port (issue 6), or
//! straight to the backend, on loopback only. One binary, four modes:
//!
//! - `backend --listen ADDR`: the sink/source backend. The first byte a connection sends
//!   says what it wants. `C` (connection-rate probe): the backend answers one byte `R` and
//!   closes (so the TIME_WAIT lands on the server side, never on the client's ephemeral
//!   ports). Anything else (`T` for the throughput client): the backend discards
//!   everything it reads, 256 KiB at a time, and at EOF (the client's half-close) writes
//!   the byte count it received as 8 bytes big-endian and closes.
//! - `throughput --target ADDR --streams N --bytes B`: N connections in parallel, each
//!   sends B bytes (256 KiB writes of one buffer that starts with `T`), half-closes, and reads the
//!   backend's count, which must equal B (else it is an error). The wall time runs from
//!   before the first connect to the last count received, so it holds every byte's trip
//!   through the proxy; GB/s = N x B / wall time (GB = 10^9 bytes). Per stream: its own
//!   time and rate (min/mean/max).
//! - `connrate --target ADDR --concurrency C --duration-secs S`: C tasks each loop: TCP
//!   connect, write `C`, read one byte, then read to the backend's close and drop the
//!   socket. For `--warmup-secs` (1) nothing is counted; then for S seconds every attempt
//!   that finishes is counted: connections/s, p50/p90/p99/max of connect + one-byte round
//!   trip (the wait for the close is not in it), and errors by kind.
//! - `check --target ADDR`: one connection-rate probe; exit status 0 when it worked (for
//!   the harness to poll a port until it forwards).
//!
//! Each mode that measures ends with one `RESULT key=value ...` line for scripts.
//!
//! ```text
//! target/release/l4-load backend --listen 127.0.0.1:18701
//! target/release/l4-load throughput --target 127.0.0.1:18710 --streams 8 --bytes 536870912
//! target/release/l4-load connrate --target 127.0.0.1:18710 --concurrency 32 --duration-secs 10
//! target/release/l4-load check --target 127.0.0.1:18710
//! ```
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Read and write buffer size, so that neither end is limited by small syscalls.
const BUF: usize = 256 * 1024;
/// A connection-rate attempt taking longer than this is an error.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence longer than this during a throughput stream is an error.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(
    name = "l4-load",
    about = "TCP throughput and new connections per second on loopback"
)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// The sink/source backend.
    Backend {
        /// Address to listen on (loopback only).
        #[arg(long)]
        listen: SocketAddr,
    },
    /// N parallel connections, each sending B bytes and half-closing.
    Throughput {
        /// Where to connect (loopback only).
        #[arg(long)]
        target: SocketAddr,
        /// Parallel connections.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Bytes each connection sends.
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
    },
    /// Connect, one byte each way, close: as many as possible.
    Connrate {
        /// Where to connect (loopback only).
        #[arg(long)]
        target: SocketAddr,
        /// Concurrent connection loops.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Seconds of load before the measured window (not counted).
        #[arg(long, default_value_t = 1)]
        warmup_secs: u64,
    },
    /// One connection-rate probe; exit 0 if it worked.
    Check {
        /// Where to connect (loopback only).
        #[arg(long)]
        target: SocketAddr,
    },
}

fn loopback(addr: SocketAddr, what: &str) -> Result<()> {
    if !addr.ip().is_loopback() {
        bail!("{what} must be a loopback address, not {addr}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match args.mode {
            Mode::Backend { listen } => {
                loopback(listen, "--listen")?;
                backend(listen).await
            }
            Mode::Throughput { target, streams, bytes } => {
                loopback(target, "--target")?;
                if streams == 0 || bytes == 0 {
                    bail!("--streams and --bytes must be positive");
                }
                throughput(target, streams, bytes).await
            }
            Mode::Connrate {
                target,
                concurrency,
                duration_secs,
                warmup_secs,
            } => {
                loopback(target, "--target")?;
                if concurrency == 0 || duration_secs == 0 {
                    bail!("--concurrency and --duration-secs must be positive");
                }
                connrate(target, concurrency, duration_secs, warmup_secs).await
            }
            Mode::Check { target } => {
                loopback(target, "--target")?;
                tokio::time::timeout(Duration::from_secs(2), probe(target))
                    .await
                    .context("timed out")??;
                Ok(())
            }
        }
    })
}

// --- backend -----------------------------------------------------------------------------

async fn backend(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    eprintln!("l4-load backend listening on {listen}");
    loop {
        let (conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: say so, back off a little, keep serving.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if let Err(e) = serve(conn).await {
                eprintln!("connection: {e:#}");
            }
        });
    }
}

async fn serve(mut conn: TcpStream) -> Result<()> {
    let mut buf = vec![0u8; BUF];
    let n = conn.read(&mut buf).await.context("first read")?;
    if n == 0 {
        return Ok(());
    }
    if buf[0] == b'C' {
        conn.set_nodelay(true)?;
        conn.write_all(b"R").await.context("reply")?;
        // Dropping closes: the backend is the first to close.
        return Ok(());
    }
    let mut total = n as u64;
    loop {
        let n = conn.read(&mut buf).await.context("read")?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    conn.write_all(&total.to_be_bytes()).await.context("count")?;
    conn.shutdown().await.context("shutdown")?;
    Ok(())
}

// --- throughput --------------------------------------------------------------------------

async fn stream(target: SocketAddr, bytes: u64) -> Result<Duration> {
    let start = Instant::now();
    let mut conn = TcpStream::connect(target).await.context("connect")?;
    let mut buf = vec![0u8; BUF];
    buf[0] = b'T';
    // Only the connection's first byte matters to the backend; every chunk starts with it.
    let mut left = bytes;
    while left > 0 {
        let chunk = left.min(BUF as u64) as usize;
        tokio::time::timeout(STALL_TIMEOUT, conn.write_all(&buf[..chunk]))
            .await
            .context("write stalled")?
            .context("write")?;
        left -= chunk as u64;
    }
    conn.shutdown().await.context("half-close")?;
    let mut ack = [0u8; 8];
    tokio::time::timeout(STALL_TIMEOUT, conn.read_exact(&mut ack))
        .await
        .context("no byte count from the backend")?
        .context("reading the byte count")?;
    let got = u64::from_be_bytes(ack);
    if got != bytes {
        bail!("the backend received {got} bytes of {bytes}");
    }
    Ok(start.elapsed())
}

async fn throughput(target: SocketAddr, streams: usize, bytes: u64) -> Result<()> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..streams).map(|_| tokio::spawn(stream(target, bytes))).collect();
    let mut times = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        match t.await {
            Ok(Ok(d)) => times.push(d),
            Ok(Err(e)) => *errors.entry(format!("{e:#}")).or_default() += 1,
            Err(e) => *errors.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let done = times.len() as u64 * bytes;
    let gbps = done as f64 / wall / 1e9;
    println!(
        "{streams} stream(s) x {bytes} bytes to {target}: {done} bytes acknowledged in {wall:.3} s = {gbps:.3} GB/s ({:.2} Gbit/s)",
        gbps * 8.0
    );
    let rates: Vec<f64> = times.iter().map(|d| bytes as f64 / d.as_secs_f64() / 1e9).collect();
    let (min, max) = rates
        .iter()
        .fold((f64::INFINITY, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    let mean = if rates.is_empty() {
        0.0
    } else {
        rates.iter().sum::<f64>() / rates.len() as f64
    };
    if !rates.is_empty() {
        println!("per stream GB/s: min {min:.3} mean {mean:.3} max {max:.3}");
    }
    let error_count: u64 = errors.values().sum();
    for (e, n) in &errors {
        println!("error x{n}: {e}");
    }
    println!(
        "RESULT mode=throughput streams={streams} bytes={done} secs={wall:.3} gbps={gbps:.3} stream_min={min:.3} stream_mean={mean:.3} stream_max={max:.3} errors={error_count}"
    );
    Ok(())
}

// --- connection rate ---------------------------------------------------------------------

/// Connect, `C`, one byte back; returns that latency, then waits for the backend's close.
async fn probe(target: SocketAddr) -> Result<Duration> {
    let start = Instant::now();
    let mut conn = TcpStream::connect(target).await.context("connect")?;
    conn.set_nodelay(true).context("nodelay")?;
    conn.write_all(b"C").await.context("write")?;
    let mut b = [0u8; 1];
    conn.read_exact(&mut b).await.context("read")?;
    let latency = start.elapsed();
    if b[0] != b'R' {
        bail!("unexpected reply byte {}", b[0]);
    }
    // The backend closes first; reading its FIN keeps the TIME_WAIT off our ports.
    let mut rest = [0u8; 16];
    if conn.read(&mut rest).await.context("waiting for close")? != 0 {
        bail!("more than one byte in reply");
    }
    Ok(latency)
}

#[derive(Default)]
struct TaskStats {
    latencies_us: Vec<u64>,
    /// Attempts completed, warm-up included (for CPU per connection).
    all_done: u64,
    errors: BTreeMap<String, u64>,
}

async fn connrate(target: SocketAddr, concurrency: usize, duration_secs: u64, warmup_secs: u64) -> Result<()> {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(warmup_secs);
    let end = measure_from + Duration::from_secs(duration_secs);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TaskStats::default();
                loop {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    let r = tokio::time::timeout(ATTEMPT_TIMEOUT, probe(target)).await;
                    let finished = Instant::now();
                    let counted = finished >= measure_from && finished <= end;
                    match r {
                        Ok(Ok(lat)) => {
                            s.all_done += 1;
                            if counted {
                                s.latencies_us.push(lat.as_micros() as u64);
                            }
                        }
                        Ok(Err(e)) => {
                            if counted {
                                *s.errors.entry(format!("{e:#}")).or_default() += 1;
                            }
                            // A refused or reset connect: do not spin.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(_) => {
                            if counted {
                                *s.errors.entry("timeout".into()).or_default() += 1;
                            }
                        }
                    }
                }
                s
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut all_done = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        match t.await {
            Ok(s) => {
                lat.extend(s.latencies_us);
                all_done += s.all_done;
                for (k, v) in s.errors {
                    *errors.entry(k).or_default() += v;
                }
            }
            Err(e) => *errors.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let done = lat.len();
    let rate = done as f64 / duration_secs as f64;
    let error_count: u64 = errors.values().sum();
    println!(
        "{concurrency} loops for {duration_secs} s (after {warmup_secs} s warm-up) to {target}: {done} connections, {rate:.0}/s, {error_count} errors"
    );
    println!(
        "connect + 1-byte round trip ms: p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    for (e, n) in &errors {
        println!("error x{n}: {e}");
    }
    println!(
        "RESULT mode=connrate rate={rate:.1} done={done} all={all_done} errors={error_count} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
