//! Version-sticky sessions (`[routes.session]`): the pool that served a user is pinned in a
//! signed cookie, and while the pin holds the user stays on that pool whatever the split says
//! now — a blue/green switch or a raised canary moves new sessions only. A pin never holds a
//! user on an unsafe pool: a trip, a rollback or the pool's removal from the split ends it.
//!
//! A pin is `POOL.ISSUED.SEEN.SIGNATURE`: the pool's name, the Unix second the session began
//! (for `max_age`), the Unix second the pin was last written (for `idle`), and the
//! HMAC-SHA256 of `switchyard-session:ROUTE:POOL.ISSUED.SEEN` under the secret, base64url
//! without padding. Naming the route in what is signed keeps one route's pin from steering
//! another. Nothing is stored on the server: any replica with the same secret honours any
//! replica's pin.
//!
//! A valid pin is written again (its `SEEN` moved to now) on a request at least
//! [`Session::refresh`] (`idle`/16, at least a second) after it was last written, so a busy
//! session does not cost a signature per request. A pin then lapses between `idle` and
//! `idle + refresh` after the user's last request: never earlier than `idle`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;

/// The compiled `[routes.session]`.
#[derive(Debug, Clone)]
pub struct Session {
    pub cookie: String,
    pub idle: Duration,
    pub max_age: Duration,
    /// The variable holding the secret, as configured.
    pub secret_env: String,
    /// The key pins are signed and checked with; `None` when the variable is not set here
    /// (`run` refuses to start and a reload is refused; `explain` says it cannot verify).
    pub key: Option<Arc<ring::hmac::Key>>,
    /// This compiled session's identity in the per-thread caches ([`next_id`]).
    pub id: u64,
}

/// `cookie`'s default.
pub const DEFAULT_COOKIE: &str = "sy_ver";
/// `idle`'s default.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30 * 60);
/// `max_age`'s default.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// `secret_env`'s default.
pub const DEFAULT_SECRET_ENV: &str = "SWITCHYARD_SESSION_SECRET";
/// The shortest secret `run` signs with.
pub const MIN_SECRET_BYTES: usize = 16;

/// Why a pin the request carried no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// No request for `idle`.
    Idle,
    /// The session began more than `max_age` ago.
    MaxAge,
    /// The pool is tripped by the route's guard.
    Tripped,
    /// An operator rolled the pool back.
    RolledBack,
    /// The pool is no longer in the route's split.
    Removed,
    /// The signature is wrong (another secret, another route, or a made-up value).
    Forged,
}

impl Ended {
    pub const ALL: [Ended; 6] = [
        Ended::Idle,
        Ended::MaxAge,
        Ended::Tripped,
        Ended::RolledBack,
        Ended::Removed,
        Ended::Forged,
    ];

    /// The metric label and API key.
    pub fn name(self) -> &'static str {
        match self {
            Ended::Idle => "idle",
            Ended::MaxAge => "max_age",
            Ended::Tripped => "tripped",
            Ended::RolledBack => "rolled_back",
            Ended::Removed => "removed",
            Ended::Forged => "forged",
        }
    }

    /// Whether the reason names a pool of the route's split (the others do not: a removed
    /// pool is not in it, and a forged pin's pool is not to be trusted).
    pub fn names_pool(self) -> bool {
        !matches!(self, Ended::Removed | Ended::Forged)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Ended::Idle => "it lapsed: no request for the session's idle time",
            Ended::MaxAge => "the session is older than its max_age",
            Ended::Tripped => "its pool is tripped by the guard",
            Ended::RolledBack => "its pool was rolled back by an operator",
            Ended::Removed => "its pool is no longer in the route's split",
            Ended::Forged => "its signature is wrong (another secret, another route, or a made-up value)",
        }
    }
}

/// A pin whose signature holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin<'v> {
    pub pool: &'v str,
    pub issued: u64,
    pub seen: u64,
}

impl Pin<'_> {
    /// Why the pin no longer holds at `now_s` by its times (`max_age`, then `idle` and its
    /// slack `refresh`, in seconds); `None`: it holds. Times from the future (a replica whose
    /// clock is ahead) count as now.
    pub fn lapsed(&self, now_s: u64, idle: u64, refresh: u64, max_age: u64) -> Option<Ended> {
        if now_s.saturating_sub(self.issued) >= max_age {
            Some(Ended::MaxAge)
        } else if now_s.saturating_sub(self.seen) >= idle + refresh {
            Some(Ended::Idle)
        } else {
            None
        }
    }
}

/// What a route's session did to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The request carried a pin that holds: it went to the pinned pool.
    Pinned { issued: u64, seen: u64 },
    /// The split decided: no pin, or the pin carried ended (and why; with the pinned pool's
    /// index when the reason names one).
    Split { ended: Option<(Ended, Option<usize>)> },
    /// The request carried a pin that cannot be checked here: no secret (only `explain`
    /// meets this; `run` refuses to start without one).
    Unverifiable,
    /// The route is held at its baseline until the fleet's state is known: the pin is neither
    /// honoured nor ended, and nothing is written.
    Held,
}

/// A route's session decision for one request: what happened, and the pin to write on the
/// response, if any (`(pool, issued)`; seen is now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionDecision {
    pub outcome: Outcome,
    pub write: Option<(usize, u64)>,
}

impl Session {
    /// Until when (Unix seconds) a pin begun at `issued` and written at `seen` is honoured.
    pub fn valid_until(&self, issued: u64, seen: u64) -> u64 {
        (seen + self.idle.as_secs() + self.refresh()).min(issued + self.max_age.as_secs())
    }

    /// How long after a pin was written a request writes it again.
    pub fn refresh(&self) -> u64 {
        (self.idle.as_secs() / 16).max(1)
    }

    /// The pin in `value` if this key signed it for `route`; anything else under the
    /// cookie's name is forged.
    pub fn verify<'v>(key: &ring::hmac::Key, route: &str, value: &'v str) -> Option<Pin<'v>> {
        let (pin, sig, signed) = fields(value)?;
        // A signature is 32 bytes: 43 characters. Anything else is not worth decoding.
        if sig.len() != 43 {
            return None;
        }
        let mut tag = [0u8; 33];
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(sig, &mut tag) {
            Ok(32) => {}
            _ => return None,
        }
        let mut ctx = ring::hmac::Context::with_key(key);
        message(&mut ctx, route, signed);
        let expected = ctx.sign();
        constant_time_eq(expected.as_ref(), &tag[..32]).then_some(pin)
    }

    /// [`Session::verify`] with this session's key, remembering the values it verified: a
    /// returning user sends the same pin until it is written again (`idle`/16), and an
    /// HMAC-SHA256 costs more than the rest of a decision (`session/pin_verify` 271 ns against
    /// 154 ns; cached, 14 ns). Each worker
    /// thread keeps its own table of [`CACHE_SLOTS`] verified values (direct-mapped by the end of
    /// the signature, compared whole, bound to this compiled session), so nothing is shared and
    /// nothing locks; a value not in it is verified as ever. Forged values are never kept. (The
    /// comparison with a kept value is not constant-time: a pin is no secret — any user gets a
    /// valid one for a pool by landing in it — what the signature guards is that nobody makes
    /// one they were not given, such as for a pool at weight 0 or with times of their choosing.)
    pub fn verify_cached<'v>(&self, route: &str, bytes: &'v [u8]) -> Option<Pin<'v>> {
        let key = self.key.as_deref()?;
        if bytes.len() > CACHED_LEN || bytes.len() < 8 {
            return Session::verify(key, route, std::str::from_utf8(bytes).ok()?);
        }
        let tail = u64::from_le_bytes(bytes[bytes.len() - 8..].try_into().expect("8 bytes"));
        let slot = (tail.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize % CACHE_SLOTS;
        let known = VERIFIED.with(|c| {
            c.borrow()
                .get(slot)
                .filter(|s| s.session == self.id && s.bytes[..usize::from(s.len)] == *bytes)
                .map(|s| (usize::from(s.pool_len), s.issued, s.seen))
        });
        if let Some((pool_len, issued, seen)) = known {
            return Some(Pin {
                pool: std::str::from_utf8(&bytes[..pool_len]).ok()?,
                issued,
                seen,
            });
        }
        let pin = Session::verify(key, route, std::str::from_utf8(bytes).ok()?)?;
        VERIFIED.with(|c| {
            let mut c = c.borrow_mut();
            if c.is_empty() {
                c.resize(CACHE_SLOTS, Verified::EMPTY);
            }
            let entry = &mut c[slot];
            entry.session = self.id;
            entry.len = bytes.len() as u8;
            entry.bytes[..bytes.len()].copy_from_slice(bytes);
            entry.pool_len = pin.pool.len() as u8;
            entry.issued = pin.issued;
            entry.seen = pin.seen;
        });
        Some(pin)
    }

    /// The pin value for `pool` of `route`, begun at `issued`, written at `now_s`.
    pub fn sign(key: &ring::hmac::Key, route: &str, pool: &str, issued: u64, now_s: u64) -> String {
        let mut value = format!("{pool}.{issued}.{now_s}");
        let mut ctx = ring::hmac::Context::with_key(key);
        message(&mut ctx, route, &value);
        let tag = ctx.sign();
        value.push('.');
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut value);
        value
    }

    /// The `Set-Cookie` value for a pin on `pool`, begun at `issued`, written at `now_s`. The
    /// browser keeps it as long as the proxy would honour it (the idle time and its slack,
    /// never past `max_age`).
    pub fn set_cookie(&self, route: &str, pool: &str, issued: u64, now_s: u64) -> Option<String> {
        let key = self.key.as_deref()?;
        let left = (issued + self.max_age.as_secs()).saturating_sub(now_s);
        let max_age = (self.idle.as_secs() + self.refresh()).min(left);
        Some(format!(
            "{}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}",
            self.cookie,
            Session::sign(key, route, pool, issued, now_s)
        ))
    }

    /// [`Session::set_cookie`] as a header value; a new session's (begun now) is signed once per
    /// second, pool and worker thread, and shared by every new session in that second.
    pub fn set_cookie_value(
        &self,
        route: &str,
        pool: usize,
        name: &str,
        issued: u64,
        now_s: u64,
    ) -> Option<http::HeaderValue> {
        let make = || {
            self.set_cookie(route, name, issued, now_s)
                .and_then(|c| http::HeaderValue::try_from(c).ok())
        };
        if issued != now_s {
            return make();
        }
        SIGNED.with(|c| {
            let mut c = c.borrow_mut();
            if let Some(e) = c.iter().find(|e| e.0 == self.id && e.1 == pool && e.2 == now_s) {
                return Some(e.3.clone());
            }
            let value = make()?;
            match c.iter_mut().find(|e| e.0 == self.id && e.1 == pool) {
                Some(e) => *e = (self.id, pool, now_s, value.clone()),
                None => {
                    if c.len() >= 64 {
                        c.clear();
                    }
                    c.push((self.id, pool, now_s, value.clone()));
                }
            }
            Some(value)
        })
    }
}

/// The parts of a pin value: the pin, its signature, and what the signature covers.
fn fields(value: &str) -> Option<(Pin<'_>, &str, &str)> {
    let mut parts = value.rsplitn(4, '.');
    let (Some(sig), Some(seen), Some(issued), Some(pool)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let (Ok(seen), Ok(issued)) = (seen.parse::<u64>(), issued.parse::<u64>()) else {
        return None;
    };
    let signed = &value[..value.len() - sig.len() - 1];
    Some((Pin { pool, issued, seen }, sig, signed))
}

/// Verified pin values each worker thread remembers.
pub const CACHE_SLOTS: usize = 1024;
/// The longest value remembered (a pool name of up to about 35 bytes): a slot is 128 bytes.
const CACHED_LEN: usize = 102;

/// A verified value, and its fields as read.
#[derive(Clone, Copy)]
struct Verified {
    session: u64,
    issued: u64,
    seen: u64,
    len: u8,
    pool_len: u8,
    bytes: [u8; CACHED_LEN],
}

impl Verified {
    const EMPTY: Verified = Verified {
        session: 0,
        issued: 0,
        seen: 0,
        len: 0,
        pool_len: 0,
        bytes: [0; CACHED_LEN],
    };
}

thread_local! {
    static VERIFIED: std::cell::RefCell<Vec<Verified>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The last new pin's `Set-Cookie` per session and pool: every new session on a pool in the
    /// same second gets the same pin, signed once.
    static SIGNED: std::cell::RefCell<Vec<(u64, usize, u64, http::HeaderValue)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A compiled session's identity for the caches (never 0, which marks an empty slot).
pub fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn message(ctx: &mut ring::hmac::Context, route: &str, signed: &str) {
    ctx.update(b"switchyard-session:");
    ctx.update(route.as_bytes());
    ctx.update(b":");
    ctx.update(signed.as_bytes());
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(s: &[u8]) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s)
    }

    const IDLE: u64 = 1800;
    const REFRESH: u64 = 112;
    const MAX: u64 = 43_200;

    /// A session with the defaults of these tests, signing with `secret`.
    fn session(secret: &[u8]) -> Session {
        Session {
            cookie: "sy_ver".into(),
            idle: Duration::from_secs(IDLE),
            max_age: Duration::from_secs(MAX),
            secret_env: DEFAULT_SECRET_ENV.into(),
            key: Some(Arc::new(key(secret))),
            id: next_id(),
        }
    }

    fn read<'v>(k: &ring::hmac::Key, route: &str, v: &'v str, now: u64) -> Result<Pin<'v>, Ended> {
        let pin = Session::verify(k, route, v).ok_or(Ended::Forged)?;
        pin.lapsed(now, IDLE, REFRESH, MAX).map_or(Ok(pin), Err)
    }

    #[test]
    fn a_pin_holds_until_idle_or_max_age_and_only_for_its_route_and_key() {
        let k = key(b"0123456789abcdef-secret");
        let v = Session::sign(&k, "web", "blue.v1", 1_000, 2_000);
        let pin = Pin {
            pool: "blue.v1",
            issued: 1_000,
            seen: 2_000,
        };
        assert_eq!(read(&k, "web", &v, 2_000), Ok(pin));
        assert_eq!(
            read(&k, "web", &v, 2_000 + IDLE + REFRESH - 1),
            Ok(pin),
            "never before idle and its slack"
        );
        assert_eq!(read(&k, "web", &v, 2_000 + IDLE + REFRESH), Err(Ended::Idle));
        let old = Session::sign(&k, "web", "blue.v1", 1_000, 1_000 + MAX - 1);
        assert_eq!(
            read(&k, "web", &old, 1_000 + MAX - 1).map(|p| p.pool),
            Ok("blue.v1")
        );
        assert_eq!(read(&k, "web", &old, 1_000 + MAX), Err(Ended::MaxAge));
        assert_eq!(
            read(&k, "api", &v, 2_000),
            Err(Ended::Forged),
            "another route's pin"
        );
        assert_eq!(
            read(&key(b"another-secret-0000"), "web", &v, 2_000),
            Err(Ended::Forged)
        );
        // Tampered parts.
        for forged in [
            v.replacen("blue.v1", "green", 1),
            v.replacen(".1000.", ".1001.", 1),
            v.replacen(".2000.", ".9000.", 1),
            format!("{v}A"),
            v[..v.len() - 1].to_owned(),
            "green".to_owned(),
            "green.1.2.".to_owned(),
            "green.x.2.abc".to_owned(),
            String::new(),
        ] {
            assert_eq!(read(&k, "web", &forged, 2_000), Err(Ended::Forged), "{forged}");
        }
        // A clock behind the writer's: the future counts as now.
        assert_eq!(read(&k, "web", &v, 1_500), Ok(pin));
    }

    #[test]
    fn the_cookie_lives_as_long_as_the_pin_is_honoured() {
        let s = session(b"0123456789abcdef");
        assert_eq!(s.refresh(), REFRESH);
        let c = s.set_cookie("web", "green", 1_000, 1_000).unwrap();
        assert!(c.starts_with("sy_ver=green.1000.1000."), "{c}");
        assert!(
            c.ends_with(&format!(
                "; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
                IDLE + REFRESH
            )),
            "{c}"
        );
        let late = s.set_cookie("web", "green", 1_000, 1_000 + MAX - 60).unwrap();
        assert!(late.ends_with("Max-Age=60"), "{late}");
        let none = Session { key: None, ..s };
        assert_eq!(none.set_cookie("web", "green", 1, 1), None);
    }

    #[test]
    fn the_verified_cache_never_accepts_what_verify_refuses() {
        let (a, b) = (session(b"0123456789abcdef"), session(b"fedcba9876543210"));
        let v = Session::sign(a.key.as_deref().unwrap(), "web", "blue", 1_000, 2_000);
        let pin = Pin {
            pool: "blue",
            issued: 1_000,
            seen: 2_000,
        };
        // Twice: the second from the cache, the same answer.
        assert_eq!(a.verify_cached("web", v.as_bytes()), Some(pin));
        assert_eq!(a.verify_cached("web", v.as_bytes()), Some(pin));
        // The same signature on other fields lands in the same slot: compared whole, refused.
        for forged in [
            v.replacen("blue", "gren", 1),
            v.replacen(".1000.", ".1001.", 1),
            v.replacen(".2000.", ".9000.", 1),
        ] {
            assert_eq!(a.verify_cached("web", forged.as_bytes()), None, "{forged}");
        }
        // Another compiled session (another key) does not take a's word for it.
        assert_eq!(b.verify_cached("web", v.as_bytes()), None);
        assert_eq!(
            a.verify_cached("web", v.as_bytes()),
            Some(pin),
            "still there for a"
        );
        let keyless = Session {
            key: None,
            ..session(b"0123456789abcdef")
        };
        assert_eq!(keyless.verify_cached("web", v.as_bytes()), None);
    }

    #[test]
    fn a_new_sessions_pin_is_signed_once_a_second_per_pool() {
        let s = session(b"0123456789abcdef");
        let one = s.set_cookie_value("web", 0, "blue", 5_000, 5_000).unwrap();
        assert_eq!(
            one.to_str().unwrap(),
            s.set_cookie("web", "blue", 5_000, 5_000).unwrap()
        );
        assert_eq!(s.set_cookie_value("web", 0, "blue", 5_000, 5_000).unwrap(), one);
        let next = s.set_cookie_value("web", 0, "blue", 5_001, 5_001).unwrap();
        assert_eq!(
            next.to_str().unwrap(),
            s.set_cookie("web", "blue", 5_001, 5_001).unwrap()
        );
        let green = s.set_cookie_value("web", 1, "green", 5_001, 5_001).unwrap();
        assert!(green.to_str().unwrap().starts_with("sy_ver=green.5001.5001."));
        // A refresh (begun earlier) is signed for itself.
        let refresh = s.set_cookie_value("web", 0, "blue", 4_000, 5_001).unwrap();
        assert!(refresh.to_str().unwrap().starts_with("sy_ver=blue.4000.5001."));
    }

    proptest! {
        /// Whatever a client sends under the cookie's name, it is a pin this key signed or it
        /// is forged; reading never panics.
        #[test]
        fn any_value_is_read_without_panic(v in "\\PC{0,120}", now in 0u64..u64::MAX / 2) {
            let k = key(b"0123456789abcdef");
            if let Ok(p) = read(&k, "web", &v, now) {
                prop_assert_eq!(Session::sign(&k, "web", p.pool, p.issued, p.seen), v);
            }
        }

        #[test]
        fn what_is_signed_reads_back(pool in "[a-z0-9_.-]{1,20}", issued in 0u64..1 << 40, age in 0u64..MAX) {
            let k = key(b"0123456789abcdef");
            let now = issued + age;
            let v = Session::sign(&k, "r", &pool, issued, now);
            prop_assert_eq!(read(&k, "r", &v, now), Ok(Pin { pool: &pool, issued, seen: now }));
        }
    }
}

/// The session in a whole decision: its place after overrides and rules, weight-0 pools, trips,
/// a fleet's hold, the refresh, and what `explain` says.
#[cfg(test)]
mod decide_tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use http::{HeaderMap, HeaderValue};

    use super::{Ended, Outcome, Session, SessionDecision};
    use crate::routing::{RequestView, Table, Why};

    const VAR: &str = "SY_UNIT_SESSION_SECRET";
    const SECRET: &[u8] = b"unit-test-secret-0123456789";

    fn table(split: &str) -> Table {
        std::env::set_var(VAR, std::str::from_utf8(SECRET).unwrap());
        let text = format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[context]\nbeta = \"header:x-beta\"\n\
             [pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.green]\nendpoints = [\"127.0.0.1:2\"]\n\
             [[routes]]\nname = \"web\"\nsplit = {{ {split} }}\noverride = {{ header = \"x-pool\" }}\n\
             [[routes.rules]]\nname = \"beta\"\npool = \"blue\"\nconstraints = [{{ contextName = \"beta\", operator = \"IN\", values = [\"1\"] }}]\n\
             [routes.session]\nsecret_env = \"{VAR}\"\n"
        );
        let snap = crate::runtime::load_str(&text, std::path::Path::new("t.toml"), None)
            .unwrap_or_else(|_| panic!("compiles"));
        let table: &Table = &snap;
        table.clone()
    }

    fn now() -> (SystemTime, u64) {
        let s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        (UNIX_EPOCH + Duration::from_secs(s), s)
    }

    fn pin(pool: &str, issued: u64, seen: u64) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
        format!("sy_ver={}", Session::sign(&key, "web", pool, issued, seen))
    }

    fn decide(
        t: &Table,
        cookie: Option<&str>,
        extra: &[(&'static str, &'static str)],
        at: SystemTime,
    ) -> (String, Why, Option<SessionDecision>) {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_static("u1"));
        if let Some(c) = cookie {
            h.insert("cookie", HeaderValue::from_str(c).unwrap());
        }
        for (k, v) in extra {
            h.insert(*k, HeaderValue::from_static(v));
        }
        let view = RequestView {
            host: "x",
            path: "/",
            query: None,
            headers: &h,
            method: &http::Method::GET,
            peer: Some([127, 0, 0, 1].into()),
        };
        let d = t.decide(&view, None, at).unwrap();
        (t.pool_names[d.pool].to_string(), d.why, d.session)
    }

    #[test]
    fn a_pin_holds_on_a_pool_at_weight_0_and_is_written_again_only_after_the_refresh() {
        let t = table("blue = 0, green = 100");
        let (at, s) = now();
        let (pool, why, d) = decide(&t, Some(&pin("blue", s - 100, s - 50)), &[], at);
        assert_eq!((pool.as_str(), why), ("blue", Why::Pin));
        assert_eq!(
            d.unwrap(),
            SessionDecision {
                outcome: Outcome::Pinned {
                    issued: s - 100,
                    seen: s - 50
                },
                write: None
            }
        );
        // idle 30m: written again from 112 s after it was last written, keeping when it began.
        let (_, _, d) = decide(&t, Some(&pin("blue", s - 1000, s - 112)), &[], at);
        assert_eq!(d.unwrap().write, Some((t.pool_index("blue").unwrap(), s - 1000)));
        // No pin: the split, and a new pin there.
        let (pool, why, d) = decide(&t, None, &[], at);
        assert_eq!((pool.as_str(), why), ("green", Why::Split));
        assert_eq!(
            d.unwrap(),
            SessionDecision {
                outcome: Outcome::Split { ended: None },
                write: Some((t.pool_index("green").unwrap(), s))
            }
        );
    }

    #[test]
    fn overrides_and_rules_come_first_and_leave_the_pin_alone() {
        let t = table("blue = 0, green = 100");
        let (at, s) = now();
        let green = pin("green", s, s);
        let (pool, why, d) = decide(&t, Some(&green), &[("x-beta", "1")], at);
        assert_eq!((pool.as_str(), why, d), ("blue", Why::Rule(0), None));
        let (pool, why, d) = decide(&t, Some(&green), &[("x-pool", "blue")], at);
        assert_eq!((pool.as_str(), why, d), ("blue", Why::OverrideHeader, None));
    }

    #[test]
    fn trips_rollbacks_and_a_fleets_hold_decide_over_the_pin() {
        let base = table("blue = 50, green = 50");
        let (at, s) = now();
        let green = pin("green", s, s);
        let (g, b) = (
            base.pool_index("green").unwrap(),
            base.pool_index("blue").unwrap(),
        );
        let with = |f: &dyn Fn(&mut crate::routing::Route)| {
            let mut t = base.clone();
            let mut r = (*t.routes[0]).clone();
            f(&mut r);
            t.routes[0] = std::sync::Arc::new(r);
            t
        };
        let tripped = with(&|r| {
            r.runtime.tripped = vec![g];
            r.effective = crate::routing::Split::new(&[(b, 1), (g, 0)]);
        });
        let (pool, _, d) = decide(&tripped, Some(&green), &[], at);
        assert_eq!(pool, "blue");
        assert_eq!(
            d.unwrap(),
            SessionDecision {
                outcome: Outcome::Split {
                    ended: Some((Ended::Tripped, Some(g)))
                },
                write: Some((b, s))
            }
        );
        let rolled = with(&|r| {
            r.runtime.tripped = vec![g];
            r.runtime.rolled_back = vec![g];
            r.effective = crate::routing::Split::new(&[(b, 1), (g, 0)]);
        });
        assert_eq!(
            decide(&rolled, Some(&green), &[], at).2.unwrap().outcome,
            Outcome::Split {
                ended: Some((Ended::RolledBack, Some(g)))
            }
        );
        let held = with(&|r| {
            r.runtime.held = true;
            r.effective = crate::routing::Split::new(&[(b, 1), (g, 0)]);
        });
        let (pool, _, d) = decide(&held, Some(&green), &[], at);
        assert_eq!(
            (pool.as_str(), d.unwrap()),
            (
                "blue",
                SessionDecision {
                    outcome: Outcome::Held,
                    write: None
                }
            )
        );
        // No secret here (as for `explain` on another machine): the pin is not judged.
        let keyless = with(&|r| {
            let mut s = (**r.session.as_ref().unwrap()).clone();
            s.key = None;
            r.session = Some(std::sync::Arc::new(s));
        });
        assert_eq!(
            decide(&keyless, Some(&green), &[], at).2.unwrap(),
            SessionDecision {
                outcome: Outcome::Unverifiable,
                write: None
            }
        );
    }

    #[test]
    fn explain_says_whether_the_pin_holds_and_why_not() {
        std::env::set_var(VAR, std::str::from_utf8(SECRET).unwrap());
        let snap = crate::runtime::load_str(
            &format!(
                "[listen]\nhttp = \"127.0.0.1:0\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.green]\nendpoints = [\"127.0.0.1:2\"]\n\
                 [[routes]]\nname = \"web\"\nsplit = {{ blue = 0, green = 100 }}\n[routes.session]\nsecret_env = \"{VAR}\"\n"
            ),
            std::path::Path::new("t.toml"),
            None,
        )
        .unwrap_or_else(|_| panic!("compiles"));
        let (at, s) = now();
        let ask = |cookie: String| {
            let mut headers = HeaderMap::new();
            headers.insert("host", HeaderValue::from_static("shop"));
            headers.insert("cookie", HeaderValue::from_str(&cookie).unwrap());
            let q = crate::proxy::explain::Question {
                method: http::Method::GET,
                uri: "http://shop/".parse().unwrap(),
                headers,
                user: Some("u1".into()),
                client: None,
            };
            crate::proxy::explain::explain(&snap, &q, at, None).to_string()
        };
        let held = ask(pin("blue", s - 60, s - 30));
        assert!(
            held.contains("pool:     blue — session pin: cookie sy_ver pins the user to blue"),
            "{held}"
        );
        assert!(
            held.contains("session:  cookie sy_ver, idle 30m, max_age 12h: the pin holds (session began"),
            "{held}"
        );
        let lapsed = ask(pin("blue", s - 7200, s - 7200));
        assert!(lapsed.contains("the request's pin is ignored: it lapsed: no request for the session's idle time; the response pins the user to green"), "{lapsed}");
        assert!(lapsed.contains("response: set-cookie: sy_ver=green."), "{lapsed}");
    }
}
