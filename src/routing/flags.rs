//! Feature flags, evaluated per request and sent upstream as one RFC 8941 dictionary header
//! (`new_checkout=on, dark_mode=off, search=treatment`), so services read flags from the request
//! instead of calling a flag service. The formulas are Unleash's (see [`super::bucket`]), so an
//! app using an Unleash SDK with the same flag name (group) and user id gets the same answer.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use super::bucket;

/// One compiled `[[flags]]` entry.
#[derive(Debug, Clone)]
pub struct Flag {
    pub name: Arc<str>,
    /// Hash group (Unleash's groupId); the name unless set.
    pub group: String,
    /// Sticky rollout percentage, 0..=100.
    pub percent: u32,
    /// Keys for which the flag is always on.
    pub users: HashSet<String>,
    /// False when `environments` is set and does not name this deployment's `[env] name`.
    pub env_enabled: bool,
    pub start: Option<SystemTime>,
    pub end: Option<SystemTime>,
    /// `(variant name, weight)` in written order; empty for an on/off flag.
    pub variants: Vec<(String, u32)>,
    pub(crate) variant_total: u32,
    /// Route names this flag is limited to; `None`: every route.
    pub routes: Option<Vec<String>>,
}

/// What a flag evaluated to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    On,
    Off,
    /// Index into [`Flag::variants`].
    Variant(usize),
}

/// Why, for `switchyard explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Outside `start`..`end`.
    OutsideWindow,
    /// `environments` does not name this deployment.
    OtherEnvironment,
    /// The key is in `users`.
    Listed,
    /// The user's bucket (1..=100) against the percentage.
    Rollout { bucket: u32, percent: u32 },
}

impl Flag {
    /// Evaluates the flag for a user key at time `now`.
    pub fn evaluate(&self, key: &str, now: SystemTime) -> (Value, Reason) {
        if !self.env_enabled {
            return (Value::Off, Reason::OtherEnvironment);
        }
        if self.start.is_some_and(|s| now < s) || self.end.is_some_and(|e| now >= e) {
            return (Value::Off, Reason::OutsideWindow);
        }
        let (on, reason) = if !self.users.is_empty() && self.users.contains(key) {
            (true, Reason::Listed)
        } else {
            let b = if self.percent == 0 {
                0
            } else {
                bucket::flag_bucket(&self.group, key)
            };
            (
                self.percent > 0 && b <= self.percent,
                Reason::Rollout {
                    bucket: b,
                    percent: self.percent,
                },
            )
        };
        if !on {
            return (Value::Off, reason);
        }
        if self.variants.is_empty() {
            return (Value::On, reason);
        }
        let target = bucket::variant_target(&self.group, key, self.variant_total);
        let mut sum = 0;
        for (i, (_, w)) in self.variants.iter().enumerate() {
            sum += w;
            if sum >= target {
                return (Value::Variant(i), reason);
            }
        }
        (Value::Variant(self.variants.len() - 1), reason)
    }

    /// The value as an RFC 8941 token.
    /// Whether `other` gives every key the value this flag gives it (the same definition; the
    /// routes a flag is limited to do not change its value).
    pub fn decides_like(&self, other: &Flag) -> bool {
        self.group == other.group
            && self.percent == other.percent
            && self.users == other.users
            && self.env_enabled == other.env_enabled
            && self.start == other.start
            && self.end == other.end
            && self.variants == other.variants
    }

    pub fn token(&self, value: Value) -> &str {
        match value {
            Value::On => "on",
            Value::Off => "off",
            Value::Variant(i) => &self.variants[i].0,
        }
    }
}

/// True for an RFC 8941 dictionary key: `[a-z*][a-z0-9_.*-]*`.
pub fn is_key(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_lowercase() || c == b'*')
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'.' | b'*'))
}

/// True for an RFC 8941 token: `[A-Za-z*][A-Za-z0-9!#$%&'*+.^_`|~:/-]*`.
pub fn is_token(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'*')
        && b.all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) fn flag(name: &str, percent: u32) -> Flag {
        Flag {
            name: name.into(),
            group: name.to_owned(),
            percent,
            users: HashSet::new(),
            env_enabled: true,
            start: None,
            end: None,
            variants: Vec::new(),
            variant_total: 0,
            routes: None,
        }
    }

    #[test]
    fn percent_follows_the_unleash_bucket() {
        // flag_bucket("new_checkout", "alice") = 21, ("new_checkout", "bob") = 86.
        let now = SystemTime::now();
        let f = flag("new_checkout", 21);
        assert_eq!(f.evaluate("alice", now).0, Value::On);
        assert_eq!(f.evaluate("bob", now).0, Value::Off);
        assert_eq!(flag("new_checkout", 20).evaluate("alice", now).0, Value::Off);
        assert_eq!(flag("new_checkout", 0).evaluate("alice", now).0, Value::Off);
        assert_eq!(flag("new_checkout", 100).evaluate("bob", now).0, Value::On);
    }

    #[test]
    fn users_windows_and_environments() {
        let now = SystemTime::now();
        let mut f = flag("beta", 0);
        f.users.insert("qa-1".into());
        assert_eq!(f.evaluate("qa-1", now), (Value::On, Reason::Listed));
        assert_eq!(f.evaluate("qa-2", now).0, Value::Off);
        f.start = Some(now + Duration::from_secs(60));
        assert_eq!(f.evaluate("qa-1", now), (Value::Off, Reason::OutsideWindow));
        f.start = Some(now - Duration::from_secs(60));
        f.end = Some(now);
        assert_eq!(
            f.evaluate("qa-1", now).1,
            Reason::OutsideWindow,
            "end is exclusive"
        );
        f.end = None;
        f.env_enabled = false;
        assert_eq!(f.evaluate("qa-1", now), (Value::Off, Reason::OtherEnvironment));
    }

    #[test]
    fn variants_walk_in_written_order() {
        // variant_target("new_checkout", "alice", 1000) = 175, ("new_checkout", "bob", 1000) = 226.
        let now = SystemTime::now();
        let mut f = flag("new_checkout", 100);
        f.variants = vec![("control".into(), 200), ("treatment".into(), 800)];
        f.variant_total = 1000;
        assert_eq!(f.token(f.evaluate("alice", now).0), "control");
        assert_eq!(f.token(f.evaluate("bob", now).0), "treatment");
    }

    #[test]
    fn sf_keys_and_tokens() {
        assert!(is_key("new_checkout") && is_key("a.b-c*") && !is_key("New") && !is_key("1a") && !is_key(""));
        assert!(is_token("treatment") && is_token("B/2") && !is_token("2b") && !is_token("a b"));
    }
}
