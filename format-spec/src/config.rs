//! The repository config object (`config`): settings fixed at `init` that every writer must
//! share for deduplication to work.

use crate::error::FormatError;
use crate::ids::RepoId;
use crate::wire::{Reader, Writer};

/// Settings of one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoConfig {
    pub repo_id: RepoId,
    /// Unix seconds.
    pub created: i64,
    /// Packs are closed once they reach this many bytes.
    pub pack_target_size: u32,
    /// Default zstd level for new chunks (0: no compression).
    pub compression_level: i8,
    /// Content-defined chunking bounds for byte streams (min, average, max).
    pub cdc_min: u32,
    pub cdc_avg: u32,
    pub cdc_max: u32,
    /// Relation files are cut into chunks of this many bytes (a multiple of 8 KiB pages).
    pub page_chunk_size: u32,
}

impl RepoConfig {
    pub const DEFAULT_PACK_TARGET: u32 = 16 << 20;
    pub const MIN_PACK_TARGET: u32 = 1 << 20;
    pub const MAX_PACK_TARGET: u32 = 256 << 20;
    /// No chunk may be larger than this; readers refuse larger sizes before allocating.
    pub const MAX_CHUNK_SIZE: u32 = 16 << 20;

    pub fn new(repo_id: RepoId, created: i64) -> Self {
        Self {
            repo_id,
            created,
            pack_target_size: Self::DEFAULT_PACK_TARGET,
            compression_level: 1,
            cdc_min: 256 << 10,
            cdc_avg: 1 << 20,
            cdc_max: 4 << 20,
            page_chunk_size: 1 << 20,
        }
    }

    pub fn validate(&self) -> Result<(), FormatError> {
        let bad = |reason: String| FormatError::Invalid {
            what: "repository config",
            reason,
        };
        if !(Self::MIN_PACK_TARGET..=Self::MAX_PACK_TARGET).contains(&self.pack_target_size) {
            return Err(bad(format!(
                "pack target size {} is outside 1 MiB..=256 MiB",
                self.pack_target_size
            )));
        }
        if !(0..=crate::body::MAX_LEVEL).contains(&self.compression_level) {
            return Err(bad(format!(
                "compression level {} is outside 0..=22",
                self.compression_level
            )));
        }
        if !(64 <= self.cdc_min && self.cdc_min <= self.cdc_avg && self.cdc_avg <= self.cdc_max)
            || self.cdc_max > Self::MAX_CHUNK_SIZE
        {
            return Err(bad(
                "chunking bounds must satisfy 64 <= min <= avg <= max <= 16 MiB".into(),
            ));
        }
        if self.page_chunk_size == 0
            || self.page_chunk_size % 8192 != 0
            || self.page_chunk_size > Self::MAX_CHUNK_SIZE
        {
            return Err(bad(
                "page chunk size must be a multiple of 8192 up to 16 MiB".into(),
            ));
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(&self.repo_id.0)
            .i64(self.created)
            .u32(self.pack_target_size)
            .i8(self.compression_level)
            .u32(self.cdc_min)
            .u32(self.cdc_avg)
            .u32(self.cdc_max)
            .u32(self.page_chunk_size);
        w.into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, "repository config");
        let c = Self {
            repo_id: RepoId(r.array()?),
            created: r.i64()?,
            pack_target_size: r.u32()?,
            compression_level: r.i8()?,
            cdc_min: r.u32()?,
            cdc_avg: r.u32()?,
            cdc_max: r.u32()?,
            page_chunk_size: r.u32()?,
        };
        c.validate()?;
        Ok(c)
    }
}

/// The cluster binding (`clusters/<name>/cluster`): ties a cluster name to one PostgreSQL
/// system identifier, so WAL or backups of another server are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterBinding {
    pub name: String,
    pub system_id: u64,
    /// `server_version_num` at binding time (informational).
    pub pg_version_num: u32,
    /// Unix seconds.
    pub created: i64,
}

impl ClusterBinding {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.str(&self.name)
            .u64(self.system_id)
            .u32(self.pg_version_num)
            .i64(self.created);
        w.into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, "cluster binding");
        Ok(Self {
            name: r.string()?,
            system_id: r.u64()?,
            pg_version_num: r.u32()?,
            created: r.i64()?,
        })
    }
}

/// Whether a lock excludes every other holder or only exclusive ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LockMode {
    /// Backups, WAL pushes: many may run at once.
    Shared = 0,
    /// Prune: nothing else may write while it deletes.
    Exclusive = 1,
}

/// A lock object (`locks/<lock id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    pub mode: LockMode,
    pub hostname: String,
    pub pid: u32,
    /// What holds it ("backup", "prune", ...).
    pub operation: String,
    /// Unix microseconds.
    pub created_us: i64,
    /// Unix microseconds of the last heartbeat; a lock not refreshed for the stale timeout
    /// (SPEC.md) may be removed by others.
    pub refreshed_us: i64,
}

impl LockInfo {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(self.mode as u8)
            .str(&self.hostname)
            .u32(self.pid)
            .str(&self.operation)
            .i64(self.created_us)
            .i64(self.refreshed_us);
        w.into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, "lock");
        let mode = match r.u8()? {
            0 => LockMode::Shared,
            1 => LockMode::Exclusive,
            m => return Err(r.invalid(format!("unknown lock mode {m}"))),
        };
        Ok(Self {
            mode,
            hostname: r.string()?,
            pid: r.u32()?,
            operation: r.string()?,
            created_us: r.i64()?,
            refreshed_us: r.i64()?,
        })
    }
}

/// A pin (`clusters/<c>/pins/<backup id>`, format 1.2): retention keeps the backup whatever
/// the policy says, until the pin is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupPin {
    pub backup_id: String,
    /// Unix microseconds.
    pub pinned_us: i64,
    /// Why it is kept ("before the 2026 migration"); may be empty.
    pub note: String,
}

impl BackupPin {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.str(&self.backup_id).i64(self.pinned_us).str(&self.note);
        w.into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, "backup pin");
        Ok(Self {
            backup_id: r.string()?,
            pinned_us: r.i64()?,
            note: r.string()?,
        })
    }
}
