//! The request target: which host and path a request is for, as routing uses them and as the
//! upstream then receives them (so the two can never disagree).
//!
//! - **Host** (RFC 9112 §3.2, RFC 9113 §8.3.1): the target's authority when it has one (an
//!   absolute-form target on HTTP/1.1, `:authority` on HTTP/2), else the `Host` field. A
//!   request with two `Host` lines, none at all on HTTP/1.1, or one that is not a host name, an
//!   IPv4 address or a bracketed IPv6 address with an optional port (no user info, no list,
//!   nothing empty) is refused.
//! - **Path** (RFC 3986 §6.2.2): percent-escapes of unreserved characters are decoded and
//!   dot-segments removed before routing, as Envoy's `normalize_path` does, so `/x/../evil/`
//!   and `/%65vil/` are routed as `/evil/` is, and the upstream gets that path. Other escapes
//!   (`%2F` among them) are left as written.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::Version;

/// Why a request's host cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the request has no Host")]
    Missing,
    #[error("the request has more than one Host")]
    Duplicate,
    #[error("the request's host is not a valid host")]
    Invalid,
}

/// The host a request is for (see the module doc), as the header value the upstream gets;
/// `None` for an HTTP/1.0 request that names none.
pub fn host(uri: &Uri, headers: &HeaderMap, version: Version) -> Result<Option<HeaderValue>, HostError> {
    let mut lines = headers.get_all(header::HOST).iter();
    let field = lines.next();
    if lines.next().is_some() {
        return Err(HostError::Duplicate);
    }
    if let Some(f) = field {
        if !valid_host(f.as_bytes()) {
            return Err(HostError::Invalid);
        }
    }
    match uri.authority() {
        Some(a) => authority(a).map(Some),
        None if field.is_none() && version == Version::HTTP_11 => Err(HostError::Missing),
        None if field.is_none() && version == Version::HTTP_2 => Err(HostError::Missing),
        None => Ok(field.cloned()),
    }
}

fn authority(a: &Authority) -> Result<HeaderValue, HostError> {
    let text = a.as_str();
    if !valid_host(text.as_bytes()) {
        return Err(HostError::Invalid);
    }
    HeaderValue::from_str(text).map_err(|_| HostError::Invalid)
}

/// `host [ ":" port ]`: a name or IPv4 address of unreserved characters, or a bracketed IPv6
/// address; the port at most five digits, at most 65535.
pub fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if v.first() == Some(&b'[') {
        let Some(end) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &v[1..end];
        let ip = std::str::from_utf8(inner)
            .ok()
            .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok());
        if ip.is_none() {
            return false;
        }
        (&v[..=end], &v[end + 1..])
    } else {
        let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
        let host = &v[..end];
        if host.is_empty() || host.len() > 255 || !host.iter().all(|&b| UNRESERVED[b as usize]) {
            return false;
        }
        (host, &v[end..])
    };
    debug_assert!(!host.is_empty());
    match port {
        [] => true,
        [b':', digits @ ..] => {
            digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65535
        }
        _ => false,
    }
}

/// RFC 3986 `unreserved`: ALPHA, DIGIT, `-`, `.`, `_`, `~`.
static UNRESERVED: [bool; 256] = crate::http1::head::byte_set!(
    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~'
);

/// The path with unreserved escapes decoded and dot-segments removed; borrowed when it is
/// already normal (the common case, found with one scan).
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    if !needs_normalizing(path.as_bytes()) {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path.as_bytes());
    // Only unreserved (ASCII) bytes were decoded: still UTF-8 wherever the input was.
    let decoded =
        String::from_utf8(decoded).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Cow::Owned(remove_dot_segments(&decoded))
}

/// The request's path and query with the path normalized; `None` when nothing changes.
pub fn normalized(uri: &Uri) -> Option<PathAndQuery> {
    let pq = uri.path_and_query()?;
    let Cow::Owned(path) = normalize_path(pq.path()) else {
        return None;
    };
    let text = match pq.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    PathAndQuery::from_maybe_shared(text).ok()
}

/// Whether a path has an escape or a `.` segment.
fn needs_normalizing(p: &[u8]) -> bool {
    p.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            || (b == b'.' && (i == 0 || p[i - 1] == b'/') && {
                let rest = &p[i + 1..];
                rest.is_empty()
                    || rest[0] == b'/'
                    || (rest[0] == b'.' && (rest.len() == 1 || rest[1] == b'/'))
            })
    })
}

/// Decodes `%XX` escapes that stand for unreserved characters; others stay as written.
fn decode_unreserved(p: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        if p[i] == b'%' && i + 2 < p.len() {
            if let (Some(h), Some(l)) = (hex(p[i + 1]), hex(p[i + 2])) {
                let c = h << 4 | l;
                if UNRESERVED[c as usize] {
                    out.push(c);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(p[i]);
        i += 1;
    }
    out
}

/// RFC 3986 §5.2.4, for an absolute path (a path not starting with `/` is left as it is).
fn remove_dot_segments(path: &str) -> String {
    if !path.starts_with('/') {
        return path.to_owned();
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(path.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if result.is_empty() {
        result.push('/');
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(hosts: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for h in hosts {
            m.append(header::HOST, HeaderValue::from_str(h).unwrap());
        }
        m
    }

    fn host_of(uri: &str, hosts: &[&str], version: Version) -> Result<Option<String>, HostError> {
        host(&uri.parse().unwrap(), &headers(hosts), version)
            .map(|h| h.map(|v| v.to_str().unwrap().to_owned()))
    }

    #[test]
    fn the_target_authority_wins_over_host() {
        let v11 = Version::HTTP_11;
        assert_eq!(
            host_of("/a", &["www.example.com"], v11),
            Ok(Some("www.example.com".into()))
        );
        assert_eq!(
            host_of("http://admin.example.com/a", &["www.example.com"], v11),
            Ok(Some("admin.example.com".into()))
        );
        assert_eq!(
            host_of("http://admin.example.com:8080/a", &["x"], Version::HTTP_2),
            Ok(Some("admin.example.com:8080".into()))
        );
        assert_eq!(host_of("/a", &[], Version::HTTP_10), Ok(None));
    }

    #[test]
    fn missing_duplicate_and_invalid_hosts_are_refused() {
        let v11 = Version::HTTP_11;
        assert_eq!(host_of("/a", &[], v11), Err(HostError::Missing));
        assert_eq!(host_of("/a", &[], Version::HTTP_2), Err(HostError::Missing));
        assert_eq!(host_of("/a", &["a", "a"], v11), Err(HostError::Duplicate));
        assert_eq!(host_of("http://a/", &["a", "b"], v11), Err(HostError::Duplicate));
        for bad in [
            "a, b", "a@b", "", "a b", "a/b", "a:port", "a:123456", "a:65536", "[::1", "[zz]", "a:1:2",
        ] {
            assert_eq!(host_of("/", &[bad], v11), Err(HostError::Invalid), "{bad:?}");
        }
        assert_eq!(
            host_of("http://user@a/", &["a"], v11),
            Err(HostError::Invalid),
            "user info"
        );
        for good in [
            "a",
            "A.example.com",
            "127.0.0.1:80",
            "[::1]:8080",
            "[::1]",
            "x_y-z~",
            "a:",
            "a:65535",
        ] {
            assert_eq!(host_of("/", &[good], v11), Ok(Some(good.to_owned())), "{good:?}");
        }
    }

    #[test]
    fn paths_lose_dot_segments_and_unreserved_escapes() {
        for (raw, want) in [
            ("/evil/", "/evil/"),
            ("/x/../evil/", "/evil/"),
            ("/%65vil/", "/evil/"),
            ("/%2e%2e/evil", "/evil"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../a", "/a"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a%2fb/%7E", "/a%2fb/~"),
            ("/a%zz", "/a%zz"),
            ("/a%4", "/a%4"),
            ("/a.b/..c/.d", "/a.b/..c/.d"),
            ("/a//b", "/a//b"),
            ("*", "*"),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw}");
        }
        assert!(matches!(normalize_path("/plain/path.html"), Cow::Borrowed(_)));
        let uri: Uri = "/x/../y?q=/../z".parse().unwrap();
        assert_eq!(
            normalized(&uri).unwrap().as_str(),
            "/y?q=/../z",
            "the query stays"
        );
        assert!(normalized(&"/y?q".parse().unwrap()).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn normal_paths_stay_normal_and_never_climb_above_the_root(
            segments in proptest::collection::vec(
                prop_oneof![Just("."), Just(".."), Just("%2e"), Just("%2E%2e"), Just("a"), Just("%61"), Just(""), Just("%2f")],
                0..10),
        ) {
            let path = format!("/{}", segments.join("/"));
            let once = normalize_path(&path).into_owned();
            prop_assert!(once.starts_with('/'));
            prop_assert_eq!(normalize_path(&once).into_owned(), once.clone(), "idempotent");
            prop_assert!(!once.split('/').any(|s| s == "." || s == ".."), "{}", once);
            prop_assert!(!once.contains("%2e") && !once.contains("%2E") && !once.contains("%61"));
            // The result is a valid path for the upstream request.
            prop_assert!(PathAndQuery::from_maybe_shared(once).is_ok());
        }
    }
}
