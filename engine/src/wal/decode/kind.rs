//! Classifying a record by what the WAL time index needs from it.
//!
//! Out of the hundreds of record types, a person looking for "the instant before the mistake"
//! needs few: transaction ends with their times and the relation files they dropped, restore
//! points, relation truncations, and the records that shape the WAL itself (segment switch,
//! checkpoints, end of backup, overwritten records). Everything else is [`RecordKind::Other`]:
//! counted, its position checked, but not interpreted.

use pgkeep_format::pg::Lsn;

use super::cursor::Cursor;
use super::error::WalDecodeError;
use super::page::WalVersion;
use super::timestamp::PgTimestamp;
use super::xact::{parse_prepare, parse_xact_end, RelFileLocator, XactEnd, XactInfo};

/// Resource manager ids (`src/include/access/rmgrlist.h`).
pub(crate) const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const RM_SMGR_ID: u8 = 2;

/// The rmgr-specific bits of `xl_info`.
const XLR_RMGR_INFO_MASK: u8 = 0xF0;

/// XLOG rmgr record types (`src/include/catalog/pg_control.h`).
const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
pub(crate) const XLOG_SWITCH: u8 = 0x40;
const XLOG_BACKUP_END: u8 = 0x50;
const XLOG_RESTORE_POINT: u8 = 0x70;
const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;

/// Transaction rmgr record types (`src/include/access/xact.h`), under `XLOG_XACT_OPMASK`.
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_PREPARE: u8 = 0x10;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;

/// Storage manager record types (`src/include/catalog/storage_xlog.h`).
const XLOG_SMGR_TRUNCATE: u8 = 0x20;

/// `MAXFNAMELEN`: the size of `xl_restore_point.rp_name`.
const RESTORE_POINT_NAME_LEN: usize = 64;

/// What a record means for the time index. More kinds may be told apart later, so matches
/// need a catch-all arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordKind {
    /// A transaction committed.
    Commit(XactInfo),
    /// A transaction aborted (explicitly, or at its end after an error).
    Abort(XactInfo),
    /// `COMMIT PREPARED`: `XactInfo::xid` is the prepared transaction.
    CommitPrepared(XactInfo),
    /// `ROLLBACK PREPARED`: `XactInfo::xid` is the prepared transaction.
    AbortPrepared(XactInfo),
    /// `PREPARE TRANSACTION`: the transaction is not over yet, its end is a later
    /// [`RecordKind::CommitPrepared`] or [`RecordKind::AbortPrepared`].
    Prepare {
        xid: u32,
        /// When it was prepared.
        time: PgTimestamp,
    },
    /// `pg_create_restore_point(name)`: a named recovery target.
    RestorePoint { time: PgTimestamp, name: String },
    /// `XLOG_SWITCH`: the rest of the segment is unused; the next record starts in the next
    /// segment.
    Switch,
    /// A shutdown checkpoint (clean shutdown, or the end of a recovery); `redo` is where
    /// replay from it starts.
    CheckpointShutdown { redo: Lsn },
    /// An online checkpoint.
    CheckpointOnline { redo: Lsn },
    /// End of an online base backup that started at `start`: the earliest point a restore of
    /// that backup may stop.
    BackupEnd { start: Lsn },
    /// Marks that the record starting at `overwritten` was never completed (the server crashed
    /// while writing it) and that WAL went on from here instead.
    OverwriteContrecord { overwritten: Lsn, time: PgTimestamp },
    /// A relation file truncated to `block` blocks (`VACUUM` trimming empty pages, or a
    /// truncation replayed on a standby); `TRUNCATE TABLE` appears instead as a commit that
    /// dropped the old relation file.
    Truncate { locator: RelFileLocator, block: u32 },
    /// Any other record.
    Other,
}

impl RecordKind {
    /// The time a record carries, for those that have one: transaction ends, prepares,
    /// restore points and overwrite markers.
    pub fn time(&self) -> Option<PgTimestamp> {
        match self {
            Self::Commit(x) | Self::Abort(x) | Self::CommitPrepared(x) | Self::AbortPrepared(x) => {
                Some(x.time)
            }
            Self::Prepare { time, .. }
            | Self::RestorePoint { time, .. }
            | Self::OverwriteContrecord { time, .. } => Some(*time),
            _ => None,
        }
    }
}

/// Classifies a record from its header fields and main data.
pub(crate) fn classify(
    rmid: u8,
    info: u8,
    xid: u32,
    main: &[u8],
    version: WalVersion,
    lsn: Lsn,
) -> Result<RecordKind, WalDecodeError> {
    let short = |what: &str| {
        WalDecodeError::malformed(
            lsn,
            format!("{what} record: main data too short ({} bytes)", main.len()),
        )
    };
    let mut c = Cursor::new(main);
    Ok(match rmid {
        RM_XLOG_ID => match info & XLR_RMGR_INFO_MASK {
            XLOG_SWITCH => RecordKind::Switch,
            XLOG_CHECKPOINT_SHUTDOWN => RecordKind::CheckpointShutdown {
                redo: Lsn(c.u64().ok_or_else(|| short("checkpoint"))?),
            },
            XLOG_CHECKPOINT_ONLINE => RecordKind::CheckpointOnline {
                redo: Lsn(c.u64().ok_or_else(|| short("checkpoint"))?),
            },
            XLOG_BACKUP_END => RecordKind::BackupEnd {
                start: Lsn(c.u64().ok_or_else(|| short("backup end"))?),
            },
            XLOG_RESTORE_POINT => {
                let time = PgTimestamp(c.i64().ok_or_else(|| short("restore point"))?);
                let raw = c
                    .take(RESTORE_POINT_NAME_LEN)
                    .ok_or_else(|| short("restore point"))?;
                let name = raw.split(|&b| b == 0).next().unwrap_or_default();
                RecordKind::RestorePoint {
                    time,
                    name: String::from_utf8_lossy(name).into_owned(),
                }
            }
            XLOG_OVERWRITE_CONTRECORD => {
                let overwritten = Lsn(c.u64().ok_or_else(|| short("overwrite contrecord"))?);
                let time = PgTimestamp(c.i64().ok_or_else(|| short("overwrite contrecord"))?);
                RecordKind::OverwriteContrecord { overwritten, time }
            }
            _ => RecordKind::Other,
        },
        RM_XACT_ID => match info & XLOG_XACT_OPMASK {
            XLOG_XACT_COMMIT => {
                let (mut x, _) = parse_xact_end(main, info, XactEnd::Commit, version, lsn)?;
                x.xid = xid;
                RecordKind::Commit(x)
            }
            XLOG_XACT_ABORT => {
                let (mut x, _) = parse_xact_end(main, info, XactEnd::Abort, version, lsn)?;
                x.xid = xid;
                RecordKind::Abort(x)
            }
            XLOG_XACT_COMMIT_PREPARED => {
                RecordKind::CommitPrepared(prepared_end(main, info, XactEnd::Commit, version, lsn)?)
            }
            XLOG_XACT_ABORT_PREPARED => {
                RecordKind::AbortPrepared(prepared_end(main, info, XactEnd::Abort, version, lsn)?)
            }
            XLOG_XACT_PREPARE => {
                let (xid, time) = parse_prepare(main, lsn)?;
                RecordKind::Prepare { xid, time }
            }
            _ => RecordKind::Other,
        },
        RM_SMGR_ID if info & XLR_RMGR_INFO_MASK == XLOG_SMGR_TRUNCATE => {
            // xl_smgr_truncate { BlockNumber blkno; RelFileLocator rlocator; int flags; }
            let block = c.u32().ok_or_else(|| short("truncate"))?;
            let locator = RelFileLocator::read(&mut c).ok_or_else(|| short("truncate"))?;
            RecordKind::Truncate { locator, block }
        }
        _ => RecordKind::Other,
    })
}

/// `COMMIT PREPARED` / `ROLLBACK PREPARED`: the same layout as a commit or abort, whose
/// `xl_xact_twophase` names the prepared transaction (the record's own `xl_xid` is the
/// transaction that ran the command, usually 0).
fn prepared_end(
    main: &[u8],
    info: u8,
    end: XactEnd,
    version: WalVersion,
    lsn: Lsn,
) -> Result<XactInfo, WalDecodeError> {
    let (mut x, twophase) = parse_xact_end(main, info, end, version, lsn)?;
    x.xid = twophase.ok_or_else(|| {
        WalDecodeError::malformed(
            lsn,
            "two-phase transaction end without the prepared transaction's xid",
        )
    })?;
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LSN: Lsn = Lsn(0x1553188);

    #[test]
    fn restore_point_name_stops_at_nul() {
        let mut main = 77i64.to_le_bytes().to_vec();
        let mut name = [0u8; 64];
        name[..11].copy_from_slice(b"before_drop");
        name[20] = b'x'; // garbage after the terminator is ignored
        main.extend_from_slice(&name);
        assert_eq!(
            classify(
                RM_XLOG_ID,
                XLOG_RESTORE_POINT,
                0,
                &main,
                WalVersion::V15,
                LSN
            ),
            Ok(RecordKind::RestorePoint {
                time: PgTimestamp(77),
                name: "before_drop".into()
            })
        );
        let err = classify(
            RM_XLOG_ID,
            XLOG_RESTORE_POINT,
            0,
            &main[..71],
            WalVersion::V15,
            LSN,
        )
        .expect_err("short");
        assert_eq!(err.lsn(), LSN);
        assert!(err.to_string().contains("0/1553188"), "{err}");
    }

    #[test]
    fn xlog_info_low_bits_are_not_the_record_type() {
        // The low four bits of xl_info belong to XLogInsert (e.g. XLR_SPECIAL_REL_UPDATE).
        assert_eq!(
            classify(RM_XLOG_ID, XLOG_SWITCH | 0x01, 0, &[], WalVersion::V18, LSN),
            Ok(RecordKind::Switch)
        );
        let main = [0x28, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(
            classify(
                RM_XLOG_ID,
                XLOG_CHECKPOINT_ONLINE,
                0,
                &main,
                WalVersion::V18,
                LSN
            ),
            Ok(RecordKind::CheckpointOnline {
                redo: Lsn(0x100_0028)
            })
        );
        assert_eq!(
            classify(10, 0x00, 5, &[], WalVersion::V18, LSN),
            Ok(RecordKind::Other)
        );
    }

    #[test]
    fn smgr_truncate() {
        let mut main = 12u32.to_le_bytes().to_vec();
        for v in [1663u32, 5, 16384, 7] {
            main.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(
            classify(
                RM_SMGR_ID,
                XLOG_SMGR_TRUNCATE,
                0,
                &main,
                WalVersion::V13,
                LSN
            ),
            Ok(RecordKind::Truncate {
                locator: RelFileLocator {
                    spc: 1663,
                    db: 5,
                    rel: 16384
                },
                block: 12
            })
        );
        // XLOG_SMGR_CREATE is not a truncation.
        assert_eq!(
            classify(RM_SMGR_ID, 0x10, 0, &main, WalVersion::V13, LSN),
            Ok(RecordKind::Other)
        );
    }

    #[test]
    fn commit_prepared_needs_the_twophase_xid() {
        let main = 5i64.to_le_bytes();
        assert!(classify(
            RM_XACT_ID,
            XLOG_XACT_COMMIT_PREPARED,
            0,
            &main,
            WalVersion::V15,
            LSN
        )
        .is_err());
    }
}
