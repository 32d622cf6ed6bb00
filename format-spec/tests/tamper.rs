//! Every altered byte of every sealed object kind is detected, and no decoder panics on
//! truncated or random input.

use pgkeep_format::{
    layout, open_object, pack, seal_object, IndexSegment, Kind, Manifest, MasterKey, PackWriter,
    RepoConfig, RepoId, RepoKeys,
};

fn keys() -> RepoKeys {
    RepoKeys::derive(RepoId([1; 16]), &MasterKey::from_bytes([2; 32]))
}

/// Small xorshift generator: deterministic "random" bytes without a dependency.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

#[test]
fn every_flipped_byte_of_an_object_fails_to_open() {
    let k = keys();
    let config = RepoConfig::new(RepoId([1; 16]), 5).encode();
    for level in [0, 3] {
        let obj = seal_object(&k, Kind::Config, layout::CONFIG, [9; 24], &config, level);
        for i in 0..obj.len() {
            let mut bad = obj.clone();
            bad[i] ^= 0x80;
            assert!(
                open_object(&k, Kind::Config, layout::CONFIG, &bad, 1 << 20).is_err(),
                "flip at {i} (level {level}) went unnoticed"
            );
        }
        // Truncation at any length, and the wrong name or kind.
        for n in 0..obj.len() {
            assert!(open_object(&k, Kind::Config, layout::CONFIG, &obj[..n], 1 << 20).is_err());
        }
        assert!(open_object(&k, Kind::Config, "config2", &obj, 1 << 20).is_err());
        assert!(open_object(&k, Kind::Index, layout::CONFIG, &obj, 1 << 20).is_err());
    }
}

#[test]
fn objects_of_another_repository_or_key_are_refused() {
    let k = keys();
    let obj = seal_object(&k, Kind::Config, layout::CONFIG, [9; 24], b"x", 0);
    let other_repo = RepoKeys::derive(RepoId([7; 16]), &MasterKey::from_bytes([2; 32]));
    assert!(open_object(&other_repo, Kind::Config, layout::CONFIG, &obj, 1 << 20).is_err());
    let other_key = RepoKeys::derive(RepoId([1; 16]), &MasterKey::from_bytes([3; 32]));
    let err =
        open_object(&other_key, Kind::Config, layout::CONFIG, &obj, 1 << 20).expect_err("refused");
    assert!(err.to_string().contains("master key"), "{err}");
}

#[test]
fn every_flipped_byte_of_a_pack_is_detected_by_its_reader_or_its_id() {
    let k = keys();
    let data = noise(3, 2000);
    let id = k.chunk_id(&data);
    let mut w = PackWriter::new(k.key_id(), 4096);
    w.push(id, data.len() as u32, &k.seal_chunk(&id, [4; 24], &data, 3));
    let p = w.finish(&k, [5; 24]);
    let e = p.entries[0];
    for i in 0..p.bytes.len() {
        let mut bad = p.bytes.clone();
        bad[i] ^= 0x01;
        // The pack id (hash of the bytes) always changes.
        assert_ne!(pgkeep_format::PackId::of_bytes(&bad), p.id);
        let whole = pack::read_pack(&k, &bad);
        let unit = &bad[e.offset as usize..(e.offset + e.stored_len) as usize];
        let chunk = k.open_chunk(&id, unit, 1 << 20);
        let in_chunk = (e.offset as usize..(e.offset + e.stored_len) as usize).contains(&i);
        if in_chunk {
            assert!(
                chunk.is_err(),
                "flip at {i} inside the chunk went unnoticed"
            );
            assert!(
                k.open_chunk_authenticated(&id, unit, 1 << 20).is_err(),
                "flip at {i} inside the chunk went unnoticed by the base read"
            );
        } else if i >= pgkeep_format::envelope::HEADER_LEN {
            assert!(
                whole.is_err(),
                "flip at {i} in the table of contents went unnoticed"
            );
        }
    }
}

/// A chunk whose content does not hash to its id (only a writer's bug could store one: the
/// unit is authenticated under the id) is refused as data, and read as a difference's base
/// as the authenticated bytes it is: whoever reads a difference back checks its base (by the
/// id, or by the restored file's checksum), so the check is not repeated there (SPEC §5.1).
#[test]
fn a_chunk_that_does_not_hash_to_its_id_is_refused_as_data_but_opens_as_a_base() {
    let k = keys();
    let (data, other) = (noise(5, 3000), noise(6, 3000));
    let id = k.chunk_id(&other);
    let unit = k.seal_chunk(&id, [4; 24], &data, 1);
    let err = k
        .open_chunk(&id, &unit, 1 << 20)
        .expect_err("content does not match id");
    assert!(
        matches!(err, pgkeep_format::FormatError::ChunkIdMismatch { .. }),
        "{err}"
    );
    assert_eq!(
        k.open_chunk_authenticated(&id, &unit, 1 << 20)
            .expect("authenticated"),
        data
    );
    // Authentication still binds the unit to its id.
    let wrong = k.chunk_id(&data);
    assert!(k.open_chunk_authenticated(&wrong, &unit, 1 << 20).is_err());
}

#[test]
fn decoders_never_panic_on_noise_or_truncation() {
    let k = keys();
    for seed in 0..300u64 {
        let n = (seed as usize * 37) % 700;
        let buf = noise(seed + 11, n);
        let _ = Manifest::decode(&buf);
        let _ = IndexSegment::decode(&buf);
        let _ = RepoConfig::decode(&buf);
        let _ = pgkeep_format::KeyFile::decode(&buf);
        let _ = pgkeep_format::LockInfo::decode(&buf);
        let _ = pgkeep_format::ClusterBinding::decode(&buf);
        let _ = pack::read_pack(&k, &buf);
        let _ = pgkeep_format::body::decode(buf.clone(), 1 << 16, "noise");
        let _ = pgkeep_format::Header::decode(&buf);
    }
}

#[test]
fn mangled_manifests_decode_to_errors_or_values_never_panics() {
    let k = keys();
    let c = pgkeep_format::ChunkRef {
        id: k.chunk_id(b"a"),
        raw_len: 100,
    };
    let m = Manifest {
        backup_id: "b1".into(),
        cluster: "main".into(),
        kind: pgkeep_format::BackupKind::Full,
        parent: None,
        references: vec![],
        label: String::new(),
        start_time_us: 1,
        stop_time_us: 2,
        postgres: None,
        tablespaces: vec![],
        attachments: vec![],
        stats: Default::default(),
        files: vec![pgkeep_format::FileEntry {
            tablespace: 0,
            path: b"f".to_vec(),
            file_type: pgkeep_format::FileType::Regular,
            mode: 0o600,
            size: 150,
            mtime: 0,
            link_target: vec![],
            extents: vec![
                pgkeep_format::Extent::whole(c),
                pgkeep_format::Extent::Zeros { len: 50 },
            ],
        }],
        properties: vec![],
    };
    let bytes = m.encode();
    assert_eq!(Manifest::decode(&bytes).expect("round trip"), m);
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[i] ^= flip;
            if let Ok(back) = Manifest::decode(&bad) {
                // Whatever decodes must re-encode to a manifest that decodes the same way.
                assert_eq!(Manifest::decode(&back.encode()).expect("re-decodes"), back);
            }
        }
        assert!(
            Manifest::decode(&bytes[..i]).is_err(),
            "truncation at {i} accepted"
        );
    }
}

#[test]
fn forged_list_counts_do_not_allocate() {
    // An index segment claiming 2^32-1 packs in 4 bytes.
    let err = IndexSegment::decode(&u32::MAX.to_le_bytes()).expect_err("refused");
    assert!(err.to_string().contains("claims"), "{err}");
}

/// Found by the `manifest` fuzz target: the smallest file entries (37 bytes) were checked
/// against a 41-byte minimum, so a valid manifest of small entries failed to decode.
#[test]
fn manifests_of_minimal_file_entries_round_trip() {
    let empty_file = pgkeep_format::FileEntry {
        tablespace: 0,
        path: Vec::new(),
        file_type: pgkeep_format::FileType::Regular,
        mode: 0,
        size: 0,
        mtime: 0,
        link_target: Vec::new(),
        extents: Vec::new(),
    };
    let m = manifest_of(vec![empty_file.clone(), empty_file]);
    assert_eq!(Manifest::decode(&m.encode()).expect("decodes"), m);
}

/// Found by the `manifest` fuzz target: a chunk table naming one id twice (with two
/// lengths) decoded but could not round-trip. An id names one content: refused.
#[test]
fn a_chunk_table_with_a_repeated_id_is_refused() {
    let k = keys();
    let id = k.chunk_id(b"x");
    let a = pgkeep_format::ChunkRef { id, raw_len: 10 };
    let b = pgkeep_format::ChunkRef {
        id: k.chunk_id(b"y"),
        raw_len: 20,
    };
    let file = |c| pgkeep_format::FileEntry {
        tablespace: 0,
        path: b"f".to_vec(),
        file_type: pgkeep_format::FileType::Regular,
        mode: 0,
        size: 10,
        mtime: 0,
        link_target: Vec::new(),
        extents: vec![pgkeep_format::Extent::Chunk {
            chunk: c,
            offset: 0,
            len: 10,
        }],
    };
    let m = manifest_of(vec![file(a), file(b)]);
    let mut bytes = m.encode();
    // Overwrite the second table entry's id with the first's.
    let first = bytes
        .windows(32)
        .position(|w| w == id.as_bytes())
        .expect("first id");
    let second = bytes
        .windows(32)
        .position(|w| w == b.id.as_bytes())
        .expect("second id");
    bytes.copy_within(first..first + 32, second);
    let err = Manifest::decode(&bytes).expect_err("repeated id");
    assert!(err.to_string().contains("twice"), "{err}");
}

/// An XOR extent is checked against both of its chunks: a slice past the end of either is
/// refused, and one inside both round-trips with both chunks in the table.
#[test]
fn xor_extents_are_checked_against_both_chunks() {
    let k = keys();
    let base = pgkeep_format::ChunkRef {
        id: k.chunk_id(b"base"),
        raw_len: 16,
    };
    let delta = pgkeep_format::ChunkRef {
        id: k.chunk_id(b"delta"),
        raw_len: 8,
    };
    let file = |base_offset, delta_offset| pgkeep_format::FileEntry {
        tablespace: 0,
        path: b"f".to_vec(),
        file_type: pgkeep_format::FileType::Regular,
        mode: 0,
        size: 8,
        mtime: 0,
        link_target: Vec::new(),
        extents: vec![pgkeep_format::Extent::Xor {
            base,
            base_offset,
            delta,
            delta_offset,
            len: 8,
        }],
    };
    let good = manifest_of(vec![file(8, 0)]);
    assert_eq!(good.chunk_refs(), vec![base, delta]);
    assert_eq!(Manifest::decode(&good.encode()).expect("decodes"), good);
    for (b, d, past) in [(9, 0, base.id), (0, 1, delta.id)] {
        let err = Manifest::decode(&manifest_of(vec![file(b, d)]).encode())
            .expect_err("a slice past its chunk");
        let text = err.to_string();
        assert!(
            text.contains("runs past the end of chunk") && text.contains(&past.to_string()),
            "{text}"
        );
    }
}

/// Zero runs whose lengths overflow a u64 when added are refused, not wrapped: a file of
/// `u64::MAX` bytes must not decode from two runs of 2^63.
#[test]
fn extents_that_overflow_when_added_are_refused() {
    let file = pgkeep_format::FileEntry {
        tablespace: 0,
        path: b"f".to_vec(),
        file_type: pgkeep_format::FileType::Regular,
        mode: 0,
        size: u64::MAX,
        mtime: 0,
        link_target: Vec::new(),
        extents: vec![
            pgkeep_format::Extent::Zeros { len: 1 << 63 },
            pgkeep_format::Extent::Zeros { len: 1 << 63 },
        ],
    };
    let err = Manifest::decode(&manifest_of(vec![file]).encode()).expect_err("overflow");
    assert!(err.to_string().contains("2^64"), "{err}");
}

/// A segment size of 0 (or any size PostgreSQL cannot have) is refused where it is decoded:
/// restore divides LSNs by it to name segments.
#[test]
fn a_manifest_with_an_impossible_segment_size_is_refused() {
    for size in [0, 3 << 20, 2 << 30] {
        let mut m = manifest_of(vec![]);
        m.postgres = Some(pgkeep_format::PgInfo {
            system_id: 1,
            version_num: 150_000,
            timeline: 1,
            start_lsn: 0,
            stop_lsn: 0,
            checkpoint_lsn: 0,
            wal_segment_size: size,
        });
        let err = Manifest::decode(&m.encode()).expect_err("refused");
        assert!(err.to_string().contains("wal_segment_size"), "{err}");
        m.postgres.as_mut().expect("set").wal_segment_size = 16 << 20;
        assert_eq!(Manifest::decode(&m.encode()).expect("decodes"), m);
    }
}

/// A `files` backup manifest holding `files`, every other field empty.
fn manifest_of(files: Vec<pgkeep_format::FileEntry>) -> Manifest {
    Manifest {
        backup_id: String::new(),
        cluster: String::new(),
        kind: pgkeep_format::BackupKind::Files,
        parent: None,
        references: vec![],
        label: String::new(),
        start_time_us: 0,
        stop_time_us: 0,
        postgres: None,
        tablespaces: vec![],
        attachments: vec![],
        stats: Default::default(),
        files,
        properties: vec![],
    }
}
