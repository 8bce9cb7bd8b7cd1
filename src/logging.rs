//! Structured logs with `tracing`: human-readable text or one JSON object per line, written to
//! stderr by a background thread so a slow terminal or pipe never stalls a worker (under a
//! flood, lines are dropped rather than requests delayed). `RUST_LOG` filters, as usual;
//! access-log lines use the target `switchyard::access`.
//!
//! rustls's own lines are off unless `RUST_LOG` names rustls: every one of them is about what
//! a peer sent (an IP address as the TLS server name, a warning alert), so any client could
//! make the proxy write one per handshake. The proxy logs failed handshakes itself, at debug.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The filter's directives: `RUST_LOG`'s (default `info`), with rustls off unless named.
fn directives(env: Option<&str>) -> String {
    let base = env.filter(|e| !e.trim().is_empty()).unwrap_or("info");
    if base.contains("rustls") {
        base.to_owned()
    } else {
        format!("{base},rustls=off")
    }
}

/// Installs the global subscriber. Keep the guard alive until exit: dropping it flushes.
pub fn init(format: LogFormat) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let filter = EnvFilter::new(directives(std::env::var("RUST_LOG").ok().as_deref()));
    // Colours only for a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

#[cfg(test)]
mod tests {
    use super::directives;

    #[test]
    fn rustls_is_quiet_unless_asked_for() {
        assert_eq!(directives(None), "info,rustls=off");
        assert_eq!(directives(Some("debug")), "debug,rustls=off");
        assert_eq!(directives(Some("")), "info,rustls=off");
        assert_eq!(directives(Some("info,rustls=debug")), "info,rustls=debug");
    }
}
