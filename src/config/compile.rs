//! Stage three: validate the raw structs and compile them into a [`Snapshot`]. Validation
//! collects every error instead of stopping at the first, each pointing at its value.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, HeaderValue};
use toml::Spanned;

use super::raw::{RawConfig, RawFleet, RawGuard, RawListen, RawNotify, RawPool, RawRollout, RawRoute};
use super::{error_at, ConfigError};
use super::{Compiled, RouteExtras};
use crate::config::{AdminSettings, FleetSettings, Listen};
use crate::guard::{GuardConfig, RolloutConfig};
use crate::notify::{Event, NotifyConfig};
use crate::routing::flags::is_token;
use crate::routing::identity::KeyFrom;
use crate::routing::{HeaderSettings, Identity, Override, Route, RouteTable, Split, MAX_FLAG_BYTES_CAP};
use crate::upstream::{Balance, Endpoint, HealthCheck, Pool};

pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `send_timeout`.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_BACKLOG: u32 = 511;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// hyper's HTTP/1 reader cannot work with a smaller buffer.
const MIN_HEADER_BYTES: usize = 8192;
/// Larger heads are no request's (and hyper's HTTP/2 limit is a u32).
const MAX_HEADER_BYTES: usize = 16 << 20;
/// The longest duration any setting takes: every timer adds it to the clock, which must not
/// overflow (a year is well within any clock's range).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The most connections: past this, the semaphore's and the drain's arithmetic would not hold
/// (and a process's file descriptors run out long before).
const MAX_CONNECTIONS: usize = 1_000_000;
/// The most a count (min_requests, health fall and rise) may be.
const MAX_COUNT: u64 = 1_000_000_000;

/// Collects errors against one source text.
pub(super) struct Errors<'a> {
    pub(super) src: &'a str,
    pub(super) list: Vec<ConfigError>,
    /// What `check` prints as warnings: the file is valid, but something will surprise.
    pub(super) warnings: Vec<String>,
}

impl Errors<'_> {
    pub(super) fn at<T>(
        &mut self,
        value: &Spanned<T>,
        path: impl Into<String>,
        message: impl Into<String>,
        fix: &str,
    ) {
        self.list
            .push(error_at(self.src, value.span().start, path.into(), message, fix));
    }

    /// A whole percentage, 0 to 100; out of range is an error at `path` (and 0).
    pub(super) fn percent(&mut self, value: &Spanned<i64>, path: String, example: &str) -> u32 {
        match u32::try_from(*value.get_ref()) {
            Ok(v) if v <= 100 => v,
            _ => {
                self.at(
                    value,
                    path,
                    "must be between 0 and 100",
                    &format!("write a whole percentage such as {example}"),
                );
                0
            }
        }
    }

    pub(super) fn top(&mut self, path: &str, message: &str, fix: &str) {
        self.list
            .push(error_at(self.src, 0, path.to_owned(), message, fix));
    }

    fn duration(&mut self, value: Option<&Spanned<String>>, path: &str, default: Duration) -> Duration {
        let Some(v) = value else { return default };
        match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) if d > MAX_DURATION => {
                self.at(
                    v,
                    path,
                    "must be at most 365 days",
                    "use a duration such as \"30s\"; a year is more than any timer here needs",
                );
                default
            }
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.at(
                    v,
                    path,
                    "must be positive",
                    "use a duration such as \"250ms\", \"30s\" or \"5m\"",
                );
                default
            }
            Err(e) => {
                self.at(
                    v,
                    path,
                    format!("`{}` is not a duration ({e})", v.get_ref()),
                    "use a duration such as \"250ms\", \"30s\" or \"5m\"",
                );
                default
            }
        }
    }
}

/// Names that appear in URLs, headers and metric labels.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Validates `raw` (parsed from `src`) and compiles it. Relative file paths in it are taken
/// from `base`, the config file's directory.
pub fn compile(
    src: &str,
    raw: &RawConfig,
    base: &Path,
    config_name: &str,
) -> Result<Compiled, Vec<ConfigError>> {
    let mut errs = Errors {
        src,
        list: Vec::new(),
        warnings: Vec::new(),
    };

    let (listen, tls) = match &raw.listen {
        Some(l) => compile_listen(&mut errs, l, base),
        None => {
            errs.top(
                "listen",
                "the [listen] table is missing",
                "add [listen] with http = \"0.0.0.0:8080\"",
            );
            (default_listen(), None)
        }
    };
    let access_log = raw
        .log
        .as_ref()
        .and_then(|l| l.get_ref().access.as_ref())
        .is_none_or(|a| *a.get_ref());

    let mut pools = Vec::new();
    let mut pool_index = HashMap::new();
    for (name, pool) in &raw.pools {
        let path = format!("pools.{name}");
        if !valid_name(name) {
            errs.at(
                pool,
                &path,
                "pool names may use only letters, digits, `_`, `-` and `.`",
                "rename the pool",
            );
        }
        let compiled = compile_pool(&mut errs, &path, name, pool.get_ref());
        pool_index.insert(name.clone(), pools.len());
        pools.push(Arc::new(compiled));
    }

    let mut context = super::targeting::context(&mut errs, raw);
    let segments = super::targeting::segments(&mut errs, raw);
    let mut routes = Vec::new();
    let mut extras: Vec<RouteExtras> = Vec::new();
    let mut names = HashSet::new();
    let mut matchers = HashSet::new();
    for (i, route) in raw.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        let name = &route.get_ref().name;
        if !names.insert(name.get_ref().clone()) {
            errs.at(
                name,
                format!("{path}.name"),
                format!("a route named `{}` is already defined", name.get_ref()),
                "give every route a unique name",
            );
        }
        if let Some((r, x)) = compile_route(&mut errs, &path, route, &pool_index, &mut context, &segments) {
            let mut hdrs: Vec<_> = r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect();
            hdrs.sort();
            if !matchers.insert((r.host.clone(), r.path_prefix.clone(), hdrs)) {
                errs.at(
                    route,
                    &path,
                    "another route has the same host, path_prefix and headers",
                    "make the routes differ, or merge them",
                );
            }
            routes.push(r);
            extras.push(x);
        }
    }
    if raw.routes.is_empty() {
        errs.top(
            "routes",
            "no [[routes]] are defined, so every request would get 404",
            "add a [[routes]] entry with a name and a split",
        );
    }

    let identity = compile_identity(&mut errs, raw);
    let (listen_http, listen_https) = (listen.http, listen.https);
    let admin = raw.admin.as_ref().and_then(|a| {
        let a = a.get_ref();
        match a.listen.get_ref().parse::<SocketAddr>() {
            Ok(listen) => {
                if !listen.ip().is_loopback() && a.token_env.is_none() {
                    errs.at(
                        &a.listen,
                        "admin.listen",
                        format!("the admin API would listen on {listen} (off loopback) without a token"),
                        "set token_env (the variable that holds the token), or listen on 127.0.0.1",
                    );
                }
                for (key, taken) in [("listen.http", listen_http), ("listen.https", listen_https)] {
                    if taken.is_some_and(|t| same_port(t, listen)) {
                        errs.at(
                            &a.listen,
                            "admin.listen",
                            format!("{listen} is also {key}"),
                            "give the admin API a port of its own, such as 127.0.0.1:9901",
                        );
                    }
                }
                if let Some(t) = &a.token_env {
                    if t.get_ref().is_empty()
                        || !t
                            .get_ref()
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        errs.at(
                            t,
                            "admin.token_env",
                            "not an environment variable name",
                            "name the variable that holds the token, such as SWITCHYARD_ADMIN_TOKEN",
                        );
                    }
                }
                Some(AdminSettings {
                    listen,
                    token_env: a.token_env.as_ref().map(|t| t.get_ref().clone()),
                    hosts: a
                        .hosts
                        .iter()
                        .flatten()
                        .map(|h| crate::routing::normalize_host(h.get_ref()).into_owned())
                        .collect(),
                })
            }
            Err(_) => {
                errs.at(
                    &a.listen,
                    "admin.listen",
                    format!("`{}` is not an address", a.listen.get_ref()),
                    "write IP:PORT, such as \"127.0.0.1:9901\"",
                );
                None
            }
        }
    });
    let env = raw.env.as_ref().map(|e| e.get_ref().name.get_ref().clone());
    let notify = raw
        .notify
        .iter()
        .enumerate()
        .filter_map(|(i, n)| compile_notify(&mut errs, &format!("notify[{i}]"), n.get_ref()))
        .collect();
    let state_path = raw
        .state
        .as_ref()
        .and_then(|s| s.get_ref().path.as_ref())
        .and_then(|p| {
            if p.get_ref().trim().is_empty() {
                errs.at(
                    p,
                    "state.path",
                    "the path is empty",
                    "give a file path, such as \"/var/lib/switchyard/state.json\", or remove the key",
                );
                return None;
            }
            Some(base.join(p.get_ref()))
        });
    let fleet = raw
        .fleet
        .as_ref()
        .and_then(|f| compile_fleet(&mut errs, f.get_ref(), f));
    if let Some(f) = &fleet {
        // Replicas take a step from the one that took it first: to stay within one step of
        // each other, a step must last longer than it takes to see it (a scrape and a query).
        for (i, r) in raw.routes.iter().enumerate() {
            let Some(ro) = &r.get_ref().rollout else { continue };
            let every = routes
                .iter()
                .zip(&extras)
                .find(|(c, _)| *c.name == **r.get_ref().name.get_ref())
                .and_then(|(_, x)| x.rollout.as_ref())
                .map(|c| c.every);
            if every.is_some_and(|e| e < f.interval * 4) {
                errs.at(
                    &ro.get_ref().every,
                    format!("routes[{i}].rollout.every"),
                    format!(
                        "with [fleet], a rollout step must last at least 4 × fleet.interval ({:?})",
                        f.interval * 4
                    ),
                    "lengthen every, or shorten fleet.interval, so the replicas see each step before the next",
                );
            }
        }
    }
    let headers = compile_headers(&mut errs, raw);
    let overrides = compile_overrides(&mut errs, raw);
    let (flags, flags_from) = super::targeting::flags(
        &mut errs,
        raw,
        base,
        env.as_deref(),
        &names,
        &mut context,
        &segments,
        config_name,
    );
    // A flag depends on the user unless it is on or off for everyone.
    let depends: Vec<bool> = flags.iter().map(|f| !f.toggle.is_static()).collect();
    // Routes in scope of the same flags (all of them, most often) share one list.
    let mut lists: HashMap<Vec<usize>, (Arc<[usize]>, bool)> = HashMap::new();
    for (i, route) in routes.iter_mut().enumerate() {
        route.index = i;
        let list: Vec<usize> = flags
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                f.routes
                    .as_ref()
                    .is_none_or(|r| r.iter().any(|n| **n == *route.name))
            })
            .map(|(i, _)| i)
            .collect();
        let (shared, any_depends) = lists
            .entry(list)
            .or_insert_with_key(|l| (l.as_slice().into(), l.iter().any(|&f| depends[f])));
        route.flags = shared.clone();
        flag_header_bounds(&mut errs, &flags, route, &headers);
        // A rollout depends on the user at every step, its first included (where the file's
        // weight may still be 0).
        route.uses_key = route.split.active_pools() > 1 || extras[i].rollout.is_some() || *any_depends;
    }

    let experiments = super::experiments::compile(&mut errs, &raw.experiments, &flags, &routes, &pools);
    if !errs.list.is_empty() {
        errs.list.sort_by_key(|e| (e.line, e.col));
        return Err(errs.list);
    }
    let table = RouteTable::build(&routes);
    let pool_names = pools.iter().map(|p| p.name.clone()).collect();
    Ok(Compiled {
        routing: crate::routing::Table {
            routes: routes.into_iter().map(Arc::new).collect(),
            identity,
            flags: flags.into(),
            env,
            headers,
            context: Arc::new(context),
            overrides: Arc::new(overrides),
            pool_names,
            table: Arc::new(table),
        },
        revision: match &flags_from {
            Some((_, file)) => super::targeting::combined_revision(src, file),
            None => revision(src),
        },
        listen,
        access_log,
        tls,
        pools,
        admin,
        state_path,
        notify,
        fleet,
        ofrep: raw
            .ofrep
            .as_ref()
            .and_then(|o| o.get_ref().enabled.as_ref())
            .is_some_and(|e| *e.get_ref()),
        experiments: experiments.into(),
        flags_from: flags_from.map(|(f, _)| f),
        warnings: errs.warnings.into(),
        extras: extras.into(),
    })
}

/// Whether `name` can be an environment variable's name.
fn env_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The shortest `[fleet] interval`: each round is a few Prometheus queries, and Prometheus
/// sees a change only at its next scrape (seconds), so asking faster finds nothing new.
pub const MIN_FLEET_INTERVAL: Duration = Duration::from_millis(500);
/// The longest: past it, replicas would disagree for minutes.
pub const MAX_FLEET_INTERVAL: Duration = Duration::from_secs(300);

fn compile_fleet(errs: &mut Errors<'_>, f: &RawFleet, whole: &Spanned<RawFleet>) -> Option<FleetSettings> {
    let before = errs.list.len();
    let name = match &f.name {
        Some(n) if valid_name(n.get_ref()) && n.get_ref().len() <= 64 => n.get_ref().clone(),
        Some(n) => {
            errs.at(
                n,
                "fleet.name",
                format!("`{}` is not a fleet name", n.get_ref()),
                "use letters, digits, '_', '-' and '.', at most 64, such as \"shop-prod\"",
            );
            String::new()
        }
        None => {
            errs.at(
                whole,
                "fleet.name",
                "a fleet needs a name",
                "add name = \"shop-prod\" (the same on every replica of this fleet, another in each other environment): replicas read only the series of their own fleet, so a staging replica never trips production",
            );
            String::new()
        }
    };
    let url = f.prometheus.get_ref().trim().trim_end_matches('/').to_owned();
    match url.parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some()
                && u.query().is_none() => {}
        _ => errs.at(
            &f.prometheus,
            "fleet.prometheus",
            format!("`{}` is not an http:// or https:// URL", f.prometheus.get_ref()),
            "write Prometheus's base URL, such as \"http://prometheus:9090\"",
        ),
    }
    let selector = f
        .selector
        .as_ref()
        .map_or(String::new(), |s| s.get_ref().trim().to_owned());
    if let Some(s) = &f.selector {
        let t = s.get_ref();
        // Matchers go between braces in every query: braces or a metric name would break out.
        let ok = t.contains(['=', '~']) && !t.contains(['{', '}', '\n']);
        if !ok {
            errs.at(
                s,
                "fleet.selector",
                "not a list of label matchers",
                "write matchers as inside PromQL braces, such as 'job=\"switchyard\", namespace=\"shop\"'",
            );
        }
    }
    let interval = errs.duration(f.interval.as_ref(), "fleet.interval", Duration::from_secs(5));
    if let Some(v) = &f.interval {
        if !(MIN_FLEET_INTERVAL..=MAX_FLEET_INTERVAL).contains(&interval) {
            errs.at(
                v,
                "fleet.interval",
                "must be between 500ms and 5m",
                "use a duration such as \"5s\": Prometheus sees a change only at its next scrape, so asking more often finds nothing new",
            );
        }
    }
    let query_timeout = errs.duration(
        f.query_timeout.as_ref(),
        "fleet.query_timeout",
        Duration::from_secs(2),
    );
    if let Some(v) = &f.query_timeout {
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&query_timeout) {
            errs.at(
                v,
                "fleet.query_timeout",
                "must be between 100ms and 60s",
                "use a duration such as \"2s\"",
            );
        }
    }
    if let Some(t) = &f.token_env {
        if !env_name(t.get_ref()) {
            errs.at(
                t,
                "fleet.token_env",
                "not an environment variable name",
                "name the variable that holds Prometheus's bearer token, such as PROMETHEUS_TOKEN",
            );
        }
    }
    (errs.list.len() == before).then(|| FleetSettings {
        name,
        prometheus: url,
        selector,
        interval,
        query_timeout,
        token_env: f.token_env.as_ref().map(|t| t.get_ref().clone()),
    })
}

fn compile_notify(errs: &mut Errors<'_>, path: &str, n: &RawNotify) -> Option<NotifyConfig> {
    let before = errs.list.len();
    let url = match n.url.get_ref().parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => Some(u),
        _ => {
            errs.at(
                &n.url,
                format!("{path}.url"),
                format!("`{}` is not an http:// or https:// URL", n.url.get_ref()),
                "write the webhook's URL, such as \"https://hooks.slack.com/services/...\"",
            );
            None
        }
    };
    let mut events = Vec::new();
    match &n.events {
        None => events.extend(Event::ALL),
        Some(list) => {
            for (i, e) in list.iter().enumerate() {
                match Event::from_name(e.get_ref()) {
                    Some(ev) => events.push(ev),
                    None => {
                        let known: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
                        errs.at(
                            e,
                            format!("{path}.events[{i}]"),
                            format!("`{}` is not an event", e.get_ref()),
                            &format!("use one of: {}", known.join(", ")),
                        );
                    }
                }
            }
        }
    }
    if let Some(s) = &n.secret_env {
        let name = s.get_ref();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            errs.at(
                s,
                format!("{path}.secret_env"),
                "not an environment variable name",
                "name the variable that holds the secret, such as SWITCHYARD_WEBHOOK_SECRET",
            );
        }
    }
    let timeout = errs.duration(
        n.timeout.as_ref(),
        &format!("{path}.timeout"),
        Duration::from_secs(5),
    );
    (errs.list.len() == before).then(|| NotifyConfig {
        url: url.expect("checked"),
        events,
        secret_env: n.secret_env.as_ref().map(|s| s.get_ref().clone()),
        timeout,
    })
}

fn compile_identity(errs: &mut Errors<'_>, raw: &RawConfig) -> Identity {
    let mut id = Identity::default();
    let Some(r) = raw.identity.as_ref().map(Spanned::get_ref) else {
        return id;
    };
    if let Some(from) = &r.from {
        id.from.clear();
        for (i, f) in from.get_ref().iter().enumerate() {
            let path = format!("identity.from[{i}]");
            let fix = "write \"header:NAME\", \"cookie:NAME\" or \"query:NAME\"";
            match f.get_ref().split_once(':') {
                Some(("header", h)) => match HeaderName::from_bytes(h.trim().as_bytes()) {
                    Ok(h) => id.from.push(KeyFrom::Header(h)),
                    Err(_) => errs.at(f, path, format!("`{h}` is not a header name"), fix),
                },
                Some(("cookie", c)) if is_token(c.trim()) => {
                    id.from.push(KeyFrom::Cookie(c.trim().to_owned()))
                }
                Some(("query", q)) if !q.trim().is_empty() => {
                    id.from.push(KeyFrom::Query(q.trim().to_owned()))
                }
                _ => errs.at(f, path, format!("`{}` is not a key source", f.get_ref()), fix),
            }
        }
    }
    if let Some(c) = &r.cookie {
        if is_token(c.get_ref()) {
            id.cookie = c.get_ref().clone();
        } else {
            errs.at(
                c,
                "identity.cookie",
                "not a valid cookie name",
                "use letters, digits, `_` and `-`",
            );
        }
    }
    if let Some(s) = &r.salt {
        id.salt = s.get_ref().clone();
    }
    id
}

/// A route whose flags header (or payloads header) can grow past `max_flag_bytes` is warned
/// of: the proxy would leave flags out of it. Past [`MAX_FLAG_BYTES_CAP`] from the TOML's own
/// flags it is an error; flags from a feature document only warn (a document the operator does
/// not write, polled from a server, must not stop every later reload).
fn flag_header_bounds(
    errs: &mut Errors<'_>,
    flags: &[crate::routing::Flag],
    route: &Route,
    h: &HeaderSettings,
) {
    let worst = |only_toml: bool| {
        let (mut longest, mut payloads) = (0usize, 0usize);
        for &f in route
            .flags
            .iter()
            .filter(|&&f| !(only_toml && flags[f].from_file))
        {
            let (item, payload) = flags[f].longest_items();
            longest += item + if longest > 0 { 2 } else { 0 };
            if payload > 0 {
                payloads += payload + if payloads > 0 { 2 } else { 0 };
            }
        }
        (
            longest.max(payloads),
            if payloads > longest { "payloads" } else { "flags" },
        )
    };
    let (toml, which) = worst(true);
    if toml > MAX_FLAG_BYTES_CAP {
        errs.top(
            &format!("routes[{}]", route.index),
            &format!(
                "route `{}`: its {which} header can be {toml} bytes, over the cap of {MAX_FLAG_BYTES_CAP}",
                route.name
            ),
            "scope flags to the routes that read them (`routes = [...]` on a flag), or shorten names and payloads",
        );
        return;
    }
    let (all, which) = worst(false);
    if all > h.max_flag_bytes {
        errs.warnings.push(format!(
            "route `{}`: its {which} header can be {all} bytes, over [headers] max_flag_bytes ({}): flags past it are left out of the header and counted in switchyard_flag_headers_truncated_total; scope flags to the routes that read them",
            route.name, h.max_flag_bytes
        ));
    }
}

/// `[overrides]`. The secret is read from the environment here: a variable that is unset
/// leaves signed values unverifiable (`check` warns; `run` refuses to start).
fn compile_overrides(errs: &mut Errors<'_>, raw: &RawConfig) -> crate::routing::overrides::OverridePolicy {
    let mut policy = crate::routing::overrides::OverridePolicy::default();
    let Some(o) = raw.overrides.as_ref().map(Spanned::get_ref) else {
        return policy;
    };
    if let Some(from) = &o.from {
        policy.from = from
            .iter()
            .filter_map(|c| {
                let parsed = crate::routing::unleash::ops::Cidr::parse(c.get_ref());
                if parsed.is_none() {
                    errs.at(
                        c,
                        "overrides.from",
                        format!("`{}` is not an address range", c.get_ref()),
                        "write a CIDR such as \"10.0.0.0/8\" or an address",
                    );
                }
                parsed
            })
            .collect();
    }
    if let Some(var) = &o.secret_env {
        if !env_name(var.get_ref()) {
            errs.at(
                var,
                "overrides.secret_env",
                format!("`{}` is not an environment variable's name", var.get_ref()),
                "use letters, digits and _, such as SWITCHYARD_OVERRIDE_SECRET",
            );
        } else {
            policy.secret_env = Some(var.get_ref().clone());
            policy.key = std::env::var(var.get_ref())
                .ok()
                .filter(|s| !s.is_empty())
                .map(|s| Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.as_bytes())));
        }
    }
    if let Some(t) = &o.to_tripped {
        policy.to_tripped = *t.get_ref();
    }
    policy
}

fn compile_headers(errs: &mut Errors<'_>, raw: &RawConfig) -> HeaderSettings {
    let mut set = HeaderSettings::default();
    let Some(h) = raw.headers.as_ref().map(Spanned::get_ref) else {
        return set;
    };
    for (value, slot, path) in [
        (&h.flags, &mut set.flags, "headers.flags"),
        (&h.flag_payloads, &mut set.flag_payloads, "headers.flag_payloads"),
        (&h.pool, &mut set.pool, "headers.pool"),
        (&h.bucket, &mut set.bucket, "headers.bucket"),
    ] {
        let Some(v) = value else { continue };
        if v.get_ref().is_empty() {
            *slot = None;
            continue;
        }
        match HeaderName::from_bytes(v.get_ref().as_bytes()) {
            Ok(n) => *slot = Some(n),
            Err(_) => errs.at(
                v,
                path,
                format!("`{}` is not a header name", v.get_ref()),
                "use letters, digits and `-`, or \"\" to send no such header",
            ),
        }
    }
    for (value, slot) in [
        (&h.forwarded, &mut set.forwarded),
        (&h.via, &mut set.via),
        (&h.request_id, &mut set.request_id),
    ] {
        if let Some(v) = value {
            *slot = *v.get_ref();
        }
    }
    if let Some(v) = &h.max_flag_bytes {
        match usize::try_from(*v.get_ref()) {
            Ok(n) if (64..=MAX_FLAG_BYTES_CAP).contains(&n) => set.max_flag_bytes = n,
            _ => errs.at(
                v,
                "headers.max_flag_bytes",
                format!("must be between 64 and {MAX_FLAG_BYTES_CAP}"),
                "upstreams refuse long header lines (nginx at 8 KiB by default): keep it under theirs",
            ),
        }
    }
    set
}

/// Whether two listen addresses would take the same port (an unspecified address takes it on
/// every interface).
fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn default_listen() -> Listen {
    Listen {
        http: None,
        https: None,
        max_connections: DEFAULT_MAX_CONNECTIONS,
        header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        client_body_timeout: DEFAULT_CLIENT_BODY_TIMEOUT,
        send_timeout: DEFAULT_SEND_TIMEOUT,
        backlog: DEFAULT_BACKLOG,
        fast_path: true,
    }
}

fn compile_listen(
    errs: &mut Errors<'_>,
    l: &Spanned<RawListen>,
    base: &Path,
) -> (Listen, Option<Arc<rustls::ServerConfig>>) {
    let raw = l.get_ref();
    let mut addr = |v: &Option<Spanned<String>>, path: &str| {
        v.as_ref().and_then(|v| match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errs.at(
                    v,
                    path,
                    format!("`{}` is not an address", v.get_ref()),
                    "write IP:PORT, such as \"0.0.0.0:8080\"",
                );
                None
            }
        })
    };
    let http = addr(&raw.http, "listen.http");
    let https = addr(&raw.https, "listen.https");
    if raw.http.is_none() && raw.https.is_none() {
        errs.at(
            l,
            "listen",
            "neither http nor https is set, so nothing would be served",
            "add http = \"0.0.0.0:8080\"",
        );
    }
    let mut tls = None;
    match (&raw.https, &raw.tls) {
        (Some(h), None) => errs.at(
            h,
            "listen.https",
            "https needs a certificate",
            "add tls = { cert = \"server.pem\", key = \"server.key\" }",
        ),
        (None, Some(t)) => errs.at(
            t,
            "listen.tls",
            "tls is set but there is no https listener",
            "add https = \"0.0.0.0:8443\" or remove tls",
        ),
        (Some(_), Some(t)) => {
            let t = t.get_ref();
            let cert = base.join(t.cert.get_ref());
            let key = base.join(t.key.get_ref());
            match crate::tls::server_config(&cert, &key) {
                Ok(c) => tls = Some(Arc::new(c)),
                Err(crate::tls::TlsError::Cert(m)) => errs.at(
                    &t.cert,
                    "listen.tls.cert",
                    m,
                    "give the path of a PEM certificate chain, relative to this file",
                ),
                Err(crate::tls::TlsError::Key(m)) => errs.at(
                    &t.key,
                    "listen.tls.key",
                    m,
                    "give the path of the PEM private key, relative to this file",
                ),
            }
        }
        (None, None) => {}
    }
    if let (Some(h), Some(s), Some(raw_s)) = (http, https, &raw.https) {
        if same_port(h, s) {
            errs.at(
                raw_s,
                "listen.https",
                format!("{s} is also listen.http"),
                "give https a port of its own, such as 0.0.0.0:8443",
            );
        }
    }
    let mut listen = default_listen();
    listen.http = http;
    listen.https = https;
    if let Some(m) = &raw.max_connections {
        match usize::try_from(*m.get_ref()) {
            Ok(n) if (1..=MAX_CONNECTIONS).contains(&n) => listen.max_connections = n,
            _ => errs.at(
                m,
                "listen.max_connections",
                format!("must be between 1 and {MAX_CONNECTIONS}"),
                "use a number such as 10000 (and raise the file descriptor limit to match)",
            ),
        }
    }
    if let Some(m) = &raw.max_header_bytes {
        match usize::try_from(*m.get_ref()) {
            Ok(n) if (MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&n) => listen.max_header_bytes = n,
            _ => errs.at(
                m,
                "listen.max_header_bytes",
                format!("must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}"),
                "use a number such as 65536",
            ),
        }
    }
    listen.header_read_timeout = errs.duration(
        raw.header_read_timeout.as_ref(),
        "listen.header_read_timeout",
        DEFAULT_HEADER_READ_TIMEOUT,
    );
    listen.drain_timeout = errs.duration(
        raw.drain_timeout.as_ref(),
        "listen.drain_timeout",
        DEFAULT_DRAIN_TIMEOUT,
    );
    listen.client_body_timeout = errs.duration(
        raw.client_body_timeout.as_ref(),
        "listen.client_body_timeout",
        DEFAULT_CLIENT_BODY_TIMEOUT,
    );
    listen.send_timeout = errs.duration(
        raw.send_timeout.as_ref(),
        "listen.send_timeout",
        DEFAULT_SEND_TIMEOUT,
    );
    if let Some(b) = &raw.backlog {
        match u32::try_from(*b.get_ref()) {
            Ok(n) if (1..=65535).contains(&n) => listen.backlog = n,
            _ => errs.at(
                b,
                "listen.backlog",
                "must be between 1 and 65535",
                "use a number such as 511 (the kernel caps it at net.core.somaxconn)",
            ),
        }
    }
    if let Some(f) = &raw.fast_path {
        listen.fast_path = *f.get_ref();
    }
    (listen, tls)
}

fn compile_pool(errs: &mut Errors<'_>, path: &str, name: &str, raw: &RawPool) -> Pool {
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
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                errs.at(
                    p,
                    format!("{hp}.path"),
                    "must start with `/`",
                    "write a path such as \"/healthz\"",
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

fn compile_route(
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

fn in_split(split: Option<&Split>, pool: usize) -> bool {
    split.is_some_and(|s| s.weights().any(|(p, _)| p == pool))
}

fn compile_guard(
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
    })
}

fn compile_rollout(
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

fn compile_split(
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

/// A short fingerprint of a config text, shown as its revision and used to tell whether a
/// changed file really changed.
pub fn revision(src: &str) -> String {
    // murmur3 is already the project's stable hash; two seeds give 64 bits.
    let hash = |seed| crate::routing::bucket::murmur3_32(src.as_bytes(), seed);
    format!("{:08x}{:08x}", hash(0), hash(1))
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, ConfigError};
    use std::path::Path;

    fn errors(src: &str) -> Vec<ConfigError> {
        let raw = parse(src).0.expect("parses");
        match super::compile(src, &raw, Path::new("."), "t.toml") {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }

    const GOOD: &str = r#"
[listen]
http = "127.0.0.1:8080"

[pools.blue]
endpoints = ["127.0.0.1:9001", "localhost:9002"]
balance = "round_robin"
timeout = "5s"

[[routes]]
name = "web"
host = "*.Example.com"
split = { blue = 100 }
"#;

    #[test]
    fn a_good_file_compiles() {
        let raw = parse(GOOD).0.unwrap();
        let snap = super::compile(GOOD, &raw, Path::new("."), "t.toml").unwrap();
        assert_eq!(snap.routes[0].host.as_deref(), Some("*.example.com"));
        assert_eq!(snap.pools[0].timeout, std::time::Duration::from_secs(5));
        assert_eq!(snap.pools[0].connect_timeout, super::DEFAULT_CONNECT_TIMEOUT);
    }

    #[test]
    fn what_run_cannot_hold_is_a_check_error() {
        let src = r#"
[listen]
http = "0.0.0.0:8080"
https = "127.0.0.1:8080"
max_connections = 9223372036854775807
max_header_bytes = 4294967296
tls = { cert = "x.pem", key = "x.key" }

[admin]
listen = "0.0.0.0:8080"

[pools.blue]
endpoints = ["127.0.0.1:9001"]
timeout = "300000000000y"
health = { path = "/h", fall = 100000 }

[pools.green]
endpoints = ["127.0.0.1:9002"]

[[routes]]
name = "web"
split = { blue = 100, green = 0 }
guard = { baseline = "blue", min_requests = 10000000000 }
"#;
        let shown: Vec<String> = errors(src).iter().map(|e| e.to_string()).collect();
        let expect = [
            ("4:9 listen.https", "127.0.0.1:8080 is also listen.http"),
            ("5:19 listen.max_connections", "between 1 and 1000000"),
            ("6:20 listen.max_header_bytes", "between 8192 and 16777216"),
            ("10:10 admin.listen", "off loopback) without a token"),
            ("10:10 admin.listen", "0.0.0.0:8080 is also listen.http"),
            ("14:11 pools.blue.timeout", "at most 365 days"),
            ("15:32 pools.blue.health.fall", "between 1 and 1000"),
            ("23:45 routes[0].guard.min_requests", "between 1 and 1000000000"),
        ];
        for (at, what) in expect {
            assert!(
                shown.iter().any(|s| s.starts_with(at) && s.contains(what)),
                "missing {at} {what} in {shown:#?}"
            );
        }
        // A list of choices comes in one order, whatever the hash map's.
        let src = "[listen]\nhttp = \"127.0.0.1:1\"\n[pools.c]\nendpoints = [\"127.0.0.1:2\"]\n[pools.a]\nendpoints = [\"127.0.0.1:2\"]\n[pools.b]\nendpoints = [\"127.0.0.1:2\"]\n[[routes]]\nname = \"r\"\nsplit = { d = 1 }\n";
        let shown = errors(src)[0].to_string();
        assert!(shown.contains("use one of: a, b, c"), "{shown}");
        // A distinct port, on loopback, with a token variable is fine.
        let ok = GOOD.replace(
            "[pools.blue]",
            "[admin]\nlisten = \"0.0.0.0:9901\"\ntoken_env = \"SY_TOKEN\"\n\n[pools.blue]",
        );
        assert!(errors(&ok).is_empty(), "{:?}", errors(&ok));
        let bad = ok.replace("SY_TOKEN", "SY TOKEN");
        assert!(errors(&bad)[0]
            .to_string()
            .contains("not an environment variable name"));
    }

    #[test]
    fn every_semantic_error_is_reported_with_its_line() {
        let src = r#"
[listen]
http = "nonsense"

[pools.blue]
endpoints = ["no-port"]
timeout = "-1s"

[[routes]]
name = "web"
path_prefix = "api"
split = { bleu = 100 }

[[routes]]
name = "web"
split = { blue = -5 }
"#;
        let errs = errors(src);
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let expect = [
            ("3:8 listen.http", "not an address"),
            ("6:14 pools.blue.endpoints[0]", "not HOST:PORT"),
            ("7:11 pools.blue.timeout", "not a duration"),
            ("11:15 routes[0].path_prefix", "must start with"),
            ("12:18 routes[0].split.bleu", "there is no pool `bleu`"),
            ("15:8 routes[1].name", "already defined"),
            ("16:18 routes[1].split.blue", "cannot be negative"),
        ];
        for (at, what) in expect {
            assert!(
                shown.iter().any(|s| s.starts_with(at) && s.contains(what)),
                "missing {at} {what} in {shown:#?}"
            );
        }
        assert!(
            shown.iter().all(|s| s.contains(" — ")),
            "every error says how to fix it: {shown:#?}"
        );
    }

    #[test]
    fn zero_total_weight_and_duplicate_matchers_are_errors() {
        let src = "[listen]\nhttp = \"127.0.0.1:1\"\n[pools.a]\nendpoints = [\"127.0.0.1:2\"]\n[[routes]]\nname = \"x\"\nsplit = { a = 0 }\n[[routes]]\nname = \"y\"\nsplit = { a = 1 }\n[[routes]]\nname = \"z\"\nsplit = { a = 1 }\n";
        let shown: Vec<String> = errors(src).iter().map(|e| e.to_string()).collect();
        assert!(shown.iter().any(|s| s.contains("add up to 0")), "{shown:?}");
        assert!(
            shown
                .iter()
                .any(|s| s.contains("same host, path_prefix and headers")),
            "{shown:?}"
        );
    }

    #[test]
    fn weights_are_bounded_so_no_arithmetic_overflows() {
        let src = "[listen]\nhttp = \"127.0.0.1:1\"\n[pools.a]\nendpoints = [\"127.0.0.1:2\"]\n[pools.b]\nendpoints = [\"127.0.0.1:3\"]\n[[routes]]\nname = \"x\"\nsplit = { a = 1000000, b = 1000001 }\n";
        let errs = errors(src);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "routes[0].split.b");
        assert!(errs[0].to_string().contains("at most 1000000"), "{}", errs[0]);
    }

    #[test]
    fn headers_can_be_renamed_or_left_out() {
        let base = "[listen]\nhttp = \"127.0.0.1:1\"\n[pools.a]\nendpoints = [\"127.0.0.1:2\"]\n[[routes]]\nname = \"x\"\nsplit = { a = 1 }\n";
        let src =
            format!("{base}[headers]\nflags = \"x-flags\"\npool = \"\"\nforwarded = false\nvia = false\n");
        let raw = parse(&src).0.unwrap();
        let h = super::compile(&src, &raw, Path::new("."), "t.toml")
            .unwrap()
            .routing
            .headers;
        assert_eq!(h.flags.as_ref().map(|n| n.as_str()), Some("x-flags"));
        assert_eq!(h.pool, None);
        assert_eq!(h.bucket.as_ref().map(|n| n.as_str()), Some("x-switchyard-bucket"));
        assert!(!h.forwarded && !h.via && h.request_id);

        let errs = errors(&format!("{base}[headers]\nbucket = \"x bucket\"\n"));
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "headers.bucket");
        assert!(
            errs[0].to_string().contains("or \"\" to send no such header"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn https_without_a_certificate_is_an_error() {
        let src = "[listen]\nhttps = \"127.0.0.1:1\"\n[pools.a]\nendpoints = [\"127.0.0.1:2\"]\n[[routes]]\nname = \"x\"\nsplit = { a = 1 }\n";
        let errs = errors(src);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "listen.https");
    }
}
