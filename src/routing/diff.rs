//! `switchyard diff OLD NEW` (and the reload log): which share of users would move between
//! pools on each route, and which share of users would see each flag flip.
//!
//! Route moves are exact: a split is a partition of the bucket space into ranges, so the users
//! moving from pool A to pool B are the overlap of A's old range with B's new range. They are
//! counted between the **effective** splits, the ones requests get: a snapshot with its trips
//! and rollout steps applied (the reload's, or `diff`'s with the live state) moves users that
//! the files' weights alone do not show, as when a finished rollout's block is removed. When
//! the salt changes, buckets are reshuffled and the old and new pools are independent.
//!
//! A flag whose definition did not change flips for no one, and one whose percentage alone
//! changed flips for exactly the difference (buckets are uniform). Other flag changes are
//! measured on a fixed sample of keys run through the real evaluation (users lists, windows
//! and variants make a closed form awkward): 100,000 keys per flag, an error of about ±0.3
//! percentage points. A reload shares a budget of [`RELOAD_SAMPLES`] evaluations among the
//! flags it must sample (at least 10,000 keys each, about ±1 point), so that a reload of a
//! thousand changed flags costs a second of a blocking thread and not a minute.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use super::flags::Flag;
use super::unleash::model::{Strategy, Variant};
use super::{Route, Split, Table};

/// Keys sampled for a flag's flips.
pub const FLAG_SAMPLE: usize = 100_000;
/// Fewest keys sampled for a flag's flips.
pub const MIN_FLAG_SAMPLE: usize = 10_000;
/// The evaluations a reload's diff spends on the flags it samples, all together.
pub const RELOAD_SAMPLES: usize = 2_000_000;

#[derive(Debug, Serialize, PartialEq)]
pub struct Diff {
    pub routes: Vec<RouteDiff>,
    pub flags: Vec<FlagDiff>,
}

/// What happened to a route or a flag between two configs.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Changed,
    Unchanged,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct RouteDiff {
    pub name: String,
    pub change: Change,
    pub weights_before: Vec<(String, u64)>,
    pub weights_after: Vec<(String, u64)>,
    /// `(from pool, to pool, share of the route's users)`, largest first.
    pub moves: Vec<(String, String, f64)>,
    /// What the route's session (`[routes.session]`) does to the change, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<String>,
}

/// `blue=90 canary=10`.
fn show_weights(w: &[(String, u64)]) -> String {
    w.iter()
        .map(|(p, w)| format!("{p}={w}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl RouteDiff {
    /// The route's change in one line, with its moves (for the reload log and the API);
    /// `None` when unchanged.
    pub fn line(&self) -> Option<String> {
        if self.change == Change::Unchanged {
            return None;
        }
        let line = if self.moves.is_empty() {
            self.head()
        } else {
            format!("{} ({})", self.head(), show_moves(&self.moves))
        };
        Some(match &self.sessions {
            Some(note) => format!("{line}; {note}"),
            None => line,
        })
    }

    /// The route's change without its moves.
    fn head(&self) -> String {
        match self.change {
            Change::Added => format!(
                "route {}: added ({})",
                self.name,
                show_weights(&self.weights_after)
            ),
            Change::Removed => format!("route {}: removed", self.name),
            Change::Changed | Change::Unchanged => format!(
                "route {}: {} → {}: {:.2}% of its users move",
                self.name,
                show_weights(&self.weights_before),
                show_weights(&self.weights_after),
                self.moved() * 100.0
            ),
        }
    }

    /// Share of the route's users that change pool.
    pub fn moved(&self) -> f64 {
        // From +0.0 (a float sum starts at -0.0, which prints as "-0.00%").
        self.moves.iter().fold(0.0, |sum, m| sum + m.2)
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct FlagDiff {
    pub name: String,
    pub change: Change,
    /// Share of users whose value changes (sampled).
    pub flipped: f64,
}

fn weights(snap: &Table, r: &Route) -> Vec<(String, u64)> {
    r.split
        .weights()
        .map(|(p, w)| (snap.pool_names[p].to_string(), w))
        .collect()
}

/// Compares two snapshots, evaluating time-windowed flags at `now` ([`FLAG_SAMPLE`] keys for
/// each flag sampled).
pub fn diff(old: &Table, new: &Table, now: SystemTime) -> Diff {
    Diff {
        routes: diff_routes(old, new),
        flags: diff_flags(old, new, now, usize::MAX),
    }
}

/// [`diff`] with at most `budget` flag evaluations in all (but [`MIN_FLAG_SAMPLE`] keys for
/// each flag sampled).
pub fn diff_within(old: &Table, new: &Table, now: SystemTime, budget: usize) -> Diff {
    Diff {
        routes: diff_routes(old, new),
        flags: diff_flags(old, new, now, budget),
    }
}

/// The routes' part of [`diff`]: exact, and quick.
pub fn diff_routes(old: &Table, new: &Table) -> Vec<RouteDiff> {
    let mut routes = Vec::new();
    for r in &old.routes {
        match new.route_by_name(&r.name) {
            None => routes.push(RouteDiff {
                name: r.name.to_string(),
                change: Change::Removed,
                weights_before: weights(old, r),
                weights_after: Vec::new(),
                moves: Vec::new(),
                sessions: None,
            }),
            Some(n) => {
                let moves = split_moves(old, &r.effective, new, &n.effective);
                let (before, after) = (weights(old, r), weights(new, n));
                let same = before == after && old.identity.salt == new.identity.salt && moves.is_empty();
                let sessions = (!same).then(|| sessions_note(old, r, new, n, &moves)).flatten();
                routes.push(RouteDiff {
                    name: r.name.to_string(),
                    change: if same { Change::Unchanged } else { Change::Changed },
                    weights_before: before,
                    weights_after: after,
                    moves,
                    sessions,
                });
            }
        }
    }
    for n in &new.routes {
        if old.route_by_name(&n.name).is_none() {
            routes.push(RouteDiff {
                name: n.name.to_string(),
                change: Change::Added,
                weights_before: Vec::new(),
                weights_after: weights(new, n),
                moves: Vec::new(),
                sessions: None,
            });
        }
    }
    routes
}

/// What sessions do to a route's change from `r` (in `old`) to `n` (in `new`): users with a
/// live pin do not move until it ends; a pool that leaves the split ends its pins at once.
fn sessions_note(
    old: &Table,
    r: &Route,
    new: &Table,
    n: &Route,
    moves: &[(String, String, f64)],
) -> Option<String> {
    let in_split =
        |t: &Table, route: &Route, name: &str| route.split.weights().any(|(p, _)| &*t.pool_names[p] == name);
    let removed: Vec<&str> = r
        .split
        .weights()
        .map(|(p, _)| &*old.pool_names[p])
        .filter(|name| !in_split(new, n, name))
        .collect();
    match (&r.session, &n.session) {
        (Some(_), None) => Some("sessions end with this change: every move applies at once".to_owned()),
        (None, Some(_)) => Some(
            "sessions start with this change: nobody holds a pin yet, so these moves apply at once"
                .to_owned(),
        ),
        (Some(_), Some(s)) => {
            let mut note = Vec::new();
            if !moves.is_empty() {
                note.push(format!(
                    "with sessions, users with a live pin stay on their pool until it ends (idle {}, max_age {}): the moves apply to new sessions",
                    humantime::format_duration(s.idle),
                    humantime::format_duration(s.max_age)
                ));
            }
            if !removed.is_empty() {
                note.push(format!(
                    "pins on {} end at once: it leaves the split (keep it at weight 0 to drain it by sessions)",
                    removed.join(", ")
                ));
            }
            (!note.is_empty()).then(|| note.join("; "))
        }
        (None, None) => None,
    }
}

/// How a flag's values change from `f` to `n`.
enum Flips {
    None,
    Exactly(f64),
    Sample,
}

fn how_flips(f: &Flag, n: &Flag, now: SystemTime) -> Flips {
    if f.decides_like(n) && f.toggle.dependencies().next().is_none() {
        return Flips::None;
    }
    // The same shorthand flag but for its percentage: off for all, or the bucket difference.
    #[allow(clippy::type_complexity)]
    fn shape(
        x: &Flag,
    ) -> (
        Option<Strategy>,
        Option<String>,
        &Vec<Variant>,
        bool,
        bool,
        (Option<i64>, Option<i64>),
        bool,
    ) {
        let users = x.def.strategies.iter().find(|s| s.name == "userWithId").cloned();
        let group = x
            .def
            .strategies
            .iter()
            .find_map(|s| s.parameters.get("groupId").cloned());
        (
            users,
            group,
            &x.def.variants,
            x.def.enabled,
            x.env_enabled,
            x.toggle.window,
            x.def.dependencies.is_empty(),
        )
    }
    if let (Some(fp), Some(np)) = (f.percent, n.percent) {
        let (fs, ns) = (shape(f), shape(n));
        // A percentage of 0 or 100 has no groupId to compare: the group is the name then.
        let same_group = fs.1 == ns.1 || fs.1.is_none() || ns.1.is_none();
        if fs.0 == ns.0 && same_group && fs.2 == ns.2 && (fs.3, fs.4, fs.5, fs.6) == (ns.3, ns.4, ns.5, true)
        {
            let now_ms = now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let (s, e) = f.toggle.window;
            let open = f.env_enabled
                && f.def.enabled
                && s.is_none_or(|s| now_ms >= s)
                && e.is_none_or(|e| now_ms < e);
            return Flips::Exactly(if open {
                f64::from(fp.abs_diff(np)) / 100.0
            } else {
                0.0
            });
        }
    }
    Flips::Sample
}

/// A sampled user: a user id, and nothing else of a request.
struct SampleUser<'a> {
    key: &'a str,
    now_ms: i64,
}

impl super::unleash::Context for SampleUser<'_> {
    fn get(&self, field: super::unleash::Field) -> Option<&str> {
        (field == super::unleash::Field::UserId).then_some(self.key)
    }
    fn now_ms(&self) -> i64 {
        self.now_ms
    }
    fn random(&self) -> u32 {
        // Random stickiness would count as flips: hash the key instead, the same on both sides.
        super::bucket::hash("diff", self.key, 0)
    }
}

/// The flags' part of [`diff`].
fn diff_flags(old: &Table, new: &Table, now: SystemTime, budget: usize) -> Vec<FlagDiff> {
    let by_name: std::collections::HashMap<&str, &Flag> = new.flags.iter().map(|f| (&*f.name, f)).collect();
    let sampled = old
        .flags
        .iter()
        .filter(|f| {
            by_name
                .get(&*f.name)
                .is_some_and(|n| matches!(how_flips(f, n, now), Flips::Sample))
        })
        .count();
    let sample = (budget / sampled.max(1)).clamp(MIN_FLAG_SAMPLE, FLAG_SAMPLE);
    let mut flags = Vec::new();
    for f in old.flags.iter() {
        let change = match by_name.get(&*f.name) {
            None => FlagDiff {
                name: f.name.to_string(),
                change: Change::Removed,
                flipped: 0.0,
            },
            Some(n) => {
                let flipped = match how_flips(f, n, now) {
                    Flips::None => 0.0,
                    Flips::Exactly(share) => share,
                    Flips::Sample => flips(f, old, n, new, now, sample),
                };
                FlagDiff {
                    name: f.name.to_string(),
                    change: if flipped > 0.0 {
                        Change::Changed
                    } else {
                        Change::Unchanged
                    },
                    flipped,
                }
            }
        };
        flags.push(change);
    }
    let old_names: std::collections::HashSet<&str> = old.flags.iter().map(|f| &*f.name).collect();
    for n in new.flags.iter() {
        if !old_names.contains(&*n.name) {
            flags.push(FlagDiff {
                name: n.name.to_string(),
                change: Change::Added,
                flipped: 0.0,
            });
        }
    }
    flags
}

/// The share of `sample` keys whose value differs between `f` and `n`.
fn flips(f: &Flag, old: &Table, n: &Flag, new: &Table, now: SystemTime, sample: usize) -> f64 {
    use std::fmt::Write;
    let mut key = String::with_capacity(24);
    let now_ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let flips = (0..sample)
        .filter(|i| {
            key.clear();
            let _ = write!(key, "diff-sample-{i}");
            let user = SampleUser { key: &key, now_ms };
            f.token(f.evaluate(&old.flags, &user).0) != n.token(n.evaluate(&new.flags, &user).0)
        })
        .count();
    flips as f64 / sample as f64
}

/// A share of the bucket space as shown to people and in JSON: to a millionth (a split of
/// 2^32 points makes 0.9 into 0.8999999999068677).
pub fn round_share(share: f64) -> f64 {
    (share * 1e6).round() / 1e6
}

/// Exact shares of a route's users moving from `a`'s pools (a split of `old`'s pools) to
/// `b`'s (of `new`'s), by pool name, largest first: the overlaps of their ranges (or, when the
/// salt changed and buckets are reshuffled, the products of their shares).
pub fn split_moves(old: &Table, a: &Split, new: &Table, b: &Split) -> Vec<(String, String, f64)> {
    let space = (1u64 << 32) as f64;
    let mut out: BTreeMap<(String, String), f64> = BTreeMap::new();
    let same_salt = old.identity.salt == new.identity.salt;
    for (a, lo1, hi1) in a.ranges() {
        for (b, lo2, hi2) in b.ranges() {
            let (from, to) = (&old.pool_names[a], &new.pool_names[b]);
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
    let mut v: Vec<_> = out
        .into_iter()
        .map(|((a, b), s)| (a, b, round_share(s)))
        .collect();
    v.sort_by(|x, y| y.2.total_cmp(&x.2));
    v
}

impl FlagDiff {
    /// The flag's change in one line; `None` when unchanged.
    pub fn line(&self) -> Option<String> {
        Some(match self.change {
            Change::Added => format!("flag {}: added", self.name),
            Change::Removed => format!("flag {}: removed", self.name),
            Change::Changed => format!("flag {}: {:.2}% of users flip", self.name, self.flipped * 100.0),
            Change::Unchanged => return None,
        })
    }
}

/// Moves as one line: `10.00% canary→blue, ...`.
pub fn show_moves(moves: &[(String, String, f64)]) -> String {
    moves
        .iter()
        .map(|(a, b, s)| format!("{:.2}% {a}→{b}", s * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `switchyard diff`: every route (unchanged ones too, with 0.00%), each move on a line of
/// its own, then the flags that change.
impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.routes {
            writeln!(f, "{}", r.head())?;
            for (a, b, s) in &r.moves {
                writeln!(f, "  {:>6.2}%  {a} → {b}", s * 100.0)?;
            }
            if let Some(note) = &r.sessions {
                writeln!(f, "  {note}")?;
            }
        }
        for line in self.flags.iter().filter_map(FlagDiff::line) {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn snap(split: &str, flag_percent: u32, salt: &str) -> crate::runtime::Snapshot {
        let text = format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[identity]\nsalt = \"{salt}\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.canary]\nendpoints = [\"127.0.0.1:2\"]\n[pools.green]\nendpoints = [\"127.0.0.1:3\"]\n[[routes]]\nname = \"web\"\nsplit = {split}\n[[flags]]\nname = \"f\"\npercent = {flag_percent}\n"
        );
        crate::runtime::load_str(&text, Path::new("t.toml"), None).unwrap()
    }

    #[test]
    fn sessions_say_who_stays_and_whose_pins_end() {
        let s = "\n[routes.session]\nidle = \"10m\"";
        let d = diff(
            &snap(&format!("{{ blue = 100, green = 0 }}{s}"), 10, "s"),
            &snap(&format!("{{ blue = 0, green = 100 }}{s}"), 10, "s"),
            SystemTime::now(),
        );
        let note = d.routes[0].sessions.as_deref().unwrap();
        assert!(note.starts_with("with sessions, users with a live pin stay on their pool until it ends (idle 10m, max_age 12h)"), "{note}");
        assert!(d.to_string().contains(note), "{d}");
        assert!(d.routes[0].line().unwrap().ends_with(note));
        let d = diff(
            &snap(&format!("{{ blue = 100, green = 0 }}{s}"), 10, "s"),
            &snap(&format!("{{ green = 100 }}{s}"), 10, "s"),
            SystemTime::now(),
        );
        assert!(
            d.routes[0]
                .sessions
                .as_deref()
                .unwrap()
                .contains("pins on blue end at once: it leaves the split (keep it at weight 0"),
            "{d}"
        );
        let started = diff(
            &snap("{ blue = 100 }", 10, "s"),
            &snap(&format!("{{ green = 100 }}{s}"), 10, "s"),
            SystemTime::now(),
        );
        assert!(started.routes[0]
            .sessions
            .as_deref()
            .unwrap()
            .starts_with("sessions start with this change"));
        let plain = diff(
            &snap("{ blue = 100 }", 10, "s"),
            &snap("{ green = 100 }", 10, "s"),
            SystemTime::now(),
        );
        assert_eq!(plain.routes[0].sessions, None);
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
        assert!((d.flags[0].flipped - 0.20).abs() < 1e-12, "{:?}", d.flags);
    }

    #[test]
    fn the_closed_form_agrees_with_the_sample() {
        let (a, b) = (snap("{ blue = 1 }", 10, "s"), snap("{ blue = 1 }", 37, "s"));
        let sampled = flips(&a.flags[0], &a, &b.flags[0], &b, SystemTime::now(), FLAG_SAMPLE);
        assert!((sampled - 0.27).abs() < 0.006, "{sampled}");
        // Unchanged: nothing flips, and nothing is sampled.
        let d = diff(&a, &a, SystemTime::now());
        assert_eq!((d.flags[0].change, d.flags[0].flipped), (Change::Unchanged, 0.0));
    }

    #[test]
    fn other_changes_are_sampled_within_the_budget() {
        let a = snap("{ blue = 1 }", 50, "s");
        let text = "[listen]\nhttp = \"127.0.0.1:0\"\n[identity]\nsalt = \"s\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"web\"\nsplit = { blue = 1 }\n[[flags]]\nname = \"f\"\npercent = 50\ngroup = \"another\"\n";
        let b = crate::runtime::load_str(text, Path::new("t.toml"), None).unwrap();
        // A new group reshuffles the buckets: about half of a 50% flag's users flip.
        let d = diff_within(&a, &b, SystemTime::now(), 1);
        assert!((d.flags[0].flipped - 0.5).abs() < 0.02, "{:?}", d.flags);
    }

    #[test]
    fn nothing_moved_prints_as_zero() {
        let r = RouteDiff {
            name: "web".into(),
            change: Change::Unchanged,
            weights_before: Vec::new(),
            weights_after: Vec::new(),
            moves: Vec::new(),
            sessions: None,
        };
        assert_eq!(format!("{:.2}%", r.moved() * 100.0), "0.00%");
    }
}
