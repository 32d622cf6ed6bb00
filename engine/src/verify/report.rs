//! What `verify` found: problems, each naming the object and what it breaks, and per backup
//! whether a restore still works.

use pgkeep_format::{Lsn, SegmentName};

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Data is missing or damaged: some restore fails (or, for objects nothing needs now,
    /// the repository holds a damaged object).
    Damage,
    /// Nothing is damaged, but something is not (yet) usable: a backup whose WAL has not all
    /// been archived yet.
    Warning,
}

/// What is wrong, as a stable code (used in `--json` output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// An index segment lists a pack the storage does not have.
    PackMissing,
    /// A pack's stored size differs from the size its index segment records.
    PackSize,
    /// A pack's bytes do not hash to its name (BLAKE3): altered or truncated.
    PackHash,
    /// Chunks of a pack fail authentication or their id check (the pack hash may still match
    /// when a writer stored bad data, but that would be a bug).
    ChunkUnreadable,
    /// A pack's table of contents cannot be read (the index could not be rebuilt from it).
    PackToc,
    /// An index segment does not authenticate or decode.
    IndexUnreadable,
    /// A backup manifest does not authenticate or decode: the backup cannot be restored.
    ManifestUnreadable,
    /// A manifest references chunks that no index segment lists.
    ChunksNotIndexed,
    /// A cluster binding object does not authenticate or decode.
    ClusterUnreadable,
    /// WAL segments are missing inside the archived range.
    WalMissing,
    /// A WAL object does not authenticate, decode or match its SHA-256.
    WalDamaged,
    /// WAL a backup needs is not archived yet (the archive ends before it).
    WalNotArchived,
}

impl ProblemKind {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::PackMissing => "pack-missing",
            Self::PackSize => "pack-size",
            Self::PackHash => "pack-hash",
            Self::ChunkUnreadable => "chunk-unreadable",
            Self::PackToc => "pack-toc",
            Self::IndexUnreadable => "index-unreadable",
            Self::ManifestUnreadable => "manifest-unreadable",
            Self::ChunksNotIndexed => "chunks-not-indexed",
            Self::ClusterUnreadable => "cluster-unreadable",
            Self::WalMissing => "wal-missing",
            Self::WalDamaged => "wal-damaged",
            Self::WalNotArchived => "wal-not-archived",
        }
    }
}

/// One backup a problem affects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffectedBackup {
    pub cluster: String,
    pub backup_id: String,
    /// Files whose content is lost (paths as in a data directory; attachments as
    /// `name (attachment)`). Empty with `whole`.
    pub files: Vec<String>,
    /// The whole backup is unreadable (its manifest), so no file list can be given.
    pub whole: bool,
}

/// What a missing or damaged WAL segment does to one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalImpact {
    pub cluster: String,
    pub backup_id: String,
    pub timeline: u32,
    /// The first segment recovery cannot get.
    pub first_unusable: SegmentName,
    /// The last one of the unusable run (equal to `first_unusable` for one segment; `None`
    /// when no usable segment follows).
    pub last_unusable: Option<SegmentName>,
    /// The backup cannot become consistent: it cannot be restored at all.
    pub not_restorable: bool,
    /// Otherwise: recovery can go up to this LSN (the start of `first_unusable`), no further.
    pub recoverable_to: Option<Lsn>,
}

/// Everything a problem affects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Affects {
    pub backups: Vec<AffectedBackup>,
    pub wal: Vec<WalImpact>,
}

impl Affects {
    pub fn is_empty(&self) -> bool {
        self.backups.is_empty() && self.wal.is_empty()
    }
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub kind: ProblemKind,
    /// The object concerned (its name in the repository; for missing WAL, the name the first
    /// missing segment would have).
    pub object: String,
    /// What is wrong with it.
    pub detail: String,
    pub affects: Affects,
}

/// How far WAL recovery from a backup can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalReach {
    /// The archive lacks (or has damaged) WAL between the backup's start and stop: it cannot
    /// be restored. `pending` when the archive simply ends before it (not archived yet).
    NotRestorable {
        first_unusable: SegmentName,
        pending: bool,
    },
    /// Consistent, and recovery can replay up to `until` (the end of the continuous WAL).
    /// `cut_by` names the missing or damaged segment that ends it before the archive's end.
    Restorable {
        until: Lsn,
        last_segment: SegmentName,
        cut_by: Option<SegmentName>,
    },
}

/// Per backup: can it still be restored, and how far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStatus {
    pub cluster: String,
    pub backup_id: String,
    pub label: String,
    /// Whether the manifest could be read.
    pub manifest_ok: bool,
    /// Some chunk the backup needs is missing or damaged.
    pub data_damaged: bool,
    /// Packs holding the backup's chunks, and how many of them were read in full and found
    /// intact (`--read-data`).
    pub packs: usize,
    pub packs_read: usize,
    /// For PostgreSQL backups: how far WAL recovery can go.
    pub wal: Option<WalReach>,
}

impl BackupStatus {
    /// Can this backup be restored (at least to its consistency point)?
    pub fn restorable(&self) -> bool {
        self.manifest_ok
            && !self.data_damaged
            && !matches!(self.wal, Some(WalReach::NotRestorable { .. }))
    }
}

/// Per dump: can it still be restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpStatus {
    pub cluster: String,
    pub dump_id: String,
    pub manifest_ok: bool,
    /// Some chunk the dump needs is missing or damaged.
    pub data_damaged: bool,
}

impl DumpStatus {
    pub fn restorable(&self) -> bool {
        self.manifest_ok && !self.data_damaged
    }
}

/// How much was looked at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checked {
    pub clusters: usize,
    pub index_segments: usize,
    /// Packs the index lists, and their bytes by the index.
    pub packs: usize,
    pub pack_bytes: u64,
    /// Distinct chunks in the index.
    pub chunks: usize,
    pub manifests: usize,
    /// Dump manifests read.
    pub dumps: usize,
    /// Chunk references of all manifests, each checked against the index.
    pub chunk_refs: u64,
    /// Archived WAL files (segments, partial segments, history files) and their stored bytes.
    pub wal_files: usize,
    pub wal_bytes: u64,
    /// `--read-data`: the share asked for, in percent (0 without it).
    pub read_percent: f64,
    /// Packs downloaded and checked, their bytes, and the chunks opened in them.
    pub packs_read: usize,
    pub pack_bytes_read: u64,
    pub chunks_read: u64,
    /// WAL files downloaded and checked, and their stored bytes.
    pub wal_read: usize,
    pub wal_bytes_read: u64,
}

/// The result of `verify`.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub checked: Checked,
    pub problems: Vec<Problem>,
    pub backups: Vec<BackupStatus>,
    pub dumps: Vec<DumpStatus>,
    /// Packs present but in no index segment: left by sessions that crashed before their
    /// index segment was written. Not damage; pruning removes them.
    pub unindexed_packs: Vec<(String, u64)>,
}

impl VerifyReport {
    /// Whether any problem is damage (the CLI exits 5).
    pub fn damaged(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Damage)
    }
}
