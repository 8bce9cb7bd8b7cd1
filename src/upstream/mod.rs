//! Upstream pools: named sets of endpoints, endpoint selection, endpoint health, and the
//! HTTP/1.1 client ([`client`]) that keeps connections to them alive. Endpoint state
//! (requests in flight, passive ejection, the active check's verdict, idle connections) lives
//! on [`Endpoint`], shared by reference between the snapshots of successive reloads as long as
//! the endpoint is still configured.
//!
//! Health, two ways: **passive** — [`PASSIVE_FAILURES`] consecutive failures (connect errors,
//! timeouts, 5xx) eject an endpoint for a back-off that doubles with each ejection in a row
//! (from [`EJECT_BASE`] up to [`EJECT_MAX`]), after which it is tried again; and **active** —
//! with `health` on the pool, a check task per endpoint ([`health`]).

pub mod client;
pub mod health;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use tokio::time::Instant;

/// Consecutive failures that eject an endpoint.
pub const PASSIVE_FAILURES: u32 = 5;
/// The first ejection's length.
pub const EJECT_BASE: Duration = Duration::from_secs(5);
/// The longest ejection.
pub const EJECT_MAX: Duration = Duration::from_secs(120);

/// A pool's `health` table: active checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed checks that mark an endpoint down.
    pub fall: u32,
    /// Consecutive passed checks that bring it back.
    pub rise: u32,
}

/// How a pool picks an endpoint for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Power of two random choices on requests in flight.
    LeastRequest,
    RoundRobin,
}

/// One `[pools.NAME]` entry.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    /// The name as a header value, made once for the pool header of every request.
    pub name_header: http::HeaderValue,
    pub endpoints: Box<[Arc<Endpoint>]>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    /// Time allowed from sending the request until the response headers arrive.
    pub timeout: Duration,
    pub health: Option<HealthCheck>,
    cursor: AtomicUsize,
}

/// An endpoint's health as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointStatus {
    pub address: String,
    /// Takes requests now: not ejected, and passing its active checks.
    pub available: bool,
    /// The active checks' verdict (true without checks).
    pub passing_checks: bool,
    /// Seconds of passive ejection left, if ejected.
    pub ejected_for_s: Option<f64>,
    pub in_flight: usize,
    /// Why its last active check failed, while it fails (`GET /healthz answered 301`).
    pub check_error: Option<String>,
}

/// One upstream address of a pool.
#[derive(Debug)]
pub struct Endpoint {
    /// As written in the config, `host:port`.
    pub address: Arc<str>,
    pub authority: Authority,
    in_flight: AtomicUsize,
    /// Time base of `ejected_until`.
    born: Instant,
    consecutive_failures: AtomicU32,
    /// Ejections in a row, for the back-off.
    ejections: AtomicU32,
    /// Nanoseconds after `born` until which the endpoint is ejected.
    ejected_until: AtomicU64,
    /// The active check's verdict (true without checks).
    checked_healthy: AtomicBool,
    /// Why the last active check failed, while they fail (read by the API and error answers,
    /// never by a request that is served).
    check_error: std::sync::Mutex<Option<String>>,
    /// Kept-alive connections waiting for a request.
    pub idle: client::IdleConns,
}

impl Endpoint {
    pub fn new(address: &str, authority: Authority) -> Endpoint {
        Endpoint {
            address: address.into(),
            authority,
            in_flight: AtomicUsize::new(0),
            born: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            checked_healthy: AtomicBool::new(true),
            check_error: std::sync::Mutex::new(None),
            idle: client::IdleConns::default(),
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.born).as_nanos() as u64
    }

    /// Whether requests may go here: not ejected, and not failing its active checks.
    pub fn is_available(&self, now: Instant) -> bool {
        self.checked_healthy.load(Ordering::Relaxed)
            && self.nanos(now) >= self.ejected_until.load(Ordering::Relaxed)
    }

    /// Feeds a request's result to passive health; `may_eject` says whether the pool can spare
    /// this endpoint. Returns true when this failure ejected it.
    fn record(&self, ok: bool, now: Instant, may_eject: bool) -> bool {
        if ok {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.ejections.store(0, Ordering::Relaxed);
            return false;
        }
        if self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1 < PASSIVE_FAILURES {
            return false;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if !may_eject {
            return false;
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let length = EJECT_BASE.saturating_mul(1 << n).min(EJECT_MAX);
        self.ejected_until
            .store(self.nanos(now + length), Ordering::Relaxed);
        tracing::warn!(endpoint = %self.address, ejected_for = ?length, "endpoint ejected after {PASSIVE_FAILURES} failures in a row");
        true
    }

    /// How the endpoint stands at `now`, for the admin API.
    pub fn status(&self, now: Instant) -> EndpointStatus {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let at = self.nanos(now);
        EndpointStatus {
            address: self.address.to_string(),
            available: self.is_available(now),
            passing_checks: self.checked_healthy.load(Ordering::Relaxed),
            ejected_for_s: (until > at).then(|| Duration::from_nanos(until - at).as_secs_f64()),
            in_flight: self.in_flight(),
            check_error: self.check_error(),
        }
    }

    /// Why the last active check failed, while they fail.
    pub fn check_error(&self) -> Option<String> {
        self.check_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps the last active check's failure (`None`: it passed).
    pub fn set_check_error(&self, error: Option<String>) {
        *self.check_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// Sets the active check's verdict.
    pub fn set_checked_healthy(&self, healthy: bool) {
        self.checked_healthy.store(healthy, Ordering::Relaxed);
    }

    /// Requests sent to this endpoint whose responses have not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// How often idle upstream connections are checked for closes and expiry.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Closes the idle connections that went stale, every [`SWEEP_EVERY`], for the endpoints of
/// the pools `live` gives (the live snapshot's), until it gives none (the snapshot is gone).
/// (Endpoints a reload removed close theirs when the last snapshot holding them is dropped.)
pub async fn sweep_idle(live: impl Fn() -> Option<Vec<Arc<Pool>>>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pools) = live() else {
            return;
        };
        let now = Instant::now();
        for pool in &pools {
            for ep in pool.endpoints.iter() {
                ep.idle.sweep(now);
            }
        }
    }
}

/// A request in flight to an endpoint; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// Why no endpoint takes requests, one clause an endpoint (for the log of a `503`).
    pub fn why_unavailable(&self, now: Instant) -> String {
        self.endpoints
            .iter()
            .map(|e| {
                let st = e.status(now);
                let why = match (st.ejected_for_s, st.check_error) {
                    (_, Some(check)) if !st.passing_checks => format!("failing its health check ({check})"),
                    (Some(left), _) => format!("ejected for {left:.1}s more after failed requests"),
                    _ if !st.passing_checks => "failing its health check".to_owned(),
                    _ => "available".to_owned(),
                };
                format!("{} {why}", e.address)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn new(
        name: &str,
        endpoints: Vec<Arc<Endpoint>>,
        balance: Balance,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Pool {
        Pool {
            health: None,
            name: name.into(),
            name_header: http::HeaderValue::from_str(name)
                .unwrap_or(http::HeaderValue::from_static("invalid")),
            endpoints: endpoints.into(),
            balance,
            connect_timeout,
            timeout,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Picks an available endpoint, avoiding `exclude` (the endpoint that just failed).
    /// `None` when no endpoint is available.
    pub fn select(&self, exclude: Option<usize>, now: Instant) -> Option<usize> {
        let n = self.endpoints.len();
        let ok = |i: usize| Some(i) != exclude && self.endpoints[i].is_available(now);
        let first = match (n, exclude) {
            (0, _) => return None,
            (1, _) => 0,
            // The retry: the next endpoint after the failed one, whatever the policy.
            (_, Some(x)) => (x + 1 + self.cursor.fetch_add(1, Ordering::Relaxed) % (n - 1)) % n,
            (_, None) => match self.balance {
                Balance::RoundRobin => self.cursor.fetch_add(1, Ordering::Relaxed) % n,
                Balance::LeastRequest => {
                    let a = fastrand::usize(..n);
                    let mut b = fastrand::usize(..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    match (ok(a), ok(b)) {
                        (true, true) if self.endpoints[b].in_flight() < self.endpoints[a].in_flight() => b,
                        (false, true) => b,
                        _ => a,
                    }
                }
            },
        };
        // An unavailable pick: the next available one.
        (0..n).map(|k| (first + k) % n).find(|&i| ok(i))
    }

    /// Feeds the result of a request to endpoint `index` to passive health. Returns true when
    /// this failure ejected it.
    ///
    /// Passive ejection never takes out more than half of the pool (so never a pool's only
    /// endpoint): when every endpoint fails alike, the fault is the application's, not one
    /// host's, and ejecting them all would turn its errors into an outage (nginx never marks a
    /// lone server down; Envoy caps ejections for the same reason). Active health checks may
    /// still take every endpoint out.
    pub fn record(&self, index: usize, ok: bool, now: Instant) -> bool {
        let may_eject = !ok && {
            let out = self.endpoints.iter().filter(|e| !e.is_available(now)).count();
            out < self.endpoints.len() / 2
        };
        self.endpoints[index].record(ok, now, may_eject)
    }

    /// Whether any endpoint can take requests.
    pub fn has_available(&self, now: Instant) -> bool {
        self.endpoints.iter().any(|e| e.is_available(now))
    }
}

/// An error and its sources, as one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, balance: Balance) -> Pool {
        let eps = (0..n)
            .map(|i| {
                let a = format!("127.0.0.1:{}", 1000 + i);
                Arc::new(Endpoint::new(&a, a.parse().unwrap()))
            })
            .collect();
        Pool::new("p", eps, balance, Duration::from_secs(1), Duration::from_secs(1))
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let p = pool(3, Balance::RoundRobin);
        let picks: Vec<_> = (0..6).map(|_| p.select(None, Instant::now()).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let p = pool(2, Balance::LeastRequest);
        let _busy: Vec<_> = (0..5).map(|_| p.endpoints[0].begin()).collect();
        for _ in 0..100 {
            assert_eq!(p.select(None, Instant::now()), Some(1));
        }
    }

    #[test]
    fn a_retry_never_picks_the_failed_endpoint() {
        let p = pool(3, Balance::LeastRequest);
        for _ in 0..100 {
            assert_ne!(p.select(Some(1), Instant::now()), Some(1));
        }
        assert_eq!(
            pool(1, Balance::RoundRobin).select(Some(0), Instant::now()),
            None,
            "no other endpoint"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_with_a_doubling_back_off() {
        let p = pool(2, Balance::RoundRobin);
        let ep = &p.endpoints[0];
        for _ in 0..PASSIVE_FAILURES - 1 {
            assert!(!p.record(0, false, Instant::now()));
        }
        p.record(0, true, Instant::now());
        for _ in 0..PASSIVE_FAILURES - 1 {
            p.record(0, false, Instant::now());
        }
        assert!(
            ep.is_available(Instant::now()),
            "a success in between resets the count"
        );
        assert!(
            p.record(0, false, Instant::now()),
            "the fifth failure in a row ejects"
        );
        assert!(!ep.is_available(Instant::now()));
        for _ in 0..20 {
            assert_eq!(
                p.select(None, Instant::now()),
                Some(1),
                "traffic avoids the ejected endpoint"
            );
        }
        tokio::time::advance(EJECT_BASE).await;
        assert!(ep.is_available(Instant::now()), "re-admitted after the back-off");
        for _ in 0..PASSIVE_FAILURES {
            p.record(0, false, Instant::now());
        }
        tokio::time::advance(EJECT_BASE).await;
        assert!(
            !ep.is_available(Instant::now()),
            "the second ejection in a row lasts twice as long"
        );
        tokio::time::advance(EJECT_BASE).await;
        assert!(ep.is_available(Instant::now()));
        p.record(0, true, Instant::now());
        for _ in 0..PASSIVE_FAILURES {
            p.record(0, false, Instant::now());
        }
        tokio::time::advance(EJECT_BASE).await;
        assert!(ep.is_available(Instant::now()), "a success resets the back-off");
    }

    #[test]
    fn passive_ejection_never_takes_out_more_than_half_the_pool() {
        let now = Instant::now();
        let fail = |p: &Pool, i: usize| (0..PASSIVE_FAILURES).any(|_| p.record(i, false, now));
        let lone = pool(1, Balance::RoundRobin);
        assert!(!fail(&lone, 0), "a pool's only endpoint is never ejected");
        assert!(lone.has_available(now));
        let four = pool(4, Balance::RoundRobin);
        assert!(fail(&four, 0) && fail(&four, 1));
        assert!(
            !fail(&four, 2) && !fail(&four, 3),
            "two of four ejected is the limit"
        );
        assert_eq!(four.endpoints.iter().filter(|e| e.is_available(now)).count(), 2);
    }

    #[test]
    fn no_available_endpoint_selects_none() {
        let p = pool(2, Balance::LeastRequest);
        p.endpoints[0].set_checked_healthy(false);
        p.endpoints[1].set_checked_healthy(false);
        assert_eq!(p.select(None, Instant::now()), None);
        assert!(!p.has_available(Instant::now()));
        p.endpoints[1].set_checked_healthy(true);
        assert_eq!(p.select(None, Instant::now()), Some(1));
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let p = pool(1, Balance::RoundRobin);
        let g = p.endpoints[0].begin();
        assert_eq!(p.endpoints[0].in_flight(), 1);
        drop(g);
        assert_eq!(p.endpoints[0].in_flight(), 0);
    }
}
