//! Parallel runs: a route's `[routes.mirror]` copies a sticky share of its users' requests to a
//! shadow pool, and compares the shadow's answers with the primary's.
//!
//! The copy never touches the client's request: the request body is teed as it streams to the
//! primary (up to `max_body`; a larger body is not mirrored), the primary's answer is teed as
//! it streams to the client (up to `max_response`), and the shadow's request goes out from a
//! task of its own once the body is whole, with `x-switchyard-mirror: 1`. The shadow's answer
//! never reaches the client; a shadow that hangs, fails or is down costs the client nothing.
//! At most `max_in_flight` mirrored requests per route are under way; past that, requests are
//! not mirrored (counted as `dropped`).

pub mod compare;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, Method, StatusCode};
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::routing::bucket;
use crate::upstream::client::{self, Fields, Limits, Outgoing};
use crate::upstream::Pool;
use compare::{Answer, Ignore, Kind};

/// The counted results of mirrored requests, in the order `switchyard_mirror_total` and the
/// API list them.
pub const RESULTS: [&str; 9] = [
    "match",
    "status",
    "header",
    "body",
    "dropped",
    "too_large",
    "shadow_error",
    "incomplete",
    "sent",
];
const MATCH: usize = 0;
const DROPPED: usize = 4;
const TOO_LARGE: usize = 5;
const SHADOW_ERROR: usize = 6;
const INCOMPLETE: usize = 7;
const SENT: usize = 8;

/// How many recent mismatches a route keeps.
pub const RECENT: usize = 20;
/// The seed of the mirror's own bucket (independent of the split's, so the mirrored share is
/// spread over every pool).
const SEED: u32 = 0x6d69_7272;

/// The methods mirrored by default: the safe ones, so that a shadow never writes.
pub const SAFE_METHODS: [Method; 3] = [Method::GET, Method::HEAD, Method::OPTIONS];

/// A compiled `[routes.mirror]`.
#[derive(Debug)]
pub struct MirrorConfig {
    /// The shadow pool (index into the snapshot's pools).
    pub pool: usize,
    /// Share of users mirrored, 0..=100.
    pub percent: u32,
    pub max_body: usize,
    pub max_response: usize,
    pub compare: bool,
    pub ignore: Ignore,
    /// As written, for the API.
    pub ignore_text: Vec<String>,
    pub methods: Vec<Method>,
    pub max_in_flight: usize,
    /// Counts and recent mismatches, kept across reloads for the same route.
    pub stats: Arc<Stats>,
    /// Counts since the comparison's settings (pool, compare, ignore, methods) last changed: a
    /// reload that fixes an `ignore` shows at once here, while `stats` keeps the history.
    pub current: Arc<Counts>,
}

/// Results counted by kind, as [`RESULTS`] names them.
#[derive(Debug, Default)]
pub struct Counts(pub [AtomicU64; RESULTS.len()]);

impl Counts {
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        RESULTS
            .iter()
            .zip(&self.0)
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Mismatches over compared requests.
    pub fn mismatch_rate(&self) -> Option<f64> {
        let c = |i: usize| self.0[i].load(Ordering::Relaxed);
        let compared = c(MATCH) + c(1) + c(2) + c(3);
        (compared > 0).then(|| (c(1) + c(2) + c(3)) as f64 / compared as f64)
    }
}

/// A route's mirror counts.
#[derive(Debug, Default)]
pub struct Stats {
    pub in_flight: AtomicUsize,
    pub counts: [AtomicU64; RESULTS.len()],
    pub recent: Mutex<VecDeque<Mismatch>>,
}

/// One mismatch, as `GET /api/routes/{name}` and `status` show it.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    /// When it was found, RFC 3339.
    pub at: String,
    pub kind: Kind,
    pub request_id: Option<String>,
    pub method: String,
    pub path: String,
    pub diff: String,
}

/// Header names whose values are credentials, and words that mark a JSON field or header as
/// one: their values are not shown without the admin token.
const SECRET_HEADERS: [&str; 5] = [
    "cookie",
    "set-cookie",
    "authorization",
    "proxy-authorization",
    "www-authenticate",
];
const SECRET_WORDS: [&str; 8] = [
    "token",
    "secret",
    "session",
    "passw",
    "auth",
    "key",
    "csrf",
    "credential",
];

fn secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_HEADERS.contains(&lower.as_str()) || SECRET_WORDS.iter().any(|w| lower.contains(w))
}

impl Mismatch {
    /// As shown to whoever may read the admin API without its token: the query string gone
    /// (`?reset_token=...`), and the values of credential headers (cookies, authorization)
    /// and of JSON fields named like one (`$.session`, `$.api_key`) hidden.
    pub fn redacted(&self) -> Mismatch {
        let path = match self.path.split_once('?') {
            Some((p, _)) => format!("{p}?(query hidden)"),
            None => self.path.clone(),
        };
        let diff = match self.diff.split_once(": ") {
            Some((name, _)) if matches!(self.kind, Kind::Header | Kind::Body) && secret_name(name) => {
                format!("{name}: (values hidden)")
            }
            _ => self.diff.clone(),
        };
        Mismatch {
            path,
            diff,
            ..self.clone()
        }
    }
}

impl MirrorConfig {
    /// Whether a request with this method, from this user, is mirrored.
    pub fn wants(&self, method: &Method, salt: &str, key: &str) -> bool {
        self.percent > 0
            && self.methods.contains(method)
            && (self.percent >= 100
                || (u64::from(bucket::hash(salt, key, SEED)) * 100) >> 32 < u64::from(self.percent))
    }

    /// A slot among the route's mirrored requests in flight; `None` (counted as dropped) when
    /// all are taken.
    pub fn slot(&self) -> Option<Slot> {
        if self.stats.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.stats.counts[DROPPED].fetch_add(1, Ordering::Relaxed);
            self.current.0[DROPPED].fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(self.stats.clone()))
    }
}

/// A mirrored request in flight; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot(Arc<Stats>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Stats {
    /// Counts by result name.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        RESULTS
            .iter()
            .zip(&self.counts)
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Mismatches over compared requests, since start.
    pub fn mismatch_rate(&self) -> Option<f64> {
        let c = |i: usize| self.counts[i].load(Ordering::Relaxed);
        let compared = c(MATCH) + c(1) + c(2) + c(3);
        (compared > 0).then(|| (c(1) + c(2) + c(3)) as f64 / compared as f64)
    }
}

/// Copies a body's bytes as they pass, up to a limit; sends them when the body ends, or
/// `None` if it was over the limit. Dropped before the end: the receiver hears nothing.
#[derive(Debug)]
pub struct Tee {
    buf: BytesMut,
    limit: usize,
    seen: u64,
    expected: Option<u64>,
    over: bool,
    tx: Option<oneshot::Sender<Option<Bytes>>>,
}

impl Tee {
    /// A tee for a body of `expected` length (if declared), and the receiver of its copy.
    pub fn new(limit: usize, expected: Option<u64>) -> (Tee, oneshot::Receiver<Option<Bytes>>) {
        let (tx, rx) = oneshot::channel();
        let over = expected.is_some_and(|n| n > limit as u64);
        let tee = Tee {
            buf: BytesMut::new(),
            limit,
            seen: 0,
            expected,
            over,
            tx: Some(tx),
        };
        (tee, rx)
    }

    pub fn push(&mut self, data: &[u8]) {
        self.seen += data.len() as u64;
        if !self.over {
            if self.buf.len() + data.len() > self.limit {
                self.over = true;
                self.buf = BytesMut::new();
            } else {
                self.buf.extend_from_slice(data);
            }
        }
        if self.expected == Some(self.seen) {
            self.end();
        }
    }

    /// The body ended: the copy goes to the receiver.
    pub fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((!self.over).then(|| std::mem::take(&mut self.buf).freeze()));
        }
    }
}

/// Copies the primary's answer as it streams to the client.
#[derive(Debug)]
pub struct Tap {
    status: StatusCode,
    headers: HeaderMap,
    buf: BytesMut,
    limit: usize,
    truncated: bool,
    tx: Option<oneshot::Sender<Answer>>,
}

impl Tap {
    pub fn new(status: StatusCode, headers: HeaderMap, limit: usize, tx: oneshot::Sender<Answer>) -> Tap {
        Tap {
            status,
            headers,
            buf: BytesMut::new(),
            limit,
            truncated: false,
            tx: Some(tx),
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.truncated {
            return;
        }
        let room = self.limit - self.buf.len();
        if data.len() > room {
            self.buf.extend_from_slice(&data[..room]);
            self.truncated = true;
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    /// The answer is whole.
    pub fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Answer {
                status: self.status,
                headers: std::mem::take(&mut self.headers),
                body: std::mem::take(&mut self.buf).freeze(),
                truncated: self.truncated,
            });
        }
    }
}

/// Where the mirrored request's body comes from.
pub enum BodySource {
    /// Known already (no body, or an empty one).
    Ready(Bytes),
    /// Teed from the client's body as the primary reads it.
    Teed(oneshot::Receiver<Option<Bytes>>),
}

/// One mirrored request, for [`run`].
pub struct Job {
    pub config: Arc<MirrorConfig>,
    pub slot: Slot,
    pub route: Arc<str>,
    pub pool: Arc<Pool>,
    pub method: Method,
    /// The primary's request target, as it went upstream.
    pub path: PathAndQuery,
    pub headers: HeaderMap,
    pub body: BodySource,
    /// The primary's answer, when comparing.
    pub primary: Option<oneshot::Receiver<Answer>>,
    pub request_id: Option<String>,
    /// `switchyard_mirror_total`, by route and result.
    pub results: prometheus::IntCounterVec,
}

static MIRROR_HEADER: HeaderName = HeaderName::from_static("x-switchyard-mirror");

/// Sends one mirrored request and compares the answers.
pub async fn run(mut job: Job) {
    let body = std::mem::replace(&mut job.body, BodySource::Ready(Bytes::new()));
    let primary = job.primary.take();
    let result = mirror(&job, body, primary).await;
    let (index, mismatch) = match result {
        Ok(None) => (if job.config.compare { MATCH } else { SENT }, None),
        Ok(Some((kind, diff))) => (
            match kind {
                Kind::Status => 1,
                Kind::Header => 2,
                Kind::Body => 3,
            },
            Some((kind, diff)),
        ),
        Err(i) => (i, None),
    };
    job.config.stats.counts[index].fetch_add(1, Ordering::Relaxed);
    job.config.current.0[index].fetch_add(1, Ordering::Relaxed);
    job.results
        .with_label_values(&[&*job.route, RESULTS[index]])
        .inc();
    if let Some((kind, diff)) = mismatch {
        let m = Mismatch {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            kind,
            request_id: job.request_id.clone(),
            method: job.method.to_string(),
            path: job.path.to_string(),
            diff,
        };
        let shown = m.redacted();
        tracing::debug!(route = %job.route, kind = kind.name(), path = %shown.path, "mirror mismatch: {}", shown.diff);
        let mut recent = job.config.stats.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(m);
    }
}

/// The comparison's finding, or the index of the result that ended the job early.
async fn mirror(
    job: &Job,
    body: BodySource,
    primary: Option<oneshot::Receiver<Answer>>,
) -> Result<Option<(Kind, String)>, usize> {
    let body = match body {
        BodySource::Ready(b) => b,
        BodySource::Teed(rx) => match rx.await {
            Ok(Some(b)) => b,
            Ok(None) => return Err(TOO_LARGE),
            Err(_) => return Err(INCOMPLETE),
        },
    };
    let shadow = send(job, body).await.map_err(|e| {
        tracing::debug!(route = %job.route, pool = %job.pool.name, "mirror: {e}");
        SHADOW_ERROR
    })?;
    let Some(primary) = primary else { return Ok(None) };
    // The primary's answer comes when its body ends: a long download or an event stream would
    // hold the route's mirror slot as long. It is waited for at most the shadow pool's timeout
    // beyond the shadow's answer; past it, the comparison is `incomplete`.
    let primary = tokio::time::timeout(job.pool.timeout, primary)
        .await
        .map_err(|_| INCOMPLETE)?
        .map_err(|_| INCOMPLETE)?;
    Ok(compare::compare(&primary, &shadow, &job.config.ignore))
}

/// A mirrored request's header fields: the primary's, and `x-switchyard-mirror: 1`.
struct MirrorFields<'a>(&'a HeaderMap);

impl Fields for MirrorFields<'_> {
    fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        for (name, value) in self.0 {
            if name != MIRROR_HEADER {
                f(name.as_str().as_bytes(), value.as_bytes());
            }
        }
        f(MIRROR_HEADER.as_str().as_bytes(), b"1");
    }
}

/// The shadow's answer, its body read up to `max_response`, within the pool's timeout. It
/// goes through the proxy's own upstream client: the shadow pool's connections, limits and
/// in-flight counts are the ones its proxied requests use.
async fn send(job: &Job, body: Bytes) -> Result<Answer, String> {
    let index = job
        .pool
        .select(None, tokio::time::Instant::now())
        .ok_or("no endpoint of the shadow pool is available")?;
    let out = Outgoing {
        method: &job.method,
        path: &job.path,
        fields: &MirrorFields(&job.headers),
        upgrade: false,
    };
    let limits = Limits {
        connect: job.pool.connect_timeout,
        response: job.pool.timeout,
        body_idle: job.pool.timeout,
    };
    let limit = job.config.max_response;
    let exchange = async {
        let (resp, _in_flight) = client::request(&job.pool.endpoints[index], &limits, &out, Some(body))
            .await
            .map_err(|e| e.to_string())?;
        let (parts, mut body) = resp.into_parts();
        let mut buf = BytesMut::new();
        let mut truncated = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Ok(data) = frame.into_data() {
                let room = limit - buf.len();
                if data.len() > room {
                    buf.extend_from_slice(&data[..room]);
                    truncated = true;
                    break;
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok::<_, String>(Answer {
            status: parts.status,
            headers: parts.headers,
            body: buf.freeze(),
            truncated,
        })
    };
    let timeout: Duration = job.pool.timeout;
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(percent: u32) -> MirrorConfig {
        MirrorConfig {
            pool: 0,
            percent,
            max_body: 1024,
            max_response: 1024,
            compare: true,
            ignore: Ignore::default(),
            ignore_text: Vec::new(),
            methods: SAFE_METHODS.to_vec(),
            max_in_flight: 2,
            stats: Arc::default(),
            current: Arc::default(),
        }
    }

    #[test]
    fn the_share_is_sticky_and_raising_it_only_adds_users() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let mut before: Option<Vec<bool>> = None;
        for percent in [0, 1, 10, 25, 50, 99, 100] {
            let c = config(percent);
            let chosen: Vec<bool> = keys.iter().map(|k| c.wants(&Method::GET, "s", k)).collect();
            let share = chosen.iter().filter(|&&b| b).count() as f64 / keys.len() as f64;
            assert!(
                (share - f64::from(percent) / 100.0).abs() < 0.015,
                "{percent}%: {share}"
            );
            if let Some(b) = &before {
                assert!(
                    b.iter().zip(&chosen).all(|(was, is)| !was || *is),
                    "{percent}%: a user left the mirror"
                );
            }
            // Sticky: the same answer every time.
            assert!(keys
                .iter()
                .zip(&chosen)
                .all(|(k, &b)| c.wants(&Method::GET, "s", k) == b));
            before = Some(chosen);
        }
        assert!(
            !config(100).wants(&Method::POST, "s", "u"),
            "POST is not mirrored by default"
        );
    }

    #[test]
    fn slots_are_bounded_and_given_back() {
        let c = config(100);
        let (a, b) = (c.slot().unwrap(), c.slot().unwrap());
        assert!(c.slot().is_none());
        assert_eq!(c.stats.counts()[DROPPED].1, 1);
        drop(a);
        assert!(c.slot().is_some());
        drop(b);
        assert_eq!(c.stats.in_flight.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_tee_keeps_at_most_its_limit_and_ends_at_the_declared_length() {
        let (mut t, mut rx) = Tee::new(8, None);
        t.push(b"12345");
        t.push(b"6789");
        t.end();
        assert_eq!(rx.try_recv().unwrap(), None, "over the limit");
        let (mut t, mut rx) = Tee::new(8, Some(6));
        t.push(b"123");
        assert!(rx.try_recv().is_err());
        t.push(b"456");
        assert_eq!(
            rx.try_recv().unwrap().as_deref(),
            Some(&b"123456"[..]),
            "whole at its length"
        );
        let (t, mut rx) = Tee::new(8, Some(9));
        drop(t);
        assert!(
            rx.try_recv().is_err(),
            "a declared length over the limit sends nothing"
        );
    }
}
