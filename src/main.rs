//! The `switchyard` command line. Everything it does is in the library; this file parses
//! arguments, sets up logging and the runtime, and maps errors to exit codes.

#![deny(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use switchyard::app::StartError;
use switchyard::config::LoadError;
use switchyard::logging::{self, LogFormat};
use switchyard::{cli, demo, App, Source};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A reverse proxy that shifts traffic between versions of a service"
)]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// Where the admin API is: `--admin URL`, else `[admin] listen` of the config (which must
/// validate), else, with no config file at all, 127.0.0.1:9901.
#[derive(clap::Args)]
struct AdminArgs {
    /// The admin API's base URL.
    #[arg(long)]
    admin: Option<String>,
    /// The config whose `[admin] listen` and `token_env` to use [default: config/switchyard.toml]
    #[arg(short, long)]
    config: Option<PathBuf>,
}

impl AdminArgs {
    fn target(&self) -> anyhow::Result<cli::AdminTarget> {
        cli::AdminTarget::find(self.admin.as_deref(), self.config.as_deref())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file.
    Run {
        /// The config file.
        #[arg(short, long, default_value = "config/switchyard.toml")]
        config: PathBuf,
        /// Worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate a config file and print a summary; exit 1 with every error found.
    Check {
        /// The config file.
        #[arg(short, long, default_value = "config/switchyard.toml")]
        config: PathBuf,
    },
    /// Show what the proxy would do with a request: route, user, bucket, pool, flags and the
    /// headers sent upstream.
    Explain(ExplainArgs),
    /// Compare two configs: the share of users that would change pool on each route (from the
    /// live splits of the proxy OLD describes: trips and rollout steps applied), and the share
    /// that would see each flag flip.
    Diff {
        /// The config the proxy runs now.
        old: PathBuf,
        /// The config you mean to give it.
        new: PathBuf,
        /// Print JSON (every route's moves and every flag's flips, machine-readable).
        #[arg(long)]
        json: bool,
        /// Compare the files alone, without asking the running proxy for its live state.
        #[arg(long)]
        offline: bool,
    },
    /// Experiments' results: each arm's users, conversions, rate, interval, p-value, and the
    /// sample-ratio check; merged from several replicas when given several --admin.
    Experiments {
        /// A replica's admin API base URL (repeatable: the replicas' results are merged).
        #[arg(long = "admin")]
        admins: Vec<String>,
        /// The config whose `[admin] listen` and `token_env` to use, without --admin [default: config/switchyard.toml]
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Live view of routes, weights, trips, rollouts, guards and endpoints, from the admin API.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the admin API's JSON (routes, pools, config state) instead of the table.
        #[arg(long)]
        json: bool,
        /// Redraw in place every two seconds.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// The audit trail: operators' commands (who, from where), reloads and what they changed,
    /// trips, rollout steps, fleet adoptions, starts — oldest first (GET /api/events).
    Events {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only this route's events.
        #[arg(long)]
        route: Option<String>,
        /// Only events of this kind (repeatable): trip, rollback, reset, rollout_step,
        /// rollout_done, rollout_aborted, reload, reload_failed, adopt, state_save_failed, start.
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// From this time: an RFC 3339 time, Unix milliseconds, or a duration back (`1h`).
        #[arg(long)]
        since: Option<String>,
        /// Before this time (same forms).
        #[arg(long)]
        until: Option<String>,
        /// The newest this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON (with --follow, one object per line).
        #[arg(long)]
        json: bool,
        /// Then print new events as they come, until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
    /// Send every user of a route to its baseline pool (POST /api/routes/ROUTE/rollback).
    Rollback {
        /// The route's name, as in `[[routes]] name`.
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Clear a route's trips; a rollout starts again from its first step.
    Reset {
        /// The route's name, as in `[[routes]] name`.
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Move a route's rollout to its next step now.
    Promote {
        /// The route's name, as in `[[routes]] name`.
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print an override value that forces POOL from any client, signed with `[overrides]
    /// secret_env`'s secret: send it as the route's override header or cookie.
    OverrideToken {
        /// The pool to force.
        pool: String,
        /// The config whose `[overrides] secret_env` names the secret.
        #[arg(short, long, default_value = "config/switchyard.toml")]
        config: PathBuf,
        /// How long the value is honoured.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
    },
    /// Exit 0 when the proxy's admin API says it is ready (GET /readyz), 1 otherwise: a
    /// container's HEALTHCHECK or an exec probe, with no HTTP client in the image.
    Healthcheck {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print a shell completion script (e.g. `switchyard completions bash >
    /// /etc/bash_completion.d/switchyard`).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write it and one page per command into a directory
    /// (`switchyard man --out /usr/local/share/man/man1`).
    Man {
        /// Write switchyard.1 and switchyard-COMMAND.1 here instead of printing switchyard.1.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A stand-in upstream for trying configs and for the examples: answers every request with
    /// NAME and the x-switchyard-* headers it got; `POST /_demo/fail?percent=N` makes N% of
    /// its answers 500s.
    Echo {
        /// The name it answers with (a pool's name, say).
        name: String,
        /// Where it listens.
        #[arg(long, default_value = "127.0.0.1:7001")]
        listen: SocketAddr,
    },
    /// Start built-in blue, green and canary upstreams and the proxy in front of them.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where its admin API and dashboard listen.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Requests per second the demo sends through the proxy itself, from 500 simulated
        /// users (0: none).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=10_000))]
        traffic: u32,
        /// Worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
}

/// `explain`'s arguments.
#[derive(clap::Args)]
struct ExplainArgs {
    /// The config file.
    #[arg(short, long, default_value = "config/switchyard.toml")]
    config: PathBuf,
    /// Decide for this user key instead of the request's own.
    #[arg(long)]
    user: Option<String>,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// A request cookie, `name=value` (repeatable).
    #[arg(long = "cookie")]
    cookies: Vec<String>,
    /// The client's address (the socket's peer), for remoteAddress constraints and
    /// strategies; x-forwarded-for is believed as the proxy would (`[context]
    /// trusted_proxies`).
    #[arg(long)]
    client_ip: Option<std::net::IpAddr>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Answer from the file alone, without asking the running proxy (or its state file)
    /// for trips and rollout steps.
    #[arg(long)]
    offline: bool,
    /// `[METHOD] URL`; the URL may be a path (`/cart`) with the host in a Host header.
    #[arg(required = true, num_args = 1..=2)]
    request: Vec<String>,
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Explain(args) => report(explain(args)),
        Command::Diff {
            old,
            new,
            json,
            offline,
        } => report(diff(&old, &new, json, offline)),
        Command::Rollback { route, admin } => report(admin_command(&admin, &route, "rollback")),
        Command::Reset { route, admin } => report(admin_command(&admin, &route, "reset")),
        Command::Promote { route, admin } => report(admin_command(&admin, &route, "promote")),
        Command::Experiments { admins, config, json } => report((|| {
            let targets: Vec<cli::AdminTarget> = if admins.is_empty() {
                vec![cli::AdminTarget::find(None, config.as_deref())?]
            } else {
                admins
                    .iter()
                    .map(|a| cli::AdminTarget::find(Some(a), config.as_deref()))
                    .collect::<anyhow::Result<_>>()?
            };
            let out = runtime(Some(1))?.block_on(cli::experiments::run(&targets, json))?;
            cli::print(&out)?;
            Ok(())
        })()),
        Command::Status { admin, json, watch } => report(
            admin
                .target()
                .and_then(|t| runtime(Some(1)).and_then(|rt| rt.block_on(status(&t, json, watch)))),
        ),
        Command::Events {
            admin,
            route,
            kinds,
            since,
            until,
            limit,
            json,
            follow,
        } => {
            let q = cli::events::Query {
                route,
                kinds,
                since,
                until,
                limit: Some(limit),
            };
            report(admin.target().and_then(|t| {
                runtime(Some(1)).and_then(|rt| rt.block_on(cli::events::run(&t, &q, json, follow)))
            }))
        }
        Command::Run { config, workers } => {
            let _guard = logging::init(cli.log_format);
            report(runtime(workers).and_then(|rt| rt.block_on(run(&config))))
        }
        Command::OverrideToken { pool, config, ttl } => report(override_token(&config, &pool, *ttl)),
        Command::Healthcheck { admin } => report(admin.target().and_then(|t| {
            runtime(Some(1))?.block_on(async {
                let v = t.get("/readyz").await?;
                cli::print(&format!("{}\n", v["status"].as_str().unwrap_or("ready")))?;
                Ok(())
            })
        })),
        Command::Echo { name, listen } => report(runtime(Some(1)).and_then(|rt| {
            rt.block_on(async {
                let name: &'static str = Box::leak(name.into_boxed_str());
                let addr = demo::start_upstream_on(name, listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                println!("{name} answering on http://{addr}/");
                shutdown_signal().await;
                Ok(())
            })
        })),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "switchyard", &mut out);
            report(cli::print(&String::from_utf8_lossy(&out)).map_err(Into::into))
        }
        Command::Man { out } => report(match out {
            Some(dir) => std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
                .map_err(Into::into)
                .map(|()| {
                    println!(
                        "wrote switchyard.1 and a page per command (switchyard-run.1, ...) to {}",
                        dir.display()
                    )
                }),
            None => {
                let mut page = Vec::new();
                clap_mangen::Man::new(Cli::command())
                    .render(&mut page)
                    .map_err(Into::into)
                    .and_then(|()| cli::print(&String::from_utf8_lossy(&page)).map_err(Into::into))
            }
        }),
        Command::Demo {
            listen,
            admin,
            traffic,
            workers,
        } => {
            let _guard = logging::init(cli.log_format);
            report(runtime(workers).and_then(|rt| rt.block_on(run_demo(listen, admin, traffic))))
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `| head`: the reader has what it wanted.
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its `mi_option_e`; libmimalloc-sys names no constant
/// for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory the proxy frees goes back to the OS at once, not at the allocator's next activity on
/// that thread: the buffers an idle connection lets go of would otherwise stay resident until
/// traffic comes (`benches/idle.rs`: 11.2 KiB per idle connection stays 11.2 KiB; with this,
/// 3.7 KiB). The peer job's figures do not move. `MIMALLOC_PURGE_DELAY` still overrides it.
#[allow(unsafe_code)]
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a documented option to a value it takes (0: purge at once).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = match workers {
        Some(0) => anyhow::bail!("--workers must be at least 1"),
        // One worker: a current-thread runtime does the same work without the cross-thread
        // scheduling machinery (measured in the peer benchmark: see the README).
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all().build().context("cannot start the runtime")
}

fn check(path: &Path) -> ExitCode {
    match switchyard::runtime::load(path, None) {
        Ok(snap) => {
            // A reader that stops early (`| head -1`) has what it wanted.
            if let Err(e) = cli::print(&cli::summary::summary(path, &snap)) {
                return if e.kind() == std::io::ErrorKind::BrokenPipe {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                };
            }
            // The file is valid; `run` also needs the variables it names, which may be set
            // only where it runs. Said here, so no one learns it at the restart.
            for warning in snap.warnings.iter().cloned().chain(unset_variables(&snap)) {
                eprintln!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(LoadError::Invalid(d)) => {
            eprintln!("{d}");
            let n = d.errors.len();
            eprintln!("{}: {n} error{}", path.display(), if n == 1 { "" } else { "s" });
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn override_token(path: &Path, pool: &str, ttl: std::time::Duration) -> anyhow::Result<()> {
    let snap = cli::load(path)?;
    let policy = &snap.overrides;
    let var = policy
        .secret_env
        .as_deref()
        .context("the config has no [overrides] secret_env: name the variable holding the secret")?;
    let key = policy
        .key
        .as_deref()
        .with_context(|| format!("{var} is not set here: export the secret the proxy has"))?;
    anyhow::ensure!(
        snap.pools.iter().any(|p| &*p.name == pool),
        "the config has no pool `{pool}`"
    );
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + ttl.as_secs();
    cli::print(&format!(
        "{}\n",
        switchyard::routing::overrides::sign(key, pool, expires)
    ))?;
    Ok(())
}

/// The environment variables `snap` names that are not set here (or hold a session secret too
/// short to sign with): `run` would refuse to start without them.
fn unset_variables(snap: &switchyard::runtime::Snapshot) -> Vec<String> {
    let named = snap
        .admin
        .iter()
        .filter_map(|a| a.token_env.as_deref().map(|v| (v, "admin.token_env")))
        .chain(
            snap.notify
                .iter()
                .filter_map(|n| n.secret_env.as_deref().map(|v| (v, "notify secret_env"))),
        )
        .chain(
            snap.fleet
                .iter()
                .filter_map(|f| f.token_env.as_deref().map(|v| (v, "fleet.token_env"))),
        )
        .chain(
            snap.analysis
                .iter()
                .filter(|_| snap.any_checks())
                .filter_map(|a| a.token_env.as_ref())
                .filter(|(key, _)| *key == "analysis.token_env")
                .map(|(key, v)| (v.as_str(), *key)),
        )
        .chain(
            snap.overrides
                .secret_env
                .as_deref()
                .map(|v| (v, "overrides.secret_env")),
        )
        .chain(
            snap.routes
                .iter()
                .filter_map(|r| r.session.as_deref())
                .map(|s| (s.secret_env.as_str(), "routes.session secret_env")),
        )
        .chain(match &snap.flags_from {
            Some(switchyard::config::FlagsFrom::Server(s)) => {
                s.token_env.as_deref().map(|v| (v, "flags_from.token_env"))
            }
            _ => None,
        });
    named
        .filter(|(var, _)| std::env::var(var).map_or(true, |v| v.is_empty()))
        .map(|(var, key)| {
            format!("{key} names {var}, which is not set here: `run` refuses to start without it")
        })
        // A session secret that is set but too short: `run` refuses it as it refuses an unset one.
        .chain(
            snap.routes
                .iter()
                .filter_map(|r| r.session.as_deref())
                .filter_map(|s| {
                    let len = std::env::var(&s.secret_env).map_or(0, |v| v.len());
                    (len > 0 && len < switchyard::routing::session::MIN_SECRET_BYTES).then(|| {
                        format!(
                            "routes.session secret_env names {}, which holds {len} bytes here: `run` refuses a session secret under {}",
                            s.secret_env,
                            switchyard::routing::session::MIN_SECRET_BYTES
                        )
                    })
                }),
        )
        .fold(Vec::new(), |mut all, line| {
            if !all.contains(&line) {
                all.push(line);
            }
            all
        })
}

fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    use switchyard::proxy::explain::Question;
    let ExplainArgs {
        config: path,
        user,
        headers,
        cookies,
        client_ip: client,
        json,
        offline,
        request,
    } = args;
    let path = path.as_path();
    let (method, url) = match request.as_slice() {
        [url] => (http::Method::GET, url),
        [m, url] => (
            http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).context("bad METHOD")?,
            url,
        ),
        _ => anyhow::bail!("give [METHOD] URL"),
    };
    let uri: http::Uri = url.parse().with_context(|| format!("`{url}` is not a URL"))?;
    let mut map = http::HeaderMap::new();
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("-H `{h}`: write 'name: value'"))?;
        map.append(
            http::HeaderName::from_bytes(k.trim().as_bytes())
                .with_context(|| format!("-H `{h}`: bad name"))?,
            http::HeaderValue::from_str(v.trim()).with_context(|| format!("-H `{h}`: bad value"))?,
        );
    }
    if !cookies.is_empty() {
        anyhow::ensure!(
            cookies.iter().all(|c| c.contains('=')),
            "--cookie takes name=value"
        );
        map.append(
            http::header::COOKIE,
            http::HeaderValue::from_str(&cookies.join("; "))?,
        );
    }
    let q = Question {
        method,
        uri,
        headers: map,
        user,
        client,
    };
    let answer = runtime(Some(1))?.block_on(cli::explain(path, &q, offline))?;
    if json {
        cli::print(&format!("{}\n", serde_json::to_string_pretty(&answer)?))?;
    } else {
        cli::print(&answer.to_string())?;
    }
    Ok(())
}

fn diff(old: &Path, new: &Path, json: bool, offline: bool) -> anyhow::Result<()> {
    let (d, live) = runtime(Some(1))?.block_on(cli::diff(old, new, offline))?;
    if json {
        let mut v = serde_json::to_value(&d)?;
        v["live"] = live.into();
        cli::print(&format!("{}\n", serde_json::to_string_pretty(&v)?))?;
    } else {
        cli::print(&format!("live: {live}\n{d}"))?;
    }
    Ok(())
}

async fn run(path: &Path) -> anyhow::Result<()> {
    let app = App::start(Source::File(path.to_owned()))
        .await
        .map_err(|e| match e {
            StartError::Config(LoadError::Invalid(d)) => anyhow::anyhow!("the config has errors:\n{d}"),
            other => anyhow::anyhow!(other),
        })?;
    let snap = app.state().snapshot.load_full();
    tracing::info!(config = %path.display(), revision = %snap.revision, routes = snap.routes.len(), pools = snap.pools.len(), "config loaded");
    if let Some(triggers) = app.triggers() {
        tokio::spawn(reload_on_sighup(triggers));
    }
    app.run(shutdown_signal()).await?;
    Ok(())
}

/// SIGHUP reloads the config, as for nginx and HAProxy.
async fn reload_on_sighup(triggers: tokio::sync::mpsc::Sender<switchyard::control::Trigger>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP; reload by saving the file or with POST /api/reload");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config");
        if triggers.send(switchyard::control::Trigger::Signal).await.is_err() {
            return;
        }
    }
}

/// `rollback`, `reset` and `promote`: one POST to the admin API.
fn admin_command(admin: &AdminArgs, route: &str, action: &str) -> anyhow::Result<()> {
    let target = admin.target()?;
    runtime(Some(1))?.block_on(cli::command(&target, route, action))
}

async fn status(admin: &cli::AdminTarget, json: bool, watch: bool) -> anyhow::Result<()> {
    if watch {
        return cli::status::watch(admin).await;
    }
    let view = cli::status::View::fetch(admin).await?;
    if json {
        cli::print(&format!("{}\n", serde_json::to_string_pretty(&view.json())?))?;
    } else {
        cli::print(&cli::status::render(&view, std::time::SystemTime::now()))?;
    }
    Ok(())
}

async fn run_demo(listen: SocketAddr, admin: SocketAddr, traffic: u32) -> anyhow::Result<()> {
    let mut upstreams = Vec::new();
    for name in demo::POOLS {
        upstreams.push((name, demo::start_upstream(name).await?));
    }
    let ports = [
        upstreams[0].1.port(),
        upstreams[1].1.port(),
        upstreams[2].1.port(),
    ];
    let text = demo::config(listen, admin, ports);
    let app = App::start(Source::Text {
        text,
        name: "demo.toml".into(),
    })
    .await
    .with_context(|| {
        format!("is another program on {listen} or {admin}? try --listen 127.0.0.1:0 --admin 127.0.0.1:0")
    })?;
    let addr = app.http_addr().context("the demo has an http listener")?;
    println!(
        "{}",
        demo::banner(addr, app.admin_addr(), &upstreams, &exe_for_humans(), traffic)
    );
    tokio::spawn(demo::traffic(addr, traffic));
    app.run(shutdown_signal()).await?;
    Ok(())
}

/// How to run this binary again from the current directory: `switchyard` when that is what
/// the PATH finds, else its path (relative when under the current directory, as
/// `./target/release/switchyard` under `cargo run`).
fn exe_for_humans() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "switchyard".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            std::fs::canonicalize(dir.join("switchyard"))
                .is_ok_and(|p| Some(p) == std::fs::canonicalize(&exe).ok())
        })
    });
    if on_path {
        return "switchyard".into();
    }
    match std::env::current_dir()
        .ok()
        .and_then(|d| exe.strip_prefix(d).ok().map(Path::to_path_buf))
    {
        Some(rel) => format!("./{}", rel.display()),
        None => exe.display().to_string(),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::MI_OPTION_PURGE_DELAY;
    use clap::CommandFactory;

    /// Every command and every argument of every command says what it is in `--help` (and so in
    /// the man pages).
    #[test]
    fn every_command_and_argument_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            cmd.clone().debug_assert();
            if cmd.get_about().is_none() {
                missing.push(format!("{path}: no about"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "switchyard", &mut missing);
        assert!(missing.is_empty(), "undescribed: {missing:?}");
    }

    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_option_is_the_one_set() {
        // mimalloc v3's default purge delay is 1000 ms; no other option defaults to it. (The
        // test process runs without `tune_allocator`.)
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads an option.
            assert_eq!(
                unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
                1000
            );
        }
    }
}
