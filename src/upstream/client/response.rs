//! The response side of an exchange: the head, read and checked (RFC 9112 §6.3 framing, a size
//! limit, no transfer coding the proxy cannot decode), informational answers handed on as they
//! come, and the body, read from the connection as it is polled.
//!
//! The framing fields (`Content-Length`, `Transfer-Encoding`) and this hop's connection
//! management (`Connection: close`/`keep-alive`, `Keep-Alive`) are consumed here and never put
//! in the response's header map: the framing lives in the body ([`ResponseBody`]'s size hint),
//! and whoever writes the response to the client frames it anew. (A HEAD answer keeps its
//! `Content-Length`, which there describes a body not sent.)

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use super::conn::{Conn, READ_SIZE, READ_SIZE_LARGE};
use super::request::BodyWriter;
use super::Error;
use crate::http1::{chunked, head, Framer, Framing};
use crate::upstream::Endpoint;

/// The largest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most fields in a response head (hyper's limit too).
const MAX_FIELDS: usize = 100;

/// Where the informational (1xx) answers of an exchange go, as they arrive before the final
/// one (`101 Switching Protocols` excepted: it is final for an upgrade).
pub trait Interim: Send + Sync {
    fn interim(&self, head: http::response::Parts);
}

/// A parsed response head.
pub(super) enum Parsed {
    /// An informational answer; the final one is still to come.
    Interim(http::response::Parts),
    /// The final answer: its head, how its body is read, and whether the connection can serve
    /// another request after it.
    Final(http::response::Parts, Read, bool),
}

/// Reads until a final response head is complete, handing informational ones to `interim`.
pub(super) fn poll_head(
    cx: &mut Context<'_>,
    conn: &mut Conn,
    method: &Method,
    interim: Option<&dyn Interim>,
) -> Poll<Result<(http::response::Parts, Read, bool), Error>> {
    let mut received = false;
    loop {
        while !conn.rbuf.is_empty() {
            received = true;
            match parse_head(&mut conn.rbuf, method)? {
                Some(Parsed::Final(parts, read, keep_alive)) => {
                    return Poll::Ready(Ok((parts, read, keep_alive)))
                }
                Some(Parsed::Interim(parts)) => {
                    if let Some(sink) = interim {
                        sink.interim(parts);
                    }
                }
                None if conn.rbuf.len() >= MAX_HEAD => {
                    return Poll::Ready(Err(Error::Protocol("response head too large")))
                }
                None => break,
            }
        }
        let n = ready!(conn.poll_fill(cx, READ_SIZE)).map_err(Error::Io)?;
        if n == 0 {
            return Poll::Ready(Err(if received || !conn.rbuf.is_empty() {
                Error::Protocol("the connection closed within the response head")
            } else {
                Error::Closed
            }));
        }
    }
}

/// Parses a response head at the start of `buf` and takes it off. `None`: incomplete.
pub(super) fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Parsed>, Error> {
    let mut spans = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let (parsed, fields) = match head::response(buf, &mut spans) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(head::Invalid::TooManyFields) => return Err(Error::Protocol("too many header fields")),
        Err(head::Invalid::Malformed) => return Err(Error::Protocol("malformed response head")),
    };
    if parsed.len > MAX_HEAD {
        return Err(Error::Protocol("response head too large"));
    }
    let status = StatusCode::from_u16(parsed.code).map_err(|_| Error::Protocol("invalid status code"))?;
    let version = if parsed.minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let raw = buf.split_to(parsed.len).freeze();
    let mut map = HeaderMap::with_capacity(fields.len() + 2);
    let mut framer = Framer::default();
    for field in fields {
        let name = field
            .header_name(&raw)
            .ok_or(Error::Protocol("invalid header name"))?;
        let bytes = &raw[field.value_range()];
        // These names are in the parser's table, so they are found in any case.
        if field.is(head::CONTENT_LENGTH) {
            framer.content_length(bytes);
            continue;
        } else if field.is(head::TRANSFER_ENCODING) {
            framer.transfer_encoding(bytes);
            continue;
        } else if field.is(head::KEEP_ALIVE) {
            continue;
        } else if field.is(head::CONNECTION) {
            let before = framer.connection.names_fields;
            framer.connection(bytes);
            // Connection management is this hop's, and done here; a Connection that names
            // other fields stays, so the response phase removes those too.
            if framer.connection.names_fields == before {
                continue;
            }
        }
        let value = crate::http1::accepted_value(raw.slice(field.value_range()));
        map.append(name, value);
    }
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        parts.headers = map;
        return Ok(Some(Parsed::Interim(parts)));
    }
    let framing = framer.response(status, method)?;
    if framing == Framing::None && *method == Method::HEAD && status != StatusCode::NOT_MODIFIED {
        // The length of the body a GET would have had: metadata, kept (once).
        if let Ok(Framing::Length(n)) = framer.response(StatusCode::OK, &Method::GET) {
            map.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    let c = framer.connection;
    let close = c.close || (version == Version::HTTP_10 && !c.keep_alive);
    let read = match framing {
        Framing::None => Read::Length(0),
        Framing::Length(n) => Read::Length(n),
        Framing::Chunked => Read::Chunked(chunked::Decoder::default()),
        Framing::Close => Read::ToClose,
    };
    let keep_alive = !close && !matches!(read, Read::ToClose);
    parts.headers = map;
    Ok(Some(Parsed::Final(parts, read, keep_alive)))
}

/// How the rest of a response body is read.
pub(super) enum Read {
    Length(u64),
    Chunked(chunked::Decoder),
    ToClose,
    Upgraded,
    Done,
}

impl Read {
    pub(super) fn is_done(&self) -> bool {
        matches!(self, Read::Length(0) | Read::Done)
    }
}

/// A response body, read from the upstream connection as it is polled.
pub struct ResponseBody {
    pub(super) state: Read,
    /// `None` once the connection was released (back to the idle queue, or closed).
    pub(super) conn: Option<Conn>,
    /// The rest of the request body, when the upstream answered before it was all sent.
    pub(super) writer: Option<Box<BodyWriter>>,
    /// The connection may serve another request once this body ends.
    pub(super) reusable: bool,
    pub(super) endpoint: Arc<Endpoint>,
}

impl ResponseBody {
    /// For a `101` answer: the connection and any bytes the upstream already sent past the
    /// head, for the tunnel.
    pub fn into_upgraded(mut self) -> Option<(TcpStream, Bytes)> {
        if !matches!(self.state, Read::Upgraded) {
            return None;
        }
        let conn = self.conn.take()?;
        Some((conn.io, conn.rbuf.freeze()))
    }

    /// Whether this answers an upgrade with the upgraded connection.
    pub fn is_upgraded(&self) -> bool {
        matches!(self.state, Read::Upgraded) && self.conn.is_some()
    }

    /// The body has ended: the connection goes back to the idle queue if it can serve again.
    pub(super) fn release(&mut self) {
        self.state = Read::Done;
        if let Some(conn) = self.conn.take() {
            if self.reusable && self.writer.is_none() && conn.rbuf.is_empty() {
                self.endpoint.idle.put(conn);
            }
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.reusable = false;
        self.state = Read::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }

    /// Next frame of the body, reading from the socket as needed.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let eof_is_end = matches!(self.state, Read::ToClose);
            match &mut self.state {
                Read::Done | Read::Upgraded => return Poll::Ready(None),
                Read::Length(0) => {
                    self.release();
                    return Poll::Ready(None);
                }
                Read::Length(rest) => {
                    if !conn.rbuf.is_empty() {
                        let n = (*rest).min(conn.rbuf.len() as u64) as usize;
                        *rest -= n as u64;
                        let data = conn.rbuf.split_to(n).freeze();
                        if *rest == 0 {
                            self.release();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Read::ToClose => {
                    if !conn.rbuf.is_empty() {
                        let data = conn.rbuf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Read::Chunked(decoder) => match decoder.decode(&mut conn.rbuf) {
                    Ok(Some(chunked::Decoded::Data(data))) => {
                        return Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Ok(Some(chunked::Decoded::End(trailers))) => {
                        self.release();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(None) => {}
                    Err(e) => return self.fail(io::Error::new(io::ErrorKind::InvalidData, e)),
                },
            }
            // More bytes are needed.
            let want = match self.state {
                Read::Length(rest) if rest >= READ_SIZE_LARGE as u64 => READ_SIZE_LARGE,
                _ => READ_SIZE,
            };
            match ready!(conn.poll_fill(cx, want)) {
                Ok(0) if eof_is_end => {
                    self.state = Read::Done;
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return self.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection within the response body",
                    ))
                }
                Ok(_) => {}
                Err(e) => return self.fail(e),
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        // The rest of the request body goes up alongside.
        if let (Some(w), Some(conn)) = (this.writer.as_mut(), this.conn.as_mut()) {
            match w.poll_write(cx, &mut conn.io) {
                Poll::Ready(Ok(())) => this.writer = None,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(endpoint = %this.endpoint.address, "request body not sent in full: {e}");
                    this.writer = None;
                    this.reusable = false;
                }
                Poll::Pending => {}
            }
        }
        let polled = this.poll_next(cx);
        if matches!(polled, Poll::Ready(None)) {
            // The answer is complete: what is left of the request body is not sent.
            this.writer = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.state, Read::Done | Read::Upgraded)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            Read::Length(n) => SizeHint::with_exact(n),
            Read::Done | Read::Upgraded => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` as the answer to `method`: the final head, interim heads' statuses.
    fn parse(text: &str, method: &Method) -> Result<(http::response::Parts, Read, bool, Vec<u16>), Error> {
        let mut buf = BytesMut::from(text);
        let mut interim = Vec::new();
        loop {
            match parse_head(&mut buf, method)? {
                Some(Parsed::Interim(p)) => interim.push(p.status.as_u16()),
                Some(Parsed::Final(p, read, keep)) => return Ok((p, read, keep, interim)),
                None => return Err(Error::Closed),
            }
        }
    }

    fn ok(text: &str) -> (http::response::Parts, Read, bool) {
        let (p, r, k, _) = parse(text, &Method::GET).unwrap();
        (p, r, k)
    }

    fn names(parts: &http::response::Parts) -> Vec<&str> {
        parts.headers.keys().map(|k| k.as_str()).collect()
    }

    #[test]
    fn framing_follows_rfc_9112_and_never_reaches_the_map() {
        let (parts, read, keep) = ok("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\n");
        assert!(matches!(read, Read::Length(5)) && keep);
        assert_eq!(names(&parts), ["x-a"], "framing is the body's, not a field");
        let (parts, read, keep) =
            ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nKEEP-ALIVE: 5\r\n\r\n");
        assert!(matches!(read, Read::Chunked(_)) && keep);
        assert!(parts.headers.is_empty(), "{:?}", parts.headers);
        let (_, read, keep) = ok("HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(read, Read::ToClose) && !keep);
        let (_, read, _) = ok("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n");
        assert!(matches!(read, Read::Length(0)));
        let (parts, read, _, _) =
            parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", &Method::HEAD).unwrap();
        assert!(matches!(read, Read::Length(0)));
        assert_eq!(
            parts.headers["content-length"], "5",
            "a HEAD answer keeps the length it describes"
        );
        let (parts, read, _) =
            ok("HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\ncontent-length: 7\r\n\r\n");
        assert!(matches!(read, Read::Length(0)));
        assert!(parts.headers.is_empty(), "a 304 has no body to describe");
        let (_, read, _) = ok("HTTP/1.1 200 OK\r\ncontent-length: 7\r\nContent-Length: 7\r\n\r\n");
        assert!(matches!(read, Read::Length(7)), "equal lengths are one");
    }

    #[test]
    fn framings_the_proxy_cannot_pass_on_are_refused() {
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx: 1\r\n folded\r\n\r\n",
        ] {
            assert!(parse(bad, &Method::GET).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn connection_management_is_consumed_unless_it_names_fields() {
        assert!(!ok("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").2);
        assert!(!ok("HTTP/1.1 200 OK\r\nConnection: CLOSE\r\nContent-Length: 0\r\n\r\n").2);
        let (parts, _, keep) = ok(
            "HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\ncontent-length: 0\r\n\r\n",
        );
        assert!(keep && parts.headers.is_empty());
        let (parts, _, _) =
            ok("HTTP/1.1 200 OK\r\nconnection: keep-alive, x-hop\r\nx-hop: 1\r\ncontent-length: 0\r\n\r\n");
        assert!(
            parts.headers.contains_key("connection"),
            "one naming other fields stays for the response phase"
        );
        assert!(!ok("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").2);
        assert!(ok("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n").2);
    }

    #[test]
    fn informational_answers_come_before_the_final_one() {
        let (parts, read, _, interim) = parse(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            &Method::POST,
        )
        .unwrap();
        assert_eq!(parts.status, 201);
        assert_eq!(interim, [100, 103]);
        assert!(matches!(read, Read::Length(2)));
    }

    #[test]
    fn a_head_over_the_limit_is_refused_even_when_it_arrives_whole() {
        let mut text = String::from("HTTP/1.1 200 OK\r\n");
        while text.len() <= MAX_HEAD {
            text.push_str(&format!("x-filler-{}: {}\r\n", text.len(), "y".repeat(200)));
        }
        text.push_str("content-length: 0\r\n\r\n");
        assert!(matches!(parse(&text, &Method::GET), Err(Error::Protocol(_))));
    }
}
