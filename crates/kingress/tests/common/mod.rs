//! Starting an in-process gateway on 127.0.0.1:0 for the end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use kingress::gateway::{GatewayHandle, GatewayOptions};
use kingress_compile::CompileOptions;
use kingress_proxy::ProxySettings;
use tokio::net::TcpListener;

pub use kingress_test_support::*;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Env {
    pub dir: tempfile::TempDir,
    pub gateway: GatewayHandle,
    pub client: reqwest::Client,
}

impl Env {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.http_addr, path)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.admin_addr, path)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// GET `path` with a Host header; returns (status, body).
    pub async fn get(&self, host: &str, path: &str) -> (u16, String) {
        let resp = self
            .client
            .get(self.url(path))
            .header("host", host)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    /// GET and parse the echo's JSON.
    pub async fn echo_json(&self, host: &str, path: &str) -> serde_json::Value {
        let (status, body) = self.get(host, path).await;
        assert_eq!(status, 200, "{host}{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until `host path` answers `status`.
    pub async fn wait_status(&self, host: &str, path: &str, status: u16) {
        poll_until(WAIT, &format!("{host}{path} to answer {status}"), || async {
            (self.get(host, path).await.0 == status).then_some(())
        })
        .await;
    }

    pub async fn debug_config(&self) -> serde_json::Value {
        self.client
            .get(self.admin("/debug/config"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Writes `files` into a new folder and starts a gateway on it.
pub async fn start(files: &[(&str, String)], proxy: ProxySettings) -> Env {
    start_with(files, proxy, CompileOptions::default()).await
}

/// [`start`] with compile options (`--configmap`, class flags).
pub async fn start_with(files: &[(&str, String)], proxy: ProxySettings, compile: CompileOptions) -> Env {
    let dir = tempfile::tempdir().unwrap();
    for (name, contents) in files {
        write_atomic(&dir.path().join(name), contents);
    }
    let gateway = start_on_with(dir.path(), proxy, compile).await;
    Env {
        dir,
        gateway,
        client: client(),
    }
}

/// One echo backend named `name`, behind a Service `name`, routed from `host` `/`.
/// Keep the handle alive as long as the backend is needed.
pub async fn start_one(name: &str, host: &str, proxy: ProxySettings) -> (Env, EchoHandle) {
    let backend = echo(name).await;
    let files = vec![
        ("svc.yaml", service_yaml(name, &[backend.addr().port()])),
        ("ing.yaml", ingress_yaml("i", host, &[("/", "Prefix", name)])),
    ];
    (start(&files, proxy).await, backend)
}

pub async fn start_on(dir: &Path, proxy: ProxySettings) -> GatewayHandle {
    start_on_with(dir, proxy, CompileOptions::default()).await
}

pub async fn start_on_with(dir: &Path, proxy: ProxySettings, compile: CompileOptions) -> GatewayHandle {
    let options = GatewayOptions {
        source: kingress::gateway::Source::Manifests(dir.to_path_buf()),
        compile,
        proxy,
        worker_threads: None,
        default_ssl_certificate: None,
        https_redirect_port: None,
        l4: loopback_l4(),
    };
    start_gateway(options).await
}

/// L4 settings for tests: every port on 127.0.0.1.
pub fn loopback_l4() -> kingress_proxy::l4::L4Settings {
    kingress_proxy::l4::L4Settings {
        bind: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        ..Default::default()
    }
}

/// Starts a gateway with HTTP, HTTPS and admin listeners on 127.0.0.1:0.
pub async fn start_gateway(options: GatewayOptions) -> GatewayHandle {
    let listeners = kingress::gateway::Listeners {
        http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        https: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    kingress::gateway::start_with(options, listeners).await.unwrap()
}
