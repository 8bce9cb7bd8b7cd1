//! The admin API on `admin.listen`: health, readiness, Prometheus metrics ([`metrics`]), routes
//! with their configured and effective splits, the config's revision and last reload, and
//! reloads. JSON in and out; errors are `{"error": "..."}` with a fitting status. Mutating calls
//! need `Authorization: Bearer <token>` when a token is configured (and one must be configured
//! when the admin API listens off loopback).

pub mod metrics;

use std::sync::Arc;

use axum::extract::{Path, State as Extract};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::reload::{Action, CommandError, Trigger};
use crate::routing::{Route, Snapshot};
use crate::state::State;

/// What the handlers share.
#[derive(Clone)]
pub struct Admin {
    state: Arc<State>,
    control: Option<mpsc::Sender<Trigger>>,
    /// Whether there is a file to reload (the demo has none).
    has_file: bool,
    token: Option<Arc<str>>,
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
    pub tripped: bool,
    /// Why each tripped pool was taken out, when, and the numbers that did it.
    pub trips: Vec<crate::guard::overlay::Trip>,
    pub guard: Option<GuardStatus>,
    pub rollout: Option<RolloutStatus>,
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
pub fn route_status(state: &State, snap: &Snapshot, route: &Route) -> RouteStatus {
    let shares = |split: &crate::routing::Split| -> Vec<PoolShare> {
        split
            .shares()
            .zip(split.weights())
            .map(|((p, share), (_, weight))| PoolShare {
                pool: snap.pools[p].name.to_string(),
                weight,
                share,
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
    let guard = route.guard.as_ref().map(|g| GuardStatus {
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
    });
    let rollout = route.rollout.as_ref().map(|r| {
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
        trips: entry.map(|e| e.trips.clone()).unwrap_or_default(),
        guard,
        rollout,
    }
}

impl Admin {
    pub fn new(
        state: Arc<State>,
        control: Option<mpsc::Sender<Trigger>>,
        has_file: bool,
        token: Option<String>,
    ) -> Admin {
        Admin {
            state,
            control,
            has_file,
            token: token.map(Into::into),
        }
    }

    pub fn router(self) -> Router {
        Router::new()
            .route(
                "/healthz",
                get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
            )
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .route("/api/routes", get(routes))
            .route("/api/routes/{name}", get(route))
            .route("/api/config", get(config))
            .route("/api/reload", post(reload))
            .route(
                "/api/routes/{name}/rollback",
                post(|a, n, h| command(a, n, h, Action::Rollback)),
            )
            .route(
                "/api/routes/{name}/reset",
                post(|a, n, h| command(a, n, h, Action::Reset)),
            )
            .route(
                "/api/routes/{name}/promote",
                post(|a, n, h| command(a, n, h, Action::Promote)),
            )
            .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such admin endpoint".into()) })
            .with_state(self)
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else { return Ok(()) };
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
                "this call needs Authorization: Bearer <token>".into(),
            ))
        }
    }
}

async fn readyz(Extract(a): Extract<Admin>) -> Response {
    if a.state.is_ready() {
        Json(serde_json::json!({ "status": "ready", "revision": a.state.snapshot.load().revision }))
            .into_response()
    } else {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "listeners are not bound yet".into(),
        )
        .into_response()
    }
}

async fn metrics_text(Extract(a): Extract<Admin>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        a.state.metrics.render(),
    )
        .into_response()
}

async fn routes(Extract(a): Extract<Admin>) -> Json<Vec<RouteStatus>> {
    let snap = a.state.snapshot.load();
    Json(
        snap.routes
            .iter()
            .map(|r| route_status(&a.state, &snap, r))
            .collect(),
    )
}

async fn route(Extract(a): Extract<Admin>, Path(name): Path<String>) -> Result<Json<RouteStatus>, ApiError> {
    let snap = a.state.snapshot.load();
    let r = snap
        .route_by_name(&name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("there is no route named {name:?}")))?;
    Ok(Json(route_status(&a.state, &snap, r)))
}

async fn config(Extract(a): Extract<Admin>) -> Json<crate::state::ConfigStatus> {
    Json((**a.state.config.load()).clone())
}

async fn reload(Extract(a): Extract<Admin>, headers: HeaderMap) -> Result<Response, ApiError> {
    a.authorize(&headers)?;
    let (true, Some(tx)) = (a.has_file, &a.control) else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "this proxy was not started from a config file, so there is nothing to reload".into(),
        ));
    };
    let (reply, answer) = oneshot::channel();
    tx.send(Trigger::Api(reply))
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
    headers: HeaderMap,
    action: Action,
) -> Result<Response, ApiError> {
    a.authorize(&headers)?;
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
    })
    .await
    .map_err(|_| stopped())?;
    match answer.await.map_err(|_| stopped())? {
        Ok(message) => {
            let snap = a.state.snapshot.load();
            let route = snap
                .route_by_name(&name)
                .map(|r| route_status(&a.state, &snap, r));
            Ok(Json(serde_json::json!({ "result": message, "route": route })).into_response())
        }
        Err(CommandError::NotFound(m)) => Err(ApiError(StatusCode::NOT_FOUND, m)),
        Err(CommandError::Conflict(m)) => Err(ApiError(StatusCode::CONFLICT, m)),
    }
}

/// The `switchyard status` table, from `GET /api/config` and `GET /api/routes`.
pub fn render_status(config: &serde_json::Value, routes: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let _ = writeln!(
        s,
        "config    revision {}  loaded {}",
        text(&config["revision"]),
        text(&config["loaded_at"])
    );
    if let Some(last) = config.get("last_reload").filter(|v| !v.is_null()) {
        let _ = writeln!(
            s,
            "          last reload: {} at {}",
            text(&last["result"]),
            text(&last["at"])
        );
    }
    if let Some(err) = config.get("last_error").filter(|v| !v.is_null()) {
        let first = text(&err["error"]).lines().next().unwrap_or_default().to_owned();
        let _ = writeln!(s, "          last failed reload at {}: {first}", text(&err["at"]));
    }
    let state = &config["state"];
    if let Some(path) = state["path"].as_str() {
        let _ = writeln!(s, "state     {path}");
    }
    if let Some(err) = state.get("load_error").filter(|v| !v.is_null()) {
        let held: Vec<String> = err["held"].as_array().into_iter().flatten().map(&text).collect();
        let _ = writeln!(
            s,
            "          UNREADABLE at start ({}): {}; held at their baselines until reset: {}",
            text(&err["error"]),
            err["kept_aside"]
                .as_str()
                .map_or("left in place, not written".to_owned(), |a| format!(
                    "kept as {a}"
                )),
            if held.is_empty() {
                "none".to_owned()
            } else {
                held.join(", ")
            }
        );
    }
    if let Some(err) = state.get("save_error").filter(|v| !v.is_null()) {
        let _ = writeln!(
            s,
            "          NOT SAVED since {}: {} (trips and rollout steps will not survive a restart)",
            text(&err["at"]),
            text(&err["error"])
        );
    }
    let _ = writeln!(
        s,
        "\n{:<16} {:<12} {:>7} {:>11} {:>10}",
        "ROUTE", "POOL", "WEIGHT", "CONFIGURED", "EFFECTIVE"
    );
    for r in routes.as_array().into_iter().flatten() {
        let name = text(&r["name"]);
        if r["tripped"].as_bool() == Some(true) {
            for t in r["trips"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    s,
                    "{name}: TRIPPED {} at {}: {}",
                    text(&t["pool"]),
                    text(&t["at"]),
                    text(&t["reason"])
                );
            }
        }
        if let Some(ro) = r.get("rollout").filter(|v| !v.is_null()) {
            let _ = writeln!(
                s,
                "{name}: rollout of {} at step {} of {} ({}%)",
                text(&ro["pool"]),
                ro["step"].as_u64().unwrap_or(0) + 1,
                ro["steps"].as_array().map_or(0, Vec::len),
                ro["percent"].as_u64().unwrap_or(0)
            );
        }
        let effective = r["effective"].as_array().cloned().unwrap_or_default();
        for (i, p) in r["configured"].as_array().into_iter().flatten().enumerate() {
            let eff = effective.get(i).and_then(|e| e["share"].as_f64()).unwrap_or(0.0);
            let _ = writeln!(
                s,
                "{:<16} {:<12} {:>7} {:>10.1}% {:>9.1}%",
                if i == 0 { name.as_str() } else { "" },
                text(&p["pool"]),
                p["weight"].as_u64().unwrap_or(0),
                p["share"].as_f64().unwrap_or(0.0) * 100.0,
                eff * 100.0
            );
        }
        let pools = r["guard"]["pools"].as_array().cloned().unwrap_or_default();
        for p in pools {
            let f = &p["figures"];
            let verdict = if p["baseline"].as_bool() == Some(true) {
                "baseline".to_owned()
            } else {
                text(&p["verdict"]["verdict"])
            };
            let _ = writeln!(
                s,
                "{:<16}   guard {:<10} {:>6} req {:>5} err  p99 {}  {verdict}",
                "",
                text(&p["pool"]),
                f["requests"].as_u64().unwrap_or(0),
                f["errors"].as_u64().unwrap_or(0),
                f["p99"].as_f64().map_or("-".to_owned(), |v| format!("{v:.0}ms")),
            );
        }
    }
    s
}
