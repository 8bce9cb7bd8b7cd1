//! The one writer's inbox: what the tasks, the admin API and the signals send to the control
//! task ([`crate::reload`]), which alone changes the live snapshot. Senders name this module,
//! never the writer.

use serde::Serialize;
use tokio::sync::oneshot;

use crate::guard::Figures;

/// Something that changes routing.
pub enum Trigger {
    /// The file's directory changed (reload only if the text changed).
    File,
    /// SIGHUP.
    Signal,
    /// `POST /api/reload`; the report goes back on the channel.
    Api {
        reply: oneshot::Sender<ReloadReport>,
        by: Actor,
    },
    /// The guard found `pool` of `route` failing.
    Trip {
        route: String,
        pool: String,
        reason: String,
        figures: Figures,
    },
    /// The guard found `route`'s rollout due for its next step.
    Advance { route: String, from_step: usize },
    /// An operator's command from the admin API (answered once the state file has it).
    Command {
        route: String,
        action: Action,
        reply: oneshot::Sender<Result<String, CommandError>>,
        by: Actor,
    },
    /// Answered once every state file write asked so far is done (at shutdown).
    Flush(oneshot::Sender<()>),
    /// Another replica of the fleet changed `route` more recently than this one: take its
    /// trips and rollout step.
    Adopt(Adopt),
    /// The fleet answered: routes held at their baselines since start follow their state.
    FleetKnown,
}

/// Who asked for a change: the admin API's caller (the CLI, the dashboard, curl), a signal, or
/// the config file's change. What the audit trail and the webhooks say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Actor {
    /// `api`, `signal` (SIGHUP) or `file` (the config file changed).
    pub via: String,
    /// The admin API caller's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// The name of the token it gave (the variable the token came from), when one is needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Its `user-agent` (`switchyard/…` for the commands, a browser's for the dashboard), at
    /// most 200 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

impl Actor {
    pub fn of(via: &str) -> Actor {
        Actor {
            via: via.to_owned(),
            addr: None,
            token: None,
            agent: None,
        }
    }

    /// `127.0.0.1:50412 (token ADMIN_TOKEN, curl/8.5.0)`, or `SIGHUP`, or `the config file`.
    pub fn describe(&self) -> String {
        match self.via.as_str() {
            "signal" => "SIGHUP".to_owned(),
            "file" => "the config file's change".to_owned(),
            _ => {
                let mut s = self.addr.clone().unwrap_or_else(|| "the admin API".into());
                let extra: Vec<String> = self
                    .token
                    .iter()
                    .map(|t| format!("token {t}"))
                    .chain(self.agent.clone())
                    .collect();
                if !extra.is_empty() {
                    s.push_str(&format!(" ({})", extra.join(", ")));
                }
                s
            }
        }
    }
}

/// The operator's commands on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send every user of the route to its baseline.
    Rollback,
    /// Clear trips (and restart the rollout from its first step).
    Reset,
    /// Move the rollout to its next step now.
    Promote,
}

/// Why a command was refused: `NotFound` (no such route) or `Conflict` (not possible now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    NotFound(String),
    Conflict(String),
}

/// Another replica's more recent state of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Adopt {
    pub route: String,
    /// [`fingerprint_label`] of the route on that replica: only the same split and pools apply.
    pub fingerprint: String,
    /// When it changed there, Unix ms.
    pub changed_ms: u64,
    /// Its tripped pools, and whether an operator rolled each back.
    pub tripped: Vec<(String, bool)>,
    /// Its rollout step.
    pub step: Option<usize>,
    /// The replica where the change happened (`switchyard_fleet_info{replica}`).
    pub from: String,
    /// Only an operator's rollbacks, from a replica on another split (during a config
    /// rollout): a rollback is always safe to take; its trips, resets and steps are not.
    pub rollback_only: bool,
}

/// One reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub at: String,
    /// "ok", "unchanged" or "error".
    pub result: &'static str,
    pub revision: String,
    /// The errors, one per line, as `switchyard check` prints them.
    pub error: Option<String>,
    /// What changed, as the reload log says it.
    pub changes: Vec<String>,
}
