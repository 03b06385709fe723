//! `kingress`: see `kingress --help`. All logic lives in the library.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kingress::cli::{Cli, Command};
use kingress::gateway::{GatewayOptions, Listeners, Source};

// glibc malloc showed up as ~12% of the proxy's CPU under load (perf, 2026-11-21);
// mimalloc's thread-local free lists suit the many short-lived per-request buffers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kingress::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kingress: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("kingress: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
/// SIGTERM and SIGINT, with their handlers installed at once: a signal that arrives while
/// the gateway is still starting (after /readyz already answers) is not lost, and does
/// not kill the process with the default action.
fn install_signals() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let signalled = install_signals();
    match cli.command {
        Command::Run(args) => {
            // Validate everything before binding any port.
            let proxy = args.proxy.settings().map_err(anyhow::Error::msg)?;
            let compile = args.compile_options().map_err(anyhow::Error::msg)?;
            let default_ssl_certificate = args.default_ssl_certificate().map_err(anyhow::Error::msg)?;
            let l4 = kingress_proxy::l4::L4Settings {
                bind: args.l4.l4_bind,
                drain_timeout: args.l4.drain_timeout().map_err(anyhow::Error::msg)?,
                connect_timeout: proxy.connect_timeout,
                ..kingress_proxy::l4::L4Settings::default()
            };
            let source = match &args.manifests {
                Some(dir) => {
                    anyhow::ensure!(dir.is_dir(), "--manifests {}: not a folder", dir.display());
                    Source::Manifests(dir.clone())
                }
                None => Source::Kube(Box::new(args.kube_mode().map_err(anyhow::Error::msg)?)),
            };
            let http = bind(args.listen.http_listen, "--http-listen").await?;
            let https = bind(args.listen.https_listen, "--https-listen").await?;
            let admin = bind(args.listen.admin_listen, "--admin-listen").await?;
            let options = GatewayOptions {
                source,
                compile,
                proxy,
                worker_threads: Some(kingress::cli::worker_threads(args.worker_threads)),
                default_ssl_certificate,
                https_redirect_port: args.https_redirect_port,
                l4,
            };
            let listeners = Listeners {
                http,
                https: Some(https),
                admin,
            };
            let gateway = kingress::gateway::start_with(options, listeners).await?;
            signalled.await;
            tracing::info!("shutting down");
            gateway.shutdown().await;
            Ok(())
        }
        Command::Echo(args) => {
            let listener = bind(args.listen, "--listen").await?;
            tracing::info!(listen = %listener.local_addr()?, name = %args.name, "echo backend serving");
            let options = kingress_echo::EchoOptions {
                name: args.name,
                delay: Duration::from_millis(args.delay_ms),
            };
            kingress_echo::serve(listener, options, signalled).await?;
            Ok(())
        }
        Command::Demo(args) => {
            let http = bind(args.listen.http_listen, "--http-listen").await?;
            let https = bind(args.listen.https_listen, "--https-listen").await?;
            let admin = bind(args.listen.admin_listen, "--admin-listen").await?;
            let folder = std::env::temp_dir().join(format!("kingress-demo-{}", std::process::id()));
            let demo =
                kingress::demo::start(http, Some(https), admin, folder, Some(kingress::cli::worker_threads(0))).await?;
            println!("{}", demo.instructions());
            signalled.await;
            tracing::info!("shutting down");
            demo.shutdown().await;
            Ok(())
        }
    }
}
