//! Who may force a pool with a route's override header or cookie (`[overrides]`). Overrides
//! are a tester's tool: a value is honoured when the client's address (after
//! `trusted_proxies`) is in `from` (loopback only by default), or when it is a token signed with
//! `secret_env`'s secret (`switchyard override-token POOL`), and never to a pool that a guard
//! tripped or an operator rolled back unless `to_tripped = true`.
//!
//! A token is `POOL.EXPIRY.SIGNATURE`: the pool's name, the Unix second it expires, and the
//! HMAC-SHA256 of `switchyard-override:POOL.EXPIRY` under the secret, base64url without padding.

use std::sync::Arc;

use base64::Engine;

use super::unleash::ops::Cidr;

/// The compiled `[overrides]`.
#[derive(Debug, Clone)]
pub struct OverridePolicy {
    /// Client addresses whose plain override values are honoured.
    pub from: Vec<Cidr>,
    /// The variable holding the signing secret, as configured.
    pub secret_env: Option<String>,
    /// The key signed values are checked with (`None`: no secret, only `from` counts).
    pub key: Option<Arc<ring::hmac::Key>>,
    /// Whether an override may send a request to a tripped or rolled-back pool.
    pub to_tripped: bool,
}

impl Default for OverridePolicy {
    fn default() -> OverridePolicy {
        OverridePolicy {
            from: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|c| Cidr::parse(c))
                .collect(),
            secret_env: None,
            key: None,
            to_tripped: false,
        }
    }
}

/// Why an override value was not honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It names no pool of the route.
    UnknownPool,
    /// The client may not override (not in `from`, and no valid signature).
    NotAllowed,
    /// A signed value whose signature is wrong, or whose time is past.
    BadToken,
    /// The pool is tripped or rolled back, and `to_tripped` is off.
    Tripped,
}

impl Refused {
    pub fn describe(self) -> &'static str {
        match self {
            Refused::UnknownPool => "it names no pool of this route",
            Refused::NotAllowed => "this client may not override ([overrides] from, or a signed value)",
            Refused::BadToken => "its signature is wrong or it has expired",
            Refused::Tripped => "the pool is tripped or rolled back ([overrides] to_tripped is off)",
        }
    }
}

fn message(pool: &str, expires: u64) -> String {
    format!("switchyard-override:{pool}.{expires}")
}

/// A token for `pool` that expires at `expires` (Unix seconds).
pub fn sign(key: &ring::hmac::Key, pool: &str, expires: u64) -> String {
    let tag = ring::hmac::sign(key, message(pool, expires).as_bytes());
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref());
    format!("{pool}.{expires}.{sig}")
}

/// What a value says: `Ok(Some(pool))` for a valid token, `Ok(None)` for a value that is not a
/// token (a plain pool name), `Err` for a token that does not verify or has expired.
pub fn verify<'v>(key: &ring::hmac::Key, value: &'v str, now_s: u64) -> Result<Option<&'v str>, Refused> {
    let mut parts = value.rsplitn(3, '.');
    let (Some(sig), Some(expires), Some(pool)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(None);
    };
    let Ok(expires_at) = expires.parse::<u64>() else {
        return Ok(None);
    };
    let Ok(sig) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig) else {
        return Err(Refused::BadToken);
    };
    ring::hmac::verify(key, message(pool, expires_at).as_bytes(), &sig).map_err(|_| Refused::BadToken)?;
    if expires_at <= now_s {
        return Err(Refused::BadToken);
    }
    Ok(Some(pool))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire_and_not_under_another_key() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
        let t = sign(&key, "canary.v2", 2_000);
        assert_eq!(verify(&key, &t, 1_999), Ok(Some("canary.v2")));
        assert_eq!(verify(&key, &t, 2_000), Err(Refused::BadToken));
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"other");
        assert_eq!(verify(&other, &t, 1_000), Err(Refused::BadToken));
        // Another pool or time under the same signature.
        let forged = t.replacen("canary.v2", "blue.v2", 1);
        assert_eq!(verify(&key, &forged, 1_000), Err(Refused::BadToken));
        let later = t.replace(".2000.", ".9999.");
        assert_eq!(verify(&key, &later, 1_000), Err(Refused::BadToken));
        // A plain name is not a token.
        assert_eq!(verify(&key, "canary", 1_000), Ok(None));
        assert_eq!(verify(&key, "canary.v2", 1_000), Ok(None));
    }
}
