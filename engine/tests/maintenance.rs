//! Retention, locks and prune on real repositories: policies applied to backups at synthetic
//! dates, prune reclaiming space while every kept backup still reads back, prune interrupted
//! at each of its steps, and prune waiting for a backup that dedups against its garbage.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgkeep_engine::format::layout;
use pgkeep_engine::format::manifest::{BackupKind, Manifest, PgInfo};
use pgkeep_engine::format::{ClusterName, LockMode};
use pgkeep_engine::lock::LockOptions;
use pgkeep_engine::prune::{prune, usage_of, PruneOptions};
use pgkeep_engine::retention::{expire, pin, unpin, Policy};
use pgkeep_engine::{Chunking, Error, Repository, RetryPolicy, Store, StoredStream, WriteOptions};
use pgkeep_testkit::faults::{FaultyStore, Op};

const DAY_US: i64 = 86_400_000_000;
/// 2026-01-01T02:00:00Z.
const JAN1: i64 = 1_767_232_800_000_000;

fn cluster() -> ClusterName {
    ClusterName::new("main").expect("valid")
}

fn manifest(id: &str, stop_us: i64, files: &[(&str, &StoredStream)]) -> Manifest {
    Manifest {
        kind: BackupKind::Full,
        label: "test".into(),
        start_time_us: stop_us - 1_000_000,
        stop_time_us: stop_us,
        postgres: Some(PgInfo {
            system_id: 1,
            version_num: 180_000,
            timeline: 1,
            start_lsn: 0x0100_0028,
            stop_lsn: 0x0100_0100,
            checkpoint_lsn: 0x0100_0028,
            wal_segment_size: 16 << 20,
        }),
        ..manifest_for(id, files)
    }
}

async fn remaining(repo: &Repository) -> Vec<String> {
    repo.list_backups(&cluster()).await.expect("list")
}

/// A year of daily backups, then grandfather-father-son 7/4/12, keep-last, keep-within and a
/// pin, each checked against the exact set the policy names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_policies_on_a_year_of_backups() {
    let b = local();
    let repo = init(&b).await;
    let c = cluster();
    for day in 0..365 {
        repo.write_manifest(&manifest(&format!("d{day:03}"), JAN1 + day * DAY_US, &[]))
            .await
            .expect("manifest");
    }
    let now = JAN1 + 365 * DAY_US;
    let utc = jiff::tz::TimeZone::UTC;
    pin(&repo, &c, "d100", "audit").await.expect("pin");
    assert!(matches!(
        pin(&repo, &c, "nope", "").await,
        Err(Error::NotFound { .. })
    ));

    let gfs = Policy {
        keep_daily: Some(7),
        keep_weekly: Some(4),
        keep_monthly: Some(12),
        ..Policy::default()
    };
    let dry = expire(&repo, &c, &gfs, now, &utc, true)
        .await
        .expect("dry run");
    assert_eq!(
        remaining(&repo).await.len(),
        365,
        "a dry run removes nothing"
    );
    let report = expire(&repo, &c, &gfs, now, &utc, false)
        .await
        .expect("expire");
    assert_eq!(dry.expired, report.expired);
    let mut want: Vec<i64> = (358..=364).collect();
    want.extend([353, 346, 100]);
    let mut day = 0;
    for len in [31, 28, 31, 30, 31, 30, 31, 31, 30] {
        day += len;
        want.push(day - 1);
    }
    want.extend([303, 333]); // Oct 31, Nov 30 (Dec 31 is day 364)
    want.sort_unstable();
    want.dedup();
    let want: Vec<String> = want.iter().map(|d| format!("d{d:03}")).collect();
    assert_eq!(remaining(&repo).await, want);
    let pinned = report
        .decisions
        .iter()
        .find(|d| d.id == "d100")
        .expect("d100");
    assert_eq!(pinned.reasons.len(), 1, "{:?}", pinned.reasons);

    // keep-within 10 days: the backups of the last 10 days and the base before them.
    let within = Policy {
        keep_within: Some(Duration::from_secs(10 * 86_400)),
        ..Policy::default()
    };
    expire(&repo, &c, &within, now, &utc, false)
        .await
        .expect("expire within");
    assert_eq!(
        remaining(&repo).await,
        ["d100", "d353", "d358", "d359", "d360", "d361", "d362", "d363", "d364"]
    );

    unpin(&repo, &c, "d100").await.expect("unpin");
    assert!(matches!(
        unpin(&repo, &c, "d100").await,
        Err(Error::NotFound { .. })
    ));
    let last = Policy {
        keep_last: Some(2),
        ..Policy::default()
    };
    expire(&repo, &c, &last, now, &utc, false)
        .await
        .expect("expire last");
    assert_eq!(remaining(&repo).await, ["d363", "d364"]);
    assert!(matches!(
        expire(&repo, &c, &Policy::default(), now, &utc, false).await,
        Err(Error::InvalidInput(_))
    ));
}

/// Stores `files` in one session and commits them as backup `id`.
async fn backup_of(repo: &Repository, id: &str, files: &[(&str, &[u8])]) -> Vec<StoredStream> {
    let session = repo
        .write_session(WriteOptions::default())
        .await
        .expect("session");
    let mut streams = Vec::new();
    for (_, d) in files {
        streams.push(
            session
                .store_stream(*d, Chunking::from_config(repo.config()))
                .await
                .expect("store"),
        );
    }
    session.finish().await.expect("finish");
    let named: Vec<(&str, &StoredStream)> = files
        .iter()
        .zip(&streams)
        .map(|((n, _), s)| (*n, s))
        .collect();
    repo.write_manifest(&manifest(id, JAN1, &named))
        .await
        .expect("manifest");
    streams
}

/// Three backups: `old` alone (garbage once expired), `mixed` sharing chunks with `old` in
/// the same packs, and `keep`. Returns the data of the kept ones.
async fn scenario(repo: &Repository) -> Vec<(Vec<u8>, StoredStream)> {
    let old = data(3 << 20, 1, false);
    let shared = data(300_000, 2, false);
    let mut mixed_data = shared.clone();
    mixed_data.extend(data(2 << 20, 3, false));
    // One session writes `shared` then `old`: the first pack holds `shared` and the start
    // of `old`, mostly garbage once a-old expires, so it is repacked.
    backup_of(repo, "a-old", &[("shared", &shared), ("old", &old)]).await;
    let mixed = backup_of(repo, "b-mixed", &[("mixed", &mixed_data)]).await;
    let keep_data = data(1 << 20, 4, false);
    let keep = backup_of(repo, "c-keep", &[("keep", &keep_data)]).await;
    repo.store()
        .delete(&layout::manifest(&cluster(), "a-old"))
        .await
        .expect("expire a-old");
    vec![(mixed_data, mixed[0].clone()), (keep_data, keep[0].clone())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_reclaims_garbage_and_kept_backups_read_back() {
    for b in backends() {
        let repo = init(&b).await;
        let kept = scenario(&repo).await;
        let before = usage_of(&repo).await.expect("usage");
        assert!(before.reclaimable_bytes > 2 << 20, "{before:?}");

        let dry = prune(
            &repo,
            &PruneOptions {
                dry_run: true,
                ..PruneOptions::default()
            },
        )
        .await
        .expect("dry run");
        assert_eq!(
            usage_of(&repo).await.expect("usage"),
            before,
            "dry run changed something"
        );
        assert!(dry.deleted_packs > 0);

        let report = prune(&repo, &PruneOptions::default()).await.expect("prune");
        assert!(
            report.deleted_packs > 0 && report.repacked_packs > 0,
            "{report:?}"
        );
        let after = usage_of(&repo).await.expect("usage");
        assert!(
            after.pack_bytes < before.pack_bytes - (2 << 20),
            "{} → {}",
            before.pack_bytes,
            after.pack_bytes
        );
        assert_eq!(after.index_segments, 1);
        assert!(
            after.reclaimable_bytes < before.reclaimable_bytes / 4,
            "{after:?}"
        );
        assert_eq!(after.referenced_bytes, before.referenced_bytes);
        // A fresh handle (as the next process would open it) reads every kept backup.
        let fresh = Repository::open(b.store.clone(), PASS).await.expect("open");
        for (d, s) in &kept {
            assert!(
                read_back(&fresh, s).await == *d,
                "{}: kept data changed",
                b.name
            );
        }
        // A second prune finds nothing to do.
        let again = prune(&repo, &PruneOptions::default())
            .await
            .expect("prune again");
        assert_eq!(
            (again.deleted_packs, again.repacked_packs),
            (0, 0),
            "{again:?}"
        );
    }
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    }
}

/// Prune stopped at each step (the write of a repacked pack, of the index segment, the
/// deletion of an old segment, of the first and of a later pack): the repository stays
/// readable, and a rerun finishes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_prune_leaves_a_readable_repository_and_a_rerun_finishes() {
    let points = [
        (Op::Put, layout::DATA_DIR, 0),
        (Op::Put, layout::INDEX_DIR, 0),
        (Op::Delete, layout::INDEX_DIR, 0),
        (Op::Delete, layout::INDEX_DIR, 1),
        (Op::Delete, layout::DATA_DIR, 0),
        (Op::Delete, layout::DATA_DIR, 1),
    ];
    for (op, path, skip) in points {
        let dir = tempfile::tempdir().expect("tmp");
        let fs =
            object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("local fs");
        let faulty = FaultyStore::new(Arc::new(fs));
        let store =
            Store::from_object_store(faulty.clone(), "", "faulty").with_retry(fast_retries());
        let repo = Repository::init(store.clone(), PASS, init_options())
            .await
            .expect("init");
        let kept = scenario(&repo).await;
        let reference = usage_of(&repo).await.expect("usage");

        faulty.fail_after(op, path, skip, usize::MAX);
        let outcome = prune(&repo, &PruneOptions::default()).await;
        assert!(
            outcome.is_err(),
            "{op:?} {path} #{skip}: prune did not reach the fault"
        );
        faulty.heal();
        let fresh = Repository::open(store.clone(), PASS).await.expect("open");
        for (d, s) in &kept {
            assert!(
                read_back(&fresh, s).await == *d,
                "{op:?} {path} #{skip}: data unreadable after the interruption"
            );
        }
        // The dead lock of the interrupted run would block a rerun until stale; a crashed
        // process leaves one too. This run's lock was released by the error path.
        let report = prune(&fresh, &PruneOptions::default())
            .await
            .expect("rerun");
        let after = usage_of(&fresh).await.expect("usage");
        assert_eq!(
            after.unindexed_packs, 0,
            "{op:?} {path} #{skip}: {report:?}"
        );
        assert!(after.pack_bytes < reference.pack_bytes - (2 << 20));
        let last = Repository::open(store, PASS).await.expect("open");
        for (d, s) in &kept {
            assert!(
                read_back(&last, s).await == *d,
                "{op:?} {path} #{skip}: after rerun"
            );
        }
    }
}

fn quick_locks(wait: Duration) -> LockOptions {
    LockOptions {
        wait,
        refresh: Duration::from_millis(200),
        stale_after: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_exclude_prune_from_running_backups_and_go_stale() {
    let b = local();
    let repo = init(&b).await;
    let backup = repo
        .lock(LockMode::Shared, "backup", quick_locks(Duration::ZERO))
        .await
        .expect("shared");
    let other = repo
        .lock(LockMode::Shared, "restore", quick_locks(Duration::ZERO))
        .await
        .expect("two shared locks coexist");
    let refused = repo
        .lock(LockMode::Exclusive, "prune", quick_locks(Duration::ZERO))
        .await
        .expect_err("exclusive while shared held");
    let msg = refused.to_string();
    assert!(matches!(refused, Error::Locked { .. }), "{msg}");
    assert!(
        msg.contains("cannot prune now") && msg.contains("pid"),
        "{msg}"
    );
    other.release().await.expect("release");
    backup.confirm().await.expect("held");
    // Removed as stale while its holder was cut off: the holder must not commit.
    repo.store().delete(backup.object()).await.expect("delete");
    let lost = backup.confirm().await.expect_err("lock gone");
    assert!(lost.to_string().contains("removed as stale"), "{lost}");
    backup.release().await.expect("release");
    let prune_lock = repo
        .lock(LockMode::Exclusive, "prune", quick_locks(Duration::ZERO))
        .await
        .expect("exclusive when free");
    assert!(matches!(
        repo.lock(LockMode::Shared, "backup", quick_locks(Duration::ZERO))
            .await,
        Err(Error::Locked { .. })
    ));
    prune_lock.release().await.expect("release");
    // A holder that died stopped refreshing: once stale, its lock blocks no one.
    let crashed = pgkeep_engine::format::LockInfo {
        mode: LockMode::Exclusive,
        hostname: "gone".into(),
        pid: 1,
        operation: "prune".into(),
        created_us: 0,
        refreshed_us: 0,
    };
    let name = layout::lock(&pgkeep_engine::format::LockId([7; 16]));
    let sealed = pgkeep_engine::format::seal_object(
        repo.keys(),
        pgkeep_engine::format::Kind::Lock,
        &name,
        [1; 24],
        &crashed.encode(),
        0,
    );
    repo.store()
        .put(&name, bytes::Bytes::from(sealed))
        .await
        .expect("plant");
    let l = repo
        .lock(LockMode::Shared, "backup", quick_locks(Duration::ZERO))
        .await
        .expect("a stale lock blocks no one");
    l.release().await.expect("release");
    let removed = repo
        .remove_stale_locks(Duration::from_secs(5))
        .await
        .expect("remove stale");
    assert_eq!(removed.len(), 1);
    assert!(repo.store().head(&name).await.expect("head").is_none());
}

/// The race prune exists to win: a backup dedups against chunks of an expired backup while
/// prune wants to delete them. Prune waits for the backup's lock, then sees the new
/// manifest, and the new backup reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_waits_for_a_backup_that_dedups_against_its_garbage() {
    let b = local();
    let repo = init(&b).await;
    let old = data(2 << 20, 9, false);
    backup_of(&repo, "a-old", &[("old", &old)]).await;
    repo.store()
        .delete(&layout::manifest(&cluster(), "a-old"))
        .await
        .expect("expire a-old");

    // The backup starts: lock, then index (which still lists a-old's chunks).
    let lock = repo
        .lock(LockMode::Shared, "backup", quick_locks(Duration::ZERO))
        .await
        .expect("backup lock");
    let session = repo
        .write_session(WriteOptions::default())
        .await
        .expect("session");

    let pruner = {
        let repo = Repository::open(b.store.clone(), PASS).await.expect("open");
        tokio::spawn(async move {
            prune(
                &repo,
                &PruneOptions {
                    lock: quick_locks(Duration::from_secs(60)),
                    ..PruneOptions::default()
                },
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !pruner.is_finished(),
        "prune ran while a backup held its lock"
    );

    let s = session
        .store_stream(&old[..], Chunking::from_config(repo.config()))
        .await
        .expect("store");
    let (stats, _) = session.finish().await.expect("finish");
    assert_eq!(
        stats.new_chunks, 0,
        "the backup deduplicated against a-old's chunks"
    );
    repo.write_manifest(&manifest("b-new", JAN1, &[("old", &s)]))
        .await
        .expect("commit");
    lock.release().await.expect("release");

    let report = pruner.await.expect("join").expect("prune");
    assert_eq!(report.deleted_packs, 0, "{report:?}");
    let fresh = Repository::open(b.store.clone(), PASS).await.expect("open");
    assert!(read_back(&fresh, &s).await == old);
}
