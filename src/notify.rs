//! Webhook notifications (`[[notify]]`): what the guard and the operators did, sent to the URLs
//! that asked for it: a trip, a rollout's step, end or abort, a reset or a rollback, a failed
//! reload, a state file that could not be saved.
//!
//! A notification is a JSON object (`event`, `route`, `pool`, the figures, `at`, and a `text`
//! line, so a Slack incoming webhook shows it as it is), POSTed with `x-switchyard-event` and,
//! when the entry names a secret, `x-switchyard-signature: sha256=<hex>`: the HMAC-SHA256 of
//! the body under the secret, as GitHub signs its webhooks.
//!
//! Nothing here is on the request path or blocks the control task: each entry has its own
//! bounded queue and delivery task, so a receiver that is down or slow delays only its own
//! notifications. A delivery is tried three times (1 s, then 2 s apart) within the entry's
//! timeout each; what cannot be delivered, or finds the queue full, is counted
//! (`switchyard_notifications_total{result}`) and logged.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use prometheus::IntCounter;
use tokio::sync::mpsc;

use crate::egress::HttpsClient;

/// Notifications waiting per entry; past this, new ones are dropped (and counted).
const QUEUE: usize = 256;
/// Attempts per notification, and the pause before each retry.
const BACKOFF: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(2)];

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    Trip,
    RolloutStep,
    RolloutDone,
    RolloutAborted,
    Reset,
    Rollback,
    ReloadFailed,
    StateSaveFailed,
    /// A reload that changed the config (only when an entry asks for it).
    Reload,
    /// Another replica's trip, rollback or step taken through the fleet (only when asked for).
    Adopt,
    /// The process started (only when asked for).
    Start,
    /// A guard's check of a pool changed verdict: passing, failing, inconclusive, erroring
    /// (only when asked for).
    Check,
}

impl Event {
    pub const ALL: [Event; 12] = [
        Event::Trip,
        Event::RolloutStep,
        Event::RolloutDone,
        Event::RolloutAborted,
        Event::Reset,
        Event::Rollback,
        Event::ReloadFailed,
        Event::StateSaveFailed,
        Event::Reload,
        Event::Adopt,
        Event::Start,
        Event::Check,
    ];

    /// What an entry without `events` gets: what needs a person's attention (the first eight),
    /// not the routine (reloads, adoptions, starts).
    pub const DEFAULT: &'static [Event] = Event::ALL.split_at(8).0;

    pub fn name(self) -> &'static str {
        match self {
            Event::Trip => "trip",
            Event::RolloutStep => "rollout_step",
            Event::RolloutDone => "rollout_done",
            Event::RolloutAborted => "rollout_aborted",
            Event::Reset => "reset",
            Event::Rollback => "rollback",
            Event::ReloadFailed => "reload_failed",
            Event::StateSaveFailed => "state_save_failed",
            Event::Reload => "reload",
            Event::Adopt => "adopt",
            Event::Start => "start",
            Event::Check => "check",
        }
    }

    pub fn from_name(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// One `[[notify]]` entry, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    pub url: Uri,
    pub events: Vec<Event>,
    /// The environment variable holding the signing secret.
    pub secret_env: Option<String>,
    pub timeout: Duration,
}

/// Where notifications go: one delivery task per `[[notify]]` entry.
pub struct Notifier {
    targets: ArcSwap<Vec<Target>>,
    /// What the targets were made from, so an unchanged config keeps its queues.
    configured: ArcSwap<Vec<NotifyConfig>>,
    counters: Counters,
}

struct Target {
    events: Vec<Event>,
    tx: mpsc::Sender<Bytes>,
    name: String,
}

/// The notification counters, by result.
#[derive(Clone)]
pub struct Counters {
    pub delivered: IntCounter,
    pub failed: IntCounter,
    pub dropped: IntCounter,
}

impl Counters {
    /// The notification counters of `metrics`, for the delivery tasks.
    pub fn of(metrics: &crate::metrics::Metrics) -> Counters {
        let c = |result: &str| metrics.notifications.with_label_values(&[result]);
        Counters {
            delivered: c("delivered"),
            failed: c("failed"),
            dropped: c("dropped"),
        }
    }
}

impl Notifier {
    pub fn new(counters: Counters) -> Notifier {
        Notifier {
            targets: ArcSwap::from_pointee(Vec::new()),
            configured: ArcSwap::from_pointee(Vec::new()),
            counters,
        }
    }

    /// Makes the targets of `entries` (their secrets read from the environment now), replacing
    /// the current ones unless they are the same. `Err` names a secret's variable that is not
    /// set; nothing changes then.
    pub fn configure(&self, entries: &[NotifyConfig]) -> Result<(), String> {
        if **self.configured.load() == entries {
            return Ok(());
        }
        let mut secrets = Vec::new();
        for e in entries {
            secrets.push(match &e.secret_env {
                None => None,
                Some(var) => match std::env::var(var) {
                    Ok(s) if !s.is_empty() => Some(s),
                    _ => {
                        return Err(format!(
                            "notify {}: secret_env names {var}, but {var} is not set — export it, or remove secret_env",
                            redact_url(&e.url)
                        ))
                    }
                },
            });
        }
        let client = (!entries.is_empty()).then(crate::egress::client);
        let targets = entries
            .iter()
            .zip(secrets)
            .map(|(e, secret)| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let key = secret.map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.as_bytes()));
                let client = client.clone().expect("made for a non-empty list");
                tokio::spawn(deliver(rx, e.clone(), key, client, self.counters.clone()));
                Target {
                    events: e.events.clone(),
                    tx,
                    name: redact_url(&e.url),
                }
            })
            .collect();
        // The old targets' senders go with them: their tasks deliver what is queued and end.
        self.targets.store(Arc::new(targets));
        self.configured.store(Arc::new(entries.to_vec()));
        Ok(())
    }

    /// Queues a notification of `event` for every entry that asked for it. `fields` are the
    /// event's own (route, pool, figures...); `text` is the one-line summary.
    pub fn send(&self, event: Event, mut fields: serde_json::Value, text: &str) {
        let targets = self.targets.load();
        if !targets.iter().any(|t| t.events.contains(&event)) {
            return;
        }
        if let Some(map) = fields.as_object_mut() {
            map.insert("event".into(), event.name().into());
            map.insert("at".into(), crate::clock::timestamp(SystemTime::now()).into());
            map.insert("text".into(), format!("switchyard: {text}").into());
        }
        let body = Bytes::from(serde_json::to_vec(&fields).unwrap_or_default());
        for t in targets.iter().filter(|t| t.events.contains(&event)) {
            if t.tx.try_send(body.clone()).is_err() {
                self.counters.dropped.inc();
                tracing::warn!(target_url = %t.name, event = event.name(), "notification dropped: the queue is full (the receiver is down or slow)");
            }
        }
    }
}

/// Delivers one entry's notifications in order until its queue is dropped.
async fn deliver(
    mut rx: mpsc::Receiver<Bytes>,
    entry: NotifyConfig,
    key: Option<ring::hmac::Key>,
    client: HttpsClient,
    counters: Counters,
) {
    while let Some(body) = rx.recv().await {
        let event = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["event"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let signature = key.as_ref().map(|k| {
            let tag = ring::hmac::sign(k, &body);
            format!("sha256={}", hex(tag.as_ref()))
        });
        let mut last_error = String::new();
        let mut delivered = false;
        for attempt in 0..=BACKOFF.len() {
            if attempt > 0 {
                tokio::time::sleep(BACKOFF[attempt - 1]).await;
            }
            let mut req = http::Request::post(entry.url.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(
                    http::header::USER_AGENT,
                    concat!("switchyard/", env!("CARGO_PKG_VERSION")),
                )
                .header("x-switchyard-event", event.as_str());
            if let Some(sig) = &signature {
                req = req.header("x-switchyard-signature", sig.as_str());
            }
            let Ok(req) = req.body(Full::new(body.clone())) else {
                last_error = "the request could not be made".into();
                break;
            };
            match tokio::time::timeout(entry.timeout, client.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    delivered = true;
                    break;
                }
                Ok(Ok(resp)) => last_error = format!("answered {}", resp.status()),
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = format!("no answer within {:?}", entry.timeout),
            }
        }
        if delivered {
            counters.delivered.inc();
        } else {
            counters.failed.inc();
            tracing::warn!(url = %redact_url(&entry.url), event, "notification not delivered after {} attempts: {last_error}", BACKOFF.len() + 1);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A webhook URL as logs and `check` show it: scheme and host only. Its path, query and
/// user info are often the credential itself (Slack's `/services/T…/B…/secret`,
/// `user:password@`).
pub fn redact_url(url: &Uri) -> String {
    let scheme = url.scheme_str().unwrap_or("http");
    let host = url.host().unwrap_or("");
    let port = url.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    let hidden = url
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty());
    format!("{scheme}://{host}{port}/{}", if hidden { "…" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_credentials() {
        let u: Uri = "https://user:pa55@hooks.slack.com/services/T0/B0/s3cr3t?x=1"
            .parse()
            .unwrap();
        assert_eq!(redact_url(&u), "https://hooks.slack.com/…");
        let u: Uri = "http://10.0.0.1:8080/".parse().unwrap();
        assert_eq!(redact_url(&u), "http://10.0.0.1:8080/");
    }

    #[test]
    fn event_names_round_trip() {
        for e in Event::ALL {
            assert_eq!(Event::from_name(e.name()), Some(e));
        }
        assert_eq!(Event::from_name("tripped"), None);
    }

    #[test]
    fn signatures_are_github_style_hmac_sha256() {
        // RFC 4231 test case 2.
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let tag = ring::hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(
            hex(tag.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
