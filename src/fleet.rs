//! `[fleet]`: replicas that agree through the Prometheus that scrapes them all, with no
//! controller to run.
//!
//! Every [`FleetSettings::interval`], each replica asks Prometheus two things:
//!
//! - **The fleet's state.** Every replica exports, per route, when its trips or rollout step
//!   last changed (`switchyard_route_changed_timestamp_seconds{route,fingerprint}`), which pools
//!   are tripped (`switchyard_pool_tripped`, 1 by a guard, 2 by an operator) and its rollout
//!   step (`switchyard_rollout_step_index`). For each route, the replica with the latest change
//!   and the same split and pools (the fingerprint) wins: the others take its trips and step
//!   ([`Adopt`]). A trip, a step, a rollback, a reset or a promote on any replica reaches the
//!   others within a scrape interval plus one query, and a replica that starts with no state
//!   joins in the fleet's. Rollout steps stay within one of each other: a replica that takes a
//!   step restarts the others' step clocks when they adopt it.
//! - **The fleet's numbers.** Each guarded route's pools are judged on the sum over replicas of
//!   their requests, errors and latency histogram (`increase()` over the guard's window, or over
//!   the time since the route last changed, whichever is shorter, so a reset is not tripped
//!   again by the errors that caused the trip), with the same verdict as the local guard's
//!   (without its fast check, which needs sub-second buckets). A failing pool is tripped with
//!   "fleet numbers (N replicas)" in its reason; the local guard's reasons say "local numbers".
//!
//! When Prometheus does not answer, each replica keeps judging its own traffic, and says so:
//! `GET /api/fleet`, `switchyard status`, and `switchyard_fleet_up 0`.

use crate::egress::RemoteError;
use crate::prometheus::{Prometheus, Sample, Target};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::clock::timestamp;
use crate::clock::unix_ms;
use crate::config::FleetSettings;
use crate::control::{Adopt, Trigger};
use crate::guard::verdict::{judge, Verdict};
use crate::guard::window::Figures;
use crate::runtime::overlay::{fingerprint, fingerprint_label};
use crate::runtime::state::State;
pub use crate::runtime::state::{hold_bound, replica_name, FleetStatus, FleetVerdicts};
use crate::runtime::Snapshot;

/// `Err` when `[fleet] token_env` names a variable that is not set: `run` refuses to start and
/// a reload is refused, as for a webhook's secret, rather than every query failing later.
pub fn check_env(fleet: Option<&FleetSettings>) -> Result<(), String> {
    match fleet.and_then(|f| f.token_env.as_deref()) {
        Some(var) if std::env::var(var).map_or(true, |t| t.is_empty()) => Err(format!(
            "fleet.token_env names {var}, but {var} is not set — export it, or remove token_env"
        )),
        _ => Ok(()),
    }
}

/// What the state query showed: the samples, and each target's replica name.
struct View {
    samples: Vec<Sample>,
    names: HashMap<(String, String), String>,
}

impl View {
    fn new(samples: Vec<Sample>) -> View {
        let names = samples
            .iter()
            .filter(|s| s.label("__name__") == "switchyard_fleet_info")
            .map(|s| {
                let (i, j) = s.target();
                ((i.to_owned(), j.to_owned()), s.label("replica").to_owned())
            })
            .collect();
        View { samples, names }
    }

    /// The replica a sample comes from: its name in `switchyard_fleet_info`.
    fn replica(&self, s: &Sample) -> String {
        self.name(s).unwrap_or(s.target().0).to_owned()
    }

    /// The name a sample's scrape target exports in `switchyard_fleet_info`, if it does.
    fn name(&self, s: &Sample) -> Option<&str> {
        let (i, j) = s.target();
        self.names.get(&(i.to_owned(), j.to_owned())).map(String::as_str)
    }

    /// The fleet's replicas by name, sorted.
    fn replicas(&self) -> Vec<String> {
        let mut v: Vec<String> = self.names.values().cloned().collect();
        v.sort();
        v.dedup();
        v
    }

    fn of<'a>(&'a self, name: &'a str, route: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.label("__name__") == name && s.label("route") == route)
    }
}

/// `{matchers}` with the fleet's selector added.
fn select(settings: &FleetSettings, matchers: &str) -> String {
    match (matchers.is_empty(), settings.selector.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!("{{{matchers}}}"),
        (true, false) => format!("{{{}}}", settings.selector),
        (false, false) => format!("{{{matchers}, {}}}", settings.selector),
    }
}

/// ` and on(instance, job) switchyard_fleet_info{fleet="NAME"}`: keeps the series of this
/// fleet's replicas only.
fn of_fleet(settings: &FleetSettings) -> String {
    format!(
        " and on(instance, job) switchyard_fleet_info{}",
        select(settings, &format!("fleet=\"{}\"", settings.name))
    )
}

/// The largest Prometheus answer read: the fleet's queries return a few series per replica,
/// route and pool (a few hundred bytes each), so 16 MiB is thousands of times what a fleet
/// needs, and well under the shipped manifest's memory limit (256 Mi).
pub const MAX_ANSWER: usize = 16 << 20;

/// Asks the fleet's Prometheus.
async fn query(p: &Prometheus, settings: &FleetSettings, promql: &str) -> Result<Vec<Sample>, RemoteError> {
    let target = Target {
        url: &settings.prometheus,
        token_env: settings.token_env.as_deref().map(|v| ("fleet.token_env", v)),
        timeout: settings.query_timeout,
        limit: MAX_ANSWER,
    };
    p.query(&target, promql).await
}

/// What one query round decided.
#[derive(Debug, Default)]
struct Round {
    adopt: Vec<Adopt>,
    /// `(route, pool, reason, figures)` to trip on the fleet's numbers.
    trips: Vec<(String, String, String, Figures)>,
    /// Every judged pool's verdict on the fleet's numbers.
    verdicts: HashMap<(String, String), Verdict>,
    /// The fleet's replicas by name, sorted.
    replicas: Vec<String>,
}

/// For each route of `snap`, the replica whose state of it changed last, if that is later than
/// this one's and on the same split and pools; else, operators' rollbacks made later on
/// replicas on another split (a config rollout under way).
fn newer_states(snap: &Snapshot, view: &View, me: &str) -> Vec<Adopt> {
    let mut out = Vec::new();
    for route in &snap.routes {
        let ours = fingerprint_label(&fingerprint(snap, route));
        // Each other replica's last change of the route: (ms, replica, fingerprint, origin).
        let mut seen: Vec<(u64, String, &str, &str)> = view
            .of("switchyard_route_changed_timestamp_seconds", &route.name)
            .map(|s| {
                let ms = (s.value * 1000.0).round().max(0.0) as u64;
                (ms, view.replica(s), s.label("fingerprint"), s.label("origin"))
            })
            .filter(|(_, replica, _, _)| replica != me)
            .collect();
        seen.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let tripped_on = |replica: &str| -> Vec<(String, bool)> {
            let mut t: Vec<(String, bool)> = view
                .of("switchyard_pool_tripped", &route.name)
                .filter(|s| view.replica(s) == replica && s.value >= 1.0)
                .map(|s| (s.label("pool").to_owned(), s.value >= 2.0))
                .collect();
            t.sort();
            t
        };
        let origin = |replica: &str, origin: &str| {
            if origin.is_empty() {
                replica.to_owned()
            } else {
                origin.to_owned()
            }
        };
        let newer = |ms: u64| ms > route.runtime.changed_ms;
        if let Some((ms, replica, _, from)) = seen.iter().rev().find(|(_, _, fp, _)| *fp == ours) {
            if newer(*ms) {
                let step = view
                    .of("switchyard_rollout_step_index", &route.name)
                    .find(|s| view.replica(s) == *replica)
                    .map(|s| s.value.max(0.0) as usize);
                out.push(Adopt {
                    route: route.name.to_string(),
                    fingerprint: ours,
                    changed_ms: *ms,
                    tripped: tripped_on(replica),
                    step,
                    from: origin(replica, from),
                    rollback_only: false,
                });
                continue;
            }
        }
        // Rollbacks on another split: of pools this route also has, not yet out here.
        let baseline = route.baseline;
        let ours_named = |pool: &str| {
            snap.pool_index(pool).filter(|&p| {
                p != baseline
                    && route.split.weights().any(|(q, _)| q == p)
                    && !route.runtime.rolled_back.contains(&p)
            })
        };
        let mut rollbacks: Vec<(String, bool)> = Vec::new();
        let mut latest: Option<(u64, String)> = None;
        for (ms, replica, fp, from) in &seen {
            if *fp == ours || !newer(*ms) {
                continue;
            }
            for (pool, manual) in tripped_on(replica) {
                if manual && ours_named(&pool).is_some() && !rollbacks.iter().any(|(p, _)| *p == pool) {
                    rollbacks.push((pool, true));
                    latest = Some((*ms, origin(replica, from)));
                }
            }
        }
        if let Some((ms, from)) = latest {
            rollbacks.sort();
            out.push(Adopt {
                route: route.name.to_string(),
                fingerprint: ours,
                changed_ms: ms,
                tripped: rollbacks,
                step: None,
                from,
                rollback_only: true,
            });
        }
    }
    out
}

/// The `q` quantile of a cumulative histogram, `(le, count)` in any order, as Prometheus's
/// `histogram_quantile` computes it (linear within the bucket; the highest finite bound when it
/// falls in `+Inf`). `None` without a `+Inf` bucket or without observations.
fn quantile(q: f64, buckets: &mut [(f64, f64)]) -> Option<f64> {
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (last_le, total) = *buckets.last()?;
    if last_le != f64::INFINITY || total <= 0.0 || buckets.len() < 2 {
        return None;
    }
    // Counts must not fall with the bound (a scrape between buckets can make them): as
    // Prometheus, take the running maximum.
    let mut most = 0.0f64;
    for b in buckets.iter_mut() {
        most = most.max(b.1);
        b.1 = most;
    }
    let rank = q * total;
    let i = buckets.iter().position(|b| b.1 >= rank)?;
    if i == buckets.len() - 1 {
        return Some(buckets[i - 1].0);
    }
    if i == 0 && buckets[0].0 <= 0.0 {
        return Some(buckets[0].0);
    }
    let (start, below) = if i == 0 { (0.0, 0.0) } else { buckets[i - 1] };
    let (end, count) = buckets[i];
    let inside = count - below;
    if inside <= 0.0 {
        return Some(end);
    }
    Some(start + (end - start) * ((rank - below) / inside))
}

/// Asks Prometheus for the fleet's state and numbers; what to adopt and what to trip.
async fn round(
    p: &Prometheus,
    settings: &FleetSettings,
    snap: &Snapshot,
    me: &str,
    now_ms: u64,
) -> Result<Round, RemoteError> {
    let names = "switchyard_route_changed_timestamp_seconds|switchyard_route_config_timestamp_seconds|switchyard_pool_tripped|switchyard_rollout_step_index|switchyard_fleet_info";
    let view = View::new(
        query(
            p,
            settings,
            &format!(
                "{}{}",
                select(settings, &format!("__name__=~\"{names}\"")),
                of_fleet(settings)
            ),
        )
        .await?,
    );
    let mut round = Round {
        adopt: newer_states(snap, &view, me),
        replicas: view.replicas(),
        ..Round::default()
    };
    // The fleet's numbers, for each guarded route, from the replicas on its split and pools
    // only, over its window or the time since it last changed or since the last of those
    // replicas took its config (whole seconds); routes with the same range share the queries.
    let least = (2 * settings.interval.as_secs()).max(3);
    let mut ranges: BTreeMap<u64, Vec<(usize, Vec<String>)>> = BTreeMap::new();
    for (i, route) in snap.routes.iter().enumerate() {
        let Some(g) = snap.guard(route) else { continue };
        if g.dry_run || route.split.weights().count() < 2 || route.runtime.held {
            continue;
        }
        let ours = fingerprint_label(&fingerprint(snap, route));
        let mut on_split: Vec<String> = view
            .of("switchyard_route_changed_timestamp_seconds", &route.name)
            .filter(|s| s.label("fingerprint") == ours)
            .map(|s| view.replica(s))
            .collect();
        on_split.sort();
        on_split.dedup();
        let configured = view
            .of("switchyard_route_config_timestamp_seconds", &route.name)
            .filter(|s| s.label("fingerprint") == ours && on_split.contains(&view.replica(s)))
            .map(|s| (s.value * 1000.0).max(0.0) as u64)
            .chain([route.runtime.config_ms])
            .max()
            .unwrap_or(0);
        let since = route.runtime.changed_ms.max(configured);
        let range = g.window.as_secs().max(1).min(now_ms.saturating_sub(since) / 1000);
        if range >= least && !on_split.is_empty() {
            ranges.entry(range).or_default().push((i, on_split));
        }
    }
    let fleet = of_fleet(settings);
    for (range, routes) in ranges {
        let by = |metric: String, extra: &str| {
            format!("sum by (instance, job, route, pool{extra}) (increase({metric}[{range}s]){fleet})")
        };
        let requests = query(
            p,
            settings,
            &by(format!("switchyard_requests_total{}", select(settings, "")), ""),
        )
        .await?;
        let errors = query(
            p,
            settings,
            &by(
                format!(
                    "switchyard_requests_total{}",
                    select(settings, "class=~\"5xx|error\"")
                ),
                "",
            ),
        )
        .await?;
        let latency = routes.iter().any(|(i, _)| {
            snap.guard(&snap.routes[*i])
                .is_some_and(|g| g.max_p99.is_some() || g.max_p50.is_some())
        });
        let buckets = if latency {
            query(
                p,
                settings,
                &by(
                    format!(
                        "switchyard_request_duration_seconds_bucket{}",
                        select(settings, "")
                    ),
                    ", le",
                ),
            )
            .await?
        } else {
            Vec::new()
        };
        for (i, on_split) in routes {
            let route = &snap.routes[i];
            let g = snap.guard(route).expect("guarded");
            let counted = |s: &&Sample, pool: &str| {
                s.label("route") == &*route.name
                    && s.label("pool") == pool
                    && view.name(s).is_some_and(|n| on_split.iter().any(|r| r == n))
            };
            let figures = |pool: usize| {
                let name = &*snap.pools[pool].name;
                let sum = |list: &[Sample]| -> f64 {
                    list.iter().filter(|s| counted(s, name)).map(|s| s.value).sum()
                };
                let mut by_le: BTreeMap<String, f64> = BTreeMap::new();
                for s in buckets.iter().filter(|s| counted(s, name)) {
                    *by_le.entry(s.label("le").to_owned()).or_default() += s.value;
                }
                let mut hist: Vec<(f64, f64)> = by_le
                    .iter()
                    .filter_map(|(le, c)| Some((le.parse::<f64>().ok()?, *c)))
                    .collect();
                let mut at = |q: f64| {
                    quantile(q, &mut hist)
                        .filter(|v| v.is_finite() && *v >= 0.0)
                        .map(Duration::from_secs_f64)
                };
                let (p50, p99) = (at(0.5), at(0.99));
                Figures {
                    requests: sum(&requests).round() as u64,
                    errors: sum(&errors).round() as u64,
                    p50,
                    p99,
                    span: Duration::from_secs(range),
                    ..Figures::default()
                }
            };
            let base = figures(g.baseline);
            for (pool, _) in route.split.weights() {
                if pool == g.baseline || route.runtime.tripped.contains(&pool) {
                    continue;
                }
                let f = figures(pool);
                let verdict = judge(g, &base, &f);
                let key = (route.name.to_string(), snap.pools[pool].name.to_string());
                if let Verdict::Fail(reason) = &verdict {
                    round.trips.push((
                        key.0.clone(),
                        key.1.clone(),
                        format!(
                            "fleet numbers ({} replicas on this split): {reason}",
                            on_split.len()
                        ),
                        f,
                    ));
                }
                round.verdicts.insert(key, verdict);
            }
        }
    }
    Ok(round)
}

/// The fleet task: queries every `interval` while the config has `[fleet]`, sends what to
/// adopt and what to trip to the control task, and keeps [`FleetStatus`] and the metrics. Ends
/// when the state is dropped.
pub async fn run(state: Weak<State>, triggers: mpsc::Sender<Trigger>) {
    let p = Prometheus::default();
    loop {
        let Some(st) = state.upgrade() else { return };
        let snap = st.snapshot.load_full();
        let Some(settings) = snap.fleet.clone() else {
            if st.fleet.load().prometheus.is_some() {
                st.fleet.store(Arc::new(FleetStatus::default()));
                st.metrics.fleet(None, None);
                st.metrics.fleet_info(None);
                st.notifies.store(true, std::sync::atomic::Ordering::Release);
            }
            drop((st, snap));
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        st.metrics.fleet_info(Some((&settings.name, st.replica())));
        let result = round(&p, &settings, &snap, st.replica(), unix_ms()).await;
        let previous = st.fleet.load_full();
        let status = match result {
            Ok(r) => {
                if previous.up == Some(false) {
                    tracing::info!(prometheus = %settings.prometheus, "fleet: Prometheus answers again; judging the fleet's numbers too");
                }
                st.metrics
                    .fleet(Some(&settings.prometheus), Some(r.replicas.len()));
                // The fleet's first replica by name sends the webhooks of automatic events.
                let notifier = r
                    .replicas
                    .first()
                    .cloned()
                    .unwrap_or_else(|| st.replica().to_owned());
                let notifies = notifier == st.replica();
                if st.notifies.swap(notifies, std::sync::atomic::Ordering::AcqRel) != notifies {
                    tracing::info!(replica = %st.replica(), notifier = %notifier, "fleet: {} sends the fleet's webhooks for trips and rollout steps", if notifies { "this replica" } else { "another replica" });
                }
                st.fleet_verdicts.store(Arc::new(FleetVerdicts {
                    at: Some(std::time::Instant::now()),
                    verdicts: r.verdicts,
                }));
                for a in r.adopt {
                    let _ = triggers.send(Trigger::Adopt(a)).await;
                }
                // After the adoptions: the fleet's state is known, a held replica follows it.
                if snap.routes.iter().any(|r| r.runtime.held) {
                    let _ = triggers.send(Trigger::FleetKnown).await;
                }
                for (route, pool, reason, figures) in r.trips {
                    let _ = triggers
                        .send(Trigger::Trip {
                            route,
                            pool,
                            reason,
                            figures,
                        })
                        .await;
                }
                FleetStatus {
                    prometheus: Some(settings.prometheus.clone()),
                    up: Some(true),
                    judging: "fleet and local numbers".into(),
                    last_answer: Some(timestamp(SystemTime::now())),
                    error: None,
                    replicas: r.replicas.len(),
                    members: r.replicas.iter().take(100).cloned().collect(),
                    replica: st.replica().to_owned(),
                    notifier: Some(notifier),
                    held: false,
                }
            }
            Err(e) => {
                if previous.up != Some(false) {
                    tracing::warn!(prometheus = %settings.prometheus, "fleet: {e}; judging local numbers only until it answers");
                }
                st.metrics.fleet(Some(&settings.prometheus), None);
                st.metrics.remote_error("prometheus", e.kind);
                // Alone, every replica sends its own webhooks.
                st.notifies.store(true, std::sync::atomic::Ordering::Release);
                let e = e.message;
                FleetStatus {
                    prometheus: Some(settings.prometheus.clone()),
                    up: Some(false),
                    judging: format!("local numbers only: {e}"),
                    last_answer: previous.last_answer.clone(),
                    error: Some(e),
                    replicas: previous.replicas,
                    members: previous.members.clone(),
                    replica: st.replica().to_owned(),
                    notifier: None,
                    held: snap.routes.iter().any(|r| r.runtime.held),
                }
            }
        };
        st.fleet.store(Arc::new(status));
        let interval = settings.interval;
        drop((st, snap));
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests;
