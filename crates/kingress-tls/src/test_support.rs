//! Helpers for the unit tests: certificates made with rcgen, fixtures made with OpenSSL
//! (see `testdata/README.md`), Secrets and Ingresses built by hand, and an in-memory
//! rustls handshake.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, IngressSpec, IngressTLS};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::CertifiedKey;

pub const RSA_CRT: &str = include_str!("testdata/rsa.crt");
pub const RSA_PKCS1_KEY: &str = include_str!("testdata/rsa-pkcs1.key");
pub const RSA_PKCS8_KEY: &str = include_str!("testdata/rsa-pkcs8.key");
pub const EC_CRT: &str = include_str!("testdata/ec.crt");
pub const EC_SEC1_KEY: &str = include_str!("testdata/ec-sec1.key");

/// 2030-01-01T00:00:00Z: every test's `now` (the OpenSSL fixtures are valid 2026-2126).
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

pub fn year(y: i32) -> time::OffsetDateTime {
    rcgen::date_time_ymd(y, 1, 1)
}

/// A PEM certificate (or chain) and key, and the leaf's DER.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

fn leaf_params(names: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.not_before = year(2025);
    params.not_after = year(2125);
    params
}

/// A self-signed ECDSA P-256 certificate for `names`, valid 2025-2125.
pub fn self_signed(names: &[&str]) -> TestCert {
    self_signed_with(leaf_params(names), &rcgen::PKCS_ECDSA_P256_SHA256)
}

pub fn self_signed_with(params: CertificateParams, alg: &'static rcgen::SignatureAlgorithm) -> TestCert {
    let key = KeyPair::generate_for(alg).unwrap();
    let cert = params.self_signed(&key).unwrap();
    TestCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// A self-signed certificate valid from `not_before` to `not_after`.
pub fn self_signed_between(names: &[&str], not_before: i32, not_after: i32) -> TestCert {
    let mut params = leaf_params(names);
    params.not_before = year(not_before);
    params.not_after = year(not_after);
    self_signed_with(params, &rcgen::PKCS_ECDSA_P256_SHA256)
}

/// A certificate authority: its certificate (DER, PEM) and what it signs with.
pub struct TestCa {
    pub der: CertificateDer<'static>,
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = year(2025);
    params.not_after = year(2125);
    params
}

impl TestCa {
    pub fn root(cn: &str) -> Self {
        let params = ca_params(cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, cn: &str) -> Self {
        let params = ca_params(cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Self {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` signed by this CA; `cert_pem` is the leaf alone.
    pub fn leaf(&self, names: &[&str]) -> TestCert {
        let key = KeyPair::generate().unwrap();
        let cert = leaf_params(names).signed_by(&key, &self.issuer).unwrap();
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// A `kubernetes.io/tls` Secret with `tls.crt` and `tls.key` under `data`.
pub fn tls_secret(namespace: &str, name: &str, cert_pem: &str, key_pem: &str) -> Secret {
    let mut data = BTreeMap::new();
    data.insert("tls.crt".to_string(), ByteString(cert_pem.as_bytes().to_vec()));
    data.insert("tls.key".to_string(), ByteString(key_pem.as_bytes().to_vec()));
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(data),
        ..Default::default()
    }
}

pub fn secret_for(namespace: &str, name: &str, cert: &TestCert) -> Secret {
    tls_secret(namespace, name, &cert.cert_pem, &cert.key_pem)
}

/// An Ingress of class `class` created at `created` (Unix seconds; `None`: no timestamp),
/// with one tls entry per `(hosts, secretName)`.
pub fn ingress(
    namespace: &str,
    name: &str,
    created: Option<i64>,
    class: &str,
    tls: &[(&[&str], Option<&str>)],
) -> Ingress {
    Ingress {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            creation_timestamp: created.map(|s| Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())),
            ..Default::default()
        },
        spec: Some(IngressSpec {
            ingress_class_name: Some(class.to_string()),
            tls: Some(
                tls.iter()
                    .map(|(hosts, secret)| IngressTLS {
                        hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
                        secret_name: secret.map(str::to_string),
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn certified(cert: &TestCert) -> Arc<CertifiedKey> {
    crate::parse_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes(), now())
        .unwrap()
        .key
}

/// The client's clock in [`handshake`]: [`now`], not the machine's.
#[derive(Debug)]
struct TestClock;

impl rustls::time_provider::TimeProvider for TestClock {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        Some(rustls::pki_types::UnixTime::since_unix_epoch(
            now().duration_since(UNIX_EPOCH).ok()?,
        ))
    }
}

/// Runs a full rustls handshake in memory: a server resolving certificates with
/// `resolver`, a client trusting `roots` and sending `sni`. Returns the chain the server
/// presented, or the first error. The client verifies certificates at [`now`].
pub fn handshake(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    roots: &[CertificateDer<'static>],
    sni: &str,
    version: &'static rustls::SupportedProtocolVersion,
) -> Result<Vec<CertificateDer<'static>>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    let mut root_store = rustls::RootCertStore::empty();
    for root in roots {
        root_store.add(root.clone())?;
    }
    let client_config = rustls::ClientConfig::builder_with_details(provider, Arc::new(TestClock))
        .with_protocol_versions(&[version])?
        .with_root_certificates(root_store)
        .with_no_client_auth();
    let name = ServerName::try_from(sni.to_string()).map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut client = rustls::ClientConnection::new(Arc::new(client_config), name)?;
    let mut server = rustls::ServerConnection::new(Arc::new(server_config))?;

    for _ in 0..20 {
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(client.peer_certificates().map(<[_]>::to_vec).unwrap_or_default());
        }
        let mut buf = Vec::new();
        while client.wants_write() {
            client
                .write_tls(&mut buf)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            server
                .read_tls(&mut rd)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            server.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server
                .write_tls(&mut buf)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            client
                .read_tls(&mut rd)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            client.process_new_packets()?;
        }
    }
    Err(rustls::Error::General("the handshake did not finish".into()))
}
