//! A guard's judgement of one pool against its limits and the baseline.
//!
//! - **Hold** while the configured window has fewer than `min_requests`: never trip on silence.
//! - **Fail** when, over the configured window, the error rate is over `max_error_rate`, the
//!   p99 over `max_p99` or the p50 over `max_p50`; or when the pool is worse than
//!   `max_error_ratio` times the baseline with 95% confidence.
//! - **Fail fast** when the pool has turned bad in the last 0.6 s: those 0.6 s (the recent
//!   window's three completed 200 ms ticks) hold `min_requests` too, each tick is over
//!   `max_error_rate` (a burst shorter than that does not qualify), and the error rate over them
//!   is over the limit with 99.9% confidence (the one-sided Wilson score bound). The configured window's
//!   rate would cross the limit only once enough of a long healthy history had turned.
//! - Else **pass**.

use std::time::Duration;

use super::window::{Counts, Figures, RECENT};
use super::GuardConfig;

/// The judgement of a pool.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "lowercase")]
pub enum Verdict {
    /// Fewer than `min_requests` in the window: no verdict (never trip on silence).
    Hold,
    Pass,
    /// Why, with the numbers.
    Fail(String),
}

/// One-sided 99.9%: the fast check's confidence.
const Z_FAST: f64 = 3.090_232;
/// One-sided 95%: `max_error_ratio`'s confidence.
const Z_RATIO: f64 = 1.644_854;

/// Judges `pool` (a non-baseline pool) against the guard's limits and the `baseline` figures.
pub fn judge(g: &GuardConfig, baseline: &Figures, pool: &Figures) -> Verdict {
    if pool.requests < g.min_requests {
        return Verdict::Hold;
    }
    let span = if pool.span.is_zero() { g.window } else { pool.span };
    let over = humantime::format_duration(Duration::from_secs(span.as_secs().max(1)));
    let rate = pool.error_rate();
    if rate > g.max_error_rate {
        return Verdict::Fail(format!(
            "error rate {:.1}% ({} of {} requests over the last {over}) is over max_error_rate {:.1}%",
            rate * 100.0,
            pool.errors,
            pool.requests,
            g.max_error_rate * 100.0
        ));
    }
    let ticks = &pool.recent[..RECENT - 1];
    let recent = ticks.iter().fold(Counts::default(), |a, c| Counts {
        requests: a.requests + c.requests,
        errors: a.errors + c.errors,
    });
    if recent.requests >= g.min_requests
        && ticks
            .iter()
            .all(|t| t.requests > 0 && t.error_rate() > g.max_error_rate)
        && wilson_lower(recent, Z_FAST) > g.max_error_rate
    {
        return Verdict::Fail(format!(
            "error rate {:.1}% over the last 0.6 s ({} of {} requests; every 200 ms of it over max_error_rate {:.1}%)",
            recent.error_rate() * 100.0,
            recent.errors,
            recent.requests,
            g.max_error_rate * 100.0
        ));
    }
    if let Some(ratio) = g.max_error_ratio {
        // Only against a baseline that has a verdict of its own.
        if baseline.requests >= g.min_requests && worse_than(pool.counts(), baseline.counts(), ratio) {
            return Verdict::Fail(format!(
                "error rate {:.2}% ({} of {} over the last {over}) is over {ratio}x the baseline's {:.2}% ({} of {}) with 95% confidence",
                rate * 100.0,
                pool.errors,
                pool.requests,
                baseline.error_rate() * 100.0,
                baseline.errors,
                baseline.requests
            ));
        }
    }
    for (name, limit, value) in [("p99", g.max_p99, pool.p99), ("p50", g.max_p50, pool.p50)] {
        if let (Some(max), Some(v)) = (limit, value) {
            if v > max {
                return Verdict::Fail(format!(
                    "{name} latency {:.1}ms ({} requests over the last {over}) is over max_{name} {}ms",
                    v.as_secs_f64() * 1000.0,
                    pool.requests,
                    max.as_millis()
                ));
            }
        }
    }
    Verdict::Pass
}

/// The lower bound of the one-sided Wilson score interval of an error rate, at `z`.
fn wilson_lower(c: Counts, z: f64) -> f64 {
    if c.requests == 0 {
        return 0.0;
    }
    let n = c.requests as f64;
    let p = c.errors as f64 / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    (centre - spread) / (1.0 + z2 / n)
}

/// Whether `pool`'s error rate is over `ratio` times `base`'s with 95% confidence: a one-sided
/// Wald test of `p_pool - ratio·p_base > 0` on Agresti–Caffo adjusted proportions (one error
/// and one success added to each side), which stays sound at zero errors: a single error
/// against a clean baseline is not evidence.
pub fn worse_than(pool: Counts, base: Counts, ratio: f64) -> bool {
    let adjusted = |c: Counts| {
        let n = c.requests as f64 + 2.0;
        ((c.errors as f64 + 1.0) / n, n)
    };
    let (p1, n1) = adjusted(pool);
    let (p2, n2) = adjusted(base);
    let diff = p1 - ratio * p2;
    let se = (p1 * (1.0 - p1) / n1 + ratio * ratio * p2 * (1.0 - p2) / n2).sqrt();
    diff > Z_RATIO * se
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn guard() -> GuardConfig {
        GuardConfig {
            max_mismatch_rate: None,
            baseline: 0,
            max_error_rate: 0.05,
            max_error_ratio: None,
            max_p99: None,
            max_p50: None,
            min_requests: 50,
            window: Duration::from_secs(30),
            dry_run: false,
            checks: Default::default(),
        }
    }

    fn figures(requests: u64, errors: u64, p99_ms: u64) -> Figures {
        Figures {
            requests,
            errors,
            p50: Some(Duration::from_millis(p99_ms / 2)),
            p99: Some(Duration::from_millis(p99_ms)),
            recent: Default::default(),
            span: Duration::ZERO,
        }
    }

    fn c(requests: u64, errors: u64) -> Counts {
        Counts { requests, errors }
    }

    #[test]
    fn min_requests_is_the_evidence_bar() {
        let g = guard();
        assert_eq!(
            judge(&g, &Figures::default(), &figures(49, 49, 9000)),
            Verdict::Hold
        );
        assert_eq!(judge(&g, &Figures::default(), &figures(0, 0, 0)), Verdict::Hold);
        assert!(
            matches!(
                judge(&g, &Figures::default(), &figures(50, 49, 10)),
                Verdict::Fail(_)
            ),
            "at the bar"
        );
    }

    #[test]
    fn the_error_rate_must_be_over_the_limit() {
        let g = guard();
        assert_eq!(
            judge(&g, &Figures::default(), &figures(100, 5, 10)),
            Verdict::Pass,
            "5% is not over 5%"
        );
        let Verdict::Fail(why) = judge(&g, &Figures::default(), &figures(100, 6, 10)) else {
            panic!()
        };
        assert!(
            why.contains("6.0% (6 of 100 requests over the last 30s)") && why.contains("max_error_rate 5.0%"),
            "{why}"
        );
        // Figures that cover less than the window say so.
        let mut f = figures(100, 6, 10);
        f.span = Duration::from_secs(12);
        let Verdict::Fail(why) = judge(&g, &Figures::default(), &f) else {
            panic!()
        };
        assert!(why.contains("over the last 12s)"), "{why}");
    }

    fn with_recent(long: (u64, u64), ticks: [(u64, u64); RECENT]) -> Figures {
        let mut f = figures(long.0, long.1, 10);
        for (slot, (r, e)) in f.recent.iter_mut().zip(ticks) {
            *slot = c(r, e);
        }
        f
    }

    #[test]
    fn a_pool_turned_bad_fails_fast_a_burst_does_not() {
        let g = guard();
        let base = Figures::default();
        // A long healthy history (2% over the window), then half of everything failing.
        let turned = with_recent((3000, 60), [(40, 20), (40, 21), (40, 19), (5, 3)]);
        let Verdict::Fail(why) = judge(&g, &base, &turned) else {
            panic!("{:?}", judge(&g, &base, &turned))
        };
        assert!(why.contains("last 0.6 s (60 of 120 requests"), "{why}");
        // A burst in two ticks, the third clean: the window's rate decides (2%: pass).
        let burst = with_recent((3000, 60), [(40, 40), (40, 40), (40, 0), (5, 0)]);
        assert_eq!(judge(&g, &base, &burst), Verdict::Pass);
        // Every tick over the limit, but on fewer than min_requests: pass.
        let thin = with_recent((3000, 60), [(16, 8), (16, 8), (16, 8), (0, 0)]);
        assert_eq!(judge(&g, &base, &thin), Verdict::Pass);
        // Enough requests, every tick over the limit, but not by enough to be sure: pass.
        let close = with_recent((3000, 60), [(20, 2), (20, 2), (20, 2), (0, 0)]);
        assert_eq!(judge(&g, &base, &close), Verdict::Pass);
        // The current tick is not judged.
        let current = with_recent((3000, 60), [(40, 0), (40, 0), (40, 0), (40, 40)]);
        assert_eq!(judge(&g, &base, &current), Verdict::Pass);
    }

    #[test]
    fn ratio_needs_a_baseline_with_a_verdict_and_confidence() {
        let mut g = guard();
        g.max_error_ratio = Some(2.0);
        let pool = figures(1000, 30, 10);
        assert_eq!(
            judge(&g, &figures(49, 0, 10), &pool),
            Verdict::Pass,
            "baseline too small to compare"
        );
        assert_eq!(
            judge(&g, &figures(1000, 20, 10), &pool),
            Verdict::Pass,
            "3% < 2 x 2%"
        );
        assert!(
            matches!(judge(&g, &figures(1000, 5, 10), &pool), Verdict::Fail(_)),
            "3% vs 0.5%"
        );
        // One error against a clean baseline never trips, whatever the volumes.
        for n in [50, 100, 1000, 100_000] {
            assert_eq!(
                judge(&g, &figures(n, 0, 10), &figures(n, 1, 10)),
                Verdict::Pass,
                "{n}"
            );
        }
        assert!(
            matches!(
                judge(&g, &figures(1000, 0, 10), &figures(1000, 10, 10)),
                Verdict::Fail(_)
            ),
            "1% vs none"
        );
    }

    #[test]
    fn the_ratio_test_holds_its_confidence() {
        // The same error rate on both sides: at ratio 1, "worse" in at most ~5% of samples.
        let mut rng = fastrand::Rng::with_seed(7);
        let mut worse = 0;
        for _ in 0..2000 {
            let draw = |n: u64, rng: &mut fastrand::Rng| (0..n).filter(|_| rng.f64() < 0.02).count() as u64;
            let (a, b) = (draw(500, &mut rng), draw(500, &mut rng));
            worse += usize::from(worse_than(c(500, a), c(500, b), 1.0));
        }
        assert!(worse < 2000 * 6 / 100, "{worse} of 2000");
    }

    #[test]
    fn latency_limits_at_their_bounds() {
        let mut g = guard();
        g.max_p99 = Some(Duration::from_millis(500));
        assert_eq!(
            judge(&g, &Figures::default(), &figures(60, 0, 500)),
            Verdict::Pass,
            "not over"
        );
        let Verdict::Fail(why) = judge(&g, &Figures::default(), &figures(60, 0, 501)) else {
            panic!()
        };
        assert!(why.contains("p99 latency 501.0ms"), "{why}");
        g.max_p99 = None;
        g.max_p50 = Some(Duration::from_millis(100));
        assert_eq!(
            judge(&g, &Figures::default(), &figures(60, 0, 200)),
            Verdict::Pass,
            "p50 of 100"
        );
        assert!(
            matches!(judge(&g, &Figures::default(), &figures(60, 0, 202)), Verdict::Fail(w) if w.contains("p50"))
        );
    }
}
