//! The object envelope: the 16-byte header every stored object starts with, and whole-object
//! sealing (`header || sealed unit`).

use crate::crypto::{RepoKeys, SALT_LEN};
use crate::error::FormatError;
use crate::ids::MasterKeyId;

/// The first four bytes of every pgkeep object.
pub const MAGIC: [u8; 4] = *b"PGKP";
/// The format's major version: a reader refuses any other.
pub const FORMAT_MAJOR: u8 = 1;
/// The format's minor version: a reader accepts any (see SPEC.md, "Compatibility").
pub const FORMAT_MINOR: u8 = 5;
/// Bytes of the header.
pub const HEADER_LEN: usize = 16;

/// What an object (or sealed unit) is. The value is part of the header and of the associated
/// data, so an object cannot be passed off as another kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Config = 1,
    Key = 2,
    Pack = 3,
    /// The table of contents sealed at the end of a pack (a unit, not an object).
    PackToc = 4,
    /// A chunk sealed inside a pack (a unit, not an object).
    Chunk = 5,
    Index = 6,
    Manifest = 7,
    Lock = 8,
    Cluster = 9,
    /// An archived WAL segment or `.partial` segment (format 1.1).
    WalSegment = 10,
    /// An archived timeline history file (format 1.1).
    WalHistory = 11,
    /// An archived backup history file (format 1.1).
    WalBackupHistory = 12,
    /// A backup pinned against retention (format 1.2).
    Pin = 13,
    /// A logical dump (pg_dump, pg_dumpall, SQLite snapshot) (format 1.3).
    Dump = 14,
    /// An archived WAL segment or `.partial` segment whose meta checksums the file with
    /// BLAKE3 instead of SHA-256 (format 1.5). Readers of 1.4 and earlier refuse it as an
    /// unknown kind rather than failing its checksum.
    WalSegmentBlake3 = 15,
}

impl Kind {
    pub fn from_u8(v: u8) -> Result<Self, FormatError> {
        Ok(match v {
            1 => Self::Config,
            2 => Self::Key,
            3 => Self::Pack,
            4 => Self::PackToc,
            5 => Self::Chunk,
            6 => Self::Index,
            7 => Self::Manifest,
            8 => Self::Lock,
            9 => Self::Cluster,
            10 => Self::WalSegment,
            11 => Self::WalHistory,
            12 => Self::WalBackupHistory,
            13 => Self::Pin,
            14 => Self::Dump,
            15 => Self::WalSegmentBlake3,
            other => return Err(FormatError::UnknownKind(other)),
        })
    }

    /// A human name, as used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Config => "repository config",
            Self::Key => "key file",
            Self::Pack => "pack",
            Self::PackToc => "pack table of contents",
            Self::Chunk => "chunk",
            Self::Index => "index segment",
            Self::Manifest => "backup manifest",
            Self::Lock => "lock",
            Self::Cluster => "cluster binding",
            Self::WalSegment | Self::WalSegmentBlake3 => "WAL segment",
            Self::WalHistory => "timeline history file",
            Self::WalBackupHistory => "backup history file",
            Self::Pin => "backup pin",
            Self::Dump => "dump manifest",
        }
    }
}

/// The 16-byte header: magic, major, minor, kind, flags (0 in v1), key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub minor: u8,
    pub kind: Kind,
    /// The master key id for objects under the master key; the key file's own id for key
    /// files.
    pub key_id: [u8; 8],
}

impl Header {
    pub fn new(kind: Kind, key_id: [u8; 8]) -> Self {
        Self {
            minor: FORMAT_MINOR,
            kind,
            key_id,
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&MAGIC);
        h[4] = FORMAT_MAJOR;
        h[5] = self.minor;
        h[6] = self.kind as u8;
        h[7] = 0;
        h[8..].copy_from_slice(&self.key_id);
        h
    }

    /// Parses and checks a header: magic, major version, known kind, zero flags.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let what = "object header";
        if bytes.len() < HEADER_LEN {
            return Err(FormatError::Truncated { what });
        }
        if bytes[..4] != MAGIC {
            return Err(FormatError::BadMagic { what });
        }
        if bytes[4] != FORMAT_MAJOR {
            return Err(FormatError::UnsupportedVersion {
                what,
                major: bytes[4],
                minor: bytes[5],
                supported: FORMAT_MAJOR,
            });
        }
        let kind = Kind::from_u8(bytes[6])?;
        if bytes[7] != 0 {
            return Err(FormatError::Invalid {
                what,
                reason: format!("flags byte is {:#04x}, format 1 defines none", bytes[7]),
            });
        }
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&bytes[8..16]);
        Ok(Self {
            minor: bytes[5],
            kind,
            key_id,
        })
    }

    /// Checks that the header is of `expected` kind.
    pub fn expect_kind(&self, expected: Kind) -> Result<(), FormatError> {
        if self.kind != expected {
            return Err(FormatError::WrongKind {
                expected: expected.name(),
                found: self.kind.name(),
            });
        }
        Ok(())
    }
}

/// Seals a whole object: header, then the sealed unit whose name is the object's path.
pub fn seal_object(
    keys: &RepoKeys,
    kind: Kind,
    name: &str,
    salt: [u8; SALT_LEN],
    data: &[u8],
    level: i8,
) -> Vec<u8> {
    let header = Header::new(kind, keys.key_id().0);
    let unit = keys.seal(&header, name.as_bytes(), salt, data, level);
    let mut out = Vec::with_capacity(HEADER_LEN + unit.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&unit);
    out
}

/// Opens a whole object stored at `name`, checking its header, kind and master key first so
/// the error says *why* it cannot be read.
pub fn open_object(
    keys: &RepoKeys,
    kind: Kind,
    name: &str,
    bytes: &[u8],
    limit: u64,
) -> Result<Vec<u8>, FormatError> {
    let header = Header::decode(bytes)?;
    header.expect_kind(kind)?;
    if header.key_id != keys.key_id().0 {
        return Err(FormatError::WrongKey {
            what: kind.name(),
            expected: keys.key_id().to_hex(),
            found: MasterKeyId(header.key_id).to_hex(),
        });
    }
    keys.open(
        &header,
        name.as_bytes(),
        &bytes[HEADER_LEN..],
        limit,
        kind.name(),
    )
}
