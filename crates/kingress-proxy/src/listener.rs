//! Our own accept loop around pingora's HTTP application.
//!
//! pingora's `Server` binds its listeners itself from fixed addresses and owns signal
//! handling and the process exit. kingress binds listeners itself (port 0 in tests,
//! `--http-listen` in production), so it drives the application directly: accept, wrap
//! the socket in pingora's stream type, hand it to `ServerApp::process_new`.
//!
//! Shutdown: stop accepting, tell the application (keep-alive is switched off and idle
//! keep-alive connections are woken to close), then wait for open connections up to the
//! grace period.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

/// Where connection tasks run.
#[derive(Clone, Default)]
pub enum Workers {
    /// On the runtime that runs `serve` (tests, small setups).
    #[default]
    Current,
    /// On a pool of single-threaded runtimes, one connection per thread for its whole
    /// life (pingora's "no-steal" runtime). Under load this avoids the cross-thread
    /// wake-ups of a work-stealing scheduler, which perf showed as the largest cost of a
    /// proxied request on a small machine.
    Pool(Arc<pingora_runtime::Runtime>),
}

impl Workers {
    /// A pool of `threads` single-threaded runtimes.
    pub fn pool(threads: usize) -> Self {
        Workers::Pool(Arc::new(pingora_runtime::Runtime::new_no_steal(
            threads.max(1),
            "kingress-worker",
        )))
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains for up to `grace`.
pub async fn serve<A>(
    listener: TcpListener,
    app: Arc<A>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    workers: Workers,
) where
    A: ServerApp + Send + Sync + 'static,
{
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);
    let local = listener.local_addr().ok();
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
                let app = app.clone();
                let shutdown_rx = shutdown_rx.clone();
                match &workers {
                    Workers::Current => {
                        tracker.spawn(handle_connection(tcp, peer, app, shutdown_rx));
                    }
                    Workers::Pool(pool) => {
                        // Re-register the socket with the worker's own reactor, so its
                        // readiness events wake that thread and no other.
                        let Ok(std_tcp) = tcp.into_std() else { continue };
                        let task = tracker.track_future(async move {
                            match tokio::net::TcpStream::from_std(std_tcp) {
                                Ok(tcp) => handle_connection(tcp, peer, app, shutdown_rx).await,
                                Err(e) => tracing::debug!(error = %e, "cannot register the connection"),
                            }
                        });
                        pool.get_handle().spawn(task);
                    }
                }
            }
        }
    }
    drop(listener);
    let _ = shutdown_tx.send(true);
    app.cleanup().await;
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
) where
    A: ServerApp + Send + Sync + 'static,
{
    let fd = tcp.as_raw_fd();
    let mut stream = L4Stream::from(tcp);
    stream.set_socket_digest(SocketDigest::from_raw_fd(fd));
    tracing::trace!(%peer, "connection accepted");
    let _ = app.process_new(Box::new(stream), &shutdown).await;
}
