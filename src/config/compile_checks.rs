//! Compiling canary analysis: `[analysis]` (the Prometheus checks ask) and each guard's
//! `[[routes.guard.checks]]`.

use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::errors::{env_name, Errors};
use super::raw::{RawAnalysis, RawCheck, RawConfig};
use super::settings::{AnalysisSettings, FleetSettings};
use crate::guard::checks::{validate_query, CheckConfig};

/// The shortest check interval: Prometheus sees a change only at its next scrape.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Most checks on one guard: each runs once per judged pool and once for the baseline.
pub const MAX_CHECKS: usize = 16;

/// A Prometheus base URL, trimmed, or an error at `key`.
pub(super) fn prometheus_url(errs: &mut Errors<'_>, v: &Spanned<String>, key: &str) -> String {
    let url = v.get_ref().trim().trim_end_matches('/').to_owned();
    match url.parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some()
                && u.query().is_none() => {}
        _ => errs.at(
            v,
            key,
            format!("`{}` is not an http:// or https:// URL", v.get_ref()),
            "write Prometheus's base URL, such as \"http://prometheus:9090\"",
        ),
    }
    url
}

/// `[analysis]`, or `[fleet]`'s Prometheus, token and timeout without it; `None` when
/// neither is set.
pub(super) fn compile_analysis(
    errs: &mut Errors<'_>,
    raw: Option<&Spanned<RawAnalysis>>,
    fleet: Option<&FleetSettings>,
) -> Option<AnalysisSettings> {
    let Some(whole) = raw else {
        return fleet.map(|f| AnalysisSettings {
            prometheus: f.prometheus.clone(),
            query_timeout: f.query_timeout,
            token_env: f.token_env.clone().map(|t| ("fleet.token_env", t)),
        });
    };
    let a = whole.get_ref();
    let prometheus = match (&a.prometheus, fleet) {
        (Some(p), _) => prometheus_url(errs, p, "analysis.prometheus"),
        (None, Some(f)) => f.prometheus.clone(),
        (None, None) => {
            errs.at(
                whole,
                "analysis.prometheus",
                "no Prometheus to ask",
                "add prometheus = \"http://prometheus:9090\" (or set [fleet] prometheus)",
            );
            String::new()
        }
    };
    let query_timeout = errs.duration(
        a.query_timeout.as_ref(),
        "analysis.query_timeout",
        fleet.map_or(Duration::from_secs(5), |f| f.query_timeout),
    );
    if let Some(v) = &a.query_timeout {
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&query_timeout) {
            errs.at(
                v,
                "analysis.query_timeout",
                "must be between 100ms and 60s",
                "use a duration such as \"5s\"",
            );
        }
    }
    let token_env = match &a.token_env {
        Some(t) if !env_name(t.get_ref()) => {
            errs.at(
                t,
                "analysis.token_env",
                "not an environment variable name",
                "name the variable that holds Prometheus's bearer token, such as PROMETHEUS_TOKEN",
            );
            None
        }
        Some(t) => Some(("analysis.token_env", t.get_ref().clone())),
        // The fleet's token goes only to the fleet's Prometheus.
        None => fleet
            .filter(|f| f.prometheus == prometheus)
            .and_then(|f| f.token_env.clone().map(|t| ("fleet.token_env", t))),
    };
    Some(AnalysisSettings {
        prometheus,
        query_timeout,
        token_env,
    })
}

/// `Err` when the analysis token's variable is not set: `run` refuses to start and a reload
/// is refused, rather than every check erroring later.
pub fn check_env(analysis: Option<&AnalysisSettings>, any_checks: bool) -> Result<(), String> {
    match analysis.and_then(|a| a.token_env.as_ref()) {
        Some((key, var)) if any_checks && std::env::var(var).map_or(true, |t| t.is_empty()) => Err(format!(
            "{key} names {var}, but {var} is not set — export it, or remove {key}"
        )),
        _ => Ok(()),
    }
}

/// A guard's checks; errors at `path.checks[i]`.
pub(super) fn compile_checks(
    errs: &mut Errors<'_>,
    path: &str,
    raw: &[Spanned<RawCheck>],
) -> Arc<[CheckConfig]> {
    if raw.len() > MAX_CHECKS {
        errs.at(
            &raw[MAX_CHECKS],
            format!("{path}.checks"),
            format!("at most {MAX_CHECKS} checks on one guard"),
            "keep the checks that decide a rollback; each one is a query per pool every interval",
        );
    }
    let mut out: Vec<CheckConfig> = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        if let Some(check) = compile_check(errs, &format!("{path}.checks[{i}]"), c) {
            if out.iter().any(|o| o.name == check.name) {
                errs.at(
                    &c.get_ref().name,
                    format!("{path}.checks[{i}].name"),
                    format!("two checks are named `{}`", check.name),
                    "give each check of a guard its own name",
                );
            }
            out.push(check);
        }
    }
    out.into()
}

fn compile_check(errs: &mut Errors<'_>, path: &str, whole: &Spanned<RawCheck>) -> Option<CheckConfig> {
    let c = whole.get_ref();
    let before = errs.list.len();
    let name = c.name.get_ref().clone();
    let label_safe = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !label_safe {
        errs.at(
            &c.name,
            format!("{path}.name"),
            format!("`{name}` is not a check name"),
            "use letters, digits, '_', '-' and '.', at most 64, such as \"checkout_success\"",
        );
    }
    if let Err((message, fix)) = validate_query(c.query.get_ref()) {
        errs.at(&c.query, format!("{path}.query"), message, &fix);
    }
    let mut number = |v: &Option<Spanned<f64>>, key: &str, ratio: bool| {
        let x = v.as_ref()?;
        let ok = x.get_ref().is_finite() && (!ratio || *x.get_ref() > 0.0);
        if !ok {
            errs.at(
                x,
                format!("{path}.{key}"),
                if ratio {
                    "must be a positive number"
                } else {
                    "must be a finite number"
                },
                if ratio {
                    "write the pool's value over the baseline's, such as 0.97"
                } else {
                    "write a bound such as 0.95"
                },
            );
        }
        Some(*x.get_ref())
    };
    let (min, max) = (number(&c.min, "min", false), number(&c.max, "max", false));
    let (min_ratio, max_ratio) = (
        number(&c.min_ratio, "min_ratio", true),
        number(&c.max_ratio, "max_ratio", true),
    );
    if min.is_none() && max.is_none() && min_ratio.is_none() && max_ratio.is_none() {
        errs.at(
            whole,
            path,
            "a check needs a condition",
            "add min or max (absolute bounds), or min_ratio or max_ratio (relative to the baseline's value)",
        );
    }
    for (lo, hi, key) in [(min, max, "max"), (min_ratio, max_ratio, "max_ratio")] {
        if let (Some(lo), Some(hi)) = (lo, hi) {
            if lo > hi {
                let at = if key == "max" { &c.max } else { &c.max_ratio };
                errs.at(
                    at.as_ref().expect("set"),
                    format!("{path}.{key}"),
                    format!("{hi} is below the lower bound {lo}: no value passes"),
                    "make the upper bound at least the lower one",
                );
            }
        }
    }
    let interval = errs.duration(
        c.interval.as_ref(),
        &format!("{path}.interval"),
        Duration::from_secs(10),
    );
    if let Some(v) = &c.interval {
        if interval < MIN_CHECK_INTERVAL {
            errs.at(
                v,
                format!("{path}.interval"),
                "must be at least 1s",
                "use a duration such as \"10s\": Prometheus sees a change only at its next scrape",
            );
        }
    }
    let failure_limit = match &c.failure_limit {
        None => 1,
        Some(v) => match u32::try_from(*v.get_ref()) {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                errs.at(
                    v,
                    format!("{path}.failure_limit"),
                    "must be between 1 and 1000",
                    "write how many failed measurements in a row trip, such as 2",
                );
                1
            }
        },
    };
    let no_data_fails = match &c.no_data {
        None => false,
        Some(v) => match v.get_ref().as_str() {
            "hold" => false,
            "fail" => true,
            other => {
                errs.at(
                    v,
                    format!("{path}.no_data"),
                    format!("`{other}` is not what no data can mean"),
                    "write \"hold\" (inconclusive: a rollout waits, nothing trips) or \"fail\" (counts as a failure)",
                );
                false
            }
        },
    };
    (errs.list.len() == before).then(|| CheckConfig {
        name,
        query: c.query.get_ref().clone(),
        min,
        max,
        min_ratio,
        max_ratio,
        interval,
        failure_limit,
        no_data_fails,
    })
}

/// Every guard with checks needs a Prometheus to ask: an error at its first check otherwise.
pub(super) fn need_prometheus(errs: &mut Errors<'_>, raw: &RawConfig, analysis: Option<&AnalysisSettings>) {
    if analysis.is_some() {
        return;
    }
    for (i, r) in raw.routes.iter().enumerate() {
        let first = r
            .get_ref()
            .guard
            .as_ref()
            .and_then(|g| g.get_ref().checks.as_ref())
            .and_then(|c| c.first());
        if let Some(c) = first {
            errs.at(
                c,
                format!("routes[{i}].guard.checks[0]"),
                "no Prometheus to ask",
                "add [analysis] prometheus = \"http://prometheus:9090\" (or set [fleet] prometheus)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    fn compile(src: &str) -> Result<crate::config::Compiled, Vec<crate::config::ConfigError>> {
        let raw = crate::config::parse(src).0.expect("parses");
        crate::config::compile(src, &raw, std::path::Path::new("."), "t.toml")
    }

    fn errors(src: &str) -> Vec<String> {
        match compile(src) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    const HEAD: &str = "[listen]\nhttp = \"127.0.0.1:1\"\n[pools.blue]\nendpoints = [\"127.0.0.1:2\"]\n[pools.green]\nendpoints = [\"127.0.0.1:3\"]\n[[routes]]\nname = \"web\"\nsplit = { blue = 90, green = 10 }\n[routes.guard]\nbaseline = \"blue\"\n";

    #[test]
    fn every_mistake_in_a_check_is_pointed_at() {
        let src = format!(
            "{HEAD}[[routes.guard.checks]]\nname = \"a b\"\nquery = 'sum(rate(x{{pool=\"{{{{pod}}}}\"}}[5m])'\nmin = 2\nmax = 1\ninterval = \"100ms\"\nfailure_limit = 0\nno_data = \"pass\"\n\
             [[routes.guard.checks]]\nname = \"c\"\nquery = 'sum(x'\n[[routes.guard.checks]]\nname = \"d\"\nquery = 'x'\nmin_ratio = 0\n"
        );
        let shown = errors(&src);
        let expect = [
            ("13:8 routes[0].guard.checks[0].name", "not a check name"),
            (
                "14:9 routes[0].guard.checks[0].query",
                "unknown placeholder `{{pod}}`",
            ),
            ("16:7 routes[0].guard.checks[0].max", "below the lower bound 2"),
            ("17:12 routes[0].guard.checks[0].interval", "at least 1s"),
            (
                "18:17 routes[0].guard.checks[0].failure_limit",
                "between 1 and 1000",
            ),
            (
                "19:11 routes[0].guard.checks[0].no_data",
                "`pass` is not what no data can mean",
            ),
            ("22:9 routes[0].guard.checks[1].query", "`(` is not closed"),
            ("20:1 routes[0].guard.checks[1]", "a check needs a condition"),
            (
                "26:13 routes[0].guard.checks[2].min_ratio",
                "must be a positive number",
            ),
            ("12:1 routes[0].guard.checks[0]", "no Prometheus to ask"),
        ];
        for (at, what) in expect {
            assert!(
                shown.iter().any(|s| s.starts_with(at) && s.contains(what)),
                "missing {at} {what} in {shown:#?}"
            );
        }
    }

    #[test]
    fn the_prometheus_comes_from_analysis_or_the_fleet() {
        let check = "[[routes.guard.checks]]\nname = \"ok\"\nquery = 'sum(up{job=\"{{pool}}\"})'\nmin = 1\n";
        let with_fleet = format!(
            "[fleet]\nname = \"prod\"\nprometheus = \"http://p:9090/\"\ntoken_env = \"T\"\n{HEAD}{check}"
        );
        let c = compile(&with_fleet).ok().unwrap();
        let a = c.analysis.as_ref().unwrap();
        assert_eq!(a.prometheus, "http://p:9090");
        assert_eq!(a.token_env, Some(("fleet.token_env", "T".to_owned())));
        assert!(c.any_checks());
        // Its own Prometheus: the fleet's token does not go there.
        let own = format!(
            "[analysis]\nprometheus = \"http://other:9090\"\n[fleet]\nname = \"prod\"\nprometheus = \"http://p:9090\"\ntoken_env = \"T\"\n{HEAD}{check}"
        );
        let c = compile(&own).ok().unwrap();
        let a = c.analysis.as_ref().unwrap();
        assert_eq!(
            (a.prometheus.as_str(), &a.token_env),
            ("http://other:9090", &None)
        );
        assert_eq!(
            super::check_env(Some(&super::AnalysisSettings { token_env: Some(("analysis.token_env", "SY_NOT_SET_EVER".into())), ..a.clone() }), true)
                .unwrap_err(),
            "analysis.token_env names SY_NOT_SET_EVER, but SY_NOT_SET_EVER is not set — export it, or remove analysis.token_env"
        );
        let shown = errors(&format!("[analysis]\nquery_timeout = \"1s\"\n{HEAD}{check}"));
        assert!(
            shown
                .iter()
                .any(|s| s.contains("analysis.prometheus: no Prometheus to ask")),
            "{shown:?}"
        );
    }
}
