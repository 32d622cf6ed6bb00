//! The whole write pipeline: `Repository::write_session` + `WriteSession::store_stream` +
//! `finish` of 64 MiB of heap pages into a repository on the local file system, with one and
//! with two worker threads.
//!
//! Each iteration stores into a new, empty repository and restamps the data first, so every
//! chunk is new and really goes through compression, encryption, packing and a durable
//! (fsynced) write: a benchmark that deduplicated against its own earlier iterations would
//! measure only hashing. The timed part starts at `write_session` and ends when `finish` has
//! written the index segment; creating and deleting the repository is not timed.

use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use pgkeep_benches::{heap_pages, restamp_pages, TempRepo, MIB};
use pgkeep_engine::{Chunking, WriteOptions};

/// Bytes stored per iteration: four default-size (16 MiB) packs' worth of plaintext, enough
/// that start-up and the final flush do not dominate, small enough for 2-core CI machines.
const STREAM_LEN: usize = 64 * MIB;

/// Stores `data` once into a fresh repository and returns the time the store took.
async fn store_once(data: &[u8], jobs: usize) -> Duration {
    let temp = TempRepo::new().await.expect("a temporary repository");
    let repo = &temp.repo;
    // Relation files are cut at fixed page-aligned offsets (1 MiB by default).
    let chunking = Chunking::Fixed {
        size: repo.config().page_chunk_size as usize,
    };
    let opts = WriteOptions {
        jobs,
        ..WriteOptions::default()
    };
    let start = Instant::now();
    let session = repo.write_session(opts).await.expect("a write session");
    let stored = session
        .store_stream(data, chunking)
        .await
        .expect("the stream is stored");
    let (stats, _) = session.finish().await.expect("the session finishes");
    let elapsed = start.elapsed();
    assert_eq!(stored.size, data.len() as u64);
    assert_eq!(
        stats.new_chunks, stats.chunks,
        "every chunk must be new, or the benchmark measures deduplication"
    );
    elapsed
}

fn pipeline(c: &mut Criterion) {
    // Two runtime threads, as on the 2-core machines the numbers are quoted for: chunking,
    // packing and file writes run there, hashing/compression/encryption on the workers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut data = heap_pages(STREAM_LEN, 7);
    let mut stamp = 0u64;

    let mut group = c.benchmark_group("pipeline");
    group
        .throughput(Throughput::BytesDecimal(STREAM_LEN as u64))
        // Each iteration takes a fraction of a second: few, equal-sized samples.
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(15));
    for jobs in [1, 2] {
        group.bench_function(
            BenchmarkId::new("store_64MiB", format!("jobs{jobs}")),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        stamp += 1;
                        restamp_pages(&mut data, stamp);
                        total += rt.block_on(store_once(&data, jobs));
                    }
                    total
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
