//! Clock helpers shared by state files and progress output.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `1.23 s`, the way every stage reports a duration.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
