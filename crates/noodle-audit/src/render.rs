//! One-line human rendering of entries, for `noodle audit` listings.
//!
//! Field values come from untrusted input, so rendering never lets them forge a line: control
//! characters are escaped, and a value that is empty, is `-`, or contains whitespace or `"` is
//! shown quoted and escaped, so the columns stay unambiguous.

use std::fmt::Write as _;

use crate::entry::Entry;
use crate::record::Outcome;

/// Renders `e` as one line:
/// `#12 2026-11-23T13:05:01.123Z admin@node-a config.set retries (config:write) allowed`.
///
/// An empty target shows as `-`; an empty right omits the parenthesised part. Denials and
/// failures end in `denied: <reason>` / `failed: <reason>`, reason with control characters
/// escaped.
pub fn render_line(e: &Entry) -> String {
    let r = &e.record;
    let mut line = format!(
        "#{} {} {} {}",
        e.seq,
        format_utc_ms(r.at_ms),
        field(&r.actor),
        field(&r.action)
    );
    if r.target.is_empty() {
        line.push_str(" -");
    } else {
        let _ = write!(line, " {}", field(&r.target));
    }
    if !r.right.is_empty() {
        let _ = write!(line, " ({})", field(&r.right));
    }
    match &r.outcome {
        Outcome::Allowed => line.push_str(" allowed"),
        Outcome::Denied { reason } => {
            let _ = write!(line, " denied: {}", escape_controls(reason));
        }
        Outcome::Failed { reason } => {
            let _ = write!(line, " failed: {}", escape_controls(reason));
        }
    }
    line
}

/// Formats unix milliseconds as RFC 3339 UTC with millisecond precision,
/// e.g. `2026-11-23T13:05:01.123Z`. Years past 9999 print with more digits.
pub fn format_utc_ms(at_ms: u64) -> String {
    let ms = at_ms % 1000;
    let secs = at_ms / 1000;
    let (days, sod) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's
/// `civil_from_days`, restricted to non-negative day counts.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn field(s: &str) -> String {
    let needs_quotes = s.is_empty()
        || s == "-"
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"');
    if needs_quotes {
        format!("\"{}\"", s.escape_debug())
    } else {
        s.to_owned()
    }
}

fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_795_439_101_123, "2026-11-23T13:05:01.123Z"),
            (4_102_444_799_999, "2099-12-31T23:59:59.999Z"),
            (253_402_300_800_000, "10000-01-01T00:00:00.000Z"),
        ];
        for (ms, want) in cases {
            assert_eq!(format_utc_ms(ms), want, "at_ms {ms}");
        }
        // Does not overflow at the top of the range.
        assert!(format_utc_ms(u64::MAX).ends_with('Z'));
    }
}
