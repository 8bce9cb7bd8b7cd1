//! Serving and forwarding. A request goes through these phases, in order; each has its file:
//! `filter.rs` (0), `route.rs` (1–3), `forward.rs` (4–5), `respond.rs` (6), `body.rs` (7).
//!
//! 0. **request_filter** — what a request must be to be served at all: no `CONNECT`, no
//!    transfer coding but `chunked`, one valid host ([`crate::routing::target`]); the path is
//!    normalized for routing and for the upstream.
//! 1. **route** — find the route for host, path and headers ([`crate::routing::Table::decide`]); none: 404.
//! 2. **decide** — user key, bucket, pool (override, else the sticky split) and flags
//!    ([`crate::routing::Table::decide`]).
//! 3. **upstream_peer** — the pool picks an endpoint ([`crate::upstream::Pool::select`]).
//! 4. **upstream_request** — header hygiene ([`headers`]): hop-by-hop headers and inbound
//!    `x-switchyard-*` removed, `x-forwarded-*`, `via` and `x-request-id` added, then the
//!    decision headers (pool, bucket, flags).
//! 5. **forward** — the upstream client ([`crate::upstream::client`]) sends it on a kept-alive
//!    connection of the endpoint, body streamed; a failed connect is retried once on another
//!    endpoint; no response headers within the pool's `timeout` of the request being written:
//!    504. A client's broken or stalled upload is the client's fault (400, 408): it counts
//!    neither against the endpoint nor for the guard.
//! 6. **response** — hop-by-hop headers and `x-switchyard-error` removed from the answer, `via`
//!    added, body streamed back (trailers filtered); a `101 Switching Protocols` becomes a
//!    tunnel between the two upgraded connections.
//! 7. **logging** — when the response body is done ([`body::ProxyBody`] is dropped).
//!
//! Local errors become responses in one place ([`error::ProxyError::to_response`]).

pub mod body;
pub mod error;
pub mod explain;
mod filter;
mod forward;
pub mod h1;
pub mod headers;
pub mod ofrep;
mod respond;
mod route;
pub mod server;
pub mod watchdog;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use std::time::SystemTime;

use crate::guard::Outcome;
use crate::http1::tokens::{Coding, Codings};
use crate::routing::{bucket, header as find, normalize_host, target, Decision, RequestView};
use crate::runtime::state::State;
use crate::runtime::Snapshot;
use crate::upstream::client::{self, Interim, Limits, Outgoing, RequestBody, ResponseBody};
use crate::upstream::{InFlight, Pool};
use body::{Finish, ProxyBody};
use error::ProxyError;
use filter::*;
use forward::*;
use headers::X_REQUEST_ID;
use respond::*;
use watchdog::Busy;

static VIA_11: HeaderValue = HeaderValue::from_static("1.1 switchyard");
static VIA_2: HeaderValue = HeaderValue::from_static("2.0 switchyard");

/// This hop's `via` entry for a request of `version`, unless `[headers]` leaves `via` out.
fn via_entry(snap: &Snapshot, version: Version) -> Option<&'static HeaderValue> {
    let entry = if version == Version::HTTP_2 {
        &VIA_2
    } else {
        &VIA_11
    };
    snap.headers.via.then_some(entry)
}

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Arrived on the https listener.
    pub tls: bool,
    /// The address as `x-forwarded-for` text, formatted once per connection.
    pub ip: headers::PeerIp,
}

impl Peer {
    pub fn new(addr: SocketAddr, tls: bool) -> Peer {
        Peer {
            addr,
            tls,
            ip: headers::PeerIp::new(addr.ip()),
        }
    }
}

/// The request handler, around the live state. Upstream connections are kept on the
/// endpoints ([`crate::upstream::Endpoint::idle`]).
pub struct Proxy {
    state: Arc<State>,
}

/// A request as a server path hands it over.
pub struct Request {
    pub parts: http::request::Parts,
    /// `None`: it has none.
    pub body: Option<RequestBody>,
    /// An HTTP/1.1 WebSocket upgrade: where the client's upgraded connection comes from.
    pub upgrade: Option<ClientUpgrade>,
    /// Where the upstream's informational (1xx) answers go, when the server path can send them.
    pub interim: Option<Arc<dyn Interim>>,
}

/// The client's side of a WebSocket upgrade.
pub enum ClientUpgrade {
    /// hyper hands over the connection once the `101` is written; the tunnel is spawned.
    Hyper(OnUpgrade),
    /// The own HTTP/1 path writes the `101` and runs the tunnel itself, from the response's
    /// body ([`ProxyBody::take_upgraded`]).
    Inline,
}

/// Route and pool of a request, filled in as the phases decide them.
#[derive(Default)]
struct Names {
    route: Option<usize>,
    pool: Option<usize>,
    /// The route has a guard, which wants the outcome.
    guarded: bool,
    /// An HTTP/2 request (no `Connection` field may go on its response).
    http2: bool,
    /// The endpoint whose answer is streaming, when its outcome is still to be recorded.
    endpoint: Option<usize>,
    /// Experiment goals this request may reach, counted once its status is known.
    conversions: Vec<crate::experiments::Conversion>,
    /// Answered by the proxy itself rather than routed.
    local: Option<Local>,
    /// `[tracing]`: the request's span.
    trace: Option<Box<crate::trace::Span>>,
}

pub use crate::metrics::Local;

impl Proxy {
    pub fn new(state: Arc<State>) -> Proxy {
        Proxy { state }
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Answers one request hyper has read. Never fails: local errors become responses here.
    ///
    /// The phases up to an encoded upstream request run at once, when this is called; the
    /// future then holds only what the rest needs. So the client's request head (whose fields
    /// share the server's read buffer) is gone before the request first waits, and the future
    /// the server stores and moves is small.
    pub fn handle(
        self: &Arc<Self>,
        mut req: http::Request<Incoming>,
        peer: Peer,
        busy: Busy,
    ) -> Handling<impl Future<Output = Response<ProxyBody>> + Send + 'static> {
        let upgrade = req.version() == Version::HTTP_11 && headers::wants_upgrade(req.headers());
        let upgrade = upgrade.then(|| ClientUpgrade::Hyper(hyper::upgrade::on(&mut req)));
        let (parts, body) = req.into_parts();
        let request = Request {
            parts,
            body: Some(RequestBody::Hyper(body)),
            upgrade,
            interim: None,
        };
        self.handle_request(request, peer, busy)
    }

    /// [`Proxy::handle`] for a request a server path has taken apart.
    pub fn handle_request(
        self: &Arc<Self>,
        mut request: Request,
        peer: Peer,
        busy: Busy,
    ) -> Handling<impl Future<Output = Response<ProxyBody>> + Send + 'static> {
        let parts = &request.parts;
        let start = Instant::now();
        // One snapshot for the whole request, even if a reload swaps it meanwhile.
        let snap = self.state.snapshot.load_full();
        let request_id = snap
            .headers
            .request_id
            .then(|| match find(&parts.headers, &X_REQUEST_ID) {
                Some(v) => v.clone(),
                None => headers::new_request_id(),
            });
        let log = snap.access_log.then(|| {
            let client = crate::routing::context::client_address(
                Some(peer.addr.ip()),
                &parts.headers,
                &snap.context.trusted,
            )
            .filter(|&ip| ip != peer.addr.ip());
            Box::new(body::AccessHead {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                request_id: request_id
                    .clone()
                    .or_else(|| find(&parts.headers, &X_REQUEST_ID).cloned()),
                peer: peer.addr,
                client,
                received: Arc::default(),
                sent: 0,
                upstream: None,
            })
        });
        if let Some(log) = &log {
            // Counted as it is read: the access log's bytes_received.
            if let Some(b) = request.body.take() {
                request.body = Some(RequestBody::Source(Box::new(body::Counted {
                    body: b,
                    read: log.received.clone(),
                })));
            }
        }
        let mut begun = Begun {
            start,
            request_id,
            log,
        };
        let mut names = Names {
            http2: parts.version == Version::HTTP_2,
            trace: snap.tracer.as_ref().map(|t| {
                let mut span =
                    crate::trace::Span::start(find(&parts.headers, &headers::TRACEPARENT), t.config.sample);
                if span.sampled {
                    span.set("http.request.method", parts.method.as_str());
                    span.set("url.path", parts.uri.path());
                    let peer_ip = std::str::from_utf8(peer.ip.as_bytes()).unwrap_or("");
                    // The client as `trusted_proxies` make it out, as the access log says it.
                    let client = crate::routing::context::client_address(
                        Some(peer.addr.ip()),
                        &parts.headers,
                        &snap.context.trusted,
                    )
                    .filter(|&ip| ip != peer.addr.ip());
                    match client {
                        Some(ip) => span.set("client.address", ip.to_string().as_str()),
                        None => span.set("client.address", peer_ip),
                    }
                    span.set("network.peer.address", peer_ip);
                }
                Box::new(span)
            }),
            ..Names::default()
        };
        if snap.ofrep && ofrep::is_ofrep(parts.uri.path()) {
            // Answered here, from the flags: no route, no upstream; but the same request
            // filter, body timeout, access log and metrics as a proxied request.
            names.local = Some(Local::Ofrep);
            let Request { parts, body, .. } = request;
            if let Err(e) = filter(&parts) {
                let response = self.finish(Err(e), snap, &mut names, begun, None);
                return Handling {
                    busy: Some(busy),
                    phase: Phase::Done {
                        response: Some(response),
                    },
                };
            }
            let client = peer.addr.ip();
            let this = self.clone();
            return Handling {
                busy: Some(busy),
                phase: Phase::Local {
                    future: Box::pin(async move {
                        let idle = snap.listen.client_body_timeout;
                        let answer = ofrep::answer(&snap, &parts, body, client, idle)
                            .await
                            .map_err(ProxyError::ClientBody);
                        drop(parts);
                        this.finish(answer, snap, &mut names, begun, None)
                    }),
                },
            };
        }
        let ready = self
            .route(&snap, request, peer.addr.ip(), &mut names)
            .and_then(|routed| {
                prepare(
                    &self.state,
                    &snap,
                    routed,
                    &peer,
                    begun.request_id.as_ref(),
                    start,
                )
            });
        // Used in place by the future below (not moved into its locals), so it is held once.
        let mut ready = match ready {
            Ok(r) => r,
            Err(e) => {
                let response = self.finish(Err(e), snap, &mut names, begun, None);
                return Handling {
                    busy: Some(busy),
                    phase: Phase::Done {
                        response: Some(response),
                    },
                };
            }
        };
        let this = self.clone();
        Handling {
            busy: Some(busy),
            phase: Phase::Upstream {
                future: async move {
                    let mut in_flight = None;
                    let interim = ready.interim.take();
                    let sent = this
                        .send(&mut ready.request, ready.body.take(), interim.as_deref())
                        .await;
                    if let Some(log) = begun.log.as_mut() {
                        let to = &ready.request;
                        log.upstream = Some((to.pool.endpoints[to.index].address.clone(), to.now.elapsed()));
                    }
                    if let Some(span) = names.trace.as_deref_mut() {
                        let to = &ready.request;
                        span.set("server.address", to.pool.endpoints[to.index].address.clone());
                    }
                    if let (Some(kind), Some(p), Some(m)) =
                        (ready.request.retried_after, names.pool, snap.metrics.as_deref())
                    {
                        // The endpoint failed though the retry answered: the pool's errors
                        // show it.
                        m.upstream_error(p, kind);
                    }
                    let result = match sent {
                        Ok((response, guard)) => {
                            // The endpoint's passive health hears of a good answer when its
                            // body is done (a body broken off is a failure of the endpoint).
                            names.endpoint =
                                (!response.status().is_server_error()).then_some(ready.request.index);
                            Ok(respond(
                                &snap,
                                &names,
                                ready.reply,
                                response,
                                guard,
                                begun.request_id.as_ref(),
                                &mut in_flight,
                            ))
                        }
                        Err(e) => Err(e),
                    };
                    this.finish(result, snap, &mut names, begun, in_flight)
                },
            },
        }
    }

    /// The logging phase's record, and the response for a local error.
    fn finish(
        &self,
        result: Result<Response<ProxyBody>, ProxyError>,
        snap: Arc<Snapshot>,
        names: &mut Names,
        begun: Begun,
        in_flight: Option<InFlight>,
    ) -> Response<ProxyBody> {
        let Begun {
            start,
            request_id,
            log,
        } = begun;
        let conversions = std::mem::take(&mut names.conversions);
        let mut upstream_fault = true;
        let (mut response, error, status) = match result {
            Ok(r) => {
                let status = r.status().as_u16();
                (r, None, Some(status))
            }
            Err(e) => {
                let status = e.status();
                let (route, pool) = (
                    names.route.map(|r| &*snap.routes[r].name),
                    names.pool.map(|p| &*snap.pools[p].name),
                );
                if status.is_server_error() {
                    tracing::warn!(route, pool, status = status.as_u16(), reason = e.reason(), "{e}");
                } else {
                    tracing::debug!(status = status.as_u16(), reason = e.reason(), "{e}");
                }
                if let (Some(kind), Some(pool), Some(m)) =
                    (e.upstream_kind(), names.pool, snap.metrics.as_deref())
                {
                    m.upstream_error(pool, kind);
                }
                // Upstream failures are counted as class "error", not by the status sent.
                let counted = (e.cause() != error::Cause::Upstream).then_some(status.as_u16());
                // A request the client broke, or one the proxy could not send for want of its
                // own resources, says nothing of the pool: the guard never hears of it.
                upstream_fault = matches!(e.cause(), error::Cause::Upstream | error::Cause::Internal);
                if let ProxyError::LocalResource { resource, .. } = &e {
                    self.state.metrics.resource_exhausted("connect", resource);
                    names.local = Some(Local::Resources);
                }
                let mut response = e.to_response(request_id.as_ref());
                if e.closes() && !names.http2 {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                (response, Some(e.reason()), counted)
            }
        };
        let sent = response.status().as_u16();
        let outcome = match (
            names.guarded && upstream_fault,
            names.route,
            names.pool,
            &self.state.outcomes,
        ) {
            (true, Some(r), Some(p), Some(tx)) => Some(Box::new(body::OutcomeTap {
                tx: tx.clone(),
                route: snap.routes[r].name.clone(),
                pool: snap.pools[p].name.clone(),
                latency: start.elapsed(),
            })),
            _ => None,
        };
        let local = match names.route {
            Some(_) => names.local,
            None => Some(names.local.unwrap_or(Local::Unrouted)),
        };
        response.body_mut().set_finish(Finish {
            outcome,
            start,
            local,
            route: names.route,
            pool: names.pool,
            endpoint: names.endpoint,
            status,
            sent,
            error,
            failed: false,
            in_flight,
            log,
            conversions: (!conversions.is_empty()).then(|| Box::new(conversions)),
            trace: names.trace.take(),
            snap,
        });
        response
    }
}

/// What a request's start fixes for its end: when it began, its id, its access-log head.
struct Begun {
    start: Instant,
    request_id: Option<HeaderValue>,
    log: Option<Box<body::AccessHead>>,
}

pin_project_lite::pin_project! {
    /// The future of [`Proxy::handle_parts`] (a service's future, as hyper wants it, for
    /// [`Proxy::handle`]): keeps the client connection busy
    /// for its idle watchdog until the response body is done. (One plain struct around the
    /// phases: each layer of futures would move the response once more on its way out.)
    pub struct Handling<F> {
        busy: Option<Busy>,
        #[pin]
        phase: Phase<F>,
    }
}

pin_project_lite::pin_project! {
    /// A response made at once (a local error), or the rest of the phases around the upstream
    /// exchange.
    #[project = PhaseProj]
    enum Phase<F> {
        Done { response: Option<Response<ProxyBody>> },
        Upstream { #[pin] future: F },
        // A request the proxy answers itself after reading it (OFREP): rare, so boxed.
        Local { future: Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>> },
    }
}

impl<F: Future<Output = Response<ProxyBody>>> Future for Handling<F> {
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.phase.project() {
            PhaseProj::Done { response } => response
                .take()
                .expect("a request's future polled after it finished"),
            PhaseProj::Upstream { future } => ready!(future.poll(cx)),
            PhaseProj::Local { future } => ready!(future.as_mut().poll(cx)),
        };
        if let Some(busy) = this.busy.take() {
            response.body_mut().hold(busy);
        }
        Poll::Ready(Ok(response))
    }
}
