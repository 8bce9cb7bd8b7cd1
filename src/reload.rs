//! Reloads: the file changing on disk, `SIGHUP`, or `POST /api/reload` all become a
//! [`Trigger`] for one task, the only writer of the snapshot. It reads and compiles the file off
//! the request path, refuses changes that cannot apply (listen and admin addresses), swaps the
//! snapshot atomically, and logs what changed and how many users move. A bad file changes
//! nothing: the error is logged, counted and kept for `GET /api/config`.
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
use crate::routing::{diff, Snapshot};
use crate::state::{timestamp, ReloadReport, State};

/// Quiet period after the last file event before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest wait when events keep coming.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

/// Why a reload runs.
pub enum Trigger {
    /// The file's directory changed (reload only if the text changed).
    File,
    /// SIGHUP.
    Signal,
    /// `POST /api/reload`; the report goes back on the channel.
    Api(oneshot::Sender<ReloadReport>),
}

/// Runs reloads for the file at `path` as triggers arrive, until every sender is gone.
pub async fn run(state: Arc<State>, path: PathBuf, mut triggers: mpsc::Receiver<Trigger>) {
    while let Some(trigger) = triggers.recv().await {
        let (force, reply) = match trigger {
            Trigger::File => (false, None),
            Trigger::Signal => (true, None),
            Trigger::Api(tx) => (true, Some(tx)),
        };
        let report = reload(&state, &path, force).await;
        if let Some(tx) = reply {
            let _ = tx.send(report);
        }
    }
}

/// One reload of `path`. Unless `force`d, a file whose text is unchanged is left alone.
pub async fn reload(state: &State, path: &Path, force: bool) -> ReloadReport {
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
    let new = match compiled {
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
    if new.revision == current.revision && !force {
        return report("unchanged", &current.revision, None, Vec::new());
    }
    let changes = describe(&diff::diff(&current, &new, SystemTime::now()));
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
    let mut errors = Vec::new();
    let mut check = |key: &str, same: bool, was: String, now: String| {
        if !same {
            errors.push(format!(
                "{}: {key} cannot change by reload (was {was}, now {now}) — restart switchyard to apply it, or put the old value back",
                path.display()
            ));
        }
    };
    let show = |a: Option<std::net::SocketAddr>| a.map_or("unset".to_owned(), |a| a.to_string());
    check("listen.http", o.http == n.http, show(o.http), show(n.http));
    check("listen.https", o.https == n.https, show(o.https), show(n.https));
    check(
        "listen.max_connections",
        o.max_connections == n.max_connections,
        o.max_connections.to_string(),
        n.max_connections.to_string(),
    );
    check(
        "listen.header_read_timeout",
        o.header_read_timeout == n.header_read_timeout,
        format!("{:?}", o.header_read_timeout),
        format!("{:?}", n.header_read_timeout),
    );
    check(
        "listen.max_header_bytes",
        o.max_header_bytes == n.max_header_bytes,
        o.max_header_bytes.to_string(),
        n.max_header_bytes.to_string(),
    );
    check(
        "listen.drain_timeout",
        o.drain_timeout == n.drain_timeout,
        format!("{:?}", o.drain_timeout),
        format!("{:?}", n.drain_timeout),
    );
    let admin = |a: &Option<crate::routing::AdminSettings>| {
        a.as_ref().map_or("unset".to_owned(), |a| {
            format!("{} (token_env {:?})", a.listen, a.token_env)
        })
    };
    check(
        "admin",
        old.admin == new.admin,
        admin(&old.admin),
        admin(&new.admin),
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// One line per change, for the log and the API.
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
                let moves: Vec<String> = r
                    .moves
                    .iter()
                    .map(|(a, b, s)| format!("{:.2}% {a}→{b}", s * 100.0))
                    .collect();
                out.push(format!(
                    "route {}: {} → {}; {:.2}% of its users move ({})",
                    r.name,
                    show(&r.weights_before),
                    show(&r.weights_after),
                    r.moved() * 100.0,
                    moves.join(", ")
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
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
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
