//! Serving and forwarding. A request goes through these phases, in order:
//!
//! 0. **request_filter** — what a request must be to be served at all: no `CONNECT`, no
//!    transfer coding but `chunked`, one valid host ([`crate::routing::target`]); the path is
//!    normalized for routing and for the upstream.
//! 1. **route** — find the route for host, path and headers ([`Snapshot::decide`]); none: 404.
//! 2. **decide** — user key, bucket, pool (override, else the sticky split) and flags
//!    ([`Snapshot::decide`]).
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
pub mod h1;
pub mod headers;
pub mod ofrep;
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
use headers::X_REQUEST_ID;
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
        request: Request,
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
            Box::new(body::AccessHead {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                request_id: request_id
                    .clone()
                    .or_else(|| find(&parts.headers, &X_REQUEST_ID).cloned()),
            })
        });
        let mut names = Names {
            http2: parts.version == Version::HTTP_2,
            ..Names::default()
        };
        if snap.ofrep && ofrep::is_ofrep(parts.uri.path()) {
            // Answered here, from the flags: no route, no upstream; but the same request
            // filter, body timeout, access log and metrics as a proxied request.
            names.local = Some(Local::Ofrep);
            let Request { parts, body, .. } = request;
            if let Err(e) = filter(&parts) {
                let response = self.finish(Err(e), snap, &mut names, start, request_id.as_ref(), log, None);
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
                        this.finish(answer, snap, &mut names, start, request_id.as_ref(), log, None)
                    }),
                },
            };
        }
        let ready = self
            .route(&snap, request, peer.addr.ip(), &mut names)
            .and_then(|routed| prepare(&self.state, &snap, routed, &peer, request_id.as_ref(), start));
        // Used in place by the future below (not moved into its locals), so it is held once.
        let mut ready = match ready {
            Ok(r) => r,
            Err(e) => {
                let response = self.finish(Err(e), snap, &mut names, start, request_id.as_ref(), log, None);
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
                                request_id.as_ref(),
                                &mut in_flight,
                            ))
                        }
                        Err(e) => Err(e),
                    };
                    this.finish(
                        result,
                        snap,
                        &mut names,
                        start,
                        request_id.as_ref(),
                        log,
                        in_flight,
                    )
                },
            },
        }
    }

    /// The logging phase's record, and the response for a local error.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        result: Result<Response<ProxyBody>, ProxyError>,
        snap: Arc<Snapshot>,
        names: &mut Names,
        start: Instant,
        request_id: Option<&HeaderValue>,
        log: Option<Box<body::AccessHead>>,
        in_flight: Option<InFlight>,
    ) -> Response<ProxyBody> {
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
                let mut response = e.to_response(request_id);
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
            snap,
        });
        response
    }

    /// Phases request_filter, route and decide, and the request's parts for upstream_request.
    fn route(
        &self,
        snap: &Snapshot,
        request: Request,
        client: std::net::IpAddr,
        names: &mut Names,
    ) -> Result<Routed, ProxyError> {
        let Request {
            parts,
            body,
            upgrade: client_upgrade,
            interim,
        } = request;
        // Phase: request_filter.
        let Filtered { host, path } = filter(&parts)?;
        let host_name = normalize_host(host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""));
        let routed_path = path.as_ref().map_or(parts.uri.path(), PathAndQuery::path);
        // Phase: route.
        let view = RequestView {
            host: &host_name,
            path: routed_path,
            query: parts.uri.query(),
            headers: &parts.headers,
            method: &parts.method,
            peer: Some(client),
        };
        // Phase: decide. Only owned values leave this block, so the request is free to change.
        let (pool, decided, mirror) = {
            let d = snap
                .decide(&view, None, SystemTime::now())
                .ok_or_else(|| ProxyError::NoRoute {
                    host: host_name.to_string(),
                    path: routed_path.to_owned(),
                })?;
            names.route = Some(d.route.index);
            let mut pool = d.pool;
            if let Some(g) = snap.guard(d.route) {
                // A guarded route sends the users of a pool that cannot serve to its baseline.
                if pool != g.baseline && !snap.pools[pool].has_available(Instant::now()) {
                    tracing::debug!(route = %d.route.name, pool = %snap.pools[pool].name, "no endpoint available: using the baseline");
                    // A pool that cannot serve at all is failing: the guard hears of it, so it
                    // trips (and says why) instead of the pool's users quietly moving.
                    if let Some(tx) = &self.state.outcomes {
                        let _ = tx.try_send(Outcome {
                            route: d.route.name.clone(),
                            pool: snap.pools[pool].name.clone(),
                            error: true,
                            latency: std::time::Duration::ZERO,
                            at: Instant::now(),
                        });
                    }
                    pool = g.baseline;
                }
                names.guarded = true;
            }
            names.pool = Some(pool);
            if !snap.experiments.is_empty() {
                expose(snap, &d, pool, &parts, &mut names.conversions);
            }
            if let Some(m) = snap.metrics.as_deref() {
                for &(f, value, _) in &d.flags {
                    m.flag(f, snap.flags[f].label(value));
                }
                if let Some(refused) = d.ignored_override {
                    m.override_ignored(d.route.index);
                    tracing::debug!(route = %d.route.name, "override ignored: {}", refused.describe());
                }
            }
            // A mirrored request takes a slot among its route's mirrors in flight. An upgrade
            // (WebSocket) is never mirrored: the shadow would open a real second session.
            let mirror = snap
                .mirror(d.route)
                .filter(|m| client_upgrade.is_none() && m.wants(&parts.method, &snap.identity.salt, &d.key))
                .and_then(|m| match m.slot() {
                    Some(slot) => Some(MirrorStart {
                        config: m.clone(),
                        slot,
                        route: d.route.name.clone(),
                    }),
                    None => {
                        self.state.metrics.mirror(&d.route.name, "dropped");
                        None
                    }
                });
            (snap.pool(pool).clone(), Decided::new(&d, snap), mirror)
        };

        // Phase: upstream_request (the header fields are made by `Decided::fields`).
        let via = via_entry(snap, parts.version);
        Ok(Routed {
            mirror,
            pool,
            decided,
            host,
            path,
            via,
            client_upgrade,
            interim,
            parts,
            body,
        })
    }

    /// Sends the request to its endpoint, retrying once on another endpoint of the pool when
    /// the connect fails (the request never left, so sending it again is safe). One loop
    /// rather than an async function per try: each would be one more future to copy.
    async fn send(
        &self,
        to: &mut Upstream,
        mut body: Option<RequestBody>,
        interim: Option<&dyn Interim>,
    ) -> Result<(Response<ResponseBody>, InFlight), ProxyError> {
        let Upstream {
            pool,
            index,
            request,
            now,
            body_idle,
            retried_after,
        } = to;
        let limits = Limits {
            connect: pool.connect_timeout,
            response: pool.timeout,
            body_idle: *body_idle,
        };
        let upgrade = request.is_upgrade();
        let mut retried = false;
        loop {
            let endpoint = &pool.endpoints[*index];
            let in_flight = endpoint.begin();
            let result = client::send(endpoint, &limits, *now, request, body, interim).await;
            let failure = match result {
                Ok(resp) => {
                    // Passive health: a 5xx counts against the endpoint now; any other answer
                    // is judged when its body is done (`body::Finish`).
                    if resp.status().is_server_error() {
                        pool.record(*index, false, Instant::now());
                    }
                    return Ok((resp, in_flight));
                }
                // The client's fault says nothing of the endpoint.
                Err(client::Failure {
                    error: client::Error::RequestBody(fault),
                    ..
                }) => return Err(ProxyError::ClientBody(fault)),
                Err(failure) => failure,
            };
            // File descriptors and the like ran out here: the endpoint was never reached, and
            // another would fare no better.
            if let Some(resource) = failure.error.local_resource() {
                return Err(ProxyError::LocalResource {
                    pool: pool.name.to_string(),
                    resource,
                    detail: error_chain(&failure.error),
                });
            }
            // Connect errors, timeouts, resets and invalid answers count against the endpoint;
            // a failure's ejection starts now.
            pool.record(*index, false, Instant::now());
            let (pool_name, address) = (pool.name.to_string(), endpoint.address.to_string());
            let error = match &failure.error {
                client::Error::Timeout => ProxyError::Timeout {
                    pool: pool_name,
                    endpoint: address,
                    timeout: pool.timeout,
                },
                client::Error::Connect(e) => ProxyError::Connect {
                    pool: pool_name,
                    endpoint: address,
                    detail: error_chain(e),
                },
                client::Error::Protocol(_) | client::Error::Framing(_) => ProxyError::UpstreamProtocol {
                    pool: pool_name,
                    endpoint: address,
                    detail: error_chain(&failure.error),
                },
                _ => ProxyError::Reset {
                    pool: pool_name,
                    endpoint: address,
                    detail: error_chain(&failure.error),
                },
            };
            // A failed connect hands the body back unread. The other endpoints may all be
            // ejected: then the connect error stands.
            if !retried && failure.error.is_connect() && pool.endpoints.len() > 1 && !upgrade {
                *now = Instant::now();
                if let Some(next) = pool.select(Some(*index), *now) {
                    tracing::debug!(pool = %pool.name, "{error}; retrying on another endpoint");
                    *retried_after = error.upstream_kind();
                    request.retarget(&pool.endpoints[next], *now);
                    (*index, body, retried) = (next, failure.body, true);
                    continue;
                }
            }
            return Err(error);
        }
    }
}

/// What request_filter made of a request: the host routing uses (and the upstream gets),
/// and the normalized path and query when normalizing changed them.
struct Filtered {
    host: Option<HeaderValue>,
    path: Option<PathAndQuery>,
}

/// Phase request_filter: refuses what cannot be served (DESIGN §8 "HTTP rules").
fn filter(parts: &http::request::Parts) -> Result<Filtered, ProxyError> {
    if parts.method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed(Method::CONNECT));
    }
    // hyper reads a request whose codings end in chunked; only chunked alone is served.
    if find(&parts.headers, &header::TRANSFER_ENCODING).is_some() {
        let mut codings = Codings::default();
        for v in parts.headers.get_all(header::TRANSFER_ENCODING) {
            codings.add(v.as_bytes());
        }
        match codings.verdict() {
            Some(Coding::Unsupported) => {
                return Err(ProxyError::NotImplemented("a transfer coding other than chunked"))
            }
            Some(Coding::Invalid) => return Err(ProxyError::BadRequest("an invalid transfer-encoding")),
            _ => {}
        }
    }
    let host = target::host(&parts.uri, &parts.headers, parts.version).map_err(|e| {
        ProxyError::BadRequest(match e {
            target::HostError::Missing => "the request has no Host",
            target::HostError::Duplicate => "the request has more than one Host",
            target::HostError::Invalid => "the request's host is not a valid host",
        })
    })?;
    Ok(Filtered {
        host,
        path: target::normalized(&parts.uri),
    })
}

/// A routed request: everything the phases after the route need.
struct Routed {
    pool: Arc<Pool>,
    decided: Decided,
    host: Option<HeaderValue>,
    /// The normalized path and query, when it differs from the request's.
    path: Option<PathAndQuery>,
    /// This hop's `via` entry, unless `[headers]` leaves `via` out.
    via: Option<&'static HeaderValue>,
    /// The client's side of an HTTP/1.1 upgrade, when it asked for one.
    client_upgrade: Option<ClientUpgrade>,
    interim: Option<Arc<dyn Interim>>,
    parts: http::request::Parts,
    body: Option<RequestBody>,
    /// Set when the request is mirrored.
    mirror: Option<MirrorStart>,
}

/// A mirrored request, until its copy is prepared.
struct MirrorStart {
    config: Arc<crate::mirror::MirrorConfig>,
    slot: crate::mirror::Slot,
    route: Arc<str>,
}

/// A request ready to go upstream: the phases up to upstream_request done.
struct Ready {
    request: Upstream,
    body: Option<RequestBody>,
    interim: Option<Arc<dyn Interim>>,
    reply: Reply,
}

/// Where a request goes and what it is: the pool, the endpoint picked and the encoded head.
struct Upstream {
    pool: Arc<Pool>,
    index: usize,
    request: client::Prepared,
    /// When the request started (and its endpoint was picked); its deadline counts from here,
    /// or from the retry on another endpoint.
    now: Instant,
    /// `listen.client_body_timeout`.
    body_idle: std::time::Duration,
    /// The failure a retry on another endpoint hid (counted in the metrics all the same).
    retried_after: Option<crate::metrics::UpstreamError>,
}

/// What the response phase needs of the request.
struct Reply {
    /// Where the answer's copy goes, for a mirrored request's comparison, and its limit.
    mirror_tap: Option<(
        tokio::sync::oneshot::Sender<crate::mirror::compare::Answer>,
        usize,
    )>,
    via: Option<&'static HeaderValue>,
    client_upgrade: Option<ClientUpgrade>,
    set_cookie: Option<String>,
}

/// Counts the request's exposures in the experiments it is part of, and keeps the goals it may
/// reach for when its status is known.
fn expose(
    snap: &Snapshot,
    d: &Decision<'_, '_>,
    pool: usize,
    parts: &http::request::Parts,
    conversions: &mut Vec<crate::experiments::Conversion>,
) {
    use crate::experiments::Subject;
    let mut user = None;
    for e in snap.experiments.iter() {
        let arm = match e.subject {
            Subject::Flag(f) => d.flags.iter().find(|x| x.0 == f).and_then(|&(_, v, _)| match v {
                crate::routing::flags::Value::Variant(_) => Some(snap.flags[f].label(v) - 2),
                _ => None,
            }),
            Subject::Route(r) if r == d.route.index => {
                e.arms.iter().position(|n| **n == *snap.pools[pool].name)
            }
            Subject::Route(_) => None,
        };
        let Some(arm) = arm else { continue };
        let user = *user.get_or_insert_with(|| crate::experiments::hll::hash(&d.key));
        e.results.arms[arm].exposed.insert(user);
        if e.goal.matches(&parts.method, parts.uri.path()) {
            conversions.push(crate::experiments::Conversion {
                results: e.results.clone(),
                arm,
                user,
                status: e.goal.status,
            });
        }
    }
}

/// Phase upstream_peer and the encoding of upstream_request: picks the endpoint and writes the
/// request head for it, consuming the client's head.
fn prepare(
    state: &Arc<State>,
    snap: &Snapshot,
    mut routed: Routed,
    peer: &Peer,
    request_id: Option<&HeaderValue>,
    now: Instant,
) -> Result<Ready, ProxyError> {
    // One clock reading (the request's start) serves the pick, the idle-connection check and
    // the deadline.
    let upgrade = routed.client_upgrade.is_some();
    let pool = routed.pool;
    let index = pool.select(None, now).ok_or_else(|| ProxyError::NoEndpoint {
        pool: pool.name.to_string(),
        why: pool.why_unavailable(now),
    })?;
    let fields = routed.decided.fields(
        &routed.parts.headers,
        routed.host.as_ref(),
        peer,
        request_id,
        routed.via,
        upgrade,
        snap,
        &pool,
    );
    let root = PathAndQuery::from_static("/");
    let path = match &routed.path {
        Some(p) => p,
        None => routed.parts.uri.path_and_query().unwrap_or(&root),
    };
    let out = Outgoing {
        method: &routed.parts.method,
        path,
        fields: &fields,
        upgrade,
    };
    let mut body = routed.body.take();
    let mut mirror_tap = None;
    if let Some(m) = routed.mirror.take() {
        // The copy: the same method, path and header fields the primary gets, the body teed.
        let mut headers = HeaderMap::new();
        fields.for_each(&mut |name, value| {
            if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                headers.append(n, v);
            }
        });
        let source = match body.take() {
            Some(b) if !b.is_end_stream() => {
                let (tee, rx) = crate::mirror::Tee::new(m.config.max_body, b.length());
                body = Some(RequestBody::Source(Box::new(body::Teed { body: b, tee })));
                crate::mirror::BodySource::Teed(rx)
            }
            b => {
                body = b;
                crate::mirror::BodySource::Ready(bytes::Bytes::new())
            }
        };
        let primary = m.config.compare.then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            mirror_tap = Some((tx, m.config.max_response));
            rx
        });
        tokio::spawn(crate::mirror::run(crate::mirror::Job {
            pool: snap.pools[m.config.pool].clone(),
            config: m.config,
            slot: m.slot,
            route: m.route,
            method: routed.parts.method.clone(),
            path: path.as_str().to_owned(),
            headers,
            body: source,
            primary,
            request_id: request_id.and_then(|v| v.to_str().ok()).map(str::to_owned),
            results: state.metrics.mirror.clone(),
        }));
    }
    let request = client::Prepared::new(&pool.endpoints[index], &out, body.as_ref(), now);
    Ok(Ready {
        request: Upstream {
            pool,
            index,
            request,
            now,
            body_idle: snap.listen.client_body_timeout,
            retried_after: None,
        },
        body,
        interim: routed.interim,
        reply: Reply {
            mirror_tap,
            via: routed.via,
            client_upgrade: routed.client_upgrade,
            set_cookie: routed.decided.set_cookie,
        },
    })
}

/// The response phase for an upstream's answer.
fn respond(
    snap: &Snapshot,
    names: &Names,
    reply: Reply,
    response: Response<ResponseBody>,
    guard: InFlight,
    request_id: Option<&HeaderValue>,
    in_flight: &mut Option<InFlight>,
) -> Response<ProxyBody> {
    if response.status().is_server_error() {
        if let (Some(m), Some(p)) = (snap.metrics.as_deref(), names.pool) {
            m.upstream_error(p, crate::metrics::UpstreamError::Status);
        }
    }
    let mut response = finish_response(
        response,
        reply.via,
        request_id,
        reply.client_upgrade,
        guard,
        in_flight,
    );
    // The copy for the comparison: the answer as the client gets it, but for its cookie.
    if let Some((tx, limit)) = reply.mirror_tap {
        let tap = crate::mirror::Tap::new(response.status(), response.headers().clone(), limit, tx);
        response.body_mut().tap(tap);
    }
    if let Some(c) = reply.set_cookie.and_then(|c| HeaderValue::try_from(c).ok()) {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

/// The decision, as header values for the upstream request and the response.
struct Decided {
    bucket: [u8; 6],
    flags: Option<String>,
    payloads: Option<String>,
    set_cookie: Option<String>,
}

impl Decided {
    fn new(d: &Decision<'_, '_>, snap: &Snapshot) -> Decided {
        let mut truncated = false;
        let flags = d.flags_header(snap, &mut truncated);
        let payloads = d.payloads_header(snap, &mut truncated);
        if truncated {
            if let Some(m) = snap.metrics.as_deref() {
                m.flag_headers_truncated(d.route.index);
            }
            tracing::debug!(route = %d.route.name, limit = snap.headers.max_flag_bytes, "flags left out of a header over [headers] max_flag_bytes");
        }
        Decided {
            bucket: bucket::format_point(d.point),
            flags,
            payloads,
            set_cookie: d.sets_cookie().then(|| snap.identity.set_cookie(&d.key)),
        }
    }

    /// The header fields of the request as it goes upstream: the client's, cleaned, and the
    /// proxy's, with the decision's.
    #[allow(clippy::too_many_arguments)]
    fn fields<'a>(
        &'a self,
        client: &'a HeaderMap,
        host: Option<&'a HeaderValue>,
        peer: &'a Peer,
        request_id: Option<&'a HeaderValue>,
        via: Option<&'a HeaderValue>,
        upgrade: bool,
        snap: &'a Snapshot,
        pool: &'a Pool,
    ) -> headers::UpstreamFields<'a> {
        headers::UpstreamFields {
            client,
            host,
            peer_ip: peer.ip.as_bytes(),
            tls: peer.tls,
            via,
            request_id,
            upgrade,
            settings: &snap.headers,
            decision: headers::DecisionFields {
                pool: &pool.name_header,
                bucket: &self.bucket,
                flags: self.flags.as_deref(),
                payloads: self.payloads.as_deref(),
            },
        }
    }
}

/// The response phase.
fn finish_response(
    resp: Response<ResponseBody>,
    via: Option<&HeaderValue>,
    request_id: Option<&HeaderValue>,
    client_upgrade: Option<ClientUpgrade>,
    guard: InFlight,
    in_flight: &mut Option<InFlight>,
) -> Response<ProxyBody> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let (mut parts, body) = resp.into_parts();
    // The own HTTP/1 path tunnels from the body it gets; for hyper, the tunnel is spawned.
    let inline = switching && matches!(client_upgrade, Some(ClientUpgrade::Inline));
    let (tunnel, body) = match client_upgrade {
        Some(ClientUpgrade::Hyper(client)) if switching => {
            (body.into_upgraded().map(|up| (client, up)), None)
        }
        _ => (None, Some(body)),
    };
    headers::clean_response(&mut parts.headers, tunnel.is_some() || inline);
    // An HTTP/1.0 upstream's answer goes out as the client's version; a status without a
    // standard reason gets an empty reason phrase rather than hyper's "<none>".
    parts.version = Version::HTTP_11;
    if parts.status.canonical_reason().is_none() {
        parts
            .extensions
            .insert(hyper::ext::ReasonPhrase::from_static(b""));
    }
    if let Some(via) = via {
        headers::append_list(&mut parts.headers, &header::VIA, via.clone());
    }
    if let Some(id) = request_id {
        if find(&parts.headers, &X_REQUEST_ID).is_none() {
            parts.headers.insert(X_REQUEST_ID.clone(), id.clone());
        }
    }
    let body = match (tunnel, body) {
        (Some((client, upstream)), _) => {
            tokio::spawn(run_tunnel(client, upstream, guard));
            ProxyBody::empty()
        }
        (None, Some(body)) => {
            // The request stays in flight until its response body is done.
            *in_flight = Some(guard);
            ProxyBody::upstream(body)
        }
        (None, None) => ProxyBody::empty(),
    };
    Response::from_parts(parts, body)
}

/// Copies bytes both ways between an upgraded client connection and the upstream connection
/// that answered `101` (a WebSocket, say) until either side closes. Bytes the upstream sent
/// right behind its `101` go to the client first.
async fn run_tunnel(client: OnUpgrade, upstream: (tokio::net::TcpStream, bytes::Bytes), in_flight: InFlight) {
    use tokio::io::AsyncWriteExt;
    let client = match client.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("upgrade failed: {e}");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let (mut upstream, early) = upstream;
    let copied = async {
        if !early.is_empty() {
            client.write_all(&early).await?;
        }
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    };
    if let Err(e) = copied.await {
        tracing::debug!("tunnel closed: {e}");
    }
    drop(in_flight);
}

pub use crate::upstream::error_chain;

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
