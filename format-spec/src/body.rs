//! The body: what a sealed unit's plaintext holds. `codec u8 || level i8 || raw_len u64 ||
//! payload`. Compression happens before encryption (ciphertext does not compress).

use std::cell::RefCell;

use crate::error::FormatError;

thread_local! {
    /// Each thread's zstd contexts, kept between chunks. A fresh context per chunk costs its
    /// allocation (a few hundred KiB of tables at level 1, more above) and the page faults
    /// of touching it again, on every 1 MiB chunk; a context is reset, not rebuilt, by each
    /// `compress`/`decompress`, so reuse cannot carry state from one chunk to the next.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// `zstd::bulk::compress` with this thread's context (set to `level` if it had another).
fn compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut() {
            Some((l, c)) if *l == level => {}
            Some((l, c)) => {
                c.set_compression_level(level)?;
                *l = level;
            }
            None => *slot = Some((level, zstd::bulk::Compressor::new(level)?)),
        }
        let (_, c) = slot
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no context"))?;
        c.compress(data)
    })
}

/// `zstd::bulk::decompress` with this thread's context.
fn decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        let d = slot
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no context"))?;
        d.decompress(data, capacity)
    })
}

/// Bytes of the body header.
pub const HEADER_LEN: usize = 10;

/// How the payload is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// The payload is the data itself.
    Raw = 0,
    /// The payload is one zstd frame.
    Zstd = 1,
}

/// The largest zstd level the format records (zstd's own maximum).
pub const MAX_LEVEL: i8 = 22;

/// zstd output is kept only if it saves at least 1/32 of the input; otherwise decompression
/// cost buys nothing and the chunk is stored raw.
fn worth_keeping(raw: usize, compressed: usize) -> bool {
    compressed < raw - raw / 32
}

/// Upper bound of the encoded body size, to size buffers once.
pub(crate) fn max_encoded_len(raw: usize, level: i8) -> usize {
    HEADER_LEN
        + if level > 0 {
            zstd::zstd_safe::compress_bound(raw).max(raw)
        } else {
            raw
        }
}

/// Appends the body of `data` to `out`, compressed at `level` when that pays.
pub(crate) fn encode_into(out: &mut Vec<u8>, data: &[u8], level: i8) {
    let start = out.len();
    out.extend_from_slice(&[Codec::Raw as u8, 0]);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    if level > 0 && !data.is_empty() {
        // Into a buffer of its own: `Compressor::compress` writes into spare capacity, where
        // compressing into `out` would first zero-fill the whole worst-case bound (a memset
        // and a page fault per 4 KiB of it, for output that is usually a fraction of that).
        if let Ok(compressed) = compress(data, i32::from(level)) {
            if worth_keeping(data.len(), compressed.len()) {
                out.extend_from_slice(&compressed);
                out[start] = Codec::Zstd as u8;
                out[start + 1] = level.to_le_bytes()[0];
                return;
            }
        }
    }
    out.extend_from_slice(data);
}

/// Input bytes per zstd frame when a writer compresses a large body in parts (see
/// [`compress_frame`]). 1 MiB: on pgbench WAL at level 1, 1 MiB frames come out 0.5 to 0.8%
/// larger than 4 MiB ones (zstd level 1 looks back 512 KiB at most) and compress faster
/// (tables and input stay in cache), and a 16 MiB segment passes through a few 1 MiB
/// buffers instead of one 16 MiB allocation whose every page is faulted in.
pub const PART_LEN: usize = 1 << 20;

/// Compresses one part of a body (at most [`PART_LEN`] bytes) as a zstd frame, on this
/// thread's context. Writers call this for consecutive parts, on as many threads as they
/// like, and pass the frames in order to [`encode_frames_into`].
pub fn compress_frame(part: &[u8], level: i8) -> std::io::Result<Vec<u8>> {
    compress(part, i32::from(level))
}

/// Appends the body of `len` bytes of data whose consecutive parts were compressed
/// beforehand as `frames`, in order, at `level` (1 or more). Concatenated frames are one
/// valid payload: a zstd decoder reads frame after frame. The frames are kept even when they
/// save little: a writer that streamed the data through no longer holds it, and a frame of
/// incompressible data is zstd's raw blocks, which decode at the speed of a copy.
pub(crate) fn encode_frames_into(out: &mut Vec<u8>, len: u64, level: i8, frames: &[Vec<u8>]) {
    let level = level.clamp(1, MAX_LEVEL);
    out.extend_from_slice(&[Codec::Zstd as u8, level.to_le_bytes()[0]]);
    out.extend_from_slice(&len.to_le_bytes());
    for frame in frames {
        out.extend_from_slice(frame);
    }
}

/// Encodes a body on its own (used by tests and by objects sealed elsewhere).
pub fn encode(data: &[u8], level: i8) -> Vec<u8> {
    let mut out = Vec::with_capacity(max_encoded_len(data.len(), level));
    encode_into(&mut out, data, level);
    out
}

/// Decodes a body, refusing to produce more than `limit` bytes.
pub fn decode(mut body: Vec<u8>, limit: u64, what: &'static str) -> Result<Vec<u8>, FormatError> {
    if body.len() < HEADER_LEN {
        return Err(FormatError::Truncated { what });
    }
    let codec = body[0];
    let level = i8::from_le_bytes([body[1]]);
    let mut raw_len = [0u8; 8];
    raw_len.copy_from_slice(&body[2..10]);
    let raw_len = u64::from_le_bytes(raw_len);
    if raw_len > limit {
        return Err(FormatError::TooLarge {
            what,
            size: raw_len,
            limit,
        });
    }
    let invalid = |reason: String| FormatError::Invalid { what, reason };
    match codec {
        c if c == Codec::Raw as u8 => {
            if level != 0 {
                return Err(invalid(format!("raw body with compression level {level}")));
            }
            if body.len() as u64 - HEADER_LEN as u64 != raw_len {
                return Err(invalid(format!(
                    "raw body of {} bytes declares {raw_len}",
                    body.len() - HEADER_LEN
                )));
            }
            body.drain(..HEADER_LEN);
            Ok(body)
        }
        c if c == Codec::Zstd as u8 => {
            if !(1..=MAX_LEVEL).contains(&level) {
                return Err(invalid(format!("zstd body with level {level}")));
            }
            // `raw_len <= limit` was checked above, so this allocation is bounded.
            let data = decompress(&body[HEADER_LEN..], raw_len as usize).map_err(|e| {
                FormatError::Decompression {
                    what,
                    reason: e.to_string(),
                }
            })?;
            if data.len() as u64 != raw_len {
                return Err(invalid(format!(
                    "decompressed to {} bytes, declares {raw_len}",
                    data.len()
                )));
            }
            Ok(data)
        }
        other => Err(invalid(format!("unknown codec {other}"))),
    }
}

/// Reads the codec and level of an encoded body without decoding it.
pub fn peek(body: &[u8]) -> Option<(u8, i8, u64)> {
    let h = body.get(..HEADER_LEN)?;
    let mut len = [0u8; 8];
    len.copy_from_slice(&h[2..10]);
    Some((h[0], i8::from_le_bytes([h[1]]), u64::from_le_bytes(len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that do not compress (xorshift).
    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn compressible_data_is_compressed_and_round_trips() {
        let data = vec![7u8; 100_000];
        let enc = encode(&data, 3);
        assert_eq!(peek(&enc).map(|p| p.0), Some(Codec::Zstd as u8));
        assert!(enc.len() < 1000);
        assert_eq!(decode(enc, 1 << 20, "t").expect("decodes"), data);
    }

    #[test]
    fn a_body_compressed_in_parts_decodes_as_one() {
        // Three parts: two whole, one short; compressible but not uniform.
        let data: Vec<u8> = (0..2 * PART_LEN + 12_345)
            .map(|i| (i / 7 % 251) as u8 ^ (i % 13) as u8)
            .collect();
        let frames: Vec<_> = data
            .chunks(PART_LEN)
            .map(|p| compress_frame(p, 1).expect("compresses"))
            .collect();
        assert_eq!(frames.len(), 3);
        let mut enc = Vec::new();
        encode_frames_into(&mut enc, data.len() as u64, 1, &frames);
        assert_eq!(peek(&enc), Some((Codec::Zstd as u8, 1, data.len() as u64)));
        let payload: usize = frames.iter().map(Vec::len).sum();
        assert_eq!(enc.len(), HEADER_LEN + payload);
        assert_eq!(decode(enc, 1 << 30, "t").expect("decodes"), data);

        // Frames of data that does not compress are kept, and decode; a declared length other
        // than the frames' is refused.
        let noise = noise(PART_LEN + 77);
        let frames: Vec<_> = noise
            .chunks(PART_LEN)
            .map(|p| compress_frame(p, 3).expect("compresses"))
            .collect();
        let mut enc = Vec::new();
        encode_frames_into(&mut enc, noise.len() as u64, 3, &frames);
        assert_eq!(peek(&enc).map(|p| p.0), Some(Codec::Zstd as u8));
        assert_eq!(decode(enc, 1 << 30, "t").expect("decodes"), noise);
        let mut enc = Vec::new();
        encode_frames_into(&mut enc, noise.len() as u64 + 1, 3, &frames);
        assert!(decode(enc, 1 << 30, "t").is_err());
    }

    #[test]
    fn incompressible_data_is_stored_raw() {
        let data = noise(50_000);
        let enc = encode(&data, 3);
        assert_eq!(peek(&enc), Some((Codec::Raw as u8, 0, data.len() as u64)));
        assert_eq!(decode(enc, 1 << 20, "t").expect("decodes"), data);
    }

    #[test]
    fn level_zero_stores_raw_and_empty_round_trips() {
        assert_eq!(peek(&encode(b"abcabcabcabc", 0)).map(|p| p.0), Some(0));
        assert_eq!(decode(encode(b"", 3), 0, "t").expect("decodes"), b"");
    }

    #[test]
    fn declared_size_over_limit_is_refused_before_allocating() {
        let enc = encode(&vec![0u8; 4096], 1);
        let err = decode(enc, 100, "chunk").expect_err("over limit");
        assert!(matches!(err, FormatError::TooLarge { size: 4096, .. }));
    }

    #[test]
    fn forged_headers_are_errors_not_panics() {
        let mut enc = encode(&vec![1u8; 4096], 1);
        enc[0] = 9;
        assert!(decode(enc, 1 << 20, "t").is_err());
        let mut raw = encode(b"hello", 0);
        raw[2] = 200;
        assert!(decode(raw, 1 << 20, "t").is_err());
        assert!(decode(vec![1, 3], 1 << 20, "t").is_err());
        let mut z = encode(&vec![1u8; 4096], 1);
        z.truncate(z.len() - 3);
        assert!(decode(z, 1 << 20, "t").is_err());
    }
}
