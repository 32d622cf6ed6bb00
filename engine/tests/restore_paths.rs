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
