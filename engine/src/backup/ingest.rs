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
//!   contiguous data, instead of as lone 8 KiB pages.
//!
//! Why the LSN rule is safe: WAL replay starts at the new backup's start LSN, and any page
//! modified after that point gets a full-page image in WAL (full_page_writes), so a page
//! caught mid-write, or with only hint bits changed, is restored by replay.
//!
//! Other files are cut with content-defined chunking. Chunk results arrive out of order
//! from the pipeline; a bounded FIFO of pending chunks keeps memory flat and extents ordered.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};
use pgkeep_format::{Extent, FileEntry, FileType, Lsn};

use super::command::{has_reliable_page_lsn, is_relation_file};
use crate::chunker::{Chunker, Chunking};
use crate::error::{Error, Result};
use crate::pipeline::{PendingChunk, WriteSession};
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
}

impl Parent {
    pub fn new(start_lsn: Lsn, files: &[FileEntry]) -> Self {
        let files = files
            .iter()
            .filter(|f| f.file_type == FileType::Regular)
            .map(|f| {
                let mut starts = Vec::with_capacity(f.extents.len());
                let mut at = 0;
                for e in &f.extents {
                    starts.push(at);
                    at += e.len();
                }
                (
                    (f.tablespace, f.path.clone()),
                    ParentFile {
                        starts,
                        extents: f.extents.clone(),
                        size: f.size,
                    },
                )
            })
            .collect();
        Self { start_lsn, files }
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
            let Extent::Chunk {
                chunk,
                offset: c_off,
                len: c_len,
            } = *e
            else {
                out.truncate(mark);
                return false;
            };
            let skip = pos - start;
            let take = (u64::from(c_len) - skip).min(end - pos);
            out.push(Extent::Chunk {
                chunk,
                offset: c_off + skip as u32,
                len: take as u32,
            });
            pos += take;
            i += 1;
        }
        true
    }
}

/// Page counts of a backup, for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageStats {
    pub relation_pages: u64,
    pub zero_pages: u64,
    /// Pages referenced from the parent backup.
    pub reused_pages: u64,
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
}

struct Current {
    file: usize,
    key: (u32, Vec<u8>),
    /// Whether pages may be taken from the parent by their LSN (main forks only).
    lsn_reuse: bool,
    page_buf: BytesMut,
    run: BytesMut,
    /// The id the current run will have when submitted.
    run_id: u64,
    chunker: Option<Chunker>,
    offset: u64,
}

/// Collects the files of one backup.
pub struct Ingest<'s> {
    session: &'s WriteSession,
    chunk_size: usize,
    cdc: Chunking,
    parent: Option<Parent>,
    files: Vec<FileEntry>,
    pieces: Vec<Vec<Piece>>,
    pending: VecDeque<(u64, PendingChunk)>,
    resolved: HashMap<u64, pgkeep_format::ChunkRef>,
    next_run: u64,
    max_pending: usize,
    current: Option<Current>,
    pub stats: PageStats,
}

impl std::fmt::Debug for Ingest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("files", &self.files.len())
            .finish_non_exhaustive()
    }
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
        max_pending: usize,
    ) -> Self {
        Self {
            session,
            chunk_size: chunk_size.max(PAGE) / PAGE * PAGE,
            cdc,
            parent,
            files: Vec::new(),
            pieces: Vec::new(),
            pending: VecDeque::new(),
            resolved: HashMap::new(),
            next_run: 0,
            max_pending: max_pending.max(1),
            current: None,
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
                return Err(Error::InvalidInput(format!(
                    "the server sent {:?} as {other:?}; base backups hold only files, directories and symlinks",
                    String::from_utf8_lossy(&e.path)
                )))
            }
        };
        let idx = self.files.len();
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
                lsn_reuse: has_reliable_page_lsn(&e.path),
                key: (tablespace, e.path),
                page_buf: BytesMut::new(),
                run: BytesMut::new(),
                run_id,
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

    async fn page(&mut self, cur: &mut Current, page: Bytes) -> Result<()> {
        self.stats.relation_pages += 1;
        let offset = cur.offset;
        cur.offset += PAGE as u64;
        if page.iter().all(|b| *b == 0) {
            self.interrupt_run(cur).await?;
            self.stats.zero_pages += 1;
            self.push_done(cur.file, Extent::Zeros { len: PAGE as u64 });
            return Ok(());
        }
        if let Some(parent) = self.parent.as_ref().filter(|_| cur.lsn_reuse) {
            if page_lsn(&page) < parent.start_lsn {
                let mut slice = Vec::new();
                if parent.slice(&cur.key, offset, PAGE as u64, &mut slice) {
                    self.interrupt_run(cur).await?;
                    self.stats.reused_pages += 1;
                    for e in slice {
                        self.push_done(cur.file, e);
                    }
                    return Ok(());
                }
            }
        }
        let piece = Piece::Slice {
            run: cur.run_id,
            offset: cur.run.len() as u32,
            len: PAGE as u32,
        };
        if let Some(p) = self.pieces.get_mut(cur.file) {
            p.push(piece);
        }
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
        if let Some(p) = self.pieces.get_mut(file) {
            p.push(Piece::Done(e));
        }
    }

    /// Submits `data` as one chunk that becomes the next piece of `file` in full.
    async fn submit_whole(&mut self, file: usize, data: Bytes) -> Result<()> {
        let run = self.new_run_id();
        if let Some(p) = self.pieces.get_mut(file) {
            p.push(Piece::Slice {
                run,
                offset: 0,
                len: data.len() as u32,
            });
        }
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
        if let Some(mut chunker) = cur.chunker.take() {
            while let Some(c) = chunker.finish() {
                self.submit_whole(cur.file, c).await?;
            }
        } else {
            self.flush_run(&mut cur).await?;
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
            for p in pieces {
                let e = match p {
                    Piece::Done(e) => e,
                    Piece::Slice { run, offset, len } => Extent::Chunk {
                        chunk: *self
                            .resolved
                            .get(&run)
                            .ok_or_else(|| Error::Pipeline("a chunk was never resolved".into()))?,
                        offset,
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

/// Appends `e`, merging it with the previous extent when they are contiguous (adjacent
/// slices of one chunk, or two zero runs).
fn merge_push(extents: &mut Vec<Extent>, e: Extent) {
    match (extents.last_mut(), e) {
        (Some(Extent::Zeros { len }), Extent::Zeros { len: more }) => *len += more,
        (
            Some(Extent::Chunk { chunk, offset, len }),
            Extent::Chunk {
                chunk: next,
                offset: next_off,
                len: next_len,
            },
        ) if chunk.id == next.id && *offset + *len == next_off => *len += next_len,
        _ => extents.push(e),
    }
}
