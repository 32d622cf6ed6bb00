//! `pgkeep list`: the backups of one cluster.

use pgkeep_engine::format::{BackupKind, Lsn, Manifest, SegmentName, TimelineId};
use pgkeep_engine::replication::version_text;
use serde::Serialize;

use crate::cli::ListArgs;
use crate::cmd;
use crate::output::{format_bytes, format_unix, Output, Table};
use crate::settings::Settings;

#[derive(Serialize)]
struct BackupRow {
    id: String,
    kind: &'static str,
    parent: Option<String>,
    label: String,
    start_time: String,
    stop_time: String,
    duration_seconds: f64,
    logical_bytes: u64,
    stored_bytes: u64,
    new_bytes: u64,
    files: usize,
    /// PostgreSQL facts (absent for non-PostgreSQL backups).
    timeline: Option<u32>,
    start_lsn: Option<String>,
    stop_lsn: Option<String>,
    pg_version: Option<String>,
    system_id: Option<String>,
    /// The WAL segments a restore of this backup needs at least: from the one holding the
    /// start LSN to the one holding the stop LSN.
    start_wal: Option<String>,
    stop_wal: Option<String>,
    /// Pinned against retention (`pgkeep pin`), and the pin's note.
    pinned: bool,
    pin_note: Option<String>,
}

pub(crate) fn kind_name(k: BackupKind) -> &'static str {
    match k {
        BackupKind::Full => "full",
        BackupKind::Incremental => "incremental",
        BackupKind::Files => "files",
    }
}

impl From<&Manifest> for BackupRow {
    fn from(m: &Manifest) -> Self {
        Self {
            id: m.backup_id.clone(),
            kind: kind_name(m.kind),
            parent: m.parent.clone(),
            label: m.label.clone(),
            start_time: format_unix(m.start_time_us.div_euclid(1_000_000)),
            stop_time: format_unix(m.stop_time_us.div_euclid(1_000_000)),
            duration_seconds: (m.stop_time_us - m.start_time_us) as f64 / 1e6,
            logical_bytes: m.stats.logical_bytes,
            stored_bytes: m.stats.stored_bytes,
            new_bytes: m.stats.new_bytes,
            files: m.files.len(),
            timeline: m.postgres.map(|p| p.timeline),
            start_lsn: m.postgres.map(|p| Lsn(p.start_lsn).to_string()),
            stop_lsn: m.postgres.map(|p| Lsn(p.stop_lsn).to_string()),
            pg_version: m.postgres.map(|p| version_text(p.version_num)),
            system_id: m.postgres.map(|p| p.system_id.to_string()),
            start_wal: m
                .postgres
                .map(|p| segment(p.timeline, p.start_lsn, p.wal_segment_size)),
            stop_wal: m
                .postgres
                .map(|p| segment(p.timeline, p.stop_lsn, p.wal_segment_size)),
            pinned: false,
            pin_note: None,
        }
    }
}

fn segment(timeline: u32, lsn: u64, segment_size: u32) -> String {
    SegmentName::containing(TimelineId(timeline), Lsn(lsn), segment_size).to_string()
}

pub(crate) async fn run(s: &Settings, a: &ListArgs, out: &Output) -> anyhow::Result<()> {
    let cluster = cmd::cluster(s)?;
    let repo = cmd::open(s).await?;
    let dumps = cmd::dump::rows(&repo, &cluster).await?;
    if a.dumps {
        return out.emit(&dumps, || {
            if dumps.is_empty() {
                format!("No dumps of cluster {cluster} yet.")
            } else {
                cmd::dump::render(&dumps)
            }
        });
    }
    let pins = pgkeep_engine::retention::pins(&repo, &cluster).await?;
    let mut rows = Vec::new();
    for id in repo.list_backups(&cluster).await? {
        let mut row = BackupRow::from(&repo.read_manifest(&cluster, &id).await?);
        if let Some(p) = pins.get(&id) {
            row.pinned = true;
            row.pin_note = Some(p.note.clone());
        }
        rows.push(row);
    }
    out.emit(&rows, || {
        // Dumps follow the backups in the text output (`--dumps` lists them alone).
        let dumps_text = if dumps.is_empty() {
            String::new()
        } else {
            format!("\n\nDumps:\n{}", cmd::dump::render(&dumps))
        };
        if rows.is_empty() {
            return format!("No backups of cluster {cluster} yet.{dumps_text}");
        }
        let mut t = Table::new(&[
            "BACKUP",
            "KIND",
            "STARTED",
            "SECONDS",
            "PG",
            "TLI",
            "START LSN",
            "STOP LSN",
            "SIZE",
            "STORED",
            "NEW",
            "LABEL",
            "PINNED",
        ]);
        let dash = || "-".to_owned();
        for r in &rows {
            t.row(vec![
                r.id.clone(),
                r.kind.into(),
                r.start_time.clone(),
                format!("{:.1}", r.duration_seconds),
                r.pg_version.clone().unwrap_or_else(dash),
                r.timeline.map_or_else(dash, |t| t.to_string()),
                r.start_lsn.clone().unwrap_or_else(dash),
                r.stop_lsn.clone().unwrap_or_else(dash),
                format_bytes(r.logical_bytes),
                format_bytes(r.stored_bytes),
                format_bytes(r.new_bytes),
                r.label.clone(),
                match (&r.pinned, &r.pin_note) {
                    (false, _) => String::new(),
                    (true, Some(n)) if !n.is_empty() => format!("yes: {n}"),
                    (true, _) => "yes".into(),
                },
            ]);
        }
        format!("{}{dumps_text}", t.render())
    })
}
