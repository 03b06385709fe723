//! Ingress `spec.tls` sections and Secrets into a [`CertTable`], as ingress-nginx does it.
//!
//! Our Ingresses are read oldest first (creationTimestamp, then namespace/name; objects
//! without a timestamp first), like `compile_routes`. For each tls entry, each listed
//! host gets the entry's Secret, looked up in the Ingress's namespace, when that Secret
//! parses and its certificate covers the host. The first Ingress to give a host a usable
//! certificate keeps it; a host whose Secret is missing, invalid or does not cover it
//! claims nothing, so a younger Ingress may still give it one (ingress-nginx does the
//! same), and otherwise it is served with the default certificate.
//!
//! An entry without `secretName` serves its hosts with the default certificate, with no
//! diagnostic (ingress-nginx's behaviour). An entry without hosts applies to nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use kingress_compile::{ClassOptions, DEFAULT_NAMESPACE, Snapshot, ours_oldest_first};
use kingress_model::host::HostPattern;
use kingress_model::{Diagnostic, ObjectRef};
use rustls::sign::CertifiedKey;

use crate::cert::{ParsedCert, parse_secret};
use crate::table::CertTable;

/// The controller settings the certificate table needs.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Which Ingresses are ours.
    pub class: ClassOptions,
    /// `--default-ssl-certificate NAMESPACE/NAME`: the certificate for hosts without their
    /// own; the fake certificate when unset, missing or invalid.
    pub default_certificate: Option<(String, String)>,
}

/// Builds the certificate table from the Ingresses of our class. The default certificate
/// is the `--default-ssl-certificate` Secret when it parses, else `fallback` (normally
/// [`fake_certificate`](crate::fake_certificate)). Diagnostics are sorted, without
/// duplicates; each invalid Secret is reported once, on the Secret.
pub fn compile_certs(
    snapshot: &Snapshot,
    options: &TlsOptions,
    fallback: &Arc<CertifiedKey>,
    now: SystemTime,
) -> (CertTable, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let mut secrets = SecretCache::new(&snapshot.secrets, now);
    let default = default_certificate(&mut secrets, options, fallback, &mut diagnostics);
    let mut table = CertTable::new(default);

    // Hosts that an Ingress could not give a certificate; reported once the table is
    // complete, so the diagnostic can say what the host is served with in the end.
    let mut unserved: Vec<(ObjectRef, HostPattern, String)> = Vec::new();
    for ingress in ours_oldest_first(snapshot, &options.class) {
        let namespace = namespace_of(&ingress.metadata);
        let object = ObjectRef::new(
            "Ingress",
            namespace,
            ingress.metadata.name.as_deref().unwrap_or("<unnamed>"),
        );
        for tls in ingress.spec.iter().flat_map(|s| s.tls.iter().flatten()) {
            let secret_name = tls.secret_name.as_deref().filter(|n| !n.is_empty());
            for raw in tls.hosts.iter().flatten() {
                let host = match HostPattern::parse(raw) {
                    Ok(host) => host,
                    Err(e) => {
                        diagnostics.push(Diagnostic::object(object.clone(), format!("tls host skipped: {e}")));
                        continue;
                    }
                };
                let Some(secret_name) = secret_name else {
                    continue;
                };
                let source = format!("{namespace}/{secret_name}");
                if let Some(existing) = table.source(&host) {
                    if existing != source {
                        diagnostics.push(Diagnostic::object(
                            object.clone(),
                            format!(
                                "tls secret \"{source}\" is not used for host {}: an older Ingress already serves \
                                 it with secret \"{existing}\"",
                                host.as_rule()
                            ),
                        ));
                    }
                    continue;
                }
                match secrets.get(namespace, secret_name, &mut diagnostics) {
                    Lookup::Valid(parsed) if parsed.covers(&host.as_rule()) => {
                        table.insert(&host, Arc::clone(&parsed.key), source);
                    }
                    Lookup::Valid(parsed) => {
                        let reason = format!(
                            "the certificate in tls secret \"{source}\" does not cover host {} (it covers {})",
                            host.as_rule(),
                            describe_names(parsed)
                        );
                        unserved.push((object.clone(), host, reason));
                    }
                    // Reported once, on the Secret.
                    Lookup::Invalid => {}
                    Lookup::Missing => {
                        unserved.push((object.clone(), host, format!("tls secret \"{source}\" not found")));
                    }
                }
            }
        }
    }
    for (object, host, reason) in unserved {
        let served = match table.source(&host) {
            Some(source) => format!("host {} is served with tls secret \"{source}\"", host.as_rule()),
            None => format!("host {} is served with the default certificate", host.as_rule()),
        };
        diagnostics.push(Diagnostic::object(object, format!("{reason}; {served}")));
    }
    diagnostics.sort();
    diagnostics.dedup();
    (table, diagnostics)
}

/// The `--default-ssl-certificate` Secret when it parses, else `fallback`.
fn default_certificate(
    secrets: &mut SecretCache<'_>,
    options: &TlsOptions,
    fallback: &Arc<CertifiedKey>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Arc<CertifiedKey> {
    let Some((namespace, name)) = &options.default_certificate else {
        return Arc::clone(fallback);
    };
    let object = ObjectRef::new("Secret", namespace.as_str(), name.as_str());
    let problem = match secrets.parse(namespace, name) {
        Some(Ok(parsed)) => return Arc::clone(&parsed.key),
        Some(Err(reason)) => reason.clone(),
        None => "not found".to_string(),
    };
    // Reported here, with its consequence, rather than again by an Ingress that uses it.
    secrets.mark_reported(namespace, name);
    diagnostics.push(Diagnostic::object(
        object,
        format!("--default-ssl-certificate: {problem}; the self-signed fake certificate is the default"),
    ));
    Arc::clone(fallback)
}

/// A Secret an Ingress names, as [`SecretCache::get`] finds it.
enum Lookup<'a> {
    Missing,
    /// Reported in the diagnostics, once.
    Invalid,
    Valid(&'a ParsedCert),
}

/// Each Secret is parsed at most once per compile, and reported at most once.
struct SecretCache<'a> {
    by_name: HashMap<(&'a str, &'a str), &'a Secret>,
    parsed: HashMap<(String, String), Result<ParsedCert, String>>,
    reported: HashSet<(String, String)>,
    now: SystemTime,
}

impl<'a> SecretCache<'a> {
    fn new(secrets: &'a [Secret], now: SystemTime) -> Self {
        let mut by_name = HashMap::new();
        for secret in secrets {
            if let Some(name) = secret.metadata.name.as_deref() {
                // Duplicates keep the first, as the sources do.
                by_name.entry((namespace_of(&secret.metadata), name)).or_insert(secret);
            }
        }
        Self {
            by_name,
            parsed: HashMap::new(),
            reported: HashSet::new(),
            now,
        }
    }

    /// `None` when the Secret does not exist; else the parse, done once.
    fn parse(&mut self, namespace: &str, name: &str) -> Option<&Result<ParsedCert, String>> {
        let secret = *self.by_name.get(&(namespace, name))?;
        let now = self.now;
        Some(
            self.parsed
                .entry((namespace.to_string(), name.to_string()))
                .or_insert_with(|| parse_secret(secret, now)),
        )
    }

    fn mark_reported(&mut self, namespace: &str, name: &str) {
        self.reported.insert((namespace.to_string(), name.to_string()));
    }

    /// The Secret `namespace/name`; the first time it is found invalid, a diagnostic on it.
    fn get(&mut self, namespace: &str, name: &str, diagnostics: &mut Vec<Diagnostic>) -> Lookup<'_> {
        let Some(secret) = self.by_name.get(&(namespace, name)).copied() else {
            return Lookup::Missing;
        };
        let key = (namespace.to_string(), name.to_string());
        let now = self.now;
        match self
            .parsed
            .entry(key.clone())
            .or_insert_with(|| parse_secret(secret, now))
        {
            Ok(parsed) => Lookup::Valid(parsed),
            Err(reason) => {
                if self.reported.insert(key) {
                    diagnostics.push(Diagnostic::object(
                        ObjectRef::new("Secret", namespace, name),
                        format!("invalid TLS secret, not used: {reason}"),
                    ));
                }
                Lookup::Invalid
            }
        }
    }
}

fn describe_names(parsed: &ParsedCert) -> String {
    if parsed.names.is_empty() {
        "no DNS name".to_string()
    } else {
        parsed.names.join(", ")
    }
}

/// The namespace objects without one live in, as `kubectl apply` would place them.
fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests;
