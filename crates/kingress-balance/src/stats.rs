//! [`EndpointStats`]: what the balancer learns about one endpoint address, kept across
//! endpoint-table generations for as long as the address stays.
//!
//! All atomics, no locks: the data plane updates it from every worker thread. A race
//! between two latency samples may lose one of them; the average does not care.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Monotonic time in nanoseconds, from a clock the caller owns (the balancer never
/// reads a clock itself). 0 means "never".
pub type Nanos = u64;

pub const SECOND: Nanos = 1_000_000_000;

/// The EWMA decay constant: ingress-nginx's 10 s.
pub const DECAY: Nanos = 10 * SECOND;

/// Passive outlier ejection: after `max_fails` consecutive failed attempts an endpoint
/// is skipped for `ejection`, doubled on each ejection in a row up to `max_ejection`.
/// When the period ends the endpoint gets live traffic again: one success restores it,
/// one failure ejects it again for longer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// 0 turns ejection off.
    pub max_fails: u32,
    pub ejection: Nanos,
    pub max_ejection: Nanos,
}

impl Default for HealthPolicy {
    /// nginx's `fail_timeout=10s`, with 3 failures in a row rather than 1 so that one
    /// refused connection (a pod restarting) does not take an endpoint out.
    fn default() -> Self {
        Self {
            max_fails: 3,
            ejection: 10 * SECOND,
            max_ejection: 300 * SECOND,
        }
    }
}

/// Latency, load and health of one endpoint address.
#[derive(Debug, Default)]
pub struct EndpointStats {
    in_flight: AtomicU32,
    /// Peak-EWMA of response latency in nanoseconds, as f64 bits.
    ewma: AtomicU64,
    /// EWMA of the requests already in flight when a measured request was sent: the
    /// load at which `ewma` was learnt, as f64 bits.
    load: AtomicU64,
    /// When `ewma` was last updated (0: no sample yet).
    stamp: AtomicU64,
    /// Consecutive failed attempts.
    fails: AtomicU32,
    /// Ejections in a row (reset by a success).
    ejections: AtomicU32,
    ejected_until: AtomicU64,
}

/// An attempt in progress on an endpoint: counts in its in-flight load until dropped.
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<EndpointStats>,
    /// Requests already in flight on the endpoint when this one started.
    load_at_start: u32,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InFlight {
    pub fn stats(&self) -> &Arc<EndpointStats> {
        &self.stats
    }

    /// Ends the attempt's measurement: its response header came after `rtt`.
    pub fn observe(&self, rtt: Nanos, now: Nanos) {
        self.stats.observe(rtt, self.load_at_start, now);
    }
}

impl EndpointStats {
    /// Stats that start from a latency estimate (a new endpoint joining a backend whose
    /// endpoints are already scored starts from their mean, so it is not flooded).
    pub fn seeded(ewma: f64, load: f64, now: Nanos) -> Self {
        let s = Self::default();
        if ewma > 0.0 {
            s.ewma.store(ewma.to_bits(), Ordering::Relaxed);
            s.load.store(load.max(0.0).to_bits(), Ordering::Relaxed);
            s.stamp.store(now.max(1), Ordering::Relaxed);
        }
        s
    }

    /// Marks an attempt as started; it ends when the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            stats: self.clone(),
            load_at_start: before,
        }
    }

    /// The typical number of other requests in flight when latency was measured.
    pub fn typical_load(&self) -> f64 {
        f64::from_bits(self.load.load(Ordering::Relaxed))
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency estimate at `now`, decayed towards zero since the last sample (so an
    /// endpoint that was slow once is tried again after a while). `None` before any sample.
    pub fn latency(&self, now: Nanos) -> Option<f64> {
        let stamp = self.stamp.load(Ordering::Relaxed);
        if stamp == 0 {
            return None;
        }
        let ewma = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        Some(ewma * decay_weight(now.saturating_sub(stamp)))
    }

    /// The P2C score (lower is better): the latency estimate, scaled up when the endpoint
    /// carries more requests than it did while the estimate was learnt:
    /// `latency × max(1, (in_flight + 1) / (typical_load + 1))`.
    ///
    /// For an endpoint that serves one request at a time, latency grows with its load, so
    /// above its usual load this is latency per request times the queue ahead, as in
    /// Finagle's `latency × (in_flight + 1)`. Most HTTP backends serve requests
    /// concurrently: their usual load is already in their latency and must not count a
    /// second time. With the plain product, an idle endpoint 10× slower beats a fast one
    /// carrying 10 requests and keeps a steady share of the traffic (the benchmark showed
    /// 1–3%, enough to keep the p99 at the slow endpoint's latency). Load below the usual
    /// earns no bonus, or an endpoint's own past load would keep attracting traffic.
    /// An endpoint with no sample yet scores by its in-flight count alone.
    pub fn score(&self, now: Nanos) -> f64 {
        let latency = self.latency(now).unwrap_or(0.0) + 1.0;
        let load = (f64::from(self.in_flight()) + 1.0) / (self.typical_load() + 1.0);
        latency * load.max(1.0)
    }

    /// Records a response latency, for a request sent while `load` others were in
    /// flight. A sample above the estimate replaces it at once (peak sensitivity); a
    /// lower one pulls it down with the 10 s time decay. The typical load is a plain
    /// EWMA with the same decay.
    pub fn observe(&self, rtt: Nanos, load: u32, now: Nanos) {
        let rtt = rtt as f64;
        let load = f64::from(load);
        let stamp = self.stamp.load(Ordering::Relaxed);
        let prev = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        let (next, next_load) = if stamp == 0 {
            (rtt, load)
        } else {
            let w = decay_weight(now.saturating_sub(stamp));
            let prev_load = self.typical_load();
            let latency = if rtt > prev { rtt } else { prev * w + rtt * (1.0 - w) };
            (latency, prev_load * w + load * (1.0 - w))
        };
        self.ewma.store(next.to_bits(), Ordering::Relaxed);
        self.load.store(next_load.to_bits(), Ordering::Relaxed);
        self.stamp.store(now.max(1), Ordering::Relaxed);
    }

    /// A successful attempt: the failure streak and any ejection end.
    pub fn record_success(&self) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }

    /// A failed attempt (connect refused or timed out, reset or timeout before a
    /// response). Returns true when this failure ejects the endpoint.
    pub fn record_failure(&self, now: Nanos, health: &HealthPolicy) -> bool {
        if health.max_fails == 0 {
            return false;
        }
        let fails = self.fails.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let ejections = self.ejections.load(Ordering::Relaxed);
        // On probation after an ejection, one failure is enough.
        if fails < health.max_fails && ejections == 0 {
            return false;
        }
        let ejections = self.ejections.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let factor = 1u64 << ejections.saturating_sub(1).min(20);
        let period = health.ejection.saturating_mul(factor).min(health.max_ejection);
        self.ejected_until.store(now.saturating_add(period), Ordering::Relaxed);
        self.fails.store(0, Ordering::Relaxed);
        true
    }

    pub fn is_ejected(&self, now: Nanos) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }
}

fn decay_weight(elapsed: Nanos) -> f64 {
    (-(elapsed as f64) / DECAY as f64).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let s = EndpointStats::default();
        assert_eq!(s.latency(SECOND), None);
        s.observe(MS, 0, SECOND);
        assert_eq!(s.latency(SECOND), Some(MS as f64));
        s.observe(20 * MS, 0, SECOND + MS);
        assert_eq!(
            s.latency(SECOND + MS),
            Some(20.0 * MS as f64),
            "peak: a slow sample counts at once"
        );
        // Fast samples pull it down over seconds, not over samples.
        for i in 1..=100 {
            s.observe(MS, 0, SECOND + MS + i * 10 * MS);
        }
        let after_1s = s.latency(2 * SECOND + MS).unwrap();
        assert!(after_1s < 20.0 * MS as f64 && after_1s > 10.0 * MS as f64, "{after_1s}");
        // Idle time decays the estimate towards zero: the endpoint is tried again.
        let later = s.latency(60 * SECOND).unwrap();
        assert!(later < MS as f64, "{later}");
    }

    #[test]
    fn usual_load_is_not_penalised_unusual_load_is() {
        // A concurrent backend: 10 ms whatever its load, usually 8 others in flight.
        let busy = Arc::new(EndpointStats::default());
        for i in 0..100 {
            busy.observe(10 * MS, 8, SECOND + i * MS);
        }
        let now = SECOND + 100 * MS;
        let guards: Vec<InFlight> = (0..8).map(|_| busy.begin()).collect();
        // An idle endpoint 5x slower.
        let slow = EndpointStats::default();
        slow.observe(50 * MS, 0, now);
        assert!(
            busy.score(now) < slow.score(now),
            "its usual load does not make it worse"
        );
        let more: Vec<InFlight> = (0..40).map(|_| busy.begin()).collect();
        assert!(busy.score(now) > slow.score(now), "five times its usual load does");
        assert_eq!(more.last().map(|g| g.load_at_start), Some(47));
        drop((guards, more));
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let s = Arc::new(EndpointStats::default());
        let a = s.begin();
        let b = s.begin();
        assert_eq!(s.in_flight(), 2);
        assert!(
            s.score(0) > EndpointStats::default().score(0),
            "no sample: least in flight wins"
        );
        drop(a);
        drop(b);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn ejection_backs_off_and_recovers() {
        let h = HealthPolicy {
            max_fails: 3,
            ejection: SECOND,
            max_ejection: 4 * SECOND,
        };
        let s = EndpointStats::default();
        assert!(!s.record_failure(10, &h));
        assert!(!s.record_failure(20, &h));
        assert!(s.record_failure(30, &h), "third failure in a row ejects");
        assert!(s.is_ejected(30 + SECOND - 1));
        assert!(!s.is_ejected(30 + SECOND));
        // On probation: one more failure ejects for twice as long.
        assert!(s.record_failure(2 * SECOND, &h));
        assert!(s.is_ejected(4 * SECOND - 1));
        assert!(!s.is_ejected(4 * SECOND));
        // Capped.
        assert!(s.record_failure(5 * SECOND, &h));
        assert!(s.record_failure(10 * SECOND, &h));
        assert!(!s.is_ejected(14 * SECOND));
        // A success ends it all.
        s.record_success();
        assert!(!s.record_failure(20 * SECOND, &h));
        assert!(!s.is_ejected(20 * SECOND));
        // A success in between breaks the streak.
        s.record_success();
        assert!(!s.record_failure(21 * SECOND, &h));
        assert!(!s.record_failure(21 * SECOND, &h));
        s.record_success();
        assert!(!s.record_failure(21 * SECOND, &h));
        let off = HealthPolicy { max_fails: 0, ..h };
        for _ in 0..10 {
            assert!(!s.record_failure(22 * SECOND, &off));
        }
    }
}
