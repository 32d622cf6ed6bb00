//! Real backups, WAL, restores and prunes through a fault-injecting store: random transient
//! failures with latency, short reads, persistent failures; and a full disk under the
//! repository and under the restore target (a real 8 MiB tmpfs).
//!
//! In every case: transient faults are retried and the operation succeeds; persistent ones
//! fail with an error naming what failed; afterwards `verify` (reading every pack) finds no
//! damage and everything acknowledged before still reads back byte for byte.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg::{conn, extract, verify_against_backup_manifest};
use common::*;
use pgkeep_engine::backup::{take_backup, BackupOptions, NoProgress};
use pgkeep_engine::format::{layout, ClusterName, Manifest, TimelineId, WalFileName};
use pgkeep_engine::lock::LockOptions;
use pgkeep_engine::prune::{prune, usage_of, PruneOptions};
use pgkeep_engine::restore::{
    restore, tablespace_layout, Plan, RecoverySettings, RecoveryTarget, TargetAction,
};
use pgkeep_engine::verify::{verify, VerifyOptions};
use pgkeep_engine::wal::{fetch_file, FetchOptions, FetchOutcome, PushOutcome, WalArchive};
use pgkeep_engine::{Chunking, Repository, RetryPolicy, Store, WriteOptions};
use pgkeep_testkit::faults::{FaultyStore, Op};
use pgkeep_testkit::pg::{Auth, PgCluster, PgVersion};

/// Seed of the random faults: fixed, so a failure replays.
const SEED: u64 = 0x5eed_0008;

/// Enough attempts that a 20% failure rate practically never exhausts them (0.2^12, about
/// 4e-9 per operation), fast backoff.
fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 12,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    }
}

fn cluster() -> ClusterName {
    ClusterName::new("main").expect("name")
}

/// A repository on a real local directory, seen through a fault injector.
async fn faulty_repo() -> (tempfile::TempDir, Arc<FaultyStore>, Store, Repository) {
    let dir = tempfile::tempdir().expect("tmp");
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("fs");
    let faulty = FaultyStore::new(Arc::new(fs));
    let store = Store::from_object_store(faulty.clone(), "", "faulty").with_retry(fast_retries());
    let repo = Repository::init(store.clone(), PASS, init_options())
        .await
        .expect("init");
    (dir, faulty, store, repo)
}

/// `verify` reading every pack and WAL file: nothing damaged.
async fn assert_verifies(repo: &Repository, when: &str) {
    let report = verify(
        repo,
        VerifyOptions {
            read_percent: 100.0,
            ..VerifyOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{when}: verify could not run: {e}"));
    assert!(!report.damaged(), "{when}: {:#?}", report.problems);
    assert!(
        report.checked.packs > 0 || report.backups.is_empty(),
        "{when}: read nothing"
    );
}

/// A PostgreSQL 15 server with some data and WAL archiving into a plain directory
/// (`cp`, as the simplest real archive_command), from which the test pushes WAL itself.
fn cluster_with_archive() -> (PgCluster, PathBuf) {
    let pg = PgCluster::builder(PgVersion::V15)
        .auth(Auth::Trust)
        .setting("archive_mode", "on")
        .setting("archive_command", "")
        .start()
        .expect("cluster");
    let archive = pg.owned_dir("archive").expect("archive dir");
    // Copied under a temporary name and renamed, so that a file is never seen half written
    // (`switch_and_wait` would otherwise see it exist while `cp` still writes it).
    pg.psql(&format!(
        "ALTER SYSTEM SET archive_command = 'cp %p {0}/%f.tmp && mv {0}/%f.tmp {0}/%f'; SELECT pg_reload_conf();",
        archive.display()
    ))
    .expect("archive_command");
    pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 50000) g")
        .expect("data");
    (pg, archive)
}

/// Switches WAL and waits until the server archived the segment it closed.
fn switch_and_wait(pg: &PgCluster, archive: &Path) {
    let name = pg
        .psql("SELECT pg_walfile_name(pg_switch_wal())")
        .expect("switch");
    let name = name.trim();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !archive.join(name).exists() {
        assert!(Instant::now() < deadline, "{name} was not archived");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pushes every archived file as `wal-push` does, retrying a failed push as PostgreSQL
/// retries a failed archive_command; returns what was acknowledged.
async fn push_all(archive: &WalArchive, dir: &Path) -> Vec<(WalFileName, Vec<u8>)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("archive dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|n| !n.ends_with(".tmp"))
        .collect();
    names.sort();
    let mut acknowledged = Vec::new();
    for n in names {
        let name = WalFileName::parse(&n).expect("WAL file name");
        let file = std::fs::read(dir.join(&n)).expect("read");
        let mut tries = 0;
        loop {
            tries += 1;
            let pushed = match archive.prepare(name.clone(), file.clone(), None, 3).await {
                Ok((prepared, _)) => archive.store(prepared, 3).await,
                Err(e) => Err(e),
            };
            match pushed {
                Ok(PushOutcome::Stored | PushOutcome::AlreadyStored) => break,
                Err(e) => assert!(tries < 10, "{n}: still failing after {tries} pushes: {e}"),
            }
        }
        acknowledged.push((name, file));
    }
    assert!(!acknowledged.is_empty(), "nothing archived");
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_wal_and_restore_survive_random_faults_latency_and_short_reads() {
    let (pg, archive_dir) = cluster_with_archive();
    let (_dir, faulty, store, repo) = faulty_repo().await;
    // 20% of all operations fail, every one waits 1 ms.
    faulty.fail_randomly(None, 0.2, SEED);
    faulty.set_latency(Duration::from_millis(1));
    // And, whatever the dice say, the second upload and the first two WAL uploads fail once.
    faulty.fail_nth(Op::Put, 2);
    faulty.fail(Op::Put, "/wal/", 2);

    let backup = take_backup(
        &repo,
        &cluster(),
        &conn(&pg),
        &BackupOptions::default(),
        &NoProgress,
    )
    .await
    .expect("backup despite transient faults");
    // An incremental reads the full's chunks back (its changed pages are stored as
    // differences from them), through the same faults.
    pg.psql("UPDATE t SET h = upper(h) WHERE g % 50 = 0")
        .expect("changes");
    pg.psql("CHECKPOINT").expect("checkpoint");
    let incremental = take_backup(
        &repo,
        &cluster(),
        &conn(&pg),
        &BackupOptions::default(),
        &NoProgress,
    )
    .await
    .expect("incremental despite transient faults");
    assert!(incremental.pages.delta_pages > 0, "{:?}", incremental.pages);
    switch_and_wait(&pg, &archive_dir);
    let archive = WalArchive::new(repo.clone(), cluster());
    let pushed = push_all(&archive, &archive_dir).await;
    let injected_while_writing = faulty.injected();
    println!(
        "writing: {injected_while_writing} faults in {} puts, {} gets, {} lists",
        faulty.seen(Op::Put),
        faulty.seen(Op::Get),
        faulty.seen(Op::List)
    );
    assert!(
        injected_while_writing >= 3,
        "too few faults: {injected_while_writing}"
    );

    // Restore through a fresh handle while reads keep failing and some come back short.
    faulty.truncate_reads(layout::DATA_DIR, 3);
    faulty.truncate_reads("/wal/", 2);
    let fresh = Repository::open(store.clone(), PASS).await.expect("open");
    let target = tempfile::tempdir().expect("target");
    extract(&fresh, &backup.manifest, target.path()).await;
    let files = verify_against_backup_manifest(&fresh, &backup.manifest, target.path()).await;
    assert!(files > 500, "{files} files");
    let target = tempfile::tempdir().expect("target");
    extract(&fresh, &incremental.manifest, target.path()).await;
    verify_against_backup_manifest(&fresh, &incremental.manifest, target.path()).await;

    // wal-fetch of every acknowledged file, with prefetch: identical bytes.
    let fresh_archive = WalArchive::new(fresh.clone(), cluster());
    let pg_wal = tempfile::tempdir().expect("pg_wal");
    let opts = FetchOptions {
        prefetch: 2,
        spool: None,
    };
    for (name, file) in &pushed {
        let dest = pg_wal.path().join("RECOVERYXLOG");
        let outcome = fetch_file(&fresh_archive, name, &dest, &opts)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(matches!(outcome, FetchOutcome::Restored { .. }), "{name}");
        assert!(
            std::fs::read(&dest).expect("fetched") == *file,
            "{name}: bytes differ"
        );
    }
    assert_eq!(
        faulty.truncated(),
        5,
        "every short read was served (and caught)"
    );
    assert!(
        faulty.injected() > injected_while_writing,
        "reads saw faults too"
    );

    // A segment whose reads always come back short: wal-fetch fails, and leaves no file
    // for PostgreSQL to replay.
    faulty.heal();
    let (victim, _) = pushed
        .iter()
        .find(|(n, _)| n.as_str().len() == 24)
        .expect("a segment");
    faulty.truncate_reads(victim.as_str(), usize::MAX);
    let dest = pg_wal.path().join("SHORTREAD");
    let spool = tempfile::tempdir().expect("spool");
    let err = fetch_file(
        &fresh_archive,
        victim,
        &dest,
        &FetchOptions {
            prefetch: 0,
            spool: Some(spool.path().to_owned()),
        },
    )
    .await
    .expect_err("a persistently short read must fail");
    assert!(err.to_string().contains("short read"), "{err}");
    assert!(!dest.exists(), "a short segment was handed to recovery");

    faulty.heal();
    assert_verifies(&fresh, "after the faulty run").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_faults_fail_cleanly_and_lose_nothing_acknowledged() {
    let (pg, archive_dir) = cluster_with_archive();
    let (_dir, faulty, store, repo) = faulty_repo().await;
    let cfg = conn(&pg);
    let first = take_backup(
        &repo,
        &cluster(),
        &cfg,
        &BackupOptions::default(),
        &NoProgress,
    )
    .await
    .expect("first backup");
    switch_and_wait(&pg, &archive_dir);
    push_all(&WalArchive::new(repo.clone(), cluster()), &archive_dir).await;

    // Every pack upload after the first fails, however often retried.
    pg.psql("UPDATE t SET h = md5(h) WHERE g % 3 = 0")
        .expect("change");
    faulty.fail_after(Op::Put, layout::DATA_DIR, 1, usize::MAX);
    let opts = BackupOptions {
        full: true,
        ..BackupOptions::default()
    };
    let err = take_backup(&repo, &cluster(), &cfg, &opts, &NoProgress)
        .await
        .expect_err("uploads keep failing");
    let text = err.to_string();
    println!("persistent upload failure: {text}");
    assert!(
        text.contains("data/") && text.contains("injected"),
        "{text}"
    );
    faulty.heal();

    let fresh = Repository::open(store.clone(), PASS).await.expect("open");
    assert_eq!(
        fresh.list_backups(&cluster()).await.expect("list"),
        std::slice::from_ref(&first.manifest.backup_id),
        "the failed backup left no manifest"
    );
    assert_verifies(&fresh, "after the failed backup").await;

    // Reads that always come back short: restoring a file fails, never writes short data.
    faulty.truncate_reads(layout::DATA_DIR, usize::MAX);
    let big = largest_file(&first.manifest);
    let mut out = Vec::new();
    let err = fresh
        .write_extents(&big.extents, &mut out)
        .await
        .expect_err("short reads must not restore");
    assert!(err.to_string().contains("short read"), "{err}");
    faulty.heal();

    // The acknowledged backup restores exactly, and backing up works again.
    let target = tempfile::tempdir().expect("target");
    extract(&fresh, &first.manifest, target.path()).await;
    verify_against_backup_manifest(&fresh, &first.manifest, target.path()).await;
    take_backup(&fresh, &cluster(), &cfg, &opts, &NoProgress)
        .await
        .expect("backup after recovery");
    switch_and_wait(&pg, &archive_dir);
    push_all(&WalArchive::new(fresh.clone(), cluster()), &archive_dir).await;
    assert_verifies(&fresh, "after the next backup").await;

    restore_into_a_full_disk(&fresh, &first.manifest).await;
}

fn largest_file(m: &Manifest) -> &pgkeep_engine::format::FileEntry {
    m.files
        .iter()
        .max_by_key(|f| {
            f.extents
                .iter()
                .map(|e| match e {
                    pgkeep_engine::format::Extent::Zeros { .. } => 0,
                    stored => stored.len(),
                })
                .sum::<u64>()
        })
        .expect("files")
}

/// A tmpfs of `size` mounted on a new directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("mount point");
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs failed (the disk-full tests need root and mount): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Restoring a backup of some 40 MB into an 8 MiB file system: a clear error, and the target
/// is not left looking like a finished restore (no recovery.signal, no recovery settings).
async fn restore_into_a_full_disk(repo: &Repository, m: &Manifest) {
    let fs = Tmpfs::mount("8m");
    let pgdata = fs.path().join("pgdata");
    let plan = Plan {
        manifest: m.clone(),
        target: RecoveryTarget::Immediate,
        timeline: TimelineId(1),
        first_segment: String::new(),
        last_segment: String::new(),
        expected_stop: None,
        path: vec![TimelineId(1)],
        archive_end_time: None,
    };
    let layout = tablespace_layout(&plan, &pgdata, &HashMap::new()).expect("layout");
    let settings = RecoverySettings {
        restore_command: "false".into(),
        target: RecoveryTarget::Immediate,
        exclusive: false,
        timeline: "current".into(),
        action: TargetAction::Pause,
        comment: "disk full test".into(),
    };
    let err = restore(
        repo,
        &plan,
        &layout,
        &settings,
        4,
        false,
        LockOptions::default(),
    )
    .await
    .expect_err("8 MiB cannot hold the cluster");
    let text = err.to_string();
    println!("restore into a full disk: {text}");
    assert!(text.contains("No space left on device"), "{text}");
    assert!(
        text.contains(&pgdata.display().to_string()),
        "names the file: {text}"
    );
    assert!(
        !pgdata.join("recovery.signal").exists(),
        "looks like a finished restore"
    );
    let auto = std::fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap_or_default();
    assert!(
        !auto.contains("pgkeep restore"),
        "recovery settings written: {auto}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_repository_disk_fails_the_write_and_keeps_what_was_stored() {
    let fs = Tmpfs::mount("8m");
    let root = fs.path().join("repo");
    let store = Store::open(root.to_str().expect("utf-8"), &[], true).expect("store");
    let repo = Repository::init(store.clone(), PASS, init_options())
        .await
        .expect("init");
    let small = data(1 << 20, 1, false);
    let kept = store_backup(&repo, "small", &small).await.expect("fits");

    let big = data(16 << 20, 2, false);
    let err = store_backup(&repo, "big", &big)
        .await
        .expect_err("16 MiB do not fit in 8");
    let text = err.to_string();
    println!("backup into a full repository disk: {text}");
    assert!(text.contains("No space left on device"), "{text}");

    // No half-written object anywhere: object_store stages into `name#N` files and renames;
    // a failed write must remove its staging file.
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                assert!(
                    !p.to_string_lossy().contains('#'),
                    "staging file left: {}",
                    p.display()
                );
            }
        }
    }
    let fresh = Repository::open(store, PASS).await.expect("open");
    assert_eq!(
        fresh.list_backups(&cluster()).await.expect("list"),
        ["small"]
    );
    assert_verifies(&fresh, "after the disk filled").await;
    assert!(
        read_back(&fresh, &kept).await == small,
        "acknowledged data lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_under_random_faults_finishes_and_the_repository_verifies() {
    let (_dir, faulty, store, repo) = faulty_repo().await;
    let gone = data(3 << 20, 1, false);
    let keep = data(2 << 20, 2, false);
    let mut shared = data(300_000, 3, false);
    shared.extend(data(1 << 20, 4, false));
    store_backup(&repo, "a-old", &gone).await.expect("a");
    let kept_a = store_backup(&repo, "b-keep", &keep).await.expect("b");
    let kept_b = store_backup(&repo, "c-keep", &shared).await.expect("c");
    store
        .delete(&layout::manifest(&cluster(), "a-old"))
        .await
        .expect("expire");
    let before = usage_of(&repo).await.expect("usage");

    faulty.fail_randomly(None, 0.1, SEED);
    faulty.set_latency(Duration::from_millis(1));
    // Whatever the dice say: the first write and the first deletion fail once.
    faulty.fail_nth(Op::Put, 1);
    faulty.fail_nth(Op::Delete, 1);
    let report = prune(&repo, &PruneOptions::default())
        .await
        .expect("prune despite transient faults");
    assert!(faulty.injected() >= 2, "{}", faulty.injected());
    faulty.heal();
    let fresh = Repository::open(store, PASS).await.expect("open");
    let after = usage_of(&fresh).await.expect("usage");
    assert!(
        after.pack_bytes + (2 << 20) < before.pack_bytes,
        "{report:?}: {before:?} -> {after:?}"
    );
    assert_verifies(&fresh, "after prune").await;
    assert!(read_back(&fresh, &kept_a).await == keep);
    assert!(read_back(&fresh, &kept_b).await == shared);
}

/// A one-file backup of kind Files, committed by its manifest.
async fn store_backup(
    repo: &Repository,
    id: &str,
    d: &[u8],
) -> pgkeep_engine::Result<pgkeep_engine::StoredStream> {
    let session = repo.write_session(WriteOptions::default()).await?;
    let s = match session
        .store_stream(d, Chunking::from_config(repo.config()))
        .await
    {
        Ok(s) => s,
        Err(e) => return Err(e),
    };
    session.finish().await?;
    repo.write_manifest(&manifest_for(id, &[("file", &s)]))
        .await?;
    Ok(s)
}
