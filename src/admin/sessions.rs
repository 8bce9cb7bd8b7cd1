//! A route's sessions (`[routes.session]`) as the API shows them: per pool, requests sent by a
//! pin and by the split, pins ended and why, and until when a pin on the pool may still be
//! honoured — past that, the pool has no session left and can be shut down.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::routing::session::Ended;
use crate::routing::Route;
use crate::runtime::Snapshot;

#[derive(Debug, Serialize)]
pub struct SessionStatus {
    pub cookie: String,
    pub idle_s: u64,
    pub max_age_s: u64,
    pub secret_env: String,
    /// Per pool of the split, in written order (counts since start, kept across reloads).
    pub pools: Vec<SessionPool>,
    /// Pins whose pool is no longer in the split.
    pub ended_removed: u64,
    /// Pins with a wrong signature (another secret, another route, tampered).
    pub ended_forged: u64,
}

#[derive(Debug, Serialize)]
pub struct SessionPool {
    pub pool: String,
    pub weight: u64,
    /// Requests a pin sent here.
    pub by_pin: u64,
    /// Requests the split sent here (no pin, or it ended; each got a new pin here).
    pub by_split: u64,
    /// Pins on this pool that ended, by reason (idle, max_age, tripped, rolled_back).
    pub ended: BTreeMap<&'static str, u64>,
    /// The latest time a pin on this pool that this replica wrote or honoured can still be
    /// honoured (Unix ms). At start it is at least the start plus the idle time: pins written
    /// before are not known.
    pub pins_valid_until_ms: u64,
    /// No pin on this pool can still be honoured (as this replica knows; with several
    /// replicas, the max of `switchyard_session_pins_valid_until_timestamp_seconds`).
    pub drained: bool,
}

/// The session status of `route`, or `None` when it has no session.
pub fn status(snap: &Snapshot, route: &Route, now_ms: u64) -> Option<SessionStatus> {
    let s = route.session.as_deref()?;
    let (counts, unnamed) = snap
        .metrics
        .as_deref()
        .and_then(|m| m.session_counts(route.index))
        .unwrap_or_default();
    let pools = route
        .split
        .weights()
        .map(|(p, weight)| {
            let (by_pin, by_split, ended, until) = counts
                .iter()
                .find(|c| c.0 == p)
                .map_or((0, 0, [0; 4], 0), |c| (c.1, c.2, c.3, c.4));
            let until_ms = until.saturating_mul(1000);
            SessionPool {
                pool: snap.pools[p].name.to_string(),
                weight,
                by_pin,
                by_split,
                ended: [Ended::Idle, Ended::MaxAge, Ended::Tripped, Ended::RolledBack]
                    .iter()
                    .zip(ended)
                    .map(|(e, n)| (e.name(), n))
                    .collect(),
                pins_valid_until_ms: until_ms,
                drained: until_ms <= now_ms,
            }
        })
        .collect();
    Some(SessionStatus {
        cookie: s.cookie.clone(),
        idle_s: s.idle.as_secs(),
        max_age_s: s.max_age.as_secs(),
        secret_env: s.secret_env.clone(),
        pools,
        ended_removed: unnamed[0],
        ended_forged: unnamed[1],
    })
}
