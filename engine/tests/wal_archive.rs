//! The WAL archive's storage semantics on real backends (local files and the loopback S3
//! server): create-if-absent with checksum comparison, authenticated fetch, damage detection,
//! storage faults, and wal-fetch's prefetch spool.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgkeep_engine::format::ChecksumAlgorithm::Sha256;
use pgkeep_engine::format::{ClusterName, SegmentFacts, WalFileName};
use pgkeep_engine::wal::checksum::file_checksum;
use pgkeep_engine::wal::{
    fetch_file, FetchOptions, FetchOutcome, PreparedWal, PushOutcome, WalArchive,
};
use pgkeep_engine::{Error, Repository, RetryPolicy, Store};
use pgkeep_testkit::faults::{FaultyStore, Op};

const SEGMENT: u32 = 1 << 20;

fn cluster() -> ClusterName {
    ClusterName::new("main").expect("name")
}

/// `file` as `name`, a stand-in segment (or history file) of this file's cluster.
fn prepared(archive: &WalArchive, name: &str, file: &[u8], level: i8) -> PreparedWal {
    let facts = SegmentFacts {
        system_id: 7,
        segment_size: SEGMENT,
        pg_major: 18,
    };
    prepared_wal(archive, name, file, level, facts)
}

/// A stand-in segment: the archive layer does not interpret content, except that prefetch
/// reads the segment size from the long page header (bytes 32..36).
fn segment_bytes(seed: u64) -> Vec<u8> {
    let mut d = data(SEGMENT as usize, seed, true);
    d[32..36].copy_from_slice(&SEGMENT.to_le_bytes());
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_compare_fetch_and_list_on_every_backend() {
    for b in backends() {
        let repo = init(&b).await;
        let archive = WalArchive::new(repo, cluster());
        let history = b"1\t0/3000000\tno recovery target specified\n".to_vec();
        let name = WalFileName::parse("00000002.history").expect("name");
        assert_eq!(
            archive
                .store(prepared(&archive, "00000002.history", &history, 3), 3)
                .await
                .expect("store"),
            PushOutcome::Stored,
            "{}",
            b.name
        );
        // PostgreSQL re-archiving the same file after a crash: success, nothing rewritten.
        assert_eq!(
            archive
                .store(prepared(&archive, "00000002.history", &history, 3), 3)
                .await
                .expect("re-push"),
            PushOutcome::AlreadyStored
        );
        // Another file under the same name: refused with both checksums.
        let other = b"1\t0/4000000\tother\n".to_vec();
        match archive
            .store(prepared(&archive, "00000002.history", &other, 3), 3)
            .await
        {
            Err(Error::WalConflict {
                file,
                stored_checksum,
                new_checksum,
                ..
            }) => {
                assert_eq!(file, "00000002.history");
                assert_eq!(stored_checksum, file_checksum(Sha256, &history));
                assert_eq!(new_checksum, file_checksum(Sha256, &other));
            }
            other => panic!("{}: expected a conflict, got {other:?}", b.name),
        }
        // The same when the caller found the file absent and it was stored in between: the
        // create-if-absent write meets it and compares.
        assert_eq!(
            archive
                .store_absent(prepared(&archive, "00000002.history", &history, 3), 3)
                .await
                .expect("stored in between"),
            PushOutcome::AlreadyStored,
            "{}",
            b.name
        );
        let err = archive
            .store_absent(prepared(&archive, "00000002.history", &other, 3), 3)
            .await
            .expect_err("another file stored in between");
        assert!(
            matches!(err, Error::WalConflict { .. }),
            "{}: {err}",
            b.name
        );
        let (meta, file) = archive.fetch(&name).await.expect("fetch").expect("present");
        assert_eq!(file, history);
        assert_eq!(meta.checksum, file_checksum(Sha256, &history));
        let missing = WalFileName::parse("00000003.history").expect("name");
        assert!(archive.fetch(&missing).await.expect("fetch").is_none());
        assert!(archive.meta(&missing).await.expect("meta").is_none());

        for n in 1..=3u64 {
            let seg = format!("0000000200000000{n:08X}");
            archive
                .store(prepared(&archive, &seg, &segment_bytes(n), 1), 1)
                .await
                .expect("segment");
        }
        let listing = archive.list().await.expect("list");
        let names: Vec<String> = listing
            .values()
            .flatten()
            .map(|f| f.name.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "00000002.history",
                "000000020000000000000001",
                "000000020000000000000002",
                "000000020000000000000003"
            ],
            "{}",
            b.name
        );
        let meta = archive
            .meta(&WalFileName::parse("000000020000000000000002").expect("name"))
            .await
            .expect("meta")
            .expect("present");
        assert_eq!(meta.segment.map(|f| f.segment_size), Some(SEGMENT));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_is_reported_as_damage_not_as_missing() {
    let b = local();
    let repo = init(&b).await;
    let archive = WalArchive::new(repo.clone(), cluster());
    let name = "000000010000000000000005";
    archive
        .store(prepared(&archive, name, &segment_bytes(5), 3), 3)
        .await
        .expect("store");
    let wal = WalFileName::parse(name).expect("name");
    let object = archive.object_name(&wal);
    let original = b.store.get(&object).await.expect("object");

    // A flipped byte in the data unit: the meta still opens, the fetch fails as corrupt.
    let mut damaged = original.to_vec();
    let last = damaged.len() - 20;
    damaged[last] ^= 1;
    b.store.put(&object, damaged.into()).await.expect("damage");
    assert!(archive.meta(&wal).await.expect("meta").is_some());
    let err = archive.fetch(&wal).await.expect_err("damaged");
    assert!(err.is_corruption(), "{err}");
    assert!(err.to_string().contains(name), "{err}");

    // A flipped byte in the meta unit: a re-push cannot compare, and says why.
    let mut damaged = original.to_vec();
    damaged[40] ^= 1;
    b.store.put(&object, damaged.into()).await.expect("damage");
    let err = archive
        .store(prepared(&archive, name, &segment_bytes(5), 3), 3)
        .await
        .expect_err("damaged meta");
    assert!(err.is_corruption(), "{err}");

    // Truncated: corrupt, not missing.
    b.store
        .put(&object, original.slice(..original.len() / 2))
        .await
        .expect("truncate");
    assert!(archive
        .fetch(&wal)
        .await
        .expect_err("truncated")
        .is_corruption());

    // Another segment's object under this name (swapped): authentication fails.
    archive
        .store(
            prepared(&archive, "000000010000000000000006", &segment_bytes(6), 3),
            3,
        )
        .await
        .expect("store");
    let six = b
        .store
        .get("clusters/main/wal/00000001/000000010000000000000006")
        .await
        .expect("six");
    b.store.put(&object, six).await.expect("swap");
    assert!(archive
        .fetch(&wal)
        .await
        .expect_err("swapped")
        .is_corruption());
}

/// A segment stored before format 1.5 (kind 10, SHA-256 in its meta) next to a new one
/// (kind 15, BLAKE3): both read and check; pushing the old one again compares its content in
/// its own algorithm, whatever the new meta's, and a different file is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_stored_by_format_1_4_compare_and_fetch() {
    use pgkeep_engine::format::wal::seal_wal_object;
    use pgkeep_engine::format::{ChecksumAlgorithm::Blake3, Kind, WalMeta};
    for b in backends() {
        let repo = init(&b).await;
        let archive = WalArchive::new(repo.clone(), cluster());
        // The meta format 1.4 wrote for a segment: its SHA-256.
        let sha256_meta = |file: &[u8]| WalMeta {
            size: file.len() as u64,
            checksum: file_checksum(Sha256, file),
            segment: None,
            summary: None,
        };
        let old = WalFileName::parse("000000010000000000000007").expect("name");
        let file = segment_bytes(7);
        let meta = sha256_meta(&file);
        let object = archive.object_name(&old);
        let sealed = seal_wal_object(
            repo.keys(),
            Kind::WalSegment,
            &object,
            &meta,
            ([1; 24], [2; 24]),
            &file,
            1,
        )
        .expect("seals");
        b.store.put(&object, sealed.into()).await.expect("put");
        assert_eq!(sealed_kind(&b, &object).await, Kind::WalSegment as u8);

        assert_eq!(archive.meta(&old).await.expect("meta"), Some(meta.clone()));
        let (fetched, bytes) = archive.fetch(&old).await.expect("fetch").expect("present");
        assert_eq!((fetched, &bytes), (meta, &file), "{}", b.name);
        // The new writer's meta is BLAKE3; the stored one's SHA-256: compared by content.
        let again = prepared(&archive, old.as_str(), &file, 1);
        assert_eq!(again.meta.checksum.algorithm, Blake3);
        assert_eq!(
            archive.store(again, 1).await.expect("re-push"),
            PushOutcome::AlreadyStored
        );
        let again = prepared(&archive, old.as_str(), &file, 1);
        assert_eq!(
            archive
                .store_absent(again, 1)
                .await
                .expect("stored in between"),
            PushOutcome::AlreadyStored
        );
        let mut other = file.clone();
        other[1000] ^= 1;
        match archive
            .store(prepared(&archive, old.as_str(), &other, 1), 1)
            .await
        {
            Err(Error::WalConflict {
                stored_checksum,
                new_checksum,
                ..
            }) => {
                // Both in the new file's algorithm, so that they can be compared by eye.
                assert_eq!(stored_checksum, file_checksum(Blake3, &file));
                assert_eq!(new_checksum, file_checksum(Blake3, &other));
            }
            other => panic!("{}: expected a conflict, got {other:?}", b.name),
        }
        assert_eq!(sealed_kind(&b, &object).await, Kind::WalSegment as u8);

        // A new segment beside it is kind 15.
        let new = WalFileName::parse("000000010000000000000008").expect("name");
        archive
            .store(prepared(&archive, new.as_str(), &segment_bytes(8), 1), 1)
            .await
            .expect("store");
        assert_eq!(
            sealed_kind(&b, &archive.object_name(&new)).await,
            Kind::WalSegmentBlake3 as u8
        );
        let (meta, _) = archive.fetch(&new).await.expect("fetch").expect("present");
        assert_eq!(meta.checksum, file_checksum(Blake3, &segment_bytes(8)));

        // A library caller's meta in the old algorithm for a new segment: refused, not
        // stored as an object that would fail its checksum on every fetch.
        let wrong = WalFileName::parse("000000010000000000000009").expect("name");
        let file = segment_bytes(9);
        let as_is = archive.prepare_as_is(wrong.clone(), sha256_meta(&file), &file, 1);
        match archive.store(as_is, 1).await {
            Err(Error::InvalidInput(message)) => assert!(
                message.contains(wrong.as_str()) && message.contains("SHA-256"),
                "{message}"
            ),
            other => panic!("{}: expected InvalidInput, got {other:?}", b.name),
        }
        assert_eq!(
            archive.meta(&wrong).await.expect("meta"),
            None,
            "{}",
            b.name
        );
    }
}

/// The kind byte of a stored object's header.
async fn sealed_kind(b: &Backend, object: &str) -> u8 {
    b.store.get(object).await.expect("object")[6]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_faults_are_retried_or_fail_cleanly() {
    let dir = tempfile::tempdir().expect("tmp");
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("fs");
    let faulty = FaultyStore::new(Arc::new(fs));
    let store = Store::from_object_store(faulty.clone(), "", "faulty").with_retry(RetryPolicy {
        attempts: 5,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    });
    let repo = Repository::init(store.clone(), PASS, init_options())
        .await
        .expect("init");
    let archive = WalArchive::new(repo, cluster());
    // Transient: two failed PUTs, then success.
    faulty.fail(Op::Put, "/wal/", 2);
    archive
        .store(
            prepared(&archive, "000000010000000000000001", &segment_bytes(1), 3),
            3,
        )
        .await
        .expect("stored despite transient failures");
    // Persistent: an error naming the object, and nothing visible afterwards.
    faulty.fail(Op::Put, "/wal/", usize::MAX);
    let err = archive
        .store(
            prepared(&archive, "000000010000000000000002", &segment_bytes(2), 3),
            3,
        )
        .await
        .expect_err("persistent failure");
    assert!(
        err.to_string().contains("000000010000000000000002"),
        "{err}"
    );
    faulty.heal();
    let two = WalFileName::parse("000000010000000000000002").expect("name");
    assert!(archive.meta(&two).await.expect("meta").is_none());
    // The next attempt (PostgreSQL retries archive_command) succeeds.
    archive
        .store(
            prepared(&archive, "000000010000000000000002", &segment_bytes(2), 3),
            3,
        )
        .await
        .expect("retry");
    let (_, file) = archive.fetch(&two).await.expect("fetch").expect("present");
    assert!(file == segment_bytes(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_prefetches_into_a_bounded_spool() {
    let b = local();
    let repo = init(&b).await;
    let archive = WalArchive::new(repo, cluster());
    for n in 1..=8u64 {
        archive
            .store(
                prepared(
                    &archive,
                    &format!("0000000100000000{n:08X}"),
                    &segment_bytes(n),
                    1,
                ),
                1,
            )
            .await
            .expect("store");
    }
    let pg_wal = tempfile::tempdir().expect("pg_wal");
    let dest = pg_wal.path().join("RECOVERYXLOG");
    let opts = FetchOptions {
        prefetch: 3,
        spool: None,
    };
    let name = |n: u64| WalFileName::parse(&format!("0000000100000000{n:08X}")).expect("name");
    let spooled = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(pg_wal.path().join("pgkeep-spool"))
            .expect("spool")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let outcome = fetch_file(&archive, &name(1), &dest, &opts)
        .await
        .expect("fetch");
    assert_eq!(outcome, FetchOutcome::Restored { from_spool: false });
    assert!(std::fs::read(&dest).expect("dest") == segment_bytes(1));
    assert_eq!(
        spooled(),
        [
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004"
        ]
    );
    let outcome = fetch_file(&archive, &name(2), &dest, &opts)
        .await
        .expect("fetch");
    assert_eq!(outcome, FetchOutcome::Restored { from_spool: true });
    assert!(std::fs::read(&dest).expect("dest") == segment_bytes(2));
    // Two of the three still spooled: no download this time (a refill per call would make
    // each call wait for one download again).
    assert_eq!(
        spooled(),
        ["000000010000000000000003", "000000010000000000000004"]
    );
    // One left: the spool is refilled in one batch, never beyond --prefetch files.
    let outcome = fetch_file(&archive, &name(3), &dest, &opts)
        .await
        .expect("fetch");
    assert_eq!(outcome, FetchOutcome::Restored { from_spool: true });
    assert!(std::fs::read(&dest).expect("dest") == segment_bytes(3));
    assert_eq!(
        spooled(),
        [
            "000000010000000000000004",
            "000000010000000000000005",
            "000000010000000000000006"
        ]
    );
    // Recovery jumps (another timeline, a later start): stale spool entries go.
    let outcome = fetch_file(&archive, &name(8), &dest, &opts)
        .await
        .expect("fetch");
    assert_eq!(outcome, FetchOutcome::Restored { from_spool: false });
    assert!(spooled().is_empty(), "{:?}", spooled());
    // The end of the archive: not found, no error.
    let outcome = fetch_file(&archive, &name(9), &dest, &opts)
        .await
        .expect("fetch");
    assert_eq!(outcome, FetchOutcome::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_partial_segment_replaces_the_stored_one() {
    let b = local();
    let repo = init(&b).await;
    let archive = WalArchive::new(repo, cluster());
    let name = "000000010000000000000009.partial";
    let older = segment_bytes(9)[..SEGMENT as usize / 2].to_vec();
    let newer = segment_bytes(9)[..SEGMENT as usize * 3 / 4].to_vec();
    archive
        .store(prepared(&archive, name, &older, 1), 1)
        .await
        .expect("first");
    assert_eq!(
        archive
            .store(prepared(&archive, name, &older, 1), 1)
            .await
            .expect("same again"),
        PushOutcome::AlreadyStored
    );
    assert_eq!(
        archive
            .store(prepared(&archive, name, &newer, 1), 1)
            .await
            .expect("newer replaces"),
        PushOutcome::Stored
    );
    let wal = WalFileName::parse(name).expect("name");
    let (_, file) = archive.fetch(&wal).await.expect("fetch").expect("present");
    assert!(file == newer);
    // Complete segments are never replaced, and only partials are removed.
    let seg = WalFileName::parse("000000010000000000000009").expect("name");
    assert!(archive
        .replace(
            prepared(&archive, "000000010000000000000009", &segment_bytes(9), 1),
            1
        )
        .await
        .is_err());
    assert!(archive.remove(&seg).await.is_err());
    archive.remove(&wal).await.expect("remove partial");
    assert!(archive.meta(&wal).await.expect("meta").is_none());
}
