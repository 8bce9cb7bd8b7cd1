//! Watches the config file for changes.
//!
//! The watcher watches the file's **directory**, not the file: editors that save by writing a
//! new file and renaming it, `cp` over the file, and Kubernetes' `..data` symlink swap all show
//! up as events there. A config that is a symlink to a file elsewhere (`/etc/switchyard.toml`
//! → `/srv/config/v7/switchyard.toml`) has that file's directory watched too, and the watch
//! follows the link when it is pointed somewhere else.
//!
//! Opening and reading a file are events too (inotify's `IN_OPEN`): they are ignored, or the
//! proxy's own read of its config would wake it again, for ever. So are writes to the proxy's
//! own state file. Events are debounced (a quiet period of 200 ms, at most 1 s); a file whose
//! text did not change is not reloaded.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Trigger;
use crate::runtime::overlay;

/// Quiet period after the last file event before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest wait when events keep coming.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

/// A running watch; dropping it stops it.
pub struct Watching {
    _watcher: Arc<Mutex<notify::RecommendedWatcher>>,
}

/// The directory `path` is in (`.` for a bare name).
fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The directory of the file `path` leads to, if it is a symlink into another directory.
fn target_dir(path: &Path) -> Option<PathBuf> {
    let target = std::fs::canonicalize(path).ok()?;
    let dir = dir_of(&target);
    let own = std::fs::canonicalize(dir_of(path)).ok();
    (own.as_deref() != Some(dir.as_path())).then_some(dir)
}

/// Whether an event may be a change of the config: not an open or a read, and not only our
/// own writes beside it: the state file, and the files named after it (the audit trail and its
/// rotated part, the experiments' counts) and their temporary files. (The audit trail records
/// a failed reload: were its write a change, a bad file would be read again and again.)
fn relevant(event: &notify::Event, state_name: &str) -> bool {
    if let EventKind::Access(kind) = event.kind {
        // Only a write finishing is a change; opens and reads (ours too) are not.
        if kind != AccessKind::Close(AccessMode::Write) {
            return false;
        }
    }
    let ours = !event.paths.is_empty()
        && event.paths.iter().all(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(state_name) || (n.starts_with(&format!(".{state_name}")) && n.ends_with(".tmp"))
            })
        });
    !ours
}

/// Watches the directory of `path` (and of the file it links to) and sends
/// [`Trigger::File`] after each debounced burst of events. Keep the returned [`Watching`]
/// alive as long as reloads should follow the file.
pub fn watch(path: &Path, triggers: mpsc::Sender<Trigger>) -> notify::Result<Watching> {
    let dir = dir_of(path);
    let (tx, mut rx) = mpsc::channel::<()>(64);
    // Our own state file lives in the same directory; its writes are not config changes.
    let state_name = overlay::state_path(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| relevant(&e, &state_name)) {
            // A full channel already holds a wake-up: dropping this one loses nothing.
            let _ = tx.try_send(());
        }
    })?;
    let watcher = Arc::new(Mutex::new(watcher));
    let mut linked = target_dir(path);
    {
        let mut w = watcher.lock().unwrap_or_else(|e| e.into_inner());
        w.watch(&dir, RecursiveMode::NonRecursive)?;
        if let Some(t) = &linked {
            w.watch(t, RecursiveMode::NonRecursive)?;
        }
    }
    let (path, weak) = (path.to_owned(), Arc::downgrade(&watcher));
    tokio::spawn(async move {
        while debounce(&mut rx, DEBOUNCE, DEBOUNCE_MAX).await {
            // The link may point elsewhere now: follow it.
            let now = target_dir(&path);
            if now != linked {
                let Some(w) = weak.upgrade() else { return };
                let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(old) = &linked {
                    let _ = w.unwatch(old);
                }
                if let Some(new) = &now {
                    if let Err(e) = w.watch(new, RecursiveMode::NonRecursive) {
                        tracing::warn!("cannot watch {} (the config's link target): {e}", new.display());
                    }
                }
                linked = now;
            }
            if triggers.send(Trigger::File).await.is_err() {
                return;
            }
        }
    });
    Ok(Watching { _watcher: watcher })
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

    #[test]
    fn opens_reads_and_our_state_file_are_not_changes() {
        use notify::event::{CreateKind, ModifyKind};
        let event = |kind, path: &str| notify::Event::new(kind).add_path(PathBuf::from(path));
        let state = "switchyard.toml.state.json";
        for (kind, path, is) in [
            (
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "/c/switchyard.toml",
                false,
            ),
            (EventKind::Access(AccessKind::Read), "/c/switchyard.toml", false),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "/c/switchyard.toml",
                false,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/c/switchyard.toml",
                true,
            ),
            (EventKind::Modify(ModifyKind::Any), "/c/switchyard.toml", true),
            (EventKind::Create(CreateKind::File), "/c/..data_tmp", true),
            (
                EventKind::Modify(ModifyKind::Any),
                "/c/switchyard.toml.state.json",
                false,
            ),
            (
                EventKind::Create(CreateKind::File),
                "/c/.switchyard.toml.state.json.tmp",
                false,
            ),
            (
                EventKind::Modify(ModifyKind::Any),
                "/c/switchyard.toml.state.json.events.jsonl",
                false,
            ),
            (
                EventKind::Create(CreateKind::File),
                "/c/switchyard.toml.state.json.events.jsonl.1",
                false,
            ),
            (
                EventKind::Create(CreateKind::File),
                "/c/.switchyard.toml.state.json.experiments.json.tmp",
                false,
            ),
            (
                EventKind::Create(CreateKind::File),
                "/c/switchyard.toml.new",
                true,
            ),
        ] {
            assert_eq!(relevant(&event(kind, path), state), is, "{kind:?} {path}");
        }
    }
}
