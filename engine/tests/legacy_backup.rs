//! Base backups from PostgreSQL 13 and 14 (the legacy `BASE_BACKUP` flow: one COPY per
//! archive, unterminated tar streams, the data directory last, then a COPY with the
//! manifest), played by the fake walsender of `pgkeep_testkit::walsender`, with the streams
//! cut at awkward message sizes and with faults no real server produces on demand.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use pgkeep_engine::backup::{take_backup, BackupOptions, NoProgress, Progress};
use pgkeep_engine::conninfo::{self, ConnConfig};
use pgkeep_engine::format::{BackupKind, ClusterName, FileType, Tablespace};
use pgkeep_engine::replication::{Event, PgConnection, PgError, ReplicationMode};
use pgkeep_engine::tar::{padding, write_header, EntryKind, TarEntry, TarError};
use pgkeep_engine::{Error, Repository};
use pgkeep_testkit::walsender::{Archive, FakeWalsender, Fault, FaultAction, Script};

const LABEL: &str = "legacy test";
const MTIME: i64 = 1_700_000_000;
const PAGE: usize = 8192;
const TS_OID: u32 = 16390;
const TS_LOCATION: &str = "/srv/ts";
const START_LSN: u64 = 0x200_0028;
const CHECKPOINT_LSN: u64 = 0x200_0060;
const STOP_LSN: u64 = 0x200_0138;

fn conn_config(fake: &FakeWalsender) -> ConnConfig {
    let params = conninfo::parse(&fake.connstring()).expect("connstring parses");
    conninfo::resolve(&params, &|_| None, "postgres", None).expect("connstring resolves")
}

fn options() -> BackupOptions {
    BackupOptions {
        label: Some(LABEL.into()),
        ..BackupOptions::default()
    }
}

/// One member of a test archive, as the backup must reproduce it.
#[derive(Debug, Clone)]
struct Member {
    path: String,
    file_type: FileType,
    mode: u32,
    content: Vec<u8>,
    link_target: String,
    /// Offsets in the archive of the header and of the content.
    header_at: usize,
    data_at: usize,
}

/// A tar stream built with the engine's own header writer, without the end-of-archive
/// marker (as PostgreSQL 13 and 14 send it).
#[derive(Debug, Default)]
struct TarBuilder {
    bytes: Vec<u8>,
    members: Vec<Member>,
}

impl TarBuilder {
    fn add(&mut self, path: &str, kind: EntryKind, content: &[u8], link: &str) {
        let (file_type, mode) = match kind {
            EntryKind::Regular => (FileType::Regular, 0o600),
            EntryKind::Directory => (FileType::Directory, 0o700),
            EntryKind::Symlink => (FileType::Symlink, 0o777),
            other => panic!("unexpected kind {other:?}"),
        };
        let header = write_header(&TarEntry {
            path: path.as_bytes().to_vec(),
            kind,
            mode,
            uid: 26,
            gid: 26,
            size: content.len() as u64,
            mtime: MTIME,
            link_target: link.as_bytes().to_vec(),
        })
        .expect("header");
        let header_at = self.bytes.len();
        self.bytes.extend_from_slice(&header);
        let data_at = self.bytes.len();
        self.bytes.extend_from_slice(content);
        self.bytes
            .resize(self.bytes.len() + padding(content.len() as u64), 0);
        self.members.push(Member {
            path: path.into(),
            file_type,
            mode,
            content: content.to_vec(),
            link_target: link.into(),
            header_at,
            data_at,
        });
    }

    fn file(&mut self, path: &str, content: &[u8]) {
        self.add(path, EntryKind::Regular, content, "");
    }

    fn dir(&mut self, path: &str) {
        self.add(path, EntryKind::Directory, &[], "");
    }

    /// The same members without `path`.
    fn without(&self, path: &str) -> Self {
        let mut t = Self::default();
        for m in self.members.iter().filter(|m| m.path != path) {
            let kind = match m.file_type {
                FileType::Regular => EntryKind::Regular,
                FileType::Directory => EntryKind::Directory,
                FileType::Symlink => EntryKind::Symlink,
            };
            t.add(&m.path, kind, &m.content, &m.link_target);
        }
        t
    }

    fn member(&self, path: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.path == path)
            .unwrap_or_else(|| panic!("no member {path}"))
    }
}

/// An 8 KiB relation page whose header LSN is `lsn`, filled deterministically.
fn page(lsn: u64, seed: u64) -> Vec<u8> {
    let mut p = data(PAGE, seed, true);
    p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
    p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
    p
}

/// The archives of a small PostgreSQL 14 cluster with one tablespace.
struct Cluster {
    base: TarBuilder,
    ts: TarBuilder,
    manifest: Vec<u8>,
}

fn cluster() -> Cluster {
    let mut base = TarBuilder::default();
    let label = format!(
        "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
         CHECKPOINT LOCATION: 0/2000060\n\
         BACKUP METHOD: streamed\n\
         BACKUP FROM: primary\n\
         START TIME: 2024-05-01 12:00:00 UTC\n\
         LABEL: {LABEL}\n\
         START TIMELINE: 1\n"
    );
    // PostgreSQL sends backup_label (and tablespace_map) first.
    base.file("backup_label", label.as_bytes());
    base.file(
        "tablespace_map",
        format!("{TS_OID} {TS_LOCATION}\n").as_bytes(),
    );
    base.file("PG_VERSION", b"14\n");
    base.dir("global");
    base.file("global/pg_control", &data(PAGE, 7, false));
    base.dir("base");
    base.dir("base/1");
    let mut rel = page(0x100_0000, 1);
    rel.extend_from_slice(&[0u8; PAGE]); // an all-zero page
    rel.extend_from_slice(&page(0x180_0000, 2));
    base.file("base/1/1259", &rel);
    base.dir("pg_tblspc");
    base.add(
        &format!("pg_tblspc/{TS_OID}"),
        EntryKind::Symlink,
        &[],
        TS_LOCATION,
    );

    let mut ts = TarBuilder::default();
    ts.dir("PG_14_202107181");
    ts.dir("PG_14_202107181/5");
    let mut rel = page(0x110_0000, 3);
    rel.extend_from_slice(&page(0x120_0000, 4));
    ts.file("PG_14_202107181/5/16391", &rel);

    // Shaped like PostgreSQL's, and larger than any one CopyData message.
    let mut manifest = String::from("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n");
    for i in 0..100 {
        manifest.push_str(&format!(
            "{{ \"Path\": \"base/1/{i}\", \"Size\": 0, \"Last-Modified\": \"2024-05-01 12:00:00 GMT\", \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \"{}\" }},\n",
            hex::encode([i as u8; 32])
        ));
    }
    manifest.push_str(
        "],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000138\" }\n],\n\"Manifest-Checksum\": \"00\"}\n",
    );
    Cluster {
        base,
        ts,
        manifest: manifest.into_bytes(),
    }
}

/// A script for `version` sending the cluster's archives, tablespace first and the data
/// directory last, cut into CopyData messages of `chunk_sizes`.
fn script(version: &str, c: &Cluster, chunk_sizes: &[usize]) -> Script {
    let mut s = Script::new(version);
    s.base_backup.start_lsn = "0/2000028".into();
    s.base_backup.end_lsn = "0/2000138".into();
    s.base_backup.archives = vec![
        Archive::tablespace(TS_OID, TS_LOCATION, c.ts.bytes.clone()),
        Archive::data_directory(c.base.bytes.clone()),
    ];
    s.base_backup.manifest = Some(c.manifest.clone());
    s.base_backup.chunk_sizes = chunk_sizes.to_vec();
    s
}

#[derive(Debug, Default)]
struct RecordProgress {
    total: AtomicU64,
    sent: AtomicU64,
}

impl Progress for RecordProgress {
    fn total(&self, bytes: u64) {
        self.total.store(bytes, Ordering::SeqCst);
    }
    fn sent(&self, bytes: u64) {
        self.sent.store(bytes, Ordering::SeqCst);
    }
}

async fn read_all(repo: &Repository, extents: &[pgkeep_engine::format::Extent]) -> Vec<u8> {
    let mut out = Vec::new();
    repo.write_extents(extents, &mut out)
        .await
        .expect("read back");
    out
}

/// Takes a backup from the fake and checks everything the manifest records against what
/// the fake sent.
async fn backup_matches_archives(version: &str, version_num: u32, chunk_sizes: &[usize]) {
    let c = cluster();
    let fake = FakeWalsender::start(script(version, &c, chunk_sizes)).expect("fake walsender");
    let b = local();
    let repo = init(&b).await;
    let cluster_name = ClusterName::new("main").expect("name");
    let progress = RecordProgress::default();
    let summary = take_backup(
        &repo,
        &cluster_name,
        &conn_config(&fake),
        &options(),
        &progress,
    )
    .await
    .unwrap_or_else(|e| panic!("backup from {version} with {chunk_sizes:?}: {e}"));
    let m = &summary.manifest;

    // What pgkeep asked for, in the legacy syntax before 15.
    let received = fake.received();
    assert_eq!(
        received.ssl_requests, 1,
        "sslmode=prefer asks for TLS first"
    );
    assert!(received.startups[0].contains(&("replication".into(), "true".into())));
    let expected_command = if version_num >= 150_000 {
        format!("BASE_BACKUP ( LABEL '{LABEL}', PROGRESS, CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP )")
    } else {
        format!("BASE_BACKUP LABEL '{LABEL}' PROGRESS FAST NOWAIT MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C' TABLESPACE_MAP")
    };
    assert_eq!(
        received.queries,
        [
            "IDENTIFY_SYSTEM",
            "SHOW wal_segment_size",
            "SHOW block_size",
            expected_command.as_str()
        ]
    );

    assert_eq!(m.kind, BackupKind::Full);
    assert_eq!(m.parent, None);
    assert_eq!(m.label, LABEL);
    let pg = m.postgres.expect("postgres facts");
    assert_eq!(pg.version_num, version_num);
    assert_eq!(pg.system_id, Script::new(version).system_id);
    assert_eq!(pg.timeline, 1);
    assert_eq!(pg.start_lsn, START_LSN);
    assert_eq!(pg.stop_lsn, STOP_LSN);
    assert_eq!(pg.checkpoint_lsn, CHECKPOINT_LSN, "from backup_label");
    assert_eq!(pg.wal_segment_size, 16 << 20);
    assert_eq!(
        m.tablespaces,
        [Tablespace {
            oid: TS_OID,
            location: TS_LOCATION.into()
        }]
    );

    let att = m.attachment("backup_manifest").expect("backup_manifest");
    assert_eq!(att.size, c.manifest.len() as u64);
    assert_eq!(read_all(&repo, &att.extents).await, c.manifest);

    // Every member, and nothing else, with its content.
    let mut expected: BTreeMap<(u32, String), &Member> = BTreeMap::new();
    for mem in &c.base.members {
        expected.insert((0, mem.path.clone()), mem);
    }
    for mem in &c.ts.members {
        expected.insert((TS_OID, mem.path.clone()), mem);
    }
    let mut seen = BTreeMap::new();
    for f in &m.files {
        let path = String::from_utf8(f.path.clone()).expect("utf-8 path");
        let key = (f.tablespace, path.clone());
        let mem = expected
            .get(&key)
            .unwrap_or_else(|| panic!("unexpected file {key:?}"));
        assert_eq!(f.file_type, mem.file_type, "{path}");
        assert_eq!(f.mode & 0o7777, mem.mode, "{path}");
        assert_eq!(f.mtime, MTIME, "{path}");
        assert_eq!(f.link_target, mem.link_target.as_bytes(), "{path}");
        if f.file_type == FileType::Regular {
            assert_eq!(f.size, mem.content.len() as u64, "{path}");
            let content = read_all(&repo, &f.extents).await;
            assert!(content == mem.content, "{path}: content differs");
        }
        assert!(seen.insert(key, ()).is_none(), "{path} twice");
    }
    assert_eq!(seen.len(), expected.len(), "files missing from the backup");
    assert_eq!(summary.pages.relation_pages, 5);
    assert_eq!(summary.pages.zero_pages, 1);

    let tar_bytes = (c.base.bytes.len() + c.ts.bytes.len()) as u64;
    assert_eq!(
        progress.total.load(Ordering::SeqCst),
        (c.base.bytes.len() as u64).div_ceil(1024) * 1024
            + (c.ts.bytes.len() as u64).div_ceil(1024) * 1024
    );
    if version_num < 150_000 {
        assert_eq!(progress.sent.load(Ordering::SeqCst), tar_bytes);
    }

    // Committed: listed, and the stored manifest is the one returned.
    assert_eq!(
        repo.list_backups(&cluster_name).await.expect("list"),
        [m.backup_id.as_str()]
    );
    let stored = repo
        .read_manifest(&cluster_name, &m.backup_id)
        .await
        .expect("read manifest");
    assert_eq!(stored.files.len(), m.files.len());
    assert_eq!(stored.postgres, m.postgres);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg14_backup_with_awkward_message_sizes() {
    backup_matches_archives("14.10", 140_010, &[1, 511, 700, 4096]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg14_backup_with_other_splits() {
    for sizes in [
        &[][..],
        &[512],
        &[7, 1, 1, 1029],
        &[1],
        &[100_000],
        &[513, 8191],
    ] {
        backup_matches_archives("14.10", 140_010, sizes).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg13_backup() {
    backup_matches_archives("13.14", 130_014, &[1, 511, 700, 4096]).await;
}

/// The same archives through the 15+ flow of the same fake give the same backup: the fake's
/// two modes agree, and so do the engine's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg15_flow_of_the_fake_gives_the_same_backup() {
    backup_matches_archives("15.4", 150_004, &[1, 511, 700, 4096]).await;
}

/// Runs a backup expected to fail; checks that nothing was committed and returns the error.
async fn failing_backup(s: Script) -> Error {
    let fake = FakeWalsender::start(s).expect("fake walsender");
    let b = local();
    let repo = init(&b).await;
    let cluster_name = ClusterName::new("main").expect("name");
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        take_backup(
            &repo,
            &cluster_name,
            &conn_config(&fake),
            &options(),
            &NoProgress,
        ),
    )
    .await
    .expect("the backup fails promptly instead of waiting");
    let err = match result {
        Ok(s) => panic!("the backup succeeded with {} files", s.manifest.files.len()),
        Err(e) => e,
    };
    assert!(
        repo.list_backups(&cluster_name)
            .await
            .expect("list")
            .is_empty(),
        "a failed backup is listed ({err})"
    );
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_mid_file_fails_cleanly() {
    let c = cluster();
    let ts_len = c.ts.bytes.len() as u64;
    let rel = c.base.member("base/1/1259");
    let ts_file = c.ts.member("PG_14_202107181/5/16391");
    // Inside a data directory file, inside a tablespace file, and inside a header.
    for after in [
        ts_len + rel.data_at as u64 + 3000,
        ts_file.data_at as u64 + 100,
        ts_len + rel.header_at as u64 + 200,
    ] {
        for action in [FaultAction::Drop, FaultAction::DropInsideMessage] {
            let mut s = script("14.10", &c, &[1, 511, 700, 4096]);
            s.base_backup.fault = Some(Fault {
                after_bytes: after,
                action: action.clone(),
            });
            let err = failing_backup(s).await;
            assert!(
                matches!(
                    err,
                    Error::Postgres(PgError::Closed(_)) | Error::Postgres(PgError::Io(_))
                ),
                "{action:?} after {after}: {err}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_before_the_manifest_fails() {
    let c = cluster();
    let mut s = script("14.10", &c, &[4096]);
    s.base_backup.fault = Some(Fault {
        after_bytes: u64::MAX,
        action: FaultAction::Drop,
    });
    let err = failing_backup(s).await;
    assert!(matches!(err, Error::Postgres(_)), "{err}");
}

/// The server finishes normally (CopyDone, manifest, end position) after an archive that
/// stops short: the truncation must be detected from the tar stream alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_archive_with_a_normal_ending_fails() {
    let c = cluster();
    let rel = c.base.member("base/1/1259");
    let ts_file = c.ts.member("PG_14_202107181/5/16391");
    let pg_version = c.base.member("PG_VERSION");
    let cases: [(&str, bool, usize); 5] = [
        // (what, truncate the data directory (else the tablespace), keep bytes)
        ("data directory, mid-header", true, rel.header_at + 200),
        ("data directory, mid-content", true, rel.data_at + PAGE + 1),
        (
            "data directory, in padding",
            true,
            pg_version.data_at + 3 + 100,
        ),
        ("tablespace, mid-header", false, ts_file.header_at + 1),
        ("tablespace, mid-content", false, ts_file.data_at + 5000),
    ];
    for (what, in_base, keep) in cases {
        let mut s = script("14.10", &c, &[1, 511, 700, 4096]);
        let i = usize::from(in_base);
        s.base_backup.archives[i].tar.truncate(keep);
        let err = failing_backup(s).await;
        assert!(
            matches!(
                err,
                Error::Archive {
                    source: TarError::Truncated { .. },
                    ..
                }
            ),
            "{what}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_claiming_a_gigabyte_is_refused_promptly() {
    let c = cluster();
    let mut s = script("14.10", &c, &[1, 511, 700, 4096]);
    s.base_backup.fault = Some(Fault {
        after_bytes: 5000,
        action: FaultAction::HugeLength,
    });
    // The fake sends 16 bytes of the gigabyte and then waits: only a client that checks the
    // length before buffering fails (failing_backup's timeout catches one that waits).
    let err = failing_backup(s).await;
    match err {
        Error::Postgres(PgError::Protocol(msg)) => assert!(msg.contains("limit"), "{msg}"),
        other => panic!("expected a protocol error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_data_row_is_a_protocol_error() {
    let c = cluster();
    let mut s = script("14.10", &c, &[700]);
    // After all archive data: where the end position's row would come.
    s.base_backup.fault = Some(Fault {
        after_bytes: u64::MAX,
        action: FaultAction::MalformedDataRow,
    });
    let err = failing_backup(s).await;
    assert!(
        matches!(err, Error::Postgres(PgError::Protocol(_))),
        "{err}"
    );
    // And mid-archive.
    let mut s = script("14.10", &c, &[700]);
    s.base_backup.fault = Some(Fault {
        after_bytes: 2100,
        action: FaultAction::MalformedDataRow,
    });
    let err = failing_backup(s).await;
    assert!(
        matches!(err, Error::Postgres(PgError::Protocol(_))),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_mid_stream_fails_with_its_sqlstate() {
    let c = cluster();
    let mut s = script("14.10", &c, &[1, 511, 700, 4096]);
    s.base_backup.fault = Some(Fault {
        after_bytes: c.ts.bytes.len() as u64 + 3000,
        action: FaultAction::Error {
            code: "XX001".into(),
            message: "checksum verification failure during base backup".into(),
        },
    });
    let err = failing_backup(s).await;
    match &err {
        Error::Postgres(e) => assert_eq!(e.sqlstate(), Some("XX001"), "{err}"),
        other => panic!("expected the server's error, got {other}"),
    }
}

/// `take_backup` sets no read timeout, so a server that stops sending mid-stream makes it
/// wait (see the report). The fake's `Hang` fault is checked here against the connection's
/// own timeout instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_server_is_caught_by_the_connection_read_timeout() {
    let c = cluster();
    let mut s = script("14.10", &c, &[1, 511, 700, 4096]);
    s.base_backup.fault = Some(Fault {
        after_bytes: 3000,
        action: FaultAction::Hang,
    });
    let fake = FakeWalsender::start(s).expect("fake walsender");
    let mut conn = PgConnection::connect(&conn_config(&fake), ReplicationMode::Physical)
        .await
        .expect("connect");
    assert_eq!(conn.server_version_num(), Some(140_010));
    conn.set_read_timeout(Some(Duration::from_millis(500)));
    conn.send_query("BASE_BACKUP LABEL 'x' PROGRESS")
        .await
        .expect("send");
    let mut data = 0usize;
    let err = loop {
        match conn.next_event().await {
            Ok(Event::CopyData(d)) => data += d.len(),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(matches!(err, PgError::Timeout(_)), "{err}");
    assert_eq!(data, 3000, "everything before the hang arrived");
}

/// A data directory archive without backup_label cannot be restored (recovery would start
/// from pg_control's checkpoint, not the backup's), so the backup must fail. Today it is
/// committed, with the start LSN silently taken as the checkpoint LSN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directory_without_backup_label_fails() {
    let mut c = cluster();
    c.base = c.base.without("backup_label");
    failing_backup(script("14.10", &c, &[1, 511, 700, 4096])).await;
}

/// A cluster restored to a point before an earlier backup and promoted (same system id, new
/// timeline, LSNs reused on the new timeline): a page written there with an LSN below the
/// earlier backup's start LSN is NOT unchanged since that backup. The new backup must store
/// what the server sent. Today the earlier backup is taken as parent (find_parent checks
/// only the system id) and its stale page is stored instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_on_a_new_timeline_does_not_reuse_pages_by_lsn() {
    let b = local();
    let repo = init(&b).await;
    let cluster_name = ClusterName::new("main").expect("name");

    // Backup A on timeline 1, started at 0/5000028.
    let c = cluster();
    let mut s = script("14.10", &c, &[4096]);
    s.base_backup.start_lsn = "0/5000028".into();
    s.base_backup.end_lsn = "0/5000138".into();
    let fake = FakeWalsender::start(s).expect("fake walsender");
    let a = take_backup(
        &repo,
        &cluster_name,
        &conn_config(&fake),
        &options(),
        &NoProgress,
    )
    .await
    .expect("backup A");
    drop(fake);

    // The same system after a point-in-time restore to 0/3000000 and promotion to
    // timeline 2: the tablespace file's second page was rewritten at 0/3800000.
    let mut c2 = cluster();
    let mut ts = TarBuilder::default();
    ts.dir("PG_14_202107181");
    ts.dir("PG_14_202107181/5");
    let mut rel = page(0x110_0000, 3);
    rel.extend_from_slice(&page(0x380_0000, 99));
    ts.file("PG_14_202107181/5/16391", &rel);
    c2.ts = ts;
    let mut s = script("14.10", &c2, &[4096]);
    s.timeline = 2;
    s.base_backup.start_lsn = "0/4000028".into();
    s.base_backup.start_tli = 2;
    s.base_backup.end_lsn = "0/4000138".into();
    s.base_backup.end_tli = 2;
    let fake = FakeWalsender::start(s).expect("fake walsender");
    let bkp = take_backup(
        &repo,
        &cluster_name,
        &conn_config(&fake),
        &options(),
        &NoProgress,
    )
    .await
    .expect("backup B");
    let f = bkp
        .manifest
        .files
        .iter()
        .find(|f| f.tablespace == TS_OID && f.path == b"PG_14_202107181/5/16391")
        .expect("tablespace file");
    assert!(
        read_all(&repo, &f.extents).await == rel,
        "backup B (parent {:?} of A {}) stored other content than the server sent",
        bkp.manifest.parent,
        a.manifest.backup_id
    );
}
