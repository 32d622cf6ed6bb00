//! Sans-IO pieces of the replication protocol: framing limits and the messages carried inside
//! CopyData during `BASE_BACKUP` and `START_REPLICATION`. Bytes in, values out; no I/O.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgkeep_format::Lsn;

use super::PgError;

/// Largest backend message accepted. PostgreSQL's own messages in these flows are far
/// smaller (CopyData ≤ 128 KiB, history files a few KiB); the length field is checked
/// before anything is buffered, so a hostile server cannot make us allocate gigabytes.
pub const MAX_MESSAGE_LEN: usize = 64 << 20;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// Checks the header of the next backend message in `buf` (type byte + i32 length), if
/// complete. Returns the total size of the message when its header is readable.
pub fn check_frame(buf: &[u8]) -> Result<Option<usize>, PgError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(PgError::Protocol(format!(
            "message type {:?} declares length {len}",
            char::from(buf[0])
        )));
    }
    let len = len as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(PgError::Protocol(format!(
            "message type {:?} declares {len} bytes, more than the {MAX_MESSAGE_LEN}-byte limit",
            char::from(buf[0])
        )));
    }
    Ok(Some(len + 1))
}

/// What a CopyData message of `BASE_BACKUP` (PostgreSQL 15+) carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupCopyData {
    /// `n`: a new archive starts (`base.tar` or `<oid>.tar`); `tablespace_path` is empty for
    /// the data directory.
    NewArchive {
        name: String,
        tablespace_path: String,
    },
    /// `d`: archive or manifest bytes, split at arbitrary points.
    Data(Bytes),
    /// `p`: bytes sent so far.
    Progress(u64),
    /// `m`: every later `d` is backup_manifest bytes.
    Manifest,
}

fn take_cstr(buf: &mut Bytes, what: &str) -> Result<String, PgError> {
    let end = buf
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| PgError::Protocol(format!("{what}: unterminated string")))?;
    let s = buf.split_to(end);
    buf.advance(1);
    String::from_utf8(s.to_vec())
        .map_err(|_| PgError::Protocol(format!("{what}: string is not UTF-8")))
}

fn take_u64(buf: &mut Bytes, what: &str) -> Result<u64, PgError> {
    if buf.remaining() < 8 {
        return Err(PgError::Protocol(format!("{what}: truncated")));
    }
    Ok(buf.get_u64())
}

/// Parses the payload of one CopyData message of a 15+ `BASE_BACKUP`.
pub fn parse_backup_copy_data(mut payload: Bytes) -> Result<BackupCopyData, PgError> {
    if payload.is_empty() {
        return Err(PgError::Protocol("empty CopyData in BASE_BACKUP".into()));
    }
    let kind = payload.get_u8();
    Ok(match kind {
        b'n' => {
            let name = take_cstr(&mut payload, "new-archive message")?;
            let tablespace_path = take_cstr(&mut payload, "new-archive message")?;
            BackupCopyData::NewArchive {
                name,
                tablespace_path,
            }
        }
        b'd' => BackupCopyData::Data(payload),
        b'p' => BackupCopyData::Progress(take_u64(&mut payload, "progress message")?),
        b'm' => BackupCopyData::Manifest,
        other => {
            return Err(PgError::Protocol(format!(
                "unknown BASE_BACKUP CopyData type {:?}",
                char::from(other)
            )))
        }
    })
}

/// What a CopyData message of `START_REPLICATION` carries from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// `w`: WAL bytes starting at `start`.
    XLogData {
        start: Lsn,
        /// The server's current end of WAL.
        end: Lsn,
        /// Microseconds since 2000-01-01 UTC.
        send_time: i64,
        data: Bytes,
    },
    /// `k`: keepalive; with `reply_requested` the client must answer at once.
    Keepalive {
        end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
}

/// Parses the payload of one CopyData message during `START_REPLICATION`.
pub fn parse_replication_message(mut payload: Bytes) -> Result<ReplicationMessage, PgError> {
    if payload.is_empty() {
        return Err(PgError::Protocol(
            "empty CopyData in START_REPLICATION".into(),
        ));
    }
    match payload.get_u8() {
        b'w' => {
            if payload.remaining() < 24 {
                return Err(PgError::Protocol("XLogData header truncated".into()));
            }
            let start = Lsn(payload.get_u64());
            let end = Lsn(payload.get_u64());
            let send_time = payload.get_i64();
            Ok(ReplicationMessage::XLogData {
                start,
                end,
                send_time,
                data: payload,
            })
        }
        b'k' => {
            if payload.remaining() < 17 {
                return Err(PgError::Protocol("keepalive truncated".into()));
            }
            Ok(ReplicationMessage::Keepalive {
                end: Lsn(payload.get_u64()),
                send_time: payload.get_i64(),
                reply_requested: payload.get_u8() != 0,
            })
        }
        other => Err(PgError::Protocol(format!(
            "unknown replication CopyData type {:?}",
            char::from(other)
        ))),
    }
}

/// The payload of a standby status update (`r`). Positions are "last byte + 1" as
/// PostgreSQL expects; `flushed` must only cover WAL that is durably stored, because with a
/// slot it becomes the slot's restart point.
pub fn standby_status_update(
    written: Lsn,
    flushed: Lsn,
    applied: Lsn,
    now_pg_us: i64,
    reply: bool,
) -> Bytes {
    let mut b = BytesMut::with_capacity(34);
    b.put_u8(b'r');
    b.put_u64(written.0);
    b.put_u64(flushed.0);
    b.put_u64(applied.0);
    b.put_i64(now_pg_us);
    b.put_u8(u8::from(reply));
    b.freeze()
}

/// Frames a CopyData message (`d`) from the client.
pub fn copy_data_message(payload: &[u8]) -> Result<Bytes, PgError> {
    let len = i32::try_from(payload.len() + 4)
        .map_err(|_| PgError::Protocol("CopyData payload too large".into()))?;
    let mut b = BytesMut::with_capacity(payload.len() + 5);
    b.put_u8(b'd');
    b.put_i32(len);
    b.put_slice(payload);
    Ok(b.freeze())
}

/// The CopyDone message (`c`).
pub fn copy_done_message() -> Bytes {
    Bytes::from_static(&[b'c', 0, 0, 0, 4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_checked_before_buffering() {
        assert_eq!(check_frame(b"Z\0\0").expect("short"), None);
        assert_eq!(check_frame(b"Z\0\0\0\x05I").expect("ok"), Some(6));
        assert!(
            check_frame(b"d\x7f\xff\xff\xff").is_err(),
            "2 GiB message refused"
        );
        assert!(
            check_frame(b"d\0\0\0\x02").is_err(),
            "length below 4 refused"
        );
        assert!(
            check_frame(b"d\xff\xff\xff\xff").is_err(),
            "negative length refused"
        );
    }

    #[test]
    fn backup_copy_data_round_trips_each_kind() {
        let n = parse_backup_copy_data(Bytes::from_static(b"nbase.tar\0\0")).expect("n");
        assert_eq!(
            n,
            BackupCopyData::NewArchive {
                name: "base.tar".into(),
                tablespace_path: String::new()
            }
        );
        let mut p = vec![b'p'];
        p.extend_from_slice(&12345u64.to_be_bytes());
        assert_eq!(
            parse_backup_copy_data(Bytes::from(p)).expect("p"),
            BackupCopyData::Progress(12345)
        );
        assert_eq!(
            parse_backup_copy_data(Bytes::from_static(b"dxyz")).expect("d"),
            BackupCopyData::Data(Bytes::from_static(b"xyz"))
        );
        assert_eq!(
            parse_backup_copy_data(Bytes::from_static(b"m")).expect("m"),
            BackupCopyData::Manifest
        );
        for bad in [&b""[..], b"n\0", b"nabc", b"p\0\0", b"q"] {
            assert!(
                parse_backup_copy_data(Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn replication_messages_parse_and_status_updates_encode() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&0x1_0000_0000u64.to_be_bytes());
        w.extend_from_slice(&0x1_0000_2000u64.to_be_bytes());
        w.extend_from_slice(&7i64.to_be_bytes());
        w.extend_from_slice(b"wal");
        match parse_replication_message(Bytes::from(w)).expect("w") {
            ReplicationMessage::XLogData {
                start,
                end,
                send_time,
                data,
            } => {
                assert_eq!(
                    (start, end, send_time),
                    (Lsn(0x1_0000_0000), Lsn(0x1_0000_2000), 7)
                );
                assert_eq!(&data[..], b"wal");
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut k = vec![b'k'];
        k.extend_from_slice(&5u64.to_be_bytes());
        k.extend_from_slice(&6i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            parse_replication_message(Bytes::from(k)).expect("k"),
            ReplicationMessage::Keepalive {
                end: Lsn(5),
                send_time: 6,
                reply_requested: true
            }
        );
        assert!(parse_replication_message(Bytes::from_static(b"w123")).is_err());
        assert!(parse_replication_message(Bytes::from_static(b"k")).is_err());
        let r = standby_status_update(Lsn(1), Lsn(2), Lsn(3), 4, true);
        assert_eq!(r.len(), 34);
        assert_eq!(r[0], b'r');
        assert_eq!(&r[9..17], &2u64.to_be_bytes());
        assert_eq!(r[33], 1);
    }
}
