//! Micro-benchmarks of the work the write pipeline does for every new chunk, one operation at
//! a time on one core: the keyed BLAKE3 chunk id, zstd, and sealing with AES-256-GCM.
//!
//! Each reports throughput in bytes of *plaintext* per second, so the numbers add up: a
//! worker storing a new chunk pays `chunk_id` + `zstd compress` + `seal_chunk` on the same
//! bytes, and `worker/new_chunk` measures that sum directly, at the default level of new
//! repositories (1) and at level 3.

use std::hint::black_box;
use std::time::Duration;

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::aes::cipher::{Block, BlockEncrypt};
use aes_gcm::aes::Aes256;
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pgkeep_benches::{bench_keys, compression_ratio, heap_pages, MIB};
use pgkeep_engine::InitOptions;

/// Samples for operations of several milliseconds (zstd compression): criterion's default
/// linear sampling needs `n(n+1)/2` iterations, and 50 samples of those overrun 3 s.
const SLOW_SAMPLES: usize = 30;

/// A fixed salt: salts only select the subkey, and a constant one keeps runs identical.
const SALT: [u8; 24] = [9; 24];

/// Keyed BLAKE3 at the pipeline's chunk size (1 MiB, relation files) and at a small size
/// where per-call overhead and the narrower SIMD tree would show. `blake3` is built without
/// its `rayon` feature, so this is one core.
fn chunk_id(c: &mut Criterion) {
    let keys = bench_keys();
    let data = heap_pages(MIB, 1);
    let mut group = c.benchmark_group("chunk_id");
    for (name, len) in [("1MiB", MIB), ("64KiB", 64 << 10)] {
        group.throughput(Throughput::BytesDecimal(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &data[..len], |b, d| {
            b.iter(|| keys.chunk_id(black_box(d)));
        });
    }
    group.finish();
}

/// zstd on 1 MiB of heap pages with a fresh context per call, and with one context reused,
/// as `pgkeep_format::body` keeps one per thread. In this loop the two run alike (the
/// allocator hands the freed tables straight back); what reuse saves in a backup is the
/// allocation and page faults of fresh tables on every chunk, which a hot loop cannot show.
/// Throughput is of uncompressed bytes in both directions.
fn zstd(c: &mut Criterion) {
    let data = heap_pages(MIB, 2);
    let mut group = c.benchmark_group("zstd");
    group.throughput(Throughput::BytesDecimal(data.len() as u64));
    // Compressing takes several milliseconds: fewer samples fit the 3 s budget.
    group.sample_size(SLOW_SAMPLES);
    for level in [1, 3] {
        eprintln!(
            "zstd level {level}: heap pages compress {:.2}x",
            compression_ratio(&data, level)
        );
        group.bench_function(BenchmarkId::new("compress", format!("level{level}")), |b| {
            b.iter(|| zstd::bulk::compress(black_box(&data), level).expect("zstd compresses"));
        });
        let compressed = zstd::bulk::compress(&data, level).expect("zstd compresses");
        group.bench_function(
            BenchmarkId::new("decompress", format!("level{level}")),
            |b| {
                b.iter(|| {
                    zstd::bulk::decompress(black_box(&compressed), MIB).expect("zstd decompresses")
                });
            },
        );
    }
    let mut compressor = zstd::bulk::Compressor::new(3).expect("zstd context");
    group.bench_function("compress_reused_context/level3", |b| {
        b.iter(|| {
            compressor
                .compress(black_box(&data))
                .expect("zstd compresses")
        });
    });
    group.finish();
}

/// Sealing and opening a 1 MiB chunk stored raw (level 0), so the cost is the format's own:
/// subkey derivation (one short BLAKE3), AES-256-GCM, and buffer copies. Opening also
/// re-hashes the plaintext to check it against the chunk id, so it includes one `chunk_id`.
/// The format's AES-256-GCM is `ring`'s (format-spec/src/aead.rs). The `raw_*` benchmarks are
/// the RustCrypto `aes-gcm` crate the format used before, kept to show why it changed:
/// `raw_encrypt_in_place` is that crate alone, and `raw_ghash_only` and `raw_aes256_blocks`
/// split it into GCM's two passes (aes-gcm 0.10 runs them one after the other, not
/// interleaved, and its one-block GHASH is what limits it).
fn aes_gcm(c: &mut Criterion) {
    let keys = bench_keys();
    let data = heap_pages(MIB, 3);
    let id = keys.chunk_id(&data);
    let mut group = c.benchmark_group("aes_gcm");
    group.throughput(Throughput::BytesDecimal(data.len() as u64));
    group.bench_function("seal_chunk_level0", |b| {
        b.iter(|| keys.seal_chunk(&id, SALT, black_box(&data), 0));
    });
    let unit = keys.seal_chunk(&id, SALT, &data, 0);
    group.bench_function("open_chunk_level0_incl_rehash", |b| {
        b.iter(|| {
            keys.open_chunk(&id, black_box(&unit), MIB as u64)
                .expect("the unit opens")
        });
    });
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&[1; 32]));
    let nonce = Nonce::from_slice(&[0; 12]);
    let mut buf = data.clone();
    group.bench_function("raw_encrypt_in_place", |b| {
        b.iter(|| {
            cipher
                .encrypt_in_place_detached(nonce, b"", black_box(&mut buf[..]))
                .expect("AES-GCM encrypts 1 MiB")
        });
    });
    // aes-gcm 0.10 computes the tag over the ciphertext before decrypting anything, and
    // stops there when it does not match: a wrong tag leaves exactly the GHASH pass.
    let wrong_tag = Tag::default();
    group.bench_function("raw_ghash_only", |b| {
        b.iter(|| {
            cipher
                .decrypt_in_place_detached(nonce, b"", black_box(&mut buf[..]), &wrong_tag)
                .expect_err("the tag is wrong")
        });
    });
    // The other pass: the AES-256 block function over 1 MiB, which is what CTR mode costs
    // minus the counter increments and the XOR.
    let aes = Aes256::new(&GenericArray::from([1; 32]));
    let mut blocks = vec![Block::<Aes256>::default(); data.len() / 16];
    group.bench_function("raw_aes256_blocks", |b| {
        b.iter(|| aes.encrypt_blocks(black_box(&mut blocks[..])));
    });
    group.finish();
}

/// Everything one pipeline worker does for a new 1 MiB chunk: chunk id, then compress and
/// seal. At the default level of new repositories its throughput is the ceiling of the
/// pipeline with `jobs: 1`; level 3 (the default before the performance work) beside it.
fn worker(c: &mut Criterion) {
    let keys = bench_keys();
    let data = heap_pages(MIB, 4);
    let default_level = InitOptions::default().compression_level;
    let mut group = c.benchmark_group("worker");
    group.throughput(Throughput::BytesDecimal(data.len() as u64));
    group.sample_size(SLOW_SAMPLES);
    // Level 3 beside the default, once if the default is 3 (criterion refuses a repeated id).
    let mut levels = vec![default_level, 3];
    levels.dedup();
    for level in levels {
        group.bench_function(
            BenchmarkId::new("new_chunk", format!("level{level}")),
            |b| {
                b.iter(|| {
                    let id = keys.chunk_id(black_box(&data));
                    keys.seal_chunk(&id, SALT, &data, level)
                });
            },
        );
    }
    group.finish();
}

/// Short runs: every operation here takes about a millisecond, so 3 s gives thousands of
/// iterations, plenty for stable means, and the whole file finishes in about a minute.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = primitives;
    config = config();
    targets = chunk_id, zstd, aes_gcm, worker
}
criterion_main!(primitives);
