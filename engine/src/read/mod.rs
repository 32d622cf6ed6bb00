//! Reading chunks back: ranged reads of packs, authenticated decryption, and a check that
//! each chunk's content still hashes to its id (skipped only where something else checks the
//! same bytes, see [`Check`]).

mod fetch;

use std::collections::VecDeque;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use pgkeep_format::{layout, ChunkId, ChunkRef, Extent, RepoConfig};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use self::fetch::Fetch;
use crate::error::{Error, Result};
use crate::index::ChunkLocation;
use crate::repository::{blocking, Repository};
use crate::storage::LocalReader;

/// Reads (see [`fetch`]) in flight while a stream is written out. Each decodes at most
/// 2 MiB; two cores stay busy opening chunks while the writer drains the oldest.
const READ_AHEAD: usize = 4;

/// Zeros for [`Extent::Zeros`], handed out as shared slices.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Where [`Repository::write_extents_into`] puts a stream's content: in pieces that share
/// the memory of the opened chunks, so a sink that keeps them (a file writer batching for
/// the blocking pool) need not copy them.
pub(crate) trait ExtentSink {
    async fn put(&mut self, piece: Bytes) -> Result<()>;
}

/// Any byte writer, as an [`ExtentSink`].
struct ByteSink<'a, W>(&'a mut W);

impl<W: AsyncWrite + Unpin> ExtentSink for ByteSink<'_, W> {
    async fn put(&mut self, piece: Bytes) -> Result<()> {
        self.0
            .write_all(&piece)
            .await
            .map_err(|e| Error::io("writing restored data", e))
    }
}

/// What a read checks of each chunk besides authentication and size (SPEC §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// That its content hashes to its id: the default for every chunk whose bytes become
    /// output.
    Id,
    /// Nothing more (see `RepoKeys::open_chunk_authenticated`). For two readers whose bytes
    /// are checked otherwise: a backup reading the base of an XOR difference it computes
    /// (whoever reads the difference back checks the base), and a restore writing a file
    /// whose checksum in PostgreSQL's `backup_manifest` it compares once the file is
    /// written. The bytes are authenticated under the id, so only a writer's bug could have
    /// stored content that does not hash to it, and the file's checksum, computed by the
    /// server before pgkeep saw the data, catches that too. Recomputing those ids was a sixth
    /// of a restore's user CPU (docs/design.md).
    Authenticated,
}

/// A stream whose chunks all come from one read (or that has none): read, opened and written
/// out on one blocking thread by [`OneRead::write`], with no hand-off per step. Most files of
/// a data directory are this small, and a restore spends more on thread hand-offs than on
/// their bytes otherwise.
pub(crate) struct OneRead {
    repo: Repository,
    source: Source,
    check: Check,
}

enum Source {
    /// Only zeros.
    Nothing,
    /// From a local pack, to read on the blocking thread.
    Local(LocalReader, Fetch),
    /// Already fetched from a remote store.
    Fetched(Fetch, Bytes),
}

impl OneRead {
    /// Reads, opens and checks the chunks, then puts the stream's content into `put`, piece
    /// by piece. Blocking. Returns the bytes put.
    pub(crate) fn write(
        self,
        extents: &[Extent],
        mut put: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<u64> {
        let opened = match self.source {
            Source::Nothing => Vec::new(),
            Source::Local(local, f) => self.repo.fetch_local(&local, &f, self.check)?,
            Source::Fetched(f, unit) => {
                self.repo
                    .open_fetched(&layout::pack(&f.pack), &f, &unit, self.check)?
            }
        };
        let mut opened = VecDeque::from(opened);
        let mut walk = Walk::default();
        let mut written = 0;
        for e in extents {
            loop {
                match walk.next(e)? {
                    Step::Piece(piece) => put(&piece)?,
                    Step::NeedChunk => walk.arrived(e, opened.pop_front())?,
                    Step::Done => break,
                }
            }
            written += e.len();
        }
        Ok(written)
    }
}

/// Turns a stream's extents into pieces of the chunks opened for it, in order: the plan of
/// [`plan`] arriving one chunk at a time, kept in the same small most-recently-used set.
#[derive(Default)]
struct Walk {
    cached: RecentChunks<Bytes>,
    /// Bytes of the current extent still to hand out; `None` before it started.
    left: Option<u64>,
}

/// What [`Walk::next`] found.
enum Step {
    Piece(Bytes),
    /// The extent's chunk has to arrive first ([`Walk::arrived`]).
    NeedChunk,
    /// The extent has been handed out in full.
    Done,
}

impl Walk {
    /// The next piece of extent `e` (ask until [`Step::Done`], then go on to the next).
    fn next(&mut self, e: &Extent) -> Result<Step> {
        if self.left == Some(0) {
            self.left = None;
            return Ok(Step::Done);
        }
        match e {
            Extent::Zeros { len } => {
                let left = self.left.get_or_insert(*len);
                let n = (*left).min(ZEROS.len() as u64);
                *left -= n;
                Ok(if n == 0 {
                    self.left = None;
                    Step::Done
                } else {
                    Step::Piece(Bytes::from_static(&ZEROS[..n as usize]))
                })
            }
            Extent::Chunk { chunk, offset, len } => {
                let Some(data) = self.cached.touch(&chunk.id) else {
                    return Ok(Step::NeedChunk);
                };
                let piece = slice_of(data, chunk, *offset, *len)?;
                self.left = Some(0);
                Ok(Step::Piece(piece))
            }
            Extent::Xor {
                base,
                base_offset,
                delta,
                delta_offset,
                len,
            } => {
                // Touched base first, then delta, as `plan` does, so both keep the same order.
                let Some(b) = self.cached.touch(&base.id).cloned() else {
                    return Ok(Step::NeedChunk);
                };
                let Some(d) = self.cached.touch(&delta.id) else {
                    return Ok(Step::NeedChunk);
                };
                let d = slice_of(d, delta, *delta_offset, *len)?;
                let b = slice_of(&b, base, *base_offset, *len)?;
                self.left = Some(0);
                Ok(Step::Piece(Bytes::from(xor(&b, &d))))
            }
        }
    }

    /// Takes the next chunk of the plan, which must be the one extent `e` waits for.
    fn arrived(&mut self, e: &Extent, next: Option<(ChunkId, Bytes)>) -> Result<()> {
        let (id, data) = next.ok_or_else(|| Error::Pipeline("read plan ended early".into()))?;
        let waits_for = e.chunks().find(|c| !self.cached.holds(&c.id));
        if waits_for.map(|c| c.id) != Some(id) {
            return Err(Error::Pipeline("read plan out of step".into()));
        }
        self.cached.insert(id, data);
        Ok(())
    }
}

/// Bytes `offset..offset + len` of `chunk`'s content `data`, sharing its memory.
fn slice_of(data: &Bytes, chunk: &ChunkRef, offset: u32, len: u32) -> Result<Bytes> {
    let range = offset as usize..offset as usize + len as usize;
    if range.end > data.len() {
        return Err(Error::InvalidInput(format!(
            "extent {offset}+{len} runs past chunk {} of {} bytes",
            chunk.id,
            data.len()
        )));
    }
    Ok(data.slice(range))
}

/// `a` XOR `b`, byte by byte (equal lengths): a page from its earlier version and the
/// stored difference ([`Extent::Xor`]), or the difference from the two versions.
fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len());
    xor_into(&mut out, a, b);
    out
}

/// Appends `a` XOR `b` to `out` (see [`xor`]).
pub(crate) fn xor_into(out: &mut Vec<u8>, a: &[u8], b: &[u8]) {
    out.extend(a.iter().zip(b).map(|(x, y)| x ^ y));
}

/// The chunks to fetch for `extents`, in order. A file rebuilt from an incremental backup
/// alternates between a parent's chunk (unchanged pages) and new chunks (changed pages): A,
/// B, A, B, ... The plan runs the same small most-recently-used set as [`Walk`], so a chunk
/// is fetched again only once it has left the set, not after every interruption.
fn plan(extents: &[Extent]) -> Vec<ChunkId> {
    let mut plan = Vec::new();
    let mut recent = RecentChunks::<()>::default();
    for chunk in extents.iter().flat_map(Extent::chunks) {
        if recent.touch(&chunk.id).is_none() {
            plan.push(chunk.id);
            recent.insert(chunk.id, ());
        }
    }
    plan
}

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

    /// Whether `id` is held, without making it the most recent.
    fn holds(&self, id: &ChunkId) -> bool {
        self.entries.iter().any(|(k, _)| k == id)
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
        self.read_one(id, Check::Id).await
    }

    /// Reads one chunk of a parent backup as the base of a difference the backup computes:
    /// authenticated and decoded, its id not recomputed (see
    /// `RepoKeys::open_chunk_authenticated`).
    pub(crate) async fn read_delta_base(&self, id: &ChunkId) -> Result<Bytes> {
        self.read_one(id, Check::Authenticated).await
    }

    async fn read_one(&self, id: &ChunkId, check: Check) -> Result<Bytes> {
        self.ensure_index().await?;
        let loc = self.read_index(|i| i.get(id)).ok_or_else(|| missing(id))?;
        let mut opened = Vec::new();
        for f in fetch::group(&[(*id, loc)]) {
            opened.extend(self.fetch(f, check).await?);
        }
        opened
            .pop()
            .map(|(_, data)| data)
            .ok_or_else(|| Error::Pipeline("a chunk read returned nothing".into()))
    }

    /// The reads that fetch `extents`' chunks.
    async fn reads(&self, extents: &[Extent]) -> Result<Vec<Fetch>> {
        let plan = plan(extents);
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_index().await?;
        let located = self.read_index(|i| {
            plan.iter()
                .map(|id| i.get(id).map(|loc| (*id, loc)).ok_or_else(|| missing(id)))
                .collect::<Result<Vec<(ChunkId, ChunkLocation)>>>()
        })?;
        Ok(fetch::group(&located))
    }

    /// `Some` when `extents`' chunks come from at most one read: the stream can then be
    /// written out on one blocking thread (see [`OneRead`]). From a remote store, the read
    /// happens here.
    pub(crate) async fn one_read(
        &self,
        extents: &[Extent],
        check: Check,
    ) -> Result<Option<OneRead>> {
        let mut reads = self.reads(extents).await?;
        if reads.len() > 1 {
            return Ok(None);
        }
        let source = match (reads.pop(), self.store().local_reader()) {
            (None, _) => Source::Nothing,
            (Some(f), Some(local)) => Source::Local(local, f),
            (Some(f), None) => {
                let unit = self.get_pack_range(&f).await?;
                Source::Fetched(f, unit)
            }
        };
        Ok(Some(OneRead {
            repo: self.clone(),
            source,
            check,
        }))
    }

    /// Reads one range of a pack and opens the chunks in it, in the order listed. For a
    /// local store the read and the opening happen in one blocking task.
    async fn fetch(&self, f: Fetch, check: Check) -> Result<Vec<(ChunkId, Bytes)>> {
        let repo = self.clone();
        match self.store().local_reader() {
            Some(local) => blocking(move || repo.fetch_local(&local, &f, check)).await?,
            None => {
                let unit = self.get_pack_range(&f).await?;
                blocking(move || repo.open_fetched(&layout::pack(&f.pack), &f, &unit, check))
                    .await?
            }
        }
    }

    /// [`Repository::fetch`] from a local store, on the calling (blocking) thread.
    fn fetch_local(
        &self,
        local: &LocalReader,
        f: &Fetch,
        check: Check,
    ) -> Result<Vec<(ChunkId, Bytes)>> {
        let pack = layout::pack(&f.pack);
        let unit = match local.get_range(&pack, f.range.clone()) {
            Ok(unit) => unit,
            Err(e @ Error::Storage { .. }) => {
                return Err(match local.size(&pack) {
                    Some(size) if size < f.range.end => truncated(&pack, size, f.range.end),
                    _ => e,
                })
            }
            Err(e) => return Err(e),
        };
        self.open_fetched(&pack, f, &unit, check)
    }

    /// The bytes of a read, from a remote store.
    async fn get_pack_range(&self, f: &Fetch) -> Result<Bytes> {
        let pack = layout::pack(&f.pack);
        match self.store().get_range(&pack, f.range.clone()).await {
            Ok(unit) => Ok(unit),
            Err(e @ Error::Storage { .. }) => Err(self.short_pack(&pack, f.range.end, e).await),
            Err(e) => Err(e),
        }
    }

    /// Opens each chunk of a read (a chunk listed twice is opened once), checking it
    /// against the index's size and, with [`Check::Id`], against its id.
    fn open_fetched(
        &self,
        pack: &str,
        f: &Fetch,
        unit: &[u8],
        check: Check,
    ) -> Result<Vec<(ChunkId, Bytes)>> {
        let mut out: Vec<(ChunkId, Bytes)> = Vec::with_capacity(f.chunks.len());
        for m in &f.chunks {
            if let Some((_, data)) = out.iter().find(|(id, _)| *id == m.id) {
                let data = data.clone();
                out.push((m.id, data));
                continue;
            }
            let id = m.id;
            let sealed = unit.get(m.at.clone()).ok_or_else(|| {
                Error::Pipeline(format!("chunk {id} lies outside the bytes read of {pack}"))
            })?;
            let limit = u64::from(RepoConfig::MAX_CHUNK_SIZE);
            let keys = self.keys();
            let opened = match check {
                Check::Id => keys.open_chunk(&id, sealed, limit),
                Check::Authenticated => keys.open_chunk_authenticated(&id, sealed, limit),
            };
            let data = opened.map_err(|e| {
                Error::corrupt(format!("{pack} (chunk {id} at offset {})", m.offset), e)
            })?;
            if data.len() as u64 != u64::from(m.raw_len) {
                return Err(Error::corrupt(
                    pack,
                    pgkeep_format::FormatError::Invalid {
                        what: "chunk",
                        reason: format!(
                            "chunk {id} has {} bytes, the index says {}",
                            data.len(),
                            m.raw_len
                        ),
                    },
                ));
            }
            out.push((id, Bytes::from(data)));
        }
        Ok(out)
    }

    /// Explains a failed ranged read of a pack: when the pack is shorter than the index says
    /// (truncated or emptied in storage), that is damage to the pack, not a storage failure
    /// a retry could fix; otherwise the storage error stands.
    async fn short_pack(&self, pack: &str, end: u64, err: Error) -> Error {
        match self.store().head(pack).await {
            Ok(Some(size)) if size < end => truncated(pack, size, end),
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
        let written = self
            .write_extents_into(extents, Check::Id, &mut ByteSink(out))
            .await?;
        out.flush()
            .await
            .map_err(|e| Error::io("writing restored data", e))?;
        Ok(written)
    }

    /// Puts the content described by `extents` into `out`, fetching chunks ahead in
    /// parallel. Returns the bytes put.
    pub(crate) async fn write_extents_into<S: ExtentSink>(
        &self,
        extents: &[Extent],
        check: Check,
        out: &mut S,
    ) -> Result<u64> {
        let mut fetched = futures::stream::iter(self.reads(extents).await?)
            .map(|f| self.fetch(f, check))
            .buffered(READ_AHEAD)
            .map_ok(|opened| futures::stream::iter(opened.into_iter().map(Ok::<_, Error>)))
            .try_flatten();
        let mut walk = Walk::default();
        let mut written = 0u64;
        for e in extents {
            loop {
                match walk.next(e)? {
                    Step::Piece(piece) => out.put(piece).await?,
                    Step::NeedChunk => walk.arrived(e, fetched.next().await.transpose()?)?,
                    Step::Done => break,
                }
            }
            written += e.len();
        }
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

/// The error for a chunk the index does not have.
fn missing(id: &ChunkId) -> Error {
    Error::NotFound {
        object: format!("chunk {id} (in no index segment)"),
    }
}

/// The error for a pack shorter than the index says.
fn truncated(pack: &str, size: u64, end: u64) -> Error {
    Error::corrupt(
        pack,
        pgkeep_format::FormatError::Invalid {
            what: "pack",
            reason: format!(
                "is {size} bytes long, but the index places a chunk up to byte {end} (truncated in storage)"
            ),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8) -> ChunkRef {
        ChunkRef {
            id: ChunkId([n; 32]),
            raw_len: 4,
        }
    }

    /// Puts `extents` through a [`Walk`] fed from `plan` (as the fetches would deliver it).
    fn walk(extents: &[Extent], chunks: &[(u8, &[u8])]) -> Result<Vec<u8>> {
        let mut opened: VecDeque<(ChunkId, Bytes)> = plan(extents)
            .into_iter()
            .map(|id| {
                let (_, data) = chunks.iter().find(|(n, _)| ChunkId([*n; 32]) == id)?;
                Some((id, Bytes::copy_from_slice(data)))
            })
            .collect::<Option<_>>()
            .expect("every planned chunk is given");
        let mut w = Walk::default();
        let mut out = Vec::new();
        for e in extents {
            loop {
                match w.next(e)? {
                    Step::Piece(p) => out.extend_from_slice(&p),
                    Step::NeedChunk => w.arrived(e, opened.pop_front())?,
                    Step::Done => break,
                }
            }
        }
        assert!(opened.is_empty(), "the whole plan was used");
        Ok(out)
    }

    fn ext(n: u8, offset: u32, len: u32) -> Extent {
        Extent::Chunk {
            chunk: chunk(n),
            offset,
            len,
        }
    }

    #[test]
    fn extents_become_slices_and_zeros() {
        let extents = [
            ext(1, 1, 2),
            Extent::Zeros { len: 3 },
            ext(2, 0, 4),
            ext(1, 0, 1),
            Extent::Zeros { len: 0 },
            Extent::Zeros {
                len: ZEROS.len() as u64 + 2,
            },
            ext(2, 3, 0),
        ];
        let got = walk(&extents, &[(1, b"abcd"), (2, b"wxyz")]).expect("walks");
        let mut want = b"bc\0\0\0wxyza".to_vec();
        want.resize(want.len() + ZEROS.len() + 2, 0);
        assert_eq!(got, want);
        // Chunk 1 came back after one other chunk: it was still held, not planned twice.
        assert_eq!(plan(&extents).len(), 2);
    }

    #[test]
    fn xor_extents_combine_two_chunks_fetched_once_each() {
        let xor = |base, base_offset, delta, delta_offset, len| Extent::Xor {
            base: chunk(base),
            base_offset,
            delta: chunk(delta),
            delta_offset,
            len,
        };
        // An incremental's file: the parent's chunk 1, a changed slice as 1 XOR 2, the parent
        // again, more of chunk 3, and a difference whose base and delta have both left the
        // set of recent chunks and must be fetched again, in that order.
        let extents = [
            ext(1, 0, 1),
            xor(1, 1, 2, 0, 2),
            ext(1, 3, 1),
            ext(3, 0, 4),
            ext(4, 0, 4),
            ext(5, 0, 4),
            ext(6, 0, 4),
            xor(1, 0, 2, 2, 2),
        ];
        let chunks: [(u8, &[u8]); 6] = [
            (1, &[0x10, 0x20, 0x30, 0x40]),
            (2, &[0x01, 0x02, 0x03, 0x04]),
            (3, b"wxyz"),
            (4, b"4444"),
            (5, b"5555"),
            (6, b"6666"),
        ];
        let got = walk(&extents, &chunks).expect("walks");
        let mut want = vec![0x10, 0x21, 0x32, 0x40];
        want.extend_from_slice(b"wxyz444455556666");
        want.extend_from_slice(&[0x13, 0x24]);
        assert_eq!(got, want);
        let ids: Vec<u8> = plan(&extents).iter().map(|id| id.0[0]).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6, 1, 2]);
    }

    #[test]
    fn an_xor_extent_past_either_chunk_is_refused() {
        for (base_offset, delta_offset) in [(3, 0), (0, 3)] {
            let extents = [Extent::Xor {
                base: chunk(1),
                base_offset,
                delta: chunk(2),
                delta_offset,
                len: 2,
            }];
            assert!(matches!(
                walk(&extents, &[(1, b"abcd"), (2, b"wxyz")]),
                Err(Error::InvalidInput(_))
            ));
        }
    }

    #[test]
    fn an_extent_past_its_chunk_is_refused() {
        let extents = [ext(1, 3, 2)];
        assert!(matches!(
            walk(&extents, &[(1, b"abcd")]),
            Err(Error::InvalidInput(_))
        ));
    }
}
