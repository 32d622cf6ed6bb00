//! pgkeep's engine: repository and storage, the chunk pipeline, and (in later modules) the
//! replication client, backup, WAL archive, restore and maintenance.
//!
//! Objects and their bytes are defined by `pgkeep-format` (see `format-spec/SPEC.md`); this
//! crate adds I/O: storage access, concurrency and the operations built on them.

pub mod backup;
pub mod bench;
pub mod check;
pub mod chunker;
pub mod conninfo;
mod dead_holder;
pub mod drill;
pub mod dump;
pub mod error;
pub mod index;
pub mod lock;
pub mod manifest_checksum;
pub mod pipeline;
pub mod prune;
pub mod read;
pub mod replication;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod storage;
pub mod tar;
pub mod timestamp;
pub mod verify;
pub mod wal;

pub use chunker::{Chunker, Chunking};
pub use error::{Error, Result};
pub use index::{ChunkIndex, ChunkLocation};
pub use pipeline::{
    PendingChunk, SessionStats, StoredChunk, StoredStream, WriteOptions, WriteSession,
};
pub use repository::{default_key_label, os_user_name, InitOptions, KeyInfo, Repository};
pub use storage::{Created, ObjectInfo, RetryPolicy, Store};

/// The format crate, re-exported so library users need one dependency.
pub use pgkeep_format as format;
