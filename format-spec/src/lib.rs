//! pgkeep's native archive format, version 1: pure encode/decode of every stored object.
//!
//! `SPEC.md` beside this crate is normative; this crate is its reference implementation. It
//! does no I/O: callers hand in bytes (and random salts) and get bytes or values back, which
//! keeps every decoder fuzzable and every encoder reproducible for test vectors.

mod aead;
pub mod body;
pub mod config;
pub mod crypto;
pub mod dump;
pub mod envelope;
pub mod error;
pub mod ids;
pub mod index;
pub mod keyfile;
pub mod layout;
pub mod manifest;
pub mod pack;
pub mod pg;
pub mod wal;
mod wire;

pub use config::{BackupPin, ClusterBinding, LockInfo, LockMode, RepoConfig};
pub use crypto::{MasterKey, RepoKeys, SALT_LEN, SEAL_OVERHEAD};
pub use dump::{DumpFormat, DumpManifest, DumpSource, RowFilter};
pub use envelope::{open_object, seal_object, Header, Kind, FORMAT_MAJOR, FORMAT_MINOR};
pub use error::FormatError;
pub use ids::{ChunkId, IndexId, KeyFileId, LockId, MasterKeyId, PackId, RepoId};
pub use index::{IndexSegment, IndexedPack};
pub use keyfile::{KdfParams, KeyFile, KeyFileMeta};
pub use layout::ClusterName;
pub use manifest::{
    Attachment, BackupKind, BackupStats, ChunkRef, Extent, FileEntry, FileType, Manifest, PgInfo,
    Tablespace,
};
pub use pack::{FinishedPack, PackEntry, PackWriter};
pub use pg::{Lsn, SegmentName, TimelineId};
pub use wal::{
    ChecksumAlgorithm, FileChecksum, RelFile, SegmentFacts, WalEvent, WalEventKind, WalFileKind,
    WalFileName, WalMeta, WalSummary,
};
