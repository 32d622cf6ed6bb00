//! `pgkeep bench`: CPU stage and storage throughput, and what they mean for the compression
//! level and upload concurrency.

use std::time::Duration;

use anyhow::Context;
use pgkeep_engine::bench::{
    recommend, run_cpu, run_storage, CpuOptions, CpuReport, OpStats, Recommendation,
    StorageOptions, StorageReport,
};
use pgkeep_engine::format::RepoConfig;
use pgkeep_engine::WriteOptions;
use serde::Serialize;

use crate::cli::BenchArgs;
use crate::cmd;
use crate::exit::UsageError;
use crate::output::{format_bytes, Output, Table};
use crate::settings::Settings;

/// Longest accepted `--seconds`: a stage runs this long per level and thread count.
const MAX_SECONDS: f64 = 600.0;

pub(crate) async fn run(s: &Settings, a: &BenchArgs, out: &Output) -> anyhow::Result<()> {
    if !(a.seconds.is_finite() && a.seconds > 0.0 && a.seconds <= MAX_SECONDS) {
        return Err(UsageError(format!(
            "--seconds {}: expected a duration above 0 and at most {MAX_SECONDS}, e.g. 1 or 0.5",
            a.seconds
        ))
        .into());
    }
    if let Some(l) = a.levels.iter().find(|l| !(0..=22).contains(*l)) {
        return Err(UsageError(format!("--levels: {l} is not a zstd level (0 to 22)")).into());
    }
    if a.concurrency.contains(&0) {
        return Err(UsageError("--concurrency: every value must be at least 1".into()).into());
    }
    if let Some(m) = a.object_mib {
        if !(1..=256).contains(&m) {
            return Err(UsageError(format!("--object-mib {m}: expected 1 to 256")).into());
        }
    }
    let duration = Duration::from_secs_f64(a.seconds);
    // Open the repository first: a wrong passphrase should fail before minutes of CPU work.
    let repo = if a.cpu_only {
        None
    } else {
        Some(cmd::open(s).await?)
    };
    let defaults = RepoConfig::new(pgkeep_engine::format::RepoId([0; 16]), 0);
    let config = repo.as_ref().map_or(&defaults, |r| r.config());
    let mut levels = a.levels.clone();
    levels.sort_unstable();
    levels.dedup();
    let cpu_opts = CpuOptions {
        levels,
        duration,
        chunk_size: config.page_chunk_size as usize,
        scaling_level: config.compression_level,
        max_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let cpu = tokio::task::spawn_blocking(move || run_cpu(&cpu_opts))
        .await
        .context("running the CPU benchmark")?
        .context("running the CPU benchmark")?;
    let storage = match &repo {
        None => None,
        Some(repo) => {
            let mut concurrency = a.concurrency.clone();
            concurrency.sort_unstable();
            concurrency.dedup();
            let object_size = a
                .object_mib
                .map_or(config.pack_target_size as usize, |m| (m as usize) << 20);
            Some(
                run_storage(
                    repo.store(),
                    &StorageOptions {
                        object_size,
                        concurrency,
                        duration,
                    },
                )
                .await
                .context("benchmarking the storage")?,
            )
        }
    };
    let rec = recommend(&cpu, storage.as_ref());
    let location = repo.as_ref().map(|r| r.store().location().to_owned());
    let doc = Doc::new(&cpu, storage.as_ref(), location, &rec);
    out.emit(&doc, || human(&cpu, storage.as_ref(), &doc, &rec))
}

/// Megabytes (10^6 bytes) per second, as storage vendors and network links quote them.
fn mbps(bytes_per_sec: f64) -> f64 {
    (bytes_per_sec / 1e6 * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The JSON document. `schema` changes only when a field changes meaning or disappears.
#[derive(Serialize)]
struct Doc {
    schema: u32,
    cpu: CpuOut,
    storage: Option<StorageOut>,
    recommendation: RecOut,
}

#[derive(Serialize)]
struct CpuOut {
    chunk_bytes: usize,
    /// One core each.
    stages: Vec<StageOut>,
    /// The worker path at `scaling_level` on 1..=cores threads.
    scaling_level: i8,
    scaling: Vec<ScalingOut>,
}

#[derive(Serialize)]
struct StageOut {
    stage: &'static str,
    level: Option<i8>,
    /// Plaintext MB (10^6 bytes) per second.
    mb_per_sec: f64,
    /// Plaintext bytes per compressed (or sealed) byte.
    ratio: Option<f64>,
}

#[derive(Serialize)]
struct ScalingOut {
    threads: usize,
    mb_per_sec: f64,
}

#[derive(Serialize)]
struct StorageOut {
    location: String,
    object_bytes: usize,
    runs: Vec<RunOut>,
}

#[derive(Serialize)]
struct RunOut {
    concurrency: usize,
    put: OpOut,
    get: OpOut,
}

#[derive(Serialize)]
struct OpOut {
    objects: u64,
    mb_per_sec: f64,
    median_ms: f64,
    p95_ms: f64,
}

impl From<&OpStats> for OpOut {
    fn from(o: &OpStats) -> Self {
        Self {
            objects: o.objects,
            mb_per_sec: mbps(o.bytes_per_sec()),
            median_ms: round2(o.median_ms),
            p95_ms: round2(o.p95_ms),
        }
    }
}

#[derive(Serialize)]
struct RecOut {
    /// None with --cpu-only.
    concurrency: Option<usize>,
    put_mb_per_sec: Option<f64>,
    /// None with --cpu-only.
    compression_level: Option<i8>,
    /// False when even the fastest level cannot keep up with storage.
    cpu_keeps_up: bool,
    levels: Vec<LevelOut>,
}

#[derive(Serialize)]
struct LevelOut {
    level: i8,
    ratio: f64,
    /// Estimated plaintext MB/s of the worker path on all cores.
    cpu_mb_per_sec: f64,
    /// Plaintext MB/s storage takes at this ratio (put rate × ratio).
    storage_mb_per_sec: Option<f64>,
}

impl Doc {
    fn new(
        cpu: &CpuReport,
        storage: Option<&StorageReport>,
        location: Option<String>,
        rec: &Recommendation,
    ) -> Self {
        Self {
            schema: 1,
            cpu: CpuOut {
                chunk_bytes: cpu.chunk_size,
                stages: cpu
                    .stages
                    .iter()
                    .map(|s| StageOut {
                        stage: s.stage,
                        level: s.level,
                        mb_per_sec: mbps(s.bytes_per_sec()),
                        ratio: s.ratio.map(round2),
                    })
                    .collect(),
                scaling_level: cpu.scaling_level,
                scaling: cpu
                    .scaling
                    .iter()
                    .map(|s| ScalingOut {
                        threads: s.threads,
                        mb_per_sec: mbps(s.bytes_per_sec()),
                    })
                    .collect(),
            },
            storage: storage.map(|s| StorageOut {
                location: location.unwrap_or_default(),
                object_bytes: s.object_size,
                runs: s
                    .runs
                    .iter()
                    .map(|r| RunOut {
                        concurrency: r.concurrency,
                        put: (&r.put).into(),
                        get: (&r.get).into(),
                    })
                    .collect(),
            }),
            recommendation: RecOut {
                concurrency: rec.concurrency,
                put_mb_per_sec: rec.put_bytes_per_sec.map(mbps),
                compression_level: rec.level,
                cpu_keeps_up: rec.cpu_keeps_up,
                levels: rec
                    .levels
                    .iter()
                    .map(|l| LevelOut {
                        level: l.level,
                        ratio: round2(l.ratio),
                        cpu_mb_per_sec: mbps(l.cpu_bytes_per_sec),
                        storage_mb_per_sec: l.storage_bytes_per_sec.map(mbps),
                    })
                    .collect(),
            },
        }
    }
}

fn opt(x: Option<impl ToString>) -> String {
    x.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn human(
    cpu: &CpuReport,
    storage: Option<&StorageReport>,
    doc: &Doc,
    rec: &Recommendation,
) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "CPU, one core ({} chunks of synthetic heap pages; MB/s of plaintext):\n",
        format_bytes(cpu.chunk_size as u64)
    ));
    let mut t = Table::new(&["STAGE", "LEVEL", "MB/S", "RATIO"]);
    for s in &doc.cpu.stages {
        t.row(vec![
            s.stage.to_owned(),
            opt(s.level),
            format!("{:.1}", s.mb_per_sec),
            opt(s.ratio.map(|r| format!("{r:.2}"))),
        ]);
    }
    out.push_str(&t.render());
    out.push_str(&format!(
        "\n\nWorker path (id + compress + seal) at level {} on several cores:\n",
        cpu.scaling_level
    ));
    let one = doc.cpu.scaling.first().map_or(0.0, |s| s.mb_per_sec);
    let mut t = Table::new(&["THREADS", "MB/S", "SPEED-UP"]);
    for s in &doc.cpu.scaling {
        let up = if one > 0.0 { s.mb_per_sec / one } else { 0.0 };
        t.row(vec![
            s.threads.to_string(),
            format!("{:.1}", s.mb_per_sec),
            format!("{up:.2}x"),
        ]);
    }
    out.push_str(&t.render());
    if let (Some(st), Some(report)) = (&doc.storage, storage) {
        out.push_str(&format!(
            "\n\nStorage {} ({} objects of random bytes; puts, then gets, per run):\n",
            st.location,
            format_bytes(report.object_size as u64),
        ));
        let mut t = Table::new(&[
            "CONCURRENCY",
            "PUT MB/S",
            "PUT MEDIAN MS",
            "PUT P95 MS",
            "GET MB/S",
            "GET MEDIAN MS",
            "GET P95 MS",
        ]);
        for r in &st.runs {
            t.row(vec![
                r.concurrency.to_string(),
                format!("{:.1}", r.put.mb_per_sec),
                format!("{:.1}", r.put.median_ms),
                format!("{:.1}", r.put.p95_ms),
                format!("{:.1}", r.get.mb_per_sec),
                format!("{:.1}", r.get.median_ms),
                format!("{:.1}", r.get.p95_ms),
            ]);
        }
        out.push_str(&t.render());
        out.push_str("\nThe benchmark's objects are deleted.");
    }
    out.push_str("\n\nRecommendation:\n");
    let mut t = Table::new(&[
        "LEVEL",
        "RATIO",
        "CPU MB/S (ALL CORES)",
        "STORAGE TAKES MB/S",
    ]);
    for l in &doc.recommendation.levels {
        t.row(vec![
            l.level.to_string(),
            format!("{:.2}", l.ratio),
            format!("{:.1}", l.cpu_mb_per_sec),
            opt(l.storage_mb_per_sec.map(|m| format!("{m:.1}"))),
        ]);
    }
    out.push_str(&t.render());
    out.push('\n');
    let uploads = WriteOptions::default().max_uploads;
    match (rec.concurrency, rec.put_bytes_per_sec, rec.level) {
        (Some(c), Some(put), Some(level)) => {
            out.push_str(&format!(
                "- Concurrency {c}: no higher value puts more than 10% faster ({:.1} MB/s). \
                 Backups upload {uploads} packs at once by default; set `uploads` (`--uploads`, \
                 PGKEEP_UPLOADS) to {c} to match.\n",
                mbps(put)
            ));
            if rec.cpu_keeps_up {
                out.push_str(&format!(
                    "- Compression level {level}: the highest measured level at which all cores \
                     compress faster than storage takes the result (put rate x ratio), so \
                     compression does not slow backups down. Higher levels save space but make \
                     the CPU the bottleneck.\n"
                ));
            } else {
                out.push_str(&format!(
                    "- Compression level {level}: the CPU is the bottleneck at every measured \
                     level; this one gives the fastest backups (the slower of CPU and storage \
                     is highest).\n"
                ));
            }
        }
        _ => out.push_str(
            "- Run without --cpu-only to measure storage: the level and concurrency advice \
             compares the CPU with it. \"CPU MB/s (all cores)\" is one core's worker rate times \
             the measured multi-core speed-up.\n",
        ),
    }
    out.push_str(
        "  Estimates: backups also spend CPU on reading, chunking and uploads, and real tables \
         compress differently from the synthetic pages.",
    );
    out
}
