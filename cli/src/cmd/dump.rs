//! `pgkeep dump` and `pgkeep dump-restore`: logical dumps in the archive.

use anyhow::Context;
use pgkeep_engine::dump::selection::{RowFilterSpec, Selection};
use pgkeep_engine::dump::{self, DumpRestoreOptions, DumpSummary, PgDumpOptions};
use pgkeep_engine::format::{DumpFormat, DumpManifest};
use pgkeep_engine::replication::version_text;
use pgkeep_engine::WriteOptions;
use serde::Serialize;

use crate::cli::{DumpArgs, DumpRestoreArgs};
use crate::cmd;
use crate::exit::UsageError;
use crate::output::{format_bytes, format_unix, Output, Table};
use crate::settings::Settings;

/// A dump as `list` and `dump` show it.
#[derive(Serialize)]
pub(crate) struct DumpRow {
    id: String,
    source: &'static str,
    format: &'static str,
    database: String,
    /// The databases of a `dump --all` dump (empty for other dumps).
    databases: Vec<String>,
    selection: Vec<String>,
    row_filters: Vec<String>,
    server_version: Option<String>,
    tool_version: String,
    start_time: String,
    stop_time: String,
    duration_seconds: f64,
    logical_bytes: u64,
    stored_bytes: u64,
    new_bytes: u64,
}

impl From<&DumpManifest> for DumpRow {
    fn from(m: &DumpManifest) -> Self {
        Self {
            id: m.dump_id.clone(),
            source: m.source.name(),
            format: m.format.name(),
            database: m.database.clone(),
            databases: m.databases().map(|(d, _)| d.to_owned()).collect(),
            selection: m.selection.clone(),
            row_filters: m
                .row_filters
                .iter()
                .map(|f| format!("{}:{} ({} rows)", f.table, f.condition, f.rows))
                .collect(),
            server_version: (m.server_version_num > 0).then(|| version_text(m.server_version_num)),
            tool_version: m.tool_version.clone(),
            start_time: format_unix(m.start_time_us.div_euclid(1_000_000)),
            stop_time: format_unix(m.stop_time_us.div_euclid(1_000_000)),
            duration_seconds: (m.stop_time_us - m.start_time_us) as f64 / 1e6,
            logical_bytes: m.stats.logical_bytes,
            stored_bytes: m.stats.stored_bytes,
            new_bytes: m.stats.new_bytes,
        }
    }
}

/// The dumps table of `list`.
pub(crate) fn render(rows: &[DumpRow]) -> String {
    let mut t = Table::new(&[
        "DUMP",
        "SOURCE",
        "FORMAT",
        "DATABASE",
        "STARTED",
        "SECONDS",
        "SIZE",
        "STORED",
        "NEW",
        "SELECTION",
    ]);
    for r in rows {
        let mut sel = r.selection.join(" ");
        for f in &r.row_filters {
            if !sel.is_empty() {
                sel.push(' ');
            }
            sel.push_str(&format!("--where '{f}'"));
        }
        t.row(vec![
            r.id.clone(),
            r.source.into(),
            r.format.into(),
            if r.source == "pg_dumpall" {
                format!("all: {}", r.databases.join(","))
            } else {
                r.database.clone()
            },
            r.start_time.clone(),
            format!("{:.1}", r.duration_seconds),
            format_bytes(r.logical_bytes),
            format_bytes(r.stored_bytes),
            format_bytes(r.new_bytes),
            if sel.is_empty() { "whole".into() } else { sel },
        ]);
    }
    t.render()
}

/// Every dump of the cluster, oldest first.
pub(crate) async fn rows(
    repo: &pgkeep_engine::Repository,
    cluster: &pgkeep_engine::format::ClusterName,
) -> anyhow::Result<Vec<DumpRow>> {
    let mut rows = Vec::new();
    for id in repo.list_dumps(cluster).await? {
        rows.push(DumpRow::from(&repo.read_dump(cluster, &id).await?));
    }
    Ok(rows)
}

#[derive(Serialize)]
struct Stored {
    #[serde(flatten)]
    row: DumpRow,
    /// Logical bytes over the bytes this dump added to the repository.
    dedup_ratio: f64,
    seconds: f64,
}

fn emit(out: &Output, s: &DumpSummary) -> anyhow::Result<()> {
    let doc = Stored {
        row: DumpRow::from(&s.manifest),
        dedup_ratio: s.manifest.stats.logical_bytes as f64
            / s.manifest.stats.new_bytes.max(1) as f64,
        seconds: s.seconds,
    };
    out.emit(&doc, || {
        format!(
            "dump {} of {} ({}): {} in {:.1} s; new {} ({:.1}x smaller by dedup and compression)",
            doc.row.id,
            doc.row.database,
            doc.row.tool_version,
            format_bytes(doc.row.logical_bytes),
            doc.seconds,
            format_bytes(doc.row.new_bytes),
            doc.dedup_ratio
        )
    })
}

pub(crate) async fn run(s: &Settings, a: &DumpArgs, out: &Output) -> anyhow::Result<()> {
    let cluster = cmd::cluster(s)?;
    let write = WriteOptions {
        jobs: s.jobs(a.jobs)?.unwrap_or(0),
        ..WriteOptions::default()
    };
    if let Some(path) = &a.sqlite {
        let repo = cmd::open(s).await?;
        let summary = dump::sqlite::dump_sqlite(&repo, &cluster, path, write, s.lock_options()?)
            .await
            .with_context(|| format!("dumping SQLite database {}", path.display()))?;
        return emit(out, &summary);
    }
    let selection = Selection {
        schema_only: a.schema_only,
        data_only: a.data_only,
        tables: a.table.clone(),
        exclude_tables: a.exclude_table.clone(),
        schemas: a.schema.clone(),
    };
    let row_filters = a
        .r#where
        .iter()
        .map(|w| RowFilterSpec::parse(w))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| UsageError(e.to_string()))?;
    let format = match a.format.as_str() {
        "directory" => DumpFormat::Directory,
        "plain" => DumpFormat::Plain,
        _ => DumpFormat::Custom,
    };
    let opts = PgDumpOptions {
        pg_bin: a.pg_bin.clone(),
        format,
        selection,
        row_filters,
        parallel: a.parallel,
        scratch: a.scratch.clone(),
        write,
        lock: s.lock_options()?,
    };
    if a.all {
        opts.check_all()
    } else {
        opts.check()
    }
    .map_err(|e| UsageError(e.to_string()))?;
    let conn = cmd::conn_config(s, a.pg.clone())?;
    let repo = cmd::open(s).await?;
    let summary = if a.all {
        dump::all::dump_all(&repo, &cluster, &conn, &opts)
            .await
            .with_context(|| format!("dumping every database of {}", conn.display_target()))?
    } else {
        dump::dump_postgres(&repo, &cluster, &conn, &opts)
            .await
            .with_context(|| format!("dumping {}", conn.display_target()))?
    };
    emit(out, &summary)
}

pub(crate) async fn restore(s: &Settings, a: &DumpRestoreArgs, out: &Output) -> anyhow::Result<()> {
    let cluster = cmd::cluster(s)?;
    let repo = cmd::open(s).await?;
    let id = if a.id == "latest" {
        repo.list_dumps(&cluster)
            .await?
            .pop()
            .ok_or_else(|| UsageError(format!("cluster {cluster} has no dumps")))?
    } else {
        a.id.clone()
    };
    let lock = s.lock_options()?;
    if let Some(path) = &a.to_file {
        let files = dump::dump_to_file(&repo, &cluster, &id, path, a.database.as_deref(), lock)
            .await
            .with_context(|| format!("writing dump {id} to {}", path.display()))?;
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        return out.emit(&serde_json::json!({"dump": id, "files": names}), || {
            format!("dump {id} written to {}", names.join(", "))
        });
    }
    if let Some(path) = &a.sqlite_to {
        let tables = dump::sqlite::restore_sqlite(&repo, &cluster, &id, path, lock)
            .await
            .with_context(|| format!("restoring dump {id} to {}", path.display()))?;
        return out.emit(
            &serde_json::json!({"dump": id, "path": path, "tables": tables, "integrity_check": "ok"}),
            || {
                format!(
                    "dump {id} restored to {} ({tables} tables); PRAGMA integrity_check: ok",
                    path.display()
                )
            },
        );
    }
    let conn = cmd::conn_config(s, a.pg.clone())?;
    let opts = DumpRestoreOptions {
        pg_bin: a.pg_bin.clone(),
        tables: a.table.clone(),
        schema_only: a.schema_only,
        data_only: a.data_only,
        clean: a.clean,
        create: a.create,
        database: a.database.clone(),
        parallel: a.parallel,
        scratch: a.scratch.clone(),
        lock,
    };
    let summary = dump::restore_dump(&repo, &cluster, &id, &conn, &opts)
        .await
        .with_context(|| format!("restoring dump {id} into {}", conn.display_target()))?;
    out.emit(
        &serde_json::json!({
            "dump": id,
            "bytes": summary.bytes,
            "filtered_rows": summary.filtered_rows,
            "databases": summary.databases,
            "tolerated_errors": summary.tolerated,
        }),
        || {
            let mut text = format!(
                "dump {id} restored into {} ({} read{}{})",
                conn.display_target(),
                format_bytes(summary.bytes),
                if summary.filtered_rows > 0 {
                    format!(", {} filtered rows loaded", summary.filtered_rows)
                } else {
                    String::new()
                },
                if summary.databases.is_empty() {
                    String::new()
                } else {
                    format!("; databases: {}", summary.databases.join(", "))
                }
            );
            if !summary.tolerated.is_empty() {
                text.push_str(&format!(
                    "\nglobals.sql: {} error(s) tolerated (the objects exist already):\n  {}",
                    summary.tolerated.len(),
                    summary.tolerated.join("\n  ")
                ));
            }
            text
        },
    )
}
