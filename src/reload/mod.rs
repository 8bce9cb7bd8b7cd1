//! The only writer of the snapshot. Everything that changes routing becomes a [`Trigger`] for
//! one task: the file changing on disk, `SIGHUP`, `POST /api/reload`, a guard's trip, a rollout
//! step, and the operator's `rollback`, `reset` and `promote`. Because one task owns every write,
//! a file reload can never silently undo a trip: trips and rollout steps live in an
//! [`Overlay`] that is applied to every snapshot this task publishes and written to a state file.
//!
//! A reload reads, compiles and diffs the file on a blocking thread (the diff against the live
//! effective splits, trips and rollout steps applied), refuses changes that cannot apply
//! (listen and admin addresses), then the control task swaps the snapshot atomically and logs
//! what changed and how many users move. The control task never waits for a reload: trips,
//! rollout steps and commands are handled while one compiles; reloads asked meanwhile become
//! one more, after it. A bad file changes nothing: the error is logged, counted and kept for
//! `GET /api/config`. The state file is written by its own task ([`saver`]).

mod commands;
mod saver;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

pub use crate::control::{Action, CommandError, Trigger};

pub use saver::{keep_experiments, report_experiments_save, Saver};
pub use watch::{debounce, watch, Watching, DEBOUNCE, DEBOUNCE_MAX};

use crate::clock::timestamp;
use crate::config::{self, LoadError};
use crate::control::{Actor, ReloadReport};
use crate::notify::Event;
use crate::routing::diff;
use crate::runtime::overlay::{self, Overlay};
use crate::runtime::state::{State, StateLoadError};
use crate::runtime::Snapshot;
use crate::upstream::health::Checks;

use crate::clock::unix_ms;

/// The control task's own state.
pub struct Control {
    state: Arc<State>,
    path: Option<PathBuf>,
    saver: Saver,
    overlay: Overlay,
    /// Bumped at every change of `overlay`: a reload compiled against an older one applies
    /// the overlay again before it is published.
    overlay_version: u64,
    checks: Checks,
    /// The reload compiling now, with whoever waits for its report.
    compiling: Option<Asked>,
    /// Reloads asked while one compiles: one more, forced if any of them was.
    queued: Option<Asked>,
    compiled: mpsc::UnboundedSender<Compiled>,
}

/// A reload asked for: forced (even if the text is the same), who waits for its report, and who
/// asked (an operator rather than the file, when both did).
struct Asked {
    force: bool,
    replies: Vec<oneshot::Sender<ReloadReport>>,
    by: Actor,
}

impl Asked {
    fn join(&mut self, other: Asked) {
        self.force |= other.force;
        self.replies.extend(other.replies);
        if self.by.via == "file" {
            self.by = other.by;
        }
    }
}

/// What happened to a route, for the audit trail and the webhooks.
pub(super) struct Happened<'a> {
    pub kind: Event,
    pub route: &'a str,
    /// The operator's command, when it was one.
    pub by: Option<&'a Actor>,
    /// The event's own fields (pool, figures...).
    pub fields: serde_json::Value,
    pub text: String,
    /// Whether this replica sends its webhooks (with `[fleet]`, one replica sends those of
    /// automatic events); the audit trail records it either way.
    pub webhook: bool,
}

/// A reload as compiled on a blocking thread.
struct Compiled {
    /// The snapshot it was compiled and diffed against.
    base: Arc<Snapshot>,
    overlay_version: u64,
    outcome: Outcome,
}

enum Outcome {
    /// The text is the one served: nothing to do.
    Unchanged,
    Failed(String),
    Ready {
        new: Box<Snapshot>,
        /// The overlay reconciled with the new config (and applied to it).
        overlay: Overlay,
        /// What the overlay's reconciliation dropped or started.
        reconciled: Vec<String>,
        /// The changes of routes (against the live effective splits) and of flags.
        routes: Vec<String>,
        flags: Vec<String>,
    },
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
            let kept_aside = match crate::persist::keep_aside(file, now) {
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
    overlay::stamp_config(snap, None, unix_ms());
    // With a fleet, guarded routes wait at their baselines for the fleet's state.
    ov.fleet_hold = snap.fleet.is_some();
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
    let (compiled, mut done) = mpsc::unbounded_channel();
    // Rewrite the file only if it holds something (entries the config dropped, say): a proxy
    // without trips does not need to write beside its config (which may be read-only).
    let save_now = !overlay.routes.is_empty() || state_file.as_ref().is_some_and(|f| f.path.exists());
    let mut c = Control {
        saver: Saver::start(state.clone(), state_file),
        state,
        path,
        overlay,
        overlay_version: 0,
        checks: Checks::default(),
        compiling: None,
        queued: None,
        compiled,
    };
    c.state.overlay.store(Arc::new(c.overlay.clone()));
    c.checks.reconcile(&c.state.snapshot.load().pools);
    if save_now {
        c.saver.save(Arc::new(c.overlay.clone()), None);
    }
    loop {
        tokio::select! {
            trigger = triggers.recv() => match trigger {
                Some(t) => c.handle(t),
                None => break,
            },
            Some(compiled) = done.recv() => c.finish(compiled).await,
        }
    }
}

impl Control {
    fn handle(&mut self, trigger: Trigger) {
        match trigger {
            Trigger::File => self.ask_reload(false, None, Actor::of("file")),
            Trigger::Signal => self.ask_reload(true, None, Actor::of("signal")),
            Trigger::Api { reply, by } => self.ask_reload(true, Some(reply), by),
            Trigger::Trip {
                route,
                pool,
                reason,
                figures,
            } => self.trip(&route, &pool, &reason, figures),
            Trigger::Advance { route, from_step } => self.advance(&route, from_step),
            Trigger::Command {
                route,
                action,
                reply,
                by,
            } => {
                let result = self.command(&route, action, &by);
                // Answered once the state file has the change (or failed to take it).
                let (saved, on_disk) = oneshot::channel();
                self.saver.flush(saved);
                tokio::spawn(async move {
                    let _ = on_disk.await;
                    let _ = reply.send(result);
                });
            }
            Trigger::Flush(done) => self.saver.flush(done),
            Trigger::Adopt(a) => self.adopt(a),
            Trigger::FleetKnown => self.release_hold("the fleet answered"),
        }
    }

    /// Ends the hold at start (`[fleet]`): guarded routes follow their splits and state.
    fn release_hold(&mut self, why: &str) {
        if !self.overlay.fleet_hold {
            return;
        }
        self.overlay.fleet_hold = false;
        let snap = self.state.snapshot.load_full();
        let held: Vec<String> = snap
            .routes
            .iter()
            .filter(|r| r.runtime.held)
            .map(|r| r.name.to_string())
            .collect();
        tracing::info!(routes = ?held, "{why}: guarded routes follow the fleet's state and their splits");
        for route in held {
            self.republish(&route);
        }
    }

    /// Whether this replica sends the webhook of an automatic event (with `[fleet]`, one
    /// replica does for the fleet); says so in the log when it does not.
    fn notifies(&self, what: &str) -> bool {
        let yes = self.state.notifies.load(std::sync::atomic::Ordering::Acquire);
        if !yes {
            tracing::debug!("{what}: the fleet's notifier replica sends its webhook");
        }
        yes
    }

    /// Publishes the current snapshot again with the overlay applied, and saves the overlay.
    /// Returns the users that `route`'s change moved: `(from pool, to pool, share)`, exact,
    /// and logs them.
    fn republish(&mut self, route: &str) -> Vec<(String, String, f64)> {
        let before = self.state.snapshot.load_full();
        let mut next = (*before).clone();
        if let Some(i) = before.routes.iter().position(|r| &*r.name == route) {
            self.overlay.apply_route(&mut next, i);
        }
        let moves = match (before.route_by_name(route), next.route_by_name(route)) {
            (Some(a), Some(b)) => diff::split_moves(&before, &a.effective, &next, &b.effective),
            _ => Vec::new(),
        };
        if !moves.is_empty() {
            tracing::info!(route, "users moved: {}", diff::show_moves(&moves));
        }
        let old = self.state.publish_overlay(next);
        self.overlay_changed();
        drop(before);
        drop_elsewhere(old);
        moves
    }

    /// After every change of the overlay: published for the API, saved, and marked so that a
    /// reload compiled against the old one applies it again.
    fn overlay_changed(&mut self) {
        self.overlay_version += 1;
        let ov = Arc::new(self.overlay.clone());
        self.state.overlay.store(ov.clone());
        self.saver.save(ov, None);
    }

    /// Records what happened to a route in the audit trail (with the users it moved), and
    /// sends it to the webhooks that asked for it.
    fn record(&self, h: Happened<'_>, moves: &[(String, String, f64)]) {
        let Happened {
            kind,
            route,
            by,
            mut fields,
            text,
            webhook,
        } = h;
        if let Some(map) = fields.as_object_mut() {
            map.insert("route".into(), route.into());
            map.insert("moved".into(), moved(moves));
        }
        let text = match by {
            Some(by) => format!("{text} (by {})", by.describe()),
            None => text,
        };
        let pool = fields["pool"].as_str().map(str::to_owned);
        let record = crate::audit::Record {
            kind,
            route: Some(route),
            pool: pool.as_deref(),
            by,
            text,
            details: fields,
        };
        self.state.announce(record, webhook);
    }

    /// Sends a webhook about `route` without recording it (what an adoption brought: the
    /// trail has the adoption).
    fn notify_only(
        &self,
        event: Event,
        route: &str,
        moves: &[(String, String, f64)],
        mut fields: serde_json::Value,
        text: &str,
    ) {
        if let Some(map) = fields.as_object_mut() {
            map.insert("route".into(), route.into());
            map.insert("moved".into(), moved(moves));
        }
        self.state
            .notifier
            .send(event, fields, &format!("route {route}: {text}"));
    }

    /// Starts a reload, or queues one behind the reload compiling now.
    fn ask_reload(&mut self, force: bool, reply: Option<oneshot::Sender<ReloadReport>>, by: Actor) {
        let asked = Asked {
            force,
            replies: reply.into_iter().collect(),
            by,
        };
        let Some(path) = self.path.clone() else {
            let r = ReloadReport {
                at: timestamp(SystemTime::now()),
                result: "error",
                revision: self.state.snapshot.load().revision.clone(),
                error: Some(
                    "this proxy was not started from a config file, so there is nothing to reload".into(),
                ),
                changes: Vec::new(),
            };
            for reply in asked.replies {
                let _ = reply.send(r.clone());
            }
            return;
        };
        if self.compiling.is_some() {
            match &mut self.queued {
                Some(q) => q.join(asked),
                None => self.queued = Some(asked),
            }
            return;
        }
        self.compiling = Some(asked);
        let (base, overlay, version) = (
            self.state.snapshot.load_full(),
            self.overlay.clone(),
            self.overlay_version,
        );
        let done = self.compiled.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = compile(&path, force, &base, overlay);
            let _ = done.send(Compiled {
                base,
                overlay_version: version,
                outcome,
            });
        });
    }

    /// Publishes a compiled reload (applying the overlay again if it changed meanwhile),
    /// answers whoever asked for it, and starts the reload queued behind it.
    async fn finish(&mut self, compiled: Compiled) {
        let asked = self.compiling.take().unwrap_or(Asked {
            force: false,
            replies: Vec::new(),
            by: Actor::of("file"),
        });
        let report = self.publish(compiled, &asked.by).await;
        for reply in asked.replies {
            let _ = reply.send(report.clone());
        }
        if let Some(q) = self.queued.take() {
            self.ask_reload(q.force, None, q.by);
            if let Some(c) = &mut self.compiling {
                c.replies.extend(q.replies);
            }
        }
    }

    async fn publish(&mut self, compiled: Compiled, by: &Actor) -> ReloadReport {
        let state = self.state.clone();
        let current = state.snapshot.load_full();
        let report = |result, revision: &str, error: Option<String>, changes| ReloadReport {
            at: timestamp(SystemTime::now()),
            result,
            revision: revision.to_owned(),
            error,
            changes,
        };
        let (mut new, overlay, reconciled, routes, flags) = match compiled.outcome {
            Outcome::Unchanged => {
                let r = report("unchanged", &current.revision, None, Vec::new());
                // An operator asked, and nothing changed: the trail says who asked all the same.
                if by.via != "file" {
                    record_reload(&state, &r, &current.revision, by);
                }
                return r;
            }
            Outcome::Failed(e) => {
                return failed(
                    &state,
                    report("error", &current.revision, Some(e), Vec::new()),
                    by,
                )
            }
            Outcome::Ready {
                new,
                overlay,
                reconciled,
                routes,
                flags,
            } => (new, overlay, reconciled, routes, flags),
        };
        if let Err(e) = crate::fleet::check_env(new.fleet.as_ref())
            .and_then(|()| crate::config::analysis_env(new.analysis.as_ref(), new.any_checks()))
            .and_then(|()| crate::config::session_env(&new.routes))
            .and_then(|()| state.notifier.configure(&new.notify))
        {
            return failed(
                &state,
                report("error", &current.revision, Some(e), Vec::new()),
                by,
            );
        }
        let (reconciled, routes) =
            if compiled.overlay_version == self.overlay_version && Arc::ptr_eq(&compiled.base, &current) {
                self.overlay = overlay;
                (reconciled, routes)
            } else {
                // A trip, a rollout step or a command came while it compiled: the overlay as it
                // is now goes on the new config, and the moves are counted from what is live.
                let reconciled = self.overlay.reconcile(&new, &timestamp(SystemTime::now()));
                self.overlay.apply(&mut new);
                (reconciled, route_changes(&diff::diff_routes(&current, &new)))
            };
        let mut changes = routes;
        changes.extend(flags);
        changes.extend(reconciled);
        let revision = new.revision.clone();
        // Resolving ten thousand routes' metric series takes a while: on a blocking thread,
        // so a worker that also runs this task goes on serving requests meanwhile (nothing
        // else of the control task's runs until it is done: triggers wait in the channel).
        let publisher = state.clone();
        let old = match tokio::task::spawn_blocking(move || publisher.publish(*new)).await {
            Ok(old) => old,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        state.metrics.reload(true);
        tracing::info!(revision = %revision, previous = %current.revision, "config reloaded");
        for c in &changes {
            tracing::info!(revision = %revision, "reload: {c}");
        }
        let r = report("ok", &revision, None, changes);
        record_reload(&state, &r, &current.revision, by);
        state.config.rcu(|c| {
            let mut c = (**c).clone();
            c.revision = revision.clone();
            c.loaded_at = r.at.clone();
            c.last_reload = Some(r.clone());
            c
        });
        self.checks.reconcile(&state.snapshot.load().pools);
        self.overlay_changed();
        if state.snapshot.load().fleet.is_none() {
            self.release_hold("the config has no [fleet] any more");
        }
        drop(current);
        drop_elsewhere(old);
        r
    }
}

/// Drops a replaced snapshot on a blocking thread once nothing else holds it: a large one
/// takes a while to free, and the request that happened to finish last on it would otherwise
/// free it on its worker. Requests (and WebSockets) that started on it finish on it first.
fn drop_elsewhere(old: Arc<Snapshot>) {
    tokio::spawn(async move {
        while Arc::strong_count(&old) > 1 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let _ = tokio::task::spawn_blocking(move || drop(old)).await;
    });
}

/// One reload of `path` against `base`, on a blocking thread: read, compile, check what
/// cannot change, reconcile `overlay` with the new config and apply it, and count the moves
/// against `base`'s effective splits. Unless `force`d, a file whose text is `base`'s is left
/// alone.
fn compile(path: &Path, force: bool, base: &Snapshot, mut overlay: Overlay) -> Outcome {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return Outcome::Failed(format!("cannot read {}: {e}", path.display())),
    };
    let revision = match &base.flags_from {
        Some(f) => f.revision_with(&text),
        None => config::revision(&text),
    };
    if !force && revision == base.revision {
        return Outcome::Unchanged;
    }
    let mut new = match crate::runtime::load_str(&text, path, Some(base)) {
        Ok(new) => new,
        Err(LoadError::Invalid(d)) => return Outcome::Failed(d.to_string()),
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    if let Err(e) = fixed_settings(base, &new, path) {
        return Outcome::Failed(e);
    }
    let now = SystemTime::now();
    overlay::stamp_config(&mut new, Some(base), unix_ms());
    let reconciled = overlay.reconcile(&new, &timestamp(now));
    overlay.apply(&mut new);
    let d = diff::diff_within(base, &new, now, diff::RELOAD_SAMPLES);
    Outcome::Ready {
        new: Box::new(new),
        overlay,
        reconciled,
        routes: route_changes(&d.routes),
        flags: flag_changes(&d.flags),
    }
}

/// The users a change moved, as the trail and the webhooks show them.
fn moved(moves: &[(String, String, f64)]) -> serde_json::Value {
    moves
        .iter()
        .map(|(a, b, s)| serde_json::json!({ "from": a, "to": b, "share": s }))
        .collect()
}

/// A reload that changed the config, in the audit trail (its changes, at most
/// [`crate::audit::MAX_CHANGES`] of them listed) and to the webhooks that asked for `reload`.
fn record_reload(state: &State, r: &ReloadReport, previous: &str, by: &Actor) {
    let listed = r.changes.len().min(crate::audit::MAX_CHANGES);
    let unchanged = r.revision == previous && r.changes.is_empty();
    let fields = serde_json::json!({
        "result": if unchanged { "unchanged" } else { "ok" },
        "revision": r.revision,
        "previous": previous,
        "changes": &r.changes[..listed],
        "changes_not_listed": r.changes.len() - listed,
    });
    let text = if unchanged {
        format!(
            "reload asked by {}: nothing changed (revision {previous})",
            by.describe()
        )
    } else {
        format!(
            "config reloaded: revision {previous} -> {} ({} change(s); by {})",
            r.revision,
            r.changes.len(),
            by.describe()
        )
    };
    let record = crate::audit::Record {
        kind: Event::Reload,
        route: None,
        pool: None,
        by: Some(by),
        text,
        details: fields,
    };
    state.announce(record, !unchanged);
}

fn failed(state: &State, r: ReloadReport, by: &Actor) -> ReloadReport {
    state.metrics.reload(false);
    let mut error = r.error.clone().unwrap_or_default();
    // A file with many errors: the trail keeps the first 4 KiB of them (the API has all).
    if error.len() > 4096 {
        let mut cut = 4096;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
        error.push_str("\n…");
    }
    let text = format!(
        "a config reload failed; still serving revision {}: {} (by {})",
        r.revision,
        error.lines().next().unwrap_or_default(),
        by.describe()
    );
    let record = crate::audit::Record {
        kind: Event::ReloadFailed,
        route: None,
        pool: None,
        by: Some(by),
        text,
        details: serde_json::json!({ "revision": r.revision, "error": error }),
    };
    state.announce(record, true);
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
    let admin = |a: &Option<crate::config::AdminSettings>| {
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

/// One line per changed route, for the log and the API.
fn route_changes(routes: &[diff::RouteDiff]) -> Vec<String> {
    routes.iter().filter_map(diff::RouteDiff::line).collect()
}

/// One line per changed flag.
fn flag_changes(flags: &[diff::FlagDiff]) -> Vec<String> {
    flags.iter().filter_map(diff::FlagDiff::line).collect()
}
