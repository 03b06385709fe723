//! [`EndpointTable`]: the ready endpoints of every backend.
//!
//! Published on its own atomic swap, apart from [`crate::Config`]: EndpointSlices change
//! on a much faster clock (every pod start, stop and readiness flip) than routes do, and
//! an endpoint change must never cost a route recompile.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::BackendId;

/// The ready endpoints of one backend, sorted and de-duplicated so that two tables
/// built from the same objects compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSet {
    pub addrs: Vec<SocketAddr>,
}

impl EndpointSet {
    pub fn new(mut addrs: Vec<SocketAddr>) -> Self {
        addrs.sort();
        addrs.dedup();
        Self { addrs }
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }
}

/// Backends to their endpoint sets. A backend that is absent has no known Service port;
/// a backend with an empty set has a Service but no ready endpoint. Both answer 503.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointTable {
    backends: HashMap<BackendId, Arc<EndpointSet>>,
}

impl EndpointTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, id: BackendId, set: EndpointSet) {
        self.backends.insert(id, Arc::new(set));
    }

    /// Inserts a set that may be shared with other tables: an incremental rebuild keeps
    /// the `Arc` of an unchanged backend, so the balancer can tell it is unchanged.
    pub fn insert_shared(&mut self, id: BackendId, set: Arc<EndpointSet>) {
        self.backends.insert(id, set);
    }

    pub fn remove(&mut self, id: &BackendId) -> Option<Arc<EndpointSet>> {
        self.backends.remove(id)
    }

    pub fn get(&self, id: &BackendId) -> Option<&Arc<EndpointSet>> {
        self.backends.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&BackendId, &Arc<EndpointSet>)> {
        self.backends.iter()
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_sorted_and_deduplicated() {
        let a: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let set = EndpointSet::new(vec![a, b, a]);
        assert_eq!(set.addrs, vec![b, a]);
        let mut t = EndpointTable::new();
        t.insert(BackendId::new("ns", "svc", "80"), set);
        assert_eq!(t.get(&BackendId::new("ns", "svc", "80")).map(|s| s.len()), Some(2));
        assert!(t.get(&BackendId::new("ns", "svc", "81")).is_none());
    }
}
