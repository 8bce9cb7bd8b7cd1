//! Trips and rollout progress: the runtime part of routing that the config file does not hold.
//! The reloader owns the one [`Overlay`], applies it to every snapshot it publishes (a route's
//! effective split is its configured split with the rollout pool's share handed over from the
//! baseline and tripped pools' ranges handed to the baseline: [`effective_split`]), and writes
//! it to a state file with an atomic write-and-rename, so neither a reload nor a restart undoes
//! a trip.
//!
//! Each route's entry carries a fingerprint of the route's split and pools: when the config
//! changes them, the entry no longer applies and is dropped (a config change to the route
//! clears its trip, as the design says).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::routing::split::SPACE;
use crate::routing::{Route, Split};
use crate::runtime::Snapshot;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    pub routes: BTreeMap<String, RouteOverlay>,
    /// Every guarded route held at its baseline until the fleet's state is known (never
    /// saved: see [`crate::routing::RouteRuntime::held`]).
    #[serde(skip)]
    pub fleet_hold: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteOverlay {
    pub fingerprint: String,
    #[serde(default)]
    pub trips: Vec<Trip>,
    #[serde(default)]
    pub rollout: Option<Progress>,
    /// When this entry last changed by a trip, a step or a command, Unix ms (0: never). With
    /// `[fleet]`, the replicas converge on the most recent change of each route.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub changed_ms: u64,
    /// The replica where that change happened, when another replica's was adopted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A fingerprint short enough for a metric label: replicas compare routes by it.
pub fn fingerprint_label(fingerprint: &str) -> String {
    format!(
        "{:08x}",
        crate::routing::bucket::murmur3_32(fingerprint.as_bytes(), 0)
    )
}

/// A pool taken out of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trip {
    pub pool: String,
    pub reason: String,
    /// RFC 3339.
    pub at: String,
    /// By `rollback` rather than by the guard.
    pub manual: bool,
    pub requests: u64,
    pub errors: u64,
    pub p99_ms: Option<f64>,
}

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// Index into the rollout's steps.
    pub step: usize,
    /// RFC 3339 time the step began.
    pub since: String,
}

/// What identifies a route's split and pools: an overlay entry applies only while it matches.
pub fn fingerprint(snap: &Snapshot, route: &Route) -> String {
    let mut s = String::new();
    for (p, w) in route.split.weights() {
        let pool = &snap.pools[p];
        let eps: Vec<&str> = pool.endpoints.iter().map(|e| &*e.address).collect();
        s.push_str(&format!("{}={w}[{}];", pool.name, eps.join(",")));
    }
    if let Some(r) = snap.rollout(route) {
        s.push_str(&format!("rollout={}:{:?}", snap.pools[r.pool].name, r.steps));
    }
    s
}

/// Sets each route's [`crate::routing::RouteRuntime::config_ms`]: kept from `base` where the
/// route's split and pools are the same there, else `now_ms`.
pub fn stamp_config(new: &mut Snapshot, base: Option<&Snapshot>, now_ms: u64) {
    for i in 0..new.routes.len() {
        let fp = fingerprint(new, &new.routes[i]);
        let kept = base
            .and_then(|b| b.route_by_name(&new.routes[i].name).map(|r| (b, r)))
            .filter(|(b, r)| r.runtime.config_ms > 0 && fingerprint(b, r) == fp)
            .map(|(_, r)| r.runtime.config_ms);
        let ms = kept.unwrap_or(now_ms);
        if new.routes[i].runtime.config_ms != ms {
            std::sync::Arc::make_mut(&mut new.routes[i]).runtime.config_ms = ms;
        }
    }
}

impl Overlay {
    /// Drops entries that no longer apply to `snap` and starts rollouts that have no entry.
    /// Returns one line per dropped entry, for the log.
    pub fn reconcile(&mut self, snap: &Snapshot, now: &str) -> Vec<String> {
        let mut dropped = Vec::new();
        self.routes.retain(|name, entry| match snap.route_by_name(name) {
            None => {
                dropped.push(format!(
                    "route {name} is gone: its trips and rollout are forgotten"
                ));
                false
            }
            Some(r) if fingerprint(snap, r) != entry.fingerprint => {
                if !entry.trips.is_empty() {
                    dropped.push(format!(
                        "route {name}: its split or pools changed, so its trip is cleared"
                    ));
                }
                false
            }
            Some(_) => true,
        });
        for route in &snap.routes {
            if snap.rollout(route).is_some() && !self.routes.contains_key(&*route.name) {
                self.routes.insert(
                    route.name.to_string(),
                    RouteOverlay {
                        fingerprint: fingerprint(snap, route),
                        trips: Vec::new(),
                        rollout: Some(Progress {
                            step: 0,
                            since: now.to_owned(),
                        }),
                        changed_ms: 0,
                        origin: None,
                    },
                );
            }
        }
        dropped
    }

    /// The entry of `route`, created if missing.
    pub fn entry(&mut self, snap: &Snapshot, route: &Route) -> &mut RouteOverlay {
        self.routes
            .entry(route.name.to_string())
            .or_insert_with(|| RouteOverlay {
                fingerprint: fingerprint(snap, route),
                trips: Vec::new(),
                rollout: None,
                changed_ms: 0,
                origin: None,
            })
    }

    /// Sets every route's effective split and runtime view in `snap` from this overlay.
    pub fn apply(&self, snap: &mut Snapshot) {
        for i in 0..snap.routes.len() {
            self.apply_route(snap, i);
        }
    }

    /// [`Overlay::apply`] for the route at `i` alone (a route it leaves as it was is not
    /// copied).
    pub fn apply_route(&self, snap: &mut Snapshot, i: usize) {
        let entry = self.routes.get(&*snap.routes[i].name);
        let tripped: Vec<usize> = entry
            .map(|e| e.trips.iter().filter_map(|t| snap.pool_index(&t.pool)).collect())
            .unwrap_or_default();
        let rolled_back: Vec<usize> = entry
            .map(|e| {
                e.trips
                    .iter()
                    .filter(|t| t.manual)
                    .filter_map(|t| snap.pool_index(&t.pool))
                    .collect()
            })
            .unwrap_or_default();
        let changed_ms = entry.map_or(0, |e| e.changed_ms);
        let origin: Option<std::sync::Arc<str>> = entry.and_then(|e| e.origin.as_deref()).map(Into::into);
        let route = &snap.routes[i];
        let rollout = snap.rollout(route);
        let step = rollout.and(entry.and_then(|e| e.rollout.as_ref()).map(|p| p.step));
        let held = self.fleet_hold && snap.guard(route).is_some();
        let effective = if held {
            let baseline = route.baseline;
            let out: Vec<usize> = route
                .split
                .weights()
                .map(|(p, _)| p)
                .filter(|&p| p != baseline)
                .collect();
            effective_split(route, rollout, step, &out)
        } else {
            effective_split(route, rollout, step, &tripped)
        };
        if route.effective != effective
            || route.runtime.tripped != tripped
            || route.runtime.rollout_step != step
            || route.runtime.rolled_back != rolled_back
            || route.runtime.changed_ms != changed_ms
            || route.runtime.held != held
            || route.runtime.origin != origin
        {
            let route = std::sync::Arc::make_mut(&mut snap.routes[i]);
            route.effective = effective;
            route.runtime.tripped = tripped;
            route.runtime.rollout_step = step;
            route.runtime.rolled_back = rolled_back;
            route.runtime.changed_ms = changed_ms;
            route.runtime.held = held;
            route.runtime.origin = origin;
        }
    }

    /// Reads a state file; a missing file is an empty overlay. Anything else that is not a
    /// state file as this version writes it (unreadable, cut short, another shape, a field it
    /// does not know) is an error: a record of trips must not be half read.
    pub fn load(path: &Path) -> Result<Overlay, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overlay::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Holds every guarded route of `snap` at its baseline, as a rollback would, saying `why`.
    /// Returns the routes held.
    pub fn hold_all(&mut self, snap: &Snapshot, why: &str, at: &str) -> Vec<String> {
        let mut held = Vec::new();
        for route in &snap.routes {
            let Some(g) = snap.guard(route) else { continue };
            let entry = self.entry(snap, route);
            for (p, _) in route.split.weights().filter(|&(p, _)| p != g.baseline) {
                let pool = snap.pools[p].name.to_string();
                if !entry.trips.iter().any(|t| t.pool == pool) {
                    entry.trips.push(Trip {
                        pool,
                        reason: why.to_owned(),
                        at: at.to_owned(),
                        manual: true,
                        requests: 0,
                        errors: 0,
                        p99_ms: None,
                    });
                }
            }
            held.push(route.name.to_string());
        }
        held
    }

    /// Writes the state file atomically: a temporary file, fsync, rename, fsync the directory.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        crate::persist::write_atomic(
            path,
            serde_json::to_string_pretty(self).unwrap_or_default().as_bytes(),
        )
    }
}

/// Where the state of the config at `config` is kept by default: beside it.
pub fn state_path(config: &Path) -> PathBuf {
    let name = config
        .file_name()
        .map_or("switchyard.toml".into(), |n| n.to_string_lossy().into_owned());
    config.with_file_name(format!("{name}.state.json"))
}

/// A route's split as requests get it, made from its configured split by handing ranges over
/// (so only who must move moves): the rollout pool at its step's share, taken first from its
/// own range, then from the baseline's, then from the other pools' in written order; then every
/// tripped pool's ranges to the baseline.
pub fn effective_split(
    route: &Route,
    rollout: Option<&crate::guard::RolloutConfig>,
    step: Option<usize>,
    tripped: &[usize],
) -> Split {
    let base = route.baseline;
    let mut split = route.split.clone();
    if let (Some(r), Some(step)) = (rollout, step) {
        let pct = u64::from(r.steps[step.min(r.steps.len() - 1)]);
        let mut donors = vec![r.pool, base];
        donors.extend(
            route
                .split
                .weights()
                .map(|(p, _)| p)
                .filter(|&p| p != r.pool && p != base),
        );
        split = split.hand_over(r.pool, &donors, SPACE * pct / 100, base);
    }
    if !tripped.is_empty() {
        split = split.give_all(tripped, base);
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(rollout: bool) -> Snapshot {
        let r = if rollout {
            "[routes.rollout]\npool = \"canary\"\nsteps = [10, 50, 100]\nevery = \"1m\"\n"
        } else {
            ""
        };
        let text = format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.green]\nendpoints = [\"127.0.0.1:2\"]\n[pools.canary]\nendpoints = [\"127.0.0.1:3\"]\n[[routes]]\nname = \"web\"\nsplit = {{ blue = 3, green = 1, canary = 5 }}\n[routes.guard]\nbaseline = \"blue\"\n{r}"
        );
        crate::runtime::load_str(&text, Path::new("t.toml"), None).unwrap()
    }

    fn shares(s: &Split, snap: &Snapshot) -> Vec<(String, f64)> {
        s.shares()
            .map(|(p, x)| (snap.pools[p].name.to_string(), (x * 1000.0).round() / 1000.0))
            .collect()
    }

    fn snap_with(split: &str) -> Snapshot {
        let text = format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.green]\nendpoints = [\"127.0.0.1:2\"]\n[pools.canary]\nendpoints = [\"127.0.0.1:3\"]\n[[routes]]\nname = \"web\"\nsplit = {split}\n[routes.guard]\nbaseline = \"blue\"\n[routes.rollout]\npool = \"canary\"\nsteps = [10, 50, 100]\nevery = \"1m\"\n"
        );
        crate::runtime::load_str(&text, Path::new("t.toml"), None).unwrap()
    }

    #[test]
    fn a_rollout_takes_its_share_from_the_baseline_and_a_trip_gives_it_back() {
        let s = snap_with("{ blue = 50, green = 50, canary = 0 }");
        let route = &s.routes[0];
        let canary = s.pool_index("canary").unwrap();
        let at = |step, tripped: &[usize]| {
            shares(&effective_split(route, s.rollout(route), Some(step), tripped), &s)
        };
        assert_eq!(
            at(0, &[]),
            [
                ("blue".into(), 0.4),
                ("green".into(), 0.5),
                ("canary".into(), 0.1)
            ],
            "green's users stay"
        );
        assert_eq!(
            at(1, &[]),
            [
                ("blue".into(), 0.0),
                ("green".into(), 0.5),
                ("canary".into(), 0.5)
            ]
        );
        assert_eq!(
            at(2, &[]),
            [
                ("blue".into(), 0.0),
                ("green".into(), 0.0),
                ("canary".into(), 1.0)
            ],
            "past the baseline's range, from the others"
        );
        assert_eq!(
            at(1, &[canary]),
            [
                ("blue".into(), 0.5),
                ("green".into(), 0.5),
                ("canary".into(), 0.0)
            ],
            "an aborted rollout: the canary's users back on blue, green's untouched"
        );
        assert_eq!(
            at(2, &[canary])[0],
            ("blue".into(), 1.0),
            "everything the canary had goes to the baseline"
        );
        // A step below the pool's configured weight: the rest of its range is the baseline's.
        let s = snap_with("{ blue = 3, green = 1, canary = 5 }");
        assert_eq!(
            shares(
                &effective_split(&s.routes[0], s.rollout(&s.routes[0]), Some(0), &[]),
                &s
            ),
            [
                ("blue".into(), 0.789),
                ("green".into(), 0.111),
                ("canary".into(), 0.1)
            ]
        );
    }

    #[test]
    fn trips_survive_reloads_until_the_route_changes() {
        let s = snap(false);
        let mut ov = Overlay::default();
        ov.entry(&s, &s.routes[0]).trips.push(Trip {
            pool: "canary".into(),
            reason: "r".into(),
            at: "t".into(),
            manual: false,
            requests: 1,
            errors: 1,
            p99_ms: None,
        });
        assert!(
            ov.reconcile(&snap(false), "t").is_empty(),
            "the same config keeps the trip"
        );
        let mut applied = snap(false);
        ov.apply(&mut applied);
        assert_eq!(
            applied.routes[0].runtime.tripped,
            vec![applied.pool_index("canary").unwrap()]
        );
        let dropped = ov.clone().reconcile(&snap(true), "t");
        assert_eq!(dropped.len(), 1, "a changed route clears its trip: {dropped:?}");
    }

    #[test]
    fn the_state_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(&dir.path().join("switchyard.toml"));
        assert!(path.ends_with("switchyard.toml.state.json"));
        assert_eq!(
            Overlay::load(&path).unwrap(),
            Overlay::default(),
            "a missing file is empty"
        );
        let s = snap(true);
        let mut ov = Overlay::default();
        ov.reconcile(&s, "2026-01-01T00:00:00Z");
        ov.save(&path).unwrap();
        assert_eq!(Overlay::load(&path).unwrap(), ov);
    }
}
