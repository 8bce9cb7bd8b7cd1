//! The admin API on `admin.listen`: health, readiness, Prometheus metrics ([`metrics`]), routes
//! with their configured and effective splits, the config's revision and last reload, and
//! reloads. JSON in and out; errors are `{"error": "..."}` with a fitting status. Mutating calls
//! need `Authorization: Bearer <token>` when a token is configured (and one must be configured
//! when the admin API listens off loopback).

pub mod events;
pub mod history;
pub mod sessions;

use std::sync::Arc;

use axum::extract::{Path, State as Extract};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::control::{Action, Actor, CommandError, Trigger};
use crate::routing::Route;
use crate::runtime::state::State;
use crate::runtime::Snapshot;

/// What the handlers share.
#[derive(Clone)]
pub struct Admin {
    state: Arc<State>,
    control: Option<mpsc::Sender<Trigger>>,
    /// Whether there is a file to reload (the demo has none).
    has_file: bool,
    /// The token mutating calls need, and the environment variable it came from.
    token: Option<(Arc<str>, Arc<str>)>,
    /// The last 15 minutes of each route's pools, for the dashboard.
    history: Arc<history::History>,
}

/// An error answer: a status and `{"error": message}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// One route as the API shows it.
#[derive(Debug, Serialize)]
pub struct RouteStatus {
    pub name: String,
    pub host: Option<String>,
    pub path_prefix: String,
    /// The split as configured: weight and share per pool, in written order.
    pub configured: Vec<PoolShare>,
    /// The split requests get now (rollout step applied, tripped pools at 0).
    pub effective: Vec<PoolShare>,
    pub flags: Vec<String>,
    /// `[[routes.rules]]`: `(name, pool)`, in the order they are tried.
    pub rules: Vec<(String, String)>,
    /// `[routes.mirror]`: the shadow pool and how its answers compare.
    pub mirror: Option<MirrorStatus>,
    pub tripped: bool,
    /// `[fleet]`: held at its baseline since start until the fleet answers.
    pub held: bool,
    /// Why each tripped pool was taken out, when, and the numbers that did it.
    pub trips: Vec<crate::runtime::overlay::Trip>,
    pub guard: Option<GuardStatus>,
    pub rollout: Option<RolloutStatus>,
    /// `[routes.session]`: requests by pin and by split, pins ended, drain per pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<sessions::SessionStatus>,
}

#[derive(Debug, Serialize)]
pub struct MirrorStatus {
    pub pool: String,
    pub percent: u32,
    pub compare: bool,
    pub methods: Vec<String>,
    pub ignore: Vec<String>,
    pub max_body: usize,
    pub max_in_flight: usize,
    pub in_flight: usize,
    /// Mirrored requests by result since start (kept across reloads).
    pub counts: Vec<(&'static str, u64)>,
    /// Mismatches over compared requests (`None` before the first comparison).
    pub mismatch_rate: Option<f64>,
    /// Counts, and the rate, since the mirror's comparison settings last changed (a fixed
    /// `ignore` shows here at once).
    pub current_counts: Vec<(&'static str, u64)>,
    pub current_mismatch_rate: Option<f64>,
    /// The last mismatches, oldest first.
    pub recent: Vec<crate::mirror::Mismatch>,
}

#[derive(Debug, Serialize)]
pub struct GuardStatus {
    pub baseline: String,
    pub dry_run: bool,
    pub max_error_rate: f64,
    pub max_error_ratio: Option<f64>,
    pub max_p99_ms: Option<u128>,
    pub max_p50_ms: Option<u128>,
    pub min_requests: u64,
    pub window_s: f64,
    /// Figures over the window and the verdict, per pool.
    pub pools: Vec<crate::guard::PoolReport>,
    /// `[[routes.guard.checks]]` and each pool's last measurements.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::guard::checks::CheckView>,
    /// Why the rollout waits on a check, while it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_waits: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RolloutStatus {
    pub pool: String,
    pub steps: Vec<u32>,
    pub step: usize,
    pub percent: u32,
    pub since: Option<String>,
    pub every_s: f64,
}

#[derive(Debug, Serialize)]
pub struct PoolShare {
    pub pool: String,
    pub weight: u64,
    pub share: f64,
    pub endpoints: Vec<String>,
}

/// The status of `route` in `snap`, with the guard's and the overlay's view from `state`.
/// `details`: show recent mirror mismatches whole (the reader gave the admin token); else
/// their credentials and query strings are hidden.
pub fn route_status(state: &State, snap: &Snapshot, route: &Route, details: bool) -> RouteStatus {
    let shares = |split: &crate::routing::Split| -> Vec<PoolShare> {
        split
            .shares()
            .zip(split.weights())
            .map(|((p, share), (_, weight))| PoolShare {
                pool: snap.pools[p].name.to_string(),
                weight,
                share: crate::routing::diff::round_share(share),
                endpoints: snap.pools[p]
                    .endpoints
                    .iter()
                    .map(|e| e.address.to_string())
                    .collect(),
            })
            .collect()
    };
    let overlay = state.overlay.load();
    let entry = overlay.routes.get(&*route.name);
    let report = state.guard.load();
    let guard = snap.guard(route).map(|g| GuardStatus {
        baseline: snap.pools[g.baseline].name.to_string(),
        dry_run: g.dry_run,
        max_error_rate: g.max_error_rate,
        max_error_ratio: g.max_error_ratio,
        max_p99_ms: g.max_p99.map(|d| d.as_millis()),
        max_p50_ms: g.max_p50.map(|d| d.as_millis()),
        min_requests: g.min_requests,
        window_s: g.window.as_secs_f64(),
        pools: report
            .routes
            .get(&*route.name)
            .map(|r| r.pools.clone())
            .unwrap_or_default(),
        checks: crate::guard::checks::views(
            &g.checks,
            &state.checks.load(),
            &route.name,
            &snap.pools[g.baseline].name,
        ),
        rollout_waits: report
            .routes
            .get(&*route.name)
            .and_then(|r| r.rollout_waits.clone()),
    });
    let rollout = snap.rollout(route).map(|r| {
        let step = route.runtime.rollout_step.unwrap_or(0);
        RolloutStatus {
            pool: snap.pools[r.pool].name.to_string(),
            steps: r.steps.clone(),
            step,
            percent: r.steps[step],
            since: entry.and_then(|e| e.rollout.as_ref()).map(|p| p.since.clone()),
            every_s: r.every.as_secs_f64(),
        }
    });
    RouteStatus {
        mirror: snap.mirror(route).map(|m| MirrorStatus {
            pool: snap.pools[m.pool].name.to_string(),
            percent: m.percent,
            compare: m.compare,
            methods: m.methods.iter().map(ToString::to_string).collect(),
            ignore: m.ignore_text.clone(),
            max_body: m.max_body,
            max_in_flight: m.max_in_flight,
            in_flight: m.stats.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            counts: m.stats.counts(),
            mismatch_rate: m.stats.mismatch_rate(),
            current_counts: m.current.counts(),
            current_mismatch_rate: m.current.mismatch_rate(),
            recent: m
                .stats
                .recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|m| if details { m.clone() } else { m.redacted() })
                .collect(),
        }),
        rules: route
            .rules
            .iter()
            .map(|r| (r.name.clone(), snap.pools[r.pool].name.to_string()))
            .collect(),
        name: route.name.to_string(),
        host: route.host.clone(),
        path_prefix: route.path_prefix.clone(),
        configured: shares(&route.split),
        effective: shares(&route.effective),
        flags: route
            .flags
            .iter()
            .map(|&f| snap.flags[f].name.to_string())
            .collect(),
        tripped: !route.runtime.tripped.is_empty(),
        held: route.runtime.held,
        trips: entry.map(|e| e.trips.clone()).unwrap_or_default(),
        guard,
        rollout,
        session: sessions::status(snap, route, crate::clock::unix_ms()),
    }
}

impl Admin {
    pub fn new(
        state: Arc<State>,
        control: Option<mpsc::Sender<Trigger>>,
        has_file: bool,
        token: Option<(String, String)>,
    ) -> Admin {
        let history = Arc::new(history::History::default());
        // The baseline, before the listeners serve anything: every request after it counts.
        history.sample(&state, std::time::SystemTime::now());
        tokio::spawn(history::run(Arc::downgrade(&state), history.clone()));
        Admin {
            state,
            control,
            has_file,
            token: token.map(|(var, t)| (var.into(), t.into())),
            history,
        }
    }

    /// The API's routes, behind `gate`.
    pub fn router(self, gate_for: Gate) -> Router {
        Router::new()
            .route("/", get(dashboard))
            .route("/dashboard.js", get(dashboard_js))
            .route(
                "/healthz",
                get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
            )
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .route("/api/routes", get(routes))
            .route("/api/routes/{name}", get(route))
            .route("/api/config", get(config))
            .route("/api/state", get(live_state))
            .route("/api/pools", get(pools))
            .route("/api/flags", get(flags))
            .route("/api/experiments", get(experiments))
            .route("/api/fleet", get(fleet))
            .route("/api/history", get(history_view))
            .route("/api/events", get(events::events))
            .route("/api/reload", post(reload))
            .route(
                "/api/routes/{name}/rollback",
                post(|a, n, c, h| command(a, n, c, h, Action::Rollback)),
            )
            .route(
                "/api/routes/{name}/reset",
                post(|a, n, c, h| command(a, n, c, h, Action::Reset)),
            )
            .route(
                "/api/routes/{name}/promote",
                post(|a, n, c, h| command(a, n, c, h, Action::Promote)),
            )
            .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such admin endpoint".into()) })
            .with_state(self)
            .layer(axum::middleware::from_fn_with_state(gate_for, gate))
    }

    /// Whether a read may see details that can carry users' credentials: only with a token
    /// configured, and given.
    fn details(&self, headers: &HeaderMap) -> bool {
        self.token.is_some() && self.authorize(headers).is_ok()
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some((var, token)) = &self.token else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compare without an early exit, so timing does not tell how much of a guess was right.
        let ok = given.is_some_and(|g| {
            g.len() == token.len()
                && g.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if ok {
            Ok(())
        } else {
            Err(ApiError(
                StatusCode::UNAUTHORIZED,
                format!(
                    "this call needs Authorization: Bearer <token>, the token in the proxy's environment variable {var} (admin.token_env); switchyard's commands send ${var}"
                ),
            ))
        }
    }
}

async fn readyz(Extract(a): Extract<Admin>) -> Response {
    match a.state.readiness() {
        Ok(()) => {
            Json(serde_json::json!({ "status": "ready", "revision": a.state.snapshot.load().revision }))
                .into_response()
        }
        Err(why) => ApiError(StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn metrics_text(Extract(a): Extract<Admin>) -> Response {
    // Ten thousand routes are some hundred thousand series: written on a blocking thread, so a
    // scrape does not stall the requests of the worker it came in on.
    let state = a.state.clone();
    let text = tokio::task::spawn_blocking(move || {
        state.metrics.experiments(&state.snapshot.load());
        state.metrics.render()
    })
    .await
    .unwrap_or_default();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct RouteQuery {
    /// Only routes whose name, host or path prefix contains this (case-insensitive).
    q: Option<String>,
    /// At most this many, tripped routes first, then in written order.
    limit: Option<usize>,
}

/// Every route, or with `q` and `limit` the ones a page shows (the dashboard of a config with
/// 10,000 routes asks for 50). `x-switchyard-total` counts the routes that matched.
async fn routes(
    Extract(a): Extract<Admin>,
    axum::extract::Query(q): axum::extract::Query<RouteQuery>,
    headers: HeaderMap,
) -> Response {
    let details = a.details(&headers);
    let snap = a.state.snapshot.load();
    let needle = q.q.as_deref().map(str::to_lowercase).filter(|n| !n.is_empty());
    let mut matched: Vec<&Arc<Route>> = snap
        .routes
        .iter()
        .filter(|r| {
            needle.as_deref().is_none_or(|n| {
                r.name.to_lowercase().contains(n)
                    || r.host.as_deref().is_some_and(|h| h.to_lowercase().contains(n))
                    || r.path_prefix.to_lowercase().contains(n)
            })
        })
        .collect();
    let total = matched.len();
    if let Some(limit) = q.limit {
        // A stable sort: tripped first, the written order kept within each.
        matched.sort_by_key(|r| r.runtime.tripped.is_empty());
        matched.truncate(limit);
    }
    let list: Vec<RouteStatus> = matched
        .into_iter()
        .map(|r| route_status(&a.state, &snap, r, details))
        .collect();
    ([("x-switchyard-total", total.to_string())], Json(list)).into_response()
}

async fn route(
    Extract(a): Extract<Admin>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<RouteStatus>, ApiError> {
    let snap = a.state.snapshot.load();
    let r = snap
        .route_by_name(&name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("there is no route named {name:?}")))?;
    Ok(Json(route_status(&a.state, &snap, r, a.details(&headers))))
}

/// The trips and rollout steps applied to the config (what the state file holds), with the
/// revision they apply to: what `switchyard explain` and `diff` need to answer for the live
/// proxy and not the file alone.
async fn live_state(Extract(a): Extract<Admin>) -> Json<serde_json::Value> {
    let overlay = a.state.overlay.load_full();
    Json(serde_json::json!({
        "revision": a.state.snapshot.load().revision,
        "state": &*overlay,
    }))
}

/// Each pool's endpoints and whether they take requests now.
async fn pools(Extract(a): Extract<Admin>) -> Json<Vec<PoolStatus>> {
    let snap = a.state.snapshot.load();
    let now = tokio::time::Instant::now();
    Json(
        snap.pools
            .iter()
            .map(|p| PoolStatus {
                name: p.name.to_string(),
                health_checked: p.health.is_some(),
                endpoints: p.endpoints.iter().map(|e| e.status(now)).collect(),
            })
            .collect(),
    )
}

/// The dashboard: one page, its script and styles inside, that polls the API below.
async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // Nothing but itself: no inline or external script, no external style, font or
            // frame (styles inline: they cannot run).
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
            ),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
}

async fn dashboard_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("dashboard.js"),
    )
        .into_response()
}

/// Who may ask the admin API at all, before any handler: DNS rebinding and cross-site requests
/// from a page the operator visits are refused (the API without a token trusts loopback, and a
/// browser is on loopback too).
#[derive(Clone)]
pub struct Gate {
    /// Host names (without port) requests may carry; empty: any.
    hosts: Arc<[String]>,
}

impl Gate {
    /// For an admin API on `listen`: on loopback, only loopback names (`localhost`,
    /// `127.0.0.1`, `::1`) and `extra`; elsewhere, `extra` if any is given, else any host (a
    /// token is required off loopback).
    pub fn new(listen: std::net::SocketAddr, extra: &[String]) -> Gate {
        let mut hosts: Vec<String> = extra.iter().map(|h| h.to_ascii_lowercase()).collect();
        if listen.ip().is_loopback() {
            hosts.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
            if listen.ip().is_ipv4() {
                hosts.push(listen.ip().to_string());
            }
        }
        Gate { hosts: hosts.into() }
    }

    fn check(&self, req: &axum::extract::Request) -> Result<(), ApiError> {
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
        if let Some(host) = host {
            let name = crate::routing::normalize_host(host);
            if !self.hosts.is_empty() && !self.hosts.iter().any(|h| *h == *name) {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    format!("the admin API does not answer for host `{name}` (a DNS rebinding page would use such a name): use one of {}, or add it to [admin] hosts", self.hosts.join(", ")),
                ));
            }
        }
        let safe = matches!(
            *req.method(),
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        );
        if safe {
            return Ok(());
        }
        let cross_site = || {
            ApiError(
                StatusCode::FORBIDDEN,
                "a cross-site request may not change the proxy: use switchyard's commands, curl, or the dashboard itself".into(),
            )
        };
        let fetch_site = req.headers().get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if fetch_site.is_some_and(|s| !matches!(s, "same-origin" | "none")) {
            return Err(cross_site());
        }
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            // The origin's authority must be the Host the request was sent to.
            let authority = origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .map(|(_, a)| a.trim_end_matches('/'));
            if authority.is_none_or(|a| host.is_none_or(|h| !a.eq_ignore_ascii_case(h))) {
                return Err(cross_site());
            }
        }
        Ok(())
    }
}

async fn gate(
    axum::extract::State(gate): axum::extract::State<Gate>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match gate.check(&req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[derive(serde::Deserialize)]
struct Since {
    /// Unix milliseconds; only newer samples are sent.
    since: Option<u64>,
    /// Comma-separated route names: only their series (what a page shows).
    routes: Option<String>,
}

/// Each route's pools over the last 15 minutes, one sample per 2 s with requests.
async fn history_view(
    Extract(a): Extract<Admin>,
    axum::extract::Query(q): axum::extract::Query<Since>,
) -> Json<history::HistoryView> {
    let only: Option<std::collections::HashSet<&str>> = q.routes.as_deref().map(|r| r.split(',').collect());
    Json(a.history.view(&a.state, q.since.unwrap_or(0), only.as_ref()))
}

/// `[fleet]`: whether its Prometheus answers, how many replicas it shows, which numbers the
/// guard judges.
async fn fleet(Extract(a): Extract<Admin>) -> Json<crate::fleet::FleetStatus> {
    Json((**a.state.fleet.load()).clone())
}

#[derive(serde::Deserialize)]
struct ExperimentsQuery {
    /// Include each arm's sketches (base64), for merging replicas.
    #[serde(default)]
    sketches: bool,
}

/// Every experiment's results.
async fn experiments(
    Extract(a): Extract<Admin>,
    axum::extract::Query(q): axum::extract::Query<ExperimentsQuery>,
) -> Json<Vec<crate::experiments::Report>> {
    let snap = a.state.snapshot.load();
    Json(
        snap.experiments
            .iter()
            .map(|e| e.report(&subject(&snap, e), q.sketches))
            .collect(),
    )
}

/// `flag NAME` or `route NAME`.
pub fn subject(snap: &Snapshot, e: &crate::experiments::ExperimentConfig) -> String {
    match e.subject {
        crate::experiments::Subject::Flag(f) => format!("flag {}", snap.flags[f].name),
        crate::experiments::Subject::Route(r) => format!("route {}", snap.routes[r].name),
    }
}

/// How often each flag decided each of its values since the proxy started.
async fn flags(Extract(a): Extract<Admin>) -> Json<Vec<FlagStatus>> {
    let snap = a.state.snapshot.load();
    Json(
        snap.flags
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let counts = snap
                    .metrics
                    .as_deref()
                    .map(|h| h.flag_counts(i))
                    .unwrap_or_default();
                let names = ["off", "on"]
                    .into_iter()
                    .chain(f.variant_names.iter().map(String::as_str));
                FlagStatus {
                    name: f.name.to_string(),
                    percent: f.percent,
                    summary: f.summary(),
                    from_file: f.from_file,
                    variants: f
                        .def
                        .variants
                        .iter()
                        .map(|v| (v.name.clone(), v.weight.max(0) as u32))
                        .collect(),
                    decisions: names
                        .zip(counts.into_iter().chain(std::iter::repeat(0)))
                        .map(|(v, n)| (v.to_string(), n))
                        .collect(),
                }
            })
            .collect(),
    )
}

#[derive(Debug, Serialize)]
pub struct FlagStatus {
    pub name: String,
    /// The shorthand's percentage; `None` for a flag written with strategies or from a file.
    pub percent: Option<u32>,
    /// How it decides: its strategies, or `25%`.
    pub summary: String,
    /// Loaded from `flags_from`.
    pub from_file: bool,
    /// `(name, weight)` of the flag's own variants, empty for an on/off flag.
    pub variants: Vec<(String, u32)>,
    /// `(value, count)`: off, on, then each variant.
    pub decisions: Vec<(String, u64)>,
}

#[derive(Debug, Serialize)]
pub struct PoolStatus {
    pub name: String,
    /// Whether the pool has active health checks.
    pub health_checked: bool,
    pub endpoints: Vec<crate::upstream::EndpointStatus>,
}

async fn config(Extract(a): Extract<Admin>) -> Json<crate::runtime::state::ConfigStatus> {
    Json((**a.state.config.load()).clone())
}

/// The caller's address, when the listener records it.
type Caller = Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>;

impl Admin {
    /// Who makes a mutating call, for the audit trail: its address, the token's name (the
    /// variable it came from: the call passed [`Admin::authorize`]) and its user agent.
    fn actor(&self, caller: Caller, headers: &HeaderMap) -> Actor {
        Actor {
            via: "api".into(),
            addr: caller.map(|axum::Extension(axum::extract::ConnectInfo(a))| a.to_string()),
            token: self.token.as_ref().map(|(var, _)| var.to_string()),
            agent: headers
                .get(header::USER_AGENT)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).chars().take(200).collect()),
        }
    }
}

async fn reload(
    Extract(a): Extract<Admin>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    a.authorize(&headers)?;
    let (true, Some(tx)) = (a.has_file, &a.control) else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "this proxy was not started from a config file, so there is nothing to reload".into(),
        ));
    };
    let (reply, answer) = oneshot::channel();
    let by = a.actor(caller, &headers);
    tx.send(Trigger::Api { reply, by })
        .await
        .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "the reloader has stopped".into()))?;
    let report = answer
        .await
        .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "the reloader has stopped".into()))?;
    let status = if report.result == "error" {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((status, Json(report)).into_response())
}

async fn command(
    Extract(a): Extract<Admin>,
    Path(name): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    action: Action,
) -> Result<Response, ApiError> {
    a.authorize(&headers)?;
    let by = a.actor(caller, &headers);
    let stopped = || {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the control task has stopped".into(),
        )
    };
    let tx = a.control.as_ref().ok_or_else(stopped)?;
    let (reply, answer) = oneshot::channel();
    tx.send(Trigger::Command {
        route: name.clone(),
        action,
        reply,
        by,
    })
    .await
    .map_err(|_| stopped())?;
    match answer.await.map_err(|_| stopped())? {
        Ok(message) => {
            let snap = a.state.snapshot.load();
            let route = snap
                .route_by_name(&name)
                .map(|r| route_status(&a.state, &snap, r, a.token.is_some()));
            // The command was answered after its save was tried: whether it is on disk.
            let config = a.state.config.load();
            let (persisted, persist_error) = match (&config.state.path, &config.state.save_error) {
                (None, _) => (serde_json::Value::Null, None),
                (Some(_), None) => (true.into(), None),
                (Some(_), Some(e)) => (false.into(), Some(e.error.clone())),
            };
            Ok(Json(serde_json::json!({
                "result": message,
                "persisted": persisted,
                "persist_error": persist_error,
                "route": route,
            }))
            .into_response())
        }
        Err(CommandError::NotFound(m)) => Err(ApiError(StatusCode::NOT_FOUND, m)),
        Err(CommandError::Conflict(m)) => Err(ApiError(StatusCode::CONFLICT, m)),
    }
}
