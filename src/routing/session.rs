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
        let mut parts = value.rsplitn(4, '.');
        let (Some(sig), Some(seen), Some(issued), Some(pool)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let (Ok(seen), Ok(issued)) = (seen.parse::<u64>(), issued.parse::<u64>()) else {
            return None;
        };
        // A signature is 32 bytes: 43 characters. Anything else is not worth decoding.
        if sig.len() != 43 {
            return None;
        }
        let mut tag = [0u8; 33];
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(sig, &mut tag) {
            Ok(32) => {}
            _ => return None,
        }
        let signed = &value[..value.len() - sig.len() - 1];
        let mut ctx = ring::hmac::Context::with_key(key);
        message(&mut ctx, route, signed);
        let expected = ctx.sign();
        constant_time_eq(expected.as_ref(), &tag[..32]).then_some(Pin { pool, issued, seen })
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
        let s = Session {
            cookie: "sy_ver".into(),
            idle: Duration::from_secs(IDLE),
            max_age: Duration::from_secs(MAX),
            secret_env: DEFAULT_SECRET_ENV.into(),
            key: Some(Arc::new(key(b"0123456789abcdef"))),
        };
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
