//! The write pipeline: byte streams in, deduplicated sealed chunks in packs out.
//!
//! ```text
//! caller (async) ──jobs (bounded)──> worker threads ──sealed (bounded)──> packer task ──> uploads
//!   chunk id, dedup claim, zstd, AES-GCM          pack assembly      (≤ max_uploads at once)
//! ```
//! Hashing, compression and encryption run on dedicated OS threads, never on the async
//! runtime. Both channels are bounded and uploads are capped, so memory stays under
//! roughly `(4 × jobs) × max chunk + (max_uploads + 1) × pack size` whatever the input size,
//! and a slow store slows the producer (and so the socket feeding it) instead of filling RAM.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pgkeep_format::{
    layout, ChunkId, ChunkRef, Extent, IndexId, IndexedPack, PackWriter, RepoConfig,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::chunker::{Chunker, Chunking};
use crate::error::{Error, Result};
use crate::repository::{random_bytes, Repository};

/// Tuning of a write session.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Worker threads for hashing, compression and encryption (0: one per core).
    pub jobs: usize,
    /// zstd level for new chunks; `None` uses the repository's default.
    pub compression_level: Option<i8>,
    /// Packs uploading at once.
    pub max_uploads: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            jobs: 0,
            compression_level: None,
            max_uploads: 3,
        }
    }
}

/// What a session added, reported by [`WriteSession::finish`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Bytes submitted.
    pub logical_bytes: u64,
    /// Chunks submitted (duplicates included).
    pub chunks: u64,
    /// Chunks not already in the repository (each counted once).
    pub new_chunks: u64,
    /// Plaintext bytes of the new chunks.
    pub new_raw_bytes: u64,
    /// Bytes uploaded: new packs in full (sealed chunks, headers, tables of contents).
    pub new_bytes: u64,
    pub packs: u64,
}

/// One chunk's place in the repository, as the pipeline reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredChunk {
    pub chunk: ChunkRef,
    /// Whether this session stored it (as opposed to finding it already stored).
    pub new: bool,
}

/// A byte stream stored as chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStream {
    pub size: u64,
    pub extents: Vec<Extent>,
}

/// What the packer stored: the packs (for the index segment) and their total size.
#[derive(Debug, Default)]
struct PackerOutput {
    packs: Vec<IndexedPack>,
    bytes: u64,
}

struct Job {
    data: Bytes,
    /// Set when `data` is to be stored as its difference from slices of an earlier chunk.
    delta: Option<DeltaBase>,
    reply: oneshot::Sender<Result<StoredChunk>>,
}

/// The earlier version of the data of a delta job (see [`WriteSession::submit_delta`]): a
/// chunk and its slices, `(offset, len)`, whose concatenation is as long as the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaBase {
    pub chunk: ChunkRef,
    pub slices: Vec<(u32, u32)>,
}

impl DeltaBase {
    /// `data` XOR the base's slices (`base` being the chunk's content). Mostly zeros where
    /// the data changed little, which is what makes a changed page cheap to store.
    fn difference(&self, base: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(data.len());
        for &(offset, len) in &self.slices {
            let (at, end) = (out.len(), out.len() + len as usize);
            let (Some(old), Some(new)) = (
                base.get(offset as usize..offset as usize + len as usize),
                data.get(at..end),
            ) else {
                return Err(Error::Pipeline(format!(
                    "delta slice {offset}+{len} lies outside chunk {} or the data",
                    self.chunk.id
                )));
            };
            crate::read::xor_into(&mut out, old, new);
        }
        if out.len() != data.len() {
            return Err(Error::Pipeline("delta slices do not cover the data".into()));
        }
        Ok(out)
    }
}

struct Sealed {
    id: ChunkId,
    raw_len: u32,
    unit: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    /// Chunks this session has claimed for storing: a chunk submitted twice while the
    /// first copy is still in flight is stored once.
    claimed: Mutex<HashSet<ChunkId>>,
    /// Why the packer stopped, for the errors workers report.
    failure: Mutex<Option<String>>,
    logical_bytes: AtomicU64,
    chunks: AtomicU64,
    new_chunks: AtomicU64,
    new_raw_bytes: AtomicU64,
}

impl Shared {
    fn stopped(&self) -> Error {
        let why = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "the packer stopped".into());
        Error::Pipeline(why)
    }
}

/// A chunk submitted to the pipeline, resolved when a worker has processed it.
#[derive(Debug)]
pub struct PendingChunk(oneshot::Receiver<Result<StoredChunk>>);

impl PendingChunk {
    pub async fn wait(self) -> Result<StoredChunk> {
        self.0
            .await
            .map_err(|_| Error::Pipeline("a worker thread exited".into()))?
    }
}

/// A session that stores chunks. Nothing it stores is visible to readers until
/// [`finish`](Self::finish) has written its index segment; a session dropped or failed
/// halfway leaves only unreferenced packs (garbage for prune), never a broken index.
pub struct WriteSession {
    repo: Repository,
    jobs_tx: Option<flume::Sender<Job>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    packer: Option<tokio::task::JoinHandle<Result<PackerOutput>>>,
    shared: Arc<Shared>,
    max_in_flight: usize,
}

impl std::fmt::Debug for WriteSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteSession")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl Repository {
    /// Starts a write session (loads the index first, for deduplication; reloads it when
    /// `prune` has rewritten it since). Callers hold a shared lock (`Repository::lock`) from
    /// before this until their manifest is written, so no prune runs in between.
    pub async fn write_session(&self, opts: WriteOptions) -> Result<WriteSession> {
        self.load_index().await?;
        let jobs = if opts.jobs == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            opts.jobs
        };
        let level = opts
            .compression_level
            .unwrap_or(self.config().compression_level);
        if !(0..=pgkeep_format::body::MAX_LEVEL).contains(&level) {
            return Err(Error::InvalidInput(format!(
                "compression level {level} is outside 0..=22"
            )));
        }
        let shared = Arc::new(Shared::default());
        let (jobs_tx, jobs_rx) = flume::bounded::<Job>(2 * jobs);
        let (sealed_tx, sealed_rx) = flume::bounded::<Sealed>(2 * jobs);
        let mut workers = Vec::with_capacity(jobs);
        let runtime = tokio::runtime::Handle::current();
        for n in 0..jobs {
            let (repo, rx, tx, shared, runtime) = (
                self.clone(),
                jobs_rx.clone(),
                sealed_tx.clone(),
                shared.clone(),
                runtime.clone(),
            );
            let handle = std::thread::Builder::new()
                .name(format!("pgkeep-worker-{n}"))
                .spawn(move || worker(&repo, &runtime, &rx, &tx, &shared, level))
                .map_err(|e| Error::io("starting a worker thread", e))?;
            workers.push(handle);
        }
        drop(sealed_tx);
        let packer = tokio::spawn(packer(
            self.clone(),
            sealed_rx,
            opts.max_uploads.max(1),
            shared.clone(),
        ));
        Ok(WriteSession {
            repo: self.clone(),
            jobs_tx: Some(jobs_tx),
            workers,
            packer: Some(packer),
            shared,
            max_in_flight: 4 * jobs,
        })
    }
}

fn worker(
    repo: &Repository,
    runtime: &tokio::runtime::Handle,
    rx: &flume::Receiver<Job>,
    tx: &flume::Sender<Sealed>,
    shared: &Shared,
    level: i8,
) {
    let keys = repo.keys();
    while let Ok(Job { data, delta, reply }) = rx.recv() {
        // A delta job reads its base here, on a worker, so the socket never waits for it.
        let data = match delta {
            None => data,
            Some(base) => match runtime
                .block_on(repo.read_delta_base(&base.chunk.id))
                .map_err(|e| unreadable_base(&base.chunk.id, e))
                .and_then(|old| base.difference(&old, &data))
            {
                Ok(diff) => Bytes::from(diff),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    continue;
                }
            },
        };
        let id = keys.chunk_id(&data);
        let raw_len = data.len() as u32;
        let chunk = ChunkRef { id, raw_len };
        shared.chunks.fetch_add(1, Ordering::Relaxed);
        shared
            .logical_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let known = repo.read_index(|i| i.contains(&id))
            || !shared
                .claimed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id);
        if known {
            let _ = reply.send(Ok(StoredChunk { chunk, new: false }));
            continue;
        }
        let unit = keys.seal_chunk(&id, random_bytes(), &data, level);
        shared.new_chunks.fetch_add(1, Ordering::Relaxed);
        shared
            .new_raw_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let outcome = match tx.send(Sealed { id, raw_len, unit }) {
            Ok(()) => Ok(StoredChunk { chunk, new: true }),
            Err(_) => Err(shared.stopped()),
        };
        let _ = reply.send(outcome);
    }
}

/// The error for a delta job whose base chunk (the parent backup's) cannot be read: damage
/// keeps its kind (and exit code) and gains what was being read and what to do; other errors
/// (a storage failure a retry may fix) stand as they are.
fn unreadable_base(id: &ChunkId, e: Error) -> Error {
    let why = |object: String| {
        format!(
            "{object} (read for chunk {id} of the parent backup, which changed pages are stored \
             as differences from: check the parent with `pgkeep verify`, or take a full backup \
             with `pgkeep backup --full`)"
        )
    };
    match e {
        Error::Corrupt { object, source } => Error::Corrupt {
            object: why(object),
            source,
        },
        Error::NotFound { object } => Error::NotFound {
            object: why(object),
        },
        other => other,
    }
}

/// Collects sealed chunks into packs and uploads them. Returns the packs it stored and
/// the bytes uploaded.
async fn packer(
    repo: Repository,
    rx: flume::Receiver<Sealed>,
    max_uploads: usize,
    shared: Arc<Shared>,
) -> Result<PackerOutput> {
    let result = run_packer(&repo, &rx, max_uploads).await;
    if let Err(e) = &result {
        *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }
    result
}

async fn run_packer(
    repo: &Repository,
    rx: &flume::Receiver<Sealed>,
    max_uploads: usize,
) -> Result<PackerOutput> {
    let target = repo.config().pack_target_size as usize;
    let capacity = target + RepoConfig::MAX_CHUNK_SIZE as usize / 4;
    let pool = BufferPool::default();
    let new_pack = || match pool.take() {
        Some(buf) => PackWriter::reusing(repo.keys().key_id(), buf),
        None => PackWriter::new(repo.keys().key_id(), capacity),
    };
    let mut current = new_pack();
    let mut uploads: JoinSet<Result<IndexedPack>> = JoinSet::new();
    let mut out = PackerOutput::default();
    let mut reap =
        |r: std::result::Result<Result<IndexedPack>, tokio::task::JoinError>| -> Result<()> {
            let p = r.map_err(|e| Error::Pipeline(format!("an upload task failed: {e}")))??;
            out.bytes += p.pack_size;
            out.packs.push(p);
            Ok(())
        };
    loop {
        let next = rx.recv_async().await.ok();
        let flush = match &next {
            Some(s) => {
                current.push(s.id, s.raw_len, &s.unit);
                current.len() >= target
            }
            None => !current.is_empty(),
        };
        if flush {
            while uploads.len() >= max_uploads {
                if let Some(r) = uploads.join_next().await {
                    reap(r)?;
                }
            }
            let full = std::mem::replace(&mut current, new_pack());
            uploads.spawn(upload_pack(repo.clone(), full, pool.clone()));
        }
        while let Some(r) = uploads.try_join_next() {
            reap(r)?;
        }
        if next.is_none() {
            break;
        }
    }
    while let Some(r) = uploads.join_next().await {
        reap(r)?;
    }
    Ok(out)
}

/// Pack buffers whose upload finished, for the next packs to fill. At most `max_uploads + 1`
/// buffers exist at once, so the pool needs no bound of its own.
#[derive(Debug, Clone, Default)]
struct BufferPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    fn take(&self) -> Option<Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Takes back an uploaded pack's bytes if the store kept no reference to them.
    fn give_back(&self, bytes: Bytes) {
        if let Ok(buf) = bytes.try_into_mut() {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(buf.into());
        }
    }
}

async fn upload_pack(repo: Repository, pack: PackWriter, pool: BufferPool) -> Result<IndexedPack> {
    let keys_repo = repo.clone();
    let finished =
        tokio::task::spawn_blocking(move || pack.finish(keys_repo.keys(), random_bytes()))
            .await
            .map_err(|e| Error::Pipeline(format!("finishing a pack failed: {e}")))?;
    let size = finished.bytes.len() as u64;
    let bytes = Bytes::from(finished.bytes);
    repo.store()
        .put(&layout::pack(&finished.id), bytes.clone())
        .await?;
    pool.give_back(bytes);
    Ok(IndexedPack {
        pack_id: finished.id,
        pack_size: size,
        entries: finished.entries,
    })
}

impl WriteSession {
    /// Queues one chunk (at most 16 MiB). Waits while the pipeline is full: this is where
    /// backpressure reaches the producer.
    pub async fn submit(&self, data: Bytes) -> Result<PendingChunk> {
        self.submit_job(data, None).await
    }

    /// Submits `data` to be stored as its difference from `base` (see [`DeltaBase`]): the
    /// stored chunk, reported when it resolves, is that difference, and the data is the
    /// base's slices XOR it ([`pgkeep_format::Extent::Xor`]). The base is read by the worker.
    pub async fn submit_delta(&self, data: Bytes, base: DeltaBase) -> Result<PendingChunk> {
        self.submit_job(data, Some(base)).await
    }

    async fn submit_job(&self, data: Bytes, delta: Option<DeltaBase>) -> Result<PendingChunk> {
        if data.len() > RepoConfig::MAX_CHUNK_SIZE as usize {
            return Err(Error::InvalidInput(format!(
                "chunk of {} bytes exceeds the 16 MiB chunk limit",
                data.len()
            )));
        }
        let tx = self
            .jobs_tx
            .as_ref()
            .ok_or_else(|| Error::Pipeline("the session is finished".into()))?;
        let (reply, rx) = oneshot::channel();
        tx.send_async(Job { data, delta, reply })
            .await
            .map_err(|_| self.shared.stopped())?;
        Ok(PendingChunk(rx))
    }

    /// Stores a byte stream, cut by `chunking`, and returns its extents in order.
    pub async fn store_stream<R: AsyncRead + Unpin>(
        &self,
        mut reader: R,
        chunking: Chunking,
    ) -> Result<StoredStream> {
        let mut chunker = Chunker::new(chunking);
        let mut in_flight: VecDeque<PendingChunk> = VecDeque::new();
        let mut extents = Vec::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        let mut eof = false;
        loop {
            let chunk = if eof {
                chunker.finish()
            } else {
                chunker.next_chunk()
            };
            match chunk {
                Some(data) => {
                    size += data.len() as u64;
                    if in_flight.len() >= self.max_in_flight {
                        if let Some(p) = in_flight.pop_front() {
                            extents.push(Extent::whole(p.wait().await?.chunk));
                        }
                    }
                    in_flight.push_back(self.submit(data).await?);
                }
                None if eof => break,
                None => {
                    let n = reader
                        .read(&mut buf)
                        .await
                        .map_err(|e| Error::io("reading the input stream", e))?;
                    if n == 0 {
                        eof = true;
                    } else {
                        chunker.push(&buf[..n]);
                    }
                }
            }
        }
        for p in in_flight {
            extents.push(Extent::whole(p.wait().await?.chunk));
        }
        Ok(StoredStream { size, extents })
    }

    /// Flushes the last pack, waits for every upload, then writes the session's index
    /// segment. Only after this returns may a manifest reference the session's chunks.
    pub async fn finish(mut self) -> Result<(SessionStats, Option<IndexId>)> {
        drop(self.jobs_tx.take());
        let workers = std::mem::take(&mut self.workers);
        tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await
        .map_err(|e| Error::Pipeline(format!("joining workers failed: {e}")))?;
        let packer = self
            .packer
            .take()
            .ok_or_else(|| Error::Pipeline("the session is finished".into()))?;
        let PackerOutput {
            packs,
            bytes: new_bytes,
        } = packer
            .await
            .map_err(|e| Error::Pipeline(format!("the packer task failed: {e}")))??;
        let n_packs = packs.len() as u64;
        let index = self.repo.add_index_segment(packs).await?;
        let s = &self.shared;
        Ok((
            SessionStats {
                logical_bytes: s.logical_bytes.load(Ordering::Relaxed),
                chunks: s.chunks.load(Ordering::Relaxed),
                new_chunks: s.new_chunks.load(Ordering::Relaxed),
                new_raw_bytes: s.new_raw_bytes.load(Ordering::Relaxed),
                new_bytes,
                packs: n_packs,
            },
            index,
        ))
    }
}

impl Drop for WriteSession {
    fn drop(&mut self) {
        // An unfinished session must not keep uploading in the background.
        if let Some(p) = self.packer.take() {
            p.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(slices: Vec<(u32, u32)>) -> DeltaBase {
        DeltaBase {
            chunk: ChunkRef {
                id: ChunkId([7; 32]),
                raw_len: 8,
            },
            slices,
        }
    }

    #[test]
    fn a_difference_is_the_data_xor_the_base_slices_in_order() {
        let old = [1, 2, 3, 4, 5, 6, 7, 8];
        let new = [1, 2, 0, 6, 7, 9];
        let diff = base(vec![(0, 2), (5, 3), (2, 1)])
            .difference(&old, &new)
            .expect("difference");
        assert_eq!(diff, [0, 0, 6, 7 ^ 6, 8 ^ 7, 3 ^ 9]);
    }

    #[test]
    fn slices_outside_the_base_or_not_covering_the_data_are_refused() {
        let old = [0u8; 8];
        for slices in [vec![(7, 2)], vec![(0, 4)], vec![(0, 8)]] {
            let err = base(slices.clone())
                .difference(&old, &[0; 6])
                .expect_err("refused");
            assert!(matches!(err, Error::Pipeline(_)), "{slices:?}: {err}");
        }
    }
}
