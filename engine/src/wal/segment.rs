//! Checking an archived file against its name and cluster, and computing its meta: size,
//! SHA-256, system identifier, and for segments the time-index summary.
//!
//! Pure CPU work on bytes already read; callers run it off the async runtime.

use pgkeep_format::{
    Lsn, SegmentFacts, SegmentName, WalFileKind, WalFileName, WalMeta, WalSummary,
};

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc;

use pgkeep_format::body::{compress_part, parts, PART_LEN};
use pgkeep_format::wal::seal_wal_data_parts;
use pgkeep_format::{Kind, RepoKeys};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::repository::random_bytes;
use crate::wal::archive::{sha256, PreparedWal};
use crate::wal::decode::PageHeader;
use crate::wal::summary::Summarizer;

/// Compresses a file's parts (`body::PART_LEN` each, four for a 16 MiB segment) on threads
/// of their own, then seals the data unit. archive_command's latency is what PostgreSQL waits
/// for, and zstd is most of a call's CPU: as one frame it ran on one core while the other
/// had only the SHA-256 and the summary to do.
pub fn seal_data_unit(
    keys: &RepoKeys,
    kind: Kind,
    object: &str,
    file: &[u8],
    level: i8,
) -> Vec<u8> {
    let frames: Vec<Option<Vec<u8>>> = if level > 0 {
        std::thread::scope(|s| {
            let workers: Vec<_> = parts(file)
                .map(|part| s.spawn(move || compress_part(part, level)))
                .collect();
            // A part whose thread panicked counts as not compressed: the file is stored raw.
            workers
                .into_iter()
                .map(|w| w.join().ok().flatten())
                .collect()
        })
    } else {
        Vec::new()
    };
    seal_wal_data_parts(keys, kind, object, random_bytes(), file, level, &frames)
}

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
/// a whole segment (a `.partial` file may be shorter).
pub fn identify_segment(name: &WalFileName, bytes: &[u8]) -> Result<SegmentIdentity> {
    identify(name, bytes, bytes.len() as u64)
}

/// [`identify_segment`] from the file's first bytes (at least its first page header) and its
/// length.
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

/// Builds the meta of a file about to be stored. For segments, `prev_tail` is the carried-over
/// start of a record that began in the previous segment (from that segment's summary), so a
/// record straddling the boundary is summarized here.
pub fn prepare(
    name: WalFileName,
    file: Vec<u8>,
    prev_tail: Option<(Lsn, Vec<u8>)>,
) -> Result<(PreparedWal, Option<SegmentIdentity>)> {
    let (meta, identity) = build_meta(&name, &file, prev_tail)?;
    Ok((
        PreparedWal {
            name,
            meta,
            file,
            data_unit: None,
        },
        identity,
    ))
}

/// Where and how [`prepare_sealed`] seals the data unit.
#[derive(Debug, Clone, Copy)]
pub struct Sealing<'a> {
    pub keys: &'a RepoKeys,
    /// The object name (the data unit's associated data depends on it).
    pub object: &'a str,
    pub level: i8,
}

/// [`prepare`], and the data unit sealed (compressed and encrypted) on a second thread while
/// this one hashes and summarizes: the two halves of `wal-push`'s CPU work need nothing from
/// each other, and archive_command's latency is what PostgreSQL waits for.
pub fn prepare_sealed(
    name: WalFileName,
    file: Vec<u8>,
    prev_tail: Option<(Lsn, Vec<u8>)>,
    sealing: Sealing<'_>,
) -> Result<(PreparedWal, Option<SegmentIdentity>)> {
    let kind = name.object_kind();
    let (data_unit, built) = std::thread::scope(|s| {
        let sealer =
            s.spawn(|| seal_data_unit(sealing.keys, kind, sealing.object, &file, sealing.level));
        let built = build_meta(&name, &file, prev_tail);
        (sealer.join(), built)
    });
    let data_unit = data_unit
        .map_err(|_| Error::Pipeline(format!("sealing {name} failed (thread panicked)")))?;
    let (meta, identity) = built?;
    Ok((
        PreparedWal {
            name,
            meta,
            file,
            data_unit: Some(data_unit),
        },
        identity,
    ))
}

/// Where the bytes of a file to prepare come from.
#[derive(Debug)]
pub enum WalSource {
    /// Read already (a file first compared with its stored copy).
    Bytes(Vec<u8>),
    /// Read by [`prepare_chain`], each part by the thread that then compresses it.
    Path(PathBuf),
}

/// One file of a chain, as [`prepare_chain`] holds it while its parts are read.
struct Loading {
    buf: Vec<u8>,
    /// The open file, when the parts are still to be read.
    file: Option<File>,
    /// Where it is, for messages.
    path: Option<PathBuf>,
    /// Why the file could not be opened, if it could not.
    failed: Option<std::io::Error>,
}

impl Loading {
    fn open(source: WalSource) -> Self {
        let path = match source {
            WalSource::Bytes(buf) => {
                return Self {
                    buf,
                    file: None,
                    path: None,
                    failed: None,
                }
            }
            WalSource::Path(path) => path,
        };
        let opened = File::open(&path).and_then(|f| {
            let len = usize::try_from(f.metadata()?.len())
                .map_err(|_| std::io::Error::other("larger than this machine can address"))?;
            Ok((f, len))
        });
        match opened {
            // Fresh zeroed pages from the allocator; the reads touch them first, on the part
            // threads.
            Ok((f, len)) => Self {
                buf: vec![0; len],
                file: Some(f),
                path: Some(path),
                failed: None,
            },
            Err(e) => Self {
                buf: Vec::new(),
                file: None,
                path: Some(path),
                failed: Some(e),
            },
        }
    }
}

fn read_error(path: &Option<PathBuf>, name: &WalFileName, e: std::io::Error) -> Error {
    let path = path
        .as_ref()
        .map_or_else(|| name.to_string(), |p| p.display().to_string());
    Error::io(format!("reading {path}"), e)
}

/// What [`prepare_chain`]'s coordinating thread waits for.
enum Arrival<'a> {
    /// Part `.1` of file `.0` as its thread reports it: read (or already in memory), or why
    /// not.
    Part(usize, usize, std::io::Result<&'a [u8]>),
    /// The record start the first file continues, once the caller has it.
    FirstTail(Option<(Lsn, Vec<u8>)>),
}

/// On a part's own thread: reads it if its file is not read yet, tells the coordinator, then
/// compresses it (`None`: not compressed; the file is then stored raw).
fn read_and_compress<'a>(
    (f, i): (usize, usize),
    part: &'a mut [u8],
    file: Option<&File>,
    level: i8,
    tx: &mpsc::Sender<Arrival<'a>>,
) -> Option<Vec<u8>> {
    if let Some(file) = file {
        if let Err(e) = file.read_exact_at(part, (i * PART_LEN) as u64) {
            let _ = tx.send(Arrival::Part(f, i, Err(e)));
            return None;
        }
    }
    let part: &'a [u8] = part;
    let _ = tx.send(Arrival::Part(f, i, Ok(part)));
    if level > 0 {
        compress_part(part, level)
    } else {
        None
    }
}

/// Starts describing a file once its first part and the tail it continues are known, and
/// feeds it the parts that arrived meanwhile.
fn feed(
    describing: &mut Option<Result<Describing>>,
    waiting: &mut Vec<&[u8]>,
    name: &WalFileName,
    len: u64,
    prev: &mut Option<(Lsn, Vec<u8>)>,
) {
    let Some(&head) = waiting.first() else {
        return;
    };
    let d = describing.get_or_insert_with(|| Describing::start(name, head, len, prev.take()));
    if let Ok(d) = d {
        for part in waiting.iter() {
            d.feed(part);
        }
    }
    waiting.clear();
}

/// Prepares consecutive files at once. Each file is cut into `body::PART_LEN` parts, and one
/// thread per part reads it (unless the file is in memory already) and compresses it, so
/// reading (a copy and the page faults of a fresh 16 MiB buffer) and zstd, most of the CPU
/// work, are spread over every core. Once a file's parts are all read, its SHA-256 runs on a
/// thread of its own while this thread checks headers and summarizes the files in order (each
/// summary needs the tail of the one before; that is the only sequential part). Used by
/// `wal-push`, with and without look-ahead: PostgreSQL waits for `archive_command`, so its
/// latency is what counts, and it is the longest of these rather than their sum.
///
/// `first_tail` gives the record start the first file continues; it is called only when the
/// first file's parts are in, so the caller can fetch it meanwhile.
pub fn prepare_chain(
    files: Vec<(WalFileName, WalSource)>,
    first_tail: impl FnOnce() -> Option<(Lsn, Vec<u8>)> + Send,
    keys: &RepoKeys,
    objects: &[String],
    level: i8,
) -> Vec<Result<(PreparedWal, Option<SegmentIdentity>)>> {
    let (names, mut loads): (Vec<WalFileName>, Vec<Loading>) = files
        .into_iter()
        .map(|(name, source)| (name, Loading::open(source)))
        .unzip();
    let lens: Vec<u64> = loads.iter().map(|l| l.buf.len() as u64).collect();
    let paths: Vec<Option<PathBuf>> = loads.iter_mut().map(|l| l.path.take()).collect();
    let (frames, digests, described) = std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<Arrival<'_>>();
        let mut workers = Vec::new();
        let mut arrived = Vec::new();
        for (f, load) in loads.iter_mut().enumerate() {
            let file = load.file.as_ref();
            let parts: Vec<&mut [u8]> = load.buf.chunks_mut(PART_LEN).collect();
            let mut waiting: Vec<_> = parts.iter().map(|_| None).collect();
            if let Some(e) = load.failed.take() {
                // Not opened: the file's one "part" is the error.
                waiting = vec![Some(Err(e))];
            }
            arrived.push(waiting);
            let threads: Vec<_> = parts
                .into_iter()
                .enumerate()
                .map(|(i, part)| {
                    let tx = tx.clone();
                    s.spawn(move || read_and_compress((f, i), part, file, level, &tx))
                })
                .collect();
            workers.push(threads);
        }
        // The caller's tail may still be on its way (read from storage meanwhile): a thread
        // waits for it, so that parts keep being hashed while it comes.
        let relay = tx.clone();
        s.spawn(move || relay.send(Arrival::FirstTail(first_tail())));
        drop(tx);
        let mut first_tail: Option<Option<(Lsn, Vec<u8>)>> = None;
        let mut tail = None;
        let mut hashers = Vec::new();
        let mut described = Vec::new();
        // Takes one arrival into the state, or says that none can come any more.
        let receive = |arrived: &mut Vec<Vec<_>>, first_tail: &mut Option<_>| match rx.recv() {
            Ok(Arrival::Part(g, j, part)) => {
                arrived[g][j] = Some(part);
                true
            }
            Ok(Arrival::FirstTail(t)) => {
                *first_tail = Some(t);
                true
            }
            Err(_) => false,
        };
        for (f, name) in names.iter().enumerate() {
            // The first file continues the caller's tail (once it arrives), each other one its
            // predecessor's.
            let mut prev = if f == 0 { None } else { Some(tail.take()) };
            // This file's parts in order, each hashed as soon as it is read and summarized
            // as soon as the tail is known.
            let (to_hasher, parts) = mpsc::channel::<&[u8]>();
            hashers.push(s.spawn(move || sha256_parts(parts)));
            let mut waiting: Vec<&[u8]> = Vec::new();
            let mut describing: Option<Result<Describing>> = None;
            let mut failed = None;
            for i in 0..arrived[f].len() {
                let part = loop {
                    if let Some(part) = arrived[f][i].take() {
                        break part;
                    }
                    if !receive(&mut arrived, &mut first_tail) {
                        break Err(std::io::Error::other("a part's reading thread stopped"));
                    }
                };
                let part = match part {
                    Ok(part) => part,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                let _ = to_hasher.send(part);
                waiting.push(part);
                if prev.is_none() {
                    prev = first_tail.take();
                }
                if let Some(p) = prev.as_mut() {
                    feed(&mut describing, &mut waiting, name, lens[f], p);
                }
            }
            drop(to_hasher);
            let d = if let Some(e) = failed {
                Err(read_error(&paths[f], name, e))
            } else {
                while prev.is_none() {
                    prev = first_tail.take();
                    if prev.is_none() && !receive(&mut arrived, &mut first_tail) {
                        prev = Some(None);
                    }
                }
                if let Some(p) = prev.as_mut() {
                    feed(&mut describing, &mut waiting, name, lens[f], p);
                }
                describing
                    .unwrap_or_else(|| Describing::start(name, &[], 0, None))
                    .map(Describing::finish)
            };
            tail = d
                .as_ref()
                .ok()
                .and_then(|d| d.summary.as_ref())
                .and_then(|s| s.tail.clone());
            described.push(d);
        }
        let frames: Vec<Vec<Option<Vec<u8>>>> = workers
            .into_iter()
            .map(|w| w.into_iter().map(|h| h.join().ok().flatten()).collect())
            .collect();
        let digests: Vec<Option<[u8; 32]>> = hashers.into_iter().map(|h| h.join().ok()).collect();
        (frames, digests, described)
    });
    names
        .into_iter()
        .zip(loads)
        .zip(objects)
        .zip(frames.into_iter().zip(digests).zip(described))
        .map(|(((name, load), object), ((frames, digest), described))| {
            let described = described?;
            let digest = digest.ok_or_else(|| {
                Error::Pipeline(format!("hashing {name} failed (thread panicked)"))
            })?;
            let file = load.buf;
            let data_unit = seal_wal_data_parts(
                keys,
                name.object_kind(),
                object,
                random_bytes(),
                &file,
                level,
                &frames,
            );
            let (meta, identity) = described.into_meta(file.len(), digest);
            Ok((
                PreparedWal {
                    meta,
                    name,
                    file,
                    data_unit: Some(data_unit),
                },
                identity,
            ))
        })
        .collect()
}

/// What a file's bytes say besides its checksum: header facts and the summary.
struct Description {
    facts: Option<SegmentFacts>,
    summary: Option<WalSummary>,
    identity: Option<SegmentIdentity>,
}

impl Description {
    fn into_meta(self, size: usize, sha256: [u8; 32]) -> (WalMeta, Option<SegmentIdentity>) {
        let meta = WalMeta {
            size: size as u64,
            sha256,
            segment: self.facts,
            summary: self.summary,
        };
        (meta, self.identity)
    }
}

/// A file's description, built as its parts arrive in order.
enum Describing {
    Segment {
        id: SegmentIdentity,
        summary: Box<Summarizer>,
    },
    Text,
}

impl Describing {
    /// Checks the file from its first part (for a segment, at least its first page header)
    /// and its length, `len`.
    fn start(
        name: &WalFileName,
        head: &[u8],
        len: u64,
        prev_tail: Option<(Lsn, Vec<u8>)>,
    ) -> Result<Self> {
        match name.kind() {
            WalFileKind::Segment | WalFileKind::Partial => {
                let id = identify(name, head, len)?;
                let summary = Box::new(Summarizer::new(id.start, id.segment_size, prev_tail));
                Ok(Self::Segment { id, summary })
            }
            WalFileKind::History | WalFileKind::BackupHistory => {
                check_text_file(name, len)?;
                Ok(Self::Text)
            }
        }
    }

    /// The file's next part.
    fn feed(&mut self, part: &[u8]) {
        if let Self::Segment { summary, .. } = self {
            summary.feed(part);
        }
    }

    fn finish(self) -> Description {
        match self {
            Self::Segment { id, summary } => Description {
                facts: Some(SegmentFacts {
                    system_id: id.system_id,
                    segment_size: id.segment_size,
                    pg_major: id.pg_major,
                }),
                summary: Some(summary.finish()),
                identity: Some(id),
            },
            Self::Text => Description {
                facts: None,
                summary: None,
                identity: None,
            },
        }
    }
}

/// Describes a file given in consecutive parts, `len` bytes in all.
fn describe(
    name: &WalFileName,
    parts: &[&[u8]],
    len: u64,
    prev_tail: Option<(Lsn, Vec<u8>)>,
) -> Result<Description> {
    let head = parts.first().copied().unwrap_or_default();
    let mut describing = Describing::start(name, head, len, prev_tail)?;
    for part in parts {
        describing.feed(part);
    }
    Ok(describing.finish())
}

fn build_meta(
    name: &WalFileName,
    file: &[u8],
    prev_tail: Option<(Lsn, Vec<u8>)>,
) -> Result<(WalMeta, Option<SegmentIdentity>)> {
    Ok(describe(name, &[file], file.len() as u64, prev_tail)?.into_meta(file.len(), sha256(file)))
}

/// SHA-256 of a file given in consecutive parts.
fn sha256_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
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
            assert_eq!(prepared.file, *bytes);
            assert_eq!(prepared.meta.sha256, sha256(bytes));
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
            let unit = prepared.data_unit.expect("sealed");
            // Compressed, as one frame per part.
            assert!(unit.len() < bytes.len() / 2, "{} bytes", unit.len());
            let kind = name.object_kind();
            let object_bytes =
                assemble_wal_object(&keys, kind, object, &prepared.meta, [1; 24], &unit, 1);
            let (meta, file) = open_wal_object(&keys, kind, object, &object_bytes).expect("opens");
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
}
