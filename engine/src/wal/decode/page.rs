//! WAL page headers (`XLogPageHeaderData` / `XLogLongPageHeaderData` in PostgreSQL's
//! `src/include/access/xlog_internal.h`) and the WAL format versions they identify.
//!
//! Every 8 KiB page of WAL starts with a header; the first page of each segment has the long
//! form, which adds the cluster's system identifier and the segment and page sizes. The header
//! is what ties bytes to a position (`xlp_pageaddr`), a timeline and a cluster, so it is checked
//! on every page before anything on it is believed.

use std::fmt;

use pgkeep_format::pg::{Lsn, TimelineId};
use thiserror::Error;

use super::cursor::Cursor;

/// WAL page size (`XLOG_BLCKSZ`). PostgreSQL can be built with another one, but no packaged
/// server is, and the long header lets the decoder refuse such WAL instead of misreading it.
pub const XLOG_BLCKSZ: u32 = 8192;

/// Length of a short page header (`SizeOfXLogShortPHD`: 20 bytes of fields, MAXALIGNed).
pub const SHORT_HEADER_LEN: usize = 24;
/// Length of a long page header (`SizeOfXLogLongPHD`).
pub const LONG_HEADER_LEN: usize = 40;

/// `xlp_info`: the page starts with the rest of a record begun on an earlier page.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `xlp_info`: the header is the long form (first page of a segment).
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// `xlp_info`: full-page images of records starting on this page may be removed (13–18; the
/// flag was dropped after 18, where 0x0004 took over the next meaning).
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// `xlp_info`: the record that should continue here was lost in a crash; the page starts with
/// an `XLOG_OVERWRITE_CONTRECORD` record instead (13–18: 0x0008).
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// Every `xlp_info` bit defined in 13–18 (`XLP_ALL_FLAGS`).
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// A PostgreSQL major version's WAL format, as identified by `xlp_magic`.
///
/// The magic changes whenever the WAL format does, so it is the only reliable way to know how
/// to read a record's body (block image flags changed in 15, dropped-statistics items grew in
/// 18). Values from `XLOG_PAGE_MAGIC` in each release branch's `xlog_internal.h`. Later
/// releases will be added, so matches need a catch-all arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum WalVersion {
    V13,
    V14,
    V15,
    V16,
    V17,
    V18,
}

impl WalVersion {
    /// Every supported version, oldest first.
    pub const ALL: [WalVersion; 6] = [
        WalVersion::V13,
        WalVersion::V14,
        WalVersion::V15,
        WalVersion::V16,
        WalVersion::V17,
        WalVersion::V18,
    ];

    /// The version whose `XLOG_PAGE_MAGIC` this is, if supported.
    pub fn from_magic(magic: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.magic() == magic)
    }

    /// The release's `XLOG_PAGE_MAGIC`.
    pub fn magic(self) -> u16 {
        match self {
            Self::V13 => 0xD106,
            Self::V14 => 0xD10D,
            Self::V15 => 0xD110,
            Self::V16 => 0xD113,
            Self::V17 => 0xD116,
            Self::V18 => 0xD118,
        }
    }

    /// The major version number, e.g. 15.
    pub fn major(self) -> u32 {
        match self {
            Self::V13 => 13,
            Self::V14 => 14,
            Self::V15 => 15,
            Self::V16 => 16,
            Self::V17 => 17,
            Self::V18 => 18,
        }
    }
}

impl fmt::Display for WalVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgreSQL {}", self.major())
    }
}

/// The fields only the long header (first page of a segment) has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongHeader {
    /// `xlp_sysid`: the cluster's system identifier (`pg_control`), tying the segment to it.
    pub system_id: u64,
    /// `xlp_seg_size`: the cluster's `wal_segment_size`.
    pub seg_size: u32,
    /// `xlp_xlog_blcksz`: the WAL page size the server was built with.
    pub blcksz: u32,
}

/// A parsed WAL page header. Parsing only splits the fields; what they must be at a given
/// position is checked by the decoder, which knows the position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    /// `xlp_magic`: the WAL format version (see [`WalVersion`]).
    pub magic: u16,
    /// `xlp_info`: `XLP_*` flags.
    pub info: u16,
    /// `xlp_tli`: timeline of the first record on the page.
    pub timeline: TimelineId,
    /// `xlp_pageaddr`: the LSN of the page's first byte.
    pub pageaddr: Lsn,
    /// `xlp_rem_len`: bytes of a record begun on an earlier page that follow this header.
    pub rem_len: u32,
    /// Present when `XLP_LONG_HEADER` is set.
    pub long: Option<LongHeader>,
}

/// Why bytes are not a page header: too few of them. (Whether the fields make sense at a
/// given position is for the caller to judge; see [`PageHeader`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PageHeaderError {
    #[error("a WAL page header needs {needed} bytes, only {available} given")]
    Truncated { needed: usize, available: usize },
}

impl PageHeader {
    /// Reads a header from the start of `bytes`, which must hold all of it: 24 bytes, or 40
    /// when the long-header flag is set.
    pub fn parse(bytes: &[u8]) -> Result<PageHeader, PageHeaderError> {
        let needed = match bytes.get(2..4) {
            Some(&[lo, hi]) if u16::from_le_bytes([lo, hi]) & XLP_LONG_HEADER != 0 => {
                LONG_HEADER_LEN
            }
            _ => SHORT_HEADER_LEN,
        };
        Self::read(bytes).ok_or(PageHeaderError::Truncated {
            needed,
            available: bytes.len(),
        })
    }

    fn read(bytes: &[u8]) -> Option<PageHeader> {
        let mut c = Cursor::new(bytes);
        let magic = c.u16()?;
        let info = c.u16()?;
        let timeline = TimelineId(c.u32()?);
        let pageaddr = Lsn(c.u64()?);
        let rem_len = c.u32()?;
        c.u32()?; // padding to MAXALIGN
        let long = if info & XLP_LONG_HEADER != 0 {
            Some(LongHeader {
                system_id: c.u64()?,
                seg_size: c.u32()?,
                blcksz: c.u32()?,
            })
        } else {
            None
        };
        Some(PageHeader {
            magic,
            info,
            timeline,
            pageaddr,
            rem_len,
            long,
        })
    }

    /// The header's length on the page: where the page's data starts.
    pub fn header_len(&self) -> usize {
        if self.long.is_some() {
            LONG_HEADER_LEN
        } else {
            SHORT_HEADER_LEN
        }
    }

    /// The WAL format version, if the magic is one of a supported release.
    pub fn version(&self) -> Option<WalVersion> {
        WalVersion::from_magic(self.magic)
    }

    /// The server's major version (e.g. 15), if the magic is one of a supported release.
    pub fn pg_major(&self) -> Option<u32> {
        self.version().map(WalVersion::major)
    }

    /// The page starts with the rest of a record begun earlier (`XLP_FIRST_IS_CONTRECORD`).
    pub fn is_continuation(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }

    /// The record that should have continued here was lost and overwritten
    /// (`XLP_FIRST_IS_OVERWRITE_CONTRECORD`).
    pub fn is_overwrite_continuation(&self) -> bool {
        self.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(magic: u16, info: u16, tli: u32, addr: u64, rem: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&magic.to_le_bytes());
        b.extend_from_slice(&info.to_le_bytes());
        b.extend_from_slice(&tli.to_le_bytes());
        b.extend_from_slice(&addr.to_le_bytes());
        b.extend_from_slice(&rem.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b
    }

    #[test]
    fn parses_a_short_header() {
        let bytes = short(0xD110, 0x0005, 3, 0x1_2345_6000, 2306);
        let h = PageHeader::parse(&bytes).expect("24 bytes are enough");
        assert_eq!(h.magic, 0xD110);
        assert_eq!(h.version(), Some(WalVersion::V15));
        assert_eq!(h.timeline, TimelineId(3));
        assert_eq!(h.pageaddr, Lsn(0x1_2345_6000));
        assert_eq!(h.pg_major(), Some(15));
        assert_eq!(h.rem_len, 2306);
        assert!(h.is_continuation());
        assert!(!h.is_overwrite_continuation());
        assert_eq!(h.long, None);
        assert_eq!(h.header_len(), 24);
        assert_eq!(
            PageHeader::parse(&bytes[..23]),
            Err(PageHeaderError::Truncated {
                needed: 24,
                available: 23
            })
        );
    }

    #[test]
    fn parses_a_long_header_and_needs_all_40_bytes() {
        let mut bytes = short(0xD118, XLP_LONG_HEADER, 1, 0x100_0000, 0);
        bytes.extend_from_slice(&0x6B01_5125_4902_B3EB_u64.to_le_bytes());
        bytes.extend_from_slice(&(16u32 << 20).to_le_bytes());
        bytes.extend_from_slice(&8192u32.to_le_bytes());
        let err = PageHeader::parse(&bytes[..39]).expect_err("short");
        assert_eq!(
            err.to_string(),
            "a WAL page header needs 40 bytes, only 39 given"
        );
        let h = PageHeader::parse(&bytes).expect("40 bytes");
        assert_eq!(h.version(), Some(WalVersion::V18));
        assert_eq!(h.header_len(), 40);
        assert_eq!(
            h.long,
            Some(LongHeader {
                system_id: 0x6B01_5125_4902_B3EB,
                seg_size: 16 << 20,
                blcksz: 8192
            })
        );
    }

    #[test]
    fn magic_maps_to_major_versions() {
        let expected = [
            (0xD106, 13),
            (0xD10D, 14),
            (0xD110, 15),
            (0xD113, 16),
            (0xD116, 17),
            (0xD118, 18),
        ];
        for (magic, major) in expected {
            let v = WalVersion::from_magic(magic).expect("supported");
            assert_eq!(v.major(), major);
            assert_eq!(v.magic(), magic);
        }
        assert_eq!(WalVersion::from_magic(0xD120), None, "19 is not supported");
        assert_eq!(WalVersion::from_magic(0), None);
    }
}
