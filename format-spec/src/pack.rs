//! Packs: many sealed chunks in one stored object, with a sealed table of contents at the end
//! so the index can be rebuilt from packs alone.
//!
//! Layout: `header[16] || chunk unit* || toc unit || toc_len u32 || "PKTC"`.

use crate::crypto::{RepoKeys, SALT_LEN};
use crate::envelope::{Header, Kind, HEADER_LEN};
use crate::error::FormatError;
use crate::ids::{ChunkId, MasterKeyId, PackId};
use crate::wire::{Reader, Writer};

/// The four bytes that end every pack.
pub const TRAILER_MAGIC: [u8; 4] = *b"PKTC";
/// Bytes of the trailer: toc length and magic.
pub const TRAILER_LEN: usize = 8;
/// Size of one encoded entry.
pub const ENTRY_LEN: usize = 32 + 4 + 4 + 4;
/// The name bound into the table of contents' associated data.
const TOC_NAME: &[u8] = b"toc";
/// Packs address chunks with u32 offsets; this keeps every pack well below that.
pub const MAX_PACK_SIZE: usize = 1 << 31;

/// Where one chunk sits in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackEntry {
    pub chunk_id: ChunkId,
    /// Byte offset of the sealed unit from the start of the pack.
    pub offset: u32,
    /// Bytes of the sealed unit (salt, ciphertext, tag).
    pub stored_len: u32,
    /// Bytes of the chunk's plaintext.
    pub raw_len: u32,
}

impl PackEntry {
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.raw(self.chunk_id.as_bytes())
            .u32(self.offset)
            .u32(self.stored_len)
            .u32(self.raw_len);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        Ok(Self {
            chunk_id: ChunkId(r.array()?),
            offset: r.u32()?,
            stored_len: r.u32()?,
            raw_len: r.u32()?,
        })
    }
}

/// Builds one pack in memory (sans-IO: the caller uploads the bytes).
#[derive(Debug)]
pub struct PackWriter {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A finished pack, ready to upload.
#[derive(Debug)]
pub struct FinishedPack {
    pub id: PackId,
    pub bytes: Vec<u8>,
    pub entries: Vec<PackEntry>,
}

impl PackWriter {
    pub fn new(key_id: MasterKeyId, capacity: usize) -> Self {
        Self::reusing(key_id, Vec::with_capacity(capacity))
    }

    /// Starts a pack in a buffer from an earlier pack, keeping its capacity: a writer that
    /// recycles its buffers allocates its packs once, instead of handing the allocator a
    /// stream of pack-sized blocks to fragment its heap with.
    pub fn reusing(key_id: MasterKeyId, mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.extend_from_slice(&Header::new(Kind::Pack, key_id.0).encode());
        Self {
            buf,
            entries: Vec::new(),
        }
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Appends a sealed chunk unit.
    pub fn push(&mut self, chunk_id: ChunkId, raw_len: u32, unit: &[u8]) {
        assert!(
            self.buf.len() + unit.len() < MAX_PACK_SIZE,
            "the packer flushes packs long before 2 GiB"
        );
        self.entries.push(PackEntry {
            chunk_id,
            offset: self.buf.len() as u32,
            stored_len: unit.len() as u32,
            raw_len,
        });
        self.buf.extend_from_slice(unit);
    }

    /// Seals the table of contents, appends the trailer and names the pack by its hash.
    pub fn finish(mut self, keys: &RepoKeys, salt: [u8; SALT_LEN]) -> FinishedPack {
        let toc = encode_toc(&self.entries);
        let unit = keys.seal(&keys.unit_header(Kind::PackToc), TOC_NAME, salt, &toc, 3);
        self.buf.extend_from_slice(&unit);
        self.buf
            .extend_from_slice(&(unit.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&TRAILER_MAGIC);
        FinishedPack {
            id: PackId::of_bytes(&self.buf),
            bytes: self.buf,
            entries: self.entries,
        }
    }
}

fn encode_toc(entries: &[PackEntry]) -> Vec<u8> {
    let mut w = Writer::with_capacity(4 + entries.len() * ENTRY_LEN);
    w.count(entries.len());
    for e in entries {
        e.encode(&mut w);
    }
    w.into_vec()
}

/// Reads the trailer (the pack's last 8 bytes) and returns the sealed TOC's length.
pub fn toc_len_from_trailer(trailer: &[u8]) -> Result<usize, FormatError> {
    let what = "pack trailer";
    if trailer.len() != TRAILER_LEN {
        return Err(FormatError::Truncated { what });
    }
    if trailer[4..] != TRAILER_MAGIC {
        return Err(FormatError::BadMagic { what });
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&trailer[..4]);
    Ok(u32::from_le_bytes(len) as usize)
}

/// Decrypts and decodes a pack's table of contents unit, checking that every entry lies
/// inside the chunk area (`HEADER_LEN..chunk_area_end`).
pub fn open_toc(
    keys: &RepoKeys,
    unit: &[u8],
    chunk_area_end: usize,
) -> Result<Vec<PackEntry>, FormatError> {
    let limit = (unit.len() as u64).saturating_mul(64).max(1 << 20);
    let toc = keys.open(
        &keys.unit_header(Kind::PackToc),
        TOC_NAME,
        unit,
        limit,
        Kind::PackToc.name(),
    )?;
    let mut r = Reader::new(&toc, "pack table of contents");
    let n = r.count(ENTRY_LEN)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let e = PackEntry::decode(&mut r)?;
        let end = e.offset as usize + e.stored_len as usize;
        if (e.offset as usize) < HEADER_LEN || end > chunk_area_end {
            return Err(r.invalid(format!(
                "entry for chunk {} lies outside the pack",
                e.chunk_id
            )));
        }
        entries.push(e);
    }
    Ok(entries)
}

/// Reads a whole pack: checks header, trailer and TOC. Used by verify and index rebuild.
pub fn read_pack(keys: &RepoKeys, bytes: &[u8]) -> Result<Vec<PackEntry>, FormatError> {
    let header = Header::decode(bytes)?;
    header.expect_kind(Kind::Pack)?;
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(FormatError::Truncated { what: "pack" });
    }
    let toc_len = toc_len_from_trailer(&bytes[bytes.len() - TRAILER_LEN..])?;
    let toc_end = bytes.len() - TRAILER_LEN;
    let toc_start = toc_end
        .checked_sub(toc_len)
        .filter(|s| *s >= HEADER_LEN)
        .ok_or(FormatError::Invalid {
            what: "pack",
            reason: format!("table of contents length {toc_len} exceeds the pack"),
        })?;
    open_toc(keys, &bytes[toc_start..toc_end], toc_start)
}
