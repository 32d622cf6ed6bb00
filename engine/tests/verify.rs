//! `verify` on a real local repository: clean, then each kind of damage planted on disk and
//! traced to the backups and files it breaks; storage failures are errors, not damage.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgkeep_engine::format::{
    layout, BackupKind, ClusterName, Extent, Lsn, PgInfo, SegmentName, TimelineId,
};
use pgkeep_engine::verify::{verify, ProblemKind, Severity, VerifyOptions, VerifyReport, WalReach};
use pgkeep_engine::{Chunking, Error, Repository, RetryPolicy, Store, StoredStream, WriteOptions};
use pgkeep_testkit::faults::{FaultyStore, Op};

/// Stores `streams` in one session (one index segment).
async fn store(repo: &Repository, streams: &[&[u8]]) -> Vec<StoredStream> {
    let session = repo
        .write_session(WriteOptions::default())
        .await
        .expect("session");
    let mut out = Vec::new();
    for d in streams {
        out.push(
            session
                .store_stream(*d, Chunking::from_config(repo.config()))
                .await
                .expect("store"),
        );
    }
    session.finish().await.expect("finish");
    out
}

async fn run(repo: &Repository, read_percent: f64) -> VerifyReport {
    verify(
        repo,
        VerifyOptions {
            read_percent,
            jobs: 2,
            ..VerifyOptions::default()
        },
    )
    .await
    .expect("verify runs")
}

fn kinds(r: &VerifyReport) -> Vec<ProblemKind> {
    r.problems.iter().map(|p| p.kind).collect()
}

fn first_chunk(s: &StoredStream) -> pgkeep_engine::format::ChunkId {
    match s.extents[0] {
        Extent::Chunk { chunk, .. } => chunk.id,
        Extent::Zeros { .. } | Extent::Xor { .. } => panic!("stream extents are chunk slices"),
    }
}

/// A fresh handle's view of where a chunk is.
async fn pack_of(store: &Store, id: &pgkeep_engine::format::ChunkId) -> (String, u32) {
    let fresh = Repository::open(store.clone(), PASS).await.expect("open");
    fresh.load_index().await.expect("index");
    let loc = fresh.read_index(|i| i.get(id)).expect("indexed");
    (layout::pack(&loc.pack_id), loc.offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_is_found_and_traced_to_backups_and_files() {
    let b = local();
    let repo = init(&b).await;
    let big = data(2 << 20, 1, false);
    let small = data(10_000, 2, true);
    let other = data(300_000, 3, false);
    let s1 = store(&repo, &[&big, &small]).await;
    repo.write_manifest(&manifest_for("b1", &[("big", &s1[0]), ("small", &s1[1])]))
        .await
        .expect("b1");
    // b2 shares `small` with b1 (deduplicated) and adds its own file.
    let s2 = store(&repo, &[&small, &other]).await;
    repo.write_manifest(&manifest_for("b2", &[("small", &s2[0]), ("other", &s2[1])]))
        .await
        .expect("b2");

    // Clean, structure only and reading everything.
    let r = run(&repo, 0.0).await;
    assert!(r.problems.is_empty() && !r.damaged(), "{:?}", r.problems);
    assert_eq!(r.checked.manifests, 2);
    assert_eq!(r.checked.index_segments, 2);
    assert!(r.checked.packs >= 3, "{:?}", r.checked);
    assert_eq!(r.checked.packs_read, 0);
    assert!(r.backups.iter().all(|s| s.restorable()));
    let r = run(&repo, 100.0).await;
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.checked.packs_read, r.checked.packs);
    assert_eq!(r.checked.chunks_read as usize, r.checked.chunks);
    assert!(r
        .backups
        .iter()
        .all(|s| s.packs_read == s.packs && s.packs > 0));
    assert!(r.unindexed_packs.is_empty());

    // A flipped byte inside big's first chunk: invisible to the structure pass, found by
    // reading, and traced to b1's file "big" only (small's chunk still opens, b2 untouched).
    let (pack, offset) = pack_of(&b.store, &first_chunk(&s1[0])).await;
    let original = b.store.get(&pack).await.expect("pack");
    let mut flipped = original.to_vec();
    flipped[offset as usize + 30] ^= 0x01;
    b.store.put(&pack, flipped.into()).await.expect("rewrite");
    assert!(run(&repo, 0.0).await.problems.is_empty());
    let r = run(&repo, 100.0).await;
    assert!(r.damaged());
    assert_eq!(kinds(&r), vec![ProblemKind::PackHash], "{:?}", r.problems);
    let p = &r.problems[0];
    assert_eq!(p.object, pack);
    assert!(
        p.detail.contains("do not hash") && p.detail.contains("1 of"),
        "{}",
        p.detail
    );
    assert_eq!(p.affects.backups.len(), 1, "{:?}", p.affects);
    assert_eq!(p.affects.backups[0].backup_id, "b1");
    assert_eq!(p.affects.backups[0].files, vec!["big".to_owned()]);
    let status = |r: &VerifyReport, id: &str| {
        r.backups
            .iter()
            .find(|s| s.backup_id == id)
            .cloned()
            .expect("status")
    };
    assert!(!status(&r, "b1").restorable());
    assert!(status(&r, "b2").restorable());
    b.store.put(&pack, original.clone()).await.expect("restore");
    assert!(run(&repo, 100.0).await.problems.is_empty());

    // A truncated pack: the structure pass sees the size; reading it finds which chunks
    // are still whole.
    b.store
        .put(&pack, original.slice(..original.len() - 100))
        .await
        .expect("truncate");
    let r = run(&repo, 0.0).await;
    assert_eq!(kinds(&r), vec![ProblemKind::PackSize], "{:?}", r.problems);
    assert!(
        r.problems[0].detail.contains("index segment"),
        "{}",
        r.problems[0].detail
    );
    assert!(r.problems[0]
        .affects
        .backups
        .iter()
        .any(|a| a.backup_id == "b1" && a.files.contains(&"big".to_owned())));
    let r = run(&repo, 100.0).await;
    assert_eq!(kinds(&r), vec![ProblemKind::PackSize], "{:?}", r.problems);
    let detail = &r.problems[0].detail;
    assert!(detail.contains("read in full"), "{detail}");
    // Only the table of contents at the end was cut: every chunk still reads, so no file
    // is lost and b1 is still restorable.
    assert!(detail.contains("still read correctly"), "{detail}");
    assert!(
        r.problems[0].affects.backups.is_empty(),
        "{:?}",
        r.problems[0]
    );
    assert!(status(&r, "b1").restorable());

    // A missing pack.
    b.store.delete(&pack).await.expect("delete");
    let r = run(&repo, 0.0).await;
    assert_eq!(
        kinds(&r),
        vec![ProblemKind::PackMissing],
        "{:?}",
        r.problems
    );
    assert!(r.problems[0].detail.contains("not in storage"));
    assert!(!status(&r, "b1").restorable());
    b.store.put(&pack, original.clone()).await.expect("restore");

    // A pack nobody indexed (a crashed session's leftover): reported, not damage.
    let stray = format!("data/00/{}", "0".repeat(64));
    b.store
        .put(&stray, bytes::Bytes::from_static(b"stray"))
        .await
        .expect("stray");
    let r = run(&repo, 0.0).await;
    assert!(!r.damaged(), "{:?}", r.problems);
    assert_eq!(r.unindexed_packs, vec![(stray.clone(), 5)]);
    b.store.delete(&stray).await.expect("delete stray");

    // A damaged manifest: the whole backup.
    let cluster = ClusterName::new("main").expect("name");
    let m2 = layout::manifest(&cluster, "b2");
    let m2_bytes = b.store.get(&m2).await.expect("manifest");
    let mut bad = m2_bytes.to_vec();
    bad[50] ^= 0x04;
    b.store.put(&m2, bad.into()).await.expect("rewrite");
    let r = run(&repo, 0.0).await;
    assert_eq!(
        kinds(&r),
        vec![ProblemKind::ManifestUnreadable],
        "{:?}",
        r.problems
    );
    assert!(r.problems[0].affects.backups[0].whole);
    assert!(!status(&r, "b2").restorable() && status(&r, "b1").restorable());
    b.store.put(&m2, m2_bytes).await.expect("restore");

    // A damaged index segment: its chunks are unindexed, traced to the files using them.
    let segments = b.store.list(layout::INDEX_DIR).await.expect("segments");
    let seg = &segments[0];
    let seg_bytes = b.store.get(&seg.name).await.expect("segment bytes");
    let mut bad = seg_bytes.to_vec();
    bad[40] ^= 0x10;
    b.store.put(&seg.name, bad.into()).await.expect("rewrite");
    let r = run(&repo, 0.0).await;
    assert!(
        kinds(&r).contains(&ProblemKind::IndexUnreadable),
        "{:?}",
        r.problems
    );
    let unindexed: Vec<_> = r
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::ChunksNotIndexed)
        .collect();
    assert!(!unindexed.is_empty(), "{:?}", r.problems);
    assert!(unindexed
        .iter()
        .all(|p| !p.affects.backups.is_empty() && !p.affects.backups[0].files.is_empty()));
    assert!(r.problems.iter().all(|p| p.severity == Severity::Damage));
    b.store.put(&seg.name, seg_bytes).await.expect("restore");
    assert!(run(&repo, 100.0).await.problems.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_failures_are_errors_not_damage() {
    let dir = tempfile::tempdir().expect("tmp");
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("local fs");
    let faulty = FaultyStore::new(Arc::new(fs));
    let store = Store::from_object_store(faulty.clone(), "", "faulty").with_retry(RetryPolicy {
        attempts: 2,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    });
    let repo = Repository::init(store.clone(), PASS, init_options())
        .await
        .expect("init");
    let s = store_one(&repo).await;
    repo.write_manifest(&manifest_for("b1", &[("f", &s)]))
        .await
        .expect("manifest");
    let opts = VerifyOptions {
        read_percent: 100.0,
        jobs: 1,
        ..VerifyOptions::default()
    };
    faulty.fail(Op::List, "data", 100);
    let err = verify(&repo, opts.clone())
        .await
        .expect_err("listing fails");
    assert!(matches!(err, Error::Storage { .. }), "{err}");
    faulty.heal();
    faulty.fail(Op::Get, layout::DATA_DIR, 100);
    let err = verify(&repo, opts.clone())
        .await
        .expect_err("pack reads fail");
    assert!(matches!(err, Error::Storage { .. }), "{err}");
    assert!(!err.is_corruption());
    faulty.heal();
    assert!(verify(&repo, opts.clone())
        .await
        .expect("healed")
        .problems
        .is_empty());
}

async fn store_one(repo: &Repository) -> StoredStream {
    store(repo, &[&data(100_000, 9, true)]).await.remove(0)
}

const SEG: u32 = 16 << 20;

fn segment_object(n: u64) -> String {
    format!(
        "clusters/main/wal/00000001/{}",
        SegmentName::new(TimelineId(1), n, SEG)
    )
}

/// WAL continuity is judged from object names alone; reading finds damaged objects (here:
/// objects that are not WAL objects at all), and both are traced to the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_continuity_from_names_and_damage_from_reads() {
    let b = local();
    let repo = init(&b).await;
    let cluster = ClusterName::new("main").expect("name");
    repo.bind_cluster(&cluster, 42, 150_000)
        .await
        .expect("bind");
    let s = store_one(&repo).await;
    let mut m = manifest_for("pg1", &[("base/1/1259", &s)]);
    m.kind = BackupKind::Full;
    m.postgres = Some(PgInfo {
        system_id: 42,
        version_num: 150_000,
        timeline: 1,
        start_lsn: 3 * u64::from(SEG) + 40,
        stop_lsn: 4 * u64::from(SEG) + 100,
        checkpoint_lsn: 3 * u64::from(SEG) + 96,
        wal_segment_size: SEG,
    });
    repo.write_manifest(&m).await.expect("manifest");

    // No WAL archived yet: a warning, not damage.
    let r = run(&repo, 0.0).await;
    assert_eq!(
        kinds(&r),
        vec![ProblemKind::WalNotArchived],
        "{:?}",
        r.problems
    );
    assert_eq!(r.problems[0].severity, Severity::Warning);
    assert!(!r.damaged());
    assert!(matches!(
        r.backups[0].wal,
        Some(WalReach::NotRestorable { pending: true, .. })
    ));

    // Segments 3, 4, 5 and 7: consistent, recovery up to the start of 6.
    for n in [3, 4, 5, 7] {
        b.store
            .put(
                &segment_object(n),
                bytes::Bytes::from_static(b"not a WAL object"),
            )
            .await
            .expect("segment");
    }
    let r = run(&repo, 0.0).await;
    assert_eq!(kinds(&r), vec![ProblemKind::WalMissing], "{:?}", r.problems);
    let p = &r.problems[0];
    assert_eq!(p.object, segment_object(6));
    let w = &p.affects.wal[0];
    assert_eq!(w.backup_id, "pg1");
    assert!(!w.not_restorable);
    assert_eq!(w.recoverable_to, Some(Lsn(6 * u64::from(SEG))));
    assert!(r.backups[0].restorable());
    assert_eq!(
        r.backups[0].wal,
        Some(WalReach::Restorable {
            until: Lsn(6 * u64::from(SEG)),
            last_segment: SegmentName::new(TimelineId(1), 5, SEG),
            cut_by: Some(SegmentName::new(TimelineId(1), 6, SEG)),
        })
    );

    // Reading them: every one is damaged; segment 3 makes the backup unrestorable.
    let r = run(&repo, 100.0).await;
    let damaged: Vec<_> = r
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::WalDamaged)
        .collect();
    assert_eq!(damaged.len(), 4, "{:?}", r.problems);
    let third = damaged
        .iter()
        .find(|p| p.object == segment_object(3))
        .expect("segment 3");
    assert!(third.affects.wal[0].not_restorable);
    assert!(!r.backups[0].restorable());
    assert_eq!(r.checked.wal_read, 4);

    // A damaged cluster binding.
    let name = layout::cluster_binding(&cluster);
    let mut bad = b.store.get(&name).await.expect("binding").to_vec();
    bad[45] ^= 0x01;
    b.store.put(&name, bad.into()).await.expect("rewrite");
    let r = run(&repo, 0.0).await;
    assert!(
        kinds(&r).contains(&ProblemKind::ClusterUnreadable),
        "{:?}",
        r.problems
    );
}
