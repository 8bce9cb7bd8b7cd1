//! The live state of a running proxy, beside the immutable snapshot: the snapshot itself
//! (swapped whole by the reloader, its only writer), the metrics, and what the last reloads did.
//! Requests read it without locks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Serialize;

use tokio::sync::mpsc;

use crate::guard::{Outcome, Report};
use crate::metrics::Metrics;
use crate::runtime::overlay::Overlay;
use crate::runtime::Snapshot;

use crate::clock::timestamp;
use crate::control::ReloadReport;

/// Shared by the server, the admin API, the reloader and the guard.
pub struct State {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Metrics,
    pub config: ArcSwap<ConfigStatus>,
    /// Trips and rollout steps, as the reloader last set them.
    pub overlay: ArcSwap<Overlay>,
    /// Windows and verdicts, as the guard last judged them.
    pub guard: ArcSwap<Report>,
    /// Where guarded routes' outcomes go; `None` until the guard task runs.
    pub outcomes: Option<mpsc::Sender<Outcome>>,
    /// Where webhook notifications go (`[[notify]]`).
    pub notifier: crate::notify::Notifier,
    /// `[fleet]`: whether Prometheus answers, and what it showed last.
    pub fleet: ArcSwap<crate::fleet::FleetStatus>,
    /// This replica's name in the fleet (`switchyard_fleet_info{replica}`):
    /// `SWITCHYARD_REPLICA`, else the host's name and the admin (or proxy) port.
    replica: std::sync::OnceLock<String>,
    /// Whether this replica sends the fleet's webhooks for automatic events (trips, rollout
    /// steps): the fleet's first replica by name does, so one incident sends one webhook;
    /// every replica does while Prometheus does not answer.
    pub notifies: AtomicBool,
    /// The fleet's verdicts on rollout pools at its last answer: a rollout steps on them when
    /// the replica's own traffic is too thin to judge.
    pub fleet_verdicts: ArcSwap<crate::fleet::FleetVerdicts>,
    started: std::time::Instant,
    ready: AtomicBool,
}

/// What `GET /api/config` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigStatus {
    /// The config file, when there is one (the demo has none).
    pub path: Option<PathBuf>,
    pub revision: String,
    pub loaded_at: String,
    /// The most recent reload attempt.
    pub last_reload: Option<ReloadReport>,
    /// The most recent failed reload, kept after later successes.
    pub last_error: Option<ReloadReport>,
    /// The state file that keeps trips and rollout steps across restarts.
    pub state: StateStatus,
    /// `flags_from`'s Unleash server, when there is one: whether it answers.
    pub flags_source: Option<FlagsSourceStatus>,
}

/// An Unleash server's polls, as `GET /api/config` and `switchyard status` show them.
#[derive(Debug, Clone, Serialize)]
pub struct FlagsSourceStatus {
    pub url: String,
    /// Its last poll brought a good answer.
    pub up: bool,
    /// When it last answered well.
    pub last_answer: Option<String>,
    /// Since when it has been failing, while it does.
    pub failing_since: Option<String>,
    /// The last failure, while it lasts.
    pub error: Option<String>,
    /// What the flags are served from.
    pub serving: String,
}

/// The state file, as `GET /api/config` and `switchyard status` show it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StateStatus {
    /// `None`: no file (a proxy started without a config file).
    pub path: Option<PathBuf>,
    /// The file could not be read at start.
    pub load_error: Option<StateLoadError>,
    /// The last save failed (cleared by the next good one).
    pub save_error: Option<StateSaveError>,
    /// The experiments' counts beside it: the last save failed (cleared by the next good one).
    pub experiments_error: Option<StateSaveError>,
    /// The experiments' counts found at start were damaged (kept aside, or not written over).
    pub experiments_load_error: Option<String>,
}

/// A state file that could not be read at start.
#[derive(Debug, Clone, Serialize)]
pub struct StateLoadError {
    pub at: String,
    pub error: String,
    /// Where the file was moved, so nothing overwrites it; `None` if it could not be moved
    /// (then it is not written at all).
    pub kept_aside: Option<PathBuf>,
    /// The guarded routes held at their baselines until an operator resets them.
    pub held: Vec<String>,
}

/// A failed save of the state file.
#[derive(Debug, Clone, Serialize)]
pub struct StateSaveError {
    /// When saving first failed (the failures since then are one).
    pub at: String,
    /// The latest failure.
    pub error: String,
    /// It is tried again (every 1 s, doubling to 30 s) until it is written.
    pub retrying: bool,
}

impl State {
    /// The state for a first snapshot (its metrics are attached here). `outcomes` feeds the
    /// guard task.
    pub fn new(
        mut snap: Snapshot,
        path: Option<PathBuf>,
        outcomes: Option<mpsc::Sender<Outcome>>,
    ) -> Arc<State> {
        let metrics = Metrics::new();
        metrics.attach(&mut snap);
        let config = ConfigStatus {
            path,
            revision: snap.revision.clone(),
            loaded_at: timestamp(SystemTime::now()),
            last_reload: None,
            last_error: None,
            state: StateStatus::default(),
            flags_source: None,
        };
        let notifier = crate::notify::Notifier::new(crate::notify::Counters::of(&metrics));
        Arc::new(State {
            replica: std::sync::OnceLock::new(),
            notifies: AtomicBool::new(true),
            fleet_verdicts: ArcSwap::from_pointee(crate::fleet::FleetVerdicts::default()),
            started: std::time::Instant::now(),
            notifier,
            snapshot: Arc::new(ArcSwap::from_pointee(snap)),
            metrics,
            config: ArcSwap::from_pointee(config),
            overlay: ArcSwap::from_pointee(Overlay::default()),
            guard: ArcSwap::from_pointee(Report::default()),
            fleet: ArcSwap::from_pointee(crate::fleet::FleetStatus::default()),
            outcomes,
            ready: AtomicBool::new(false),
        })
    }

    /// Publishes a new snapshot. Requests that already hold the old one finish on it.
    /// Swaps `snap` in; returns the snapshot it replaces.
    pub fn publish(&self, mut snap: Snapshot) -> Arc<Snapshot> {
        self.metrics.attach(&mut snap);
        self.snapshot.swap(Arc::new(snap))
    }

    /// Swaps in `snap`, a copy of the live snapshot with the overlay applied again: it keeps
    /// the live one's series, and only the gauges of the routes it changed are set (a trip on
    /// one route of ten thousand costs one route's work).
    pub fn publish_overlay(&self, mut snap: Snapshot) -> Arc<Snapshot> {
        let live = self.snapshot.load_full();
        let same_routes = live.routes.len() == snap.routes.len();
        match (&snap.metrics, same_routes) {
            (Some(_), true) => {
                for (r, was) in snap.routes.iter().zip(&live.routes) {
                    if !Arc::ptr_eq(r, was) {
                        self.metrics.route_gauges(&snap, r);
                    }
                }
            }
            _ => self.metrics.attach(&mut snap),
        }
        self.snapshot.swap(Arc::new(snap))
    }

    /// This replica's name in the fleet; [`State::name_replica`] sets it once the listeners
    /// are bound (their ports are part of it).
    pub fn replica(&self) -> &str {
        self.replica
            .get_or_init(|| crate::fleet::replica_name(&self.snapshot.load(), None))
    }

    /// Names this replica, with the admin API's (or the proxy's) bound `port`.
    pub fn name_replica(&self, port: Option<u16>) {
        let _ = self
            .replica
            .set(crate::fleet::replica_name(&self.snapshot.load(), port));
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Config loaded and listeners bound, and with `[fleet]`, the fleet's state known (or
    /// [`crate::fleet::hold_bound`] passed: then it serves, guarded routes still at their
    /// baselines until the fleet answers). `Err` says why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Acquire) {
            return Err("listeners are not bound yet".into());
        }
        let snap = self.snapshot.load();
        match &snap.fleet {
            Some(f) if snap.routes.iter().any(|r| r.runtime.held) => {
                let waited = self.started.elapsed();
                let bound = crate::fleet::hold_bound(f);
                if waited < bound {
                    return Err(format!(
                        "waiting for the fleet's state from {} ({}s of at most {}s); guarded routes are held at their baselines until it answers",
                        f.prometheus,
                        waited.as_secs(),
                        bound.as_secs()
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// [`State::readiness`] is `Ok`.
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }
}
