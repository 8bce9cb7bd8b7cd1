//! A guard's checks (`[[routes.guard.checks]]`): canary analysis on the application's own
//! metrics. A check is a PromQL query with `{{pool}}`, `{{route}}` and `{{window}}` in it, run
//! for each judged pool and for the baseline every `interval` (by [`crate::analysis`], never on
//! the request path), and a condition on its value: absolute (`min`, `max`) and relative to the
//! baseline's value from the same query (`min_ratio`, `max_ratio`).
//!
//! Each measurement of a pool is a [`CheckVerdict`]: pass, fail, inconclusive (no data: the
//! query returned no series or `NaN`, as a ratio of nothing gives) or error (the query failed).
//! `failure_limit` fails in a row make the check *failing*, and the guard trips the pool; a pass
//! starts the count again, an inconclusive or erroring measurement neither adds to it nor clears
//! it. A rollout steps only when every check's last measurement of its pool passed and was made
//! since the step began: no data and errors hold it, and say so.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// The placeholders a query may hold.
pub const PLACEHOLDERS: [&str; 3] = ["pool", "route", "window"];

/// Measurements kept per check and pool for the history the API and dashboard show.
pub const HISTORY: usize = 60;

/// One `[[routes.guard.checks]]`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckConfig {
    pub name: String,
    /// The query with its placeholders.
    pub query: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub min_ratio: Option<f64>,
    pub max_ratio: Option<f64>,
    pub interval: Duration,
    pub failure_limit: u32,
    /// What no data means: `hold` (inconclusive, the default) or `fail`.
    pub no_data_fails: bool,
}

impl CheckConfig {
    /// Whether the condition needs the baseline's value.
    pub fn relative(&self) -> bool {
        self.min_ratio.is_some() || self.max_ratio.is_some()
    }

    /// The condition, as `check` and the API say it: `>= 0.95, pool/baseline >= 0.97`.
    pub fn condition(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = self.min {
            parts.push(format!(">= {v}"));
        }
        if let Some(v) = self.max {
            parts.push(format!("<= {v}"));
        }
        if let Some(v) = self.min_ratio {
            parts.push(format!("pool/baseline >= {v}"));
        }
        if let Some(v) = self.max_ratio {
            parts.push(format!("pool/baseline <= {v}"));
        }
        parts.join(", ")
    }
}

/// Checks a query's text: every `{{name}}` is a known placeholder, and its brackets, braces
/// and parentheses balance outside string literals. `Err((message, fix))`.
pub fn validate_query(query: &str) -> Result<(), (String, String)> {
    if query.trim().is_empty() {
        return Err((
            "the query is empty".into(),
            "write a PromQL query that gives one number".into(),
        ));
    }
    // Placeholders first (they sit inside string literals as often as not).
    let filled = render(query, "pool", "route", Duration::from_secs(30)).map_err(|message| {
        (
            message,
            format!("use {}", PLACEHOLDERS.map(|p| format!("{{{{{p}}}}}")).join(", ")),
        )
    })?;
    let mut open: Vec<char> = Vec::new();
    let mut chars = filled.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                // A string literal: to its closing quote (backslash escapes, except in `raw`).
                let mut closed = false;
                while let Some(d) = chars.next() {
                    if d == '\\' && c != '`' {
                        chars.next();
                    } else if d == c {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err((
                        format!("a string opened with {c} is not closed"),
                        "close every quoted label value".into(),
                    ));
                }
            }
            '#' => {
                // A comment, to the end of the line.
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
            }
            '(' | '[' | '{' => open.push(c),
            ')' | ']' | '}' => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if open.pop() != Some(want) {
                    return Err((
                        format!("`{c}` closes nothing that is open"),
                        "balance the query's parentheses, brackets and braces".into(),
                    ));
                }
            }
            _ => {}
        }
    }
    if let Some(c) = open.pop() {
        return Err((
            format!("`{c}` is not closed"),
            "balance the query's parentheses, brackets and braces".into(),
        ));
    }
    Ok(())
}

/// A duration as PromQL writes it: `30s`, `1500ms`, `5m`.
pub fn promql_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The query for one pool: `{{pool}}`, `{{route}}` and `{{window}}` (spaces inside the braces
/// allowed) replaced. `Err(what is wrong)` for an unknown placeholder or a `{{` never closed.
pub fn render(query: &str, pool: &str, route: &str, window: Duration) -> Result<String, String> {
    let mut out = String::with_capacity(query.len() + 16);
    let mut rest = query;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find("}}") else {
            let from: String = after.chars().take(20).collect();
            return Err(format!(
                "`{{{{{from}` opens a placeholder that is not closed with `}}}}`"
            ));
        };
        let name = after[..end].trim();
        match name {
            "pool" => out.push_str(pool),
            "route" => out.push_str(route),
            "window" => out.push_str(&promql_duration(window)),
            other => return Err(format!("unknown placeholder `{{{{{other}}}}}`")),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What a query gave for one pool.
#[derive(Debug, Clone, PartialEq)]
pub enum Measured {
    Value(f64),
    /// No series, or only `NaN`.
    NoData,
    /// The query failed: why.
    Error(String),
}

/// One measurement's judgement.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "lowercase")]
pub enum CheckVerdict {
    Pass,
    Fail(String),
    /// No data to judge: holds a rollout, never trips (unless `no_data = "fail"`).
    Inconclusive(String),
    /// The query failed: holds a rollout, never a pass.
    Error(String),
}

impl CheckVerdict {
    pub fn name(&self) -> &'static str {
        match self {
            CheckVerdict::Pass => "pass",
            CheckVerdict::Fail(_) => "fail",
            CheckVerdict::Inconclusive(_) => "inconclusive",
            CheckVerdict::Error(_) => "error",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            CheckVerdict::Pass => None,
            CheckVerdict::Fail(r) | CheckVerdict::Inconclusive(r) | CheckVerdict::Error(r) => Some(r),
        }
    }
}

/// `v` as a short number: `0.9`, `0.9912`, `1234.5`.
pub fn num(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_owned()
    }
}

/// Judges one pool's measurement against the check's condition and the baseline's.
pub fn evaluate(c: &CheckConfig, pool: &Measured, baseline: Option<&Measured>) -> CheckVerdict {
    let v = match pool {
        Measured::Error(e) => return CheckVerdict::Error(e.clone()),
        Measured::NoData if c.no_data_fails => {
            return CheckVerdict::Fail("no data for the pool (no_data = \"fail\")".into())
        }
        Measured::NoData => return CheckVerdict::Inconclusive("no data for the pool".into()),
        Measured::Value(v) => *v,
    };
    if let Some(min) = c.min.filter(|m| v < *m) {
        return CheckVerdict::Fail(format!("{} is below min {}", num(v), num(min)));
    }
    if let Some(max) = c.max.filter(|m| v > *m) {
        return CheckVerdict::Fail(format!("{} is above max {}", num(v), num(max)));
    }
    if !c.relative() {
        return CheckVerdict::Pass;
    }
    let b = match baseline {
        None => return CheckVerdict::Pass,
        Some(Measured::Error(e)) => return CheckVerdict::Error(format!("the baseline's query: {e}")),
        Some(Measured::NoData) => {
            return CheckVerdict::Inconclusive("no data for the baseline to compare with".into())
        }
        Some(Measured::Value(b)) => *b,
    };
    let ratio = if v == b {
        1.0
    } else if b == 0.0 {
        f64::INFINITY.copysign(v)
    } else {
        v / b
    };
    let said = |bound: &str, limit: f64| {
        format!(
            "{} against the baseline's {} (ratio {}) is {bound} {}",
            num(v),
            num(b),
            num(ratio),
            num(limit)
        )
    };
    if let Some(m) = c.min_ratio.filter(|m| ratio < *m) {
        return CheckVerdict::Fail(said("below min_ratio", m));
    }
    if let Some(m) = c.max_ratio.filter(|m| ratio > *m) {
        return CheckVerdict::Fail(said("above max_ratio", m));
    }
    CheckVerdict::Pass
}

/// Every guard's checks, as last measured: per route, per pool (the baseline included), each
/// check's record in the guard's order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Results {
    pub routes: std::collections::HashMap<String, std::collections::BTreeMap<String, Vec<CheckStatus>>>,
    /// Per route: the split, pools and trips the records count against
    /// ([`crate::analysis::epoch`]); the guard ignores records of a route that changed since.
    #[serde(skip)]
    pub epochs: std::collections::HashMap<String, String>,
}

impl Results {
    /// `pool`'s records on `route`.
    pub fn of(&self, route: &str, pool: &str) -> &[CheckStatus] {
        self.routes
            .get(route)
            .and_then(|r| r.get(pool))
            .map_or(&[], Vec::as_slice)
    }
}

/// A check as the API shows it: its config, and its record for each pool measured.
#[derive(Debug, Clone, Serialize)]
pub struct CheckView {
    pub name: String,
    pub query: String,
    pub condition: String,
    pub interval_s: f64,
    pub failure_limit: u32,
    pub no_data: &'static str,
    pub pools: Vec<PoolCheck>,
}

/// A check's record for one pool.
#[derive(Debug, Clone, Serialize)]
pub struct PoolCheck {
    pub pool: String,
    pub baseline: bool,
    #[serde(flatten)]
    pub status: CheckStatus,
}

/// The checks of `route`'s guard with their records from `results`, the baseline first.
pub fn views(checks: &[CheckConfig], results: &Results, route: &str, baseline: &str) -> Vec<CheckView> {
    let pools = results.routes.get(route);
    checks
        .iter()
        .map(|c| {
            let mut list: Vec<PoolCheck> = pools
                .into_iter()
                .flatten()
                .filter_map(|(pool, records)| {
                    let status = records.iter().find(|s| s.check == c.name)?.clone();
                    Some(PoolCheck {
                        pool: pool.clone(),
                        baseline: pool == baseline,
                        status,
                    })
                })
                .collect();
            list.sort_by_key(|p| !p.baseline);
            CheckView {
                name: c.name.clone(),
                query: c.query.clone(),
                condition: c.condition(),
                interval_s: c.interval.as_secs_f64(),
                failure_limit: c.failure_limit,
                no_data: if c.no_data_fails { "fail" } else { "hold" },
                pools: list,
            }
        })
        .collect()
}

/// One measurement in a check's history.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Unix ms.
    pub at: u64,
    pub value: Option<f64>,
    pub baseline: Option<f64>,
    pub verdict: &'static str,
}

/// A check's record for one pool (or the baseline), kept by the analysis task and shown by the
/// API, `status` and the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct CheckStatus {
    pub check: String,
    /// The last measurement's verdict; `None` before the first.
    #[serde(flatten)]
    pub verdict: Option<CheckVerdict>,
    pub value: Option<f64>,
    /// The baseline's value from the same measurement.
    pub baseline_value: Option<f64>,
    /// Fails in a row, and how many trip.
    pub failures: u32,
    pub failure_limit: u32,
    /// `failures` reached `failure_limit`: the guard trips the pool.
    pub failing: bool,
    /// Unix ms of the last measurement.
    pub last_run: Option<u64>,
    /// When the last passing measurement began.
    #[serde(skip)]
    pub passed_at: Option<Instant>,
    /// The query as run for this pool.
    pub query: String,
    pub condition: String,
    /// Oldest first, at most [`HISTORY`].
    pub history: VecDeque<Point>,
}

impl CheckStatus {
    pub fn new(c: &CheckConfig, query: String) -> CheckStatus {
        CheckStatus {
            check: c.name.clone(),
            verdict: None,
            value: None,
            baseline_value: None,
            failures: 0,
            failure_limit: c.failure_limit,
            failing: false,
            last_run: None,
            passed_at: None,
            query,
            condition: c.condition(),
            history: VecDeque::new(),
        }
    }

    /// Takes in a measurement begun at `began` and judged `verdict`.
    pub fn record(
        &mut self,
        verdict: CheckVerdict,
        values: (Option<f64>, Option<f64>),
        began: Instant,
        at_ms: u64,
    ) {
        match verdict {
            CheckVerdict::Pass => {
                self.failures = 0;
                self.passed_at = Some(began);
            }
            CheckVerdict::Fail(_) => self.failures = self.failures.saturating_add(1),
            CheckVerdict::Inconclusive(_) | CheckVerdict::Error(_) => {}
        }
        self.failing = self.failures >= self.failure_limit;
        (self.value, self.baseline_value) = values;
        self.last_run = Some(at_ms);
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(Point {
            at: at_ms,
            value: values.0,
            baseline: values.1,
            verdict: verdict.name(),
        });
        self.verdict = Some(verdict);
    }

    /// Why a rollout of this pool cannot step on this check yet (`None`: it can): its last
    /// measurement passed, and began after the step did.
    pub fn holds_step(&self, step_began: Instant) -> Option<String> {
        match &self.verdict {
            None => Some(format!("check {} has not run yet", self.check)),
            Some(CheckVerdict::Pass) if self.passed_at.is_some_and(|t| t >= step_began) => None,
            Some(CheckVerdict::Pass) => Some(format!(
                "check {} has not passed since the step began",
                self.check
            )),
            Some(v) => Some(format!(
                "check {} is {}: {}",
                self.check,
                v.name(),
                v.reason().unwrap_or("")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> CheckConfig {
        CheckConfig {
            name: "success".into(),
            query: "x".into(),
            min: Some(0.95),
            max: None,
            min_ratio: Some(0.97),
            max_ratio: None,
            interval: Duration::from_secs(10),
            failure_limit: 2,
            no_data_fails: false,
        }
    }

    #[test]
    fn placeholders_are_filled_and_unknown_ones_refused() {
        let q = r#"sum(rate(c{pool="{{pool}}", route="{{ route }}"}[{{window}}]))"#;
        assert_eq!(
            render(q, "green", "web", Duration::from_secs(30)).unwrap(),
            r#"sum(rate(c{pool="green", route="web"}[30s]))"#
        );
        assert_eq!(
            render("{{window}}", "", "", Duration::from_secs(300)).unwrap(),
            "5m"
        );
        assert_eq!(
            render("{{window}}", "", "", Duration::from_millis(1500)).unwrap(),
            "1500ms"
        );
        assert_eq!(
            render("a{{pod}}", "", "", Duration::ZERO).unwrap_err(),
            "unknown placeholder `{{pod}}`"
        );
        assert!(validate_query(r#"x{a="{{pool"}"#)
            .unwrap_err()
            .0
            .contains("`{{pool\"}` opens a placeholder that is not closed"));
        assert!(validate_query(q).is_ok());
        assert!(validate_query("up{{pod}}").unwrap_err().0.contains("`{{pod}}`"));
    }

    #[test]
    fn brackets_balance_outside_strings() {
        assert!(validate_query(r#"sum(x{a="(]"})"#).is_ok());
        assert!(validate_query("sum(rate(x[5m])")
            .unwrap_err()
            .0
            .contains("`(` is not closed"));
        assert!(validate_query("x{a=\"b\"}}")
            .unwrap_err()
            .0
            .contains("closes nothing"));
        assert!(validate_query("x{a=\"b}").unwrap_err().0.contains("not closed"));
        assert!(validate_query("sum(x) # a comment (").is_ok());
        assert!(validate_query("  ").is_err());
    }

    #[test]
    fn absolute_and_relative_bounds() {
        let c = check();
        let v = |x: f64| Measured::Value(x);
        assert_eq!(evaluate(&c, &v(0.99), Some(&v(0.99))), CheckVerdict::Pass);
        let f = evaluate(&c, &v(0.90), Some(&v(0.99)));
        assert!(
            matches!(&f, CheckVerdict::Fail(r) if r.contains("below min 0.95")),
            "{f:?}"
        );
        let f = evaluate(&c, &v(0.955), Some(&v(0.999)));
        assert!(
            matches!(&f, CheckVerdict::Fail(r) if r.contains("ratio 0.956") && r.contains("min_ratio 0.97")),
            "{f:?}"
        );
        assert!(matches!(
            evaluate(&c, &v(0.99), Some(&Measured::NoData)),
            CheckVerdict::Inconclusive(_)
        ));
        assert!(matches!(
            evaluate(&c, &Measured::NoData, Some(&v(0.9))),
            CheckVerdict::Inconclusive(_)
        ));
        assert!(matches!(
            evaluate(&c, &v(0.99), Some(&Measured::Error("down".into()))),
            CheckVerdict::Error(e) if e.contains("baseline")
        ));
        // Zero baselines: equal is a ratio of 1; more than nothing is infinitely more.
        let c = CheckConfig {
            min: None,
            min_ratio: None,
            max_ratio: Some(2.0),
            ..check()
        };
        assert_eq!(evaluate(&c, &v(0.0), Some(&v(0.0))), CheckVerdict::Pass);
        assert!(matches!(
            evaluate(&c, &v(1.0), Some(&v(0.0))),
            CheckVerdict::Fail(_)
        ));
        let c = CheckConfig {
            no_data_fails: true,
            ..check()
        };
        assert!(matches!(
            evaluate(&c, &Measured::NoData, None),
            CheckVerdict::Fail(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_and_what_holds_a_step() {
        let c = check();
        let mut s = CheckStatus::new(&c, "q".into());
        let step = Instant::now();
        assert!(s.holds_step(step).unwrap().contains("not run yet"));
        let fail = || CheckVerdict::Fail("low".into());
        s.record(fail(), (Some(0.5), Some(0.99)), Instant::now(), 1);
        assert!(!s.failing);
        s.record(
            CheckVerdict::Inconclusive("no data".into()),
            (None, None),
            Instant::now(),
            2,
        );
        assert_eq!(s.failures, 1, "no data neither adds nor clears");
        assert!(s.holds_step(step).unwrap().contains("inconclusive: no data"));
        s.record(fail(), (Some(0.5), Some(0.99)), Instant::now(), 3);
        assert!(s.failing);
        s.record(CheckVerdict::Pass, (Some(0.99), Some(0.99)), step, 4);
        assert!(!s.failing && s.failures == 0);
        assert_eq!(s.holds_step(step), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.holds_step(Instant::now()).unwrap().contains("since the step"));
        for i in 0..100 {
            s.record(CheckVerdict::Pass, (Some(1.0), None), Instant::now(), i);
        }
        assert_eq!(s.history.len(), HISTORY);
    }
}
