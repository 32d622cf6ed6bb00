//! The engine's error type: variants a caller can act on, each naming the object involved.

use pgkeep_format::{FileChecksum, FormatError};
use thiserror::Error;

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// An object that should exist does not.
    #[error("{object}: not found in the repository")]
    NotFound { object: String },
    /// A create-if-absent write found the object already there with other content.
    #[error("{object}: already exists")]
    AlreadyExists { object: String },
    /// An object exists but cannot be trusted: altered, truncated, swapped, or undecodable.
    #[error("{object}: {source}")]
    Corrupt {
        object: String,
        #[source]
        source: FormatError,
    },
    /// The object store failed (after retries for transient errors). `message` is the
    /// store's error flattened to one line (object_store repeats its causes in its display;
    /// keeping it as a source would print them twice).
    #[error("storage: {op} {object}: {message}")]
    Storage {
        op: &'static str,
        object: String,
        message: String,
    },
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// No repository at this location.
    #[error("no pgkeep repository at {location}: run `pgkeep init` first, or check --repo")]
    NotInitialized { location: String },
    /// `init` found a repository already there.
    #[error("a pgkeep repository already exists at {location}")]
    AlreadyInitialized { location: String },
    /// No key file of the repository accepts the passphrase. A wrong passphrase and a
    /// damaged key file look the same to AES-GCM, so the message names the files tried.
    #[error(
        "wrong passphrase: no key file of {location} accepts it (tried {}); if the passphrase is right, those key files are damaged",
        key_files.join(", ")
    )]
    WrongPassphrase {
        location: String,
        key_files: Vec<String>,
    },
    /// A key operation the repository refuses.
    #[error("{0}")]
    KeyRefused(String),
    /// The repository location could not be understood.
    #[error("invalid repository location {location:?}: {reason}")]
    InvalidLocation { location: String, reason: String },
    /// A caller-supplied value is invalid.
    #[error("{0}")]
    InvalidInput(String),
    /// Talking to PostgreSQL failed (connection, authentication, server error, protocol).
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] crate::replication::PgError),
    /// A base backup archive from the server could not be read.
    #[error("base backup archive {archive}: {source}")]
    Archive {
        archive: String,
        #[source]
        source: crate::tar::TarError,
    },
    /// The repository's cluster is bound to another PostgreSQL system.
    #[error("cluster {cluster} of this repository belongs to PostgreSQL system {bound}, but the server is system {found}: use another --cluster for this server")]
    WrongSystem {
        cluster: String,
        bound: u64,
        found: u64,
    },
    /// A WAL file of this name is archived with other content. PostgreSQL never writes two
    /// different files under one name on one timeline, so this means two servers archive
    /// into one cluster, or the stored copy is from before a restore that reused the name.
    /// The checksums are in one algorithm, named with each (`BLAKE3 <hex>`, as `b3sum`
    /// prints it, or `SHA-256 <hex>`).
    #[error("{file}: the archive already holds a different file of this name (stored: {stored_size} bytes, {stored_checksum}; this one: {new_size} bytes, {new_checksum}); refusing to overwrite archived WAL")]
    WalConflict {
        file: String,
        stored_checksum: FileChecksum,
        stored_size: u64,
        new_checksum: FileChecksum,
        new_size: u64,
    },
    /// A WAL file that does not belong in this archive: another system, or its header
    /// contradicts its name.
    #[error("{file}: {reason}")]
    WalRefused { file: String, reason: String },
    /// Another process holds a lock that conflicts with this operation (a `prune` while a
    /// backup runs, or the other way round), and it did not finish within the wait.
    #[error("cannot {operation} now: the repository is locked by {holder} ({object}); wait for it to finish, raise --lock-wait, or, if that process is gone, wait until its lock goes stale")]
    Locked {
        operation: String,
        holder: String,
        object: String,
    },
    /// A PostgreSQL client program (pg_dump, pg_restore, psql) failed; `stderr` is its own
    /// message, unchanged, so the user reads what the tool said.
    #[error("{tool} failed ({status}):\n{stderr}")]
    ToolFailed {
        tool: String,
        status: String,
        stderr: String,
    },
    /// The chunk pipeline stopped (a worker or upload failed); the cause follows.
    #[error("the chunk pipeline stopped: {0}")]
    Pipeline(String),
}

impl Error {
    pub(crate) fn corrupt(object: impl Into<String>, source: FormatError) -> Self {
        Self::Corrupt {
            object: object.into(),
            source,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the error means "the data is damaged" (as opposed to unavailable).
    pub fn is_corruption(&self) -> bool {
        matches!(self, Self::Corrupt { .. })
    }
}
