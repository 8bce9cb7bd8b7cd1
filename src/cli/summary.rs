//! `check`'s summary of a valid config.

use std::net::SocketAddr;
use std::path::Path;

use crate::runtime::Snapshot;

/// What `check` prints of a valid config: its listeners, pools, routes, flags and headers.
pub fn summary(path: &Path, snap: &Snapshot) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{}: ok (revision {})", path.display(), snap.revision);
    let addr = |a: Option<SocketAddr>| a.map_or("-".to_owned(), |a| a.to_string());
    let _ = writeln!(
        s,
        "listen: http {}, https {}",
        addr(snap.listen.http),
        addr(snap.listen.https)
    );
    let _ = writeln!(s, "{}", headers_summary(&snap.headers));
    let _ = writeln!(s, "pools ({}):", snap.pools.len());
    for p in &snap.pools {
        let eps: Vec<&str> = p.endpoints.iter().map(|e| &*e.address).collect();
        let health = p.health.as_ref().map_or(String::new(), |h| {
            format!(", health {} every {:?}", h.path, h.interval)
        });
        let _ = writeln!(s, "  {:<12} {:?}, {}{health}", p.name, p.balance, eps.join(", "));
    }
    let _ = writeln!(s, "routes ({}):", snap.routes.len());
    for r in &snap.routes {
        let split: Vec<String> = r
            .split
            .weights()
            .map(|(p, w)| format!("{}={w}", snap.pools[p].name))
            .collect();
        let headers: Vec<String> = r
            .headers
            .iter()
            .map(|(k, v)| format!(" {k}={}", v.to_str().unwrap_or("?")))
            .collect();
        let _ = writeln!(
            s,
            "  {:<12} host={} prefix={}{} split {}",
            r.name,
            r.host.as_deref().unwrap_or("*"),
            r.path_prefix,
            headers.concat(),
            split.join(" ")
        );
        for rule in r.rules.iter() {
            let _ = writeln!(
                s,
                "  {:<12} rule \"{}\": {} constraint{} -> {}",
                "",
                rule.name,
                rule.conds.len(),
                if rule.conds.len() == 1 { "" } else { "s" },
                snap.pools[rule.pool].name
            );
        }
        if let Some(g) = snap.guard(r) {
            let p99 = [("p99", g.max_p99), ("p50", g.max_p50)]
                .iter()
                .filter_map(|(n, d)| d.map(|d| format!(", {n} <= {d:?}")))
                .collect::<String>();
            let _ = writeln!(
                s,
                "  {:<12} guard: baseline {}, errors <= {}%{p99}, >= {} requests in {:?}{}",
                "",
                snap.pools[g.baseline].name,
                g.max_error_rate * 100.0,
                g.min_requests,
                g.window,
                if g.dry_run { " (dry run)" } else { "" }
            );
            for c in g.checks.iter() {
                let _ = writeln!(
                    s,
                    "  {:<12} check {}: {} every {:?}, {} failure(s) in a row trip, no data {}",
                    "",
                    c.name,
                    c.condition(),
                    c.interval,
                    c.failure_limit,
                    if c.no_data_fails { "fails" } else { "holds" }
                );
            }
        }
        if let Some(ro) = snap.rollout(r) {
            let _ = writeln!(
                s,
                "  {:<12} rollout: {} through {:?}% every {:?}",
                "", snap.pools[ro.pool].name, ro.steps, ro.every
            );
        }
        if let Some(se) = r.session.as_deref() {
            let _ = writeln!(
                s,
                "  {:<12} session: cookie {}, idle {}, max_age {}, signed with {} (pools at weight 0 keep their pinned users)",
                "",
                se.cookie,
                humantime::format_duration(se.idle),
                humantime::format_duration(se.max_age),
                se.secret_env
            );
        }
    }
    let state = snap
        .state_path
        .clone()
        .unwrap_or_else(|| crate::runtime::overlay::state_path(path));
    let _ = writeln!(
        s,
        "state: {} (audit trail: {})",
        state.display(),
        crate::audit::path_for(&state).display()
    );
    if let Some(t) = &snap.tracing {
        let _ = writeln!(
            s,
            "tracing: traceparent kept or started; {}",
            match &t.otlp {
                Some(u) => format!(
                    "spans of {}% of the traces started here (and of clients' sampled ones) to {} (its /v1/traces) as {}",
                    format!("{:.4}", t.sample * 100.0)
                        .trim_end_matches('0')
                        .trim_end_matches('.'),
                    crate::notify::redact_url(u),
                    t.service_name
                ),
                None => "nothing exported (no otlp)".to_owned(),
            }
        );
    }
    for n in &snap.notify {
        let events: Vec<&str> = n.events.iter().map(|e| e.name()).collect();
        let _ = writeln!(
            s,
            "notify: {} ({}){}",
            crate::notify::redact_url(&n.url),
            events.join(", "),
            n.secret_env
                .as_deref()
                .map_or(String::new(), |v| format!(", signed with ${v}"))
        );
    }
    if snap.ofrep {
        let _ = writeln!(
            s,
            "ofrep: POST /ofrep/v1/evaluate/flags[/KEY] on the proxy's listeners ({} flags)",
            snap.flags.len()
        );
    }
    if let Some(f) = &snap.fleet {
        let _ = writeln!(
            s,
            "fleet: {} every {:?}{}{}: replicas agree on trips and rollout steps, and guards judge the fleet's numbers too",
            f.prometheus,
            f.interval,
            if f.selector.is_empty() { String::new() } else { format!(", series {{{}}}", f.selector) },
            f.token_env.as_deref().map_or(String::new(), |v| format!(", token ${v}"))
        );
    }
    if let Some(a) = snap.analysis.as_ref().filter(|_| snap.any_checks()) {
        let _ = writeln!(
            s,
            "analysis: guards' checks ask {} (timeout {:?}{})",
            a.prometheus,
            a.query_timeout,
            a.token_env
                .as_ref()
                .map_or(String::new(), |(_, v)| format!(", token ${v}"))
        );
    }
    if !snap.flags.is_empty() {
        let _ = writeln!(s, "flags ({}):", snap.flags.len());
        for f in snap.flags.iter() {
            let variants: Vec<String> = f
                .def
                .variants
                .iter()
                .map(|v| format!("{}={}", v.name, v.weight))
                .collect();
            let _ = writeln!(
                s,
                "  {:<20} {}{}{}",
                f.name,
                f.summary(),
                if variants.is_empty() {
                    String::new()
                } else {
                    format!(", variants {}", variants.join(" "))
                },
                if f.from_file { " (flags_from)" } else { "" }
            );
        }
    }
    s
}

/// The headers the proxy adds, as `[headers]` sets them, and those it leaves out.
fn headers_summary(h: &crate::routing::HeaderSettings) -> String {
    let (mut sent, mut left_out) = (Vec::new(), Vec::new());
    for (what, name) in [
        ("pool", &h.pool),
        ("bucket", &h.bucket),
        ("flags", &h.flags),
        ("flag payloads", &h.flag_payloads),
    ] {
        match name {
            Some(n) => sent.push(format!("{what} {n}")),
            None => left_out.push(what.to_owned()),
        }
    }
    for (what, on) in [
        ("x-forwarded-*", h.forwarded),
        ("via", h.via),
        ("x-request-id", h.request_id),
    ] {
        if on { &mut sent } else { &mut left_out }.push(what.to_owned());
    }
    let mut line = format!(
        "headers added: {}",
        if sent.is_empty() {
            "none".to_owned()
        } else {
            sent.join(", ")
        }
    );
    if !left_out.is_empty() {
        line.push_str(&format!(" (left out: {})", left_out.join(", ")));
    }
    line
}
