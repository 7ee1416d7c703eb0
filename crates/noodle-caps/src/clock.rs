//! Time as tokens see it: whole unix seconds, and how to print them.
//!
//! Datalog dates are unsigned seconds since the epoch; everything here saturates instead of
//! panicking on times before 1970 or past the year 9999.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whole seconds since the epoch; 0 for earlier times.
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `date`, `between`, `time`, `zone`: e.g. `2026-11-23T13:00:00Z` or `2026-11-23 13:00:00 UTC`;
/// `None` when out of the calendar's range.
fn format(unix: i64, between: char, zone: &str) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).ok()?;
    Some(format!(
        "{:04}-{:02}-{:02}{between}{:02}:{:02}:{:02}{zone}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// `2026-11-23T13:00:00Z`, or `@<secs>` when out of the calendar's range.
pub(crate) fn rfc3339(unix: i64) -> String {
    format(unix, 'T', "Z").unwrap_or_else(|| format!("@{unix}"))
}

/// `2026-11-23 13:00:00 UTC`, for people.
pub(crate) fn human_date(unix: i64) -> String {
    format(unix, ' ', " UTC").unwrap_or_else(|| format!("@{unix} (unix seconds)"))
}

/// `59m`, `2h 5m`, `3d 4h`, `30s`: two units at most.
pub(crate) fn human_span(secs: u64) -> String {
    let span = Duration::from_secs(secs);
    let (d, h, m, s) = (
        span.as_secs() / 86_400,
        span.as_secs() / 3600 % 24,
        span.as_secs() / 60 % 60,
        span.as_secs() % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}
