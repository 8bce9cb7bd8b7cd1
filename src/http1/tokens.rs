//! The one reader of list-valued fields that decide how a message is handled: `Connection`
//! (RFC 9110 §7.6.1), `Transfer-Encoding` (RFC 9112 §6.1), `TE` (RFC 9110 §10.1.4) and
//! `Trailer` (RFC 9110 §6.6.2). Every comparison is case-insensitive, and every element is
//! trimmed of optional whitespace; empty elements (`a,,b`) are skipped, as RFC 9110 §5.6.1
//! asks of recipients.

use http::header::{self, HeaderName};

/// The elements of a comma-separated list field value, trimmed; empty ones skipped.
pub fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether any of the list values has the element `token` (any case).
pub fn has<'a>(values: impl IntoIterator<Item = &'a [u8]>, token: &[u8]) -> bool {
    values
        .into_iter()
        .any(|v| list(v).any(|t| t.eq_ignore_ascii_case(token)))
}

/// What the `Connection` field lines of a message ask of this hop.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Names other fields (which are then hop-by-hop too).
    pub names_fields: bool,
}

impl Connection {
    /// Adds one `Connection` field line.
    pub fn add(&mut self, value: &[u8]) {
        for t in list(value) {
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                self.names_fields = true;
            }
        }
    }

    /// Reads every `Connection` line of `values`.
    pub fn read<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Connection {
        let mut c = Connection::default();
        values.into_iter().for_each(|v| c.add(v));
        c
    }
}

/// Whether the `Connection` lines `values` name the field `name`, so that it is hop-by-hop
/// and must not be forwarded. A field that frames or routes the message (`content-length`,
/// `transfer-encoding`, `host`) is never removed this way: the proxy writes those itself, and
/// letting a client remove them is how `Connection: content-length` smuggles a request.
pub fn names<'a>(values: impl IntoIterator<Item = &'a [u8]>, name: &HeaderName) -> bool {
    !protected(name) && has(values, name.as_str().as_bytes())
}

/// The fields a `Connection` option can never remove.
pub fn protected(name: &HeaderName) -> bool {
    *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING || *name == header::HOST
}

/// What the `Transfer-Encoding` lines of a message say, read in order.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Codings {
    /// Elements seen (a field with no element at all is an error).
    count: u32,
    chunked: u32,
    last_chunked: bool,
    /// A line with no element.
    empty_line: bool,
}

/// The verdict on a message's transfer codings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// Exactly `chunked`: the one coding the proxy reads and writes.
    Chunked,
    /// Ends in `chunked` (so the body's length is known), after codings the proxy does not
    /// decode (`gzip, chunked`).
    Unsupported,
    /// Does not end in `chunked`, has it twice, or is empty: the body's length cannot be told.
    Invalid,
}

impl Codings {
    /// Adds one `Transfer-Encoding` field line.
    pub fn add(&mut self, value: &[u8]) {
        let mut any = false;
        for t in list(value) {
            any = true;
            self.count += 1;
            self.last_chunked = t.eq_ignore_ascii_case(b"chunked");
            self.chunked += u32::from(self.last_chunked);
        }
        self.empty_line |= !any;
    }

    /// Whether any `Transfer-Encoding` line was added.
    pub fn present(&self) -> bool {
        self.count > 0 || self.empty_line
    }

    /// The verdict, once every line is added (`None`: no `Transfer-Encoding` at all).
    pub fn verdict(&self) -> Option<Coding> {
        if !self.present() {
            return None;
        }
        Some(if self.empty_line || !self.last_chunked || self.chunked > 1 {
            Coding::Invalid
        } else if self.count > 1 {
            Coding::Unsupported
        } else {
            Coding::Chunked
        })
    }
}

/// Whether a `TE` field value accepts trailers (`TE: trailers`).
pub fn te_trailers(value: &[u8]) -> bool {
    list(value).any(|t| t.eq_ignore_ascii_case(b"trailers"))
}

/// The field names a `Trailer` field value announces (invalid names skipped).
pub fn trailer_names(value: &[u8]) -> impl Iterator<Item = HeaderName> + '_ {
    list(value).filter_map(|t| HeaderName::from_bytes(t).ok())
}

/// The prefix of the headers only the proxy may set.
pub const INTERNAL_PREFIX: &str = "x-switchyard-";

/// The headers that are hop-by-hop by name alone (Connection may name more).
pub static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

pub fn hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Whether a trailer field may pass on (either way). Fields that frame, route or manage the
/// connection, describe the content's coding, or are the proxy's own are never taken from a
/// trailer section (RFC 9110 §6.5.1): an HTTP/2 client resets a stream whose trailers carry
/// `content-length`, and a `Host` or `Transfer-Encoding` there would mean nothing good.
pub fn trailer_passes(name: &HeaderName) -> bool {
    !(hop_by_hop(name)
        || *name == header::CONTENT_LENGTH
        || *name == header::HOST
        || *name == header::TRAILER
        || *name == header::CONTENT_ENCODING
        || *name == header::CONTENT_TYPE
        || *name == header::CONTENT_RANGE
        || *name == header::AUTHORIZATION
        || *name == header::PROXY_AUTHORIZATION
        || *name == header::SET_COOKIE
        || *name == header::COOKIE
        || name.as_str().starts_with(INTERNAL_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_trimmed_and_skip_empty_elements() {
        let got: Vec<&[u8]> = list(b" a ,\tb,, ,c\t").collect();
        assert_eq!(got, [&b"a"[..], b"b", b"c"]);
        assert_eq!(list(b"").count(), 0);
        assert_eq!(list(b" , ").count(), 0);
    }

    #[test]
    fn connection_options_in_any_case_over_several_lines() {
        let c = Connection::read([&b"Keep-Alive, X-Secret"[..], b"UPGRADE", b"cLoSe"]);
        assert_eq!(
            c,
            Connection {
                close: true,
                keep_alive: true,
                upgrade: true,
                names_fields: true
            }
        );
        assert!(!Connection::read([&b"keep-alive,,"[..]]).names_fields);
    }

    #[test]
    fn connection_names_fields_in_any_case_but_never_framing_or_host() {
        let lines = [&b"keep-alive, X-Secret"[..], b" HTTP2-Settings "];
        assert!(names(lines, &HeaderName::from_static("x-secret")));
        assert!(names(lines, &HeaderName::from_static("http2-settings")));
        assert!(!names(lines, &HeaderName::from_static("x-other")));
        let smuggle = [&b"Content-Length, transfer-encoding, HOST"[..]];
        for protected in [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::HOST] {
            assert!(!names(smuggle, &protected), "{protected}");
        }
    }

    fn coding(lines: &[&str]) -> Option<Coding> {
        let mut c = Codings::default();
        for l in lines {
            c.add(l.as_bytes());
        }
        c.verdict()
    }

    #[test]
    fn transfer_codings_must_be_chunked_alone() {
        assert_eq!(coding(&[]), None);
        assert_eq!(coding(&["chunked"]), Some(Coding::Chunked));
        assert_eq!(coding(&[" Chunked "]), Some(Coding::Chunked));
        assert_eq!(coding(&["gzip, chunked"]), Some(Coding::Unsupported));
        assert_eq!(coding(&["gzip", "chunked"]), Some(Coding::Unsupported));
        assert_eq!(coding(&["chunked", "gzip"]), Some(Coding::Invalid));
        assert_eq!(coding(&["gzip"]), Some(Coding::Invalid));
        assert_eq!(coding(&["identity"]), Some(Coding::Invalid));
        assert_eq!(coding(&["chunked, chunked"]), Some(Coding::Invalid));
        assert_eq!(coding(&["chunked", ""]), Some(Coding::Invalid));
        assert_eq!(coding(&[""]), Some(Coding::Invalid));
        assert_eq!(coding(&["chunked;x=1"]), Some(Coding::Invalid));
        assert_eq!(coding(&["xchunked"]), Some(Coding::Invalid));
    }

    #[test]
    fn te_and_trailer_lists() {
        assert!(te_trailers(b"deflate, Trailers"));
        assert!(!te_trailers(b"deflate"));
        let names: Vec<HeaderName> = trailer_names(b"X-Sum, ,bad name, x-b").collect();
        assert_eq!(names, ["x-sum", "x-b"]);
    }
}
