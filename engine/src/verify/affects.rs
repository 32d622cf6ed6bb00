//! The pure part of `verify`: checking one pack's bytes, mapping bad chunks to the files that
//! use them, and how far WAL recovery reaches past missing or damaged segments. No I/O, so
//! every rule here is unit-tested.

use std::collections::{BTreeMap, BTreeSet};

use pgkeep_format::{
    pack::read_pack, ChunkId, Extent, FileEntry, Manifest, PackEntry, PackId, RepoConfig, RepoKeys,
};
use rand::Rng;

/// A file's path as it appears in a restored data directory: tablespace files under
/// `pg_tblspc/<oid>/`.
pub fn display_path(f: &FileEntry) -> String {
    let path = String::from_utf8_lossy(&f.path);
    if f.tablespace == 0 {
        path.into_owned()
    } else {
        format!("pg_tblspc/{}/{path}", f.tablespace)
    }
}

fn uses_bad<K: Ord + Copy>(
    extents: &[Extent],
    bad: &impl Fn(&ChunkId) -> Option<K>,
    into: &mut BTreeSet<K>,
) {
    for chunk in extents.iter().flat_map(Extent::chunks) {
        if let Some(k) = bad(&chunk.id) {
            into.insert(k);
        }
    }
}

/// The files (and attachments, as `name (attachment)`) of `manifest` whose content uses a
/// chunk that `bad` maps to a key (a problem), grouped by key, in manifest order, each file
/// once per key. A file using chunks of two bad packs is listed under both.
pub fn damaged_files<K: Ord + Copy>(
    manifest: &Manifest,
    bad: impl Fn(&ChunkId) -> Option<K>,
) -> BTreeMap<K, Vec<String>> {
    let mut out: BTreeMap<K, Vec<String>> = BTreeMap::new();
    let mut keys = BTreeSet::new();
    let mut add = |keys: &mut BTreeSet<K>, name: String| {
        for k in std::mem::take(keys) {
            out.entry(k).or_default().push(name.clone());
        }
    };
    for f in &manifest.files {
        uses_bad(&f.extents, &bad, &mut keys);
        if !keys.is_empty() {
            add(&mut keys, display_path(f));
        }
    }
    for a in &manifest.attachments {
        uses_bad(&a.extents, &bad, &mut keys);
        if !keys.is_empty() {
            add(&mut keys, format!("{} (attachment)", a.name));
        }
    }
    out
}

/// What reading one whole pack found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackCheck {
    /// BLAKE3 of the bytes equals the pack's name.
    pub hash_ok: bool,
    /// Why the table of contents could not be read, if it could not.
    pub toc_error: Option<String>,
    /// Chunks (of those the index places in this pack) that cannot be opened, and why.
    pub bad_chunks: Vec<(ChunkId, String)>,
    /// Chunks opened.
    pub chunks: u64,
}

impl PackCheck {
    pub fn is_clean(&self) -> bool {
        self.hash_ok && self.toc_error.is_none() && self.bad_chunks.is_empty()
    }
}

/// Checks a downloaded pack: its hash against its name (no key needed), its table of
/// contents, and each chunk the index places in it (authenticated decryption, decompression,
/// the keyed chunk id recomputed, the length the index records). Each chunk is judged on its
/// own, so a flipped byte condemns the chunk it falls in, not the whole pack.
pub fn check_pack(keys: &RepoKeys, id: &PackId, bytes: &[u8], entries: &[PackEntry]) -> PackCheck {
    let mut check = PackCheck {
        hash_ok: PackId::of_bytes(bytes) == *id,
        toc_error: read_pack(keys, bytes).err().map(|e| e.to_string()),
        ..PackCheck::default()
    };
    for e in entries {
        let start = e.offset as usize;
        let Some(unit) = bytes.get(start..start + e.stored_len as usize) else {
            check.bad_chunks.push((
                e.chunk_id,
                format!(
                    "chunk {} at offset {} runs past the pack's end ({} bytes)",
                    e.chunk_id,
                    e.offset,
                    bytes.len()
                ),
            ));
            continue;
        };
        check.chunks += 1;
        match keys.open_chunk(&e.chunk_id, unit, u64::from(RepoConfig::MAX_CHUNK_SIZE)) {
            Ok(data) if data.len() as u64 == u64::from(e.raw_len) => {}
            Ok(data) => check.bad_chunks.push((
                e.chunk_id,
                format!(
                    "chunk {} has {} bytes, the index says {}",
                    e.chunk_id,
                    data.len(),
                    e.raw_len
                ),
            )),
            Err(err) => check.bad_chunks.push((
                e.chunk_id,
                format!("chunk {} at offset {}: {err}", e.chunk_id, e.offset),
            )),
        }
    }
    check
}

/// Chooses which of `n` objects to read: all at 100 percent or more, none at 0, else each
/// independently with probability `percent / 100` (so every object has the same chance, and
/// repeated sampled runs cover the repository over time).
pub fn sample(n: usize, percent: f64, rng: &mut impl Rng) -> Vec<bool> {
    if percent >= 100.0 {
        vec![true; n]
    } else if percent <= 0.0 || percent.is_nan() {
        vec![false; n]
    } else {
        (0..n).map(|_| rng.gen_bool(percent / 100.0)).collect()
    }
}

/// Where the usable WAL from a backup's first segment ends, on one timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRun {
    /// The first segment at or after the start that is missing or damaged.
    pub first_unusable: u64,
    /// Whether that segment is stored but damaged (else it is missing).
    pub damaged: bool,
    /// The next usable segment after it, if any: the unusable run is
    /// `first_unusable .. next_usable - 1`.
    pub next_usable: Option<u64>,
    /// Whether any segment (usable or not) is stored after `first_unusable`: the run ends in
    /// a hole, not at the end of the archive.
    pub stored_after: bool,
}

impl SegmentRun {
    /// The run ends because of damage or a hole, not because the archive ends there (WAL
    /// not archived yet is not damage).
    pub fn is_break(&self) -> bool {
        self.damaged || self.stored_after
    }
}

/// Follows consecutive stored, undamaged segments (numbers) from `start`.
pub fn segment_run(stored: &BTreeSet<u64>, damaged: &BTreeSet<u64>, start: u64) -> SegmentRun {
    let usable = |s: &u64| stored.contains(s) && !damaged.contains(s);
    let mut s = start;
    while usable(&s) {
        s += 1;
    }
    SegmentRun {
        first_unusable: s,
        damaged: damaged.contains(&s) && stored.contains(&s),
        next_usable: stored
            .range(s + 1..)
            .copied()
            .find(|x| !damaged.contains(x)),
        stored_after: stored.range(s + 1..).next().is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgkeep_format::{
        Attachment, BackupKind, BackupStats, ChunkRef, FileType, MasterKey, PackWriter, RepoId,
    };
    use rand::SeedableRng;

    fn chunk(n: u8) -> ChunkRef {
        ChunkRef {
            id: ChunkId([n; 32]),
            raw_len: 8192,
        }
    }

    fn file(tablespace: u32, path: &str, chunks: &[u8]) -> FileEntry {
        FileEntry {
            tablespace,
            path: path.as_bytes().to_vec(),
            file_type: FileType::Regular,
            mode: 0o600,
            size: 8192 * chunks.len() as u64,
            mtime: 0,
            link_target: vec![],
            extents: chunks.iter().map(|c| Extent::whole(chunk(*c))).collect(),
        }
    }

    fn manifest(files: Vec<FileEntry>, attachments: Vec<Attachment>) -> Manifest {
        Manifest {
            backup_id: "b".into(),
            cluster: "main".into(),
            kind: BackupKind::Full,
            parent: None,
            references: vec![],
            label: String::new(),
            start_time_us: 0,
            stop_time_us: 0,
            postgres: None,
            tablespaces: vec![],
            attachments,
            stats: BackupStats::default(),
            files,
            properties: vec![],
        }
    }

    #[test]
    fn bad_chunks_map_to_the_files_using_them() {
        let m = manifest(
            vec![
                file(0, "base/5/1259", &[1, 2]),
                file(0, "base/5/1260", &[3]),
                file(16384, "PG_15_202209061/5/16400", &[2, 4]),
                file(0, "global/pg_control", &[5]),
            ],
            vec![Attachment {
                name: "backup_label".into(),
                size: 8192,
                extents: vec![Extent::whole(chunk(4)), Extent::Zeros { len: 10 }],
            }],
        );
        // Chunk 2 is in pack "A" (problem 0), chunk 4 in pack "B" (problem 1).
        let bad = |c: &ChunkId| match c.0[0] {
            2 => Some(0usize),
            4 => Some(1usize),
            _ => None,
        };
        let got = damaged_files(&m, bad);
        assert_eq!(
            got.get(&0).expect("problem 0"),
            &vec![
                "base/5/1259".to_owned(),
                "pg_tblspc/16384/PG_15_202209061/5/16400".to_owned()
            ]
        );
        assert_eq!(
            got.get(&1).expect("problem 1"),
            &vec![
                "pg_tblspc/16384/PG_15_202209061/5/16400".to_owned(),
                "backup_label (attachment)".to_owned()
            ]
        );
        assert_eq!(got.len(), 2);
        assert!(damaged_files(&m, |_| None::<usize>).is_empty());
    }

    fn keys() -> RepoKeys {
        RepoKeys::derive(RepoId([7; 16]), &MasterKey::from_bytes([9; 32]))
    }

    /// A pack with three chunks, its bytes and entries.
    fn pack(keys: &RepoKeys) -> pgkeep_format::FinishedPack {
        let mut w = PackWriter::new(keys.key_id(), 1 << 16);
        for n in 0u8..3 {
            let data = vec![n; 1000 + usize::from(n)];
            let id = keys.chunk_id(&data);
            let unit = keys.seal_chunk(&id, [n; 24], &data, 3);
            w.push(id, data.len() as u32, &unit);
        }
        w.finish(keys, [42; 24])
    }

    #[test]
    fn a_clean_pack_checks_clean() {
        let k = keys();
        let p = pack(&k);
        let c = check_pack(&k, &p.id, &p.bytes, &p.entries);
        assert!(c.is_clean(), "{c:?}");
        assert_eq!(c.chunks, 3);
    }

    #[test]
    fn a_flipped_byte_condemns_only_its_chunk() {
        let k = keys();
        let mut p = pack(&k);
        let second = p.entries[1];
        p.bytes[second.offset as usize + 30] ^= 0x01;
        let c = check_pack(&k, &p.id, &p.bytes, &p.entries);
        assert!(!c.hash_ok);
        assert!(c.toc_error.is_none());
        assert_eq!(c.bad_chunks.len(), 1, "{c:?}");
        assert_eq!(c.bad_chunks[0].0, second.chunk_id);
        assert!(c.bad_chunks[0].1.contains("authentication"), "{c:?}");
    }

    #[test]
    fn a_truncated_pack_fails_hash_toc_and_chunks_past_its_end() {
        let k = keys();
        let p = pack(&k);
        let cut = &p.bytes[..p.entries[2].offset as usize + 10];
        let c = check_pack(&k, &p.id, cut, &p.entries);
        assert!(!c.hash_ok);
        assert!(c.toc_error.is_some());
        assert_eq!(c.bad_chunks.len(), 1);
        assert!(c.bad_chunks[0].1.contains("runs past"), "{c:?}");
        assert_eq!(c.chunks, 2);
    }

    #[test]
    fn a_damaged_toc_leaves_chunks_readable() {
        let k = keys();
        let mut p = pack(&k);
        let n = p.bytes.len();
        p.bytes[n - 20] ^= 0x80;
        let c = check_pack(&k, &p.id, &p.bytes, &p.entries);
        assert!(!c.hash_ok);
        assert!(c.toc_error.is_some());
        assert!(c.bad_chunks.is_empty());
    }

    #[test]
    fn an_index_length_disagreeing_with_the_chunk_is_reported() {
        let k = keys();
        let p = pack(&k);
        let mut entries = p.entries.clone();
        entries[0].raw_len += 1;
        let c = check_pack(&k, &p.id, &p.bytes, &entries);
        assert_eq!(c.bad_chunks.len(), 1);
        assert!(c.bad_chunks[0].1.contains("the index says"), "{c:?}");
    }

    #[test]
    fn sampling_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!(sample(50, 100.0, &mut rng).iter().all(|b| *b));
        assert!(sample(50, 0.0, &mut rng).iter().all(|b| !*b));
        let some = sample(10_000, 10.0, &mut rng);
        let n = some.iter().filter(|b| **b).count();
        assert!((700..1300).contains(&n), "{n} of 10000 at 10%");
    }

    fn set(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    #[test]
    fn runs_end_at_the_archive_end_holes_and_damage() {
        let stored = set(&[3, 4, 5, 7, 8, 9]);
        // From 3: continuous to 5, then segment 6 is missing with more after: a hole.
        let r = segment_run(&stored, &set(&[]), 3);
        assert_eq!(r.first_unusable, 6);
        assert!(!r.damaged && r.stored_after && r.is_break());
        assert_eq!(r.next_usable, Some(7));
        // From 7: to the end of the archive; not a break.
        let r = segment_run(&stored, &set(&[]), 7);
        assert_eq!(r.first_unusable, 10);
        assert!(!r.is_break() && r.next_usable.is_none());
        // A damaged segment 8, with 9 after it.
        let r = segment_run(&stored, &set(&[8]), 7);
        assert_eq!(
            (r.first_unusable, r.damaged, r.next_usable),
            (8, true, Some(9))
        );
        // The last segment damaged: a break though nothing follows.
        let r = segment_run(&stored, &set(&[9]), 7);
        assert!(r.damaged && r.is_break() && r.next_usable.is_none());
        // Start before the archive begins.
        let r = segment_run(&stored, &set(&[]), 1);
        assert_eq!((r.first_unusable, r.next_usable), (1, Some(3)));
        // Damage and a hole in a row: the unusable run goes to the next usable segment.
        let r = segment_run(&stored, &set(&[5]), 3);
        assert_eq!((r.first_unusable, r.next_usable), (5, Some(7)));
    }
}
