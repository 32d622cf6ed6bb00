//! Transaction-end records of the Transaction resource manager: commit, abort, their two-phase
//! forms, and prepare (`src/include/access/xact.h`; parsed as `ParseCommitRecord`,
//! `ParseAbortRecord` and `ParsePrepareRecord` in `src/backend/access/rmgrdesc/xactdesc.c`).
//!
//! These are the instants a user can recover to, so their timestamps are what the time index is
//! made of; the relation files a committed transaction dropped say which of them destroyed
//! data (`DROP TABLE`, `TRUNCATE`, `DROP DATABASE` ...).
//!
//! Main data layout, all parts after the first optional and in this order:
//!
//! ```text
//! TimestampTz xact_time
//! [u32 xinfo]                               if xl_info & XLOG_XACT_HAS_INFO
//! [Oid dbId, Oid tsId]                      XACT_XINFO_HAS_DBINFO
//! [int n, TransactionId[n]]                 XACT_XINFO_HAS_SUBXACTS
//! [int n, RelFileLocator[n]]                XACT_XINFO_HAS_RELFILELOCATORS (12 bytes each)
//! [int n, xl_xact_stats_item[n]]            XACT_XINFO_HAS_DROPPED_STATS (15+; 12 bytes, 16 in 18+)
//! [int n, SharedInvalidationMessage[n]]     XACT_XINFO_HAS_INVALS (commit only; 16 bytes each)
//! [TransactionId twophase_xid]              XACT_XINFO_HAS_TWOPHASE
//! [char gid[], NUL]                           and XACT_XINFO_HAS_GID
//! [XLogRecPtr origin_lsn, TimestampTz ts]   XACT_XINFO_HAS_ORIGIN (unaligned)
//! ```

use std::fmt;

use pgkeep_format::pg::Lsn;

use super::cursor::Cursor;
use super::error::WalDecodeError;
use super::page::WalVersion;
use super::timestamp::PgTimestamp;

/// `xl_info` bit: a `xinfo` word follows the timestamp.
pub(super) const XLOG_XACT_HAS_INFO: u8 = 0x80;

pub(super) const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
pub(super) const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
pub(super) const XACT_XINFO_HAS_RELFILELOCATORS: u32 = 1 << 2;
pub(super) const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
pub(super) const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
pub(super) const XACT_XINFO_HAS_ORIGIN: u32 = 1 << 5;
pub(super) const XACT_XINFO_HAS_GID: u32 = 1 << 7;
pub(super) const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;

/// `sizeof(SharedInvalidationMessage)`: a union whose largest members are 16 bytes.
const INVAL_MESSAGE_LEN: usize = 16;
/// `sizeof(RelFileNode)` / `sizeof(RelFileLocator)`.
const REL_FILE_LOCATOR_LEN: usize = 12;
/// `sizeof(xl_xact_origin)`.
const ORIGIN_LEN: usize = 16;

/// `sizeof(xl_xact_stats_item)`: `{int kind; Oid dboid; Oid objoid}` in 15–17; 18 widened the
/// object id to 64 bits, stored as `objid_lo`, `objid_hi`.
fn stats_item_len(version: WalVersion) -> usize {
    match version {
        WalVersion::V18 => 16,
        _ => 12,
    }
}

/// A relation file: tablespace, database and relation file number (`RelFileLocator`, called
/// `RelFileNode` before 16; the same 12 bytes in every version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelFileLocator {
    /// Tablespace OID (1663 is `pg_default`, 1664 `pg_global`).
    pub spc: u32,
    /// Database OID (0 for shared relations).
    pub db: u32,
    /// Relation file number (`pg_relation_filenode()`), not the relation's OID.
    pub rel: u32,
}

impl RelFileLocator {
    pub(crate) fn read(c: &mut Cursor<'_>) -> Option<Self> {
        Some(Self {
            spc: c.u32()?,
            db: c.u32()?,
            rel: c.u32()?,
        })
    }
}

/// `spc/db/rel`, as `pg_waldump` prints block references.
impl fmt::Display for RelFileLocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.spc, self.db, self.rel)
    }
}

/// What a commit or abort record says about its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XactInfo {
    /// When the transaction ended (commit or abort time): what `recovery_target_time`
    /// compares against.
    pub time: PgTimestamp,
    /// The transaction: the record's `xl_xid` for commit and abort, the prepared
    /// transaction's xid (from the record body) for `COMMIT PREPARED` / `ROLLBACK PREPARED`,
    /// whose record is written by another transaction.
    pub xid: u32,
    /// Its committed or aborted subtransactions.
    pub subxacts: Vec<u32>,
    /// Relation files removed by the commit (or, for an abort, the files the transaction had
    /// created): a commit with any marks a `DROP` or `TRUNCATE`.
    pub dropped_relations: Vec<RelFileLocator>,
    /// The database the transaction ran in, when the record says (`XACT_XINFO_HAS_DBINFO`:
    /// commits with invalidation messages, and transaction ends under `wal_level = logical`).
    pub db_id: Option<u32>,
    /// The two-phase transaction's GID, when the record carries it (`XACT_XINFO_HAS_GID`,
    /// written with `wal_level = logical`).
    pub gid: Option<String>,
}

/// Which transaction end a record is: commits carry invalidation messages, aborts never do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum XactEnd {
    Commit,
    Abort,
}

/// Parses the main data of a commit or abort record (plain or prepared; `info` is the record's
/// `xl_info`). Returns the parsed information and the two-phase xid if present.
pub(crate) fn parse_xact_end(
    main: &[u8],
    info: u8,
    end: XactEnd,
    version: WalVersion,
    lsn: Lsn,
) -> Result<(XactInfo, Option<u32>), WalDecodeError> {
    let what = match end {
        XactEnd::Commit => "commit",
        XactEnd::Abort => "abort",
    };
    let short = |part: &str| {
        WalDecodeError::malformed(lsn, format!("{what} record too short for its {part}"))
    };
    let mut c = Cursor::new(main);
    let time = PgTimestamp(c.i64().ok_or_else(|| short("timestamp"))?);
    let xinfo = if info & XLOG_XACT_HAS_INFO != 0 {
        c.u32().ok_or_else(|| short("xinfo"))?
    } else {
        0
    };
    let db_id = if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        let db = c.u32().ok_or_else(|| short("database info"))?;
        c.u32().ok_or_else(|| short("database info"))?; // tablespace
        Some(db)
    } else {
        None
    };
    let mut subxacts = Vec::new();
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        let items = counted(&mut c, 4, lsn, what, "subtransactions")?;
        let mut items = Cursor::new(items);
        while let Some(x) = items.u32() {
            subxacts.push(x);
        }
    }
    let mut dropped_relations = Vec::new();
    if xinfo & XACT_XINFO_HAS_RELFILELOCATORS != 0 {
        let items = counted(&mut c, REL_FILE_LOCATOR_LEN, lsn, what, "relation files")?;
        let mut items = Cursor::new(items);
        while let Some(r) = RelFileLocator::read(&mut items) {
            dropped_relations.push(r);
        }
    }
    if xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        counted(
            &mut c,
            stats_item_len(version),
            lsn,
            what,
            "dropped statistics",
        )?;
    }
    if end == XactEnd::Commit && xinfo & XACT_XINFO_HAS_INVALS != 0 {
        counted(
            &mut c,
            INVAL_MESSAGE_LEN,
            lsn,
            what,
            "invalidation messages",
        )?;
    }
    let mut twophase_xid = None;
    let mut gid = None;
    if xinfo & XACT_XINFO_HAS_TWOPHASE != 0 {
        twophase_xid = Some(c.u32().ok_or_else(|| short("two-phase xid"))?);
        if xinfo & XACT_XINFO_HAS_GID != 0 {
            let rest = c.rest();
            let nul = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| short("GID (no terminating NUL)"))?;
            gid = Some(String::from_utf8_lossy(&rest[..nul]).into_owned());
            c.take(nul + 1).ok_or_else(|| short("GID"))?;
        }
    }
    if xinfo & XACT_XINFO_HAS_ORIGIN != 0 {
        c.take(ORIGIN_LEN)
            .ok_or_else(|| short("replication origin"))?;
    }
    Ok((
        XactInfo {
            time,
            xid: 0, // set by the caller, who knows which xid the record is about
            subxacts,
            dropped_relations,
            db_id,
            gid,
        },
        twophase_xid,
    ))
}

/// Reads an `int` count and then that many items of `item_len` bytes, checking the count
/// against the bytes present before anything is allocated from it.
fn counted<'a>(
    c: &mut Cursor<'a>,
    item_len: usize,
    lsn: Lsn,
    what: &str,
    part: &str,
) -> Result<&'a [u8], WalDecodeError> {
    let n = c.i32().ok_or_else(|| {
        WalDecodeError::malformed(
            lsn,
            format!("{what} record too short for its count of {part}"),
        )
    })?;
    let bytes = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_mul(item_len))
        .ok_or_else(|| WalDecodeError::malformed(lsn, format!("{what} record: {n} {part}")))?;
    c.take(bytes).ok_or_else(|| {
        WalDecodeError::malformed(
            lsn,
            format!(
                "{what} record: {n} {part} need {bytes} bytes, {} remain",
                c.remaining()
            ),
        )
    })
}

/// Parses the main data of a `PREPARE TRANSACTION` record (`xl_xact_prepare`, the two-phase
/// state file's header): the prepared transaction's xid and the time it was prepared.
pub(crate) fn parse_prepare(main: &[u8], lsn: Lsn) -> Result<(u32, PgTimestamp), WalDecodeError> {
    let mut c = Cursor::new(main);
    let short = || WalDecodeError::malformed(lsn, "prepare record too short for its header");
    c.u32().ok_or_else(short)?; // magic
    c.u32().ok_or_else(short)?; // total_len
    let xid = c.u32().ok_or_else(short)?;
    c.u32().ok_or_else(short)?; // database
    let prepared_at = PgTimestamp(c.i64().ok_or_else(short)?);
    Ok((xid, prepared_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LSN: Lsn = Lsn(0x1552FA8);

    #[test]
    fn plain_commit_without_xinfo() {
        let main = 123_456_789i64.to_le_bytes();
        let (x, two) =
            parse_xact_end(&main, 0x00, XactEnd::Commit, WalVersion::V15, LSN).expect("parses");
        assert_eq!(x.time, PgTimestamp(123_456_789));
        assert!(x.subxacts.is_empty() && x.dropped_relations.is_empty());
        assert_eq!((x.db_id, two, x.gid), (None, None, None));
    }

    #[test]
    fn negative_and_oversized_counts_are_errors() {
        let mut main = 1i64.to_le_bytes().to_vec();
        main.extend_from_slice(&XACT_XINFO_HAS_SUBXACTS.to_le_bytes());
        let mut neg = main.clone();
        neg.extend_from_slice(&(-1i32).to_le_bytes());
        assert!(parse_xact_end(&neg, 0x80, XactEnd::Commit, WalVersion::V15, LSN).is_err());
        let mut big = main.clone();
        big.extend_from_slice(&i32::MAX.to_le_bytes());
        big.extend_from_slice(&[0; 8]);
        let err = parse_xact_end(&big, 0x80, XactEnd::Commit, WalVersion::V15, LSN)
            .expect_err("too many");
        assert_eq!(err.lsn(), LSN);
        assert!(parse_xact_end(&main[..7], 0, XactEnd::Commit, WalVersion::V15, LSN).is_err());
    }

    #[test]
    fn prepare_header() {
        let mut main = Vec::new();
        main.extend_from_slice(&0x57F94534u32.to_le_bytes());
        main.extend_from_slice(&250u32.to_le_bytes());
        main.extend_from_slice(&738u32.to_le_bytes());
        main.extend_from_slice(&5u32.to_le_bytes());
        main.extend_from_slice(&42i64.to_le_bytes());
        assert_eq!(parse_prepare(&main, LSN), Ok((738, PgTimestamp(42))));
        assert!(parse_prepare(&main[..23], LSN).is_err());
    }
}
