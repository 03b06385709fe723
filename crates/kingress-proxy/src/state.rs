//! [`Tables`]: what the data planes read, published with atomic swaps.
//!
//! Two swaps on purpose: the routing [`Config`] changes when Ingresses or Services do;
//! the endpoint table (with its balancer state) when EndpointSlices do, which is far more
//! often. A request loads each once and keeps those generations to its end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use kingress_balance::{Balanced, HealthPolicy, Nanos};
use kingress_model::{Config, EndpointTable, L4Table};

#[derive(Debug)]
pub struct Tables {
    config: ArcSwap<Config>,
    endpoints: ArcSwap<Balanced>,
    /// The L4 ports and passthrough hosts (their endpoints are in `endpoints`).
    l4: ArcSwap<L4Table>,
    /// Woken on every L4 publish, for the L4 listener manager.
    l4_changed: tokio::sync::watch::Sender<u64>,
    /// The balancer's clock: [`Tables::now`] counts from here.
    epoch: Instant,
    health: HealthPolicy,
    /// Set once the first complete configuration is live; cleared while draining.
    ready: AtomicBool,
    config_generation: AtomicU64,
    endpoints_generation: AtomicU64,
}

impl Default for Tables {
    fn default() -> Self {
        Self::with_health(HealthPolicy::default())
    }
}

impl Tables {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Tables whose endpoints are ejected by `health` (passive outlier detection).
    pub fn with_health(health: HealthPolicy) -> Self {
        Self {
            config: ArcSwap::default(),
            endpoints: ArcSwap::default(),
            l4: ArcSwap::default(),
            l4_changed: tokio::sync::watch::Sender::new(0),
            epoch: Instant::now(),
            health,
            ready: AtomicBool::new(false),
            config_generation: AtomicU64::new(0),
            endpoints_generation: AtomicU64::new(0),
        }
    }

    /// Monotonic nanoseconds for the balancer (never 0).
    pub fn now(&self) -> Nanos {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// The current routing table, for a short look: no reference count is taken, the
    /// request path only needs it during the lookup.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// The current endpoint table, kept by a request to its end (retries pick from it).
    pub fn endpoints(&self) -> Arc<Balanced> {
        self.endpoints.load_full()
    }

    /// Publishes a new routing table.
    pub fn publish_config(&self, config: Config) -> u64 {
        self.config.store(Arc::new(config));
        self.config_generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Publishes a new endpoint table, carrying over the balancer state of the backends
    /// that stay.
    pub fn publish_endpoints(&self, table: EndpointTable) -> u64 {
        // Only one publisher runs at a time (the source's thread), so load-then-store
        // does not lose an update.
        let previous = self.endpoints.load();
        let next = Balanced::new(table, Some(&previous), self.now(), self.health);
        self.endpoints.store(Arc::new(next));
        self.endpoints_generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The current L4 table, for a short look (a new connection's route).
    pub fn l4(&self) -> arc_swap::Guard<Arc<L4Table>> {
        self.l4.load()
    }

    /// Publishes a new L4 table and wakes [`Tables::l4_changes`] watchers. Returns its
    /// generation.
    pub fn publish_l4(&self, table: L4Table) -> u64 {
        self.l4.store(Arc::new(table));
        let mut generation = 0;
        self.l4_changed.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        generation
    }

    /// A receiver that sees every L4 publish (its value is the generation).
    pub fn l4_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.l4_changed.subscribe()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn generations(&self) -> (u64, u64) {
        (
            self.config_generation.load(Ordering::Acquire),
            self.endpoints_generation.load(Ordering::Acquire),
        )
    }
}
