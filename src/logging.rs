//! Structured logs with `tracing`: human-readable text or one JSON object per line, written to
//! stderr by a background thread so a slow terminal or pipe never stalls a worker (under a
//! flood, lines are dropped rather than requests delayed). `RUST_LOG` filters, as usual;
//! access-log lines use the target `switchyard::access`.
//!
//! Access-log lines skip `tracing`'s formatting: [`access`] writes each one itself, in the same
//! text or JSON shape, into a buffer the worker thread reuses, and hands the bytes to the same
//! background writer. What `tracing`'s field visitors and formatters cost per line (about
//! 4.5 µs, a fifth of a proxied request) is most of what an access log cost.
//!
//! rustls's own lines are off unless `RUST_LOG` names rustls: every one of them is about what
//! a peer sent (an IP address as the TLS server name, a warning alert), so any client could
//! make the proxy write one per handshake. The proxy logs failed handshakes itself, at debug.

use std::cell::RefCell;
use std::io::Write;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
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

/// Where access-log lines go, once [`init`] has run (without it, nowhere).
struct Sink {
    json: bool,
    writer: NonBlocking,
}

static ACCESS: OnceLock<Sink> = OnceLock::new();

thread_local! {
    /// Each thread's line buffer and its own handle on the writer (no shared counter touched
    /// per line).
    static LINE: RefCell<(Vec<u8>, Option<NonBlocking>)> = const { RefCell::new((Vec::new(), None)) };
}

/// One request's access-log line.
pub struct AccessLine<'a> {
    pub client: std::net::IpAddr,
    pub peer: std::net::SocketAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub pool: &'a str,
    pub status: u16,
    pub duration_ms: f64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub upstream: &'a str,
    pub upstream_ms: Option<f64>,
    pub error: &'a str,
    pub body_failed: bool,
    pub request_id: &'a str,
}

/// Writes an access-log line, when logging is set up and `RUST_LOG` lets
/// `switchyard::access` through at `info`.
pub fn access(line: &AccessLine<'_>) {
    let Some(sink) = ACCESS.get() else { return };
    if !tracing::enabled!(target: "switchyard::access", tracing::Level::INFO) {
        return;
    }
    LINE.with(|cell| {
        let (buf, writer) = &mut *cell.borrow_mut();
        buf.clear();
        let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        if sink.json {
            write_json(buf, &now, line);
        } else {
            write_text(buf, &now, line);
        }
        let w = writer.get_or_insert_with(|| sink.writer.clone());
        // The writer drops lines rather than block when its queue is full.
        let _ = w.write_all(buf);
    });
}

/// As `tracing_subscriber`'s text format writes the same event (without colours).
fn write_text(buf: &mut Vec<u8>, now: &impl std::fmt::Display, l: &AccessLine<'_>) {
    let _ = write!(
        buf,
        "{now}  INFO switchyard::access: client={} peer={} method={} path={:?} route={:?} pool={:?} status={} duration_ms={:?} bytes_received={} bytes_sent={} upstream={:?}",
        l.client, l.peer, l.method, l.path, l.route, l.pool, l.status, l.duration_ms, l.bytes_received, l.bytes_sent, l.upstream
    );
    if let Some(ms) = l.upstream_ms {
        let _ = write!(buf, " upstream_ms={ms:?}");
    }
    let _ = writeln!(
        buf,
        " error={:?} body_failed={} request_id={:?}",
        l.error, l.body_failed, l.request_id
    );
}

/// As `tracing_subscriber`'s JSON format writes the same event (flattened).
fn write_json(buf: &mut Vec<u8>, now: &impl std::fmt::Display, l: &AccessLine<'_>) {
    let s = |buf: &mut Vec<u8>, key: &str, v: &str| {
        let _ = write!(buf, ",\"{key}\":");
        let _ = serde_json::to_writer(&mut *buf, v);
    };
    let _ = write!(buf, "{{\"timestamp\":\"{now}\",\"level\":\"INFO\"");
    // Addresses need no escaping: written in place, without a string each.
    let _ = write!(buf, ",\"client\":\"{}\",\"peer\":\"{}\"", l.client, l.peer);
    s(buf, "method", l.method);
    s(buf, "path", l.path);
    s(buf, "route", l.route);
    s(buf, "pool", l.pool);
    let _ = write!(buf, ",\"status\":{},\"duration_ms\":", l.status);
    let _ = serde_json::to_writer(&mut *buf, &l.duration_ms);
    let _ = write!(
        buf,
        ",\"bytes_received\":{},\"bytes_sent\":{}",
        l.bytes_received, l.bytes_sent
    );
    s(buf, "upstream", l.upstream);
    if let Some(ms) = l.upstream_ms {
        buf.extend_from_slice(b",\"upstream_ms\":");
        let _ = serde_json::to_writer(&mut *buf, &ms);
    }
    s(buf, "error", l.error);
    let _ = write!(buf, ",\"body_failed\":{}", l.body_failed);
    s(buf, "request_id", l.request_id);
    buf.extend_from_slice(b",\"target\":\"switchyard::access\"}\n");
}

/// Installs the global subscriber. Keep the guard alive until exit: dropping it flushes.
pub fn init(format: LogFormat) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let _ = ACCESS.set(Sink {
        json: format == LogFormat::Json,
        writer: writer.clone(),
    });
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
    use super::*;

    /// What `tracing_subscriber` writes for the access event the proxy used to emit.
    fn by_tracing(json: bool, l: &AccessLine<'_>) -> String {
        #[derive(Clone, Default)]
        struct Out(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Out {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Out::default();
        let o = out.clone();
        let builder = tracing_subscriber::fmt()
            .with_writer(move || o.clone())
            .with_ansi(false);
        let emit = || {
            tracing::info!(
                target: "switchyard::access",
                client = %l.client,
                peer = %l.peer,
                method = %l.method,
                path = l.path,
                route = l.route,
                pool = l.pool,
                status = l.status,
                duration_ms = l.duration_ms,
                bytes_received = l.bytes_received,
                bytes_sent = l.bytes_sent,
                upstream = l.upstream,
                upstream_ms = l.upstream_ms,
                error = l.error,
                body_failed = l.body_failed,
                request_id = l.request_id,
            )
        };
        if json {
            tracing::subscriber::with_default(builder.json().flatten_event(true).finish(), emit);
        } else {
            tracing::subscriber::with_default(builder.finish(), emit);
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn access_lines_read_as_tracing_wrote_them() {
        let lines = [
            AccessLine {
                client: "198.51.100.7".parse().unwrap(),
                peer: "127.0.0.1:5555".parse().unwrap(),
                method: "GET",
                path: "/a \"b\"\\c/é",
                route: "web",
                pool: "blue",
                status: 200,
                duration_ms: 0.512_345,
                bytes_received: 0,
                bytes_sent: 4,
                upstream: "127.0.0.1:9001",
                upstream_ms: Some(0.25),
                error: "-",
                body_failed: false,
                request_id: "req-7",
            },
            AccessLine {
                client: "::1".parse().unwrap(),
                peer: "[::1]:80".parse().unwrap(),
                method: "POST",
                path: "/",
                route: "-",
                pool: "-",
                status: 502,
                duration_ms: 12.0,
                bytes_received: 10_000,
                bytes_sent: 0,
                upstream: "-",
                upstream_ms: None,
                error: "upstream_connect",
                body_failed: true,
                request_id: "-",
            },
        ];
        for l in &lines {
            let theirs = by_tracing(false, l);
            let mut ours = Vec::new();
            write_text(&mut ours, &"T", l);
            let ours = String::from_utf8(ours).unwrap();
            let (_, their_rest) = theirs.split_once("  INFO").unwrap();
            assert_eq!(ours, format!("T  INFO{their_rest}"));
            let theirs: serde_json::Value = serde_json::from_str(&by_tracing(true, l)).unwrap();
            let mut ours = Vec::new();
            write_json(&mut ours, &"T", l);
            assert_eq!(ours.last(), Some(&b'\n'));
            let mut ours: serde_json::Value = serde_json::from_slice(&ours).unwrap();
            ours["timestamp"] = theirs["timestamp"].clone();
            assert_eq!(ours, theirs);
            // And in the same order.
            let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(&ours), keys(&theirs));
        }
    }

    #[test]
    fn rustls_is_quiet_unless_asked_for() {
        assert_eq!(directives(None), "info,rustls=off");
        assert_eq!(directives(Some("debug")), "debug,rustls=off");
        assert_eq!(directives(Some("")), "info,rustls=off");
        assert_eq!(directives(Some("info,rustls=debug")), "info,rustls=debug");
    }
}
