//! Reading chunks back: ranged reads of packs, authenticated decryption, and a check that
//! each chunk's content still hashes to its id.

use bytes::Bytes;
use futures::StreamExt;
use pgkeep_format::{layout, ChunkId, ChunkRef, Extent, RepoConfig};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::repository::Repository;

/// Chunks fetched ahead while writing a stream out.
const READ_AHEAD: usize = 8;

/// The few chunks a stream used last, most recent first. Small on purpose: it holds decoded
/// chunks (up to the largest chunk size each), and alternation between a parent's chunk and
/// the new ones needs two.
struct RecentChunks<T> {
    entries: Vec<(ChunkId, T)>,
}

impl<T> Default for RecentChunks<T> {
    fn default() -> Self {
        Self {
            entries: Vec::with_capacity(RECENT_CHUNKS + 1),
        }
    }
}

impl<T> RecentChunks<T> {
    /// Makes `id` the most recent and returns its value, if it is held.
    fn touch(&mut self, id: &ChunkId) -> Option<&T> {
        let i = self.entries.iter().position(|(k, _)| k == id)?;
        let entry = self.entries.remove(i);
        self.entries.insert(0, entry);
        self.entries.first().map(|(_, v)| v)
    }

    /// Adds `id` as the most recent, dropping the least recent beyond the capacity.
    fn insert(&mut self, id: ChunkId, value: T) {
        self.entries.insert(0, (id, value));
        self.entries.truncate(RECENT_CHUNKS);
    }
}

/// Decoded chunks a stream keeps for reuse (see [`RecentChunks`]).
const RECENT_CHUNKS: usize = 4;

impl Repository {
    /// Reads one chunk, verifying it after decryption.
    pub async fn read_chunk(&self, id: &ChunkId) -> Result<Bytes> {
        self.ensure_index().await?;
        let loc = self
            .read_index(|i| i.get(id))
            .ok_or_else(|| Error::NotFound {
                object: format!("chunk {id} (in no index segment)"),
            })?;
        let pack = layout::pack(&loc.pack_id);
        let start = u64::from(loc.offset);
        let end = start + u64::from(loc.stored_len);
        let unit = match self.store().get_range(&pack, start..end).await {
            Ok(unit) => unit,
            Err(e @ Error::Storage { .. }) => return Err(self.short_pack(&pack, end, e).await),
            Err(e) => return Err(e),
        };
        let repo = self.clone();
        let id = *id;
        let data = tokio::task::spawn_blocking(move || {
            repo.keys()
                .open_chunk(&id, &unit, u64::from(RepoConfig::MAX_CHUNK_SIZE))
        })
        .await
        .map_err(|e| Error::Pipeline(format!("a decryption task failed: {e}")))?
        .map_err(|e| Error::corrupt(format!("{pack} (chunk {id} at offset {start})"), e))?;
        if data.len() as u64 != u64::from(loc.raw_len) {
            return Err(Error::corrupt(
                pack,
                pgkeep_format::FormatError::Invalid {
                    what: "chunk",
                    reason: format!(
                        "chunk {id} has {} bytes, the index says {}",
                        data.len(),
                        loc.raw_len
                    ),
                },
            ));
        }
        Ok(Bytes::from(data))
    }

    /// Explains a failed ranged read of a pack: when the pack is shorter than the index says
    /// (truncated or emptied in storage), that is damage to the pack, not a storage failure
    /// a retry could fix; otherwise the storage error stands.
    async fn short_pack(&self, pack: &str, end: u64, err: Error) -> Error {
        match self.store().head(pack).await {
            Ok(Some(size)) if size < end => Error::corrupt(
                pack,
                pgkeep_format::FormatError::Invalid {
                    what: "pack",
                    reason: format!(
                        "is {size} bytes long, but the index places a chunk up to byte {end} (truncated in storage)"
                    ),
                },
            ),
            _ => err,
        }
    }

    /// Writes the content described by `extents` to `out`, fetching chunks ahead in parallel.
    /// Returns the bytes written.
    pub async fn write_extents<W: AsyncWrite + Unpin>(
        &self,
        extents: &[Extent],
        out: &mut W,
    ) -> Result<u64> {
        // A file rebuilt from an incremental backup alternates between a parent's chunk
        // (unchanged pages) and new chunks (changed pages): A, B, A, B, ... The plan runs
        // the same small most-recently-used set as the writing below, so a chunk is fetched
        // again only once it has left the set, not after every interruption.
        let mut plan: Vec<ChunkId> = Vec::new();
        let mut recent = RecentChunks::<()>::default();
        for e in extents {
            if let Extent::Chunk { chunk, .. } = e {
                if recent.touch(&chunk.id).is_none() {
                    plan.push(chunk.id);
                    recent.insert(chunk.id, ());
                }
            }
        }
        let mut fetched = futures::stream::iter(plan)
            .map(|id| async move { self.read_chunk(&id).await.map(|d| (id, d)) })
            .buffered(READ_AHEAD);
        let mut cached = RecentChunks::<Bytes>::default();
        let mut written = 0u64;
        let zeros = vec![0u8; 64 << 10];
        let write_err = |e| Error::io("writing restored data", e);
        for e in extents {
            match e {
                Extent::Zeros { len } => {
                    let mut left = *len;
                    while left > 0 {
                        let n = left.min(zeros.len() as u64) as usize;
                        out.write_all(&zeros[..n]).await.map_err(write_err)?;
                        left -= n as u64;
                    }
                }
                Extent::Chunk { chunk, offset, len } => {
                    let data = match cached.touch(&chunk.id) {
                        Some(d) => d.clone(),
                        None => {
                            let (id, d) = fetched
                                .next()
                                .await
                                .ok_or_else(|| Error::Pipeline("read plan ended early".into()))??;
                            if id != chunk.id {
                                return Err(Error::Pipeline("read plan out of step".into()));
                            }
                            cached.insert(id, d.clone());
                            d
                        }
                    };
                    let range = *offset as usize..(*offset + *len) as usize;
                    let slice = data.get(range).ok_or_else(|| {
                        Error::InvalidInput(format!(
                            "extent {offset}+{len} runs past chunk {} of {} bytes",
                            chunk.id,
                            data.len()
                        ))
                    })?;
                    out.write_all(slice).await.map_err(write_err)?;
                }
            }
            written += e.len();
        }
        out.flush().await.map_err(write_err)?;
        Ok(written)
    }

    /// Bytes the given chunks occupy in packs (sealed size), for backup statistics.
    pub fn stored_size(&self, chunks: &[ChunkRef]) -> u64 {
        self.read_index(|i| {
            chunks
                .iter()
                .filter_map(|c| i.get(&c.id))
                .map(|l| u64::from(l.stored_len))
                .sum()
        })
    }
}
