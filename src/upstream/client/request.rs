//! The request side of an exchange: the head, encoded once for its endpoint, and the body,
//! written as it arrives from the client.
//!
//! The head's framing is decided here, from the body about to be sent, and from nothing else:
//! a body of known length gets `content-length`, any other body `transfer-encoding: chunked`,
//! and no body none (`content-length: 0` for a bodiless POST, PUT or PATCH, which some servers
//! require). Framing fields among the fields to send are left out. So what the client wrote in
//! `Content-Length`, `Transfer-Encoding` or `Connection` can never make the upstream read the
//! body differently from how it is written.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::HeaderMap;
use http::uri::PathAndQuery;
use http::Method;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::conn::Conn;
use super::Error;
use crate::http1::tokens::trailer_passes;
use crate::http1::{self, chunked, put_field, Framing};
use crate::upstream::Endpoint;

/// The header fields of a request, as the proxy wants them sent.
pub trait Fields {
    /// Calls `f` with each field's name and value, in order. Framing fields (`content-length`,
    /// `transfer-encoding`) are the encoder's, and are left out if given.
    fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8]));
}

/// What goes upstream: the request line and the header fields.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    pub path: &'a PathAndQuery,
    pub fields: &'a (dyn Fields + Sync),
    /// An HTTP/1.1 upgrade (WebSocket): a `101` answer hands the connection over.
    pub upgrade: bool,
}

/// A client's request body on its way upstream.
pub enum RequestBody {
    /// Read by hyper (HTTP/2, and HTTP/1 when hyper serves the connection).
    Hyper(Incoming),
    /// Read by the proxy's own HTTP/1 path, or copied for a mirror as it is read: whatever
    /// the server side makes of a body.
    Source(Box<dyn BodyStream>),
}

/// A request body the client sends as it arrives (the server side's own readers).
pub trait BodyStream: Send {
    /// Whether nothing (more) will come.
    fn is_end_stream(&self) -> bool;
    /// The body's length, when it is declared.
    fn length(&self) -> Option<u64>;
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>>;
}

/// Why a client's request body could not be read: always the client's fault, never the
/// upstream's.
#[derive(Debug, thiserror::Error)]
pub enum BodyFault {
    #[error("the client sent no request body bytes for {0:?}")]
    Timeout(Duration),
    #[error("the request body is malformed: {0}")]
    Malformed(crate::http1::chunked::Invalid),
    #[error("the client closed the connection within its request body")]
    Closed,
    #[error("the request body is {0} than its declared length")]
    Length(&'static str),
    #[error("reading the request body failed: {0}")]
    Hyper(hyper::Error),
}

/// A body the proxy has whole (a mirrored request's copy).
struct Whole(Option<Bytes>);

impl BodyStream for Whole {
    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(Bytes::is_empty)
    }

    fn length(&self) -> Option<u64> {
        Some(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }

    fn poll_frame(&mut self, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }
}

impl RequestBody {
    /// A body of `bytes`, sent with their length.
    pub fn whole(bytes: Bytes) -> RequestBody {
        RequestBody::Source(Box::new(Whole(Some(bytes))))
    }

    /// Whether nothing (more) will come.
    pub fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::Source(b) => b.is_end_stream(),
        }
    }

    /// The body's length, when it is declared.
    pub fn length(&self) -> Option<u64> {
        match self {
            RequestBody::Hyper(b) => b.size_hint().exact(),
            RequestBody::Source(b) => b.length(),
        }
    }

    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        match self {
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(BodyFault::Hyper),
            RequestBody::Source(b) => b.poll_frame(cx),
        }
    }

    /// How the body goes on the wire upstream.
    fn framing(body: Option<&RequestBody>) -> Framing {
        match body {
            None => Framing::None,
            Some(b) if b.is_end_stream() => Framing::None,
            Some(b) => b.length().map_or(Framing::Chunked, Framing::Length),
        }
    }
}

/// A request ready for one endpoint: its head encoded, on the idle connection it goes out on
/// when the endpoint had one. It is made before the request's first await, so the client's
/// request head (whose fields share the server's read buffer) can be dropped before the
/// request waits for anything, and the server reads the next request into the same buffer.
pub struct Prepared {
    /// An idle connection of the endpoint, with the head in its write buffer.
    pub(super) conn: Option<Conn>,
    /// The head, when no connection was idle.
    pub(super) head: Vec<u8>,
    /// Where the endpoint's authority went into the head as `host` (the request had none).
    host_at: Option<Range<usize>>,
    pub(super) method: Method,
    /// How the body is written.
    pub(super) framing: Framing,
    pub(super) upgrade: bool,
}

impl Prepared {
    /// Encodes `req` for `endpoint`, on an idle connection of it if one is open (`now` is the
    /// time for the idle check).
    pub fn new(
        endpoint: &Endpoint,
        req: &Outgoing<'_>,
        body: Option<&RequestBody>,
        now: Instant,
    ) -> Prepared {
        let framing = RequestBody::framing(body);
        let mut conn = endpoint.idle.checkout(now);
        let mut head = Vec::new();
        let out = match &mut conn {
            Some(c) => &mut c.wbuf,
            None => {
                head.reserve(1024);
                &mut head
            }
        };
        let host_at = encode_head(out, req, endpoint, framing);
        Prepared {
            conn,
            head,
            host_at,
            method: req.method.clone(),
            framing,
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

/// Writes the request line, the header fields and the framing into `out`. Returns where the
/// endpoint's authority went, when it stands in for a `host` the request did not have (an
/// HTTP/1.0 request may come without one).
fn encode_head(
    out: &mut Vec<u8>,
    req: &Outgoing<'_>,
    endpoint: &Endpoint,
    framing: Framing,
) -> Option<Range<usize>> {
    out.clear();
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_host = false;
    req.fields.for_each(&mut |name, value| {
        if http1::is_framing(name) || (name == b"host" && std::mem::replace(&mut has_host, true)) {
            return;
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
    match framing {
        Framing::Length(n) => {
            put_field(out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Close => {
            if matches!(*req.method, Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    host_at
}

/// What a request body's writer is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waiting {
    /// The client's next bytes.
    Client,
    /// The upstream to take what was written.
    Upstream,
}

/// Writes a request body as it arrives from the client, as its framing says.
pub(super) struct BodyWriter {
    pub(super) body: RequestBody,
    framing: Framing,
    /// Bytes still to come when the length is declared.
    left: u64,
    /// Bytes taken from the body and not yet written.
    out: VecDeque<Bytes>,
    /// Some of the body was read (it can no longer be sent elsewhere).
    pub(super) touched: bool,
    /// All of it is written.
    pub(super) done: bool,
    /// The body has ended; `out` holds the last of it.
    ended: bool,
    /// What the last write waited for, and when something last moved.
    pub(super) waiting: Waiting,
    pub(super) progress: Instant,
}

impl BodyWriter {
    pub(super) fn new(body: RequestBody, framing: Framing) -> BodyWriter {
        BodyWriter {
            body,
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            out: VecDeque::with_capacity(3),
            touched: false,
            done: false,
            ended: false,
            waiting: Waiting::Client,
            progress: Instant::now(),
        }
    }

    /// Takes the body's first piece (or its end, or its fault) without writing anything: the
    /// head waits for it (up to [`super::FIRST_PIECE`]), so a body that is broken from its
    /// first bytes (a malformed first chunk size, say) never reaches the upstream at all.
    pub(super) fn poll_first(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.touched = true;
        let frame = match self.body.poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                self.touched = false;
                return Poll::Pending;
            }
        };
        Poll::Ready(self.take(frame))
    }

    /// Writes what the body has to `io`; `Ready(Ok)` when all of it is written.
    pub(super) fn poll_write(&mut self, cx: &mut Context<'_>, io: &mut TcpStream) -> Poll<Result<(), Error>> {
        loop {
            while !self.out.is_empty() {
                let mut slices = [IoSlice::new(&[]); 4];
                let mut k = 0;
                for (s, b) in slices.iter_mut().zip(self.out.iter()) {
                    *s = IoSlice::new(b);
                    k += 1;
                }
                self.waiting = Waiting::Upstream;
                let mut n =
                    ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k])).map_err(Error::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
                }
                self.progress = Instant::now();
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
            self.waiting = Waiting::Client;
            let frame = ready!(self.body.poll_frame(cx));
            self.take(frame)?;
        }
    }

    /// Queues what the body gave: a piece, its end (with trailers), or its fault.
    fn take(&mut self, frame: Option<Result<Frame<Bytes>, BodyFault>>) -> Result<(), Error> {
        self.progress = Instant::now();
        match frame {
            None => self.end(None),
            Some(Err(e)) => Err(Error::RequestBody(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => self.data(data),
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => self.end(Some(&trailers)),
                    Err(_) => Ok(()),
                },
            },
        }
    }

    /// Queues a piece of the body, in its framing.
    fn data(&mut self, data: Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        match self.framing {
            Framing::Chunked => {
                let mut size = [0u8; 18];
                self.out.push_back(Bytes::copy_from_slice(chunked::size_line_of(
                    &mut size,
                    data.len(),
                )));
                self.out.push_back(data);
                self.out.push_back(Bytes::from_static(b"\r\n"));
            }
            Framing::Length(_) => {
                self.left = self
                    .left
                    .checked_sub(data.len() as u64)
                    .ok_or(Error::RequestBody(BodyFault::Length("longer")))?;
                self.out.push_back(data);
            }
            // No body was announced: nothing may be written.
            Framing::None | Framing::Close => return Err(Error::RequestBody(BodyFault::Length("longer"))),
        }
        Ok(())
    }

    /// The body ended (with trailers, which only chunked framing carries).
    fn end(&mut self, trailers: Option<&HeaderMap>) -> Result<(), Error> {
        self.ended = true;
        match self.framing {
            Framing::Chunked => {
                let mut last = Vec::new();
                // The trailer fields that may pass, as on every other path.
                let passing = trailers.into_iter().flatten().filter(|(n, _)| trailer_passes(n));
                chunked::put_last_chunk(&mut last, passing);
                self.out.push_back(Bytes::from(last));
            }
            Framing::Length(_) if self.left > 0 => {
                return Err(Error::RequestBody(BodyFault::Length("shorter")))
            }
            _ => {}
        }
        Ok(())
    }
}
