//! PostgreSQL's `TimestampTz` as WAL stores it: signed microseconds since 2000-01-01 00:00 UTC.
//!
//! Commit, abort and restore-point records carry one; they are what a user picks a recovery
//! target from, so they are shown in UTC to the microsecond, exactly as stored (PostgreSQL's
//! `recovery_target_time` compares at that precision).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds between 1970-01-01 and 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A PostgreSQL timestamp: microseconds since 2000-01-01 00:00:00 UTC.
///
/// `i64::MIN` and `i64::MAX` are PostgreSQL's `-infinity` and `infinity` and display so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// `-infinity` (`DT_NOBEGIN`).
    pub const NEG_INFINITY: Self = Self(i64::MIN);
    /// `infinity` (`DT_NOEND`).
    pub const INFINITY: Self = Self(i64::MAX);

    /// Microseconds since 1970-01-01 UTC (saturating at the ends of `i64`), the unit pgkeep's
    /// stored time index uses.
    pub fn unix_micros(self) -> i64 {
        self.0.saturating_add(PG_EPOCH_UNIX_MICROS)
    }

    /// The timestamp for unix microseconds (saturating at the ends of `i64`).
    pub fn from_unix_micros(us: i64) -> Self {
        Self(us.saturating_sub(PG_EPOCH_UNIX_MICROS))
    }

    /// As a `SystemTime`; `None` for the infinities and for instants the platform's
    /// `SystemTime` cannot hold.
    pub fn to_system_time(self) -> Option<SystemTime> {
        if self == Self::INFINITY || self == Self::NEG_INFINITY {
            return None;
        }
        let us = i128::from(self.0) + i128::from(PG_EPOCH_UNIX_MICROS);
        let magnitude = Duration::from_micros(u64::try_from(us.unsigned_abs()).ok()?);
        if us >= 0 {
            UNIX_EPOCH.checked_add(magnitude)
        } else {
            UNIX_EPOCH.checked_sub(magnitude)
        }
    }

    /// The timestamp of a `SystemTime`, truncated to microseconds; `None` if out of range.
    pub fn from_system_time(t: SystemTime) -> Option<Self> {
        let us: i128 = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i128::try_from(d.as_micros()).ok()?,
            Err(e) => -i128::try_from(e.duration().as_micros()).ok()?,
        };
        let pg = us - i128::from(PG_EPOCH_UNIX_MICROS);
        i64::try_from(pg).ok().map(Self)
    }
}

/// Year, month (1–12) and day (1–31) of a count of days since 1970-01-01, proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`). Total for every `i64` input that
/// a timestamp can produce (about ±10^8 days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365
    let mp = (5 * doy + 2) / 153; // 0..=11, March first
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // month is 1..=12 and day 1..=31 by construction.
    (year, month as u32, day as u32)
}

/// RFC 3339 in UTC with microseconds, e.g. `2026-11-21T08:00:00.123456Z`.
impl fmt::Display for PgTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::INFINITY {
            return f.write_str("infinity");
        }
        if *self == Self::NEG_INFINITY {
            return f.write_str("-infinity");
        }
        // i128: the shift to the unix epoch cannot overflow.
        let us = i128::from(self.0) + i128::from(PG_EPOCH_UNIX_MICROS);
        let per_day = i128::from(MICROS_PER_DAY);
        // |us| / per_day < 2^64 / 8.64e10, which fits an i64.
        let days = i64::try_from(us.div_euclid(per_day)).map_err(|_| fmt::Error)?;
        let in_day = i64::try_from(us.rem_euclid(per_day)).map_err(|_| fmt::Error)?;
        let (year, month, day) = civil_from_days(days);
        let secs = in_day / 1_000_000;
        let micros = in_day % 1_000_000;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_rfc3339_utc_with_microseconds() {
        assert_eq!(PgTimestamp(0).to_string(), "2000-01-01T00:00:00.000000Z");
        assert_eq!(PgTimestamp(-1).to_string(), "1999-12-31T23:59:59.999999Z");
        // 2026-11-21T08:00:00.123456Z is unix 1795248000.123456 s.
        let t = PgTimestamp::from_unix_micros(1_795_248_000_123_456);
        assert_eq!(t.to_string(), "2026-11-21T08:00:00.123456Z");
        // A leap day, and the day after it.
        let leap = PgTimestamp::from_unix_micros(1_709_164_800_000_000); // 2024-02-29
        assert_eq!(leap.to_string(), "2024-02-29T00:00:00.000000Z");
        assert_eq!(
            PgTimestamp(leap.0 + MICROS_PER_DAY).to_string(),
            "2024-03-01T00:00:00.000000Z"
        );
        assert_eq!(PgTimestamp::INFINITY.to_string(), "infinity");
        assert_eq!(PgTimestamp::NEG_INFINITY.to_string(), "-infinity");
        // Extremes do not panic.
        let _ = PgTimestamp(i64::MAX - 1).to_string();
        let _ = PgTimestamp(i64::MIN + 1).to_string();
    }

    #[test]
    fn matches_humantime_for_ordinary_instants() {
        // An independent implementation of the same calendar, over ~150 years in odd steps.
        let mut us: i64 = -3_000_000_000_000_000;
        while us < 5_000_000_000_000_000 {
            let t = PgTimestamp(us);
            let st = t.to_system_time().expect("in range");
            if st >= UNIX_EPOCH {
                let h = humantime::format_rfc3339_micros(st).to_string();
                assert_eq!(t.to_string(), h, "at {us}");
            }
            assert_eq!(PgTimestamp::from_system_time(st), Some(t));
            us += 7_777_777_777_777;
        }
    }

    #[test]
    fn converts_to_unix_and_system_time() {
        assert_eq!(PgTimestamp(0).unix_micros(), 946_684_800_000_000);
        assert_eq!(
            PgTimestamp(0).to_system_time(),
            Some(UNIX_EPOCH + Duration::from_secs(946_684_800))
        );
        assert_eq!(
            PgTimestamp(-946_684_800_000_000 - 1).to_system_time(),
            UNIX_EPOCH.checked_sub(Duration::from_micros(1))
        );
        assert_eq!(PgTimestamp::INFINITY.to_system_time(), None);
        assert_eq!(
            PgTimestamp::from_unix_micros(i64::MIN),
            PgTimestamp(i64::MIN)
        );
    }
}
