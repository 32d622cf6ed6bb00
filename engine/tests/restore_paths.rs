//! Restore treats a manifest as untrusted input: crafted paths and links must not write
//! outside the target directories, whatever the manifest says and whatever the target holds.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use pgkeep_engine::format::{
    BackupKind, BackupStats, Extent, FileEntry, FileType, Manifest, PgInfo,
};
use pgkeep_engine::restore::materialize::materialize;
use pgkeep_engine::restore::Layout;
use pgkeep_engine::{Chunking, Repository, WriteOptions};

async fn stored(repo: &Repository, data: &[u8]) -> Vec<Extent> {
    let session = repo
        .write_session(WriteOptions::default())
        .await
        .expect("session");
    let s = session
        .store_stream(data, Chunking::from_config(repo.config()))
        .await
        .expect("store");
    session.finish().await.expect("finish");
    s.extents
}

fn file(path: &str, file_type: FileType, extents: Vec<Extent>, link: &str) -> FileEntry {
    FileEntry {
        tablespace: 0,
        path: path.as_bytes().to_vec(),
        file_type,
        mode: if file_type == FileType::Regular {
            0o600
        } else {
            0o700
        },
        size: extents.iter().map(Extent::len).sum(),
        mtime: 0,
        link_target: link.as_bytes().to_vec(),
        extents,
    }
}

fn manifest(files: Vec<FileEntry>) -> Manifest {
    Manifest {
        backup_id: "crafted".into(),
        cluster: "main".into(),
        kind: BackupKind::Full,
        parent: None,
        references: Vec::new(),
        label: "crafted".into(),
        start_time_us: 0,
        stop_time_us: 0,
        postgres: Some(PgInfo {
            system_id: 1,
            version_num: 150_000,
            timeline: 1,
            start_lsn: 0,
            stop_lsn: 0,
            checkpoint_lsn: 0,
            wal_segment_size: 16 << 20,
        }),
        tablespaces: Vec::new(),
        attachments: Vec::new(),
        stats: BackupStats::default(),
        files,
        properties: Vec::new(),
    }
}

fn layout(root: &Path) -> Layout {
    Layout {
        pgdata: root.join("pgdata"),
        tablespaces: HashMap::new(),
    }
}

/// Everything under `dir`, as relative paths.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).expect("below").display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_paths_and_links_are_refused() {
    let b = local();
    let repo = init(&b).await;
    let extents = stored(&repo, b"evil payload").await;
    let root = tempfile::tempdir().expect("tmp");
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).expect("outside");

    for (path, ft, link) in [
        ("../outside/escaped", FileType::Regular, ""),
        ("/tmp/absolute-escape", FileType::Regular, ""),
        ("base/../../outside/escaped", FileType::Regular, ""),
        ("", FileType::Regular, ""),
        ("base/evil-link", FileType::Symlink, "/etc"),
        ("pg_tblspc/16400", FileType::Symlink, "/etc"),
    ] {
        let target = tempfile::tempdir_in(root.path()).expect("target");
        let m = manifest(vec![file(
            path,
            ft,
            if ft == FileType::Regular {
                extents.clone()
            } else {
                Vec::new()
            },
            link,
        )]);
        let err = materialize(&repo, &m, &layout(target.path()), 2, false)
            .await
            .expect_err(path);
        assert!(
            err.to_string().contains("refusing") || err.to_string().contains("no location"),
            "{path}: {err}"
        );
        assert!(
            tree(&outside).is_empty(),
            "{path} wrote outside: {:?}",
            tree(&outside)
        );
    }

    // A target prepared with a symlink where the backup has a directory: nothing is written
    // through it.
    let target = tempfile::tempdir_in(root.path()).expect("target");
    let pgdata = target.path().join("pgdata");
    std::fs::create_dir(&pgdata).expect("pgdata");
    std::os::unix::fs::symlink(&outside, pgdata.join("base")).expect("link");
    let m = manifest(vec![file(
        "base/1/1234",
        FileType::Regular,
        extents.clone(),
        "",
    )]);
    let err = materialize(&repo, &m, &layout(target.path()), 2, true)
        .await
        .expect_err("through a symlink");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(tree(&outside).is_empty(), "{:?}", tree(&outside));

    // A tablespace file without a location for its tablespace.
    let mut f = file(
        "PG_15_202209061/5/16500",
        FileType::Regular,
        extents.clone(),
        "",
    );
    f.tablespace = 16400;
    let target = tempfile::tempdir_in(root.path()).expect("target");
    let err = materialize(&repo, &manifest(vec![f]), &layout(target.path()), 2, false)
        .await
        .expect_err("unmapped tablespace");
    assert!(err.to_string().contains("tablespace 16400"), "{err}");

    // And the well-formed case writes exactly what it says, where it says.
    let target = tempfile::tempdir_in(root.path()).expect("target");
    let m = manifest(vec![
        file("base", FileType::Directory, Vec::new(), ""),
        file("./base/1", FileType::Directory, Vec::new(), ""),
        file("base/1/1234", FileType::Regular, extents, ""),
    ]);
    let done = materialize(&repo, &m, &layout(target.path()), 2, false)
        .await
        .expect("restore");
    assert_eq!(done.files, 1);
    assert_eq!(
        std::fs::read(target.path().join("pgdata/base/1/1234")).expect("file"),
        b"evil payload"
    );
    assert!(tree(&outside).is_empty());
}

/// Manifests whose entries collide, or lead through one of the backup's own links: refused
/// before anything is written, and nothing lands outside the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_and_linked_entries_are_refused() {
    let b = local();
    let repo = init(&b).await;
    let extents = stored(&repo, b"evil payload").await;
    let root = tempfile::tempdir().expect("tmp");
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).expect("outside");
    let outside_s = outside.to_str().expect("utf-8").to_owned();
    let reg = |p: &str| file(p, FileType::Regular, extents.clone(), "");
    let dir = |p: &str| file(p, FileType::Directory, Vec::new(), "");
    let link = |p: &str, to: &str| file(p, FileType::Symlink, Vec::new(), to);

    let cases: Vec<(&str, Vec<FileEntry>, &str)> = vec![
        (
            "one file twice",
            vec![dir("base"), reg("base/1234"), reg("base/1234")],
            "twice",
        ),
        (
            "one file under two spellings",
            vec![dir("base"), reg("base/1234"), reg("./base//1234")],
            "twice",
        ),
        (
            "a file and a directory of one name",
            vec![dir("base"), dir("base/1234"), reg("base/1234")],
            "twice",
        ),
        (
            "a file and a symlink of one name",
            vec![reg("pg_tblspc"), link("pg_tblspc", &outside_s)],
            "twice",
        ),
        (
            "a symlink out, then a file through it",
            vec![
                dir("base"),
                link("base/evil", &outside_s),
                reg("base/evil/escaped"),
            ],
            "below its symbolic link",
        ),
        (
            "a file below a tablespace link",
            vec![
                dir("pg_tblspc"),
                link("pg_tblspc/16400", &outside_s),
                reg("pg_tblspc/16400/escaped"),
            ],
            "below its symbolic link",
        ),
    ];
    for (what, files, expect) in cases {
        let target = tempfile::tempdir_in(root.path()).expect("target");
        let err = materialize(&repo, &manifest(files), &layout(target.path()), 2, false)
            .await
            .expect_err(what);
        assert!(err.to_string().contains(expect), "{what}: {err}");
        assert!(err.to_string().contains("refusing"), "{what}: {err}");
        assert!(tree(&outside).is_empty(), "{what}: wrote outside");
        assert!(
            tree(&target.path().join("pgdata")).is_empty(),
            "{what}: wrote before refusing: {:?}",
            tree(target.path())
        );
    }
}

/// A file whose declared size is far beyond its content (2^62 bytes): restore writes what
/// the extents hold, allocates nothing of the declared size, and fails naming the
/// difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_declared_size_is_refused_without_allocating_it() {
    let b = local();
    let repo = init(&b).await;
    let extents = stored(&repo, b"evil payload").await;
    let target = tempfile::tempdir().expect("target");
    let mut f = file("PG_VERSION", FileType::Regular, extents, "");
    f.size = 1 << 62;
    let err = materialize(&repo, &manifest(vec![f]), &layout(target.path()), 2, false)
        .await
        .expect_err("huge size");
    assert!(
        err.to_string()
            .contains(&format!("wrote 12 bytes, the backup lists {}", 1u64 << 62)),
        "{err}"
    );
}

/// Device files, FIFOs and hard links have no representation in a manifest: a manifest
/// whose file type byte says anything but file, directory or symlink does not decode, so
/// restore never sees one.
#[test]
fn manifests_cannot_carry_devices_fifos_or_hard_links() {
    let m = manifest(vec![file(
        "base/devnode",
        FileType::Directory,
        Vec::new(),
        "",
    )]);
    let bytes = m.encode();
    assert_eq!(Manifest::decode(&bytes).expect("valid"), m);
    let at = bytes
        .windows(12)
        .position(|w| w == b"base/devnode")
        .expect("path in the encoding")
        + 12;
    assert_eq!(
        bytes[at],
        FileType::Directory as u8,
        "type byte after the path"
    );
    for kind in [3u8, 4, 6, 0x31, 0xff] {
        let mut bad = bytes.clone();
        bad[at] = kind;
        let err = Manifest::decode(&bad).expect_err("unknown file type");
        assert!(err.to_string().contains("type"), "{kind}: {err}");
    }
}

/// `--delta` into a data directory with a tablespace: the previous restore's
/// `recovery.signal` goes first, files the backup lacks go from its own version directory of
/// the tablespace but not from another version's beside it (`pg_upgrade` leaves one), and
/// modes are limited to what PostgreSQL uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_restore_prunes_only_its_own_tablespace_version() {
    let b = local();
    let repo = init(&b).await;
    let extents = stored(&repo, b"page").await;
    let root = tempfile::tempdir().expect("tmp");
    let ts = root.path().join("ts");
    let mut layout = layout(root.path());
    layout.tablespaces.insert(16400, ts.clone());
    let pgdata = layout.pgdata.clone();
    std::fs::create_dir_all(pgdata.join("pg_tblspc")).expect("pgdata");
    std::os::unix::fs::symlink(&ts, pgdata.join("pg_tblspc/16400")).expect("link");
    std::fs::write(pgdata.join("recovery.signal"), "").expect("signal");
    for (path, text) in [
        ("PG_15_202209061/5/stale", "old"),
        ("PG_16_202307071/5/16500", "the other version's"),
    ] {
        let p = ts.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
        std::fs::write(p, text).expect("file");
    }
    pgkeep_engine::restore::check_tablespace_target(&pgdata, 16400, &ts, true, true)
        .expect("the data directory links the tablespace here");

    let in_ts = |mut f: FileEntry| {
        f.tablespace = 16400;
        f
    };
    let mut data = file("PG_15_202209061/5/16500", FileType::Regular, extents, "");
    data.mode = 0o4777;
    let m = manifest(vec![
        file("pg_tblspc", FileType::Directory, Vec::new(), ""),
        file(
            "pg_tblspc/16400",
            FileType::Symlink,
            Vec::new(),
            "/elsewhere",
        ),
        in_ts(file("PG_15_202209061", FileType::Directory, Vec::new(), "")),
        in_ts(file(
            "PG_15_202209061/5",
            FileType::Directory,
            Vec::new(),
            "",
        )),
        in_ts(data),
    ]);
    let done = materialize(&repo, &m, &layout, 2, true)
        .await
        .expect("restore");
    assert_eq!(done.removed, 1);
    assert_eq!(
        tree(&ts),
        [
            "PG_15_202209061",
            "PG_15_202209061/5",
            "PG_15_202209061/5/16500",
            "PG_16_202307071",
            "PG_16_202307071/5",
            "PG_16_202307071/5/16500",
        ]
    );
    assert!(!pgdata.join("recovery.signal").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode(&ts.join("PG_15_202209061/5/16500")), 0o640);
    assert_eq!(mode(&ts.join("PG_15_202209061/5")), 0o700);
}

/// A tablespace directory that is not empty is refused without `--delta`; with it, at the
/// tablespace's original location, unless the data directory already uses it (a link, or its
/// `tablespace_map` from a restore never started): otherwise it may be the source server's
/// own, in use. A location the tablespace was mapped to is the caller's choice.
#[test]
fn a_delta_restore_refuses_a_tablespace_directory_it_does_not_own() {
    use pgkeep_engine::restore::check_tablespace_target;
    let root = tempfile::tempdir().expect("tmp");
    let pgdata = root.path().join("pgdata");
    let ts = root.path().join("live-ts");
    std::fs::create_dir_all(pgdata.join("pg_tblspc")).expect("pgdata");
    std::fs::create_dir_all(ts.join("PG_15_202209061")).expect("ts");

    let err = check_tablespace_target(&pgdata, 16400, &ts, true, false).expect_err("not empty");
    assert!(err.to_string().contains("not empty"), "{err}");
    let err = check_tablespace_target(&pgdata, 16400, &ts, true, true).expect_err("not ours");
    assert!(
        err.to_string().contains("--tablespace-map 16400=DIR"),
        "{err}"
    );
    // Mapped there explicitly: the caller's choice.
    check_tablespace_target(&pgdata, 16400, &ts, false, true).expect("mapped");
    // Linked elsewhere: still not ours.
    let other = root.path().join("other");
    std::fs::create_dir(&other).expect("other");
    let link = pgdata.join("pg_tblspc/16400");
    std::os::unix::fs::symlink(&other, &link).expect("link");
    assert!(check_tablespace_target(&pgdata, 16400, &ts, true, true).is_err());
    std::fs::remove_file(&link).expect("unlink");
    std::os::unix::fs::symlink(&ts, &link).expect("link");
    check_tablespace_target(&pgdata, 16400, &ts, true, true).expect("linked");
    // A restore never started has no link yet, only its tablespace_map.
    std::fs::remove_file(&link).expect("unlink");
    let map = pgdata.join("tablespace_map");
    std::fs::write(&map, format!("16400 {}\n", other.display())).expect("map");
    assert!(check_tablespace_target(&pgdata, 16400, &ts, true, true).is_err());
    std::fs::write(&map, format!("16400 {}\n", ts.display())).expect("map");
    check_tablespace_target(&pgdata, 16400, &ts, true, true).expect("in tablespace_map");
    // An empty or absent directory is fine either way.
    check_tablespace_target(&pgdata, 16401, &root.path().join("absent"), true, false)
        .expect("absent");
    check_tablespace_target(&pgdata, 16401, &other, true, true).expect("empty");
}

/// `--delta` leaves `standby.signal` and `recovery.signal` alone when it refuses the directory
/// (here a `pg_wal` that is a symbolic link, as `initdb -X` makes it: a stopped standby
/// restarted afterwards must still be a standby), and removes them once it starts writing, so
/// that a restore failing halfway leaves no directory a server would start recovering from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_restore_unmarks_recovery_only_once_it_writes() {
    let b = local();
    let repo = init(&b).await;
    let root = tempfile::tempdir().expect("tmp");
    let layout = layout(root.path());
    let pgdata = layout.pgdata.clone();
    let waldir = root.path().join("waldir");
    std::fs::create_dir_all(&pgdata).expect("pgdata");
    std::fs::create_dir(&waldir).expect("waldir");
    std::os::unix::fs::symlink(&waldir, pgdata.join("pg_wal")).expect("link");
    for signal in ["standby.signal", "recovery.signal"] {
        std::fs::write(pgdata.join(signal), "").expect("signal");
    }
    let extents = stored(&repo, b"page").await;
    let m = manifest(vec![
        file("pg_wal", FileType::Directory, Vec::new(), ""),
        file("PG_VERSION", FileType::Regular, extents, ""),
    ]);
    let err = materialize(&repo, &m, &layout, 2, true)
        .await
        .expect_err("a symlinked pg_wal");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(pgdata.join("standby.signal").exists());
    assert!(pgdata.join("recovery.signal").exists());

    // A restore that fails halfway: a chunk the repository does not have.
    std::fs::remove_file(pgdata.join("pg_wal")).expect("unlink");
    let other = local();
    let elsewhere = init(&other).await;
    let missing = stored(&elsewhere, b"not in this repository").await;
    let m = manifest(vec![file("base_file", FileType::Regular, missing, "")]);
    materialize(&repo, &m, &layout, 2, true)
        .await
        .expect_err("a missing chunk");
    assert!(!pgdata.join("standby.signal").exists());
    assert!(!pgdata.join("recovery.signal").exists());
}

/// A second restore into a directory another one is writing is refused before it writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_being_restored_into_is_not_restored_into_again() {
    let b = local();
    let repo = init(&b).await;
    let extents = stored(&repo, b"page").await;
    let root = tempfile::tempdir().expect("tmp");
    let layout = layout(root.path());
    std::fs::create_dir(&layout.pgdata).expect("pgdata");
    let other = std::fs::File::open(&layout.pgdata).expect("open");
    rustix::fs::flock(&other, rustix::fs::FlockOperation::LockExclusive)
        .expect("the other restore's lock");
    let m = manifest(vec![file("PG_VERSION", FileType::Regular, extents, "")]);
    let err = materialize(&repo, &m, &layout, 2, true)
        .await
        .expect_err("locked");
    assert!(err.to_string().contains("another restore"), "{err}");
    assert!(tree(&layout.pgdata).is_empty());
    drop(other);
    materialize(&repo, &m, &layout, 2, true)
        .await
        .expect("restored once the other is done");
    assert_eq!(tree(&layout.pgdata), ["PG_VERSION"]);
}

/// `--tablespace-map` for an OID the backup does not have is refused (a typo would leave the
/// real tablespace at its original location); a known one is placed where the map says.
#[test]
fn a_tablespace_map_naming_an_unknown_oid_is_refused() {
    use pgkeep_engine::format::{Tablespace, TimelineId};
    use pgkeep_engine::restore::{tablespace_layout, Plan, RecoveryTarget};
    let mut m = manifest(Vec::new());
    m.tablespaces = vec![Tablespace {
        oid: 16400,
        location: "/srv/ts".into(),
    }];
    let plan = Plan {
        manifest: m,
        target: RecoveryTarget::End,
        timeline: TimelineId(1),
        first_segment: String::new(),
        last_segment: String::new(),
        expected_stop: None,
        path: Vec::new(),
        archive_end_time: None,
    };
    let pgdata = Path::new("/restore/pgdata");
    let typo = HashMap::from([(16401, "/restore/ts".into())]);
    let err = tablespace_layout(&plan, pgdata, &typo).expect_err("unknown OID");
    assert!(
        err.to_string().contains("no tablespace 16401")
            && err.to_string().contains("16400 (/srv/ts)"),
        "{err}"
    );
    let right = HashMap::from([(16400, "/restore/ts".into())]);
    let layout = tablespace_layout(&plan, pgdata, &right).expect("layout");
    assert_eq!(layout.tablespaces[&16400], Path::new("/restore/ts"));
    let layout = tablespace_layout(&plan, pgdata, &HashMap::new()).expect("layout");
    assert_eq!(layout.tablespaces[&16400], Path::new("/srv/ts"));
}
