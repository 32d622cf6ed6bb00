//! Checking an archived file against its name and cluster, computing its meta (size,
//! checksum, system identifier, and for segments the time-index summary), and compressing and
//! encrypting it.
//!
//! Blocking work (reading files, hashing, compressing, on threads of its own); callers run it
//! off the async runtime.

use pgkeep_format::{
    Lsn, SegmentFacts, SegmentName, WalFileKind, WalFileName, WalMeta, WalSummary,
};

use std::fs::File;
use std::num::NonZeroUsize;
use std::ops::{Deref, Range};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};

use pgkeep_format::body::{compress_frame, PART_LEN};
use pgkeep_format::wal::{seal_wal_data, seal_wal_data_frames};
use pgkeep_format::{ChecksumAlgorithm, FileChecksum, RepoKeys};

use crate::error::{Error, Result};
use crate::repository::random_bytes;
use crate::wal::archive::PreparedWal;
use crate::wal::checksum::FileHasher;
use crate::wal::decode::PageHeader;
use crate::wal::summary::Summarizer;

/// What the long page header at the start of a segment says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentIdentity {
    pub system_id: u64,
    pub segment_size: u32,
    /// The server's major version, from the page magic.
    pub pg_major: u32,
    /// The segment's first LSN.
    pub start: Lsn,
}

/// Reads and checks a segment's long page header: it must be one, its page address must be
/// where the name says the segment starts, its timeline not after the name's (the first
/// segment of a new timeline begins with pages copied from the old one), and the file must be
/// a whole segment (a `.partial` file may be shorter). `bytes` are the file's first bytes (at
/// least its first page header), `len` its length.
fn identify(name: &WalFileName, bytes: &[u8], len: u64) -> Result<SegmentIdentity> {
    let refuse = |reason: String| Error::WalRefused {
        file: name.to_string(),
        reason,
    };
    let header = PageHeader::parse(bytes).map_err(|e| {
        refuse(format!(
            "not a PostgreSQL WAL segment: its first page header is unreadable ({e})"
        ))
    })?;
    let Some(long) = header.long else {
        return Err(refuse(
            "not the start of a WAL segment: its first page has no long header".into(),
        ));
    };
    let segment_size = pgkeep_format::pg::check_segment_size(u64::from(long.seg_size))
        .map_err(|e| refuse(format!("its header declares a bad segment size: {e}")))?;
    let seg_part = name.segment_part().unwrap_or_default();
    let seg = SegmentName::parse(seg_part, segment_size).map_err(|e| refuse(e.to_string()))?;
    let start = seg.start_lsn();
    if header.pageaddr != start {
        return Err(refuse(format!(
            "its first page is for WAL position {}, but the name says the segment starts at {start}: \
             the file was renamed or copied over another segment",
            header.pageaddr
        )));
    }
    if header.timeline.0 > name.timeline().0 {
        return Err(refuse(format!(
            "its first page belongs to timeline {}, after the name's timeline {}",
            header.timeline.0,
            name.timeline().0
        )));
    }
    let whole = u64::from(segment_size);
    match name.kind() {
        WalFileKind::Segment if len != whole => Err(refuse(format!(
            "is {len} bytes, but a segment of this server is {whole} bytes: a segment is archived only once complete"
        ))),
        WalFileKind::Partial if len > whole => Err(refuse(format!(
            "is {len} bytes, more than the segment size {whole}"
        ))),
        _ => Ok(SegmentIdentity {
            system_id: long.system_id,
            segment_size,
            pg_major: header.pg_major().unwrap_or(0),
            start,
        }),
    }
}

/// A file's length and checksum (in `algorithm`, the stored copy's), and for a segment its
/// identity, read a part at a time through one buffer: for comparing a file with its stored
/// copy without holding it in memory. The file is checked against its name as
/// [`prepare_chain`] checks it.
pub fn fingerprint(
    name: &WalFileName,
    path: &Path,
    algorithm: ChecksumAlgorithm,
) -> Result<(u64, FileChecksum, Option<SegmentIdentity>)> {
    let free = FreeList::new();
    let read_error = |e| Error::io(format!("reading {}", path.display()), e);
    let reader = Reader::open(WalSource::Path(path.to_path_buf()), &free).map_err(read_error)?;
    let len = reader.len;
    let mut checked = None;
    let mut hasher = FileHasher::new(algorithm);
    for part in reader {
        let part = part.map_err(read_error)?;
        if checked.is_none() {
            checked = Some(Describing::start(name, &part, len)?);
        }
        hasher.update(&part);
    }
    let checked = match checked {
        Some(d) => d,
        None => Describing::start(name, &[], len)?,
    };
    Ok((len, hasher.finish(), checked.identity))
}

/// Where the bytes of a file to prepare come from.
#[derive(Debug)]
pub enum WalSource {
    /// In memory already (a segment `wal-stream` received).
    Bytes(Vec<u8>),
    /// On disk, read a part at a time by [`prepare_chain`].
    Path(PathBuf),
}

/// One part of a file being prepared (at most `body::PART_LEN` bytes), shared by the threads
/// that hash, summarize and compress it.
///
/// A part read from disk is in a buffer of the chain's free list, and the buffer goes back
/// there when the last of those threads drops the part. A 16 MiB segment thus passes through
/// a few buffers that stay in cache. Reading it whole into a fresh 16 MiB allocation cost a
/// page fault and a page of zeroing per 4 KiB: on this project's 2-core machine that was a
/// third of a `wal-push` call's CPU (`perf record` of 20 calls).
enum Part {
    /// Read from disk into a buffer of the free list `home`.
    Read {
        buf: Vec<u8>,
        home: mpsc::Sender<Vec<u8>>,
    },
    /// A range of a file held in memory.
    Shared {
        file: Arc<Vec<u8>>,
        range: Range<usize>,
    },
}

impl Deref for Part {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Read { buf, .. } => buf,
            Self::Shared { file, range } => &file[range.clone()],
        }
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if let Self::Read { buf, home } = self {
            // After the chain is over the free list is gone, and the buffer is simply freed.
            let _ = home.send(std::mem::take(buf));
        }
    }
}

/// Buffers for the parts read from disk, reused once every thread is done with them.
struct FreeList {
    home: mpsc::Sender<Vec<u8>>,
    free: mpsc::Receiver<Vec<u8>>,
}

impl FreeList {
    fn new() -> Self {
        let (home, free) = mpsc::channel();
        Self { home, free }
    }

    /// A buffer of `len` bytes: a used one if any came back (its stale bytes are then
    /// overwritten by the read), else a new one.
    fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = self.free.try_recv().unwrap_or_default();
        buf.resize(len, 0);
        buf
    }
}

/// A file of a chain, opened, and read a part at a time.
struct Reader<'a> {
    source: Opened,
    len: u64,
    /// Where the next part starts.
    next: u64,
    free: &'a FreeList,
}

enum Opened {
    Disk(File),
    Memory(Arc<Vec<u8>>),
}

impl<'a> Reader<'a> {
    fn open(source: WalSource, free: &'a FreeList) -> std::io::Result<Self> {
        let (source, len) = match source {
            WalSource::Bytes(file) => {
                let len = file.len() as u64;
                (Opened::Memory(Arc::new(file)), len)
            }
            WalSource::Path(path) => {
                let file = File::open(path)?;
                let len = file.metadata()?.len();
                (Opened::Disk(file), len)
            }
        };
        Ok(Self {
            source,
            len,
            next: 0,
            free,
        })
    }
}

impl Iterator for Reader<'_> {
    type Item = std::io::Result<Part>;

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.next;
        let n = usize::try_from((self.len - start).min(PART_LEN as u64)).ok()?;
        if n == 0 {
            return None;
        }
        self.next += n as u64;
        Some(match &self.source {
            Opened::Memory(file) => usize::try_from(start)
                .map(|start| Part::Shared {
                    file: Arc::clone(file),
                    range: start..start + n,
                })
                .map_err(|_| std::io::Error::other("larger than this machine can address")),
            Opened::Disk(file) => {
                let mut buf = self.free.take(n);
                file.read_exact_at(&mut buf, start).map(|()| Part::Read {
                    buf,
                    home: self.free.home.clone(),
                })
            }
        })
    }
}

/// A part for a compressing thread: part `index` of file `file` of the chain.
struct Work {
    file: usize,
    index: usize,
    part: Arc<Part>,
}

/// A compressing thread: takes parts off the shared queue until it closes, and returns what
/// it made of each.
fn compress_queue(
    queue: &Mutex<mpsc::Receiver<Work>>,
    level: i8,
) -> Vec<(usize, usize, std::io::Result<Vec<u8>>)> {
    let mut done = Vec::new();
    loop {
        // The lock is held while waiting, not while compressing.
        let work = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => break,
        };
        let Ok(Work { file, index, part }) = work else {
            break;
        };
        done.push((file, index, compress_frame(&part, level)));
    }
    done
}

/// The start of a record a file continues from the one before (see `WalSummary::tail`).
type Tail = Option<(Lsn, Vec<u8>)>;

/// A file as the coordinating thread reads it: checked from its first part, summarized in
/// order once the tail it continues is known.
struct Describing {
    identity: Option<SegmentIdentity>,
    summary: Option<Box<Summarizer>>,
    /// Parts read before the tail was known.
    waiting: Vec<Arc<Part>>,
}

impl Describing {
    /// Checks the file from its first part, `head` (for a segment, at least its first page
    /// header), and its length, `len`.
    fn start(name: &WalFileName, head: &[u8], len: u64) -> Result<Self> {
        let identity = match name.kind() {
            WalFileKind::Segment | WalFileKind::Partial => Some(identify(name, head, len)?),
            WalFileKind::History | WalFileKind::BackupHistory => {
                check_text_file(name, len)?;
                None
            }
        };
        Ok(Self {
            identity,
            summary: None,
            waiting: Vec::new(),
        })
    }

    /// Whether the summary still needs the tail.
    fn needs_tail(&self) -> bool {
        self.identity.is_some() && self.summary.is_none()
    }

    /// Summarizes the file's next part, or keeps it until the tail is given.
    fn feed(&mut self, part: Arc<Part>) {
        match (&self.identity, &mut self.summary) {
            (Some(_), Some(summary)) => summary.feed(&part),
            (Some(_), None) => self.waiting.push(part),
            (None, _) => {}
        }
    }

    /// Starts the summary from the tail the file continues, with the parts waiting for it.
    fn tail(&mut self, tail: Tail) {
        let Some(id) = self.identity.filter(|_| self.summary.is_none()) else {
            return;
        };
        let mut summary = Box::new(Summarizer::new(id.start, id.segment_size, tail));
        for part in self.waiting.drain(..) {
            summary.feed(&part);
        }
        self.summary = Some(summary);
    }

    /// The file's description: its identity (for a segment) and summary.
    fn finish(self) -> Described {
        Described {
            identity: self.identity,
            summary: self.summary.map(|s| s.finish()),
        }
    }
}

/// What a file's bytes say besides its length and checksum.
struct Described {
    identity: Option<SegmentIdentity>,
    summary: Option<WalSummary>,
}

impl Described {
    fn into_meta(self, len: u64, checksum: FileChecksum) -> (WalMeta, Option<SegmentIdentity>) {
        let meta = WalMeta {
            size: len,
            checksum,
            segment: self.identity.map(|id| SegmentFacts {
                system_id: id.system_id,
                segment_size: id.segment_size,
                pg_major: id.pg_major,
            }),
            summary: self.summary,
        };
        (meta, self.identity)
    }
}

/// What the coordinating thread made of one file of a chain.
struct Read<'scope> {
    len: u64,
    /// How many parts went to the compressing queue.
    parts: usize,
    described: Result<Described>,
    /// Its checksum, from a thread of its own.
    digest: ScopedJoinHandle<'scope, FileChecksum>,
    /// The parts themselves, kept only when nothing is compressed (level 0).
    raw: Vec<Arc<Part>>,
}

/// Prepares consecutive files at once: reads each a part (`body::PART_LEN`) at a time, and
/// hands every part to three consumers: a checksum thread per file, a queue of compressing
/// threads (one per core, each part a zstd frame), and this thread, which checks headers and
/// summarizes the files in order (each summary needs the tail of the one before; that is the
/// only sequential part). A part's buffer is reused once all three are done with it, and the
/// queue and the checksum thread's channel hold one part per core, so memory stays a few
/// parts per core whatever the chain's length. (A queue of two parts per core, as before,
/// kept about 450 more pages of a `wal-push` call faulted in for no gain in time: 4 rounds
/// of 20 segments each way, alternating, medians 35.5 against 34.9 ms and 33.8 against
/// 35.5 ms.) Used by `wal-push` (with and without look-ahead) and `wal-stream`: PostgreSQL
/// waits for `archive_command`, so its latency is what counts, and it is the longest of
/// these rather than their sum.
///
/// `first_tail` gives the record start the first file continues; it runs on a thread of its
/// own while the files are read, so the caller can fetch it meanwhile.
pub fn prepare_chain(
    files: Vec<(WalFileName, WalSource)>,
    first_tail: impl FnOnce() -> Tail + Send,
    keys: &RepoKeys,
    objects: &[String],
    level: i8,
) -> Vec<Result<(PreparedWal, Option<SegmentIdentity>)>> {
    let workers = std::thread::available_parallelism().map_or(2, NonZeroUsize::get);
    let free = FreeList::new();
    let (names, sources): (Vec<WalFileName>, Vec<WalSource>) = files.into_iter().unzip();
    let (queue, work) = mpsc::sync_channel::<Work>(workers);
    let work = Mutex::new(work);
    let (reads, mut frames) = std::thread::scope(|s| {
        let (tail_tx, tail_rx) = mpsc::channel();
        s.spawn(move || tail_tx.send(first_tail()));
        let compressors: Vec<_> = (0..if level > 0 { workers } else { 0 })
            .map(|_| s.spawn(|| compress_queue(&work, level)))
            .collect();
        let chain = Chain {
            free: &free,
            queue,
            workers,
            first_tail: tail_rx,
            level,
        };
        // The tail the next file continues: `None` while the first file's is still coming.
        let mut tail: Option<Tail> = None;
        let mut reads = Vec::new();
        for (f, (name, source)) in names.iter().zip(sources).enumerate() {
            let read = chain.read_file(s, f, name, source, tail.take());
            let summary = read
                .described
                .as_ref()
                .ok()
                .and_then(|d| d.summary.as_ref());
            tail = Some(summary.and_then(|s| s.tail.clone()));
            reads.push(read);
        }
        drop(chain);
        let mut frames: Vec<Vec<Option<std::io::Result<Vec<u8>>>>> = reads
            .iter()
            .map(|r| (0..r.parts).map(|_| None).collect())
            .collect();
        // A compressing thread that panicked leaves its parts without a frame.
        for (f, i, frame) in compressors
            .into_iter()
            .flat_map(|c| c.join().unwrap_or_default())
        {
            frames[f][i] = Some(frame);
        }
        let reads: Vec<_> = reads
            .into_iter()
            .map(|r| (r.len, r.described, r.digest.join().ok(), r.raw))
            .collect();
        (reads, frames)
    });
    names
        .into_iter()
        .zip(reads)
        .zip(objects)
        .enumerate()
        .map(|(f, ((name, (len, described, digest, raw)), object))| {
            let described = described?;
            let digest = digest.ok_or_else(|| {
                Error::Pipeline(format!("hashing {name} failed (thread panicked)"))
            })?;
            let kind = name.object_kind();
            let data_unit = if level > 0 {
                let frames = std::mem::take(&mut frames[f])
                    .into_iter()
                    .map(|frame| match frame {
                        Some(Ok(frame)) => Ok(frame),
                        Some(Err(e)) => Err(Error::Pipeline(format!("compressing {name}: {e}"))),
                        None => Err(Error::Pipeline(format!(
                            "compressing {name} failed (thread panicked)"
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?;
                seal_wal_data_frames(keys, kind, object, random_bytes(), len, level, &frames)
            } else {
                let mut file = Vec::with_capacity(raw.iter().map(|p| p.len()).sum());
                for part in &raw {
                    file.extend_from_slice(part);
                }
                seal_wal_data(keys, kind, object, random_bytes(), &file, level)
            };
            let (meta, identity) = described.into_meta(len, digest);
            Ok((
                PreparedWal {
                    meta,
                    name,
                    data_unit,
                },
                identity,
            ))
        })
        .collect()
}

/// What every file of a chain is read with.
struct Chain<'env> {
    free: &'env FreeList,
    /// The compressing threads' queue.
    queue: mpsc::SyncSender<Work>,
    /// How many parts the checksum thread's channel holds (one per core, as the queue).
    workers: usize,
    /// The record start the first file continues, once the caller has it.
    first_tail: mpsc::Receiver<Tail>,
    level: i8,
}

impl<'env> Chain<'env> {
    /// Reads file `f` a part at a time, handing each part to its hasher, to the compressing
    /// queue (or keeping it, at level 0) and to its summary. `tail` is the record start the
    /// file continues (`None` for the first file: it comes on `first_tail`).
    fn read_file<'scope>(
        &self,
        s: &'scope Scope<'scope, 'env>,
        f: usize,
        name: &WalFileName,
        source: WalSource,
        mut tail: Option<Tail>,
    ) -> Read<'scope> {
        let (to_hasher, parts) = mpsc::sync_channel::<Arc<Part>>(self.workers);
        let algorithm = name.checksum_algorithm();
        let digest = s.spawn(move || {
            let mut hasher = FileHasher::new(algorithm);
            for part in parts {
                hasher.update(&part);
            }
            hasher.finish()
        });
        let shown = match &source {
            WalSource::Path(path) => path.display().to_string(),
            WalSource::Bytes(_) => name.to_string(),
        };
        let read_error = |e| Error::io(format!("reading {shown}"), e);
        let (mut len, mut count, mut raw) = (0, 0, Vec::new());
        let describe = || -> Result<Described> {
            let reader = Reader::open(source, self.free).map_err(read_error)?;
            len = reader.len;
            let mut describing: Option<Describing> = None;
            for part in reader {
                let part = Arc::new(part.map_err(read_error)?);
                let d = match &mut describing {
                    Some(d) => d,
                    None => describing.insert(Describing::start(name, &part, len)?),
                };
                let _ = to_hasher.send(Arc::clone(&part));
                if self.level > 0 {
                    let work = Work {
                        file: f,
                        index: count,
                        part: Arc::clone(&part),
                    };
                    // Closed only if every compressing thread panicked: reported at the end.
                    let _ = self.queue.send(work);
                } else {
                    raw.push(Arc::clone(&part));
                }
                count += 1;
                if d.needs_tail() {
                    tail = tail.take().or_else(|| self.first_tail.try_recv().ok());
                    if let Some(t) = tail.take() {
                        d.tail(t);
                    }
                }
                d.feed(part);
            }
            let mut d = match describing {
                Some(d) => d,
                None => Describing::start(name, &[], len)?,
            };
            if d.needs_tail() {
                let t = tail
                    .take()
                    .unwrap_or_else(|| self.first_tail.recv().ok().flatten());
                d.tail(t);
            }
            Ok(d.finish())
        };
        let described = describe();
        drop(to_hasher);
        Read {
            len,
            parts: count,
            described,
            digest,
            raw,
        }
    }
}

/// History and backup history files are short text files. Their text is not checked (a
/// restore point name in a reason line may be in any server encoding, and refusing would stall
/// archiving), only their size.
fn check_text_file(name: &WalFileName, len: u64) -> Result<()> {
    const LIMIT: u64 = 16 << 20;
    if len > LIMIT {
        return Err(Error::WalRefused {
            file: name.to_string(),
            reason: format!("is {len} bytes; history files are short text files"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use pgkeep_format::wal::{assemble_wal_object, open_wal_object};

    use super::*;
    use crate::bench::throwaway_keys;
    use crate::wal::checksum::file_checksum;
    use crate::wal::decode::synth::WalWriter;
    use crate::wal::decode::WalVersion;
    use crate::wal::summary::summarize;

    /// Two 8 MiB segments (two parts each) of records of assorted sizes, some crossing pages
    /// and one crossing the boundary between the two.
    fn two_segments(seg: u32) -> Vec<u8> {
        let start = Lsn(2 * u64::from(seg));
        let mut w = WalWriter::new(start, seg, WalVersion::V15);
        let mut i = 0u32;
        while w.position().0 < start.0 + 2 * u64::from(seg) {
            let len = [60, 200, 3000, 9000][(i % 4) as usize] + (i % 17) as usize;
            let body: Vec<u8> = (0..len).map(|b| (b as u32 ^ i) as u8).collect();
            w.record_with_main_data(10, 0, 700 + i, &body);
            i += 1;
        }
        w.into_bytes()
    }

    #[test]
    fn a_chain_read_in_parts_is_the_files_with_their_summaries() {
        let seg: u32 = 8 << 20;
        let wal = two_segments(seg);
        let (first, second) = (&wal[..seg as usize], &wal[seg as usize..2 * seg as usize]);
        let dir = tempfile::tempdir().expect("tempdir");
        let second_path = dir.path().join("000000010000000000000003");
        std::fs::write(&second_path, second).expect("write");
        let missing = dir.path().join("000000010000000000000004");
        let names: Vec<WalFileName> = [
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
        ]
        .iter()
        .map(|n| WalFileName::parse(n).expect("name"))
        .collect();
        let objects: Vec<String> = names.iter().map(|n| format!("wal/{n}")).collect();
        let keys = throwaway_keys();
        let sources = vec![
            WalSource::Bytes(first.to_vec()),
            WalSource::Path(second_path),
            WalSource::Path(missing.clone()),
        ];
        let files = names.iter().cloned().zip(sources).collect();
        let mut results = prepare_chain(files, || None, &keys, &objects, 1).into_iter();

        // Each file as it is, its checksum, and the summary a one-piece pass gives; the second
        // one continues the record the first one's tail began.
        let mut tail: Option<(Lsn, Vec<u8>)> = None;
        let mut second_summary = WalSummary::default();
        for ((bytes, name), object) in [first, second].iter().zip(&names).zip(&objects) {
            let (prepared, identity) = results.next().expect("result").expect("prepared");
            let id = identity.expect("a segment");
            // A segment's checksum is BLAKE3 (format 1.5).
            assert_eq!(
                prepared.meta.checksum,
                file_checksum(ChecksumAlgorithm::Blake3, bytes)
            );
            let expected = summarize([*bytes], id.start, seg, tail.take());
            assert_eq!(expected.stopped, None);
            assert!(!expected.head_unknown);
            assert!(expected.records > 1000, "{} records", expected.records);
            assert_eq!(prepared.meta.summary.as_ref(), Some(&expected));
            // Both end inside a record; the first one's is continued by the second, whose
            // head is therefore known.
            assert!(expected.tail.is_some(), "{name}");
            tail = expected.tail.clone();
            second_summary = expected.clone();
            // Compressed, as one frame per part.
            let unit_len = prepared.data_unit.len();
            assert!(unit_len < bytes.len() / 2, "{unit_len} bytes");
            let (meta, file) = open(&keys, object, &prepared);
            assert_eq!((meta, file.as_slice()), (prepared.meta, *bytes));
        }
        let err = results.next().expect("result").expect_err("missing file");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );

        // The second alone, given the first one's tail by the caller: the same summary.
        let first_summary = summarize([first], Lsn(2 * u64::from(seg)), seg, None);
        let files = vec![(names[1].clone(), WalSource::Bytes(second.to_vec()))];
        let alone = prepare_chain(files, || first_summary.tail, &keys, &objects[1..2], 1);
        let (prepared, _) = alone.into_iter().next().expect("one").expect("prepared");
        assert_eq!(prepared.meta.summary, Some(second_summary));
    }

    /// Opens a prepared file's object and returns its meta and bytes.
    fn open(keys: &RepoKeys, object: &str, prepared: &PreparedWal) -> (WalMeta, Vec<u8>) {
        let kind = prepared.name.object_kind();
        let bytes = assemble_wal_object(
            keys,
            kind,
            object,
            &prepared.meta,
            [1; 24],
            &prepared.data_unit,
            1,
        )
        .expect("seals");
        open_wal_object(keys, kind, object, &bytes).expect("opens")
    }

    #[test]
    fn a_tail_that_comes_late_gives_the_same_summary_and_level_zero_stores_the_file() {
        let seg: u32 = 8 << 20;
        let wal = two_segments(seg);
        let (first, second) = (&wal[..seg as usize], &wal[seg as usize..2 * seg as usize]);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("000000010000000000000003");
        std::fs::write(&path, second).expect("write");
        let name = WalFileName::parse("000000010000000000000003").expect("name");
        let objects = vec![format!("wal/{name}")];
        let keys = throwaway_keys();
        let first_summary = summarize([first], Lsn(2 * u64::from(seg)), seg, None);
        let expected = summarize(
            [second],
            Lsn(3 * u64::from(seg)),
            seg,
            first_summary.tail.clone(),
        );
        assert!(!expected.head_unknown && expected.stopped.is_none());
        for level in [1, 0] {
            let tail = first_summary.tail.clone();
            // The caller's fetch of the tail outlasts the reading of every part.
            let late = move || {
                std::thread::sleep(std::time::Duration::from_millis(300));
                tail
            };
            let files = vec![(name.clone(), WalSource::Path(path.clone()))];
            let mut results = prepare_chain(files, late, &keys, &objects, level);
            let (prepared, _) = results.remove(0).expect("prepared");
            assert_eq!(prepared.meta.summary.as_ref(), Some(&expected));
            let (meta, file) = open(&keys, &objects[0], &prepared);
            assert_eq!((meta, file.as_slice()), (prepared.meta.clone(), second));
            if level == 0 {
                assert!(prepared.data_unit.len() > second.len(), "stored raw");
            } else {
                assert!(prepared.data_unit.len() < second.len() / 2, "compressed");
            }
        }
    }

    #[test]
    fn a_file_that_does_not_compress_is_stored_as_frames_and_round_trips() {
        let mut noise = vec![0u8; 3 * PART_LEN + 1000];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut noise);
        let name = WalFileName::parse("00000002.history").expect("name");
        let objects = vec![format!("wal/{name}")];
        let keys = throwaway_keys();
        let files = vec![(name, WalSource::Bytes(noise.clone()))];
        let mut results = prepare_chain(files, || None, &keys, &objects, 1);
        let (prepared, identity) = results.remove(0).expect("prepared");
        assert_eq!(identity, None);
        // A history file's checksum stays SHA-256.
        assert_eq!(
            prepared.meta.checksum,
            file_checksum(ChecksumAlgorithm::Sha256, &noise)
        );
        // zstd's raw blocks: a few bytes per frame and block more than the file.
        assert!(prepared.data_unit.len() < noise.len() + 4096);
        let (_, file) = open(&keys, &objects[0], &prepared);
        assert_eq!(file, noise);
    }

    #[test]
    fn a_fingerprint_is_the_files_length_checksum_and_identity() {
        let seg: u32 = 8 << 20;
        let wal = two_segments(seg);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("000000010000000000000002");
        std::fs::write(&path, &wal[..seg as usize]).expect("write");
        let name = WalFileName::parse("000000010000000000000002").expect("name");
        // In the algorithm asked for: the stored copy's, which may be older than BLAKE3.
        for algorithm in [ChecksumAlgorithm::Sha256, ChecksumAlgorithm::Blake3] {
            let (len, digest, _) = fingerprint(&name, &path, algorithm).expect("fingerprint");
            assert_eq!(
                (len, digest),
                (
                    u64::from(seg),
                    file_checksum(algorithm, &wal[..seg as usize])
                )
            );
        }
        let (_, _, identity) =
            fingerprint(&name, &path, ChecksumAlgorithm::Blake3).expect("fingerprint");
        let id = identity.expect("a segment");
        assert_eq!((id.start, id.segment_size), (Lsn(2 * u64::from(seg)), seg));

        // Under another segment's name, or cut short, it is refused and the message says why.
        let other = WalFileName::parse("000000010000000000000005").expect("name");
        let err = fingerprint(&other, &path, ChecksumAlgorithm::Blake3).expect_err("misnamed");
        assert!(err.to_string().contains("the name says"), "{err}");
        std::fs::write(&path, &wal[..1000]).expect("write");
        let err = fingerprint(&name, &path, ChecksumAlgorithm::Blake3).expect_err("short");
        assert!(
            err.to_string()
                .contains("a segment is archived only once complete"),
            "{err}"
        );
        let err = fingerprint(&name, &dir.path().join("gone"), ChecksumAlgorithm::Blake3)
            .expect_err("missing");
        assert!(err.to_string().contains("gone"), "{err}");
    }
}
