//! `GET /api/events`: the audit trail ([`crate::audit`]), filtered by route, kind and time.

use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::Json;

use super::{Admin, ApiError};

#[derive(serde::Deserialize)]
pub(super) struct EventsQuery {
    route: Option<String>,
    /// Comma-separated kinds.
    kind: Option<String>,
    /// Unix ms, RFC 3339, or a duration back from now (`15m`).
    since: Option<String>,
    until: Option<String>,
    /// Only events numbered above this (what a poller has not seen yet).
    after: Option<u64>,
    /// The newest this many (default 200, at most the trail's memory).
    limit: Option<usize>,
}

/// A point in time as `since` and `until` take it: Unix milliseconds, RFC 3339, or a duration
/// back from now (`90s`, `15m`, `2h`).
pub fn parse_time(text: &str, now: std::time::SystemTime) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(crate::clock::unix_ms_of(t));
    }
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(crate::clock::unix_ms_of(
            now.checked_sub(d).unwrap_or(std::time::UNIX_EPOCH),
        ));
    }
    Err(format!(
        "{text:?} is not a time: give Unix milliseconds, an RFC 3339 time (2026-12-07T10:00:00Z) or a duration back from now (15m)"
    ))
}

/// The audit trail: the newest events that match, oldest first.
pub(super) async fn events(
    Extract(a): Extract<Admin>,
    axum::extract::Query(q): axum::extract::Query<EventsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let now = std::time::SystemTime::now();
    let time = |t: &Option<String>| {
        t.as_deref()
            .map(|t| parse_time(t, now))
            .transpose()
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))
    };
    let kinds: Vec<String> = q
        .kind
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(k) = kinds
        .iter()
        .find(|k| crate::notify::Event::from_name(k).is_none())
    {
        let known: Vec<&str> = crate::notify::Event::ALL.iter().map(|e| e.name()).collect();
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("no event kind {k:?}: the kinds are {}", known.join(", ")),
        ));
    }
    let filter = crate::audit::Filter {
        route: q.route.filter(|r| !r.is_empty()),
        kinds,
        since_ms: time(&q.since)?,
        until_ms: time(&q.until)?,
        after: q.after,
        limit: q.limit.unwrap_or(200).min(crate::audit::KEEP),
    };
    let (events, matched) = a.state.audit.query(&filter);
    Ok(Json(serde_json::json!({
        "events": events.iter().map(|e| &**e).collect::<Vec<_>>(),
        "matched": matched,
        "next_seq": a.state.audit.next_seq(),
        "file": a.state.audit.file_status(),
    })))
}
