//! Storage failures during writes and reads: transient ones are retried and the operation
//! succeeds; persistent ones fail with an error naming the object, and nothing half-written
//! becomes visible (no index segment, no manifest).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgkeep_engine::format::layout;
use pgkeep_engine::{Chunking, Error, Repository, RetryPolicy, Store, WriteOptions};
use pgkeep_testkit::faults::{FaultyStore, Op};

/// More attempts than the failures any test injects in total, so however concurrent
/// operations share the injected failures, none can exhaust its attempts: "transient".
fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 10,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

/// A repository on a real local directory, seen through a fault injector.
async fn faulty_repo() -> (tempfile::TempDir, Arc<FaultyStore>, Store, Repository) {
    let dir = tempfile::tempdir().expect("tmp");
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("local fs");
    let faulty = FaultyStore::new(Arc::new(fs));
    let store = Store::from_object_store(faulty.clone(), "", "faulty").with_retry(fast_retries());
    let repo = Repository::init(store.clone(), PASS, init_options())
        .await
        .expect("init");
    (dir, faulty, store, repo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_the_data_round_trips() {
    let (_dir, faulty, store, repo) = faulty_repo().await;
    // Every pack upload fails twice, the index segment once, before succeeding.
    faulty.fail(Op::Put, layout::DATA_DIR, 6);
    faulty.fail(Op::Put, layout::INDEX_DIR, 1);
    let session = repo
        .write_session(WriteOptions::default())
        .await
        .expect("session");
    let d = data(3 << 20, 11, false);
    let s = session
        .store_stream(&d[..], Chunking::from_config(repo.config()))
        .await
        .expect("store");
    session
        .finish()
        .await
        .expect("finish despite transient failures");
    assert_eq!(faulty.injected(), 7);

    faulty.fail(Op::Get, layout::DATA_DIR, 3);
    let fresh = Repository::open(store, PASS).await.expect("open");
    let mut out = Vec::new();
    fresh
        .write_extents(&s.extents, &mut out)
        .await
        .expect("read despite transient failures");
    assert!(out == d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_upload_failure_fails_the_session_and_indexes_nothing() {
    let (dir, faulty, store, repo) = faulty_repo().await;
    faulty.fail(Op::Put, layout::DATA_DIR, usize::MAX);
    let session = repo
        .write_session(WriteOptions::default())
        .await
        .expect("session");
    let d = data(4 << 20, 12, false);
    // The failure surfaces either while storing (pipeline stopped) or at finish.
    let outcome = match session
        .store_stream(&d[..], Chunking::from_config(repo.config()))
        .await
    {
        Ok(_) => session.finish().await.map(|_| ()),
        Err(e) => Err(e),
    };
    let err = outcome.expect_err("uploads always fail");
    let text = err.to_string();
    assert!(
        text.contains("data/") && text.contains("injected"),
        "names the pack: {text}"
    );
    assert!(
        std::fs::read_dir(dir.path().join("index")).map_or(true, |mut d| d.next().is_none()),
        "no index segment may list packs that were never stored"
    );

    // Once storage recovers, the same data stores and reads back.
    faulty.heal();
    let repo = Repository::open(store, PASS).await.expect("open");
    let session = repo
        .write_session(WriteOptions::default())
        .await
        .expect("session");
    let s = session
        .store_stream(&d[..], Chunking::from_config(repo.config()))
        .await
        .expect("store");
    session.finish().await.expect("finish");
    let mut out = Vec::new();
    repo.write_extents(&s.extents, &mut out)
        .await
        .expect("read");
    assert!(out == d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_manifest_write_leaves_no_backup() {
    let (_dir, faulty, _store, repo) = faulty_repo().await;
    faulty.fail(Op::Put, "clusters/", usize::MAX);
    let m = pgkeep_engine::format::Manifest {
        backup_id: "b1".into(),
        cluster: "main".into(),
        kind: pgkeep_engine::format::BackupKind::Files,
        parent: None,
        references: vec![],
        label: String::new(),
        start_time_us: 0,
        stop_time_us: 0,
        postgres: None,
        tablespaces: vec![],
        attachments: vec![],
        stats: Default::default(),
        files: vec![],
        properties: vec![],
    };
    let err = repo.write_manifest(&m).await.expect_err("fails");
    assert!(matches!(err, Error::Storage { .. }), "{err}");
    let cluster = pgkeep_engine::format::ClusterName::new("main").expect("name");
    faulty.heal();
    assert!(repo.list_backups(&cluster).await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_failure_during_open_is_an_error_not_a_wrong_passphrase() {
    let (_dir, faulty, store, _repo) = faulty_repo().await;
    faulty.fail(Op::List, "keys", usize::MAX);
    let err = Repository::open(store, PASS)
        .await
        .expect_err("cannot list keys");
    assert!(matches!(err, Error::Storage { op: "list", .. }), "{err}");
}
