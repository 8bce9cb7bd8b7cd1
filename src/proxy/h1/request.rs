//! Reading a request head on the own HTTP/1 path: the request line and header fields, as
//! httparse reads them (so as hyper did: a property test holds the two together), then what
//! serving it needs: how its body is framed ([`crate::http1::Framer`]), whether the client asks
//! to close, expects `100 Continue`, or upgrades to a WebSocket.
//!
//! What cannot be served is refused here, before anything else sees it, with the status RFC
//! 9112 asks for and the connection closed after: a malformed line or field (400), a head over
//! `max_header_bytes` or with too many fields (431), an unknown version (505), ambiguous or
//! undecodable framing (400; 501 for a coding other than `chunked`). Only the HTTP/2 preface is
//! not for this path.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::BytesMut;
use http::header::HeaderMap;
use http::{Method, StatusCode, Uri, Version};

use crate::http1::{head, Framer, Framing, Refusal};
use crate::proxy::headers;

/// Header fields a request may have (hyper's limit too).
pub const MAX_FIELDS: usize = 100;

/// The HTTP/2 connection preface, which starts with a request line of its own.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request head this path serves.
#[derive(Debug)]
pub struct Head {
    pub parts: http::request::Parts,
    pub framing: Framing,
    /// The client asked to close after this request (or, on HTTP/1.0, did not ask to keep).
    pub close: bool,
    pub http10: bool,
    pub expect_continue: bool,
    /// A WebSocket upgrade ([`headers::wants_upgrade`]).
    pub upgrade: bool,
}

/// Why a request is refused: the answer's status, and the reason for `x-switchyard-error`'s
/// log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub reason: &'static str,
}

impl Refused {
    fn bad(reason: &'static str) -> Refused {
        Refused {
            status: StatusCode::BAD_REQUEST,
            reason,
        }
    }
}

/// What the bytes at the start of the read buffer are.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// A request (taken off the buffer).
    Head(Head),
    /// The beginning of one.
    More,
    /// The HTTP/2 connection preface (nothing taken off).
    Http2,
    Refused(Refused),
}

/// Parses the request head at the start of `buf`; a request is taken off.
pub fn parse(buf: &mut BytesMut, max_head: usize) -> Parsed {
    match parse_in(buf, max_head) {
        Ok(p) => p,
        Err(r) => Parsed::Refused(r),
    }
}

fn parse_in(buf: &mut BytesMut, max_head: usize) -> Result<Parsed, Refused> {
    let too_large = Refused {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        reason: "the request head is too large",
    };
    if buf.starts_with(PREFACE) {
        return Ok(Parsed::Http2);
    }
    if PREFACE.starts_with(buf) {
        return Ok(Parsed::More);
    }
    let mut spans = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let Some(line) = request_line(buf)? else {
        return if buf.len() >= max_head {
            Err(too_large)
        } else {
            Ok(Parsed::More)
        };
    };
    let (len, fields) = match head::fields(buf, line.fields_at, &mut spans) {
        Ok(Some(parsed)) => parsed,
        Ok(None) if buf.len() >= max_head => return Err(too_large),
        Ok(None) => return Ok(Parsed::More),
        Err(head::Invalid::TooManyFields) => {
            return Err(Refused {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                reason: "too many header fields",
            })
        }
        Err(head::Invalid::Malformed) => return Err(Refused::bad("a malformed header field")),
    };
    if len > max_head {
        return Err(too_large);
    }
    let http10 = line.minor == 0;
    let mut framer = Framer::default();
    let mut expect_continue = false;
    for f in fields {
        let value = &buf[f.value_range()];
        if f.is(head::CONTENT_LENGTH) {
            framer.content_length(value);
        } else if f.is(head::TRANSFER_ENCODING) {
            framer.transfer_encoding(value);
        } else if f.is(head::CONNECTION) {
            framer.connection(value);
        } else if f.is(head::EXPECT) {
            expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let framing = framer.request(http10).map_err(|r| match r {
        Refusal::UnsupportedCoding => Refused {
            status: StatusCode::NOT_IMPLEMENTED,
            reason: "a transfer coding other than chunked",
        },
        Refusal::LengthAndCoding => Refused::bad("both content-length and transfer-encoding"),
        Refusal::InvalidCoding => Refused::bad("an invalid transfer-encoding"),
        Refusal::CodingOnHttp10 => Refused::bad("transfer-encoding on HTTP/1.0"),
        Refusal::BadLength | Refusal::ConflictingLengths => Refused::bad("an invalid content-length"),
    })?;
    let raw = buf.split_to(len).freeze();
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        // The parser checked every name byte is a token byte; a name too long for a
        // `HeaderName` is refused.
        let name = f
            .header_name(&raw)
            .ok_or(Refused::bad("an invalid header field name"))?;
        let value = crate::http1::accepted_value(raw.slice(f.value_range()));
        map.append(name, value);
    }
    let uri = Uri::from_maybe_shared(raw.slice(line.target))
        .map_err(|_| Refused::bad("an invalid request target"))?;
    let c = framer.connection;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    let upgrade = !http10 && headers::wants_upgrade(&map);
    parts.method = line.method;
    parts.uri = uri;
    parts.version = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    parts.headers = map;
    Ok(Parsed::Head(Head {
        parts,
        framing,
        close: c.close || (http10 && !c.keep_alive),
        http10,
        expect_continue: expect_continue && !http10,
        upgrade,
    }))
}

/// A parsed request line.
struct Line {
    method: Method,
    target: Range<usize>,
    minor: u8,
    /// Where the header fields start.
    fields_at: usize,
}

/// RFC 9112 `token` bytes, for the method.
static TOKEN: [bool; 256] = head::byte_set!(
    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9'
    | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+'
    | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
);

/// Bytes of a request target as httparse takes them: visible ASCII and bytes from 0x80 (which
/// must then be UTF-8; `Uri` refuses them after).
static TARGET: [bool; 256] = head::byte_set!(b'!'..=0x7e | 0x80..=0xff);

/// Where the run of bytes in `set` from `buf[i]` ends.
fn run(buf: &[u8], i: usize, set: &[bool; 256]) -> usize {
    i + buf[i..].iter().take_while(|&&b| set[b as usize]).count()
}

/// `[CRLF…] method SP target SP HTTP/1.x (CRLF|LF)`; `None`: incomplete.
fn request_line(buf: &[u8]) -> Result<Option<Line>, Refused> {
    let mut i = 0;
    // Empty lines before a request are skipped (RFC 9112 §2.2).
    loop {
        match buf.get(i) {
            None => return Ok(None),
            Some(b'\n') => i += 1,
            Some(b'\r') => match buf.get(i + 1) {
                None => return Ok(None),
                Some(b'\n') => i += 2,
                Some(_) => return Err(Refused::bad("a malformed request line")),
            },
            Some(_) => break,
        }
    }
    let start = i;
    i = run(buf, i, &TOKEN);
    match buf.get(i) {
        None => return Ok(None),
        Some(b' ') if i > start => {}
        Some(_) => return Err(Refused::bad("a malformed request method")),
    }
    let method = match &buf[start..i] {
        b"GET" => Method::GET,
        b"POST" => Method::POST,
        b"PUT" => Method::PUT,
        b"DELETE" => Method::DELETE,
        b"HEAD" => Method::HEAD,
        b"OPTIONS" => Method::OPTIONS,
        b"PATCH" => Method::PATCH,
        other => Method::from_bytes(other).map_err(|_| Refused::bad("a malformed request method"))?,
    };
    i += 1;
    let target_start = i;
    i = run(buf, i, &TARGET);
    match buf.get(i) {
        None => return Ok(None),
        Some(b' ') if i > target_start => {}
        Some(_) => return Err(Refused::bad("a malformed request target")),
    }
    let target = target_start..i;
    if std::str::from_utf8(&buf[target.clone()]).is_err() || buf[target.clone()].contains(&b'#') {
        return Err(Refused::bad("a malformed request target"));
    }
    i += 1;
    let minor = match buf.get(i..i + 8) {
        Some(b"HTTP/1.1") => 1,
        Some(b"HTTP/1.0") => 0,
        Some(v) if v.starts_with(b"HTTP/") => {
            return Err(Refused {
                status: StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                reason: "an HTTP version other than 1.0 and 1.1",
            })
        }
        Some(_) => return Err(Refused::bad("a malformed HTTP version")),
        None if b"HTTP/1.".starts_with(&buf[i..]) || buf[i..].starts_with(b"HTTP/1.") => return Ok(None),
        None => return Err(Refused::bad("a malformed HTTP version")),
    };
    i += 8;
    match buf.get(i) {
        None => return Ok(None),
        Some(b'\n') => i += 1,
        Some(b'\r') => match buf.get(i + 1) {
            None => return Ok(None),
            Some(b'\n') => i += 2,
            Some(_) => return Err(Refused::bad("a malformed request line")),
        },
        Some(_) => return Err(Refused::bad("a malformed request line")),
    }
    Ok(Some(Line {
        method,
        target,
        minor,
        fields_at: i,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn parsed(raw: &[u8]) -> Parsed {
        parse(&mut BytesMut::from(raw), 64 * 1024)
    }

    fn head(raw: &[u8]) -> Head {
        match parsed(raw) {
            Parsed::Head(h) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    fn refused(raw: &[u8]) -> u16 {
        match parsed(raw) {
            Parsed::Refused(r) => r.status.as_u16(),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn a_request_is_taken_and_the_next_left() {
        let mut buf = BytesMut::from(
            &b"GET /a/b?c=d&e HTTP/1.1\r\nHost: example.com\r\nx-user-id: u1\r\nAccept: */*\r\nConnection: keep-alive, Close\r\n\r\nGET /next HTTP/1.1\r\n"[..],
        );
        let Parsed::Head(h) = parse(&mut buf, 1 << 16) else {
            panic!("not taken")
        };
        assert_eq!(h.parts.method, Method::GET);
        assert_eq!(h.parts.uri.path(), "/a/b");
        assert_eq!(h.parts.uri.query(), Some("c=d&e"));
        assert_eq!(h.parts.version, Version::HTTP_11);
        assert!(h.close && !h.http10 && !h.upgrade && h.framing == Framing::None);
        let fields: Vec<_> = h
            .parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            fields,
            [
                ("host", "example.com"),
                ("x-user-id", "u1"),
                ("accept", "*/*"),
                ("connection", "keep-alive, Close")
            ]
        );
        assert_eq!(&buf[..], b"GET /next HTTP/1.1\r\n");
        assert!(matches!(parse(&mut buf, 1 << 16), Parsed::More));
    }

    #[test]
    fn every_prefix_of_a_request_waits_for_more() {
        let raw = b"\r\nDELETE /x%20y HTTP/1.1\r\nHost: h\r\nCookie: a=b\r\n\r\n";
        for n in 0..raw.len() {
            assert!(
                matches!(parsed(&raw[..n]), Parsed::More),
                "{:?}",
                String::from_utf8_lossy(&raw[..n])
            );
        }
        assert_eq!(head(raw).parts.uri.path(), "/x%20y");
    }

    #[test]
    fn framing_close_expect_and_upgrade() {
        let h = head(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-Continue\r\n\r\nhello");
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.expect_continue && !h.close);
        let h = head(b"POST / HTTP/1.1\r\nHost: h\r\ntransfer-encoding: Chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        let h = head(b"GET / HTTP/1.0\r\n\r\n");
        assert!(h.http10 && h.close);
        let h = head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(h.http10 && !h.close);
        let h = head(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        assert!(h.upgrade);
        let h =
            head(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n");
        assert!(!h.upgrade, "only WebSocket upgrades");
        let h = head(b"HEAD http://h/x HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!((h.parts.method, h.parts.uri.host()), (Method::HEAD, Some("h")));
        assert_eq!(
            head(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").parts.uri.path(),
            "*"
        );
    }

    #[test]
    fn what_cannot_be_served_is_refused_with_its_status() {
        for (raw, status) in [
            (
                &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                501,
            ),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nx: a\r\n folded\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nx-nul: a\x00b\r\n\r\n", 400),
            (b"GET /a b HTTP/1.1\r\n\r\n", 400),
            (b"GET  / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.2\r\n\r\n", 505),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"GET / http/1.1\r\n\r\n", 400),
            (b"G@T / HTTP/1.1\r\n\r\n", 400),
            (b"NOT-HTTP\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\rx", 400),
            (b"GET \xff\xfe HTTP/1.1\r\n\r\n", 400),
            (b"GET /a#frag HTTP/1.1\r\n\r\n", 400),
        ] {
            assert_eq!(refused(raw), status, "{:?}", String::from_utf8_lossy(raw));
        }
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..200 {
            big.extend_from_slice(format!("x-f{i}: v\r\n").as_bytes());
        }
        assert_eq!(refused(&big), 431, "too many fields, even before the end");
        assert_eq!(parse(&mut BytesMut::from(&big[..]), 1024).refused(), Some(431));
    }

    #[test]
    fn the_http2_preface_is_not_for_this_path() {
        assert!(matches!(parsed(PREFACE), Parsed::Http2));
        assert!(matches!(parsed(&PREFACE[..10]), Parsed::More));
        let mut with_frames = PREFACE.to_vec();
        with_frames.extend_from_slice(b"\x00\x00\x00\x04");
        assert!(matches!(parsed(&with_frames), Parsed::Http2));
    }

    impl Parsed {
        fn refused(&self) -> Option<u16> {
            match self {
                Parsed::Refused(r) => Some(r.status.as_u16()),
                _ => None,
            }
        }
    }

    /// httparse's reading of a request (what hyper builds a request from): method, target,
    /// minor version, fields and the head's length.
    #[allow(clippy::type_complexity)]
    fn httparse(raw: &[u8]) -> Result<Option<(String, String, u8, Vec<(String, Vec<u8>)>, usize)>, ()> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut fields);
        match req.parse(raw) {
            Ok(httparse::Status::Complete(len)) => Ok(Some((
                req.method.unwrap().to_owned(),
                req.path.unwrap().to_owned(),
                req.version.unwrap(),
                req.headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                    .collect(),
                len,
            ))),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(_) => Err(()),
        }
    }

    /// This path reads a request as httparse does: what it takes, httparse takes alike (and
    /// `Uri` accepts its target); what it waits on, httparse waits on; what httparse refuses,
    /// this path refuses. (It refuses more: framing httparse does not judge, and versions.)
    fn agrees(raw: &[u8]) -> Result<(), TestCaseError> {
        if PREFACE.starts_with(raw) {
            return Ok(());
        }
        let mut buf = BytesMut::from(raw);
        let ours = parse(&mut buf, 1 << 20);
        let theirs = httparse(raw);
        match (&ours, &theirs) {
            (Parsed::Head(h), Ok(Some((method, target, minor, fields, len)))) => {
                prop_assert_eq!(h.parts.method.as_str(), method);
                // As hyper reads it: through `Uri`.
                prop_assert_eq!(&h.parts.uri, &target.parse::<Uri>().unwrap());
                prop_assert_eq!(u8::from(!h.http10), *minor);
                let ours: Vec<(String, Vec<u8>)> = h
                    .parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect();
                let mut theirs_map = HeaderMap::new();
                for (n, v) in fields {
                    theirs_map.append(
                        http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                        HeaderValue::from_bytes(v).unwrap(),
                    );
                }
                let theirs: Vec<(String, Vec<u8>)> = theirs_map
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect();
                prop_assert_eq!(ours, theirs);
                prop_assert_eq!(raw.len() - buf.len(), *len);
            }
            (Parsed::Head(_), other) => prop_assert!(false, "taken; httparse: {:?}", other),
            (Parsed::More, Ok(None)) => {}
            (Parsed::More, other) => prop_assert!(false, "waits; httparse: {:?}", other),
            (Parsed::Refused(_), _) => {
                // Refusing what httparse takes is allowed only for reasons httparse does not
                // judge: framing, versions, a target `Uri` refuses, or a name too long.
                if let Ok(Some((_, target, _, _, _))) = &theirs {
                    let framing = raw
                        .windows(8)
                        .any(|w| w.eq_ignore_ascii_case(b"content-") || w.eq_ignore_ascii_case(b"transfer"));
                    prop_assert!(
                        framing || target.parse::<Uri>().is_err() || target.contains('#'),
                        "refused {:?}, httparse took it",
                        String::from_utf8_lossy(raw)
                    );
                }
            }
            (Parsed::Http2, _) => prop_assert!(raw.starts_with(PREFACE)),
        }
        Ok(())
    }

    fn request() -> impl Strategy<Value = Vec<u8>> {
        let method = prop::sample::select(vec![
            "GET", "POST", "DELETE", "PURGE", "HEAD", "get", "PRI", "M-SEARCH",
        ]);
        let target = prop_oneof![
            "/[a-zA-Z0-9/%?=&._~!$'()*+,;:@-]{0,24}",
            Just("*".to_owned()),
            Just("http://h:80/a?b".to_owned()),
            "/[ -~]{0,8}",
            "/[\u{80}-\u{ff}]{0,3}",
        ];
        let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.2"]);
        let name = prop_oneof![
            prop::sample::select(vec![
                "Host",
                "x-user-id",
                "Accept",
                "Cookie",
                "Content-Length",
                "transfer-encoding",
                "Upgrade",
                "Expect",
                "Connection",
                "TE",
            ])
            .prop_map(str::to_owned),
            "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}",
        ];
        let value = prop_oneof!["[ -~\t]{0,16}", "[0-9]{1,3}", Just("chunked".to_owned())];
        let field = (
            name,
            "[ \t]{0,2}",
            value,
            prop::sample::select(vec!["\r\n", "\r\n", "\n"]),
        );
        let lead = prop::sample::select(vec!["", "", "\r\n", "\n"]);
        (lead, method, target, version, prop::collection::vec(field, 0..8)).prop_map(
            |(lead, m, t, v, fields)| {
                let mut raw = format!("{lead}{m} {t} {v}\r\n").into_bytes();
                for (name, ws, value, end) in fields {
                    raw.extend_from_slice(format!("{name}:{ws}{value}{end}").as_bytes());
                }
                raw.extend_from_slice(b"\r\n");
                raw
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn reads_requests_as_httparse_does(raw in request()) {
            agrees(&raw)?;
        }

        #[test]
        fn reads_mutated_requests_as_httparse_does(
            raw in request(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut raw = raw;
            let at = at.index(raw.len());
            raw[at] = byte;
            agrees(&raw)?;
        }

        #[test]
        fn every_prefix_of_what_is_taken_waits(raw in request()) {
            if let Parsed::Head(_) = parsed(&raw) {
                let len = {
                    let mut buf = BytesMut::from(&raw[..]);
                    parse(&mut buf, 1 << 20);
                    raw.len() - buf.len()
                };
                for n in 0..len {
                    prop_assert!(matches!(parsed(&raw[..n]), Parsed::More), "prefix {}", n);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::http1::long_cases()))]

        #[test]
        #[ignore = "a long run, by hand"]
        fn long_run_requests_agree_with_httparse(
            raw in request(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            agrees(&raw)?;
            let mut mutated = raw;
            let at = at.index(mutated.len());
            mutated[at] = byte;
            agrees(&mutated)?;
        }
    }
}
