//! Checking an archived file against its name and cluster, and computing its meta: size,
//! SHA-256, system identifier, and for segments the time-index summary.
//!
//! Pure CPU work on bytes already read; callers run it off the async runtime.

use pgkeep_format::{
    Lsn, SegmentFacts, SegmentName, WalFileKind, WalFileName, WalMeta, WalSummary,
};

use pgkeep_format::wal::seal_wal_data;
use pgkeep_format::RepoKeys;

use crate::error::{Error, Result};
use crate::repository::random_bytes;
use crate::wal::archive::{sha256, PreparedWal};
use crate::wal::decode::PageHeader;
use crate::wal::summary::summarize;

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
    let len = bytes.len() as u64;
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
        let sealer = s.spawn(|| {
            seal_wal_data(
                sealing.keys,
                kind,
                sealing.object,
                random_bytes(),
                &file,
                sealing.level,
            )
        });
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

/// Prepares consecutive segments at once: each one's data unit sealed on a thread of its
/// own and its SHA-256 computed on another, while this thread reads headers and summarizes
/// them in order (each summary needs the tail of the one before; that is the only
/// sequential part, and the cheapest). Used by `wal-push`, with and without look-ahead.
///
/// Sealing (zstd, then AES-256-GCM) is the longest part; hashing on the same thread after
/// it made one segment's wall time the sum of both, where on two cores it can be the
/// longer of the two.
pub fn prepare_chain(
    files: Vec<(WalFileName, Vec<u8>)>,
    mut tail: Option<(Lsn, Vec<u8>)>,
    keys: &RepoKeys,
    objects: &[String],
    level: i8,
) -> Vec<Result<(PreparedWal, Option<SegmentIdentity>)>> {
    let (sealed, described) = std::thread::scope(|s| {
        let sealers: Vec<_> = files
            .iter()
            .zip(objects)
            .map(|((name, file), object)| {
                let kind = name.object_kind();
                let unit =
                    s.spawn(move || seal_wal_data(keys, kind, object, random_bytes(), file, level));
                let digest = s.spawn(move || sha256(file));
                (unit, digest)
            })
            .collect();
        let described: Vec<_> = files
            .iter()
            .map(|(name, file)| {
                let d = describe(name, file, tail.take());
                if let Ok(d) = &d {
                    tail = d.summary.as_ref().and_then(|s| s.tail.clone());
                }
                d
            })
            .collect();
        let sealed: Vec<_> = sealers
            .into_iter()
            .map(|(unit, digest)| Ok((unit.join()?, digest.join()?)))
            .collect::<Vec<std::thread::Result<_>>>();
        (sealed, described)
    });
    files
        .into_iter()
        .zip(sealed.into_iter().zip(described))
        .map(|((name, file), (sealed, described))| {
            let (data_unit, digest) = sealed
                .map_err(|_| Error::Pipeline(format!("sealing {name} failed (thread panicked)")))?;
            let (meta, identity) = described?.into_meta(file.len(), digest);
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

fn describe(
    name: &WalFileName,
    file: &[u8],
    prev_tail: Option<(Lsn, Vec<u8>)>,
) -> Result<Description> {
    Ok(match name.kind() {
        WalFileKind::Segment | WalFileKind::Partial => {
            let id = identify_segment(name, file)?;
            Description {
                facts: Some(SegmentFacts {
                    system_id: id.system_id,
                    segment_size: id.segment_size,
                    pg_major: id.pg_major,
                }),
                summary: Some(summarize(file, id.start, id.segment_size, prev_tail)),
                identity: Some(id),
            }
        }
        WalFileKind::History | WalFileKind::BackupHistory => {
            check_text_file(name, file)?;
            Description {
                facts: None,
                summary: None,
                identity: None,
            }
        }
    })
}

fn build_meta(
    name: &WalFileName,
    file: &[u8],
    prev_tail: Option<(Lsn, Vec<u8>)>,
) -> Result<(WalMeta, Option<SegmentIdentity>)> {
    Ok(describe(name, file, prev_tail)?.into_meta(file.len(), sha256(file)))
}

/// History and backup history files are short text files. Their text is not checked (a
/// restore point name in a reason line may be in any server encoding, and refusing would stall
/// archiving), only their size.
fn check_text_file(name: &WalFileName, file: &[u8]) -> Result<()> {
    const LIMIT: usize = 16 << 20;
    if file.len() > LIMIT {
        return Err(Error::WalRefused {
            file: name.to_string(),
            reason: format!(
                "is {} bytes; history files are short text files",
                file.len()
            ),
        });
    }
    Ok(())
}
