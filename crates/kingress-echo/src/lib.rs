//! kingress-echo: an echo HTTP/WebSocket backend.
//!
//! Every request (any method, any path) is answered with a JSON object that
//! describes it: `name`, `method`, `path`, `host`, `version`, `headers`,
//! `header_list`, `body_length` and `remote_addr`. A few request headers
//! change the answer, for tests:
//!
//! | header | effect |
//! |---|---|
//! | `x-echo-status: NNN` | answer with status NNN (200..=599), still with the JSON body |
//! | `x-echo-delay-ms: N` | sleep N ms before answering (on top of [`EchoOptions::delay`]) |
//! | `x-echo-set-header: Name: value` | add a response header (repeatable) |
//! | `x-echo-mode: body` | stream the request body back unchanged (`application/octet-stream`) |
//! | `x-echo-response-bytes: N` | answer with exactly N bytes of `0123456789abcdef…`; the request body length is in `x-echo-request-body-length` |
//!
//! Malformed control values are ignored. An HTTP/1.1 `Upgrade: websocket`
//! request is accepted and every text/binary message is echoed back.
//!
//! The server speaks HTTP/1.0, HTTP/1.1 and HTTP/2 with prior knowledge (h2c).

mod body;
mod service;
mod ws;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// How the echo server behaves.
#[derive(Clone, Debug, Default)]
pub struct EchoOptions {
    /// Reported as `name` in every JSON answer (tells backends apart).
    pub name: String,
    /// Added latency before every answer.
    pub delay: Duration,
}

/// How long in-flight connections get to finish after shutdown is requested.
const GRACE: Duration = Duration::from_secs(5);
/// How long to wait for connections to notice a forced stop.
const FORCE_GRACE: Duration = Duration::from_millis(500);
/// Pause after a failed `accept` (e.g. EMFILE persists until something closes).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Shutdown signals handed to every connection and WebSocket task.
///
/// Each signal fires when its sender sends, or when the sender is dropped
/// (the `serve` future was dropped), so tasks never outlive a dropped server
/// for long. Each method must be awaited to completion at most once.
#[derive(Clone, Debug)]
pub(crate) struct Signals {
    graceful: watch::Receiver<()>,
    force: watch::Receiver<()>,
}

impl Signals {
    /// Completes when the server asks connections to finish gracefully.
    pub(crate) async fn graceful(&mut self) {
        let _ = self.graceful.changed().await;
    }

    /// Completes when the server gives up waiting and wants everything closed.
    pub(crate) async fn force(&mut self) {
        let _ = self.force.changed().await;
    }
}

/// Serve until `shutdown` completes; then stop accepting, let in-flight
/// connections finish (graceful, at most about 5 s), and return.
///
/// Accept errors are logged and retried; this returns `Ok(())` once shut down.
pub async fn serve(
    listener: TcpListener,
    opts: EchoOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let state = Arc::new(service::State::new(opts));
    let (graceful_tx, graceful_rx) = watch::channel(());
    let (force_tx, force_rx) = watch::channel(());
    let signals = Signals {
        graceful: graceful_rx,
        force: force_rx,
    };

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);

    tracing::debug!(
        name = %state.name(),
        addr = ?listener.local_addr().ok(),
        "echo server listening"
    );

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => spawn_connection(
                    Arc::clone(&builder),
                    stream,
                    peer,
                    Arc::clone(&state),
                    signals.clone(),
                ),
                Err(err) => {
                    tracing::warn!(error = %err, "echo server: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }

    // Stop accepting, then let in-flight connections finish.
    drop(listener);
    drop(signals);
    graceful_tx.send_replace(());
    if tokio::time::timeout(GRACE, graceful_tx.closed()).await.is_err() {
        tracing::debug!("echo server: grace period over, closing remaining connections");
        force_tx.send_replace(());
        let _ = tokio::time::timeout(FORCE_GRACE, graceful_tx.closed()).await;
    }
    tracing::debug!(name = %state.name(), "echo server stopped");
    Ok(())
}

fn spawn_connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<service::State>,
    mut signals: Signals,
) {
    let _ = stream.set_nodelay(true);
    tokio::spawn(async move {
        let svc_signals = signals.clone();
        let svc = service_fn(move |req| service::handle(Arc::clone(&state), peer, svc_signals.clone(), req));
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
        tokio::pin!(conn);
        let result = tokio::select! {
            res = conn.as_mut() => res,
            () = signals.graceful() => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    res = conn.as_mut() => res,
                    () = signals.force() => Ok(()),
                }
            }
        };
        if let Err(err) = result {
            tracing::debug!(%peer, error = %err, "echo connection ended with an error");
        }
    });
}

/// Convenience for tests: binds `127.0.0.1:0`, spawns [`serve`] on the current
/// tokio runtime and returns a handle.
///
/// [`EchoHandle::shutdown`] stops the server gracefully; dropping the handle
/// stops it at once (open connections are closed).
pub async fn spawn(opts: EchoOptions) -> io::Result<EchoHandle> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, opts, async move {
        let _ = rx.await;
    }));
    Ok(EchoHandle {
        addr,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// A running echo server started by [`spawn`].
///
/// Dropping it aborts the server (connections are closed);
/// [`EchoHandle::shutdown`] stops it gracefully.
#[derive(Debug)]
pub struct EchoHandle {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl EchoHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, let in-flight connections finish (at most about 5 s),
    /// and wait for the server to stop.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!(error = %err, "echo server failed"),
                Err(err) => tracing::debug!(error = %err, "echo server task failed"),
            }
        }
    }
}

impl Drop for EchoHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
