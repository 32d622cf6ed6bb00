//! PostgreSQL domain values: LSNs, timelines and WAL file names.

use std::fmt;
use std::str::FromStr;

use crate::error::FormatError;

/// A WAL position (log sequence number). Displayed as PostgreSQL does, `X/X` in hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Self = Self(0);

    /// The number of the segment holding this position.
    pub fn segment(self, segment_size: u32) -> u64 {
        self.0 / u64::from(segment_size)
    }

    /// Offset inside its segment.
    pub fn segment_offset(self, segment_size: u32) -> u64 {
        self.0 % u64::from(segment_size)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

impl FromStr for Lsn {
    type Err = FormatError;

    /// Parses `X/X` (each half 1 to 8 hex digits; newer servers print `%X/%08X`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || FormatError::Invalid {
            what: "LSN",
            reason: format!("{s:?} is not of the form X/X (hex)"),
        };
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 {
                return Err(bad());
            }
            u32::from_str_radix(h, 16).map_err(|_| bad())
        };
        Ok(Self((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

/// A timeline id (1 for a cluster that was never promoted or recovered to a point).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Checks a `wal_segment_size`: a power of two from 1 MiB to 1 GiB.
pub fn check_segment_size(size: u64) -> Result<u32, FormatError> {
    if size.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&size) {
        Ok(size as u32)
    } else {
        Err(FormatError::Invalid {
            what: "wal_segment_size",
            reason: format!("{size} is not a power of two from 1 MiB to 1 GiB"),
        })
    }
}

/// The name of a WAL segment file: `TTTTTTTTXXXXXXXXYYYYYYYY`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SegmentName {
    pub timeline: TimelineId,
    pub segment: u64,
    pub segment_size: u32,
}

impl SegmentName {
    pub fn new(timeline: TimelineId, segment: u64, segment_size: u32) -> Self {
        Self {
            timeline,
            segment,
            segment_size,
        }
    }

    /// The segment holding `lsn` on `timeline`.
    pub fn containing(timeline: TimelineId, lsn: Lsn, segment_size: u32) -> Self {
        Self::new(timeline, lsn.segment(segment_size), segment_size)
    }

    fn per_xlogid(segment_size: u32) -> u64 {
        0x1_0000_0000 / u64::from(segment_size)
    }

    /// Parses a 24-hex-digit segment file name for a server with `segment_size`.
    pub fn parse(name: &str, segment_size: u32) -> Result<Self, FormatError> {
        let bad = |reason: &str| FormatError::Invalid {
            what: "WAL segment name",
            reason: format!("{name:?}: {reason}"),
        };
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("not 24 hex digits"));
        }
        let part = |r: std::ops::Range<usize>| {
            u32::from_str_radix(&name[r], 16).map_err(|_| bad("not hex"))
        };
        let (tli, hi, lo) = (part(0..8)?, part(8..16)?, part(16..24)?);
        let per = Self::per_xlogid(segment_size);
        if u64::from(lo) >= per {
            return Err(bad("segment part out of range for this segment size"));
        }
        if tli == 0 {
            return Err(bad("timeline 0 does not exist"));
        }
        Ok(Self::new(
            TimelineId(tli),
            u64::from(hi) * per + u64::from(lo),
            segment_size,
        ))
    }

    /// The first LSN of the segment.
    pub fn start_lsn(&self) -> Lsn {
        Lsn(self.segment * u64::from(self.segment_size))
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = Self::per_xlogid(self.segment_size);
        write!(
            f,
            "{:08X}{:08X}{:08X}",
            self.timeline.0,
            self.segment / per,
            self.segment % per
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_display_and_parse() {
        let l: Lsn = "16/B374D848".parse().expect("parses");
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().expect("zero"), Lsn(0));
        assert_eq!(
            "1/0000A000".parse::<Lsn>().expect("padded"),
            Lsn(0x1_0000_A000)
        );
        for bad in ["", "1", "1/", "/1", "g/1", "123456789/0", "1/2/3"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn segment_names_match_postgres() {
        let size = 16 << 20;
        let s = SegmentName::containing(TimelineId(1), Lsn(0x1_2800_0028), size);
        assert_eq!(s.to_string(), "000000010000000100000028");
        assert_eq!(
            SegmentName::parse("000000010000000100000028", size).expect("parses"),
            s
        );
        assert_eq!(s.start_lsn(), Lsn(0x1_2800_0000));
        // 1 GiB segments: 4 per xlogid.
        let big = SegmentName::containing(TimelineId(2), Lsn(0x3_C000_0000), 1 << 30);
        assert_eq!(big.to_string(), "000000020000000300000003");
        assert!(SegmentName::parse("000000010000000100000100", size).is_err());
        assert!(SegmentName::parse("00000000000000010000002", size).is_err());
        assert!(check_segment_size(3 << 20).is_err());
        assert_eq!(check_segment_size(16 << 20).expect("valid"), 16 << 20);
    }
}
