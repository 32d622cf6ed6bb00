//! Identifier newtypes. All are fixed-size byte strings shown as lowercase hex.

use std::fmt;
use std::str::FromStr;

use crate::error::FormatError;

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Size in bytes.
            pub const LEN: usize = $len;

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lowercase hex, as used in object names.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = FormatError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).map_err(|_| FormatError::Invalid {
                    what: $what,
                    reason: format!("{s:?} is not {} hex digits", 2 * $len),
                })?;
                Ok(Self(out))
            }
        }
    };
}

hex_id!(
    /// A repository's identity, chosen at random by `init`. Bound into the associated data of
    /// every encrypted object so objects cannot be moved between repositories.
    RepoId, 16, "repository id"
);
hex_id!(
    /// Names the master key that encrypted an object: the first 8 bytes of a value derived from
    /// the master key. Lets a reader tell "wrong repository key" apart from "damaged object".
    MasterKeyId, 8, "master key id"
);
hex_id!(
    /// Names one key file (one passphrase) under `keys/`.
    KeyFileId, 8, "key file id"
);
hex_id!(
    /// A chunk's identity: keyed BLAKE3 of its plaintext (see `RepoKeys::chunk_id`).
    ChunkId, 32, "chunk id"
);
hex_id!(
    /// A pack's identity: unkeyed BLAKE3 of the pack object's stored bytes, so a pack's
    /// integrity can be checked without any key.
    PackId, 32, "pack id"
);
hex_id!(
    /// An index segment's identity, chosen at random when it is written.
    IndexId, 32, "index segment id"
);
hex_id!(
    /// A lock object's identity, chosen at random when the lock is taken.
    LockId, 16, "lock id"
);

impl PackId {
    /// The id of a finished pack: BLAKE3 of all its bytes.
    pub fn of_bytes(pack: &[u8]) -> Self {
        Self(*blake3::hash(pack).as_bytes())
    }
}
