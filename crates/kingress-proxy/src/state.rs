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
use kingress_model::{Config, EndpointTable};

#[derive(Debug)]
pub struct Tables {
    config: ArcSwap<Config>,
    endpoints: ArcSwap<Balanced>,
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
