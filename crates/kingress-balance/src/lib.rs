//! Per-request endpoint choice.
//!
//! [`Balanced`] pairs an [`EndpointTable`] with what the balancer knows: a round-robin
//! cursor per backend and [`EndpointStats`] (latency EWMA, in-flight count, failure
//! streak, ejection) per endpoint address. Both are carried over from the previous
//! generation for the backends and addresses that stay, so a scale-up, scale-down or
//! rolling update never resets what was learnt; a removed endpoint keeps its stats for
//! the requests still on it (they hold the old generation).
//!
//! Algorithms ([`Strategy`]): round-robin; EWMA with power of two choices (see
//! [`EndpointStats::score`]); consistent
//! hashing of a request key over a ring; cookie affinity (balanced: the cookie is a ring
//! key; persistent: the cookie names the endpoint). Ejected endpoints are skipped while
//! any other endpoint can serve; when all are ejected they are all tried again.
//!
//! No I/O and no clock: the caller passes `now` and the random source, so everything
//! here is deterministic under test. The request path takes no lock.

mod ring;
mod stats;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use kingress_model::{AffinityMode, BackendId, EndpointSet, EndpointTable};
use rand::Rng;

pub use ring::{POINTS, Ring, endpoint_key, hash64};
pub use stats::{DECAY, EndpointStats, HealthPolicy, InFlight, Nanos, SECOND};

/// How to choose, with what the request brings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy<'a> {
    RoundRobin,
    Ewma,
    /// The hash of the request's `upstream-hash-by` key ([`hash64`]).
    Hash(u64),
    /// Cookie affinity with the cookie's value, if the request had one.
    Cookie {
        value: Option<&'a str>,
        mode: AffinityMode,
    },
}

/// The endpoint chosen for one attempt.
#[derive(Clone, Debug)]
pub struct Chosen {
    pub addr: SocketAddr,
    pub stats: Arc<EndpointStats>,
    /// Cookie affinity: the value to set (a new session, or the pinned endpoint was gone).
    pub cookie: Option<String>,
}

/// The outcome of a pick.
#[derive(Clone, Debug)]
pub enum Pick {
    Endpoint(Chosen),
    /// The backend has no ready endpoint (or every one was already tried).
    NoEndpoint,
    /// The backend is unknown: its Service (or Service port) does not exist.
    UnknownBackend,
}

impl Pick {
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Pick::Endpoint(c) => Some(c.addr),
            _ => None,
        }
    }
}

/// One backend in one generation.
#[derive(Debug)]
struct Backend {
    set: Arc<EndpointSet>,
    /// Aligned with `set.addrs`.
    stats: Vec<Arc<EndpointStats>>,
    cursor: Arc<AtomicUsize>,
    /// Built on first use by a hashing or balanced-affinity route.
    ring: OnceLock<Ring>,
    /// Persistent affinity: endpoint key to index, built on first use.
    keys: OnceLock<HashMap<u64, usize>>,
}

impl Backend {
    fn usable(&self, i: usize, tried: &[SocketAddr], now: Nanos, respect_ejection: bool) -> bool {
        let (Some(addr), Some(stats)) = (self.set.addrs.get(i), self.stats.get(i)) else {
            return false;
        };
        let ejected = respect_ejection && stats.is_ejected(now);
        !ejected && !tried.contains(addr)
    }

    fn ring(&self) -> &Ring {
        self.ring.get_or_init(|| Ring::new(&self.set.addrs))
    }

    fn chosen(&self, i: usize, cookie: Option<String>) -> Option<Chosen> {
        Some(Chosen {
            addr: *self.set.addrs.get(i)?,
            stats: self.stats.get(i)?.clone(),
            cookie,
        })
    }

    fn round_robin(&self, start: usize, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.set.addrs.len();
        (0..n).map(|k| (start + k) % n).find(|i| ok(*i))
    }

    /// Power of two choices among the usable endpoints: the lower score wins.
    fn p2c<R: Rng + ?Sized>(&self, now: Nanos, rng: &mut R, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.set.addrs.len();
        let score = |i: usize| self.stats.get(i).map_or(f64::INFINITY, |s| s.score(now));
        let better = |a: usize, b: usize| if score(b) < score(a) { b } else { a };
        match n {
            0 => return None,
            1 => return Some(0).filter(|i| ok(*i)),
            _ => {}
        }
        // Fast path: a few random pairs (almost always the first) among all endpoints.
        for _ in 0..4 {
            let a = rng.gen_range(0..n);
            let mut b = rng.gen_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            match (ok(a), ok(b)) {
                (true, true) => return Some(better(a, b)),
                (true, false) | (false, true) if n == 2 => return Some(if ok(a) { a } else { b }),
                _ => {}
            }
        }
        // Many endpoints excluded (retries, ejections): choose among the rest.
        let usable: Vec<usize> = (0..n).filter(|i| ok(*i)).collect();
        match usable.len() {
            0 => None,
            1 => usable.first().copied(),
            m => {
                let a = rng.gen_range(0..m);
                let mut b = rng.gen_range(0..m - 1);
                if b >= a {
                    b += 1;
                }
                Some(better(*usable.get(a)?, *usable.get(b)?))
            }
        }
    }

    fn first_on_ring(&self, key: u64, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        self.ring().walk(key).find(|i| ok(*i))
    }

    fn persistent_index(&self, cookie: &str) -> Option<usize> {
        let key = u64::from_str_radix(cookie, 16).ok()?;
        let keys = self.keys.get_or_init(|| {
            self.set
                .addrs
                .iter()
                .enumerate()
                .map(|(i, a)| (endpoint_key(a), i))
                .collect()
        });
        keys.get(&key).copied()
    }
}

/// An endpoint table with balancer state, published as one value.
#[derive(Debug, Default)]
pub struct Balanced {
    table: EndpointTable,
    /// Shared with the next generation when the backend's set does not change.
    backends: HashMap<BackendId, Arc<Backend>>,
    /// Every address's stats, shared by the backends that contain it.
    stats: HashMap<SocketAddr, Shared>,
    health: HealthPolicy,
}

/// An address's stats and how many backends of the generation contain it (the entry
/// goes when the last one does).
#[derive(Clone, Debug)]
struct Shared {
    stats: Arc<EndpointStats>,
    backends: usize,
}

impl Balanced {
    /// Wraps a new table, keeping the state of the backends and addresses that
    /// `previous` had. An address that is new to a backend already scored starts from
    /// the mean latency of that backend's endpoints, not from zero.
    ///
    /// A backend whose set is the previous one (the same `Arc`, or equal) is carried
    /// over whole, its ring included: the work is in proportion to the backends that
    /// changed, plus a copy of the maps.
    pub fn new(table: EndpointTable, previous: Option<&Balanced>, now: Nanos, health: HealthPolicy) -> Self {
        let mut stats = previous.map(|p| p.stats.clone()).unwrap_or_default();
        let mut backends = HashMap::with_capacity(table.len());
        let mut changed = Vec::new();
        for (id, set) in table.iter() {
            match previous.and_then(|p| p.backends.get(id)) {
                Some(old) if Arc::ptr_eq(&old.set, set) || old.set == *set => {
                    backends.insert(id.clone(), old.clone());
                }
                _ => changed.push((id, set)),
            }
        }
        // The addresses of the backends that changed or went are released first, so the
        // map holds exactly this generation's addresses.
        if let Some(p) = previous {
            for (id, old) in &p.backends {
                if backends.get(id).is_some_and(|b| Arc::ptr_eq(b, old)) {
                    continue;
                }
                for a in &old.set.addrs {
                    if let Some(s) = stats.get_mut(a) {
                        s.backends = s.backends.saturating_sub(1);
                        if s.backends == 0 {
                            stats.remove(a);
                        }
                    }
                }
            }
        }
        for (id, set) in changed {
            let old = previous.and_then(|p| p.backends.get(id));
            // An address another backend of this generation has, or the previous one had.
            let carried = |stats: &HashMap<SocketAddr, Shared>, a: &SocketAddr| {
                stats
                    .get(a)
                    .or_else(|| previous.and_then(|p| p.stats.get(a)))
                    .map(|s| s.stats.clone())
            };
            // (latency, typical load) of the endpoints that stay and have been measured.
            let known: Vec<(f64, f64)> = set
                .addrs
                .iter()
                .filter_map(|a| carried(&stats, a).and_then(|s| Some((s.latency(now)?, s.typical_load()))))
                .collect();
            let n = known.len().max(1) as f64;
            let mean_latency = known.iter().map(|k| k.0).sum::<f64>() / n;
            let mean_load = known.iter().map(|k| k.1).sum::<f64>() / n;
            let mut per_endpoint = Vec::with_capacity(set.addrs.len());
            for a in &set.addrs {
                let endpoint = match stats.get_mut(a) {
                    Some(s) => {
                        s.backends += 1;
                        s.stats.clone()
                    }
                    None => {
                        let s = carried(&stats, a)
                            .unwrap_or_else(|| Arc::new(EndpointStats::seeded(mean_latency, mean_load, now)));
                        stats.insert(
                            *a,
                            Shared {
                                stats: s.clone(),
                                backends: 1,
                            },
                        );
                        s
                    }
                };
                per_endpoint.push(endpoint);
            }
            backends.insert(
                id.clone(),
                Arc::new(Backend {
                    set: set.clone(),
                    stats: per_endpoint,
                    cursor: old.map(|b| b.cursor.clone()).unwrap_or_default(),
                    ring: OnceLock::new(),
                    keys: OnceLock::new(),
                }),
            );
        }
        Self {
            table,
            backends,
            stats,
            health,
        }
    }

    pub fn table(&self) -> &EndpointTable {
        &self.table
    }

    pub fn health(&self) -> &HealthPolicy {
        &self.health
    }

    pub fn endpoints(&self, id: &BackendId) -> Option<&Arc<EndpointSet>> {
        self.table.get(id)
    }

    /// The stats of an address, if it is an endpoint of this generation.
    pub fn stats(&self, addr: &SocketAddr) -> Option<&Arc<EndpointStats>> {
        self.stats.get(addr).map(|s| &s.stats)
    }

    /// Picks an endpoint of `id` for one attempt, skipping `tried` (earlier attempts of
    /// the same request) and ejected endpoints; when only ejected ones are left, they
    /// are tried rather than failing the request.
    pub fn pick<R: Rng + ?Sized>(
        &self,
        id: &BackendId,
        strategy: Strategy<'_>,
        tried: &[SocketAddr],
        now: Nanos,
        rng: &mut R,
    ) -> Pick {
        let Some(b) = self.backends.get(id) else {
            return Pick::UnknownBackend;
        };
        let n = b.set.addrs.len();
        if n == 0 {
            return Pick::NoEndpoint;
        }
        let rr_start = match strategy {
            Strategy::RoundRobin | Strategy::Cookie { .. } => b.cursor.fetch_add(1, Ordering::Relaxed) % n,
            _ => 0,
        };
        for respect_ejection in [true, false] {
            let ok = |i: usize| b.usable(i, tried, now, respect_ejection);
            let found = match strategy {
                Strategy::RoundRobin => b.round_robin(rr_start, &ok).map(|i| (i, None)),
                Strategy::Ewma => b.p2c(now, rng, &ok).map(|i| (i, None)),
                Strategy::Hash(key) => b.first_on_ring(key, &ok).map(|i| (i, None)),
                Strategy::Cookie { value, mode } => Self::sticky(b, value, mode, rr_start, rng, &ok),
            };
            if let Some((i, cookie)) = found {
                return b.chosen(i, cookie).map_or(Pick::NoEndpoint, Pick::Endpoint);
            }
        }
        Pick::NoEndpoint
    }

    fn sticky<R: Rng + ?Sized>(
        b: &Backend,
        value: Option<&str>,
        mode: AffinityMode,
        rr_start: usize,
        rng: &mut R,
        ok: &impl Fn(usize) -> bool,
    ) -> Option<(usize, Option<String>)> {
        let value = value.filter(|v| !v.is_empty() && v.len() <= 64);
        match mode {
            AffinityMode::Persistent => {
                if let Some(i) = value.and_then(|v| b.persistent_index(v)).filter(|i| ok(*i)) {
                    return Some((i, None));
                }
                let i = b.round_robin(rr_start, ok)?;
                let key = b.set.addrs.get(i).map(endpoint_key)?;
                Some((i, Some(format!("{key:016x}"))))
            }
            AffinityMode::Balanced => {
                if let Some(v) = value {
                    // The session's key stays; when its endpoint cannot serve, the next
                    // one on the ring does, and the session returns when it is back.
                    return b.first_on_ring(hash64(v.as_bytes()), ok).map(|i| (i, None));
                }
                let key = format!("{:016x}", rng.r#gen::<u64>());
                let i = b.first_on_ring(hash64(key.as_bytes()), ok)?;
                Some((i, Some(key)))
            }
        }
    }
}

#[cfg(test)]
mod tests;
