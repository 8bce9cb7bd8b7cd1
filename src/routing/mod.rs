//! The compiled, immutable view of the config that every request reads, and the pure
//! functions that turn a request into a [`Decision`]: route matching ([`table`]) and the
//! weighted split ([`split`]). Nothing here does I/O, so all of it is unit-tested directly.

pub mod split;
pub mod table;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

pub use split::Split;
pub use table::RouteTable;

use crate::upstream::Pool;

/// Everything one config revision decides, compiled once so that the request path never
/// re-validates or re-parses. Swapped whole on reload; a request keeps the one it started with.
pub struct Snapshot {
    /// Short hash of the config text this snapshot was compiled from.
    pub revision: String,
    pub listen: Listen,
    /// Whether one access-log line is written per request.
    pub access_log: bool,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Pools by index; routes refer to pools by index into this list.
    pub pools: Vec<Arc<Pool>>,
    pub routes: Vec<Route>,
    pub(crate) table: RouteTable,
    /// Connect timeout per endpoint address (`host:port`), read by the connector.
    pub(crate) connect_timeouts: HashMap<String, Duration>,
}

/// Listener settings. They cannot change by reload: sockets are bound once.
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub drain_timeout: Duration,
}

/// One `[[routes]]` entry, compiled.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    /// The host pattern as written (lower-cased), for display.
    pub host: Option<String>,
    pub path_prefix: String,
    /// Request headers that must all be present with these exact values.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub split: Split,
}

impl Route {
    pub(crate) fn matches(&self, path: &str, headers: &http::HeaderMap) -> bool {
        path.starts_with(&self.path_prefix)
            && self
                .headers
                .iter()
                .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }
}

/// What the proxy decided for one request.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'s> {
    pub route: &'s Route,
    /// Index into [`Snapshot::pools`].
    pub pool: usize,
}

impl Snapshot {
    /// The route for a request, by host (exact, then wildcard, then any), longest path prefix,
    /// then header matches.
    pub fn find(&self, host: &str, path: &str, headers: &http::HeaderMap) -> Option<&Route> {
        self.table.find(&self.routes, host, path, headers)
    }

    /// Decides route and pool for a request; `None` when no route matches.
    pub fn decide(&self, host: &str, path: &str, headers: &http::HeaderMap) -> Option<Decision<'_>> {
        let route = self.find(host, path, headers)?;
        Some(Decision {
            route,
            pool: route.split.only_pool(),
        })
    }

    pub fn pool(&self, index: usize) -> &Arc<Pool> {
        &self.pools[index]
    }

    pub fn pool_by_name(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| &*p.name == name)
    }

    pub fn route_by_name(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    /// The connect timeout of the pool an endpoint address belongs to (the shortest, if it
    /// belongs to several).
    pub fn connect_timeout(&self, address: &str) -> Option<Duration> {
        self.connect_timeouts.get(address).copied()
    }
}

/// The host a request is for, lower-cased and without port; borrowed when already clean.
pub fn normalize_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        rest.split(']').next().unwrap_or(rest)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                raw
            }
        })
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_host;

    #[test]
    fn hosts_lose_port_case_and_trailing_dot() {
        assert_eq!(normalize_host("Shop.Example.com:8080"), "shop.example.com");
        assert_eq!(normalize_host("shop.example.com."), "shop.example.com");
        assert_eq!(normalize_host("[::1]:8080"), "::1");
        assert_eq!(normalize_host("127.0.0.1"), "127.0.0.1");
    }
}
