//! `pgkeep info`: one cluster's backups and WAL archive at a glance.

use pgkeep_engine::timestamp::format_timestamp_us;
use pgkeep_engine::wal::catalog::timelines;
use pgkeep_engine::wal::WalArchive;
use serde::Serialize;

use crate::cmd;
use crate::output::{format_bytes, Output};
use crate::settings::Settings;

/// The JSON document. `schema` changes only when a field changes meaning or disappears.
#[derive(Serialize)]
struct Info {
    schema: u32,
    cluster: String,
    backups: usize,
    wal: Vec<TimelineInfo>,
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

pub(crate) async fn run(s: &Settings, out: &Output) -> anyhow::Result<()> {
    let cluster = cmd::cluster(s)?;
    let repo = cmd::open(s).await?;
    let backups = repo.list_backups(&cluster).await?.len();
    let archive = WalArchive::new(repo, cluster.clone());
    let info = Info {
        schema: 1,
        cluster: cluster.to_string(),
        backups,
        wal: timelines(&archive)
            .await?
            .into_iter()
            .map(|t| TimelineInfo {
                timeline: t.timeline.0,
                segment_size: t.segment_size,
                stored_bytes: t.stored_bytes,
                history_file: t.history,
                ranges: t
                    .ranges
                    .into_iter()
                    .map(|r| RangeInfo {
                        first: r.first.to_string(),
                        last: r.last.to_string(),
                        segments: r.segments,
                        first_transaction: r.first_xact_us.map(format_timestamp_us),
                        last_transaction: r.last_xact_us.map(format_timestamp_us),
                    })
                    .collect(),
                gaps: t.gaps.into_iter().map(|(a, b)| [a, b]).collect(),
                partial: t.partial.iter().map(ToString::to_string).collect(),
            })
            .collect(),
    };
    out.emit(&info, || human(&info))
}

fn human(info: &Info) -> String {
    let mut lines = vec![format!(
        "Cluster {}: {} backup(s) (see `pgkeep list`)",
        info.cluster, info.backups
    )];
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
    }
    lines.join("\n")
}
