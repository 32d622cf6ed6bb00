//! Base backups of real PostgreSQL 15 and 18 servers over the replication protocol,
//! checked file by file against PostgreSQL's own backup_manifest.

mod common;

use std::collections::{HashMap, HashSet};

use common::pg::{conn, extract, fresh_repo, verify_against_backup_manifest};
use pgkeep_engine::backup::{take_backup, BackupOptions, NoProgress};
use pgkeep_engine::format::{layout, Attachment, BackupKind, ChunkId, Extent, Manifest};
use pgkeep_engine::manifest_checksum::ManifestChecksum;
use pgkeep_engine::prune::{prune, PruneOptions};
use pgkeep_engine::restore::{materialize::materialize, Layout};
use pgkeep_engine::{Chunking, Error, Repository, WriteOptions};
use pgkeep_testkit::pg::{Auth, PgCluster, PgVersion};

/// The checksum algorithm of a stored backup_manifest (all its entries have one).
async fn manifest_algorithm(repo: &Repository, m: &Manifest) -> String {
    let doc = stored_backup_manifest(repo, m).await;
    let algorithms: std::collections::BTreeSet<String> = doc["Files"]
        .as_array()
        .expect("Files")
        .iter()
        .map(|f| {
            f["Checksum-Algorithm"]
                .as_str()
                .expect("algorithm")
                .to_owned()
        })
        .collect();
    assert_eq!(algorithms.len(), 1, "{algorithms:?}");
    algorithms.into_iter().next().expect("one")
}

async fn stored_backup_manifest(repo: &Repository, m: &Manifest) -> serde_json::Value {
    let att = m.attachment("backup_manifest").expect("backup_manifest");
    let mut json = Vec::new();
    repo.write_extents(&att.extents, &mut json)
        .await
        .expect("read backup_manifest");
    serde_json::from_slice(&json).expect("JSON")
}

/// A restore checks every file against PostgreSQL's backup_manifest by the backup's own
/// algorithm: given a backup_manifest whose checksum of `PG_VERSION` is wrong by one digit,
/// it refuses that file as damage and names it.
async fn restore_refuses_a_checksum_mismatch(repo: &Repository, m: &Manifest) {
    let mut doc = stored_backup_manifest(repo, m).await;
    let entry = doc["Files"]
        .as_array_mut()
        .expect("Files")
        .iter_mut()
        .find(|f| f["Path"] == "PG_VERSION")
        .expect("PG_VERSION listed");
    let sum = entry["Checksum"].as_str().expect("Checksum").to_owned();
    let flipped = if sum.starts_with('0') { "1" } else { "0" };
    entry["Checksum"] = format!("{flipped}{}", &sum[1..]).into();
    let altered = serde_json::to_vec(&doc).expect("JSON");
    let session = repo
        .write_session(WriteOptions::default())
        .await
        .expect("session");
    let stored = session
        .store_stream(&altered[..], Chunking::from_config(repo.config()))
        .await
        .expect("store");
    session.finish().await.expect("finish");
    let mut damaged = m.clone();
    damaged.attachments.retain(|a| a.name != "backup_manifest");
    damaged.attachments.push(Attachment {
        name: "backup_manifest".into(),
        size: stored.size,
        extents: stored.extents,
    });
    let dir = tempfile::tempdir().expect("tmp");
    let layout = Layout {
        pgdata: dir.path().join("data"),
        tablespaces: m
            .tablespaces
            .iter()
            .map(|t| (t.oid, dir.path().join(format!("ts{}", t.oid))))
            .collect::<HashMap<_, _>>(),
    };
    match materialize(repo, &damaged, &layout, 2, false).await {
        Err(Error::Corrupt { object, source }) => {
            assert!(object.contains("PG_VERSION"), "{object}");
            assert!(
                source.to_string().contains("backup_manifest says"),
                "{source}"
            );
        }
        other => panic!("a checksum mismatch was not refused: {other:?}"),
    }
}

async fn full_then_incremental(version: PgVersion) {
    let pg = PgCluster::builder(version)
        .auth(Auth::Trust)
        .start()
        .expect("cluster");
    pg.pgbench_init(5).expect("pgbench -i");
    pg.create_tablespace("ts1").expect("tablespace");
    pg.psql("CREATE TABLE in_ts TABLESPACE ts1 AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
        .expect("table in tablespace");

    let (_repo_dir, repo, cluster) = fresh_repo().await;
    let cfg = conn(&pg);

    let full = take_backup(
        &repo,
        &cluster,
        &cfg,
        &BackupOptions::default(),
        &NoProgress,
    )
    .await
    .expect("full backup");
    assert_eq!(full.manifest.kind, BackupKind::Full);
    let pgi = full.manifest.postgres.expect("postgres facts");
    assert!(pgi.stop_lsn >= pgi.start_lsn && pgi.start_lsn > 0);
    assert_eq!(
        full.manifest.tablespaces.len(),
        1,
        "the second tablespace is recorded"
    );
    assert!(
        full.manifest.files.iter().any(|f| f.tablespace != 0),
        "tablespace files stored"
    );

    let dir = tempfile::tempdir().expect("tmp");
    extract(&repo, &full.manifest, dir.path()).await;
    let n = verify_against_backup_manifest(&repo, &full.manifest, dir.path()).await;
    assert!(n > 500, "only {n} files in the backup_manifest");
    assert_eq!(manifest_algorithm(&repo, &full.manifest).await, "CRC32C");
    restore_refuses_a_checksum_mismatch(&repo, &full.manifest).await;

    // A pgbench-like workload (200 transactions of random account updates and history
    // inserts) changes a small share of pages; then back up again.
    change(
        &pg,
        "DO $$ BEGIN FOR i IN 1..200 LOOP \
           UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1 + (random() * 499999)::int; \
           INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, i, 1, now()); \
         END LOOP; END $$",
    );
    // The incremental asks for SHA-256 (a changed setting between two backups).
    let incr = take_backup(
        &repo,
        &cluster,
        &cfg,
        &BackupOptions {
            manifest_checksums: ManifestChecksum::Sha256,
            ..BackupOptions::default()
        },
        &NoProgress,
    )
    .await
    .expect("incremental backup");
    assert_eq!(manifest_algorithm(&repo, &incr.manifest).await, "SHA256");
    restore_refuses_a_checksum_mismatch(&repo, &incr.manifest).await;
    assert_eq!(incr.manifest.kind, BackupKind::Incremental);
    assert_eq!(
        incr.manifest.parent.as_deref(),
        Some(full.manifest.backup_id.as_str())
    );
    let ratio = incr.session.new_bytes as f64 / full.session.new_bytes as f64;
    println!(
        "PG{}: full stored {} new bytes; incremental {} new bytes ({:.2}% of the full), {} of {} relation pages reused",
        version.major(),
        full.session.new_bytes,
        incr.session.new_bytes,
        ratio * 100.0,
        incr.pages.reused_pages,
        incr.pages.relation_pages
    );
    assert!(
        ratio < 0.10,
        "incremental stored {:.1}% of the full",
        ratio * 100.0
    );
    assert!(incr.pages.reused_pages > 0);
    // Changed pages went in as differences from the full's copies, each an XOR of a chunk of
    // the full and a new chunk.
    assert!(incr.pages.delta_pages > 0, "{:?}", incr.pages);
    let full_chunks: HashSet<ChunkId> = full.manifest.chunk_refs().iter().map(|c| c.id).collect();
    let xors = xor_extents(&incr.manifest);
    assert!(!xors.is_empty(), "no XOR extents");
    assert!(xors.iter().all(|(base, _)| full_chunks.contains(base)));

    // The incremental is complete on its own: its files match its own backup_manifest.
    restores_to_its_own_manifest(&repo, &incr.manifest).await;

    // Listed, oldest first.
    assert_eq!(
        repo.list_backups(&cluster).await.expect("list"),
        [
            full.manifest.backup_id.clone(),
            incr.manifest.backup_id.clone()
        ]
    );

    // A second incremental, on the first: a page changed again is a difference from the
    // full's copy still (never from another difference), so a page needs two chunks at most.
    change(
        &pg,
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 1000 = 7",
    );
    let incr2 = take_backup(
        &repo,
        &cluster,
        &cfg,
        &BackupOptions::default(),
        &NoProgress,
    )
    .await
    .expect("second incremental");
    assert_eq!(
        incr2.manifest.parent.as_deref(),
        Some(incr.manifest.backup_id.as_str())
    );
    assert!(incr2.pages.delta_pages > 0, "{:?}", incr2.pages);
    let differences: HashSet<ChunkId> = xors.iter().map(|(_, d)| *d).collect();
    let xors2 = xor_extents(&incr2.manifest);
    assert!(xors2.iter().all(|(base, _)| !differences.contains(base)));
    assert!(
        xors2.iter().any(|(_, d)| differences.contains(d)),
        "unchanged pages keep the first incremental's differences"
    );

    // The older backups expire and prune runs: every chunk the second incremental needs,
    // the full's bases included, stays, and it restores to its own backup_manifest.
    for old in [&full.manifest.backup_id, &incr.manifest.backup_id] {
        repo.store()
            .delete(&layout::manifest(&cluster, old))
            .await
            .expect("expire");
    }
    let report = prune(&repo, &PruneOptions::default()).await.expect("prune");
    assert!(
        report.deleted_packs + report.repacked_packs > 0,
        "{report:?}"
    );
    let fresh = Repository::open(repo.store().clone(), common::PASS)
        .await
        .expect("reopen");
    restores_to_its_own_manifest(&fresh, &incr2.manifest).await;

    // With page deltas off, changed pages are stored whole.
    change(
        &pg,
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 1000 = 8",
    );
    let whole = take_backup(
        &fresh,
        &cluster,
        &cfg,
        &BackupOptions {
            page_deltas: false,
            ..BackupOptions::default()
        },
        &NoProgress,
    )
    .await
    .expect("incremental without deltas");
    assert_eq!(whole.pages.delta_pages, 0);
    let new_xors: Vec<_> = xor_extents(&whole.manifest)
        .into_iter()
        .filter(|x| !xors2.contains(x))
        .collect();
    assert!(new_xors.is_empty(), "{} new XOR extents", new_xors.len());
    restores_to_its_own_manifest(&fresh, &whole.manifest).await;

    // On a parent that stored its changed pages whole, a file's changed pages alternate
    // between two bases (that parent's gathered pages, the full's chunk): each base still
    // gets one difference, not one per switch.
    change(
        &pg,
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 1000 IN (8, 508)",
    );
    let last = take_backup(
        &fresh,
        &cluster,
        &cfg,
        &BackupOptions::default(),
        &NoProgress,
    )
    .await
    .expect("incremental on a parent without deltas");
    let mut bases = HashSet::new();
    for f in &last.manifest.files {
        let file = Manifest {
            files: vec![f.clone()],
            ..last.manifest.clone()
        };
        let fresh_xors: Vec<_> = xor_extents(&file)
            .into_iter()
            .filter(|x| !xors2.contains(x))
            .collect();
        let file_bases: HashSet<ChunkId> = fresh_xors.iter().map(|(b, _)| *b).collect();
        let deltas: HashSet<ChunkId> = fresh_xors.iter().map(|(_, d)| *d).collect();
        assert!(
            deltas.len() <= file_bases.len(),
            "{}: {} differences for {} bases",
            String::from_utf8_lossy(&f.path),
            deltas.len(),
            file_bases.len()
        );
        bases.extend(file_bases);
    }
    assert!(
        whole
            .manifest
            .chunk_refs()
            .iter()
            .any(|c| bases.contains(&c.id) && !full_chunks.contains(&c.id)),
        "no difference from the parent's own whole pages"
    );
    restores_to_its_own_manifest(&fresh, &last.manifest).await;
}

/// Restores `m` into a new directory and checks every file against its backup_manifest.
async fn restores_to_its_own_manifest(repo: &Repository, m: &Manifest) {
    let dir = tempfile::tempdir().expect("tmp");
    extract(repo, m, dir.path()).await;
    verify_against_backup_manifest(repo, m, dir.path()).await;
}

/// Runs `sql`, then a checkpoint, so that the next backup starts after the change.
fn change(pg: &PgCluster, sql: &str) {
    pg.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    pg.psql("CHECKPOINT").expect("checkpoint");
}

/// The (base, delta) chunks of every XOR extent of a manifest's files.
fn xor_extents(m: &Manifest) -> Vec<(ChunkId, ChunkId)> {
    m.files
        .iter()
        .flat_map(|f| &f.extents)
        .filter_map(|e| match e {
            Extent::Xor { base, delta, .. } => Some((base.id, delta.id)),
            _ => None,
        })
        .collect()
}

/// A page changed since the parent is stored as a difference from the parent's copy, which
/// the backup reads from the repository: when that copy is damaged, the backup fails and
/// says what to do, instead of storing anything wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_parent_fails_an_incremental_with_advice() {
    let pg = PgCluster::builder(PgVersion::V15)
        .auth(Auth::Trust)
        .start()
        .expect("cluster");
    pg.pgbench_init(1).expect("pgbench -i");
    let (backend, repo, cluster) = fresh_repo().await;
    let cfg = conn(&pg);
    take_backup(
        &repo,
        &cluster,
        &cfg,
        &BackupOptions::default(),
        &NoProgress,
    )
    .await
    .expect("full backup");
    change(
        &pg,
        "UPDATE pgbench_accounts SET abalance = 1 WHERE aid % 100 = 0",
    );
    // Every pack loses its chunks (as a truncation in storage would do).
    let data = backend
        .dir
        .as_ref()
        .expect("local")
        .path()
        .join("repo/data");
    let mut packs = 0;
    for dir in std::fs::read_dir(&data).expect("data/") {
        for pack in std::fs::read_dir(dir.expect("entry").path()).expect("pack dir") {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(pack.expect("entry").path())
                .expect("open pack");
            f.set_len(16).expect("truncate");
            packs += 1;
        }
    }
    assert!(packs > 0);
    let err = take_backup(
        &repo,
        &cluster,
        &cfg,
        &BackupOptions::default(),
        &NoProgress,
    )
    .await
    .expect_err("the parent's chunks are unreadable");
    let text = err.to_string();
    assert!(
        matches!(err, Error::Corrupt { .. })
            && text.contains("of the parent backup")
            && text.contains("truncated")
            && text.contains("pgkeep backup --full"),
        "{err:?}"
    );
    assert_eq!(
        repo.list_backups(&cluster).await.expect("list").len(),
        1,
        "no backup was committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg15_full_and_incremental_match_backup_manifest() {
    full_then_incremental(PgVersion::V15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg18_full_and_incremental_match_backup_manifest() {
    full_then_incremental(PgVersion::V18).await;
}

/// PostgreSQL 17+ server-side incremental: pgkeep reconstructs every `INCREMENTAL.*` file
/// from the changed blocks the server sends and the parent's pages. Checked against a full
/// backup taken right after, with no writes in between: every relation file is identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg18_server_side_incremental_reconstructs_whole_files() {
    use pgkeep_engine::backup::command::is_relation_file;
    use pgkeep_engine::backup::IncrementalMethod;
    let pg = PgCluster::builder(PgVersion::V18)
        .setting("summarize_wal", "on")
        .setting("autovacuum", "off")
        .start()
        .expect("cluster");
    pg.pgbench_init(5).expect("pgbench -i");
    pg.psql("CREATE TABLE copied (id int, t text); INSERT INTO copied VALUES (0, 'before')")
        .expect("copied");
    let (_repo_dir, repo, cluster) = fresh_repo().await;
    let cfg = conn(&pg);
    let full = take_backup(
        &repo,
        &cluster,
        &cfg,
        &BackupOptions::default(),
        &NoProgress,
    )
    .await
    .expect("full backup");
    pg.psql(
        "DO $$ BEGIN FOR i IN 1..200 LOOP \
           UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1 + (random() * 499999)::int; \
         END LOOP; END $$; \
         CREATE TABLE added AS SELECT g FROM generate_series(1, 5000) g; \
         TRUNCATE pgbench_history;",
    )
    .expect("workload");
    // COPY extends a relation many blocks at a time (PostgreSQL 16+) and WAL-logs only the
    // blocks it fills: the rest are zeros on disk that no WAL summary mentions, below the
    // incremental file's truncation length and beyond the parent's copy of the file.
    pg.psql("COPY copied (id) FROM PROGRAM 'seq 1 300000'")
        .expect("copy");
    let blocks: Vec<u64> = pg
        .psql(
            "SELECT pg_relation_size('copied') / 8192,              (SELECT max((ctid::text::point)[0])::bigint + 1 FROM copied)",
        )
        .expect("sizes")
        .trim()
        .split('|')
        .map(|v| v.trim().parse().expect("a number"))
        .collect();
    assert!(
        blocks[0] > blocks[1],
        "COPY left no unused extended block ({blocks:?}): the case below is not exercised"
    );
    let server_side = BackupOptions {
        incremental_method: IncrementalMethod::Server,
        ..BackupOptions::default()
    };
    let inc = take_backup(&repo, &cluster, &cfg, &server_side, &NoProgress)
        .await
        .expect("server-side incremental");
    assert_eq!(inc.manifest.kind, BackupKind::Incremental);
    assert!(inc
        .manifest
        .properties
        .contains(&("incremental_method".to_owned(), "server".to_owned())));
    println!(
        "PG18 server-side incremental: {} new bytes ({:.2}% of the full), {} of {} relation pages from the parent",
        inc.session.new_bytes,
        100.0 * inc.session.new_bytes as f64 / full.session.new_bytes as f64,
        inc.pages.reused_pages,
        inc.pages.relation_pages
    );
    assert!(
        inc.pages.reused_pages > inc.pages.relation_pages / 2,
        "the server sent mostly changed blocks"
    );

    let check = BackupOptions {
        full: true,
        ..BackupOptions::default()
    };
    let reference = take_backup(&repo, &cluster, &cfg, &check, &NoProgress)
        .await
        .expect("reference full backup");
    let mut compared = 0;
    for f in inc
        .manifest
        .files
        .iter()
        .filter(|f| is_relation_file(f.tablespace, &f.path))
    {
        let r = reference
            .manifest
            .files
            .iter()
            .find(|r| r.tablespace == f.tablespace && r.path == f.path)
            .unwrap_or_else(|| {
                panic!(
                    "{} missing from the reference",
                    String::from_utf8_lossy(&f.path)
                )
            });
        let (mut a, mut b) = (Vec::new(), Vec::new());
        repo.write_extents(&f.extents, &mut a)
            .await
            .expect("read incremental");
        repo.write_extents(&r.extents, &mut b)
            .await
            .expect("read reference");
        assert!(
            a == b,
            "{} differs after reconstruction",
            String::from_utf8_lossy(&f.path)
        );
        compared += 1;
    }
    assert!(compared > 100, "compared only {compared} relation files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_incremental_is_refused_where_unavailable() {
    use pgkeep_engine::backup::IncrementalMethod;
    let pg = PgCluster::builder(PgVersion::V15).start().expect("cluster");
    let (_repo_dir, repo, cluster) = fresh_repo().await;
    let cfg = conn(&pg);
    take_backup(
        &repo,
        &cluster,
        &cfg,
        &BackupOptions::default(),
        &NoProgress,
    )
    .await
    .expect("full");
    let opts = BackupOptions {
        incremental_method: IncrementalMethod::Server,
        ..BackupOptions::default()
    };
    let err = take_backup(&repo, &cluster, &cfg, &opts, &NoProgress)
        .await
        .expect_err("PG15");
    assert!(err.to_string().contains("PostgreSQL 17"), "{err}");
    assert_eq!(repo.list_backups(&cluster).await.expect("list").len(), 1);
}
