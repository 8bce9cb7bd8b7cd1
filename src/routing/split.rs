//! Weighted splits: a route's pools take contiguous ranges of `[0, 2^32)` in the order they are
//! written, sized by their relative weights. A point in that space (a user's bucket) falls in
//! exactly one range. The ranges are computed once at compile time; picking is a short scan.

/// A route's compiled split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    entries: Box<[Entry]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    pool: usize,
    weight: u64,
    /// Exclusive upper bound of this pool's range, in units of 2^-32.
    upper: u64,
}

const SPACE: u128 = 1 << 32;

impl Split {
    /// Builds a split from `(pool index, weight)` pairs in written order. The weights must be
    /// non-negative with a positive sum; the compiler checks that before calling.
    pub fn new(weights: &[(usize, u64)]) -> Split {
        let total: u128 = weights.iter().map(|&(_, w)| w as u128).sum();
        assert!(total > 0, "a split needs a positive total weight");
        let mut cumulative = 0u128;
        let entries = weights
            .iter()
            .map(|&(pool, weight)| {
                cumulative += weight as u128;
                Entry {
                    pool,
                    weight,
                    upper: (cumulative * SPACE / total) as u64,
                }
            })
            .collect();
        Split { entries }
    }

    /// The pool whose range holds `point`.
    pub fn pick(&self, point: u32) -> usize {
        let point = point as u64;
        self.entries
            .iter()
            .find(|e| point < e.upper)
            .map_or(self.entries[self.entries.len() - 1].pool, |e| e.pool)
    }

    /// Number of pools with a positive weight.
    pub fn active_pools(&self) -> usize {
        self.entries.iter().filter(|e| e.weight > 0).count()
    }

    /// The share of the bucket space, `[0, 1]`, each entry owns, in written order.
    pub fn shares(&self) -> impl Iterator<Item = (usize, f64)> + '_ {
        let mut lower = 0u64;
        self.entries.iter().map(move |e| {
            let share = (e.upper - lower) as f64 / SPACE as f64;
            lower = e.upper;
            (e.pool, share)
        })
    }

    /// `(pool, lower, upper)` ranges of the bucket space in units of 2^-32, in written order.
    pub fn ranges(&self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        let mut lower = 0u64;
        self.entries.iter().map(move |e| {
            let r = (e.pool, lower, e.upper);
            lower = e.upper;
            r
        })
    }

    /// `(pool index, weight)` in written order.
    pub fn weights(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.entries.iter().map(|e| (e.pool, e.weight))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_written_order() {
        let s = Split::new(&[(7, 90), (3, 10)]);
        assert_eq!(s.pick(0), 7);
        assert_eq!(s.pick((0.8999 * 4294967296.0) as u32), 7);
        assert_eq!(s.pick((0.9001 * 4294967296.0) as u32), 3);
        assert_eq!(s.pick(u32::MAX), 3);
    }

    #[test]
    fn zero_weights_are_never_picked() {
        let s = Split::new(&[(0, 0), (1, 1), (2, 0)]);
        for p in [0, 1, u32::MAX / 2, u32::MAX] {
            assert_eq!(s.pick(p), 1);
        }
    }
}
