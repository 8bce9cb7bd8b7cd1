//! Writes the state file off the control task. The control task hands over each new overlay
//! and goes on; one writer task takes the newest of those queued (older ones are superseded)
//! and writes it on a blocking thread (a temporary file, fsync, rename, fsync the directory).
//! A save can carry a signal for when it is on disk: an operator's command is answered only
//! then, and a shutdown waits for the last one.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use super::StateFile;
use crate::guard::overlay::Overlay;
use crate::notify::Event;
use crate::state::{timestamp, State, StateSaveError};

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

async fn write_all(state: Arc<State>, file: StateFile, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut waiting = Vec::new();
    while let Some(first) = jobs.recv().await {
        // Everything queued behind it: only the newest overlay is written.
        let mut newest = None;
        let mut take = |job: Job, waiting: &mut Vec<oneshot::Sender<()>>| match job {
            Job::Save(ov, done) => {
                newest = Some(ov);
                waiting.extend(done);
            }
            Job::Flush(done) => waiting.push(done),
        };
        take(first, &mut waiting);
        while let Ok(job) = jobs.try_recv() {
            take(job, &mut waiting);
        }
        if let Some(ov) = newest {
            let f = file.clone();
            let result = tokio::task::spawn_blocking(move || match f.writable {
                true => ov.save(&f.path).map_err(|e| e.to_string()),
                false => Err("the unreadable state file found at start is left as it was".to_owned()),
            })
            .await
            .unwrap_or_else(|e| Err(format!("the writer failed: {e}")));
            report(&state, &file, result);
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

/// A failure is logged, counted and shown by `/api/config` and `status` until a save succeeds
/// (and notified when it starts).
fn report(state: &State, f: &StateFile, result: Result<(), String>) {
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
    tracing::error!("cannot write the state file {}: {error} — trips and rollout steps will not survive a restart; set [state] path to a writable file", f.path.display());
    state.metrics.state_save_error();
    if state.config.load().state.save_error.is_none() {
        state.notifier.send(
            Event::StateSaveFailed,
            serde_json::json!({ "path": f.path, "error": error }),
            &format!("the state file {} cannot be written ({error}): trips and rollout steps will not survive a restart", f.path.display()),
        );
    }
    let failure = StateSaveError {
        at: timestamp(SystemTime::now()),
        error,
    };
    state.config.rcu(|c| {
        let mut c = (**c).clone();
        c.state.save_error = Some(failure.clone());
        c
    });
}
