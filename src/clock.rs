//! Wall-clock time as the proxy shows and stores it.

use std::time::{SystemTime, UNIX_EPOCH};

/// The time as RFC 3339, to the second.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `t` in Unix milliseconds (0 before the epoch).
pub fn unix_ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Now, in Unix milliseconds.
pub fn unix_ms() -> u64 {
    unix_ms_of(SystemTime::now())
}
