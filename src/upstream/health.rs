//! Active health checks: with `health` on a pool, one task per endpoint asks `GET path` every
//! `interval`; `fall` failures in a row (an error, a timeout, or a status other than 2xx) mark
//! the endpoint down, `rise` successes in a row bring it back. [`Checks::reconcile`] starts and
//! stops the tasks to match each published snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::task::AbortHandle;

use super::{Endpoint, HealthCheck};

/// The running check tasks, by (pool, endpoint address).
pub struct Checks {
    client: Client<HttpConnector, Empty<Bytes>>,
    tasks: HashMap<(String, String), (HealthCheck, Weak<Endpoint>, AbortHandle)>,
}

impl Default for Checks {
    fn default() -> Checks {
        Checks {
            client: Client::builder(TokioExecutor::new()).build_http(),
            tasks: HashMap::new(),
        }
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
            let task = tokio::spawn(check(
                Arc::downgrade(&ep),
                cfg.clone(),
                self.client.clone(),
                key.0.clone(),
            ));
            self.tasks
                .insert(key, (cfg, Arc::downgrade(&ep), task.abort_handle()));
        }
    }
}

async fn check(
    ep: Weak<Endpoint>,
    cfg: HealthCheck,
    client: Client<HttpConnector, Empty<Bytes>>,
    pool: String,
) {
    let (mut fails, mut passes, mut healthy) = (0u32, 0u32, true);
    loop {
        let Some(endpoint) = ep.upgrade() else { return };
        let uri = format!("http://{}{}", endpoint.address, cfg.path);
        // 2xx and 3xx pass, as nginx's and HAProxy's checks have it (an app that redirects
        // `/healthz` to `/healthz/` is up).
        let failure = match uri.parse::<http::Uri>() {
            Ok(uri) => match tokio::time::timeout(cfg.timeout, client.get(uri)).await {
                Ok(Ok(resp)) if resp.status().is_success() || resp.status().is_redirection() => None,
                Ok(Ok(resp)) => Some(format!("GET {} answered {}", cfg.path, resp.status())),
                Ok(Err(e)) => Some(format!("GET {}: {}", cfg.path, super::error_chain(&e))),
                Err(_) => Some(format!("GET {}: no answer within {:?}", cfg.path, cfg.timeout)),
            },
            Err(e) => Some(format!("GET {}: not a valid URL: {e}", cfg.path)),
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
