//! What changes a route's live state: a guard's trip, a rollout step, an operator's command,
//! and another replica's change taken through the fleet. Each is logged, saved, notified and
//! published by the control task ([`super::Control`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Control, Happened};
use crate::clock::{timestamp, unix_ms};
use crate::control::{Action, Actor, CommandError};
use crate::guard::Figures;
use crate::notify::Event;
use crate::runtime::overlay::{Progress, Trip};

impl Control {
    pub(super) fn trip(&mut self, route: &str, pool: &str, reason: &str, figures: Figures) {
        let snap = self.state.snapshot.load_full();
        let Some(r) = snap.route_by_name(route) else {
            return;
        };
        let Some(g) = snap.guard(r) else { return };
        let Some(p) = snap.pool_index(pool) else { return };
        if g.dry_run || p == g.baseline || r.runtime.tripped.contains(&p) {
            return;
        }
        let at = timestamp(SystemTime::now());
        let entry = self.overlay.entry(&snap, r);
        entry.changed_ms = unix_ms();
        entry.origin = None;
        entry.trips.push(Trip {
            pool: pool.to_owned(),
            reason: reason.to_owned(),
            at: at.clone(),
            manual: false,
            requests: figures.requests,
            errors: figures.errors,
            p99_ms: figures.p99.map(|d| d.as_secs_f64() * 1000.0),
        });
        let baseline = &snap.pools[g.baseline].name;
        tracing::warn!(
            route,
            pool,
            baseline = %baseline,
            requests = figures.requests,
            errors = figures.errors,
            error_rate = figures.error_rate(),
            p99_ms = figures.p99.map(|d| d.as_millis() as u64),
            "guard tripped: {pool}'s users go to {baseline}: {reason}"
        );
        self.state.metrics.trip(route, pool);
        let moves = self.republish(route);
        let webhook = self.notifies("trip");
        let fields = serde_json::json!({
            "pool": pool,
            "baseline": baseline.to_string(),
            "reason": reason,
            "requests": figures.requests,
            "errors": figures.errors,
            "error_rate": figures.error_rate(),
            "p50_ms": figures.p50.map(|d| d.as_secs_f64() * 1000.0),
            "p99_ms": figures.p99.map(|d| d.as_secs_f64() * 1000.0),
        });
        self.record(
            Happened {
                kind: Event::Trip,
                route,
                by: None,
                fields: fields.clone(),
                text: format!("{pool} tripped, its users go to {baseline}: {reason}"),
                webhook,
            },
            &moves,
        );
        if let Some(ro) = snap.rollout(r).filter(|ro| ro.pool == p) {
            let pct = ro.steps[r.runtime.rollout_step.unwrap_or(0).min(ro.steps.len() - 1)];
            self.record(
                Happened {
                    kind: Event::RolloutAborted,
                    route,
                    by: None,
                    fields,
                    text: format!("the rollout of {pool} is aborted at {pct}%: {reason}"),
                    webhook,
                },
                &moves,
            );
        }
    }

    pub(super) fn advance(&mut self, route: &str, from_step: usize) {
        let snap = self.state.snapshot.load_full();
        let Some(r) = snap.route_by_name(route) else {
            return;
        };
        let (Some(rollout), false) = (snap.rollout(r), !r.runtime.tripped.is_empty()) else {
            return;
        };
        let entry = self.overlay.entry(&snap, r);
        let Some(progress) = entry.rollout.as_mut() else {
            return;
        };
        if progress.step != from_step || from_step + 1 >= rollout.steps.len() {
            return;
        }
        progress.step += 1;
        progress.since = timestamp(SystemTime::now());
        let step = progress.step;
        entry.changed_ms = unix_ms();
        entry.origin = None;
        tracing::info!(route, pool = %snap.pools[rollout.pool].name, percent = rollout.steps[step], "rollout: next step after the guard passed for {:?}", rollout.every);
        let moves = self.republish(route);
        let step_of = Step {
            route,
            pool: &snap.pools[rollout.pool].name,
            rollout,
            step,
            why: "the guard passed",
            by: None,
            webhook: self.notifies("rollout step"),
        };
        self.record_step(step_of, &moves);
    }

    /// Records a rollout's new step (and its end, at the last).
    pub(super) fn record_step(&self, s: Step<'_>, moves: &[(String, String, f64)]) {
        let Step {
            route,
            pool,
            rollout,
            step,
            why,
            by,
            webhook,
        } = s;
        let pct = rollout.steps[step];
        let fields = serde_json::json!({
            "pool": pool,
            "step": step + 1,
            "steps": rollout.steps.len(),
            "percent": pct,
            "why": why,
        });
        let text = format!(
            "the rollout of {pool} moves to {pct}% (step {} of {}; {why})",
            step + 1,
            rollout.steps.len()
        );
        self.record(
            Happened {
                kind: Event::RolloutStep,
                route,
                by,
                fields: fields.clone(),
                text,
                webhook,
            },
            moves,
        );
        if step + 1 == rollout.steps.len() {
            self.record(
                Happened {
                    kind: Event::RolloutDone,
                    route,
                    by,
                    fields,
                    text: format!("the rollout of {pool} is done: {pct}%"),
                    webhook,
                },
                moves,
            );
        }
    }

    pub(super) fn command(
        &mut self,
        route: &str,
        action: Action,
        by: &Actor,
    ) -> Result<String, CommandError> {
        let snap = self.state.snapshot.load_full();
        let r = snap
            .route_by_name(route)
            .ok_or_else(|| CommandError::NotFound(format!("there is no route named {route:?}")))?;
        let baseline = r.baseline;
        let at = timestamp(SystemTime::now());
        let message = match action {
            Action::Rollback => {
                let pools: Vec<usize> = r
                    .split
                    .weights()
                    .map(|(p, _)| p)
                    .filter(|&p| p != baseline && !r.runtime.tripped.contains(&p))
                    .collect();
                if pools.is_empty() {
                    // Already done: as a second reset, a second rollback succeeds.
                    return Ok(format!(
                        "{route}: every user is already on {} (nothing changed)",
                        snap.pools[baseline].name
                    ));
                }
                let entry = self.overlay.entry(&snap, r);
                for &p in &pools {
                    entry.trips.push(Trip {
                        pool: snap.pools[p].name.to_string(),
                        reason: "rolled back by an operator".into(),
                        at: at.clone(),
                        manual: true,
                        requests: 0,
                        errors: 0,
                        p99_ms: None,
                    });
                }
                tracing::warn!(route, baseline = %snap.pools[baseline].name, "rolled back by an operator");
                format!("{route}: every user goes to {}", snap.pools[baseline].name)
            }
            Action::Reset => {
                let entry = self.overlay.entry(&snap, r);
                let had = entry.trips.len();
                entry.trips.clear();
                if snap.rollout(r).is_some() {
                    entry.rollout = Some(Progress { step: 0, since: at });
                }
                tracing::info!(route, cleared = had, "reset by an operator");
                format!(
                    "{route}: {had} trip(s) cleared{}",
                    if snap.rollout(r).is_some() {
                        "; the rollout starts again from its first step"
                    } else {
                        ""
                    }
                )
            }
            Action::Promote => {
                let rollout = snap.rollout(r).ok_or_else(|| {
                    CommandError::Conflict(format!("{route} has no [routes.rollout] to promote"))
                })?;
                if !r.runtime.tripped.is_empty() {
                    return Err(CommandError::Conflict(format!(
                        "{route} is tripped: reset it before promoting"
                    )));
                }
                let entry = self.overlay.entry(&snap, r);
                let progress = entry.rollout.get_or_insert(Progress {
                    step: 0,
                    since: at.clone(),
                });
                if progress.step + 1 >= rollout.steps.len() {
                    return Err(CommandError::Conflict(format!(
                        "{route}'s rollout is already at its last step ({}%)",
                        rollout.steps[progress.step]
                    )));
                }
                progress.step += 1;
                progress.since = at;
                let pct = rollout.steps[progress.step];
                tracing::info!(route, percent = pct, "rollout promoted by an operator");
                format!("{route}: {} now gets {pct}%", snap.pools[rollout.pool].name)
            }
        };
        if let Some(entry) = self.overlay.routes.get_mut(route) {
            entry.changed_ms = unix_ms();
            entry.origin = None;
        }
        let moves = self.republish(route);
        let snap = self.state.snapshot.load_full();
        let happened = |kind, fields, text| Happened {
            kind,
            route,
            by: Some(by),
            fields,
            text,
            webhook: true,
        };
        match action {
            Action::Rollback => self.record(
                happened(
                    Event::Rollback,
                    serde_json::json!({ "baseline": snap.pools[baseline].name.to_string() }),
                    format!(
                        "rolled back by an operator: every user goes to {}",
                        snap.pools[baseline].name
                    ),
                ),
                &moves,
            ),
            Action::Reset => self.record(
                happened(
                    Event::Reset,
                    serde_json::json!({}),
                    format!(
                        "reset by an operator: {}",
                        message.strip_prefix(&format!("{route}: ")).unwrap_or(&message)
                    ),
                ),
                &moves,
            ),
            Action::Promote => {
                let r = snap.route_by_name(route);
                if let Some((ro, step)) = r.and_then(|r| snap.rollout(r).zip(r.runtime.rollout_step)) {
                    let s = Step {
                        route,
                        pool: &snap.pools[ro.pool].name,
                        rollout: ro,
                        step,
                        why: "promoted by an operator",
                        by: Some(by),
                        webhook: true,
                    };
                    self.record_step(s, &moves);
                }
            }
        }
        Ok(message)
    }

    /// Takes another replica's more recent state of a route (trips, rollout step), as
    /// Prometheus showed it, naming the replica where it happened. Its webhooks: an operator's
    /// command was notified where it was given; a trip or a step is notified here when this
    /// replica is the fleet's notifier (the first replica by name), so one incident sends one.
    pub(super) fn adopt(&mut self, a: crate::control::Adopt) {
        let snap = self.state.snapshot.load_full();
        let Some(r) = snap.route_by_name(&a.route) else {
            return;
        };
        let fingerprint =
            crate::runtime::overlay::fingerprint_label(&crate::runtime::overlay::fingerprint(&snap, r));
        if fingerprint != a.fingerprint {
            return;
        }
        let at = timestamp(UNIX_EPOCH + Duration::from_millis(a.changed_ms));
        let entry = self.overlay.entry(&snap, r);
        if entry.changed_ms >= a.changed_ms {
            return;
        }
        let before: Vec<(String, bool)> = entry.trips.iter().map(|t| (t.pool.clone(), t.manual)).collect();
        let step_before = entry.rollout.as_ref().map(|p| p.step);
        if !a.rollback_only {
            entry
                .trips
                .retain(|t| a.tripped.iter().any(|(p, m)| *p == t.pool && *m == t.manual));
        }
        let mut new_trips = Vec::new();
        for (pool, manual) in &a.tripped {
            if snap.pool_index(pool).is_none() {
                continue;
            }
            if let Some(t) = entry.trips.iter_mut().find(|t| t.pool == *pool) {
                // A rollback elsewhere outranks a trip here.
                if *manual && !t.manual {
                    t.manual = true;
                    t.reason = format!("rolled back by an operator on replica {}", a.from);
                }
                continue;
            }
            entry.trips.push(Trip {
                pool: pool.clone(),
                reason: if *manual {
                    format!("rolled back by an operator on replica {}", a.from)
                } else {
                    format!(
                        "tripped on replica {} (seen through the fleet's Prometheus)",
                        a.from
                    )
                },
                at: at.clone(),
                manual: *manual,
                requests: 0,
                errors: 0,
                p99_ms: None,
            });
            if !*manual {
                new_trips.push(pool.clone());
            }
        }
        if let (Some(ro), Some(step), false) = (snap.rollout(r), a.step, a.rollback_only) {
            if step < ro.steps.len() {
                entry.rollout = Some(Progress {
                    step,
                    since: at.clone(),
                });
            }
        }
        entry.changed_ms = a.changed_ms;
        entry.origin = Some(a.from.clone());
        let after: Vec<(String, bool)> = entry.trips.iter().map(|t| (t.pool.clone(), t.manual)).collect();
        let step_after = entry.rollout.as_ref().map(|p| p.step);
        tracing::info!(
            route = %a.route,
            from = %a.from,
            tripped = ?after,
            was = ?before,
            step = ?a.step,
            rollback_only = a.rollback_only,
            "fleet: replica {} changed this route at {at}; taking its {}",
            a.from,
            if a.rollback_only { "rollback (it is on another split)" } else { "state" }
        );
        let moves = self.republish(&a.route);
        // The trail records the adoption; the fleet's notifier replica sends the webhooks of
        // the trips and steps it brought, as if they happened here.
        let webhook = self.state.notifies.load(std::sync::atomic::Ordering::Acquire);
        let taken: Vec<serde_json::Value> = after
            .iter()
            .map(|(p, manual)| serde_json::json!({ "pool": p, "rolled_back": manual }))
            .collect();
        self.record(
            Happened {
                kind: Event::Adopt,
                route: &a.route,
                by: None,
                fields: serde_json::json!({
                    "replica": a.from,
                    "changed_at": at,
                    "tripped": taken,
                    "step": step_after.map(|s| s + 1),
                    "rollback_only": a.rollback_only,
                }),
                text: format!(
                    "took replica {}'s {} of {at}: tripped {:?}{}",
                    a.from,
                    if a.rollback_only { "rollback" } else { "state" },
                    after.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
                    step_after.map_or(String::new(), |s| format!(", rollout step {}", s + 1))
                ),
                webhook,
            },
            &moves,
        );
        if !webhook {
            return;
        }
        let baseline = snap.pools[r.baseline].name.to_string();
        for pool in new_trips {
            let reason = format!("tripped on replica {}", a.from);
            let fields = serde_json::json!({ "pool": pool, "baseline": baseline, "reason": reason, "replica": a.from });
            let text = format!("{pool} tripped on replica {}, its users go to {baseline}", a.from);
            self.notify_only(Event::Trip, &a.route, &moves, fields, &text);
        }
        if let (Some(ro), Some(step)) = (snap.rollout(r), step_after) {
            if step_after > step_before && after.is_empty() {
                let why = format!("the guard passed on replica {}", a.from);
                let pct = ro.steps[step];
                let fields = serde_json::json!({
                    "pool": &*snap.pools[ro.pool].name,
                    "step": step + 1,
                    "steps": ro.steps.len(),
                    "percent": pct,
                    "why": why,
                });
                let pool = &snap.pools[ro.pool].name;
                let text = format!("the rollout of {pool} moves to {pct}% ({why})");
                self.notify_only(Event::RolloutStep, &a.route, &moves, fields.clone(), &text);
                if step + 1 == ro.steps.len() {
                    let text = format!("the rollout of {pool} is done: {pct}%");
                    self.notify_only(Event::RolloutDone, &a.route, &moves, fields, &text);
                }
            }
        }
    }
}

/// A rollout's new step, as [`Control::record_step`] records it.
pub(super) struct Step<'a> {
    pub route: &'a str,
    pub pool: &'a str,
    pub rollout: &'a crate::guard::RolloutConfig,
    pub step: usize,
    pub why: &'a str,
    pub by: Option<&'a Actor>,
    pub webhook: bool,
}
