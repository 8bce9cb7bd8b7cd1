//! Header hygiene, both ways: hop-by-hop headers removed (RFC 9110 §7.6.1), the
//! `x-forwarded-*`, `via` and `x-request-id` headers added, and inbound `x-switchyard-*`
//! headers dropped so a client cannot pose as the proxy.
//!
//! Upstream, the client's header map is never changed: [`UpstreamFields`] walks it once,
//! leaving out what must not pass and adding the proxy's own fields, and the upstream client
//! writes what it yields straight into the request head (`explain` shows the same fields).
//! Downstream, the response's map is edited in place ([`strip_hop_by_hop`], [`append_list`]).
//!
//! One deliberate difference from a literal reading of the hop-by-hop list: `Trailer` is kept.
//! RFC 9110 §6.6.2 makes it end-to-end, and HTTP/1.1 encoders (hyper's among them) send only
//! the trailer fields it announces, so removing it would silently drop trailers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::routing::{header as find, HeaderSettings};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_SWITCHYARD_ERROR: HeaderName = HeaderName::from_static("x-switchyard-error");

/// The prefix of the headers only the proxy may set.
pub const INTERNAL_PREFIX: &str = "x-switchyard-";

/// True for an HTTP/1.1 upgrade request (`Connection: upgrade` with an `Upgrade` header).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    find(headers, &header::UPGRADE).is_some() && has_token(headers, &header::CONNECTION, "upgrade")
}

/// True when a comma-separated header has `token` (case-insensitive) in any of its values.
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The headers that are hop-by-hop by name alone (Connection may name more).
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

fn hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Removes hop-by-hop headers. With `upgrade`, `Upgrade` and `Connection: upgrade` stay, so
/// the upgrade passes end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One look at each name finds which are there (usually none, or only Connection), so
    // only those are removed.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if present[0] {
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
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The client's address as header text, formatted once per connection.
#[derive(Clone, Copy)]
pub struct PeerIp {
    buf: [u8; 48],
    len: u8,
}

impl PeerIp {
    pub fn new(ip: std::net::IpAddr) -> PeerIp {
        use std::io::Write;
        let mut buf = [0u8; 48];
        let mut rest = &mut buf[..];
        // An IPv6 address is at most 45 characters: this cannot run out of room.
        let _ = write!(rest, "{ip}");
        let len = (48 - rest.len()) as u8;
        PeerIp { buf, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

impl std::fmt::Debug for PeerIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// The decision as header fields: the pool, the bucket and the flags (DESIGN §3).
pub struct DecisionFields<'a> {
    pub pool: &'a HeaderValue,
    pub bucket: &'a [u8],
    pub flags: Option<&'a str>,
}

/// A request's header fields as they go upstream (DESIGN §3 "Headers sent upstream"), read
/// from the client's map without changing it: hop-by-hop fields (and those `Connection`
/// names) and inbound `x-switchyard-*` fields are left out; `Host` is kept (or added);
/// `x-forwarded-host`, `x-forwarded-proto` and `x-request-id` are replaced;
/// `x-forwarded-for` and `via` get this hop appended; `TE: trailers` passes; then the
/// decision fields. A header `[headers]` leaves out is neither added nor changed.
pub struct UpstreamFields<'a> {
    pub client: &'a HeaderMap,
    /// The request's host (`Host`, or the HTTP/2 authority).
    pub host: Option<&'a HeaderValue>,
    pub peer_ip: &'a [u8],
    pub tls: bool,
    /// This hop's `via` entry; `None`: `via` is left as the client sent it.
    pub via: Option<&'a HeaderValue>,
    /// The request's id; `None`: `x-request-id` is left as the client sent it.
    pub request_id: Option<&'a HeaderValue>,
    /// An HTTP/1.1 upgrade: `Upgrade` and `Connection: upgrade` pass.
    pub upgrade: bool,
    pub settings: &'a HeaderSettings,
    pub decision: DecisionFields<'a>,
}

impl UpstreamFields<'_> {
    /// Calls `f` with each field to send, in order: the client's that pass, then the proxy's.
    pub fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        // Names listed in Connection (other than its own tokens) are hop-by-hop too.
        let has_connection = find(self.client, &header::CONNECTION).is_some();
        let named = |name: &HeaderName| {
            self.client.get_all(header::CONNECTION).iter().any(|v| {
                v.as_bytes()
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(name.as_str().as_bytes()))
            })
        };
        let mut te_trailers = false;
        let mut host_seen = false;
        let (mut forwarded_for, mut via) = (0usize, 0usize);
        for (name, value) in self.client {
            if hop_by_hop(name) {
                if name == header::TE {
                    te_trailers |= value
                        .as_bytes()
                        .split(|&b| b == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
                } else if name == header::UPGRADE && self.upgrade {
                    f(name.as_str().as_bytes(), value.as_bytes());
                }
                continue;
            }
            if has_connection && named(name) {
                continue;
            }
            let set = self.settings;
            if name == header::HOST {
                host_seen = true;
            } else if name == X_FORWARDED_FOR && set.forwarded {
                forwarded_for += 1;
                continue;
            } else if name == header::VIA && self.via.is_some() {
                via += 1;
                continue;
            } else if (name == X_REQUEST_ID && self.request_id.is_some())
                || (set.forwarded
                    && (name == X_FORWARDED_PROTO || (name == X_FORWARDED_HOST && self.host.is_some())))
                || name.as_str().starts_with(INTERNAL_PREFIX)
                || [&set.flags, &set.pool, &set.bucket]
                    .into_iter()
                    .any(|n| n.as_ref() == Some(name))
            {
                continue;
            }
            f(name.as_str().as_bytes(), value.as_bytes());
        }
        if self.upgrade {
            f(b"connection", b"upgrade");
        }
        if te_trailers {
            f(b"te", b"trailers");
        }
        let set = self.settings;
        if let Some(host) = self.host {
            if !host_seen {
                f(b"host", host.as_bytes());
            }
            if set.forwarded {
                f(X_FORWARDED_HOST.as_str().as_bytes(), host.as_bytes());
            }
        }
        if set.forwarded {
            self.list(f, &X_FORWARDED_FOR, forwarded_for, self.peer_ip);
            f(
                X_FORWARDED_PROTO.as_str().as_bytes(),
                if self.tls { b"https" } else { b"http" },
            );
        }
        if let Some(this_hop) = self.via {
            self.list(f, &header::VIA, via, this_hop.as_bytes());
        }
        if let Some(id) = self.request_id {
            f(X_REQUEST_ID.as_str().as_bytes(), id.as_bytes());
        }
        let d = &self.decision;
        if let Some(name) = &set.pool {
            f(name.as_str().as_bytes(), d.pool.as_bytes());
        }
        if let Some(name) = &set.bucket {
            f(name.as_str().as_bytes(), d.bucket);
        }
        if let (Some(name), Some(flags)) = (&set.flags, d.flags) {
            f(name.as_str().as_bytes(), flags.as_bytes());
        }
    }

    /// A list field with this hop appended to the client's `count` lines of it, folded into
    /// one. With none to append to, no string is built.
    fn list(&self, f: &mut dyn FnMut(&[u8], &[u8]), name: &HeaderName, count: usize, this_hop: &[u8]) {
        if count == 0 {
            f(name.as_str().as_bytes(), this_hop);
            return;
        }
        let mut joined = Vec::with_capacity(64);
        for v in self.client.get_all(name) {
            joined.extend_from_slice(v.as_bytes());
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(this_hop);
        f(name.as_str().as_bytes(), &joined);
    }

    /// The fields as a header map (for `explain`).
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        self.for_each(&mut |name, value| {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                map.append(n, v);
            }
        });
        map
    }
}

impl crate::upstream::client::Fields for UpstreamFields<'_> {
    fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        UpstreamFields::for_each(self, f)
    }

    fn has_content_length(&self) -> bool {
        find(self.client, &header::CONTENT_LENGTH).is_some()
    }
}

/// Appends `value` to a list header (`x-forwarded-for`, `via`), folding earlier lines into one.
/// With nothing to append to, `value` goes in as it is: no string is built.
pub fn append_list(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    if find(headers, name).is_none() {
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

    fn upstream(client: &HeaderMap, upgrade: bool) -> HeaderMap {
        upstream_with(client, upgrade, &HeaderSettings::default())
    }

    fn upstream_with(client: &HeaderMap, upgrade: bool, settings: &HeaderSettings) -> HeaderMap {
        let pool = HeaderValue::from_static("canary");
        let host = client.get("host").cloned();
        let (via, id) = (
            HeaderValue::from_static("1.1 switchyard"),
            HeaderValue::from_static("rid"),
        );
        UpstreamFields {
            client,
            host: host.as_ref(),
            peer_ip: PeerIp::new("10.1.2.3".parse().unwrap()).as_bytes(),
            tls: true,
            via: settings.via.then_some(&via),
            request_id: settings.request_id.then_some(&id),
            upgrade,
            settings,
            decision: DecisionFields {
                pool: &pool,
                bucket: b"0.1234",
                flags: Some("a=on"),
            },
        }
        .to_map()
    }

    #[test]
    fn upstream_fields_drop_hop_by_hop_and_internal_and_add_the_proxys() {
        let client = map(&[
            ("host", "shop.example"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers, deflate"),
            ("upgrade", "h2c"),
            ("X-Switchyard-Pool", "blue"),
            ("x-switchyard-flags", "a=off"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "192.0.2.2"),
            ("x-forwarded-host", "spoofed"),
            ("x-forwarded-proto", "gopher"),
            ("via", "1.0 edge"),
            ("x-request-id", "client-said"),
            ("content-length", "3"),
            ("x-end-to-end", "kept"),
        ]);
        let up = upstream(&client, false);
        let want = [
            ("host", "shop.example"),
            ("content-length", "3"),
            ("x-end-to-end", "kept"),
            ("te", "trailers"),
            ("x-forwarded-host", "shop.example"),
            ("x-forwarded-for", "192.0.2.1, 192.0.2.2, 10.1.2.3"),
            ("x-forwarded-proto", "https"),
            ("via", "1.0 edge, 1.1 switchyard"),
            ("x-request-id", "rid"),
            ("x-switchyard-pool", "canary"),
            ("x-switchyard-bucket", "0.1234"),
            ("x-switchyard-flags", "a=on"),
        ];
        assert_eq!(pairs(&up), want);
    }

    /// A map's fields in order, as text.
    fn pairs(map: &HeaderMap) -> Vec<(&str, &str)> {
        map.iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect()
    }

    #[test]
    fn headers_left_out_by_the_settings_are_neither_added_nor_changed() {
        let client = map(&[
            ("host", "shop.example"),
            ("x-switchyard-pool", "blue"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-host", "edge.example"),
            ("x-forwarded-proto", "https"),
            ("via", "1.0 edge"),
            ("x-request-id", "client-said"),
            ("x-decision", "spoofed"),
        ]);
        let settings = HeaderSettings {
            flags: Some(HeaderName::from_static("x-decision")),
            pool: None,
            bucket: None,
            forwarded: false,
            via: false,
            request_id: false,
        };
        let up = upstream_with(&client, false, &settings);
        let want = [
            ("host", "shop.example"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-host", "edge.example"),
            ("x-forwarded-proto", "https"),
            ("via", "1.0 edge"),
            ("x-request-id", "client-said"),
            ("x-decision", "a=on"),
        ];
        assert_eq!(
            pairs(&up),
            want,
            "internal headers are still removed; the rest pass as sent"
        );
        // With nothing sent by the client, nothing is added but the decision header kept.
        let up = upstream_with(&map(&[("host", "h")]), false, &settings);
        let names: Vec<&str> = up.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["host", "x-decision"]);
    }

    #[test]
    fn upstream_fields_of_an_upgrade_keep_upgrade() {
        let client = map(&[("host", "h"), ("connection", "Upgrade"), ("upgrade", "websocket")]);
        let up = upstream(&client, true);
        assert_eq!(up["connection"], "upgrade");
        assert_eq!(up["upgrade"], "websocket");
        let up = upstream(&map(&[("host", "h"), ("x-forwarded-for", "1.1.1.1")]), false);
        assert_eq!(up["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
        assert!(!up.contains_key("upgrade") && !up.contains_key("connection"));
    }

    #[test]
    fn peer_addresses_format_once_both_families() {
        assert_eq!(PeerIp::new("127.0.0.1".parse().unwrap()).as_bytes(), b"127.0.0.1");
        let long = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        assert_eq!(
            PeerIp::new(long.parse().unwrap()).as_bytes(),
            b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(PeerIp::new("::1".parse().unwrap()).as_bytes(), b"::1");
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
