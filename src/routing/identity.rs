//! Who the user is, for sticky decisions: the first of `identity.from` present in the request
//! (header, cookie or query parameter); else the anonymous id in `identity.cookie`; else a new
//! random id, which the proxy sets as that cookie so the next request is sticky too.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName};

/// One place a user key can come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFrom {
    Header(HeaderName),
    Cookie(String),
    Query(String),
}

/// The compiled `[identity]` table.
#[derive(Debug, Clone)]
pub struct Identity {
    pub from: Vec<KeyFrom>,
    /// The cookie that carries an anonymous id.
    pub cookie: String,
    pub salt: String,
}

impl Default for Identity {
    fn default() -> Identity {
        Identity {
            from: vec![KeyFrom::Header(HeaderName::from_static("x-user-id"))],
            cookie: "sy_uid".to_owned(),
            salt: "switchyard".to_owned(),
        }
    }
}

/// Where a request's user key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// One of `identity.from`.
    From(KeyFrom),
    /// The anonymous-id cookie set on an earlier response.
    AnonymousCookie,
    /// None was present: a new id, to be set as the anonymous cookie.
    New,
    /// Given on the command line (`switchyard explain --user`).
    Given,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::From(KeyFrom::Header(h)) => write!(f, "header {h}"),
            KeySource::From(KeyFrom::Cookie(c)) => write!(f, "cookie {c}"),
            KeySource::From(KeyFrom::Query(q)) => write!(f, "query parameter {q}"),
            KeySource::AnonymousCookie => f.write_str("anonymous-id cookie"),
            KeySource::New => f.write_str("new anonymous id (set as a cookie on the response)"),
            KeySource::Given => f.write_str("--user"),
        }
    }
}

impl Identity {
    /// The request's user key and where it came from. A new id is made only when nothing in
    /// the request names the user.
    pub fn key<'r>(&self, headers: &'r HeaderMap, query: Option<&'r str>) -> (Cow<'r, str>, KeySource) {
        for from in &self.from {
            let found = match from {
                KeyFrom::Header(h) => super::header(headers, h)
                    .and_then(|v| v.to_str().ok())
                    .map(Cow::Borrowed),
                KeyFrom::Cookie(name) => cookie(headers, name).map(Cow::Borrowed),
                KeyFrom::Query(name) => query.and_then(|q| query_param(q, name)),
            };
            if let Some(k) = found.filter(|k| !k.is_empty()) {
                return (k, KeySource::From(from.clone()));
            }
        }
        if let Some(k) = cookie(headers, &self.cookie).filter(|k| !k.is_empty()) {
            return (Cow::Borrowed(k), KeySource::AnonymousCookie);
        }
        (Cow::Owned(new_id()), KeySource::New)
    }

    /// The `Set-Cookie` value that makes a new anonymous id stick for a year.
    pub fn set_cookie(&self, id: &str) -> String {
        format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age=31536000",
            self.cookie
        )
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
///
/// Read as the `cookie` crate's `split_parse` reads it (pairs split on `;`, name and value
/// trimmed, pairs without `=` or without a name skipped; a test holds the two to the same
/// answers), but by searching the header for the name's first byte (SIMD `memchr`) and checking that it
/// starts a pair: a browser's cookie header is read on every request of a route whose identity
/// or session lives in a cookie, and the crate's parse of a 100-byte header took 273 ns (`benches/decision.rs`, `session/`). A header
/// with non-ASCII bytes elsewhere (another site's UTF-8 cookie) does not hide this cookie.
pub fn cookie<'r>(headers: &'r HeaderMap, name: &str) -> Option<&'r str> {
    let n = name.as_bytes();
    // A name is trimmed in the header: one with blanks at its ends names nothing.
    if n.first().is_none_or(blank) || n.last().is_some_and(blank) {
        return None;
    }
    cookie_bytes(headers, n).and_then(|v| std::str::from_utf8(v).ok())
}

/// [`cookie`]'s value as bytes (`n` not blank at its ends).
pub fn cookie_bytes<'r>(headers: &'r HeaderMap, n: &[u8]) -> Option<&'r [u8]> {
    // A request has a handful of fields: comparing names costs less than hashing one (as
    // `routing::header` does).
    if headers.len() <= 12 {
        headers
            .iter()
            .filter(|(k, _)| *k == header::COOKIE)
            .find_map(|(_, v)| cookie_in(v.as_bytes(), n))
    } else {
        headers
            .get_all(header::COOKIE)
            .iter()
            .find_map(|v| cookie_in(v.as_bytes(), n))
    }
}

fn blank(c: &u8) -> bool {
    matches!(c, b' ' | b'\t')
}

/// The value of the first pair named `n` in one cookie header.
fn cookie_in<'r>(b: &'r [u8], n: &[u8]) -> Option<&'r [u8]> {
    // (A `memmem` searcher costs more to build than a cookie header takes to scan.)
    let first = *n.first()?;
    for i in memchr::memchr_iter(first, b).filter(|&i| b[i..].starts_with(n)) {
        // Only blanks between the name and the header's start or a `;`.
        if !matches!(b[..i].iter().rev().find(|c| !blank(c)), None | Some(b';')) {
            continue;
        }
        // Then only blanks up to the `=`.
        let rest = &b[i + n.len()..];
        let Some(eq) = rest.iter().position(|c| !blank(c)).filter(|&j| rest[j] == b'=') else {
            continue;
        };
        let value = &rest[eq + 1..];
        let value = &value[..memchr::memchr(b';', value).unwrap_or(value.len())];
        let start = value.iter().position(|c| !blank(c)).unwrap_or(value.len());
        let end = value.iter().rposition(|c| !blank(c)).map_or(start, |e| e + 1);
        return Some(&value[start..end]);
    }
    None
}

pub fn query_param<'r>(query: &'r str, name: &str) -> Option<Cow<'r, str>> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// A new anonymous id: 32 random hex digits.
pub fn new_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    proptest! {
        /// The scan finds what the `cookie` crate finds, in any cookie header.
        #[test]
        fn cookie_lookup_agrees_with_the_cookie_crate(
            pairs in proptest::collection::vec(("[ a-c=\"]{0,4}", "[ a-c=\";]{0,5}"), 0..6),
            seps in proptest::collection::vec(prop_oneof![Just(";"), Just("; "), Just(" ;"), Just(";;")], 6),
            name in prop_oneof![Just("a"), Just("b"), Just("ab"), Just(" a")],
        ) {
            let mut text = String::new();
            for (i, (n, v)) in pairs.iter().enumerate() {
                if i > 0 {
                    text.push_str(seps[i]);
                }
                text.push_str(n);
                text.push('=');
                text.push_str(v);
            }
            let Ok(value) = HeaderValue::from_str(&text) else { return Ok(()) };
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, value);
            let oracle = cookie::Cookie::split_parse(text.as_str())
                .filter_map(Result::ok)
                .find(|c| c.name() == name)
                .and_then(|c| c.value_raw());
            prop_assert_eq!(cookie(&headers, name), oracle, "{:?}", text);
        }
    }

    fn identity() -> Identity {
        Identity {
            from: vec![
                KeyFrom::Header(HeaderName::from_static("x-user-id")),
                KeyFrom::Cookie("session_user".into()),
                KeyFrom::Query("uid".into()),
            ],
            ..Identity::default()
        }
    }

    #[test]
    fn the_first_source_present_wins() {
        let id = identity();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; session_user=carol; sy_uid=anon"),
        );
        assert_eq!(
            id.key(&h, Some("uid=dave")),
            (
                "carol".into(),
                KeySource::From(KeyFrom::Cookie("session_user".into()))
            )
        );
        h.insert("x-user-id", HeaderValue::from_static("alice"));
        assert_eq!(id.key(&h, Some("uid=dave")).0, "alice");
        let h = HeaderMap::new();
        assert_eq!(id.key(&h, Some("x=1&uid=d%C3%A4ve")).0, "däve");
    }

    #[test]
    fn anonymous_cookie_then_a_new_id() {
        let id = identity();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("sy_uid=0123abcd"));
        assert_eq!(id.key(&h, None), ("0123abcd".into(), KeySource::AnonymousCookie));
        let none = HeaderMap::new();
        let (k, src) = id.key(&none, None);
        assert_eq!((k.len(), src), (32, KeySource::New));
        assert_eq!(
            id.set_cookie("abc"),
            "sy_uid=abc; Path=/; HttpOnly; SameSite=Lax; Max-Age=31536000"
        );
    }

    #[test]
    fn empty_values_do_not_count() {
        let id = identity();
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_static(""));
        h.insert(header::COOKIE, HeaderValue::from_static("session_user=bob"));
        assert_eq!(id.key(&h, None).0, "bob");
    }
}
