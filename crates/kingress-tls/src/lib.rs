//! TLS termination, the pure part: Kubernetes Secrets and Ingress `spec.tls` sections in,
//! a certificate table and a rustls SNI resolver out.
//!
//! Like `kingress-compile`, everything here is a function of its arguments: no I/O, no
//! async runtime, no clock (`now` is an argument). The one exception is
//! [`fake_certificate`], which draws a fresh key from the operating system's random
//! source. A bad Secret or tls section never fails the table: it becomes a
//! [`Diagnostic`](kingress_model::Diagnostic) and the hosts it concerns get the default
//! certificate, as in ingress-nginx.
//!
//! It is not: a TLS listener (the proxy hands [`CertStore`] to rustls), nor a watcher
//! (the sources fill [`Snapshot::secrets`](kingress_compile::Snapshot::secrets)).
//! Crypto is rustls with the ring provider only, the same rustls pingora uses.
//!
//! # Layout
//! - [`cert`]: one Secret into a [`ParsedCert`] (PEM chain, private key in PKCS#8, PKCS#1
//!   or SEC1, key/certificate match, validity at `now`, DNS names), and ingress-nginx's
//!   self-signed "Fake Certificate".
//! - [`table`]: the [`CertTable`] (exact host, then single-label wildcard, then the default)
//!   and [`CertStore`], the `ArcSwap` that rustls asks for each handshake.
//! - [`compile`]: [`compile_certs`] builds the table from our Ingresses, oldest first, with
//!   diagnostics.

pub mod cert;
pub mod compile;
pub mod table;

pub use cert::{ParsedCert, fake_certificate, parse_pem, parse_secret};
pub use compile::{TlsOptions, compile_certs};
pub use table::{CertStore, CertTable};

#[cfg(test)]
mod test_support;
