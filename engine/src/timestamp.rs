//! Timestamps as users type them and as pgkeep prints them: unix microseconds inside.
//!
//! Accepted: `YYYY-MM-DD[ T]HH:MM[:SS[.ffffff]]` followed by a zone: `Z`, `UTC`, `+HH`,
//! `+HH:MM` or `+HHMM` (or `-`), with or without a space before it. A time without a zone is
//! refused rather than guessed: whether it means UTC or the server's local time decides which
//! transactions a recovery keeps.

use crate::error::{Error, Result};

/// Parses a timestamp with an explicit zone into unix microseconds.
pub fn parse_timestamp(text: &str) -> Result<i64> {
    let bad = |why: &str| {
        Error::InvalidInput(format!(
            "timestamp {text:?}: {why} (expected e.g. 2026-11-21 08:30:00+01 or 2026-11-21T07:30:00.5Z)"
        ))
    };
    let s = text.trim();
    let (date, rest) = s.split_at(s.find(['T', 't', ' ']).ok_or_else(|| bad("no time"))?);
    let rest = &rest[1..];
    let mut d = date.split('-');
    let (year, month, day) = match (d.next(), d.next(), d.next(), d.next()) {
        (Some(y), Some(m), Some(dd), None) if y.len() == 4 && m.len() == 2 && dd.len() == 2 => (
            number(y).ok_or_else(|| bad("bad year"))?,
            number(m).ok_or_else(|| bad("bad month"))?,
            number(dd).ok_or_else(|| bad("bad day"))?,
        ),
        _ => return Err(bad("the date must be YYYY-MM-DD")),
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    // Split the time of day from the zone.
    let zone_at = rest
        .find(['Z', 'z', '+', '-', ' ', 'U'])
        .ok_or_else(|| bad("no time zone: add Z, UTC or an offset such as +01:00"))?;
    let (clock, zone) = rest.split_at(zone_at);
    let zone = zone.trim_start();
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.split(':');
    let (hour, minute, second) = match (t.next(), t.next(), t.next(), t.next()) {
        (Some(h), Some(m), sec, None) if h.len() == 2 && m.len() == 2 => (
            number(h).ok_or_else(|| bad("bad hour"))?,
            number(m).ok_or_else(|| bad("bad minute"))?,
            match sec {
                Some(x) if x.len() == 2 => number(x).ok_or_else(|| bad("bad second"))?,
                Some(_) => return Err(bad("bad second")),
                None => 0,
            },
        ),
        _ => return Err(bad("the time must be HH:MM[:SS[.ffffff]]")),
    };
    if hour > 23 || minute > 59 || second > 59 {
        return Err(bad("no such time of day"));
    }
    if frac.len() > 6 || (!frac.is_empty() && number(frac).is_none()) {
        return Err(bad("at most 6 fractional digits"));
    }
    let micros = if frac.is_empty() {
        0
    } else {
        number(frac).unwrap_or(0) * 10_i64.pow(6 - frac.len() as u32)
    };
    let offset_s = zone_offset(zone)
        .ok_or_else(|| bad("unknown time zone: use Z, UTC or an offset such as +01:00"))?;
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Ok(secs * 1_000_000 + micros)
}

/// Unix microseconds as `2026-11-21T08:30:00.123456Z`.
pub fn format_timestamp_us(us: i64) -> String {
    let t = if us >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(us as u64)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_micros(us.unsigned_abs())
    };
    humantime::format_rfc3339_micros(t).to_string()
}

fn number(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Seconds east of UTC.
fn zone_offset(zone: &str) -> Option<i64> {
    match zone {
        "Z" | "z" | "UTC" | "utc" | "GMT" => return Some(0),
        _ => {}
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
    let (h, m) = match digits.len() {
        2 => (number(&digits)?, 0),
        4 => (number(&digits[..2])?, number(&digits[2..])?),
        _ => return None,
    };
    if (zone.len() == 6 && zone.as_bytes()[3] != b':') || h > 15 || m > 59 {
        return None;
    }
    Some(sign * (h * 3600 + m * 60))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let base = 1_795_250_000_000_000; // 2026-11-21T08:33:20Z
        for (text, want) in [
            ("2026-11-21T08:33:20Z", base),
            ("2026-11-21 08:33:20 UTC", base),
            ("2026-11-21 08:33:20+00", base),
            ("2026-11-21 09:33:20+01:00", base),
            ("2026-11-21 09:33:20 +0100", base),
            ("2026-11-21T03:03:20-05:30", base),
            ("2026-11-21 08:33:20.5Z", base + 500_000),
            ("2026-11-21 08:33:20.000001Z", base + 1),
            ("2026-11-21 08:33Z", base - 20_000_000),
        ] {
            assert_eq!(parse_timestamp(text).expect(text), want, "{text}");
        }
        assert_eq!(format_timestamp_us(base + 1), "2026-11-21T08:33:20.000001Z");
    }

    #[test]
    fn refuses_what_it_would_have_to_guess() {
        for text in [
            "2026-11-21 06:33:20",
            "2026-11-21",
            "2026-02-30 00:00:00Z",
            "2026-11-21 24:00:00Z",
            "2026-11-21 06:33:20.1234567Z",
            "2026-11-21 06:33:20 CET",
            "21/11/2026 06:33:20Z",
            "",
        ] {
            let e = parse_timestamp(text).expect_err(text).to_string();
            assert!(e.contains("timestamp"), "{e}");
        }
    }
}
