//! The analysis task: runs every guard's checks (`[[routes.guard.checks]]`, see
//! [`crate::guard::checks`]) against Prometheus, off the request path and off the guard's tick.
//!
//! Every check runs each `interval` for the route's baseline and each pool the guard judges
//! (in the split, not taken out), all of a route's pools at once so a ratio compares values of
//! the same moment. Each query runs in a task of its own, so a slow Prometheus delays nothing
//! but its own check; a check still in flight is not started again. Measurements land in
//! [`State::checks`], where the guard reads them on its next tick (a failing check trips its
//! pool; checks hold a rollout's step until they pass), in the metrics
//! (`switchyard_check_value`, `switchyard_check_verdicts_total`), and, when a pool's verdict
//! changes, in the audit trail (kind `check`).
//!
//! A check's count of failures starts again when its route's split, pools, trips or rollout
//! step change (a reset must not be tripped again by the failures that caused the trip; a new
//! step is judged on measurements made since), and when the check itself is changed by a
//! reload; its history stays.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::clock::unix_ms;
use crate::config::AnalysisSettings;
use crate::egress::RemoteFailure;
use crate::guard::checks::{evaluate, render, CheckConfig, CheckStatus, CheckVerdict, Measured, Results};
use crate::prometheus::{Prometheus, Target};
use crate::routing::Route;
use crate::runtime::overlay::fingerprint;
use crate::runtime::state::State;
use crate::runtime::Snapshot;

/// The largest answer a check reads: a check's query gives one number, so 1 MiB is already
/// thousands of series too many.
pub const MAX_ANSWER: usize = 1 << 20;

/// How often the task looks for checks that are due (and at the snapshot).
const TICK: Duration = Duration::from_millis(250);

/// One check of one route, across its pools.
struct Entry {
    /// Its place among the guard's checks.
    order: usize,
    config: CheckConfig,
    /// The route's split, pools and trips when the count started.
    epoch: String,
    next: Instant,
    in_flight: bool,
    /// Per pool (the baseline included).
    pools: BTreeMap<String, CheckStatus>,
}

/// A measurement back from Prometheus.
struct Done {
    key: (String, String),
    epoch: String,
    began: Instant,
    baseline: String,
    /// Per pool: the query as run and what it gave (and, failing, how).
    results: Vec<(String, String, Measured, Option<RemoteFailure>)>,
}

/// Runs the checks until the state is dropped.
pub async fn run(state: Weak<State>) {
    let prometheus = Arc::new(Prometheus::default());
    let (tx, mut rx) = mpsc::channel::<Done>(64);
    let mut entries: HashMap<(String, String), Entry> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The snapshot the entries were last brought in line with: everything `sync` reads is in
    // it, so ten thousand routes are not fingerprinted four times a second for nothing.
    // Held weakly: the old one is freed where the reloader frees it, not on this task.
    let mut seen: Weak<Snapshot> = Weak::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let Some(st) = state.upgrade() else { return };
                let snap = st.snapshot.load_full();
                if !std::ptr::eq(seen.as_ptr(), Arc::as_ptr(&snap)) {
                    seen = Arc::downgrade(&snap);
                    if sync(&st, &snap, &mut entries) {
                        publish(&st, &entries);
                    }
                }
                let Some(settings) = snap.analysis.clone() else { continue };
                let now = Instant::now();
                for (key, e) in entries.iter_mut().filter(|(_, e)| !e.in_flight && e.next <= now) {
                    let Some(route) = snap.route_by_name(&key.0) else { continue };
                    let Some(g) = snap.guard(route) else { continue };
                    e.in_flight = true;
                    e.next = now + e.config.interval;
                    let mut queries = Vec::new();
                    for pool in measured(route, g.baseline) {
                        let name = snap.pools[pool].name.to_string();
                        match render(&e.config.query, &name, &route.name, g.window) {
                            Ok(q) => queries.push((name, q)),
                            Err(why) => tracing::error!(route = %route.name, check = %e.config.name, "{why}"),
                        }
                    }
                    let done = Done {
                        key: key.clone(),
                        epoch: e.epoch.clone(),
                        began: now,
                        baseline: snap.pools[g.baseline].name.to_string(),
                        results: Vec::new(),
                    };
                    tokio::spawn(measure(prometheus.clone(), settings.clone(), queries, done, tx.clone()));
                }
            }
            Some(done) = rx.recv() => {
                let Some(st) = state.upgrade() else { return };
                if let Some(e) = entries.get_mut(&done.key) {
                    e.in_flight = false;
                    if e.epoch == done.epoch {
                        apply(&st, &done, e);
                        publish(&st, &entries);
                    }
                }
            }
        }
    }
}

/// The pools a check measures: the baseline, then each pool the guard judges.
fn measured(route: &Route, baseline: usize) -> Vec<usize> {
    let mut pools = vec![baseline];
    pools.extend(
        route
            .split
            .weights()
            .map(|(p, _)| p)
            .filter(|&p| p != baseline && !route.runtime.tripped.contains(&p)),
    );
    pools
}

/// What a route's checks count against: its split and pools, and the last change of its trips
/// or rollout step (a time, so a trip and a reset between two looks still differ).
pub fn epoch(snap: &Snapshot, route: &Route) -> String {
    format!("{}|{}", fingerprint(snap, route), route.runtime.changed_ms)
}

/// Brings the entries in line with the snapshot: new checks are due at once, removed ones
/// go (and their series), changed routes or checks count afresh. True when anything changed.
fn sync(st: &State, snap: &Snapshot, entries: &mut HashMap<(String, String), Entry>) -> bool {
    let mut changed = false;
    let mut live: Vec<(String, String)> = Vec::new();
    for route in &snap.routes {
        let Some(g) = snap.guard(route) else { continue };
        if g.checks.is_empty() {
            continue;
        }
        let epoch = epoch(snap, route);
        let in_split: Vec<&str> = route.split.weights().map(|(p, _)| &*snap.pools[p].name).collect();
        for (order, c) in g.checks.iter().enumerate() {
            let key = (route.name.to_string(), c.name.clone());
            live.push(key.clone());
            let e = entries.entry(key).or_insert_with(|| {
                changed = true;
                Entry {
                    order,
                    config: c.clone(),
                    epoch: epoch.clone(),
                    next: Instant::now(),
                    in_flight: false,
                    pools: BTreeMap::new(),
                }
            });
            e.order = order;
            if e.epoch != epoch || e.config != *c {
                changed = true;
                let fresh = e.config != *c;
                e.epoch = epoch.clone();
                e.config = c.clone();
                e.next = Instant::now();
                for (_, s) in e.pools.iter_mut() {
                    let history = if fresh {
                        Default::default()
                    } else {
                        std::mem::take(&mut s.history)
                    };
                    *s = CheckStatus {
                        history,
                        ..CheckStatus::new(c, s.query.clone())
                    };
                }
            }
            let gone: Vec<String> = e
                .pools
                .keys()
                .filter(|p| !in_split.contains(&p.as_str()))
                .cloned()
                .collect();
            for p in gone {
                changed = true;
                st.metrics.check_gone([&route.name, &p, &c.name]);
                e.pools.remove(&p);
            }
        }
    }
    entries.retain(|key, e| {
        let keep = live.contains(key);
        if !keep {
            changed = true;
            for p in e.pools.keys() {
                st.metrics.check_gone([&key.0, p, &key.1]);
            }
        }
        keep
    });
    changed
}

/// Runs one check's queries, all at once, and sends what they gave back.
async fn measure(
    p: Arc<Prometheus>,
    settings: AnalysisSettings,
    queries: Vec<(String, String)>,
    mut done: Done,
    tx: mpsc::Sender<Done>,
) {
    let settings = Arc::new(settings);
    let mut set = tokio::task::JoinSet::new();
    for (i, (_, q)) in queries.iter().enumerate() {
        let (p, settings, q) = (p.clone(), settings.clone(), q.clone());
        set.spawn(async move {
            let target = Target {
                url: &settings.prometheus,
                token_env: settings.token_env.as_ref().map(|(k, v)| (*k, v.as_str())),
                timeout: settings.query_timeout,
                limit: MAX_ANSWER,
            };
            (i, p.query(&target, &q).await)
        });
    }
    let mut answers: Vec<Option<Result<_, _>>> = (0..queries.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        if let Ok((i, answer)) = joined {
            answers[i] = Some(answer);
        }
    }
    for ((pool, query), answer) in queries.into_iter().zip(answers) {
        let answer = answer.unwrap_or_else(|| {
            Err(crate::egress::RemoteError::new(
                RemoteFailure::Unreachable,
                "the query's task ended",
            ))
        });
        let failure = answer.as_ref().err().map(|e| e.kind);
        let measured = match answer {
            Err(e) => Measured::Error(e.message),
            Ok(s) if s.is_empty() => Measured::NoData,
            Ok(s) if s.len() == 1 => Measured::Value(s[0].value),
            Ok(s) => Measured::Error(format!(
                "the query gives {} series; a check needs one number — aggregate them, such as with sum(...)",
                s.len()
            )),
        };
        done.results.push((pool, query, measured, failure));
    }
    let _ = tx.send(done).await;
}

/// Takes a measurement into its entry: each pool judged, counted, and a changed verdict
/// recorded in the audit trail.
fn apply(st: &State, done: &Done, e: &mut Entry) {
    let (route, check) = (&done.key.0, &done.key.1);
    let base = done
        .results
        .iter()
        .find(|(p, ..)| *p == done.baseline)
        .map(|(_, _, m, _)| m.clone());
    let value = |m: &Measured| match m {
        Measured::Value(v) => Some(*v),
        _ => None,
    };
    let at = unix_ms();
    for (pool, query, m, failure) in &done.results {
        let is_base = *pool == done.baseline;
        // The baseline is measured against the absolute bounds only: it is not judged.
        let verdict = evaluate(&e.config, m, if is_base { None } else { base.as_ref() });
        if let Some(kind) = failure {
            st.metrics.remote_error("prometheus", *kind);
        }
        st.metrics.check([route, pool, check], value(m), verdict.name());
        let s = e
            .pools
            .entry(pool.clone())
            .or_insert_with(|| CheckStatus::new(&e.config, query.clone()));
        s.query.clone_from(query);
        let before = s.verdict.as_ref().map(CheckVerdict::name);
        let baseline_value = if is_base {
            None
        } else {
            base.as_ref().and_then(value)
        };
        s.record(verdict, (value(m), baseline_value), done.began, at);
        let now = s.verdict.as_ref().map_or("", CheckVerdict::name);
        let worth = match before {
            None => now != "pass",
            Some(b) => b != now,
        };
        if worth && !is_base {
            announce(st, route, pool, s);
        }
    }
}

/// A pool's check changed verdict: an event in the trail (and the webhooks that ask for `check`).
fn announce(st: &State, route: &str, pool: &str, s: &CheckStatus) {
    let v = s.verdict.as_ref().expect("just recorded");
    let count = if matches!(v, CheckVerdict::Fail(_)) {
        format!(" ({} of {} in a row to trip)", s.failures, s.failure_limit)
    } else {
        String::new()
    };
    let text = format!(
        "pool {pool}: check {} is {}{count}{}",
        s.check,
        v.name(),
        v.reason().map(|r| format!(": {r}")).unwrap_or_default()
    );
    st.announce(
        crate::audit::Record {
            kind: crate::notify::Event::Check,
            route: Some(route),
            pool: Some(pool),
            by: None,
            text,
            details: serde_json::json!({
                "check": s.check,
                "verdict": v.name(),
                "reason": v.reason(),
                "value": s.value,
                "baseline_value": s.baseline_value,
                "failures": s.failures,
                "failure_limit": s.failure_limit,
                "query": s.query,
            }),
        },
        true,
    );
}

/// Publishes every entry's records to [`State::checks`].
fn publish(st: &State, entries: &HashMap<(String, String), Entry>) {
    let mut sorted: Vec<(&(String, String), &Entry)> = entries.iter().collect();
    sorted.sort_by_key(|(k, e)| (k.0.as_str(), e.order));
    let mut out = Results::default();
    for ((route, _), e) in sorted {
        out.epochs.insert(route.clone(), e.epoch.clone());
        let pools = out.routes.entry(route.clone()).or_default();
        for (pool, s) in &e.pools {
            pools.entry(pool.clone()).or_default().push(s.clone());
        }
    }
    st.checks.store(Arc::new(out));
}
