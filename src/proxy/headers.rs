//! Header hygiene, both ways: which fields pass and which the proxy adds. Hop-by-hop fields are
//! removed (RFC 9110 §7.6.1: `Connection` and the fields it names, `Keep-Alive`,
//! `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade`), the `x-forwarded-*`, `via` and
//! `x-request-id` fields added, and inbound `x-switchyard-*` fields dropped so a client cannot
//! pose as the proxy; outbound, an upstream cannot set `x-switchyard-error`.
//!
//! The fields that frame or route a message are not decided here: `Content-Length` and
//! `Transfer-Encoding` are written by whoever writes the message ([`crate::http1`]), and `Host`
//! is the host routing used ([`crate::routing::target`]). A `Connection` option can never name
//! one of them away ([`tokens::names`]).
//!
//! Upstream, the client's header map is never changed: [`UpstreamFields`] walks it once,
//! leaving out what must not pass and adding the proxy's own fields, and the upstream client
//! writes what it yields straight into the request head (`explain` shows the same fields).
//! Downstream, the response's map is edited in place ([`clean_response`], [`append_list`]).
//! Trailers pass through [`trailer_passes`] both ways, on HTTP/1.1 and HTTP/2 alike.
//!
//! One deliberate difference from a literal reading of the hop-by-hop list: `Trailer` is kept.
//! RFC 9110 §6.6.2 makes it end-to-end, and HTTP/1.1 encoders (hyper's among them) send only
//! the trailer fields it announces, so removing it would silently drop trailers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::http1::tokens::{self, hop_by_hop, HOP_BY_HOP};
pub use crate::http1::tokens::{trailer_passes, INTERNAL_PREFIX};
use crate::routing::{header as find, HeaderSettings};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_SWITCHYARD_ERROR: HeaderName = HeaderName::from_static("x-switchyard-error");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// True for an HTTP/1.1 WebSocket upgrade request: `Connection: upgrade` and `Upgrade:
/// websocket`, the one protocol switch the proxy passes (as Envoy's `upgrade_configs`, it must
/// be the whole `Upgrade` value). Any other `Upgrade` (`h2c`, a list) is removed and the
/// request served as plain HTTP/1.1.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    let mut upgrade = headers.get_all(header::UPGRADE).iter();
    let websocket = match (upgrade.next(), upgrade.next()) {
        (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"),
        _ => false,
    };
    websocket
        && tokens::has(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .map(HeaderValue::as_bytes),
            b"upgrade",
        )
}

/// The values of every `Connection` line, as bytes.
fn connection_lines(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .map(HeaderValue::as_bytes)
}

/// Makes an upstream's response head fit to send on: hop-by-hop fields (and those its
/// `Connection` names) removed, and `x-switchyard-error`, which only the proxy sets. With
/// `upgrade` (a `101` tunnel), `Upgrade` and `Connection: upgrade` stay.
pub fn clean_response(headers: &mut HeaderMap, upgrade: bool) {
    // One look at each name finds which are there (usually none, or only Connection), so
    // only those are removed.
    let mut present = [false; HOP_BY_HOP.len()];
    let mut error = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        } else {
            error |= *name == X_SWITCHYARD_ERROR;
        }
    }
    if present[0] {
        // Fields named by Connection are hop-by-hop too. Collecting names allocates, but only
        // when a Connection field names something other than the usual keep-alive/close.
        let named: Vec<HeaderName> = headers
            .keys()
            .filter(|n| !hop_by_hop(n) && tokens::names(connection_lines(headers), n))
            .cloned()
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
    if error {
        headers.remove(&X_SWITCHYARD_ERROR);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes the trailer fields that may not pass ([`trailer_passes`]).
pub fn clean_trailers(trailers: &mut HeaderMap) {
    if trailers.keys().all(trailer_passes) {
        return;
    }
    let out: Vec<HeaderName> = trailers.keys().filter(|n| !trailer_passes(n)).cloned().collect();
    for name in out {
        trailers.remove(name);
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
    pub payloads: Option<&'a str>,
}

/// A request's header fields as they go upstream (DESIGN §3 "Headers sent upstream"), read
/// from the client's map without changing it: `host` first, the host routing used; then the
/// client's fields but for hop-by-hop ones (and those `Connection` names), `Host`, framing
/// fields (the upstream client writes the framing), `Expect` (answered by the server path),
/// and inbound `x-switchyard-*`;
/// `x-forwarded-host`, `x-forwarded-proto` and `x-request-id` are replaced; `x-forwarded-for`
/// and `via` get this hop appended; `TE: trailers` passes; then the decision fields. A header
/// `[headers]` leaves out is neither added nor changed.
pub struct UpstreamFields<'a> {
    pub client: &'a HeaderMap,
    /// The host routing used ([`crate::routing::target::host`]).
    pub host: Option<&'a HeaderValue>,
    pub peer_ip: &'a [u8],
    pub tls: bool,
    /// This hop's `via` entry; `None`: `via` is left as the client sent it.
    pub via: Option<&'a HeaderValue>,
    /// The request's id; `None`: `x-request-id` is left as the client sent it.
    pub request_id: Option<&'a HeaderValue>,
    /// A WebSocket upgrade ([`wants_upgrade`]): `Upgrade` and `Connection: upgrade` pass.
    pub upgrade: bool,
    pub settings: &'a HeaderSettings,
    pub decision: DecisionFields<'a>,
    /// `[tracing]`: this hop's `traceparent`, in place of the client's.
    pub traceparent: Option<&'a HeaderValue>,
}

impl UpstreamFields<'_> {
    /// Calls `f` with each field to send, in order: `host`, the client's that pass, then the
    /// proxy's.
    pub fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        if let Some(host) = self.host {
            f(b"host", host.as_bytes());
        }
        // Names listed in Connection (other than its own tokens) are hop-by-hop too.
        let has_connection = find(self.client, &header::CONNECTION).is_some();
        let mut te_trailers = false;
        let (mut forwarded_for, mut via) = (0usize, 0usize);
        let set = self.settings;
        for (name, value) in self.client {
            if hop_by_hop(name) {
                if name == header::TE {
                    te_trailers |= tokens::te_trailers(value.as_bytes());
                } else if name == header::UPGRADE && self.upgrade {
                    f(name.as_str().as_bytes(), value.as_bytes());
                }
                continue;
            }
            // `Expect: 100-continue` is this hop's: the server path answers it when the body
            // is read.
            if name == header::HOST || name == header::CONTENT_LENGTH || name == header::EXPECT {
                continue;
            }
            if has_connection && tokens::names(connection_lines(self.client), name) {
                continue;
            }
            if name == X_FORWARDED_FOR && set.forwarded {
                forwarded_for += 1;
                continue;
            } else if name == header::VIA && self.via.is_some() {
                via += 1;
                continue;
            } else if (name == X_REQUEST_ID && self.request_id.is_some())
                || (name == TRACEPARENT && self.traceparent.is_some())
                || (set.forwarded
                    && (name == X_FORWARDED_PROTO || (name == X_FORWARDED_HOST && self.host.is_some())))
                || name.as_str().starts_with(INTERNAL_PREFIX)
                || [&set.flags, &set.flag_payloads, &set.pool, &set.bucket]
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
        if let Some(tp) = self.traceparent {
            f(b"traceparent", tp.as_bytes());
        }
        if te_trailers {
            f(b"te", b"trailers");
        }
        if let (Some(host), true) = (self.host, set.forwarded) {
            f(X_FORWARDED_HOST.as_str().as_bytes(), host.as_bytes());
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
        if let (Some(name), Some(payloads)) = (&set.flag_payloads, d.payloads) {
            f(name.as_str().as_bytes(), payloads.as_bytes());
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
    fn response_hop_by_hop_fields_the_ones_connection_names_and_the_error_field_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("trailer", "x-checksum"),
            ("x-switchyard-error", "spoofed"),
            ("x-end-to-end", "kept"),
        ]);
        clean_response(&mut h, false);
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
        clean_response(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(!h.contains_key("keep-alive"));
    }

    #[test]
    fn only_a_websocket_upgrade_is_one() {
        let up = |pairs: &[(&str, &str)]| wants_upgrade(&map(pairs));
        assert!(up(&[
            ("connection", "keep-alive, UPGRADE"),
            ("upgrade", "WebSocket")
        ]));
        assert!(!up(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c")
        ]));
        assert!(!up(&[("connection", "upgrade"), ("upgrade", "websocket, h2c")]));
        assert!(!up(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("upgrade", "h2c")
        ]));
        assert!(!up(&[("upgrade", "websocket")]), "Connection must ask for it");
    }

    #[test]
    fn trailers_lose_framing_routing_and_internal_fields() {
        let mut t = map(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("host", "h"),
            ("x-switchyard-pool", "canary"),
            ("x-switchyard-error", "x"),
            ("connection", "close"),
            ("x-checksum", "abc"),
            ("grpc-status", "0"),
        ]);
        clean_trailers(&mut t);
        let mut left: Vec<&str> = t.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["grpc-status", "x-checksum"]);
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
                payloads: None,
            },
            traceparent: None,
        }
        .to_map()
    }

    #[test]
    fn upstream_fields_drop_hop_by_hop_and_internal_and_add_the_proxys() {
        let client = map(&[
            ("host", "shop.example"),
            (
                "connection",
                "keep-alive, X-Secret, Content-Length, HOST, transfer-encoding",
            ),
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
            ("transfer-encoding", "chunked"),
            ("x-end-to-end", "kept"),
        ]);
        let up = upstream(&client, false);
        let want = [
            ("host", "shop.example"),
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
        assert_eq!(
            pairs(&up),
            want,
            "framing fields are the encoder's; Host is routing's, named or not"
        );
    }

    #[test]
    fn the_host_sent_is_the_one_routing_used_not_the_clients() {
        let client = map(&[("host", "www.example.com"), ("x-a", "1")]);
        let routed = HeaderValue::from_static("admin.example.com");
        let settings = HeaderSettings::default();
        let (pool, via, id) = (
            HeaderValue::from_static("p"),
            HeaderValue::from_static("v"),
            HeaderValue::from_static("i"),
        );
        let fields = UpstreamFields {
            client: &client,
            host: Some(&routed),
            peer_ip: b"1.2.3.4",
            tls: false,
            via: Some(&via),
            request_id: Some(&id),
            upgrade: false,
            settings: &settings,
            decision: DecisionFields {
                pool: &pool,
                bucket: b"0",
                flags: None,
                payloads: None,
            },
            traceparent: None,
        }
        .to_map();
        assert_eq!(fields.get_all("host").iter().collect::<Vec<_>>(), [&routed]);
        assert_eq!(fields["x-forwarded-host"], "admin.example.com");
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
            flag_payloads: None,
            flags: Some(HeaderName::from_static("x-decision")),
            pool: None,
            bucket: None,
            forwarded: false,
            via: false,
            request_id: false,
            ..HeaderSettings::default()
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
