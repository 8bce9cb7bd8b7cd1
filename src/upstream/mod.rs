//! Upstream pools: named sets of endpoints, endpoint selection, and the one shared HTTP client
//! ([`client`]) that keeps connections to them alive. Endpoint state (requests in flight) lives
//! in atomics on [`Endpoint`], which is shared by reference between the snapshots of successive
//! reloads as long as the endpoint is still configured.

pub mod client;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;

/// How a pool picks an endpoint for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Power of two random choices on requests in flight.
    LeastRequest,
    RoundRobin,
}

/// One `[pools.NAME]` entry.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    /// The name as a header value, made once for the pool header of every request.
    pub name_header: http::HeaderValue,
    pub endpoints: Box<[Arc<Endpoint>]>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    /// Time allowed from sending the request until the response headers arrive.
    pub timeout: Duration,
    cursor: AtomicUsize,
}

/// One upstream address of a pool.
#[derive(Debug)]
pub struct Endpoint {
    /// As written in the config, `host:port`.
    pub address: Arc<str>,
    pub authority: Authority,
    in_flight: AtomicUsize,
}

impl Endpoint {
    pub fn new(address: &str, authority: Authority) -> Endpoint {
        Endpoint {
            address: address.into(),
            authority,
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Requests sent to this endpoint whose responses have not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight to an endpoint; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn new(
        name: &str,
        endpoints: Vec<Arc<Endpoint>>,
        balance: Balance,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Pool {
        Pool {
            name: name.into(),
            name_header: http::HeaderValue::from_str(name)
                .unwrap_or(http::HeaderValue::from_static("invalid")),
            endpoints: endpoints.into(),
            balance,
            connect_timeout,
            timeout,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Picks an endpoint index, avoiding `exclude` (the endpoint that just failed) when the
    /// pool has another. `None` only for a pool without endpoints.
    pub fn select(&self, exclude: Option<usize>) -> Option<usize> {
        let n = self.endpoints.len();
        match (n, exclude) {
            (0, _) => None,
            (1, _) => Some(0),
            (_, Some(x)) => {
                // The retry: the next endpoint after the failed one, whatever the policy.
                Some((x + 1 + self.cursor.fetch_add(1, Ordering::Relaxed) % (n - 1)) % n)
            }
            (_, None) => Some(match self.balance {
                Balance::RoundRobin => self.cursor.fetch_add(1, Ordering::Relaxed) % n,
                Balance::LeastRequest => {
                    let a = fastrand::usize(..n);
                    let mut b = fastrand::usize(..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    if self.endpoints[b].in_flight() < self.endpoints[a].in_flight() {
                        b
                    } else {
                        a
                    }
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, balance: Balance) -> Pool {
        let eps = (0..n)
            .map(|i| {
                let a = format!("127.0.0.1:{}", 1000 + i);
                Arc::new(Endpoint::new(&a, a.parse().unwrap()))
            })
            .collect();
        Pool::new("p", eps, balance, Duration::from_secs(1), Duration::from_secs(1))
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let p = pool(3, Balance::RoundRobin);
        let picks: Vec<_> = (0..6).map(|_| p.select(None).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let p = pool(2, Balance::LeastRequest);
        let _busy: Vec<_> = (0..5).map(|_| p.endpoints[0].begin()).collect();
        for _ in 0..100 {
            assert_eq!(p.select(None), Some(1));
        }
    }

    #[test]
    fn a_retry_never_picks_the_failed_endpoint() {
        let p = pool(3, Balance::LeastRequest);
        for _ in 0..100 {
            assert_ne!(p.select(Some(1)), Some(1));
        }
        assert_eq!(pool(1, Balance::RoundRobin).select(Some(0)), Some(0));
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let p = pool(1, Balance::RoundRobin);
        let g = p.endpoints[0].begin();
        assert_eq!(p.endpoints[0].in_flight(), 1);
        drop(g);
        assert_eq!(p.endpoints[0].in_flight(), 0);
    }
}
