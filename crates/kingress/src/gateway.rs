//! Binds the pieces together: manifest folder -> controller -> tables -> listeners.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use kingress_compile::CompileOptions;
use kingress_proxy::{ProxySettings, Tables};
use kingress_sources::{FolderWatcher, ManifestFolder};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::controller::{CertCompiler, Controller};

/// Everything `kingress run --manifests DIR` needs, validated.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    pub manifests: PathBuf,
    pub compile: CompileOptions,
    pub proxy: ProxySettings,
    /// Single-threaded runtimes that run the proxied connections; `None` runs them on
    /// the caller's runtime (tests).
    pub worker_threads: Option<usize>,
    /// `--default-ssl-certificate NAMESPACE/NAME`: the certificate for hosts without one
    /// (else a self-signed "Fake Certificate" generated at start).
    pub default_ssl_certificate: Option<(String, String)>,
    /// `--https-redirect-port`: the port in ssl-redirect Locations; `None`: the HTTPS
    /// listener's own port.
    pub https_redirect_port: Option<u16>,
}

/// The sockets a gateway serves on, bound by the caller (port 0 in tests).
pub struct Listeners {
    pub http: TcpListener,
    /// `None`: no HTTPS listener.
    pub https: Option<TcpListener>,
    pub admin: TcpListener,
}

/// A running gateway.
pub struct GatewayHandle {
    pub http_addr: SocketAddr,
    pub https_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub controller: Arc<Controller>,
    /// Stops the data plane (first).
    shutdown: watch::Sender<bool>,
    /// Stops the admin listener (last, so /readyz says 503 while draining).
    admin_shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    admin_task: JoinHandle<()>,
    workers: Option<Arc<kingress_proxy::WorkerPool>>,
    watcher: Option<FolderWatcher>,
}

impl GatewayHandle {
    pub fn tables(&self) -> &Arc<Tables> {
        self.controller.tables()
    }

    /// Graceful stop: /readyz turns 503, listeners close, open connections get the
    /// proxy's grace period to finish.
    pub async fn shutdown(mut self) {
        // Stop the watcher first (it joins its thread), so no late scan can mark the
        // gateway ready again while it drains.
        drop(self.watcher.take());
        self.controller.tables().set_ready(false);
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        let _ = self.admin_shutdown.send(true);
        let _ = self.admin_task.await;
        // A runtime cannot be dropped from async code: shut the worker pool down on a
        // blocking thread.
        if let Some(pool) = self.workers.take() {
            let _ = tokio::task::spawn_blocking(move || {
                if let Ok(pool) = Arc::try_unwrap(pool) {
                    pool.shutdown();
                }
            })
            .await;
        }
    }
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Starts the gateway on already-bound listeners. Returns once the first configuration
/// is live (so /readyz is 200 from the first request on).
pub async fn start(options: GatewayOptions, http: TcpListener, admin: TcpListener) -> anyhow::Result<GatewayHandle> {
    start_with(
        options,
        Listeners {
            http,
            https: None,
            admin,
        },
    )
    .await
}

/// [`start`] with every listener, HTTPS included.
pub async fn start_with(mut options: GatewayOptions, listeners: Listeners) -> anyhow::Result<GatewayHandle> {
    let Listeners { http, https, admin } = listeners;
    let meta = std::fs::metadata(&options.manifests)
        .with_context(|| format!("manifests folder {}", options.manifests.display()))?;
    anyhow::ensure!(meta.is_dir(), "{} is not a folder", options.manifests.display());
    let http_addr = http.local_addr()?;
    let https_addr = match &https {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let admin_addr = admin.local_addr()?;
    options.proxy.https_redirect_port = options.https_redirect_port.or(https_addr.map(|a| a.port()));

    let tables = Arc::new(Tables::with_health(options.proxy.health));
    let fallback = kingress_tls::fake_certificate(std::time::SystemTime::now())
        .map_err(|e| anyhow::anyhow!("generating the fallback certificate: {e}"))?;
    let certs = Arc::new(kingress_tls::CertStore::new(kingress_tls::CertTable::new(
        fallback.clone(),
    )));
    let tls = CertCompiler {
        store: certs.clone(),
        options: kingress_tls::TlsOptions {
            class: options.compile.class.clone(),
            default_certificate: options.default_ssl_certificate.clone(),
        },
        fallback,
    };
    let controller = Controller::new(tables.clone(), options.compile.clone(), tls);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (admin_shutdown, admin_shutdown_rx) = watch::channel(false);

    // Admin first, so /healthz answers while the first scan runs.
    let admin_task = tokio::spawn(crate::admin::serve(
        admin,
        controller.clone(),
        wait_for(admin_shutdown_rx),
    ));
    let mut tasks = Vec::new();

    let mut folder = ManifestFolder::new(options.manifests.clone());
    let (folder, scan) = tokio::task::spawn_blocking(move || {
        let scan = folder.rescan();
        (folder, scan)
    })
    .await?;
    controller.apply(scan);
    let c = controller.clone();
    let watcher = FolderWatcher::start(folder, move |scan| {
        c.apply(scan);
    })?;

    let grace = options.proxy.shutdown_grace;
    let workers = match options.worker_threads {
        Some(n) => Some(Arc::new(
            kingress_proxy::WorkerPool::new(n).context("starting worker threads")?,
        )),
        None => None,
    };
    // One proxy application (with its own upstream pool) per worker thread, shared by the
    // HTTP and HTTPS listeners: both deal connection i to worker i with app i.
    let apps: Vec<_> = (0..workers.as_ref().map_or(1, |p| p.len()))
        .map(|_| kingress_proxy::build_proxy(tables.clone(), options.proxy.clone()))
        .collect();
    tasks.push(tokio::spawn(kingress_proxy::serve(
        http,
        apps.clone(),
        wait_for(shutdown_rx.clone()),
        grace,
        workers.clone(),
    )));
    if let Some(https) = https {
        let tls = kingress_proxy::TlsListener::new(
            certs.clone(),
            options.proxy.tls_handshake_timeout,
            options.proxy.max_tls_handshakes,
        )
        .context("configuring TLS")?;
        tasks.push(tokio::spawn(kingress_proxy::serve_with(
            https,
            apps,
            wait_for(shutdown_rx),
            grace,
            workers.clone(),
            Some(Arc::new(tls)),
        )));
    }
    tracing::info!(http = %http_addr, https = ?https_addr, admin = %admin_addr, manifests = %options.manifests.display(), "kingress is serving");
    Ok(GatewayHandle {
        http_addr,
        https_addr,
        admin_addr,
        controller,
        shutdown,
        admin_shutdown,
        tasks,
        admin_task,
        workers,
        watcher: Some(watcher),
    })
}
