//! `switchyard diff OLD NEW` (and the reload log): which share of users would move between
//! pools on each route, and which share of users would see each flag flip.
//!
//! Route moves are exact: a split is a partition of the bucket space into ranges, so the users
//! moving from pool A to pool B are the overlap of A's old range with B's new range. When the
//! salt changes, buckets are reshuffled and the old and new pools are independent. Flag flips
//! are measured on a fixed sample of keys run through the real evaluation (users lists, windows
//! and variants make a closed form awkward); the sample error is about ±0.3 percentage points.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use super::{Route, Snapshot, Split};

/// Keys sampled for flag flips.
pub const FLAG_SAMPLE: usize = 100_000;

#[derive(Debug, Serialize, PartialEq)]
pub struct Diff {
    pub routes: Vec<RouteDiff>,
    pub flags: Vec<FlagDiff>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct RouteDiff {
    pub name: String,
    /// "added", "removed", "changed" or "unchanged".
    pub change: &'static str,
    pub weights_before: Vec<(String, u64)>,
    pub weights_after: Vec<(String, u64)>,
    /// `(from pool, to pool, share of the route's users)`, largest first.
    pub moves: Vec<(String, String, f64)>,
}

impl RouteDiff {
    /// Share of the route's users that change pool.
    pub fn moved(&self) -> f64 {
        self.moves.iter().map(|m| m.2).sum()
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct FlagDiff {
    pub name: String,
    pub change: &'static str,
    /// Share of users whose value changes (sampled).
    pub flipped: f64,
}

fn weights(snap: &Snapshot, r: &Route) -> Vec<(String, u64)> {
    r.split
        .weights()
        .map(|(p, w)| (snap.pools[p].name.to_string(), w))
        .collect()
}

/// Compares two snapshots, evaluating time-windowed flags at `now`.
pub fn diff(old: &Snapshot, new: &Snapshot, now: SystemTime) -> Diff {
    let mut routes = Vec::new();
    for r in &old.routes {
        match new.route_by_name(&r.name) {
            None => routes.push(RouteDiff {
                name: r.name.to_string(),
                change: "removed",
                weights_before: weights(old, r),
                weights_after: Vec::new(),
                moves: Vec::new(),
            }),
            Some(n) => {
                let moves = moves(old, r, new, n);
                let (before, after) = (weights(old, r), weights(new, n));
                let same = before == after && old.identity.salt == new.identity.salt;
                routes.push(RouteDiff {
                    name: r.name.to_string(),
                    change: if same { "unchanged" } else { "changed" },
                    weights_before: before,
                    weights_after: after,
                    moves,
                });
            }
        }
    }
    for n in &new.routes {
        if old.route_by_name(&n.name).is_none() {
            routes.push(RouteDiff {
                name: n.name.to_string(),
                change: "added",
                weights_before: Vec::new(),
                weights_after: weights(new, n),
                moves: Vec::new(),
            });
        }
    }

    let mut flags = Vec::new();
    for f in &old.flags {
        let change = match new.flags.iter().find(|n| n.name == f.name) {
            None => FlagDiff {
                name: f.name.to_string(),
                change: "removed",
                flipped: 0.0,
            },
            Some(n) => {
                let flips = (0..FLAG_SAMPLE)
                    .filter(|i| {
                        let key = format!("diff-sample-{i}");
                        f.token(f.evaluate(&key, now).0) != n.token(n.evaluate(&key, now).0)
                    })
                    .count();
                let flipped = flips as f64 / FLAG_SAMPLE as f64;
                FlagDiff {
                    name: f.name.to_string(),
                    change: if flipped > 0.0 { "changed" } else { "unchanged" },
                    flipped,
                }
            }
        };
        flags.push(change);
    }
    for n in &new.flags {
        if !old.flags.iter().any(|f| f.name == n.name) {
            flags.push(FlagDiff {
                name: n.name.to_string(),
                change: "added",
                flipped: 0.0,
            });
        }
    }
    Diff { routes, flags }
}

/// Exact shares of a route's users moving between pools (by pool name).
fn moves(old: &Snapshot, r: &Route, new: &Snapshot, n: &Route) -> Vec<(String, String, f64)> {
    split_moves(old, &r.split, new, &n.split)
}

/// Exact shares of a route's users moving from `a`'s pools (a split of `old`'s pools) to
/// `b`'s (of `new`'s), by pool name, largest first: the overlaps of their ranges (or, when the
/// salt changed and buckets are reshuffled, the products of their shares).
pub fn split_moves(old: &Snapshot, a: &Split, new: &Snapshot, b: &Split) -> Vec<(String, String, f64)> {
    let space = (1u64 << 32) as f64;
    let mut out: BTreeMap<(String, String), f64> = BTreeMap::new();
    let same_salt = old.identity.salt == new.identity.salt;
    for (a, lo1, hi1) in a.ranges() {
        for (b, lo2, hi2) in b.ranges() {
            let (from, to) = (&old.pools[a].name, &new.pools[b].name);
            if from == to {
                continue;
            }
            let share = if same_salt {
                hi1.min(hi2).saturating_sub(lo1.max(lo2)) as f64 / space
            } else {
                ((hi1 - lo1) as f64 / space) * ((hi2 - lo2) as f64 / space)
            };
            if share > 0.0 {
                *out.entry((from.to_string(), to.to_string())).or_default() += share;
            }
        }
    }
    let mut v: Vec<_> = out.into_iter().map(|((a, b), s)| (a, b, s)).collect();
    v.sort_by(|x, y| y.2.total_cmp(&x.2));
    v
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |w: &[(String, u64)]| {
            w.iter()
                .map(|(p, w)| format!("{p}={w}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        for r in &self.routes {
            match r.change {
                "added" => writeln!(f, "route {}: added ({})", r.name, show(&r.weights_after))?,
                "removed" => writeln!(f, "route {}: removed", r.name)?,
                _ => {
                    writeln!(
                        f,
                        "route {}: {} → {}: {:.2}% of users move",
                        r.name,
                        show(&r.weights_before),
                        show(&r.weights_after),
                        r.moved() * 100.0
                    )?;
                    for (a, b, s) in &r.moves {
                        writeln!(f, "  {:>6.2}%  {a} → {b}", s * 100.0)?;
                    }
                }
            }
        }
        for fl in &self.flags {
            match fl.change {
                "added" | "removed" => writeln!(f, "flag {}: {}", fl.name, fl.change)?,
                _ => writeln!(f, "flag {}: {:.2}% of users flip", fl.name, fl.flipped * 100.0)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn snap(split: &str, flag_percent: u32, salt: &str) -> Snapshot {
        let text = format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[identity]\nsalt = \"{salt}\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.canary]\nendpoints = [\"127.0.0.1:2\"]\n[pools.green]\nendpoints = [\"127.0.0.1:3\"]\n[[routes]]\nname = \"web\"\nsplit = {split}\n[[flags]]\nname = \"f\"\npercent = {flag_percent}\n"
        );
        crate::config::load_str(&text, Path::new("t.toml"), None).unwrap()
    }

    #[test]
    fn raising_a_canary_moves_exactly_the_difference_into_it() {
        let d = diff(
            &snap("{ blue = 90, canary = 10 }", 10, "s"),
            &snap("{ blue = 75, canary = 25 }", 10, "s"),
            SystemTime::now(),
        );
        let web = &d.routes[0];
        assert_eq!(web.moves.len(), 1);
        assert_eq!(
            (web.moves[0].0.as_str(), web.moves[0].1.as_str()),
            ("blue", "canary")
        );
        assert!((web.moves[0].2 - 0.15).abs() < 1e-9, "{:?}", web.moves);
        assert_eq!(d.flags[0].flipped, 0.0);
    }

    #[test]
    fn three_pools_and_salt_changes() {
        let d = diff(
            &snap("{ blue = 50, green = 50 }", 10, "s"),
            &snap("{ blue = 50, canary = 25, green = 25 }", 10, "s"),
            SystemTime::now(),
        );
        // [0,.5) blue stays; [.5,.75) green → canary; [.75,1) green stays.
        assert!((d.routes[0].moved() - 0.25).abs() < 1e-9, "{:?}", d.routes[0]);
        let d = diff(
            &snap("{ blue = 50, green = 50 }", 10, "s"),
            &snap("{ blue = 50, green = 50 }", 10, "t"),
            SystemTime::now(),
        );
        assert!(
            (d.routes[0].moved() - 0.5).abs() < 1e-9,
            "a new salt reshuffles: half the users change pool"
        );
    }

    #[test]
    fn flag_flips_are_the_percentage_difference() {
        let d = diff(
            &snap("{ blue = 1 }", 10, "s"),
            &snap("{ blue = 1 }", 30, "s"),
            SystemTime::now(),
        );
        assert!((d.flags[0].flipped - 0.20).abs() < 0.006, "{:?}", d.flags);
    }
}
