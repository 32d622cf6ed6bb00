//! What can go wrong while decoding WAL, each error naming the WAL position where it happened.
//!
//! The position matters more than the cause: the time index records how far a segment could be
//! read, and a person restoring needs to know which record (and therefore which instant) is the
//! last trustworthy one. Messages print positions as PostgreSQL does (`X/X`), so they can be
//! matched against `pg_waldump` output and server logs.

use pgkeep_format::pg::{Lsn, TimelineId};
use thiserror::Error;

/// A reason the decoder cannot go on. After one is returned, the decoder keeps returning it:
/// its position inside the stream is no longer known.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WalDecodeError {
    /// The page header's magic is not the one of any supported PostgreSQL version (13–18).
    /// Also what a page of zeros or of foreign data looks like.
    #[error("WAL page at {lsn}: unknown page magic 0x{magic:04X} (not PostgreSQL 13 to 18 WAL)")]
    UnknownVersion { lsn: Lsn, magic: u16 },
    /// A page carries another version's magic than the pages before it.
    #[error("WAL page at {lsn}: page magic 0x{found:04X} differs from 0x{expected:04X} of the pages before it")]
    VersionChanged { lsn: Lsn, expected: u16, found: u16 },
    /// Undefined `xlp_info` bits, or the first page of a segment without a long header.
    #[error("WAL page at {lsn}: invalid page info bits 0x{info:04X}{}", if *.missing_long_header { " (the first page of a segment needs a long header)" } else { "" })]
    InvalidPageInfo {
        lsn: Lsn,
        info: u16,
        missing_long_header: bool,
    },
    /// The page says it lives elsewhere: typically a recycled segment whose old content was not
    /// overwritten yet, or a file under the wrong name.
    #[error("WAL page at {lsn}: page header says it is the page at {found}")]
    PageAddressMismatch { lsn: Lsn, found: Lsn },
    /// The page belongs to a later timeline than the one expected.
    #[error("WAL page at {lsn}: timeline {found}, expected {expected} (or an ancestor before the switch point)")]
    WrongTimeline {
        lsn: Lsn,
        expected: TimelineId,
        found: TimelineId,
    },
    /// Timelines only grow along a WAL stream; a page with a smaller one is out of sequence.
    #[error("WAL page at {lsn}: timeline {found} after timeline {previous} (out of sequence)")]
    TimelineWentBack {
        lsn: Lsn,
        previous: TimelineId,
        found: TimelineId,
    },
    /// The long header names another cluster.
    #[error("WAL page at {lsn}: system identifier {found}, expected {expected} (WAL of another cluster)")]
    WrongSystemId { lsn: Lsn, expected: u64, found: u64 },
    /// The long header's segment size differs from the one the decoder was made for.
    #[error("WAL page at {lsn}: segment size {found} in the page header, expected {expected}")]
    WrongSegmentSize { lsn: Lsn, expected: u32, found: u32 },
    /// The long header's `XLOG_BLCKSZ` is not 8192, the only WAL page size supported.
    #[error(
        "WAL page at {lsn}: WAL block size {found} in the page header, only 8192 is supported"
    )]
    WrongBlockSize { lsn: Lsn, found: u32 },
    /// `xl_tot_len` is below the 24-byte header or above 1 GiB.
    #[error("WAL record at {lsn}: invalid record length {len}")]
    InvalidRecordLength { lsn: Lsn, len: u32 },
    /// The next page does not continue the record in progress as it should: no continuation
    /// flag, or a remaining length that does not add up.
    #[error("WAL page at {lsn}: continuation of the record at {record}: {reason}")]
    ContinuationMismatch {
        lsn: Lsn,
        record: Lsn,
        reason: String,
    },
    /// A page says it starts with the rest of a record, but no record is in progress there.
    #[error("WAL page at {lsn}: page starts with a continuation, but no record is in progress")]
    UnexpectedContinuation { lsn: Lsn },
    /// The record's CRC-32C does not match its bytes.
    #[error(
        "WAL record at {lsn}: CRC mismatch (stored 0x{stored:08X}, computed 0x{computed:08X})"
    )]
    CrcMismatch {
        lsn: Lsn,
        stored: u32,
        computed: u32,
    },
    /// `xl_prev` does not point at the record before (a torn or stale page).
    #[error("WAL record at {lsn}: previous-record link {found}, expected {expected}")]
    PrevLinkMismatch { lsn: Lsn, expected: Lsn, found: Lsn },
    /// `xl_prev` does not point before the record itself (checked when the record before is not
    /// known, as PostgreSQL does at a random starting point).
    #[error("WAL record at {lsn}: previous-record link {found} does not point before the record")]
    PrevLinkNotBefore { lsn: Lsn, found: Lsn },
    /// The record's body does not parse: block headers, data lengths, or the main data of a
    /// record kind the time index reads.
    #[error("WAL record at {lsn}: {reason}")]
    MalformedRecord { lsn: Lsn, reason: String },
    /// The decoder was set up wrongly (start not at a page boundary, bad segment size, a primed
    /// tail that cannot be the beginning of a record, positions past 2^63).
    #[error("WAL decoder at {lsn}: {reason}")]
    InvalidSetup { lsn: Lsn, reason: String },
}

impl WalDecodeError {
    /// The WAL position the error is about.
    pub fn lsn(&self) -> Lsn {
        match self {
            Self::UnknownVersion { lsn, .. }
            | Self::VersionChanged { lsn, .. }
            | Self::InvalidPageInfo { lsn, .. }
            | Self::PageAddressMismatch { lsn, .. }
            | Self::WrongTimeline { lsn, .. }
            | Self::TimelineWentBack { lsn, .. }
            | Self::WrongSystemId { lsn, .. }
            | Self::WrongSegmentSize { lsn, .. }
            | Self::WrongBlockSize { lsn, .. }
            | Self::InvalidRecordLength { lsn, .. }
            | Self::ContinuationMismatch { lsn, .. }
            | Self::UnexpectedContinuation { lsn }
            | Self::CrcMismatch { lsn, .. }
            | Self::PrevLinkMismatch { lsn, .. }
            | Self::PrevLinkNotBefore { lsn, .. }
            | Self::MalformedRecord { lsn, .. }
            | Self::InvalidSetup { lsn, .. } => *lsn,
        }
    }

    pub(crate) fn malformed(lsn: Lsn, reason: impl Into<String>) -> Self {
        Self::MalformedRecord {
            lsn,
            reason: reason.into(),
        }
    }
}
