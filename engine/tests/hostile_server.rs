//! A hostile or broken server, played by the fake walsender: crafted tar entries during
//! `BASE_BACKUP`, and malformed, truncated, oversized or out-of-order protocol messages
//! around `IDENTIFY_SYSTEM` and `START_REPLICATION`. Each must end in a clear, typed error
//! (a protocol error naming what was wrong, or the entry that was refused), promptly, with
//! nothing committed, and without allocating what a length or size field claims.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgkeep_engine::backup::{take_backup, BackupOptions, NoProgress};
use pgkeep_engine::conninfo::{self, ConnConfig};
use pgkeep_engine::format::ClusterName;
use pgkeep_engine::replication::{identify, PgConnection, PgError, ReplicationMode};
use pgkeep_engine::tar::{padding, write_header, EntryKind, TarEntry, TarError};
use pgkeep_engine::wal::stream::{run_once, StreamOptions, StreamStatus};
use pgkeep_engine::wal::WalArchive;
use pgkeep_engine::Error;
use pgkeep_testkit::walsender::{message, Archive, FakeWalsender, RawAnswer, RawThen, Script};

fn conn_config(fake: &FakeWalsender) -> ConnConfig {
    let params = conninfo::parse(&fake.connstring()).expect("connstring parses");
    conninfo::resolve(&params, &|_| None, "postgres", None).expect("connstring resolves")
}

/// A tar stream built with the engine's header writer (no end-of-archive marker: the fake
/// adds it for 15 and later, as PostgreSQL does).
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn add(&mut self, path: &str, kind: EntryKind, content: &[u8], link: &str) -> &mut Self {
        self.add_sized(path, kind, content, content.len() as u64, link)
    }

    /// An entry whose header declares `size` bytes, followed by `content` (which may be
    /// shorter: a lie about the size).
    fn add_sized(
        &mut self,
        path: &str,
        kind: EntryKind,
        content: &[u8],
        size: u64,
        link: &str,
    ) -> &mut Self {
        let header = write_header(&TarEntry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o600,
            uid: 26,
            gid: 26,
            size,
            mtime: 1_700_000_000,
            link_target: link.as_bytes().to_vec(),
        })
        .expect("header");
        self.0.extend_from_slice(&header);
        self.0.extend_from_slice(content);
        self.0
            .resize(self.0.len() + padding(content.len() as u64), 0);
        self
    }

    fn file(&mut self, path: &str, content: &[u8]) -> &mut Self {
        self.add(path, EntryKind::Regular, content, "")
    }

    fn dir(&mut self, path: &str) -> &mut Self {
        self.add(path, EntryKind::Directory, &[], "")
    }
}

/// A data directory archive that starts like PostgreSQL's (backup_label first), so a
/// failure is about the entries a case adds, not about a missing label.
fn base() -> Tar {
    let mut t = Tar::default();
    t.file(
        "backup_label",
        b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
          CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
          START TIME: 2024-05-01 12:00:00 UTC\nLABEL: hostile\nSTART TIMELINE: 1\n",
    )
    .file("PG_VERSION", b"15\n")
    .dir("base")
    .dir("base/1");
    t
}

/// Runs a backup from a fake server of `version` sending `tar` as the data directory; it
/// must fail within 30 s with nothing committed. Returns the error.
async fn failing_backup(version: &str, tar: Vec<u8>) -> Error {
    let mut s = Script::new(version);
    s.base_backup.archives = vec![Archive::data_directory(tar)];
    s.base_backup.manifest = Some(b"{}".to_vec());
    let fake = FakeWalsender::start(s).expect("fake walsender");
    let b = local();
    let repo = init(&b).await;
    let cluster = ClusterName::new("main").expect("name");
    let options = BackupOptions {
        label: Some("hostile".into()),
        ..BackupOptions::default()
    };
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        take_backup(&repo, &cluster, &conn_config(&fake), &options, &NoProgress),
    )
    .await
    .expect("the backup fails promptly instead of waiting");
    let err = match result {
        Ok(s) => panic!("the backup succeeded with {} files", s.manifest.files.len()),
        Err(e) => e,
    };
    assert!(
        repo.list_backups(&cluster).await.expect("list").is_empty(),
        "a failed backup is listed ({err})"
    );
    err
}

fn invalid_input(err: &Error) -> &str {
    match err {
        Error::InvalidInput(msg) => msg,
        other => panic!("expected a refusal (InvalidInput), got {other:?}"),
    }
}

/// What a hostile server may put in a base backup's tar: each is refused before the backup
/// commits, with an error naming the entry and why. Both protocol flows (13/14 raw tar,
/// 15+ typed CopyData) go through the same ingest, so each case runs on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tar_entries_are_refused() {
    let cases: Vec<(&str, Tar, &str)> = vec![
        (
            "parent directory",
            {
                let mut t = base();
                t.file("../outside/escaped", b"evil");
                t
            },
            "would leave the data directory",
        ),
        (
            "absolute path",
            {
                let mut t = base();
                t.file("/etc/cron.d/evil", b"evil");
                t
            },
            "would leave the data directory",
        ),
        (
            "`..` inside the path",
            {
                let mut t = base();
                t.file("base/1/../../../outside", b"evil");
                t
            },
            "would leave the data directory",
        ),
        (
            "`.` alone",
            {
                let mut t = base();
                t.dir(".");
                t
            },
            "would leave the data directory",
        ),
        (
            "character device",
            {
                let mut t = base();
                t.add("base/1/tty", EntryKind::Other(b'3'), &[], "");
                t
            },
            "as a character device",
        ),
        (
            "block device",
            {
                let mut t = base();
                t.add("base/1/sda", EntryKind::Other(b'4'), &[], "");
                t
            },
            "as a block device",
        ),
        (
            "FIFO",
            {
                let mut t = base();
                t.add("base/1/pipe", EntryKind::Other(b'6'), &[], "");
                t
            },
            "as a FIFO",
        ),
        (
            "hard link",
            {
                let mut t = base();
                t.add("base/1/shadow", EntryKind::HardLink, &[], "/etc/shadow");
                t
            },
            "as a hard link",
        ),
        (
            "the same file twice",
            {
                let mut t = base();
                t.file("base/1/1259", b"first")
                    .file("base/1/1259", b"second");
                t
            },
            "twice",
        ),
        (
            "the same file under two spellings",
            {
                let mut t = base();
                t.file("base/1/1259", b"first")
                    .file("./base//1/1259", b"second");
                t
            },
            "twice",
        ),
        (
            "a directory and a file of one name",
            {
                let mut t = base();
                t.dir("base/1/16384").file("base/1/16384", b"file");
                t
            },
            "twice",
        ),
        (
            "a symlink out, then a file written through it",
            {
                let mut t = base();
                t.add("base/1/evil", EntryKind::Symlink, &[], "/etc")
                    .file("base/1/evil/passwd", b"root::0:0::/:/bin/sh\n");
                t
            },
            "below the symbolic link",
        ),
    ];
    for version in ["14.10", "15.4"] {
        for (what, tar, expect) in &cases {
            let err = failing_backup(version, tar.0.clone()).await;
            let msg = invalid_input(&err);
            assert!(msg.contains(expect), "{version}, {what}: {msg}");
            assert!(
                msg.contains("refusing") || msg.contains("base backups hold only"),
                "{msg}"
            );
        }
    }
}

/// Entries that are odd but harmless are kept: a symlink out of the data directory is
/// stored as a link (restore decides, and refuses it outside `pg_tblspc`), and case
/// variants are distinct names on Linux.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_and_case_variants_are_stored_as_sent() {
    let mut t = base();
    t.add("pg_tblspc", EntryKind::Directory, &[], "")
        .add("pg_tblspc/16400", EntryKind::Symlink, &[], "/srv/ts")
        .file("base/1/Evil", b"upper")
        .file("base/1/evil", b"lower");
    let mut s = Script::new("15.4");
    s.base_backup.archives = vec![Archive::data_directory(t.0)];
    s.base_backup.manifest = Some(b"{}".to_vec());
    let fake = FakeWalsender::start(s).expect("fake walsender");
    let b = local();
    let repo = init(&b).await;
    let cluster = ClusterName::new("main").expect("name");
    let summary = take_backup(
        &repo,
        &cluster,
        &conn_config(&fake),
        &BackupOptions::default(),
        &NoProgress,
    )
    .await
    .expect("backup");
    let paths: Vec<String> = summary
        .manifest
        .files
        .iter()
        .map(|f| String::from_utf8_lossy(&f.path).into_owned())
        .collect();
    for p in ["pg_tblspc/16400", "base/1/Evil", "base/1/evil"] {
        assert!(paths.iter().any(|x| x == p), "{p} missing from {paths:?}");
    }
}

/// A header declaring a terabyte (then a few bytes and the end of the stream) is read as a
/// stream: nothing of that size is allocated (the test process would abort), and the
/// backup fails as truncated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_declared_sizes_are_streamed_and_fail_as_truncated() {
    for version in ["14.10", "15.4"] {
        for path in ["base/1/16384", "pg_wal/huge", "postgresql.conf"] {
            let mut t = base();
            t.add_sized(path, EntryKind::Regular, &[7u8; 4096], 1 << 40, "");
            let err = failing_backup(version, t.0).await;
            assert!(
                matches!(
                    err,
                    Error::Archive {
                        source: TarError::Truncated { .. },
                        ..
                    }
                ),
                "{version}, {path}: {err}"
            );
        }
    }
}

/// Bytes that are no tar at all, where `BASE_BACKUP` promised one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bogus_tar_is_refused() {
    let mut noise = Vec::new();
    let mut x: u32 = 0x1234_5678;
    for _ in 0..4096 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        noise.push((x >> 24) as u8);
    }
    for version in ["14.10", "15.4"] {
        let err = failing_backup(version, noise.clone()).await;
        assert!(
            matches!(
                err,
                Error::Archive {
                    source: TarError::BadChecksum { .. } | TarError::BadHeader { .. },
                    ..
                }
            ),
            "{version}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Protocol messages
// ---------------------------------------------------------------------------------------

/// A message header with a forged length field (nothing after it).
fn forged(tag: u8, len: u32) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&len.to_be_bytes());
    v
}

fn be16(n: i16) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

/// A one-column RowDescription, as the server sends before IDENTIFY_SYSTEM's row.
fn row_description() -> Vec<u8> {
    let mut b = be16(1);
    b.extend_from_slice(b"systemid\0");
    b.extend_from_slice(&[0; 18]);
    message(b'T', &b)
}

/// Connects to a fake whose answer to IDENTIFY_SYSTEM is `bytes` then `then`, and asks.
async fn identify_against(bytes: Vec<u8>, then: RawThen) -> Error {
    let mut s = Script::new("15.4");
    s.raw_answers = vec![RawAnswer::new("IDENTIFY_SYSTEM", bytes, then)];
    let fake = FakeWalsender::start(s).expect("fake walsender");
    let mut conn = PgConnection::connect(&conn_config(&fake), ReplicationMode::Physical)
        .await
        .expect("connect");
    tokio::time::timeout(Duration::from_secs(30), identify(&mut conn))
        .await
        .expect("refused promptly, not waiting for bytes a length promised")
        .expect_err("a hostile answer is refused")
}

fn protocol_message(err: &Error) -> &str {
    match err {
        Error::Postgres(PgError::Protocol(msg)) => msg,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

/// Malformed answers to IDENTIFY_SYSTEM: forged lengths (about 4 GiB, which reads as
/// negative; 2 GiB; just above the 64 MiB limit; below the 4 the field must count), huge
/// field counts in RowDescription and DataRow, negative counts and lengths, an unknown
/// message type, and well-framed nonsense. Each is a protocol error saying what was wrong;
/// the client hangs up rather than waiting for the bytes a length promised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_identify_system_answers_are_protocol_errors() {
    let mut huge_row = be16(i16::MAX);
    huge_row.extend_from_slice(&5i32.to_be_bytes());
    huge_row.extend_from_slice(b"12345");
    let mut negative_len = be16(1);
    negative_len.extend_from_slice(&(-5i32).to_be_bytes());
    let mut huge_col = be16(1);
    huge_col.extend_from_slice(&i32::MAX.to_be_bytes());
    huge_col.extend_from_slice(b"1");
    let mut garbage_id = be16(3);
    for v in [&b"not-a-number"[..], b"1", b"0/3000000"] {
        garbage_id.extend_from_slice(&(v.len() as i32).to_be_bytes());
        garbage_id.extend_from_slice(v);
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "length of ~4 GiB",
            forged(b'T', 0xFFFF_FFF0),
            "declares length -16",
        ),
        ("length of 2 GiB", forged(b'D', 0x7FFF_FFFF), "limit"),
        (
            "length just above the limit",
            forged(b'D', (64 << 20) + 5),
            "limit",
        ),
        ("length below 4", forged(b'T', 3), "declares length 3"),
        ("length 0", forged(b'D', 0), "declares length 0"),
        (
            "RowDescription claiming 32767 fields",
            message(b'T', &be16(i16::MAX)),
            "malformed 'T' message",
        ),
        (
            "RowDescription with a negative field count",
            message(b'T', &be16(-1)),
            "negative field count",
        ),
        (
            "DataRow claiming 32767 columns",
            [row_description(), message(b'D', &huge_row)].concat(),
            "malformed 'D' message: truncated",
        ),
        (
            "DataRow with a negative column count",
            [row_description(), message(b'D', &be16(-2))].concat(),
            "negative column count",
        ),
        (
            "DataRow column of negative length",
            [row_description(), message(b'D', &negative_len)].concat(),
            "negative column length",
        ),
        (
            "DataRow column of 2 GiB in a 10-byte message",
            [row_description(), message(b'D', &huge_col)].concat(),
            "malformed 'D' message: truncated",
        ),
        (
            "unknown message type",
            message(b'Y', b"whatever"),
            "unexpected message type 'Y'",
        ),
        (
            "CopyData instead of a result",
            message(b'd', b"wxyz"),
            "unexpected CopyData",
        ),
        (
            "a system identifier that is no number",
            [
                row_description(),
                message(b'D', &garbage_id),
                message(b'C', b"IDENTIFY_SYSTEM\0"),
                message(b'Z', b"I"),
            ]
            .concat(),
            "IDENTIFY_SYSTEM: no system identifier",
        ),
        (
            "no row at all",
            [message(b'C', b"IDENTIFY_SYSTEM\0"), message(b'Z', b"I")].concat(),
            "did not return exactly one row",
        ),
    ];
    for (what, bytes, expect) in cases {
        // Hang: the server keeps the connection open, so only a client that checks what it
        // has (rather than waiting for more) finishes.
        let err = identify_against(bytes, RawThen::Hang).await;
        let msg = protocol_message(&err);
        assert!(msg.contains(expect), "{what}: {msg}");
    }
}

/// A message cut short by the end of the connection is a closed connection, named as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_message_then_eof_is_a_closed_connection() {
    let mut cut = forged(b'T', 100);
    cut.extend_from_slice(&[0, 1, b'x']);
    for bytes in [cut, vec![b'T', 0, 0], row_description()[..7].to_vec()] {
        let err = identify_against(bytes, RawThen::Close).await;
        assert!(
            matches!(&err, Error::Postgres(PgError::Closed(m)) if m.contains("during a query")),
            "{err:?}"
        );
    }
}

/// An XLogData payload: header (start, end, send time) and WAL bytes.
fn xlog(start: u64, data: &[u8]) -> Vec<u8> {
    let mut b = vec![b'w'];
    b.extend_from_slice(&start.to_be_bytes());
    b.extend_from_slice(&(start + data.len() as u64).to_be_bytes());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(data);
    message(b'd', &b)
}

/// `CopyBothResponse`, the walsender's answer to START_REPLICATION.
fn copy_both() -> Vec<u8> {
    message(b'W', &[0, 0, 0])
}

/// Where the receiver asks to start with an empty archive and a server at 0/3000000.
const START: u64 = 0x300_0000;

/// Runs one `wal-stream` session against a fake whose answer to START_REPLICATION is
/// `bytes` (the rest of the session is a normal PostgreSQL 14 without a slot). Returns the
/// session's error.
async fn stream_against(bytes: Vec<u8>) -> Error {
    let mut s = Script::new("14.10");
    s.raw_answers = vec![RawAnswer::new("START_REPLICATION", bytes, RawThen::Hang)];
    let fake = FakeWalsender::start(s).expect("fake walsender");
    let b = local();
    let repo = init(&b).await;
    let archive = WalArchive::new(repo, ClusterName::new("main").expect("name"));
    let opts = StreamOptions {
        create_slot: false,
        ..StreamOptions::default()
    };
    let status = Arc::new(StreamStatus::default());
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        run_once(&archive, &conn_config(&fake), &opts, &status, shutdown),
    )
    .await
    .expect("refused promptly")
    .expect_err("a hostile stream is refused");
    assert!(
        fake.queries()
            .iter()
            .any(|q| q.starts_with("START_REPLICATION")),
        "the session got as far as START_REPLICATION: {err}"
    );
    assert!(
        archive.list().await.expect("list").is_empty(),
        "nothing was archived from a refused stream"
    );
    err
}

/// Out-of-order, malformed and oversized messages during START_REPLICATION.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_replication_streams_are_protocol_errors() {
    let wal = vec![0x5a; 100];
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "XLogData before the CopyBothResponse",
            xlog(START, &wal),
            "START_REPLICATION answered CopyData".into(),
        ),
        (
            "WAL starting after a gap",
            [copy_both(), xlog(START + 0x100, &wal)].concat(),
            format!("sent WAL from 0/3000100, expected 0/{START:X}"),
        ),
        (
            "WAL going backwards",
            [copy_both(), xlog(START, &wal), xlog(START + 50, &wal)].concat(),
            "sent WAL from 0/3000032, expected 0/3000064".into(),
        ),
        (
            "WAL repeated",
            [copy_both(), xlog(START, &wal), xlog(START, &wal)].concat(),
            "sent WAL from 0/3000000, expected 0/3000064".into(),
        ),
        (
            "unknown CopyData type",
            [copy_both(), message(b'd', b"xjunk")].concat(),
            "unknown replication CopyData type 'x'".into(),
        ),
        (
            "empty CopyData",
            [copy_both(), message(b'd', b"")].concat(),
            "empty CopyData in START_REPLICATION".into(),
        ),
        (
            "XLogData header cut short",
            [copy_both(), message(b'd', b"w\0\0\0\0\0")].concat(),
            "XLogData header truncated".into(),
        ),
        (
            "keepalive cut short",
            [copy_both(), message(b'd', b"k\0\0\0")].concat(),
            "keepalive truncated".into(),
        ),
        (
            "a CopyData of ~4 GiB",
            [copy_both(), forged(b'd', 0xFFFF_FF00)].concat(),
            "declares length -256".into(),
        ),
        (
            "a CopyData of 1 GiB",
            [copy_both(), forged(b'd', 1 << 30)].concat(),
            "limit".into(),
        ),
        (
            "an unknown message type mid-stream",
            [copy_both(), xlog(START, &wal), message(b'Y', b"")].concat(),
            "unexpected message type 'Y'".into(),
        ),
        (
            "a result row mid-stream",
            [copy_both(), row_description()].concat(),
            "while streaming".into(),
        ),
    ];
    for (what, bytes, expect) in cases {
        let err = stream_against(bytes).await;
        let msg = protocol_message(&err);
        assert!(msg.contains(&expect), "{what}: {msg}");
    }
}

/// A receiver that resumes in a segment the archive holds as a longer `.partial` (a restart
/// on a slow link) receives the segment again from its start. Stopped before it has caught
/// up, it must leave the stored `.partial` as it was: uploading what it has would replace
/// archived (and already acknowledged) WAL with less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_stream_never_shrinks_the_stored_partial() {
    use pgkeep_engine::format::{SegmentFacts, WalFileName};
    let mut s = Script::new("14.10");
    s.raw_answers = vec![RawAnswer::new(
        "START_REPLICATION",
        [copy_both(), xlog(START, &[0x5a; 100])].concat(),
        RawThen::Hang,
    )];
    let fake = FakeWalsender::start(s).expect("fake walsender");
    let b = local();
    let repo = init(&b).await;
    let archive = WalArchive::new(repo, ClusterName::new("main").expect("name"));
    let name = "000000010000000000000003.partial";
    let stored = data(8192, 3, true);
    let facts = SegmentFacts {
        system_id: 7_301_234_567_890_123_456,
        segment_size: 16 << 20,
        pg_major: 14,
    };
    archive
        .replace(prepared_wal(&archive, name, &stored, 1, facts), 1)
        .await
        .expect("stored partial");
    // Once the 100 bytes are in, stop: the receiver uploads its `.partial` on the way out.
    stream_then_stop(&fake, &archive).await;
    let wal = WalFileName::parse(name).expect("name");
    let (_, file) = archive.fetch(&wal).await.expect("fetch").expect("present");
    assert!(
        file == stored,
        "the stored .partial was replaced by {} bytes",
        file.len()
    );
}

/// The history file `wal-stream` fetches with TIMELINE_HISTORY is stored byte for byte: a
/// reason line in a server encoding other than UTF-8 (here Latin-1) must not be "repaired",
/// or PostgreSQL's own archive_command would later meet a different file of the same name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_file_from_the_stream_is_stored_as_sent() {
    use pgkeep_engine::format::WalFileName;
    let history = b"1\t0/3000000\tbefore the caf\xe9 closed\n".to_vec();
    let mut desc = be16(2);
    for name in ["filename", "content"] {
        desc.extend_from_slice(name.as_bytes());
        desc.push(0);
        desc.extend_from_slice(&[0; 6]);
        desc.extend_from_slice(&25i32.to_be_bytes());
        desc.extend_from_slice(&(-1i16).to_be_bytes());
        desc.extend_from_slice(&(-1i32).to_be_bytes());
        desc.extend_from_slice(&0i16.to_be_bytes());
    }
    let mut row = be16(2);
    for value in [&b"00000002.history"[..], &history] {
        row.extend_from_slice(&(value.len() as i32).to_be_bytes());
        row.extend_from_slice(value);
    }
    let answer = [
        message(b'T', &desc),
        message(b'D', &row),
        message(b'C', b"SELECT\0"),
        message(b'Z', b"I"),
    ]
    .concat();
    let mut s = Script::new("14.10");
    s.timeline = 2;
    s.raw_answers = vec![
        RawAnswer::new("TIMELINE_HISTORY", answer, RawThen::Continue),
        RawAnswer::new("START_REPLICATION", copy_both(), RawThen::Hang),
    ];
    let fake = FakeWalsender::start(s).expect("fake walsender");
    let b = local();
    let repo = init(&b).await;
    let archive = WalArchive::new(repo, ClusterName::new("main").expect("name"));
    stream_then_stop(&fake, &archive).await;
    let name = WalFileName::parse("00000002.history").expect("name");
    let (_, stored) = archive.fetch(&name).await.expect("fetch").expect("stored");
    assert_eq!(stored, history);
}

/// Runs one `wal-stream` session against `fake` into `archive` and stops it, as SIGTERM would,
/// half a second after it asked for START_REPLICATION; the session must end cleanly.
async fn stream_then_stop(fake: &FakeWalsender, archive: &WalArchive) {
    let opts = StreamOptions {
        create_slot: false,
        ..StreamOptions::default()
    };
    let status = Arc::new(StreamStatus::default());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let cfg = conn_config(fake);
    let session = run_once(archive, &cfg, &opts, &status, shutdown);
    let stopper = async {
        for _ in 0..600 {
            if fake
                .queries()
                .iter()
                .any(|q| q.starts_with("START_REPLICATION"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.send(true).expect("stop");
    };
    let (result, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(session, stopper)
    })
    .await
    .expect("stops promptly");
    result.expect("a clean stop");
}
