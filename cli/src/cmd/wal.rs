//! `pgkeep wal-push` (archive_command) and `pgkeep wal-fetch` (restore_command).

use anyhow::Context;
use pgkeep_engine::format::WalFileName;
use pgkeep_engine::wal::{
    fetch_file, push_file, FetchOptions, FetchOutcome, PushOptions, PushOutcome, WalArchive,
};
use serde::Serialize;

use crate::cli::{WalFetchArgs, WalPushArgs};
use crate::cmd;
use crate::exit;
use crate::output::Output;
use crate::settings::{pick, pick_bounded, Settings};

/// `--prefetch` at most: the segments ahead are listed up front, so a huge count would
/// exhaust memory (or overflow the segment number) instead of prefetching.
const PREFETCH: std::ops::RangeInclusive<usize> = 0..=1024;

#[derive(Serialize)]
struct PushResult {
    file: String,
    /// "stored" or "already stored".
    outcome: &'static str,
    /// Look-ahead segments stored in the same call.
    ahead_stored: Vec<String>,
    ahead_failed: Vec<String>,
}

fn outcome_name(o: PushOutcome) -> &'static str {
    match o {
        PushOutcome::Stored => "stored",
        PushOutcome::AlreadyStored => "already stored",
    }
}

pub(crate) async fn push(s: &Settings, a: &WalPushArgs, out: &Output) -> anyhow::Result<()> {
    let lookahead = pick(a.lookahead, "PGKEEP_LOOKAHEAD", s.file.lookahead)?.unwrap_or(4);
    let cluster = cmd::cluster(s)?;
    let repo = cmd::open(s).await?;
    let level = repo.config().compression_level;
    let archive = WalArchive::new(repo, cluster);
    let spool = pick(a.spool.clone(), "PGKEEP_SPOOL", s.file.spool.clone())?;
    let opts = PushOptions {
        level,
        lookahead,
        spool,
    };
    let report = push_file(&archive, &a.path, &opts)
        .await
        .with_context(|| format!("archiving {}", a.path.display()))?;
    let mut result = PushResult {
        file: report.name.to_string(),
        outcome: outcome_name(report.outcome),
        ahead_stored: Vec::new(),
        ahead_failed: Vec::new(),
    };
    for (name, r) in &report.ahead {
        match r {
            Ok(_) => result.ahead_stored.push(name.to_string()),
            Err(_) => result.ahead_failed.push(name.to_string()),
        }
    }
    // archive_command output lands in the server log: one short line, and only with --json
    // or when something beyond the plain case happened.
    if out.json || !result.ahead_stored.is_empty() || !result.ahead_failed.is_empty() {
        out.emit(&result, || {
            format!(
                "{}: {}; look-ahead stored {}, failed {}",
                result.file,
                result.outcome,
                result.ahead_stored.len(),
                result.ahead_failed.len()
            )
        })?;
    }
    Ok(())
}

/// Runs `wal-fetch` and returns its exit status (see [`exit::WAL_FETCH_FAILED`]).
pub(crate) async fn fetch(s: &Settings, a: &WalFetchArgs) -> u8 {
    match try_fetch(s, a).await {
        Ok(FetchOutcome::Restored { .. }) => exit::OK,
        Ok(FetchOutcome::NotFound) => {
            // Normal during recovery (the server probes for history files and the next
            // segment): informational, at the default log level silent.
            tracing::info!(file = %a.name, "not in the archive");
            exit::WAL_NOT_FOUND
        }
        Err(e) => {
            eprintln!("pgkeep: {e:#}");
            exit::WAL_FETCH_FAILED
        }
    }
}

async fn try_fetch(s: &Settings, a: &WalFetchArgs) -> anyhow::Result<FetchOutcome> {
    // A name that is not an archived file's cannot be in the archive.
    let Ok(name) = WalFileName::parse(&a.name) else {
        return Ok(FetchOutcome::NotFound);
    };
    let prefetch = pick_bounded(
        (a.prefetch, "--prefetch"),
        "PGKEEP_PREFETCH",
        (s.file.prefetch, "config key prefetch"),
        PREFETCH,
    )?
    .unwrap_or(8);
    let spool = pick(a.spool.clone(), "PGKEEP_SPOOL", s.file.spool.clone())?;
    let cluster = cmd::cluster(s)?;
    let repo = cmd::open(s).await?;
    let archive = WalArchive::new(repo, cluster);
    fetch_file(&archive, &name, &a.path, &FetchOptions { prefetch, spool })
        .await
        .with_context(|| format!("restoring {name}"))
}
