//! A guard's judgement of one pool against its limits and the baseline.

use super::window::Figures;
use super::GuardConfig;

/// The guard's judgement of a pool.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "lowercase")]
pub enum Verdict {
    /// Fewer than `min_requests` in the window: no verdict (never trip on silence).
    Hold,
    Pass,
    /// Why, with the numbers.
    Fail(String),
}

/// Judges `pool` (a non-baseline pool) against the guard's limits and the `baseline` figures.
pub fn judge(g: &GuardConfig, baseline: &Figures, pool: &Figures) -> Verdict {
    if pool.requests < g.min_requests {
        return Verdict::Hold;
    }
    let rate = pool.error_rate();
    if rate > g.max_error_rate {
        return Verdict::Fail(format!(
            "error rate {:.1}% ({} of {} requests) is over max_error_rate {:.1}%",
            rate * 100.0,
            pool.errors,
            pool.requests,
            g.max_error_rate * 100.0
        ));
    }
    if let Some(ratio) = g.max_error_ratio {
        // Only against a baseline that has a verdict of its own.
        if baseline.requests >= g.min_requests {
            let base = baseline.error_rate();
            if rate > ratio * base {
                return Verdict::Fail(format!(
                    "error rate {:.2}% ({} of {}) is over {ratio}x the baseline's {:.2}% ({} of {})",
                    rate * 100.0,
                    pool.errors,
                    pool.requests,
                    base * 100.0,
                    baseline.errors,
                    baseline.requests
                ));
            }
        }
    }
    if let (Some(max), Some(p99)) = (g.max_p99, pool.p99) {
        if p99 > max {
            return Verdict::Fail(format!(
                "p99 latency {}ms (over {} requests) is over max_p99 {}ms",
                p99.as_millis(),
                pool.requests,
                max.as_millis()
            ));
        }
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn guard() -> GuardConfig {
        GuardConfig {
            baseline: 0,
            max_error_rate: 0.05,
            max_error_ratio: None,
            max_p99: None,
            min_requests: 50,
            window: Duration::from_secs(30),
            dry_run: false,
        }
    }

    fn figures(requests: u64, errors: u64, p99_ms: u64) -> Figures {
        Figures {
            requests,
            errors,
            p99: Some(Duration::from_millis(p99_ms)),
        }
    }

    #[test]
    fn silence_holds_however_bad_it_looks() {
        assert_eq!(
            judge(&guard(), &Figures::default(), &figures(3, 3, 9000)),
            Verdict::Hold
        );
        assert_eq!(
            judge(&guard(), &Figures::default(), &figures(0, 0, 0)),
            Verdict::Hold
        );
    }

    #[test]
    fn error_rate_over_the_limit_fails_with_the_numbers() {
        assert_eq!(
            judge(&guard(), &Figures::default(), &figures(100, 5, 10)),
            Verdict::Pass
        );
        let Verdict::Fail(why) = judge(&guard(), &Figures::default(), &figures(100, 6, 10)) else {
            panic!()
        };
        assert!(
            why.contains("6.0% (6 of 100 requests)") && why.contains("max_error_rate 5.0%"),
            "{why}"
        );
    }

    #[test]
    fn ratio_needs_a_baseline_with_a_verdict() {
        let mut g = guard();
        g.max_error_ratio = Some(2.0);
        let pool = figures(100, 3, 10);
        assert_eq!(
            judge(&g, &figures(10, 0, 10), &pool),
            Verdict::Pass,
            "baseline too small to compare"
        );
        assert_eq!(
            judge(&g, &figures(1000, 20, 10), &pool),
            Verdict::Pass,
            "3% < 2 x 2%"
        );
        assert!(
            matches!(judge(&g, &figures(1000, 10, 10), &pool), Verdict::Fail(_)),
            "3% > 2 x 1%"
        );
    }

    #[test]
    fn p99_over_the_limit_fails() {
        let mut g = guard();
        g.max_p99 = Some(Duration::from_millis(500));
        assert_eq!(
            judge(&g, &Figures::default(), &figures(60, 0, 500)),
            Verdict::Pass
        );
        assert!(
            matches!(judge(&g, &Figures::default(), &figures(60, 0, 2000)), Verdict::Fail(w) if w.contains("p99"))
        );
    }
}
