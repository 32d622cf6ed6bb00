//! Index segments: which pack holds which chunk, written once per backup session.
//!
//! Plaintext: `count u32`, then per pack `pack_id[32] || count u32 || entry*`.

use crate::error::FormatError;
use crate::ids::PackId;
use crate::pack::{PackEntry, ENTRY_LEN};
use crate::wire::{Reader, Writer};

/// The chunks of one pack as recorded in an index segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedPack {
    pub pack_id: PackId,
    /// Size of the pack object in bytes (lets verify check packs without reading them).
    pub pack_size: u64,
    pub entries: Vec<PackEntry>,
}

/// One index segment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexSegment {
    pub packs: Vec<IndexedPack>,
}

impl IndexSegment {
    pub fn encode(&self) -> Vec<u8> {
        let n: usize = self
            .packs
            .iter()
            .map(|p| 44 + p.entries.len() * ENTRY_LEN)
            .sum();
        let mut w = Writer::with_capacity(4 + n);
        w.count(self.packs.len());
        for p in &self.packs {
            w.raw(p.pack_id.as_bytes())
                .u64(p.pack_size)
                .count(p.entries.len());
            for e in &p.entries {
                e.encode(&mut w);
            }
        }
        w.into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, "index segment");
        let n = r.count(44)?;
        let mut packs = Vec::with_capacity(n);
        for _ in 0..n {
            let pack_id = PackId(r.array()?);
            let pack_size = r.u64()?;
            let m = r.count(ENTRY_LEN)?;
            let mut entries = Vec::with_capacity(m);
            for _ in 0..m {
                let e = PackEntry::decode(&mut r)?;
                if u64::from(e.offset) + u64::from(e.stored_len) > pack_size {
                    return Err(r.invalid(format!(
                        "chunk {} lies beyond the end of pack {pack_id}",
                        e.chunk_id
                    )));
                }
                entries.push(e);
            }
            packs.push(IndexedPack {
                pack_id,
                pack_size,
                entries,
            });
        }
        // Bytes after the last known field are a later minor version's additions.
        Ok(Self { packs })
    }
}
