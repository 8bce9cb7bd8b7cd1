//! The HTTP/1.1 server path for plain requests, ahead of hyper's.
//!
//! Most requests a proxy sees are simple: HTTP/1.1, a path, a handful of header fields, no
//! body. This connection loop reads and answers those itself, with the upstream client's head
//! parser, and writes each response (head and every body byte ready by then) in one write.
//! Anything else is handed to hyper, with the bytes read so far, for the rest of the
//! connection: a request with a body (or `Expect`, `Transfer-Encoding`), an upgrade, `HEAD`,
//! `CONNECT`, HTTP/1.0, a target that is not a plain path, a head that does not parse or is
//! too large (hyper answers 400 or 431), and the HTTP/2 preface. So every rule for those
//! stays hyper's, and this path only has to be right for the requests it takes.
//!
//! What a response gets here is what hyper would give it: the status line with the canonical
//! reason, the fields in order, `content-length` from the body when it has none and its length
//! is known (else chunked, with only the trailer fields `Trailer` announces), a `date` when it
//! has none, and `connection: close` when the client asked to close or the server is draining.
//! It uses the watchdog's accounting as hyper's path does: the request is busy from its parsed
//! head to the end of its response body, and a close asked between requests closes at once.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::body::ProxyBody;
use super::watchdog::{Busy, Conn};
use super::{Peer, Proxy};
use crate::http1::{self, chunked, head};

/// Header fields a request may have on this path (hyper's limit too).
const MAX_FIELDS: usize = 100;
/// A body frame at least this large is written as it is, not copied behind the head.
const DIRECT: usize = 16 * 1024;
/// Bytes waiting to be written past which they are written before more frames are taken, so
/// a fast upstream's small frames do not pile up for a slow client.
const FLUSH_AT: usize = 64 * 1024;

/// How the loop ended.
pub enum Served {
    /// The connection is done (closed, failed, or asked to close).
    Closed,
    /// A request this path does not take: hyper serves the rest, starting with these bytes.
    Handoff(BytesMut),
}

/// Serves requests on `io` until one is not for this path or the connection ends.
pub async fn serve<I>(
    io: &mut I,
    peer: Peer,
    proxy: &Arc<Proxy>,
    watched: &Arc<Conn>,
    max_head: usize,
) -> Served
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(4 * 1024);
    loop {
        // Read until a whole head is there, unless the connection is asked to close.
        let (parts, close) = loop {
            if !buf.is_empty() {
                match parse(&mut buf) {
                    Head::Request(parts, close) => break (parts, close),
                    Head::More if buf.len() < max_head => {}
                    Head::More | Head::Handoff => return Served::Handoff(buf),
                    Head::Lost => return Served::Closed,
                }
            }
            match read(io, &mut buf, watched).await {
                Ok(n) if n > 0 => {}
                // End of stream, a read error or a close asked by the watchdog.
                _ => return Served::Closed,
            }
        };
        // Pinned where it is made, and the response written where it lands: each is a few
        // hundred bytes, and every move of them is a copy.
        let request = super::Request {
            parts,
            body: None,
            upgrade: None,
            interim: None,
        };
        let handling = std::pin::pin!(proxy.handle_request(request, peer, Busy::start(watched)));
        let Some(mut response) = while_open(io, &mut buf, max_head, handling).await else {
            // The client left: the request is dropped, as hyper drops it.
            return Served::Closed;
        };
        // The proxy's own answer to a broken request closes the connection.
        let close = close || watched.closing() || closes(response.headers());
        let written = write_response(io, &mut out, &mut response, close, ProxyBody::end).await;
        if written.is_err() || close {
            let _ = io.shutdown().await;
            return Served::Closed;
        }
    }
}

/// Waits for the request's response while watching the connection: bytes the client sends
/// meanwhile (a pipelined request) are kept in `buf`, up to `max_head`; `None` when the client
/// closes the connection first (the request is then dropped, cancelling it upstream).
async fn while_open<I, F>(
    io: &mut I,
    buf: &mut BytesMut,
    max_head: usize,
    mut handling: Pin<&mut F>,
) -> Option<Response<ProxyBody>>
where
    I: AsyncRead + Unpin,
    F: std::future::Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>>,
{
    poll_fn(|cx| {
        if let Poll::Ready(Ok(response)) = handling.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        // The read that brought the request was short, which cleared the socket's readiness:
        // this costs no system call until the client sends more or hangs up. As with hyper's
        // default, a client that ends its side (even half) has left.
        while buf.len() < max_head {
            match poll_read_into(io, buf, cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

/// Whether a response asks to close the connection (only the proxy's own answers can: an
/// upstream's `Connection` is consumed by the upstream client).
fn closes(headers: &HeaderMap) -> bool {
    crate::http1::tokens::has(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
        b"close",
    )
}

/// Reads what the socket has into `buf`, with room for a kilobyte at least.
fn poll_read_into<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4 * 1024);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Reads more bytes into `buf`; `Ok(0)` also when the watchdog asks the connection to close.
async fn read<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut, watched: &Conn) -> io::Result<usize> {
    poll_fn(|cx| {
        if watched.close_asked(cx) {
            return Poll::Ready(Ok(0));
        }
        poll_read_into(io, buf, cx)
    })
    .await
}

/// The request is not for this path.
struct NotHere;

/// What the bytes at the start of the read buffer are. (Not boxed: it is matched at once,
/// and a box would be an allocation per request.)
#[allow(clippy::large_enum_variant)]
enum Head {
    /// A request this path takes (taken off the buffer), and whether the client asked to close
    /// after it.
    Request(http::request::Parts, bool),
    /// The beginning of a request this path may take.
    More,
    /// For hyper (nothing taken off the buffer).
    Handoff,
    /// Taken off the buffer, then found unusable: the connection cannot go on. The checks
    /// made before taking it leave this unreachable.
    Lost,
}

/// The longest field name and request target this path takes (a `HeaderName` and a `Uri`
/// take up to 64 KiB; longer ones are hyper's to refuse).
const MAX_NAME: usize = 1024;
const MAX_TARGET: usize = 16 * 1024;

/// Parses the request head at the start of `buf`; a request this path takes is taken off.
fn parse(buf: &mut BytesMut) -> Head {
    let mut spans = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let (method, target, at) = match request_line(buf) {
        Ok(Some(line)) => line,
        Ok(None) => return Head::More,
        Err(NotHere) => return Head::Handoff,
    };
    let (len, fields) = match head::fields(buf, at, &mut spans) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Head::More,
        Err(_) => return Head::Handoff,
    };
    // First, whether this path takes it, building nothing: after this, nothing can fail.
    let mut close = false;
    for f in fields {
        let name = &buf[f.name_range()];
        if f.is(head::CONTENT_LENGTH) || f.is(head::TRANSFER_ENCODING) || name.len() > MAX_NAME {
            return Head::Handoff;
        } else if f.is(head::CONNECTION) {
            for token in buf[f.value_range()].split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Head::Handoff;
                }
            }
        } else if f.is(head::UPGRADE) || f.is(head::EXPECT) {
            return Head::Handoff;
        }
    }
    let raw = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len());
    for f in fields {
        // A token of at most `MAX_NAME` bytes is always a valid name.
        let Some(name) = f.header_name(&raw) else {
            return Head::Lost;
        };
        // SAFETY: the parser accepted the value, and what it accepts in a value (HTAB, SP,
        // visible ASCII, obs-text) is what `HeaderValue` allows.
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(raw.slice(f.value_range())) };
        headers.append(name, value);
    }
    // A path (and query) of bytes `Uri` takes, at most `MAX_TARGET` long, is always valid.
    let Ok(uri) = Uri::from_maybe_shared(raw.slice(target)) else {
        return Head::Lost;
    };
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Head::Request(parts, close)
}

/// `METHOD SP /path SP HTTP/1.1 CRLF`, strictly: the method, the target's range and where the
/// fields start.
#[allow(clippy::type_complexity)]
fn request_line(buf: &[u8]) -> Result<Option<(Method, std::ops::Range<usize>, usize)>, NotHere> {
    let Some(sp) = buf.iter().take(17).position(|&b| b == b' ') else {
        return match buf.len() < 17 && buf.iter().all(u8::is_ascii_uppercase) {
            true => Ok(None),
            false => Err(NotHere),
        };
    };
    let method = &buf[..sp];
    if method.is_empty() || !method.iter().all(u8::is_ascii_uppercase) {
        return Err(NotHere);
    }
    let method = match method {
        b"GET" => Method::GET,
        b"POST" => Method::POST,
        b"PUT" => Method::PUT,
        b"DELETE" => Method::DELETE,
        b"OPTIONS" => Method::OPTIONS,
        b"PATCH" => Method::PATCH,
        b"TRACE" => Method::TRACE,
        // HEAD and CONNECT change what the response is; PRI starts HTTP/2.
        b"HEAD" | b"CONNECT" | b"PRI" => return Err(NotHere),
        other => Method::from_bytes(other).map_err(|_| NotHere)?,
    };
    let start = sp + 1;
    if buf.get(start).is_some_and(|&b| b != b'/') {
        return Err(NotHere);
    }
    let Some(n) = buf[start..].iter().position(|&b| !PATH[b as usize]) else {
        return match buf.len() - start > MAX_TARGET {
            true => Err(NotHere),
            false => Ok(None),
        };
    };
    let end = start + n;
    if n == 0 || n > MAX_TARGET || buf[end] != b' ' {
        return Err(NotHere);
    }
    const VERSION: &[u8] = b"HTTP/1.1\r\n";
    let rest = &buf[end + 1..];
    if rest.len() < VERSION.len() {
        return match VERSION.starts_with(rest) {
            true => Ok(None),
            false => Err(NotHere),
        };
    }
    if &rest[..VERSION.len()] != VERSION {
        return Err(NotHere);
    }
    Ok(Some((method, start..end, end + 1 + VERSION.len())))
}

/// Bytes of a target this path takes: RFC 3986 `pchar`, `/` and `?` (so `%` escapes, but no
/// fragment, no space, nothing `Uri` might refuse).
#[rustfmt::skip]
static PATH: [bool; 256] = head::byte_set!(
    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9'
    | b'-' | b'.' | b'_' | b'~' | b'%' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')'
    | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@' | b'/' | b'?'
);

/// How the response body is framed.
enum Framing {
    /// No body is sent (204, 304, 1xx).
    None,
    Length(u64),
    /// Chunked, sending the trailer fields `Trailer` announced.
    Chunked(Vec<HeaderName>),
}

/// Writes the response, its head and body, calling `end` on the body when it is done (before
/// the last bytes are out); `Err` when the connection cannot go on.
async fn write_response<I, B>(
    io: &mut I,
    out: &mut Vec<u8>,
    response: &mut Response<B>,
    close: bool,
    end: impl FnOnce(&mut B),
) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
    B: Body<Data = Bytes, Error = io::Error> + Unpin,
{
    out.clear();
    let length = response.body().size_hint().exact();
    let framing = encode_head(out, &response.status(), response.headers(), length, close);
    let body = response.body_mut();
    let mut sent = 0u64;
    let mut trailed = false;
    let result: io::Result<()> = async {
        if matches!(framing, Framing::None) {
            return Ok(());
        }
        loop {
            if out.len() >= FLUSH_AT {
                flush(io, out).await?;
            }
            // Every frame ready now goes behind what is waiting, so a small response is one
            // write.
            let step = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending if !out.is_empty() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
                Poll::Ready(frame) => Poll::Ready(Some(frame)),
            })
            .await;
            let frame = match step {
                None => {
                    flush(io, out).await?;
                    continue;
                }
                Some(None) => break,
                Some(Some(Err(e))) => return Err(e),
                Some(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(data) => put_data(io, out, &framing, data, &mut sent).await?,
                Err(frame) => {
                    if let (Ok(trailers), Framing::Chunked(allowed)) = (frame.into_trailers(), &framing) {
                        // Only the fields `Trailer` announced, as hyper sends.
                        let announced = trailers.iter().filter(|(name, _)| allowed.contains(name));
                        chunked::put_last_chunk(out, announced);
                        trailed = true;
                    }
                }
            }
        }
        match framing {
            Framing::Length(n) if sent != n => Err(io::Error::other("response body shorter than its length")),
            Framing::Chunked(_) if !trailed => {
                out.extend_from_slice(b"0\r\n\r\n");
                Ok(())
            }
            _ => Ok(()),
        }
    }
    .await;
    // The logging phase runs when the body is done, before the bytes are out: as with hyper.
    end(body);
    result?;
    flush(io, out).await
}

async fn flush<I: AsyncWrite + Unpin>(io: &mut I, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.flush().await
}

/// Appends (or, when large, writes) one data frame in the response's framing.
async fn put_data<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut Vec<u8>,
    framing: &Framing,
    data: Bytes,
    sent: &mut u64,
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    match framing {
        Framing::Length(n) => {
            if *sent + data.len() as u64 > *n {
                return Err(io::Error::other("response body longer than its length"));
            }
            *sent += data.len() as u64;
        }
        Framing::Chunked(_) => {
            let mut size = [0u8; 18];
            out.extend_from_slice(chunked::size_line_of(&mut size, data.len()));
        }
        Framing::None => return Ok(()),
    }
    if data.len() >= DIRECT {
        flush(io, out).await?;
        io.write_all(&data).await?;
    } else {
        out.extend_from_slice(&data);
    }
    if matches!(framing, Framing::Chunked(_)) {
        out.extend_from_slice(b"\r\n");
    }
    Ok(())
}

/// Encodes the status line and fields into `out`, and says how the body is framed;
/// `body_length`: the body's, when known.
fn encode_head(
    out: &mut Vec<u8>,
    status: &StatusCode,
    headers: &HeaderMap,
    body_length: Option<u64>,
    close: bool,
) -> Framing {
    if *status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless =
        status.is_informational() || *status == StatusCode::NO_CONTENT || *status == StatusCode::NOT_MODIFIED;
    let mut length = None;
    let mut dated = false;
    let mut trailer = false;
    for (name, value) in headers {
        if *name == header::CONTENT_LENGTH {
            if bodiless && *status != StatusCode::NOT_MODIFIED {
                continue;
            }
            if length.is_none() {
                length = http1::parse_length(value.as_bytes());
            }
        } else if *name == header::DATE {
            dated = true;
        } else if *name == header::TRAILER {
            trailer = true;
        } else if *name == header::TRANSFER_ENCODING || *name == header::CONNECTION {
            // Framing and connection management are this hop's, written below.
            continue;
        }
        http1::put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let framing = if bodiless {
        Framing::None
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if let Some(n) = body_length {
        let mut digits = itoa::Buffer::new();
        http1::put_field(out, b"content-length", digits.format(n).as_bytes());
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        let allowed = match trailer {
            false => Vec::new(),
            true => headers
                .get_all(header::TRAILER)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|s| s.split(','))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .collect(),
        };
        Framing::Chunked(allowed)
    };
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&date());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
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

/// The bytes read so far, then the connection's: how hyper gets a connection this path
/// handed over.
pub struct Rewind<I> {
    pre: Option<Bytes>,
    io: I,
}

impl<I> Rewind<I> {
    pub fn new(io: I, pre: BytesMut) -> Rewind<I> {
        Rewind {
            pre: (!pre.is_empty()).then(|| pre.freeze()),
            io,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(pre) = &mut self.pre {
            let n = pre.len().min(buf.remaining());
            buf.put_slice(&pre[..n]);
            pre.advance(n);
            if pre.is_empty() {
                self.pre = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parsed(raw: &[u8]) -> Head {
        parse(&mut BytesMut::from(raw))
    }

    impl Head {
        fn request(self) -> Option<(http::request::Parts, bool)> {
            match self {
                Head::Request(parts, close) => Some((parts, close)),
                _ => None,
            }
        }
    }

    #[test]
    fn a_plain_request_is_taken_and_the_next_one_left() {
        let mut buf = BytesMut::from(
            &b"GET /a/b?c=d&e HTTP/1.1\r\nHost: example.com\r\nX-User-Id: u1\r\nAccept: */*\r\n\
               Connection: keep-alive, Close\r\n\r\nGET /next HTTP/1.1\r\n"[..],
        );
        let (parts, close) = parse(&mut buf).request().expect("taken");
        assert!(close);
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri.path(), "/a/b");
        assert_eq!(parts.uri.query(), Some("c=d&e"));
        assert_eq!(parts.version, Version::HTTP_11);
        let fields: Vec<_> = parts
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
        assert!(matches!(parse(&mut buf), Head::More), "the rest is incomplete");
    }

    #[test]
    fn every_prefix_of_a_plain_request_waits_for_more() {
        let raw = b"DELETE /x%20y HTTP/1.1\r\nHost: h\r\nCookie: a=b\r\n\r\n";
        for n in 0..raw.len() {
            assert!(
                matches!(parsed(&raw[..n]), Head::More),
                "{:?}",
                String::from_utf8_lossy(&raw[..n])
            );
        }
        let (parts, close) = parsed(raw).request().unwrap();
        assert_eq!(
            (parts.method, parts.uri.path(), close),
            (Method::DELETE, "/x%20y", false)
        );
    }

    #[test]
    fn requests_hyper_must_see_are_handed_over() {
        for raw in [
            &b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ncontent-LENGTH: 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: keep-alive, upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"HEAD / HTTP/1.1\r\n\r\n",
            b"CONNECT h:443 HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET http://h/ HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\n\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nx: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nx-nul: a\x00b\r\n\r\n",
            b"NOT-HTTP\r\n\r\n",
            b"AVERYLONGMETHODNAMEX / HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parsed(raw), Head::Handoff),
                "{:?} was taken",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn long_targets_and_names_are_hyper_s() {
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_TARGET));
        assert!(matches!(parsed(long.as_bytes()), Head::Handoff));
        assert!(matches!(
            parsed(&long.as_bytes()[..MAX_TARGET + 8]),
            Head::Handoff
        ));
        let fits = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_TARGET - 1));
        assert!(matches!(parsed(fits.as_bytes()), Head::Request(..)));
        let name = format!("GET / HTTP/1.1\r\n{}: v\r\n\r\n", "n".repeat(MAX_NAME + 1));
        assert!(matches!(parsed(name.as_bytes()), Head::Handoff));
    }

    #[test]
    fn heads_say_what_hyper_would() {
        let head = |status: u16, headers: &[(&str, &str)], body: &str, close: bool| {
            let mut map = HeaderMap::new();
            for (n, v) in headers {
                map.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
            }
            let mut out = Vec::new();
            let framing = encode_head(
                &mut out,
                &StatusCode::from_u16(status).unwrap(),
                &map,
                Some(body.len() as u64),
                close,
            );
            let len = match framing {
                Framing::None => None,
                Framing::Length(n) => Some(n),
                Framing::Chunked(_) => panic!("a full body has a length"),
            };
            (String::from_utf8(out).unwrap(), len)
        };
        let (text, len) = head(200, &[("content-type", "text/plain")], "hello", false);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\ndate: ")
        );
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text:?}");
        assert_eq!(len, Some(5));

        let (text, len) = head(
            404,
            &[("date", "Sun, 06 Nov 1994 08:49:37 GMT"), ("content-length", "3")],
            "abc",
            true,
        );
        assert_eq!(
            text,
            "HTTP/1.1 404 Not Found\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 3\r\n\
             connection: close\r\n\r\n"
        );
        assert_eq!(len, Some(3));

        let (text, len) = head(204, &[("content-length", "0"), ("x-a", "1")], "", false);
        assert!(
            text.starts_with("HTTP/1.1 204 No Content\r\nx-a: 1\r\ndate: "),
            "{text:?}"
        );
        assert_eq!(len, None);
        let (text, len) = head(304, &[("content-length", "10")], "", false);
        assert!(
            text.starts_with("HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\ndate: "),
            "{text:?}"
        );
        assert_eq!(len, None);
        let (text, _) = head(599, &[], "", false);
        assert!(
            text.starts_with("HTTP/1.1 599 \r\ncontent-length: 0\r\n"),
            "{text:?}"
        );
    }

    /// A client socket that takes every write whole, keeping the bytes and each write's size.
    #[derive(Default)]
    struct Recorder {
        bytes: Vec<u8>,
        writes: Vec<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.bytes.extend_from_slice(buf);
            self.writes.push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Writes `response` as the plain path does; the bytes, each write's size, how often the
    /// body was ended and the result.
    async fn written<B>(mut response: Response<B>) -> (Vec<u8>, Vec<usize>, usize, io::Result<()>)
    where
        B: Body<Data = Bytes, Error = io::Error> + Unpin,
    {
        let (mut io, mut out, mut ended) = (Recorder::default(), Vec::new(), 0);
        let result = write_response(&mut io, &mut out, &mut response, false, |_| ended += 1).await;
        (io.bytes, io.writes, ended, result)
    }

    #[tokio::test]
    async fn small_frames_of_a_fast_body_go_out_in_bounded_writes_then_the_announced_trailers() {
        use http_body_util::StreamBody;
        let frames = (0..2000u32)
            .map(|i| {
                Ok(http_body::Frame::data(Bytes::from(vec![
                    b'a' + (i % 26) as u8;
                    100
                ])))
            })
            .chain(std::iter::once(Ok(http_body::Frame::trailers({
                let mut t = HeaderMap::new();
                t.insert("x-sum", HeaderValue::from_static("1"));
                t.insert("x-secret", HeaderValue::from_static("2"));
                t
            }))));
        let body = StreamBody::new(futures_util::stream::iter(frames.collect::<Vec<io::Result<_>>>()));
        let mut response = Response::new(body);
        response
            .headers_mut()
            .insert(header::TRAILER, HeaderValue::from_static("x-sum"));
        let (bytes, writes, ended, result) = written(response).await;
        result.unwrap();
        assert_eq!(ended, 1);
        assert!(writes.len() > 1, "{writes:?}");
        assert!(writes.iter().all(|&w| w <= FLUSH_AT + 200), "{writes:?}");
        let text = String::from_utf8(bytes).unwrap();
        let (head, mut rest) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains("\r\ntrailer: x-sum\r\ntransfer-encoding: chunked\r\n"),
            "{head}"
        );
        let mut data = String::new();
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size, 16).unwrap();
            if size == 0 {
                assert_eq!(after, "x-sum: 1\r\n\r\n", "only the announced trailer");
                break;
            }
            data.push_str(&after[..size]);
            rest = after[size..].strip_prefix("\r\n").unwrap();
        }
        let want: String = (0..2000u32)
            .map(|i| ((b'a' + (i % 26) as u8) as char).to_string().repeat(100))
            .collect();
        assert_eq!(data, want);
    }

    #[tokio::test]
    async fn a_known_length_goes_with_the_head_in_one_write_and_must_be_kept() {
        let full = |b: &'static str| ProxyBody::full(Bytes::from_static(b.as_bytes()));
        let (bytes, writes, ended, result) = written(Response::new(full("hello"))).await;
        result.unwrap();
        assert_eq!((writes.len(), ended), (1, 1));
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\nhello"), "{text}");

        // A length the body does not keep breaks the connection (the client sees it cut off).
        let mut short = Response::new(full("hel"));
        short
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let (_, _, ended, result) = written(short).await;
        assert!(result.is_err());
        assert_eq!(ended, 1);
    }

    /// httparse's reading of a request (what hyper builds a request from): method, target,
    /// minor version, fields and the head's length.
    #[allow(clippy::type_complexity)]
    fn httparse(raw: &[u8]) -> Option<(String, String, u8, Vec<(String, Vec<u8>)>, usize)> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut fields);
        match req.parse(raw) {
            Ok(httparse::Status::Complete(len)) => Some((
                req.method?.to_owned(),
                req.path?.to_owned(),
                req.version?,
                req.headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                    .collect(),
                len,
            )),
            _ => None,
        }
    }

    /// What this path takes, it reads as httparse does; what it takes whole, it waits for at
    /// every shorter prefix.
    fn agrees(raw: &[u8]) -> Result<(), TestCaseError> {
        let mut buf = BytesMut::from(raw);
        let Head::Request(parts, _) = parse(&mut buf) else {
            prop_assert_eq!(buf.len(), raw.len(), "only a request taken leaves the buffer");
            return Ok(());
        };
        let (method, target, minor, fields, len) =
            httparse(raw).ok_or_else(|| TestCaseError::fail("taken, but httparse refuses it"))?;
        prop_assert_eq!(parts.method.as_str(), method);
        prop_assert_eq!(parts.uri.to_string(), target);
        prop_assert_eq!(minor, 1);
        // As hyper would build the map from them (a map groups the values of one name).
        let mut theirs = HeaderMap::new();
        for (name, value) in fields {
            theirs.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(&value).unwrap(),
            );
        }
        let list = |m: &HeaderMap| -> Vec<(String, Vec<u8>)> {
            m.iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect()
        };
        prop_assert_eq!(list(&parts.headers), list(&theirs));
        prop_assert_eq!(raw.len() - buf.len(), len);
        for n in 0..len {
            prop_assert!(
                matches!(parsed(&raw[..n]), Head::More),
                "prefix {} not incomplete",
                n
            );
        }
        Ok(())
    }

    fn request() -> impl Strategy<Value = Vec<u8>> {
        let method = prop::sample::select(vec!["GET", "POST", "DELETE", "PURGE", "HEAD", "get", "PRI"]);
        let target = prop_oneof![
            "/[a-zA-Z0-9/%?=&._~!$'()*+,;:@-]{0,24}",
            Just("*".to_owned()),
            "/[ -~]{0,8}"
        ];
        let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]);
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
        let field = (
            name,
            "[ \t]{0,2}",
            "[ -~\t]{0,16}",
            prop::sample::select(vec!["\r\n", "\r\n", "\n"]),
        );
        (method, target, version, prop::collection::vec(field, 0..8)).prop_map(|(m, t, v, fields)| {
            let mut raw = format!("{m} {t} {v}\r\n").into_bytes();
            for (name, ws, value, end) in fields {
                raw.extend_from_slice(format!("{name}:{ws}{value}{end}").as_bytes());
            }
            raw.extend_from_slice(b"\r\n");
            raw
        })
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
        fn takes_plain_requests(
            path in "/[a-zA-Z0-9/%?=&._~-]{0,24}",
            fields in prop::collection::vec(("[a-z][a-z0-9-]{0,10}", "[!-~]{1,16}"), 0..8),
        ) {
            let mut raw = format!("GET {path} HTTP/1.1\r\n").into_bytes();
            for (n, v) in &fields {
                raw.extend_from_slice(format!("x-{n}: {v}\r\n").as_bytes());
            }
            raw.extend_from_slice(b"\r\n");
            prop_assert!(matches!(parsed(&raw), Head::Request(..)));
            agrees(&raw)?;
        }
    }
}
