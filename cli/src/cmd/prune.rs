//! `pgkeep prune`: reclaim unreferenced space.

use pgkeep_engine::prune::{self, PruneOptions};
use serde::Serialize;

use crate::cli::PruneArgs;
use crate::cmd;
use crate::exit::UsageError;
use crate::output::{format_bytes, Output};
use crate::settings::{pick, Settings};

/// The JSON document. `schema` changes only when a field changes meaning or disappears.
#[derive(Serialize)]
struct PruneOutput {
    schema: u32,
    dry_run: bool,
    packs_before: u64,
    bytes_before: u64,
    referenced_bytes: u64,
    deleted_packs: u64,
    deleted_bytes: u64,
    repacked_packs: u64,
    written_bytes: u64,
    freed_bytes: u64,
    index_segments_removed: u64,
    stale_locks_removed: u64,
    /// Packs an index lists that storage lacks (run `pgkeep verify`).
    missing_packs: u64,
    /// Packs that should have been repacked but do not match their id.
    damaged_packs: Vec<String>,
}

pub(crate) async fn run(s: &Settings, a: &PruneArgs, out: &Output) -> anyhow::Result<()> {
    let threshold = pick(
        a.repack_threshold,
        "PGKEEP_REPACK_THRESHOLD",
        s.file.repack_threshold,
    )?
    .unwrap_or(50);
    if threshold > 100 {
        return Err(UsageError(format!("repack threshold {threshold}% is above 100%")).into());
    }
    let opts = PruneOptions {
        repack_threshold: f64::from(threshold) / 100.0,
        dry_run: a.dry_run,
        lock: s.lock_options()?,
    };
    let repo = cmd::open(s).await?;
    let r = prune::prune(&repo, &opts).await?;
    let doc = PruneOutput {
        schema: 1,
        dry_run: r.dry_run,
        packs_before: r.before.packs,
        bytes_before: r.before.pack_bytes,
        referenced_bytes: r.before.referenced_bytes,
        deleted_packs: r.deleted_packs,
        deleted_bytes: r.deleted_bytes,
        repacked_packs: r.repacked_packs,
        written_bytes: r.written_bytes,
        freed_bytes: r.freed_bytes(),
        index_segments_removed: r.index_segments_removed,
        stale_locks_removed: r.stale_locks_removed,
        missing_packs: r.before.missing_packs,
        damaged_packs: r.damaged_packs.clone(),
    };
    out.emit(&doc, || human(&doc))
}

fn human(d: &PruneOutput) -> String {
    let verb = if d.dry_run { "would free" } else { "freed" };
    let mut lines = vec![
        format!(
            "before: {} packs, {} ({} referenced)",
            d.packs_before,
            format_bytes(d.bytes_before),
            format_bytes(d.referenced_bytes)
        ),
        format!(
            "{verb} {}: {} pack(s) deleted ({}), {} repacked into {}",
            format_bytes(d.freed_bytes),
            d.deleted_packs,
            format_bytes(d.deleted_bytes),
            d.repacked_packs,
            format_bytes(d.written_bytes)
        ),
    ];
    if d.stale_locks_removed > 0 {
        lines.push(format!(
            "removed {} stale lock(s) of processes that died",
            d.stale_locks_removed
        ));
    }
    if d.missing_packs > 0 {
        lines.push(format!(
            "WARNING: {} indexed pack(s) are missing from storage; run `pgkeep verify`",
            d.missing_packs
        ));
    }
    for p in &d.damaged_packs {
        lines.push(format!(
            "WARNING: {p} does not match its id and was left alone; run `pgkeep verify --read-data`"
        ));
    }
    lines.join("\n")
}
