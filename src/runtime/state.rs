//! The live state of a running proxy, beside the immutable snapshot: the snapshot itself
//! (swapped whole by the reloader, its only writer), the metrics, and what the last reloads did.
//! Requests read it without locks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use std::collections::HashMap;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;

use tokio::sync::mpsc;

use crate::config::FleetSettings;
use crate::guard::{Outcome, Report, Verdict};
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
    /// The guards' checks, as the analysis task last measured them.
    pub checks: ArcSwap<crate::guard::checks::Results>,
    /// Where guarded routes' outcomes go; `None` until the guard task runs.
    pub outcomes: Option<mpsc::Sender<Outcome>>,
    /// Where webhook notifications go (`[[notify]]`).
    pub notifier: crate::notify::Notifier,
    /// What changed routing, when, and who did it.
    pub audit: crate::audit::Audit,
    /// `[tracing]`'s exporter, made again only when `[tracing]` changes.
    tracer: std::sync::Mutex<Option<Arc<crate::trace::Exporter>>>,
    /// `[fleet]`: whether Prometheus answers, and what it showed last.
    pub fleet: ArcSwap<FleetStatus>,
    /// This replica's name in the fleet (`switchyard_fleet_info{replica}`):
    /// `SWITCHYARD_REPLICA`, else the host's name and the admin (or proxy) port.
    replica: std::sync::OnceLock<String>,
    /// Whether this replica sends the fleet's webhooks for automatic events (trips, rollout
    /// steps): the fleet's first replica by name does, so one incident sends one webhook;
    /// every replica does while Prometheus does not answer.
    pub notifies: AtomicBool,
    /// The fleet's verdicts on rollout pools at its last answer: a rollout steps on them when
    /// the replica's own traffic is too thin to judge.
    pub fleet_verdicts: ArcSwap<FleetVerdicts>,
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
        let tracer = std::sync::Mutex::new(None);
        attach_tracer(&tracer, &metrics, &mut snap);
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
            fleet_verdicts: ArcSwap::from_pointee(FleetVerdicts::default()),
            started: std::time::Instant::now(),
            notifier,
            audit: Default::default(),
            tracer,
            snapshot: Arc::new(ArcSwap::from_pointee(snap)),
            metrics,
            config: ArcSwap::from_pointee(config),
            overlay: ArcSwap::from_pointee(Overlay::default()),
            guard: ArcSwap::from_pointee(Report::default()),
            checks: Default::default(),
            fleet: ArcSwap::from_pointee(FleetStatus::default()),
            outcomes,
            ready: AtomicBool::new(false),
        })
    }

    /// Publishes a new snapshot. Requests that already hold the old one finish on it.
    /// Swaps `snap` in; returns the snapshot it replaces.
    pub fn publish(&self, mut snap: Snapshot) -> Arc<Snapshot> {
        self.metrics.attach(&mut snap);
        attach_tracer(&self.tracer, &self.metrics, &mut snap);
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

    /// Records an event in the audit trail and, with `webhook`, sends it to the webhooks that
    /// asked for its kind: the event's details as the body's fields, with `by`, and its text
    /// (prefixed with its route). The one way events leave the control paths.
    pub fn announce(&self, r: crate::audit::Record<'_>, webhook: bool) {
        let (kind, mut fields) = (r.kind, r.details.clone());
        let text = match r.route {
            Some(route) => format!("route {route}: {}", r.text),
            None => r.text.clone(),
        };
        let event = self.audit.record(r);
        if webhook {
            if let (Some(map), Some(by)) = (fields.as_object_mut(), &event.by) {
                map.insert("by".into(), serde_json::to_value(by).unwrap_or_default());
            }
            self.notifier.send(kind, fields, &text);
        }
    }

    /// This replica's name in the fleet; [`State::name_replica`] sets it once the listeners
    /// are bound (their ports are part of it).
    pub fn replica(&self) -> &str {
        self.replica
            .get_or_init(|| replica_name(&self.snapshot.load(), None))
    }

    /// Names this replica, with the admin API's (or the proxy's) bound `port`.
    pub fn name_replica(&self, port: Option<u16>) {
        let _ = self.replica.set(replica_name(&self.snapshot.load(), port));
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Config loaded and listeners bound, and with `[fleet]`, the fleet's state known (or
    /// [`hold_bound`] passed: then it serves, guarded routes still at their
    /// baselines until the fleet answers). `Err` says why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Acquire) {
            return Err("listeners are not bound yet".into());
        }
        let snap = self.snapshot.load();
        match &snap.fleet {
            Some(f) if snap.routes.iter().any(|r| r.runtime.held) => {
                let waited = self.started.elapsed();
                let bound = hold_bound(f);
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

/// Gives `snap` the exporter of its `[tracing]`: the one running when the settings are the same,
/// else a new one (the old one's task ends when the last snapshot holding it goes).
fn attach_tracer(
    current: &std::sync::Mutex<Option<Arc<crate::trace::Exporter>>>,
    metrics: &Metrics,
    snap: &mut Snapshot,
) {
    let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
    snap.tracer = match &snap.tracing {
        None => None,
        Some(config) => match &*current {
            Some(t) if t.config == *config => Some(t.clone()),
            _ => {
                let c = |result: &str| metrics.trace_spans.with_label_values(&[result]);
                let counters = crate::trace::export::Counters {
                    exported: c("exported"),
                    failed: c("failed"),
                    dropped: c("dropped"),
                };
                Some(Arc::new(crate::trace::Exporter::new(config.clone(), counters)))
            }
        },
    };
    *current = snap.tracer.clone();
}

/// What `GET /api/fleet` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetStatus {
    /// Prometheus's URL; `None` without `[fleet]`.
    pub prometheus: Option<String>,
    /// Whether its last query was answered; `None` before the first.
    pub up: Option<bool>,
    /// "fleet and local numbers", or "local numbers only" and why.
    pub judging: String,
    /// When Prometheus last answered.
    pub last_answer: Option<String>,
    /// Why the last query failed.
    pub error: Option<String>,
    /// Replicas seen at the last answer.
    pub replicas: usize,
    /// Their names, sorted (the first 100).
    pub members: Vec<String>,
    /// This replica's name in the fleet.
    pub replica: String,
    /// The replica that sends the fleet's webhooks for automatic events, as of the last
    /// answer; `None` while Prometheus does not answer (then each replica sends its own).
    pub notifier: Option<String>,
    /// Guarded routes are held at their baselines: the fleet has not answered since start.
    pub held: bool,
}

/// The fleet's verdicts at its last answer, per `(route, pool)`.
#[derive(Debug, Default)]
pub struct FleetVerdicts {
    pub at: Option<std::time::Instant>,
    pub verdicts: HashMap<(String, String), Verdict>,
}

impl FleetVerdicts {
    /// The fleet's verdict on `pool` of `route`, if the fleet answered within `fresh`.
    pub fn get(&self, route: &str, pool: &str, fresh: Duration) -> Option<&Verdict> {
        self.at.filter(|at| at.elapsed() <= fresh)?;
        self.verdicts.get(&(route.to_owned(), pool.to_owned()))
    }
}

/// This replica's name in the fleet: `SWITCHYARD_REPLICA`, else the host's name (a pod's
/// name in Kubernetes) and the admin port (or the proxy's), so that replicas on one host
/// differ too.
pub fn replica_name(snap: &Snapshot, bound: Option<u16>) -> String {
    if let Ok(n) = std::env::var("SWITCHYARD_REPLICA") {
        let n = n.trim();
        if !n.is_empty() {
            return n.chars().take(128).collect();
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let port = bound.or_else(|| {
        snap.admin
            .as_ref()
            .map(|a| a.listen.port())
            .or(snap.listen.http.map(|a| a.port()))
            .or(snap.listen.https.map(|a| a.port()))
    });
    let name = match port {
        Some(p) => format!("{host}:{p}"),
        None => host,
    };
    name.chars().take(128).collect()
}

/// How long a replica started with `[fleet]` says it is not ready while it waits for the
/// fleet's first answer: two rounds and a query, and at least 30 s. Past it the replica is
/// ready (a Prometheus outage must not stop a deployment), its guarded routes still held at
/// their baselines until the fleet answers.
pub fn hold_bound(f: &FleetSettings) -> Duration {
    (f.interval * 2 + f.query_timeout).max(Duration::from_secs(30))
}
