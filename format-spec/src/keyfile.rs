//! Key files: the master key wrapped under a key derived from one passphrase with Argon2id.
//!
//! A repository has one key file per passphrase. Adding, changing or removing a passphrase
//! touches only key files; no data object is re-encrypted.

use zeroize::Zeroizing;

use crate::aead;
use crate::crypto::{MasterKey, TAG_LEN};
use crate::envelope::{Header, Kind, HEADER_LEN};
use crate::error::FormatError;
use crate::ids::{KeyFileId, RepoId};
use crate::wire::{Reader, Writer};

/// The KDF algorithm byte for Argon2id version 0x13.
pub const KDF_ARGON2ID_V13: u8 = 1;
/// Longest label accepted.
pub const MAX_LABEL_LEN: usize = 1024;

/// Argon2id cost parameters, stored in each key file so they can change per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// The default: 64 MiB, 3 passes, 1 lane (about 0.2 s on a current core); the second
    /// recommended option of RFC 9106.
    pub const DEFAULT: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };

    /// Upper bounds a reader enforces, so a forged key file cannot make `open` allocate
    /// unbounded memory or spin forever.
    const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
    const MAX_ITERATIONS: u32 = 1000;
    const MAX_PARALLELISM: u32 = 64;

    pub fn validate(&self) -> Result<(), FormatError> {
        let bad = |reason: String| FormatError::Invalid {
            what: "key file",
            reason,
        };
        if self.parallelism == 0 || self.parallelism > Self::MAX_PARALLELISM {
            return Err(bad(format!(
                "Argon2 parallelism {} out of range 1..=64",
                self.parallelism
            )));
        }
        if self.iterations == 0 || self.iterations > Self::MAX_ITERATIONS {
            return Err(bad(format!(
                "Argon2 iterations {} out of range 1..=1000",
                self.iterations
            )));
        }
        if self.memory_kib < 8 * self.parallelism || self.memory_kib > Self::MAX_MEMORY_KIB {
            return Err(bad(format!(
                "Argon2 memory {} KiB out of range (8 KiB per lane to 4 GiB)",
                self.memory_kib
            )));
        }
        Ok(())
    }

    /// Derives the 32-byte key-encryption key from a passphrase.
    pub fn derive(
        &self,
        passphrase: &[u8],
        salt: &[u8; 32],
    ) -> Result<Zeroizing<[u8; 32]>, FormatError> {
        self.validate()?;
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| FormatError::Kdf(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase, salt, &mut out[..])
            .map_err(|e| FormatError::Kdf(e.to_string()))?;
        Ok(out)
    }
}

/// The public fields of a key file, chosen by whoever creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileMeta {
    pub id: KeyFileId,
    pub repo_id: RepoId,
    pub kdf: KdfParams,
    /// Fresh random bytes for each key file.
    pub salt: [u8; 32],
    /// Unix seconds.
    pub created: i64,
    pub label: String,
}

/// One decoded key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    pub id: KeyFileId,
    pub repo_id: RepoId,
    pub kdf: KdfParams,
    pub salt: [u8; 32],
    /// Unix seconds.
    pub created: i64,
    /// Free text shown by `key list` (who added it, what for). Not secret.
    pub label: String,
    /// The minor format version in the stored header (authenticated with the rest).
    minor: u8,
    /// The master key, AES-256-GCM encrypted under the derived key, with its tag.
    wrapped: [u8; 32 + TAG_LEN],
}

impl KeyFile {
    /// Wraps `master` under `passphrase`.
    pub fn create(
        meta: KeyFileMeta,
        passphrase: &[u8],
        master: &MasterKey,
    ) -> Result<Self, FormatError> {
        let KeyFileMeta {
            id,
            repo_id,
            kdf,
            salt,
            created,
            label,
        } = meta;
        if label.len() > MAX_LABEL_LEN {
            return Err(FormatError::Invalid {
                what: "key file",
                reason: format!("label longer than {MAX_LABEL_LEN} bytes"),
            });
        }
        let mut kf = Self {
            id,
            repo_id,
            kdf,
            salt,
            created,
            label,
            minor: crate::envelope::FORMAT_MINOR,
            wrapped: [0u8; 32 + TAG_LEN],
        };
        let kek = kdf.derive(passphrase, &salt)?;
        let mut buf = Zeroizing::new(*master.as_bytes());
        let tag = aead::seal_in_place(&kek, &kf.authenticated_prefix(), &mut buf[..]);
        kf.wrapped[..32].copy_from_slice(&buf[..]);
        kf.wrapped[32..].copy_from_slice(&tag);
        Ok(kf)
    }

    /// Recovers the master key. A wrong passphrase and an altered file are indistinguishable
    /// by design; both give `Authentication`.
    pub fn unlock(&self, passphrase: &[u8]) -> Result<MasterKey, FormatError> {
        let kek = self.kdf.derive(passphrase, &self.salt)?;
        let mut buf = Zeroizing::new([0u8; 32]);
        buf.copy_from_slice(&self.wrapped[..32]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&self.wrapped[32..]);
        aead::open_in_place(&kek, &self.authenticated_prefix(), &mut buf[..], &tag)
            .map_err(|_| FormatError::Authentication { what: "key file" })?;
        Ok(MasterKey::from_bytes(*buf))
    }

    /// Every byte before the wrapped key: the associated data of the wrap.
    fn authenticated_prefix(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(96 + self.label.len());
        let header = Header {
            minor: self.minor,
            kind: Kind::Key,
            key_id: self.id.0,
        };
        w.raw(&header.encode())
            .raw(&self.repo_id.0)
            .u8(KDF_ARGON2ID_V13)
            .raw(&[0, 0, 0])
            .u32(self.kdf.memory_kib)
            .u32(self.kdf.iterations)
            .u32(self.kdf.parallelism)
            .raw(&self.salt)
            .i64(self.created)
            .u16(u16::try_from(self.label.len()).unwrap_or(u16::MAX))
            .raw(self.label.as_bytes());
        w.into_vec()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.authenticated_prefix();
        out.extend_from_slice(&self.wrapped);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let header = Header::decode(bytes)?;
        header.expect_kind(Kind::Key)?;
        let mut r = Reader::new(&bytes[HEADER_LEN..], "key file");
        let repo_id = RepoId(r.array()?);
        let alg = r.u8()?;
        if alg != KDF_ARGON2ID_V13 {
            return Err(r.invalid(format!("unknown key derivation algorithm {alg}")));
        }
        if r.array::<3>()? != [0, 0, 0] {
            return Err(r.invalid("reserved bytes are not zero"));
        }
        let kdf = KdfParams {
            memory_kib: r.u32()?,
            iterations: r.u32()?,
            parallelism: r.u32()?,
        };
        kdf.validate()?;
        let salt = r.array()?;
        let created = r.i64()?;
        let label_len = r.u16()? as usize;
        if label_len > MAX_LABEL_LEN {
            return Err(r.invalid("label too long"));
        }
        let label = String::from_utf8(r.take(label_len)?.to_vec())
            .map_err(|_| r.invalid("label is not UTF-8"))?;
        let wrapped = r.array()?;
        if r.remaining() != 0 {
            return Err(r.invalid("trailing bytes after the wrapped key"));
        }
        Ok(Self {
            id: KeyFileId(header.key_id),
            repo_id,
            kdf,
            salt,
            created,
            label,
            minor: header.minor,
            wrapped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn sample() -> KeyFile {
        KeyFile::create(
            KeyFileMeta {
                id: KeyFileId([1; 8]),
                repo_id: RepoId([2; 16]),
                kdf: FAST,
                salt: [3; 32],
                created: 1_700_000_000,
                label: "ops@db1".into(),
            },
            b"correct horse",
            &MasterKey::from_bytes([9; 32]),
        )
        .expect("creates")
    }

    #[test]
    fn round_trip_and_unlock() {
        let kf = sample();
        let back = KeyFile::decode(&kf.encode()).expect("decodes");
        assert_eq!(back, kf);
        assert_eq!(
            back.unlock(b"correct horse").expect("unlocks").as_bytes(),
            &[9; 32]
        );
    }

    #[test]
    fn wrong_passphrase_is_an_authentication_error() {
        let err = sample().unlock(b"wrong").expect_err("must fail");
        assert_eq!(err, FormatError::Authentication { what: "key file" });
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let outcome = KeyFile::decode(&b).and_then(|kf| kf.unlock(b"correct horse"));
            assert!(outcome.is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn hostile_kdf_parameters_are_refused_before_deriving() {
        let mut bytes = sample().encode();
        // memory_kib lives at offset 36.
        bytes[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            KeyFile::decode(&bytes),
            Err(FormatError::Invalid { .. })
        ));
    }
}
