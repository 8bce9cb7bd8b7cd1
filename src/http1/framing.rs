//! How a message's body is delimited (RFC 9112 §6.3), decided once from the fields that frame
//! it, for requests read from clients and responses read from upstreams alike. The fields are
//! added one by one as the head is parsed ([`Framer`]); the decision is then one call.
//!
//! What is refused, and why each is a refusal rather than a guess: two different
//! `Content-Length` values, or one that is not digits (which would the next hop believe?);
//! `Content-Length` beside `Transfer-Encoding` (the classic request-smuggling shape: RFC 9112
//! §6.3 lets a server refuse it, and a proxy that forwards it trusts every hop behind it to
//! agree); a transfer coding other than `chunked` alone (the proxy cannot decode it, so it
//! could not pass the body on with honest framing); and any transfer coding on HTTP/1.0.

use http::{Method, StatusCode};

use super::tokens::{Coding, Codings, Connection};

/// How a body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Why a message cannot be read or passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("invalid content-length")]
    BadLength,
    #[error("conflicting content-length values")]
    ConflictingLengths,
    #[error("both content-length and transfer-encoding")]
    LengthAndCoding,
    #[error("a transfer coding other than chunked")]
    UnsupportedCoding,
    #[error("an invalid transfer-encoding (chunked must be last, and only once)")]
    InvalidCoding,
    #[error("transfer-encoding in an HTTP/1.0 message")]
    CodingOnHttp10,
}

/// The framing fields of one message head, gathered as it is parsed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Framer {
    length: Option<u64>,
    length_error: Option<Refusal>,
    codings: Codings,
    pub connection: Connection,
}

impl Framer {
    /// Adds a `Content-Length` line. Equal repeated values are one (RFC 9110 §8.6).
    pub fn content_length(&mut self, value: &[u8]) {
        // A list of equal values (`5, 5`) is read as one, as a repeated field would be; an
        // empty element is an invalid value.
        for v in value.split(|&b| b == b',') {
            match (parse_length(v.trim_ascii()), self.length) {
                (None, _) => self.length_error = Some(Refusal::BadLength),
                (Some(n), Some(l)) if n != l => {
                    self.length_error.get_or_insert(Refusal::ConflictingLengths);
                }
                (Some(n), _) => self.length = Some(n),
            }
        }
    }

    /// Adds a `Transfer-Encoding` line.
    pub fn transfer_encoding(&mut self, value: &[u8]) {
        self.codings.add(value);
    }

    /// Adds a `Connection` line.
    pub fn connection(&mut self, value: &[u8]) {
        self.connection.add(value);
    }

    /// A request's body framing. `http10`: the request line said HTTP/1.0.
    pub fn request(&self, http10: bool) -> Result<Framing, Refusal> {
        if let Some(e) = self.length_error {
            return Err(e);
        }
        match (self.codings.verdict(), self.length) {
            (None, None) => Ok(Framing::None),
            (None, Some(n)) => Ok(Framing::Length(n)),
            (Some(_), _) if http10 => Err(Refusal::CodingOnHttp10),
            (Some(_), Some(_)) => Err(Refusal::LengthAndCoding),
            (Some(Coding::Chunked), None) => Ok(Framing::Chunked),
            (Some(Coding::Unsupported), None) => Err(Refusal::UnsupportedCoding),
            (Some(Coding::Invalid), None) => Err(Refusal::InvalidCoding),
        }
    }

    /// A response's body framing, for a request of `method`. A response the proxy could not
    /// pass on with honest framing is refused: it is the upstream's error.
    pub fn response(&self, status: StatusCode, method: &Method) -> Result<Framing, Refusal> {
        if *method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::None);
        }
        if let Some(e) = self.length_error {
            return Err(e);
        }
        match (self.codings.verdict(), self.length) {
            (None, None) => Ok(Framing::Close),
            (None, Some(n)) => Ok(Framing::Length(n)),
            (Some(_), Some(_)) => Err(Refusal::LengthAndCoding),
            (Some(Coding::Chunked), None) => Ok(Framing::Chunked),
            (Some(Coding::Unsupported), None) => Err(Refusal::UnsupportedCoding),
            (Some(Coding::Invalid), None) => Err(Refusal::InvalidCoding),
        }
    }
}

/// A `Content-Length` value: 1 to 19 digits.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framer(fields: &[(&str, &str)]) -> Framer {
        let mut f = Framer::default();
        for (name, value) in fields {
            let v = value.as_bytes();
            match *name {
                "content-length" => f.content_length(v),
                "transfer-encoding" => f.transfer_encoding(v),
                "connection" => f.connection(v),
                _ => {}
            }
        }
        f
    }

    fn request(fields: &[(&str, &str)]) -> Result<Framing, Refusal> {
        framer(fields).request(false)
    }

    #[test]
    fn request_framing_follows_rfc_9112_and_refuses_the_ambiguous() {
        use Framing::*;
        use Refusal::*;
        assert_eq!(request(&[]), Ok(None));
        assert_eq!(request(&[("content-length", "5")]), Ok(Length(5)));
        assert_eq!(request(&[("content-length", "0")]), Ok(Length(0)));
        assert_eq!(
            request(&[("content-length", "5"), ("content-length", "5")]),
            Ok(Length(5))
        );
        assert_eq!(request(&[("content-length", "5, 5")]), Ok(Length(5)));
        assert_eq!(
            request(&[("content-length", "5"), ("content-length", "6")]),
            Err(ConflictingLengths)
        );
        assert_eq!(request(&[("content-length", "5, 6")]), Err(ConflictingLengths));
        for bad in ["", "-1", "+5", "5 5", "0x5", "99999999999999999999", "5,"] {
            let got = request(&[("content-length", bad)]);
            assert!(got.is_err() && got != Ok(Length(5)), "{bad:?}: {got:?}");
        }
        assert_eq!(request(&[("transfer-encoding", "chunked")]), Ok(Chunked));
        assert_eq!(
            request(&[("transfer-encoding", "chunked"), ("content-length", "5")]),
            Err(LengthAndCoding)
        );
        assert_eq!(
            request(&[("content-length", "5"), ("transfer-encoding", "chunked")]),
            Err(LengthAndCoding)
        );
        assert_eq!(
            request(&[("transfer-encoding", "gzip, chunked")]),
            Err(UnsupportedCoding)
        );
        assert_eq!(request(&[("transfer-encoding", "gzip")]), Err(InvalidCoding));
        assert_eq!(
            framer(&[("transfer-encoding", "chunked")]).request(true),
            Err(CodingOnHttp10)
        );
        assert_eq!(
            request(&[("connection", "content-length"), ("content-length", "5")]),
            Ok(Length(5)),
            "Connection does not change framing"
        );
    }

    #[test]
    fn response_framing() {
        use Framing::*;
        let get = Method::GET;
        let ok = StatusCode::OK;
        let resp = |fields: &[(&str, &str)], status: u16, method: &Method| {
            framer(fields).response(StatusCode::from_u16(status).unwrap(), method)
        };
        assert_eq!(resp(&[], 200, &get), Ok(Close));
        assert_eq!(resp(&[("content-length", "3")], 200, &get), Ok(Length(3)));
        assert_eq!(resp(&[("content-length", "3")], 200, &Method::HEAD), Ok(None));
        assert_eq!(resp(&[("content-length", "3")], 204, &get), Ok(None));
        assert_eq!(resp(&[("content-length", "3")], 304, &get), Ok(None));
        assert_eq!(resp(&[("transfer-encoding", "chunked")], 200, &get), Ok(Chunked));
        assert_eq!(
            resp(&[("transfer-encoding", "gzip")], 200, &get),
            Err(Refusal::InvalidCoding)
        );
        assert_eq!(
            resp(&[("transfer-encoding", "gzip, chunked")], 200, &get),
            Err(Refusal::UnsupportedCoding)
        );
        assert_eq!(
            framer(&[("content-length", "1"), ("content-length", "1")]).response(ok, &get),
            Ok(Length(1))
        );
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"0012"), Some(12));
        assert_eq!(
            parse_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b" 1",
            b"1 ",
            b"-1",
            b"+1",
            b"1e3",
            b"18446744073709551616",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }
}
