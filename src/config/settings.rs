//! The control plane's settings: what no request reads (listeners, the admin API, the fleet).

use std::net::SocketAddr;
use std::time::Duration;

/// Listener settings. They cannot change by reload: sockets are bound once.
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub drain_timeout: Duration,
    /// The longest pause in a request body's upload; past it, 408 (nginx's
    /// `client_body_timeout`).
    pub client_body_timeout: Duration,
    /// The longest a client may read nothing of its response; past it, the connection is
    /// closed (nginx's `send_timeout`).
    pub send_timeout: Duration,
    /// The listen sockets' accept queue (nginx's default, 511).
    pub backlog: u32,
    /// HTTP/1 connections are served by switchyard's own HTTP/1 path; `false`: by hyper's.
    pub fast_path: bool,
}

/// The `[fleet]` table: the replicas' shared view through Prometheus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// The fleet's identity: every replica exports it (`switchyard_fleet_info{fleet}`) and
    /// reads only the series of replicas that export the same.
    pub name: String,
    /// Prometheus's base URL, without a trailing slash.
    pub prometheus: String,
    /// Label matchers that select this fleet's series (`job="switchyard"`), or empty.
    pub selector: String,
    pub interval: Duration,
    pub query_timeout: Duration,
    /// The environment variable holding a bearer token for Prometheus.
    pub token_env: Option<String>,
}

/// `[analysis]` (or, without it, `[fleet]`'s Prometheus): where guards' checks are asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisSettings {
    /// Prometheus's base URL, without a trailing slash.
    pub prometheus: String,
    pub query_timeout: Duration,
    /// The config key and the environment variable holding a bearer token for Prometheus.
    pub token_env: Option<(&'static str, String)>,
}

/// The `[admin]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// The environment variable holding the bearer token for mutating calls.
    pub token_env: Option<String>,
    /// Host names the API answers for besides loopback's (`[admin] hosts`).
    pub hosts: Vec<String>,
}
