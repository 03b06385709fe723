//! One TCP connection through an L4 port, and the pieces SSL passthrough reuses.
//!
//! - [`connect_endpoint`]: round-robin over the backend's endpoints, each connect bounded
//!   by the connect timeout, a failed one counted against its endpoint (passive ejection)
//!   and the next endpoint tried, up to the configured tries.
//! - [`relay`]: bytes both ways until both directions end. On Linux the bytes go
//!   socket → pipe → socket with splice(2) and never enter our memory, once a direction
//!   has moved [`COPY_FIRST`] bytes: before that (and where a pipe cannot be made) they
//!   are copied through a userspace buffer, so that a short connection makes no pipe. An EOF from one side becomes a
//!   shutdown(Write) on the other (half-close) while the other direction keeps flowing; a
//!   reset or error on either side resets both (SO_LINGER 0); no byte either way for the
//!   idle timeout closes both.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kingress_balance::{InFlight, Pick, Strategy};
use kingress_model::{BackendId, L4Port, L4Route};
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::L4Settings;
use crate::proxy_protocol;
use crate::state::Tables;

/// The most one splice or read moves at a time.
const CHUNK: usize = 64 * 1024;
/// The pipe size asked for (the kernel may refuse; the default 64 KiB is then used).
const PIPE_SIZE: i32 = 256 * 1024;
/// What a direction copies through userspace before it makes its splice pipe: a short
/// connection (a request and its answer) then costs no pipe2, fcntl or close.
pub const COPY_FIRST: u64 = 64 * 1024;
/// The buffer of one read while a direction copies before splicing.
const COPY_FIRST_CHUNK: usize = 16 * 1024;

/// TCP keepalive on both sides of a relayed connection: probes after 60 s of silence,
/// every 10 s, 6 of them (a dead peer is found in about two minutes).
fn keepalive() -> TcpKeepalive {
    let k = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "freebsd"
    ))]
    let k = k.with_retries(6);
    k
}

/// TCP_NODELAY and keepalive. Failures are ignored: the connection works without them.
pub fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive());
}

/// TCP_NODELAY and keepalive on a listening socket: Linux copies both into every
/// accepted socket, so an accepted connection needs no setsockopt of its own. Failures
/// are ignored, as in [`tune`].
pub fn tune_listener(socket: &socket2::Socket) {
    let _ = socket.set_tcp_nodelay(true);
    let _ = socket.set_tcp_keepalive(&keepalive());
}

/// Makes the close of `stream` send a RST instead of a FIN (SO_LINGER 0).
pub fn reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// A connected endpoint, counted in flight on its endpoint until dropped.
#[derive(Debug)]
pub struct Upstream {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// Counts this connection in the endpoint's in-flight load (/debug/config, EWMA) until
    /// dropped: keep it for as long as the connection is relayed.
    pub in_flight: InFlight,
}

/// Why no endpoint could be connected.
#[derive(Debug)]
pub enum ConnectError {
    /// The backend is not in the endpoint table (its Service or port does not exist).
    UnknownBackend(BackendId),
    /// The backend has no ready endpoint (or every one was tried).
    NoEndpoint(BackendId),
    /// Every try failed; the last failure.
    Failed {
        backend: BackendId,
        tries: u32,
        last: io::Error,
    },
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::UnknownBackend(b) => write!(f, "backend {b} is unknown"),
            ConnectError::NoEndpoint(b) => write!(f, "backend {b} has no ready endpoint"),
            ConnectError::Failed { backend, tries, last } => {
                write!(
                    f,
                    "{tries} connect tries to backend {backend} failed, the last with: {last}"
                )
            }
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Failed { last, .. } => Some(last),
            _ => None,
        }
    }
}

/// Connects to an endpoint of `backend`, chosen round-robin from the current endpoint
/// table. A connect that fails or takes longer than `settings.connect_timeout` counts as a
/// failure of that endpoint (passive ejection) and the next endpoint is tried, up to
/// `settings.connect_tries` endpoints. The returned stream has TCP_NODELAY and keepalive
/// set; the endpoint's failure streak is ended.
pub async fn connect_endpoint(
    tables: &Tables,
    backend: &BackendId,
    settings: &L4Settings,
) -> Result<Upstream, ConnectError> {
    let endpoints = tables.endpoints();
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last: Option<io::Error> = None;
    let tries = settings.connect_tries.max(1);
    for _ in 0..tries {
        let pick = {
            let mut rng = rand::thread_rng();
            endpoints.pick(backend, Strategy::RoundRobin, &tried, tables.now(), &mut rng)
        };
        let chosen = match pick {
            Pick::Endpoint(chosen) => chosen,
            Pick::UnknownBackend => return Err(ConnectError::UnknownBackend(backend.clone())),
            Pick::NoEndpoint => break,
        };
        let in_flight = chosen.stats.begin();
        let result = match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(chosen.addr)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {:?}", settings.connect_timeout),
            )),
        };
        match result {
            Ok(stream) => {
                chosen.stats.record_success();
                tune(&stream);
                return Ok(Upstream {
                    stream,
                    addr: chosen.addr,
                    in_flight,
                });
            }
            Err(e) => {
                let ejected = chosen.stats.record_failure(tables.now(), endpoints.health());
                debug!(backend = %backend, endpoint = %chosen.addr, error = %e, ejected, "L4 connect failed");
                tried.push(chosen.addr);
                last = Some(e);
            }
        }
    }
    match last {
        Some(last) => Err(ConnectError::Failed {
            backend: backend.clone(),
            tries: u32::try_from(tried.len()).unwrap_or(u32::MAX),
            last,
        }),
        None => Err(ConnectError::NoEndpoint(backend.clone())),
    }
}

/// When a relay last moved a byte, for its idle timeout.
struct Activity {
    start: Instant,
    /// Milliseconds since `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    async fn idle(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Relays bytes between `client` and `upstream` until both directions have ended, and
/// returns the bytes moved (client → upstream, upstream → client).
///
/// - An EOF from one side shuts down the other side's write half (half-close); the other
///   direction keeps flowing until its own EOF.
/// - An error on either side (a reset, a write to a closed peer) resets both (SO_LINGER
///   0, so the peer gets a RST) and is returned.
/// - No byte either way for `idle` closes both (FIN) and returns an error of kind
///   `TimedOut`.
///
/// Each direction copies its first [`COPY_FIRST`] bytes through a small userspace
/// buffer, then splices through a pipe of its own (zero copy in userspace); where a pipe
/// cannot be made, it keeps copying with a 64 KiB buffer.
pub async fn relay(client: TcpStream, upstream: TcpStream, idle: Duration) -> io::Result<(u64, u64)> {
    relay_with(client, upstream, idle, RelayMode::Splice).await
}

/// How [`relay`] moves bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RelayMode {
    /// splice(2) through a pipe per direction, made once the direction has moved
    /// [`COPY_FIRST`] bytes (copied before that): the bytes stay in the kernel. Falls
    /// back to `Copy` where a pipe cannot be made.
    #[default]
    Splice,
    /// A 64 KiB userspace buffer per direction.
    Copy,
}

/// [`relay`] with the byte-moving mode chosen.
pub async fn relay_with(
    client: TcpStream,
    upstream: TcpStream,
    idle: Duration,
    mode: RelayMode,
) -> io::Result<(u64, u64)> {
    let activity = Activity::new();
    let result = {
        let both = async {
            tokio::try_join!(
                pump(&client, &upstream, &activity, mode),
                pump(&upstream, &client, &activity, mode)
            )
        };
        tokio::select! {
            r = both => r,
            () = activity.idle(idle) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("no traffic for {idle:?}"))),
        }
    };
    if let Err(e) = &result
        && e.kind() != io::ErrorKind::TimedOut
    {
        reset_on_close(&client);
        reset_on_close(&upstream);
    }
    result
}

/// One direction: `src` to `dst` until EOF (then `dst` is shut down for writing).
async fn pump(src: &TcpStream, dst: &TcpStream, activity: &Activity, mode: RelayMode) -> io::Result<u64> {
    let moved = match mode {
        RelayMode::Splice => {
            match copy(src, dst, activity, Some(COPY_FIRST), COPY_FIRST_CHUNK).await? {
                // EOF before the threshold: no pipe was ever needed.
                (n, true) => n,
                (n, false) => match pipe() {
                    Some((rd, wr, capacity)) => n + pump_splice(src, dst, &rd, &wr, capacity, activity).await?,
                    None => n + copy(src, dst, activity, None, CHUNK).await?.0,
                },
            }
        }
        RelayMode::Copy => copy(src, dst, activity, None, CHUNK).await?.0,
    };
    match SockRef::from(dst).shutdown(std::net::Shutdown::Write) {
        // The peer may already be gone entirely; the other direction will tell.
        Ok(()) | Err(_) => Ok(moved),
    }
}

/// A non-blocking pipe for splice, as large as the kernel allows up to [`PIPE_SIZE`],
/// and its capacity (what one splice may move).
fn pipe() -> Option<(OwnedFd, OwnedFd, usize)> {
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).ok()?;
    // F_SETPIPE_SZ returns the size set; only if it fails is the size asked.
    let capacity = nix::fcntl::fcntl(&wr, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE))
        .or_else(|_| nix::fcntl::fcntl(&wr, FcntlArg::F_GETPIPE_SZ))
        .ok()
        .and_then(|c| usize::try_from(c).ok())
        .filter(|c| *c > 0)
        .unwrap_or(CHUNK);
    Some((rd, wr, capacity))
}

async fn pump_splice(
    src: &TcpStream,
    dst: &TcpStream,
    pipe_rd: &OwnedFd,
    pipe_wr: &OwnedFd,
    capacity: usize,
    activity: &Activity,
) -> io::Result<u64> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total: u64 = 0;
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket has nothing to read.
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                nix::fcntl::splice(src.as_fd(), None, pipe_wr.as_fd(), None, capacity, flags).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Ok(total);
        }
        activity.touch();
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                nix::fcntl::splice(pipe_rd.as_fd(), None, dst.as_fd(), None, left, flags).map_err(io::Error::from)
            }) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(m) => {
                    left = left.saturating_sub(m);
                    total += m as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        activity.touch();
    }
}

/// Copies `src` to `dst` through a userspace buffer of `chunk` bytes until `limit` bytes
/// have moved (`None`: no limit) or `src` ends; returns the bytes moved and whether `src`
/// ended. The buffer is allocated per read, once the socket is readable, so a connection
/// waiting for bytes holds none.
async fn copy(
    src: &TcpStream,
    dst: &TcpStream,
    activity: &Activity,
    limit: Option<u64>,
    chunk: usize,
) -> io::Result<(u64, bool)> {
    let mut total: u64 = 0;
    while limit.is_none_or(|l| total < l) {
        let mut buf: Vec<u8> = Vec::new();
        let n = loop {
            src.readable().await?;
            if buf.capacity() == 0 {
                buf.reserve_exact(chunk);
            }
            match src.try_read_buf(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Ok((total, true));
        }
        activity.touch();
        let mut data = buf.get(..n).unwrap_or_default();
        while !data.is_empty() {
            dst.writable().await?;
            match dst.try_write(data) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(m) => {
                    data = data.get(m..).unwrap_or_default();
                    total += m as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        activity.touch();
    }
    Ok((total, false))
}

/// What a TCP connection on an L4 port needs besides its socket.
pub(crate) struct ConnContext {
    pub tables: Arc<Tables>,
    pub settings: Arc<L4Settings>,
    pub port: L4Port,
}

/// Serves one accepted connection: route, PROXY in, connect, PROXY out, relay.
///
/// The client socket is not tuned here: it inherits TCP_NODELAY and keepalive from its
/// listener ([`tune_listener`]).
pub(crate) async fn serve(ctx: &ConnContext, mut client: TcpStream, peer: SocketAddr) {
    // The route of the generation current at accept time.
    let Some(route): Option<Arc<L4Route>> = ctx.tables.l4().port(&ctx.port).cloned() else {
        debug!(port = %ctx.port, %peer, "L4 port no longer in the table; closing");
        return;
    };
    let mut source = peer;
    let mut early: Vec<u8> = Vec::new();
    if route.accept_proxy {
        match proxy_protocol::read_header(&mut client, ctx.settings.proxy_header_timeout).await {
            Ok(header) => {
                if let Some(s) = header.source {
                    source = s;
                }
                early = header.rest;
            }
            Err(e) => {
                debug!(port = %ctx.port, %peer, error = %e, "bad PROXY header; closing");
                return;
            }
        }
    }
    let upstream = match connect_endpoint(&ctx.tables, &route.backend, &ctx.settings).await {
        Ok(u) => u,
        Err(e) => {
            debug!(port = %ctx.port, %peer, error = %e, "no endpoint; resetting the client");
            reset_on_close(&client);
            return;
        }
    };
    let Upstream {
        stream: mut up,
        addr,
        in_flight,
    } = upstream;
    let mut preface = match route.send_proxy {
        Some(version) => {
            let local = client.local_addr().unwrap_or(peer);
            proxy_protocol::encode(version, source, local)
        }
        None => Vec::new(),
    };
    preface.extend_from_slice(&early);
    if !preface.is_empty()
        && let Err(e) = up.write_all(&preface).await
    {
        debug!(port = %ctx.port, %peer, endpoint = %addr, error = %e, "writing to the endpoint failed");
        reset_on_close(&client);
        return;
    }
    match relay_with(client, up, ctx.settings.idle_timeout, ctx.settings.relay).await {
        Ok((sent, received)) => {
            debug!(port = %ctx.port, client = %source, endpoint = %addr, sent, received, "L4 connection done")
        }
        Err(e) => debug!(port = %ctx.port, client = %source, endpoint = %addr, error = %e, "L4 connection ended"),
    }
    drop(in_flight);
}
