//! Header hygiene, both ways: hop-by-hop headers removed (RFC 9110 §7.6.1), the
//! `x-forwarded-*`, `via` and `x-request-id` headers added, and inbound `x-switchyard-*`
//! headers dropped so a client cannot pose as the proxy.
//!
//! One deliberate difference from a literal reading of the hop-by-hop list: `Trailer` is kept.
//! RFC 9110 §6.6.2 makes it end-to-end, and HTTP/1.1 encoders (hyper's among them) send only
//! the trailer fields it announces, so removing it would silently drop trailers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_SWITCHYARD_ERROR: HeaderName = HeaderName::from_static("x-switchyard-error");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The prefix of the headers only the proxy may set.
pub const INTERNAL_PREFIX: &str = "x-switchyard-";

/// True for an HTTP/1.1 upgrade request (`Connection: upgrade` with an `Upgrade` header).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && has_token(headers, &header::CONNECTION, "upgrade")
}

/// True when a comma-separated header has `token` (case-insensitive) in any of its values.
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Removes hop-by-hop headers. With `upgrade`, `Upgrade` and `Connection: upgrade` stay, so
/// the upgrade passes end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Headers named by Connection are hop-by-hop too. Collecting names allocates, but only
    // when a Connection header names something other than the usual keep-alive/close.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.eq_ignore_ascii_case("keep-alive")
                && !t.eq_ignore_ascii_case("close")
                && !t.eq_ignore_ascii_case("upgrade")
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TE);
    headers.remove(header::TRANSFER_ENCODING);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Removes every inbound `x-switchyard-*` header.
pub fn strip_internal(headers: &mut HeaderMap) {
    // Almost always there are none: check before collecting anything.
    if !headers.keys().any(|k| k.as_str().starts_with(INTERNAL_PREFIX)) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(INTERNAL_PREFIX))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Appends `value` to a list header (`x-forwarded-for`, `via`), folding earlier lines into one.
/// With nothing to append to, `value` goes in as it is: no string is built.
pub fn append_list(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    if !headers.contains_key(name) {
        headers.insert(name.clone(), value);
        return;
    }
    let mut joined = Vec::new();
    for v in headers.get_all(name) {
        joined.extend_from_slice(v.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(value.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(name.clone(), v);
    }
}

/// A new request id: 32 random hex digits.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for b in buf.iter_mut() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("trailer", "x-checksum"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["trailer", "x-end-to-end"]);
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_connection() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "1"),
        ]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(!h.contains_key("keep-alive"));
    }

    #[test]
    fn internal_headers_are_stripped_case_insensitively() {
        let mut h = map(&[
            ("X-Switchyard-Pool", "canary"),
            ("x-switchyard-flags", "a=on"),
            ("x-other", "1"),
        ]);
        strip_internal(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn lists_are_appended() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1"), ("x-forwarded-for", "10.0.0.2")]);
        append_list(&mut h, &X_FORWARDED_FOR, HeaderValue::from_static("127.0.0.1"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        let mut h = HeaderMap::new();
        append_list(&mut h, &X_FORWARDED_FOR, HeaderValue::from_static("::1"));
        assert_eq!(h["x-forwarded-for"], "::1");
    }

    #[test]
    fn request_ids_are_32_hex_digits_and_differ() {
        let a = new_request_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_request_id());
    }
}
