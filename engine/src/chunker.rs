//! Cutting byte streams into chunks (sans-IO: push bytes in, take chunks out).
//!
//! Fixed-size cutting suits data with natural boundaries (relation files: 8 KiB pages, so
//! page-aligned chunks line up with PostgreSQL's own unit of change). Content-defined cutting
//! (FastCDC 2020) suits streams where an insertion shifts everything after it (dumps, tar
//! streams of small files): boundaries follow content, so unchanged regions still dedup.

use bytes::{Bytes, BytesMut};

/// How a stream is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// Chunks of exactly `size` bytes (the last may be shorter).
    Fixed { size: usize },
    /// FastCDC 2020, normalization level 1, with these bounds.
    ContentDefined { min: u32, avg: u32, max: u32 },
}

impl Chunking {
    /// The largest chunk this cutting produces.
    pub fn max_chunk(&self) -> usize {
        match *self {
            Self::Fixed { size } => size,
            Self::ContentDefined { max, .. } => max as usize,
        }
    }

    /// Content-defined cutting with a repository's configured bounds.
    pub fn from_config(c: &pgkeep_format::RepoConfig) -> Self {
        Self::ContentDefined {
            min: c.cdc_min,
            avg: c.cdc_avg,
            max: c.cdc_max,
        }
    }
}

/// Buffers pushed bytes and hands out chunks as soon as their end is known.
#[derive(Debug)]
pub struct Chunker {
    chunking: Chunking,
    buf: BytesMut,
}

impl Chunker {
    pub fn new(chunking: Chunking) -> Self {
        let max = chunking.max_chunk().max(1);
        Self {
            chunking: match chunking {
                Chunking::Fixed { size } => Chunking::Fixed { size: size.max(1) },
                cdc => cdc,
            },
            buf: BytesMut::with_capacity(2 * max),
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next chunk whose end is certain, if any. Until the input's end, a chunk is cut
    /// only once `max_chunk` bytes are buffered, so a content boundary is never missed.
    pub fn next_chunk(&mut self) -> Option<Bytes> {
        if self.buf.len() < self.chunking.max_chunk() {
            return None;
        }
        Some(self.cut())
    }

    /// After the input ended: the remaining chunks, one per call.
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.buf.is_empty() {
            return None;
        }
        Some(self.cut())
    }

    fn cut(&mut self) -> Bytes {
        let window = self.buf.len().min(self.chunking.max_chunk());
        let len = match self.chunking {
            Chunking::Fixed { .. } => window,
            Chunking::ContentDefined { min, avg, max } => {
                fastcdc::v2020::FastCDC::new(&self.buf[..window], min, avg, max)
                    .next()
                    .map_or(window, |c| c.length)
            }
        };
        self.buf.split_to(len).freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    fn cut_all(chunking: Chunking, data: &[u8], step: usize) -> Vec<Bytes> {
        let mut c = Chunker::new(chunking);
        let mut out = Vec::new();
        for piece in data.chunks(step.max(1)) {
            c.push(piece);
            while let Some(ch) = c.next_chunk() {
                out.push(ch);
            }
        }
        while let Some(ch) = c.finish() {
            out.push(ch);
        }
        out
    }

    const CDC: Chunking = Chunking::ContentDefined {
        min: 1024,
        avg: 4096,
        max: 16384,
    };

    #[test]
    fn chunks_concatenate_to_the_input_whatever_the_push_sizes() {
        let data = noise(200_000, 7);
        for chunking in [Chunking::Fixed { size: 8192 }, CDC] {
            let reference = cut_all(chunking, &data, data.len());
            for step in [1, 7, 4096, 65_536] {
                let chunks = cut_all(chunking, &data, step);
                assert_eq!(chunks, reference, "cut points depend on push size {step}");
                assert_eq!(chunks.concat(), data);
                assert!(chunks.iter().all(|c| c.len() <= chunking.max_chunk()));
            }
        }
    }

    #[test]
    fn content_defined_boundaries_survive_an_insertion() {
        let data = noise(300_000, 9);
        let mut shifted = b"inserted bytes".to_vec();
        shifted.extend_from_slice(&data);
        let a = cut_all(CDC, &data, 10_000);
        let b = cut_all(CDC, &shifted, 10_000);
        let common = a.iter().filter(|c| b.contains(c)).count();
        assert!(
            common * 10 >= a.len() * 8,
            "only {common} of {} chunks survived",
            a.len()
        );
    }

    #[test]
    fn empty_input_gives_no_chunks() {
        assert!(cut_all(CDC, &[], 1).is_empty());
    }
}
