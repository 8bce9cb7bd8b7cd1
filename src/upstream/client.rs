//! The upstream HTTP/1.1 client: one connection per request at a time, kept alive and reused
//! through a lock-free idle queue on each [`Endpoint`], and driven inside the request's own
//! task. There is no connection task and no channel between the request and its connection:
//! the request future writes the head and the body and reads the response head, and the
//! response body ([`ResponseBody`]) reads the rest from the socket as the client takes it,
//! finishing the request body alongside when the upstream answers before it has all of it.
//!
//! Framing follows RFC 9112 §6: `Content-Length`, `chunked` (with trailers), or read to close;
//! no body for `HEAD`, 1xx, 204 and 304. Informational responses other than `101` are
//! skipped. A `101` answer to an upgrade request hands over the raw connection
//! ([`ResponseBody::into_upgraded`]) for the tunnel.
//!
//! An idle connection is checked before reuse without a system call: tokio's readiness says
//! whether the upstream closed it (or sent bytes nobody asked for) since its last response.
//! A request that finds a reused connection closed before any byte of an answer is sent once
//! more on a new connection when that is safe (nothing of its body was read, and the method is
//! idempotent or nothing could have reached the upstream).

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_queue::ArrayQueue;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Endpoint;

pub mod head;

/// An idle connection unused for this long is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint; more are closed when they come back.
pub const IDLE_PER_ENDPOINT: usize = 256;
/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a response head (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Reads into at least this much free buffer; bodies known to be large read more at once.
const READ_SIZE: usize = 16 * 1024;
const READ_SIZE_LARGE: usize = 64 * 1024;

/// Why a request to an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error("{0}")]
    Io(io::Error),
    #[error("the connection closed before a complete response head")]
    Closed,
    #[error("invalid response: {0}")]
    Protocol(&'static str),
    #[error("reading the request body failed: {0}")]
    RequestBody(hyper::Error),
    /// The deadline for the response head passed.
    #[error("no response head before the deadline")]
    Timeout,
}

impl Error {
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_))
    }
}

/// A failed request, with its body handed back when none of it was read (so it can be sent
/// elsewhere, with [`Prepared::retarget`]).
pub struct Failure {
    pub error: Error,
    pub body: Option<Incoming>,
}

/// The header fields of a request, as the proxy wants them sent.
pub trait Fields {
    /// Calls `f` with each field's name and value, in order.
    fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8]));
    /// Whether the fields include `Content-Length` (else a body goes chunked).
    fn has_content_length(&self) -> bool;
}

/// What goes upstream: the request line and the header fields.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    pub path: &'a PathAndQuery,
    pub fields: &'a (dyn Fields + Sync),
    /// An HTTP/1.1 upgrade (WebSocket): a `101` answer hands the connection over.
    pub upgrade: bool,
}

/// The idle connections of one endpoint. The queue is allocated when the first connection
/// comes back, so endpoints that never take traffic cost nothing.
#[derive(Default)]
pub struct IdleConns {
    queue: OnceLock<ArrayQueue<(Conn, Instant)>>,
}

impl std::fmt::Debug for IdleConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdleConns({})", self.len())
    }
}

impl IdleConns {
    /// A live idle connection, if there is one.
    fn checkout(&self, now: Instant) -> Option<Conn> {
        let queue = self.queue.get()?;
        while let Some((conn, since)) = queue.pop() {
            if now.saturating_duration_since(since) < IDLE_TIMEOUT && conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, conn: Conn) {
        // A full queue closes the connection.
        let queue = self.queue.get_or_init(|| ArrayQueue::new(IDLE_PER_ENDPOINT));
        let _ = queue.push((conn, Instant::now()));
    }

    /// Closes idle connections the upstream has closed or that were idle too long, so they do
    /// not linger half-closed between bursts of traffic.
    pub fn sweep(&self, now: Instant) {
        let Some(queue) = self.queue.get() else {
            return;
        };
        for _ in 0..queue.len() {
            match queue.pop() {
                Some((conn, since)) => {
                    if now.saturating_duration_since(since) < IDLE_TIMEOUT && conn.is_open() {
                        let _ = queue.push((conn, since));
                    }
                }
                None => break,
            }
        }
    }

    /// Idle connections held.
    pub fn len(&self) -> usize {
        self.queue.get().map_or(0, ArrayQueue::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One connection to an upstream, with its buffers (kept across requests).
struct Conn {
    io: TcpStream,
    /// Bytes read and not yet used.
    rbuf: BytesMut,
    /// The request head being written.
    wbuf: Vec<u8>,
    /// The deadline of the current request's response head. One timer per connection, moved
    /// to each request's deadline: a later deadline only updates the timer's entry (tokio
    /// re-files it when the old one comes due), where a timer per request would be added to
    /// and taken off the timer wheel each time.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Connects to an upstream.
async fn connect(address: &str, timeout: Duration) -> io::Result<TcpStream> {
    let io = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    io.set_nodelay(true)?;
    Ok(io)
}

impl Conn {
    /// A new connection, with a request head in `wbuf`.
    fn new(io: TcpStream, wbuf: Vec<u8>) -> Conn {
        Conn {
            io,
            rbuf: BytesMut::with_capacity(READ_SIZE),
            wbuf,
            timer: None,
        }
    }

    /// Sets the deadline of the request about to be sent.
    fn arm(&mut self, deadline: Instant) {
        match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
            }
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Whether the deadline set by [`Conn::arm`] has passed; wakes the task when it does.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.timer {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    /// Whether an idle connection can take a request: the upstream has not closed it, and
    /// has sent nothing since its last response. Costs a system call only when the socket
    /// became readable while idle.
    fn is_open(&self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more bytes into `rbuf`, growing it by `want` when less than a quarter of that is
    /// free. (Responses are split off the front of the buffer, so a buffer is used for many
    /// small responses before a new one is needed.) `Ok(0)` is the end.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < want / 4 {
            self.rbuf.reserve(want);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }

    /// Writes all of `wbuf`.
    fn poll_write_head(&mut self, cx: &mut Context<'_>, written: &mut usize) -> Poll<io::Result<()>> {
        while *written < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// A request ready for one endpoint: its head encoded, on the idle connection it goes out on
/// when the endpoint had one. It is made before the request's first await, so the client's
/// request head (whose fields share the server's read buffer) can be dropped before the
/// request waits for anything, and the server reads the next request into the same buffer.
pub struct Prepared {
    /// An idle connection of the endpoint, with the head in its write buffer.
    conn: Option<Conn>,
    /// The head, when no connection was idle.
    head: Vec<u8>,
    /// Where the endpoint's authority went into the head as `host` (the client sent none).
    host_at: Option<std::ops::Range<usize>>,
    method: Method,
    /// A body follows, chunked.
    chunked: bool,
    upgrade: bool,
}

/// Whether a request body has anything to send.
fn has_body(body: Option<&Incoming>) -> bool {
    body.is_some_and(|b| !b.is_end_stream())
}

impl Prepared {
    /// Encodes `req` for `endpoint`, on an idle connection of it if one is open (`now` is the
    /// time for the idle check).
    pub fn new(endpoint: &Endpoint, req: &Outgoing<'_>, body: Option<&Incoming>, now: Instant) -> Prepared {
        let body = has_body(body);
        let chunked = body && !req.fields.has_content_length();
        let mut conn = endpoint.idle.checkout(now);
        let mut head = Vec::new();
        let out = match &mut conn {
            Some(c) => &mut c.wbuf,
            None => {
                head.reserve(1024);
                &mut head
            }
        };
        let host_at = encode_head(out, req, endpoint, !body, chunked);
        Prepared {
            conn,
            head,
            host_at,
            method: req.method.clone(),
            chunked,
            upgrade: req.upgrade,
        }
    }

    /// Makes this the same request for another endpoint (after a failed connect).
    pub fn retarget(&mut self, endpoint: &Endpoint, now: Instant) {
        let mut head = match self.conn.take() {
            Some(mut c) => std::mem::take(&mut c.wbuf),
            None => std::mem::take(&mut self.head),
        };
        if let Some(at) = self.host_at.take() {
            let authority = endpoint.authority.as_str().as_bytes();
            head.splice(at.clone(), authority.iter().copied());
            self.host_at = Some(at.start..at.start + authority.len());
        }
        self.conn = endpoint.idle.checkout(now);
        match &mut self.conn {
            Some(c) => c.wbuf = head,
            None => self.head = head,
        }
    }

    /// An HTTP/1.1 upgrade request.
    pub fn is_upgrade(&self) -> bool {
        self.upgrade
    }
}

/// Sends a prepared request to its endpoint and waits for the response head, until
/// `deadline` (then [`Error::Timeout`]; connecting is bounded by `connect_timeout` as well).
/// The response body streams from the connection; the connection goes back to the endpoint's
/// idle queue when the exchange ends cleanly. After a failure, `req` can be sent again.
pub async fn send(
    endpoint: &Arc<Endpoint>,
    connect_timeout: Duration,
    deadline: Instant,
    req: &mut Prepared,
    body: Option<Incoming>,
) -> Result<Response<ResponseBody>, Failure> {
    let mut body = body.filter(|b| has_body(Some(b)));
    // At most twice: a kept-alive connection the upstream closed as it was reused is
    // replaced by a new one.
    loop {
        let reused = req.conn.is_some();
        let conn = match req.conn.take() {
            Some(c) => c,
            None => {
                match tokio::time::timeout_at(deadline, connect(&endpoint.address, connect_timeout)).await {
                    Ok(Ok(io)) => Conn::new(io, std::mem::take(&mut req.head)),
                    Ok(Err(e)) => {
                        return Err(Failure {
                            error: Error::Connect(e),
                            body,
                        })
                    }
                    Err(_) => {
                        return Err(Failure {
                            error: Error::Timeout,
                            body,
                        })
                    }
                }
            }
        };
        match exchange(conn, endpoint, req, body, deadline).await {
            Ok(r) => return Ok(r),
            Err(broken) => {
                req.head = broken.head;
                if broken.retry && reused {
                    tracing::debug!(endpoint = %endpoint.address, "kept-alive connection was closed ({}); sending again on a new one", broken.error);
                    body = broken.body;
                    continue;
                }
                return Err(Failure {
                    error: broken.error,
                    body: broken.body,
                });
            }
        }
    }
}

/// An exchange that failed before a response head: the error, the body if none of it was
/// read, the head (to send again), and whether sending again on a new connection is safe.
struct Broken {
    error: Error,
    body: Option<Incoming>,
    head: Vec<u8>,
    retry: bool,
}

/// Methods a client may repeat without meaning to do something twice (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// One request on one connection (its head already in the connection's write buffer), up to
/// the response head.
async fn exchange(
    mut conn: Conn,
    endpoint: &Arc<Endpoint>,
    req: &Prepared,
    body: Option<Incoming>,
    deadline: Instant,
) -> Result<Response<ResponseBody>, Broken> {
    let mut writer = body.map(|b| BodyWriter::new(b, req.chunked));
    let mut written = 0;
    let mut head_sent = false;
    let mut write_error: Option<Error> = None;
    conn.arm(deadline);
    let head = std::future::poll_fn(|cx| {
        let polled = 'step: {
            if !head_sent {
                match conn.poll_write_head(cx, &mut written) {
                    Poll::Ready(Ok(())) => head_sent = true,
                    Poll::Ready(Err(e)) => break 'step Poll::Ready(Err(Error::Io(e))),
                    Poll::Pending => break 'step Poll::Pending,
                }
            }
            if let Some(w) = writer.as_mut().filter(|w| !w.done && write_error.is_none()) {
                // A failed write still reads on: the upstream may have answered, then stopped
                // reading.
                if let Poll::Ready(Err(e)) = w.poll_write(cx, &mut conn.io) {
                    write_error = Some(e);
                }
            }
            poll_head(cx, &mut conn, &req.method)
        };
        if polled.is_pending() && conn.poll_deadline(cx).is_ready() {
            return Poll::Ready(Err(Error::Timeout));
        }
        polled
    })
    .await;
    let head = match head {
        Ok(h) => h,
        Err(e) => {
            let untouched = writer.as_ref().is_none_or(|w| !w.touched);
            let retry = matches!(e, Error::Closed | Error::Io(_))
                && conn.rbuf.is_empty()
                && untouched
                && (idempotent(&req.method) || !head_sent);
            let body = writer.filter(|w| !w.touched).map(|w| w.body);
            // A failed request body explains a broken exchange better than its symptom.
            let error = match write_error {
                Some(w @ Error::RequestBody(_)) => w,
                _ => e,
            };
            return Err(Broken {
                error,
                body,
                head: std::mem::take(&mut conn.wbuf),
                retry,
            });
        }
    };
    let (parts, framing, keep_alive) = head;
    // Boxed: the response body is moved several times on its way out, and a body still going
    // up is rare.
    let writer = match (writer, write_error) {
        (Some(w), None) if !w.done => Some(Box::new(w)),
        _ => None,
    };
    let body = if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        if !req.upgrade {
            return Err(Broken {
                error: Error::Protocol("101 Switching Protocols to a request without Upgrade"),
                body: None,
                head: std::mem::take(&mut conn.wbuf),
                retry: false,
            });
        }
        ResponseBody {
            state: Read::Upgraded,
            conn: Some(conn),
            writer: None,
            reusable: false,
            endpoint: endpoint.clone(),
        }
    } else {
        // A request whose body went only partly upstream cannot leave a usable connection.
        let reusable = keep_alive && writer.is_none() && !req.upgrade;
        let mut b = ResponseBody {
            state: framing,
            conn: Some(conn),
            writer,
            reusable,
            endpoint: endpoint.clone(),
        };
        if b.state.is_done() {
            b.release();
        }
        b
    };
    Ok(Response::from_parts(parts, body))
}

/// Writes the request line and header fields into `out`. Returns where the endpoint's
/// authority went, when it stands in for a `host` the client did not send.
fn encode_head(
    out: &mut Vec<u8>,
    req: &Outgoing<'_>,
    endpoint: &Endpoint,
    empty: bool,
    chunked: bool,
) -> Option<std::ops::Range<usize>> {
    out.clear();
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let (mut has_length, mut has_host) = (false, false);
    req.fields.for_each(&mut |name, value| {
        if name == b"content-length" {
            if chunked {
                return;
            }
            has_length = true;
        } else if name == b"host" {
            has_host = true;
        }
        put_field(out, name, value);
    });
    let mut host_at = None;
    if !has_host {
        out.extend_from_slice(b"host: ");
        let start = out.len();
        out.extend_from_slice(endpoint.authority.as_str().as_bytes());
        host_at = Some(start..out.len());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if empty && !has_length && matches!(*req.method, Method::POST | Method::PUT | Method::PATCH) {
        // Some servers refuse a bodiless POST without a length (411).
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    host_at
}

/// Appends `name: value\r\n`, with one capacity check for the line.
#[inline]
pub(crate) fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let len = name.len() + value.len() + 4;
    out.reserve(len);
    let at = out.len();
    // SAFETY: `reserve` made room for `len` more bytes after `at`; the four copies below
    // write exactly those bytes, from slices that cannot overlap the vector's spare room.
    unsafe {
        let dst = out.as_mut_ptr().add(at);
        std::ptr::copy_nonoverlapping(name.as_ptr(), dst, name.len());
        std::ptr::copy_nonoverlapping(b": ".as_ptr(), dst.add(name.len()), 2);
        std::ptr::copy_nonoverlapping(value.as_ptr(), dst.add(name.len() + 2), value.len());
        std::ptr::copy_nonoverlapping(b"\r\n".as_ptr(), dst.add(len - 2), 2);
        out.set_len(at + len);
    }
}

type Head = (http::response::Parts, Read, bool);

/// Reads until a final response head is complete; 1xx answers other than 101 are skipped.
fn poll_head(cx: &mut Context<'_>, conn: &mut Conn, method: &Method) -> Poll<Result<Head, Error>> {
    let mut received = false;
    loop {
        if !conn.rbuf.is_empty() {
            received = true;
            if let Some(head) = parse_head(&mut conn.rbuf, method)? {
                return Poll::Ready(Ok(head));
            }
            if conn.rbuf.len() >= MAX_HEAD {
                return Poll::Ready(Err(Error::Protocol("response head too large")));
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

/// Parses a response head at the start of `buf` and takes it off. `None`: incomplete (or an
/// informational answer was skipped and the rest is incomplete).
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, Error> {
    loop {
        let mut spans = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let (parsed, fields) = match head::response(buf, &mut spans) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(None),
            Err(head::Invalid::TooManyFields) => return Err(Error::Protocol("too many headers")),
            Err(head::Invalid::Malformed) => return Err(Error::Protocol("malformed response head")),
        };
        let len = parsed.len;
        let status = StatusCode::from_u16(parsed.code).map_err(|_| Error::Protocol("invalid status code"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            buf.advance(len);
            continue;
        }
        let version = if parsed.minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let raw = buf.split_to(len).freeze();
        let mut map = HeaderMap::with_capacity(fields.len() + 2);
        let mut length: Option<u64> = None;
        let mut te_chunked = None;
        let mut close = version == Version::HTTP_10;
        for field in fields {
            let name = field
                .header_name(&raw)
                .ok_or(Error::Protocol("invalid header name"))?;
            // SAFETY: the parser accepted the value, and what it accepts in a value (HTAB, SP,
            // visible ASCII, obs-text) is what `HeaderValue` allows.
            let value = unsafe { HeaderValue::from_maybe_shared_unchecked(raw.slice(field.value_range())) };
            // These names are in the parser's table, so they are found in any case.
            if field.is(head::CONTENT_LENGTH) {
                let n = parse_length(value.as_bytes()).ok_or(Error::Protocol("invalid content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Protocol("conflicting content-length values"));
                }
                length = Some(n);
            } else if field.is(head::TRANSFER_ENCODING) {
                // Chunked must be the last coding; anything else is read to close.
                te_chunked = Some(
                    value
                        .to_str()
                        .ok()
                        .and_then(|s| s.rsplit(',').next())
                        .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked")),
                );
            } else if field.is(head::CONNECTION) {
                let mut only_ours = true;
                for t in value.to_str().unwrap_or("").split(',') {
                    let t = t.trim();
                    if t.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case("keep-alive") {
                        if version == Version::HTTP_10 {
                            close = false;
                        }
                    } else {
                        only_ours = false;
                    }
                }
                // Connection management is this hop's business and is done here; a Connection
                // that names other fields stays, so the response phase removes those too.
                if only_ours {
                    continue;
                }
            } else if field.is(head::KEEP_ALIVE) {
                continue;
            }
            map.append(name, value);
        }
        let no_body = *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status == StatusCode::SWITCHING_PROTOCOLS;
        let framing = if no_body {
            Read::Length(0)
        } else {
            match (te_chunked, length) {
                (Some(true), _) => {
                    // Framed by TE; a Content-Length beside it is wrong and must not pass on.
                    map.remove(header::CONTENT_LENGTH);
                    Read::Chunked(Chunk::Size)
                }
                (Some(false), _) => {
                    map.remove(header::CONTENT_LENGTH);
                    Read::ToClose
                }
                (None, Some(n)) => Read::Length(n),
                (None, None) => Read::ToClose,
            }
        };
        let keep_alive = !close && !matches!(framing, Read::ToClose);
        let mut parts = Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = version;
        parts.headers = map;
        return Ok(Some((parts, framing, keep_alive)));
    }
}

/// A chunk's size line, `{len:x}\r\n`, written into `buf`.
pub(crate) fn chunk_size_line(buf: &mut [u8; 18], mut len: usize) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut at = 16;
    buf[16..].copy_from_slice(b"\r\n");
    loop {
        at -= 1;
        buf[at] = HEX[len & 0xf];
        len >>= 4;
        if len == 0 {
            break;
        }
    }
    &buf[at..]
}

/// The last chunk of a chunked body with its trailer fields (`trailers` may be filtered).
pub(crate) fn put_last_chunk<'a>(
    out: &mut Vec<u8>,
    trailers: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Writes a request body as it arrives from the client, raw or chunked.
struct BodyWriter {
    body: Incoming,
    chunked: bool,
    /// Bytes taken from the body and not yet written.
    out: VecDeque<Bytes>,
    /// Some of the body was read (it can no longer be sent elsewhere).
    touched: bool,
    /// All of it is written.
    done: bool,
    /// The body has ended; `out` holds the last of it.
    ended: bool,
}

impl BodyWriter {
    fn new(body: Incoming, chunked: bool) -> BodyWriter {
        BodyWriter {
            body,
            chunked,
            out: VecDeque::with_capacity(3),
            touched: false,
            done: false,
            ended: false,
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, io: &mut TcpStream) -> Poll<Result<(), Error>> {
        loop {
            while !self.out.is_empty() {
                let mut slices = [IoSlice::new(&[]); 4];
                let mut k = 0;
                for (s, b) in slices.iter_mut().zip(self.out.iter()) {
                    *s = IoSlice::new(b);
                    k += 1;
                }
                let mut n =
                    ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k])).map_err(Error::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
                }
                while n > 0 {
                    let front = self.out.front_mut().expect("written bytes were queued");
                    let take = n.min(front.len());
                    front.advance(take);
                    n -= take;
                    if front.is_empty() {
                        self.out.pop_front();
                    }
                }
            }
            if self.ended {
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            self.touched = true;
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => {
                    self.ended = true;
                    if self.chunked {
                        self.out.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(Error::RequestBody(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if self.chunked => {
                        let mut size = [0u8; 18];
                        self.out
                            .push_back(Bytes::copy_from_slice(chunk_size_line(&mut size, data.len())));
                        self.out.push_back(data);
                        self.out.push_back(Bytes::from_static(b"\r\n"));
                    }
                    Ok(data) => self.out.push_back(data),
                    Err(frame) => {
                        // Trailers end the body; only chunked coding can carry them.
                        if let (Ok(trailers), true) = (frame.into_trailers(), self.chunked) {
                            let mut t = Vec::new();
                            put_last_chunk(&mut t, &trailers);
                            self.out.push_back(Bytes::from(t));
                            self.ended = true;
                        }
                    }
                },
            }
        }
    }
}

/// How the rest of a response body is read.
enum Read {
    Length(u64),
    Chunked(Chunk),
    ToClose,
    Upgraded,
    Done,
}

enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl Read {
    fn is_done(&self) -> bool {
        matches!(self, Read::Length(0) | Read::Done)
    }
}

/// A response body, read from the upstream connection as it is polled.
pub struct ResponseBody {
    state: Read,
    /// `None` once the connection was released (back to the idle queue, or closed).
    conn: Option<Conn>,
    /// The rest of the request body, when the upstream answered before it was all sent.
    writer: Option<Box<BodyWriter>>,
    /// The connection may serve another request once this body ends.
    reusable: bool,
    endpoint: Arc<Endpoint>,
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

    /// The body has ended: the connection goes back to the idle queue if it can serve again.
    fn release(&mut self) {
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
                Read::Chunked(chunk) => match decode_chunk(chunk, &mut conn.rbuf) {
                    Ok(Some(Decoded::Data(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Some(Decoded::End(trailers))) => {
                        self.release();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(None) => {}
                    Err(msg) => return self.fail(io::Error::new(io::ErrorKind::InvalidData, msg)),
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

enum Decoded {
    Data(Bytes),
    End(Option<HeaderMap>),
}

/// Decodes what `buf` holds of a chunked body. `Ok(None)`: more bytes are needed.
fn decode_chunk(state: &mut Chunk, buf: &mut BytesMut) -> Result<Option<Decoded>, &'static str> {
    loop {
        match state {
            Chunk::Size => {
                let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                    if buf.len() > 4096 {
                        return Err("chunk size line too long");
                    }
                    return Ok(None);
                };
                let line = &buf[..eol];
                let line = line.strip_suffix(b"\r").ok_or("chunk size line without CRLF")?;
                // Extensions (";name=value") are allowed and ignored.
                let digits = line.split(|&b| b == b';').next().unwrap_or(&[]);
                let digits = digits.trim_ascii();
                if digits.is_empty() || digits.len() > 15 {
                    return Err("invalid chunk size");
                }
                let mut size: u64 = 0;
                for &d in digits {
                    let v = (d as char).to_digit(16).ok_or("invalid chunk size")?;
                    size = size * 16 + u64::from(v);
                }
                buf.advance(eol + 1);
                *state = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(rest) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (*rest).min(buf.len() as u64) as usize;
                *rest -= n as u64;
                let data = buf.split_to(n).freeze();
                if *rest == 0 {
                    *state = Chunk::DataEnd;
                }
                return Ok(Some(Decoded::Data(data)));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF");
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                let mut spans = [const { MaybeUninit::uninit() }; MAX_HEADERS];
                return match head::fields(buf, 0, &mut spans) {
                    Ok(None) => {
                        if buf.len() > MAX_HEAD {
                            return Err("trailers too large");
                        }
                        Ok(None)
                    }
                    Err(_) => Err("malformed trailers"),
                    Ok(Some((len, fields))) => {
                        let trailers = (!fields.is_empty()).then(|| {
                            let mut map = HeaderMap::with_capacity(fields.len());
                            for field in fields {
                                if let (Some(n), Ok(v)) = (
                                    field.header_name(buf),
                                    HeaderValue::from_bytes(&buf[field.value_range()]),
                                ) {
                                    map.append(n, v);
                                }
                            }
                            map
                        });
                        buf.advance(len);
                        Ok(Some(Decoded::End(trailers)))
                    }
                };
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

    #[test]
    fn chunk_sizes_are_chunk_size_lines() {
        let mut buf = [0u8; 18];
        assert_eq!(chunk_size_line(&mut buf, 0), b"0\r\n");
        assert_eq!(chunk_size_line(&mut buf, 255), b"ff\r\n");
        assert_eq!(chunk_size_line(&mut buf, 0x10000), b"10000\r\n");
        assert_eq!(chunk_size_line(&mut buf, usize::MAX), b"ffffffffffffffff\r\n");
    }
    use tokio::net::TcpListener;

    async fn pair(listener: &TcpListener) -> (Conn, TcpStream) {
        let addr = listener.local_addr().unwrap().to_string();
        let conn = Conn::new(connect(&addr, Duration::from_secs(1)).await.unwrap(), Vec::new());
        (conn, listener.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn idle_connections_the_upstream_closed_or_wrote_to_are_not_handed_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idle = IdleConns::default();
        let (a, server_a) = pair(&listener).await;
        let (b, mut server_b) = pair(&listener).await;
        let (c, _server_c) = pair(&listener).await;
        idle.put(a);
        idle.put(b);
        idle.put(c);
        drop(server_a);
        tokio::io::AsyncWriteExt::write_all(&mut server_b, b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        idle.sweep(Instant::now());
        assert_eq!(idle.len(), 1, "only the quiet connection is kept");
        assert!(idle.checkout(Instant::now()).is_some());
        assert!(idle.checkout(Instant::now()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_expire() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idle = IdleConns::default();
        let (a, _sa) = pair(&listener).await;
        let (b, _sb) = pair(&listener).await;
        idle.put(a);
        tokio::time::advance(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        idle.put(b);
        tokio::time::advance(Duration::from_secs(1)).await;
        idle.sweep(Instant::now());
        assert_eq!(idle.len(), 1, "the older one is closed");
        tokio::time::advance(IDLE_TIMEOUT).await;
        assert!(idle.checkout(Instant::now()).is_none());
    }

    fn parse(text: &str, method: &Method) -> Result<Option<Head>, Error> {
        parse_head(&mut BytesMut::from(text), method)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = Method::GET;
        let r = |t: &str| parse(t, &get).unwrap().unwrap();
        assert!(matches!(
            r("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n").1,
            Read::Length(5)
        ));
        let (parts, framing, keep) =
            r("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n");
        assert!(matches!(framing, Read::Chunked(_)) && keep);
        assert!(!parts.headers.contains_key("content-length"), "TE wins over CL");
        let (_, framing, keep) = r("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert!(matches!(framing, Read::ToClose) && !keep);
        assert!(matches!(r("HTTP/1.1 200 OK\r\n\r\n").1, Read::ToClose));
        assert!(matches!(
            r("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n").1,
            Read::Length(0)
        ));
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", &Method::HEAD)
                .unwrap()
                .unwrap()
                .1,
            Read::Length(0)
        ));
        assert!(!r("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").2);
        let (parts, _, keep) = r(
            "HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\ncontent-length: 0\r\n\r\n",
        );
        assert!(
            keep && parts.headers.len() == 1,
            "connection management is consumed here"
        );
        let (parts, _, _) =
            r("HTTP/1.1 200 OK\r\nconnection: keep-alive, x-hop\r\nx-hop: 1\r\ncontent-length: 0\r\n\r\n");
        assert!(
            parts.headers.contains_key("connection"),
            "one naming other fields stays for the response phase"
        );
        assert!(!r("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").2);
        assert!(r("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n").2);
        assert!(parse(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            &get
        )
        .is_err());
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", &get).is_err());
        // The fields the client reads itself are found in any case.
        assert!(parse(
            "HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 5\r\ncontent-length: 6\r\n\r\n",
            &get
        )
        .is_err());
        assert!(!r("HTTP/1.1 200 OK\r\nConnection: CLOSE\r\nContent-Length: 0\r\n\r\n").2);
        let (parts, framing, _) =
            r("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nContent-Length: 5\r\nKEEP-ALIVE: 5\r\n\r\n");
        assert!(matches!(framing, Read::Chunked(_)));
        // Content-Length beside chunked and Keep-Alive are gone; the rest is for the response phase.
        assert_eq!(parts.headers.len(), 1, "{:?}", parts.headers);
        assert!(parts.headers.contains_key(header::TRANSFER_ENCODING));
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-le", &get).unwrap().is_none());
    }

    #[test]
    fn fields_are_written_as_lines() {
        let mut out = Vec::with_capacity(4);
        out.extend_from_slice(b"GET");
        put_field(&mut out, b"x-a", b"1");
        put_field(&mut out, b"x-empty", b"");
        let long = vec![b'v'; 5000];
        put_field(&mut out, b"x-long", &long);
        let mut want = b"GETx-a: 1\r\nx-empty: \r\nx-long: ".to_vec();
        want.extend_from_slice(&long);
        want.extend_from_slice(b"\r\n");
        assert_eq!(out, want);
    }

    #[test]
    fn informational_answers_are_skipped() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        );
        let (parts, framing, _) = parse_head(&mut buf, &Method::POST).unwrap().unwrap();
        assert_eq!(parts.status, 201);
        assert!(matches!(framing, Read::Length(2)));
        assert_eq!(&buf[..], b"ok");
    }

    #[test]
    fn chunks_decode_across_reads_with_extensions_and_trailers() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\nNEXT";
        // Fed one byte at a time, the result is the same as all at once.
        for step in [1, 3, wire.len()] {
            let mut state = Chunk::Size;
            let mut buf = BytesMut::new();
            let mut body = Vec::new();
            let mut fed = 0;
            let trailers = loop {
                match decode_chunk(&mut state, &mut buf).unwrap() {
                    Some(Decoded::Data(d)) => body.extend_from_slice(&d),
                    Some(Decoded::End(t)) => break t,
                    None => {
                        let end = (fed + step).min(wire.len());
                        buf.extend_from_slice(&wire[fed..end]);
                        fed = end;
                    }
                }
            };
            assert_eq!(body, b"hello world", "step {step}");
            assert_eq!(trailers.unwrap()["x-sum"], "42");
            let rest: Vec<u8> = buf.iter().copied().chain(wire[fed..].iter().copied()).collect();
            assert_eq!(rest, b"NEXT", "the next response is left alone");
        }
    }

    #[test]
    fn bad_chunks_are_errors() {
        for wire in [&b"zz\r\n"[..], b"5\r\nhelloXX", b"5\n", b"1234567890abcdef0\r\n"] {
            let mut state = Chunk::Size;
            let mut buf = BytesMut::from(wire);
            let mut result = Ok(None);
            for _ in 0..4 {
                result = decode_chunk(&mut state, &mut buf);
                if !matches!(result, Ok(Some(_))) {
                    break;
                }
            }
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
    }
}
