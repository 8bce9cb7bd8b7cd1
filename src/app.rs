//! A whole running switchyard: the proxy listeners, the admin API, and the reloader with its
//! file watcher, wired around one [`State`]. `switchyard run`, `switchyard demo` and the
//! integration tests all start one of these.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::admin::Admin;
use crate::config::{self, LoadError};
use crate::control::Trigger;
use crate::proxy::server::Server;
use crate::reload;
use crate::runtime::state::State;

/// Where the config comes from.
pub enum Source {
    /// A file, reloaded when it changes.
    File(PathBuf),
    /// Text with no file behind it (the demo); `name` appears in errors.
    Text { text: String, name: PathBuf },
}

/// Why switchyard could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] LoadError),
    #[error(transparent)]
    Bind(#[from] io::Error),
    #[error("{0}")]
    Admin(String),
    #[error("cannot watch the config file's directory: {0}")]
    Watch(#[from] notify::Error),
    #[error("{0}")]
    /// An environment variable the config names (a secret, a token) is not set.
    Env(String),
}

/// Outcomes waiting for the guard task; past this, new ones are dropped (and the guard judges
/// on the rest) rather than slowing requests down.
const OUTCOME_QUEUE: usize = 65_536;

/// A started switchyard, not yet serving.
pub struct App {
    state: Arc<State>,
    server: Server,
    admin: Option<(TcpListener, axum::Router)>,
    triggers: Option<mpsc::Sender<Trigger>>,
    /// Where the experiments' counts are kept, when they are.
    experiments_file: Option<PathBuf>,
    _watcher: Option<reload::Watching>,
}

impl App {
    /// Loads the config, binds every listener, and starts the reloader for a file source.
    pub async fn start(source: Source) -> Result<App, StartError> {
        let mut asked = None;
        let mut first_ask = None;
        let (mut snap, path) = match source {
            Source::File(p) => {
                let mut snap = crate::runtime::load(&p, None)?;
                // An Unleash server not asked yet: ask it once before serving, so the first
                // requests see its flags (a server that does not answer leaves them absent
                // until it does; the poll goes on).
                if let Some(config::FlagsFrom::Server(src)) = &snap.flags_from.clone() {
                    if let Some(var) = &src.token_env {
                        if std::env::var(var).map_or(true, |t| t.is_empty()) {
                            return Err(StartError::Env(format!(
                                "flags_from.token_env names {var}, but {var} is not set: export it, or remove token_env"
                            )));
                        }
                    }
                    if !src.cache.exists() {
                        let timeout = crate::flagsync::START_TIMEOUT;
                        let result =
                            crate::flagsync::poll(&crate::egress::client(), src, None, timeout).await;
                        match &result {
                            Ok(tag) => {
                                asked = Some((src.url.clone(), tag.clone()));
                                snap = crate::runtime::load(&p, None)?
                            }
                            Err(e) => tracing::warn!("flags_from: {e}; starting without the server's flags (waited at most {timeout:?}); polling on"),
                        }
                        first_ask = Some((src.clone(), result.map(|_| ())));
                    }
                }
                (snap, Some(p))
            }
            Source::Text { text, name } => (crate::runtime::load_str(&text, &name, None)?, None),
        };
        let admin_settings = snap.admin.clone();
        let token = match admin_settings.as_ref().and_then(|a| a.token_env.as_deref()) {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(t) if !t.is_empty() => Some((var.to_owned(), t)),
                _ => {
                    return Err(StartError::Admin(format!(
                        "admin.token_env names {var}, but {var} is not set: export it, or remove token_env"
                    )))
                }
            },
        };
        if let Some(var) = &snap.overrides.secret_env {
            if snap.overrides.key.is_none() {
                return Err(StartError::Env(format!(
                    "overrides.secret_env names {var}, but {var} is not set: export it, or remove secret_env"
                )));
            }
        }
        // (An admin API off loopback without token_env is a config error: `check` refuses it.)
        // Trips and rollout steps from the state file apply before the first request.
        let prepared = reload::prepare(&mut snap, path.as_deref());
        let (outcomes_tx, outcomes_rx) = mpsc::channel(OUTCOME_QUEUE);
        let notify = snap.notify.clone();
        let state = State::new(snap, path.clone(), Some(outcomes_tx));
        state.notifier.configure(&notify).map_err(StartError::Env)?;
        crate::fleet::check_env(state.snapshot.load().fleet.as_ref()).map_err(StartError::Env)?;
        {
            let snap = state.snapshot.load();
            crate::config::analysis_env(snap.analysis.as_ref(), snap.any_checks())
                .and_then(|()| crate::config::session_env(&snap.routes))
                .map_err(StartError::Env)?;
        }
        let server = Server::bind(state.clone()).await?;
        let (tx, rx) = mpsc::channel(64);
        let watcher = match &path {
            Some(p) => Some(reload::watch(p, tx.clone())?),
            None => None,
        };
        if let Some(problem) = &prepared.problem {
            state.metrics.state_load_error();
            let problem = problem.clone();
            state.config.rcu(|c| {
                let mut c = (**c).clone();
                c.state.load_error = Some(problem.clone());
                c
            });
        }
        let state_path = prepared.state_file.as_ref().map(|f| f.path.clone());
        // The audit trail, read back from beside the state file, and this start in it.
        let unreadable = state_path
            .as_deref()
            .map_or(0, |p| state.audit.open(crate::audit::path_for(p)));
        let start = start_event(&state, &prepared, unreadable);
        // Experiments' counts, kept beside the state file: taken back, then kept up to date
        // (unless the file found is damaged and could not be moved aside).
        let mut experiments_file = None;
        if let Some(p) = &state_path {
            let saved = crate::experiments::saved_path(p);
            let loaded = crate::experiments::load_saved(&saved, &state.snapshot.load().experiments);
            let problem = match &loaded {
                Ok(problems) if problems.is_empty() => None,
                Ok(problems) => Some(problems.join("; ")),
                Err(e) => Some(e.clone()),
            };
            if let Some(problem) = problem {
                tracing::warn!("{problem}");
                state.metrics.state_load_error();
                state.config.rcu(|c| {
                    let mut c = (**c).clone();
                    c.state.experiments_load_error = Some(problem.clone());
                    c
                });
            }
            if loaded.is_ok() {
                tokio::spawn(crate::reload::keep_experiments(
                    Arc::downgrade(&state),
                    saved.clone(),
                ));
                experiments_file = Some(saved);
            }
        }
        state.config.rcu(|c| {
            let mut c = (**c).clone();
            c.state.path = state_path.clone();
            c
        });
        tokio::spawn(reload::run(
            state.clone(),
            path.clone(),
            prepared.overlay,
            prepared.state_file,
            rx,
        ));
        // The guard judges every guarded route ten times a second, and fingerprints them all
        // after a reload: with ten thousand routes that is milliseconds of work a tick, which
        // on a worker would stall its requests. It gets a thread of its own.
        on_own_thread(
            "switchyard-guard",
            crate::guard::task::run(Arc::downgrade(&state), outcomes_rx, tx.clone()),
        )?;
        let live = Arc::downgrade(&state.snapshot);
        tokio::spawn(crate::upstream::sweep_idle(move || {
            live.upgrade().map(|s| s.load().pools.clone())
        }));
        if let Some((src, result)) = &first_ask {
            crate::flagsync::report(&state, src, result.as_ref().map(|_| ()));
        }
        if path.is_some() {
            tokio::spawn(crate::flagsync::run(Arc::downgrade(&state), tx.clone(), asked));
        }
        let triggers = Some(tx);
        let admin = match admin_settings {
            Some(a) => {
                let listener = TcpListener::bind(a.listen).await.map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot listen on {} (admin.listen): {e}", a.listen),
                    )
                })?;
                Some((
                    listener,
                    Admin::new(state.clone(), triggers.clone(), path.is_some(), token)
                        .router(crate::admin::Gate::new(a.listen, &a.hosts)),
                ))
            }
            None => None,
        };
        let port = admin
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
            .or_else(|| server.http_addr().or(server.https_addr()))
            .map(|a| a.port());
        state.name_replica(port);
        record_start(&state, start);
        if let Some(t) = &triggers {
            tokio::spawn(crate::fleet::run(Arc::downgrade(&state), t.clone()));
        }
        tokio::spawn(crate::analysis::run(Arc::downgrade(&state)));
        state.set_ready();
        Ok(App {
            state,
            server,
            admin,
            triggers,
            experiments_file,
            _watcher: watcher,
        })
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.server.http_addr()
    }

    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.server.https_addr()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Sends triggers to the control task (SIGHUP in `main`).
    pub fn triggers(&self) -> Option<mpsc::Sender<Trigger>> {
        self.triggers.clone()
    }

    /// Serves until `shutdown` resolves, drains, then stops the admin API.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) -> io::Result<()> {
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = self.admin.map(|(listener, router)| {
            tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin API listening");
            tokio::spawn(async move {
                let stopped = async {
                    let _ = admin_stopped.await;
                };
                if let Err(e) = axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(stopped)
                .await {
                    tracing::error!("admin API stopped: {e}");
                }
            })
        });
        let result = self.server.run(shutdown).await;
        // The last trips and steps on disk before the process ends.
        if let Some(t) = &self.triggers {
            let (done, written) = tokio::sync::oneshot::channel();
            if t.send(Trigger::Flush(done)).await.is_ok() {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(10), written).await;
            }
        }
        // And the experiments' counts, which are otherwise written every 2 s.
        if let Some(path) = &self.experiments_file {
            let snap = self.state.snapshot.load_full();
            let result = crate::experiments::save(&snap.experiments, path, &mut String::new()).await;
            crate::reload::report_experiments_save(&self.state, path, result);
        }
        self.state.audit.flush().await;
        let _ = stop_admin.send(());
        if let Some(a) = admin {
            let _ = a.await;
        }
        drop(self._watcher);
        result
    }
}

/// The start of the process, in the audit trail: the revision, and what the state file left
/// tripped or held (a restart mid-incident shows in the timeline).
fn start_event(
    state: &State,
    prepared: &reload::Prepared,
    unreadable_events: usize,
) -> (String, serde_json::Value) {
    let snap = state.snapshot.load();
    let tripped: Vec<serde_json::Value> = prepared
        .overlay
        .routes
        .iter()
        .flat_map(|(route, e)| {
            e.trips
                .iter()
                .map(move |t| serde_json::json!({ "route": route, "pool": t.pool, "since": t.at }))
        })
        .collect();
    let mut text = format!(
        "switchyard {} started: revision {}, {} route(s)",
        env!("CARGO_PKG_VERSION"),
        snap.revision,
        snap.routes.len()
    );
    if !tripped.is_empty() {
        text.push_str(&format!(
            "; {} pool(s) still tripped from the state file",
            tripped.len()
        ));
    }
    if prepared.problem.is_some() {
        text.push_str("; the state file could not be read: guarded routes are held at their baselines");
    }
    if unreadable_events > 0 {
        text.push_str(&format!(
            "; {unreadable_events} line(s) of the audit trail could not be read"
        ));
    }
    let details = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": snap.revision,
        "tripped": tripped,
        "state_file_unreadable": prepared.problem.is_some(),
    });
    (text, details)
}

/// Records [`start_event`]'s event, once the replica has its name.
fn record_start(state: &State, (text, mut details): (String, serde_json::Value)) {
    details["replica"] = state.replica().into();
    let record = crate::audit::Record {
        kind: crate::notify::Event::Start,
        route: None,
        pool: None,
        by: None,
        text,
        details,
    };
    state.announce(record, true);
}

/// Runs `task` on a thread of its own with a single-threaded runtime, off the workers; the
/// thread ends with the task.
fn on_own_thread(name: &str, task: impl std::future::Future<Output = ()> + Send + 'static) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || rt.block_on(task))?;
    Ok(())
}
