//! A snapshot's metric series: resolved into [`Handles`] when it is published, and the gauges
//! that follow its routes' live state.

use std::sync::Arc;

use crate::metrics::{Handles, Metrics, CLASSES, KINDS, LOCAL};
use crate::runtime::Snapshot;

impl Metrics {
    /// Resolves the series of `snap` into its handles and publishes its weights and revision.
    /// Call before the snapshot is shared.
    pub fn attach(&self, snap: &mut Snapshot) {
        let mut h = Handles::default();
        self.route_weight.reset();
        self.route_tripped.reset();
        self.rollout_step.reset();
        self.rollout_step_index.reset();
        self.pool_tripped.reset();
        self.route_changed.reset();
        self.route_config.reset();
        self.route_labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.endpoint_healthy.reset();
        // Set again at once (the guard sets them each tick): a scrape between the two would
        // miss every endpoint.
        let now = tokio::time::Instant::now();
        for pool in &snap.pools {
            for ep in pool.endpoints.iter() {
                self.endpoint_healthy(&pool.name, &ep.address, ep.is_available(now));
            }
        }
        for route in &snap.routes {
            let mut per_pool = Vec::new();
            // Every pool of the split (an override may send a request to one at weight 0).
            for (pool, _) in route.split.weights() {
                let p = &*snap.pools[pool].name;
                let counters = CLASSES.map(|c| self.requests.with_label_values(&[&*route.name, p, c]));
                per_pool.push((
                    pool,
                    counters,
                    self.duration.with_label_values(&[&*route.name, p]),
                ));
            }
            h.routes.push(per_pool);
            // A guarded route's trip counters exist from the start at 0, so `increase()` sees
            // the first trip.
            if let Some(g) = snap.guard(route) {
                for (pool, _) in route.split.weights().filter(|&(p, _)| p != g.baseline) {
                    self.guard_trips
                        .with_label_values(&[&*route.name, &*snap.pools[pool].name]);
                }
            }
            h.overrides_ignored
                .push(self.overrides_ignored.with_label_values(&[&*route.name]));
            h.flag_headers_truncated
                .push(self.flag_headers_truncated.with_label_values(&[&*route.name]));
            h.sessions.push(
                route
                    .session
                    .as_deref()
                    .map(|s| self.session_series(snap, route, s)),
            );
            if snap.mirror(route).is_some() {
                for result in crate::mirror::RESULTS {
                    self.mirror.with_label_values(&[&*route.name, result]);
                }
            }
            self.route_gauges(snap, route);
        }
        for pool in &snap.pools {
            h.upstream_errors
                .push(KINDS.map(|k| self.upstream_errors.with_label_values(&[&*pool.name, k])));
        }
        for handler in LOCAL {
            h.local.push((
                CLASSES.map(|c| self.local_requests.with_label_values(&[handler, c])),
                self.local_duration.with_label_values(&[handler]),
            ));
        }
        for flag in snap.flags.iter() {
            let mut values = vec![
                self.flag_decisions.with_label_values(&[&*flag.name, "off"]),
                self.flag_decisions.with_label_values(&[&*flag.name, "on"]),
            ];
            for v in &flag.variant_names {
                values.push(self.flag_decisions.with_label_values(&[&*flag.name, v]));
            }
            h.flags.push(values);
        }
        self.revision.reset();
        self.revision.with_label_values(&[&snap.revision]).set(1);
        snap.metrics = Some(Arc::new(h));
    }

    /// The series of a route's session. A pool's "valid until" starts at least at now plus
    /// the idle time: pins written before this process started are not known.
    fn session_series(
        &self,
        snap: &Snapshot,
        route: &crate::routing::Route,
        s: &crate::routing::session::Session,
    ) -> crate::metrics::SessionSeries {
        use crate::routing::session::Ended;
        let floor = crate::clock::unix_ms() / 1000 + s.idle.as_secs() + s.refresh();
        let r = &*route.name;
        let pools = route
            .split
            .weights()
            .map(|(p, _)| {
                let name = &*snap.pools[p].name;
                let until = self.session_valid_until.with_label_values(&[r, name]);
                if until.get() == 0 {
                    until.set(i64::try_from(floor).unwrap_or(i64::MAX));
                }
                (
                    p,
                    ["pin", "split"].map(|by| self.session_requests.with_label_values(&[r, name, by])),
                    [Ended::Idle, Ended::MaxAge, Ended::Tripped, Ended::RolledBack]
                        .map(|e| self.session_pins_ended.with_label_values(&[r, name, e.name()])),
                    until,
                )
            })
            .collect();
        crate::metrics::SessionSeries {
            pools,
            unnamed: [Ended::Removed, Ended::Forged]
                .map(|e| self.session_pins_ended.with_label_values(&[r, "", e.name()])),
        }
    }

    /// Sets the gauges of `route` (its effective shares, whether it is tripped, its rollout
    /// step): at [`Metrics::attach`], and for each route a trip, a rollout step or a command
    /// changes in a snapshot that keeps the live one's series.
    pub fn route_gauges(&self, snap: &Snapshot, route: &crate::routing::Route) {
        // The weight gauge shows the effective split: what requests get now.
        for (pool, _) in route.split.weights() {
            let share = route
                .effective
                .shares()
                .find(|&(p, _)| p == pool)
                .map_or(0.0, |(_, s)| s);
            self.route_weight
                .with_label_values(&[&*route.name, &*snap.pools[pool].name])
                .set(share);
        }
        if snap.guard(route).is_some() || !route.runtime.tripped.is_empty() {
            let tripped = i64::from(!route.runtime.tripped.is_empty());
            self.route_tripped.with_label_values(&[&*route.name]).set(tripped);
        }
        if let (Some(r), Some(step)) = (snap.rollout(route), route.runtime.rollout_step) {
            self.rollout_step
                .with_label_values(&[&*route.name])
                .set(i64::from(r.steps[step]));
            self.rollout_step_index
                .with_label_values(&[&*route.name])
                .set(step as i64);
        }
        // What the other replicas of a fleet read to converge on this route's state.
        // (Once a route has changed, it stays exported: a reset after a rollback must reach
        // the other replicas too.)
        if snap.guard(route).is_some() || snap.rollout(route).is_some() || route.runtime.changed_ms > 0 {
            let baseline = route.baseline;
            for (pool, _) in route.split.weights().filter(|&(p, _)| p != baseline) {
                let state = if route.runtime.rolled_back.contains(&pool) {
                    2
                } else {
                    i64::from(route.runtime.tripped.contains(&pool))
                };
                self.pool_tripped
                    .with_label_values(&[&*route.name, &*snap.pools[pool].name])
                    .set(state);
            }
            let fingerprint = crate::runtime::overlay::fingerprint_label(
                &crate::runtime::overlay::fingerprint(snap, route),
            );
            let origin = route.runtime.origin.as_deref().unwrap_or("").to_owned();
            let mut labels = self.route_labels.lock().unwrap_or_else(|e| e.into_inner());
            let now = [fingerprint, origin];
            if let Some(was) = labels.insert(route.name.to_string(), now.clone()) {
                if was != now {
                    let _ = self
                        .route_changed
                        .remove_label_values(&[&*route.name, &was[0], &was[1]]);
                    let _ = self.route_config.remove_label_values(&[&*route.name, &was[0]]);
                }
            }
            self.route_changed
                .with_label_values(&[&*route.name, &now[0], &now[1]])
                .set(route.runtime.changed_ms as f64 / 1000.0);
            if route.runtime.config_ms > 0 {
                self.route_config
                    .with_label_values(&[&*route.name, &now[0]])
                    .set(route.runtime.config_ms as f64 / 1000.0);
            }
        }
    }

    /// Sets the experiments' user counts (read when Prometheus scrapes).
    pub fn experiments(&self, snap: &Snapshot) {
        for e in snap.experiments.iter() {
            for (arm, a) in e.arms.iter().zip(&e.results.arms) {
                for (kind, sketch) in [("exposed", &a.exposed), ("converted", &a.converted)] {
                    self.experiment_users
                        .with_label_values(&[&e.name, arm, kind])
                        .set(sketch.count() as f64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route's origin changes without a reload (another replica's change taken): the
    /// series with the old origin goes, or replicas would read two changes of one route.
    #[test]
    fn a_routes_change_is_exported_once_with_its_latest_origin() {
        let text = "[listen]\nhttp = \"127.0.0.1:0\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.canary]\nendpoints = [\"127.0.0.1:2\"]\n\
                    [[routes]]\nname = \"web\"\nsplit = { blue = 90, canary = 10 }\nguard = { baseline = \"blue\" }\n";
        let mut snap = crate::runtime::load_str(text, std::path::Path::new("t.toml"), None).unwrap();
        let metrics = Metrics::new();
        metrics.attach(&mut snap);
        for origin in ["replica-a", "replica-b"] {
            let route = Arc::make_mut(&mut snap.routing.routes[0]);
            route.runtime.origin = Some(origin.into());
            route.runtime.changed_ms = 1_000;
            let route = snap.routes[0].clone();
            metrics.route_gauges(&snap, &route);
        }
        let text = metrics.render();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("switchyard_route_changed_timestamp_seconds{"))
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("origin=\"replica-b\""), "{lines:?}");
    }
}
