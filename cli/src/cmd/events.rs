//! `pgkeep events`: find the instant before a mistake in the archived WAL.

use pgkeep_engine::format::{TimelineId, WalEventKind};
use pgkeep_engine::timestamp::{format_timestamp_us, parse_timestamp};
use pgkeep_engine::wal::catalog::{events, is_notable};
use pgkeep_engine::wal::WalArchive;
use serde::Serialize;

use crate::cli::EventsArgs;
use crate::cmd;
use crate::exit::UsageError;
use crate::output::{Output, Table};
use crate::settings::Settings;

#[derive(Serialize)]
struct EventRow {
    time: String,
    time_unix_us: i64,
    kind: &'static str,
    timeline: u32,
    lsn: String,
    end_lsn: String,
    xid: u32,
    /// Restore point name.
    name: Option<String>,
    /// Relation files the transaction removed, as `tablespace/database/relfilenode`: for a
    /// commit the files it dropped (`DROP`, `TRUNCATE`), for an abort those it had created.
    dropped: Vec<String>,
    segment: String,
}

fn time_arg(flag: &str, v: Option<&String>) -> anyhow::Result<Option<i64>> {
    v.map(|t| parse_timestamp(t).map_err(|e| UsageError(format!("{flag}: {e}")).into()))
        .transpose()
}

pub(crate) async fn run(s: &Settings, a: &EventsArgs, out: &Output) -> anyhow::Result<()> {
    let since = time_arg("--since", a.since.as_ref())?;
    let until = time_arg("--until", a.until.as_ref())?;
    let cluster = cmd::cluster(s)?;
    let repo = cmd::open(s).await?;
    let archive = WalArchive::new(repo, cluster);
    let found = events(&archive, a.timeline.map(TimelineId), since, until).await?;
    let rows: Vec<EventRow> = found
        .into_iter()
        .filter(|e| a.all || is_notable(&e.event))
        .map(|e| EventRow {
            time: format_timestamp_us(e.event.time_us),
            time_unix_us: e.event.time_us,
            kind: e.event.kind.name(),
            timeline: e.timeline.0,
            lsn: e.event.lsn.to_string(),
            end_lsn: e.event.end.to_string(),
            xid: e.event.xid,
            name: (e.event.kind == WalEventKind::RestorePoint).then(|| e.event.name.clone()),
            dropped: e
                .event
                .dropped
                .iter()
                .map(|r| format!("{}/{}/{}", r.tablespace, r.database, r.relation))
                .collect(),
            segment: e.segment.to_string(),
        })
        .collect();
    out.emit(&rows, || {
        if rows.is_empty() {
            return "No matching events in the archived WAL.".into();
        }
        let mut t = Table::new(&["TIME (UTC)", "EVENT", "TLI", "LSN", "XID", "DETAIL"]);
        for r in &rows {
            let detail = match (&r.name, r.dropped.is_empty(), r.kind) {
                (Some(n), _, _) => format!("name {n:?}"),
                (None, true, _) => String::new(),
                // An abort removes the files the transaction had created.
                (None, false, "abort" | "abort prepared") => {
                    format!("discarded new files {}", r.dropped.join(", "))
                }
                (None, false, _) => format!("dropped {}", r.dropped.join(", ")),
            };
            t.row(vec![
                r.time.clone(),
                r.kind.into(),
                r.timeline.to_string(),
                r.lsn.clone(),
                if r.xid == 0 {
                    "-".into()
                } else {
                    r.xid.to_string()
                },
                detail,
            ]);
        }
        t.render()
    })
}
