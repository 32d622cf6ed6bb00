//! The chunk index: which pack holds each chunk, merged from all index segments.
//!
//! Loaded lazily (WAL archiving never needs it) and shared by every clone of a repository
//! handle. Sessions read it concurrently from worker threads for deduplication and add their
//! own segment when they commit.

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};
use pgkeep_format::{layout, ChunkId, IndexId, IndexSegment, IndexedPack, Kind, PackId};

use crate::error::{Error, Result};
use crate::repository::{limits, random_bytes, Repository};
use crate::storage::Created;

/// Where a chunk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack_id: PackId,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
}

/// Compact form kept in memory: the pack as a position in `packs`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    pack: u32,
    offset: u32,
    stored_len: u32,
    raw_len: u32,
}

/// The merged index.
#[derive(Debug, Default)]
pub struct ChunkIndex {
    packs: Vec<(PackId, u64)>,
    pack_pos: HashMap<PackId, u32>,
    chunks: HashMap<ChunkId, Slot>,
    segments: HashSet<IndexId>,
}

impl ChunkIndex {
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.chunks.contains_key(id)
    }

    pub fn get(&self, id: &ChunkId) -> Option<ChunkLocation> {
        self.chunks.get(id).map(|s| ChunkLocation {
            pack_id: self.packs[s.pack as usize].0,
            offset: s.offset,
            stored_len: s.stored_len,
            raw_len: s.raw_len,
        })
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    /// Total bytes of the indexed packs.
    pub fn pack_bytes(&self) -> u64 {
        self.packs.iter().map(|p| p.1).sum()
    }

    fn merge(&mut self, id: IndexId, segment: IndexSegment) {
        if !self.segments.insert(id) {
            return;
        }
        for p in segment.packs {
            let pos = *self.pack_pos.entry(p.pack_id).or_insert_with(|| {
                self.packs.push((p.pack_id, p.pack_size));
                (self.packs.len() - 1) as u32
            });
            for e in p.entries {
                // The first location wins; a chunk stored twice (two concurrent sessions)
                // is readable from either.
                self.chunks.entry(e.chunk_id).or_insert(Slot {
                    pack: pos,
                    offset: e.offset,
                    stored_len: e.stored_len,
                    raw_len: e.raw_len,
                });
            }
        }
    }
}

/// The index shared by clones of a repository handle.
#[derive(Debug, Default)]
pub(crate) struct SharedIndex {
    pub(crate) map: std::sync::RwLock<ChunkIndex>,
    /// Serializes loads, and records whether one happened.
    loaded: tokio::sync::Mutex<bool>,
}

fn parse_segment_name(name: &str) -> Option<IndexId> {
    name.strip_prefix(layout::INDEX_DIR)?.parse().ok()
}

impl Repository {
    /// The ids of the index segments in storage.
    pub async fn index_segment_ids(&self) -> Result<Vec<IndexId>> {
        Ok(self
            .store()
            .list(layout::INDEX_DIR)
            .await?
            .iter()
            .filter_map(|o| parse_segment_name(&o.name))
            .collect())
    }

    /// Reads and decodes one index segment.
    pub async fn read_index_segment(&self, id: &IndexId) -> Result<IndexSegment> {
        let name = layout::index_segment(id);
        let plain = self.get_object(Kind::Index, &name, limits::INDEX).await?;
        IndexSegment::decode(&plain).map_err(|e| Error::corrupt(&name, e))
    }

    /// Loads every index segment not loaded yet (all of them on first call).
    ///
    /// When a segment loaded earlier is gone, `prune` has rewritten the index and may have
    /// deleted packs it listed: the whole index is then reloaded, so no session dedups
    /// against a chunk that no longer exists.
    pub async fn load_index(&self) -> Result<()> {
        let mut loaded = self.inner.index.loaded.lock().await;
        let listed: HashSet<IndexId> = self.index_segment_ids().await?.into_iter().collect();
        let mut known: HashSet<IndexId> = self.read_index(|i| i.segments.clone());
        if !known.is_subset(&listed) {
            *self.write_index() = ChunkIndex::default();
            known.clear();
        }
        let todo: Vec<IndexId> = listed
            .into_iter()
            .filter(|id| !known.contains(id))
            .collect();
        let segments: Vec<(IndexId, IndexSegment)> = futures::stream::iter(todo)
            .map(|id| async move { Ok::<_, Error>((id, self.read_index_segment(&id).await?)) })
            .buffer_unordered(8)
            .try_collect()
            .await?;
        let mut map = self.write_index();
        for (id, seg) in segments {
            map.merge(id, seg);
        }
        *loaded = true;
        Ok(())
    }

    /// Loads the index if no load has happened yet.
    pub async fn ensure_index(&self) -> Result<()> {
        if *self.inner.index.loaded.lock().await {
            return Ok(());
        }
        self.load_index().await
    }

    /// Runs `f` on the loaded index (call `ensure_index` first).
    pub fn read_index<T>(&self, f: impl FnOnce(&ChunkIndex) -> T) -> T {
        f(&self
            .inner
            .index
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner()))
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, ChunkIndex> {
        self.inner
            .index
            .map
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a new index segment for packs a session uploaded, then adds it to the
    /// in-memory index. Called only after every listed pack is durably stored.
    pub(crate) async fn add_index_segment(
        &self,
        packs: Vec<IndexedPack>,
    ) -> Result<Option<IndexId>> {
        if packs.is_empty() {
            return Ok(None);
        }
        let id = IndexId(random_bytes());
        let segment = IndexSegment { packs };
        let name = layout::index_segment(&id);
        match self
            .put_new_object(Kind::Index, &name, segment.encode(), 3)
            .await?
        {
            Created::New => {}
            Created::Identical => return Err(Error::AlreadyExists { object: name }),
        }
        self.write_index().merge(id, segment);
        Ok(Some(id))
    }
}
