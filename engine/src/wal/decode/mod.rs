//! A sans-IO decoder of PostgreSQL WAL (versions 13 to 18), for the WAL time index.
//!
//! The time index tells a user, per archived segment, which transactions ended when, where
//! restore points are, and which transactions dropped relations, so that they can pick the
//! instant just before a mistake as their recovery target. That needs every record of a
//! segment found and checked, and a few kinds of record understood; it does not need replay.
//!
//! * [`WalStreamDecoder`] takes bytes in any split and returns [`DecodedRecord`]s, checking
//!   page headers, record CRCs and previous-record links the way PostgreSQL's `xlogreader.c`
//!   does, and handing records that straddle segments over between per-segment decoders.
//! * [`RecordKind`] is what a record means for the index: commits and aborts ([`XactInfo`]:
//!   time, xid, subtransactions, dropped relation files), restore points, switches,
//!   checkpoints, truncations.
//! * [`PageHeader`] and [`WalVersion`] read page headers and the format version they carry.
//! * [`synth`] writes well-formed WAL, for tests and fuzzing.
//!
//! The decoder does no I/O, never panics on any input, and never buffers more than it was
//! given: a corrupt record length cannot make it allocate.

mod cursor;
mod decoder;
mod error;
mod kind;
mod page;
mod record;
pub mod synth;
mod timestamp;
mod xact;

#[cfg(test)]
mod tests;

pub use decoder::{DecodedRecord, WalStreamDecoder};
pub use error::WalDecodeError;
pub use kind::RecordKind;
pub use page::{
    LongHeader, PageHeader, PageHeaderError, WalVersion, LONG_HEADER_LEN, SHORT_HEADER_LEN,
    XLOG_BLCKSZ, XLP_ALL_FLAGS, XLP_BKP_REMOVABLE, XLP_FIRST_IS_CONTRECORD,
    XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLP_LONG_HEADER,
};
pub use record::{MAX_RECORD_LEN, RECORD_HEADER_LEN};
pub use timestamp::PgTimestamp;
pub use xact::{RelFileLocator, XactInfo};
