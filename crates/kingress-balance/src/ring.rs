//! A consistent-hash ring (ketama style): each endpoint owns [`POINTS`] points on a
//! 64-bit circle; a key goes to the owner of the first point at or after its hash.
//! Adding or removing one of N endpoints moves only the keys of its own arcs, about 1/N.

use std::net::SocketAddr;

/// Points per endpoint: with 160, the share of each endpoint is within a few percent.
pub const POINTS: u32 = 160;

/// 64-bit FNV-1a with a final avalanche (murmur3's fmix64): stable across processes and
/// releases, so a key maps to the same endpoint in every replica of the controller.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The stable identity of an endpoint address, for ring points and persistent cookies.
pub fn endpoint_key(addr: &SocketAddr) -> u64 {
    hash64(addr.to_string().as_bytes())
}

#[derive(Debug, Default)]
pub struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, u32)>,
}

impl Ring {
    pub fn new(addrs: &[SocketAddr]) -> Self {
        let mut points = Vec::with_capacity(addrs.len().saturating_mul(POINTS as usize));
        for (i, addr) in addrs.iter().enumerate() {
            let base = endpoint_key(addr);
            for v in 0..POINTS {
                let p = fmix64(base ^ u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                points.push((p, i as u32));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// Endpoint indexes in ring order from `key`'s position: the owner first, then the
    /// next distinct owners (where a request goes when the owner cannot serve it).
    pub fn walk(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let n = self.points.len();
        let start = self.points.partition_point(|(p, _)| *p < key);
        let (after, before) = (self.points.get(start..), self.points.get(..start));
        after
            .unwrap_or_default()
            .iter()
            .chain(before.unwrap_or_default())
            .take(n)
            .map(|(_, i)| *i as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080)))
            .collect()
    }

    fn owners(ring: &Ring, addrs: &[SocketAddr], keys: u64) -> Vec<SocketAddr> {
        (0..keys)
            .map(|k| {
                let i = ring.walk(hash64(&k.to_le_bytes())).next().unwrap();
                addrs[i]
            })
            .collect()
    }

    #[test]
    fn keys_spread_evenly() {
        let a = addrs(10);
        let ring = Ring::new(&a);
        let o = owners(&ring, &a, 100_000);
        for addr in &a {
            let share = o.iter().filter(|x| *x == addr).count() as f64 / 100_000.0;
            assert!((0.07..0.13).contains(&share), "{addr}: {share}");
        }
    }

    #[test]
    fn adding_one_endpoint_moves_about_one_nth_of_the_keys() {
        let ten = addrs(11);
        let (old, new) = (&ten[..10], &ten[..]);
        let before = owners(&Ring::new(old), old, 50_000);
        let after = owners(&Ring::new(new), new, 50_000);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let share = moved as f64 / 50_000.0;
        assert!((0.05..0.14).contains(&share), "moved {share}, expected about 1/11");
        // Every key that moved, moved to the new endpoint.
        assert!(
            before
                .iter()
                .zip(&after)
                .filter(|(b, a)| b != a)
                .all(|(_, a)| *a == ten[10])
        );
    }

    #[test]
    fn removing_one_endpoint_moves_only_its_keys() {
        let all = addrs(10);
        let fewer: Vec<SocketAddr> = all.iter().copied().filter(|a| *a != all[3]).collect();
        let before = owners(&Ring::new(&all), &all, 50_000);
        let after = owners(&Ring::new(&fewer), &fewer, 50_000);
        for (b, a) in before.iter().zip(&after) {
            if *b != all[3] {
                assert_eq!(a, b, "a key of a remaining endpoint moved");
            }
        }
        let moved = before.iter().filter(|b| **b == all[3]).count() as f64 / 50_000.0;
        assert!((0.05..0.15).contains(&moved), "{moved}");
    }

    #[test]
    fn walk_visits_every_endpoint() {
        let a = addrs(5);
        let ring = Ring::new(&a);
        let mut seen: Vec<usize> = ring.walk(42).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        assert_eq!(Ring::new(&[]).walk(1).count(), 0);
    }
}
