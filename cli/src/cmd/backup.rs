//! `pgkeep backup`.

use std::io::IsTerminal;

use anyhow::Context;
use pgkeep_engine::backup::{
    take_backup, BackupOptions, BackupSummary, IncrementalMethod, Progress,
};
use pgkeep_engine::manifest_checksum::ManifestChecksum;
use pgkeep_engine::WriteOptions;
use serde::Serialize;

use crate::cli::BackupArgs;
use crate::cmd;
use crate::exit::UsageError;
use crate::output::{format_bytes, Output};
use crate::settings::{pick, Settings};

/// A progress bar on a terminal; nothing otherwise (logs stay clean under cron).
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn new(json: bool) -> Self {
        if json || !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} {bytes_per_sec} [{wide_bar}] ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Self(Some(bar))
    }
}

impl Progress for Bar {
    fn total(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.set_length(bytes);
        }
    }

    fn sent(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.set_position(bytes);
        }
    }
}

#[derive(Serialize)]
struct Summary<'a> {
    backup_id: &'a str,
    kind: &'static str,
    parent: Option<&'a str>,
    label: &'a str,
    start_lsn: String,
    stop_lsn: String,
    timeline: u32,
    logical_bytes: u64,
    stored_bytes: u64,
    new_bytes: u64,
    dedup_ratio: f64,
    relation_pages: u64,
    reused_pages: u64,
    delta_pages: u64,
    seconds: f64,
    bytes_per_second: f64,
}

fn summarize(s: &BackupSummary) -> Summary<'_> {
    let m = &s.manifest;
    let pg = m.postgres.unwrap_or(pgkeep_engine::format::PgInfo {
        system_id: 0,
        version_num: 0,
        timeline: 0,
        start_lsn: 0,
        stop_lsn: 0,
        checkpoint_lsn: 0,
        wal_segment_size: 0,
    });
    Summary {
        backup_id: &m.backup_id,
        kind: match m.kind {
            pgkeep_engine::format::BackupKind::Incremental => "incremental",
            _ => "full",
        },
        parent: m.parent.as_deref(),
        label: &m.label,
        start_lsn: pgkeep_engine::format::Lsn(pg.start_lsn).to_string(),
        stop_lsn: pgkeep_engine::format::Lsn(pg.stop_lsn).to_string(),
        timeline: pg.timeline,
        logical_bytes: m.stats.logical_bytes,
        stored_bytes: m.stats.stored_bytes,
        new_bytes: m.stats.new_bytes,
        dedup_ratio: m.stats.logical_bytes as f64 / m.stats.new_bytes.max(1) as f64,
        relation_pages: s.pages.relation_pages,
        reused_pages: s.pages.reused_pages,
        delta_pages: s.pages.delta_pages,
        seconds: s.seconds,
        bytes_per_second: m.stats.logical_bytes as f64 / s.seconds.max(1e-9),
    }
}

pub(crate) async fn run(s: &Settings, a: &BackupArgs, out: &Output) -> anyhow::Result<()> {
    let cluster = cmd::cluster(s)?;
    let mut conn = cmd::conn_config(s, a.pg.clone())?;
    let checkpoint = pick(
        a.checkpoint.clone(),
        "PGKEEP_CHECKPOINT",
        s.file.checkpoint.clone(),
    )?
    .unwrap_or_else(|| "fast".into());
    if checkpoint != "fast" && checkpoint != "spread" {
        return Err(UsageError(format!("checkpoint {checkpoint:?} must be fast or spread")).into());
    }
    let incremental_method = match pick(
        a.incremental_method.clone(),
        "PGKEEP_INCREMENTAL_METHOD",
        s.file.incremental_method.clone(),
    )?
    .as_deref()
    {
        None | Some("auto") => IncrementalMethod::Auto,
        Some("page-lsn") => IncrementalMethod::PageLsn,
        Some("server") => IncrementalMethod::Server,
        Some(other) => {
            return Err(UsageError(format!(
                "incremental method {other:?} must be auto, page-lsn or server"
            ))
            .into())
        }
    };
    let page_deltas = match pick(
        a.page_deltas.clone(),
        "PGKEEP_PAGE_DELTAS",
        s.file.page_deltas.clone(),
    )?
    .as_deref()
    {
        None | Some("on") => true,
        Some("off") => false,
        Some(other) => {
            return Err(UsageError(format!("page deltas {other:?} must be on or off")).into())
        }
    };
    let max_rate = pick(a.max_rate, "PGKEEP_MAX_RATE", s.file.max_rate)?;
    if let Some(r) = max_rate {
        if !(32..=1_048_576).contains(&r) {
            return Err(UsageError(format!("max rate {r} kB/s is outside 32..=1048576")).into());
        }
    }
    let manifest_checksums = match pick(
        a.manifest_checksums.clone(),
        "PGKEEP_MANIFEST_CHECKSUMS",
        s.file.manifest_checksums.clone(),
    )? {
        Some(name) => name
            .parse::<ManifestChecksum>()
            .map_err(|e| UsageError(e.to_string()))?,
        None => ManifestChecksum::default(),
    };
    let uploads = pick(a.uploads, "PGKEEP_UPLOADS", s.file.uploads)?
        .unwrap_or(WriteOptions::default().max_uploads);
    if !(1..=64).contains(&uploads) {
        return Err(UsageError(format!("uploads {uploads} is outside 1..=64")).into());
    }
    let opts = BackupOptions {
        label: a.label.clone(),
        fast_checkpoint: checkpoint == "fast",
        full: a.full,
        incremental_method,
        page_deltas,
        max_rate_kb: max_rate,
        verify_checksums: !a.no_verify_checksums,
        manifest_checksums,
        read_timeout: match pick(a.timeout, "PGKEEP_TIMEOUT", s.file.timeout)?.unwrap_or(300) {
            0 => None,
            secs => Some(std::time::Duration::from_secs(secs)),
        },
        write: WriteOptions {
            jobs: s.jobs(a.jobs)?.unwrap_or(0),
            max_uploads: uploads,
            ..WriteOptions::default()
        },
        lock: s.lock_options()?,
    };
    // Without connect_timeout in the connection settings, --timeout bounds connecting too:
    // a server that accepts the connection and then answers nothing must not hang a backup.
    if conn.connect_timeout.is_none() {
        conn.connect_timeout = opts.read_timeout;
    }
    let repo = cmd::open(s).await?;
    let bar = Bar::new(out.json);
    tracing::info!(server = %conn.display_target(), cluster = %cluster, "starting backup");
    let result = take_backup(&repo, &cluster, &conn, &opts, &bar).await;
    if let Some(b) = &bar.0 {
        b.finish_and_clear();
    }
    let summary = result.with_context(|| format!("backing up {}", conn.display_target()))?;
    let sum = summarize(&summary);
    out.emit(&sum, || {
        let of = sum.parent.map(|p| format!(" of {p}")).unwrap_or_default();
        let reused = if sum.parent.is_some() {
            format!(
                ", {} of {} relation pages unchanged since the parent, {} stored as differences from it",
                sum.reused_pages, sum.relation_pages, sum.delta_pages
            )
        } else {
            String::new()
        };
        format!(
            "backup {} ({}{of}): {} in {:.1} s ({}/s), LSN {}..{} on timeline {}; stored {}, new {} ({:.1}x smaller by dedup and compression){reused}",
            sum.backup_id,
            sum.kind,
            format_bytes(sum.logical_bytes),
            sum.seconds,
            format_bytes(sum.bytes_per_second as u64),
            sum.start_lsn,
            sum.stop_lsn,
            sum.timeline,
            format_bytes(sum.stored_bytes),
            format_bytes(sum.new_bytes),
            sum.dedup_ratio,
        )
    })
}
