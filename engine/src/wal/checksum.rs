//! The checksum a WAL object's meta carries for its file (format-spec §7): BLAKE3 for
//! segments stored since format 1.5, SHA-256 for history files and older segments. The
//! object's kind decides which, so comparing a file with a stored copy hashes it in the
//! stored copy's algorithm.

use pgkeep_format::{ChecksumAlgorithm, FileChecksum};
use sha2::{Digest, Sha256};

/// A file's checksum, computed a part at a time.
#[derive(Debug)]
pub enum FileHasher {
    Sha256(Box<Sha256>),
    Blake3(Box<blake3::Hasher>),
}

impl FileHasher {
    pub fn new(algorithm: ChecksumAlgorithm) -> Self {
        match algorithm {
            ChecksumAlgorithm::Sha256 => Self::Sha256(Box::default()),
            ChecksumAlgorithm::Blake3 => Self::Blake3(Box::default()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(bytes),
            Self::Blake3(h) => {
                h.update(bytes);
            }
        }
    }

    pub fn finish(self) -> FileChecksum {
        match self {
            Self::Sha256(h) => FileChecksum {
                algorithm: ChecksumAlgorithm::Sha256,
                digest: h.finalize().into(),
            },
            Self::Blake3(h) => FileChecksum {
                algorithm: ChecksumAlgorithm::Blake3,
                digest: *h.finalize().as_bytes(),
            },
        }
    }
}

/// The checksum of a whole file in memory.
pub fn file_checksum(algorithm: ChecksumAlgorithm, bytes: &[u8]) -> FileChecksum {
    let mut hasher = FileHasher::new(algorithm);
    hasher.update(bytes);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digests are the tools' own: what `sha256sum` and `b3sum` print for "abc".
    #[test]
    fn digests_are_the_standard_ones() {
        let sha = file_checksum(ChecksumAlgorithm::Sha256, b"abc");
        assert_eq!(
            sha.to_string(),
            "SHA-256 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let b3 = file_checksum(ChecksumAlgorithm::Blake3, b"abc");
        assert_eq!(
            b3.to_string(),
            "BLAKE3 6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        // Fed in parts, the same digest.
        let mut parts = FileHasher::new(ChecksumAlgorithm::Blake3);
        parts.update(b"a");
        parts.update(b"bc");
        assert_eq!(parts.finish(), b3);
        assert_ne!(sha.digest, b3.digest);
    }
}
