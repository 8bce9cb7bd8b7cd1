//! What the command line does besides serving: finding a running proxy's admin API from its
//! config (never guessing one from a config that does not validate), calling it with the token
//! its config names, and reading its live state — trips and rollout steps — for `explain` and
//! `diff`, so that they answer for what the proxy really does and not for the file alone.

pub mod events;
pub mod experiments;
pub mod status;
pub mod summary;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde_json::Value;

use crate::config::LoadError;
use crate::runtime::overlay::{self, Overlay};
use crate::runtime::Snapshot;

/// Where commands look for the config when `-c` is not given.
pub const DEFAULT_CONFIG: &str = "config/switchyard.toml";
/// The admin API commands use with neither `--admin` nor a config file.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9901";
/// Where the token comes from when no config names its `admin.token_env`.
pub const DEFAULT_TOKEN_ENV: &str = "SWITCHYARD_ADMIN_TOKEN";
/// How long a command waits for the admin API.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Prints to stdout; a reader that went away (`| head`) ends the command quietly.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush())
}

/// Whether `e` is a write to a closed pipe: the reader has what it wanted.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Loads a config for a command, with every error on failure.
pub fn load(path: &Path) -> anyhow::Result<Snapshot> {
    crate::runtime::load(path, None).map_err(|e| match e {
        LoadError::Invalid(d) => anyhow::anyhow!("{} has errors:\n{d}", path.display()),
        other => anyhow::anyhow!(other),
    })
}

/// A running proxy's admin API.
#[derive(Debug, Clone)]
pub struct AdminTarget {
    /// `http://host:port`, without a trailing slash.
    pub base: String,
    /// The environment variable the token is read from.
    pub token_env: String,
}

impl AdminTarget {
    /// The admin API a command talks to: `--admin URL`; else the `[admin] listen` of the
    /// config (`-c`, or the default file if it exists), which must validate and have an
    /// `[admin]` table; else, with no config at all, [`DEFAULT_ADMIN`]. The token is read from
    /// the config's `admin.token_env`, else from [`DEFAULT_TOKEN_ENV`].
    pub fn find(admin: Option<&str>, config: Option<&Path>) -> anyhow::Result<AdminTarget> {
        let named = config.is_some();
        let path = config.map_or_else(|| PathBuf::from(DEFAULT_CONFIG), Path::to_owned);
        let snap = if named || path.exists() {
            match (load(&path), admin) {
                (Ok(snap), _) => Some(snap),
                // With --admin, an unnamed default config only lends its token variable.
                (Err(_), Some(_)) if !named => None,
                (Err(e), _) => {
                    return Err(e.context(format!(
                    "cannot tell which proxy to talk to: {} does not validate (fix it, or pass --admin URL)",
                    path.display()
                )))
                }
            }
        } else {
            None
        };
        let token_env = snap
            .as_ref()
            .and_then(|s| s.admin.as_ref())
            .and_then(|a| a.token_env.clone())
            .unwrap_or_else(|| DEFAULT_TOKEN_ENV.to_owned());
        let base = match (admin, &snap) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(snap)) => match &snap.admin {
                Some(a) => format!("http://{}", a.listen),
                None => anyhow::bail!(
                    "{} has no [admin] table, so the proxy it describes serves no admin API: add one, or pass --admin URL",
                    path.display()
                ),
            },
            (None, None) => DEFAULT_ADMIN.to_owned(),
        };
        Ok(AdminTarget { base, token_env })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(http::Method::GET, path).await
    }

    pub async fn post(&self, path: &str) -> anyhow::Result<Value> {
        self.call(http::Method::POST, path).await
    }

    /// One call; the token (if its variable is set) goes along. A 401 says which variable to
    /// set.
    async fn call(&self, method: http::Method, path: &str) -> anyhow::Result<Value> {
        use http_body_util::{BodyExt, Empty};
        let url = format!("{}{path}", self.base);
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Empty<bytes::Bytes>>();
        // Who asks, for the audit trail: the command, and the account it runs as (a hint: the
        // token is what authorizes).
        let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME"));
        let agent = format!(
            "switchyard/{} (cli; user {})",
            env!("CARGO_PKG_VERSION"),
            user.as_deref().unwrap_or("unknown")
        );
        let mut req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::USER_AGENT, agent);
        let token = std::env::var(&self.token_env).ok().filter(|t| !t.is_empty());
        if let Some(t) = &token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let answer = async {
            let resp = client.request(req.body(Empty::new())?).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(CALL_TIMEOUT, answer)
            .await
            .map_err(|_| anyhow::anyhow!("no answer in {CALL_TIMEOUT:?}"))
            .and_then(|r| r)
            .with_context(|| {
                format!("cannot reach the admin API at {url}: is switchyard running with [admin] listen there? (--admin URL)")
            })?;
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let msg = value["error"]
            .as_str()
            .map_or_else(|| String::from_utf8_lossy(&body).into_owned(), str::to_owned);
        if status == http::StatusCode::UNAUTHORIZED {
            let var = &self.token_env;
            anyhow::bail!(
                "{url}: 401 Unauthorized: {msg}\n{}",
                match token {
                    None => format!("set {var} to the admin token (the value of the proxy's admin.token_env variable)"),
                    Some(_) => format!("the token in {var} is not the proxy's: set {var} to the value of the proxy's admin.token_env variable"),
                }
            );
        }
        anyhow::bail!("{url}: {status}: {msg}")
    }
}

/// `rollback`, `reset` and `promote`: one POST to the admin API; prints what it did.
pub async fn command(admin: &AdminTarget, route: &str, action: &str) -> anyhow::Result<()> {
    let answer = admin.post(&format!("/api/routes/{route}/{action}")).await?;
    print(&format!("{}\n", answer["result"].as_str().unwrap_or("done")))?;
    if answer["persisted"] == false {
        eprintln!(
            "warning: NOT persisted: the state file cannot be written ({}); the proxy retries until it can, and until then a restart loses this",
            answer["persist_error"].as_str().unwrap_or("unknown error")
        );
    }
    Ok(())
}

/// The live state of the proxy a config describes: its trips and rollout steps.
#[derive(Debug, Clone)]
pub struct Live {
    /// `None`: not known (offline, or nothing answered): the file's splits alone.
    pub overlay: Option<Overlay>,
    /// Where it came from, or why there is none, in a sentence.
    pub source: String,
}

impl Live {
    /// Asks the running proxy (its admin API, from `snap`'s `[admin]`), else reads its state
    /// file (`[state] path`, else beside `config`). `offline`: neither.
    pub async fn find(snap: &Snapshot, config: &Path, offline: bool) -> Live {
        if offline {
            return Live {
                overlay: None,
                source: "offline: the file's splits alone, without trips or rollout steps".into(),
            };
        }
        let mut tried = String::new();
        if let Some(a) = &snap.admin {
            let admin = AdminTarget {
                base: format!("http://{}", a.listen),
                token_env: DEFAULT_TOKEN_ENV.into(),
            };
            match admin.get("/api/state").await.and_then(|v| {
                let ov: Overlay = serde_json::from_value(v["state"].clone())?;
                Ok((ov, v["revision"].as_str().unwrap_or("?").to_owned()))
            }) {
                Ok((ov, revision)) => {
                    let note = if revision == snap.revision {
                        String::new()
                    } else {
                        format!(
                            "; it serves revision {revision}, this file is revision {} (not loaded yet: the answer is for once it is)",
                            snap.revision
                        )
                    };
                    return Live {
                        overlay: Some(ov),
                        source: format!("live state from the admin API at {}{note}", admin.base),
                    };
                }
                Err(e) => {
                    let first = format!("{e:#}");
                    tried = format!(
                        "the admin API at {} did not answer ({}); ",
                        admin.base,
                        first.lines().next().unwrap_or("")
                    );
                }
            }
        }
        let file = snap
            .state_path
            .clone()
            .unwrap_or_else(|| overlay::state_path(config));
        if !file.exists() {
            return Live {
                overlay: None,
                source: format!(
                    "{tried}no state file at {}: the file's splits alone, without trips or rollout steps",
                    file.display()
                ),
            };
        }
        match Overlay::load(&file) {
            Ok(ov) => Live {
                overlay: Some(ov),
                source: format!("{tried}live state from the state file {}", file.display()),
            },
            Err(e) => Live {
                overlay: None,
                source: format!("{tried}the state file cannot be read ({e}): the file's splits alone"),
            },
        }
    }

    /// Applies the live state to `snap` as the proxy would on loading it (entries for routes
    /// that changed are dropped; new rollouts start at their first step).
    pub fn apply(&self, snap: &mut Snapshot) -> Option<Overlay> {
        let mut ov = self.overlay.clone()?;
        ov.reconcile(snap, &crate::clock::timestamp(SystemTime::now()));
        ov.apply(snap);
        Some(ov)
    }
}

/// `switchyard explain`: the decision for one request on the config at `path`, with the live
/// state applied unless `offline`.
pub async fn explain(
    path: &Path,
    q: &crate::proxy::explain::Question,
    offline: bool,
) -> anyhow::Result<crate::proxy::explain::Explanation> {
    let mut snap = load(path)?;
    let live = Live::find(&snap, path, offline).await;
    let overlay = live.apply(&mut snap);
    let mut answer = crate::proxy::explain::explain(&snap, q, SystemTime::now(), overlay.as_ref());
    answer.live = Some(live.source);
    Ok(answer)
}

/// `switchyard diff OLD NEW`: who moves, counted from the live effective splits of the proxy
/// OLD describes (unless `offline`) to those NEW would give it, as a reload would.
pub async fn diff(
    old: &Path,
    new: &Path,
    offline: bool,
) -> anyhow::Result<(crate::routing::diff::Diff, String)> {
    let (mut a, mut b) = (load(old)?, load(new)?);
    let live = Live::find(&a, old, offline).await;
    if let Some(ov) = live.apply(&mut a) {
        let mut ov = ov;
        ov.reconcile(&b, &crate::clock::timestamp(SystemTime::now()));
        ov.apply(&mut b);
    }
    Ok((crate::routing::diff::diff(&a, &b, SystemTime::now()), live.source))
}
