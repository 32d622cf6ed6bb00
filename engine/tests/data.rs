//! Storing and reading back data on every backend: round trips from 0 bytes to several
//! packs, deduplication proven by counting stored bytes, and tampering detected.

mod common;

use common::*;
use pgkeep_engine::format::{layout, ClusterName};
use pgkeep_engine::{Chunking, Error, Repository, StoredStream, WriteOptions};

fn cdc(repo: &Repository) -> Chunking {
    Chunking::from_config(repo.config())
}

/// Sizes from empty to well over one pack (the test repositories use 1 MiB packs).
const SIZES: [usize; 6] = [0, 1, 4095, 300_000, (1 << 20) + 3, 5 << 20];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_round_trip_and_manifests_commit_them() {
    for b in backends() {
        let repo = init(&b).await;
        let session = repo
            .write_session(WriteOptions::default())
            .await
            .expect("session");
        let mut stored = Vec::new();
        for (i, size) in SIZES.into_iter().enumerate() {
            let d = data(size, i as u64, i % 2 == 0);
            let s = session
                .store_stream(&d[..], cdc(&repo))
                .await
                .expect("store");
            assert_eq!(s.size, size as u64);
            stored.push((format!("f{i}"), d, s));
        }
        let (stats, index) = session.finish().await.expect("finish");
        assert!(index.is_some());
        assert!(
            stats.packs >= 3,
            "{}: 6.3 MiB (partly compressible) in 1 MiB packs made only {} packs",
            b.name,
            stats.packs
        );
        assert_eq!(stats.logical_bytes, SIZES.iter().sum::<usize>() as u64);

        let files: Vec<(&str, &StoredStream)> =
            stored.iter().map(|(n, _, s)| (n.as_str(), s)).collect();
        repo.write_manifest(&manifest_for("b1", &files))
            .await
            .expect("manifest");

        // A fresh handle (index loaded from storage) reads everything back.
        let fresh = Repository::open(b.store.clone(), PASS).await.expect("open");
        let cluster = ClusterName::new("main").expect("name");
        assert_eq!(fresh.list_backups(&cluster).await.expect("list"), ["b1"]);
        let m = fresh
            .read_manifest(&cluster, "b1")
            .await
            .expect("read manifest");
        for ((_, original, _), f) in stored.iter().zip(&m.files) {
            let s = StoredStream {
                size: f.size,
                extents: f.extents.clone(),
            };
            assert!(
                read_back(&fresh, &s).await == *original,
                "{}: content differs",
                b.name
            );
        }
        // Manifests are never overwritten.
        let err = repo
            .write_manifest(&manifest_for("b1", &[]))
            .await
            .expect_err("overwrite");
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_streams_stored_twice_add_no_chunk_data() {
    for b in backends() {
        let repo = init(&b).await;
        let d = data(6 << 20, 42, true);

        let first = repo
            .write_session(WriteOptions::default())
            .await
            .expect("session");
        first.store_stream(&d[..], cdc(&repo)).await.expect("store");
        let (s1, _) = first.finish().await.expect("finish");
        let packs_after_first = bytes_under(&b.store, layout::DATA_DIR).await;
        assert_eq!(
            s1.new_bytes, packs_after_first,
            "{}: reported bytes = bytes under data/",
            b.name
        );
        assert!(s1.new_chunks > 0);

        // Again in a new session and through a new handle: nothing new is stored.
        let repo2 = Repository::open(b.store.clone(), PASS).await.expect("open");
        let second = repo2
            .write_session(WriteOptions::default())
            .await
            .expect("session");
        let s = second
            .store_stream(&d[..], cdc(&repo2))
            .await
            .expect("store again");
        let (s2, index) = second.finish().await.expect("finish");
        assert_eq!(
            (s2.new_chunks, s2.new_bytes, s2.packs),
            (0, 0, 0),
            "{}",
            b.name
        );
        assert_eq!(
            index, None,
            "no index segment for a session that stored nothing"
        );
        assert_eq!(
            bytes_under(&b.store, layout::DATA_DIR).await,
            packs_after_first
        );
        assert!(read_back(&repo2, &s).await == d);

        // Within one session, a repeated stream is also stored once.
        let third = repo2
            .write_session(WriteOptions::default())
            .await
            .expect("session");
        let e = data(3 << 20, 7, false);
        third
            .store_stream(&e[..], cdc(&repo2))
            .await
            .expect("store");
        third
            .store_stream(&e[..], cdc(&repo2))
            .await
            .expect("store again");
        let (s3, _) = third.finish().await.expect("finish");
        assert_eq!(s3.new_raw_bytes, e.len() as u64, "{}", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_size_chunking_round_trips_page_aligned() {
    let b = local();
    let repo = init(&b).await;
    let session = repo
        .write_session(WriteOptions {
            jobs: 1,
            ..Default::default()
        })
        .await
        .expect("session");
    let d = data(10 * 8192 + 100, 3, true);
    let s = session
        .store_stream(&d[..], Chunking::Fixed { size: 4 * 8192 })
        .await
        .expect("store");
    session.finish().await.expect("finish");
    assert_eq!(s.extents.len(), 3);
    assert!(read_back(&repo, &s).await == d);
}

async fn flip_byte(b: &Backend, name: &str, at: usize) {
    let mut bytes = b.store.get(name).await.expect("object").to_vec();
    let i = at.min(bytes.len() - 1);
    bytes[i] ^= 0x20;
    b.store.put(name, bytes.into()).await.expect("rewrite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_detected_and_names_the_object() {
    for b in backends() {
        let repo = init(&b).await;
        let session = repo
            .write_session(WriteOptions::default())
            .await
            .expect("session");
        let d = data(2 << 20, 5, true);
        let s = session
            .store_stream(&d[..], cdc(&repo))
            .await
            .expect("store");
        session.finish().await.expect("finish");
        repo.write_manifest(&manifest_for("b1", &[("f", &s)]))
            .await
            .expect("manifest");
        let cluster = ClusterName::new("main").expect("name");

        // A pack: flip a byte inside the first chunk.
        let packs = b.store.list(layout::DATA_DIR).await.expect("packs");
        let fresh = Repository::open(b.store.clone(), PASS).await.expect("open");
        fresh.load_index().await.expect("index");
        let first = match s.extents[0] {
            pgkeep_engine::format::Extent::Chunk { chunk, .. } => chunk.id,
            _ => unreachable!("stream extents are chunks"),
        };
        let loc = fresh.read_index(|i| i.get(&first)).expect("indexed");
        let pack_name = layout::pack(&loc.pack_id);
        assert!(packs.iter().any(|p| p.name == pack_name));
        flip_byte(&b, &pack_name, loc.offset as usize + 100).await;
        let err = fresh
            .read_chunk(&first)
            .await
            .expect_err("flipped pack byte");
        assert!(err.is_corruption(), "{}: {err}", b.name);
        assert!(err.to_string().contains(&pack_name), "{}: {err}", b.name);
        let mut sink = Vec::new();
        assert!(
            fresh.write_extents(&s.extents, &mut sink).await.is_err(),
            "restore must fail, not write wrong data"
        );

        // A manifest.
        let manifest_name = layout::manifest(&cluster, "b1");
        flip_byte(&b, &manifest_name, 60).await;
        let err = fresh
            .read_manifest(&cluster, "b1")
            .await
            .expect_err("flipped manifest");
        assert!(
            err.is_corruption() && err.to_string().contains(&manifest_name),
            "{}: {err}",
            b.name
        );

        // An index segment.
        let segments = b.store.list(layout::INDEX_DIR).await.expect("segments");
        flip_byte(&b, &segments[0].name, 50).await;
        let reopened = Repository::open(b.store.clone(), PASS).await.expect("open");
        let err = reopened.load_index().await.expect_err("flipped index");
        assert!(
            err.is_corruption() && err.to_string().contains(&segments[0].name),
            "{}: {err}",
            b.name
        );

        // The config.
        flip_byte(&b, layout::CONFIG, 40).await;
        let err = Repository::open(b.store.clone(), PASS)
            .await
            .expect_err("flipped config");
        assert!(
            err.is_corruption() && err.to_string().contains("config"),
            "{}: {err}",
            b.name
        );

        // A key file: the header (decode error) and the wrapped key (authentication).
        let keys = b.store.list(layout::KEYS_DIR).await.expect("keys");
        let key = &keys[0].name;
        let original = b.store.get(key).await.expect("key file");
        flip_byte(&b, key, 2).await;
        let err = Repository::open(b.store.clone(), PASS)
            .await
            .expect_err("flipped key header");
        assert!(err.to_string().contains(key.as_str()), "{}: {err}", b.name);
        b.store
            .put(key, original.clone())
            .await
            .expect("restore key");
        flip_byte(&b, key, original.len() - 20).await;
        let err = Repository::open(b.store.clone(), PASS)
            .await
            .expect_err("flipped wrapped key");
        assert!(err.to_string().contains(key.as_str()), "{}: {err}", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_swapped_for_another_of_its_kind_is_refused() {
    let b = local();
    let repo = init(&b).await;
    let cluster = ClusterName::new("main").expect("name");
    repo.write_manifest(&manifest_for("b1", &[]))
        .await
        .expect("m1");
    repo.write_manifest(&manifest_for("b2", &[]))
        .await
        .expect("m2");
    let m1 = b
        .store
        .get(&layout::manifest(&cluster, "b1"))
        .await
        .expect("b1");
    b.store
        .put(&layout::manifest(&cluster, "b2"), m1)
        .await
        .expect("swap");
    let err = repo
        .read_manifest(&cluster, "b2")
        .await
        .expect_err("swapped");
    assert!(err.is_corruption(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_pack_is_not_found_naming_the_pack() {
    let b = local();
    let repo = init(&b).await;
    let session = repo
        .write_session(WriteOptions::default())
        .await
        .expect("session");
    let s = session
        .store_stream(&data(100_000, 1, false)[..], cdc(&repo))
        .await
        .expect("store");
    session.finish().await.expect("finish");
    let packs = b.store.list(layout::DATA_DIR).await.expect("packs");
    b.store.delete(&packs[0].name).await.expect("delete");
    let err = repo
        .write_extents(&s.extents, &mut Vec::new())
        .await
        .expect_err("missing");
    assert!(
        matches!(&err, Error::NotFound { object } if *object == packs[0].name),
        "{err}"
    );
}

/// A chunk whose content does not hash to its id (only a writer's bug could store one: the
/// bytes are authenticated under the id) is never restored as good data. A file that
/// PostgreSQL's backup_manifest gives a checksum for is refused by that checksum, which a
/// restore compares instead of recomputing each of the file's chunk ids (SPEC §5.1); any
/// other file by the id check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_stored_under_a_wrong_id_is_refused_by_restore() {
    use std::collections::HashMap;

    use pgkeep_engine::format::{Attachment, Extent, SALT_LEN};
    use pgkeep_engine::restore::materialize::materialize;
    use pgkeep_engine::restore::Layout;

    let b = local();
    let repo = init(&b).await;
    // Incompressible, so the altered content seals to the same length and fits in place.
    let good = data(100_000, 11, false);
    let session = repo
        .write_session(WriteOptions::default())
        .await
        .expect("session");
    let s = session
        .store_stream(&good[..], cdc(&repo))
        .await
        .expect("store");
    session.finish().await.expect("finish");
    let [Extent::Chunk { chunk, .. }] = s.extents[..] else {
        panic!("one chunk expected: {:?}", s.extents);
    };
    let loc = repo.read_index(|i| i.get(&chunk.id)).expect("indexed");
    let pack = layout::pack(&loc.pack_id);
    let mut bad = good.clone();
    bad[500] ^= 1;
    let sealed = repo.keys().seal_chunk(
        &chunk.id,
        [7; SALT_LEN],
        &bad,
        repo.config().compression_level,
    );
    assert_eq!(sealed.len(), loc.stored_len as usize, "same sealed length");
    let mut bytes = b.store.get(&pack).await.expect("pack").to_vec();
    bytes[loc.offset as usize..][..sealed.len()].copy_from_slice(&sealed);
    b.store.put(&pack, bytes.into()).await.expect("rewrite");
    let fresh = Repository::open(b.store.clone(), PASS).await.expect("open");

    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&good));
    let json = format!(
        r#"{{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [{{"Path": "datafile", "Size": {}, "Last-Modified": "2026-01-01 00:00:00 GMT", "Checksum-Algorithm": "SHA256", "Checksum": "{digest}"}}]}}"#,
        good.len()
    );
    let session = fresh
        .write_session(WriteOptions::default())
        .await
        .expect("session");
    let listing = session
        .store_stream(json.as_bytes(), cdc(&fresh))
        .await
        .expect("store");
    session.finish().await.expect("finish");
    let mut checked = manifest_for("b1", &[("datafile", &s)]);
    checked.attachments.push(Attachment {
        name: "backup_manifest".into(),
        size: listing.size,
        extents: listing.extents,
    });
    let unchecked = manifest_for("b2", &[("datafile", &s)]);

    for (m, by) in [
        (checked, "backup_manifest says"),
        (unchecked, "does not match its id"),
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let target = Layout {
            pgdata: dir.path().join("data"),
            tablespaces: HashMap::new(),
        };
        let err = materialize(&fresh, &m, &target, 2, false)
            .await
            .expect_err("a wrong chunk restored");
        assert!(err.is_corruption(), "{}: {err}", m.backup_id);
        assert!(err.to_string().contains(by), "{}: {err}", m.backup_id);
    }
}
