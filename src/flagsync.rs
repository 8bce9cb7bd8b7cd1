//! Follows `flags_from`. The feature file is looked at every second (its size, modification
//! time and inode), and a change is a reload, like an edit of the TOML: a file that does not
//! parse changes nothing. An Unleash server is polled every `interval` with `If-None-Match`;
//! a new document is checked, then written (atomically) to the cache file beside the config,
//! which is the file that is looked at, so the same reload takes it in. A restart while the
//! server is down starts from the cached document.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::mpsc;

use crate::clock::timestamp;
use crate::config::{FlagsFrom, ServerSource};
use crate::control::Trigger;
use crate::egress::{RemoteError, RemoteFailure};
use crate::runtime::state::{FlagsSourceStatus, State};

/// How often the file is looked at.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);
/// The longest a poll of the server may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the proxy waits for the server before it starts serving, when it has no cached
/// document: past it, it starts without the server's flags (they are absent: off) and the poll
/// goes on every `interval`.
pub const START_TIMEOUT: Duration = Duration::from_secs(3);

/// What identifies a version of a file without reading it: size, modification time, inode.
type Signature = (u64, std::time::SystemTime, u64);

/// What identifies a version of a file without reading it.
fn signature(path: &Path) -> Option<Signature> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

/// Runs until the state is gone. `asked`: the server's URL and ETag, when the proxy asked it
/// just before starting (the first poll is then one interval later, and conditional).
pub async fn run(
    state: Weak<State>,
    triggers: mpsc::Sender<Trigger>,
    asked: Option<(String, Option<String>)>,
) {
    let snapshot = match state.upgrade() {
        Some(s) => Arc::downgrade(&s.snapshot),
        None => return,
    };
    let client = crate::egress::client();
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<(std::path::PathBuf, Option<Signature>)> = None;
    let mut next_poll = Instant::now();
    let mut etag: Option<(String, String)> = None;
    if let Some((url, tag)) = asked {
        if let Some(FlagsFrom::Server(src)) = snapshot.upgrade().and_then(|s| s.load().flags_from.clone()) {
            next_poll += src.interval;
        }
        etag = tag.map(|t| (url, t));
    }
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(live) = snapshot.upgrade() else { return };
        let from = live.load().flags_from.clone();
        drop(live);
        let Some(from) = from else {
            seen = None;
            continue;
        };
        if let FlagsFrom::Server(src) = &from {
            if Instant::now() >= next_poll {
                next_poll = Instant::now() + src.interval;
                let tag = etag
                    .as_ref()
                    .filter(|(url, _)| *url == src.url)
                    .map(|(_, t)| t.as_str());
                let result = poll(&client, src, tag, FETCH_TIMEOUT).await;
                match &result {
                    Ok(new_tag) => {
                        if failing {
                            tracing::info!(url = %src.url, "flags_from: the Unleash server answers again");
                        }
                        failing = false;
                        if let Some(t) = new_tag {
                            etag = Some((src.url.clone(), t.clone()));
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(url = %src.url, "flags_from: {e}; serving the last document");
                        }
                        failing = true;
                    }
                }
                let Some(st) = state.upgrade() else { return };
                report(&st, src, result.as_ref().map(|_| ()));
            }
        } else if let Some(st) = state.upgrade() {
            if st.config.load().flags_source.is_some() {
                st.config.rcu(|c| {
                    let mut c = (**c).clone();
                    c.flags_source = None;
                    c
                });
                st.metrics.flags_source_up(None);
            }
        }
        let path = from.file().to_owned();
        let now = signature(&path);
        let changed = matches!(&seen, Some((p, s)) if *p == path && *s != now);
        if changed && triggers.send(Trigger::File).await.is_err() {
            return;
        }
        seen = Some((path, now));
    }
}

/// Keeps what `/api/config`, `switchyard status` and the metrics say of the Unleash server
/// after a poll (or the ask before starting).
pub fn report(st: &State, src: &ServerSource, result: Result<(), &RemoteError>) {
    let now = timestamp(std::time::SystemTime::now());
    if let Err(e) = result {
        st.metrics.remote_error("unleash", e.kind);
    }
    st.metrics.flags_source_up(Some(result.is_ok()));
    let cached = src.cache.exists();
    st.config.rcu(|c| {
        let mut c = (**c).clone();
        let prev = c.flags_source.take().filter(|p| p.url == src.url);
        c.flags_source = Some(match result {
            Ok(()) => FlagsSourceStatus {
                url: src.url.clone(),
                up: true,
                last_answer: Some(now.clone()),
                failing_since: None,
                error: None,
                serving: "the server's latest document".into(),
            },
            Err(e) => FlagsSourceStatus {
                url: src.url.clone(),
                up: false,
                last_answer: prev.as_ref().and_then(|p| p.last_answer.clone()),
                failing_since: prev
                    .as_ref()
                    .and_then(|p| p.failing_since.clone())
                    .or_else(|| Some(now.clone())),
                error: Some(e.message.clone()),
                serving: if cached {
                    format!("the last good document ({})", src.cache.display())
                } else {
                    "no flags from the server (none fetched yet)".into()
                },
            },
        });
        c
    });
}

/// The largest feature document read from an Unleash server. A large instance's document (a
/// few thousand flags) is a few MiB; what is read is parsed and kept, so the bound keeps a
/// broken or hostile server from taking the proxy's memory.
pub const MAX_DOCUMENT: usize = 16 << 20;

/// One poll: a new document goes to the cache file. Returns the server's ETag, if any.
pub async fn poll(
    client: &crate::egress::HttpsClient,
    src: &ServerSource,
    etag: Option<&str>,
    timeout: Duration,
) -> Result<Option<String>, RemoteError> {
    let invalid = |m: String| RemoteError::new(RemoteFailure::Invalid, m);
    let mut req = http::Request::get(&src.url)
        .header("unleash-appname", "switchyard")
        .header("unleash-sdk", concat!("switchyard:", env!("CARGO_PKG_VERSION")))
        .header("unleash-client-spec", "6.1.0")
        .header(http::header::ACCEPT, "application/json");
    if let Some(var) = &src.token_env {
        match std::env::var(var) {
            Ok(t) if !t.is_empty() => req = req.header(http::header::AUTHORIZATION, t),
            _ => {
                return Err(invalid(format!(
                    "flags_from.token_env names {var}, which is not set"
                )))
            }
        }
    }
    if let Some(t) = etag {
        req = req.header(http::header::IF_NONE_MATCH, t);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| invalid(e.to_string()))?;
    let (head, body) = crate::egress::exchange(client, req, timeout, &src.url, MAX_DOCUMENT).await?;
    let status = head.status;
    let tag = head
        .headers
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if status == http::StatusCode::NOT_MODIFIED {
        return Ok(tag.or_else(|| etag.map(str::to_owned)));
    }
    if !status.is_success() {
        return Err(invalid(format!("{} answered {status}", src.url)));
    }
    crate::config::parse_features(&body).map_err(|e| invalid(format!("{} answered {e}", src.url)))?;
    if std::fs::read(&src.cache).is_ok_and(|old| old == body) {
        return Ok(tag);
    }
    let (cache, bytes) = (src.cache.clone(), body.clone());
    tokio::task::spawn_blocking(move || crate::persist::write_atomic(&cache, &bytes))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
        .map_err(|e| invalid(format!("cannot write {}: {e}", src.cache.display())))?;
    tracing::info!(url = %src.url, bytes = body.len(), "flags_from: a new document from the Unleash server");
    Ok(tag)
}
