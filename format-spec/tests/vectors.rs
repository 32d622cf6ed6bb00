//! Committed test vectors: fixed keys, salts and inputs, and the exact bytes format 1 produces.
//!
//! Any change to these bytes is a format change: it fails here until SPEC.md, the format
//! version and the vectors are updated together. To regenerate after a deliberate change:
//! `PGKEEP_BLESS_VECTORS=1 cargo test -p pgkeep-format --test vectors`.

use std::path::PathBuf;

use pgkeep_format::manifest::{
    Attachment, BackupKind, BackupStats, ChunkRef, Extent, FileEntry, FileType, Manifest, PgInfo,
    Tablespace,
};
use pgkeep_format::{
    layout, open_object, pack, seal_object, BackupPin, ClusterBinding, ClusterName, IndexId,
    IndexSegment, IndexedPack, KdfParams, KeyFile, KeyFileId, KeyFileMeta, Kind, LockInfo,
    LockMode, MasterKey, PackWriter, RepoConfig, RepoId, RepoKeys, FORMAT_MINOR,
};
use serde_json::{json, Value};

const MASTER: [u8; 32] = [0x42; 32];
const REPO: [u8; 16] = [0x17; 16];

fn keys() -> RepoKeys {
    RepoKeys::derive(RepoId(REPO), &MasterKey::from_bytes(MASTER))
}

fn salt(n: u8) -> [u8; 24] {
    [n; 24]
}

/// Compares `actual` with the committed vector `name`, or writes it when blessing.
fn check(name: &str, actual: Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("vectors")
        .join(format!("{name}.json"));
    if std::env::var_os("PGKEEP_BLESS_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&actual).expect("serializes") + "\n";
        std::fs::write(&path, text).expect("writes vector");
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (bless with PGKEEP_BLESS_VECTORS=1)",
            path.display()
        )
    });
    let expected: Value = serde_json::from_str(&text).expect("vector is JSON");
    assert_eq!(actual, expected, "format bytes changed for vector {name}");
}

fn hex_field(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(v[field].as_str().expect("hex field")).expect("valid hex")
}

fn committed(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("vectors")
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("vector exists")).expect("JSON")
}

#[test]
fn key_derivation() {
    let k = keys();
    check(
        "derivation",
        json!({
            "description": "master key and repository id to master key id and chunk ids",
            "master_key": hex::encode(MASTER),
            "repo_id": hex::encode(REPO),
            "master_key_id": k.key_id().to_hex(),
            "chunk_id_of_pgkeep": k.chunk_id(b"pgkeep").to_hex(),
            "chunk_id_of_8192_zero_bytes": k.chunk_id(&[0u8; 8192]).to_hex(),
        }),
    );
}

#[test]
fn key_file() {
    let params = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    let kf = KeyFile::create(
        KeyFileMeta {
            id: KeyFileId([0xa1; 8]),
            repo_id: RepoId(REPO),
            kdf: params,
            salt: [0x5a; 32],
            created: 1_795_000_000,
            label: "vector key".into(),
        },
        b"correct horse battery staple",
        &MasterKey::from_bytes(MASTER),
    )
    .expect("creates");
    let bytes = kf.encode();
    check(
        "keyfile",
        json!({
            "description": "key file wrapping the master key under Argon2id(passphrase)",
            "passphrase": "correct horse battery staple",
            "key_file_id": "a1a1a1a1a1a1a1a1",
            "argon2id": {"memory_kib": 64, "iterations": 1, "parallelism": 1, "salt": hex::encode([0x5a; 32])},
            "created": 1_795_000_000,
            "label": "vector key",
            "master_key": hex::encode(MASTER),
            "object": hex::encode(&bytes),
        }),
    );
    let v = committed("keyfile");
    let decoded = KeyFile::decode(&hex_field(&v, "object")).expect("committed key file decodes");
    assert_eq!(
        decoded
            .unlock(b"correct horse battery staple")
            .expect("unlocks")
            .as_bytes(),
        &MASTER
    );
}

#[test]
fn config_object() {
    let k = keys();
    // Explicit values, so changing a default does not change the vector.
    let config = RepoConfig {
        repo_id: RepoId(REPO),
        created: 1_795_000_000,
        pack_target_size: 32 << 20,
        compression_level: 3,
        cdc_min: 256 << 10,
        cdc_avg: 1 << 20,
        cdc_max: 4 << 20,
        page_chunk_size: 1 << 20,
    };
    let obj = seal_object(
        &k,
        Kind::Config,
        layout::CONFIG,
        salt(1),
        &config.encode(),
        0,
    );
    check(
        "config-object",
        json!({
            "description": "repository config sealed as object 'config', body uncompressed",
            "name": layout::CONFIG,
            "salt": hex::encode(salt(1)),
            "plaintext": hex::encode(config.encode()),
            "object": hex::encode(&obj),
        }),
    );
    let v = committed("config-object");
    let plain = open_object(
        &k,
        Kind::Config,
        layout::CONFIG,
        &hex_field(&v, "object"),
        1 << 20,
    )
    .expect("opens");
    assert_eq!(RepoConfig::decode(&plain).expect("decodes"), config);
}

/// Objects written by format 1.0 (minor version 0 in the header) stay readable: minor versions
/// only add. This vector is frozen; it is never re-blessed.
#[test]
fn format_1_0_objects_open() {
    let v = committed("config-object-v1.0");
    let bytes = hex_field(&v, "object");
    assert_eq!(bytes[5], 0, "the frozen vector is a 1.0 object");
    let plain = open_object(&keys(), Kind::Config, layout::CONFIG, &bytes, 1 << 20).expect("opens");
    assert_eq!(plain, hex_field(&v, "plaintext"));
}

/// Objects written by format 1.1 (minor version 1) stay readable. Frozen like the 1.0 vector.
#[test]
fn format_1_1_objects_open() {
    use pgkeep_format::wal::open_wal_object;
    let v = committed("wal-object-v1.1");
    let bytes = hex_field(&v, "object");
    assert_eq!(bytes[5], 1, "the frozen vector is a 1.1 object");
    let name = v["name"].as_str().expect("name");
    let (_, file) = open_wal_object(&keys(), Kind::WalSegment, name, &bytes).expect("opens");
    assert_eq!(file, hex_field(&v, "file"));
}

/// Segments written by format 1.4 and earlier are of kind 10 with a SHA-256 checksum; a
/// reader asking by the segment's name (which implies kind 15 since 1.5) takes them, and
/// their meta says SHA-256. Frozen: the `wal-object` vector of 1.4.
#[test]
fn format_1_4_segments_open() {
    use pgkeep_format::wal::open_wal_object;
    use pgkeep_format::{ChecksumAlgorithm, WalFileName};
    let v = committed("wal-object-v1.4");
    let bytes = hex_field(&v, "object");
    assert_eq!((bytes[5], bytes[6]), (4, 10), "a 1.4 object of kind 10");
    let object = v["name"].as_str().expect("name");
    let name = WalFileName::parse(object.rsplit('/').next().expect("file name")).expect("name");
    assert_eq!(name.object_kind(), Kind::WalSegmentBlake3);
    let (meta, file) = open_wal_object(&keys(), name.object_kind(), object, &bytes).expect("opens");
    assert_eq!(meta.checksum.algorithm, ChecksumAlgorithm::Sha256);
    assert_eq!(meta.checksum.digest, [0x5a; 32]);
    assert_eq!(file, hex_field(&v, "file"));
    // Kind 10 and 15 stand in for each other, and for nothing else.
    assert!(open_wal_object(&keys(), Kind::WalHistory, object, &bytes).is_err());
}

#[test]
fn pin_object() {
    let k = keys();
    let cluster = ClusterName::new("main").expect("valid");
    let pin = BackupPin {
        backup_id: "20261121T053200Z".into(),
        pinned_us: 1_795_000_000_000_000,
        note: "before the schema migration".into(),
    };
    let name = layout::pin(&cluster, &pin.backup_id);
    check(
        "pin-object",
        json!({
            "description": "a backup pin (format 1.2, salt 0d..)",
            "name": name,
            "object": hex::encode(seal_object(&k, Kind::Pin, &name, salt(13), &pin.encode(), 0)),
        }),
    );
    let v = committed("pin-object");
    let plain =
        open_object(&k, Kind::Pin, &name, &hex_field(&v, "object"), 1 << 20).expect("opens");
    assert_eq!(BackupPin::decode(&plain).expect("decodes"), pin);
}

#[test]
fn chunk_units() {
    let k = keys();
    let text = b"pgkeep chunk ".repeat(100);
    let id = k.chunk_id(&text);
    let raw = k.seal_chunk(&id, salt(2), &text, 0);
    check(
        "chunk-unit-raw",
        json!({
            "description": "a chunk sealed without compression; name in the associated data is the raw 32-byte id",
            "plaintext": hex::encode(&text),
            "chunk_id": id.to_hex(),
            "salt": hex::encode(salt(2)),
            "unit": hex::encode(&raw),
        }),
    );
    // zstd output may legitimately differ between zstd releases, so the compressed vector is
    // checked by decoding the committed bytes only.
    let name = "chunk-unit-zstd";
    if std::env::var_os("PGKEEP_BLESS_VECTORS").is_some() {
        let z = k.seal_chunk(&id, salt(3), &text, 3);
        check(
            name,
            json!({
                "description": "the same chunk sealed with zstd level 3 (checked by decoding only)",
                "plaintext": hex::encode(&text),
                "chunk_id": id.to_hex(),
                "salt": hex::encode(salt(3)),
                "unit": hex::encode(&z),
            }),
        );
    }
    let v = committed(name);
    let unit = hex_field(&v, "unit");
    assert!(
        unit.len() < text.len() / 4,
        "committed zstd vector is compressed"
    );
    assert_eq!(k.open_chunk(&id, &unit, 1 << 20).expect("opens"), text);
}

#[test]
fn pack_and_index() {
    let k = keys();
    let a = b"first chunk".to_vec();
    let b = vec![0xeeu8; 300];
    let mut w = PackWriter::new(k.key_id(), 1024);
    for (data, s) in [(&a, 4u8), (&b, 5u8)] {
        let id = k.chunk_id(data);
        w.push(id, data.len() as u32, &k.seal_chunk(&id, salt(s), data, 0));
    }
    let p = w.finish(&k, salt(6));
    let idx = IndexSegment {
        packs: vec![IndexedPack {
            pack_id: p.id,
            pack_size: p.bytes.len() as u64,
            entries: p.entries.clone(),
        }],
    };
    let index_id = IndexId([0x33; 32]);
    let index_name = layout::index_segment(&index_id);
    let index_obj = seal_object(&k, Kind::Index, &index_name, salt(7), &idx.encode(), 0);
    check(
        "pack",
        json!({
            "description": "a pack of two raw chunks (salts 04.., 05..) and its table of contents (salt 06.., zstd 3 allowed to fall back to raw)",
            "chunks": [hex::encode(&a), hex::encode(&b)],
            "pack_id": p.id.to_hex(),
            "pack_name": layout::pack(&p.id),
            "object": hex::encode(&p.bytes),
        }),
    );
    check(
        "index-object",
        json!({
            "description": "an index segment listing the pack above, sealed as an object with salt 07..",
            "name": index_name,
            "object": hex::encode(&index_obj),
        }),
    );
    let v = committed("pack");
    let bytes = hex_field(&v, "object");
    let entries = pack::read_pack(&k, &bytes).expect("committed pack reads");
    assert_eq!(entries, p.entries);
    let e = entries[1];
    let unit = &bytes[e.offset as usize..(e.offset + e.stored_len) as usize];
    assert_eq!(
        k.open_chunk(&e.chunk_id, unit, 1 << 20)
            .expect("chunk opens"),
        b
    );
    let v = committed("index-object");
    let plain = open_object(
        &k,
        Kind::Index,
        &index_name,
        &hex_field(&v, "object"),
        1 << 20,
    )
    .expect("opens");
    assert_eq!(IndexSegment::decode(&plain).expect("decodes"), idx);
}

pub fn sample_manifest(k: &RepoKeys) -> Manifest {
    let c1 = ChunkRef {
        id: k.chunk_id(b"one"),
        raw_len: 8192,
    };
    let c2 = ChunkRef {
        id: k.chunk_id(b"two"),
        raw_len: 16384,
    };
    Manifest {
        backup_id: "20261121T053200Z".into(),
        cluster: "main".into(),
        kind: BackupKind::Incremental,
        parent: Some("20261120T000000Z".into()),
        references: vec!["20261120T000000Z".into()],
        label: "nightly".into(),
        start_time_us: 1_795_000_000_000_000,
        stop_time_us: 1_795_000_060_000_000,
        postgres: Some(PgInfo {
            system_id: 7_300_000_000_000_000_001,
            version_num: 150_010,
            timeline: 1,
            start_lsn: 0x0000_0001_2800_0028,
            stop_lsn: 0x0000_0001_2900_0100,
            checkpoint_lsn: 0x0000_0001_2800_0060,
            wal_segment_size: 16 << 20,
        }),
        tablespaces: vec![Tablespace {
            oid: 16_390,
            location: "/srv/ts1".into(),
        }],
        attachments: vec![Attachment {
            name: "backup_label".into(),
            size: 100,
            extents: vec![Extent::Chunk {
                chunk: c1,
                offset: 0,
                len: 100,
            }],
        }],
        stats: BackupStats {
            logical_bytes: 40_960,
            stored_bytes: 2_000,
            new_bytes: 900,
            chunks: 2,
            new_chunks: 1,
        },
        files: vec![
            FileEntry {
                tablespace: 0,
                path: b"base".to_vec(),
                file_type: FileType::Directory,
                mode: 0o700,
                size: 0,
                mtime: 1_795_000_000,
                link_target: vec![],
                extents: vec![],
            },
            FileEntry {
                tablespace: 0,
                path: b"base/5/16384".to_vec(),
                file_type: FileType::Regular,
                mode: 0o600,
                size: 49_152,
                mtime: 1_795_000_001,
                link_target: vec![],
                extents: vec![
                    Extent::whole(c1),
                    Extent::Zeros { len: 8192 },
                    Extent::whole(c2),
                    Extent::Chunk {
                        chunk: c1,
                        offset: 0,
                        len: 8192,
                    },
                    Extent::Xor {
                        base: c2,
                        base_offset: 8192,
                        delta: c1,
                        delta_offset: 0,
                        len: 8192,
                    },
                ],
            },
            FileEntry {
                tablespace: 0,
                path: b"pg_tblspc/16390".to_vec(),
                file_type: FileType::Symlink,
                mode: 0o777,
                size: 0,
                mtime: 1_795_000_000,
                link_target: b"/srv/ts1".to_vec(),
                extents: vec![],
            },
        ],
        properties: vec![("pgkeep_version".into(), "0.1.0".into())],
    }
}

#[test]
fn manifest_object() {
    let k = keys();
    let m = sample_manifest(&k);
    let cluster = ClusterName::new("main").expect("valid");
    let name = layout::manifest(&cluster, &m.backup_id);
    let obj = seal_object(&k, Kind::Manifest, &name, salt(8), &m.encode(), 0);
    check(
        "manifest-object",
        json!({
            "description": "an incremental backup manifest with a directory, a file of 5 extents (one zero run, one XOR of two chunk slices) and a tablespace symlink, sealed with salt 08..",
            "name": name,
            "plaintext": hex::encode(m.encode()),
            "object": hex::encode(&obj),
        }),
    );
    let v = committed("manifest-object");
    let plain =
        open_object(&k, Kind::Manifest, &name, &hex_field(&v, "object"), 1 << 20).expect("opens");
    assert_eq!(Manifest::decode(&plain).expect("decodes"), m);
}

#[test]
fn lock_and_cluster_objects() {
    let k = keys();
    let cluster = ClusterName::new("main").expect("valid");
    let binding = ClusterBinding {
        name: "main".into(),
        system_id: 7_300_000_000_000_000_001,
        pg_version_num: 180_001,
        created: 1_795_000_000,
    };
    let lock = LockInfo {
        mode: LockMode::Exclusive,
        hostname: "db1".into(),
        pid: 4242,
        operation: "prune".into(),
        created_us: 1_795_000_000_000_000,
        refreshed_us: 1_795_000_030_000_000,
    };
    let lock_name = layout::lock(&pgkeep_format::LockId([0x44; 16]));
    let cluster_name = layout::cluster_binding(&cluster);
    check(
        "lock-and-cluster-objects",
        json!({
            "description": "a cluster binding (salt 09..) and an exclusive lock (salt 0a..)",
            "cluster_name": cluster_name,
            "cluster_object": hex::encode(seal_object(&k, Kind::Cluster, &cluster_name, salt(9), &binding.encode(), 0)),
            "lock_name": lock_name,
            "lock_object": hex::encode(seal_object(&k, Kind::Lock, &lock_name, salt(10), &lock.encode(), 0)),
        }),
    );
    let v = committed("lock-and-cluster-objects");
    let plain = open_object(
        &k,
        Kind::Cluster,
        &cluster_name,
        &hex_field(&v, "cluster_object"),
        1 << 20,
    )
    .expect("opens");
    assert_eq!(ClusterBinding::decode(&plain).expect("decodes"), binding);
    let plain = open_object(
        &k,
        Kind::Lock,
        &lock_name,
        &hex_field(&v, "lock_object"),
        1 << 20,
    )
    .expect("opens");
    assert_eq!(LockInfo::decode(&plain).expect("decodes"), lock);
}

#[test]
fn wal_objects() {
    use pgkeep_format::wal::{open_wal_object, seal_wal_object};
    use pgkeep_format::{
        ChecksumAlgorithm, FileChecksum, Lsn, RelFile, WalEvent, WalEventKind, WalFileName,
        WalMeta, WalSummary,
    };
    let k = keys();
    let cluster = ClusterName::new("main").expect("valid");
    let name = WalFileName::parse("000000010000000000000003").expect("segment name");
    let object = name.object_name(&cluster);
    // A tiny stand-in for a segment: the format does not interpret the file's bytes.
    let file: Vec<u8> = (0..4096u32).map(|i| (i % 7) as u8).collect();
    let meta = WalMeta {
        size: file.len() as u64,
        checksum: FileChecksum {
            algorithm: ChecksumAlgorithm::Blake3,
            digest: [0x5a; 32],
        },
        segment: Some(pgkeep_format::SegmentFacts {
            system_id: 7_300_000_000_000_000_001,
            segment_size: 16 << 20,
            pg_major: 18,
        }),
        summary: Some(WalSummary {
            records: 3,
            end: Lsn(0x0300_0ff8),
            head_unknown: false,
            events: vec![
                WalEvent {
                    kind: WalEventKind::Commit,
                    lsn: Lsn(0x0300_0028),
                    end: Lsn(0x0300_0100),
                    time_us: 1_795_000_000_123_456,
                    xid: 740,
                    name: String::new(),
                    dropped: vec![RelFile {
                        tablespace: 1663,
                        database: 5,
                        relation: 16384,
                    }],
                },
                WalEvent {
                    kind: WalEventKind::RestorePoint,
                    lsn: Lsn(0x0300_0100),
                    end: Lsn(0x0300_0160),
                    time_us: 1_795_000_001_000_000,
                    xid: 0,
                    name: "before_drop".into(),
                    dropped: vec![],
                },
            ],
            tail: Some((Lsn(0x0300_0ff8), vec![1, 2, 3, 4])),
            stopped: None,
        }),
    };
    assert_eq!(name.object_kind(), Kind::WalSegmentBlake3);
    let sealed = seal_wal_object(
        &k,
        Kind::WalSegmentBlake3,
        &object,
        &meta,
        (salt(11), salt(12)),
        &file,
        3,
    )
    .expect("seals");
    check(
        "wal-object",
        json!({
            "description": "a WAL segment object (kind 15, BLAKE3 checksum): meta unit (salt 0b..) with a summary, data unit (salt 0c..) at zstd 3",
            "name": object,
            "file": hex::encode(&file),
            "object": hex::encode(&sealed),
        }),
    );
    let v = committed("wal-object");
    let (m, f) = open_wal_object(
        &k,
        Kind::WalSegmentBlake3,
        &object,
        &hex_field(&v, "object"),
    )
    .expect("opens");
    assert_eq!((m, f), (meta, file));
    // The two units are bound to their roles: a wrong name fails authentication.
    assert!(open_wal_object(
        &k,
        Kind::WalSegmentBlake3,
        "clusters/main/wal/00000001/000000010000000000000004",
        &sealed
    )
    .is_err());
}

#[test]
fn dump_object() {
    use pgkeep_format::{DumpFormat, DumpManifest, DumpSource, RowFilter};
    let k = keys();
    let cluster = ClusterName::new("main").expect("valid");
    let a = ChunkRef {
        id: k.chunk_id(b"dump chunk a"),
        raw_len: 12,
    };
    let m = DumpManifest {
        dump_id: "20261121T053200Z".into(),
        cluster: "main".into(),
        source: DumpSource::PgDump,
        format: DumpFormat::Custom,
        database: "shop".into(),
        selection: vec!["--table=public.orders".into()],
        row_filters: vec![RowFilter {
            table: "public.orders".into(),
            condition: "tenant_id = 42".into(),
            stream: "rows/0".into(),
            rows: 1,
        }],
        server_version_num: 180_001,
        tool_version: "pg_dump (PostgreSQL) 18.1".into(),
        start_time_us: 1_795_000_000_000_000,
        stop_time_us: 1_795_000_001_000_000,
        stats: BackupStats {
            logical_bytes: 16,
            stored_bytes: 100,
            new_bytes: 100,
            chunks: 2,
            new_chunks: 1,
        },
        streams: vec![
            Attachment {
                name: "dump".into(),
                size: 12,
                extents: vec![Extent::whole(a)],
            },
            Attachment {
                name: "rows/0".into(),
                size: 4,
                extents: vec![Extent::Chunk {
                    chunk: a,
                    offset: 0,
                    len: 4,
                }],
            },
        ],
        properties: vec![("pgkeep_version".into(), "0.1.0".into())],
    };
    let name = layout::dump(&cluster, &m.dump_id);
    check(
        "dump-object",
        json!({
            "description": "a dump manifest (salt 0e.., body uncompressed)",
            "name": name,
            "plaintext": hex::encode(m.encode()),
            "object": hex::encode(seal_object(&k, Kind::Dump, &name, salt(14), &m.encode(), 0)),
        }),
    );
    let v = committed("dump-object");
    let bytes = hex_field(&v, "object");
    assert_eq!(bytes[5], FORMAT_MINOR, "written by this format version");
    assert_eq!(bytes[6], 14, "kind Dump");
    let plain = open_object(&k, Kind::Dump, &name, &bytes, 1 << 20).expect("opens");
    assert_eq!(DumpManifest::decode(&plain).expect("decodes"), m);
    // A dump manifest cannot be passed off as a backup manifest.
    assert!(open_object(&k, Kind::Manifest, &name, &bytes, 1 << 20).is_err());
}

/// A `pg_dumpall` dump (source 1: globals and one custom archive per database) and a
/// directory-format dump (format 3: one stream per file), as format 1.3 and later write them.
#[test]
fn dump_all_and_directory_objects() {
    use pgkeep_format::{DumpFormat, DumpManifest, DumpSource};
    let k = keys();
    let cluster = ClusterName::new("main").expect("valid");
    let chunk = |text: &[u8]| ChunkRef {
        id: k.chunk_id(text),
        raw_len: text.len() as u32,
    };
    let stream = |name: &str, c: ChunkRef| Attachment {
        name: name.into(),
        size: u64::from(c.raw_len),
        extents: vec![Extent::whole(c)],
    };
    let base = DumpManifest {
        dump_id: "20261121T053200Z".into(),
        cluster: "main".into(),
        source: DumpSource::PgDumpAll,
        format: DumpFormat::Custom,
        database: "postgres".into(),
        selection: Vec::new(),
        row_filters: Vec::new(),
        server_version_num: 180_001,
        tool_version: "pg_dump (PostgreSQL) 18.1".into(),
        start_time_us: 1_795_000_000_000_000,
        stop_time_us: 1_795_000_001_000_000,
        stats: BackupStats {
            logical_bytes: 33,
            stored_bytes: 200,
            new_bytes: 200,
            chunks: 3,
            new_chunks: 3,
        },
        streams: vec![
            stream("globals.sql", chunk(b"CREATE ROLE app;")),
            stream("db/postgres", chunk(b"PGDMP postgres")),
            stream("db/shop", chunk(b"PGDMP shop")),
        ],
        properties: vec![("pgkeep_version".into(), "0.1.0".into())],
    };
    let directory = DumpManifest {
        dump_id: "20261121T053300Z".into(),
        source: DumpSource::PgDump,
        format: DumpFormat::Directory,
        database: "shop".into(),
        streams: vec![
            stream("dir/3302.dat", chunk(b"1\t42\n")),
            stream("dir/toc.dat", chunk(b"PGDMP toc")),
        ],
        ..base.clone()
    };
    for (vector, m, salt_byte, source, format) in [
        ("dump-all-object", &base, 15, 1, 0),
        ("dump-directory-object", &directory, 16, 0, 3),
    ] {
        let name = layout::dump(&cluster, &m.dump_id);
        check(
            vector,
            json!({
                "description": format!("a dump manifest of source {source}, format {format} (format 1.4, body uncompressed)"),
                "name": name,
                "plaintext": hex::encode(m.encode()),
                "object": hex::encode(seal_object(&k, Kind::Dump, &name, salt(salt_byte), &m.encode(), 0)),
            }),
        );
        let v = committed(vector);
        let plain =
            open_object(&k, Kind::Dump, &name, &hex_field(&v, "object"), 1 << 20).expect("opens");
        // The source and format bytes follow the id and cluster strings.
        let at = 4 + m.dump_id.len() + 4 + m.cluster.len();
        assert_eq!((plain[at], plain[at + 1]), (source, format), "{vector}");
        assert_eq!(&DumpManifest::decode(&plain).expect("decodes"), m);
    }
}

/// Manifests written by format 1.3 (minor version 3, no XOR extents) stay readable. Frozen
/// like the 1.0 vector.
#[test]
fn format_1_3_manifests_open() {
    let v = committed("manifest-object-v1.3");
    let bytes = hex_field(&v, "object");
    assert_eq!(bytes[5], 3, "the frozen vector is a 1.3 object");
    let name = v["name"].as_str().expect("name");
    let plain = open_object(&keys(), Kind::Manifest, name, &bytes, 1 << 20).expect("opens");
    let m = Manifest::decode(&plain).expect("decodes");
    let file = m
        .files
        .iter()
        .find(|f| f.size == 40_960)
        .expect("the regular file");
    assert_eq!(file.extents.len(), 4);
    assert!(file
        .extents
        .iter()
        .all(|e| !matches!(e, Extent::Xor { .. })));
}

/// Objects written by format 1.2 (minor version 2) stay readable. Frozen like the 1.0 vector.
#[test]
fn format_1_2_objects_open() {
    let v = committed("pin-object-v1.2");
    let bytes = hex_field(&v, "object");
    assert_eq!(bytes[5], 2, "the frozen vector is a 1.2 object");
    let name = v["name"].as_str().expect("name");
    let plain = open_object(&keys(), Kind::Pin, name, &bytes, 1 << 20).expect("opens");
    let pin = BackupPin::decode(&plain).expect("decodes");
    assert_eq!(pin.note, "before the schema migration");
}
