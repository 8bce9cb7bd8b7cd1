//! Prometheus metrics, in a registry of our own (no global one). Label values come only from
//! config names and closed sets, never from paths or user ids.
//!
//! Looking up a labelled series takes a lock and a hash, so the request path never does it: when
//! a snapshot is published, [`Metrics::attach`] resolves every series its routes, pools and
//! flags can touch into [`Handles`], and requests only increment atomics. A series keeps its
//! count across reloads because the same labels resolve to the same series.

use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Response classes of `switchyard_requests_total`.
pub(crate) const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// The upper bounds (seconds) of `switchyard_request_duration_seconds`'s buckets (then +Inf):
/// from 100 µs, since a proxied answer on a local network often takes under a millisecond.
pub const DURATION_BOUNDS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// One (route, pool)'s counters since they were created: requests, errors (5xx and failures to
/// answer), and the duration histogram's cumulative bucket counts (one per bound, then +Inf).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub requests: u64,
    pub errors: u64,
    pub buckets: Vec<u64>,
}

/// Kinds of `switchyard_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Connect = 0,
    Timeout = 1,
    Reset = 2,
    /// The upstream answered with a 5xx status.
    Status = 3,
    /// The upstream's answer could not be read or passed on.
    Protocol = 4,
}

/// What answered a request that no route took, for `switchyard_local_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// OFREP evaluations (`[ofrep]`).
    Ofrep = 0,
    /// Refused before a route was found (`400`, `404`, ...).
    Unrouted = 1,
    /// Routed, but the proxy ran out of its own resources (file descriptors, ...) sending it:
    /// counted here, not in the pool's numbers.
    Resources = 2,
}

/// Handlers of `switchyard_local_requests_total`, by [`Local`].
pub(crate) const LOCAL: [&str; 3] = ["ofrep", "unrouted", "resources"];

pub(crate) const KINDS: [&str; 5] = ["connect", "timeout", "reset", "status", "protocol"];

/// Every metric of the process.
pub struct Metrics {
    pub(crate) registry: Registry,
    pub(crate) requests: IntCounterVec,
    pub(crate) duration: HistogramVec,
    pub(crate) upstream_errors: IntCounterVec,
    pub(crate) route_weight: GaugeVec,
    pub(crate) reloads: IntCounterVec,
    pub(crate) revision: IntGaugeVec,
    pub(crate) flag_decisions: IntCounterVec,
    pub(crate) overrides_ignored: IntCounterVec,
    pub(crate) flag_headers_truncated: IntCounterVec,
    pub(crate) local_requests: IntCounterVec,
    pub(crate) remote_errors: IntCounterVec,
    pub(crate) resource_exhausted: IntCounterVec,
    pub(crate) flags_source_up: IntGaugeVec,
    pub(crate) local_duration: HistogramVec,
    pub(crate) guard_trips: IntCounterVec,
    pub(crate) route_tripped: IntGaugeVec,
    pub(crate) rollout_step: IntGaugeVec,
    pub(crate) rollout_step_index: IntGaugeVec,
    pub(crate) pool_tripped: IntGaugeVec,
    pub(crate) route_changed: GaugeVec,
    /// The label values `route_changed` and `route_config` were last set with, per route
    /// (a route's origin changes without a reload, and its old series must go).
    pub(crate) route_labels: std::sync::Mutex<std::collections::HashMap<String, [String; 2]>>,
    pub(crate) route_config: GaugeVec,
    pub(crate) fleet_info: IntGaugeVec,
    pub(crate) fleet_up: IntGaugeVec,
    pub(crate) fleet_replicas: IntGaugeVec,
    pub(crate) endpoint_healthy: IntGaugeVec,
    pub(crate) state_save_errors: IntCounter,
    pub(crate) state_load_errors: IntCounter,
    pub(crate) notifications: IntCounterVec,
    pub(crate) trace_spans: IntCounterVec,
    pub(crate) mirror: IntCounterVec,
    pub(crate) experiment_users: GaugeVec,
    pub(crate) check_value: GaugeVec,
    pub(crate) check_verdicts: IntCounterVec,
    pub(crate) session_requests: IntCounterVec,
    pub(crate) session_pins_ended: IntCounterVec,
    pub(crate) session_valid_until: IntGaugeVec,
    pub connections: IntGauge,
}

/// The series one snapshot's requests touch, resolved once.
#[derive(Default)]
pub struct Handles {
    /// Per route: `(pool index, per-class counters, duration)` for each pool of its split.
    pub(crate) routes: Vec<Vec<(usize, [IntCounter; 6], Histogram)>>,
    /// Per pool: counters by [`UpstreamError`].
    pub(crate) upstream_errors: Vec<[IntCounter; KINDS.len()]>,
    /// Per flag: counters for off, on, then each variant.
    pub(crate) flags: Vec<Vec<IntCounter>>,
    pub(crate) overrides_ignored: Vec<IntCounter>,
    pub(crate) flag_headers_truncated: Vec<IntCounter>,
    /// Per route: its session's series, when it has a session.
    pub(crate) sessions: Vec<Option<SessionSeries>>,
    /// By [`Local`]: per-class counters and the duration.
    pub(crate) local: Vec<([IntCounter; 6], Histogram)>,
}

/// A route's session series (`[routes.session]`).
pub struct SessionSeries {
    /// Per pool of the split: `(pool index, [by pin, by split], pins ended by the reasons that
    /// name a pool, when its pins may still be valid)`.
    pub(crate) pools: Vec<(usize, [IntCounter; 2], [IntCounter; 4], IntGauge)>,
    /// Pins ended because their pool left the split, or forged (no pool named).
    pub(crate) unnamed: [IntCounter; 2],
}

/// Registers a new metric in `registry` and returns it.
fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<C>,
) -> C {
    let metric = metric.expect("metric names and labels are valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once");
    metric
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let opts = Opts::new;
        let m = Metrics {
            requests: register(&r, IntCounterVec::new(
                opts("switchyard_requests_total", "Requests answered, by route, pool and response class (error: the upstream failed to answer)."),
                &["route", "pool", "class"],
            )),
            duration: register(&r, HistogramVec::new(
                HistogramOpts::new("switchyard_request_duration_seconds", "Time from receiving a request until its response body is done.")
                    .buckets(DURATION_BOUNDS.to_vec()),
                &["route", "pool"],
            )),
            upstream_errors: register(&r, IntCounterVec::new(
                opts("switchyard_upstream_errors_total", "Upstream failures by pool and kind (connect, timeout, reset, status, protocol)."),
                &["pool", "kind"],
            )),
            route_weight: register(&r, GaugeVec::new(
                opts("switchyard_route_weight", "Effective share of a route's users sent to a pool, 0..1."),
                &["route", "pool"],
            )),
            reloads: register(&r, IntCounterVec::new(opts("switchyard_config_reloads_total", "Config reloads by result (ok, error)."), &["result"])),
            revision: register(&r, IntGaugeVec::new(
                opts("switchyard_config_revision_info", "The revision of the config being served (value 1)."),
                &["revision"],
            )),
            flag_decisions: register(&r, IntCounterVec::new(
                opts("switchyard_flag_decisions_total", "Flag evaluations by flag and value (on, off or a variant)."),
                &["flag", "value"],
            )),
            overrides_ignored: register(&r, IntCounterVec::new(
                opts("switchyard_overrides_ignored_total", "Override header or cookie values that named no pool of the route."),
                &["route"],
            )),
            flag_headers_truncated: register(&r, IntCounterVec::new(
                opts("switchyard_flag_headers_truncated_total", "Requests whose flags or payloads header would have passed [headers] max_flag_bytes: the flags past it were left out of the header."),
                &["route"],
            )),
            flags_source_up: register(&r, IntGaugeVec::new(
                opts("switchyard_flags_source_up", "1 while flags_from's Unleash server answers its polls, 0 while it fails (the last good document is served); absent without a server."),
                &["source"],
            )),
            resource_exhausted: register(&r, IntCounterVec::new(
                opts("switchyard_resource_exhausted_total", "Times the proxy ran out of its own resources, by operation (accept, connect) and resource (emfile, enfile, enobufs, enomem, eaddrnotavail): answered 503 local_resources, never counted against a pool, never ejecting an endpoint."),
                &["op", "resource"],
            )),
            remote_errors: register(&r, IntCounterVec::new(
                opts("switchyard_remote_errors_total", "Failed reads of what switchyard fetches (source: prometheus, unleash), by reason: unreachable, timeout, too_large (over its size limit; not read), invalid (an error status or an answer that does not parse). The last good state is kept."),
                &["source", "reason"],
            )),
            local_requests: register(&r, IntCounterVec::new(
                opts("switchyard_local_requests_total", "Requests the proxy answered itself, by handler (ofrep; unrouted: refused before a route was found, such as 400 and 404; resources: routed, but the proxy ran out of file descriptors or the like) and response class."),
                &["handler", "class"],
            )),
            local_duration: register(&r, HistogramVec::new(
                HistogramOpts::new("switchyard_local_request_duration_seconds", "Time from receiving a request the proxy answered itself until its response body is done.")
                    .buckets(DURATION_BOUNDS.to_vec()),
                &["handler"],
            )),
            guard_trips: register(&r, IntCounterVec::new(
                opts("switchyard_guard_trips_total", "Pools taken out of a route by its guard (manual rollbacks not included)."),
                &["route", "pool"],
            )),
            route_tripped: register(&r, IntGaugeVec::new(opts("switchyard_route_tripped", "1 while a route has a pool tripped or rolled back."), &["route"])),
            rollout_step: register(&r, IntGaugeVec::new(
                opts("switchyard_rollout_step", "The percent of traffic at a route's current rollout step."),
                &["route"],
            )),
            rollout_step_index: register(&r, IntGaugeVec::new(
                opts("switchyard_rollout_step_index", "The index (from 0) of a route's current rollout step."),
                &["route"],
            )),
            pool_tripped: register(&r, IntGaugeVec::new(
                opts("switchyard_pool_tripped", "Per guarded route's non-baseline pool: 0 in use, 1 tripped by the guard, 2 rolled back by an operator."),
                &["route", "pool"],
            )),
            route_changed: register(&r, GaugeVec::new(
                opts("switchyard_route_changed_timestamp_seconds", "When a route's trips or rollout step last changed (Unix time; 0: never), with the fingerprint of its split and pools and the replica where it changed (origin; empty: here): replicas with [fleet] converge on the latest."),
                &["route", "fingerprint", "origin"],
            )),
            route_labels: std::sync::Mutex::new(std::collections::HashMap::new()),
            route_config: register(&r, GaugeVec::new(
                opts("switchyard_route_config_timestamp_seconds", "Since when this replica has served a guarded route's current split and pools (Unix time), with their fingerprint: the fleet's numbers for the route start at the latest of its replicas'."),
                &["route", "fingerprint"],
            )),
            fleet_info: register(&r, IntGaugeVec::new(
                opts("switchyard_fleet_info", "1, with [fleet] name and this replica's name: replicas read only the series of instances that export their fleet's name."),
                &["fleet", "replica"],
            )),
            fleet_up: register(&r, IntGaugeVec::new(
                opts("switchyard_fleet_up", "1 while [fleet]'s Prometheus answers, 0 when it does not (the guard judges local numbers only); absent without [fleet]."),
                &["prometheus"],
            )),
            fleet_replicas: register(&r, IntGaugeVec::new(
                opts("switchyard_fleet_replicas", "Replicas of this fleet seen in Prometheus at its last answer."),
                &["prometheus"],
            )),
            endpoint_healthy: register(&r, IntGaugeVec::new(
                opts("switchyard_endpoint_healthy", "1 while an endpoint takes requests (not ejected, passing its health checks)."),
                &["pool", "endpoint"],
            )),
            state_save_errors: register(&r, IntCounter::new(
                "switchyard_state_save_errors_total",
                "Failed writes of the state file: trips and rollout steps that would not survive a restart.",
            )),
            state_load_errors: register(&r, IntCounter::new(
                "switchyard_state_load_errors_total",
                "State files that could not be read at start (kept aside; their guarded routes held at their baselines).",
            )),
            notifications: register(&r, IntCounterVec::new(
                opts("switchyard_notifications_total", "Webhook notifications by result: delivered, failed (after retries), dropped (queue full)."),
                &["result"],
            )),
            trace_spans: register(&r, IntCounterVec::new(
                opts("switchyard_trace_spans_total", "Sampled spans by result: exported (the collector took them), failed (it refused or did not answer), dropped (the export queue was full)."),
                &["result"],
            )),
            check_value: register(&r, GaugeVec::new(
                opts("switchyard_check_value", "The last value of a guard's check (a PromQL query on the application's metrics) for a pool or its baseline; absent while the query gives no data."),
                &["route", "pool", "check"],
            )),
            check_verdicts: register(&r, IntCounterVec::new(
                opts("switchyard_check_verdicts_total", "Measurements of a guard's check by verdict: pass, fail, inconclusive (no data), error (the query failed)."),
                &["route", "pool", "check", "verdict"],
            )),
            session_requests: register(&r, IntCounterVec::new(
                opts("switchyard_session_requests_total", "Requests on routes with [routes.session], by the pool they went to and what sent them there: pin (the user's session pin held) or split (no pin, or it ended; a new pin is set)."),
                &["route", "pool", "by"],
            )),
            session_pins_ended: register(&r, IntCounterVec::new(
                opts("switchyard_session_pins_ended_total", "Session pins a request carried that no longer held, by reason: idle, max_age, tripped, rolled_back (the pool named), removed (its pool left the split), forged (bad signature; pool empty for both)."),
                &["route", "pool", "reason"],
            )),
            session_valid_until: register(&r, IntGaugeVec::new(
                opts("switchyard_session_pins_valid_until_timestamp_seconds", "The latest time a session pin on this pool that this replica wrote or honoured can still be honoured (Unix time; from start, at least start plus the idle time, as pins from before a restart are not known). Past it (the max over replicas), the pool has no session left."),
                &["route", "pool"],
            )),
            experiment_users: register(&r, GaugeVec::new(
                opts("switchyard_experiment_users", "Distinct users of each experiment's arm (estimated, ±1%), by kind: exposed, converted."),
                &["experiment", "variant", "kind"],
            )),
            mirror: register(&r, IntCounterVec::new(
                opts("switchyard_mirror_total", "Mirrored requests by route and result: match, status/header/body (the shadow's answer differs), dropped (in-flight limit), too_large (request body over max_body), shadow_error, incomplete (the primary or the client did not finish), sent (compare = false)."),
                &["route", "result"],
            )),
            connections: register(&r, IntGauge::new("switchyard_connections_active", "Client connections open.")),
            registry: r,
        };
        // What runs, and what it costs the machine, as every Prometheus exporter says it.
        let build = register(
            &m.registry,
            IntGaugeVec::new(
                opts(
                    "switchyard_build_info",
                    "1, labelled with the running build's version and target.",
                ),
                &["version", "target"],
            ),
        );
        build
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                &format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
            ])
            .set(1);
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector is registered once");
        for result in ["ok", "error"] {
            m.reloads.with_label_values(&[result]);
        }
        for source in ["prometheus", "unleash"] {
            for kind in crate::egress::RemoteFailure::ALL {
                m.remote_errors.with_label_values(&[source, kind.name()]);
            }
        }
        for result in ["delivered", "failed", "dropped"] {
            m.notifications.with_label_values(&[result]);
        }
        for result in ["exported", "failed", "dropped"] {
            m.trace_spans.with_label_values(&[result]);
        }
        m
    }

    /// The fleet's Prometheus at `prometheus` answered (`Some(replicas)`) or not; `None`
    /// for `prometheus`: no `[fleet]` (the series go away).
    pub fn fleet(&self, prometheus: Option<&str>, replicas: Option<usize>) {
        self.fleet_up.reset();
        self.fleet_replicas.reset();
        if let Some(p) = prometheus {
            self.fleet_up
                .with_label_values(&[p])
                .set(i64::from(replicas.is_some()));
            if let Some(n) = replicas {
                self.fleet_replicas.with_label_values(&[p]).set(n as i64);
            }
        }
    }

    /// `switchyard_fleet_info`: `Some((fleet, replica))` with `[fleet]`, else gone.
    pub fn fleet_info(&self, info: Option<(&str, &str)>) {
        match info {
            Some((fleet, replica)) => {
                if self
                    .fleet_info
                    .get_metric_with_label_values(&[fleet, replica])
                    .map_or(0, |g| g.get())
                    != 1
                {
                    self.fleet_info.reset();
                    self.fleet_info.with_label_values(&[fleet, replica]).set(1);
                }
            }
            None => self.fleet_info.reset(),
        }
    }

    /// A guard tripped `pool` of `route`.
    pub fn trip(&self, route: &str, pool: &str) {
        self.guard_trips.with_label_values(&[route, pool]).inc();
    }

    pub fn endpoint_healthy(&self, pool: &str, endpoint: &str, healthy: bool) {
        self.endpoint_healthy
            .with_label_values(&[pool, endpoint])
            .set(i64::from(healthy));
    }

    /// The state file could not be written.
    /// Counts the proxy's running out of `resource` in `op` (accept, connect).
    pub fn resource_exhausted(&self, op: &str, resource: &str) {
        self.resource_exhausted.with_label_values(&[op, resource]).inc();
    }

    /// Whether flags_from's server answers; `None`: there is none.
    pub fn flags_source_up(&self, up: Option<bool>) {
        self.flags_source_up.reset();
        if let Some(up) = up {
            self.flags_source_up
                .with_label_values(&["unleash"])
                .set(up as i64);
        }
    }

    /// Counts a failed read of `source` (`prometheus`, `unleash`).
    pub fn remote_error(&self, source: &str, kind: crate::egress::RemoteFailure) {
        self.remote_errors.with_label_values(&[source, kind.name()]).inc();
    }

    pub fn state_save_error(&self) {
        self.state_save_errors.inc();
    }

    /// The state file could not be read at start.
    pub fn state_load_error(&self) {
        self.state_load_errors.inc();
    }

    /// A check's measurement of `pool`: its value (`None`: no data) and verdict.
    pub fn check(&self, labels: [&str; 3], value: Option<f64>, verdict: &str) {
        match value {
            Some(v) => self.check_value.with_label_values(&labels).set(v),
            None => {
                let _ = self.check_value.remove_label_values(&labels);
            }
        }
        let [route, pool, check] = labels;
        self.check_verdicts
            .with_label_values(&[route, pool, check, verdict])
            .inc();
    }

    /// A check's series for `pool` go (the check, its route or the pool went away).
    pub fn check_gone(&self, labels: [&str; 3]) {
        let _ = self.check_value.remove_label_values(&labels);
        let [route, pool, check] = labels;
        for verdict in ["pass", "fail", "inconclusive", "error"] {
            let _ = self
                .check_verdicts
                .remove_label_values(&[route, pool, check, verdict]);
        }
    }

    /// Counts a mirrored request's result.
    pub fn mirror(&self, route: &str, result: &str) {
        self.mirror.with_label_values(&[route, result]).inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Handles {
    /// Counts a finished request: `status` is `None` when the upstream failed to answer.
    pub fn request(&self, route: usize, pool: usize, status: Option<u16>, elapsed: Duration) {
        let Some((_, counters, duration)) = self
            .routes
            .get(route)
            .and_then(|r| r.iter().find(|(p, _, _)| *p == pool))
        else {
            return;
        };
        let class = match status {
            Some(s @ 100..=599) => (s / 100 - 1) as usize,
            _ => 5,
        };
        counters[class].inc();
        duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a request the proxy answered itself.
    pub fn local(&self, local: Local, status: u16, elapsed: Duration) {
        if let Some((counters, duration)) = self.local.get(local as usize) {
            counters[(status.clamp(100, 599) / 100 - 1) as usize].inc();
            duration.observe(elapsed.as_secs_f64());
        }
    }

    pub fn upstream_error(&self, pool: usize, kind: UpstreamError) {
        if let Some(c) = self.upstream_errors.get(pool) {
            c[kind as usize].inc();
        }
    }

    /// Counts a decision of `flag`: `label` from [`crate::routing::Flag::label`].
    pub fn flag(&self, flag: usize, label: usize) {
        let i = label;
        if let Some(c) = self.flags.get(flag).and_then(|f| f.get(i)) {
            c.inc();
        }
    }

    /// The counters of each pool of `route`'s split, by pool index; the histogram is read only
    /// when `changed` (given the pool and its request count) says so.
    pub fn readings(
        &self,
        route: usize,
        mut changed: impl FnMut(usize, u64) -> bool,
    ) -> Vec<(usize, Reading)> {
        use prometheus::core::Metric;
        let Some(pools) = self.routes.get(route) else {
            return Vec::new();
        };
        pools
            .iter()
            .map(|(pool, counters, duration)| {
                let requests = counters.iter().map(IntCounter::get).sum();
                let errors = counters[4].get() + counters[5].get();
                let buckets = if changed(*pool, requests) {
                    let m = duration.metric();
                    let h = m.get_histogram();
                    let mut b: Vec<u64> = h.get_bucket().iter().map(|b| b.cumulative_count()).collect();
                    b.push(h.get_sample_count());
                    b
                } else {
                    Vec::new()
                };
                (
                    *pool,
                    Reading {
                        requests,
                        errors,
                        buckets,
                    },
                )
            })
            .collect()
    }

    /// How often each value of `flag` was decided: off, on, then each variant.
    pub fn flag_counts(&self, flag: usize) -> Vec<u64> {
        self.flags
            .get(flag)
            .map_or_else(Vec::new, |f| f.iter().map(IntCounter::get).collect())
    }

    pub fn flag_headers_truncated(&self, route: usize) {
        if let Some(c) = self.flag_headers_truncated.get(route) {
            c.inc();
        }
    }

    /// Counts a session decision `d` of `route` (session `session`) that sent the request to
    /// `pool` at `now_s`, and moves the pools' "valid until" by the pin it honoured or wrote.
    pub fn session(
        &self,
        route: usize,
        pool: usize,
        d: &crate::routing::session::SessionDecision,
        session: &crate::routing::session::Session,
        now_s: u64,
    ) {
        use crate::routing::session::{Ended, Outcome};
        let Some(Some(s)) = self.sessions.get(route) else {
            return;
        };
        let find = |p: usize| s.pools.iter().find(|x| x.0 == p);
        let raise = |p: usize, t: u64| {
            if let Some(x) = find(p) {
                let t = i64::try_from(t).unwrap_or(i64::MAX);
                if x.3.get() < t {
                    x.3.set(t);
                }
            }
        };
        let by_pin = matches!(d.outcome, Outcome::Pinned { .. });
        if let Some(x) = find(pool) {
            x.1[usize::from(!by_pin)].inc();
        }
        match d.outcome {
            Outcome::Pinned { issued, seen } => raise(pool, session.valid_until(issued, seen)),
            Outcome::Split {
                ended: Some((e, Some(p))),
            } if e.names_pool() => {
                if let Some(x) = find(p) {
                    x.2[e as usize].inc();
                }
            }
            Outcome::Split {
                ended: Some((Ended::Removed, _)),
            } => s.unnamed[0].inc(),
            Outcome::Split { ended: Some(_) } => s.unnamed[1].inc(),
            Outcome::Split { ended: None } | Outcome::Unverifiable | Outcome::Held => {}
        }
        if let Some((p, issued)) = d.write {
            raise(p, session.valid_until(issued, now_s));
        }
    }

    /// The session counters of `route`: per pool `(pool, by pin, by split, ended by reason
    /// [idle, max_age, tripped, rolled_back], valid until)`, and the removed and forged counts.
    #[allow(clippy::type_complexity)]
    pub fn session_counts(&self, route: usize) -> Option<(Vec<(usize, u64, u64, [u64; 4], u64)>, [u64; 2])> {
        let s = self.sessions.get(route)?.as_ref()?;
        let pools = s
            .pools
            .iter()
            .map(|(p, by, ended, until)| {
                (
                    *p,
                    by[0].get(),
                    by[1].get(),
                    ended.each_ref().map(IntCounter::get),
                    u64::try_from(until.get()).unwrap_or(0),
                )
            })
            .collect();
        Some((pools, s.unnamed.each_ref().map(IntCounter::get)))
    }

    pub fn override_ignored(&self, route: usize) {
        if let Some(c) = self.overrides_ignored.get(route) {
            c.inc();
        }
    }
}
