//! Shared set-up for the engine's integration tests: repositories on real backends.
#![allow(dead_code, unreachable_pub)]

use pgkeep_engine::format::{
    BackupKind, BackupStats, FileEntry, FileType, KdfParams, Manifest, SegmentFacts, WalFileName,
    WalMeta,
};
use pgkeep_engine::wal::checksum::file_checksum;
use pgkeep_engine::wal::{PreparedWal, WalArchive};
use pgkeep_engine::{InitOptions, Repository, Store, StoredStream};

pub const PASS: &[u8] = b"test passphrase";

/// Cheap Argon2 parameters: the tests exercise the format, not the KDF's cost.
pub const FAST_KDF: KdfParams = KdfParams {
    memory_kib: 256,
    iterations: 1,
    parallelism: 1,
};

pub fn init_options() -> InitOptions {
    InitOptions {
        kdf: FAST_KDF,
        key_label: "test".into(),
        pack_target_size: 1 << 20,
        compression_level: 3,
    }
}

/// A backend under test: a store and whatever keeps it alive.
pub struct Backend {
    pub name: &'static str,
    pub store: Store,
    /// For local stores: the directory (kept alive by the `TempDir`).
    pub dir: Option<tempfile::TempDir>,
}

pub fn local() -> Backend {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("repo");
    let store = Store::open(path.to_str().expect("utf-8 path"), &[], true).expect("local store");
    Backend {
        name: "file",
        store,
        dir: Some(dir),
    }
}

/// The environment of the loopback S3 server, as `object_store` configuration keys (passed
/// as options, not process environment, so parallel tests cannot interfere).
pub fn s3_options(server: &pgkeep_testkit::S3Server) -> Vec<(String, String)> {
    server
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

pub fn s3() -> Backend {
    let server = pgkeep_testkit::S3Server::shared()
        .expect("S3 test server (run scripts/install-test-deps.sh)");
    let bucket = server.unique_bucket("eng").expect("bucket");
    let url = format!("s3://{bucket}/some/prefix");
    let store = Store::open(&url, &s3_options(server), false).expect("s3 store");
    Backend {
        name: "s3",
        store,
        dir: None,
    }
}

/// The environment of the loopback Azurite server, as `object_store` configuration keys.
pub fn azure_options(server: &pgkeep_testkit::AzuriteServer) -> Vec<(String, String)> {
    server
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

/// A repository location on the loopback Azurite server, opened the way pgkeep opens any
/// `az://` location.
pub fn azure() -> Backend {
    let server = pgkeep_testkit::AzuriteServer::shared()
        .expect("Azurite test server (run scripts/install-test-deps.sh)");
    let container = server.unique_container("eng").expect("container");
    let url = format!("az://{container}/some/prefix");
    let store = Store::open(&url, &azure_options(server), false).expect("azure store");
    Backend {
        name: "azure",
        store,
        dir: None,
    }
}

pub fn backends() -> Vec<Backend> {
    vec![local(), s3(), azure()]
}

pub async fn init(b: &Backend) -> Repository {
    Repository::init(b.store.clone(), PASS, init_options())
        .await
        .expect("init")
}

/// Deterministic pseudo-random bytes; `compressible` mixes in repetition.
pub fn data(n: usize, seed: u64, compressible: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if compressible && x % 4 == 0 {
            out.extend_from_slice(b"PostgreSQL page content ");
        } else {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.truncate(n);
    out
}

/// Sum of the sizes of objects under `prefix`.
pub async fn bytes_under(store: &Store, prefix: &str) -> u64 {
    store
        .list(prefix)
        .await
        .expect("list")
        .iter()
        .map(|o| o.size)
        .sum()
}
pub mod pg;

/// A manifest of kind Files holding `streams` as regular files of the cluster `main`; tests
/// adjust the fields they care about.
pub fn manifest_for(id: &str, streams: &[(&str, &StoredStream)]) -> Manifest {
    Manifest {
        backup_id: id.into(),
        cluster: "main".into(),
        kind: BackupKind::Files,
        parent: None,
        references: vec![],
        label: id.into(),
        start_time_us: 1,
        stop_time_us: 2,
        postgres: None,
        tablespaces: vec![],
        attachments: vec![],
        stats: BackupStats::default(),
        files: streams
            .iter()
            .map(|(name, s)| FileEntry {
                tablespace: 0,
                path: name.as_bytes().to_vec(),
                file_type: FileType::Regular,
                mode: 0o600,
                size: s.size,
                mtime: 0,
                link_target: vec![],
                extents: s.extents.clone(),
            })
            .collect(),
        properties: vec![],
    }
}

/// Reads a stored stream back, checking its length.
pub async fn read_back(repo: &Repository, s: &StoredStream) -> Vec<u8> {
    let mut out = Vec::new();
    let n = repo
        .write_extents(&s.extents, &mut out)
        .await
        .expect("read back");
    assert_eq!(n, s.size);
    out
}

/// `file` as `name`, sealed at `level` with the meta of a stand-in segment of `facts`' cluster
/// (or of a history file): nothing in it is checked.
pub fn prepared_wal(
    archive: &WalArchive,
    name: &str,
    file: &[u8],
    level: i8,
    facts: SegmentFacts,
) -> PreparedWal {
    let name = WalFileName::parse(name).expect("name");
    let meta = WalMeta {
        size: file.len() as u64,
        checksum: file_checksum(name.checksum_algorithm(), file),
        segment: name.segment_part().map(|_| facts),
        summary: None,
    };
    archive.prepare_as_is(name, meta, file, level)
}
