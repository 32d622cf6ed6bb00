//! The engine's sans-IO `Chunker`, fed the input in pieces whose sizes come from the input.
//!
//! Byte 0 picks the fixed chunk size (`0..=2040`, 0 meaning 1); the whole input is the stream.
//! Each piece is `1 + 5 * b` bytes long (1..=1276, below and above the 1024 CDC maximum), where
//! `b` is the stream byte at which the piece starts. Both `Fixed` and
//! `ContentDefined { min: 64, avg: 256, max: 1024 }` are checked for:
//! - the chunks concatenate to the input, and none is empty or longer than the maximum;
//! - the cut points do not depend on the piece sizes (same chunks as one single push);
//! - fixed chunks are all exactly `size` except the last; content-defined chunks are all at
//!   least `min` except the last.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_engine::{Chunker, Chunking};

fn cut(chunking: Chunking, data: &[u8], piecewise: bool) -> Vec<Vec<u8>> {
    let mut c = Chunker::new(chunking);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let len = if piecewise {
            1 + 5 * usize::from(data[pos])
        } else {
            data.len()
        };
        let end = (pos + len).min(data.len());
        c.push(&data[pos..end]);
        pos = end;
        while let Some(ch) = c.next_chunk() {
            out.push(ch.to_vec());
        }
    }
    while let Some(ch) = c.finish() {
        out.push(ch.to_vec());
    }
    assert_eq!(c.buffered(), 0);
    out
}

fn check(chunking: Chunking, data: &[u8], min_but_last: usize) {
    let max = chunking.max_chunk().max(1);
    let chunks = cut(chunking, data, true);
    assert_eq!(
        chunks.concat(),
        data,
        "{chunking:?}: chunks do not concatenate to the input"
    );
    for (i, ch) in chunks.iter().enumerate() {
        assert!(!ch.is_empty(), "{chunking:?}: empty chunk #{i}");
        assert!(
            ch.len() <= max,
            "{chunking:?}: chunk #{i} of {} > max {max}",
            ch.len()
        );
        if i + 1 < chunks.len() {
            assert!(
                ch.len() >= min_but_last,
                "{chunking:?}: chunk #{i} of {} < {min_but_last}",
                ch.len()
            );
        }
    }
    assert_eq!(
        chunks,
        cut(chunking, data, false),
        "{chunking:?}: cut points depend on push sizes"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some(&first) = data.first() else { return };
    let size = usize::from(first) * 8;
    check(Chunking::Fixed { size }, data, size.max(1));
    check(
        Chunking::ContentDefined {
            min: 64,
            avg: 256,
            max: 1024,
        },
        data,
        64,
    );
});
