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
