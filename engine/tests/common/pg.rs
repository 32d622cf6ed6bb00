//! Helpers for tests against real PostgreSQL servers.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;

use pgkeep_engine::conninfo::{self, ConnConfig};
use pgkeep_engine::format::{ClusterName, FileType, Manifest};
use pgkeep_engine::Repository;
use pgkeep_testkit::pg::PgCluster;

/// A new repository in a temporary directory (kept alive by the returned backend) and the
/// `main` cluster name.
pub async fn fresh_repo() -> (super::Backend, Repository, ClusterName) {
    let b = super::local();
    let repo = super::init(&b).await;
    (b, repo, ClusterName::new("main").expect("cluster name"))
}

/// Connection settings for a test cluster, resolved as a user's would be, without the
/// process environment (tests run in parallel).
pub fn conn(cluster: &PgCluster) -> ConnConfig {
    let params = conninfo::parse(&cluster.connstring()).expect("connstring parses");
    conninfo::resolve(&params, &|_| None, "postgres", None).expect("connstring resolves")
}

/// Writes a backup's files under `dir` as a restore would lay them out: tablespace `oid`
/// under `pg_tblspc/<oid>/` (as directories; this is a check, not a restore).
pub async fn extract(repo: &Repository, m: &Manifest, dir: &Path) {
    for f in &m.files {
        let rel = String::from_utf8(f.path.clone()).expect("utf-8 path");
        assert!(
            !rel.starts_with('/') && !rel.split('/').any(|c| c == ".."),
            "unsafe path {rel}"
        );
        let path = if f.tablespace == 0 {
            dir.join(&rel)
        } else {
            dir.join("pg_tblspc")
                .join(f.tablespace.to_string())
                .join(&rel)
        };
        match f.file_type {
            FileType::Directory => std::fs::create_dir_all(&path).expect("dir"),
            FileType::Symlink => std::fs::create_dir_all(&path).expect("tablespace dir"),
            FileType::Regular => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).expect("parent dir");
                }
                let mut out = tokio::fs::File::create(&path).await.expect("create");
                repo.write_extents(&f.extents, &mut out)
                    .await
                    .expect("restore file");
            }
        }
    }
}

/// Checks the extracted files against PostgreSQL's own backup_manifest, stored with the
/// backup: every listed file exists with its size and checksum. Returns the number checked.
pub async fn verify_against_backup_manifest(repo: &Repository, m: &Manifest, dir: &Path) -> usize {
    let att = m
        .attachment("backup_manifest")
        .expect("backup_manifest stored");
    let mut json = Vec::new();
    repo.write_extents(&att.extents, &mut json)
        .await
        .expect("read backup_manifest");
    let doc: serde_json::Value = serde_json::from_slice(&json).expect("backup_manifest is JSON");
    let files = doc["Files"].as_array().expect("Files");
    for f in files {
        let path = match f.get("Path").and_then(|p| p.as_str()) {
            Some(p) => p.to_owned(),
            None => String::from_utf8(
                hex::decode(f["Encoded-Path"].as_str().expect("path")).expect("hex"),
            )
            .expect("utf-8"),
        };
        let data = std::fs::read(dir.join(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            data.len() as u64,
            f["Size"].as_u64().expect("Size"),
            "{path}: size"
        );
        let algorithm: pgkeep_engine::manifest_checksum::ManifestChecksum = f["Checksum-Algorithm"]
            .as_str()
            .expect("Checksum-Algorithm")
            .parse()
            .expect("a known algorithm");
        let mut digest = algorithm.digest().expect("a checksum");
        digest.update(&data);
        assert_eq!(
            digest.finish(),
            f["Checksum"].as_str().expect("Checksum"),
            "{path}: {algorithm}"
        );
    }
    files.len()
}
