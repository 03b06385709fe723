//! The `kingress` binary's library: command line, wiring, admin listener.
//!
//! Everything `main.rs` does is reachable from here, so the end-to-end tests start the
//! same gateway in-process on port 0.
//!
//! # Layout
//! - [`cli`]: the clap command line (`run`, `echo`, `demo`), validated into typed options
//!   before any port is bound.
//! - [`controller`]: applies source scans: compiles, publishes the tables (endpoints
//!   first, then routes), logs diagnostics once.
//! - [`admin`]: /healthz, /readyz, /debug/config.
//! - [`gateway`]: binds and runs the listeners and the manifest watcher.
//! - [`demo`]: the gateway plus echo backends from `examples/quickstart`.
//! - [`logging`]: the tracing subscriber (the only place one is installed).

pub mod admin;
pub mod cli;
pub mod controller;
pub mod demo;
pub mod gateway;
pub mod logging;
