//! One UDP port: a flow per client address and port.
//!
//! The first datagram from a client starts its flow: an endpoint is picked round-robin
//! from the current endpoint table and the flow gets its own UDP socket connected to it.
//! The flow's task returns every reply through the listening socket (`send_to` the
//! client), so the client sees answers from the address it sent to. A flow ends after
//! the UDP idle timeout with no datagram either way, when the endpoint refuses (ICMP port
//! unreachable: counted against the endpoint, and the client's next datagram starts a
//! new flow), or when its port has finished draining.
//!
//! The flow table is bounded: when it is full, the least recently active flow is evicted
//! for the new one (and counted). Nothing a datagram contains can fail anything.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kingress_balance::{Chosen, Pick, Strategy};
use kingress_model::L4Port;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::L4Settings;
use super::manager::PortCounters;
use crate::state::Tables;

/// Large enough for any UDP payload (65,507 bytes over IPv4).
const DATAGRAM: usize = 65_536;

/// One client's flow.
struct Flow {
    upstream: Arc<UdpSocket>,
    endpoint: SocketAddr,
    /// Milliseconds since the port's `epoch` of the last datagram either way.
    last: AtomicU64,
    /// Cancelled when the flow is evicted.
    cancel: CancellationToken,
}

/// A bound UDP port and its flows.
pub(crate) struct UdpPort {
    pub port: L4Port,
    pub socket: Arc<UdpSocket>,
    pub local: SocketAddr,
    tables: Arc<Tables>,
    settings: Arc<L4Settings>,
    flows: Mutex<HashMap<SocketAddr, Arc<Flow>>>,
    /// Cleared while the port drains: datagrams from clients without a flow are dropped.
    pub accepting: AtomicBool,
    /// Bumped by every removal and revival, so a drain timer knows it is stale.
    pub epoch: AtomicU64,
    pub counters: Arc<PortCounters>,
    /// The flows' tasks (closed while draining).
    pub tracker: TaskTracker,
    /// Every task of the manager, for shutdown.
    global: TaskTracker,
    /// Ends the flows (drain deadline, shutdown).
    pub drain: CancellationToken,
    /// Ends the receive loop.
    pub stop: CancellationToken,
    /// The clock of the flows' activity.
    clock: Instant,
}

impl UdpPort {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        port: L4Port,
        socket: UdpSocket,
        tables: Arc<Tables>,
        settings: Arc<L4Settings>,
        global: TaskTracker,
        drain: CancellationToken,
        stop: CancellationToken,
    ) -> io::Result<Arc<Self>> {
        let local = socket.local_addr()?;
        Ok(Arc::new(Self {
            port,
            socket: Arc::new(socket),
            local,
            tables,
            settings,
            flows: Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            epoch: AtomicU64::new(0),
            counters: Arc::new(PortCounters::default()),
            tracker: TaskTracker::new(),
            global,
            drain,
            stop,
            clock: Instant::now(),
        }))
    }

    fn flows(&self) -> MutexGuard<'_, HashMap<SocketAddr, Arc<Flow>>> {
        self.flows.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn flow_count(&self) -> usize {
        self.flows().len()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Receives datagrams until `stop`.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut buf = vec![0u8; DATAGRAM];
        loop {
            let received = tokio::select! {
                () = self.stop.cancelled() => break,
                r = self.socket.recv_from(&mut buf) => r,
            };
            let (n, client) = match received {
                Ok(r) => r,
                Err(e) => {
                    // Linux reports nothing on an unconnected socket, but be safe.
                    debug!(port = %self.port, error = %e, "UDP receive failed");
                    continue;
                }
            };
            let data = buf.get(..n).unwrap_or_default();
            let flow = self.flows().get(&client).cloned();
            match flow {
                Some(flow) => {
                    flow.last.store(self.now_ms(), Ordering::Relaxed);
                    if let Err(e) = send(&flow.upstream, data) {
                        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        debug!(port = %self.port, %client, endpoint = %flow.endpoint, error = %e, "UDP datagram not sent");
                    }
                }
                None if self.accepting.load(Ordering::Acquire) => self.start_flow(client, data),
                None => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Starts a flow for `client` with its first datagram.
    fn start_flow(self: &Arc<Self>, client: SocketAddr, first: &[u8]) {
        let Some(route) = self.tables.l4().port(&self.port).cloned() else {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let endpoints = self.tables.endpoints();
        let pick = {
            let mut rng = rand::thread_rng();
            endpoints.pick(&route.backend, Strategy::RoundRobin, &[], self.tables.now(), &mut rng)
        };
        let Pick::Endpoint(chosen) = pick else {
            debug!(port = %self.port, %client, backend = %route.backend, "no UDP endpoint; datagram dropped");
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let upstream = match connect_udp(chosen.addr) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                debug!(port = %self.port, endpoint = %chosen.addr, error = %e, "UDP socket to the endpoint failed");
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let flow = Arc::new(Flow {
            upstream: upstream.clone(),
            endpoint: chosen.addr,
            last: AtomicU64::new(self.now_ms()),
            cancel: CancellationToken::new(),
        });
        {
            let mut flows = self.flows();
            if flows.len() >= self.settings.max_udp_flows.max(1) {
                let oldest = flows
                    .iter()
                    .min_by_key(|(_, f)| f.last.load(Ordering::Relaxed))
                    .map(|(addr, _)| *addr);
                if let Some(old) = oldest.and_then(|a| flows.remove(&a)) {
                    old.cancel.cancel();
                    self.counters.evicted.fetch_add(1, Ordering::Relaxed);
                }
            }
            flows.insert(client, flow.clone());
        }
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        self.counters.total.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = send(&upstream, first) {
            debug!(port = %self.port, %client, endpoint = %chosen.addr, error = %e, "UDP datagram not sent");
        }
        let port = self.clone();
        let task = async move {
            port.flow_task(client, flow, chosen).await;
            port.counters.open.fetch_sub(1, Ordering::Relaxed);
        };
        self.tracker.spawn(self.global.track_future(task));
    }

    /// Returns the replies of one flow to its client until it ends.
    async fn flow_task(self: &Arc<Self>, client: SocketAddr, flow: Arc<Flow>, chosen: Chosen) {
        let _in_flight = chosen.stats.begin();
        let mut buf = vec![0u8; DATAGRAM];
        let idle = self.settings.udp_idle_timeout;
        let mut replied = false;
        loop {
            let deadline = self.clock + Duration::from_millis(flow.last.load(Ordering::Relaxed)) + idle;
            tokio::select! {
                r = flow.upstream.recv(&mut buf) => match r {
                    Ok(n) => {
                        flow.last.store(self.now_ms(), Ordering::Relaxed);
                        if !replied {
                            chosen.stats.record_success();
                            replied = true;
                        }
                        let data = buf.get(..n).unwrap_or_default();
                        if let Err(e) = self.socket.send_to(data, client).await {
                            debug!(port = %self.port, %client, error = %e, "UDP reply not sent");
                        }
                    }
                    Err(e) => {
                        // ICMP port unreachable from the endpoint, on a connected socket.
                        if e.kind() == io::ErrorKind::ConnectionRefused {
                            chosen.stats.record_failure(self.tables.now(), self.tables.endpoints().health());
                        }
                        debug!(port = %self.port, %client, endpoint = %flow.endpoint, error = %e, "UDP flow ended");
                        break;
                    }
                },
                () = tokio::time::sleep_until(deadline) => {
                    let last = self.clock + Duration::from_millis(flow.last.load(Ordering::Relaxed));
                    if Instant::now() >= last + idle {
                        break;
                    }
                }
                () = flow.cancel.cancelled() => break,
                () = self.drain.cancelled() => break,
            }
        }
        let mut flows = self.flows();
        if flows.get(&client).is_some_and(|f| Arc::ptr_eq(f, &flow)) {
            flows.remove(&client);
        }
    }
}

/// Sends on a connected UDP socket now or never: a full send buffer drops the datagram,
/// as the network would. (The syscall directly: tokio's `try_send` refuses until the
/// reactor has reported the new socket writable, which would lose a flow's first datagram.)
fn send(socket: &UdpSocket, data: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(socket).send(data)
}

/// A non-blocking UDP socket on an ephemeral port, connected to `endpoint`, registered
/// with the current runtime.
fn connect_udp(endpoint: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = match endpoint {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = StdUdpSocket::bind(local)?;
    socket.connect(endpoint)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}
