//! Clocks: the time state files record and messages show, and a bounded
//! poll for an event that no signal cuts short.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// `2025-01-02 03:04:05 UTC` for a time in ms since the Unix epoch, the way
/// messages name a moment (a state file's own clock, not the reader's zone).
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Polls `done` every `every` until it is true (returns the time waited) or
/// `limit` has passed (returns `None`). This is how stages wait for an event
/// (an exit, a free port, an answer) without a fixed sleep.
pub(crate) fn wait_for(
    limit: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if done() {
            return Some(start.elapsed());
        }
        let elapsed = start.elapsed();
        if elapsed >= limit {
            return None;
        }
        std::thread::sleep(every.min(limit - elapsed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_names_the_moment() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_735_787_045_999), "2025-01-02 03:04:05 UTC");
    }
}
