//! Binds the pieces together: source (manifest folder or API server) -> controller ->
//! tables -> listeners; in Kubernetes mode also leader election, Ingress status and Events.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use kingress_compile::CompileOptions;
use kingress_model::L4Port;
use kingress_proxy::{ProxySettings, Tables};
use kingress_sources::{FolderWatcher, ManifestFolder};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::controller::{CertCompiler, Controller};

/// Where the objects come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// `--manifests DIR`.
    Manifests(PathBuf),
    /// The API server.
    Kube(Box<KubeMode>),
}

/// Kubernetes mode's settings.
#[derive(Clone, Debug, Default)]
pub struct KubeMode {
    /// `--kubeconfig`; else $KUBECONFIG, ~/.kube/config, the in-cluster account.
    pub kubeconfig: Option<PathBuf>,
    /// `--watch-namespace`.
    pub watch_namespace: Option<String>,
    /// `--publish-service NAMESPACE/NAME`.
    pub publish_service: Option<(String, String)>,
    /// `--publish-status-address`.
    pub publish_status_address: Vec<String>,
    /// `--update-status-on-shutdown`.
    pub update_status_on_shutdown: bool,
    /// `--election-id`: the Lease's name.
    pub election_id: String,
    /// The Lease's namespace (POD_NAMESPACE).
    pub namespace: String,
    /// This replica (POD_NAME, else the hostname).
    pub identity: String,
    /// Leader-election timings (client-go's defaults when `None`).
    pub election: Option<kingress_kube::ElectionOptions>,
}

/// Everything `kingress run` needs, validated.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    pub source: Source,
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
    /// The L4 ports' bind address, timeouts and limits (`--l4-bind`, `--l4-drain-timeout`).
    pub l4: kingress_proxy::l4::L4Settings,
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
    /// The L4 ports (ServiceLB, tcp/udp-services).
    pub l4: Arc<kingress_proxy::l4::L4Manager>,
    /// Stops the data plane (first).
    shutdown: watch::Sender<bool>,
    /// Stops the admin listener (last, so /readyz says 503 while draining).
    admin_shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    admin_task: JoinHandle<()>,
    workers: Option<Arc<kingress_proxy::WorkerPool>>,
    /// How long open connections may finish on shutdown.
    grace: std::time::Duration,
    watcher: Option<FolderWatcher>,
    kube: Option<KubeParts>,
}

/// Kubernetes mode's running parts.
struct KubeParts {
    source: kingress_kube::KubeSource,
    election: kingress_kube::Election,
    status: kingress_kube::StatusWriter,
    /// ServiceLB mode: the LoadBalancer Services' status.
    service_status: Option<kingress_kube::ServiceStatusWriter>,
    _events: kingress_kube::EventPublisher,
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
        let kube = self.kube.take().map(|k| {
            drop(k.source);
            (k.election, k.status, k.service_status)
        });
        self.controller.tables().set_ready(false);
        let _ = self.shutdown.send(true);
        let grace = self.grace;
        let l4 = self.l4.clone();
        let l4_done = tokio::spawn(async move { l4.shutdown(grace).await });
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        let _ = l4_done.await;
        if let Some((election, status, service_status)) = kube {
            status.shutdown().await;
            if let Some(s) = service_status {
                s.shutdown().await;
            }
            election.release().await;
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
    if let Source::Manifests(dir) = &options.source {
        let meta = std::fs::metadata(dir).with_context(|| format!("manifests folder {}", dir.display()))?;
        anyhow::ensure!(meta.is_dir(), "{} is not a folder", dir.display());
    }
    let http_addr = http.local_addr()?;
    let https_addr = match &https {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let admin_addr = admin.local_addr()?;
    options.proxy.https_redirect_port = options.https_redirect_port.or(https_addr.map(|a| a.port()));
    // kingress's own ports are never given to a Service's L4 port.
    let mut reserved = vec![
        (L4Port::tcp(http_addr.port()), "HTTP listener".to_string()),
        (L4Port::tcp(admin_addr.port()), "admin listener".to_string()),
    ];
    if let Some(a) = https_addr {
        reserved.push((L4Port::tcp(a.port()), "HTTPS listener".to_string()));
    }
    options.compile.l4.reserved = reserved;

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
    // Before the first publish: the ports of the Services present at start are bound
    // before /readyz first answers 200.
    let l4 = kingress_proxy::l4::L4Manager::start(tables.clone(), options.l4.clone());
    controller.set_l4(l4.clone());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (admin_shutdown, admin_shutdown_rx) = watch::channel(false);

    // Admin first, so /healthz answers while the first scan runs.
    let admin_task = tokio::spawn(crate::admin::serve(
        admin,
        controller.clone(),
        wait_for(admin_shutdown_rx),
    ));
    let mut tasks = Vec::new();

    let (watcher, kube) = match &options.source {
        Source::Manifests(dir) => {
            let mut folder = ManifestFolder::new(dir.clone());
            let (folder, scan) = tokio::task::spawn_blocking(move || {
                let scan = folder.rescan();
                (folder, scan)
            })
            .await?;
            controller.apply(scan);
            let c = controller.clone();
            (Some(FolderWatcher::start(folder, move |scan| c.apply(scan))?), None)
        }
        Source::Kube(mode) => (None, Some(start_kube(mode, &options, &controller).await?)),
    };

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
    // PROXY protocol as the routing table says (the ConfigMap over --use-proxy-protocol).
    let http_options = kingress_proxy::ListenerOptions::http(tables.clone(), &options.proxy);
    tasks.push(tokio::spawn(kingress_proxy::serve(
        http,
        apps.clone(),
        wait_for(shutdown_rx.clone()),
        grace,
        workers.clone(),
        http_options,
    )));
    if let Some(https) = https {
        let tls = kingress_proxy::TlsListener::new(
            certs.clone(),
            options.proxy.tls_handshake_timeout,
            options.proxy.max_tls_handshakes,
        )
        .context("configuring TLS")?;
        // SSL passthrough by SNI for the L4 table's hosts (only with --enable-ssl-passthrough).
        let https_options = kingress_proxy::ListenerOptions::https(Arc::new(tls), tables.clone(), &options.proxy);
        tasks.push(tokio::spawn(kingress_proxy::serve(
            https,
            apps,
            wait_for(shutdown_rx),
            grace,
            workers.clone(),
            https_options,
        )));
    }
    tracing::info!(http = %http_addr, https = ?https_addr, admin = %admin_addr, source = ?options.source, "kingress is serving");
    Ok(GatewayHandle {
        http_addr,
        https_addr,
        admin_addr,
        controller,
        l4,
        shutdown,
        admin_shutdown,
        tasks,
        admin_task,
        workers,
        grace,
        watcher,
        kube,
    })
}

/// Kubernetes mode: the watchers (the controller is fed once every kind has listed; until
/// then /readyz says 503), leader election, the status writer and Events.
async fn start_kube(
    mode: &KubeMode,
    options: &GatewayOptions,
    controller: &Arc<Controller>,
) -> anyhow::Result<KubeParts> {
    let client = kingress_kube::client(mode.kubeconfig.as_deref()).await?;
    let kube_options = kingress_kube::KubeOptions {
        watch_namespace: mode.watch_namespace.clone(),
        config_map: options.compile.config_map.clone(),
        more_config_maps: [&options.compile.l4.tcp_services, &options.compile.l4.udp_services]
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
        ..kingress_kube::KubeOptions::default()
    };
    let c = controller.clone();
    let source = kingress_kube::KubeSource::start(client.clone(), kube_options, move |update| c.apply_update(update));
    let election_options = mode.election.clone().unwrap_or_else(|| {
        kingress_kube::ElectionOptions::new(mode.namespace.clone(), mode.election_id.clone(), mode.identity.clone())
    });
    let election = kingress_kube::Election::start(client.clone(), election_options);
    let status = kingress_kube::StatusWriter::start(
        client.clone(),
        source.stores().clone(),
        source.published(),
        election.leadership.clone(),
        kingress_kube::StatusOptions {
            class: options.compile.class.clone(),
            publish_service: mode.publish_service.clone(),
            publish_status_address: mode.publish_status_address.clone(),
            update_on_shutdown: mode.update_status_on_shutdown,
        },
    );
    let service_status = options.compile.l4.service_lb.then(|| {
        let tables = controller.tables().clone();
        let served: kingress_kube::ServedServices = Arc::new(move || {
            let mut out: Vec<(String, String)> = tables
                .l4()
                .ports()
                .filter(|(_, r)| r.source.object.kind == "Service")
                .map(|(_, r)| (r.source.object.namespace.clone(), r.source.object.name.clone()))
                .collect();
            out.sort();
            out.dedup();
            out
        });
        kingress_kube::ServiceStatusWriter::start(
            client.clone(),
            source.stores().clone(),
            served,
            source.published(),
            election.leadership.clone(),
            kingress_kube::ServiceStatusOptions {
                publish_status_address: mode.publish_status_address.clone(),
                pod: Some((mode.namespace.clone(), mode.identity.clone())),
                update_on_shutdown: mode.update_status_on_shutdown,
            },
        )
    });
    let (sink, events) = kingress_kube::EventPublisher::start(
        client,
        source.stores().clone(),
        election.leadership.clone(),
        options.compile.class.controller_class.clone(),
        mode.identity.clone(),
    );
    controller.set_event_sink(sink);
    Ok(KubeParts {
        source,
        election,
        status,
        service_status,
        _events: events,
    })
}
