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

use crate::reload::Trigger;
use crate::routing::{Route, Snapshot};
use crate::state::State;

/// What the handlers share.
#[derive(Clone)]
pub struct Admin {
    state: Arc<State>,
    /// `None` when there is no file to reload (the demo).
    reload: Option<mpsc::Sender<Trigger>>,
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
    /// The split requests get now.
    pub effective: Vec<PoolShare>,
    pub flags: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PoolShare {
    pub pool: String,
    pub weight: u64,
    pub share: f64,
    pub endpoints: Vec<String>,
}

/// The status of `route` in `snap`.
pub fn route_status(snap: &Snapshot, route: &Route) -> RouteStatus {
    let shares: Vec<PoolShare> = route
        .split
        .shares()
        .zip(route.split.weights())
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
        .collect();
    let effective = shares
        .iter()
        .map(|s| PoolShare {
            pool: s.pool.clone(),
            weight: s.weight,
            share: s.share,
            endpoints: s.endpoints.clone(),
        })
        .collect();
    RouteStatus {
        name: route.name.to_string(),
        host: route.host.clone(),
        path_prefix: route.path_prefix.clone(),
        configured: shares,
        effective,
        flags: route
            .flags
            .iter()
            .map(|&f| snap.flags[f].name.to_string())
            .collect(),
    }
}

impl Admin {
    pub fn new(state: Arc<State>, reload: Option<mpsc::Sender<Trigger>>, token: Option<String>) -> Admin {
        Admin {
            state,
            reload,
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
    Json(snap.routes.iter().map(|r| route_status(&snap, r)).collect())
}

async fn route(Extract(a): Extract<Admin>, Path(name): Path<String>) -> Result<Json<RouteStatus>, ApiError> {
    let snap = a.state.snapshot.load();
    let r = snap
        .route_by_name(&name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("there is no route named {name:?}")))?;
    Ok(Json(route_status(&snap, r)))
}

async fn config(Extract(a): Extract<Admin>) -> Json<crate::state::ConfigStatus> {
    Json((**a.state.config.load()).clone())
}

async fn reload(Extract(a): Extract<Admin>, headers: HeaderMap) -> Result<Response, ApiError> {
    a.authorize(&headers)?;
    let Some(tx) = &a.reload else {
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
    let _ = writeln!(
        s,
        "\n{:<16} {:<12} {:>7} {:>11} {:>10}",
        "ROUTE", "POOL", "WEIGHT", "CONFIGURED", "EFFECTIVE"
    );
    for r in routes.as_array().into_iter().flatten() {
        let name = text(&r["name"]);
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
    }
    s
}
