//! WAL archive objects (format 1.1): the names PostgreSQL gives archived files, and the stored
//! object that carries one file with its metadata and time-index summary.
//!
//! ```text
//! object = header[16] || meta unit length (u32) || meta unit || data unit
//! ```
//! The meta unit comes first and is small, so "is the stored copy identical?" (asked on every
//! re-push after a crash) and the time index are answered with one ranged read, without
//! downloading and decrypting the segment itself.

use crate::crypto::{RepoKeys, SALT_LEN, SEAL_OVERHEAD};
use crate::envelope::{Header, Kind, HEADER_LEN};
use crate::error::FormatError;
use crate::ids::MasterKeyId;
use crate::layout::{self, ClusterName};
use crate::pg::{Lsn, TimelineId};
use crate::wire::{Reader, Writer};

/// Largest WAL file pgkeep accepts (PostgreSQL's largest segment size is 1 GiB).
pub const MAX_WAL_FILE: u64 = 1 << 30;
/// Largest decoded meta unit a reader accepts.
pub const MAX_META: u64 = 256 << 20;
/// Bytes a reader fetches first to find the meta unit: enough for most summaries.
pub const META_PROBE: usize = 256 << 10;
/// Longest record prefix a summary carries over to the next segment (see [`WalSummary::tail`]).
pub const MAX_TAIL: usize = 4 << 20;

/// What an archived file is, from its name (PostgreSQL's `IsXLogFileName` and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalFileKind {
    /// `TTTTTTTTXXXXXXXXYYYYYYYY`
    Segment,
    /// `TTTTTTTTXXXXXXXXYYYYYYYY.partial`: the last, incomplete segment of a timeline (archived
    /// at promotion) or a segment still being received by `wal-stream`.
    Partial,
    /// `TTTTTTTT.history`
    History,
    /// `TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup`
    BackupHistory,
}

/// A validated archived file name. Only the exact forms PostgreSQL writes are accepted
/// (uppercase hex), so a name maps to exactly one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WalFileName {
    name: String,
}

fn is_upper_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

impl WalFileName {
    pub fn parse(name: &str) -> Result<Self, FormatError> {
        let segment_like = |s: &str| s.len() == 24 && is_upper_hex(s) && &s[..8] != "00000000";
        let ok = if let Some(seg) = name.strip_suffix(".partial") {
            segment_like(seg)
        } else if let Some(tli) = name.strip_suffix(".history") {
            tli.len() == 8 && is_upper_hex(tli) && tli != "00000000"
        } else if let Some(rest) = name.strip_suffix(".backup") {
            rest.len() == 33
                && rest.as_bytes()[24] == b'.'
                && segment_like(&rest[..24])
                && is_upper_hex(&rest[25..])
        } else {
            segment_like(name)
        };
        if !ok {
            return Err(FormatError::Invalid {
                what: "WAL file name",
                reason: format!(
                    "{name:?} is not a segment (24 uppercase hex digits), a .partial segment, \
                     a TTTTTTTT.history file or a backup history file"
                ),
            });
        }
        Ok(Self { name: name.into() })
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> WalFileKind {
        if self.name.ends_with(".partial") {
            WalFileKind::Partial
        } else if self.name.ends_with(".history") {
            WalFileKind::History
        } else if self.name.ends_with(".backup") {
            WalFileKind::BackupHistory
        } else {
            WalFileKind::Segment
        }
    }

    /// The timeline: the first eight hex digits of every form.
    pub fn timeline(&self) -> TimelineId {
        TimelineId(u32::from_str_radix(&self.name[..8], 16).unwrap_or(0))
    }

    /// For segments and partial segments: the 24-digit segment part.
    pub fn segment_part(&self) -> Option<&str> {
        matches!(self.kind(), WalFileKind::Segment | WalFileKind::Partial).then(|| &self.name[..24])
    }

    /// The object kind this file is stored as. Segments written before format 1.5 are of
    /// kind [`Kind::WalSegment`]; readers take either (see [`wal_frame`]).
    pub fn object_kind(&self) -> Kind {
        match self.kind() {
            WalFileKind::Segment | WalFileKind::Partial => Kind::WalSegmentBlake3,
            WalFileKind::History => Kind::WalHistory,
            WalFileKind::BackupHistory => Kind::WalBackupHistory,
        }
    }

    /// The checksum algorithm of the object this file is stored as by this version.
    pub fn checksum_algorithm(&self) -> ChecksumAlgorithm {
        ChecksumAlgorithm::of_kind(self.object_kind())
    }

    /// The object's name in the repository.
    pub fn object_name(&self, cluster: &ClusterName) -> String {
        format!(
            "{}{}",
            layout::wal_dir(cluster, self.timeline().0),
            self.name
        )
    }
}

impl std::fmt::Display for WalFileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// What happened in the WAL that a user may want to find: transaction ends and restore points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WalEventKind {
    Commit = 0,
    Abort = 1,
    CommitPrepared = 2,
    AbortPrepared = 3,
    RestorePoint = 4,
}

impl WalEventKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Commit,
            1 => Self::Abort,
            2 => Self::CommitPrepared,
            3 => Self::AbortPrepared,
            4 => Self::RestorePoint,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Commit => "commit",
            Self::Abort => "abort",
            Self::CommitPrepared => "commit prepared",
            Self::AbortPrepared => "abort prepared",
            Self::RestorePoint => "restore point",
        }
    }
}

/// A relation file a committed transaction dropped (`DROP TABLE`, `TRUNCATE`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelFile {
    pub tablespace: u32,
    pub database: u32,
    pub relation: u32,
}

/// One event of the time index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEvent {
    pub kind: WalEventKind,
    /// Start of the record.
    pub lsn: Lsn,
    /// End of the record (where replay stands once it is applied).
    pub end: Lsn,
    /// The record's time, unix microseconds.
    pub time_us: i64,
    /// The transaction id (0 for restore points).
    pub xid: u32,
    /// The restore point's name (empty for other kinds).
    pub name: String,
    /// Relation files the transaction dropped.
    pub dropped: Vec<RelFile>,
}

/// The time-index summary of one archived segment: what recovery planning and `events` read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WalSummary {
    /// Records that end in this segment and were decoded.
    pub records: u64,
    /// End of the last complete record decoded (where replay of this file alone can reach).
    pub end: Lsn,
    /// True when the segment starts in the middle of a record whose beginning was not
    /// available (previous segment not archived yet): that one record is not in `events`.
    pub head_unknown: bool,
    /// Transaction ends and restore points, in LSN order.
    pub events: Vec<WalEvent>,
    /// A record that begins here and ends in the next segment: its start and the bytes read so
    /// far (page headers removed), so the next segment's summary can decode it. Absent when
    /// longer than [`MAX_TAIL`] (such records are full-page images, never events).
    pub tail: Option<(Lsn, Vec<u8>)>,
    /// Why decoding stopped before the end of the file, if it did for another reason than
    /// the end of the WAL: the summary then covers records up to `end` only. (The file is
    /// archived regardless: refusing PostgreSQL's own WAL would stall archiving.)
    pub stopped: Option<String>,
}

impl WalSummary {
    /// First and last transaction end (commit or abort) time, unix microseconds.
    pub fn xact_time_range(&self) -> Option<(i64, i64)> {
        let mut times = self
            .events
            .iter()
            .filter(|e| e.kind != WalEventKind::RestorePoint)
            .map(|e| e.time_us);
        let first = times.next()?;
        Some(times.fold((first, first), |(lo, hi), t| (lo.min(t), hi.max(t))))
    }

    fn encode(&self, w: &mut Writer) {
        w.u64(self.records)
            .u64(self.end.0)
            .u8(u8::from(self.head_unknown))
            .count(self.events.len());
        for e in &self.events {
            w.u8(e.kind as u8)
                .u64(e.lsn.0)
                .u64(e.end.0)
                .i64(e.time_us)
                .u32(e.xid)
                .str(&e.name)
                .count(e.dropped.len());
            for r in &e.dropped {
                w.u32(r.tablespace).u32(r.database).u32(r.relation);
            }
        }
        w.option(self.tail.as_ref(), |w, (lsn, bytes)| {
            w.u64(lsn.0).bytes(bytes);
        })
        .option(self.stopped.as_deref(), |w, why| {
            w.str(why);
        });
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        let records = r.u64()?;
        let end = Lsn(r.u64()?);
        let head_unknown = match r.u8()? {
            0 => false,
            1 => true,
            other => return Err(r.invalid(format!("head flag {other}"))),
        };
        let n = r.count(37)?;
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            let tag = r.u8()?;
            let kind =
                WalEventKind::from_u8(tag).ok_or_else(|| r.invalid(format!("event kind {tag}")))?;
            let (lsn, end, time_us, xid, name) = (
                Lsn(r.u64()?),
                Lsn(r.u64()?),
                r.i64()?,
                r.u32()?,
                r.string()?,
            );
            let m = r.count(12)?;
            let mut dropped = Vec::with_capacity(m);
            for _ in 0..m {
                dropped.push(RelFile {
                    tablespace: r.u32()?,
                    database: r.u32()?,
                    relation: r.u32()?,
                });
            }
            events.push(WalEvent {
                kind,
                lsn,
                end,
                time_us,
                xid,
                name,
                dropped,
            });
        }
        let tail = r.option(|r| Ok((Lsn(r.u64()?), r.bytes()?.to_vec())))?;
        if tail.as_ref().is_some_and(|(_, b)| b.len() > MAX_TAIL) {
            return Err(r.invalid("carried-over record prefix is longer than 4 MiB"));
        }
        let stopped = r.option(|r| r.string())?;
        Ok(Self {
            records,
            end,
            head_unknown,
            events,
            tail,
            stopped,
        })
    }
}

/// How a WAL object's meta checksums its file; the object's kind decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    /// History and backup history files, and segments stored before format 1.5: what
    /// `sha256sum` prints.
    Sha256,
    /// Segments and partial segments since format 1.5 (kind 15): what `b3sum` prints. A
    /// `wal-push` call is CPU-bound, and SHA-256 (2 GB/s with the CPU's SHA extensions, one
    /// thread: it is sequential) was a sixth of it; BLAKE3 hashes 3 to 5 GB/s on one core.
    Blake3,
}

impl ChecksumAlgorithm {
    /// The algorithm of objects of `kind`.
    pub fn of_kind(kind: Kind) -> Self {
        match kind {
            Kind::WalSegmentBlake3 => Self::Blake3,
            _ => Self::Sha256,
        }
    }

    /// Its name, as messages show it next to a checksum.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "SHA-256",
            Self::Blake3 => "BLAKE3",
        }
    }
}

/// A file's checksum and its algorithm. Two checksums are equal only with the same
/// algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileChecksum {
    pub algorithm: ChecksumAlgorithm,
    pub digest: [u8; 32],
}

impl std::fmt::Display for FileChecksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.algorithm.name(), hex::encode(self.digest))
    }
}

/// The meta unit of a WAL object: the file's size and checksum, and for segments the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalMeta {
    pub size: u64,
    /// The checksum of the file as PostgreSQL wrote it, in the algorithm of the object's kind
    /// (see [`ChecksumAlgorithm`]), so an operator can compare by hand.
    pub checksum: FileChecksum,
    /// For segments: what their long page header says.
    pub segment: Option<SegmentFacts>,
    pub summary: Option<WalSummary>,
}

/// Facts from a segment's long page header, kept so listing and planning need no segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentFacts {
    pub system_id: u64,
    pub segment_size: u32,
    /// The server's major version, from the page magic (0 if unknown).
    pub pg_major: u32,
}

impl WalMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.size)
            .raw(&self.checksum.digest)
            .option(self.segment, |w, f| {
                w.u64(f.system_id).u32(f.segment_size).u32(f.pg_major);
            })
            .option(self.summary.as_ref(), |w, s| s.encode(w));
        w.into_vec()
    }

    /// Decodes a meta unit's plaintext; `algorithm` is the one of the object's kind (the
    /// layout does not repeat it).
    pub fn decode(bytes: &[u8], algorithm: ChecksumAlgorithm) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, "WAL object meta");
        let size = r.u64()?;
        if size > MAX_WAL_FILE {
            return Err(r.invalid(format!("file size {size} is above 1 GiB")));
        }
        Ok(Self {
            size,
            checksum: FileChecksum {
                algorithm,
                digest: r.array()?,
            },
            segment: r.option(|r| {
                Ok(SegmentFacts {
                    system_id: r.u64()?,
                    segment_size: crate::pg::check_segment_size(u64::from(r.u32()?))?,
                    pg_major: r.u32()?,
                })
            })?,
            summary: r.option(WalSummary::decode)?,
        })
    }
}

/// The associated-data name of the data unit: the object name plus `#data`, so the two units of
/// one object cannot be swapped.
fn data_unit_name(object: &str) -> String {
    format!("{object}#data")
}

/// Seals a WAL object: meta unit then the file, both at zstd `level`. Fails as
/// [`wal_object_front`] does.
pub fn seal_wal_object(
    keys: &RepoKeys,
    kind: Kind,
    object: &str,
    meta: &WalMeta,
    salts: ([u8; SALT_LEN], [u8; SALT_LEN]),
    file: &[u8],
    level: i8,
) -> Result<Vec<u8>, FormatError> {
    let data_unit = seal_wal_data(keys, kind, object, salts.1, file, level);
    assemble_wal_object(keys, kind, object, meta, salts.0, &data_unit, level)
}

/// Seals the data unit alone. The expensive half of a WAL object (compression and
/// encryption of the whole file) needs nothing from the meta, so a writer can run it while
/// it hashes and summarizes the file, then call [`assemble_wal_object`].
pub fn seal_wal_data(
    keys: &RepoKeys,
    kind: Kind,
    object: &str,
    salt: [u8; SALT_LEN],
    file: &[u8],
    level: i8,
) -> Vec<u8> {
    let header = Header::new(kind, keys.key_id().0);
    keys.seal(
        &header,
        data_unit_name(object).as_bytes(),
        salt,
        file,
        level,
    )
}

/// [`seal_wal_data`] for a file of `len` bytes whose consecutive parts were compressed
/// beforehand at `level` (1 or more), in order, by
/// [`body::compress_frame`](crate::body::compress_frame): a writer compresses a 16 MiB
/// segment on every core instead of one, and streams it through a few part-sized buffers.
pub fn seal_wal_data_frames(
    keys: &RepoKeys,
    kind: Kind,
    object: &str,
    salt: [u8; SALT_LEN],
    len: u64,
    level: i8,
    frames: &[Vec<u8>],
) -> Vec<u8> {
    let header = Header::new(kind, keys.key_id().0);
    keys.seal_frames(
        &header,
        data_unit_name(object).as_bytes(),
        salt,
        len,
        level,
        frames,
    )
}

/// Seals the meta unit and puts the object together around a data unit from
/// [`seal_wal_data`] for the same kind and object, its body compressed at `meta_level`. The
/// meta of a segment of small transactions holds thousands of events (a few hundred KiB);
/// sealing it is the last step before the upload, so `archive_command` waits for all of it,
/// and a higher level than the data's buys little on a unit read a few hundred KiB at a time.
/// Fails as [`wal_object_front`] does.
pub fn assemble_wal_object(
    keys: &RepoKeys,
    kind: Kind,
    object: &str,
    meta: &WalMeta,
    meta_salt: [u8; SALT_LEN],
    data_unit: &[u8],
    meta_level: i8,
) -> Result<Vec<u8>, FormatError> {
    let mut out = wal_object_front(keys, kind, object, meta, meta_salt, meta_level)?;
    out.extend_from_slice(data_unit);
    Ok(out)
}

/// What comes before the data unit in a WAL object: header, meta unit length and meta unit
/// (see [`assemble_wal_object`]). A writer that can store an object in parts puts the data
/// unit after it without copying it.
///
/// Refuses a meta whose checksum is not in `kind`'s algorithm
/// ([`ChecksumAlgorithm::of_kind`]): the meta does not record its algorithm, a reader takes
/// it from the kind, so such an object would open and then fail its checksum on every fetch.
pub fn wal_object_front(
    keys: &RepoKeys,
    kind: Kind,
    object: &str,
    meta: &WalMeta,
    meta_salt: [u8; SALT_LEN],
    meta_level: i8,
) -> Result<Vec<u8>, FormatError> {
    let expected = ChecksumAlgorithm::of_kind(kind);
    if meta.checksum.algorithm != expected {
        return Err(FormatError::Invalid {
            what: kind.name(),
            reason: format!(
                "its meta carries a {} checksum, but objects of this kind carry {}",
                meta.checksum.algorithm.name(),
                expected.name()
            ),
        });
    }
    let header = Header::new(kind, keys.key_id().0);
    let meta_unit = keys.seal(
        &header,
        object.as_bytes(),
        meta_salt,
        &meta.encode(),
        meta_level,
    );
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + meta_unit.len());
    out.extend_from_slice(&header.encode());
    let len = u32::try_from(meta_unit.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&meta_unit);
    Ok(out)
}

/// The parsed frame of a WAL object: header and where the meta unit ends.
#[derive(Debug, Clone, Copy)]
pub struct WalFrame {
    pub header: Header,
    /// Offset of the first byte after the meta unit (the data unit's start).
    pub meta_end: usize,
}

/// Reads the frame from the first bytes of an object (at least 20). `kind` is the kind the
/// name implies.
pub fn wal_frame(keys: &RepoKeys, kind: Kind, prefix: &[u8]) -> Result<WalFrame, FormatError> {
    let header = Header::decode(prefix)?;
    // A segment's name implies kind 15 since format 1.5; one stored earlier is of kind 10.
    let segment = [Kind::WalSegment, Kind::WalSegmentBlake3];
    if !(segment.contains(&kind) && segment.contains(&header.kind)) {
        header.expect_kind(kind)?;
    }
    if header.key_id != keys.key_id().0 {
        return Err(FormatError::WrongKey {
            what: kind.name(),
            expected: keys.key_id().to_hex(),
            found: MasterKeyId(header.key_id).to_hex(),
        });
    }
    let len = prefix
        .get(HEADER_LEN..HEADER_LEN + 4)
        .ok_or(FormatError::Truncated { what: kind.name() })?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len < SEAL_OVERHEAD {
        return Err(FormatError::Truncated { what: kind.name() });
    }
    Ok(WalFrame {
        header,
        meta_end: HEADER_LEN + 4 + len,
    })
}

/// Opens the meta unit; `bytes` must hold at least `frame.meta_end` bytes of the object.
pub fn open_wal_meta(
    keys: &RepoKeys,
    frame: &WalFrame,
    object: &str,
    bytes: &[u8],
) -> Result<WalMeta, FormatError> {
    let what = frame.header.kind.name();
    let unit = bytes
        .get(HEADER_LEN + 4..frame.meta_end)
        .ok_or(FormatError::Truncated { what })?;
    let plain = keys.open(&frame.header, object.as_bytes(), unit, MAX_META, what)?;
    WalMeta::decode(&plain, ChecksumAlgorithm::of_kind(frame.header.kind))
}

/// Opens a whole WAL object: meta, then the file, checked against the meta's size and
/// checksum by the caller (this crate does not hash files; see [`WalMeta::checksum`]).
pub fn open_wal_object(
    keys: &RepoKeys,
    kind: Kind,
    object: &str,
    bytes: &[u8],
) -> Result<(WalMeta, Vec<u8>), FormatError> {
    let frame = wal_frame(keys, kind, bytes)?;
    let meta = open_wal_meta(keys, &frame, object, bytes)?;
    let what = kind.name();
    let unit = bytes
        .get(frame.meta_end..)
        .ok_or(FormatError::Truncated { what })?;
    let file = keys.open(
        &frame.header,
        data_unit_name(object).as_bytes(),
        unit,
        meta.size,
        what,
    )?;
    if file.len() as u64 != meta.size {
        return Err(FormatError::Invalid {
            what,
            reason: format!("file is {} bytes, its meta says {}", file.len(), meta.size),
        });
    }
    Ok((meta, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round trip of a meta under each algorithm: the layout is the same 32 bytes, and the
    /// kind the reader names decides what they mean.
    #[test]
    fn meta_round_trips_and_its_kind_names_the_checksum() {
        for (kind, algorithm) in [
            (Kind::WalSegmentBlake3, ChecksumAlgorithm::Blake3),
            (Kind::WalSegment, ChecksumAlgorithm::Sha256),
            (Kind::WalHistory, ChecksumAlgorithm::Sha256),
            (Kind::WalBackupHistory, ChecksumAlgorithm::Sha256),
        ] {
            assert_eq!(ChecksumAlgorithm::of_kind(kind), algorithm);
            let meta = WalMeta {
                size: 16 << 20,
                checksum: FileChecksum {
                    algorithm,
                    digest: [0xab; 32],
                },
                segment: Some(SegmentFacts {
                    system_id: 7,
                    segment_size: 16 << 20,
                    pg_major: 18,
                }),
                summary: Some(WalSummary::default()),
            };
            let bytes = meta.encode();
            assert_eq!(WalMeta::decode(&bytes, algorithm).expect("decodes"), meta);
            assert_eq!(
                WalMeta::decode(
                    &WalMeta::decode(&bytes, algorithm)
                        .expect("decodes")
                        .encode(),
                    algorithm
                )
                .expect("decodes"),
                meta
            );
            assert!(WalMeta::decode(&bytes[..20], algorithm).is_err());
            // A segment size PostgreSQL cannot have is refused where it is decoded: the
            // catalog divides by it to name segments.
            let odd = WalMeta {
                segment: Some(SegmentFacts {
                    segment_size: 0,
                    ..meta.segment.expect("set")
                }),
                ..meta.clone()
            };
            let err = WalMeta::decode(&odd.encode(), algorithm).expect_err("refused");
            assert!(err.to_string().contains("wal_segment_size"), "{err}");
        }
        let sum = FileChecksum {
            algorithm: ChecksumAlgorithm::Blake3,
            digest: [0x01; 32],
        };
        assert_eq!(sum.to_string(), format!("BLAKE3 {}", "01".repeat(32)));
        let sha = FileChecksum {
            algorithm: ChecksumAlgorithm::Sha256,
            ..sum
        };
        assert_ne!(
            sha, sum,
            "the same digest in two algorithms is not the same checksum"
        );
        let name = WalFileName::parse("000000010000000000000003").expect("name");
        assert_eq!(name.checksum_algorithm(), ChecksumAlgorithm::Blake3);
        let name = WalFileName::parse("00000002.history").expect("name");
        assert_eq!(name.checksum_algorithm(), ChecksumAlgorithm::Sha256);
    }

    /// The writer refuses a meta whose checksum is not its kind's: the reader would take the
    /// digest for the kind's algorithm and call every byte of the file damaged.
    #[test]
    fn an_object_is_sealed_only_with_its_kinds_checksum() {
        let keys = RepoKeys::derive(
            crate::ids::RepoId([5; 16]),
            &crate::crypto::MasterKey::from_bytes([6; 32]),
        );
        let file = b"not really WAL".to_vec();
        let object = "wal/main/0000000100000000/000000010000000000000003";
        for (kind, right, wrong) in [
            (
                Kind::WalSegmentBlake3,
                ChecksumAlgorithm::Blake3,
                ChecksumAlgorithm::Sha256,
            ),
            (
                Kind::WalSegment,
                ChecksumAlgorithm::Sha256,
                ChecksumAlgorithm::Blake3,
            ),
        ] {
            let meta = |algorithm| WalMeta {
                size: file.len() as u64,
                checksum: FileChecksum {
                    algorithm,
                    digest: [0x11; 32],
                },
                segment: None,
                summary: None,
            };
            let seal = |algorithm| {
                seal_wal_object(
                    &keys,
                    kind,
                    object,
                    &meta(algorithm),
                    ([1; 24], [2; 24]),
                    &file,
                    1,
                )
            };
            let err = seal(wrong).expect_err("a meta in the other algorithm is refused");
            let message = err.to_string();
            assert!(
                matches!(err, FormatError::Invalid { .. })
                    && message.contains(wrong.name())
                    && message.contains(right.name()),
                "{message}"
            );
            let sealed = seal(right).expect("seals");
            let (opened, bytes) = open_wal_object(&keys, kind, object, &sealed).expect("opens");
            assert_eq!((opened, bytes), (meta(right), file.clone()));
        }
    }

    #[test]
    fn names() {
        for (name, kind, tli) in [
            ("000000010000000000000001", WalFileKind::Segment, 1),
            ("0000000200000001000000FF.partial", WalFileKind::Partial, 2),
            ("0000000A.history", WalFileKind::History, 10),
            (
                "000000010000000000000002.00000028.backup",
                WalFileKind::BackupHistory,
                1,
            ),
        ] {
            let n = WalFileName::parse(name).expect(name);
            assert_eq!(n.kind(), kind, "{name}");
            assert_eq!(n.timeline(), TimelineId(tli), "{name}");
            assert_eq!(n.to_string(), name);
        }
        let c = ClusterName::new("main").expect("name");
        assert_eq!(
            WalFileName::parse("0000000A.history")
                .expect("history")
                .object_name(&c),
            "clusters/main/wal/0000000A/0000000A.history"
        );
        for bad in [
            "",
            "00000001000000000000000",
            "000000010000000000000001.ready",
            "00000001000000000000000a",
            "000000000000000000000001",
            "00000000.history",
            "../0000001.history",
            "000000010000000000000002.0000002.backup",
            "000000010000000000000002X00000028.backup",
            "RECOVERYXLOG",
        ] {
            assert!(WalFileName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
