//! Compiling the tables that are not routes: listeners, admin, identity, headers, overrides,
//! notifications and the fleet.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::compile::*;
use super::errors::{env_name, valid_name, Errors};
use super::raw::{RawConfig, RawFleet, RawListen, RawNotify};
use crate::config::{FleetSettings, Listen};
use crate::notify::{Event, NotifyConfig};
use crate::routing::flags::is_token;
use crate::routing::identity::KeyFrom;
use crate::routing::{HeaderSettings, Identity, Route, MAX_FLAG_BYTES_CAP};

/// The shortest `[fleet] interval`: each round is a few Prometheus queries, and Prometheus
/// sees a change only at its next scrape (seconds), so asking faster finds nothing new.
pub const MIN_FLEET_INTERVAL: Duration = Duration::from_millis(500);
/// The longest: past it, replicas would disagree for minutes.
pub const MAX_FLEET_INTERVAL: Duration = Duration::from_secs(300);

pub(super) fn compile_fleet(
    errs: &mut Errors<'_>,
    f: &RawFleet,
    whole: &Spanned<RawFleet>,
) -> Option<FleetSettings> {
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
    let url = super::compile_checks::prometheus_url(errs, &f.prometheus, "fleet.prometheus");
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

pub(super) fn compile_notify(errs: &mut Errors<'_>, path: &str, n: &RawNotify) -> Option<NotifyConfig> {
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
        None => events.extend_from_slice(Event::DEFAULT),
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

pub(super) fn compile_identity(errs: &mut Errors<'_>, raw: &RawConfig) -> Identity {
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
pub(super) fn flag_header_bounds(
    errs: &mut Errors<'_>,
    flags: &[crate::routing::Flag],
    route: &Route,
    h: &HeaderSettings,
    over: &mut OverLimit,
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
        over.entry((which, all)).or_default().push(route.name.to_string());
    }
}

/// Routes whose flags (or payloads) header can pass `max_flag_bytes`, by header and size.
pub(super) type OverLimit = std::collections::BTreeMap<(&'static str, usize), Vec<String>>;

/// One warning per header size over the limit, naming its routes (the first three, and how
/// many more: 10,000 routes sharing the flags make one line, not 10,000).
pub(super) fn warn_over_limit(errs: &mut Errors<'_>, over: OverLimit, h: &HeaderSettings) {
    for ((which, bytes), routes) in over {
        let named: Vec<String> = routes.iter().take(3).map(|r| format!("`{r}`")).collect();
        let who = match routes.len() {
            1 => format!("route {}: its", named[0]),
            n if n <= 3 => format!("routes {}: their", named.join(", ")),
            n => format!("routes {} and {} more: their", named.join(", "), n - 3),
        };
        errs.warnings.push(format!(
            "{who} {which} header can be {bytes} bytes, over [headers] max_flag_bytes ({}): flags past it are left out of the header and counted in switchyard_flag_headers_truncated_total; scope flags to the routes that read them",
            h.max_flag_bytes
        ));
    }
}

/// `[overrides]`. The secret is read from the environment here: a variable that is unset
/// leaves signed values unverifiable (`check` warns; `run` refuses to start).
pub(super) fn compile_overrides(
    errs: &mut Errors<'_>,
    raw: &RawConfig,
) -> crate::routing::overrides::OverridePolicy {
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

pub(super) fn compile_headers(errs: &mut Errors<'_>, raw: &RawConfig) -> HeaderSettings {
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
pub(super) fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

pub(super) fn default_listen() -> Listen {
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

pub(super) fn compile_listen(
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

/// `[tracing]`: an `http(s)://` collector base (its `/v1/traces` gets the spans), a sample
/// rate in 0..=1 (default 1: every trace started here), a service name.
pub(super) fn compile_tracing(
    errs: &mut Errors<'_>,
    t: &super::raw::RawTracing,
) -> Option<crate::trace::TracingConfig> {
    let before = errs.list.len();
    let otlp = t.otlp.as_ref().and_then(|o| {
        let text = o.get_ref().trim().trim_end_matches('/');
        match text.parse::<http::Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https"))
                    && u.host().is_some()
                    && u.query().is_none() =>
            {
                Some(u)
            }
            _ => {
                errs.at(
                    o,
                    "tracing.otlp",
                    format!("`{}` is not an http:// or https:// URL", o.get_ref()),
                    "write the collector's OTLP/HTTP base URL, such as \"http://otel-collector:4318\" (spans go to its /v1/traces)",
                );
                None
            }
        }
    });
    let sample = match &t.sample {
        Some(s) if (0.0..=1.0).contains(s.get_ref()) => *s.get_ref(),
        Some(s) => {
            errs.at(
                s,
                "tracing.sample",
                format!("{} is not a share between 0 and 1", s.get_ref()),
                "write the share of traces to record, such as 0.01 for 1%",
            );
            1.0
        }
        None => 1.0,
    };
    let service_name = match &t.service_name {
        Some(n) if !n.get_ref().trim().is_empty() && n.get_ref().len() <= 128 => {
            n.get_ref().trim().to_owned()
        }
        Some(n) => {
            errs.at(
                n,
                "tracing.service_name",
                "a service name is 1 to 128 characters",
                "write the name spans are filed under, such as \"switchyard-shop\"",
            );
            String::new()
        }
        None => "switchyard".to_owned(),
    };
    (errs.list.len() == before).then_some(crate::trace::TracingConfig {
        otlp,
        sample,
        service_name,
    })
}
