//! Turns the files of a base backup into manifest entries, submitting their content to a
//! write session.
//!
//! Relation files are processed page by page (8 KiB):
//! - an all-zero page becomes a zero run (stored as nothing);
//! - with a parent backup, a page whose header LSN (`pd_lsn`) is older than the parent's
//!   start LSN has not changed since the parent was taken: the new backup points at the
//!   parent's bytes for it (page-level incremental; the backup stays complete on its own);
//! - other pages are collected into chunks. Without a parent, chunks are cut at fixed,
//!   page-aligned file offsets, so an unchanged region of a file produces the same chunks in
//!   every full backup. With a parent, a file's changed pages are gathered into chunks of up
//!   to the chunk size even when unchanged pages lie between them, and each page's extent
//!   points at its slice of the chunk: scattered changes still compress as well as
//!   contiguous data, instead of as lone 8 KiB pages;
//! - with a parent, a changed page that the parent holds in a stored chunk is stored as its
//!   XOR with the parent's copy (an `Xor` extent): mostly zeros, so a fraction of the page
//!   once compressed. Such pages are gathered per parent chunk (the worker reads that chunk
//!   back once per gathered run), and the base is always a chunk stored whole: a page the
//!   parent itself stored as a difference is differenced against that difference's base.
//!
//! Why the LSN rule is safe: WAL replay starts at the new backup's start LSN, and any page
//! modified after that point gets a full-page image in WAL (full_page_writes), so a page
//! caught mid-write, or with only hint bits changed, is restored by replay.
//!
//! Other files are cut with content-defined chunking. Chunk results arrive out of order
//! from the pipeline; a bounded FIFO of pending chunks keeps memory flat and extents ordered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use pgkeep_format::{ChunkId, ChunkRef, Extent, FileEntry, FileType, Lsn};

use super::command::{has_reliable_page_lsn, is_relation_file};
use crate::chunker::{Chunker, Chunking};
use crate::error::{Error, Result};
use crate::pipeline::{DeltaBase, PendingChunk, WriteSession};
use crate::restore::materialize::safe_relative;
use crate::tar::{EntryKind, TarEntry};

/// PostgreSQL's block size (pgkeep checks `SHOW block_size` before a backup).
pub const PAGE: usize = 8192;

/// The parent backup's files, for page-level incrementals.
#[derive(Debug, Default)]
pub struct Parent {
    pub start_lsn: Lsn,
    files: HashMap<(u32, Vec<u8>), ParentFile>,
}

#[derive(Debug)]
struct ParentFile {
    /// Start offset of each extent.
    starts: Vec<u64>,
    extents: Vec<Extent>,
    size: u64,
    /// For each chunk a changed page of this file can be a difference from (see
    /// [`Ingest::delta_base`]): where the parent's last use of it in the file ends.
    last_use: HashMap<ChunkId, u64>,
}

impl Parent {
    pub fn new(start_lsn: Lsn, files: &[FileEntry]) -> Self {
        let files = files
            .iter()
            .filter(|f| f.file_type == FileType::Regular)
            .map(|f| {
                let mut starts = Vec::with_capacity(f.extents.len());
                let mut last_use = HashMap::new();
                let mut at = 0;
                for e in &f.extents {
                    starts.push(at);
                    at += e.len();
                    match e {
                        Extent::Chunk { chunk, .. } => last_use.insert(chunk.id, at),
                        Extent::Xor { base, .. } => last_use.insert(base.id, at),
                        _ => None,
                    };
                }
                (
                    (f.tablespace, f.path.clone()),
                    ParentFile {
                        starts,
                        extents: f.extents.clone(),
                        size: f.size,
                        last_use,
                    },
                )
            })
            .collect();
        Self { start_lsn, files }
    }

    /// Whether the parent's copy of a file uses `chunk` after `offset`: a delta run from a
    /// chunk that is not used further on can be cut without a page ever coming back to it.
    fn used_after(&self, key: &(u32, Vec<u8>), chunk: &ChunkId, offset: u64) -> bool {
        self.files
            .get(key)
            .and_then(|f| f.last_use.get(chunk))
            .is_some_and(|end| *end > offset)
    }

    /// The parent's bytes `[offset, offset+len)` of a file as chunk extents, if they exist
    /// there and are stored in chunks (not zero runs).
    fn slice(&self, key: &(u32, Vec<u8>), offset: u64, len: u64, out: &mut Vec<Extent>) -> bool {
        let Some(f) = self.files.get(key) else {
            return false;
        };
        if offset + len > f.size {
            return false;
        }
        let mut i = f.starts.partition_point(|s| *s <= offset).saturating_sub(1);
        let (mut pos, end) = (offset, offset + len);
        let mark = out.len();
        while pos < end {
            let (Some(start), Some(e)) = (f.starts.get(i), f.extents.get(i)) else {
                out.truncate(mark);
                return false;
            };
            let skip = pos - start;
            let take = (e.len() - skip).min(end - pos);
            let Some(piece) = sub_extent(e, skip as u32, take as u32) else {
                out.truncate(mark);
                return false;
            };
            out.push(piece);
            pos += take;
            i += 1;
        }
        true
    }
}

/// `len` bytes from `skip` into a stored extent (a chunk slice or an XOR of two); `None`
/// for a zero run, which is stored as nothing and cannot be pointed at.
fn sub_extent(e: &Extent, skip: u32, len: u32) -> Option<Extent> {
    match *e {
        Extent::Chunk { chunk, offset, .. } => Some(Extent::Chunk {
            chunk,
            offset: offset + skip,
            len,
        }),
        Extent::Xor {
            base,
            base_offset,
            delta,
            delta_offset,
            ..
        } => Some(Extent::Xor {
            base,
            base_offset: base_offset + skip,
            delta,
            delta_offset: delta_offset + skip,
            len,
        }),
        Extent::Zeros { .. } => None,
    }
}

/// Page counts of a backup, for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageStats {
    pub relation_pages: u64,
    pub zero_pages: u64,
    /// Pages referenced from the parent backup.
    pub reused_pages: u64,
    /// Changed pages stored as their difference from the parent's copy.
    pub delta_pages: u64,
}

/// One piece of a file's content while its chunks are in flight.
enum Piece {
    Done(Extent),
    /// `len` bytes at `offset` of the chunk submitted as `run`.
    Slice {
        run: u64,
        offset: u32,
        len: u32,
    },
    /// `len` bytes at `offset` of the difference submitted as `run`, XOR `base` from
    /// `base_offset`.
    Xor {
        run: u64,
        offset: u32,
        len: u32,
        base: ChunkRef,
        base_offset: u32,
    },
}

/// Delta runs a file keeps open at once. A parent that stored changed pages whole (an older
/// incremental, `--page-deltas off`, pages new in it) interleaves two chunks along a file:
/// its own run of changed pages and its parent's chunk. With one open run, every switch
/// would cut a one-page run and read a whole base chunk for it. Which run is cut when a
/// fifth base comes: [`run_to_cut`].
const OPEN_DELTA_RUNS: usize = 4;

/// Which of a file's open delta runs (`runs`, least recently used first) to submit to make
/// room for another, `offset` being where the file's next page starts: one whose base chunk
/// the parent does not use further on in the file (no later page can join it, so cutting it
/// now costs nothing), else the least recently used. Along a file the parent's whole chunks
/// come one after another while its gathered runs of changed pages span many of them;
/// cutting a run from a chunk already passed keeps a gathered run's base open, and its
/// pages in one difference (one read of that base, not one per cut).
fn run_to_cut(
    parent: Option<&Parent>,
    key: &(u32, Vec<u8>),
    runs: &[DeltaRun],
    offset: u64,
) -> usize {
    let Some(parent) = parent else {
        return 0;
    };
    runs.iter()
        .position(|d| !parent.used_after(key, &d.base.chunk.id, offset))
        .unwrap_or(0)
}

/// Changed pages gathered to be stored as one difference from one chunk of the parent.
struct DeltaRun {
    run_id: u64,
    pages: BytesMut,
    base: DeltaBase,
}

/// A server-side incremental file (`INCREMENTAL.<name>`, PostgreSQL 17+) being turned back
/// into the whole file: listed blocks come from the stream, other blocks below the
/// truncation length from the parent backup, the rest are zeros.
struct IncrementalFile {
    header: BytesMut,
    /// Parsed header: sorted block numbers and the truncation length, once complete.
    blocks: Option<(Vec<u32>, u32)>,
    /// Index into `blocks` of the next block the stream will carry.
    next: usize,
    /// The next block number of the reconstructed file to emit.
    cursor: u32,
}

/// Magic number of PostgreSQL's incremental files (native byte order).
const INCREMENTAL_MAGIC: u32 = 0xd3ae_1f0d;
/// Blocks in a 1 GiB relation segment of 8 KiB pages: no incremental file lists more.
const MAX_SEGMENT_BLOCKS: u32 = 131_072;

impl IncrementalFile {
    fn new() -> Self {
        Self {
            header: BytesMut::new(),
            blocks: None,
            next: 0,
            cursor: 0,
        }
    }

    /// Bytes the header occupies once `n` (the block count) is known: 12 bytes, the block
    /// numbers, then padding to a whole page when the file carries blocks.
    fn header_len(n: u32) -> usize {
        let len = 12 + 4 * n as usize;
        if n > 0 && len % PAGE != 0 {
            len + PAGE - len % PAGE
        } else {
            len
        }
    }

    /// Feeds header bytes from `data`; returns true once the header is complete. The
    /// header's length is known after its first 12 bytes (magic, block count, truncation
    /// length); a file listing no blocks has only those.
    fn take_header(&mut self, data: &mut Bytes, path: &str) -> Result<bool> {
        let bad = |why: String| Error::InvalidInput(format!("incremental file {path}: {why}"));
        let word = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        loop {
            if self.blocks.is_some() {
                return Ok(true);
            }
            let want = if self.header.len() < 12 {
                12
            } else {
                if word(&self.header, 0) != INCREMENTAL_MAGIC {
                    return Err(bad("bad magic number".into()));
                }
                let n = word(&self.header, 4);
                if n > MAX_SEGMENT_BLOCKS {
                    return Err(bad(format!("lists {n} blocks, more than a segment holds")));
                }
                Self::header_len(n)
            };
            if self.header.len() >= 12 && self.header.len() == want {
                let n = word(&self.header, 4) as usize;
                let truncation = word(&self.header, 8);
                let blocks: Vec<u32> = (0..n).map(|i| word(&self.header, 12 + 4 * i)).collect();
                if blocks.windows(2).any(|w| w[0] >= w[1])
                    || blocks.last().is_some_and(|b| *b >= MAX_SEGMENT_BLOCKS)
                {
                    return Err(bad(
                        "block numbers are not ascending within a segment".into()
                    ));
                }
                if truncation > MAX_SEGMENT_BLOCKS {
                    return Err(bad(format!(
                        "truncation length {truncation} exceeds a segment"
                    )));
                }
                self.blocks = Some((blocks, truncation));
                continue;
            }
            if data.is_empty() {
                return Ok(false);
            }
            let take = (want - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data.split_to(take));
        }
    }

    /// Blocks of the reconstructed file.
    fn length(&self) -> u32 {
        self.blocks
            .as_ref()
            .map_or(0, |(b, t)| (*t).max(b.last().map_or(0, |l| l + 1)))
    }
}

struct Current {
    file: usize,
    /// Set for `INCREMENTAL.*` files.
    incremental: Option<IncrementalFile>,
    key: (u32, Vec<u8>),
    /// Whether pages may be taken from the parent by their LSN (main forks only).
    lsn_reuse: bool,
    page_buf: BytesMut,
    run: BytesMut,
    /// The id the current run will have when submitted.
    run_id: u64,
    /// Changed pages on their way to differences from the parent's chunks, one run per
    /// base chunk, least recently used first (at most [`OPEN_DELTA_RUNS`]).
    deltas: Vec<DeltaRun>,
    chunker: Option<Chunker>,
    offset: u64,
}

/// Collects the files of one backup.
pub struct Ingest<'s> {
    session: &'s WriteSession,
    chunk_size: usize,
    cdc: Chunking,
    parent: Option<Parent>,
    /// Whether changed pages are stored as differences from the parent's copies.
    page_deltas: bool,
    files: Vec<FileEntry>,
    pieces: Vec<Vec<Piece>>,
    pending: VecDeque<(u64, PendingChunk)>,
    resolved: HashMap<u64, pgkeep_format::ChunkRef>,
    next_run: u64,
    max_pending: usize,
    current: Option<Current>,
    /// Every (tablespace, normalized path) begun so far: a server that sends one path twice
    /// (or a file and a directory under one name) is refused, since only one of them could
    /// be restored and which one would be a guess.
    seen: HashSet<(u32, PathBuf)>,
    /// The symbolic links among them: nothing may come below one (it would be written
    /// through the link on restore).
    links: HashSet<(u32, PathBuf)>,
    pub stats: PageStats,
}

impl std::fmt::Debug for Ingest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("files", &self.files.len())
            .finish_non_exhaustive()
    }
}

fn is_zero(page: &[u8]) -> bool {
    page.iter().all(|b| *b == 0)
}

fn page_lsn(page: &[u8]) -> Lsn {
    let hi = u32::from_le_bytes([page[0], page[1], page[2], page[3]]);
    let lo = u32::from_le_bytes([page[4], page[5], page[6], page[7]]);
    Lsn((u64::from(hi) << 32) | u64::from(lo))
}

impl<'s> Ingest<'s> {
    pub fn new(
        session: &'s WriteSession,
        chunk_size: usize,
        cdc: Chunking,
        parent: Option<Parent>,
        page_deltas: bool,
        max_pending: usize,
    ) -> Self {
        Self {
            session,
            chunk_size: chunk_size.max(PAGE) / PAGE * PAGE,
            cdc,
            parent,
            page_deltas,
            files: Vec::new(),
            pieces: Vec::new(),
            pending: VecDeque::new(),
            resolved: HashMap::new(),
            next_run: 0,
            max_pending: max_pending.max(1),
            current: None,
            seen: HashSet::new(),
            links: HashSet::new(),
            stats: PageStats::default(),
        }
    }

    /// Starts an entry of archive `tablespace` (0: the data directory).
    pub fn begin(&mut self, tablespace: u32, e: TarEntry) -> Result<()> {
        if self.current.is_some() {
            return Err(Error::InvalidInput(
                "a tar entry began before the previous one ended".into(),
            ));
        }
        let file_type = match e.kind {
            EntryKind::Regular => FileType::Regular,
            EntryKind::Directory => FileType::Directory,
            EntryKind::Symlink => FileType::Symlink,
            other => {
                let what = match other {
                    EntryKind::HardLink => "a hard link".to_owned(),
                    EntryKind::Other(b'3') => "a character device".to_owned(),
                    EntryKind::Other(b'4') => "a block device".to_owned(),
                    EntryKind::Other(b'6') => "a FIFO".to_owned(),
                    EntryKind::Other(t) => format!("tar typeflag {:?}", char::from(t)),
                    _ => format!("{other:?}"),
                };
                return Err(Error::InvalidInput(format!(
                    "the server sent {:?} as {what}; base backups hold only files, directories and symlinks",
                    String::from_utf8_lossy(&e.path)
                )));
            }
        };
        let idx = self.files.len();
        let mut e = e;
        let incremental = file_type == FileType::Regular && strip_incremental(&mut e.path);
        // The tar comes from the server, which may be hostile or broken: a path that would
        // leave the data directory (absolute, `..`, empty) is refused here, so no backup
        // holds one (restore refuses it again).
        let normalized = safe_relative(&e.path).map_err(|_| {
            Error::InvalidInput(format!(
                "the server sent a tar entry {:?} that would leave the data directory (absolute, `..` or empty): refusing the backup",
                String::from_utf8_lossy(&e.path)
            ))
        })?;
        if let Some(link) = normalized
            .ancestors()
            .skip(1)
            .find(|a| self.links.contains(&(tablespace, a.to_path_buf())))
        {
            return Err(Error::InvalidInput(format!(
                "the server sent {:?} below the symbolic link {:?}: refusing the backup",
                String::from_utf8_lossy(&e.path),
                link.display()
            )));
        }
        if file_type == FileType::Symlink {
            self.links.insert((tablespace, normalized.clone()));
        }
        if !self.seen.insert((tablespace, normalized)) {
            return Err(Error::InvalidInput(format!(
                "the server sent {:?} twice in {}: refusing the backup",
                String::from_utf8_lossy(&e.path),
                if tablespace == 0 {
                    "the data directory".to_owned()
                } else {
                    format!("tablespace {tablespace}")
                }
            )));
        }
        if incremental && self.parent.is_none() {
            return Err(Error::InvalidInput(format!(
                "the server sent an incremental file ({}) but this backup has no parent",
                String::from_utf8_lossy(&e.path)
            )));
        }
        let relation = file_type == FileType::Regular && is_relation_file(tablespace, &e.path);
        self.files.push(FileEntry {
            tablespace,
            path: e.path.clone(),
            file_type,
            mode: e.mode,
            size: if file_type == FileType::Regular {
                e.size
            } else {
                0
            },
            mtime: e.mtime,
            link_target: e.link_target,
            extents: Vec::new(),
        });
        self.pieces.push(Vec::new());
        if file_type == FileType::Regular {
            let run_id = self.new_run_id();
            self.current = Some(Current {
                file: idx,
                incremental: incremental.then(IncrementalFile::new),
                lsn_reuse: has_reliable_page_lsn(&e.path),
                key: (tablespace, e.path),
                page_buf: BytesMut::new(),
                run: BytesMut::new(),
                run_id,
                deltas: Vec::new(),
                chunker: (!relation).then(|| Chunker::new(self.cdc)),
                offset: 0,
            });
        }
        Ok(())
    }

    /// Content of the current file, in order.
    pub async fn data(&mut self, mut data: Bytes) -> Result<()> {
        let Some(mut cur) = self.current.take() else {
            return Err(Error::InvalidInput(
                "file data outside a regular file".into(),
            ));
        };
        let result = async {
            if let Some(chunker) = cur.chunker.as_mut() {
                chunker.push(&data);
                while let Some(c) = chunker.next_chunk() {
                    self.submit_whole(cur.file, c).await?;
                }
                return Ok(());
            }
            if cur.incremental.is_some() {
                return self.incremental_data(&mut cur, data).await;
            }
            // Relation file: whole pages, straight from the message when aligned.
            while !data.is_empty() {
                if cur.page_buf.is_empty() && data.len() >= PAGE {
                    let page = data.split_to(PAGE);
                    self.page(&mut cur, page).await?;
                    continue;
                }
                let want = PAGE - cur.page_buf.len();
                let take = want.min(data.len());
                cur.page_buf.extend_from_slice(&data.split_to(take));
                if cur.page_buf.len() == PAGE {
                    let page = cur.page_buf.split().freeze();
                    self.page(&mut cur, page).await?;
                }
            }
            Ok(())
        }
        .await;
        self.current = Some(cur);
        result
    }

    /// Content of an `INCREMENTAL.*` file: the header, then the listed blocks in order.
    async fn incremental_data(&mut self, cur: &mut Current, mut data: Bytes) -> Result<()> {
        let path = String::from_utf8_lossy(&cur.key.1).into_owned();
        while !data.is_empty() {
            let inc = cur
                .incremental
                .as_mut()
                .ok_or_else(|| Error::Pipeline("not an incremental file".into()))?;
            if !inc.take_header(&mut data, &path)? {
                return Ok(());
            }
            let want = PAGE - cur.page_buf.len();
            let take = want.min(data.len());
            cur.page_buf.extend_from_slice(&data.split_to(take));
            if cur.page_buf.len() < PAGE {
                return Ok(());
            }
            let page = cur.page_buf.split().freeze();
            let block = {
                let (blocks, _) = inc
                    .blocks
                    .as_ref()
                    .ok_or_else(|| Error::Pipeline("header".into()))?;
                *blocks.get(inc.next).ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "incremental file {path}: more block data than listed blocks"
                    ))
                })?
            };
            self.fill_until(cur, block).await?;
            if let Some(inc) = cur.incremental.as_mut() {
                inc.next += 1;
                inc.cursor = block + 1;
            }
            self.changed_page(cur, page).await?;
        }
        Ok(())
    }

    /// Emits the blocks of a reconstructed file before `until` that the incremental file
    /// does not carry: the parent's below the truncation length, zeros above it.
    ///
    /// A block below the truncation length that the parent does not have is zeros too, as
    /// `pg_combinebackup` reconstructs it: PostgreSQL 16+ extends relations many blocks at a
    /// time and WAL-logs only those it fills, so the rest exist on disk as zeros that no WAL
    /// summary mentions. Like the server, pgkeep cannot tell such a block from one that held
    /// data without WAL; the parent not having it at all is what makes zeros the answer.
    async fn fill_until(&mut self, cur: &mut Current, until: u32) -> Result<()> {
        let Some(inc) = cur.incremental.as_ref() else {
            return Ok(());
        };
        let truncation = inc.blocks.as_ref().map_or(0, |b| b.1);
        for block in inc.cursor..until {
            cur.offset = u64::from(block) * PAGE as u64;
            self.stats.relation_pages += 1;
            if block < truncation {
                let mut slice = Vec::new();
                let found = self
                    .parent
                    .as_ref()
                    .is_some_and(|p| p.slice(&cur.key, cur.offset, PAGE as u64, &mut slice));
                if !found {
                    self.interrupt_run(cur).await?;
                    self.stats.zero_pages += 1;
                    self.push_done(cur.file, Extent::Zeros { len: PAGE as u64 });
                    continue;
                }
                self.interrupt_run(cur).await?;
                self.stats.reused_pages += 1;
                for e in slice {
                    self.push_done(cur.file, e);
                }
            } else {
                self.interrupt_run(cur).await?;
                self.stats.zero_pages += 1;
                self.push_done(cur.file, Extent::Zeros { len: PAGE as u64 });
            }
        }
        cur.offset = u64::from(until) * PAGE as u64;
        Ok(())
    }

    /// A page of a relation file sent whole: taken from the parent when its LSN shows it
    /// unchanged, stored otherwise.
    async fn page(&mut self, cur: &mut Current, page: Bytes) -> Result<()> {
        if let Some(parent) = self.parent.as_ref().filter(|_| cur.lsn_reuse) {
            let mut slice = Vec::new();
            if page_lsn(&page) < parent.start_lsn
                && !is_zero(&page)
                && parent.slice(&cur.key, cur.offset, PAGE as u64, &mut slice)
            {
                self.stats.relation_pages += 1;
                cur.offset += PAGE as u64;
                self.interrupt_run(cur).await?;
                self.stats.reused_pages += 1;
                for e in slice {
                    self.push_done(cur.file, e);
                }
                return Ok(());
            }
        }
        self.changed_page(cur, page).await
    }

    /// A page that changed since the parent (or has no parent): stored as its difference
    /// from the parent's copy when there is one, whole otherwise.
    async fn changed_page(&mut self, cur: &mut Current, page: Bytes) -> Result<()> {
        // All-zero pages cost nothing whole (a zero run), so they never become differences.
        let zero = is_zero(&page);
        let Some((base, base_offset)) = (!zero).then(|| self.delta_base(cur)).flatten() else {
            return self.new_page(cur, page, zero).await;
        };
        self.stats.relation_pages += 1;
        self.stats.delta_pages += 1;
        cur.offset += PAGE as u64;
        let open = |cur: &Current| cur.deltas.iter().position(|d| d.base.chunk.id == base.id);
        if let Some(i) = open(cur).filter(|i| cur.deltas[*i].pages.len() >= self.chunk_size) {
            let full = cur.deltas.remove(i);
            self.submit_delta(full).await?;
        }
        // The run used last goes to the back: the least recently used one is cut first.
        let i = match open(cur) {
            Some(i) => {
                let run = cur.deltas.remove(i);
                cur.deltas.push(run);
                cur.deltas.len() - 1
            }
            None => {
                if cur.deltas.len() >= OPEN_DELTA_RUNS {
                    let cut = run_to_cut(self.parent.as_ref(), &cur.key, &cur.deltas, cur.offset);
                    let run = cur.deltas.remove(cut);
                    self.submit_delta(run).await?;
                }
                cur.deltas.push(DeltaRun {
                    run_id: self.new_run_id(),
                    pages: BytesMut::new(),
                    base: DeltaBase {
                        chunk: base,
                        slices: Vec::new(),
                    },
                });
                cur.deltas.len() - 1
            }
        };
        let run = &mut cur.deltas[i];
        let piece = Piece::Xor {
            run: run.run_id,
            offset: run.pages.len() as u32,
            len: PAGE as u32,
            base,
            base_offset,
        };
        run.pages.extend_from_slice(&page);
        match run.base.slices.last_mut() {
            Some((at, len)) if *at + *len == base_offset => *len += PAGE as u32,
            _ => run.base.slices.push((base_offset, PAGE as u32)),
        }
        self.push_piece(cur.file, piece);
        Ok(())
    }

    /// Where the parent holds the page at the current offset, when a changed page can be
    /// stored as its difference from it: one stored slice (of a chunk, or of the base of an
    /// XOR extent, so a difference is always from a chunk stored whole and restore reads at
    /// most two chunks for a page).
    fn delta_base(&self, cur: &Current) -> Option<(ChunkRef, u32)> {
        let parent = self.parent.as_ref().filter(|_| self.page_deltas)?;
        let mut slice = Vec::new();
        if !parent.slice(&cur.key, cur.offset, PAGE as u64, &mut slice) {
            return None;
        }
        match slice.as_slice() {
            [Extent::Chunk { chunk, offset, .. }] => Some((*chunk, *offset)),
            [Extent::Xor {
                base, base_offset, ..
            }] => Some((*base, *base_offset)),
            _ => None,
        }
    }

    /// Submits gathered changed pages as their difference from the parent's chunk.
    async fn submit_delta(&mut self, run: DeltaRun) -> Result<()> {
        while self.pending.len() >= self.max_pending {
            self.resolve_one().await?;
        }
        let pending = self
            .session
            .submit_delta(run.pages.freeze(), run.base)
            .await?;
        self.pending.push_back((run.run_id, pending));
        Ok(())
    }

    /// Submits every open delta run of the current file.
    async fn flush_deltas(&mut self, cur: &mut Current) -> Result<()> {
        for run in std::mem::take(&mut cur.deltas) {
            self.submit_delta(run).await?;
        }
        Ok(())
    }

    /// A page whose content is stored whole (`zero`: it is all zeros, and becomes a zero
    /// run).
    async fn new_page(&mut self, cur: &mut Current, page: Bytes, zero: bool) -> Result<()> {
        self.stats.relation_pages += 1;
        cur.offset += PAGE as u64;
        if zero {
            self.interrupt_run(cur).await?;
            self.stats.zero_pages += 1;
            self.push_done(cur.file, Extent::Zeros { len: PAGE as u64 });
            return Ok(());
        }
        self.append_to_run(cur, page).await
    }

    async fn append_to_run(&mut self, cur: &mut Current, page: Bytes) -> Result<()> {
        let piece = Piece::Slice {
            run: cur.run_id,
            offset: cur.run.len() as u32,
            len: PAGE as u32,
        };
        self.push_piece(cur.file, piece);
        cur.run.extend_from_slice(&page);
        let cut = if self.parent.is_some() {
            cur.run.len() >= self.chunk_size
        } else {
            cur.offset % self.chunk_size as u64 == 0
        };
        if cut {
            self.flush_run(cur).await?;
        }
        Ok(())
    }

    /// Submits the current run of pages as one chunk. Without a parent, a run is a
    /// contiguous stretch of the file, so it is cut wherever a zero page interrupts it too,
    /// which keeps full backups' chunks independent of what came before.
    async fn flush_run(&mut self, cur: &mut Current) -> Result<()> {
        if cur.run.is_empty() {
            return Ok(());
        }
        let run = cur.run.split().freeze();
        let id = std::mem::replace(&mut cur.run_id, self.new_run_id());
        self.submit_run(id, run).await
    }

    /// Contiguity matters only without a parent; with one, runs gather scattered pages.
    async fn interrupt_run(&mut self, cur: &mut Current) -> Result<()> {
        if self.parent.is_none() {
            self.flush_run(cur).await?;
        }
        Ok(())
    }

    fn new_run_id(&mut self) -> u64 {
        self.next_run += 1;
        self.next_run
    }

    fn push_done(&mut self, file: usize, e: Extent) {
        self.push_piece(file, Piece::Done(e));
    }

    /// Appends a piece to a file, merged into the previous one when contiguous (the next
    /// page of the same run, adjacent slices of one parent chunk, zero runs), so memory
    /// grows with the number of extents, not of pages.
    fn push_piece(&mut self, file: usize, piece: Piece) {
        let Some(pieces) = self.pieces.get_mut(file) else {
            return;
        };
        match (pieces.last_mut(), piece) {
            (
                Some(Piece::Slice { run, offset, len }),
                Piece::Slice {
                    run: next_run,
                    offset: next_offset,
                    len: next_len,
                },
            ) if *run == next_run && *offset + *len == next_offset => *len += next_len,
            (
                Some(Piece::Xor {
                    run,
                    offset,
                    len,
                    base,
                    base_offset,
                }),
                Piece::Xor {
                    run: next_run,
                    offset: next_offset,
                    len: next_len,
                    base: next_base,
                    base_offset: next_base_offset,
                },
            ) if *run == next_run
                && *offset + *len == next_offset
                && base.id == next_base.id
                && *base_offset + *len == next_base_offset =>
            {
                *len += next_len
            }
            (Some(Piece::Done(last)), Piece::Done(e)) => {
                if !try_merge(last, e) {
                    pieces.push(Piece::Done(e));
                }
            }
            (_, piece) => pieces.push(piece),
        }
    }

    /// Submits `data` as one chunk that becomes the next piece of `file` in full.
    async fn submit_whole(&mut self, file: usize, data: Bytes) -> Result<()> {
        let run = self.new_run_id();
        self.push_piece(
            file,
            Piece::Slice {
                run,
                offset: 0,
                len: data.len() as u32,
            },
        );
        self.submit_run(run, data).await
    }

    async fn submit_run(&mut self, run: u64, data: Bytes) -> Result<()> {
        while self.pending.len() >= self.max_pending {
            self.resolve_one().await?;
        }
        let pending = self.session.submit(data).await?;
        self.pending.push_back((run, pending));
        Ok(())
    }

    async fn resolve_one(&mut self) -> Result<()> {
        if let Some((run, p)) = self.pending.pop_front() {
            let stored = p.wait().await?;
            self.resolved.insert(run, stored.chunk);
        }
        Ok(())
    }

    /// Ends the current entry. Checks that the content matches the size the header gave.
    pub async fn end(&mut self) -> Result<()> {
        let Some(mut cur) = self.current.take() else {
            return Ok(());
        };
        if let Some(inc) = cur.incremental.as_ref() {
            let path = String::from_utf8_lossy(&cur.key.1).into_owned();
            let (listed, done, length) = match &inc.blocks {
                Some((b, _)) => (b.len(), inc.next, inc.length()),
                None => {
                    return Err(Error::InvalidInput(format!(
                        "incremental file {path}: truncated header"
                    )))
                }
            };
            if done != listed || !cur.page_buf.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "incremental file {path}: {done} of {listed} listed blocks received"
                )));
            }
            self.fill_until(&mut cur, length).await?;
            self.flush_run(&mut cur).await?;
            self.flush_deltas(&mut cur).await?;
            if let Some(f) = self.files.get_mut(cur.file) {
                f.size = u64::from(length) * PAGE as u64;
            }
            return Ok(());
        }
        if let Some(mut chunker) = cur.chunker.take() {
            while let Some(c) = chunker.finish() {
                self.submit_whole(cur.file, c).await?;
            }
        } else {
            self.flush_run(&mut cur).await?;
            self.flush_deltas(&mut cur).await?;
            // A relation file whose size is not a multiple of the page size: keep the tail.
            if !cur.page_buf.is_empty() {
                let tail = cur.page_buf.split().freeze();
                self.submit_whole(cur.file, tail).await?;
            }
        }
        Ok(())
    }

    /// Waits for every chunk and returns the files with their extents.
    pub async fn finish(mut self) -> Result<(Vec<FileEntry>, PageStats)> {
        if self.current.is_some() {
            return Err(Error::InvalidInput("the backup ended inside a file".into()));
        }
        while !self.pending.is_empty() {
            self.resolve_one().await?;
        }
        for (f, pieces) in self.files.iter_mut().zip(std::mem::take(&mut self.pieces)) {
            let mut extents: Vec<Extent> = Vec::with_capacity(pieces.len());
            let resolved = |run: u64| {
                self.resolved
                    .get(&run)
                    .copied()
                    .ok_or_else(|| Error::Pipeline("a chunk was never resolved".into()))
            };
            for p in pieces {
                let e = match p {
                    Piece::Done(e) => e,
                    Piece::Slice { run, offset, len } => Extent::Chunk {
                        chunk: resolved(run)?,
                        offset,
                        len,
                    },
                    Piece::Xor {
                        run,
                        offset,
                        len,
                        base,
                        base_offset,
                    } => Extent::Xor {
                        base,
                        base_offset,
                        delta: resolved(run)?,
                        delta_offset: offset,
                        len,
                    },
                };
                merge_push(&mut extents, e);
            }
            let total: u64 = extents.iter().map(Extent::len).sum();
            if f.file_type == FileType::Regular && total != f.size {
                return Err(Error::InvalidInput(format!(
                    "{}: received {total} bytes, the archive header said {}",
                    String::from_utf8_lossy(&f.path),
                    f.size
                )));
            }
            f.extents = extents;
        }
        Ok((self.files, self.stats))
    }
}

/// Turns `dir/INCREMENTAL.name` into `dir/name`; returns whether it was one.
fn strip_incremental(path: &mut Vec<u8>) -> bool {
    const PREFIX: &[u8] = b"INCREMENTAL.";
    let start = path.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1);
    if path[start..].starts_with(PREFIX) {
        path.drain(start..start + PREFIX.len());
        true
    } else {
        false
    }
}

/// Appends `e`, merging it with the previous extent when they are contiguous.
fn merge_push(extents: &mut Vec<Extent>, e: Extent) {
    if !extents.last_mut().is_some_and(|last| try_merge(last, e)) {
        extents.push(e);
    }
}

/// Extends `last` by `e` if they are contiguous (adjacent slices of one chunk, or two zero
/// runs); returns whether it did.
fn try_merge(last: &mut Extent, e: Extent) -> bool {
    match (last, e) {
        (Extent::Zeros { len }, Extent::Zeros { len: more }) => {
            *len += more;
            true
        }
        (
            Extent::Chunk { chunk, offset, len },
            Extent::Chunk {
                chunk: next,
                offset: next_off,
                len: next_len,
            },
        ) if chunk.id == next.id && *offset + *len == next_off => {
            *len += next_len;
            true
        }
        (
            Extent::Xor {
                base,
                base_offset,
                delta,
                delta_offset,
                len,
            },
            Extent::Xor {
                base: next_base,
                base_offset: next_base_offset,
                delta: next_delta,
                delta_offset: next_delta_offset,
                len: next_len,
            },
        ) if base.id == next_base.id
            && delta.id == next_delta.id
            && *base_offset + *len == next_base_offset
            && *delta_offset + *len == next_delta_offset =>
        {
            *len += next_len;
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Along a file, the parent's whole chunks come one after another while a gathered
    /// chunk of changed pages recurs: the run to cut is one from a chunk already passed,
    /// not the gathered chunk's, even when that is the least recently used.
    #[test]
    fn the_run_cut_first_is_from_a_chunk_the_file_has_passed() {
        const MIB: u32 = 1 << 20;
        let c = |n: u8| ChunkRef {
            id: ChunkId([n; 32]),
            raw_len: MIB,
        };
        let at = |chunk, offset, len| Extent::Chunk { chunk, offset, len };
        let (gathered, f1, f2, f3, f4) = (c(9), c(1), c(2), c(3), c(4));
        let page = PAGE as u32;
        // The gathered chunk holds the file's first page and, after three whole chunks,
        // the next one; a whole chunk after it is the parent's copy of the rest.
        let extents = vec![
            at(gathered, 0, page),
            at(f1, page, MIB - page),
            at(f2, 0, MIB),
            at(f3, 0, MIB),
            at(gathered, page, page),
            Extent::Xor {
                base: f4,
                base_offset: page,
                delta: c(7),
                delta_offset: 0,
                len: MIB - page,
            },
        ];
        let file = FileEntry {
            tablespace: 0,
            path: b"base/5/16384".to_vec(),
            file_type: FileType::Regular,
            mode: 0o600,
            size: extents.iter().map(Extent::len).sum(),
            mtime: 0,
            link_target: Vec::new(),
            extents,
        };
        let key = (file.tablespace, file.path.clone());
        let parent = Parent::new(Lsn(0), &[file]);
        let run = |chunk| DeltaRun {
            run_id: 0,
            pages: BytesMut::new(),
            base: DeltaBase {
                chunk,
                slices: Vec::new(),
            },
        };
        // Least recently used first: the gathered chunk, then the whole chunks in order.
        let open = [run(gathered), run(f1), run(f2), run(f3)];
        let third_chunk = 2 * u64::from(MIB);
        // In the third whole chunk: the first two are passed, the gathered one comes back.
        assert_eq!(
            run_to_cut(Some(&parent), &key, &open, third_chunk + 8192),
            1
        );
        // In the first: every open chunk is used further on, so the least recently used goes.
        assert_eq!(run_to_cut(Some(&parent), &key, &open, 8192), 0);
        // Past the gathered chunk's last page, its run goes before one still in use (the
        // XOR extent's base counts as a use).
        let end = 3 * u64::from(MIB) + 2 * 8192;
        assert_eq!(
            run_to_cut(Some(&parent), &key, &[run(f4), run(gathered)], end),
            1
        );
        assert!(!parent.used_after(&key, &f4.id, 4 * u64::from(MIB)));
        assert!(parent.used_after(&key, &f4.id, end));
        // Without a parent (or for a file it does not have), the least recently used.
        assert_eq!(run_to_cut(None, &key, &open, third_chunk), 0);
        let other = (0, b"base/5/1".to_vec());
        assert_eq!(run_to_cut(Some(&parent), &other, &open, third_chunk), 0);
    }

    #[test]
    fn xor_extents_merge_only_when_both_sides_continue() {
        let c = |n: u8| ChunkRef {
            id: pgkeep_format::ChunkId([n; 32]),
            raw_len: 1 << 20,
        };
        let xor = |b, bo, d, dof| Extent::Xor {
            base: c(b),
            base_offset: bo,
            delta: c(d),
            delta_offset: dof,
            len: 8192,
        };
        let mut extents = vec![xor(1, 0, 2, 0)];
        merge_push(&mut extents, xor(1, 8192, 2, 8192));
        assert_eq!(extents.len(), 1);
        assert_eq!(extents[0].len(), 16384);
        for next in [
            xor(1, 16384, 2, 0),
            xor(1, 0, 2, 16384),
            xor(3, 16384, 2, 16384),
        ] {
            let mut more = extents.clone();
            merge_push(&mut more, next);
            assert_eq!(more.len(), 2, "{next:?}");
        }
        // A slice of an XOR extent keeps both sides in step.
        assert_eq!(
            sub_extent(&extents[0], 8192, 100),
            Some(Extent::Xor {
                base: c(1),
                base_offset: 8192,
                delta: c(2),
                delta_offset: 8192,
                len: 100,
            })
        );
        assert_eq!(sub_extent(&Extent::Zeros { len: 5 }, 0, 1), None);
    }

    fn header(blocks: &[u32], truncation: u32) -> Vec<u8> {
        let mut h = Vec::new();
        for w in [INCREMENTAL_MAGIC, blocks.len() as u32, truncation] {
            h.extend_from_slice(&w.to_le_bytes());
        }
        for b in blocks {
            h.extend_from_slice(&b.to_le_bytes());
        }
        h.resize(IncrementalFile::header_len(blocks.len() as u32), 0);
        h
    }

    fn parse_in_pieces(bytes: &[u8], step: usize) -> Result<(IncrementalFile, Vec<u8>)> {
        let mut inc = IncrementalFile::new();
        let mut rest = Vec::new();
        for piece in bytes.chunks(step) {
            let mut b = Bytes::copy_from_slice(piece);
            if inc.take_header(&mut b, "t")? {
                rest.extend_from_slice(&b);
            }
        }
        Ok((inc, rest))
    }

    #[test]
    fn incremental_headers_parse_for_any_split() {
        for (blocks, truncation) in [(vec![], 7u32), (vec![0, 5, 9], 8), (vec![3], 0)] {
            let mut bytes = header(&blocks, truncation);
            bytes.extend_from_slice(b"first block data");
            for step in [1, 5, 12, 13, 4096, 100_000] {
                let (inc, rest) = parse_in_pieces(&bytes, step).expect("parses");
                assert_eq!(
                    inc.blocks,
                    Some((blocks.clone(), truncation)),
                    "step {step}"
                );
                assert_eq!(rest, b"first block data", "step {step}");
            }
        }
        // Length: the larger of the truncation length and the highest listed block + 1.
        let (inc, _) = parse_in_pieces(&header(&[0, 5, 9], 8), 64).expect("parses");
        assert_eq!(inc.length(), 10);
        let (inc, _) = parse_in_pieces(&header(&[], 7), 64).expect("parses");
        assert_eq!(inc.length(), 7);
    }

    #[test]
    fn hostile_incremental_headers_are_refused() {
        let mut wrong_magic = header(&[1], 2);
        wrong_magic[0] ^= 1;
        let mut too_many = header(&[], 0);
        too_many[4..8].copy_from_slice(&(MAX_SEGMENT_BLOCKS + 1).to_le_bytes());
        for bad in [
            wrong_magic,
            too_many,
            header(&[5, 3], 9),
            header(&[MAX_SEGMENT_BLOCKS], 0),
            header(&[], MAX_SEGMENT_BLOCKS + 1),
        ] {
            assert!(parse_in_pieces(&bad, 3).is_err());
        }
    }

    #[test]
    fn incremental_names_are_recognized() {
        let mut p = b"base/5/INCREMENTAL.16384.1".to_vec();
        assert!(strip_incremental(&mut p));
        assert_eq!(p, b"base/5/16384.1");
        let mut q = b"base/5/16384".to_vec();
        assert!(!strip_incremental(&mut q));
        let mut top = b"INCREMENTAL.x".to_vec();
        assert!(strip_incremental(&mut top));
        assert_eq!(top, b"x");
    }
}
