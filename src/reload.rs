//! The only writer of the snapshot. Everything that changes routing becomes a [`Trigger`] for
//! one task: the file changing on disk, `SIGHUP`, `POST /api/reload`, a guard's trip, a rollout
//! step, and the operator's `rollback`, `reset` and `promote`. Because one task owns every write,
//! a file reload can never silently undo a trip: trips and rollout steps live in an
//! [`Overlay`] that is applied to every snapshot this task publishes and written to a state file.
//!
//! A reload reads and compiles the file off the request path, refuses changes that cannot apply
//! (listen and admin addresses), swaps the snapshot atomically, and logs what changed and how
//! many users move. A bad file changes nothing: the error is logged, counted and kept for
//! `GET /api/config`.
//!
//! The watcher watches the file's **directory**, not the file: editors that save by writing a
//! new file and renaming it, `cp` over the file, and Kubernetes' `..data` symlink swap all show
//! up as events there. Events are debounced (a quiet period of 200 ms, at most 1 s), and a file
//! whose text did not change is not reloaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};

use crate::config::{self, LoadError};
use crate::guard::overlay::{self, Overlay, Progress, Trip};
use crate::guard::Figures;
use crate::notify::Event;
use crate::routing::{diff, Snapshot};
use crate::state::{timestamp, ReloadReport, State, StateLoadError, StateSaveError};
use crate::upstream::health::Checks;

/// Quiet period after the last file event before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest wait when events keep coming.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

/// Something that changes routing.
pub enum Trigger {
    /// The file's directory changed (reload only if the text changed).
    File,
    /// SIGHUP.
    Signal,
    /// `POST /api/reload`; the report goes back on the channel.
    Api(oneshot::Sender<ReloadReport>),
    /// The guard found `pool` of `route` failing.
    Trip {
        route: String,
        pool: String,
        reason: String,
        figures: Figures,
    },
    /// The guard found `route`'s rollout due for its next step.
    Advance { route: String, from_step: usize },
    /// An operator's command from the admin API.
    Command {
        route: String,
        action: Action,
        reply: oneshot::Sender<Result<String, CommandError>>,
    },
}

/// The operator's commands on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send every user of the route to its baseline.
    Rollback,
    /// Clear trips (and restart the rollout from its first step).
    Reset,
    /// Move the rollout to its next step now.
    Promote,
}

/// Why a command was refused: `NotFound` (no such route) or `Conflict` (not possible now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    NotFound(String),
    Conflict(String),
}

/// The control task's own state.
pub struct Control {
    state: Arc<State>,
    path: Option<PathBuf>,
    state_file: Option<StateFile>,
    overlay: Overlay,
    checks: Checks,
}

/// Where trips and rollout steps are kept across restarts.
#[derive(Debug, Clone)]
pub struct StateFile {
    pub path: PathBuf,
    /// False when the file found at start could not be read nor moved aside: it is then
    /// never written, so the record it may hold is not lost.
    pub writable: bool,
}

/// The state of a first snapshot, read before it serves.
pub struct Prepared {
    pub overlay: Overlay,
    pub state_file: Option<StateFile>,
    /// The file could not be read: every guarded route is held at its baseline.
    pub problem: Option<StateLoadError>,
}

/// Applies the state file (`[state] path`, else beside the config at `path`) to a first
/// snapshot, before it serves, so a restart keeps trips and rollout steps.
///
/// A file that cannot be read or parsed is never overwritten: it is moved aside, and every
/// guarded route is held at its baseline until an operator resets it. An unreadable record
/// of a trip must not send users back to a pool that may be failing.
pub fn prepare(snap: &mut Snapshot, path: Option<&Path>) -> Prepared {
    let file = snap.state_path.clone().or_else(|| path.map(overlay::state_path));
    let now = SystemTime::now();
    let at = timestamp(now);
    let mut writable = true;
    let mut problem = None;
    let mut ov = match file.as_deref().map(Overlay::load) {
        None => Overlay::default(),
        Some(Ok(ov)) => ov,
        Some(Err(error)) => {
            let file = file.as_deref().expect("loaded from it");
            let kept_aside = match overlay::keep_aside(file, now) {
                Ok(aside) => Some(aside),
                Err(e) => {
                    writable = false;
                    tracing::error!(
                        "cannot move the unreadable state file {} aside ({e}): it will not be written",
                        file.display()
                    );
                    None
                }
            };
            let aside = kept_aside
                .as_ref()
                .map_or("left in place".to_owned(), |a| format!("kept as {}", a.display()));
            let why = format!(
                "held at the baseline: the state file could not be read ({aside}); reset the route once it is checked"
            );
            let mut ov = Overlay::default();
            let held = ov.hold_all(snap, &why, &at);
            tracing::error!(
                held = ?held,
                "the state file {} could not be read ({error}); {aside}; every guarded route is held at its baseline until it is reset",
                file.display()
            );
            problem = Some(StateLoadError {
                at: at.clone(),
                error,
                kept_aside,
                held,
            });
            ov
        }
    };
    for line in ov.reconcile(snap, &at) {
        tracing::info!("state file: {line}");
    }
    ov.apply(snap);
    for (name, entry) in &ov.routes {
        for t in &entry.trips {
            tracing::warn!(route = %name, pool = %t.pool, since = %t.at, "still tripped (from the state file): {}", t.reason);
        }
    }
    Prepared {
        overlay: ov,
        state_file: file.map(|path| StateFile { path, writable }),
        problem,
    }
}

/// Runs the control task until every trigger sender is gone.
pub async fn run(
    state: Arc<State>,
    path: Option<PathBuf>,
    overlay: Overlay,
    state_file: Option<StateFile>,
    mut triggers: mpsc::Receiver<Trigger>,
) {
    let mut c = Control {
        state,
        path,
        state_file,
        overlay,
        checks: Checks::default(),
    };
    c.state.overlay.store(Arc::new(c.overlay.clone()));
    c.checks.reconcile(&c.state.snapshot.load());
    // Rewrite the file only if it holds something (entries the config dropped, say): a proxy
    // without trips does not need to write beside its config (which may be read-only).
    if !c.overlay.routes.is_empty() || c.state_file.as_ref().is_some_and(|f| f.path.exists()) {
        c.save();
    }
    while let Some(trigger) = triggers.recv().await {
        match trigger {
            Trigger::File => {
                c.reload(false).await;
            }
            Trigger::Signal => {
                c.reload(true).await;
            }
            Trigger::Api(tx) => {
                let report = c.reload(true).await;
                let _ = tx.send(report);
            }
            Trigger::Trip {
                route,
                pool,
                reason,
                figures,
            } => c.trip(&route, &pool, &reason, figures),
            Trigger::Advance { route, from_step } => c.advance(&route, from_step),
            Trigger::Command { route, action, reply } => {
                let _ = reply.send(c.command(&route, action));
            }
        }
    }
}

impl Control {
    /// Publishes the current snapshot again with the overlay applied, and saves the overlay.
    /// Returns the users that `route`'s change moved: `(from pool, to pool, share)`, exact,
    /// and logs them.
    fn republish(&mut self, route: &str) -> Vec<(String, String, f64)> {
        let before = self.state.snapshot.load_full();
        let mut next = (*before).clone();
        self.overlay.apply(&mut next);
        let moves = match (before.route_by_name(route), next.route_by_name(route)) {
            (Some(a), Some(b)) => diff::split_moves(&before, &a.effective, &next, &b.effective),
            _ => Vec::new(),
        };
        if !moves.is_empty() {
            tracing::info!(route, "users moved: {}", show_moves(&moves));
        }
        self.state.publish(next);
        self.state.overlay.store(Arc::new(self.overlay.clone()));
        self.save();
        moves
    }

    /// Sends a notification about `route` (its fields: `extra`, with the users it moved).
    fn notify(
        &self,
        event: Event,
        route: &str,
        moves: &[(String, String, f64)],
        mut extra: serde_json::Value,
        text: &str,
    ) {
        if let Some(map) = extra.as_object_mut() {
            map.insert("route".into(), route.into());
            map.insert(
                "moved".into(),
                moves
                    .iter()
                    .map(|(a, b, s)| serde_json::json!({ "from": a, "to": b, "share": s }))
                    .collect(),
            );
        }
        self.state
            .notifier
            .send(event, extra, &format!("route {route}: {text}"));
    }

    /// Writes the overlay to the state file. A failure is logged, counted and shown by
    /// `/api/config` and `status` until a save succeeds (and notified when it starts).
    fn save(&self) {
        let Some(f) = &self.state_file else { return };
        let result = match f.writable {
            true => self.overlay.save(&f.path).map_err(|e| e.to_string()),
            false => Err("the unreadable state file found at start is left as it was".to_owned()),
        };
        let error = match result {
            Ok(()) => {
                if self.state.config.load().state.save_error.is_some() {
                    tracing::info!("the state file {} is written again", f.path.display());
                    self.state.config.rcu(|c| {
                        let mut c = (**c).clone();
                        c.state.save_error = None;
                        c
                    });
                }
                return;
            }
            Err(e) => e,
        };
        tracing::error!("cannot write the state file {}: {error} — trips and rollout steps will not survive a restart; set [state] path to a writable file", f.path.display());
        self.state.metrics.state_save_error();
        if self.state.config.load().state.save_error.is_none() {
            self.state.notifier.send(
                Event::StateSaveFailed,
                serde_json::json!({ "path": f.path, "error": error }),
                &format!("the state file {} cannot be written ({error}): trips and rollout steps will not survive a restart", f.path.display()),
            );
        }
        let failure = StateSaveError {
            at: timestamp(SystemTime::now()),
            error,
        };
        self.state.config.rcu(|c| {
            let mut c = (**c).clone();
            c.state.save_error = Some(failure.clone());
            c
        });
    }

    fn trip(&mut self, route: &str, pool: &str, reason: &str, figures: Figures) {
        let snap = self.state.snapshot.load_full();
        let Some(r) = snap.route_by_name(route) else {
            return;
        };
        let Some(g) = &r.guard else { return };
        let Some(p) = snap.pool_index(pool) else { return };
        if g.dry_run || p == g.baseline || r.runtime.tripped.contains(&p) {
            return;
        }
        let at = timestamp(SystemTime::now());
        let entry = self.overlay.entry(&snap, r);
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
        self.notify(
            Event::Trip,
            route,
            &moves,
            fields.clone(),
            &format!("{pool} tripped, its users go to {baseline}: {reason}"),
        );
        if let Some(ro) = r.rollout.as_ref().filter(|ro| ro.pool == p) {
            let pct = ro.steps[r.runtime.rollout_step.unwrap_or(0).min(ro.steps.len() - 1)];
            self.notify(
                Event::RolloutAborted,
                route,
                &moves,
                fields,
                &format!("the rollout of {pool} is aborted at {pct}%: {reason}"),
            );
        }
    }

    fn advance(&mut self, route: &str, from_step: usize) {
        let snap = self.state.snapshot.load_full();
        let Some(r) = snap.route_by_name(route) else {
            return;
        };
        let (Some(rollout), false) = (&r.rollout, !r.runtime.tripped.is_empty()) else {
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
        tracing::info!(route, pool = %snap.pools[rollout.pool].name, percent = rollout.steps[step], "rollout: next step after the guard passed for {:?}", rollout.every);
        let moves = self.republish(route);
        self.notify_step(
            route,
            &snap.pools[rollout.pool].name,
            rollout,
            step,
            "the guard passed",
            &moves,
        );
    }

    /// Notifies a rollout's new step (and its end, at the last).
    fn notify_step(
        &self,
        route: &str,
        pool: &str,
        rollout: &crate::guard::RolloutConfig,
        step: usize,
        why: &str,
        moves: &[(String, String, f64)],
    ) {
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
        self.notify(Event::RolloutStep, route, moves, fields.clone(), &text);
        if step + 1 == rollout.steps.len() {
            self.notify(
                Event::RolloutDone,
                route,
                moves,
                fields,
                &format!("the rollout of {pool} is done: {pct}%"),
            );
        }
    }

    fn command(&mut self, route: &str, action: Action) -> Result<String, CommandError> {
        let snap = self.state.snapshot.load_full();
        let r = snap
            .route_by_name(route)
            .ok_or_else(|| CommandError::NotFound(format!("there is no route named {route:?}")))?;
        let baseline = r.baseline();
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
                    return Err(CommandError::Conflict(format!(
                        "every user of {route} is already on {}",
                        snap.pools[baseline].name
                    )));
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
                if r.rollout.is_some() {
                    entry.rollout = Some(Progress { step: 0, since: at });
                }
                tracing::info!(route, cleared = had, "reset by an operator");
                format!(
                    "{route}: {had} trip(s) cleared{}",
                    if r.rollout.is_some() {
                        "; the rollout starts again from its first step"
                    } else {
                        ""
                    }
                )
            }
            Action::Promote => {
                let rollout = r.rollout.as_ref().ok_or_else(|| {
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
        let moves = self.republish(route);
        let snap = self.state.snapshot.load_full();
        match action {
            Action::Rollback => self.notify(
                Event::Rollback,
                route,
                &moves,
                serde_json::json!({ "baseline": snap.pools[baseline].name.to_string() }),
                &format!(
                    "rolled back by an operator: every user goes to {}",
                    snap.pools[baseline].name
                ),
            ),
            Action::Reset => self.notify(
                Event::Reset,
                route,
                &moves,
                serde_json::json!({}),
                &format!("reset by an operator: {message}"),
            ),
            Action::Promote => {
                let r = snap.route_by_name(route);
                if let Some((ro, step)) = r.and_then(|r| r.rollout.as_ref().zip(r.runtime.rollout_step)) {
                    self.notify_step(
                        route,
                        &snap.pools[ro.pool].name,
                        ro,
                        step,
                        "promoted by an operator",
                        &moves,
                    );
                }
            }
        }
        Ok(message)
    }

    /// One reload of the file. Unless `force`d, a file whose text is unchanged is left alone.
    async fn reload(&mut self, force: bool) -> ReloadReport {
        let Some(path) = self.path.clone() else {
            return ReloadReport {
                at: timestamp(SystemTime::now()),
                result: "error",
                revision: self.state.snapshot.load().revision.clone(),
                error: Some(
                    "this proxy was not started from a config file, so there is nothing to reload".into(),
                ),
                changes: Vec::new(),
            };
        };
        let report = reload(&self.state, &path, force, &mut self.overlay).await;
        if report.result == "ok" {
            self.state.overlay.store(Arc::new(self.overlay.clone()));
            self.checks.reconcile(&self.state.snapshot.load());
            self.save();
        }
        report
    }
}

/// One reload of `path`, applying `overlay` to the new snapshot. Unless `force`d, a file whose
/// text is unchanged is left alone.
async fn reload(state: &State, path: &Path, force: bool, overlay: &mut Overlay) -> ReloadReport {
    let current = state.snapshot.load_full();
    let report = |result, revision: &str, error: Option<String>, changes| ReloadReport {
        at: timestamp(SystemTime::now()),
        result,
        revision: revision.to_owned(),
        error,
        changes,
    };
    let text = match tokio::fs::read_to_string(path).await {
        Ok(t) => t,
        Err(e) => {
            let r = report(
                "error",
                &current.revision,
                Some(format!("cannot read {}: {e}", path.display())),
                Vec::new(),
            );
            return failed(state, r);
        }
    };
    if !force && config::revision(&text) == current.revision {
        return report("unchanged", &current.revision, None, Vec::new());
    }
    // Compiling reads certificate files and may be large: keep it off the async workers.
    let (p, old) = (path.to_owned(), current.clone());
    let compiled = tokio::task::spawn_blocking(move || config::load_str(&text, &p, Some(&old))).await;
    let mut new = match compiled {
        Ok(Ok(new)) => new,
        Ok(Err(LoadError::Invalid(d))) => {
            return failed(
                state,
                report("error", &current.revision, Some(d.to_string()), Vec::new()),
            )
        }
        Ok(Err(e)) => {
            return failed(
                state,
                report("error", &current.revision, Some(e.to_string()), Vec::new()),
            )
        }
        Err(e) => {
            return failed(
                state,
                report(
                    "error",
                    &current.revision,
                    Some(format!("reload task failed: {e}")),
                    Vec::new(),
                ),
            )
        }
    };
    if let Err(e) = fixed_settings(&current, &new, path) {
        return failed(state, report("error", &current.revision, Some(e), Vec::new()));
    }
    if let Err(e) = state.notifier.configure(&new.notify) {
        return failed(state, report("error", &current.revision, Some(e), Vec::new()));
    }
    let mut changes = describe(&diff::diff(&current, &new, SystemTime::now()));
    changes.extend(overlay.reconcile(&new, &timestamp(SystemTime::now())));
    overlay.apply(&mut new);
    let revision = new.revision.clone();
    state.publish(new);
    state.metrics.reload(true);
    tracing::info!(revision = %revision, previous = %current.revision, "config reloaded");
    for c in &changes {
        tracing::info!(revision = %revision, "reload: {c}");
    }
    let r = report("ok", &revision, None, changes);
    state.config.rcu(|c| {
        let mut c = (**c).clone();
        c.revision = revision.clone();
        c.loaded_at = r.at.clone();
        c.last_reload = Some(r.clone());
        c
    });
    r
}

fn failed(state: &State, r: ReloadReport) -> ReloadReport {
    state.metrics.reload(false);
    let error = r.error.clone().unwrap_or_default();
    state.notifier.send(
        Event::ReloadFailed,
        serde_json::json!({ "revision": r.revision, "error": error }),
        &format!(
            "a config reload failed; still serving revision {}: {}",
            r.revision,
            error.lines().next().unwrap_or_default()
        ),
    );
    tracing::warn!(
        "config reload failed; still serving revision {}:\n{}",
        r.revision,
        r.error.as_deref().unwrap_or("")
    );
    state.config.rcu(|c| {
        let mut c = (**c).clone();
        c.last_reload = Some(r.clone());
        c.last_error = Some(r.clone());
        c
    });
    r
}

/// Settings bound at start (sockets) cannot change by reload; each change is named.
fn fixed_settings(old: &Snapshot, new: &Snapshot, path: &Path) -> Result<(), String> {
    let (o, n) = (&old.listen, &new.listen);
    let addr = |a: Option<std::net::SocketAddr>| a.map_or("unset".to_owned(), |a| a.to_string());
    let admin = |a: &Option<crate::routing::AdminSettings>| {
        a.as_ref().map_or("unset".to_owned(), |a| {
            format!("{} (token_env {:?})", a.listen, a.token_env)
        })
    };
    // Each setting as it reads, before and after.
    let settings = [
        ("listen.http", addr(o.http), addr(n.http)),
        ("listen.https", addr(o.https), addr(n.https)),
        (
            "listen.max_connections",
            o.max_connections.to_string(),
            n.max_connections.to_string(),
        ),
        (
            "listen.header_read_timeout",
            format!("{:?}", o.header_read_timeout),
            format!("{:?}", n.header_read_timeout),
        ),
        (
            "listen.max_header_bytes",
            o.max_header_bytes.to_string(),
            n.max_header_bytes.to_string(),
        ),
        (
            "listen.drain_timeout",
            format!("{:?}", o.drain_timeout),
            format!("{:?}", n.drain_timeout),
        ),
        ("listen.backlog", o.backlog.to_string(), n.backlog.to_string()),
        ("admin", admin(&old.admin), admin(&new.admin)),
        (
            "state.path",
            format!("{:?}", old.state_path),
            format!("{:?}", new.state_path),
        ),
    ];
    let errors: Vec<String> = settings
        .iter()
        .filter(|(_, was, now)| was != now)
        .map(|(key, was, now)| {
            format!(
                "{}: {key} cannot change by reload (was {was}, now {now}) — restart switchyard to apply it, or put the old value back",
                path.display()
            )
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// One line per change, for the log and the API.
/// Moves as the log says them: `10.00% canary→blue, ...`.
fn show_moves(moves: &[(String, String, f64)]) -> String {
    moves
        .iter()
        .map(|(a, b, s)| format!("{:.2}% {a}→{b}", s * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(d: &diff::Diff) -> Vec<String> {
    let show = |w: &[(String, u64)]| {
        w.iter()
            .map(|(p, w)| format!("{p}={w}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = Vec::new();
    for r in &d.routes {
        match r.change {
            "added" => out.push(format!("route {} added ({})", r.name, show(&r.weights_after))),
            "removed" => out.push(format!("route {} removed", r.name)),
            "changed" => {
                out.push(format!(
                    "route {}: {} → {}; {:.2}% of its users move ({})",
                    r.name,
                    show(&r.weights_before),
                    show(&r.weights_after),
                    r.moved() * 100.0,
                    show_moves(&r.moves)
                ));
            }
            _ => {}
        }
    }
    for f in &d.flags {
        match f.change {
            "added" | "removed" => out.push(format!("flag {} {}", f.name, f.change)),
            "changed" => out.push(format!(
                "flag {}: {:.2}% of users flip",
                f.name,
                f.flipped * 100.0
            )),
            _ => {}
        }
    }
    out
}

/// Watches the directory of `path` and sends [`Trigger::File`] after each debounced burst of
/// events. Keep the returned watcher alive as long as reloads should follow the file.
pub fn watch(path: &Path, triggers: mpsc::Sender<Trigger>) -> notify::Result<notify::RecommendedWatcher> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = mpsc::channel::<()>(64);
    // Our own state file lives in the same directory; its writes are not config changes.
    let state_file = overlay::state_path(path);
    let state_name = state_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let ours = !event.paths.is_empty()
            && event.paths.iter().all(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n == state_name || n == format!(".{state_name}.tmp")
                })
            });
        if !ours {
            // A full channel already holds a wake-up: dropping this one loses nothing.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while debounce(&mut rx, DEBOUNCE, DEBOUNCE_MAX).await {
            if triggers.send(Trigger::File).await.is_err() {
                return;
            }
        }
    });
    Ok(watcher)
}

/// Waits for an event, then for `quiet` without events (but no longer than `max` in all).
/// False when the event source is gone.
pub async fn debounce(events: &mut mpsc::Receiver<()>, quiet: Duration, max: Duration) -> bool {
    if events.recv().await.is_none() {
        return false;
    }
    let deadline = tokio::time::Instant::now() + max;
    loop {
        let wait = quiet.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, events.recv()).await {
            Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
            Ok(None) => return true,
            _ => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_becomes_one_reload_after_the_quiet_period() {
        let (tx, mut rx) = mpsc::channel(16);
        let start = tokio::time::Instant::now();
        tokio::spawn(async move {
            for _ in 0..5 {
                tx.send(()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Keep the channel open past the test's wait.
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        assert!(debounce(&mut rx, DEBOUNCE, DEBOUNCE_MAX).await);
        // Last event at 200 ms, then 200 ms of quiet.
        assert_eq!(start.elapsed(), Duration::from_millis(400));
        assert!(rx.try_recv().is_err(), "the burst was consumed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_still_reloads_within_the_maximum() {
        let (tx, mut rx) = mpsc::channel(16);
        let start = tokio::time::Instant::now();
        tokio::spawn(async move {
            loop {
                if tx.send(()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        assert!(debounce(&mut rx, DEBOUNCE, DEBOUNCE_MAX).await);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn no_source_no_reload() {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        drop(tx);
        assert!(!debounce(&mut rx, DEBOUNCE, DEBOUNCE_MAX).await);
    }
}
