//! `pgkeep info`: a cluster's backups, WAL archive, recoverable windows, and the repository's
//! space, at a glance. The JSON schema is documented in docs/info-json.md.

use pgkeep_engine::format::{Lsn, Manifest, SegmentName, TimelineId};
use pgkeep_engine::prune::usage_of;
use pgkeep_engine::replication::version_text;
use pgkeep_engine::timestamp::{format_timestamp_us, now_us};
use pgkeep_engine::wal::catalog::{timelines, TimelineWal};
use pgkeep_engine::wal::WalArchive;
use serde::Serialize;

use crate::cmd;
use crate::cmd::list::kind_name;
use crate::output::{format_bytes, Output, Table};
use crate::settings::Settings;

/// The JSON document. `schema` changes only when a field changes meaning or disappears;
/// fields are only ever added within a schema. Schema 2: `backups` became a list.
#[derive(Serialize)]
struct Info {
    schema: u32,
    cluster: String,
    system_id: Option<String>,
    pg_version: Option<String>,
    backups: Vec<BackupInfo>,
    wal: Vec<TimelineInfo>,
    /// Per backup: the wall-clock span a point-in-time restore from it can reach.
    recoverable: Vec<Window>,
    repository: Totals,
    /// Logical dumps (`pgkeep dump`), oldest first.
    dumps: Vec<crate::cmd::dump::DumpRow>,
}

#[derive(Serialize)]
struct BackupInfo {
    id: String,
    kind: &'static str,
    parent: Option<String>,
    label: String,
    start_time: String,
    stop_time: String,
    duration_seconds: f64,
    timeline: Option<u32>,
    start_lsn: Option<String>,
    stop_lsn: Option<String>,
    logical_bytes: u64,
    stored_bytes: u64,
    new_bytes: u64,
    /// logical bytes / new bytes: how much deduplication and compression saved.
    dedup_ratio: Option<f64>,
}

#[derive(Serialize)]
struct TimelineInfo {
    timeline: u32,
    segment_size: u32,
    stored_bytes: u64,
    history_file: bool,
    ranges: Vec<RangeInfo>,
    /// Missing segments between ranges, `[first, last]`.
    gaps: Vec<[String; 2]>,
    partial: Vec<String>,
    newest_segment: Option<String>,
    /// The newest transaction end archived on this timeline, and its age.
    newest_transaction: Option<String>,
    newest_transaction_age_seconds: Option<i64>,
}

#[derive(Serialize)]
struct RangeInfo {
    first: String,
    last: String,
    segments: u64,
    /// First and last transaction end in the range: the time it covers.
    first_transaction: Option<String>,
    last_transaction: Option<String>,
}

#[derive(Serialize)]
struct Window {
    backup: String,
    /// The backup's end: the earliest time a restore from it reaches.
    from: String,
    /// The last transaction end in the continuous WAL from the backup's start; absent when
    /// the WAL the backup itself needs is missing.
    to: Option<String>,
    /// Last segment of that continuous WAL.
    wal_until: Option<String>,
    restorable: bool,
}

#[derive(Serialize)]
struct Totals {
    pack_objects: u64,
    pack_bytes: u64,
    index_segments: u64,
    /// Sealed bytes of chunks some manifest references.
    referenced_bytes: u64,
    /// What `prune --repack-threshold 0` would free.
    reclaimable_bytes: u64,
    wal_bytes: u64,
    missing_packs: u64,
}

fn backup_info(m: &Manifest) -> BackupInfo {
    BackupInfo {
        id: m.backup_id.clone(),
        kind: kind_name(m.kind),
        parent: m.parent.clone(),
        label: m.label.clone(),
        start_time: format_timestamp_us(m.start_time_us),
        stop_time: format_timestamp_us(m.stop_time_us),
        duration_seconds: (m.stop_time_us - m.start_time_us) as f64 / 1e6,
        timeline: m.postgres.map(|p| p.timeline),
        start_lsn: m.postgres.map(|p| Lsn(p.start_lsn).to_string()),
        stop_lsn: m.postgres.map(|p| Lsn(p.stop_lsn).to_string()),
        logical_bytes: m.stats.logical_bytes,
        stored_bytes: m.stats.stored_bytes,
        new_bytes: m.stats.new_bytes,
        dedup_ratio: (m.stats.new_bytes > 0).then(|| {
            (m.stats.logical_bytes as f64 / m.stats.new_bytes as f64 * 10.0).round() / 10.0
        }),
    }
}

/// The window of `m`: the continuous range on its timeline that holds its start and stop
/// segments.
fn window(m: &Manifest, wal: &[TimelineWal]) -> Option<Window> {
    let pg = m.postgres?;
    let seg = |lsn| {
        SegmentName::containing(TimelineId(pg.timeline), Lsn(lsn), pg.wal_segment_size).to_string()
    };
    let (start, stop) = (seg(pg.start_lsn), seg(pg.stop_lsn));
    let range = wal
        .iter()
        .find(|t| t.timeline.0 == pg.timeline)
        .and_then(|t| {
            t.ranges
                .iter()
                .find(|r| r.first.as_str() <= start.as_str() && stop.as_str() <= r.last.as_str())
        });
    Some(Window {
        backup: m.backup_id.clone(),
        from: format_timestamp_us(m.stop_time_us),
        to: range.and_then(|r| r.last_xact_us).map(format_timestamp_us),
        wal_until: range.map(|r| r.last.to_string()),
        restorable: range.is_some(),
    })
}

pub(crate) async fn run(s: &Settings, out: &Output) -> anyhow::Result<()> {
    let cluster = cmd::cluster(s)?;
    let repo = cmd::open(s).await?;
    let mut manifests = Vec::new();
    for id in repo.list_backups(&cluster).await? {
        manifests.push(repo.read_manifest(&cluster, &id).await?);
    }
    let usage = usage_of(&repo).await?;
    let dumps = cmd::dump::rows(&repo, &cluster).await?;
    let archive = WalArchive::new(repo, cluster.clone());
    let wal = timelines(&archive).await?;
    let newest_pg = manifests.iter().rev().find_map(|m| m.postgres);
    let now = now_us();
    let info = Info {
        schema: 2,
        cluster: cluster.to_string(),
        system_id: newest_pg.map(|p| p.system_id.to_string()),
        pg_version: newest_pg.map(|p| version_text(p.version_num)),
        backups: manifests.iter().map(backup_info).collect(),
        dumps,
        recoverable: manifests.iter().filter_map(|m| window(m, &wal)).collect(),
        repository: Totals {
            pack_objects: usage.packs,
            pack_bytes: usage.pack_bytes,
            index_segments: usage.index_segments,
            referenced_bytes: usage.referenced_bytes,
            reclaimable_bytes: usage.reclaimable_bytes,
            wal_bytes: wal.iter().map(|t| t.stored_bytes).sum(),
            missing_packs: usage.missing_packs,
        },
        wal: wal
            .iter()
            .map(|t| {
                let newest_xact = t.ranges.iter().filter_map(|r| r.last_xact_us).max();
                TimelineInfo {
                    timeline: t.timeline.0,
                    segment_size: t.segment_size,
                    stored_bytes: t.stored_bytes,
                    history_file: t.history,
                    ranges: t
                        .ranges
                        .iter()
                        .map(|r| RangeInfo {
                            first: r.first.to_string(),
                            last: r.last.to_string(),
                            segments: r.segments,
                            first_transaction: r.first_xact_us.map(format_timestamp_us),
                            last_transaction: r.last_xact_us.map(format_timestamp_us),
                        })
                        .collect(),
                    gaps: t.gaps.iter().map(|(a, b)| [a.clone(), b.clone()]).collect(),
                    partial: t.partial.iter().map(ToString::to_string).collect(),
                    newest_segment: t.ranges.last().map(|r| r.last.to_string()),
                    newest_transaction: newest_xact.map(format_timestamp_us),
                    newest_transaction_age_seconds: newest_xact.map(|x| (now - x) / 1_000_000),
                }
            })
            .collect(),
    };
    out.emit(&info, || human(&info))
}

fn human(info: &Info) -> String {
    let mut lines = human_main(info);
    if info.dumps.is_empty() {
        lines.push("Dumps: none".into());
    } else {
        lines.push(format!("Dumps:\n{}", cmd::dump::render(&info.dumps)));
    }
    lines.join("\n")
}

fn human_main(info: &Info) -> Vec<String> {
    let mut lines = vec![format!(
        "Cluster {}{}{}",
        info.cluster,
        info.system_id
            .as_ref()
            .map(|s| format!(", system {s}"))
            .unwrap_or_default(),
        info.pg_version
            .as_ref()
            .map(|v| format!(", PostgreSQL {v}"))
            .unwrap_or_default()
    )];
    if info.backups.is_empty() {
        lines.push("Backups: none".into());
    } else {
        let mut t = Table::new(&[
            "BACKUP",
            "KIND",
            "PARENT",
            "STOPPED",
            "SECONDS",
            "TLI",
            "START LSN",
            "STOP LSN",
            "SIZE",
            "NEW",
            "DEDUP",
        ]);
        let dash = || "-".to_owned();
        for b in &info.backups {
            t.row(vec![
                b.id.clone(),
                b.kind.into(),
                b.parent.clone().unwrap_or_else(dash),
                b.stop_time.clone(),
                format!("{:.1}", b.duration_seconds),
                b.timeline.map_or_else(dash, |t| t.to_string()),
                b.start_lsn.clone().unwrap_or_else(dash),
                b.stop_lsn.clone().unwrap_or_else(dash),
                format_bytes(b.logical_bytes),
                format_bytes(b.new_bytes),
                b.dedup_ratio.map_or_else(dash, |r| format!("{r}x")),
            ]);
        }
        lines.push(t.render());
    }
    if info.wal.is_empty() {
        lines.push("WAL archive: empty".into());
    }
    for t in &info.wal {
        lines.push(format!(
            "Timeline {}: {} stored{}",
            t.timeline,
            format_bytes(t.stored_bytes),
            if t.history_file {
                ", history file archived"
            } else {
                ""
            }
        ));
        for r in &t.ranges {
            let span = match (&r.first_transaction, &r.last_transaction) {
                (Some(a), Some(b)) => format!(", transactions {a} .. {b}"),
                _ => String::new(),
            };
            lines.push(format!(
                "  WAL {} .. {} ({} segments){span}",
                r.first, r.last, r.segments
            ));
        }
        for [a, b] in &t.gaps {
            lines.push(format!("  GAP: {a} .. {b} missing"));
        }
        for p in &t.partial {
            lines.push(format!("  partial: {p}"));
        }
        if let (Some(x), Some(age)) = (&t.newest_transaction, t.newest_transaction_age_seconds) {
            lines.push(format!("  newest transaction archived: {x} ({age} s ago)"));
        }
    }
    for w in &info.recoverable {
        lines.push(match (&w.to, w.restorable) {
            (_, false) => format!(
                "Backup {}: NOT restorable, the WAL from its start to its end is not all archived",
                w.backup
            ),
            (Some(to), true) => format!("Backup {}: recoverable from {} to {to}", w.backup, w.from),
            (None, true) => format!(
                "Backup {}: recoverable to its end ({}), no later transactions archived",
                w.backup, w.from
            ),
        });
    }
    let r = &info.repository;
    lines.push(format!(
        "Repository: {} packs, {} ({} referenced, {} reclaimable by prune), {} index segment(s), WAL {}",
        r.pack_objects,
        format_bytes(r.pack_bytes),
        format_bytes(r.referenced_bytes),
        format_bytes(r.reclaimable_bytes),
        r.index_segments,
        format_bytes(r.wal_bytes)
    ));
    if r.missing_packs > 0 {
        lines.push(format!(
            "WARNING: {} indexed pack(s) missing from storage; run `pgkeep verify`",
            r.missing_packs
        ));
    }
    lines
}
