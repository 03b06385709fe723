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
//! Shutdown: stop accepting, tell the application (keep-alive is switched off and idle
//! keep-alive connections are woken to close), then wait for open connections up to the
//! grace period.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use rustls::server::ResolvesServerCert;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

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

/// Serves on `listener` until `shutdown` completes, then drains for up to `grace`.
///
/// Without a pool, connections run on the caller's runtime with `apps[0]`. With a pool,
/// connections are dealt round-robin to the workers, worker `i` serving with `apps[i]`
/// (`apps` is reused cyclically if shorter).
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

pub async fn serve<A>(
    listener: TcpListener,
    apps: Vec<Arc<A>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    pool: Option<Arc<WorkerPool>>,
) where
    A: ServerApp + Send + Sync + 'static,
{
    serve_with(listener, apps, shutdown, grace, pool, None).await
}

/// [`serve`], with TLS termination when `tls` is given.
pub async fn serve_with<A>(
    listener: TcpListener,
    apps: Vec<Arc<A>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    pool: Option<Arc<WorkerPool>>,
    tls: Option<Arc<TlsListener>>,
) where
    A: ServerApp + Send + Sync + 'static,
{
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
                let tls = tls.clone();
                match pool.as_ref().and_then(|p| p.workers.get(slot % p.workers.len().max(1))) {
                    None => {
                        tracker.spawn(handle_connection(tcp, peer, app, shutdown_rx, tls));
                    }
                    Some(worker) => {
                        // Re-register the socket with the worker's own reactor, so its
                        // readiness events wake that thread and no other.
                        let Ok(std_tcp) = tcp.into_std() else { continue };
                        let task = tracker.track_future(async move {
                            match tokio::net::TcpStream::from_std(std_tcp) {
                                Ok(tcp) => handle_connection(tcp, peer, app, shutdown_rx, tls).await,
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

async fn handle_connection<A>(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    app: Arc<A>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    tls: Option<Arc<TlsListener>>,
) where
    A: ServerApp + Send + Sync + 'static,
{
    let fd = tcp.as_raw_fd();
    let mut stream = L4Stream::from(tcp);
    stream.set_socket_digest(SocketDigest::from_raw_fd(fd));
    tracing::trace!(%peer, "connection accepted");
    let Some(tls) = tls else {
        let _ = app.process_new(Box::new(stream), &shutdown).await;
        return;
    };
    // The timeout covers the wait for a handshake slot and the handshake itself.
    let handshake = async {
        let _permit = tls.handshakes.acquire().await.ok()?;
        tls.acceptor.tls_handshake(stream).await.ok()
    };
    match tokio::time::timeout(tls.handshake_timeout, handshake).await {
        Ok(Some(tls_stream)) => {
            let _ = app.process_new(Box::new(tls_stream), &shutdown).await;
        }
        Ok(None) => tracing::debug!(%peer, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}
