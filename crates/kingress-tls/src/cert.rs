//! One certificate: a `kubernetes.io/tls` Secret parsed and checked, and the self-signed
//! fallback ingress-nginx calls the "Kubernetes Ingress Controller Fake Certificate".

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Secret;
use kingress_model::host::wildcard_suffix;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::{CertifiedKey, SigningKey};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::time::ASN1Time;

/// The Secret type made for TLS certificates.
pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";
/// ingress-nginx also serves `Opaque` Secrets that carry the two TLS keys.
pub const SECRET_TYPE_OPAQUE: &str = "Opaque";
/// The certificate chain in PEM, leaf first.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// The private key in PEM.
pub const TLS_PRIVATE_KEY_KEY: &str = "tls.key";

/// ingress-nginx's fallback certificate: its subject common name ...
pub const FAKE_CERTIFICATE_CN: &str = "Kubernetes Ingress Controller Fake Certificate";
/// ... its subject organisation ...
pub const FAKE_CERTIFICATE_ORG: &str = "Acme Co";
/// ... and its only subject alternative name.
pub const FAKE_CERTIFICATE_HOST: &str = "ingress.local";
/// How long the fake certificate is valid from the `now` it was made at (ingress-nginx: a year).
pub const FAKE_CERTIFICATE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A certificate chain with its key, checked, and what it is valid for.
#[derive(Clone, Debug)]
pub struct ParsedCert {
    /// The chain (leaf first) and the signing key, ready for rustls.
    pub key: Arc<CertifiedKey>,
    /// The leaf's DNS subject alternative names, lower-cased, without a trailing dot; its
    /// subject common name when it has no DNS name. Sorted, without duplicates.
    pub names: Vec<String>,
    /// The end of the leaf's validity (for expiry warnings and /debug/config).
    pub not_after: SystemTime,
}

impl ParsedCert {
    /// Whether the certificate is valid for `host`: one of its names equals it, or is a
    /// single-label wildcard over it (`*.example.com` covers `a.example.com`, not
    /// `a.b.example.com` nor `example.com`). Case-insensitive; a trailing dot is ignored.
    /// A wildcard host (`*.example.com`) is covered by the same wildcard name.
    pub fn covers(&self, host: &str) -> bool {
        let Some(host) = normalize_name(host) else {
            return false;
        };
        let suffix = wildcard_suffix(&host);
        self.names.iter().any(|name| {
            *name == host || (suffix.is_some() && name.strip_prefix("*.").is_some_and(|s| Some(s) == suffix))
        })
    }
}

/// Parses and checks one TLS Secret: type `kubernetes.io/tls` (or `Opaque`, or no type,
/// which the API defaults to `Opaque`), `tls.crt` and `tls.key` from `stringData` or
/// `data`. See [`parse_pem`] for the checks.
pub fn parse_secret(secret: &Secret, now: SystemTime) -> Result<ParsedCert, String> {
    match secret.type_.as_deref() {
        None | Some("") | Some(SECRET_TYPE_TLS) | Some(SECRET_TYPE_OPAQUE) => {}
        Some(other) => return Err(format!("secret type {other:?} is not {SECRET_TYPE_TLS:?}")),
    }
    let cert = secret_value(secret, TLS_CERT_KEY).ok_or_else(|| format!("the secret has no {TLS_CERT_KEY}"))?;
    let key =
        secret_value(secret, TLS_PRIVATE_KEY_KEY).ok_or_else(|| format!("the secret has no {TLS_PRIVATE_KEY_KEY}"))?;
    parse_pem(cert, key, now)
}

/// Parses and checks a PEM certificate chain (leaf first; other PEM sections are ignored)
/// and a PEM private key (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY` or SEC1
/// `EC PRIVATE KEY`). The key must match the leaf's public key, and the leaf must be
/// valid at `now`. Every certificate of the chain must be well-formed X.509; the chain
/// itself is not verified (clients do that).
pub fn parse_pem(cert_pem: &[u8], key_pem: &[u8], now: SystemTime) -> Result<ParsedCert, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{TLS_CERT_KEY} is not valid PEM: {e}"))?;
    let (names, not_before, not_after) = {
        let Some(leaf_der) = chain.first() else {
            return Err(format!("{TLS_CERT_KEY} holds no PEM CERTIFICATE block"));
        };
        let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der.as_ref())
            .map_err(|e| format!("the first certificate in {TLS_CERT_KEY} is not a valid X.509 certificate: {e}"))?;
        for (n, der) in chain.iter().enumerate().skip(1) {
            x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
                format!(
                    "certificate {} in {TLS_CERT_KEY} is not a valid X.509 certificate: {e}",
                    n.saturating_add(1)
                )
            })?;
        }
        (dns_names(&leaf)?, leaf.validity().not_before, leaf.validity().not_after)
    };

    let key_der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "{TLS_PRIVATE_KEY_KEY} holds no PEM private key (\"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \
             \"EC PRIVATE KEY\"; encrypted keys are not supported)"
        ),
        e => format!("{TLS_PRIVATE_KEY_KEY} is not valid PEM: {e}"),
    })?;
    let signing_key = signing_key(&key_der)?;
    let key = CertifiedKey::new(chain, signing_key);
    key.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            format!("the private key in {TLS_PRIVATE_KEY_KEY} does not match the certificate in {TLS_CERT_KEY}")
        }
        e => format!("cannot check that {TLS_PRIVATE_KEY_KEY} matches {TLS_CERT_KEY}: {e}"),
    })?;

    let now_secs = unix_seconds(now);
    if now_secs < not_before.timestamp() {
        return Err(format!(
            "the certificate is not valid before {}",
            format_time(not_before)
        ));
    }
    if now_secs > not_after.timestamp() {
        return Err(format!("the certificate expired on {}", format_time(not_after)));
    }
    Ok(ParsedCert {
        key: Arc::new(key),
        names,
        not_after: system_time(not_after.timestamp()),
    })
}

/// ingress-nginx's "Kubernetes Ingress Controller Fake Certificate": self-signed, subject
/// `O=Acme Co, CN=Kubernetes Ingress Controller Fake Certificate`, SAN `ingress.local`,
/// valid for a year from `now`. The key is a fresh ECDSA P-256 key (ingress-nginx uses
/// RSA 2048; ring cannot generate RSA keys, and every current client speaks ECDSA).
pub fn fake_certificate(now: SystemTime) -> Result<Arc<CertifiedKey>, String> {
    let fail = |e: rcgen::Error| format!("cannot make the fake certificate: {e}");
    let key_pair = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(vec![FAKE_CERTIFICATE_HOST.to_string()]).map_err(fail)?;
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::OrganizationName, FAKE_CERTIFICATE_ORG);
    subject.push(rcgen::DnType::CommonName, FAKE_CERTIFICATE_CN);
    params.distinguished_name = subject;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let not_after = now
        .checked_add(FAKE_CERTIFICATE_VALIDITY)
        .ok_or_else(|| "cannot make the fake certificate: the time is out of range".to_string())?;
    params.not_before = offset_date_time(now)?;
    params.not_after = offset_date_time(not_after)?;
    let cert = params.self_signed(&key_pair).map_err(fail)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    let key = CertifiedKey::new(vec![cert.der().clone()], signing_key(&key_der)?);
    Ok(Arc::new(key))
}

/// A Secret's value: `stringData` wins over `data`, as when the API server merges them.
fn secret_value<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    let from_string = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(String::as_bytes);
    from_string.or_else(|| secret.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.as_slice()))
}

fn signing_key(der: &PrivateKeyDer<'_>) -> Result<Arc<dyn SigningKey>, String> {
    rustls::crypto::ring::sign::any_supported_type(der)
        .map_err(|e| format!("{TLS_PRIVATE_KEY_KEY} is not a usable RSA, ECDSA or Ed25519 private key: {e}"))
}

/// The leaf's DNS SANs, else its common name.
fn dns_names(leaf: &X509Certificate<'_>) -> Result<Vec<String>, String> {
    let san = leaf
        .subject_alternative_name()
        .map_err(|e| format!("the certificate's subjectAltName cannot be read: {e}"))?;
    let mut names: Vec<String> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::DNSName(n) => normalize_name(n),
            _ => None,
        })
        .collect();
    if names.is_empty() {
        names = leaf
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .filter_map(normalize_name)
            .collect();
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Lower case, without surrounding blanks and a trailing dot; `None` when empty.
fn normalize_name(name: &str) -> Option<String> {
    let name = name.trim();
    let name = name.strip_suffix('.').unwrap_or(name);
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// Seconds since the Unix epoch, negative before it, saturating.
fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn system_time(unix_seconds: i64) -> SystemTime {
    let t = match u64::try_from(unix_seconds) {
        Ok(s) => UNIX_EPOCH.checked_add(Duration::from_secs(s)),
        Err(_) => UNIX_EPOCH.checked_sub(Duration::from_secs(unix_seconds.unsigned_abs())),
    };
    t.unwrap_or(UNIX_EPOCH)
}

fn offset_date_time(t: SystemTime) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds(t))
        .map_err(|e| format!("cannot make the fake certificate: the time is out of range: {e}"))
}

/// `2030-01-01T00:00:00Z`.
fn format_time(t: ASN1Time) -> String {
    let t = t.to_datetime().to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests;
