//! The routing configuration kingress serves: what `compile()` produces and what
//! the data planes read.
//!
//! This crate is pure data and pure functions: no I/O, no clock, no async runtime,
//! no Kubernetes client. It knows nothing of where objects come from (see
//! `kingress-sources`) nor how they are turned into routes (see `kingress-compile`);
//! it only answers "which route serves this host and path?" and "which endpoints
//! serve this backend?".
//!
//! # Layout
//! - [`host`]: host normalisation and the exact / wildcard / any-host server choice.
//! - [`path`]: the per-host path table (Exact, Prefix, ImplementationSpecific) and its
//!   precedence rules.
//! - [`config`]: [`Config`], the immutable routing table published with one atomic swap,
//!   and [`Config::lookup`].
//! - [`endpoints`]: [`EndpointTable`], the ready endpoints per backend, published on its
//!   own swap so endpoint churn never recompiles routes.
//! - [`l4`]: [`L4Table`], the TCP/UDP ports and SSL passthrough hosts, on their own swap.
//! - [`policy`]: [`BackendPolicy`], how a route balances and retries (from annotations).
//! - [`diag`]: [`Diagnostic`], how a bad object or file is reported without failing the rest.

pub mod config;
pub mod diag;
pub mod endpoints;
pub mod host;
pub mod l4;
pub mod path;
pub mod policy;

pub use config::{BackendId, Config, ConfigBuilder, Route, RouteSource, Server};
pub use diag::{Diagnostic, ObjectRef, Subject};
pub use endpoints::{EndpointSet, EndpointTable};
pub use l4::{L4Port, L4Protocol, L4Route, L4Source, L4Table, ProxyVersion, udp_backend};
pub use path::PathType;
pub use policy::{
    AffinityMode, BackendPolicy, BackendProtocol, Balance, CookieAffinity, HashKey, HashPart, RetryPolicy, SameSite,
};
