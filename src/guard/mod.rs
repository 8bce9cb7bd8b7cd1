//! Guards: automatic rollback on a pool's error rate and latency, and progressive rollouts.
//!
//! The request path only sends an [`Outcome`] down a channel (when the route has a guard). The
//! guard task owns every window ([`window`]), judges each guarded route's non-baseline pools
//! every 100 ms ([`verdict`]), and asks the reloader — the only writer of the snapshot — to trip
//! a failing pool or to advance a rollout. The reloader keeps trips and rollout steps in an
//! [`crate::runtime::overlay::Overlay`] that it applies to every config it compiles (so a reload cannot undo a
//! trip) and writes to a state file (so a restart cannot either).

pub mod checks;
pub mod task;
pub mod verdict;
pub mod window;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use verdict::Verdict;
pub use window::{Figures, Window};

/// How often verdicts are made: a fail trips well within a second of its evidence (the recent
/// window's ticks are 200 ms).
pub const TICK: Duration = Duration::from_millis(100);

/// A route's `[routes.guard]`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    /// Index of the baseline pool in [`Snapshot::pools`].
    pub baseline: usize,
    pub max_error_rate: f64,
    pub max_error_ratio: Option<f64>,
    /// Most share of a mirror's compared answers that may differ (over `window`, at least
    /// `min_requests` compared) before the mirror's pool fails; until that many are compared,
    /// its rollout holds.
    pub max_mismatch_rate: Option<f64>,
    pub max_p99: Option<Duration>,
    pub max_p50: Option<Duration>,
    pub min_requests: u64,
    pub window: Duration,
    pub dry_run: bool,
    /// `[[routes.guard.checks]]`: queries on the application's own metrics.
    pub checks: Arc<[checks::CheckConfig]>,
}

/// A route's `[routes.rollout]`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// Index of the pool being rolled out in [`Snapshot::pools`].
    pub pool: usize,
    /// Percent of the route's traffic at each step.
    pub steps: Vec<u32>,
    pub every: Duration,
}

/// One finished request of a guarded route.
#[derive(Debug)]
pub struct Outcome {
    pub route: Arc<str>,
    pub pool: Arc<str>,
    pub error: bool,
    /// Time to the response headers (or to the failure).
    pub latency: Duration,
    pub at: Instant,
}

/// What the guard sees now, for the admin API.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub routes: HashMap<String, RouteReport>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RouteReport {
    pub pools: Vec<PoolReport>,
    /// Why the rollout does not step though its time may have come: a check that has not
    /// passed since the step began (no data, an error, not run yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_waits: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolReport {
    pub pool: String,
    pub baseline: bool,
    /// For a tripped or rolled-back pool: its figures when it was taken out (it gets no
    /// requests since, so its window would empty just when an operator looks at it).
    pub figures: Figures,
    /// `None` for the baseline, which is not judged.
    pub verdict: Option<Verdict>,
    /// Taken out of the route (by the guard or an operator): `figures` are from then.
    pub tripped: bool,
}

/// True when a rollout step that started at `started` should advance now.
pub fn rollout_due(started: Instant, now: Instant, every: Duration, verdict: &Verdict) -> bool {
    now.saturating_duration_since(started) >= every && *verdict == Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rollouts_advance_after_every_only_while_passing() {
        let every = Duration::from_secs(60);
        let started = Instant::now();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!rollout_due(started, Instant::now(), every, &Verdict::Pass));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(rollout_due(started, Instant::now(), every, &Verdict::Pass));
        assert!(
            !rollout_due(started, Instant::now(), every, &Verdict::Hold),
            "hold does not advance"
        );
        assert!(!rollout_due(
            started,
            Instant::now(),
            every,
            &Verdict::Fail("x".into())
        ));
    }
}
