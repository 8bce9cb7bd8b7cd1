//! Follows `flags_from`. The feature file is looked at every second (its size, modification
//! time and inode), and a change is a reload, like an edit of the TOML: a file that does not
//! parse changes nothing. An Unleash server is polled every `interval` with `If-None-Match`;
//! a new document is checked, then written (atomically) to the cache file beside the config,
//! which is the file that is looked at, so the same reload takes it in. A restart while the
//! server is down starts from the cached document.

use std::path::Path;
use std::sync::Weak;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::mpsc;

use crate::config::{FlagsFrom, ServerSource};
use crate::reload::Trigger;
use crate::routing::Snapshot;

/// How often the file is looked at.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);
/// The longest a poll of the server may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What identifies a version of a file without reading it: size, modification time, inode.
type Signature = (u64, std::time::SystemTime, u64);

/// What identifies a version of a file without reading it.
fn signature(path: &Path) -> Option<Signature> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

/// Runs until the snapshot is gone. `asked`: the server's URL and ETag, when the proxy asked it
/// just before starting (the first poll is then one interval later, and conditional).
pub async fn run(
    snapshot: Weak<ArcSwap<Snapshot>>,
    triggers: mpsc::Sender<Trigger>,
    asked: Option<(String, Option<String>)>,
) {
    let client = crate::notify::client();
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
                match poll(&client, src, tag).await {
                    Ok(new_tag) => {
                        if failing {
                            tracing::info!(url = %src.url, "flags_from: the Unleash server answers again");
                        }
                        failing = false;
                        if let Some(t) = new_tag {
                            etag = Some((src.url.clone(), t));
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(url = %src.url, "flags_from: {e}; serving the last document");
                        }
                        failing = true;
                    }
                }
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

/// One poll: a new document goes to the cache file. Returns the server's ETag, if any.
pub async fn poll(
    client: &crate::notify::HttpsClient,
    src: &ServerSource,
    etag: Option<&str>,
) -> Result<Option<String>, String> {
    let mut req = http::Request::get(&src.url)
        .header("unleash-appname", "switchyard")
        .header("unleash-sdk", concat!("switchyard:", env!("CARGO_PKG_VERSION")))
        .header("unleash-client-spec", "6.1.0")
        .header(http::header::ACCEPT, "application/json");
    if let Some(var) = &src.token_env {
        match std::env::var(var) {
            Ok(t) if !t.is_empty() => req = req.header(http::header::AUTHORIZATION, t),
            _ => return Err(format!("flags_from.token_env names {var}, which is not set")),
        }
    }
    if let Some(t) = etag {
        req = req.header(http::header::IF_NONE_MATCH, t);
    }
    let req = req.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let (head, body) = crate::notify::exchange(client, req, FETCH_TIMEOUT, &src.url).await?;
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
        return Err(format!("{} answered {status}", src.url));
    }
    crate::config::parse_features(&body).map_err(|e| format!("{} answered {e}", src.url))?;
    if std::fs::read(&src.cache).is_ok_and(|old| old == body) {
        return Ok(tag);
    }
    let tmp = src.cache.with_extension("json.tmp");
    std::fs::write(&tmp, &body)
        .and_then(|()| std::fs::rename(&tmp, &src.cache))
        .map_err(|e| format!("cannot write {}: {e}", src.cache.display()))?;
    tracing::info!(url = %src.url, bytes = body.len(), "flags_from: a new document from the Unleash server");
    Ok(tag)
}
