//! Keys, key derivation and the sealed unit (AES-256-GCM under a per-unit subkey).
//!
//! A *sealed unit* is `salt[24] || ciphertext || tag[16]`. Its key is derived from the
//! repository's encryption root key and the unit's own random salt, so every unit is encrypted
//! under a key used exactly once: the all-zero nonce is then safe, and no nonce counter or
//! message limit ever needs tracking across processes (see SPEC.md, "Encryption").

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::aead;
use crate::body;
use crate::envelope::{Header, Kind, HEADER_LEN};
use crate::error::FormatError;
use crate::ids::{ChunkId, MasterKeyId, RepoId};

/// Bytes of random salt at the start of every sealed unit.
pub const SALT_LEN: usize = 24;
/// Bytes of the AES-GCM authentication tag at the end of every sealed unit.
pub const TAG_LEN: usize = crate::aead::TAG_LEN;
/// What sealing adds to a body: salt and tag.
pub const SEAL_OVERHEAD: usize = SALT_LEN + TAG_LEN;

/// BLAKE3 `derive_key` contexts. Changing any of these changes the format.
mod context {
    pub(super) const ENCRYPTION_ROOT: &str = "pgkeep 2026-11 v1 encryption root key";
    pub(super) const CHUNK_ID: &str = "pgkeep 2026-11 v1 chunk id key";
    pub(super) const MASTER_KEY_ID: &str = "pgkeep 2026-11 v1 master key id";
    pub(super) const UNIT_SUBKEY: &str = "pgkeep 2026-11 v1 sealed unit subkey";
}

/// The repository's 32-byte random master key. Never stored in the clear: key files hold it
/// wrapped under passphrase-derived keys.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The id written into every object header encrypted under this key.
    pub fn id(&self) -> MasterKeyId {
        let d = blake3::derive_key(context::MASTER_KEY_ID, &self.0);
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        MasterKeyId(id)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(id {}, secret redacted)", self.id())
    }
}

/// Everything needed to read and write one repository's objects, derived from its master key.
#[derive(ZeroizeOnDrop)]
pub struct RepoKeys {
    #[zeroize(skip)]
    repo_id: RepoId,
    #[zeroize(skip)]
    key_id: MasterKeyId,
    encryption_root: [u8; 32],
    chunk_id_key: [u8; 32],
}

impl std::fmt::Debug for RepoKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoKeys")
            .field("repo_id", &self.repo_id)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl RepoKeys {
    pub fn derive(repo_id: RepoId, master: &MasterKey) -> Self {
        Self {
            repo_id,
            key_id: master.id(),
            encryption_root: blake3::derive_key(context::ENCRYPTION_ROOT, master.as_bytes()),
            chunk_id_key: blake3::derive_key(context::CHUNK_ID, master.as_bytes()),
        }
    }

    pub fn repo_id(&self) -> RepoId {
        self.repo_id
    }

    pub fn key_id(&self) -> MasterKeyId {
        self.key_id
    }

    /// A chunk's id: BLAKE3 keyed with a secret derived from the master key, so equal data
    /// deduplicates while someone holding only the storage cannot test for known content.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.chunk_id_key, plaintext).as_bytes())
    }

    /// Associated data of a sealed unit: the object header (for units inside a pack, a header
    /// of the unit's own kind with minor 0), the repository id and the unit's name (object path
    /// or raw chunk id). Binds version, kind, master key, repository and name.
    fn aad(&self, header: &[u8; HEADER_LEN], name: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(HEADER_LEN + 16 + 2 + name.len());
        aad.extend_from_slice(header);
        aad.extend_from_slice(&self.repo_id.0);
        let len = u16::try_from(name.len()).expect("object names are shorter than 64 KiB");
        aad.extend_from_slice(&len.to_le_bytes());
        aad.extend_from_slice(name);
        aad
    }

    fn unit_key(&self, salt: &[u8; SALT_LEN]) -> Zeroizing<[u8; 32]> {
        let mut material = Zeroizing::new([0u8; 32 + SALT_LEN]);
        material[..32].copy_from_slice(&self.encryption_root);
        material[32..].copy_from_slice(salt);
        Zeroizing::new(blake3::derive_key(context::UNIT_SUBKEY, &material[..]))
    }

    /// Compresses `data` at `level` (0 = store raw; raw too when zstd saves too little), then
    /// seals it as a unit of `kind` named `name` with the given random `salt`.
    pub fn seal(
        &self,
        header: &Header,
        name: &[u8],
        salt: [u8; SALT_LEN],
        data: &[u8],
        level: i8,
    ) -> Vec<u8> {
        let mut unit = Vec::with_capacity(SEAL_OVERHEAD + body::max_encoded_len(data.len(), level));
        unit.extend_from_slice(&salt);
        body::encode_into(&mut unit, data, level);
        self.seal_body(header, name, unit)
    }

    /// [`seal`](Self::seal) for `len` bytes of data whose consecutive parts were compressed
    /// beforehand (on several threads, say) by [`body::compress_frame`] at `level`.
    pub fn seal_frames(
        &self,
        header: &Header,
        name: &[u8],
        salt: [u8; SALT_LEN],
        len: u64,
        level: i8,
        frames: &[Vec<u8>],
    ) -> Vec<u8> {
        let payload = frames.iter().map(Vec::len).sum::<usize>();
        let mut unit = Vec::with_capacity(SEAL_OVERHEAD + body::HEADER_LEN + payload);
        unit.extend_from_slice(&salt);
        body::encode_frames_into(&mut unit, len, level, frames);
        self.seal_body(header, name, unit)
    }

    /// Encrypts the body that follows the salt in `unit` in place and appends the tag.
    fn seal_body(&self, header: &Header, name: &[u8], mut unit: Vec<u8>) -> Vec<u8> {
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&unit[..SALT_LEN]);
        let aad = self.aad(&header.encode(), name);
        let tag = aead::seal_in_place(&self.unit_key(&salt), &aad, &mut unit[SALT_LEN..]);
        unit.extend_from_slice(&tag);
        unit
    }

    /// Authenticates and decrypts a sealed unit, then decodes its body. `limit` bounds the
    /// decoded size the reader is willing to allocate.
    pub fn open(
        &self,
        header: &Header,
        name: &[u8],
        unit: &[u8],
        limit: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, FormatError> {
        if unit.len() < SEAL_OVERHEAD + body::HEADER_LEN {
            return Err(FormatError::Truncated { what });
        }
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&unit[..SALT_LEN]);
        let (ct, tag) = unit[SALT_LEN..].split_at(unit.len() - SEAL_OVERHEAD);
        let mut tag_bytes = [0u8; TAG_LEN];
        tag_bytes.copy_from_slice(tag);
        let mut plain = ct.to_vec();
        aead::open_in_place(
            &self.unit_key(&salt),
            &self.aad(&header.encode(), name),
            &mut plain,
            &tag_bytes,
        )
        .map_err(|_| FormatError::Authentication { what })?;
        body::decode(plain, limit, what)
    }

    /// Opens a chunk unit and checks that its content hashes to `id`.
    pub fn open_chunk(
        &self,
        id: &ChunkId,
        unit: &[u8],
        limit: u64,
    ) -> Result<Vec<u8>, FormatError> {
        let data = self.open_chunk_authenticated(id, unit, limit)?;
        if self.chunk_id(&data) != *id {
            return Err(FormatError::ChunkIdMismatch { id: id.to_hex() });
        }
        Ok(data)
    }

    /// Opens a chunk unit like [`RepoKeys::open_chunk`], authenticated and decoded, but does
    /// not recompute its id. Only for the two readers SPEC §5.1 allows, whose bytes other
    /// checks see: a writer reading the base of an XOR difference it computes (whoever reads
    /// the difference back checks the base, and authenticated bytes decode the same every
    /// time, so the difference always meets the very bytes it was computed from), and a
    /// restore writing a file it then checks against the server's checksum of it. Hashing
    /// whole bases for the few changed pages taken from each was a seventh of an incremental
    /// backup's time.
    pub fn open_chunk_authenticated(
        &self,
        id: &ChunkId,
        unit: &[u8],
        limit: u64,
    ) -> Result<Vec<u8>, FormatError> {
        self.open(
            &self.unit_header(Kind::Chunk),
            id.as_bytes(),
            unit,
            limit,
            "chunk",
        )
    }

    /// Seals a chunk; its name in the associated data is its raw 32-byte id.
    pub fn seal_chunk(
        &self,
        id: &ChunkId,
        salt: [u8; SALT_LEN],
        data: &[u8],
        level: i8,
    ) -> Vec<u8> {
        self.seal(
            &self.unit_header(Kind::Chunk),
            id.as_bytes(),
            salt,
            data,
            level,
        )
    }

    /// The header bound into units that live inside a pack (chunks, the table of contents).
    pub fn unit_header(&self, kind: Kind) -> Header {
        Header {
            minor: 0,
            kind,
            key_id: self.key_id.0,
        }
    }
}
