//! Writing a response on the own HTTP/1 path: the head, framed from the body about to be sent
//! (as hyper frames it), the body in that framing, and informational heads before it.
//!
//! What a response gets here is what hyper would give it: the status line with the canonical
//! reason (empty for a status without one) in the client's version, the fields in order,
//! `content-length` from the body when its length is known (else chunked to an HTTP/1.1
//! client, with only the trailer fields `Trailer` announces, or read-to-close to an HTTP/1.0
//! one), a `date` when it has none, and `connection: close` when the connection closes after
//! it (`keep-alive` to an HTTP/1.0 client that asked to keep it; closing is its default). A HEAD answer keeps the `content-length` it describes and sends no
//! body; 1xx, 204 and 304 have neither.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::StatusCode;
use tokio::io::AsyncWrite;

use crate::http1::{chunked, put_field, tokens};

/// A body frame at least this large is written as it is, not copied behind the head.
const DIRECT: usize = 16 * 1024;
/// Bytes waiting to be written past which they are written before more frames are taken, so
/// a fast upstream's small frames do not pile up for a slow client.
pub const FLUSH_AT: usize = 64 * 1024;

/// What the request says of how its response may go.
#[derive(Debug, Clone, Copy)]
pub struct For {
    /// A HEAD request: no body is sent.
    pub head: bool,
    /// An HTTP/1.0 client: no chunked coding, no informational answers.
    pub http10: bool,
}

/// How the response body goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// No body is sent.
    None,
    /// This many bytes still to send.
    Length(u64),
    /// Chunked, sending the trailer fields `Trailer` announced.
    Chunked(Vec<HeaderName>),
    /// The body's end is the connection's.
    Close,
}

impl Framing {
    /// Whether the connection must close after the body.
    pub fn closes(&self) -> bool {
        *self == Framing::Close
    }
}

/// Encodes the status line and fields into `out`, and says how the body is framed;
/// `body_length`: the body's, when known. `close`: the connection closes after this response
/// (also when the framing says so).
pub fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    body_length: Option<u64>,
    req: For,
    mut close: bool,
) -> Framing {
    status_line(out, status, req.http10);
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT;
    let no_body = bodiless || status == StatusCode::NOT_MODIFIED || req.head;
    let framing = if no_body {
        Framing::None
    } else {
        match (body_length, req.http10) {
            (Some(n), _) => Framing::Length(n),
            (None, false) => Framing::Chunked(
                headers
                    .get_all(header::TRAILER)
                    .iter()
                    .flat_map(|v| tokens::trailer_names(v.as_bytes()).collect::<Vec<_>>())
                    .collect(),
            ),
            (None, true) => Framing::Close,
        }
    };
    close |= framing.closes();
    let mut dated = false;
    let mut length_written = false;
    for (name, value) in headers {
        if *name == header::CONTENT_LENGTH {
            // Only where it describes a body not sent (HEAD): elsewhere the framing is the
            // body's, and a 304 has none (as hyper writes it).
            if !req.head || bodiless || status == StatusCode::NOT_MODIFIED || length_written {
                continue;
            }
            length_written = true;
        } else if *name == header::DATE {
            dated = true;
        } else if *name == header::TRANSFER_ENCODING || *name == header::CONNECTION {
            // Framing and connection management are this hop's, written below.
            continue;
        }
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    // In hyper's order: connection management, then the framing, then the date. (HTTP/1.0
    // closes unless told to keep.)
    match (close, req.http10) {
        (true, false) => out.extend_from_slice(b"connection: close\r\n"),
        (false, true) => out.extend_from_slice(b"connection: keep-alive\r\n"),
        _ => {}
    }
    match &framing {
        Framing::Length(n) => put_field(out, b"content-length", itoa::Buffer::new().format(*n).as_bytes()),
        Framing::Chunked(_) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // A HEAD answer made here (not an upstream's, which keeps its own length) says the
        // length of the body a GET would get.
        Framing::None if req.head && !length_written => {
            if let Some(n) = body_length.filter(|&n| n > 0) {
                put_field(out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
            }
        }
        _ => {}
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&date());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// The status line, in the client's version (as hyper answers an HTTP/1.0 client).
fn status_line(out: &mut Vec<u8>, status: StatusCode, http10: bool) {
    if status == StatusCode::OK && !http10 {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Encodes an informational (1xx) head: its status line and fields (already cleaned).
pub fn encode_interim(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap) {
    status_line(out, status, false);
    for (name, value) in headers {
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// The bytes waiting to go to the client: a buffer, then at most one large frame written as it
/// is, then the CRLF that ends it when it is a chunk.
#[derive(Default)]
pub struct Outbox {
    pub buf: Vec<u8>,
    direct: Option<Bytes>,
    crlf_after: bool,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.direct.is_none()
    }

    /// Whether more frames may be taken before what waits is written.
    pub fn has_room(&self) -> bool {
        self.direct.is_none() && self.buf.len() < FLUSH_AT
    }

    /// Writes what waits; `Ready(Ok)` when all of it is out. `moved` is set when any byte was
    /// written.
    pub fn poll_write<I: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut I,
        moved: &mut bool,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.buf.is_empty() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.buf))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *moved = true;
                self.buf.drain(..n);
                continue;
            }
            let Some(direct) = self.direct.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let n = ready!(Pin::new(&mut *io).poll_write(cx, direct))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *moved = true;
            bytes::Buf::advance(direct, n);
            if direct.is_empty() {
                self.direct = None;
                if std::mem::take(&mut self.crlf_after) {
                    self.buf.extend_from_slice(b"\r\n");
                }
            }
        }
    }

    /// Flushes the writer (after the last bytes of a response).
    pub fn poll_flush<I: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut I,
    ) -> Poll<io::Result<()>> {
        Pin::new(io).poll_flush(cx)
    }

    /// Queues one data frame in the response's framing. `Err`: the body is longer than its
    /// length (the response cannot be finished).
    pub fn data(&mut self, framing: &mut Framing, data: Bytes) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let chunk = match framing {
            Framing::Length(left) => {
                *left = left
                    .checked_sub(data.len() as u64)
                    .ok_or_else(|| io::Error::other("response body longer than its length"))?;
                false
            }
            Framing::Chunked(_) => {
                let mut size = [0u8; 18];
                self.buf
                    .extend_from_slice(chunked::size_line_of(&mut size, data.len()));
                true
            }
            Framing::Close => false,
            Framing::None => return Ok(()),
        };
        if data.len() >= DIRECT {
            self.direct = Some(data);
            self.crlf_after = chunk;
        } else {
            self.buf.extend_from_slice(&data);
            if chunk {
                self.buf.extend_from_slice(b"\r\n");
            }
        }
        Ok(())
    }

    /// Ends the body, with its trailers if it has any. `Err`: it ended short of its length.
    pub fn end(&mut self, framing: &Framing, trailers: Option<&HeaderMap>) -> io::Result<()> {
        match framing {
            Framing::Length(0) | Framing::None | Framing::Close => Ok(()),
            Framing::Length(_) => Err(io::Error::other("response body shorter than its length")),
            Framing::Chunked(announced) => {
                // Only the fields `Trailer` announced, as hyper sends.
                let fields = trailers
                    .into_iter()
                    .flatten()
                    .filter(|(name, _)| announced.contains(name));
                chunked::put_last_chunk(&mut self.buf, fields);
                Ok(())
            }
        }
    }
}

/// The current time as an HTTP date, formatted once a second per thread (as hyper does).
fn date() -> [u8; 29] {
    use std::cell::Cell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let (at, text) = c.get();
        if at == secs {
            return text;
        }
        let mut text = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        // An HTTP date (IMF-fixdate) is always 29 bytes.
        if formatted.len() == text.len() {
            text.copy_from_slice(formatted.as_bytes());
        }
        c.set((secs, text));
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const GET11: For = For {
        head: false,
        http10: false,
    };

    fn head(
        status: u16,
        headers: &[(&str, &str)],
        body: Option<u64>,
        req: For,
        close: bool,
    ) -> (String, Framing) {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let mut out = Vec::new();
        let framing = encode_head(
            &mut out,
            StatusCode::from_u16(status).unwrap(),
            &map,
            body,
            req,
            close,
        );
        (String::from_utf8(out).unwrap(), framing)
    }

    #[test]
    fn heads_say_what_hyper_would() {
        let (text, f) = head(200, &[("content-type", "text/plain")], Some(5), GET11, false);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\ndate: ")
        );
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text:?}");
        assert_eq!(f, Framing::Length(5));

        let (text, _) = head(
            404,
            &[
                ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("content-length", "99"),
            ],
            Some(3),
            GET11,
            true,
        );
        assert_eq!(
            text,
            "HTTP/1.1 404 Not Found\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\nconnection: close\r\n\
             content-length: 3\r\n\r\n",
            "the length is the body's"
        );
        let (text, f) = head(
            204,
            &[("content-length", "0"), ("x-a", "1")],
            Some(0),
            GET11,
            false,
        );
        assert!(
            text.starts_with("HTTP/1.1 204 No Content\r\nx-a: 1\r\ndate: "),
            "{text:?}"
        );
        assert_eq!(f, Framing::None);
        let (text, f) = head(304, &[("content-length", "10")], Some(0), GET11, false);
        assert!(
            text.starts_with("HTTP/1.1 304 Not Modified\r\ndate: "),
            "{text:?}"
        );
        assert_eq!(f, Framing::None);
        let (text, _) = head(599, &[], Some(0), GET11, false);
        assert!(
            text.starts_with("HTTP/1.1 599 \r\ncontent-length: 0\r\n"),
            "{text:?}"
        );
        let (text, f) = head(200, &[("trailer", "x-sum, x-b")], None, GET11, false);
        assert!(text.contains("\r\ntransfer-encoding: chunked\r\n"), "{text:?}");
        assert_eq!(
            f,
            Framing::Chunked(vec![
                HeaderName::from_static("x-sum"),
                HeaderName::from_static("x-b")
            ])
        );
    }

    #[test]
    fn head_answers_and_http10_clients() {
        let head_req = For {
            head: true,
            http10: false,
        };
        let (text, f) = head(200, &[("content-length", "42")], Some(0), head_req, false);
        assert!(
            text.contains("content-length: 42\r\n") && f == Framing::None,
            "{text:?}"
        );
        assert_eq!(text.matches("content-length").count(), 1);
        let (text, _) = head(404, &[], Some(17), head_req, false);
        assert!(
            text.contains("content-length: 17\r\n"),
            "a local answer's length: {text:?}"
        );
        let (text, _) = head(200, &[], Some(0), head_req, false);
        assert!(
            !text.contains("content-length"),
            "an upstream's HEAD answer without one: {text:?}"
        );
        let old = For {
            head: false,
            http10: true,
        };
        let (text, f) = head(200, &[], None, old, false);
        assert_eq!(f, Framing::Close);
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text:?}");
        assert!(
            !text.contains("connection") && !text.contains("chunked"),
            "{text:?}"
        );
        let (text, f) = head(200, &[], Some(2), old, false);
        assert_eq!(f, Framing::Length(2));
        assert!(text.contains("connection: keep-alive\r\n"), "{text:?}");
    }

    #[test]
    fn small_frames_fill_the_buffer_to_a_bound_and_large_ones_go_as_they_are() {
        let mut o = Outbox::default();
        let mut f = Framing::Chunked(Vec::new());
        let mut taken = 0;
        while o.has_room() {
            o.data(&mut f, Bytes::from(vec![b'a'; 100])).unwrap();
            taken += 1;
        }
        assert!(o.buf.len() < FLUSH_AT + 200, "{}", o.buf.len());
        assert_eq!(
            taken,
            FLUSH_AT / 106 + 1,
            "each 100-byte chunk is 106 bytes framed"
        );
        let mut o = Outbox::default();
        let mut f = Framing::Length(DIRECT as u64);
        o.data(&mut f, Bytes::from(vec![b'b'; DIRECT])).unwrap();
        assert!(
            o.buf.is_empty() && !o.has_room(),
            "not copied; nothing more taken until it is out"
        );
    }

    #[test]
    fn bodies_keep_their_framing() {
        let mut o = Outbox::default();
        let mut f = Framing::Length(5);
        o.data(&mut f, Bytes::from_static(b"hel")).unwrap();
        assert!(o.end(&f, None).is_err(), "short");
        o.data(&mut f, Bytes::from_static(b"lo")).unwrap();
        assert!(o.data(&mut f, Bytes::from_static(b"!")).is_err(), "long");
        o.end(&f, None).unwrap();
        assert_eq!(o.buf, b"hello");

        let mut o = Outbox::default();
        let mut f = Framing::Chunked(vec![HeaderName::from_static("x-sum")]);
        o.data(&mut f, Bytes::from_static(b"abc")).unwrap();
        let mut t = HeaderMap::new();
        t.insert("x-sum", HeaderValue::from_static("1"));
        t.insert("x-secret", HeaderValue::from_static("2"));
        o.end(&f, Some(&t)).unwrap();
        assert_eq!(
            o.buf, b"3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n",
            "only the announced trailer"
        );
        let mut o = Outbox::default();
        o.end(&f, None).unwrap();
        assert_eq!(
            o.buf,
            chunked::LAST_CHUNK,
            "the last chunk is written without trailers too"
        );
    }
}
