//! The third phase: the request prepared for its pool (headers, mirror, body) and sent, and a
//! WebSocket tunnel once upgraded.

use super::*;

/// A routed request: everything the phases after the route need.
pub(super) struct Routed {
    pub(super) pool: Arc<Pool>,
    pub(super) decided: Decided,
    pub(super) host: Option<HeaderValue>,
    /// The normalized path and query, when it differs from the request's.
    pub(super) path: Option<PathAndQuery>,
    /// This hop's `via` entry, unless `[headers]` leaves `via` out.
    pub(super) via: Option<&'static HeaderValue>,
    /// The client's side of an HTTP/1.1 upgrade, when it asked for one.
    pub(super) client_upgrade: Option<ClientUpgrade>,
    pub(super) interim: Option<Arc<dyn Interim>>,
    pub(super) parts: http::request::Parts,
    pub(super) body: Option<RequestBody>,
    /// Set when the request is mirrored.
    pub(super) mirror: Option<MirrorStart>,
    /// `[tracing]`: the `traceparent` this hop sends (to the shadow too).
    pub(super) traceparent: Option<HeaderValue>,
}

/// A mirrored request, until its copy is prepared.
pub(super) struct MirrorStart {
    pub(super) config: Arc<crate::mirror::MirrorConfig>,
    pub(super) slot: crate::mirror::Slot,
    pub(super) route: Arc<str>,
}

/// A request ready to go upstream: the phases up to upstream_request done.
pub(super) struct Ready {
    pub(super) request: Upstream,
    pub(super) body: Option<RequestBody>,
    pub(super) interim: Option<Arc<dyn Interim>>,
    pub(super) reply: Reply,
}

/// Where a request goes and what it is: the pool, the endpoint picked and the encoded head.
pub(super) struct Upstream {
    pub(super) pool: Arc<Pool>,
    pub(super) index: usize,
    pub(super) request: client::Prepared,
    /// When the request started (and its endpoint was picked); its deadline counts from here,
    /// or from the retry on another endpoint.
    pub(super) now: Instant,
    /// `listen.client_body_timeout`.
    pub(super) body_idle: std::time::Duration,
    /// The failure a retry on another endpoint hid (counted in the metrics all the same).
    pub(super) retried_after: Option<crate::metrics::UpstreamError>,
}

/// Counts the request's exposures in the experiments it is part of, and keeps the goals it may
/// reach for when its status is known.
pub(super) fn expose(
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
pub(super) fn prepare(
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
    // The client's fields, cleaned, and the proxy's, with the decision's.
    let fields = headers::UpstreamFields {
        client: &routed.parts.headers,
        host: routed.host.as_ref(),
        peer_ip: peer.ip.as_bytes(),
        tls: peer.tls,
        via: routed.via,
        request_id,
        upgrade,
        settings: &snap.headers,
        decision: routed.decided.decision(&pool),
        traceparent: routed.traceparent.as_ref(),
    };
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
            path: path.clone(),
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
            set_pin: routed.decided.set_pin,
        },
    })
}

/// Copies bytes both ways between an upgraded client connection and the upstream connection
/// that answered `101` (a WebSocket, say) until either side closes. Bytes the upstream sent
/// right behind its `101` go to the client first.
pub(super) async fn run_tunnel(
    client: OnUpgrade,
    upstream: (tokio::net::TcpStream, bytes::Bytes),
    in_flight: InFlight,
) {
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

impl Proxy {
    /// Sends the request to its endpoint, retrying once on another endpoint of the pool when
    /// the connect fails (the request never left, so sending it again is safe). One loop
    /// rather than an async function per try: each would be one more future to copy.
    pub(super) async fn send(
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
