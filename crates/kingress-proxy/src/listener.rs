//! Our own accept loop around pingora's HTTP application.
//!
//! pingora's `Server` binds its listeners itself from fixed addresses and owns signal
//! handling and the process exit. kingress binds listeners itself (port 0 in tests,
//! `--http-listen` in production), so it drives the application directly: accept, wrap
//! the socket in pingora's stream type, hand it to `ServerApp::process_new`.
//!
//! TLS: with a [`TlsListener`] every connection first completes a rustls handshake
//! (certificate chosen by SNI by the caller's resolver, ALPN h2 or http/1.1), bounded
//! in time and in how many run at once, before pingora sees the decrypted stream.
//!
//! PROXY protocol ([`ListenerOptions::proxy_protocol`]): before anything else (TLS
//! included) a PROXY v1/v2 header is read; its source becomes the connection's peer
//! address in pingora's socket digest, which is what `Session::client_addr` (and so
//! X-Forwarded-For / X-Real-IP) reads. Bytes read past the header are put back with
//! pingora's `Stream::rewind`, which both the HTTP reader and the rustls handshake read
//! through. A connection without a valid header is closed.
//!
//! SSL passthrough ([`ListenerOptions::passthrough`], HTTPS only): when the L4 table has
//! passthrough hosts, the ClientHello is read (within the handshake timeout, holding a
//! handshake slot) and its SNI looked up; a passthrough host's connection is relayed
//! unterminated to its backend (the PROXY header, if any, is not forwarded); any other is
//! replayed into the TLS handshake as usual. See [`crate::passthrough`].
//!
//! Shutdown: stop accepting, tell the application (keep-alive is switched off and idle
//! keep-alive connections are woken to close), then wait for open connections up to the
//! grace period.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraSocketAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use rustls::server::ResolvesServerCert;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::passthrough::{self, Passthrough, Peeked};
use crate::proxy_protocol;
use crate::settings::ProxySettings;
use crate::state::Tables;

/// Single-threaded runtimes that run proxied connections, one connection on one thread
/// for its whole life.
///
/// Each worker gets its own proxy application (and so its own upstream connection pool):
/// a pooled upstream socket is then always reused on the thread whose reactor it is
/// registered with. perf on a 2-core machine showed cross-thread wake-ups (a work-stealing
/// scheduler, then a shared upstream pool) as the largest cost of a proxied request.
pub struct WorkerPool {
    workers: Vec<Worker>,
}

struct Worker {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `threads` workers (at least one).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("kingress-worker-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    // Dropping the runtime here (not in async code) cancels what is left.
                    runtime.shutdown_timeout(Duration::from_millis(500));
                })?;
            workers.push(Worker {
                handle,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Self { workers })
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Stops every worker and waits for its thread. Blocking: call it off the async
    /// runtime (e.g. in `spawn_blocking`).
    pub fn shutdown(mut self) {
        for w in &mut self.workers {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(());
            }
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        // Without an explicit shutdown, tell the threads to end; do not block on them.
        for w in &mut self.workers {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

/// TLS termination for a listener.
pub struct TlsListener {
    acceptor: Acceptor,
    handshake_timeout: Duration,
    /// Handshakes in progress at most; the others wait (within their timeout).
    handshakes: Semaphore,
}

impl TlsListener {
    /// TLS 1.2 and 1.3 with rustls's default (modern, AEAD-only) cipher suites, the
    /// ring provider, ALPN h2 then http/1.1, and the certificate `resolver` picks by SNI.
    pub fn new(
        resolver: Arc<dyn ResolvesServerCert>,
        handshake_timeout: Duration,
        max_handshakes: usize,
    ) -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: Acceptor::from_server_config(Arc::new(config)),
            handshake_timeout,
            handshakes: Semaphore::new(max_handshakes.max(1)),
        })
    }
}

/// What a listener does with a connection before pingora's HTTP machinery gets it.
#[derive(Clone, Debug, Default)]
pub struct ListenerOptions {
    /// Terminate TLS (the HTTPS listener).
    pub tls: Option<Arc<TlsListener>>,
    /// Read a PROXY protocol header first whenever the current routing table says so
    /// (`use-proxy-protocol`, from the controller ConfigMap or `--use-proxy-protocol`),
    /// within this time. Asked per connection, so a change applies to the next one.
    pub proxy_protocol: Option<(Arc<Tables>, Duration)>,
    /// SSL passthrough by SNI, for the hosts in the L4 table (which has some only with
    /// `--enable-ssl-passthrough`). Only used with `tls`.
    pub passthrough: Option<Arc<Passthrough>>,
}

impl ListenerOptions {
    /// The HTTP listener: PROXY protocol as `tables`' routing table says.
    pub fn http(tables: Arc<Tables>, settings: &ProxySettings) -> Self {
        Self {
            tls: None,
            proxy_protocol: Some((tables, settings.proxy_protocol_header_timeout)),
            passthrough: None,
        }
    }

    /// The HTTPS listener: TLS with `tls`, PROXY protocol as for [`ListenerOptions::http`],
    /// and passthrough of the hosts in `tables.l4()`.
    pub fn https(tls: Arc<TlsListener>, tables: Arc<Tables>, settings: &ProxySettings) -> Self {
        Self {
            tls: Some(tls),
            passthrough: Some(Arc::new(Passthrough::new(
                tables.clone(),
                settings.connect_timeout,
                settings.passthrough_idle_timeout,
            ))),
            ..Self::http(tables, settings)
        }
    }
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("handshakes_free", &self.handshakes.available_permits())
            .finish_non_exhaustive()
    }
}

/// Serves on `listener` until `shutdown` completes, then drains for up to `grace`.
///
/// Without a pool, connections run on the caller's runtime with `apps[0]`. With a pool,
/// connections are dealt round-robin to the workers, worker `i` serving with `apps[i]`
/// (`apps` is reused cyclically if shorter).
///
/// TLS, PROXY protocol and SSL passthrough are as `options` say
/// ([`ListenerOptions::default`]: plain HTTP).
pub async fn serve<A>(
    listener: TcpListener,
    apps: Vec<Arc<A>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    pool: Option<Arc<WorkerPool>>,
    options: ListenerOptions,
) where
    A: ServerApp + Send + Sync + 'static,
{
    let options = Arc::new(options);
    if apps.is_empty() {
        return;
    }
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);
    let local = listener.local_addr().ok();
    let mut next = 0usize;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off a little instead of spinning.
                        tracing::warn!(error = %e, listener = ?local, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let slot = next;
                next = next.wrapping_add(1);
                let Some(app) = apps.get(slot % apps.len()).cloned() else { continue };
                let shutdown_rx = shutdown_rx.clone();
                let conn = Connection { peer, options: options.clone(), grace };
                match pool.as_ref().and_then(|p| p.workers.get(slot % p.workers.len().max(1))) {
                    None => {
                        tracker.spawn(handle_connection(tcp, conn, app, shutdown_rx));
                    }
                    Some(worker) => {
                        // Re-register the socket with the worker's own reactor, so its
                        // readiness events wake that thread and no other.
                        let Ok(std_tcp) = tcp.into_std() else { continue };
                        let task = tracker.track_future(async move {
                            match tokio::net::TcpStream::from_std(std_tcp) {
                                Ok(tcp) => handle_connection(tcp, conn, app, shutdown_rx).await,
                                Err(e) => tracing::debug!(error = %e, "cannot register the connection"),
                            }
                        });
                        worker.handle.spawn(task);
                    }
                }
            }
        }
    }
    drop(listener);
    let _ = shutdown_tx.send(true);
    for app in &apps {
        app.cleanup().await;
    }
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::info!(open = tracker.len(), listener = ?local, "grace period over; closing remaining connections");
    }
}

/// What a connection task needs besides its socket and application.
struct Connection {
    peer: std::net::SocketAddr,
    options: Arc<ListenerOptions>,
    /// How long a passthrough relay may go on once shutdown starts.
    grace: Duration,
}

async fn handle_connection<A>(
    mut tcp: tokio::net::TcpStream,
    conn: Connection,
    app: Arc<A>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) where
    A: ServerApp + Send + Sync + 'static,
{
    let Connection { peer, options, grace } = conn;
    let fd = tcp.as_raw_fd();
    tracing::trace!(%peer, "connection accepted");
    // Bytes read before pingora gets the stream: put back with `rewind`.
    let mut replay = Vec::new();
    let digest = SocketDigest::from_raw_fd(fd);
    let expect_proxy = options
        .proxy_protocol
        .as_ref()
        .and_then(|(tables, timeout)| tables.config().use_proxy_protocol().then_some(*timeout));
    if let Some(timeout) = expect_proxy {
        match proxy_protocol::read_header(&mut tcp, timeout).await {
            Ok(header) => {
                if let Some(source) = header.source {
                    // Before anything reads it: the OnceCell is empty until the first read.
                    let _ = digest.peer_addr.set(Some(PingoraSocketAddr::Inet(source)));
                }
                tracing::trace!(%peer, client = ?header.source, "PROXY header");
                replay = header.rest;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "closing: no valid PROXY header");
                return;
            }
        }
    }
    let Some(tls) = options.tls.clone() else {
        let mut stream = L4Stream::from(tcp);
        stream.set_socket_digest(digest);
        stream.rewind(&replay);
        let _ = app.process_new(Box::new(stream), &shutdown).await;
        return;
    };
    // One deadline covers the wait for a handshake slot, reading the ClientHello for
    // passthrough, and the handshake itself.
    let deadline = Instant::now() + tls.handshake_timeout;
    let permit = match tokio::time::timeout_at(deadline, tls.handshakes.acquire()).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(_)) => return,
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out waiting for a slot");
            return;
        }
    };
    if let Some(pass) = options.passthrough.as_ref().filter(|p| p.active()) {
        let sni = match tokio::time::timeout_at(deadline, passthrough::peek_client_hello(&mut tcp, &mut replay)).await {
            Ok(Peeked::Hello { sni }) => sni,
            // Not ours to judge: the TLS handshake will take it or refuse it.
            Ok(Peeked::TooLarge) => None,
            Ok(Peeked::Invalid) => {
                tracing::debug!(%peer, "closing: not a TLS ClientHello");
                return;
            }
            Ok(Peeked::Eof) => return,
            Ok(Peeked::Io(e)) => {
                tracing::debug!(%peer, error = %e, "reading the ClientHello");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out reading the ClientHello");
                return;
            }
        };
        if let Some(route) = sni.as_deref().and_then(|sni| pass.route(sni)) {
            drop(permit);
            pass_through(pass, &route, tcp, &replay, peer, shutdown, grace).await;
            return;
        }
    }
    let mut stream = L4Stream::from(tcp);
    stream.set_socket_digest(digest);
    stream.rewind(&replay);
    let handshake = tokio::time::timeout_at(deadline, tls.acceptor.tls_handshake(stream)).await;
    drop(permit);
    match handshake {
        Ok(Ok(tls_stream)) => {
            let _ = app.process_new(Box::new(tls_stream), &shutdown).await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Relays a passthrough connection until it ends, or until `grace` after shutdown starts.
async fn pass_through(
    pass: &Passthrough,
    route: &kingress_model::L4Route,
    client: tokio::net::TcpStream,
    hello: &[u8],
    peer: std::net::SocketAddr,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) {
    let backend = &route.backend;
    let stopped = async {
        let _ = shutdown.wait_for(|stop| *stop).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = passthrough::relay(pass, route, client, hello) => match result {
            Ok((up, down)) => tracing::debug!(%peer, %backend, up, down, "passthrough connection done"),
            Err(e) => tracing::debug!(%peer, %backend, error = %e, "passthrough connection failed"),
        },
        () = stopped => tracing::debug!(%peer, %backend, "passthrough connection closed at shutdown"),
    }
}
