//! `pgkeep bench`: throughput of each pipeline stage on this machine's CPU, and of the
//! configured storage, with the numbers needed to choose a compression level and an upload
//! concurrency.
//!
//! The CPU stages run on synthetic data built like PostgreSQL heap pages ([`heap_pages`]):
//! BLAKE3 and AES-GCM run at the same speed on any bytes, but zstd's speed and ratio swing by
//! an order of magnitude between zeros, text and noise, so measuring on zeros or random bytes
//! would mislead. Storage is measured against the repository's own store, under a private
//! `bench/<random>/` prefix that no other command reads and that is deleted afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgkeep_format::{body, MasterKey, RepoId, RepoKeys};

use crate::repository::random_bytes;
use crate::{Error, Result, Store};

/// PostgreSQL's block size: the unit relation files are made of.
pub const PAGE_SIZE: usize = 8192;

/// The prefix of every object the storage benchmark writes. Prune, verify and the index only
/// list `data/`, `index/`, `clusters/`, `locks/` and `keys/`, so they never see these.
pub const BENCH_PREFIX: &str = "bench/";

/// What the CPU benchmark measures.
#[derive(Debug, Clone)]
pub struct CpuOptions {
    /// zstd levels to measure (0 = stored raw).
    pub levels: Vec<i8>,
    /// How long each stage runs.
    pub duration: Duration,
    /// Bytes per chunk: the repository's page chunk size (1 MiB by default).
    pub chunk_size: usize,
    /// The level the multi-core scaling runs at (the repository's default level).
    pub scaling_level: i8,
    /// Threads of the scaling run go from 1 to this.
    pub max_threads: usize,
}

/// One measured CPU stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StageResult {
    /// `chunk-id`, `compress`, `seal` or `worker`.
    pub stage: &'static str,
    /// The zstd level, for compression and the worker path.
    pub level: Option<i8>,
    /// Plaintext bytes processed.
    pub bytes: u64,
    pub seconds: f64,
    /// Plaintext bytes per stored byte (compression and worker stages).
    pub ratio: Option<f64>,
}

impl StageResult {
    /// Plaintext bytes per second.
    pub fn bytes_per_sec(&self) -> f64 {
        rate(self.bytes, self.seconds)
    }
}

/// The worker path on `threads` threads at once.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingResult {
    pub threads: usize,
    pub bytes: u64,
    pub seconds: f64,
}

impl ScalingResult {
    /// Aggregate plaintext bytes per second.
    pub fn bytes_per_sec(&self) -> f64 {
        rate(self.bytes, self.seconds)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CpuReport {
    pub chunk_size: usize,
    pub stages: Vec<StageResult>,
    pub scaling_level: i8,
    pub scaling: Vec<ScalingResult>,
}

impl CpuReport {
    /// The single-core worker result at `level`.
    pub fn worker(&self, level: i8) -> Option<&StageResult> {
        self.stages
            .iter()
            .find(|s| s.stage == "worker" && s.level == Some(level))
    }

    /// How many times faster all threads run than one (1.0 without a scaling run).
    pub fn scaling_factor(&self) -> f64 {
        let one = self.scaling.iter().find(|s| s.threads == 1);
        let best = self
            .scaling
            .iter()
            .map(ScalingResult::bytes_per_sec)
            .fold(0.0, f64::max);
        match one {
            Some(one) if one.bytes_per_sec() > 0.0 => (best / one.bytes_per_sec()).max(1.0),
            _ => 1.0,
        }
    }
}

/// xorshift64: deterministic, so every run measures the same bytes.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `len` bytes of synthetic heap pages: 8 KiB pages with a page header, line pointers growing
/// from the front and tuples of an imaginary `orders` table (row id, timestamp, amount, a
/// random uuid, a short text note) from the back. Like real tables, they compress a few times
/// with zstd, not 100x like zeros nor 1x like noise. Every page differs (row ids and uuids),
/// so no two chunks deduplicate. Deterministic in `seed`.
pub fn heap_pages(len: usize, seed: u64) -> Vec<u8> {
    const STATUS: [&str; 5] = ["pending", "paid", "shipped", "delivered", "refunded"];
    const CHANNEL: [&str; 4] = ["web", "mobile app", "phone", "partner api"];
    let mut rng = XorShift::new(seed);
    let mut row: u64 = 1 + seed.wrapping_mul(10_000_000) % 1_000_000_000;
    let mut created: i64 = 845_000_000_000_000;
    let mut out = Vec::with_capacity(len.next_multiple_of(PAGE_SIZE));
    let mut block: u32 = 0;
    while out.len() < len {
        let mut page = [0u8; PAGE_SIZE];
        let mut lower = 24usize;
        let mut upper = PAGE_SIZE;
        loop {
            row += 1;
            created += 500_000 + rng.below(2_000_000) as i64;
            let mut t = Vec::with_capacity(128);
            // Tuple header: xmin (many rows per transaction), xmax, cid, ctid, infomask, hoff.
            t.extend_from_slice(&(1_000 + (row / 40) as u32).to_le_bytes());
            t.extend_from_slice(&[0u8; 8]);
            t.extend_from_slice(&block.to_le_bytes());
            t.extend_from_slice(&(((lower - 24) / 4 + 1) as u16).to_le_bytes());
            t.extend_from_slice(&5u16.to_le_bytes());
            t.extend_from_slice(&0x0902u16.to_le_bytes());
            t.extend_from_slice(&[24, 0]);
            t.extend_from_slice(&row.to_le_bytes());
            t.extend_from_slice(&created.to_le_bytes());
            t.extend_from_slice(&(rng.below(250_000) as u32).to_le_bytes());
            t.extend_from_slice(&rng.next().to_le_bytes());
            t.extend_from_slice(&rng.next().to_le_bytes());
            let note = format!(
                "{} order for customer_{:06} via {}, {} items",
                STATUS[rng.below(STATUS.len() as u64) as usize],
                rng.below(200_000),
                CHANNEL[rng.below(CHANNEL.len() as u64) as usize],
                1 + rng.below(12)
            );
            t.push((((note.len() + 1) << 1) | 1) as u8);
            t.extend_from_slice(note.as_bytes());
            let start = (upper - t.len()) & !7;
            if start < lower + 4 {
                break;
            }
            page[start..start + t.len()].copy_from_slice(&t);
            let item = start as u32 | (1 << 15) | ((t.len() as u32) << 17);
            page[lower..lower + 4].copy_from_slice(&item.to_le_bytes());
            lower += 4;
            upper = start;
        }
        // Page header: LSN, checksum, lower, upper, special, size and version.
        page[0..8].copy_from_slice(&(0x1_0000_0000u64 + u64::from(block) * 8192).to_le_bytes());
        page[8..10].copy_from_slice(&(rng.next() as u16).to_le_bytes());
        page[12..14].copy_from_slice(&(lower as u16).to_le_bytes());
        page[14..16].copy_from_slice(&(upper as u16).to_le_bytes());
        page[16..18].copy_from_slice(&(PAGE_SIZE as u16).to_le_bytes());
        page[18..20].copy_from_slice(&(PAGE_SIZE as u16 | 4).to_le_bytes());
        out.extend_from_slice(&page);
        block += 1;
    }
    out.truncate(len);
    out
}

/// Keys for the CPU stages: a random master key, so no repository or passphrase is needed.
/// The key's value does not change the speed of BLAKE3 or AES-GCM.
pub fn throwaway_keys() -> RepoKeys {
    RepoKeys::derive(
        RepoId(random_bytes()),
        &MasterKey::from_bytes(random_bytes()),
    )
}

fn rate(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds
    } else {
        0.0
    }
}

/// Runs `step` on chunk after chunk of `data` for `duration` (at least one chunk); returns
/// plaintext bytes, seconds and output bytes (the sum of `step`'s results).
fn timed(
    data: &[u8],
    chunk_size: usize,
    duration: Duration,
    mut step: impl FnMut(&[u8]) -> usize,
) -> (u64, f64, u64) {
    let chunks: Vec<&[u8]> = data.chunks(chunk_size.max(1)).collect();
    let start = Instant::now();
    let (mut bytes, mut out) = (0u64, 0u64);
    for chunk in chunks.iter().cycle() {
        out += step(chunk) as u64;
        bytes += chunk.len() as u64;
        if start.elapsed() >= duration {
            break;
        }
    }
    (bytes, start.elapsed().as_secs_f64(), out)
}

/// What the pipeline's worker does per new chunk: id, compress and seal.
fn worker_step(keys: &RepoKeys, chunk: &[u8], level: i8) -> usize {
    let id = keys.chunk_id(chunk);
    keys.seal_chunk(&id, random_bytes(), chunk, level).len()
}

/// Distinct data per thread (so caches do not flatter one thread sharing another's input):
/// eight chunks each.
fn bench_data(chunk_size: usize, seed: u64) -> Vec<u8> {
    heap_pages(chunk_size.max(PAGE_SIZE) * 8, seed)
}

/// Measures the CPU stages on the calling thread, then the worker path on 1..=max_threads
/// threads. Blocking: call it from `spawn_blocking` or a plain thread.
pub fn run_cpu(opts: &CpuOptions) -> Result<CpuReport> {
    if opts.levels.is_empty() {
        return Err(Error::InvalidInput(
            "no compression level to measure".into(),
        ));
    }
    if let Some(l) = opts
        .levels
        .iter()
        .find(|l| !(0..=body::MAX_LEVEL).contains(*l))
    {
        return Err(Error::InvalidInput(format!(
            "compression level {l} is outside 0..={}",
            body::MAX_LEVEL
        )));
    }
    if opts.chunk_size == 0 || opts.max_threads == 0 {
        return Err(Error::InvalidInput(
            "chunk size and threads must be at least 1".into(),
        ));
    }
    let keys = Arc::new(throwaway_keys());
    let data = Arc::new(bench_data(opts.chunk_size, 1));
    let (cs, d) = (opts.chunk_size, opts.duration);
    let mut stages = Vec::new();
    let (bytes, seconds, _) = timed(&data, cs, d, |c| keys.chunk_id(c).as_bytes().len());
    stages.push(StageResult {
        stage: "chunk-id",
        level: None,
        bytes,
        seconds,
        ratio: None,
    });
    for &level in &opts.levels {
        let (bytes, seconds, out) = timed(&data, cs, d, |c| body::encode(c, level).len());
        stages.push(StageResult {
            stage: "compress",
            level: Some(level),
            bytes,
            seconds,
            ratio: Some(rate(bytes, out as f64)),
        });
    }
    // Sealing alone: AES-256-GCM of data that does not compress (level 0 stores it raw).
    let (bytes, seconds, _) = timed(&data, cs, d, |c| {
        let id = keys.chunk_id(&[]);
        keys.seal_chunk(&id, random_bytes(), c, 0).len()
    });
    stages.push(StageResult {
        stage: "seal",
        level: None,
        bytes,
        seconds,
        ratio: None,
    });
    for &level in &opts.levels {
        let (bytes, seconds, out) = timed(&data, cs, d, |c| worker_step(&keys, c, level));
        stages.push(StageResult {
            stage: "worker",
            level: Some(level),
            bytes,
            seconds,
            ratio: Some(rate(bytes, out as f64)),
        });
    }
    let mut scaling = Vec::new();
    for threads in 1..=opts.max_threads {
        scaling.push(scale(&keys, opts, threads)?);
    }
    Ok(CpuReport {
        chunk_size: cs,
        stages,
        scaling_level: opts.scaling_level,
        scaling,
    })
}

fn scale(keys: &Arc<RepoKeys>, opts: &CpuOptions, threads: usize) -> Result<ScalingResult> {
    // Every thread builds its data first, then all start timing together.
    let ready = Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let keys = Arc::clone(keys);
            let ready = Arc::clone(&ready);
            let (cs, d, level) = (opts.chunk_size, opts.duration, opts.scaling_level);
            std::thread::spawn(move || {
                let data = bench_data(cs, 100 + t as u64);
                ready.wait();
                let (bytes, secs, _) = timed(&data, cs, d, |c| worker_step(&keys, c, level));
                (bytes, secs)
            })
        })
        .collect();
    let (mut bytes, mut seconds) = (0, 0.0f64);
    for h in handles {
        let (b, s) = h
            .join()
            .map_err(|_| Error::Pipeline("a benchmark thread panicked".into()))?;
        bytes += b;
        seconds = seconds.max(s);
    }
    Ok(ScalingResult {
        threads,
        bytes,
        seconds,
    })
}

/// What the storage benchmark measures.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Bytes per object: the repository's pack target size by default.
    pub object_size: usize,
    /// Uploads (and downloads) in flight at once, one run each.
    pub concurrency: Vec<usize>,
    /// How long the puts, and then the gets, of each run go on (at least one object per task).
    pub duration: Duration,
}

/// Put or get statistics of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct OpStats {
    pub objects: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Per-object latency.
    pub median_ms: f64,
    pub p95_ms: f64,
}

impl OpStats {
    pub fn bytes_per_sec(&self) -> f64 {
        rate(self.bytes, self.seconds)
    }

    fn from_latencies(mut lat: Vec<Duration>, object_size: usize, seconds: f64) -> Self {
        lat.sort();
        Self {
            objects: lat.len() as u64,
            bytes: lat.len() as u64 * object_size as u64,
            seconds,
            median_ms: percentile_ms(&lat, 0.5),
            p95_ms: percentile_ms(&lat, 0.95),
        }
    }
}

/// The `p`-quantile (nearest rank) of sorted latencies, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageResult {
    pub concurrency: usize,
    pub put: OpStats,
    pub get: OpStats,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageReport {
    pub object_size: usize,
    /// The prefix the run wrote under (deleted again).
    pub prefix: String,
    pub runs: Vec<StorageResult>,
}

/// Puts and gets objects of `object_size` random bytes (packs are encrypted, so they do not
/// compress) under a fresh `bench/<random>/` prefix, at each concurrency, deleting them after
/// each run and on every error.
pub async fn run_storage(store: &Store, opts: &StorageOptions) -> Result<StorageReport> {
    if opts.object_size == 0 {
        return Err(Error::InvalidInput(
            "the object size must be at least 1 byte".into(),
        ));
    }
    if opts.concurrency.is_empty() || opts.concurrency.contains(&0) {
        return Err(Error::InvalidInput(
            "concurrency levels must be at least 1".into(),
        ));
    }
    let prefix = format!("{BENCH_PREFIX}{}/", hex::encode(random_bytes::<8>()));
    let mut payload = vec![0u8; opts.object_size];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut payload);
    let payload = Bytes::from(payload);
    let mut runs = Vec::new();
    let mut outcome = Ok(());
    for &c in &opts.concurrency {
        let run_prefix = format!("{prefix}c{c}/");
        let result = storage_run(store, opts, &run_prefix, c, &payload).await;
        let cleaned = cleanup(store, &run_prefix).await;
        match result.and_then(|r| cleaned.map(|()| r)) {
            Ok(r) => runs.push(r),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    let cleaned = cleanup(store, &prefix).await;
    outcome?;
    cleaned?;
    Ok(StorageReport {
        object_size: opts.object_size,
        prefix,
        runs,
    })
}

async fn storage_run(
    store: &Store,
    opts: &StorageOptions,
    prefix: &str,
    concurrency: usize,
    payload: &Bytes,
) -> Result<StorageResult> {
    // Puts: each task writes its own objects until the time is up.
    let start = Instant::now();
    let tasks = (0..concurrency).map(|t| {
        let payload = payload.clone();
        async move {
            let mut done = Vec::new();
            let mut lat = Vec::new();
            loop {
                let name = format!("{prefix}{t}-{}", done.len());
                let t0 = Instant::now();
                store.put(&name, payload.clone()).await?;
                lat.push(t0.elapsed());
                done.push(name);
                if start.elapsed() >= opts.duration {
                    return Ok::<_, Error>((done, lat));
                }
            }
        }
    });
    let results = futures::future::try_join_all(tasks).await?;
    let put_secs = start.elapsed().as_secs_f64();
    let names: Vec<String> = results.iter().flat_map(|(n, _)| n.clone()).collect();
    let put = OpStats::from_latencies(
        results.into_iter().flat_map(|(_, l)| l).collect(),
        opts.object_size,
        put_secs,
    );
    // Gets: the objects just written, round robin, until the time is up.
    let start = Instant::now();
    let names = &names;
    let tasks = (0..concurrency).map(|t| async move {
        let mut lat = Vec::new();
        let mut i = t;
        loop {
            let name = &names[i % names.len()];
            let t0 = Instant::now();
            let got = store.get(name).await?;
            lat.push(t0.elapsed());
            if got.len() != payload.len() {
                return Err(Error::Storage {
                    op: "get",
                    object: name.clone(),
                    message: format!("wrote {} bytes, read back {}", payload.len(), got.len()),
                });
            }
            i += concurrency;
            if start.elapsed() >= opts.duration {
                return Ok::<_, Error>(lat);
            }
        }
    });
    let lat: Vec<Duration> = futures::future::try_join_all(tasks)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let get = OpStats::from_latencies(lat, opts.object_size, start.elapsed().as_secs_f64());
    Ok(StorageResult {
        concurrency,
        put,
        get,
    })
}

/// Deletes every object under `prefix` (and, on a local store, the emptied directories).
async fn cleanup(store: &Store, prefix: &str) -> Result<()> {
    let objects = store.list(prefix).await?;
    futures::future::try_join_all(objects.iter().map(|o| store.delete(&o.name))).await?;
    store.remove_empty_local_dirs(prefix);
    Ok(())
}

/// The advice `pgkeep bench` gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// The lowest concurrency that no higher one beats by more than 10% for puts.
    pub concurrency: Option<usize>,
    /// Put bytes per second at that concurrency.
    pub put_bytes_per_sec: Option<f64>,
    /// Per level: estimated all-core worker throughput (plaintext bytes/s) and the plaintext
    /// rate storage can absorb at that level's ratio.
    pub levels: Vec<LevelEstimate>,
    /// The highest level at which the CPU keeps up with storage.
    pub level: Option<i8>,
    /// False when even the lowest level is slower than storage: the CPU is the bottleneck,
    /// and `level` is the one with the best end-to-end rate.
    pub cpu_keeps_up: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LevelEstimate {
    pub level: i8,
    pub ratio: f64,
    /// Single-core worker rate times the measured multi-core scaling factor.
    pub cpu_bytes_per_sec: f64,
    /// Put rate times the ratio: the plaintext rate storage can take (None: no storage run).
    pub storage_bytes_per_sec: Option<f64>,
}

impl LevelEstimate {
    /// The estimated backup rate: the slower of CPU and storage.
    pub fn end_to_end(&self) -> f64 {
        self.storage_bytes_per_sec
            .map_or(self.cpu_bytes_per_sec, |s| s.min(self.cpu_bytes_per_sec))
    }
}

/// The lowest concurrency that no higher one beats by more than 10% (put throughput).
pub fn knee(runs: &[(usize, f64)]) -> Option<(usize, f64)> {
    let mut sorted = runs.to_vec();
    sorted.sort_by_key(|r| r.0);
    sorted
        .iter()
        .enumerate()
        .find(|(i, (_, r))| sorted[i + 1..].iter().all(|(_, o)| *o <= r * 1.10))
        .map(|(_, r)| *r)
}

/// Compression is not the bottleneck at a level when all cores produce plaintext at least as
/// fast as storage absorbs it (put rate × ratio, since packs hold compressed chunks). The
/// highest such level saves the most space for free; when none keeps up, the level with the
/// best end-to-end rate.
pub fn recommend(cpu: &CpuReport, storage: Option<&StorageReport>) -> Recommendation {
    let put = storage.and_then(|s| {
        knee(
            &s.runs
                .iter()
                .map(|r| (r.concurrency, r.put.bytes_per_sec()))
                .collect::<Vec<_>>(),
        )
    });
    let factor = cpu.scaling_factor();
    let mut levels: Vec<LevelEstimate> = cpu
        .stages
        .iter()
        .filter(|s| s.stage == "worker")
        .filter_map(|s| {
            let level = s.level?;
            let ratio = s.ratio.unwrap_or(1.0);
            Some(LevelEstimate {
                level,
                ratio,
                cpu_bytes_per_sec: s.bytes_per_sec() * factor,
                storage_bytes_per_sec: put.map(|(_, p)| p * ratio),
            })
        })
        .collect();
    levels.sort_by_key(|l| l.level);
    let keeping_up = levels
        .iter()
        .filter(|l| {
            l.storage_bytes_per_sec
                .is_some_and(|s| l.cpu_bytes_per_sec >= s)
        })
        .map(|l| l.level)
        .max();
    let (level, cpu_keeps_up) = match (put, keeping_up) {
        (None, _) => (None, true),
        (Some(_), Some(l)) => (Some(l), true),
        (Some(_), None) => (
            levels
                .iter()
                .max_by(|a, b| a.end_to_end().total_cmp(&b.end_to_end()))
                .map(|l| l.level),
            false,
        ),
    };
    Recommendation {
        concurrency: put.map(|p| p.0),
        put_bytes_per_sec: put.map(|p| p.1),
        levels,
        level,
        cpu_keeps_up,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_pages_are_deterministic_sized_and_moderately_compressible() {
        let a = heap_pages(1 << 20, 3);
        assert_eq!(a.len(), 1 << 20);
        assert_eq!(a, heap_pages(1 << 20, 3));
        assert_ne!(a, heap_pages(1 << 20, 4));
        let ratio = a.len() as f64 / body::encode(&a, 3).len() as f64;
        assert!((1.5..=6.0).contains(&ratio), "ratio {ratio:.2}");
        let pages: std::collections::HashSet<&[u8]> = a.chunks(PAGE_SIZE).collect();
        assert_eq!(pages.len(), (1 << 20) / PAGE_SIZE);
    }

    #[test]
    fn knee_is_where_more_concurrency_stops_paying() {
        assert_eq!(knee(&[]), None);
        assert_eq!(knee(&[(1, 10.0)]), Some((1, 10.0)));
        // 2 adds 80%, 4 adds 5%, 8 adds 2% over 4: 2 is within 10% of everything above it.
        assert_eq!(
            knee(&[(8, 19.3), (1, 10.0), (4, 18.9), (2, 18.0)]),
            Some((2, 18.0))
        );
        // A late jump counts.
        assert_eq!(knee(&[(1, 10.0), (2, 10.5), (4, 30.0)]), Some((4, 30.0)));
        // Getting slower: the first.
        assert_eq!(knee(&[(1, 10.0), (2, 9.0)]), Some((1, 10.0)));
    }

    fn stage(stage: &'static str, level: i8, mbps: f64, ratio: f64) -> StageResult {
        StageResult {
            stage,
            level: Some(level),
            bytes: (mbps * 1e6) as u64,
            seconds: 1.0,
            ratio: Some(ratio),
        }
    }

    fn cpu(workers: &[(i8, f64, f64)], scaling: &[f64]) -> CpuReport {
        CpuReport {
            chunk_size: 1 << 20,
            stages: workers
                .iter()
                .map(|&(l, m, r)| stage("worker", l, m, r))
                .chain([stage("compress", 19, 1.0, 9.0)])
                .collect(),
            scaling_level: 3,
            scaling: scaling
                .iter()
                .enumerate()
                .map(|(i, &m)| ScalingResult {
                    threads: i + 1,
                    bytes: (m * 1e6) as u64,
                    seconds: 1.0,
                })
                .collect(),
        }
    }

    fn ops(mbps: f64) -> OpStats {
        OpStats {
            objects: 1,
            bytes: (mbps * 1e6) as u64,
            seconds: 1.0,
            median_ms: 1.0,
            p95_ms: 1.0,
        }
    }

    fn storage(puts: &[(usize, f64)]) -> StorageReport {
        StorageReport {
            object_size: 1,
            prefix: "bench/x/".into(),
            runs: puts
                .iter()
                .map(|&(c, m)| StorageResult {
                    concurrency: c,
                    put: ops(m),
                    get: ops(m),
                })
                .collect(),
        }
    }

    #[test]
    fn recommends_the_highest_level_the_cpu_sustains() {
        // Two cores scale 1.8x. Level 1: 400 MB/s × 1.8 = 720 vs storage 100 × 3 = 300 ✓;
        // level 6: 100 × 1.8 = 180 vs 100 × 3.5 = 350 ✗; level 3: 200 × 1.8 = 360 vs 320 ✓.
        let c = cpu(
            &[(1, 400.0, 3.0), (3, 200.0, 3.2), (6, 100.0, 3.5)],
            &[200.0, 360.0],
        );
        let r = recommend(&c, Some(&storage(&[(1, 50.0), (4, 100.0), (8, 105.0)])));
        assert_eq!(r.concurrency, Some(4));
        assert_eq!(r.level, Some(3));
        assert!(r.cpu_keeps_up);
        assert_eq!(r.levels.len(), 3, "compress stages are not worker levels");
        assert!((c.scaling_factor() - 1.8).abs() < 1e-9);
    }

    #[test]
    fn when_the_cpu_is_the_bottleneck_the_fastest_end_to_end_level() {
        let c = cpu(&[(1, 40.0, 3.0), (3, 20.0, 3.2)], &[20.0]);
        let r = recommend(&c, Some(&storage(&[(1, 1000.0)])));
        assert_eq!(r.level, Some(1));
        assert!(!r.cpu_keeps_up);
    }

    #[test]
    fn without_storage_no_level_is_recommended() {
        let c = cpu(&[(1, 40.0, 3.0)], &[]);
        let r = recommend(&c, None);
        assert_eq!((r.level, r.concurrency), (None, None));
        assert_eq!(r.levels[0].storage_bytes_per_sec, None);
        assert_eq!(c.scaling_factor(), 1.0);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let lat: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&lat, 0.5), 10.0);
        assert_eq!(percentile_ms(&lat, 0.95), 19.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn cpu_stages_measure_every_level() {
        let r = run_cpu(&CpuOptions {
            levels: vec![1, 3],
            duration: Duration::from_millis(20),
            chunk_size: 64 << 10,
            scaling_level: 1,
            max_threads: 2,
        })
        .expect("cpu bench");
        let names: Vec<_> = r.stages.iter().map(|s| (s.stage, s.level)).collect();
        assert_eq!(
            names,
            [
                ("chunk-id", None),
                ("compress", Some(1)),
                ("compress", Some(3)),
                ("seal", None),
                ("worker", Some(1)),
                ("worker", Some(3)),
            ]
        );
        assert!(r.stages.iter().all(|s| s.bytes_per_sec() > 0.0));
        assert!(r.worker(3).and_then(|s| s.ratio).is_some_and(|x| x > 1.5));
        assert_eq!(r.scaling.len(), 2);
    }

    #[test]
    fn bad_options_are_refused() {
        let base = CpuOptions {
            levels: vec![23],
            duration: Duration::from_millis(1),
            chunk_size: 8192,
            scaling_level: 1,
            max_threads: 1,
        };
        let e = run_cpu(&base).expect_err("level 23");
        assert!(e.to_string().contains("level 23"), "{e}");
        let e = run_cpu(&CpuOptions {
            levels: vec![],
            ..base.clone()
        })
        .expect_err("no levels");
        assert!(e.to_string().contains("no compression level"), "{e}");
        let e = run_cpu(&CpuOptions {
            levels: vec![1],
            max_threads: 0,
            ..base
        })
        .expect_err("zero threads");
        assert!(e.to_string().contains("at least 1"), "{e}");
    }

    #[tokio::test]
    async fn a_failed_storage_run_still_deletes_its_objects() {
        use pgkeep_testkit::faults::{FaultyStore, Op};
        let dir = tempfile::tempdir().expect("tmp");
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("fs");
        let faulty = FaultyStore::new(Arc::new(fs));
        let store =
            Store::from_object_store(faulty.clone(), "", "faulty").with_retry(crate::RetryPolicy {
                attempts: 1,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
            });
        // Two puts succeed, then every put fails; the two must be deleted.
        faulty.fail_after(Op::Put, "bench/", 2, usize::MAX);
        let e = run_storage(
            &store,
            &StorageOptions {
                object_size: 1024,
                concurrency: vec![1],
                duration: Duration::from_secs(5),
            },
        )
        .await
        .expect_err("puts fail");
        assert!(e.to_string().contains("put"), "{e}");
        assert!(faulty.injected() >= 1);
        assert!(store.list(BENCH_PREFIX).await.expect("list").is_empty());

        // A failing cleanup is reported rather than hidden.
        faulty.heal();
        faulty.fail(Op::Delete, "bench/", usize::MAX);
        let e = run_storage(
            &store,
            &StorageOptions {
                object_size: 1024,
                concurrency: vec![1],
                duration: Duration::from_millis(1),
            },
        )
        .await
        .expect_err("deletes fail");
        assert!(e.to_string().contains("delete"), "{e}");
    }

    #[tokio::test]
    async fn storage_runs_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().display().to_string(), &[], false).expect("store");
        let r = run_storage(
            &store,
            &StorageOptions {
                object_size: 4096,
                concurrency: vec![1, 2],
                duration: Duration::from_millis(20),
            },
        )
        .await
        .expect("storage bench");
        assert_eq!(r.runs.len(), 2);
        for run in &r.runs {
            assert!(run.put.objects >= run.concurrency as u64);
            assert!(run.get.objects >= run.concurrency as u64);
            assert!(run.put.bytes_per_sec() > 0.0 && run.get.bytes_per_sec() > 0.0);
        }
        assert!(store.list(BENCH_PREFIX).await.expect("list").is_empty());
        assert!(!dir.path().join("bench").exists());
        let e = run_storage(
            &store,
            &StorageOptions {
                object_size: 1,
                concurrency: vec![0],
                duration: Duration::ZERO,
            },
        )
        .await
        .expect_err("zero concurrency");
        assert!(e.to_string().contains("at least 1"), "{e}");
    }
}
