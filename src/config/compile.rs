//! Stage three: validate the raw structs and compile them into a [`Snapshot`]. Validation
//! collects every error instead of stopping at the first, each pointing at its value.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::compile_routes::*;
use super::compile_settings::*;
use super::errors::{valid_name, Errors};
use super::raw::RawConfig;
use super::ConfigError;
use super::{Compiled, RouteExtras};
use crate::config::AdminSettings;
use crate::routing::RouteTable;

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
pub(super) const MIN_HEADER_BYTES: usize = 8192;
/// Larger heads are no request's (and hyper's HTTP/2 limit is a u32).
pub(super) const MAX_HEADER_BYTES: usize = 16 << 20;
/// The longest duration any setting takes: every timer adds it to the clock, which must not
/// overflow (a year is well within any clock's range).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The most connections: past this, the semaphore's and the drain's arithmetic would not hold
/// (and a process's file descriptors run out long before).
pub(super) const MAX_CONNECTIONS: usize = 1_000_000;
/// The most a count (min_requests, health fall and rise) may be.
pub(super) const MAX_COUNT: u64 = 1_000_000_000;

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
    super::compile_session::check_cookies(&mut errs, &routes, &raw.routes, &identity.cookie);
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
    let analysis = super::compile_checks::compile_analysis(&mut errs, raw.analysis.as_ref(), fleet.as_ref());
    super::compile_checks::need_prometheus(&mut errs, raw, analysis.as_ref());
    let headers = compile_headers(&mut errs, raw);
    let overrides = compile_overrides(&mut errs, raw);
    let scope = super::targeting::FlagScope {
        base,
        env_name: env.as_deref(),
        routes: &names,
        segments: &segments,
        config_name,
    };
    let (flags, flags_from) = super::targeting::flags(&mut errs, raw, &scope, &mut context);
    // A flag depends on the user unless it is on or off for everyone.
    let depends: Vec<bool> = flags.iter().map(|f| !f.toggle.is_static()).collect();
    // Routes in scope of the same flags (all of them, most often) share one list.
    let mut lists: HashMap<Vec<usize>, (Arc<[usize]>, bool)> = HashMap::new();
    let mut over_limit = OverLimit::new();
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
        flag_header_bounds(&mut errs, &flags, route, &headers, &mut over_limit);
        // A rollout depends on the user at every step, its first included (where the file's
        // weight may still be 0).
        route.uses_key = route.split.active_pools() > 1 || extras[i].rollout.is_some() || *any_depends;
    }
    warn_over_limit(&mut errs, over_limit, &headers);

    let experiments = super::experiments::compile(&mut errs, &raw.experiments, &flags, &routes, &pools);
    let tracing = raw
        .tracing
        .as_ref()
        .and_then(|t| super::compile_settings::compile_tracing(&mut errs, t.get_ref()));
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
        analysis,
        ofrep: raw
            .ofrep
            .as_ref()
            .and_then(|o| o.get_ref().enabled.as_ref())
            .is_some_and(|e| *e.get_ref()),
        experiments: experiments.into(),
        tracing,
        flags_from: flags_from.map(|(f, _)| f),
        warnings: errs.warnings.into(),
        extras: extras.into(),
    })
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
    fn a_health_path_the_check_could_not_send_is_refused() {
        // (In TOML, `\u0007` is a control character.)
        for (path, ok) in [
            ("/healthz?full=1", true),
            ("/health check", false),
            ("healthz", false),
            ("/h\\u0007", false),
        ] {
            let src = GOOD.replace(
                "[[routes]]",
                &format!("health = {{ path = \"{path}\" }}\n\n[[routes]]"),
            );
            let errs = errors(&src);
            assert_eq!(errs.is_empty(), ok, "{path}: {errs:?}");
            if !ok {
                assert!(
                    format!("{errs:?}").contains("must be a request path"),
                    "{path}: {errs:?}"
                );
            }
        }
    }

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
