//! Per-request endpoint choice.
//!
//! [`Balanced`] pairs an [`EndpointTable`] with the balancer state of every backend.
//! The state is carried over from the previous generation for the backends that stay,
//! so an endpoint update (a scale-up, a rolling update) does not reset the rotation.
//!
//! Today: round-robin, the ingress-nginx default. EWMA, consistent hashing and cookie
//! affinity plug in here later, keyed the same way. No I/O, no clock, lock-free on the
//! request path (one atomic add per pick).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kingress_model::{BackendId, EndpointSet, EndpointTable};

/// Round-robin cursor of one backend; survives endpoint-table generations.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The index to try first among `n` endpoints.
    fn start(&self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        self.next.fetch_add(1, Ordering::Relaxed) % n
    }
}

/// The outcome of a pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    Endpoint(SocketAddr),
    /// The backend has no ready endpoint (or every one was already tried).
    NoEndpoint,
    /// The backend is unknown: its Service (or Service port) does not exist.
    UnknownBackend,
}

/// An endpoint table with balancer state, published as one value.
#[derive(Debug, Default)]
pub struct Balanced {
    table: EndpointTable,
    state: HashMap<BackendId, Arc<RoundRobin>>,
}

impl Balanced {
    /// Wraps a new table, keeping the state of the backends that `previous` had.
    pub fn new(table: EndpointTable, previous: Option<&Balanced>) -> Self {
        let state = table
            .iter()
            .map(|(id, _)| {
                let s = previous.and_then(|p| p.state.get(id)).cloned().unwrap_or_default();
                (id.clone(), s)
            })
            .collect();
        Self { table, state }
    }

    pub fn table(&self) -> &EndpointTable {
        &self.table
    }

    pub fn endpoints(&self, id: &BackendId) -> Option<&Arc<EndpointSet>> {
        self.table.get(id)
    }

    /// Picks an endpoint of `id`, skipping those in `tried` (earlier attempts of the same
    /// request). Each call advances the backend's rotation once.
    pub fn pick(&self, id: &BackendId, tried: &[SocketAddr]) -> Pick {
        let (Some(set), Some(rr)) = (self.table.get(id), self.state.get(id)) else {
            return Pick::UnknownBackend;
        };
        let n = set.addrs.len();
        let start = rr.start(n);
        (0..n)
            .filter_map(|i| set.addrs.get((start + i) % n))
            .find(|a| !tried.contains(a))
            .map_or(Pick::NoEndpoint, |a| Pick::Endpoint(*a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(addrs: &[&str]) -> EndpointTable {
        let mut t = EndpointTable::new();
        t.insert(
            BackendId::new("ns", "svc", "80"),
            EndpointSet::new(addrs.iter().map(|a| a.parse().unwrap()).collect()),
        );
        t.insert(BackendId::new("ns", "empty", "80"), EndpointSet::default());
        t
    }

    fn id() -> BackendId {
        BackendId::new("ns", "svc", "80")
    }

    fn ep(p: Pick) -> SocketAddr {
        match p {
            Pick::Endpoint(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_robin_visits_every_endpoint_evenly() {
        let b = Balanced::new(table(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]), None);
        let mut counts: HashMap<SocketAddr, usize> = HashMap::new();
        for _ in 0..300 {
            *counts.entry(ep(b.pick(&id(), &[]))).or_default() += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|c| *c == 100), "{counts:?}");
    }

    #[test]
    fn retries_skip_tried_endpoints() {
        let b = Balanced::new(table(&["10.0.0.1:80", "10.0.0.2:80"]), None);
        let first = ep(b.pick(&id(), &[]));
        let second = ep(b.pick(&id(), &[first]));
        assert_ne!(first, second);
        assert_eq!(b.pick(&id(), &[first, second]), Pick::NoEndpoint);
    }

    #[test]
    fn empty_and_unknown_backends() {
        let b = Balanced::new(table(&["10.0.0.1:80"]), None);
        assert_eq!(b.pick(&BackendId::new("ns", "empty", "80"), &[]), Pick::NoEndpoint);
        assert_eq!(b.pick(&BackendId::new("ns", "nope", "80"), &[]), Pick::UnknownBackend);
    }

    #[test]
    fn rotation_survives_an_endpoint_update() {
        let a = Balanced::new(table(&["10.0.0.1:80", "10.0.0.2:80"]), None);
        let first = ep(a.pick(&id(), &[]));
        let b = Balanced::new(table(&["10.0.0.1:80", "10.0.0.2:80"]), Some(&a));
        let second = ep(b.pick(&id(), &[]));
        assert_ne!(first, second, "the cursor carried over, so the next endpoint follows");
    }
}
