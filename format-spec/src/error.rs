//! Errors of the pure decoders and the cryptographic layer.

use thiserror::Error;

/// Why bytes could not be decoded or authenticated.
///
/// Every variant names what was being read, so the engine can add the object's name and the
/// user sees e.g. "index/ab12…: index segment is truncated".
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// The input ended before the structure did.
    #[error("{what} is truncated")]
    Truncated { what: &'static str },
    /// The input does not start with the pgkeep magic: not a pgkeep object at all.
    #[error("{what} does not start with the pgkeep magic (not a pgkeep object)")]
    BadMagic { what: &'static str },
    /// Written by a pgkeep whose format this reader does not understand.
    #[error(
        "{what} uses archive format {major}.{minor}; this pgkeep reads format {supported}.x: upgrade pgkeep"
    )]
    UnsupportedVersion {
        what: &'static str,
        major: u8,
        minor: u8,
        supported: u8,
    },
    /// An object kind this reader does not know (written by a newer pgkeep?).
    #[error("unknown object kind {0} (written by a newer pgkeep?)")]
    UnknownKind(u8),
    /// The object is of another kind than the one its name says.
    #[error("expected a {expected} object, found a {found} object")]
    WrongKind {
        expected: &'static str,
        found: &'static str,
    },
    /// Encrypted under another master key (another repository, or a swapped object).
    #[error(
        "{what} is encrypted with master key {found}, but this repository's key is {expected}"
    )]
    WrongKey {
        what: &'static str,
        expected: String,
        found: String,
    },
    /// AES-GCM rejected the ciphertext: the bytes were altered, the object was moved or swapped,
    /// or (for key files) the passphrase is wrong.
    #[error("{what} failed authentication (altered, swapped, or wrong key)")]
    Authentication { what: &'static str },
    /// A chunk decrypted and decompressed, but its content does not hash to its id.
    #[error("chunk content does not match its id {id}")]
    ChunkIdMismatch { id: String },
    /// Structurally invalid content.
    #[error("{what} is invalid: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// A declared size is larger than the reader allows.
    #[error("{what} declares {size} bytes, more than the limit of {limit}")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    /// The zstd stream inside an authenticated body could not be decompressed.
    #[error("{what}: zstd decompression failed: {reason}")]
    Decompression { what: &'static str, reason: String },
    /// The key-derivation function rejected its parameters.
    #[error("key derivation failed: {0}")]
    Kdf(String),
}
