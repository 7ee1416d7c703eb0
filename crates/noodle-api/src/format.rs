//! Human formatting shared by the CLI and the dashboard, so both print the same numbers the same
//! way. Integer arithmetic, rounding half up, so that `dashboard.js` can match it exactly.

/// Bytes in binary units with one decimal: `512 B`, `1.5 GiB`, `23.4 GiB`.
///
/// Rounds half up in integer arithmetic so that `formatBytes` in `dashboard.js` gives the same
/// string for the same number.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut index = 0;
    while index + 1 < UNITS.len() && bytes >= 1u64 << (10 * (index + 2)) {
        index += 1;
    }
    let mut tenths = tenths_of(bytes, 1u64 << (10 * (index + 1)));
    // 1023.96 KiB rounds to 1024.0 KiB: show it as 1.0 MiB instead.
    if tenths >= 10 * 1024 && index + 1 < UNITS.len() {
        index += 1;
        tenths = tenths_of(bytes, 1u64 << (10 * (index + 1)));
    }
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[index])
}

/// A round-trip time: `850 µs` below a millisecond, then `1.2 ms`, then `1.5 s`.
pub fn format_rtt_us(rtt_us: u64) -> String {
    if rtt_us < 1000 {
        return format!("{rtt_us} µs");
    }
    let tenths_ms = tenths_of(rtt_us, 1000);
    if tenths_ms < 10 * 1000 {
        return format!("{}.{} ms", tenths_ms / 10, tenths_ms % 10);
    }
    let tenths_s = tenths_of(rtt_us, 1_000_000);
    format!("{}.{} s", tenths_s / 10, tenths_s % 10)
}

/// `value / unit` in tenths, rounded half up; u128 so that no u64 input can overflow.
fn tenths_of(value: u64, unit: u64) -> u64 {
    let tenths = (u128::from(value) * 10 + u128::from(unit) / 2) / u128::from(unit);
    u64::try_from(tenths).unwrap_or(u64::MAX)
}

/// A command line as a shell would read it back: words of plain characters as they are,
/// anything else in single quotes (`sh -c 'echo it'\''s'`). For display only.
pub fn format_command(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_commands_like_a_shell() {
        let words = |ws: &[&str]| ws.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        assert_eq!(super::format_command(&words(&["sleep", "30"])), "sleep 30");
        assert_eq!(
            super::format_command(&words(&["sh", "-c", "echo it's <b>"])),
            "sh -c 'echo it'\\''s <b>'"
        );
        assert_eq!(
            super::format_command(&words(&["./a.out", ""])),
            "./a.out ''"
        );
        assert_eq!(
            super::format_command(&words(&["a", "", "b c"])),
            "a '' 'b c'"
        );
        assert_eq!(super::format_command(&[]), "");
    }

    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn formats_bytes() {
        let cases: [(u64, &str); 10] = [
            (0, "0 B"),
            (512, "512 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (3 * GIB / 2, "1.5 GiB"),
            (23 * GIB + 2 * GIB / 5, "23.4 GiB"),
            (1024 * 1024 - 1, "1.0 MiB"),
            (5 << 40, "5.0 TiB"),
            (u64::MAX, "16.0 EiB"),
        ];
        for (bytes, want) in cases {
            assert_eq!(format_bytes(bytes), want, "{bytes} bytes");
        }
    }

    #[test]
    fn formats_rtt() {
        let cases: [(u64, &str); 7] = [
            (0, "0 µs"),
            (850, "850 µs"),
            (999, "999 µs"),
            (1000, "1.0 ms"),
            (1234, "1.2 ms"),
            (999_960, "1.0 s"),
            (2_500_000, "2.5 s"),
        ];
        for (us, want) in cases {
            assert_eq!(format_rtt_us(us), want, "{us} µs");
        }
    }
}
