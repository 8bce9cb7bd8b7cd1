//! The second phase: the route, the decision and the pool for a request that passed the filter.

use super::*;

impl Proxy {
    /// Phases request_filter, route and decide, and the request's parts for upstream_request.
    pub(super) fn route(
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
            let now = SystemTime::now();
            let d = snap.decide(&view, None, now).ok_or_else(|| ProxyError::NoRoute {
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
                if let (Some(sd), Some(s)) = (&d.session, d.route.session.as_deref()) {
                    m.session(d.route.index, d.pool, sd, s, crate::routing::unix_s(now));
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
            let decided = Decided::new(&d, snap, now);
            if let Some(span) = names.trace.as_deref_mut().filter(|s| s.sampled) {
                span.set("switchyard.route", d.route.name.clone());
                span.set("switchyard.pool", snap.pools[pool].name.clone());
                span.set("switchyard.why", why(&d).as_str());
                span.set(
                    "switchyard.bucket",
                    std::str::from_utf8(&decided.bucket).unwrap_or(""),
                );
                if let Some(flags) = &decided.flags {
                    span.set("switchyard.flags", flags.as_str());
                }
                if let Some(m) = &mirror {
                    span.set("switchyard.mirror.pool", snap.pools[m.config.pool].name.clone());
                }
            }
            (snap.pool(pool).clone(), decided, mirror)
        };

        // Phase: upstream_request (the header fields are made by `Decided::fields`).
        let via = via_entry(snap, parts.version);
        Ok(Routed {
            traceparent: names.trace.as_ref().map(|s| s.header.clone()),
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
}

/// Why the pool was picked, as a trace shows it: `split`, `override header`, `override
/// cookie`, or `rule NAME`.
fn why(d: &crate::routing::Decision<'_, '_>) -> String {
    use crate::routing::Why;
    match d.why {
        Why::Split => "split".to_owned(),
        Why::OverrideHeader => "override header".to_owned(),
        Why::OverrideCookie => "override cookie".to_owned(),
        Why::Pin => "session pin".to_owned(),
        Why::Rule(i) => format!(
            "rule {}",
            d.route.rules.get(usize::from(i)).map_or("?", |r| r.name.as_str())
        ),
    }
}
