//! The audit trail: what changed a route's routing, when, and who did it — every operator
//! command (with the caller's address, its user agent and the token's name), every reload (with
//! what it changed), trip, rollout step, fleet adoption and failure to save the state, and each
//! start of the process.
//!
//! Events are numbered (`seq`, one more per event, kept across restarts), held in memory (the
//! last [`KEEP`]) for `GET /api/events`, and appended as JSON lines to a file beside the state
//! file ([`path_for`]) by a task of their own, so the control task never waits on a disk. The
//! file is bounded: past [`MAX_FILE`] bytes it becomes `<file>.1` (the one before goes) and a
//! new one starts, so the trail on disk is at most twice that. At start the two are read back:
//! a restart keeps the history (a line cut short by a crash is skipped and counted).

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::control::Actor;
use crate::notify::Event as Kind;

/// Events kept in memory for the API (the file keeps what [`MAX_FILE`] allows).
pub const KEEP: usize = 2000;
/// Bytes of one file of the trail before it is rotated.
pub const MAX_FILE: u64 = 1 << 20;
/// Lines of a reload's changes an event keeps (the rest are counted).
pub const MAX_CHANGES: usize = 50;
/// Events waiting for the writer; past it, an event is kept in memory only (and counted).
const QUEUE: usize = 4096;

/// One event of the trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// One more than the event before it, across restarts.
    pub seq: u64,
    /// RFC 3339, to the millisecond.
    pub at: String,
    /// The same, in Unix milliseconds.
    pub at_ms: u64,
    /// `trip`, `rollback`, `reset`, `rollout_step`, `rollout_done`, `rollout_aborted`,
    /// `reload`, `reload_failed`, `adopt`, `state_save_failed`, `start` (the webhook's names).
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Who: an operator's command or reload; absent for what the proxy did by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Actor>,
    /// One line, as the log and the webhook say it.
    pub text: String,
    /// The event's own figures: the users it moved, a trip's numbers, a reload's changes.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

/// What is about to be recorded: an [`Event`] without its number and time.
pub struct Record<'a> {
    pub kind: Kind,
    pub route: Option<&'a str>,
    pub pool: Option<&'a str>,
    pub by: Option<&'a Actor>,
    pub text: String,
    pub details: serde_json::Value,
}

/// The trail: in memory, and on disk once [`Audit::open`] gave it a file.
#[derive(Default)]
pub struct Audit {
    inner: Mutex<Inner>,
    file: OnceLock<File>,
}

#[derive(Default)]
struct Inner {
    events: VecDeque<Arc<Event>>,
    next: u64,
}

struct File {
    path: PathBuf,
    tx: mpsc::Sender<Write_>,
    /// The last write's error, until a write succeeds.
    error: Arc<Mutex<Option<String>>>,
    /// Events that never reached the file (the queue was full).
    dropped: std::sync::atomic::AtomicU64,
}

enum Write_ {
    Line(String),
    Flush(oneshot::Sender<()>),
}

/// Where the trail of a proxy with state file `state_file` is kept.
pub fn path_for(state_file: &Path) -> PathBuf {
    let mut p = state_file.as_os_str().to_owned();
    p.push(".events.jsonl");
    PathBuf::from(p)
}

/// The file the trail rotates into.
fn previous(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// What the file says about itself, for `GET /api/events`.
#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    pub path: Option<PathBuf>,
    /// Why the last write failed, until one succeeds.
    pub error: Option<String>,
    /// Events kept in memory only, because the writer fell behind.
    pub dropped: u64,
}

/// What [`Audit::query`] selects.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub route: Option<String>,
    /// Any of these kinds (empty: any kind).
    pub kinds: Vec<String>,
    /// Unix ms, inclusive.
    pub since_ms: Option<u64>,
    /// Unix ms, exclusive.
    pub until_ms: Option<u64>,
    /// Only events numbered above this.
    pub after: Option<u64>,
    /// The newest this many of what matched.
    pub limit: usize,
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        self.route
            .as_deref()
            .is_none_or(|r| e.route.as_deref() == Some(r))
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && self.since_ms.is_none_or(|t| e.at_ms >= t)
            && self.until_ms.is_none_or(|t| e.at_ms < t)
            && self.after.is_none_or(|s| e.seq > s)
    }
}

impl Audit {
    /// Records an event now: numbered, kept, queued for the file, logged. Returns it.
    pub fn record(&self, r: Record<'_>) -> Arc<Event> {
        self.record_at(r, SystemTime::now())
    }

    fn record_at(&self, r: Record<'_>, now: SystemTime) -> Arc<Event> {
        let event = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let event = Arc::new(Event {
                seq: inner.next,
                at: humantime::format_rfc3339_millis(now).to_string(),
                at_ms: crate::clock::unix_ms_of(now),
                kind: r.kind.name().to_owned(),
                route: r.route.map(str::to_owned),
                pool: r.pool.map(str::to_owned),
                by: r.by.cloned(),
                text: r.text,
                details: r.details,
            });
            inner.next += 1;
            if inner.events.len() == KEEP {
                inner.events.pop_front();
            }
            inner.events.push_back(event.clone());
            event
        };
        if let Some(f) = self.file.get() {
            let line = serde_json::to_string(&*event).unwrap_or_default();
            if f.tx.try_send(Write_::Line(line)).is_err() {
                f.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        tracing::debug!(seq = event.seq, kind = %event.kind, route = ?event.route, "event: {}", event.text);
        event
    }

    /// Reads back the trail kept at `path` (and its rotated part), then appends every event to
    /// it from now on. Once only; returns the lines that could not be read.
    pub fn open(&self, path: PathBuf) -> usize {
        let (events, bad) = load(&path);
        {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            // Events recorded before the file was opened (none, at start) come after it.
            let mut kept: VecDeque<Arc<Event>> = events.into_iter().map(Arc::new).collect();
            let next = kept.back().map_or(0, |e| e.seq + 1);
            let early = std::mem::take(&mut inner.events);
            inner.next = next;
            for e in early {
                let mut e = (*e).clone();
                e.seq = inner.next;
                inner.next += 1;
                kept.push_back(Arc::new(e));
            }
            while kept.len() > KEEP {
                kept.pop_front();
            }
            inner.events = kept;
        }
        if bad > 0 {
            tracing::warn!(file = %path.display(), "events: {bad} line(s) of the trail could not be read and were skipped");
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let error = Arc::new(Mutex::new(None));
        tokio::spawn(write(path.clone(), rx, error.clone()));
        let _ = self.file.set(File {
            path,
            tx,
            error,
            dropped: Default::default(),
        });
        bad
    }

    /// Answered once every event recorded so far is on disk (or failed to get there).
    pub async fn flush(&self) {
        let Some(f) = self.file.get() else { return };
        let (done, written) = oneshot::channel();
        if f.tx.send(Write_::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    /// The newest `filter.limit` events that match, oldest first, and how many matched.
    pub fn query(&self, filter: &Filter) -> (Vec<Arc<Event>>, usize) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let matched: Vec<&Arc<Event>> = inner.events.iter().filter(|e| filter.matches(e)).collect();
        let total = matched.len();
        let skip = total.saturating_sub(filter.limit);
        (matched[skip..].iter().map(|e| Arc::clone(e)).collect(), total)
    }

    /// The number the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).next
    }

    pub fn file_status(&self) -> FileStatus {
        match self.file.get() {
            None => FileStatus {
                path: None,
                error: None,
                dropped: 0,
            },
            Some(f) => FileStatus {
                path: Some(f.path.clone()),
                error: f.error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                dropped: f.dropped.load(std::sync::atomic::Ordering::Relaxed),
            },
        }
    }
}

/// The longest line of the trail read back (longer ones are skipped and counted).
const MAX_LINE: u64 = 256 << 10;

/// The events of the trail at `path`: its rotated part, then itself, in order; and the lines
/// that could not be read. Bounded whatever the files hold: of a file larger than this writer
/// makes, only its last [`MAX_FILE`] bytes are read, a line at most [`MAX_LINE`].
fn load(path: &Path) -> (Vec<Event>, usize) {
    use std::io::{Read, Seek};
    let mut events: VecDeque<Event> = VecDeque::new();
    let mut bad = 0;
    for p in [previous(path), path.to_owned()] {
        let Ok(mut f) = std::fs::File::open(&p) else {
            continue;
        };
        let len = f.metadata().map_or(0, |m| m.len());
        let mut skip_first = false;
        if len > MAX_FILE + MAX_LINE {
            if f.seek(std::io::SeekFrom::Start(len - MAX_FILE)).is_err() {
                bad += 1;
                continue;
            }
            // Where the reading starts is inside a line, most likely.
            skip_first = true;
        }
        let mut reader = std::io::BufReader::new(f);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = (&mut reader).take(MAX_LINE + 1).read_until(b'\n', &mut line);
            match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => {
                    bad += 1;
                    break;
                }
            }
            if line.len() as u64 > MAX_LINE {
                // Too long to be one of ours: skipped to its end.
                bad += 1;
                let mut rest = Vec::new();
                while !line.ends_with(b"\n") {
                    rest.clear();
                    match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut rest) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => line = std::mem::take(&mut rest),
                    }
                }
                continue;
            }
            if std::mem::take(&mut skip_first) {
                continue;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Event>(&line) {
                // Numbers only go up: a line out of order is not of this trail.
                Ok(e) if events.back().is_none_or(|b| e.seq > b.seq) => {
                    if events.len() == KEEP {
                        events.pop_front();
                    }
                    events.push_back(e);
                }
                _ => bad += 1,
            }
        }
    }
    (events.into(), bad)
}

/// The writer: appends what comes, in batches, rotating the file past [`MAX_FILE`].
async fn write(path: PathBuf, mut rx: mpsc::Receiver<Write_>, error: Arc<Mutex<Option<String>>>) {
    while let Some(first) = rx.recv().await {
        let mut lines = String::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(w) = next {
            match w {
                Write_::Line(l) => {
                    lines.push_str(&l);
                    lines.push('\n');
                }
                Write_::Flush(done) => flushes.push(done),
            }
            next = rx.try_recv().ok();
        }
        if !lines.is_empty() {
            let p = path.clone();
            let result = tokio::task::spawn_blocking(move || append(&p, &lines))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            let mut last = error.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(()) => *last = None,
                Err(e) => {
                    if last.is_none() {
                        tracing::warn!(file = %path.display(), "events: cannot write the audit trail ({e}); events are kept in memory only until it can (it is kept beside the state file: point [state] path at a writable file)");
                    }
                    *last = Some(e.to_string());
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Appends `lines` (each ending in a newline) to the trail, rotating it whenever the next line
/// would take it past [`MAX_FILE`].
fn append(path: &Path, lines: &str) -> std::io::Result<()> {
    let mut len = std::fs::metadata(path).map_or(0, |m| m.len());
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let mut pending = 0;
    let mut from = 0;
    for line in lines.split_inclusive('\n') {
        if len + (pending + line.len()) as u64 > MAX_FILE && len + pending as u64 > 0 {
            f.write_all(&lines.as_bytes()[from..from + pending])?;
            f.sync_data()?;
            std::fs::rename(path, previous(path))?;
            f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            (len, from, pending) = (0, from + pending, 0);
        }
        pending += line.len();
    }
    f.write_all(&lines.as_bytes()[from..from + pending])?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: Kind, route: &str, text: &str) -> Record<'static> {
        Record {
            kind,
            route: Some(Box::leak(route.to_owned().into_boxed_str())),
            pool: None,
            by: None,
            text: text.to_owned(),
            details: serde_json::Value::Null,
        }
    }

    #[test]
    fn a_query_takes_the_newest_that_match_oldest_first() {
        let a = Audit::default();
        for i in 0..10 {
            let route = if i % 2 == 0 { "web" } else { "api" };
            a.record_at(
                rec(Kind::Trip, route, &format!("{i}")),
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(i),
            );
        }
        let f = Filter {
            route: Some("web".into()),
            limit: 2,
            ..Filter::default()
        };
        let (got, total) = a.query(&f);
        assert_eq!(total, 5);
        assert_eq!(
            got.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(),
            ["6", "8"]
        );
        let f = Filter {
            since_ms: Some(3000),
            until_ms: Some(5000),
            limit: 100,
            ..Filter::default()
        };
        assert_eq!(a.query(&f).0.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
        let f = Filter {
            kinds: vec!["reset".into()],
            limit: 100,
            ..Filter::default()
        };
        assert_eq!(a.query(&f).1, 0);
        let f = Filter {
            after: Some(8),
            limit: 100,
            ..Filter::default()
        };
        assert_eq!(a.query(&f).0.iter().map(|e| e.seq).collect::<Vec<_>>(), [9]);
    }

    #[test]
    fn memory_keeps_the_last_events_only() {
        let a = Audit::default();
        for i in 0..KEEP + 5 {
            a.record(rec(Kind::Reload, "r", &i.to_string()));
        }
        let (got, total) = a.query(&Filter {
            limit: usize::MAX,
            ..Filter::default()
        });
        assert_eq!(total, KEEP);
        assert_eq!(got[0].seq, 5);
        assert_eq!(a.next_seq(), KEEP as u64 + 5);
    }

    #[tokio::test]
    async fn the_file_is_read_back_rotated_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.state.json.events.jsonl");
        let a = Audit::default();
        a.open(path.clone());
        let text = "x".repeat(1000);
        // Enough to rotate twice: the file and its one rotated part stay under 2 x MAX_FILE.
        let n = (3 * MAX_FILE / 1000) as usize;
        for _ in 0..n {
            a.record(rec(Kind::Reload, "r", &text));
        }
        a.flush().await;
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        assert!(size(&path) <= MAX_FILE, "{}", size(&path));
        assert!(size(&previous(&path)) <= MAX_FILE);
        assert!(size(&previous(&path)) > MAX_FILE / 2);
        assert!(a.file_status().error.is_none());

        // A crash cut the last line short: it is skipped; the numbers go on.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\": 99999, \"at\"").unwrap();
        drop(f);
        let b = Audit::default();
        assert_eq!(b.open(path.clone()), 1);
        assert_eq!(b.next_seq(), n as u64);
        let (got, _) = b.query(&Filter {
            limit: usize::MAX,
            ..Filter::default()
        });
        // What the two files hold: at least a full rotated file's worth, the newest, in order.
        assert!(
            got.len() >= (MAX_FILE / 1200) as usize && got.len() <= KEEP,
            "{}",
            got.len()
        );
        assert_eq!(got.last().unwrap().seq, n as u64 - 1);
        assert!(got.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        let e = b.record(rec(Kind::Rollback, "web", "after the restart"));
        assert_eq!(e.seq, n as u64);
    }

    #[test]
    fn a_file_of_any_size_is_read_back_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let event = |seq: u64| {
            let mut e = serde_json::to_string(&Event {
                seq,
                at: "2026-12-07T00:00:00.000Z".into(),
                at_ms: 0,
                kind: "reload".into(),
                route: None,
                pool: None,
                by: None,
                text: "x".into(),
                details: serde_json::Value::Null,
            })
            .unwrap();
            e.push('\n');
            e
        };
        // A line of 1 MiB with no newline in the middle, then good lines; then 3 MiB of
        // good lines in a file this writer would never make (no rotation).
        let mut text = String::new();
        text.push_str(&"y".repeat(1 << 20));
        text.push('\n');
        text.push_str(&event(0));
        let mut seq = 1;
        while text.len() < 3 << 20 {
            text.push_str(&event(seq));
            seq += 1;
        }
        std::fs::write(&path, &text).unwrap();
        let (events, bad) = load(&path);
        // Only the last MAX_FILE bytes: the long line and the first events are not read.
        assert_eq!(bad, 0);
        assert_eq!(events.last().unwrap().seq, seq - 1);
        assert!(events.len() <= KEEP);
        // A long line in a small file is skipped and counted, the lines after it kept.
        std::fs::write(
            &path,
            format!("{}\n{}{}", "z".repeat(300 << 10), event(0), event(1)),
        )
        .unwrap();
        let (events, bad) = load(&path);
        assert_eq!(bad, 1);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1]);
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_written_is_reported_and_memory_keeps_the_events() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be.
        let path = dir.path().join("events.jsonl");
        std::fs::create_dir(&path).unwrap();
        let a = Audit::default();
        a.open(path);
        a.record(rec(Kind::Rollback, "web", "x"));
        a.flush().await;
        assert!(a.file_status().error.is_some());
        assert_eq!(
            a.query(&Filter {
                limit: 10,
                ..Filter::default()
            })
            .1,
            1
        );
    }
}
