//! Which ranged reads of packs fetch a stream's chunks.
//!
//! A full backup writes a file's chunks one after another into a pack (in the order the
//! sealing threads finish them, so neighbours may be swapped), and a restore needs them in
//! about that order. Chunks of one pack that lie close together are fetched with one ranged
//! read and opened on one blocking thread, instead of one read, one open and two thread
//! hand-offs each. Every chunk is still opened and checked on its own.

use std::ops::Range;

use pgkeep_format::{ChunkId, PackId};

use crate::index::ChunkLocation;

/// Sealed bytes one read may span at most.
const MAX_SPAN: u64 = 8 << 20;
/// Plaintext bytes one read may decode at most. With `READ_AHEAD` reads in flight per
/// stream, this is what bounds a restore's memory: 4 reads of 2 MiB hold about what 8
/// single 1 MiB page chunks did.
const MAX_RAW: u64 = 2 << 20;
/// Bytes between chunks a read may include and throw away rather than be split in two
/// (chunks of other streams the backup wrote in between).
const MAX_GAP: u64 = 64 << 10;

/// One ranged read of a pack and the chunks to open from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fetch {
    pub(super) pack: PackId,
    /// Bytes of the pack to read.
    pub(super) range: Range<u64>,
    /// The chunks, in the order the stream needs them.
    pub(super) chunks: Vec<Member>,
}

/// One chunk of a [`Fetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Member {
    pub(super) id: ChunkId,
    /// Where its sealed unit starts in the pack (for messages).
    pub(super) offset: u64,
    /// Its sealed unit within the bytes read (relative to `range.start`).
    pub(super) at: Range<usize>,
    /// Its size once opened, as the index says.
    pub(super) raw_len: u32,
}

/// The chunks, in the order given, as reads: consecutive chunks share a read while they are
/// in one pack, within [`MAX_GAP`] of each other (in either order) and the read stays under
/// [`MAX_SPAN`] and [`MAX_RAW`]. A chunk listed twice in one read is read once.
pub(super) fn group(chunks: &[(ChunkId, ChunkLocation)]) -> Vec<Fetch> {
    let mut out = Vec::new();
    let mut open: Option<Building> = None;
    for (id, loc) in chunks {
        let start = u64::from(loc.offset);
        let end = start + u64::from(loc.stored_len);
        if let Some(b) = open.as_mut() {
            if b.try_add(*id, loc, start..end) {
                continue;
            }
        }
        out.extend(open.take().map(Building::finish));
        open = Some(Building {
            pack: loc.pack_id,
            range: start..end,
            covered: end - start,
            raw: u64::from(loc.raw_len),
            chunks: vec![(*id, start..end, loc.raw_len)],
        });
    }
    out.extend(open.map(Building::finish));
    out
}

/// A read being grown; offsets absolute in the pack.
struct Building {
    pack: PackId,
    range: Range<u64>,
    /// Sealed bytes of distinct chunks (the rest of `range` is gaps).
    covered: u64,
    raw: u64,
    chunks: Vec<(ChunkId, Range<u64>, u32)>,
}

impl Building {
    fn try_add(&mut self, id: ChunkId, loc: &ChunkLocation, unit: Range<u64>) -> bool {
        if loc.pack_id != self.pack {
            return false;
        }
        let repeat = self.chunks.iter().any(|(c, r, _)| *c == id && *r == unit);
        let (len, raw) = if repeat {
            (0, 0)
        } else {
            (unit.end - unit.start, u64::from(loc.raw_len))
        };
        let range = self.range.start.min(unit.start)..self.range.end.max(unit.end);
        let span = range.end - range.start;
        let covered = self.covered + len;
        if span > MAX_SPAN || span.saturating_sub(covered) > MAX_GAP || self.raw + raw > MAX_RAW {
            return false;
        }
        self.range = range;
        self.covered = covered;
        self.raw += raw;
        self.chunks.push((id, unit, loc.raw_len));
        true
    }

    fn finish(self) -> Fetch {
        let base = self.range.start;
        let chunks = self
            .chunks
            .into_iter()
            .map(|(id, unit, raw_len)| Member {
                id,
                offset: unit.start,
                // Within `range`, which spans at most `MAX_SPAN` bytes (or one chunk).
                at: (unit.start - base) as usize..(unit.end - base) as usize,
                raw_len,
            })
            .collect();
        Fetch {
            pack: self.pack,
            range: self.range,
            chunks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn at(pack: u8, offset: u32, stored_len: u32) -> ChunkLocation {
        ChunkLocation {
            pack_id: PackId([pack; 32]),
            offset,
            stored_len,
            raw_len: stored_len * 4,
        }
    }

    /// A read as (pack, range, [(chunk, position in the read)]).
    type Shape = (u8, Range<u64>, Vec<(u8, Range<usize>)>);

    fn shape(fetches: &[Fetch]) -> Vec<Shape> {
        fetches
            .iter()
            .map(|f| {
                let members = f.chunks.iter().map(|m| (m.id.0[0], m.at.clone())).collect();
                (f.pack.0[0], f.range.clone(), members)
            })
            .collect()
    }

    #[test]
    fn adjacent_chunks_of_one_pack_are_one_read() {
        let chunks = [
            (id(1), at(9, 100, 50)),
            (id(2), at(9, 150, 70)),
            (id(3), at(9, 220, 30)),
        ];
        assert_eq!(
            shape(&group(&chunks)),
            vec![(9, 100..250, vec![(1, 0..50), (2, 50..120), (3, 120..150)])]
        );
        assert_eq!(group(&chunks)[0].chunks[1].offset, 150);
    }

    #[test]
    fn swapped_neighbours_and_small_gaps_share_a_read() {
        let chunks = [
            (id(2), at(9, 1000, 100)),
            (id(1), at(9, 900, 100)),
            // 8 KiB of another stream's chunk in between: read and thrown away.
            (id(3), at(9, 1100 + 8192, 100)),
        ];
        assert_eq!(
            shape(&group(&chunks)),
            vec![(
                9,
                900..9392,
                vec![(2, 100..200), (1, 0..100), (3, 8392..8492)]
            )]
        );
    }

    #[test]
    fn large_gaps_and_other_packs_split_reads() {
        let gap = MAX_GAP as u32 + 1;
        let chunks = [
            (id(1), at(9, 0, 100)),
            (id(2), at(9, 100 + gap, 100)),
            (id(3), at(8, 200 + gap, 100)),
            (id(4), at(9, 200 + gap, 100)),
        ];
        assert_eq!(
            shape(&group(&chunks)),
            vec![
                (9, 0..100, vec![(1, 0..100)]),
                (
                    9,
                    u64::from(100 + gap)..u64::from(200 + gap),
                    vec![(2, 0..100)]
                ),
                (
                    8,
                    u64::from(200 + gap)..u64::from(300 + gap),
                    vec![(3, 0..100)]
                ),
                (
                    9,
                    u64::from(200 + gap)..u64::from(300 + gap),
                    vec![(4, 0..100)]
                ),
            ]
        );
    }

    #[test]
    fn a_repeated_chunk_is_read_once_but_listed_each_time() {
        let chunks = [
            (id(1), at(9, 0, 100)),
            (id(2), at(9, 100, 100)),
            (id(1), at(9, 0, 100)),
        ];
        let fetches = group(&chunks);
        assert_eq!(
            shape(&fetches),
            vec![(9, 0..200, vec![(1, 0..100), (2, 100..200), (1, 0..100)])]
        );
    }

    #[test]
    fn reads_stop_at_the_memory_bounds() {
        // 1 MiB sealed chunks that open to 4 MiB each: one per read (MAX_RAW).
        let big = 1 << 20;
        let chunks = [(id(1), at(9, 0, big)), (id(2), at(9, big, big))];
        assert_eq!(group(&chunks).len(), 2);
        // Incompressible 1 MiB chunks: two per read.
        let raw = |offset: u32| ChunkLocation {
            raw_len: big,
            ..at(9, offset, big)
        };
        let chunks: Vec<_> = (0..5u8).map(|i| (id(i), raw(u32::from(i) * big))).collect();
        let sizes: Vec<usize> = group(&chunks).iter().map(|f| f.chunks.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        // A chunk larger than any bound still gets its own read.
        let huge = [(id(1), raw(0)), (id(2), at(9, big, 16 << 20))];
        let sizes: Vec<usize> = group(&huge).iter().map(|f| f.chunks.len()).collect();
        assert_eq!(sizes, vec![1, 1]);
    }

    #[test]
    fn nothing_to_read_is_no_reads() {
        assert!(group(&[]).is_empty());
    }
}
