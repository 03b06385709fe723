//! Test helpers shared by the end-to-end tests: polling with a deadline (never sleep as
//! synchronisation), manifest builders, and a raw HTTP/1.1 client for the wire-level
//! cases a high-level client hides (Expect: 100-continue, exact status lines).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

pub use kingress_echo::{EchoHandle, EchoOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn poll_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An echo backend on 127.0.0.1:0.
pub async fn echo(name: &str) -> EchoHandle {
    kingress_echo::spawn(EchoOptions {
        name: name.to_string(),
        ..EchoOptions::default()
    })
    .await
    .unwrap()
}

/// A Service `name` (port 80, named http) and an EndpointSlice with the given ports on
/// 127.0.0.1, as YAML.
pub fn service_yaml(name: &str, endpoint_ports: &[u16]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports:\n  - {{name: http, port: 80}}\n"
    );
    for (i, port) in endpoint_ports.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{i}\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports:\n- {{name: http, port: {port}}}\nendpoints:\n- addresses: [127.0.0.1]\n"
        ));
    }
    out
}

/// An Ingress of class kingress with one rule: `host` ("" for none) and paths
/// `(path, pathType, service)`.
pub fn ingress_yaml(name: &str, host: &str, paths: &[(&str, &str, &str)]) -> String {
    let mut out = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ingressClassName: kingress\n  rules:\n  - "
    );
    if !host.is_empty() {
        out.push_str(&format!("host: \"{host}\"\n    "));
    }
    out.push_str("http:\n      paths:\n");
    for (path, ty, svc) in paths {
        out.push_str(&format!(
            "      - path: {path}\n        pathType: {ty}\n        backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}\n"
        ));
    }
    out
}

/// Writes a file atomically (write to a temporary name, rename), as editors do.
pub fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A parsed HTTP/1.1 response from [`raw_request`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Reads one response (head and a Content-Length or chunked body) from a stream.
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "connection closed before a full response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut resp = RawResponse {
        status,
        head,
        body: Vec::new(),
    };
    let mut rest = buf[head_end..].to_vec();
    if status == 100 || status == 101 || status == 204 || status == 304 {
        return resp;
    }
    if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().unwrap();
        while rest.len() < len {
            let mut chunk = [0u8; 65536];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "body cut short");
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        resp.body = rest;
    } else if resp.header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            if rest.windows(5).any(|w| w == b"0\r\n\r\n") {
                break;
            }
            let mut chunk = [0u8; 65536];
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        resp.body = rest;
    }
    resp
}

/// Sends raw bytes on a new connection and reads one response.
pub async fn raw_request(addr: std::net::SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response(&mut s).await
}

/// Reads a response head, then its body as it streams (chunked or Content-Length),
/// calling `on_data` for every piece, until the body ends. Returns (status, body bytes).
pub async fn read_streamed<R: tokio::io::AsyncRead + Unpin>(r: &mut R, mut on_data: impl FnMut(&[u8])) -> (u16, u64) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = r.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut pending: Vec<u8> = buf[head_end..].to_vec();
    let mut total = 0u64;
    if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        let len: u64 = len.trim().parse().unwrap();
        loop {
            let take = pending.len().min((len - total) as usize);
            on_data(&pending[..take]);
            total += take as u64;
            pending.drain(..take);
            if total == len {
                return (status, total);
            }
            fill(r, &mut pending, &mut chunk).await;
        }
    }
    // Chunked.
    loop {
        let line_end = loop {
            if let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            fill(r, &mut pending, &mut chunk).await;
        };
        let size_text = String::from_utf8_lossy(&pending[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        pending.drain(..line_end + 2);
        while pending.len() < size + 2 {
            fill(r, &mut pending, &mut chunk).await;
        }
        if size == 0 {
            return (status, total);
        }
        on_data(&pending[..size]);
        total += size as u64;
        pending.drain(..size + 2);
    }
}

async fn fill<R: tokio::io::AsyncRead + Unpin>(r: &mut R, pending: &mut Vec<u8>, chunk: &mut [u8]) {
    let n = r.read(chunk).await.unwrap();
    assert!(n > 0, "body cut short");
    pending.extend_from_slice(&chunk[..n]);
}

/// A rustls verifier that accepts any server certificate: tests and benches look at which
/// certificate a server presents (or measure its handshakes), not at whether it chains to a
/// trusted root.
#[derive(Debug)]
pub struct AcceptAnyServerCert;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A certificate authority of a test's own, and the leaves it signs: for TLS backends a
/// client must verify end to end (SSL passthrough), unlike [`AcceptAnyServerCert`].
pub struct TestCa {
    /// The CA certificate: the one root a client trusts.
    pub der: rustls::pki_types::CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(cn: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf for `hosts`: its certificate and key.
    pub fn leaf(
        &self,
        hosts: &[&str],
    ) -> (
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (
            cert.der().clone(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }

    /// A rustls server configuration (ring) presenting a leaf for `hosts`.
    pub fn server_config(&self, hosts: &[&str]) -> rustls::ServerConfig {
        let (cert, key) = self.leaf(hosts);
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap()
    }

    /// A rustls client configuration (ring) that trusts this CA and nothing else.
    pub fn client_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }
}
