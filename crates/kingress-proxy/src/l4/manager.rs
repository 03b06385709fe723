//! [`L4Manager`]: the open L4 listeners, kept equal to the published [`L4Table`].
//!
//! [`L4Manager::apply`] reconciles synchronously (the controller calls it right after
//! publishing, before /readyz turns 200, so the ports present at start are open before
//! ready). A background task also applies on every L4 publish and, while some port
//! could not be bound, every bind-retry interval.
//!
//! A removed TCP port stops listening at once (the listening socket is shut down, so new
//! connections are refused); its open connections go on until they end or the drain
//! timeout, then are closed. A removed UDP port keeps its socket while its flows drain
//! (replies must come from it) but starts no new flow; if the port comes back meanwhile,
//! the same socket serves again.
//!
//! [`L4Table`]: kingress_model::L4Table

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use kingress_model::{Diagnostic, L4Port, L4Protocol, L4Route};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use super::L4Settings;
use super::tcp::{self, ConnContext};
use super::udp::UdpPort;
use crate::state::Tables;

/// Counters of one port (TCP connections or UDP flows).
#[derive(Debug, Default)]
pub(crate) struct PortCounters {
    /// Connections (flows) open now.
    pub open: AtomicUsize,
    /// Connections (flows) since the port was bound.
    pub total: AtomicU64,
    /// UDP: datagrams dropped (no endpoint, draining, send buffer full).
    pub dropped: AtomicU64,
    /// UDP: flows evicted because the flow table was full.
    pub evicted: AtomicU64,
}

/// What one port is doing, for /debug/config and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4PortStats {
    pub port: L4Port,
    pub local: SocketAddr,
    /// Removed from the table; its connections (flows) are finishing.
    pub draining: bool,
    /// Connections (TCP) or flows (UDP) open now.
    pub open: usize,
    /// Connections or flows since the port was bound.
    pub total: u64,
    /// UDP datagrams dropped (no endpoint, draining, send buffer full).
    pub dropped: u64,
    /// UDP flows evicted from a full flow table.
    pub evicted: u64,
}

struct TcpPort {
    listener: Arc<TcpListener>,
    local: SocketAddr,
    counters: Arc<PortCounters>,
    tracker: TaskTracker,
    /// Ends the accept loop.
    stop: CancellationToken,
    /// Ends the connections (drain deadline, shutdown).
    drain: CancellationToken,
}

enum Open {
    Tcp(TcpPort),
    Udp(Arc<UdpPort>),
}

impl Open {
    fn local(&self) -> SocketAddr {
        match self {
            Open::Tcp(t) => t.local,
            Open::Udp(u) => u.local,
        }
    }
}

/// A port that left the table and still has connections or flows.
struct Draining {
    port: L4Port,
    local: SocketAddr,
    counters: Arc<PortCounters>,
    tracker: TaskTracker,
}

#[derive(Default)]
struct State {
    open: BTreeMap<L4Port, Open>,
    /// Removed UDP ports still serving their flows: revived if the port comes back.
    draining_udp: HashMap<L4Port, Arc<UdpPort>>,
    /// Removed TCP ports with connections still open (pruned as they empty).
    draining_tcp: Vec<Draining>,
    /// Ports that could not be bound, with their diagnostics.
    failures: BTreeMap<L4Port, Diagnostic>,
    shut: bool,
}

/// Opens and closes the L4 ports to match the published table. See the module docs.
pub struct L4Manager {
    tables: Arc<Tables>,
    settings: Arc<L4Settings>,
    handle: Handle,
    state: Arc<Mutex<State>>,
    /// Ends the background task and the accept loops (shutdown).
    stop: CancellationToken,
    /// Parent of every port's drain token: cancelling it ends every connection and flow.
    hard_stop: CancellationToken,
    /// Every connection and flow task, for shutdown.
    tasks: TaskTracker,
}

impl std::fmt::Debug for L4Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L4Manager")
            .field("settings", &self.settings)
            .field("bound", &self.bound())
            .finish_non_exhaustive()
    }
}

impl L4Manager {
    /// Starts the manager on the current tokio runtime (it keeps a handle, so
    /// [`L4Manager::apply`] may later be called from any thread), applies the current table
    /// and starts the background task that applies every L4 publish and retries the ports
    /// that could not be bound.
    ///
    /// # Panics
    /// Outside a tokio runtime (a programming error, not an input).
    pub fn start(tables: Arc<Tables>, settings: L4Settings) -> Arc<L4Manager> {
        let handle = Handle::current();
        let manager = Arc::new(L4Manager {
            tables: tables.clone(),
            settings: Arc::new(settings),
            handle: handle.clone(),
            state: Arc::new(Mutex::new(State::default())),
            stop: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        // Subscribe before the first apply, so no publish falls between them.
        let changes = tables.l4_changes();
        manager.apply();
        handle.spawn(watch(Arc::downgrade(&manager), changes, manager.stop.clone()));
        manager
    }

    pub fn settings(&self) -> &L4Settings {
        &self.settings
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Reconciles the open ports with the current L4 table, synchronously: binds the new
    /// ports, closes the removed ones (their connections drain). Returns the diagnostics
    /// of every port that cannot be bound now (they are retried in the background).
    pub fn apply(&self) -> Vec<Diagnostic> {
        let table = self.tables.l4().clone();
        let mut state = self.state();
        if state.shut {
            return Vec::new();
        }
        let removed: Vec<L4Port> = state.open.keys().filter(|p| table.port(p).is_none()).copied().collect();
        for port in removed {
            if let Some(open) = state.open.remove(&port) {
                self.close(&mut state, port, open);
            }
        }
        state.failures.retain(|p, _| table.port(p).is_some());
        for (port, route) in table.ports() {
            if state.open.contains_key(port) {
                continue;
            }
            if let Some(udp) = state.draining_udp.remove(port) {
                udp.epoch.fetch_add(1, Ordering::AcqRel);
                udp.accepting.store(true, Ordering::Release);
                udp.tracker.reopen();
                info!(port = %port, local = %udp.local, "L4 port back in the table; serving again");
                state.open.insert(*port, Open::Udp(udp));
                continue;
            }
            match self.open(*port) {
                Ok(open) => {
                    info!(port = %port, local = %open.local(), backend = %route.backend, "L4 port open");
                    state.failures.remove(port);
                    state.open.insert(*port, open);
                }
                Err(e) => {
                    let diagnostic = self.bind_failure(*port, route, &e);
                    if state.failures.get(port) != Some(&diagnostic) {
                        warn!(port = %port, object = %route.source.object, error = %e, "L4 port cannot be bound; retrying");
                    }
                    state.failures.insert(*port, diagnostic);
                }
            }
        }
        state.failures.values().cloned().collect()
    }

    fn bind_failure(&self, port: L4Port, route: &L4Route, e: &io::Error) -> Diagnostic {
        Diagnostic::object(
            route.source.object.clone(),
            format!("port {port} on {} cannot be bound: {e}; retrying", self.settings.bind),
        )
    }

    /// The ports that are listening, with their local addresses (draining ones excluded).
    pub fn bound(&self) -> Vec<(L4Port, SocketAddr)> {
        self.state().open.iter().map(|(p, o)| (*p, o.local())).collect()
    }

    /// The ports that cannot be bound now, as diagnostics.
    pub fn failures(&self) -> Vec<Diagnostic> {
        self.state().failures.values().cloned().collect()
    }

    /// Every open and draining port, with its connection (flow) counts.
    pub fn stats(&self) -> Vec<L4PortStats> {
        let mut state = self.state();
        state
            .draining_tcp
            .retain(|d| !(d.tracker.is_closed() && d.tracker.is_empty()));
        let stat = |port: L4Port, local: SocketAddr, draining: bool, c: &PortCounters| L4PortStats {
            port,
            local,
            draining,
            open: c.open.load(Ordering::Relaxed),
            total: c.total.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
        };
        let mut out: Vec<L4PortStats> = state
            .open
            .iter()
            .map(|(p, o)| match o {
                Open::Tcp(t) => stat(*p, t.local, false, &t.counters),
                Open::Udp(u) => stat(*p, u.local, false, &u.counters),
            })
            .collect();
        out.extend(
            state
                .draining_tcp
                .iter()
                .map(|d| stat(d.port, d.local, true, &d.counters)),
        );
        out.extend(
            state
                .draining_udp
                .iter()
                .map(|(p, u)| stat(*p, u.local, true, &u.counters)),
        );
        out.sort_by_key(|s| (s.port, s.draining));
        out
    }

    /// Stops listening on every port, lets the connections and flows finish for up to
    /// `grace`, then closes what is left. Later applies do nothing.
    pub async fn shutdown(&self, grace: Duration) {
        {
            let mut state = self.state();
            state.shut = true;
            self.stop.cancel();
            let open = std::mem::take(&mut state.open);
            for (port, o) in open {
                self.close(&mut state, port, o);
            }
            state.failures.clear();
        }
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            info!(grace = ?grace, "L4 connections still open after the grace period; closing them");
        }
        self.hard_stop.cancel();
        self.tasks.wait().await;
        let mut state = self.state();
        state.draining_udp.clear();
        state.draining_tcp.clear();
    }

    /// Binds and starts serving one port.
    fn open(&self, port: L4Port) -> io::Result<Open> {
        let addr = SocketAddr::new(self.settings.bind, port.port);
        let _runtime = self.handle.enter();
        match port.protocol {
            L4Protocol::Tcp => {
                let listener = Arc::new(TcpListener::from_std(bind_tcp(addr)?)?);
                let local = listener.local_addr()?;
                let tcp = TcpPort {
                    listener: listener.clone(),
                    local,
                    counters: Arc::new(PortCounters::default()),
                    tracker: TaskTracker::new(),
                    stop: self.stop.child_token(),
                    drain: self.hard_stop.child_token(),
                };
                let ctx = Arc::new(ConnContext {
                    tables: self.tables.clone(),
                    settings: self.settings.clone(),
                    port,
                });
                self.handle.spawn(accept_loop(
                    ctx,
                    listener,
                    tcp.counters.clone(),
                    tcp.tracker.clone(),
                    self.tasks.clone(),
                    tcp.stop.clone(),
                    tcp.drain.clone(),
                ));
                Ok(Open::Tcp(tcp))
            }
            L4Protocol::Udp => {
                let socket = UdpSocket::from_std(bind_udp(addr)?)?;
                let udp = UdpPort::new(
                    port,
                    socket,
                    self.tables.clone(),
                    self.settings.clone(),
                    self.tasks.clone(),
                    self.hard_stop.child_token(),
                    self.stop.child_token(),
                )?;
                self.handle.spawn(udp.clone().run());
                Ok(Open::Udp(udp))
            }
        }
    }

    /// Stops a port taking new connections (flows) and lets its open ones drain.
    fn close(&self, state: &mut State, port: L4Port, open: Open) {
        let drain_timeout = self.settings.drain_timeout;
        match open {
            Open::Tcp(t) => {
                // Synchronous: the socket leaves LISTEN now, so new connections are
                // refused and the port can be bound again (SO_REUSEADDR) right away.
                let _ = SockRef::from(&*t.listener).shutdown(std::net::Shutdown::Read);
                t.stop.cancel();
                t.tracker.close();
                info!(port = %port, local = %t.local, open = t.counters.open.load(Ordering::Relaxed), "L4 port closed; draining");
                let tracker = t.tracker.clone();
                let drain = t.drain.clone();
                self.handle.spawn(async move {
                    if tokio::time::timeout(drain_timeout, tracker.wait()).await.is_err() {
                        info!(port = %port, "L4 drain timeout: closing the connections left");
                        drain.cancel();
                    }
                });
                state.draining_tcp.push(Draining {
                    port,
                    local: t.local,
                    counters: t.counters,
                    tracker: t.tracker,
                });
            }
            Open::Udp(u) => {
                u.accepting.store(false, Ordering::Release);
                let epoch = u.epoch.fetch_add(1, Ordering::AcqRel) + 1;
                u.tracker.close();
                info!(port = %port, local = %u.local, flows = u.flow_count(), "L4 port closed; draining");
                let shared = self.state.clone();
                let udp = u.clone();
                self.handle.spawn(async move {
                    let _ = tokio::time::timeout(drain_timeout, udp.tracker.wait()).await;
                    // Under the state lock, where a revival also happens.
                    let mut state = lock(&shared);
                    if udp.epoch.load(Ordering::Acquire) != epoch {
                        return; // revived (and maybe removed again since)
                    }
                    state.draining_udp.remove(&port);
                    udp.drain.cancel();
                    udp.stop.cancel();
                });
                state.draining_udp.insert(port, u);
            }
        }
    }
}

impl Drop for L4Manager {
    /// Dropping the manager closes every port and ends every connection and flow.
    fn drop(&mut self) {
        self.stop.cancel();
        self.hard_stop.cancel();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Applies every L4 publish, and retries unbound ports every bind-retry interval.
async fn watch(manager: Weak<L4Manager>, mut changes: tokio::sync::watch::Receiver<u64>, stop: CancellationToken) {
    loop {
        let (retry, interval) = match manager.upgrade() {
            Some(m) => (!lock(&m.state).failures.is_empty(), m.settings.bind_retry),
            None => return,
        };
        tokio::select! {
            () = stop.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(interval), if retry => {}
        }
        let Some(m) = manager.upgrade() else { return };
        // apply is synchronous and short (binds and spawns); run it off the reactor
        // thread anyway, as the controller would.
        let _ = tokio::task::spawn_blocking(move || m.apply()).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    ctx: Arc<ConnContext>,
    listener: Arc<TcpListener>,
    counters: Arc<PortCounters>,
    tracker: TaskTracker,
    tasks: TaskTracker,
    stop: CancellationToken,
    drain: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                counters.open.fetch_add(1, Ordering::Relaxed);
                counters.total.fetch_add(1, Ordering::Relaxed);
                let span = tracing::debug_span!("l4", port = %ctx.port, %peer);
                let ctx = ctx.clone();
                let counters = counters.clone();
                let drain = drain.clone();
                let task = async move {
                    tokio::select! {
                        () = tcp::serve(&ctx, stream, peer) => {}
                        () = drain.cancelled() => debug!(port = %ctx.port, %peer, "L4 connection closed by drain"),
                    }
                    counters.open.fetch_sub(1, Ordering::Relaxed);
                };
                tracker.spawn(tasks.track_future(task.instrument(span)));
            }
            Err(e) => {
                // EINVAL: the listening socket was shut down (the port was closed).
                if stop.is_cancelled() || e.raw_os_error() == Some(nix::errno::Errno::EINVAL as i32) {
                    break;
                }
                // Out of file descriptors and the like: do not spin.
                debug!(port = %ctx.port, error = %e, "L4 accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn bind_tcp(addr: SocketAddr) -> io::Result<StdTcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    dual_stack(&socket, addr.ip());
    socket.set_nonblocking(true)?;
    // Inherited by every accepted connection (see `tcp::serve`).
    tcp::tune_listener(&socket);
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn bind_udp(addr: SocketAddr) -> io::Result<StdUdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    dual_stack(&socket, addr.ip());
    // Room for bursts while the receive loop is busy; the kernel caps it.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// `::` serves IPv4 clients too, as ServiceLB does.
fn dual_stack(socket: &Socket, ip: IpAddr) {
    if let IpAddr::V6(v6) = ip
        && v6.is_unspecified()
    {
        let _ = socket.set_only_v6(false);
    }
}
