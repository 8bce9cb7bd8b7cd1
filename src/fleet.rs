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

use crate::notify::{RemoteError, RemoteFailure};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::guard::overlay::{fingerprint, fingerprint_label};
use crate::guard::verdict::{judge, Verdict};
use crate::guard::window::Figures;
use crate::reload::Trigger;
use crate::routing::{FleetSettings, Snapshot};
use crate::state::{timestamp, State};

/// Another replica's more recent state of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Adopt {
    pub route: String,
    /// [`fingerprint_label`] of the route on that replica: only the same split and pools apply.
    pub fingerprint: String,
    /// When it changed there, Unix ms.
    pub changed_ms: u64,
    /// Its tripped pools, and whether an operator rolled each back.
    pub tripped: Vec<(String, bool)>,
    /// Its rollout step.
    pub step: Option<usize>,
    /// The replica, as Prometheus names it (its `instance` label).
    pub from: String,
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
}

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

/// One sample of an instant vector: its labels and value.
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }

    /// The replica it comes from: its `instance` label, else all its target labels.
    fn replica(&self) -> String {
        if let Some(i) = self.labels.get("instance") {
            return i.clone();
        }
        self.labels
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "__name__" | "route" | "pool" | "fingerprint"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Parses a Prometheus `/api/v1/query` answer holding an instant vector.
fn samples(answer: &Value) -> Result<Vec<Sample>, String> {
    if answer["status"] != "success" {
        return Err(format!(
            "Prometheus answered {}: {}",
            answer["errorType"].as_str().unwrap_or("an error"),
            answer["error"].as_str().unwrap_or("(no message)")
        ));
    }
    let result = answer["data"]["result"]
        .as_array()
        .ok_or("Prometheus's answer has no data.result")?;
    Ok(result
        .iter()
        .filter_map(|r| {
            let labels = r["metric"]
                .as_object()?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                .collect();
            let value = r["value"][1].as_str()?.parse::<f64>().ok()?;
            value.is_finite().then_some(Sample { labels, value })
        })
        .collect())
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

/// The largest Prometheus answer read: the fleet's queries return a few series per replica,
/// route and pool (a few hundred bytes each), so 16 MiB is thousands of times what a fleet
/// needs, and well under the shipped manifest's memory limit (256 Mi).
pub const MAX_ANSWER: usize = 16 << 20;

/// Prometheus's HTTP API.
struct Prometheus {
    client: crate::notify::HttpsClient,
}

impl Prometheus {
    async fn query(&self, settings: &FleetSettings, promql: &str) -> Result<Vec<Sample>, RemoteError> {
        let invalid = |m: String| RemoteError::new(RemoteFailure::Invalid, m);
        let url = format!(
            "{}/api/v1/query?query={}",
            settings.prometheus,
            form_urlencoded::byte_serialize(promql.as_bytes()).collect::<String>()
        );
        let mut req = http::Request::get(&url);
        if let Some(var) = &settings.token_env {
            match std::env::var(var) {
                Ok(t) if !t.is_empty() => {
                    req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"))
                }
                _ => return Err(invalid(format!("fleet.token_env names {var}, which is not set"))),
            }
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| invalid(e.to_string()))?;
        let (head, body) = crate::notify::exchange(
            &self.client,
            req,
            settings.query_timeout,
            &settings.prometheus,
            MAX_ANSWER,
        )
        .await?;
        let value: Value = serde_json::from_slice(&body).map_err(|_| {
            invalid(format!(
                "{} from {}: not Prometheus's JSON",
                head.status, settings.prometheus
            ))
        })?;
        samples(&value).map_err(invalid)
    }
}

/// What one query round decided.
#[derive(Debug, Default)]
struct Round {
    adopt: Vec<Adopt>,
    /// `(route, pool, reason, figures)` to trip on the fleet's numbers.
    trips: Vec<(String, String, String, Figures)>,
    pub replicas: usize,
}

/// For each route of `snap`, the replica whose state of it changed last, if that is later than
/// this one's and on the same split and pools.
fn newer_states(snap: &Snapshot, state: &[Sample]) -> Vec<Adopt> {
    // Per route: each replica's last change and fingerprint.
    let mut changed: HashMap<&str, Vec<(String, u64, &str)>> = HashMap::new();
    for s in state
        .iter()
        .filter(|s| s.label("__name__") == "switchyard_route_changed_timestamp_seconds")
    {
        let ms = (s.value * 1000.0).round().max(0.0) as u64;
        changed
            .entry(s.label("route"))
            .or_default()
            .push((s.replica(), ms, s.label("fingerprint")));
    }
    let mut out = Vec::new();
    for route in &snap.routes {
        let Some(replicas) = changed.get(&*route.name) else {
            continue;
        };
        let ours = fingerprint_label(&fingerprint(snap, route));
        let best = replicas
            .iter()
            .filter(|(_, _, fp)| *fp == ours)
            .max_by_key(|(replica, ms, _)| (*ms, replica.clone()));
        let Some((replica, ms, _)) = best else { continue };
        if *ms <= route.runtime.changed_ms {
            continue;
        }
        let of_it = |name: &'static str| {
            state.iter().filter(move |s| {
                s.label("__name__") == name && s.label("route") == &*route.name && s.replica() == *replica
            })
        };
        let mut tripped: Vec<(String, bool)> = of_it("switchyard_pool_tripped")
            .filter(|s| s.value >= 1.0)
            .map(|s| (s.label("pool").to_owned(), s.value >= 2.0))
            .collect();
        tripped.sort();
        let step = of_it("switchyard_rollout_step_index")
            .next()
            .map(|s| s.value.max(0.0) as usize);
        out.push(Adopt {
            route: route.name.to_string(),
            fingerprint: ours,
            changed_ms: *ms,
            tripped,
            step,
            from: replica.clone(),
        });
    }
    out
}

/// Asks Prometheus for the fleet's state and numbers; what to adopt and what to trip.
async fn round(
    p: &Prometheus,
    settings: &FleetSettings,
    snap: &Snapshot,
    now_ms: u64,
) -> Result<Round, RemoteError> {
    let names = "switchyard_route_changed_timestamp_seconds|switchyard_pool_tripped|switchyard_rollout_step_index|switchyard_connections_active";
    let state = p
        .query(settings, &select(settings, &format!("__name__=~\"{names}\"")))
        .await?;
    let mut replicas: Vec<String> = state
        .iter()
        .filter(|s| s.label("__name__") == "switchyard_connections_active")
        .map(Sample::replica)
        .collect();
    replicas.sort();
    replicas.dedup();
    let mut round = Round {
        adopt: newer_states(snap, &state),
        replicas: replicas.len(),
        ..Round::default()
    };
    // The fleet's numbers, for each guarded route, over its window or the time since it last
    // changed (whole seconds), grouped so that routes with the same range share the queries.
    let least = (2 * settings.interval.as_secs()).max(3);
    let mut ranges: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, route) in snap.routes.iter().enumerate() {
        let Some(g) = &route.guard else { continue };
        if g.dry_run || route.split.weights().count() < 2 {
            continue;
        }
        let since_change = now_ms.saturating_sub(route.runtime.changed_ms) / 1000;
        let range = g.window.as_secs().max(1).min(since_change);
        if range >= least {
            ranges.entry(range).or_default().push(i);
        }
    }
    for (range, routes) in ranges {
        let by = |q: &str| format!("sum by (route, pool) (increase({q}[{range}s]))");
        let requests = p
            .query(
                settings,
                &by(&format!("switchyard_requests_total{}", select(settings, ""))),
            )
            .await?;
        let errors = p
            .query(
                settings,
                &by(&format!(
                    "switchyard_requests_total{}",
                    select(settings, "class=~\"5xx|error\"")
                )),
            )
            .await?;
        let latency = routes.iter().any(|&i| {
            snap.routes[i]
                .guard
                .as_ref()
                .is_some_and(|g| g.max_p99.is_some() || g.max_p50.is_some())
        });
        let quantile = |q: f64| {
            format!(
                "histogram_quantile({q}, sum by (route, pool, le) (increase(switchyard_request_duration_seconds_bucket{}[{range}s])))",
                select(settings, "")
            )
        };
        let (p50, p99) = if latency {
            (
                p.query(settings, &quantile(0.5)).await?,
                p.query(settings, &quantile(0.99)).await?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let find = |list: &[Sample], route: &str, pool: &str| {
            list.iter()
                .find(|s| s.label("route") == route && s.label("pool") == pool)
                .map(|s| s.value)
        };
        for i in routes {
            let route = &snap.routes[i];
            let g = route.guard.as_ref().expect("guarded");
            let figures = |pool: usize| {
                let name = &*snap.pools[pool].name;
                let ms = |list: &[Sample]| {
                    find(list, &route.name, name)
                        .filter(|v| v.is_finite() && *v >= 0.0)
                        .map(Duration::from_secs_f64)
                };
                Figures {
                    requests: find(&requests, &route.name, name).unwrap_or(0.0).round() as u64,
                    errors: find(&errors, &route.name, name).unwrap_or(0.0).round() as u64,
                    p50: ms(&p50),
                    p99: ms(&p99),
                    ..Figures::default()
                }
            };
            let base = figures(g.baseline);
            for (pool, _) in route.split.weights() {
                if pool == g.baseline || route.runtime.tripped.contains(&pool) {
                    continue;
                }
                let f = figures(pool);
                if let Verdict::Fail(reason) = judge(g, &base, &f) {
                    round.trips.push((
                        route.name.to_string(),
                        snap.pools[pool].name.to_string(),
                        format!("fleet numbers ({} replicas, {range}s): {reason}", round.replicas),
                        f,
                    ));
                }
            }
        }
    }
    Ok(round)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The fleet task: queries every `interval` while the config has `[fleet]`, sends what to
/// adopt and what to trip to the control task, and keeps [`FleetStatus`] and the metrics. Ends
/// when the state is dropped.
pub async fn run(state: Weak<State>, triggers: mpsc::Sender<Trigger>) {
    let p = Prometheus {
        client: crate::notify::client(),
    };
    loop {
        let Some(st) = state.upgrade() else { return };
        let snap = st.snapshot.load_full();
        let Some(settings) = snap.fleet.clone() else {
            if st.fleet.load().prometheus.is_some() {
                st.fleet.store(Arc::new(FleetStatus::default()));
                st.metrics.fleet(None, None);
            }
            drop((st, snap));
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let result = round(&p, &settings, &snap, unix_ms()).await;
        let previous = st.fleet.load_full();
        let status = match result {
            Ok(r) => {
                if previous.up == Some(false) {
                    tracing::info!(prometheus = %settings.prometheus, "fleet: Prometheus answers again; judging the fleet's numbers too");
                }
                st.metrics.fleet(Some(&settings.prometheus), Some(r.replicas));
                for a in r.adopt {
                    let _ = triggers.send(Trigger::Adopt(a)).await;
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
                    replicas: r.replicas,
                }
            }
            Err(e) => {
                if previous.up != Some(false) {
                    tracing::warn!(prometheus = %settings.prometheus, "fleet: {e}; judging local numbers only until it answers");
                }
                st.metrics.fleet(Some(&settings.prometheus), None);
                st.metrics.remote_error("prometheus", e.kind);
                let e = e.message;
                FleetStatus {
                    prometheus: Some(settings.prometheus.clone()),
                    up: Some(false),
                    judging: format!("local numbers only: {e}"),
                    last_answer: previous.last_answer.clone(),
                    error: Some(e),
                    replicas: previous.replicas,
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
mod tests {
    use super::*;

    fn sample(name: &str, instance: &str, route: &str, extra: &[(&str, &str)], value: f64) -> Sample {
        let mut labels: BTreeMap<String, String> = [
            ("__name__", name),
            ("instance", instance),
            ("route", route),
            ("job", "sy"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in extra {
            labels.insert((*k).to_owned(), (*v).to_owned());
        }
        Sample { labels, value }
    }

    fn snapshot() -> Snapshot {
        let text = "[listen]\nhttp = \"127.0.0.1:0\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.canary]\nendpoints = [\"127.0.0.1:2\"]\n\
                    [[routes]]\nname = \"web\"\nsplit = { blue = 90, canary = 10 }\nguard = { baseline = \"blue\" }\n";
        crate::config::load_str(text, std::path::Path::new("t.toml"), None).unwrap()
    }

    #[test]
    fn the_latest_change_on_the_same_split_wins() {
        let snap = snapshot();
        let fp = fingerprint_label(&fingerprint(&snap, &snap.routes[0]));
        let state = vec![
            sample(
                "switchyard_route_changed_timestamp_seconds",
                "a:1",
                "web",
                &[("fingerprint", &fp)],
                1000.5,
            ),
            sample(
                "switchyard_pool_tripped",
                "a:1",
                "web",
                &[("pool", "canary")],
                1.0,
            ),
            sample(
                "switchyard_route_changed_timestamp_seconds",
                "b:1",
                "web",
                &[("fingerprint", &fp)],
                1001.25,
            ),
            sample(
                "switchyard_pool_tripped",
                "b:1",
                "web",
                &[("pool", "canary")],
                2.0,
            ),
            // Later, but another split: not ours to take.
            sample(
                "switchyard_route_changed_timestamp_seconds",
                "c:1",
                "web",
                &[("fingerprint", "0000beef")],
                2000.0,
            ),
            sample(
                "switchyard_pool_tripped",
                "c:1",
                "web",
                &[("pool", "canary")],
                0.0,
            ),
        ];
        let adopt = newer_states(&snap, &state);
        assert_eq!(
            adopt,
            [Adopt {
                route: "web".into(),
                fingerprint: fp.clone(),
                changed_ms: 1_001_250,
                tripped: vec![("canary".into(), true)],
                step: None,
                from: "b:1".into(),
            }]
        );
        // Once this replica has it, nothing more to take.
        let mut snap = snap;
        std::sync::Arc::make_mut(&mut snap.routes[0]).runtime.changed_ms = 1_001_250;
        assert!(newer_states(&snap, &state).is_empty());
        // A reset there (nothing tripped, later) is taken too.
        let state = vec![sample(
            "switchyard_route_changed_timestamp_seconds",
            "a:1",
            "web",
            &[("fingerprint", &fp)],
            1002.0,
        )];
        let adopt = newer_states(&snap, &state);
        assert_eq!(adopt.len(), 1);
        assert!(adopt[0].tripped.is_empty());
    }

    #[test]
    fn selectors_go_inside_the_braces() {
        let mut s = FleetSettings {
            prometheus: "http://p:9090".into(),
            selector: String::new(),
            interval: Duration::from_secs(5),
            query_timeout: Duration::from_secs(2),
            token_env: None,
        };
        assert_eq!(select(&s, ""), "");
        assert_eq!(select(&s, "class=\"5xx\""), "{class=\"5xx\"}");
        s.selector = "job=\"sy\"".into();
        assert_eq!(select(&s, ""), "{job=\"sy\"}");
        assert_eq!(select(&s, "class=\"5xx\""), "{class=\"5xx\", job=\"sy\"}");
    }

    #[test]
    fn a_token_variable_that_is_not_set_is_refused() {
        let mut f = FleetSettings {
            prometheus: "http://p:9090".into(),
            selector: String::new(),
            interval: Duration::from_secs(5),
            query_timeout: Duration::from_secs(2),
            token_env: None,
        };
        assert_eq!(check_env(None), Ok(()));
        assert_eq!(check_env(Some(&f)), Ok(()));
        f.token_env = Some("SWITCHYARD_TEST_NEVER_SET_7F3A".into());
        assert!(check_env(Some(&f))
            .unwrap_err()
            .contains("SWITCHYARD_TEST_NEVER_SET_7F3A is not set"));
        // PATH is set wherever tests run.
        f.token_env = Some("PATH".into());
        assert_eq!(check_env(Some(&f)), Ok(()));
    }

    #[test]
    fn prometheus_errors_are_said() {
        let v = serde_json::json!({"status": "error", "errorType": "bad_data", "error": "parse error"});
        assert_eq!(
            samples(&v).err().unwrap(),
            "Prometheus answered bad_data: parse error"
        );
        let v = serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"route": "web"}, "value": [1, "3.5"]},
            {"metric": {"route": "x"}, "value": [1, "NaN"]}
        ]}});
        let s = samples(&v).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].label("route"), s[0].value), ("web", 3.5));
    }
}
