//! `kingress demo`: the gateway plus echo backends, from `examples/quickstart`.
//!
//! The quickstart manifests are compiled into the binary. Each EndpointSlice port gets
//! an echo backend on a free port; only those endpoint ports are rewritten, into a
//! private folder the gateway then serves (and watches) like any other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use kingress_echo::{EchoHandle, EchoOptions};
use kingress_sources::Object;
use kingress_sources::decode::decode_file;

use crate::gateway::{GatewayHandle, GatewayOptions};

/// The quickstart manifests, as shipped in examples/quickstart.
pub const QUICKSTART: &[(&str, &str)] = &[
    (
        "quickstart.yaml",
        include_str!("../../../examples/quickstart/quickstart.yaml"),
    ),
    (
        "services.yaml",
        include_str!("../../../examples/quickstart/services.yaml"),
    ),
];

/// A running demo: the gateway, its backends and its manifest folder.
pub struct Demo {
    pub gateway: GatewayHandle,
    pub backends: Vec<EchoHandle>,
    pub folder: PathBuf,
}

impl Demo {
    pub async fn shutdown(self) {
        self.gateway.shutdown().await;
        for b in self.backends {
            b.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&self.folder);
    }

    /// The commands to try, with the real addresses.
    pub fn instructions(&self) -> String {
        let http = self.gateway.http_addr;
        let port = http.port();
        let admin = self.gateway.admin_addr;
        let https = match self.gateway.https_addr {
            Some(a) => format!(
                "\n  curl -sk https://hello.localhost:{}/                # HTTPS (HTTP/2 with --http2); the self-signed default certificate",
                a.port()
            ),
            None => String::new(),
        };
        format!(
            "kingress demo is serving on http://{http} (manifests in {folder})\n\
             \n\
             Try (names under .localhost resolve to 127.0.0.1):\n\
             \n  curl -s http://hello.localhost:{port}/                 # round-robin over hello-a and hello-b\
             \n  curl -s http://api.localhost:{port}/v1/users           # Prefix /v1 on api.localhost\
             \n  curl -si http://api.localhost:{port}/health            # Exact /health\
             \n  curl -si http://api.localhost:{port}/other             # no path matches: 404\
             \n  curl -si http://broken.localhost:{port}/               # the Service has no endpoints: 503\
             \n  curl -s http://{http}/ -H 'Host: anything.example'   # the catch-all defaultBackend\
             \n  curl -s http://{admin}/debug/config                   # what kingress serves, and why not{https}\
             \n\nEdit a file in {folder} and the change is live at once. Ctrl-C stops.\n",
            folder = self.folder.display(),
        )
    }
}

/// Writes the quickstart into `folder`, with each EndpointSlice port replaced by the
/// port of an echo backend started for it. Returns the backends.
async fn materialize(folder: &Path) -> anyhow::Result<Vec<EchoHandle>> {
    let mut backends = Vec::new();
    let mut port_map: BTreeMap<i32, u16> = BTreeMap::new();
    for (file, text) in QUICKSTART {
        let decoded = decode_file(file, text, false).map_err(|e| anyhow::anyhow!("{}", e.0))?;
        let mut docs = Vec::new();
        for object in decoded.objects {
            let value = match object {
                Object::EndpointSlice(mut slice) => {
                    let name = slice.metadata.name.clone().unwrap_or_default();
                    for p in slice.ports.iter_mut().flatten() {
                        let Some(original) = p.port else { continue };
                        let actual = match port_map.get(&original) {
                            Some(a) => *a,
                            None => {
                                let echo = kingress_echo::spawn(EchoOptions {
                                    name: name.clone(),
                                    ..EchoOptions::default()
                                })
                                .await?;
                                let a = echo.addr().port();
                                backends.push(echo);
                                port_map.insert(original, a);
                                a
                            }
                        };
                        p.port = Some(i32::from(actual));
                    }
                    serde_json::to_value(&*slice)?
                }
                Object::IngressClass(o) => serde_json::to_value(&*o)?,
                Object::Ingress(o) => serde_json::to_value(&*o)?,
                Object::Service(o) => serde_json::to_value(&*o)?,
                Object::Secret(o) => serde_json::to_value(&*o)?,
                Object::ConfigMap(o) => serde_json::to_value(&*o)?,
            };
            docs.push(value);
        }
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs});
        let out = folder.join(Path::new(file).with_extension("json"));
        std::fs::write(&out, serde_json::to_vec_pretty(&list)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(backends)
}

/// Starts the demo on the given listeners.
pub async fn start(
    http: tokio::net::TcpListener,
    https: Option<tokio::net::TcpListener>,
    admin: tokio::net::TcpListener,
    folder: PathBuf,
    worker_threads: Option<usize>,
) -> anyhow::Result<Demo> {
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let backends = materialize(&folder).await?;
    let options = GatewayOptions {
        source: crate::gateway::Source::Manifests(folder.clone()),
        compile: kingress_compile::CompileOptions::default(),
        proxy: kingress_proxy::ProxySettings::default(),
        worker_threads,
        default_ssl_certificate: None,
        https_redirect_port: None,
        // The demo has no LoadBalancer Service; keep any L4 port on loopback anyway.
        l4: kingress_proxy::l4::L4Settings {
            bind: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            ..Default::default()
        },
    };
    let gateway = crate::gateway::start_with(options, crate::gateway::Listeners { http, https, admin }).await?;
    Ok(Demo {
        gateway,
        backends,
        folder,
    })
}
