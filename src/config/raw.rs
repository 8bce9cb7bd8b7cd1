//! Stage two: the file as serde structs, with the position of every value kept (`Spanned`)
//! so that validation can point at the line to fix. Nothing here is checked beyond TOML types;
//! [`super::compile`] does the checking. Unknown keys are collected by the caller, not denied
//! here, so that one run reports every one of them.

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

/// An ordered TOML table (split order is part of the bucket contract, so it must survive
/// parsing). Values keep their positions; errors about a key point at its value.
pub type SpannedMap<V> = IndexMap<String, Spanned<V>>;

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    pub listen: Option<Spanned<RawListen>>,
    pub admin: Option<Spanned<RawAdmin>>,
    pub log: Option<Spanned<RawLog>>,
    #[serde(default)]
    pub pools: SpannedMap<RawPool>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    pub identity: Option<Spanned<RawIdentity>>,
    #[serde(default)]
    pub flags: Vec<Spanned<RawFlag>>,
    pub env: Option<Spanned<RawEnv>>,
    pub headers: Option<Spanned<RawHeaders>>,
    pub state: Option<Spanned<RawState>>,
    #[serde(default)]
    pub notify: Vec<Spanned<RawNotify>>,
    pub fleet: Option<Spanned<RawFleet>>,
    /// Canary analysis: the Prometheus guards' checks ask.
    pub analysis: Option<Spanned<RawAnalysis>>,
    pub ofrep: Option<Spanned<RawOfrep>>,
    /// Request attributes flags and rules read: `name = "header:x-country"` (or `cookie:`,
    /// `query:`), and `trusted_proxies = [...]` for the client address.
    pub context: Option<Spanned<SpannedMap<toml::Value>>>,
    #[serde(default)]
    pub segments: Vec<Spanned<RawSegment>>,
    /// An Unleash feature file (`"features.json"`), or `{ url, token_env, interval }`.
    pub flags_from: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub experiments: Vec<Spanned<RawExperiment>>,
    /// Who may force a pool with a route's override header or cookie.
    pub overrides: Option<Spanned<RawOverrides>>,
    /// W3C trace context and OTLP export.
    pub tracing: Option<Spanned<RawTracing>>,
}

#[derive(Debug, Deserialize)]
pub struct RawTracing {
    pub otlp: Option<Spanned<String>>,
    pub sample: Option<Spanned<f64>>,
    pub service_name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawOverrides {
    pub from: Option<Vec<Spanned<String>>>,
    pub secret_env: Option<Spanned<String>>,
    pub to_tripped: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
pub struct RawExperiment {
    pub name: Spanned<String>,
    pub flag: Option<Spanned<String>>,
    pub route: Option<Spanned<String>>,
    pub goal: Spanned<RawGoal>,
}

#[derive(Debug, Deserialize)]
pub struct RawGoal {
    pub path_prefix: Spanned<String>,
    pub method: Option<Spanned<String>>,
    pub status: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawSegment {
    pub name: Spanned<String>,
    pub constraints: Spanned<toml::Value>,
}

#[derive(Debug, Deserialize)]
pub struct RawRule {
    pub name: Option<Spanned<String>>,
    pub constraints: Option<Spanned<toml::Value>>,
    pub segments: Option<Vec<Spanned<String>>>,
    pub pool: Spanned<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawOfrep {
    pub enabled: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
pub struct RawFleet {
    pub name: Option<Spanned<String>>,
    pub prometheus: Spanned<String>,
    pub selector: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub query_timeout: Option<Spanned<String>>,
    pub token_env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawNotify {
    pub url: Spanned<String>,
    pub events: Option<Vec<Spanned<String>>>,
    pub secret_env: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawState {
    pub path: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawIdentity {
    pub from: Option<Spanned<Vec<Spanned<String>>>>,
    pub cookie: Option<Spanned<String>>,
    pub salt: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawFlag {
    pub name: Spanned<String>,
    pub description: Option<Spanned<String>>,
    pub enabled: Option<Spanned<bool>>,
    /// Unleash's strategies, with Unleash's field names.
    pub strategies: Option<Spanned<toml::Value>>,
    pub dependencies: Option<Spanned<toml::Value>>,
    pub percent: Option<Spanned<i64>>,
    pub group: Option<Spanned<String>>,
    pub users: Option<Vec<Spanned<String>>>,
    pub routes: Option<Vec<Spanned<String>>>,
    pub environments: Option<Vec<Spanned<String>>>,
    pub start: Option<Spanned<String>>,
    pub end: Option<Spanned<String>>,
    /// `{ name = weight, ... }`, or Unleash's variants as an array of tables.
    pub variants: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
pub struct RawEnv {
    pub name: Spanned<String>,
    /// Unleash's `appName` in the flags' context.
    pub app_name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawHeaders {
    pub flags: Option<Spanned<String>>,
    pub flag_payloads: Option<Spanned<String>>,
    pub pool: Option<Spanned<String>>,
    pub bucket: Option<Spanned<String>>,
    pub forwarded: Option<Spanned<bool>>,
    pub via: Option<Spanned<bool>>,
    pub request_id: Option<Spanned<bool>>,
    /// The longest flags (or payloads) header a route may send.
    pub max_flag_bytes: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
pub struct RawOverride {
    pub header: Option<Spanned<String>>,
    pub cookie: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawListen {
    pub http: Option<Spanned<String>>,
    pub https: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawTls>>,
    pub max_connections: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub drain_timeout: Option<Spanned<String>>,
    pub client_body_timeout: Option<Spanned<String>>,
    pub send_timeout: Option<Spanned<String>>,
    pub backlog: Option<Spanned<i64>>,
    pub fast_path: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
pub struct RawAdmin {
    pub listen: Spanned<String>,
    pub token_env: Option<Spanned<String>>,
    /// Host names the API answers for, besides loopback's.
    pub hosts: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
pub struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawLog {
    pub access: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
pub struct RawPool {
    pub endpoints: Spanned<Vec<Spanned<String>>>,
    pub balance: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub health: Option<Spanned<RawHealth>>,
}

#[derive(Debug, Deserialize)]
pub struct RawRoute {
    pub name: Spanned<String>,
    pub host: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub headers: Option<Spanned<SpannedMap<String>>>,
    pub split: Spanned<SpannedMap<i64>>,
    #[serde(rename = "override")]
    pub overrides: Option<Spanned<RawOverride>>,
    pub guard: Option<Spanned<RawGuard>>,
    pub rollout: Option<Spanned<RawRollout>>,
    /// Targeted routing, before the split: the first rule whose constraints hold picks the pool.
    #[serde(default)]
    pub rules: Vec<Spanned<RawRule>>,
    pub mirror: Option<Spanned<RawMirror>>,
    pub session: Option<Spanned<RawSession>>,
}

#[derive(Debug, Deserialize)]
pub struct RawSession {
    pub cookie: Option<Spanned<String>>,
    pub idle: Option<Spanned<String>>,
    pub max_age: Option<Spanned<String>>,
    pub secret_env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawMirror {
    pub pool: Spanned<String>,
    pub percent: Option<Spanned<i64>>,
    pub max_body: Option<Spanned<String>>,
    pub max_response: Option<Spanned<String>>,
    pub compare: Option<Spanned<bool>>,
    pub ignore: Option<Vec<Spanned<String>>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub max_in_flight: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
pub struct RawGuard {
    pub baseline: Spanned<String>,
    pub max_error_rate: Option<Spanned<f64>>,
    pub max_error_ratio: Option<Spanned<f64>>,
    pub max_mismatch_rate: Option<Spanned<f64>>,
    pub max_p99: Option<Spanned<String>>,
    pub max_p50: Option<Spanned<String>>,
    pub min_requests: Option<Spanned<i64>>,
    pub window: Option<Spanned<String>>,
    pub dry_run: Option<Spanned<bool>>,
    pub checks: Option<Vec<Spanned<RawCheck>>>,
}

#[derive(Debug, Deserialize)]
pub struct RawCheck {
    pub name: Spanned<String>,
    pub query: Spanned<String>,
    pub min: Option<Spanned<f64>>,
    pub max: Option<Spanned<f64>>,
    pub min_ratio: Option<Spanned<f64>>,
    pub max_ratio: Option<Spanned<f64>>,
    pub interval: Option<Spanned<String>>,
    pub failure_limit: Option<Spanned<i64>>,
    pub no_data: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawAnalysis {
    pub prometheus: Option<Spanned<String>>,
    pub query_timeout: Option<Spanned<String>>,
    pub token_env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawRollout {
    pub pool: Spanned<String>,
    pub steps: Spanned<Vec<Spanned<i64>>>,
    pub every: Spanned<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawHealth {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub fall: Option<Spanned<i64>>,
    pub rise: Option<Spanned<i64>>,
}
