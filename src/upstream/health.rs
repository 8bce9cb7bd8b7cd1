//! Active health checks: with `health` on a pool, one task per endpoint asks `GET path` every
//! `interval`; `fall` failures in a row (an error, a timeout, or a status other than 2xx) mark
//! the endpoint down, `rise` successes in a row bring it back. [`Checks::reconcile`] starts and
//! stops the tasks to match each published snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use http::uri::PathAndQuery;
use http::Method;
use tokio::task::AbortHandle;

use super::client::{self, Fields, Limits, Outgoing};
use super::{Endpoint, HealthCheck};

/// The running check tasks, by (pool, endpoint address).
#[derive(Default)]
pub struct Checks {
    tasks: HashMap<(String, String), (HealthCheck, Weak<Endpoint>, AbortHandle)>,
}

/// A check's header fields (`host` is the endpoint's, as the client sets it).
struct CheckFields;

impl Fields for CheckFields {
    fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        f(b"user-agent", b"switchyard-health-check");
    }
}

impl Checks {
    /// Starts checks for endpoints that need them and stops the rest.
    pub fn reconcile(&mut self, pools: &[Arc<super::Pool>]) {
        let mut wanted = HashMap::new();
        for pool in pools {
            if let Some(h) = &pool.health {
                for ep in pool.endpoints.iter() {
                    wanted.insert(
                        (pool.name.to_string(), ep.address.to_string()),
                        (h.clone(), ep.clone()),
                    );
                }
            }
        }
        self.tasks.retain(|key, (cfg, ep, task)| {
            let keep = wanted
                .get(key)
                .is_some_and(|(c, e)| c == cfg && ep.upgrade().is_some_and(|old| Arc::ptr_eq(&old, e)));
            if !keep {
                task.abort();
                if let Some(ep) = ep.upgrade() {
                    // No longer checked (or checked afresh): not held down by an old verdict.
                    ep.set_checked_healthy(true);
                }
            }
            keep
        });
        for (key, (cfg, ep)) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(check(Arc::downgrade(&ep), cfg.clone(), key.0.clone()));
            self.tasks
                .insert(key, (cfg, Arc::downgrade(&ep), task.abort_handle()));
        }
    }
}

async fn check(ep: Weak<Endpoint>, cfg: HealthCheck, pool: String) {
    let (mut fails, mut passes, mut healthy) = (0u32, 0u32, true);
    let path = cfg.path.parse::<PathAndQuery>();
    // The whole check within its timeout: connecting, and the answer's head.
    let limits = Limits {
        connect: cfg.timeout,
        response: cfg.timeout,
        body_idle: cfg.timeout,
    };
    loop {
        let Some(endpoint) = ep.upgrade() else { return };
        // Through the proxy's own upstream client (its connections, framing and in-flight
        // count). Only the status is read: the answer's body never is, and its connection
        // closes. 2xx and 3xx pass, as nginx's and HAProxy's checks have it (an app that
        // redirects `/healthz` to `/healthz/` is up).
        let failure = match &path {
            Ok(path) => {
                let out = Outgoing {
                    method: &Method::GET,
                    path,
                    fields: &CheckFields,
                    upgrade: false,
                };
                match tokio::time::timeout(cfg.timeout, client::request(&endpoint, &limits, &out, None)).await
                {
                    Ok(Ok((resp, _))) if resp.status().is_success() || resp.status().is_redirection() => None,
                    Ok(Ok((resp, _))) => Some(format!("GET {} answered {}", cfg.path, resp.status())),
                    Ok(Err(e)) => Some(format!("GET {}: {e}", cfg.path)),
                    Err(_) => Some(format!("GET {}: no answer within {:?}", cfg.path, cfg.timeout)),
                }
            }
            Err(e) => Some(format!("GET {}: not a valid path: {e}", cfg.path)),
        };
        let ok = failure.is_none();
        endpoint.set_check_error(failure.clone());
        if ok {
            fails = 0;
            passes += 1;
            if !healthy && passes >= cfg.rise {
                healthy = true;
                endpoint.set_checked_healthy(true);
                tracing::info!(pool, endpoint = %endpoint.address, "health check passing again: endpoint back in");
            }
        } else {
            passes = 0;
            fails += 1;
            if healthy && fails >= cfg.fall {
                healthy = false;
                endpoint.set_checked_healthy(false);
                tracing::warn!(pool, endpoint = %endpoint.address, path = cfg.path, "health check failed {fails} times in a row ({}): endpoint out", failure.as_deref().unwrap_or(""));
            }
        }
        drop(endpoint);
        tokio::time::sleep(cfg.interval).await;
    }
}
