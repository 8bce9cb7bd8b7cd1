//! The `switchyard` command line. Everything it does is in the library; this file parses
//! arguments, sets up logging and the runtime, and maps errors to exit codes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};
use switchyard::config::{self, LoadError};
use switchyard::logging::{self, LogFormat};
use switchyard::{demo, Server, Snapshot};

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

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file.
    Run {
        #[arg(short, long, default_value = "config/switchyard.toml")]
        config: PathBuf,
        /// Worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate a config file and print a summary; exit 1 with every error found.
    Check {
        #[arg(short, long, default_value = "config/switchyard.toml")]
        config: PathBuf,
    },
    /// Start built-in blue, green and canary upstreams and the proxy in front of them.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long)]
        workers: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, workers } => {
            let _guard = logging::init(cli.log_format);
            report(runtime(workers).and_then(|rt| rt.block_on(run(&config))))
        }
        Command::Demo { listen, workers } => {
            let _guard = logging::init(cli.log_format);
            report(runtime(workers).and_then(|rt| rt.block_on(run_demo(listen))))
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::FAILURE
        }
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
    match config::load(path, None) {
        Ok(snap) => {
            print!("{}", summary(path, &snap));
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

fn summary(path: &Path, snap: &Snapshot) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{}: ok (revision {})", path.display(), snap.revision);
    let addr = |a: Option<SocketAddr>| a.map_or("-".to_owned(), |a| a.to_string());
    let _ = writeln!(
        s,
        "listen: http {}, https {}",
        addr(snap.listen.http),
        addr(snap.listen.https)
    );
    let _ = writeln!(s, "pools ({}):", snap.pools.len());
    for p in &snap.pools {
        let eps: Vec<&str> = p.endpoints.iter().map(|e| &*e.address).collect();
        let _ = writeln!(s, "  {:<12} {:?}, {}", p.name, p.balance, eps.join(", "));
    }
    let _ = writeln!(s, "routes ({}):", snap.routes.len());
    for r in &snap.routes {
        let split: Vec<String> = r
            .split
            .weights()
            .map(|(p, w)| format!("{}={w}", snap.pools[p].name))
            .collect();
        let headers: Vec<String> = r
            .headers
            .iter()
            .map(|(k, v)| format!(" {k}={}", v.to_str().unwrap_or("?")))
            .collect();
        let _ = writeln!(
            s,
            "  {:<12} host={} prefix={}{} split {}",
            r.name,
            r.host.as_deref().unwrap_or("*"),
            r.path_prefix,
            headers.concat(),
            split.join(" ")
        );
    }
    s
}

async fn run(path: &Path) -> anyhow::Result<()> {
    let snap = match config::load(path, None) {
        Ok(s) => s,
        Err(LoadError::Invalid(d)) => anyhow::bail!("the config has errors:\n{d}"),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(config = %path.display(), revision = %snap.revision, routes = snap.routes.len(), pools = snap.pools.len(), "config loaded");
    serve(snap).await
}

async fn serve(snap: Snapshot) -> anyhow::Result<()> {
    let server = Server::bind(Arc::new(ArcSwap::from_pointee(snap))).await?;
    server.run(shutdown_signal()).await?;
    Ok(())
}

async fn run_demo(listen: SocketAddr) -> anyhow::Result<()> {
    let mut upstreams = Vec::new();
    for name in demo::POOLS {
        upstreams.push((name, demo::start_upstream(name).await?));
    }
    let ports = [
        upstreams[0].1.port(),
        upstreams[1].1.port(),
        upstreams[2].1.port(),
    ];
    let text = demo::config(listen, ports);
    let snap = config::load_str(&text, Path::new("demo.toml"), None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = Server::bind(Arc::new(ArcSwap::from_pointee(snap)))
        .await
        .with_context(|| format!("is another program on {listen}? try --listen 127.0.0.1:0"))?;
    let addr = server.http_addr().context("the demo has an http listener")?;
    println!("{}", demo::banner(addr, &upstreams));
    server.run(shutdown_signal()).await?;
    Ok(())
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
