//! Timestamps as users type them and as pgkeep prints them: unix microseconds inside.
//!
//! Accepted, as PostgreSQL accepts `timestamptz` in its common forms:
//! `YYYY-MM-DD[ T]HH:MM[:SS[.ffffff]]`, then optionally a zone: `Z`, `UTC`, `+HH`, `+HH:MM`
//! or `+HHMM` (or `-`), or an IANA name after a space (`Europe/Berlin`). Without a zone the
//! time is local time (the `TZ` variable, else `/etc/localtime`), as psql would read it;
//! commands echo what they understood in UTC, so the reading can be checked.

use jiff::tz::TimeZone;

use crate::error::{Error, Result};

/// Parses a timestamp into unix microseconds; a time without a zone is local time.
pub fn parse_timestamp(text: &str) -> Result<i64> {
    parse_timestamp_in(text, &TimeZone::system())
}

/// [`parse_timestamp`] with `local` as the zone of times that name none.
pub fn parse_timestamp_in(text: &str, local: &TimeZone) -> Result<i64> {
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
        .unwrap_or(rest.len());
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
    if let Some(offset_s) = zone_offset(zone) {
        let days = days_from_civil(year, month, day);
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
        return Ok(secs * 1_000_000 + micros);
    }
    let tz = if zone.is_empty() {
        local.clone()
    } else {
        TimeZone::get(zone).map_err(|_| {
            bad("unknown time zone: use Z, UTC, an offset such as +01:00, or a name such as Europe/Berlin")
        })?
    };
    // Civil time in a zone with rules: jiff resolves DST gaps and folds as PostgreSQL does
    // (the earlier offset in a fold, shifted forward in a gap).
    let civil = jiff::civil::DateTime::new(
        year as i16,
        month as i8,
        day as i8,
        hour as i8,
        minute as i8,
        second as i8,
        (micros * 1000) as i32,
    )
    .map_err(|_| bad("no such date"))?;
    let ts = tz
        .to_timestamp(civil)
        .map_err(|_| bad("not representable in that time zone"))?;
    Ok(ts.as_microsecond())
}

/// Unix microseconds as `2026-11-21T08:30:00.123456Z`.
/// The current time in Unix microseconds.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

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
    fn local_and_named_zones() {
        let base = 1_795_250_000_000_000; // 2026-11-21T08:33:20Z
        let plus2 = TimeZone::fixed(jiff::tz::offset(2));
        assert_eq!(
            parse_timestamp_in("2026-11-21 10:33:20", &plus2).expect("local"),
            base
        );
        assert_eq!(
            parse_timestamp_in("2026-11-21T10:33:20.25", &plus2).expect("local"),
            base + 250_000
        );
        // An explicit zone wins over the local one.
        assert_eq!(
            parse_timestamp_in("2026-11-21 08:33:20Z", &plus2).expect("utc"),
            base
        );
        if let Ok(berlin) = TimeZone::get("Europe/Berlin") {
            let _ = berlin;
            // November: CET, UTC+1.
            assert_eq!(
                parse_timestamp_in("2026-11-21 09:33:20 Europe/Berlin", &plus2).expect("named"),
                base
            );
        }
    }

    #[test]
    fn refuses_what_it_would_have_to_guess() {
        for text in [
            "2026-11-21",
            "2026-02-30 00:00:00Z",
            "2026-11-21 24:00:00Z",
            "2026-11-21 06:33:20.1234567Z",
            "2026-11-21 06:33:20 Mars/Olympus",
            "21/11/2026 06:33:20Z",
            "",
        ] {
            let e = parse_timestamp(text).expect_err(text).to_string();
            assert!(e.contains("timestamp"), "{e}");
        }
    }
}
