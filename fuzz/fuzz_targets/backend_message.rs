//! The replication client's backend-message parser (`replication::backend::parse`) and the
//! CopyData payload parsers of `BASE_BACKUP` and `START_REPLICATION`
//! (`replication::wire`), on arbitrary bytes as a hostile server would send them.
//!
//! Byte 0 picks the piece size the stream is fed in (1 + byte 0); the rest is the stream.
//! Checks:
//! - no panic, and no allocation past libFuzzer's `-malloc_limit_mb` whatever a length or
//!   count field claims (the smoke run sets the limit well below a forged length);
//! - feeding the stream in pieces gives exactly the messages (and the same error) as one
//!   push: nothing depends on where TCP cuts the stream;
//! - after a parse error nothing is taken as a message;
//! - round trips where an encoder exists: a CopyData message re-framed with
//!   `copy_data_message` parses back to itself; an XLogData or keepalive re-encoded parses
//!   back to itself; a `BASE_BACKUP` new-archive, progress or manifest message re-encoded
//!   parses back to itself.
#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgkeep_engine::replication::backend::{parse, BackendMessage};
use pgkeep_engine::replication::wire::{
    copy_data_message, parse_backup_copy_data, parse_replication_message, BackupCopyData,
    ReplicationMessage,
};

/// Every message of `stream`, fed `piece` bytes at a time, and the error that ended it.
fn run(stream: &[u8], piece: usize) -> (Vec<BackendMessage>, Option<String>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for p in stream.chunks(piece) {
        buf.extend_from_slice(p);
        loop {
            match parse(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }
    (out, None)
}

fn check_copy_data(payload: &Bytes) {
    let framed = copy_data_message(payload).expect("a fuzz input fits in a message");
    let mut buf = BytesMut::from(&framed[..]);
    assert_eq!(
        parse(&mut buf).expect("re-framed CopyData parses"),
        Some(BackendMessage::CopyData(payload.clone())),
        "CopyData round trip"
    );
    assert!(buf.is_empty());

    if let Ok(m) = parse_replication_message(payload.clone()) {
        let mut b = BytesMut::new();
        match &m {
            ReplicationMessage::XLogData {
                start,
                end,
                send_time,
                data,
            } => {
                b.put_u8(b'w');
                b.put_u64(start.0);
                b.put_u64(end.0);
                b.put_i64(*send_time);
                b.put_slice(data);
            }
            ReplicationMessage::Keepalive {
                end,
                send_time,
                reply_requested,
            } => {
                b.put_u8(b'k');
                b.put_u64(end.0);
                b.put_i64(*send_time);
                b.put_u8(u8::from(*reply_requested));
            }
        }
        assert_eq!(
            parse_replication_message(b.freeze()).expect("re-encoded message parses"),
            m,
            "replication message round trip"
        );
    }
    if let Ok(m) = parse_backup_copy_data(payload.clone()) {
        let mut b = BytesMut::new();
        match &m {
            BackupCopyData::NewArchive {
                name,
                tablespace_path,
            } => {
                b.put_u8(b'n');
                b.put_slice(name.as_bytes());
                b.put_u8(0);
                b.put_slice(tablespace_path.as_bytes());
                b.put_u8(0);
            }
            BackupCopyData::Data(d) => {
                b.put_u8(b'd');
                b.put_slice(d);
            }
            BackupCopyData::Progress(n) => {
                b.put_u8(b'p');
                b.put_u64(*n);
            }
            BackupCopyData::Manifest => b.put_u8(b'm'),
        }
        assert_eq!(
            parse_backup_copy_data(b.freeze()).expect("re-encoded message parses"),
            m,
            "BASE_BACKUP CopyData round trip"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let whole = run(stream, stream.len().max(1));
    let pieces = run(stream, 1 + usize::from(first));
    assert_eq!(whole, pieces, "messages depend on how the stream is split");
    for m in &whole.0 {
        if let BackendMessage::CopyData(payload) = m {
            check_copy_data(payload);
        }
    }
    // The payload parsers on the raw input too: most inputs never frame as CopyData.
    check_copy_data(&Bytes::copy_from_slice(stream));
});
