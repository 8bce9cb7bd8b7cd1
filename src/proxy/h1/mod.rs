//! switchyard's own HTTP/1 server path, which serves every HTTP/1.x request of a connection:
//! it reads heads and bodies, answers, forwards the upstream's informational answers, and
//! tunnels WebSocket upgrades. Only HTTP/2 (the connection preface) goes to hyper, with the
//! bytes read so far; `[listen] fast_path = false` gives hyper every connection instead.
//!
//! - [`request`] reads a head and refuses what cannot be served (400, 431, 501, 505; the
//!   connection closes after, lingering so the client reads the answer).
//! - [`inbound`] carries a request body from the connection to the request, decoded as it is
//!   framed, only once the request asks for it (then `100 Continue` goes out if expected).
//! - [`response`] writes the head and body, framed from the body (as hyper frames it), and
//!   the upstream's 1xx heads before them.
//!
//! One request at a time, each driven by one poll loop ([`Driver`]) that moves whatever can
//! move: the request's future, its body's bytes from the socket, the response's frames to the
//! socket. Bytes a client sends ahead (a pipelined request) wait in the read buffer. The
//! connection stays open after a response unless the client asked to close, the server is
//! draining, the request was refused or its body not read to the end, or the body's framing
//! ends with the connection.
//!
//! It uses the watchdog's accounting as hyper's path does: a request is busy from its parsed
//! head to the end of its response body, and a close asked between requests closes at once.
//! A connection idle for one watchdog tick lets go of its buffers, so an idle keep-alive
//! connection holds little memory; they are made again when the next request arrives.

pub mod inbound;
pub mod request;
pub mod response;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::body::ProxyBody;
use super::error::ProxyError;
use super::watchdog::{Busy, Conn};
use super::{ClientUpgrade, Peer, Proxy, Request};
use crate::upstream::client::RequestBody;
use crate::upstream::InFlight;
use inbound::{Exchange, Need, Pump};
use request::{Head, Parsed, Refused};
use response::{For, Framing, Outbox};

/// How the loop ended.
pub enum Served {
    /// The connection is done (closed, failed, or asked to close).
    Closed,
    /// The HTTP/2 preface: hyper serves the rest, starting with these bytes.
    Handoff(BytesMut),
}

/// A read buffer's first allocation, and how much room a read wants.
const READ_BUF: usize = 8 * 1024;
/// A request body's reads.
const BODY_READ: usize = 16 * 1024;
/// After a response that closes the connection, how long the client's late bytes are read and
/// dropped (so closing with them unread does not reset the connection before the client has
/// read the answer), and how many at most.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// A connection's buffers, kept across its requests (and let go of when it idles).
struct Connection {
    buf: BytesMut,
    out: Outbox,
    exchange: Option<Arc<Exchange>>,
    max_head: usize,
}

/// Serves requests on `io` until the connection ends or turns out to be HTTP/2.
/// `http2`: whether the HTTP/2 preface may start the connection (not on a TLS connection whose
/// ALPN chose HTTP/1).
pub async fn serve<I>(
    io: &mut I,
    peer: Peer,
    proxy: &Arc<Proxy>,
    watched: &Arc<Conn>,
    max_head: usize,
    http2: bool,
) -> Served
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Connection {
        buf: BytesMut::new(),
        out: Outbox::default(),
        exchange: None,
        max_head,
    };
    // Each request's future, in one allocation reused for the connection's next request (and
    // let go of when it idles): a connection's own future is as large as its largest await,
    // and is allocated for as long as the connection lives.
    let mut slot = None;
    loop {
        let head = match conn.next_head(io, watched, &mut slot).await {
            Next::Head(head) => head,
            Next::Http2 if http2 => return Served::Handoff(std::mem::take(&mut conn.buf)),
            Next::Http2 => {
                let refused = Refused {
                    status: StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                    reason: "HTTP/2 on a connection that chose HTTP/1.1",
                };
                conn.refuse(io, refused).await;
                return Served::Closed;
            }
            Next::Closed => return Served::Closed,
            Next::Refused(r) => {
                tracing::debug!(peer = %peer.addr, status = r.status.as_u16(), "request refused: {}", r.reason);
                conn.refuse(io, r).await;
                return Served::Closed;
            }
        };
        let (request, mut driver, exchange) = conn.prepare(head);
        let request = proxy.handle_request(request, peer, Busy::start(watched));
        let handling = match &mut slot {
            Some(handling) => {
                Pin::set(handling, request);
                handling
            }
            None => slot.insert(Box::pin(request)),
        };
        let after = poll_fn(|cx| driver.poll(cx, handling.as_mut(), io, &mut conn, &exchange, watched)).await;
        match after {
            After::KeepAlive => {}
            After::Close => {
                conn.linger(io).await;
                return Served::Closed;
            }
            After::Gone => return Served::Closed,
            After::Tunnel(t) => {
                conn.tunnel(io, t, watched).await;
                return Served::Closed;
            }
        }
    }
}

/// (Not boxed: it is matched at once, and a box would be an allocation per request.)
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(Head),
    Http2,
    Closed,
    Refused(Refused),
}

/// How a request's exchange left the connection.
enum After {
    KeepAlive,
    /// Close, after letting the client read the answer.
    Close,
    /// The client left, or the connection failed.
    Gone,
    Tunnel(Tunnel),
}

/// An upgraded connection's other end.
struct Tunnel {
    upstream: TcpStream,
    /// Bytes the upstream sent right behind its `101`.
    early: Bytes,
    in_flight: Option<InFlight>,
}

impl Connection {
    /// Reads until a whole request head is there (or the connection ends, or the watchdog asks
    /// it to close). Idle long enough, the connection lets go of its buffers, and of `slot`.
    async fn next_head<I: AsyncRead + Unpin, T>(
        &mut self,
        io: &mut I,
        watched: &Conn,
        slot: &mut Option<T>,
    ) -> Next {
        loop {
            if !self.buf.is_empty() {
                match request::parse(&mut self.buf, self.max_head) {
                    Parsed::Head(head) => return Next::Head(head),
                    Parsed::More => {}
                    Parsed::Http2 => return Next::Http2,
                    Parsed::Refused(r) => return Next::Refused(r),
                }
            }
            let read = poll_fn(|cx| {
                if watched.close_asked(cx) {
                    return Poll::Ready(Ok(0));
                }
                if self.buf.is_empty() && watched.shrink_asked() {
                    self.release();
                    *slot = None;
                }
                if self.buf.capacity() == 0 {
                    // Idle with its buffers let go: a read onto the stack, and a buffer only
                    // when bytes come.
                    let mut stack = [0u8; 2048];
                    let mut rb = ReadBuf::new(&mut stack);
                    return Pin::new(&mut *io).poll_read(cx, &mut rb).map_ok(|()| {
                        self.buf.reserve(READ_BUF.max(rb.filled().len()));
                        self.buf.extend_from_slice(rb.filled());
                        rb.filled().len()
                    });
                }
                poll_read_into(io, &mut self.buf, READ_BUF, cx)
            })
            .await;
            match read {
                Ok(n) if n > 0 => {}
                // End of stream, a read error or a close asked by the watchdog.
                _ => return Next::Closed,
            }
        }
    }

    /// Lets go of the buffers of an idle connection.
    fn release(&mut self) {
        self.buf = BytesMut::new();
        self.out = Outbox::default();
        self.exchange = None;
    }

    /// The request a head makes, and the driver that will serve it.
    fn prepare(&mut self, head: Head) -> (Request, Driver, Arc<Exchange>) {
        let exchange = match &self.exchange {
            // Reused unless something of the last request still holds it.
            Some(e) if Arc::strong_count(e) == 1 => e.clone(),
            _ => {
                let e = Exchange::new();
                self.exchange = Some(e.clone());
                e
            }
        };
        let (pump, body) = Pump::new(head.framing, &exchange);
        let driver = Driver {
            stage: Stage::Awaiting,
            pump,
            req: For {
                head: head.parts.method == Method::HEAD,
                http10: head.http10,
            },
            expect_continue: head.expect_continue,
            close: head.close,
            upgrade: head.upgrade,
        };
        let request = Request {
            parts: head.parts,
            body: body.map(|b| RequestBody::Source(Box::new(b))),
            upgrade: head.upgrade.then_some(ClientUpgrade::Inline),
            interim: (!head.http10).then(|| exchange.clone() as Arc<dyn crate::upstream::client::Interim>),
        };
        (request, driver, exchange)
    }

    /// Answers a refused request and closes.
    async fn refuse<I: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut I, refused: Refused) {
        let error = match refused.status {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ProxyError::HeadTooLarge,
            StatusCode::NOT_IMPLEMENTED => ProxyError::NotImplemented(refused.reason),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED => ProxyError::VersionNotSupported,
            _ => ProxyError::BadRequest(refused.reason),
        };
        let mut response = error.to_response(None);
        let req = For {
            head: false,
            http10: false,
        };
        let body = response.body().size_hint().exact();
        let mut framing = response::encode_head(
            &mut self.out.buf,
            response.status(),
            response.headers(),
            body,
            req,
            true,
        );
        if let Some(Ok(data)) = poll_fn(|cx| Pin::new(response.body_mut()).poll_frame(cx))
            .await
            .map(|f| f.map(|f| f.into_data().unwrap_or_default()))
        {
            let _ = self.out.data(&mut framing, data);
        }
        let _ = poll_fn(|cx| self.out.poll_write(cx, io, &mut false)).await;
        self.linger(io).await;
    }

    /// Closes after a response: the write side first, then whatever the client still sends
    /// is read and dropped for a little while, so the answer is not lost to a reset.
    async fn linger<I: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut I) {
        let _ = io.flush().await;
        let _ = io.shutdown().await;
        let drain = async {
            // On the heap: a connection's future holds what any of its awaits holds, and most
            // connections never linger.
            let mut scratch = vec![0u8; 4096];
            let mut total = 0;
            while total < LINGER_BYTES {
                match tokio::io::AsyncReadExt::read(io, &mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => total += n,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// Copies bytes both ways between the client and the upstream that answered `101`.
    async fn tunnel<I: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut I,
        t: Tunnel,
        watched: &Arc<Conn>,
    ) {
        let _busy = Busy::start(watched);
        let Tunnel {
            mut upstream,
            early,
            in_flight,
        } = t;
        let copied = async {
            if !early.is_empty() {
                io.write_all(&early).await?;
            }
            // What the client sent right behind its request is the tunnel's first bytes.
            if !self.buf.is_empty() {
                upstream.write_all(&self.buf).await?;
                self.buf.clear();
            }
            tokio::io::copy_bidirectional(io, &mut upstream).await
        };
        if let Err(e) = copied.await {
            tracing::debug!("tunnel closed: {e}");
        }
        drop(in_flight);
    }
}

/// Where a request's exchange is.
enum Stage {
    /// Waiting for the response head.
    Awaiting,
    /// Sending the response body.
    Streaming(Response<ProxyBody>, Framing),
    /// The body is done; what is left to write is being written.
    Finishing,
    /// The response broke off: what is written is written, then the connection closes.
    Broken,
    /// A `101` head is being written; the tunnel follows.
    Switching(Response<ProxyBody>),
}

/// Drives one request: its future, its body from the socket, its response to the socket.
struct Driver {
    stage: Stage,
    pump: Pump,
    req: For,
    /// `100 Continue` is still to be sent once the body is wanted.
    expect_continue: bool,
    close: bool,
    upgrade: bool,
}

impl Driver {
    fn poll<I, F>(
        &mut self,
        cx: &mut Context<'_>,
        mut handling: Pin<&mut F>,
        io: &mut I,
        conn: &mut Connection,
        exchange: &Exchange,
        watched: &Conn,
    ) -> Poll<After>
    where
        I: AsyncRead + AsyncWrite + Unpin,
        F: std::future::Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>>,
    {
        loop {
            if watched.closed_hard() {
                // A client that read nothing for send_timeout.
                return Poll::Ready(After::Gone);
            }
            let mut moved = false;
            if matches!(self.stage, Stage::Awaiting) {
                moved |= self.poll_head(cx, handling.as_mut(), conn, exchange, watched);
            }
            if let Stage::Streaming(response, framing) = &mut self.stage {
                if conn.out.has_room() {
                    match Pin::new(response.body_mut()).poll_frame(cx) {
                        Poll::Pending => {}
                        Poll::Ready(frame) => {
                            moved = true;
                            let ended = match frame {
                                Some(Ok(frame)) => match frame.into_data() {
                                    Ok(data) => conn.out.data(framing, data).map(|()| false),
                                    Err(frame) => conn.out.end(framing, frame.trailers_ref()).map(|()| true),
                                },
                                None => conn.out.end(framing, None).map(|()| true),
                                Some(Err(e)) => Err(e),
                            };
                            match ended {
                                Ok(false) => {}
                                Ok(true) => {
                                    // The logging phase runs when the body is done, before the
                                    // bytes are out: as with hyper.
                                    response.body_mut().end();
                                    self.close |= framing.closes();
                                    self.stage = Stage::Finishing;
                                }
                                Err(e) => {
                                    tracing::debug!("response body broke off: {e}");
                                    response.body_mut().end();
                                    self.stage = Stage::Broken;
                                }
                            }
                        }
                    }
                }
            }
            // The request body, as far as it is wanted; else watch for the client leaving
            // while the answer is awaited (keeping what it sends ahead).
            if !self.pump.is_over() {
                let (m, need) = self.pump.pump(&mut conn.buf, exchange);
                moved |= m;
                if let Need::Bytes = need {
                    match poll_read_into(io, &mut conn.buf, BODY_READ, cx) {
                        Poll::Ready(Ok(n)) if n > 0 => moved = true,
                        Poll::Ready(_) => {
                            self.pump.broken(&mut conn.buf, exchange);
                            self.close = true;
                            moved = true;
                        }
                        Poll::Pending => {}
                    }
                }
            } else if matches!(self.stage, Stage::Awaiting) && conn.buf.len() < conn.max_head {
                // The read that brought the request was short, which cleared the socket's
                // readiness: this costs no system call until the client sends more or hangs
                // up. As with hyper's default, a client that ends its side (even half) has
                // left.
                match poll_read_into(io, &mut conn.buf, READ_BUF, cx) {
                    Poll::Ready(Ok(n)) if n > 0 => moved = true,
                    // The request is dropped, cancelling it upstream, as hyper drops it.
                    Poll::Ready(_) => return Poll::Ready(After::Gone),
                    Poll::Pending => {}
                }
            }
            if !conn.out.is_empty() {
                if let Poll::Ready(Err(_)) = conn.out.poll_write(cx, io, &mut moved) {
                    return Poll::Ready(After::Gone);
                }
            }
            if conn.out.is_empty() {
                match &mut self.stage {
                    Stage::Finishing | Stage::Broken => {
                        if conn.out.poll_flush(cx, io).is_pending() {
                            return Poll::Pending;
                        }
                        let keep = matches!(self.stage, Stage::Finishing)
                            && !self.close
                            && !watched.closing()
                            && self.pump.is_done();
                        return Poll::Ready(if keep { After::KeepAlive } else { After::Close });
                    }
                    Stage::Switching(response) => {
                        if conn.out.poll_flush(cx, io).is_pending() {
                            return Poll::Pending;
                        }
                        let body = response.body_mut();
                        return Poll::Ready(match body.take_upgraded() {
                            Some((upstream, early, in_flight)) => {
                                body.end();
                                After::Tunnel(Tunnel {
                                    upstream,
                                    early,
                                    in_flight,
                                })
                            }
                            None => After::Close,
                        });
                    }
                    _ => {}
                }
            }
            if !moved {
                return Poll::Pending;
            }
        }
    }

    /// While the response head is awaited: informational heads and `100 Continue` out, and the
    /// head when it comes. Returns whether anything moved.
    fn poll_head<F>(
        &mut self,
        cx: &mut Context<'_>,
        handling: Pin<&mut F>,
        conn: &mut Connection,
        exchange: &Exchange,
        watched: &Conn,
    ) -> bool
    where
        F: std::future::Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>>,
    {
        let polled = handling.poll(cx);
        // What came before the final head, in order: the upstream's informational answers,
        // then `100 Continue` once the request reads its body (not when the answer is here).
        let mut moved = false;
        while let Some(mut interim) = exchange.next_interim() {
            super::headers::clean_response(&mut interim.headers, false);
            response::encode_interim(&mut conn.out.buf, interim.status, &interim.headers);
            moved = true;
        }
        if self.expect_continue && exchange.wanted() && polled.is_pending() {
            conn.out.buf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            self.expect_continue = false;
            moved = true;
        }
        let Poll::Ready(Ok(response)) = polled else {
            return moved;
        };
        self.expect_continue = false;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && self.upgrade
            && response.body().is_upgraded()
        {
            response::encode_interim(&mut conn.out.buf, response.status(), response.headers());
            self.stage = Stage::Switching(response);
            return true;
        }
        // The proxy's own answer to a broken request closes the connection; so does one to a
        // request whose body will not be read (where the next request starts is unknown).
        self.close |=
            watched.closing() || closes(response.headers()) || (!self.pump.is_done() && exchange.dropped());
        let length = response.body().size_hint().exact();
        let framing = response::encode_head(
            &mut conn.out.buf,
            response.status(),
            response.headers(),
            length,
            self.req,
            self.close,
        );
        self.stage = Stage::Streaming(response, framing);
        true
    }
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

/// Reads what the socket has into `buf`, with room for `want / 4` at least.
fn poll_read_into<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < want / 4 {
        buf.reserve(want);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
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
