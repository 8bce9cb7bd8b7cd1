//! Weighted splits: a route's pools take contiguous ranges of `[0, 2^32)` in the order they are
//! written, sized by their relative weights. A point in that space (a user's bucket) falls in
//! exactly one range. The ranges are computed once at compile time; picking is a short scan.
//!
//! A route's *effective* split (what requests get after trips and rollout steps) is made from
//! its configured one by handing ranges over ([`Split::hand_over`]), never by recomputing
//! ranges from weights: so a trip moves exactly the tripped pool's users to the baseline, a
//! rollout's share comes out of the baseline's range, and nobody else moves, however many pools
//! the split has and wherever they are written. An effective split may give a pool several
//! ranges.

/// A split: segments of the bucket space, in order, each owned by a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    segments: Box<[Segment]>,
    /// The route's pools and their configured weights, in written order.
    pools: Box<[(usize, u64)]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    pool: usize,
    /// Exclusive upper bound of this segment, in units of 2^-32.
    upper: u64,
}

/// The size of the bucket space.
pub const SPACE: u64 = 1 << 32;

/// The largest weight a split may have: far from any arithmetic's limit, however many pools.
pub const MAX_WEIGHT: u64 = 1_000_000;

impl Split {
    /// Builds a split from `(pool index, weight)` pairs in written order. The weights must be
    /// at most [`MAX_WEIGHT`] with a positive sum; the compiler checks that before calling.
    pub fn new(weights: &[(usize, u64)]) -> Split {
        let total: u128 = weights.iter().map(|&(_, w)| w as u128).sum();
        assert!(total > 0, "a split needs a positive total weight");
        let mut cumulative = 0u128;
        let segments = weights
            .iter()
            .map(|&(pool, weight)| {
                cumulative += weight as u128;
                Segment {
                    pool,
                    upper: (cumulative * SPACE as u128 / total) as u64,
                }
            })
            .collect();
        Split {
            segments,
            pools: weights.into(),
        }
    }

    /// The pool whose range holds `point`.
    pub fn pick(&self, point: u32) -> usize {
        let point = point as u64;
        self.segments
            .iter()
            .find(|s| point < s.upper)
            .map_or(self.segments[self.segments.len() - 1].pool, |s| s.pool)
    }

    /// Number of pools with some of the space.
    pub fn active_pools(&self) -> usize {
        self.pools
            .iter()
            .filter(|(p, _)| self.ranges().any(|(q, lo, hi)| q == *p && hi > lo))
            .count()
    }

    /// The share of the bucket space, `[0, 1]`, each pool owns, in written order.
    pub fn shares(&self) -> impl Iterator<Item = (usize, f64)> + '_ {
        self.pools.iter().map(move |&(pool, _)| {
            let owned: u64 = self
                .ranges()
                .filter(|&(p, _, _)| p == pool)
                .map(|(_, lo, hi)| hi - lo)
                .sum();
            (pool, owned as f64 / SPACE as f64)
        })
    }

    /// `(pool, lower, upper)` segments of the bucket space in units of 2^-32, in order.
    pub fn ranges(&self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        let mut lower = 0u64;
        self.segments.iter().map(move |s| {
            let r = (s.pool, lower, s.upper);
            lower = s.upper;
            r
        })
    }

    /// `(pool index, configured weight)` in written order.
    pub fn weights(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.pools.iter().copied()
    }

    /// A split in which `amount` of the space (units of 2^-32) passes to `to`, taken from the
    /// ranges of the pools in `from`, in that order (each range from its lower end up); what
    /// `to` owned and did not get back this way passes to `leftover`; the rest keeps its owner.
    /// With `to` first in `from` and a growing `amount`, it only ever moves more users to `to`:
    /// what it took before, it takes again, first.
    pub fn hand_over(&self, to: usize, from: &[usize], amount: u64, leftover: usize) -> Split {
        // (lower, upper, owner, handed over)
        let mut cuts: Vec<(u64, u64, usize, bool)> =
            self.ranges().map(|(p, lo, hi)| (lo, hi, p, false)).collect();
        let mut left = amount;
        for &donor in from {
            let mut i = 0;
            while i < cuts.len() && left > 0 {
                let (lo, hi, owner, taken) = cuts[i];
                if !taken && owner == donor && hi > lo {
                    let take = left.min(hi - lo);
                    left -= take;
                    cuts[i] = (lo, lo + take, to, true);
                    if lo + take < hi {
                        cuts.insert(i + 1, (lo + take, hi, owner, false));
                    }
                }
                i += 1;
            }
        }
        let cuts = cuts
            .into_iter()
            .map(|(lo, hi, owner, taken)| (lo, hi, if owner == to && !taken { leftover } else { owner }))
            .collect();
        self.with_segments(cuts)
    }

    /// A split in which every range of the pools in `pools` passes to `to`.
    pub fn give_all(&self, pools: &[usize], to: usize) -> Split {
        let cuts = self
            .ranges()
            .map(|(p, lo, hi)| (lo, hi, if pools.contains(&p) { to } else { p }))
            .collect();
        self.with_segments(cuts)
    }

    /// This split's pools with new segments (in order, covering the space), neighbours of one
    /// owner merged and empty ones dropped.
    fn with_segments(&self, cuts: Vec<(u64, u64, usize)>) -> Split {
        let mut segments: Vec<Segment> = Vec::with_capacity(cuts.len());
        for (lo, hi, pool) in cuts {
            if hi == lo {
                continue;
            }
            match segments.last_mut() {
                Some(last) if last.pool == pool => last.upper = hi,
                _ => segments.push(Segment { pool, upper: hi }),
            }
        }
        Split {
            segments: segments.into(),
            pools: self.pools.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    #[test]
    fn handing_over_moves_only_the_donors_users() {
        // blue 45, green 45, canary 10; the canary's range goes to blue.
        let s = Split::new(&[(0, 45), (1, 45), (2, 10)]);
        let t = s.give_all(&[2], 0);
        let shares: Vec<(usize, f64)> = t.shares().collect();
        assert_eq!(shares[1], s.shares().nth(1).unwrap(), "green keeps its share");
        assert!((shares[0].1 - 0.55).abs() < 1e-9 && shares[2].1 == 0.0);
        assert_eq!(t.ranges().count(), 3, "blue owns two ranges now");
        // A canary at weight 0 rolled out to 5%, out of blue's range.
        let s = Split::new(&[(0, 50), (1, 50), (2, 0)]);
        let t = s.hand_over(2, &[2, 0, 1], SPACE / 20, 0);
        let shares: Vec<f64> = t.shares().map(|(_, x)| x).collect();
        assert!(
            (shares[0] - 0.45).abs() < 1e-9
                && (shares[1] - 0.5).abs() < 1e-9
                && (shares[2] - 0.05).abs() < 1e-9
        );
        let all = s.hand_over(2, &[2, 0, 1], SPACE, 0);
        assert_eq!(all.shares().map(|(_, x)| x).collect::<Vec<_>>(), [0.0, 0.0, 1.0]);
    }

    /// Every point whose pool differs between `a` and `b`: (from, to) and whether it is one of
    /// `allowed` moves.
    fn only_moves(a: &Split, b: &Split, points: &[u32], allowed: impl Fn(usize, usize) -> bool) -> bool {
        points.iter().all(|&x| {
            let (p, q) = (a.pick(x), b.pick(x));
            p == q || allowed(p, q)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn trips_and_rollouts_move_nobody_but_who_must_move(
            weights in proptest::collection::vec(0u64..=MAX_WEIGHT, 2..6),
            baseline in any::<prop::sample::Index>(),
            rolled in any::<prop::sample::Index>(),
            pcts in proptest::collection::vec(1u64..=100, 1..5),
            points in proptest::collection::vec(any::<u32>(), 200),
        ) {
            prop_assume!(weights.iter().any(|&w| w > 0));
            let pools: Vec<(usize, u64)> = weights.iter().copied().enumerate().collect();
            let n = pools.len();
            let (base, r) = (baseline.index(n), rolled.index(n));
            let s = Split::new(&pools);
            // A trip of any other pool: its users, and only they, go to the baseline.
            for tripped in (0..n).filter(|&p| p != base) {
                let t = s.give_all(&[tripped], base);
                prop_assert!(only_moves(&s, &t, &points, |p, q| p == tripped && q == base));
                prop_assert!(points.iter().all(|&x| t.pick(x) != tripped));
            }
            // Rollout steps, growing: each moves users only into the rolled-out pool, and
            // while it fits in the baseline's range, only out of the baseline.
            prop_assume!(r != base);
            let mut donors = vec![r, base];
            donors.extend((0..n).filter(|&p| p != r && p != base));
            let own = s.ranges().filter(|&(p, _, _)| p == r).map(|(_, lo, hi)| hi - lo).sum::<u64>();
            let base_share = own + s.ranges().filter(|&(p, _, _)| p == base).map(|(_, lo, hi)| hi - lo).sum::<u64>();
            let mut pcts = pcts;
            pcts.sort();
            let mut before = s.clone();
            for pct in pcts {
                let amount = SPACE / 100 * pct;
                let step = s.hand_over(r, &donors, amount, base);
                if amount >= own {
                    prop_assert!(only_moves(&before, &step, &points, |_, q| q == r));
                }
                if (own..=base_share).contains(&amount) {
                    prop_assert!(only_moves(&s, &step, &points, |p, q| p == base && q == r));
                }
                if amount < own {
                    // A step below the pool's own weight: the rest of its range is the baseline's.
                    prop_assert!(only_moves(&s, &step, &points, |p, q| p == r && q == base));
                }
                let share = step.shares().find(|&(p, _)| p == r).unwrap().1;
                prop_assert!((share - pct as f64 / 100.0).abs() < 1e-6, "{} at {}%", share, pct);
                before = step;
            }
        }
    }
}
