//! `prune`: reclaims the space of chunks no manifest references.
//!
//! Under the repository's exclusive lock (see [`crate::lock`]; no backup or restore runs):
//!
//! 1. Read every backup and dump manifest of every cluster: the live chunk set. A manifest that cannot be
//!    read stops prune, since without it no one can say what is garbage.
//! 2. Read every index segment and list `data/`. Each live chunk gets one location (the copy
//!    in the pack with the highest share of live bytes, so a pack already repacked by an
//!    interrupted run wins over its source). Each pack then is *dead* (no live chunk),
//!    *sparse* (garbage share at or above the repack threshold), or *kept*. Packs present but
//!    in no index segment were left by backups that died before their commit: dead.
//! 3. Copy the live chunk units of sparse packs, still sealed, into new packs (each source
//!    is first checked against its id, the hash of its bytes, so damage is never copied).
//! 4. Write one index segment for every kept and new pack, then delete the old segments,
//!    then the dead and repacked packs.
//!
//! The order makes every interruption safe: until step 4 deletes the old segments they
//! still point at packs that exist; after, the new segment covers every kept chunk; packs are
//! deleted last, and a rerun deletes whatever an interrupted run left, as unindexed packs.
//! Packs indexed but missing from storage are left in the index: that is damage for
//! `verify` to report, not garbage.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use pgkeep_format::pack::{PackEntry, PackWriter};
use pgkeep_format::{
    layout, ChunkId, ClusterName, IndexId, IndexSegment, IndexedPack, LockMode, PackId,
};

use crate::error::{Error, Result};
use crate::lock::LockOptions;
use crate::repository::{random_bytes, Repository};

/// How `prune` runs.
#[derive(Debug, Clone, Copy)]
pub struct PruneOptions {
    /// A pack whose garbage share of chunk bytes reaches this fraction (0.0..=1.0) is
    /// repacked; 1.0 only deletes packs that are wholly garbage.
    pub repack_threshold: f64,
    /// Report what would be done, change nothing (takes no lock).
    pub dry_run: bool,
    pub lock: LockOptions,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            repack_threshold: 0.5,
            dry_run: false,
            lock: LockOptions::default(),
        }
    }
}

/// Space accounting of the chunk store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Pack objects in storage and their bytes (indexed or not).
    pub packs: u64,
    pub pack_bytes: u64,
    pub index_segments: u64,
    /// Sealed bytes of the chunks manifests reference (each chunk once).
    pub referenced_bytes: u64,
    /// Bytes `prune` would free with a repack threshold of 0 (everything not referenced).
    pub reclaimable_bytes: u64,
    /// Packs no index segment lists (left by interrupted backups).
    pub unindexed_packs: u64,
    pub unindexed_bytes: u64,
    /// Packs an index segment lists that are missing from storage (damage).
    pub missing_packs: u64,
}

/// What `prune` did (or would do).
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    pub before: Usage,
    pub deleted_packs: u64,
    pub deleted_bytes: u64,
    pub repacked_packs: u64,
    /// Bytes of the packs written by repacking.
    pub written_bytes: u64,
    pub index_segments_removed: u64,
    pub stale_locks_removed: u64,
    /// Packs that should have been repacked but do not match their id: left alone.
    pub damaged_packs: Vec<String>,
    pub dry_run: bool,
}

impl PruneReport {
    /// Net bytes returned to storage.
    pub fn freed_bytes(&self) -> u64 {
        self.deleted_bytes.saturating_sub(self.written_bytes)
    }
}

/// A pack as the index segments describe it.
#[derive(Debug, Clone)]
struct PackFacts {
    size: u64,
    entries: Vec<PackEntry>,
}

/// The fate of each pack.
#[derive(Debug, Default)]
struct Decisions {
    dead: Vec<PackId>,
    /// Sparse packs and the entries to carry over.
    sparse: Vec<(PackId, Vec<PackEntry>)>,
    kept: Vec<PackId>,
}

/// Chunk ids referenced by any backup manifest or dump manifest of any cluster.
pub async fn live_chunks(repo: &Repository) -> Result<HashSet<ChunkId>> {
    let mut live = HashSet::new();
    for cluster in clusters(repo).await? {
        for id in repo.list_backups(&cluster).await? {
            let m = repo.read_manifest(&cluster, &id).await?;
            live.extend(m.chunk_refs().into_iter().map(|c| c.id));
        }
        // Dumps share the chunk store: their chunks are as live as a backup's.
        for id in repo.list_dumps(&cluster).await? {
            let m = repo.read_dump(&cluster, &id).await?;
            live.extend(m.chunk_refs().into_iter().map(|c| c.id));
        }
    }
    Ok(live)
}

/// The clusters of the repository.
pub async fn clusters(repo: &Repository) -> Result<Vec<ClusterName>> {
    let mut out = Vec::new();
    for dir in repo.store().list_dirs(layout::CLUSTERS_DIR).await? {
        // A directory with a name no cluster may have is not ours; ignore it.
        if let Ok(c) = ClusterName::new(&dir) {
            out.push(c);
        }
    }
    Ok(out)
}

/// Reads every index segment, merging the descriptions of each pack.
async fn read_segments(repo: &Repository) -> Result<(Vec<IndexId>, BTreeMap<PackId, PackFacts>)> {
    let ids = repo.index_segment_ids().await?;
    let segments: Vec<IndexSegment> = futures::stream::iter(ids.clone())
        .map(|id| async move { repo.read_index_segment(&id).await })
        .buffered(8)
        .try_collect()
        .await?;
    let mut packs: BTreeMap<PackId, PackFacts> = BTreeMap::new();
    for seg in segments {
        for p in seg.packs {
            let facts = packs.entry(p.pack_id).or_insert_with(|| PackFacts {
                size: p.pack_size,
                entries: Vec::new(),
            });
            if facts.entries.is_empty() {
                facts.entries = p.entries;
            } else {
                // Listed again by another segment (an interrupted prune leaves two).
                let known: HashSet<ChunkId> = facts.entries.iter().map(|e| e.chunk_id).collect();
                facts.entries.extend(
                    p.entries
                        .into_iter()
                        .filter(|e| !known.contains(&e.chunk_id)),
                );
            }
        }
    }
    Ok((ids, packs))
}

/// Picks one location per live chunk and decides each indexed, present pack's fate.
fn decide(
    packs: &BTreeMap<PackId, PackFacts>,
    present: &HashMap<PackId, u64>,
    live: &HashSet<ChunkId>,
    threshold: f64,
) -> Decisions {
    let share = |f: &PackFacts| -> f64 {
        let live_bytes: u64 = f
            .entries
            .iter()
            .filter(|e| live.contains(&e.chunk_id))
            .map(|e| u64::from(e.stored_len))
            .sum();
        live_bytes as f64 / f.size.max(1) as f64
    };
    let shares: HashMap<PackId, f64> = packs.iter().map(|(id, f)| (*id, share(f))).collect();
    let mut home: HashMap<ChunkId, PackId> = HashMap::new();
    for (id, f) in packs {
        if !present.contains_key(id) {
            continue;
        }
        for e in f.entries.iter().filter(|e| live.contains(&e.chunk_id)) {
            home.entry(e.chunk_id)
                .and_modify(|cur| {
                    let better = (shares[id], std::cmp::Reverse(packs[id].size), *id)
                        > (shares[cur], std::cmp::Reverse(packs[cur].size), *cur);
                    if better {
                        *cur = *id;
                    }
                })
                .or_insert(*id);
        }
    }
    let mut d = Decisions::default();
    for (id, f) in packs {
        if !present.contains_key(id) {
            // Missing: kept in the index so `verify` reports it.
            d.kept.push(*id);
            continue;
        }
        let carried: Vec<PackEntry> = f
            .entries
            .iter()
            .filter(|e| home.get(&e.chunk_id) == Some(id))
            .copied()
            .collect();
        let total: u64 = f.entries.iter().map(|e| u64::from(e.stored_len)).sum();
        let live_bytes: u64 = carried.iter().map(|e| u64::from(e.stored_len)).sum();
        if carried.is_empty() {
            d.dead.push(*id);
        } else if live_bytes < total && (total - live_bytes) as f64 / total as f64 >= threshold {
            d.sparse.push((*id, carried));
        } else {
            d.kept.push(*id);
        }
    }
    d
}

fn usage(
    packs: &BTreeMap<PackId, PackFacts>,
    present: &HashMap<PackId, u64>,
    live: &HashSet<ChunkId>,
    segments: usize,
) -> Usage {
    let mut u = Usage {
        packs: present.len() as u64,
        pack_bytes: present.values().sum(),
        index_segments: segments as u64,
        ..Usage::default()
    };
    let d = decide(packs, present, live, 0.0);
    for (id, carried) in &d.sparse {
        let kept: u64 = carried.iter().map(|e| u64::from(e.stored_len)).sum();
        u.referenced_bytes += kept;
        u.reclaimable_bytes += present[id].saturating_sub(kept);
    }
    for id in &d.kept {
        if present.contains_key(id) {
            // Wholly live: nothing to reclaim (headers and tables of contents stay).
            u.referenced_bytes += packs[id]
                .entries
                .iter()
                .map(|e| u64::from(e.stored_len))
                .sum::<u64>();
        }
    }
    for id in &d.dead {
        u.reclaimable_bytes += present[id];
    }
    for (id, size) in present {
        if !packs.contains_key(id) {
            u.unindexed_packs += 1;
            u.unindexed_bytes += size;
            u.reclaimable_bytes += size;
        }
    }
    u.missing_packs = packs.keys().filter(|id| !present.contains_key(id)).count() as u64;
    u
}

/// Packs in storage, by id, with their sizes.
async fn present_packs(repo: &Repository) -> Result<HashMap<PackId, u64>> {
    Ok(repo
        .store()
        .list(layout::DATA_DIR)
        .await?
        .into_iter()
        .filter_map(|o| {
            let id: PackId = o.name.rsplit('/').next()?.parse().ok()?;
            (layout::pack(&id) == o.name).then_some((id, o.size))
        })
        .collect())
}

/// Space accounting without changing anything (for `info`).
pub async fn usage_of(repo: &Repository) -> Result<Usage> {
    let live = live_chunks(repo).await?;
    let (segments, packs) = read_segments(repo).await?;
    let present = present_packs(repo).await?;
    Ok(usage(&packs, &present, &live, segments.len()))
}

/// Runs prune (see the module documentation).
pub async fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    if !(0.0..=1.0).contains(&opts.repack_threshold) {
        return Err(Error::InvalidInput(format!(
            "repack threshold {} is outside 0..=100%",
            opts.repack_threshold * 100.0
        )));
    }
    if opts.dry_run {
        return prune_locked(repo, opts).await;
    }
    let lock = repo.lock(LockMode::Exclusive, "prune", opts.lock).await?;
    let result = prune_locked(repo, opts).await;
    let released = lock.release().await;
    let mut report = result?;
    released?;
    report.stale_locks_removed = repo.remove_stale_locks(opts.lock.stale_after).await?.len() as u64;
    Ok(report)
}

async fn prune_locked(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    let live = live_chunks(repo).await?;
    let (segment_ids, packs) = read_segments(repo).await?;
    let present = present_packs(repo).await?;
    let mut report = PruneReport {
        before: usage(&packs, &present, &live, segment_ids.len()),
        dry_run: opts.dry_run,
        ..PruneReport::default()
    };
    let mut d = decide(&packs, &present, &live, opts.repack_threshold);
    let unindexed: Vec<PackId> = present
        .keys()
        .filter(|id| !packs.contains_key(id))
        .copied()
        .collect();
    if opts.dry_run {
        report.repacked_packs = d.sparse.len() as u64;
        let gone = d.dead.iter().chain(&unindexed);
        report.deleted_packs = gone.clone().count() as u64 + report.repacked_packs;
        report.deleted_bytes = gone
            .chain(d.sparse.iter().map(|(id, _)| id))
            .map(|id| present[id])
            .sum();
        report.written_bytes = d
            .sparse
            .iter()
            .flat_map(|(_, e)| e)
            .map(|e| u64::from(e.stored_len))
            .sum();
        return Ok(report);
    }

    // 3. Repack.
    let (new_packs, damaged) = repack(repo, &d.sparse).await?;
    report.written_bytes = new_packs.iter().map(|p| p.pack_size).sum();
    let mut repacked: Vec<PackId> = Vec::new();
    for (id, _) in std::mem::take(&mut d.sparse) {
        if damaged.contains(&id) {
            report.damaged_packs.push(layout::pack(&id));
            d.kept.push(id);
        } else {
            repacked.push(id);
        }
    }
    report.repacked_packs = repacked.len() as u64;

    // 4. One index segment for what stays, then remove the old ones, then the packs.
    let doomed: Vec<PackId> = d
        .dead
        .iter()
        .chain(&repacked)
        .chain(&unindexed)
        .copied()
        .collect();
    let nothing_to_do = doomed.is_empty() && segment_ids.len() <= 1;
    if !nothing_to_do {
        let mut kept: Vec<IndexedPack> = d
            .kept
            .iter()
            .map(|id| IndexedPack {
                pack_id: *id,
                pack_size: packs[id].size,
                entries: packs[id].entries.clone(),
            })
            .collect();
        kept.extend(new_packs);
        let written = if kept.is_empty() {
            None
        } else {
            repo.add_index_segment(kept).await?
        };
        for id in &segment_ids {
            if Some(*id) != written {
                repo.store().delete(&layout::index_segment(id)).await?;
                report.index_segments_removed += 1;
            }
        }
        for id in &doomed {
            repo.store().delete(&layout::pack(id)).await?;
            report.deleted_packs += 1;
            report.deleted_bytes += present[id];
        }
    }
    // The cached index of this handle describes deleted packs now.
    repo.load_index().await?;
    Ok(report)
}

/// Copies the carried entries of sparse packs into new packs. Returns the new packs and
/// the sources that failed their integrity check (those are kept as they are).
async fn repack(
    repo: &Repository,
    sparse: &[(PackId, Vec<PackEntry>)],
) -> Result<(Vec<IndexedPack>, HashSet<PackId>)> {
    let target = repo.config().pack_target_size as usize;
    let key_id = repo.keys().key_id();
    let mut out = Vec::new();
    let mut damaged = HashSet::new();
    let mut writer = PackWriter::new(key_id, target);
    for (id, entries) in sparse {
        let name = layout::pack(id);
        let bytes = repo.store().get(&name).await?;
        let ok = {
            let b = bytes.clone();
            crate::repository::blocking(move || PackId::of_bytes(&b)).await? == *id
        };
        if !ok {
            tracing::warn!("{name}: its content does not match its id; not repacking it (run `pgkeep verify --read-data`)");
            damaged.insert(*id);
            continue;
        }
        for e in entries {
            let start = e.offset as usize;
            let Some(unit) = bytes.get(start..start + e.stored_len as usize) else {
                damaged.insert(*id);
                break;
            };
            if writer.len() + unit.len() > target && !writer.is_empty() {
                let full = std::mem::replace(&mut writer, PackWriter::new(key_id, target));
                out.push(store_pack(repo, full).await?);
            }
            writer.push(e.chunk_id, e.raw_len, unit);
        }
    }
    if !writer.is_empty() {
        out.push(store_pack(repo, writer).await?);
    }
    Ok((out, damaged))
}

async fn store_pack(repo: &Repository, writer: PackWriter) -> Result<IndexedPack> {
    let r = repo.clone();
    let pack = crate::repository::blocking(move || writer.finish(r.keys(), random_bytes())).await?;
    let size = pack.bytes.len() as u64;
    repo.store()
        .put(&layout::pack(&pack.id), Bytes::from(pack.bytes))
        .await?;
    Ok(IndexedPack {
        pack_id: pack.id,
        pack_size: size,
        entries: pack.entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn pack(n: u8, chunks: &[u8]) -> (PackId, PackFacts) {
        let entries: Vec<PackEntry> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| PackEntry {
                chunk_id: cid(*c),
                offset: 16 + 100 * i as u32,
                stored_len: 100,
                raw_len: 200,
            })
            .collect();
        (
            PackId([n; 32]),
            PackFacts {
                size: 16 + 100 * chunks.len() as u64 + 60,
                entries,
            },
        )
    }

    #[test]
    fn packs_are_dead_sparse_or_kept() {
        let packs: BTreeMap<PackId, PackFacts> = [
            pack(1, &[1, 2, 3, 4]),
            pack(2, &[5, 6, 7, 8]),
            pack(3, &[9, 10]),
        ]
        .into();
        let present: HashMap<PackId, u64> = packs.iter().map(|(id, f)| (*id, f.size)).collect();
        // Pack 1 fully live, pack 2 one live chunk of four, pack 3 none.
        let live: HashSet<ChunkId> = [1, 2, 3, 4, 5].map(cid).into();
        let d = decide(&packs, &present, &live, 0.5);
        assert_eq!(d.kept, [PackId([1; 32])]);
        assert_eq!(d.dead, [PackId([3; 32])]);
        assert_eq!(d.sparse.len(), 1);
        assert_eq!(
            d.sparse[0].1.iter().map(|e| e.chunk_id).collect::<Vec<_>>(),
            [cid(5)]
        );
        // At a threshold above its garbage share (75%), pack 2 is kept.
        let d = decide(&packs, &present, &live, 0.8);
        assert_eq!(d.kept.len(), 2);
    }

    #[test]
    fn a_chunk_in_two_packs_lives_in_the_denser_one() {
        // Pack 9 is what an interrupted repack of pack 2 wrote: chunk 5 alone.
        let packs: BTreeMap<PackId, PackFacts> = [pack(2, &[5, 6, 7, 8]), pack(9, &[5])].into();
        let present: HashMap<PackId, u64> = packs.iter().map(|(id, f)| (*id, f.size)).collect();
        let live: HashSet<ChunkId> = [cid(5)].into();
        let d = decide(&packs, &present, &live, 0.5);
        assert_eq!(d.kept, [PackId([9; 32])]);
        assert_eq!(d.dead, [PackId([2; 32])]);
    }

    #[test]
    fn missing_packs_stay_indexed_and_unindexed_ones_are_reclaimable() {
        let packs: BTreeMap<PackId, PackFacts> = [pack(1, &[1]), pack(2, &[2])].into();
        let mut present: HashMap<PackId, u64> = HashMap::new();
        present.insert(PackId([1; 32]), packs[&PackId([1; 32])].size);
        present.insert(PackId([7; 32]), 1000);
        let live: HashSet<ChunkId> = [cid(1), cid(2)].into();
        let d = decide(&packs, &present, &live, 0.5);
        assert!(
            d.kept.contains(&PackId([2; 32])),
            "missing pack 2 stays indexed"
        );
        let u = usage(&packs, &present, &live, 1);
        assert_eq!(u.missing_packs, 1);
        assert_eq!((u.unindexed_packs, u.unindexed_bytes), (1, 1000));
        assert_eq!(u.referenced_bytes, 100);
        assert_eq!(u.reclaimable_bytes, 1000);
    }
}
