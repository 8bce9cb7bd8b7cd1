//! `switchyard explain`: what the proxy would do with one request — the route, the user key
//! and where it came from, the bucket, the pool and why, every flag's value and why, and the
//! exact headers sent upstream. It runs [`Snapshot::decide`] and the proxy's own header code,
//! so it cannot drift from what the proxy does. Given the live state (trips and rollout steps,
//! applied to the snapshot), it answers for the running proxy, and says so: "guard trip" and
//! "rollout step N" are reasons it gives.

use std::net::SocketAddr;
use std::time::SystemTime;

use http::header::{HeaderMap, HeaderValue};
use http::{Method, Uri, Version};
use serde::Serialize;

use super::{filter, via_entry, Decided, Peer};
use crate::routing::flags::{Reason, Value};
use crate::routing::{bucket, normalize_host, RequestView, Why};
use crate::runtime::overlay::Overlay;
use crate::runtime::Snapshot;

/// A request to explain.
pub struct Question {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// Replaces the request's own user key.
    pub user: Option<String>,
    /// The socket's peer address, if given.
    pub client: Option<std::net::IpAddr>,
}

/// The answer, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub method: String,
    pub url: String,
    /// The proxy refuses the request before routing it (a missing or invalid host, a method
    /// or transfer coding it does not serve): what it answers.
    pub refused: Option<Refused>,
    /// `None`: no route matched (the proxy answers 404), or the request is refused.
    pub route: Option<RouteFacts>,
    /// Where the live state applied came from (or why there is none), when asked.
    pub live: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Refused {
    pub status: u16,
    /// The `x-switchyard-error` value.
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct RouteFacts {
    pub name: String,
    pub host: Option<String>,
    pub path_prefix: String,
    pub user_key: String,
    pub user_key_from: String,
    pub bucket: String,
    pub pool: String,
    pub why: String,
    /// The split as configured.
    pub split: Vec<SplitShare>,
    /// The split requests get now, when trips or a rollout step make it differ.
    pub live_split: Option<Vec<SplitShare>>,
    pub endpoints: Vec<String>,
    pub flags: Vec<FlagFacts>,
    pub upstream_headers: Vec<(String, String)>,
    pub set_cookie: Option<String>,
    /// What the route's session (`[routes.session]`) does to the request, in words.
    pub session: Option<String>,
    /// The session pin the response sets, if any.
    pub set_pin: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SplitShare {
    pub pool: String,
    pub weight: u64,
    /// Bucket range `[from, to)`.
    pub from: f64,
    pub to: f64,
}

#[derive(Debug, Serialize)]
pub struct FlagFacts {
    pub name: String,
    pub value: String,
    pub why: String,
}

/// Why a flag has its value, in words.
fn flag_why(flag: &crate::routing::Flag, value: Value, reason: Reason, key: &str) -> String {
    let shorthand_bucket = || {
        let group = flag
            .def
            .strategies
            .iter()
            .find_map(|s| s.parameters.get("groupId"))
            .map_or(&*flag.name, String::as_str);
        bucket::flag_bucket(group, key)
    };
    let why = match reason {
        Reason::Disabled => "disabled (enabled = false)".to_owned(),
        Reason::OutsideWindow => "outside its start/end window".to_owned(),
        Reason::OtherEnvironment => "not enabled in this environment".to_owned(),
        Reason::Dependency(i) => {
            let d = &flag.def.dependencies[i as usize];
            match (d.enabled, &d.variants) {
                (Some(false), _) => format!("needs `{}` off, and it is not", d.feature),
                (_, Some(v)) if !v.is_empty() => format!(
                    "needs `{}` on with variant {}, and it is not",
                    d.feature,
                    v.join(" or ")
                ),
                _ => format!("needs `{}` on, and it is not", d.feature),
            }
        }
        Reason::NoStrategies => "on for everyone (no strategies)".to_owned(),
        Reason::NoStrategy => match flag.percent {
            Some(0) => "0% rollout".to_owned(),
            Some(p) => format!("user bucket {} > {p}%", shorthand_bucket()),
            None => "no strategy admits the request".to_owned(),
        },
        Reason::Strategy { index, bucket } => {
            let label = flag.toggle.strategy_label(index);
            match (flag.percent, bucket) {
                (Some(p), Some(b)) => format!("user bucket {b} <= {p}%"),
                (Some(_), None) if label == "userWithId" => "the user is in its users list".to_owned(),
                (Some(_), None) => "on for everyone".to_owned(),
                (None, Some(b)) => format!("strategy {} ({label}) admits it, bucket {b}", index + 1),
                (None, None) => format!("strategy {} ({label}) admits it", index + 1),
            }
        }
    };
    match value {
        Value::Variant(_) => format!("{why}; variant by weight"),
        _ => why,
    }
}

/// Explains `q` against `snap` (with the live state in `overlay` applied to it, if given), at
/// time `now`.
pub fn explain(snap: &Snapshot, q: &Question, now: SystemTime, overlay: Option<&Overlay>) -> Explanation {
    // The request as an HTTP/1.1 client would send it, through the proxy's own filter.
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = q.method.clone();
    parts.uri = q.uri.clone();
    parts.headers = q.headers.clone();
    let filtered = match filter(&parts) {
        Ok(f) => f,
        Err(e) => {
            return Explanation {
                method: q.method.to_string(),
                url: q.uri.to_string(),
                refused: Some(Refused {
                    status: e.status().as_u16(),
                    reason: e.reason().to_owned(),
                    message: e.to_string(),
                }),
                route: None,
                live: None,
            }
        }
    };
    let host = filtered.host;
    let host_name = normalize_host(host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""));
    let view = RequestView {
        host: &host_name,
        path: filtered.path.as_ref().map_or(q.uri.path(), |p| p.path()),
        query: q.uri.query(),
        headers: &q.headers,
        method: &q.method,
        peer: q.client,
    };
    let route = snap.decide(&view, q.user.as_deref(), now).map(|d| {
        let route = d.route;
        let pool = snap.pool(d.pool);
        let space = (1u64 << 32) as f64;
        let shares = |s: &crate::routing::Split| -> Vec<SplitShare> {
            let weights: Vec<(usize, u64)> = s.weights().collect();
            s.ranges()
                .map(|(p, lo, hi)| SplitShare {
                    pool: snap.pools[p].name.to_string(),
                    weight: weights.iter().find(|(w, _)| *w == p).map_or(0, |w| w.1),
                    from: lo as f64 / space,
                    to: hi as f64 / space,
                })
                .collect()
        };
        let split = shares(&route.split);
        let live_split = (route.effective != route.split).then(|| shares(&route.effective));
        let bucket = String::from_utf8_lossy(&bucket::format_point(d.point)).into_owned();
        let why = match d.why {
            Why::OverrideHeader => format!(
                "override: header {} names it",
                route.overrides.header.as_ref().map_or("", |h| h.as_str())
            ),
            Why::OverrideCookie => format!(
                "override: cookie {} names it",
                route.overrides.cookie.as_deref().unwrap_or("")
            ),
            Why::Split => {
                let why = split_why(snap, route, d.point, d.pool, &bucket, overlay);
                match d.ignored_override {
                    Some(refused) => format!("{why} (the override was ignored: {})", refused.describe()),
                    None => why,
                }
            }
            Why::Pin => format!(
                "session pin: cookie {} pins the user to {}",
                route.session.as_deref().map_or("", |s| &*s.cookie),
                pool.name
            ),
            Why::Rule(i) => {
                let rule = &route.rules[i as usize];
                if rule.pool == d.pool {
                    format!("{}: its constraints hold", rule.name)
                } else {
                    format!(
                        "{}: its constraints hold, but {} is tripped: its baseline",
                        rule.name, snap.pools[rule.pool].name
                    )
                }
            }
        };
        let flags = d
            .flags
            .iter()
            .map(|&(f, value, reason)| {
                let flag = &snap.flags[f];
                let why = flag_why(flag, value, reason, &d.key);
                FlagFacts {
                    name: flag.name.to_string(),
                    value: flag.token(value).to_owned(),
                    why,
                }
            })
            .collect();
        let decided = Decided::new(&d, snap, now);
        let session = route.session.as_deref().map(|s| session_facts(snap, s, &d));
        let peer = Peer::new(
            SocketAddr::new(q.client.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()), 0),
            q.uri.scheme_str() == Some("https"),
        );
        let request_id = q
            .headers
            .get("x-request-id")
            .cloned()
            .unwrap_or(HeaderValue::from_static("(generated per request)"));
        let upstream = super::headers::UpstreamFields {
            client: &q.headers,
            host: host.as_ref(),
            peer_ip: peer.ip.as_bytes(),
            tls: peer.tls,
            via: via_entry(snap, Version::HTTP_11),
            request_id: snap.headers.request_id.then_some(&request_id),
            upgrade: false,
            settings: &snap.headers,
            decision: decided.decision(pool),
            traceparent: None,
        }
        .to_map();
        let upstream_headers = upstream
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("<binary>").to_owned()))
            .collect();
        RouteFacts {
            name: route.name.to_string(),
            host: route.host.clone(),
            path_prefix: route.path_prefix.clone(),
            user_key: d.key.to_string(),
            user_key_from: d.key_source.to_string(),
            bucket,
            pool: pool.name.to_string(),
            why,
            split,
            live_split,
            endpoints: pool.endpoints.iter().map(|e| e.address.to_string()).collect(),
            flags,
            upstream_headers,
            set_cookie: decided.set_cookie,
            session,
            set_pin: decided
                .set_pin
                .map(|v| v.to_str().unwrap_or("<binary>").to_owned()),
        }
    });
    Explanation {
        method: q.method.to_string(),
        url: q.uri.to_string(),
        refused: None,
        route,
        live: None,
    }
}

/// What a route's session does to a decision, in words.
fn session_facts(
    snap: &Snapshot,
    s: &crate::routing::session::Session,
    d: &crate::routing::Decision<'_, '_>,
) -> String {
    use crate::routing::session::Outcome;
    let at = |t: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
            .to_string()
    };
    let terms = format!(
        "cookie {}, idle {}, max_age {}",
        s.cookie,
        humantime::format_duration(s.idle),
        humantime::format_duration(s.max_age)
    );
    let Some(sd) = d.session else {
        return format!(
            "{terms}: not consulted — {} decides before any pin",
            match d.why {
                Why::Rule(_) => "a rule",
                _ => "an override",
            }
        );
    };
    let new_pin = |why: &str| match sd.write {
        Some((p, _)) => format!(
            "{terms}: {why}; the response pins the user to {}",
            snap.pools[p].name
        ),
        None => format!("{terms}: {why}"),
    };
    match sd.outcome {
        Outcome::Pinned { issued, seen } => {
            let lapses = (seen + s.idle.as_secs() + s.refresh()).min(issued + s.max_age.as_secs());
            format!(
                "{terms}: the pin holds (session began {}, pin written {}; it lapses at {} without a request{})",
                at(issued),
                at(seen),
                at(lapses),
                if sd.write.is_some() { "; the response writes it again" } else { "" }
            )
        }
        Outcome::Split { ended: None } => new_pin("no pin in the request"),
        Outcome::Split { ended: Some((e, _)) } => new_pin(&format!("the request's pin is ignored: {}", e.describe())),
        Outcome::Unverifiable => format!(
            "{terms}: the request carries a pin that cannot be checked here: {} is not set (or shorter than {} bytes); the split decides",
            s.secret_env,
            crate::routing::session::MIN_SECRET_BYTES
        ),
        Outcome::Held => format!("{terms}: the route is held at its baseline until the fleet's state is known; pins wait"),
    }
}

/// Why the split sent the user to `pool`: its own range in the configured split, or a trip,
/// or the rollout's step.
fn split_why(
    snap: &Snapshot,
    route: &crate::routing::Route,
    point: u32,
    pool: usize,
    bucket: &str,
    overlay: Option<&Overlay>,
) -> String {
    let name = |p: usize| snap.pools[p].name.to_string();
    let configured = route.split.pick(point);
    let rollout = snap.rollout(route).zip(route.runtime.rollout_step);
    let step = |ro: &crate::guard::RolloutConfig, s: usize| {
        format!(
            "rollout step {} of {} ({} at {}%)",
            s + 1,
            ro.steps.len(),
            name(ro.pool),
            ro.steps[s]
        )
    };
    if configured != pool && route.runtime.tripped.contains(&configured) {
        let trip = overlay
            .and_then(|o| o.routes.get(&*route.name))
            .and_then(|e| e.trips.iter().find(|t| t.pool == *snap.pools[configured].name));
        let detail = trip.map_or(String::new(), |t| format!(" at {}: {}", t.at, t.reason));
        return format!(
            "guard trip: bucket {bucket} falls in {}'s range, and {} is tripped{detail}; its users go to {}",
            name(configured),
            name(configured),
            name(pool)
        );
    }
    match rollout {
        Some((ro, s)) if ro.pool == pool || configured != pool => format!(
            "{}: bucket {bucket} falls in {}'s range of the live split",
            step(ro, s),
            name(pool)
        ),
        _ => format!("sticky split: bucket {bucket} falls in {}'s range", name(pool)),
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} {}", self.method, self.url)?;
        if let Some(live) = &self.live {
            writeln!(f, "live:     {live}")?;
        }
        if let Some(r) = &self.refused {
            return writeln!(
                f,
                "refused:  the proxy answers {} (x-switchyard-error: {}): {}",
                r.status, r.reason, r.message
            );
        }
        let Some(r) = &self.route else {
            return writeln!(
                f,
                "route:    none matched: the proxy answers 404 (x-switchyard-error: no_route)"
            );
        };
        writeln!(
            f,
            "route:    {} (host {}, path prefix {})",
            r.name,
            r.host.as_deref().unwrap_or("any"),
            r.path_prefix
        )?;
        writeln!(f, "user:     {} (from {})", r.user_key, r.user_key_from)?;
        writeln!(f, "bucket:   {}", r.bucket)?;
        writeln!(f, "pool:     {} — {}", r.pool, r.why)?;
        for s in &r.split {
            writeln!(
                f,
                "          {:<12} weight {:<5} [{:.4}, {:.4})",
                s.pool, s.weight, s.from, s.to
            )?;
        }
        if let Some(live) = &r.live_split {
            writeln!(f, "          live split (trips and rollout step applied):")?;
            for s in live {
                writeln!(f, "          {:<12} [{:.4}, {:.4})", s.pool, s.from, s.to)?;
            }
        }
        writeln!(f, "          endpoints: {}", r.endpoints.join(", "))?;
        if r.flags.is_empty() {
            writeln!(f, "flags:    none in scope")?;
        } else {
            writeln!(f, "flags:")?;
            for fl in &r.flags {
                writeln!(f, "          {:<20} = {:<12} ({})", fl.name, fl.value, fl.why)?;
            }
        }
        writeln!(f, "upstream request headers:")?;
        for (k, v) in &r.upstream_headers {
            writeln!(f, "          {k}: {v}")?;
        }
        if let Some(session) = &r.session {
            writeln!(f, "session:  {session}")?;
        }
        if let Some(c) = &r.set_cookie {
            writeln!(f, "response: set-cookie: {c}")?;
        }
        if let Some(c) = &r.set_pin {
            writeln!(f, "response: set-cookie: {c}")?;
        }
        Ok(())
    }
}
