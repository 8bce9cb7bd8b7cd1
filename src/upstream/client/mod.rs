//! The upstream HTTP/1.1 client: one connection per request at a time, kept alive and reused
//! through a lock-free idle queue on each [`Endpoint`] ([`conn`]), and driven inside the
//! request's own task. There is no connection task and no channel between the request and its
//! connection: the request future writes the head and the body ([`request`]) and reads the
//! response head, and the response body ([`ResponseBody`], [`response`]) reads the rest from
//! the socket as the client takes it, finishing the request body alongside when the upstream
//! answers before it has all of it.
//!
//! Framing follows RFC 9112 §6 through [`crate::http1`]: `Content-Length`, `chunked` (with
//! trailers), or read to close; no body for `HEAD`, 1xx, 204 and 304. Informational answers
//! other than `101` go to the request's [`Interim`] sink as they come. A `101` answer to an
//! upgrade request hands over the raw connection ([`ResponseBody::into_upgraded`]).
//!
//! A request with a body goes upstream once its first piece is read (or after
//! [`FIRST_PIECE`], for a client that waits for an answer before it sends its body): a body
//! broken from its first bytes never reaches the upstream.
//!
//! Time limits ([`Limits`]): connecting is bounded by the pool's `connect_timeout`; a request
//! body's upload by the longest pause between two of its pieces (a pause waiting for the client
//! is the client's fault; one waiting for the upstream to read is the upstream's); and the
//! response head must come within the pool's `timeout` of the request being fully written.
//!
//! A request that finds a reused connection closed before any byte of an answer is sent once
//! more on a new connection when that is safe (nothing of its body was read, and the method is
//! idempotent or nothing could have reached the upstream).

mod conn;
mod request;
mod response;

use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::{Method, Response, StatusCode};
use tokio::time::Instant;

use super::Endpoint;
use conn::{connect, Conn};
use request::{BodyWriter, Waiting};

pub use conn::{IdleConns, IDLE_PER_ENDPOINT, IDLE_TIMEOUT};
pub use request::{BodyFault, BodyStream, Fields, Outgoing, Prepared, RequestBody};
pub use response::{Interim, ResponseBody, MAX_HEAD};

/// How long a request's head waits for its body's first piece before it goes without.
pub const FIRST_PIECE: Duration = Duration::from_millis(10);

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
    #[error("invalid response framing: {0}")]
    Framing(#[from] crate::http1::Refusal),
    /// The client's fault, not the upstream's.
    #[error("{0}")]
    RequestBody(BodyFault),
    /// The response head did not come in time, or the upstream stopped taking the request.
    #[error("no response head before the deadline")]
    Timeout,
}

impl Error {
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_))
    }

    /// The proxy's own resources ran out (file descriptors, buffers, memory, local ports): no
    /// fault of the endpoint's, which was never reached.
    pub fn local_resource(&self) -> Option<&'static str> {
        match self {
            Error::Connect(e) => local_resource(e),
            _ => None,
        }
    }
}

/// A failed request, with its body handed back when none of it was read (so it can be sent
/// elsewhere, with [`Prepared::retarget`]).
pub struct Failure {
    pub error: Error,
    pub body: Option<RequestBody>,
}

/// The time limits of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    /// From the request fully written to its response head (the pool's `timeout`).
    pub response: Duration,
    /// The longest pause in a request body's upload (`listen.client_body_timeout`).
    pub body_idle: Duration,
}

/// Sends a prepared request to its endpoint and waits for the response head, within `limits`
/// (`start`: when the request started; a bodiless request's response deadline counts from
/// it). The response body streams from the connection; the connection goes back to the
/// endpoint's idle queue when the exchange ends cleanly. After a failure, `req` can be sent
/// again.
pub async fn send(
    endpoint: &Arc<Endpoint>,
    limits: &Limits,
    start: Instant,
    req: &mut Prepared,
    body: Option<RequestBody>,
    interim: Option<&dyn Interim>,
) -> Result<Response<ResponseBody>, Failure> {
    let mut body = body.filter(|b| !b.is_end_stream());
    let deadline = start + limits.response;
    // At most twice: a kept-alive connection the upstream closed as it was reused is
    // replaced by a new one.
    loop {
        let reused = req.conn.is_some();
        let conn = match req.conn.take() {
            Some(c) => c,
            None => match tokio::time::timeout_at(deadline, connect(&endpoint.address, limits.connect)).await
            {
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
            },
        };
        match exchange(conn, endpoint, req, body, deadline, limits, interim).await {
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

/// One request of the proxy's own (a mirrored copy, a health check) to `endpoint`, through the
/// same connections, framing, limits and in-flight count as a proxied request. The answer's
/// body streams from the connection; `InFlight` counts the request until it is dropped.
pub async fn request(
    endpoint: &Arc<Endpoint>,
    limits: &Limits,
    out: &Outgoing<'_>,
    body: Option<bytes::Bytes>,
) -> Result<(Response<ResponseBody>, super::InFlight), Error> {
    let in_flight = endpoint.begin();
    let body = body.filter(|b| !b.is_empty()).map(RequestBody::whole);
    let start = Instant::now();
    let mut req = Prepared::new(endpoint, out, body.as_ref(), start);
    match send(endpoint, limits, start, &mut req, body, None).await {
        Ok(resp) => Ok((resp, in_flight)),
        Err(f) => Err(f.error),
    }
}

/// An exchange that failed before a response head: the error, the body if none of it was
/// read, the head (to send again), and whether sending again on a new connection is safe.
struct Broken {
    error: Error,
    body: Option<RequestBody>,
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
/// the response head. `deadline` is a bodiless request's response deadline; with a body, the
/// connection's one timer first bounds the upload's pauses, then counts the response's time
/// from the body's end.
async fn exchange(
    mut conn: Conn,
    endpoint: &Arc<Endpoint>,
    req: &Prepared,
    body: Option<RequestBody>,
    deadline: Instant,
    limits: &Limits,
    interim: Option<&dyn Interim>,
) -> Result<Response<ResponseBody>, Broken> {
    let mut writer = body.map(|b| BodyWriter::new(b, req.framing));
    let mut written = 0;
    let mut head_sent = false;
    let mut write_error: Option<Error> = None;
    // Whether the head still waits for the body's first piece.
    let mut wait_first = writer.is_some();
    match &writer {
        Some(w) => conn.arm(w.progress + FIRST_PIECE),
        None => conn.arm(deadline),
    }
    let head = std::future::poll_fn(|cx| loop {
        let polled = 'step: {
            if !head_sent {
                if let Some(w) = writer.as_mut().filter(|_| wait_first) {
                    match w.poll_first(cx) {
                        Poll::Ready(Ok(())) => wait_first = false,
                        Poll::Ready(Err(e)) => break 'step Poll::Ready(Err(e)),
                        Poll::Pending => break 'step Poll::Pending,
                    }
                }
                match conn.poll_write_head(cx, &mut written) {
                    Poll::Ready(Ok(())) => head_sent = true,
                    Poll::Ready(Err(e)) => break 'step Poll::Ready(Err(Error::Io(e))),
                    Poll::Pending => break 'step Poll::Pending,
                }
            }
            if let Some(w) = writer.as_mut().filter(|w| !w.done && write_error.is_none()) {
                match w.poll_write(cx, &mut conn.io) {
                    Poll::Ready(Ok(())) => conn.arm(Instant::now() + limits.response),
                    // A failed write still reads on: the upstream may have answered, then
                    // stopped reading.
                    Poll::Ready(Err(e)) => write_error = Some(e),
                    Poll::Pending => {}
                }
            }
            match poll_head(cx, &mut conn, &req.method, interim) {
                // A client's broken body ends the exchange now, unless the answer is here.
                Poll::Pending if matches!(write_error, Some(Error::RequestBody(_))) => {
                    Poll::Ready(Err(write_error.take().expect("matched")))
                }
                polled => polled,
            }
        };
        if polled.is_ready() || conn.poll_deadline(cx).is_pending() {
            return polled;
        }
        // The timer is due: the wait for the body's first piece, the response deadline, or a
        // pause in the upload.
        match writer.as_ref().filter(|w| !w.done && write_error.is_none()) {
            Some(w) if wait_first => {
                // A client that waits for the answer before it sends its body: the head goes
                // without the first piece.
                wait_first = false;
                conn.arm(w.progress + limits.body_idle);
                continue;
            }
            None => return Poll::Ready(Err(Error::Timeout)),
            Some(w) => {
                let due = w.progress + limits.body_idle;
                if Instant::now() < due {
                    // Something moved since the timer was set: wait until the pause is long.
                    conn.arm(due);
                    continue;
                }
                return Poll::Ready(Err(match w.waiting {
                    Waiting::Client => Error::RequestBody(BodyFault::Timeout(limits.body_idle)),
                    Waiting::Upstream => Error::Timeout,
                }));
            }
        }
    })
    .await;
    let (parts, framing, keep_alive) = match head {
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
            state: response::Read::Upgraded,
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

use response::poll_head;

/// The name of a local resource an I/O error says ran out, if it says one did (Linux's errno
/// values: `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`, `EADDRNOTAVAIL` for ephemeral ports).
pub fn local_resource(e: &io::Error) -> Option<&'static str> {
    Some(match e.raw_os_error()? {
        24 => "emfile",
        23 => "enfile",
        105 => "enobufs",
        12 => "enomem",
        99 => "eaddrnotavail",
        _ => return None,
    })
}
