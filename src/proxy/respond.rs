//! The last phase: the upstream's answer (or the proxy's own) made the client's, with the
//! decision's headers, and its end recorded.

use super::*;

/// What the response phase needs of the request.
pub(super) struct Reply {
    /// Where the answer's copy goes, for a mirrored request's comparison, and its limit.
    pub(super) mirror_tap: Option<(
        tokio::sync::oneshot::Sender<crate::mirror::compare::Answer>,
        usize,
    )>,
    pub(super) via: Option<&'static HeaderValue>,
    pub(super) client_upgrade: Option<ClientUpgrade>,
    pub(super) set_cookie: Option<String>,
    /// The session pin (`[routes.session]`).
    pub(super) set_pin: Option<HeaderValue>,
}

/// The response phase for an upstream's answer.
pub(super) fn respond(
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
    if let Some(c) = reply.set_pin {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

/// The decision, as header values for the upstream request and the response.
pub(super) struct Decided {
    pub(super) bucket: [u8; 6],
    pub(super) flags: Option<String>,
    pub(super) payloads: Option<String>,
    pub(super) set_cookie: Option<String>,
    pub(super) set_pin: Option<HeaderValue>,
}

impl Decided {
    pub(super) fn new(d: &Decision<'_, '_>, snap: &Snapshot, now: SystemTime) -> Decided {
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
            set_pin: d.pin_cookie(snap, now),
        }
    }

    /// The decision's header fields for the request as it goes upstream to `pool`.
    pub(super) fn decision<'a>(&'a self, pool: &'a Pool) -> headers::DecisionFields<'a> {
        headers::DecisionFields {
            pool: &pool.name_header,
            bucket: &self.bucket,
            flags: self.flags.as_deref(),
            payloads: self.payloads.as_deref(),
        }
    }
}

/// The response phase.
pub(super) fn finish_response(
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
