//! The per-file checksums of PostgreSQL's `backup_manifest`: which algorithm a backup asks
//! the server for (`MANIFEST_CHECKSUMS`), and computing one while a restore writes a file.
//!
//! pgkeep's own integrity does not rest on them: every chunk is authenticated (AES-256-GCM)
//! and checked against its keyed BLAKE3 id. The manifest's checksums are the end-to-end check
//! that a restored file is the file the server sent, independent of pgkeep's chunking, so
//! they need to catch accidents and bugs, not forgery. CRC32C does that and is PostgreSQL's
//! own default; SHA-256 costs the server about a core-second per 2 GB sent, on the cores the
//! backup also needs (see `docs/design.md`, "Manifest checksums").

use std::fmt;
use std::str::FromStr;

use sha2::Digest;

/// `MANIFEST_CHECKSUMS` of `BASE_BACKUP`, and the `Checksum-Algorithm` of a manifest entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestChecksum {
    /// No checksums: a restore checks each file's size only.
    None,
    #[default]
    Crc32c,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl ManifestChecksum {
    /// Every algorithm, in the order the documentation lists them.
    pub const ALL: [ManifestChecksum; 6] = [
        ManifestChecksum::None,
        ManifestChecksum::Crc32c,
        ManifestChecksum::Sha224,
        ManifestChecksum::Sha256,
        ManifestChecksum::Sha384,
        ManifestChecksum::Sha512,
    ];

    /// The name PostgreSQL uses, in the command and in the manifest.
    pub fn sql_name(self) -> &'static str {
        match self {
            ManifestChecksum::None => "NONE",
            ManifestChecksum::Crc32c => "CRC32C",
            ManifestChecksum::Sha224 => "SHA224",
            ManifestChecksum::Sha256 => "SHA256",
            ManifestChecksum::Sha384 => "SHA384",
            ManifestChecksum::Sha512 => "SHA512",
        }
    }

    /// A running checksum of this kind; `None` for [`ManifestChecksum::None`].
    pub fn digest(self) -> Option<FileDigest> {
        Some(match self {
            ManifestChecksum::None => return None,
            ManifestChecksum::Crc32c => FileDigest::Crc32c(0),
            ManifestChecksum::Sha224 => FileDigest::Sha224(sha2::Sha224::new()),
            ManifestChecksum::Sha256 => FileDigest::Sha256(sha2::Sha256::new()),
            ManifestChecksum::Sha384 => FileDigest::Sha384(sha2::Sha384::new()),
            ManifestChecksum::Sha512 => FileDigest::Sha512(sha2::Sha512::new()),
        })
    }
}

impl fmt::Display for ManifestChecksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sql_name())
    }
}

/// An algorithm name that is not one of PostgreSQL's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "manifest checksum algorithm {0:?} is not one of none, crc32c, sha224, sha256, sha384, sha512"
)]
pub struct UnknownChecksum(pub String);

impl FromStr for ManifestChecksum {
    type Err = UnknownChecksum;

    /// Case-insensitive, as PostgreSQL reads it (`pg_basebackup --manifest-checksums`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.sql_name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownChecksum(s.to_owned()))
    }
}

/// A checksum being computed over a file's bytes.
#[derive(Clone, Debug)]
pub enum FileDigest {
    Crc32c(u32),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl FileDigest {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            FileDigest::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, data),
            FileDigest::Sha224(h) => h.update(data),
            FileDigest::Sha256(h) => h.update(data),
            FileDigest::Sha384(h) => h.update(data),
            FileDigest::Sha512(h) => h.update(data),
        }
    }

    /// The checksum as the manifest writes it: lower-case hex of its bytes. PostgreSQL
    /// writes a CRC32C's four bytes in the server's byte order (`pg_checksum_final` copies
    /// the integer), which this gives as little-endian; [`FileDigest::matches`] accepts both.
    pub fn finish(self) -> String {
        match self {
            FileDigest::Crc32c(crc) => hex::encode(crc.to_le_bytes()),
            FileDigest::Sha224(h) => hex::encode(h.finalize()),
            FileDigest::Sha256(h) => hex::encode(h.finalize()),
            FileDigest::Sha384(h) => hex::encode(h.finalize()),
            FileDigest::Sha512(h) => hex::encode(h.finalize()),
        }
    }

    /// Whether `computed` (from [`FileDigest::finish`]) is the manifest's `expected` hex.
    /// A CRC32C also matches in big-endian order: a backup of a big-endian server restored
    /// on a little-endian machine.
    pub fn matches(computed: &str, expected: &str) -> bool {
        if computed.eq_ignore_ascii_case(expected) {
            return true;
        }
        computed.len() == 8
            && hex::decode(computed).is_ok_and(|mut b| {
                b.reverse();
                hex::encode(b).eq_ignore_ascii_case(expected)
            })
    }
}

/// So that `std::io::copy` can feed a file into it.
impl std::io::Write for FileDigest {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_case_insensitively() {
        for a in ManifestChecksum::ALL {
            assert_eq!(a.sql_name().parse::<ManifestChecksum>(), Ok(a));
            assert_eq!(
                a.sql_name()
                    .to_ascii_lowercase()
                    .parse::<ManifestChecksum>(),
                Ok(a)
            );
        }
        assert_eq!(
            "md5".parse::<ManifestChecksum>(),
            Err(UnknownChecksum("md5".into()))
        );
        assert_eq!(ManifestChecksum::default(), ManifestChecksum::Crc32c);
    }

    #[test]
    fn digests_match_known_values() {
        // CRC-32C check value (RFC 3720 B.4 / the Castagnoli check "123456789" = e3069283),
        // written as PostgreSQL writes it on a little-endian server.
        let mut d = ManifestChecksum::Crc32c.digest().expect("crc");
        d.update(b"1234");
        d.update(b"56789");
        let crc = d.finish();
        assert_eq!(crc, "839206e3");
        assert!(FileDigest::matches(&crc, "839206E3"));
        assert!(FileDigest::matches(&crc, "e3069283"), "big-endian server");
        assert!(!FileDigest::matches(&crc, "e3069284"));
        let mut d = ManifestChecksum::Sha256.digest().expect("sha");
        d.update(b"abc");
        let sha = d.finish();
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(!FileDigest::matches(&sha, &sha[..8]));
        assert!(ManifestChecksum::None.digest().is_none());
        for a in [
            ManifestChecksum::Sha224,
            ManifestChecksum::Sha384,
            ManifestChecksum::Sha512,
        ] {
            let mut d = a.digest().expect("sha");
            d.update(b"abc");
            assert_eq!(
                d.finish().len(),
                a.sql_name()[3..].parse::<usize>().expect("bits") / 4
            );
        }
    }
}
