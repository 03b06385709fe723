//! Applies what a source read: compile, publish, report.
//!
//! Ingresses, IngressClasses and Secrets rebuild the certificate table.
//! Route-affecting objects (IngressClasses, Ingresses, Services, the controller
//! ConfigMap) recompile the routing
//! table and the L4 table (whose ports the L4 manager then binds or closes); Services and EndpointSlices rebuild the endpoint table. An EndpointSlice-only
//! change never touches the routes. The endpoint table is published before the routes,
//! so a route that appears together with its backend never sees the old (backend-less)
//! endpoint table.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use kingress_compile::{CompileOptions, EndpointCache, RouteCache, Snapshot, compile_l4};
use kingress_model::Diagnostic;
use kingress_proxy::Tables;
use kingress_proxy::l4::L4Manager;
use kingress_sources::update::Affects;
use kingress_sources::{Scan, Update};
use kingress_tls::{CertStore, TlsOptions, compile_certs};
use rustls::sign::CertifiedKey;

/// Builds the certificate table (for the HTTPS listener's SNI resolver) from the same
/// snapshots.
pub struct CertCompiler {
    pub store: Arc<CertStore>,
    pub options: TlsOptions,
    /// The self-signed certificate used when no default certificate is configured.
    pub fallback: Arc<CertifiedKey>,
}

/// What was last applied, to tell which tables a new scan affects.
#[derive(Default)]
struct Applied {
    snapshot: Option<Snapshot>,
    /// The endpoint table, recompiled per changed Service (see [`EndpointCache`]).
    endpoints: EndpointCache,
    /// The routing table, recompiled per changed Ingress (see [`RouteCache`]).
    routes: RouteCache,
    route_diagnostics: Vec<Diagnostic>,
    endpoint_diagnostics: Vec<Diagnostic>,
    l4_diagnostics: Vec<Diagnostic>,
    cert_diagnostics: Vec<Diagnostic>,
    reported: BTreeSet<Diagnostic>,
}

pub struct Controller {
    /// Kubernetes mode: new diagnostics also become Events.
    events: Mutex<Option<kingress_kube::EventSink>>,
    /// Opens and closes the L4 ports to match each published L4 table.
    l4: Mutex<Option<Arc<L4Manager>>>,
    tables: Arc<Tables>,
    options: CompileOptions,
    tls: CertCompiler,
    applied: Mutex<Applied>,
    /// The current diagnostics, for /debug/config.
    diagnostics: Mutex<Vec<Diagnostic>>,
}

impl Controller {
    pub fn new(tables: Arc<Tables>, options: CompileOptions, tls: CertCompiler) -> Arc<Self> {
        Arc::new(Self {
            events: Mutex::new(None),
            l4: Mutex::new(None),
            tables,
            options,
            tls,
            applied: Mutex::new(Applied::default()),
            diagnostics: Mutex::new(Vec::new()),
        })
    }

    pub fn tables(&self) -> &Arc<Tables> {
        &self.tables
    }

    /// Sends every new diagnostic to `sink` as well (Kubernetes Events).
    pub fn set_event_sink(&self, sink: kingress_kube::EventSink) {
        if let Ok(mut e) = self.events.lock() {
            *e = Some(sink);
        }
    }

    /// Binds the L4 ports of every L4 table published from now on (and reports ports
    /// that cannot be bound as diagnostics).
    pub fn set_l4(&self, manager: Arc<L4Manager>) {
        if let Ok(mut l4) = self.l4.lock() {
            *l4 = Some(manager);
        }
    }

    /// The L4 manager, once set.
    pub fn l4(&self) -> Option<Arc<L4Manager>> {
        self.l4.lock().ok().and_then(|m| m.clone())
    }

    pub fn certificates(&self) -> &Arc<CertStore> {
        &self.tls.store
    }

    /// The current diagnostics: the last publish's, and the L4 ports that cannot be
    /// bound right now.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut all = self.diagnostics.lock().map(|d| d.clone()).unwrap_or_default();
        if let Some(manager) = self.l4() {
            all.extend(manager.failures());
            all.sort();
            all.dedup();
        }
        all
    }

    /// Compiles and publishes a scan (a whole snapshot: what changed is found by
    /// comparing it with the last one). Never fails: problems are diagnostics.
    pub fn apply(&self, scan: Scan) {
        let started = Instant::now();
        let Ok(mut applied) = self.applied.lock() else {
            return;
        };
        let new = scan.snapshot;
        let affects = match &applied.snapshot {
            None => Affects {
                routes: true,
                endpoints: true,
                certificates: true,
            },
            Some(old) => Affects {
                routes: old.ingress_classes != new.ingress_classes
                    || old.ingresses != new.ingresses
                    || old.services != new.services
                    || old.config_maps != new.config_maps,
                endpoints: old.services != new.services || old.endpoint_slices != new.endpoint_slices,
                certificates: old.ingress_classes != new.ingress_classes
                    || old.ingresses != new.ingresses
                    || old.secrets != new.secrets,
            },
        };
        if affects.endpoints {
            applied.endpoints = EndpointCache::from_snapshot(&new);
        }
        applied.routes.invalidate();
        applied.snapshot = Some(new);
        self.compile_and_publish(&mut applied, affects, scan.diagnostics, started);
    }

    /// Applies the changed parts of the snapshot a watch-based source sends: no clone or
    /// comparison of what did not change, and the endpoints of the changed Services only.
    /// Its lists are kept in [`kingress_compile::ObjectKey`] order, which the first update
    /// (every kind whole) sets up.
    pub fn apply_update(&self, update: Update) {
        let started = Instant::now();
        let Ok(mut applied) = self.applied.lock() else {
            return;
        };
        let first = applied.snapshot.is_none();
        let mut affects = update.affects();
        if first {
            affects = Affects {
                routes: true,
                endpoints: true,
                certificates: true,
            };
        }
        let fed = !first && update.update_endpoints(&mut applied.endpoints);
        if update.services.is_some() || update.config_maps.is_some() {
            applied.routes.invalidate();
        }
        let snapshot = applied.snapshot.get_or_insert_with(Snapshot::default);
        update.apply_to(snapshot);
        if affects.endpoints && !fed {
            applied.endpoints = EndpointCache::from_snapshot(snapshot);
        }
        self.compile_and_publish(&mut applied, affects, Vec::new(), started);
    }

    fn compile_and_publish(
        &self,
        applied: &mut Applied,
        affects: Affects,
        source_diagnostics: Vec<Diagnostic>,
        started: Instant,
    ) {
        let Some(new) = applied.snapshot.as_ref() else {
            return;
        };
        let (routes_changed, endpoints_changed, certs_changed) =
            (affects.routes, affects.endpoints, affects.certificates);
        if certs_changed {
            let (table, diags) = compile_certs(new, &self.tls.options, &self.tls.fallback, SystemTime::now());
            self.tls.store.publish(table);
            applied.cert_diagnostics = diags;
        }
        if endpoints_changed {
            self.tables.publish_endpoints(applied.endpoints.table().clone());
            applied.endpoint_diagnostics = applied.endpoints.diagnostics();
        }
        if routes_changed {
            let (config, diags) = applied.routes.compile(new, &self.options);
            tracing::debug!(routes = config.route_count(), "routing table compiled");
            self.tables.publish_config(config);
            applied.route_diagnostics = diags;
            // The L4 table reads the same kinds as the routes (Services, ConfigMaps,
            // Ingresses for passthrough); its endpoints are in the endpoint table above.
            let (l4, diags) = compile_l4(new, &self.options);
            self.tables.publish_l4(l4);
            if let Some(manager) = self.l4() {
                // Binds before ready; ports that cannot be bound are read below.
                let _ = manager.apply();
            }
            applied.l4_diagnostics = diags;
        }
        // Ports that cannot be bound now: the manager retries them on its own, so they are
        // read live (here for logs and Events, in `diagnostics()` for /debug/config).
        let bind_failures = self.l4().map(|m| m.failures()).unwrap_or_default();
        let (config_gen, endpoints_gen) = self.tables.generations();

        let mut all: BTreeSet<Diagnostic> = source_diagnostics.into_iter().collect();
        all.extend(applied.route_diagnostics.iter().cloned());
        all.extend(applied.endpoint_diagnostics.iter().cloned());
        all.extend(applied.l4_diagnostics.iter().cloned());
        all.extend(bind_failures.iter().cloned());
        all.extend(applied.cert_diagnostics.iter().cloned());
        let new: Vec<Diagnostic> = all.difference(&applied.reported).cloned().collect();
        for d in &new {
            tracing::warn!(subject = %d.subject, reason = %d.reason, "{d}");
        }
        if let Ok(events) = self.events.lock()
            && let Some(sink) = events.as_ref()
        {
            sink.send(new);
        }
        for d in applied.reported.difference(&all) {
            tracing::info!(subject = %d.subject, "resolved: {d}");
        }
        if let Ok(mut current) = self.diagnostics.lock() {
            *current = all.iter().filter(|d| !bind_failures.contains(d)).cloned().collect();
        }
        let count = all.len();
        applied.reported = all;
        tracing::info!(
            config_generation = config_gen,
            endpoints_generation = endpoints_gen,
            routes_recompiled = routes_changed,
            endpoints_rebuilt = endpoints_changed,
            certificates_rebuilt = certs_changed,
            diagnostics = count,
            elapsed_us = started.elapsed().as_micros() as u64,
            "configuration published"
        );
        self.tables.set_ready(true);
    }
}
