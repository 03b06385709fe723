//! The certificate table rustls reads on each handshake, and the atomic swap it lives in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use kingress_model::host::{HostPattern, normalize_request_host, wildcard_suffix};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate a host is served with, and where it came from.
#[derive(Clone, Debug)]
struct Entry {
    key: Arc<CertifiedKey>,
    /// `namespace/secret`, for /debug/config and for "who claimed this host first".
    source: String,
}

/// SNI name to certificate: exact hosts, single-label wildcards, and the default for
/// everything else. Immutable once published; [`compile_certs`](crate::compile_certs)
/// builds it.
#[derive(Clone, Debug)]
pub struct CertTable {
    /// Lower-cased host -> certificate.
    exact: HashMap<String, Entry>,
    /// `*.example.com` stored as `example.com` -> certificate.
    wildcard: HashMap<String, Entry>,
    /// Hosts without their own certificate, clients without SNI, IP addresses.
    default: Arc<CertifiedKey>,
}

impl CertTable {
    /// An empty table: every name gets `default`.
    pub fn new(default: Arc<CertifiedKey>) -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
        }
    }

    /// Gives `host` its own certificate, unless it already has one: the first claim keeps
    /// the host. `source` names the certificate (`namespace/secret`). Returns whether
    /// the certificate was added.
    pub fn insert(&mut self, host: &HostPattern, key: Arc<CertifiedKey>, source: impl Into<String>) -> bool {
        let (map, name) = match host {
            HostPattern::Exact(h) => (&mut self.exact, h),
            HostPattern::Wildcard(s) => (&mut self.wildcard, s),
        };
        if map.contains_key(name) {
            return false;
        }
        map.insert(
            name.clone(),
            Entry {
                key,
                source: source.into(),
            },
        );
        true
    }

    /// Where the certificate of `host` came from (`namespace/secret`), if it has its own.
    pub fn source(&self, host: &HostPattern) -> Option<&str> {
        let entry = match host {
            HostPattern::Exact(h) => self.exact.get(h),
            HostPattern::Wildcard(s) => self.wildcard.get(s),
        };
        entry.map(|e| e.source.as_str())
    }

    /// SNI -> certificate: the exact host (case-insensitive, trailing dot ignored), else a
    /// single-label wildcard (`*.example.com` covers `a.example.com`, not
    /// `a.b.example.com` nor `example.com`), else the default. No SNI, an empty one or an
    /// IP address get the default.
    pub fn resolve(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        Arc::clone(self.lookup(sni))
    }

    fn lookup(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(host) = sni.and_then(normalize_request_host) else {
            return &self.default;
        };
        let unbracketed = host.trim_start_matches('[').trim_end_matches(']');
        if unbracketed.parse::<IpAddr>().is_ok() {
            return &self.default;
        }
        if let Some(entry) = self.exact.get(&host) {
            return &entry.key;
        }
        match wildcard_suffix(&host).and_then(|suffix| self.wildcard.get(suffix)) {
            Some(entry) => &entry.key,
            None => &self.default,
        }
    }

    /// The hosts with their own certificate, sorted: (host as an Ingress rule writes it,
    /// lower-cased; `namespace/secret`).
    pub fn hosts(&self) -> Vec<(String, String)> {
        let exact = self.exact.iter().map(|(h, e)| (h.clone(), e.source.clone()));
        let wildcard = self.wildcard.iter().map(|(s, e)| (format!("*.{s}"), e.source.clone()));
        let mut hosts: Vec<_> = exact.chain(wildcard).collect();
        hosts.sort();
        hosts
    }

    /// The certificate for everything without its own.
    pub fn default_cert(&self) -> &Arc<CertifiedKey> {
        &self.default
    }
}

/// The resolver handed to rustls. [`publish`](Self::publish) swaps the table atomically:
/// new handshakes see it at once, established connections keep their certificate.
#[derive(Debug)]
pub struct CertStore {
    table: ArcSwap<CertTable>,
}

impl CertStore {
    pub fn new(table: CertTable) -> Self {
        Self {
            table: ArcSwap::from_pointee(table),
        }
    }

    /// Replaces the table for every handshake from now on.
    pub fn publish(&self, table: CertTable) {
        self.table.store(Arc::new(table));
    }

    /// The current table.
    pub fn load(&self) -> Guard<Arc<CertTable>> {
        self.table.load()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.table.load().resolve(hello.server_name()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests;
