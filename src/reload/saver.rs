//! Writes the state file off the control task. The control task hands over each new overlay
//! and goes on; one writer task takes the newest of those queued (older ones are superseded)
//! and writes it on a blocking thread (a temporary file, fsync, rename, fsync the directory).
//! A save can carry a signal for when it is on disk: an operator's command is answered only
//! then, and a shutdown waits for the last one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};

use super::StateFile;
use crate::clock::timestamp;
use crate::notify::Event;
use crate::runtime::overlay::Overlay;
use crate::runtime::state::{State, StateSaveError};

enum Job {
    Save(Arc<Overlay>, Option<oneshot::Sender<()>>),
    /// Answered once every save asked before it is done.
    Flush(oneshot::Sender<()>),
}

/// The handle of the writer task (without a state file, saves do nothing).
#[derive(Clone)]
pub struct Saver {
    jobs: Option<mpsc::UnboundedSender<Job>>,
}

impl Saver {
    /// Starts the writer task for `file`.
    pub fn start(state: Arc<State>, file: Option<StateFile>) -> Saver {
        let Some(file) = file else {
            return Saver { jobs: None };
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_all(state, file, rx));
        Saver { jobs: Some(tx) }
    }

    /// Saves `overlay`; `done` (if any) is signalled once it is written (or failed to be).
    pub fn save(&self, overlay: Arc<Overlay>, done: Option<oneshot::Sender<()>>) {
        match &self.jobs {
            Some(jobs) => {
                if let Err(mpsc::error::SendError(Job::Save(_, Some(done)))) =
                    jobs.send(Job::Save(overlay, done))
                {
                    let _ = done.send(());
                }
            }
            None => {
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Signals `done` once every save asked so far is done.
    pub fn flush(&self, done: oneshot::Sender<()>) {
        match &self.jobs {
            Some(jobs) => {
                if let Err(mpsc::error::SendError(Job::Flush(done))) = jobs.send(Job::Flush(done)) {
                    let _ = done.send(());
                }
            }
            None => {
                let _ = done.send(());
            }
        }
    }
}

/// The first wait before a failed save is tried again; it doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

async fn write_all(state: Arc<State>, file: StateFile, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut waiting = Vec::new();
    // A failed save is kept and tried again (a disk that was full may have room now) until it
    // is written or a newer overlay replaces it.
    let mut failed: Option<Arc<Overlay>> = None;
    let mut backoff = RETRY_FIRST;
    let mut open = true;
    loop {
        // `None`: a retry is due, or the senders are gone.
        let first = match (&failed, open) {
            (None, false) => return,
            (None, true) => jobs.recv().await.ok_or(true),
            (Some(_), true) => tokio::select! {
                job = jobs.recv() => job.ok_or(true),
                _ = tokio::time::sleep(backoff) => Err(false),
            },
            (Some(_), false) => {
                tokio::time::sleep(backoff).await;
                Err(false)
            }
        };
        // Everything queued behind it: only the newest overlay is written.
        let mut newest = failed.take();
        let mut take = |job: Job, waiting: &mut Vec<oneshot::Sender<()>>| match job {
            Job::Save(ov, done) => {
                newest = Some(ov);
                waiting.extend(done);
            }
            Job::Flush(done) => waiting.push(done),
        };
        match first {
            Ok(job) => take(job, &mut waiting),
            Err(closed) => open &= !closed,
        }
        while let Ok(job) = jobs.try_recv() {
            take(job, &mut waiting);
        }
        if let Some(ov) = newest {
            let (f, written) = (file.clone(), ov.clone());
            let result = tokio::task::spawn_blocking(move || match f.writable {
                true => written.save(&f.path).map_err(|e| e.to_string()),
                false => Err("the unreadable state file found at start is left as it was".to_owned()),
            })
            .await
            .unwrap_or_else(|e| Err(format!("the writer failed: {e}")));
            match &result {
                Ok(()) => backoff = RETRY_FIRST,
                Err(_) if file.writable => {
                    failed = Some(ov);
                    backoff = if state.config.load().state.save_error.is_some() {
                        (backoff * 2).min(RETRY_MAX)
                    } else {
                        RETRY_FIRST
                    };
                }
                Err(_) => {}
            }
            report(&state, &file, result, failed.is_some().then_some(backoff));
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

/// A failure is logged, counted and shown by `/api/config` and `status` until a save succeeds
/// (and notified when it starts).
fn report(state: &State, f: &StateFile, result: Result<(), String>, retry_in: Option<Duration>) {
    let error = match result {
        Ok(()) => {
            if state.config.load().state.save_error.is_some() {
                tracing::info!("the state file {} is written again", f.path.display());
                state.config.rcu(|c| {
                    let mut c = (**c).clone();
                    c.state.save_error = None;
                    c
                });
            }
            return;
        }
        Err(e) => e,
    };
    state.metrics.state_save_error();
    let previous = state.config.load().state.save_error.clone();
    if previous.is_none() {
        tracing::error!("cannot write the state file {}: {error} — trips and rollout steps will not survive a restart until it is written{}; free its disk or set [state] path to a writable file", f.path.display(), if retry_in.is_some() { " (retrying)" } else { "" });
        let text = format!("the state file {} cannot be written ({error}): trips and rollout steps will not survive a restart", f.path.display());
        let record = crate::audit::Record {
            kind: Event::StateSaveFailed,
            route: None,
            pool: None,
            by: None,
            text,
            details: serde_json::json!({ "path": f.path, "error": error }),
        };
        state.announce(record, true);
    }
    let failure = StateSaveError {
        at: previous.map_or_else(|| timestamp(SystemTime::now()), |p| p.at),
        error,
        retrying: retry_in.is_some(),
    };
    state.config.rcu(|c| {
        let mut c = (**c).clone();
        c.state.save_error = Some(failure.clone());
        c
    });
}

/// Writes the live experiments' counts every [`crate::experiments::SAVE_EVERY`] while they change, until the
/// state is gone; a failure is logged once, shown in `/api/config` (`state.experiments_error`)
/// and counted in `switchyard_state_save_errors_total`, until a save succeeds.
pub async fn keep_experiments(
    state: std::sync::Weak<crate::runtime::state::State>,
    path: std::path::PathBuf,
) {
    let mut tick = tokio::time::interval(crate::experiments::SAVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = String::new();
    loop {
        tick.tick().await;
        let Some(st) = state.upgrade() else { return };
        let snap = st.snapshot.load_full();
        let result = crate::experiments::save(&snap.experiments, &path, &mut last).await;
        report_experiments_save(&st, &path, result);
    }
}

/// Keeps what the API says of the last save of the counts.
pub fn report_experiments_save(
    st: &crate::runtime::state::State,
    path: &std::path::Path,
    result: std::io::Result<()>,
) {
    let shown = st.config.load().state.experiments_error.clone();
    match result {
        Ok(()) if shown.is_some() => {
            tracing::info!("the experiments' counts are written to {} again", path.display());
            st.config.rcu(|c| {
                let mut c = (**c).clone();
                c.state.experiments_error = None;
                c
            });
        }
        Ok(()) => {}
        Err(e) => {
            st.metrics.state_save_error();
            if shown.is_none() {
                tracing::warn!("cannot save the experiments' counts to {}: {e}", path.display());
            }
            let failure = crate::runtime::state::StateSaveError {
                at: shown.map_or_else(|| crate::clock::timestamp(std::time::SystemTime::now()), |s| s.at),
                error: format!("{}: {e}", path.display()),
                retrying: true,
            };
            st.config.rcu(|c| {
                let mut c = (**c).clone();
                c.state.experiments_error = Some(failure.clone());
                c
            });
        }
    }
}
