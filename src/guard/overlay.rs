//! Trips and rollout progress: the runtime part of routing that the config file does not hold.
//! The reloader owns the one [`Overlay`], applies it to every snapshot it publishes (a route's
//! effective split is its configured split, moved by its rollout step, with tripped pools at
//! weight 0), and writes it to a state file with an atomic write-and-rename, so neither a
//! reload nor a restart undoes a trip.
//!
//! Each route's entry carries a fingerprint of the route's split and pools: when the config
//! changes them, the entry no longer applies and is dropped (a config change to the route
//! clears its trip, as the design says).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::routing::{Route, Snapshot, Split};

/// Integer scale for rollout weights (percent × 10,000 keeps the other pools' proportions).
const SCALE: u64 = 10_000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overlay {
    pub routes: BTreeMap<String, RouteOverlay>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteOverlay {
    pub fingerprint: String,
    #[serde(default)]
    pub trips: Vec<Trip>,
    #[serde(default)]
    pub rollout: Option<Progress>,
}

/// A pool taken out of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    if let Some(r) = &route.rollout {
        s.push_str(&format!("rollout={}:{:?}", snap.pools[r.pool].name, r.steps));
    }
    s
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
            if route.rollout.is_some() && !self.routes.contains_key(&*route.name) {
                self.routes.insert(
                    route.name.to_string(),
                    RouteOverlay {
                        fingerprint: fingerprint(snap, route),
                        trips: Vec::new(),
                        rollout: Some(Progress {
                            step: 0,
                            since: now.to_owned(),
                        }),
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
            })
    }

    /// Sets every route's effective split and runtime view in `snap` from this overlay.
    pub fn apply(&self, snap: &mut Snapshot) {
        for i in 0..snap.routes.len() {
            let entry = self.routes.get(&*snap.routes[i].name);
            let tripped: Vec<usize> = entry
                .map(|e| e.trips.iter().filter_map(|t| snap.pool_index(&t.pool)).collect())
                .unwrap_or_default();
            let route = &snap.routes[i];
            let step = route
                .rollout
                .as_ref()
                .and(entry.and_then(|e| e.rollout.as_ref()).map(|p| p.step));
            let effective = effective_split(route, step, &tripped);
            let route = &mut snap.routes[i];
            route.effective = effective;
            route.runtime.tripped = tripped;
            route.runtime.rollout_step = step;
        }
    }

    /// Reads a state file; a missing file is an empty overlay.
    pub fn load(path: &Path) -> Result<Overlay, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overlay::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the state file atomically: a temporary file, fsync, rename, fsync the directory.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .map_or("switchyard.state".into(), |n| n.to_string_lossy())
        ));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string_pretty(self).unwrap_or_default().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// Where the state of the config at `config` is kept: beside it.
pub fn state_path(config: &Path) -> PathBuf {
    let name = config
        .file_name()
        .map_or("switchyard.toml".into(), |n| n.to_string_lossy().into_owned());
    config.with_file_name(format!("{name}.state.json"))
}

/// A route's split as requests get it: the rollout pool at its step's share (the other pools
/// share the rest by their weights), tripped pools at 0, and if nothing is left, the baseline.
pub fn effective_split(route: &Route, step: Option<usize>, tripped: &[usize]) -> Split {
    let mut weights: Vec<(usize, u64)> = route.split.weights().map(|(p, w)| (p, w * SCALE * 100)).collect();
    if let (Some(r), Some(step)) = (&route.rollout, step) {
        let pct = u64::from(r.steps[step.min(r.steps.len() - 1)]);
        let others: u64 = route
            .split
            .weights()
            .filter(|(p, _)| *p != r.pool)
            .map(|(_, w)| w)
            .sum();
        for (p, w) in weights.iter_mut() {
            *w = if *p == r.pool {
                pct * SCALE
            } else if others > 0 {
                (100 - pct) * SCALE * (*w / (SCALE * 100)) / others
            } else {
                0
            };
        }
    }
    for (p, w) in weights.iter_mut() {
        if tripped.contains(p) {
            *w = 0;
        }
    }
    if weights.iter().all(|(_, w)| *w == 0) {
        let base = route.baseline();
        for (p, w) in weights.iter_mut() {
            if *p == base {
                *w = 1;
            }
        }
    }
    Split::new(&weights)
}
