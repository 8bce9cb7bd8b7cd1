//! Compiling pools and routes: endpoints, balance, health checks, splits, guards, rollouts,
//! overrides, rules and mirrors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, HeaderValue};
use toml::Spanned;

use super::compile::*;
use super::errors::{valid_name, Errors};
use super::raw::{RawGuard, RawPool, RawRollout, RawRoute};
use super::RouteExtras;
use crate::guard::{GuardConfig, RolloutConfig};
use crate::routing::flags::is_token;
use crate::routing::{Override, Route, Split};
use crate::upstream::{Balance, Endpoint, HealthCheck, Pool};

pub(super) fn compile_pool(errs: &mut Errors<'_>, path: &str, name: &str, raw: &RawPool) -> Pool {
    let mut endpoints = Vec::new();
    if raw.endpoints.get_ref().is_empty() {
        errs.at(
            &raw.endpoints,
            format!("{path}.endpoints"),
            "a pool needs at least one endpoint",
            "add an address such as \"10.0.0.11:8080\"",
        );
    }
    for (i, ep) in raw.endpoints.get_ref().iter().enumerate() {
        let text = ep.get_ref().trim();
        match text.parse::<Authority>() {
            Ok(a) if a.port_u16().is_some() && !text.contains('@') => {
                endpoints.push(Arc::new(Endpoint::new(text, a)));
            }
            _ => errs.at(
                ep,
                format!("{path}.endpoints[{i}]"),
                format!("`{text}` is not HOST:PORT"),
                "write an address such as \"10.0.0.11:8080\"",
            ),
        }
    }
    let balance = match raw.balance.as_ref() {
        None => Balance::LeastRequest,
        Some(b) => match b.get_ref().as_str() {
            "least_request" => Balance::LeastRequest,
            "round_robin" => Balance::RoundRobin,
            other => {
                errs.at(
                    b,
                    format!("{path}.balance"),
                    format!("unknown balance `{other}`"),
                    "use \"least_request\" or \"round_robin\"",
                );
                Balance::LeastRequest
            }
        },
    };
    let connect_timeout = errs.duration(
        raw.connect_timeout.as_ref(),
        &format!("{path}.connect_timeout"),
        DEFAULT_CONNECT_TIMEOUT,
    );
    let timeout = errs.duration(raw.timeout.as_ref(), &format!("{path}.timeout"), DEFAULT_TIMEOUT);
    let health = raw.health.as_ref().map(|h| {
        let h = h.get_ref();
        let hp = format!("{path}.health");
        let check_path = match &h.path {
            None => "/healthz".to_owned(),
            // What the check sends as its request target: `run` could not send anything else.
            Some(p)
                if p.get_ref().starts_with('/') && p.get_ref().parse::<http::uri::PathAndQuery>().is_ok() =>
            {
                p.get_ref().clone()
            }
            Some(p) => {
                errs.at(
                    p,
                    format!("{hp}.path"),
                    "must be a request path: start with `/`, no spaces or control characters",
                    "write a path such as \"/healthz\" (percent-encode anything else)",
                );
                "/healthz".to_owned()
            }
        };
        let mut count = |v: &Option<Spanned<i64>>, field: &str, default: u32| match v {
            None => default,
            Some(c) => match u32::try_from(*c.get_ref()) {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => {
                    errs.at(
                        c,
                        format!("{hp}.{field}"),
                        "must be between 1 and 1000",
                        "write a small count such as 3",
                    );
                    default
                }
            },
        };
        let fall = count(&h.fall, "fall", 3);
        let rise = count(&h.rise, "rise", 2);
        HealthCheck {
            path: check_path,
            interval: errs.duration(
                h.interval.as_ref(),
                &format!("{hp}.interval"),
                Duration::from_secs(5),
            ),
            timeout: errs.duration(
                h.timeout.as_ref(),
                &format!("{hp}.timeout"),
                Duration::from_secs(1),
            ),
            fall,
            rise,
        }
    });
    let mut pool = Pool::new(name, endpoints, balance, connect_timeout, timeout);
    pool.health = health;
    pool
}

pub(super) fn compile_route(
    errs: &mut Errors<'_>,
    path: &str,
    route: &Spanned<RawRoute>,
    pool_index: &HashMap<String, usize>,
    context: &mut crate::routing::ContextSpec,
    segments: &[crate::routing::unleash::model::Segment],
) -> Option<(Route, RouteExtras)> {
    let raw = route.get_ref();
    let before = errs.list.len();
    let name = raw.name.get_ref();
    if !valid_name(name) {
        errs.at(
            &raw.name,
            format!("{path}.name"),
            "route names may use only letters, digits, `_`, `-` and `.`",
            "rename the route",
        );
    }
    let host = raw.host.as_ref().and_then(|h| {
        let host = h.get_ref().trim().to_ascii_lowercase();
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        let ok = !bare.is_empty()
            && bare
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if ok {
            Some(host)
        } else {
            errs.at(
                h,
                format!("{path}.host"),
                format!("`{}` is not a host name", h.get_ref()),
                "write a name such as \"shop.example.com\" or \"*.example.com\", without port",
            );
            None
        }
    });
    let path_prefix = match &raw.path_prefix {
        None => "/".to_owned(),
        Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
        Some(p) => {
            errs.at(
                p,
                format!("{path}.path_prefix"),
                "must start with `/`",
                "write a prefix such as \"/api\"",
            );
            "/".to_owned()
        }
    };
    let mut headers = Vec::new();
    if let Some(h) = &raw.headers {
        for (k, v) in h.get_ref() {
            let name = HeaderName::from_bytes(k.as_bytes());
            let value = HeaderValue::from_str(v.get_ref());
            match (name, value) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                (Err(_), _) => errs.at(
                    v,
                    format!("{path}.headers.{k}"),
                    "not a valid header name",
                    "use letters, digits and `-`",
                ),
                (_, Err(_)) => errs.at(
                    v,
                    format!("{path}.headers.{k}"),
                    "not a valid header value",
                    "use visible ASCII characters",
                ),
            }
        }
    }
    let split = compile_split(errs, &format!("{path}.split"), &raw.split, pool_index);
    let mut overrides = Override::default();
    if let Some(o) = raw.overrides.as_ref().map(Spanned::get_ref) {
        if let Some(h) = &o.header {
            match HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(n) => overrides.header = Some(n),
                Err(_) => errs.at(
                    h,
                    format!("{path}.override.header"),
                    format!("`{}` is not a header name", h.get_ref()),
                    "use letters, digits and `-`",
                ),
            }
        }
        if let Some(c) = &o.cookie {
            if is_token(c.get_ref()) {
                overrides.cookie = Some(c.get_ref().clone());
            } else {
                errs.at(
                    c,
                    format!("{path}.override.cookie"),
                    "not a valid cookie name",
                    "use letters, digits, `_` and `-`",
                );
            }
        }
    }
    let guard = raw
        .guard
        .as_ref()
        .and_then(|g| compile_guard(errs, path, g, split.as_ref(), pool_index));
    let rollout = raw
        .rollout
        .as_ref()
        .and_then(|r| compile_rollout(errs, path, r, split.as_ref(), pool_index, guard.as_ref()));
    if let (Some(r), None) = (&raw.rollout, &raw.guard) {
        errs.at(
            r,
            format!("{path}.rollout"),
            "a rollout needs a guard to judge each step",
            "add [routes.guard] with a baseline",
        );
    }
    let mirror = raw
        .mirror
        .as_ref()
        .and_then(|m| super::mirror::compile(errs, path, m, pool_index));
    if let Some(x) = raw
        .guard
        .as_ref()
        .and_then(|g| g.get_ref().max_mismatch_rate.as_ref())
    {
        if !mirror.as_ref().is_some_and(|m| m.compare) {
            errs.at(
                x,
                format!("{path}.guard.max_mismatch_rate"),
                "judges a mirror's comparisons, and this route compares none",
                "add [routes.mirror] with the pool under test (compare = true), or remove max_mismatch_rate",
            );
        }
    }
    let rules = super::targeting::rules(
        errs,
        path,
        &raw.rules,
        &|p| {
            pool_index
                .get(p)
                .copied()
                .filter(|&i| in_split(split.as_ref(), i))
        },
        context,
        segments,
    );
    let session = raw
        .session
        .as_ref()
        .and_then(|s| super::compile_session::compile_session(errs, path, s));
    let baseline = guard.as_ref().map_or_else(
        || {
            split
                .as_ref()
                .and_then(|s| s.weights().next())
                .map_or(0, |(p, _)| p)
        },
        |g| g.baseline,
    );
    (errs.list.len() == before).then(|| {
        let route = Route {
            rules: rules.into(),
            index: 0,
            name: name.as_str().into(),
            host,
            path_prefix,
            headers,
            effective: split.clone().expect("split compiled without errors"),
            split: split.expect("split compiled without errors"),
            baseline,
            runtime: Default::default(),
            overrides,
            flags: Arc::from([]),
            uses_key: false,
            session,
        };
        (
            route,
            RouteExtras {
                guard,
                rollout,
                mirror,
            },
        )
    })
}

pub(super) fn in_split(split: Option<&Split>, pool: usize) -> bool {
    split.is_some_and(|s| s.weights().any(|(p, _)| p == pool))
}

pub(super) fn compile_guard(
    errs: &mut Errors<'_>,
    path: &str,
    raw: &Spanned<RawGuard>,
    split: Option<&Split>,
    pool_index: &HashMap<String, usize>,
) -> Option<GuardConfig> {
    let g = raw.get_ref();
    let path = format!("{path}.guard");
    let before = errs.list.len();
    let baseline = match pool_index.get(g.baseline.get_ref()) {
        Some(&b) if in_split(split, b) || split.is_none() => b,
        Some(_) => {
            errs.at(
                &g.baseline,
                format!("{path}.baseline"),
                format!("pool `{}` is not in this route's split", g.baseline.get_ref()),
                "name a pool of the split; give it weight 0 if it should only take tripped traffic",
            );
            0
        }
        None => {
            errs.at(
                &g.baseline,
                format!("{path}.baseline"),
                format!("there is no pool `{}`", g.baseline.get_ref()),
                "name a pool of the split, such as the stable one",
            );
            0
        }
    };
    let mut fraction = |v: &Option<Spanned<f64>>, field: &str, max: f64, default: Option<f64>| match v {
        None => default,
        Some(x) if *x.get_ref() > 0.0 && *x.get_ref() <= max => Some(*x.get_ref()),
        Some(x) => {
            errs.at(
                x,
                format!("{path}.{field}"),
                format!("must be above 0 and at most {max}"),
                "write a number such as 0.05",
            );
            default
        }
    };
    let max_error_rate = fraction(&g.max_error_rate, "max_error_rate", 1.0, Some(0.05)).unwrap_or(0.05);
    let max_error_ratio = fraction(&g.max_error_ratio, "max_error_ratio", f64::MAX, None);
    let max_mismatch_rate = fraction(&g.max_mismatch_rate, "max_mismatch_rate", 1.0, None);
    let max_p99 = g
        .max_p99
        .as_ref()
        .map(|d| errs.duration(Some(d), &format!("{path}.max_p99"), Duration::from_millis(500)));
    let max_p50 = g
        .max_p50
        .as_ref()
        .map(|d| errs.duration(Some(d), &format!("{path}.max_p50"), Duration::from_millis(100)));
    let window = errs.duration(
        g.window.as_ref(),
        &format!("{path}.window"),
        Duration::from_secs(30),
    );
    let min_requests = match &g.min_requests {
        None => 50,
        Some(m) => match u64::try_from(*m.get_ref()) {
            Ok(n) if (1..=MAX_COUNT).contains(&n) => n,
            _ => {
                errs.at(
                    m,
                    format!("{path}.min_requests"),
                    format!("must be between 1 and {MAX_COUNT}"),
                    "write a count such as 50: fewer requests in the window give no verdict",
                );
                50
            }
        },
    };
    let checks = g
        .checks
        .as_ref()
        .map(|c| super::compile_checks::compile_checks(errs, &path, c))
        .unwrap_or_default();
    (errs.list.len() == before).then_some(GuardConfig {
        baseline,
        max_error_rate,
        max_error_ratio,
        max_mismatch_rate,
        max_p99,
        max_p50,
        min_requests,
        window,
        dry_run: g.dry_run.as_ref().is_some_and(|d| *d.get_ref()),
        checks,
    })
}

pub(super) fn compile_rollout(
    errs: &mut Errors<'_>,
    path: &str,
    raw: &Spanned<RawRollout>,
    split: Option<&Split>,
    pool_index: &HashMap<String, usize>,
    guard: Option<&GuardConfig>,
) -> Option<RolloutConfig> {
    let r = raw.get_ref();
    let path = format!("{path}.rollout");
    let before = errs.list.len();
    let pool = match pool_index.get(r.pool.get_ref()) {
        Some(&p) if !in_split(split, p) && split.is_some() => {
            errs.at(
                &r.pool,
                format!("{path}.pool"),
                format!("pool `{}` is not in this route's split", r.pool.get_ref()),
                "add it to the split (its weight is set by the rollout's steps)",
            );
            p
        }
        Some(&p) if guard.is_some_and(|g| g.baseline == p) => {
            errs.at(
                &r.pool,
                format!("{path}.pool"),
                "the rollout's pool is the guard's baseline",
                "roll out a pool other than the baseline",
            );
            p
        }
        Some(&p) => p,
        None => {
            errs.at(
                &r.pool,
                format!("{path}.pool"),
                format!("there is no pool `{}`", r.pool.get_ref()),
                "name the pool being rolled out, such as canary",
            );
            0
        }
    };
    let mut steps = Vec::new();
    for (i, st) in r.steps.get_ref().iter().enumerate() {
        match u32::try_from(*st.get_ref()) {
            Ok(v) if (1..=100).contains(&v) && steps.last().is_none_or(|&l| v > l) => steps.push(v),
            _ => errs.at(
                st,
                format!("{path}.steps[{i}]"),
                "steps are percentages from 1 to 100, each above the one before",
                "write steps such as [5, 10, 25, 50, 100]",
            ),
        }
    }
    if r.steps.get_ref().is_empty() {
        errs.at(
            &r.steps,
            format!("{path}.steps"),
            "a rollout needs at least one step",
            "write steps such as [5, 10, 25, 50, 100]",
        );
    }
    let every = errs.duration(Some(&r.every), &format!("{path}.every"), Duration::from_secs(300));
    (errs.list.len() == before).then_some(RolloutConfig { pool, steps, every })
}

pub(super) fn compile_split(
    errs: &mut Errors<'_>,
    path: &str,
    split: &Spanned<super::raw::SpannedMap<i64>>,
    pool_index: &HashMap<String, usize>,
) -> Option<Split> {
    let mut weights = Vec::new();
    let mut ok = true;
    for (pool, weight) in split.get_ref() {
        let p = format!("{path}.{pool}");
        match pool_index.get(pool) {
            Some(&i) => weights.push((i, 0)),
            None => {
                let mut known: Vec<&str> = pool_index.keys().map(String::as_str).collect();
                known.sort_unstable();
                errs.at(
                    weight,
                    &p,
                    format!("there is no pool `{pool}`"),
                    &format!("define [pools.{pool}] or use one of: {}", known.join(", ")),
                );
                ok = false;
                continue;
            }
        }
        match u64::try_from(*weight.get_ref()) {
            Ok(w) if w <= crate::routing::split::MAX_WEIGHT => {
                weights.last_mut().expect("pushed above").1 = w
            }
            Ok(_) => {
                errs.at(
                    weight,
                    &p,
                    format!("weights are at most {}", crate::routing::split::MAX_WEIGHT),
                    "weights are relative: { a = 90, b = 10 } splits as { a = 900, b = 100 } does",
                );
                ok = false;
            }
            Err(_) => {
                errs.at(
                    weight,
                    &p,
                    "weights cannot be negative",
                    "use 0 to send this pool nothing",
                );
                ok = false;
            }
        }
    }
    if split.get_ref().is_empty() {
        errs.at(
            split,
            path,
            "the split names no pool",
            "write split = { blue = 100 }",
        );
        return None;
    }
    if ok && weights.iter().all(|&(_, w)| w == 0) {
        errs.at(
            split,
            path,
            "the weights add up to 0, so no pool would get traffic",
            "give at least one pool a positive weight",
        );
        return None;
    }
    ok.then(|| Split::new(&weights))
}
