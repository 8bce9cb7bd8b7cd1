//! The guard task: it owns every window, judges every [`super::TICK`], and sends trips and
//! rollout steps to the one writer ([`crate::control::Trigger`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    rollout_due, verdict, GuardConfig, Outcome, PoolReport, Report, RouteReport, Verdict, Window, TICK,
};
use crate::control::Trigger;
use crate::guard::Figures;
use crate::routing::Route;
use crate::runtime::overlay;
use crate::runtime::state::State;
use crate::runtime::Snapshot;

/// The guard task: records outcomes, judges every [`TICK`], and sends trips and rollout
/// advances to the reloader. Ends when the outcome channel closes or the state is dropped.
pub async fn run(state: Weak<State>, mut outcomes: mpsc::Receiver<Outcome>, triggers: mpsc::Sender<Trigger>) {
    let mut windows: HashMap<(Arc<str>, Arc<str>), Window> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(1024);
    let mut guard = Guard::new(triggers);
    // The snapshot the windows were last checked against: outcomes that come after a reload
    // or a reset, before the next tick, count against the new config, not with the old.
    let Some(mut seen) = state.upgrade().map(|s| s.snapshot.load_full()) else {
        return;
    };
    guard.forget_stale_all(&seen, &mut windows);
    loop {
        tokio::select! {
            n = outcomes.recv_many(&mut batch, 1024) => {
                if n == 0 {
                    return;
                }
                let Some(state) = state.upgrade() else { return };
                let snap = state.snapshot.load();
                if !Arc::ptr_eq(&seen, &*snap) {
                    seen = Arc::clone(&*snap);
                    guard.forget_stale_all(&snap, &mut windows);
                }
                for o in batch.drain(..) {
                    let length = snap
                        .route_by_name(&o.route)
                        .and_then(|r| snap.guard(r))
                        .map_or(Duration::from_secs(30), |g| g.window);
                    let w = windows.entry((o.route, o.pool)).or_insert_with(|| Window::new(length, o.at));
                    if w.length() != length {
                        *w = Window::new(length, o.at);
                    }
                    w.record(o.at, o.error, o.latency);
                }
            }
            _ = tick.tick() => {
                let Some(state) = state.upgrade() else { return };
                let snap = state.snapshot.load_full();
                // Fingerprints change only with the snapshot: 10,000 guarded routes are not
                // fingerprinted ten times a second for nothing.
                if !Arc::ptr_eq(&seen, &snap) {
                    seen = snap.clone();
                    guard.forget_stale_all(&snap, &mut windows);
                }
                guard.fleet = state.fleet_verdicts.load_full();
                guard.checks = state.checks.load_full();
                let report = guard.judge(&snap, &mut windows, Instant::now()).await;
                state.guard.store(Arc::new(report));
                for pool in snap.pools.iter() {
                    for ep in pool.endpoints.iter() {
                        state.metrics.endpoint_healthy(&pool.name, &ep.address, ep.is_available(Instant::now()));
                    }
                }
            }
        }
    }
}

/// The guard task's memory between ticks.
struct Guard {
    /// Where trips and rollout steps are asked of the one writer.
    triggers: mpsc::Sender<Trigger>,
    /// Trips asked for and not yet seen in a snapshot, with when they were asked.
    asked: HashMap<(String, String), Instant>,
    /// Dry-run "would trip" already logged, so it is said once per episode.
    would_trip: HashSet<(String, String)>,
    /// Rollout step each route is on and when the guard first saw it.
    steps: HashMap<String, (usize, Instant)>,
    /// Routes tripped at the last tick: when one is reset, its windows start afresh.
    tripped: HashSet<String>,
    /// Each guarded route's split and pools, as last seen: when a reload changes them, the
    /// windows start afresh (old endpoints' failures are no evidence against new ones).
    fingerprints: HashMap<String, String>,
    /// Per (route, pool) taken out: its figures and verdict when it was, kept while it is out.
    at_trip: HashMap<(String, String), (Figures, Verdict)>,
    /// Per route with `max_mismatch_rate`: `(when, compared, mismatched)` counts of its mirror,
    /// a window's worth, oldest first.
    mirror_samples: HashMap<String, std::collections::VecDeque<(Instant, u64, u64)>>,
    /// The fleet's verdicts at its last answer (`[fleet]`).
    fleet: Arc<crate::fleet::FleetVerdicts>,
    /// The checks' last measurements (`[[routes.guard.checks]]`).
    checks: Arc<super::checks::Results>,
}

type Windows = HashMap<(Arc<str>, Arc<str>), Window>;

impl Guard {
    fn new(triggers: mpsc::Sender<Trigger>) -> Guard {
        Guard {
            triggers,
            asked: HashMap::new(),
            would_trip: HashSet::new(),
            steps: HashMap::new(),
            tripped: HashSet::new(),
            fingerprints: HashMap::new(),
            at_trip: HashMap::new(),
            mirror_samples: HashMap::new(),
            fleet: Default::default(),
            checks: Default::default(),
        }
    }

    /// One tick: every guarded route judged, trips and rollout steps asked of the reloader.
    async fn judge(&mut self, snap: &Snapshot, windows: &mut Windows, now: Instant) -> Report {
        let mut report = Report::default();
        let mut tripped_now = HashSet::new();
        for route in &snap.routes {
            let Some(g) = snap.guard(route) else { continue };
            if !route.runtime.tripped.is_empty() {
                tripped_now.insert(route.name.to_string());
            }
            let rr = self.judge_route(snap, route, g, windows, now).await;
            report.routes.insert(route.name.to_string(), rr);
        }
        self.asked.retain(|(r, p), _| {
            snap.route_by_name(r)
                .is_some_and(|route| !route.runtime.tripped.iter().any(|&t| *snap.pools[t].name == **p))
        });
        self.tripped = tripped_now;
        report
    }

    /// [`Guard::forget_stale`] for every guarded route of a snapshot the windows were not
    /// checked against yet.
    fn forget_stale_all(&mut self, snap: &Snapshot, windows: &mut Windows) {
        for route in snap.routes.iter().filter(|r| snap.guard(r).is_some()) {
            self.forget_stale(snap, route, windows);
        }
    }

    /// Clears a route's windows when they are no evidence any more: its split or pools
    /// changed, or it was reset (its old failures must not trip it again).
    fn forget_stale(&mut self, snap: &Snapshot, route: &Route, windows: &mut Windows) {
        let fingerprint = overlay::fingerprint(snap, route);
        let changed = self
            .fingerprints
            .insert(route.name.to_string(), fingerprint.clone())
            .is_some_and(|f| f != fingerprint);
        let reset = route.runtime.tripped.is_empty() && self.tripped.remove(&*route.name);
        if !route.runtime.tripped.is_empty() {
            self.tripped.insert(route.name.to_string());
        }
        if changed || reset {
            windows.retain(|(r, _), _| **r != *route.name);
        }
    }

    /// Judges a route's non-baseline pools, trips the failing ones and steps its rollout.
    async fn judge_route(
        &mut self,
        snap: &Snapshot,
        route: &Route,
        g: &GuardConfig,
        windows: &mut Windows,
        now: Instant,
    ) -> RouteReport {
        let mut figures = |pool: usize| {
            windows
                .get_mut(&(route.name.clone(), snap.pools[pool].name.clone()))
                .map(|w| w.figures(now))
                .unwrap_or_default()
        };
        let base = figures(g.baseline);
        let judged: Vec<(usize, Figures)> = route
            .split
            .weights()
            .map(|(p, _)| p)
            .filter(|&p| p != g.baseline && !route.runtime.tripped.contains(&p))
            .map(|p| (p, figures(p)))
            .collect();
        let mut rr = RouteReport::default();
        rr.pools.push(PoolReport {
            pool: snap.pools[g.baseline].name.to_string(),
            baseline: true,
            figures: base,
            verdict: None,
            tripped: false,
        });
        // Pools taken out: what they showed then, kept while they are out.
        self.at_trip.retain(|(r, p), _| {
            *r != *route.name || route.runtime.tripped.iter().any(|&t| *snap.pools[t].name == **p)
        });
        for &pool in &route.runtime.tripped {
            let name = snap.pools[pool].name.to_string();
            let (f, v) = self
                .at_trip
                .entry((route.name.to_string(), name.clone()))
                .or_insert_with(|| {
                    let manual = route.runtime.rolled_back.contains(&pool);
                    let why = if manual {
                        "rolled back by an operator"
                    } else {
                        "tripped"
                    };
                    (figures(pool), Verdict::Fail(why.to_owned()))
                })
                .clone();
            rr.pools.push(PoolReport {
                pool: name,
                baseline: false,
                figures: f,
                verdict: Some(v),
                tripped: true,
            });
        }
        let mirrored = self.mirror_verdict(snap, route, g, now);
        // The checks' records count only when measured on the route as it is now (a reset
        // must not be tripped again by the failures that caused the trip).
        let checks = self.checks.clone();
        let current = g.checks.is_empty()
            || checks.epochs.get(&*route.name) == Some(&crate::analysis::epoch(snap, route));
        for (pool, f) in judged {
            let mut v = verdict::judge(g, &base, &f);
            if let Some((shadow, mv)) = &mirrored {
                if *shadow == pool && !matches!(v, Verdict::Fail(_)) && *mv != Verdict::Pass {
                    v = mv.clone();
                }
            }
            if let (Verdict::Fail(reason), Some(_)) = (&mut v, &snap.fleet) {
                // With a fleet, every reason says which numbers were judged.
                *reason = format!("local numbers: {reason}");
            }
            let name = snap.pools[pool].name.to_string();
            let records = if current {
                checks.of(&route.name, &name)
            } else {
                &[]
            };
            if let (false, Some(c)) = (matches!(v, Verdict::Fail(_)), records.iter().find(|c| c.failing)) {
                v = Verdict::Fail(format!(
                    "check {} failed {} time(s) in a row (failure_limit {}): {} — {} {}, baseline {} {} — query: {}",
                    c.check,
                    c.failures,
                    c.failure_limit,
                    c.verdict.as_ref().and_then(|v| v.reason()).unwrap_or("failed"),
                    name,
                    c.value.map_or("no data".into(), super::checks::num),
                    snap.pools[g.baseline].name,
                    c.baseline_value.map_or("no data".into(), super::checks::num),
                    c.query
                ));
            }
            self.act(route, g, &name, &v, f, now).await;
            // Too few requests here to judge: a rollout steps on the fleet's numbers (fresh:
            // from its last three rounds), as it trips on them.
            let step_on = match (&v, &snap.fleet) {
                (Verdict::Hold, Some(fleet)) => self
                    .fleet
                    .get(&route.name, &name, fleet.interval * 3)
                    .cloned()
                    .unwrap_or(Verdict::Hold),
                _ => v.clone(),
            };
            let waits = self
                .step_rollout(snap, route, pool, (&step_on, &g.checks, records), now)
                .await;
            if waits.is_some() {
                rr.rollout_waits = waits;
            }
            if let Verdict::Fail(_) = &v {
                if !g.dry_run {
                    self.at_trip
                        .insert((route.name.to_string(), name.clone()), (f, v.clone()));
                }
            }
            rr.pools.push(PoolReport {
                pool: name,
                baseline: false,
                figures: f,
                verdict: Some(v),
                tripped: false,
            });
        }
        rr
    }

    /// The verdict on a route's mirror comparisons over the guard's window, for its shadow
    /// pool: fail past `max_mismatch_rate`, hold until `min_requests` were compared.
    fn mirror_verdict(
        &mut self,
        snap: &Snapshot,
        route: &Route,
        g: &GuardConfig,
        now: Instant,
    ) -> Option<(usize, Verdict)> {
        let limit = g.max_mismatch_rate?;
        let m = snap.mirror(route)?;
        let counts = m.stats.counts();
        let n = |name: &str| counts.iter().find(|(r, _)| *r == name).map_or(0, |c| c.1);
        let mismatched = n("status") + n("header") + n("body");
        let compared = n("match") + mismatched;
        let samples = self.mirror_samples.entry(route.name.to_string()).or_default();
        samples.push_back((now, compared, mismatched));
        while samples.len() > 1 && now.saturating_duration_since(samples[1].0) >= g.window {
            samples.pop_front();
        }
        let (_, c0, m0) = samples[0];
        let (compared, mismatched) = (compared.saturating_sub(c0), mismatched.saturating_sub(m0));
        let rate = if compared == 0 {
            0.0
        } else {
            mismatched as f64 / compared as f64
        };
        let v = if compared >= g.min_requests && rate > limit {
            Verdict::Fail(format!(
                "mirror mismatches: {mismatched} of {compared} compared answers differ ({:.1}% > {:.1}%) over {:?}",
                rate * 100.0,
                limit * 100.0,
                g.window
            ))
        } else if compared < g.min_requests {
            Verdict::Hold
        } else {
            Verdict::Pass
        };
        Some((m.pool, v))
    }

    /// Asks for a trip of a failing pool (at most every 2 s until the snapshot shows it), or
    /// in a dry run says once that it would trip.
    async fn act(
        &mut self,
        route: &Route,
        g: &GuardConfig,
        pool: &str,
        verdict: &Verdict,
        f: Figures,
        now: Instant,
    ) {
        let key = (route.name.to_string(), pool.to_owned());
        let Verdict::Fail(reason) = verdict else {
            self.would_trip.remove(&key);
            return;
        };
        if g.dry_run {
            if self.would_trip.insert(key) {
                tracing::warn!(route = %route.name, pool, requests = f.requests, errors = f.errors, dry_run = true, "guard would trip: {reason}");
            }
            return;
        }
        let recently = self
            .asked
            .get(&key)
            .is_some_and(|t| now.saturating_duration_since(*t) <= Duration::from_secs(2));
        if !recently {
            self.asked.insert(key.clone(), now);
            let _ = self
                .triggers
                .send(Trigger::Trip {
                    route: key.0,
                    pool: key.1,
                    reason: reason.clone(),
                    figures: f,
                })
                .await;
        }
    }

    /// Asks for a rollout's next step when its pool has passed for a whole step and every
    /// check of it has passed since the step began; says why it waits on a check.
    async fn step_rollout(
        &mut self,
        snap: &Snapshot,
        route: &Route,
        pool: usize,
        (verdict, checks, records): (
            &Verdict,
            &[super::checks::CheckConfig],
            &[super::checks::CheckStatus],
        ),
        now: Instant,
    ) -> Option<String> {
        let (Some(r), Some(step)) = (snap.rollout(route), route.runtime.rollout_step) else {
            return None;
        };
        if r.pool != pool {
            return None;
        }
        let started = match self.steps.get(&*route.name) {
            Some(&(s, t)) if s == step => t,
            _ => {
                self.steps.insert(route.name.to_string(), (step, now));
                now
            }
        };
        if step + 1 >= r.steps.len() {
            return None;
        }
        let waits = checks
            .iter()
            .find_map(|c| match records.iter().find(|s| s.check == c.name) {
                Some(s) => s.holds_step(started),
                None => Some(format!("check {} has not run since the route changed", c.name)),
            });
        if waits.is_none() && rollout_due(started, now, r.every, verdict) {
            self.steps.insert(route.name.to_string(), (step, now));
            let _ = self
                .triggers
                .send(Trigger::Advance {
                    route: route.name.to_string(),
                    from_step: step,
                })
                .await;
        }
        waits.map(|w| format!("the rollout waits: {w}"))
    }
}
