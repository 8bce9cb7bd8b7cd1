//! The compiled, immutable view of the config that every request reads, and the pure
//! function that turns a request into a [`Decision`]:
//!
//! route ([`table`]) → user key ([`identity`]) → bucket ([`bucket`]) → pool (override, else a
//! rule, else the user's [`session`] pin, else the route's [`split`]) → flags ([`flags`]).
//!
//! Nothing here does I/O, so all of it is tested directly; the proxy and `switchyard explain`
//! both call [`Table::decide`], so what explain prints is what the proxy does.

pub mod bucket;
pub mod context;
pub mod diff;
pub mod flags;
pub mod identity;
pub mod overrides;
pub mod session;
pub mod split;
pub mod table;
pub mod target;
pub mod unleash;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};

pub use context::{ContextSpec, RequestContext, Rule, Source};
pub use flags::Flag;
pub use identity::{Identity, KeySource};
pub use split::Split;
pub use table::RouteTable;

/// The pure part of one config revision: everything a request's decision reads, compiled once
/// so that the request path never re-validates or re-parses. [`crate::runtime::Snapshot`]
/// holds it with the live parts (pools, metrics, guards, mirrors) and derefs to it.
#[derive(Clone)]
pub struct Table {
    /// Shared with the snapshots a trip, a rollout step or a command makes from this one: a
    /// route they do not change is not copied.
    pub routes: Vec<Arc<Route>>,
    pub identity: Identity,
    /// Every flag, in config order.
    pub flags: Arc<[Flag]>,
    /// `[env] name`, if set.
    pub env: Option<String>,
    pub headers: HeaderSettings,
    /// `[context]`: the request attributes flags and rules read.
    pub context: Arc<ContextSpec>,
    /// `[overrides]`: who may force a pool with a route's override header or cookie.
    pub overrides: Arc<overrides::OverridePolicy>,
    /// The pools' names, by index: routes and decisions name pools by index into this list.
    pub pool_names: Arc<[Arc<str>]>,
    pub(crate) table: Arc<RouteTable>,
}

/// The headers the proxy adds (`[headers]`; DESIGN §3 "Headers sent upstream"). By default it
/// sends them all. Each can be left out, for upstreams that do not read it or that sit behind an
/// edge that already sets it: then the proxy neither adds nor changes that header, and the
/// client's passes as sent (as nginx and HAProxy do with headers they are not told to set).
#[derive(Debug, Clone)]
pub struct HeaderSettings {
    /// Names of the decision headers; `None` (configured as `""`): not sent.
    pub flags: Option<HeaderName>,
    /// The payloads of the flags whose variant has one.
    pub flag_payloads: Option<HeaderName>,
    pub pool: Option<HeaderName>,
    pub bucket: Option<HeaderName>,
    /// `x-forwarded-for` (appended), `x-forwarded-proto` and `x-forwarded-host`.
    pub forwarded: bool,
    /// `via`, both ways.
    pub via: bool,
    /// `x-request-id`: kept or generated, sent upstream, and returned on the response.
    pub request_id: bool,
    /// The longest flags header, and the longest payloads header, sent upstream: flags past it
    /// are left out of the header (whole), so an upstream's header limit never refuses the
    /// request (nginx's default `large_client_header_buffers` is 8 KiB a line).
    pub max_flag_bytes: usize,
}

/// `[headers] max_flag_bytes`'s default.
pub const DEFAULT_MAX_FLAG_BYTES: usize = 4096;
/// What `max_flag_bytes`, and a route's worst-case flags header, may not exceed.
pub const MAX_FLAG_BYTES_CAP: usize = 32 * 1024;

impl Default for HeaderSettings {
    fn default() -> HeaderSettings {
        HeaderSettings {
            flags: Some(HeaderName::from_static("x-switchyard-flags")),
            flag_payloads: Some(HeaderName::from_static("x-switchyard-flag-payloads")),
            pool: Some(HeaderName::from_static("x-switchyard-pool")),
            bucket: Some(HeaderName::from_static("x-switchyard-bucket")),
            forwarded: true,
            via: true,
            request_id: true,
            max_flag_bytes: DEFAULT_MAX_FLAG_BYTES,
        }
    }
}

/// Where a tester may name the pool for a request (`override = { header, cookie }`).
#[derive(Debug, Clone, Default)]
pub struct Override {
    pub header: Option<HeaderName>,
    pub cookie: Option<String>,
}

/// A route's trips and rollout step, as the reloader's overlay last set them.
#[derive(Debug, Clone, Default)]
pub struct RouteRuntime {
    /// Pools taken out by a trip or a rollback.
    pub tripped: Vec<usize>,
    /// Those of `tripped` taken out by an operator's rollback.
    pub rolled_back: Vec<usize>,
    /// When the route's live state (trips, rollout step) last changed, Unix ms; 0: never.
    pub changed_ms: u64,
    /// The rollout's current step, if the route has a rollout.
    pub rollout_step: Option<usize>,
    /// With `[fleet]`, a guarded route is held at its baseline from start until the fleet's
    /// state is known (its first answer): a replica without state must not send users to a
    /// pool the fleet rolled back.
    pub held: bool,
    /// The replica where the live state last changed (`[fleet]`), if not this one.
    pub origin: Option<Arc<str>>,
    /// Since when this process has served the route's current split and pools, Unix ms (0: not
    /// known). The fleet's numbers start there, as the local guard's windows do.
    pub config_ms: u64,
}

/// One `[[routes]]` entry, compiled.
#[derive(Debug, Clone)]
pub struct Route {
    /// Position in [`Table::routes`].
    pub index: usize,
    pub name: Arc<str>,
    /// The host pattern as written (lower-cased), for display.
    pub host: Option<String>,
    pub path_prefix: String,
    /// Request headers that must all be present with these exact values.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The split as configured.
    pub split: Split,
    /// The split requests get: the configured one moved by the rollout step, with tripped
    /// pools at weight 0. Equal to `split` until a guard, a rollout or an operator acts.
    pub effective: Split,
    /// Where tripped traffic goes: the guard's baseline, else the first pool of the split.
    pub baseline: usize,
    pub runtime: RouteRuntime,
    pub overrides: Override,
    /// Indices into [`Table::flags`] of the flags in scope here, in config order.
    pub flags: Arc<[usize]>,
    /// `[[routes.rules]]`: audiences sent to a pool before the split.
    pub rules: Arc<[Rule]>,
    /// Whether any decision on this route depends on who the user is (a split over several
    /// pools, or a flag that is neither fully on nor off). Only then does an anonymous user get
    /// the id cookie.
    pub uses_key: bool,
    /// `[routes.session]`: users stay on the pool that served them.
    pub session: Option<Arc<session::Session>>,
}

impl Route {
    pub(crate) fn matches(&self, path: &str, headers: &http::HeaderMap) -> bool {
        path.starts_with(&self.path_prefix)
            && self
                .headers
                .iter()
                .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }
}

/// The parts of a request that decisions read.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'r> {
    /// Lower-cased, without port (see [`normalize_host`]).
    pub host: &'r str,
    pub path: &'r str,
    pub query: Option<&'r str>,
    pub headers: &'r HeaderMap,
    pub method: &'r http::Method,
    /// The socket's peer (the client, or a proxy in front).
    pub peer: Option<std::net::IpAddr>,
}

/// Why a request went to its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The override header named the pool.
    OverrideHeader,
    /// The override cookie named the pool.
    OverrideCookie,
    /// The user's bucket fell in the pool's range of the split.
    Split,
    /// The route's rule at this index matched (to its pool, or to the baseline when that pool
    /// is tripped).
    Rule(u16),
    /// The user's session pin named the pool (`[routes.session]`).
    Pin,
}

/// What the proxy decided for one request.
#[derive(Debug)]
pub struct Decision<'s, 'r> {
    pub route: &'s Route,
    /// The user key; borrowed from the request unless it is new.
    pub key: Cow<'r, str>,
    pub key_source: KeySource,
    /// The user's point for splits, `bucket · 2^32`.
    pub point: u32,
    /// Index into [`Table::pool_names`] (and the snapshot's pools).
    pub pool: usize,
    pub why: Why,
    /// An override header or cookie was given but not honoured, and why.
    pub ignored_override: Option<overrides::Refused>,
    /// `(index into Table::flags, value, reason)` for the flags in scope, in config order.
    pub flags: Vec<(usize, flags::Value, flags::Reason)>,
    /// What the route's session did, when it has one and neither an override nor a rule
    /// decided.
    pub session: Option<session::SessionDecision>,
}

impl Decision<'_, '_> {
    /// True when the proxy should set the anonymous-id cookie on the response.
    pub fn sets_cookie(&self) -> bool {
        self.key_source == KeySource::New && self.route.uses_key
    }

    /// The session pin to set on the response, if the decision writes one (at `now`).
    pub fn pin_cookie(&self, snap: &Table, now: SystemTime) -> Option<HeaderValue> {
        let (pool, issued) = self.session?.write?;
        let s = self.route.session.as_deref()?;
        s.set_cookie_value(
            &self.route.name,
            pool,
            &snap.pool_names[pool],
            issued,
            unix_s(now),
        )
    }

    /// The flags header value, `key=value, ...`; `None` when no flag is in scope. Flags that
    /// would take it past `[headers] max_flag_bytes` are left out (`truncated` is set).
    pub fn flags_header(&self, snap: &Table, truncated: &mut bool) -> Option<String> {
        if self.flags.is_empty() {
            return None;
        }
        let limit = snap.headers.max_flag_bytes;
        let mut out = String::with_capacity((self.flags.len() * 16).min(limit));
        for &(f, value, _) in &self.flags {
            let flag = &snap.flags[f];
            let item = flag.item(value);
            let sep = if out.is_empty() { 0 } else { 2 };
            if out.len() + sep + flag.key.len() + 1 + item.len() > limit {
                *truncated = true;
                continue;
            }
            if sep > 0 {
                out.push_str(", ");
            }
            out.push_str(&flag.key);
            out.push('=');
            out.push_str(item);
        }
        Some(out)
    }

    /// The payloads header value, `key="payload";type=json, ...`, for the flags whose variant
    /// has a payload; `None` when none has.
    pub fn payloads_header(&self, snap: &Table, truncated: &mut bool) -> Option<String> {
        let limit = snap.headers.max_flag_bytes;
        let mut out: Option<String> = None;
        let mut item = String::new();
        for &(f, value, _) in &self.flags {
            let flag = &snap.flags[f];
            if let Some(p) = flag.payload(value) {
                item.clear();
                flags::push_payload(&mut item, &flag.key, p);
                let o = out.get_or_insert_with(String::new);
                let sep = if o.is_empty() { 0 } else { 2 };
                if o.len() + sep + item.len() > limit {
                    *truncated = true;
                    continue;
                }
                if sep > 0 {
                    o.push_str(", ");
                }
                o.push_str(&item);
            }
        }
        out.filter(|o| !o.is_empty())
    }
}

impl Table {
    /// The route for a request, by host (exact, then wildcard, then any), longest path prefix,
    /// then header matches.
    pub fn find(&self, host: &str, path: &str, headers: &http::HeaderMap) -> Option<&Route> {
        self.table.find(&self.routes, host, path, headers)
    }

    /// Decides everything for a request: route, user key, bucket, pool and flags. `None` when
    /// no route matches. `given_key` replaces the request's own key (`explain --user`).
    pub fn decide<'s, 'r>(
        &'s self,
        req: &RequestView<'r>,
        given_key: Option<&'r str>,
        now: SystemTime,
    ) -> Option<Decision<'s, 'r>> {
        let route = self.find(req.host, req.path, req.headers)?;
        let (key, key_source) = match given_key {
            Some(k) => (Cow::Borrowed(k), KeySource::Given),
            None => self.identity.key(req.headers, req.query),
        };
        let point = bucket::pool_point(&self.identity.salt, &key);
        let (found, ignored_override) = self.override_pool(route, req, now);
        // Unleash's userId is a key the request gives (or --user); an anonymous id is its
        // sessionId. Stickiness "default" takes the first, so both hash the same key.
        let (user_id, session) = match key_source {
            KeySource::AnonymousCookie | KeySource::New => (None, context::Session::Id(&key)),
            _ => (Some(&*key), context::Session::Cookie(&self.identity.cookie)),
        };
        let ctx = RequestContext::new(&self.context, *req, user_id, session, self.env.as_deref(), now);
        let mut session = None;
        let (pool, why) = found.unwrap_or_else(|| match route.rules.iter().position(|r| r.matches(&ctx)) {
            Some(i) => {
                let p = route.rules[i].pool;
                let p = if route.runtime.tripped.contains(&p) {
                    route.baseline
                } else {
                    p
                };
                (p, Why::Rule(i as u16))
            }
            None => match route.session.as_deref() {
                None => (route.effective.pick(point), Why::Split),
                Some(s) => {
                    let (pool, why, d) = self.session_pool(route, s, req.headers, point, now);
                    session = Some(d);
                    (pool, why)
                }
            },
        });
        let flags = route
            .flags
            .iter()
            .map(|&f| {
                let (value, reason) = self.flags[f].evaluate(&self.flags, &ctx);
                (f, value, reason)
            })
            .collect();
        drop(ctx);
        Some(Decision {
            route,
            key,
            key_source,
            point,
            pool,
            why,
            ignored_override,
            flags,
            session,
        })
    }

    /// The pool for a request that neither an override nor a rule decided, on a route with a
    /// session: the pinned pool while the pin holds, else the split's (and a new pin on it).
    fn session_pool(
        &self,
        route: &Route,
        s: &session::Session,
        headers: &HeaderMap,
        point: u32,
        now: SystemTime,
    ) -> (usize, Why, session::SessionDecision) {
        use session::{Ended, Outcome, SessionDecision};
        let split = route.effective.pick(point);
        let value = identity::cookie_bytes(headers, s.cookie.as_bytes()).filter(|v| !v.is_empty());
        let decided = |outcome, write| (split, Why::Split, SessionDecision { outcome, write });
        if route.runtime.held {
            // Held at the baseline until the fleet's state is known: a pin may name a pool the
            // fleet rolled back, and nothing is known yet to end it for.
            return decided(Outcome::Held, None);
        }
        if s.key.is_none() {
            let outcome = match value {
                Some(_) => Outcome::Unverifiable,
                None => Outcome::Split { ended: None },
            };
            return decided(outcome, None);
        }
        let now_s = unix_s(now);
        let ended = match value.map(|v| s.verify_cached(&route.name, v)) {
            None => None,
            Some(None) => Some((Ended::Forged, None)),
            Some(Some(pin)) => {
                let pinned = route
                    .split
                    .weights()
                    .map(|(p, _)| p)
                    .find(|&p| *self.pool_names[p] == *pin.pool);
                let refresh = s.refresh();
                match pinned {
                    None => Some((Ended::Removed, None)),
                    Some(p) => match pin.lapsed(now_s, s.idle.as_secs(), refresh, s.max_age.as_secs()) {
                        Some(e) => Some((e, Some(p))),
                        None if route.runtime.rolled_back.contains(&p) => Some((Ended::RolledBack, Some(p))),
                        None if route.runtime.tripped.contains(&p) => Some((Ended::Tripped, Some(p))),
                        None => {
                            // The pin holds; it is written again once `refresh` has passed.
                            let write =
                                (now_s.saturating_sub(pin.seen) >= refresh).then_some((p, pin.issued));
                            let outcome = Outcome::Pinned {
                                issued: pin.issued,
                                seen: pin.seen,
                            };
                            return (p, Why::Pin, SessionDecision { outcome, write });
                        }
                    },
                }
            }
        };
        decided(Outcome::Split { ended }, Some((split, now_s)))
    }

    /// The pool an override header or cookie names, if it is one of the route's pools and
    /// [`overrides::OverridePolicy`] lets this client force it; and why a value that was given
    /// is not honoured.
    fn override_pool(
        &self,
        route: &Route,
        req: &RequestView<'_>,
        now: SystemTime,
    ) -> (Option<(usize, Why)>, Option<overrides::Refused>) {
        use overrides::Refused;
        let headers = req.headers;
        let o = &route.overrides;
        let from_header = o
            .header
            .as_ref()
            .and_then(|h| header(headers, h))
            .and_then(|v| v.to_str().ok())
            .map(|v| (v, Why::OverrideHeader));
        let from_cookie = || {
            o.cookie
                .as_deref()
                .and_then(|c| identity::cookie(headers, c))
                .map(|v| (v, Why::OverrideCookie))
        };
        let Some((value, why)) = from_header.or_else(from_cookie) else {
            return (None, None);
        };
        let policy = &self.overrides;
        let now_s = unix_s(now);
        let (name, signed) = match policy.key.as_deref().map(|k| overrides::verify(k, value, now_s)) {
            Some(Ok(Some(pool))) => (pool, true),
            Some(Err(refused)) => return (None, Some(refused)),
            Some(Ok(None)) | None => (value, false),
        };
        if !signed {
            let client = context::client_address(req.peer, headers, &self.context.trusted);
            if !client.is_some_and(|ip| policy.from.iter().any(|c| c.contains(ip))) {
                return (None, Some(Refused::NotAllowed));
            }
        }
        let Some(pool) = route
            .split
            .weights()
            .map(|(p, _)| p)
            .find(|&p| &*self.pool_names[p] == name)
        else {
            return (None, Some(Refused::UnknownPool));
        };
        if !policy.to_tripped && route.runtime.tripped.contains(&pool) {
            return (None, Some(Refused::Tripped));
        }
        (Some((pool, why)), None)
    }

    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pool_names.iter().position(|p| &**p == name)
    }

    pub fn route_by_name(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| &*r.name == name).map(|r| &**r)
    }
}

/// Unix seconds at `now` (0 before 1970).
pub(crate) fn unix_s(now: SystemTime) -> u64 {
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The first value of a header. A request or response usually has a handful of headers, and
/// comparing names one by one then costs less than hashing the name for the map's lookup.
pub fn header<'a>(
    headers: &'a http::HeaderMap,
    name: &http::header::HeaderName,
) -> Option<&'a http::HeaderValue> {
    if headers.len() <= 12 {
        headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    } else {
        headers.get(name)
    }
}

/// The host a request is for, lower-cased and without port; borrowed when already clean.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let bytes = raw.as_bytes();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        rest.split(']').next().unwrap_or(rest)
    } else {
        // A port is the digits after the last colon.
        let digits = bytes.iter().rev().take_while(|b| b.is_ascii_digit()).count();
        let colon = bytes.len() - digits;
        if colon > 0 && bytes[colon - 1] == b':' {
            &raw[..colon - 1]
        } else {
            raw
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::{header, normalize_host};

    #[test]
    fn header_lookup_agrees_with_the_map_for_small_and_large_maps() {
        for extra in [0, 30] {
            let mut map = http::HeaderMap::new();
            for i in 0..extra {
                map.insert(
                    http::header::HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                    "v".parse().unwrap(),
                );
            }
            map.append("x-user-id", "first".parse().unwrap());
            map.append("x-user-id", "second".parse().unwrap());
            map.insert(http::header::HOST, "h".parse().unwrap());
            for name in ["x-user-id", "host", "x-missing", "x-1"] {
                let name = http::header::HeaderName::from_static(name);
                assert_eq!(header(&map, &name), map.get(&name), "{name} with {extra} more");
            }
        }
    }

    #[test]
    fn hosts_lose_port_case_and_trailing_dot() {
        assert_eq!(normalize_host("Shop.Example.com:8080"), "shop.example.com");
        assert_eq!(normalize_host("shop.example.com."), "shop.example.com");
        assert_eq!(normalize_host("[::1]:8080"), "::1");
        assert_eq!(normalize_host("127.0.0.1"), "127.0.0.1");
        assert_eq!(normalize_host("127.0.0.1:18080"), "127.0.0.1");
        assert_eq!(normalize_host("shop:"), "shop", "an empty port goes too");
        assert_eq!(normalize_host("a:b"), "a:b", "not a port");
        assert_eq!(normalize_host("8080"), "8080", "digits alone are the host");
    }
}
