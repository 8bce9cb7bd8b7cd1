//! The one body type of every response the proxy sends: an upstream body streamed through, or
//! a small locally generated one. Dropping it ends the request (the logging phase): the
//! endpoint's in-flight count goes down, the request is counted in the metrics with its time to
//! the last byte, and the access-log line is written.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::upstream::client::{BodyFault, BodyStream, RequestBody, ResponseBody};
use bytes::Bytes;
use http::{Method, Uri};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::guard::Outcome;
use crate::metrics::UpstreamError;
use crate::runtime::Snapshot;
use crate::upstream::InFlight;

use super::watchdog::Busy;

/// Response body: streamed from upstream or generated here.
pub struct ProxyBody {
    kind: Kind,
    finish: Option<Finish>,
    /// A copy of the answer for a mirrored request's comparison.
    tap: Option<Box<crate::mirror::Tap>>,
    /// Keeps the client connection busy for its idle watchdog until the body is done.
    busy: Option<Busy>,
}

enum Kind {
    Upstream(ResponseBody),
    Full(Option<Bytes>),
}

/// Everything the logging phase needs, carried by the body until it is dropped.
pub struct Finish {
    pub start: Instant,
    pub snap: Arc<Snapshot>,
    /// Set when the proxy answered the request itself (no route took it, or its own resources
    /// ran out): counted as such, never in a pool's numbers.
    pub local: Option<super::Local>,
    /// Route and pool indices, once decided.
    pub route: Option<usize>,
    pub pool: Option<usize>,
    /// The endpoint of the pool that answered, when passive health still waits for this
    /// answer's outcome (not for a 5xx, which counted at once).
    pub endpoint: Option<usize>,
    /// The status counted: `None` when the upstream failed to answer (class `error`).
    pub status: Option<u16>,
    /// The status sent, for the access log.
    pub sent: u16,
    /// The reason of a locally generated error.
    pub error: Option<&'static str>,
    /// The upstream body failed mid-stream.
    pub failed: bool,
    pub in_flight: Option<InFlight>,
    /// What the access-log line needs of the request, kept only when access logs are on.
    pub log: Option<Box<AccessHead>>,
    /// Experiment goals the request may reach (counted by the status sent).
    pub conversions: Option<Box<Vec<crate::experiments::Conversion>>>,
    /// Where a guarded route's outcome goes. Boxed: most routes have no guard, and the body
    /// carrying this is moved several times on its way out.
    pub outcome: Option<Box<OutcomeTap>>,
    /// `[tracing]`: the request's span, exported when sampled.
    pub trace: Option<Box<crate::trace::Span>>,
}

/// The request's part of its access-log line, and what the request adds to it on its way.
pub struct AccessHead {
    pub method: Method,
    pub uri: Uri,
    /// The `x-request-id` sent upstream and back (`None`: `[headers]` leaves it out and the
    /// client sent none).
    pub request_id: Option<http::HeaderValue>,
    /// The connection's peer.
    pub peer: std::net::SocketAddr,
    /// The client as `trusted_proxies` make it out, when that is not the peer.
    pub client: Option<std::net::IpAddr>,
    /// Request body bytes read from the client (shared with the body on its way upstream).
    pub received: Arc<std::sync::atomic::AtomicU64>,
    /// Response body bytes handed to the client's connection.
    pub sent: u64,
    /// The endpoint that answered (or failed), and the time from its request to its response
    /// head (or its failure).
    pub upstream: Option<(Arc<str>, std::time::Duration)>,
}

/// A client's request body counted as it is read, for the access log.
pub struct Counted {
    pub body: RequestBody,
    pub read: Arc<std::sync::atomic::AtomicU64>,
}

impl BodyStream for Counted {
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn length(&self) -> Option<u64> {
        self.body.length()
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        let polled = self.body.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.read
                    .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        polled
    }
}

/// A guarded request's outcome, sent to the guard task when the request ends.
pub struct OutcomeTap {
    pub tx: tokio::sync::mpsc::Sender<Outcome>,
    pub route: Arc<str>,
    pub pool: Arc<str>,
    /// Time to the response headers (or to the failure).
    pub latency: std::time::Duration,
}

impl ProxyBody {
    pub fn full(bytes: Bytes) -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(Some(bytes)),
            finish: None,
            tap: None,
            busy: None,
        }
    }

    pub fn empty() -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(None),
            finish: None,
            tap: None,
            busy: None,
        }
    }

    pub fn upstream(body: ResponseBody) -> ProxyBody {
        ProxyBody {
            kind: Kind::Upstream(body),
            finish: None,
            tap: None,
            busy: None,
        }
    }

    /// Copies the answer into `tap` as it streams (for a mirrored request's comparison).
    pub fn tap(&mut self, mut tap: crate::mirror::Tap) {
        if self.is_end_stream() {
            tap.end();
        } else {
            self.tap = Some(Box::new(tap));
        }
    }

    /// Runs the logging phase for `finish` when this body is done.
    pub fn set_finish(&mut self, finish: Finish) {
        self.finish = Some(finish);
    }

    /// Keeps the client connection from being closed as idle while this body lives.
    pub fn hold(&mut self, busy: Busy) {
        self.busy = Some(busy);
    }

    /// Whether this is an upstream's answer to an upgrade, holding the upgraded connection.
    pub fn is_upgraded(&self) -> bool {
        matches!(&self.kind, Kind::Upstream(b) if b.is_upgraded())
    }

    /// For an upgrade's answer: the upstream connection, the bytes it sent behind its `101`,
    /// and the endpoint's in-flight count, which the tunnel holds until it ends.
    pub fn take_upgraded(&mut self) -> Option<(tokio::net::TcpStream, Bytes, Option<InFlight>)> {
        let Kind::Upstream(b) = std::mem::replace(&mut self.kind, Kind::Full(None)) else {
            return None;
        };
        let (io, early) = b.into_upgraded()?;
        let in_flight = self.finish.as_mut().and_then(|f| f.in_flight.take());
        Some((io, early, in_flight))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        match &mut this.kind {
            Kind::Upstream(b) => {
                let mut polled = Pin::new(&mut *b).poll_frame(cx);
                match &mut polled {
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(f) = this.finish.as_mut() {
                            f.failed = true;
                        }
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(data), Some(log)) = (
                            frame.data_ref(),
                            this.finish.as_mut().and_then(|f| f.log.as_mut()),
                        ) {
                            log.sent += data.len() as u64;
                        }
                        if let Some(trailers) = frame.trailers_mut() {
                            super::headers::clean_trailers(trailers);
                        }
                        if let Some(tap) = this.tap.as_mut() {
                            if let Some(data) = frame.data_ref() {
                                tap.push(data);
                            }
                        }
                    }
                    _ => {}
                }
                if let Some(tap) = this.tap.as_mut() {
                    let whole = match &polled {
                        Poll::Ready(None) => true,
                        Poll::Ready(Some(Ok(_))) => b.is_end_stream(),
                        _ => false,
                    };
                    if whole {
                        tap.end();
                    }
                }
                polled
            }
            Kind::Full(b) => {
                let data = b.take();
                if let (Some(d), Some(log)) = (&data, this.finish.as_mut().and_then(|f| f.log.as_mut())) {
                    log.sent += d.len() as u64;
                }
                Poll::Ready(data.map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(b) => b.is_end_stream(),
            Kind::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(b) => b.size_hint(),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

impl ProxyBody {
    /// Ends the body in place, as dropping it would: the logging phase runs, the upstream
    /// connection and the client connection's busy mark go.
    pub fn end(&mut self) {
        if let Some(f) = self.finish.take() {
            f.done();
        }
        self.kind = Kind::Full(None);
        self.busy = None;
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(f) = self.finish.take() {
            f.done();
        }
    }
}

impl Finish {
    fn done(self) {
        let elapsed = self.start.elapsed();
        for c in self.conversions.into_iter().flat_map(|c| *c) {
            c.done(self.sent);
        }
        if let Some(tap) = self.outcome {
            // An error of the pool: a 5xx, an upstream that failed to answer, or a body broken
            // off. A client that went away is not one (its body was dropped, not failed).
            let error = self.failed || self.status.is_none_or(|s| s >= 500);
            let o = Outcome {
                route: tap.route,
                pool: tap.pool,
                error,
                latency: tap.latency,
                at: tokio::time::Instant::now(),
            };
            // A full queue drops the outcome rather than delaying the response.
            let _ = tap.tx.try_send(o);
        }
        if let (Some(pool), Some(endpoint)) = (self.pool, self.endpoint) {
            // Passive health: a body broken off counts against the endpoint, as a 5xx does; one
            // done (or given up by a client that left) counts for it.
            self.snap.pools[pool].record(endpoint, !self.failed, tokio::time::Instant::now());
        }
        if let (Some(local), Some(m)) = (self.local, self.snap.metrics.as_deref()) {
            m.local(local, self.sent, elapsed);
        }
        if let (None, Some(route), Some(pool), Some(m)) =
            (self.local, self.route, self.pool, self.snap.metrics.as_deref())
        {
            // An upstream that breaks off its body failed the request, whatever its status.
            let status = if self.failed { None } else { self.status };
            m.request(route, pool, status, elapsed);
            if self.failed {
                m.upstream_error(pool, UpstreamError::Reset);
            }
        }
        if let Some(head) = self.log {
            let AccessHead {
                method,
                uri,
                request_id,
                peer,
                client,
                received,
                sent,
                upstream,
            } = *head;
            let route = self.route.map_or("-", |r| &*self.snap.routes[r].name);
            let pool = self.pool.map_or("-", |p| &*self.snap.pools[p].name);
            let client = client.unwrap_or(peer.ip());
            let (upstream, upstream_ms) = match &upstream {
                Some((address, took)) => (&**address, Some(took.as_secs_f64() * 1000.0)),
                None => ("-", None),
            };
            crate::logging::access(&crate::logging::AccessLine {
                client,
                peer,
                method: method.as_str(),
                path: uri.path(),
                route,
                pool,
                status: self.sent,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                bytes_received: received.load(std::sync::atomic::Ordering::Relaxed),
                bytes_sent: sent,
                upstream,
                upstream_ms,
                error: self.error.unwrap_or("-"),
                body_failed: self.failed,
                request_id: request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
            });
        }
        if let (Some(mut span), Some(tracer)) = (self.trace, self.snap.tracer.as_deref()) {
            if span.sampled {
                span.set(
                    "http.response.status_code",
                    crate::trace::Value::Int(i64::from(self.sent)),
                );
                let failed = self.failed || self.sent >= 500;
                if let Some(e) = self.error {
                    span.set("error.type", e);
                }
                let route = self.route.map(|r| self.snap.routes[r].name.clone());
                let name = match &route {
                    Some(r) => format!("{} {r}", span.method()),
                    None => span.method().to_owned(),
                };
                let error = failed.then(|| match (self.error, self.failed) {
                    (Some(e), _) => e.to_owned(),
                    (None, true) => "the upstream broke off its body".to_owned(),
                    (None, false) => format!("status {}", self.sent),
                });
                tracer.send(crate::trace::Finished {
                    span: *span,
                    name,
                    end: std::time::SystemTime::now(),
                    error,
                });
            }
        }
        drop(self.in_flight);
    }
}

/// A request body copied for a mirrored request as it is read on its way upstream.
pub struct Teed {
    pub body: RequestBody,
    pub tee: crate::mirror::Tee,
}

impl BodyStream for Teed {
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn length(&self) -> Option<u64> {
        self.body.length()
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        let polled = self.body.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.tee.push(data);
                }
                if self.body.is_end_stream() {
                    self.tee.end();
                }
            }
            Poll::Ready(None) => self.tee.end(),
            _ => {}
        }
        polled
    }
}
