//! `pgkeep drill`: the restore test, automated. The engine does the work
//! (`pgkeep_engine::drill`); this module parses, prints the report and picks the exit code.

use std::time::Duration;

use anyhow::Context;
use pgkeep_engine::drill::{self, CheckStatus, DrillOptions, DrillReport, Script, Stage};
use pgkeep_engine::format::Lsn;
use pgkeep_engine::restore::{BackupChoice, RecoveryTarget};
use pgkeep_engine::timestamp::parse_timestamp;
use serde::Serialize;

use crate::cli::DrillArgs;
use crate::cmd;
use crate::exit::UsageError;
use crate::output::{format_bytes, Output, Table};
use crate::settings::Settings;

/// The version of the JSON report's layout: bumped when a field changes meaning or goes.
const SCHEMA: u32 = 1;

/// How long recovery may take before the drill gives up (as `restore --start`).
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Serialize)]
struct ReportOut {
    schema: u32,
    passed: bool,
    backup: String,
    target: String,
    scratch: String,
    port: u16,
    restore: Option<RestoreOut>,
    recovery: Option<RecoveryOut>,
    failure: Option<FailureOut>,
    checks: Vec<CheckOut>,
    tables: Vec<TableOut>,
    cleanup: CleanupOut,
}

#[derive(Serialize)]
struct RestoreOut {
    seconds: f64,
    files: u64,
    bytes: u64,
    verified_against_backup_manifest: u64,
}

#[derive(Serialize)]
struct RecoveryOut {
    /// From server start until recovery reached the target and the server was promoted.
    seconds_to_consistent: f64,
    replay_lsn: Option<String>,
    last_commit: Option<String>,
    timeline: Option<u32>,
}

#[derive(Serialize)]
struct FailureOut {
    stage: &'static str,
    error: String,
}

#[derive(Serialize)]
struct CheckOut {
    name: String,
    status: &'static str,
    seconds: f64,
    summary: String,
    problems: Vec<String>,
}

#[derive(Serialize)]
struct TableOut {
    database: String,
    schema: String,
    table: String,
    bytes: u64,
    restored_rows: Option<u64>,
    source_rows: Option<u64>,
}

#[derive(Serialize)]
struct CleanupOut {
    server_stopped: bool,
    scratch_removed: bool,
    problems: Vec<String>,
}

fn report_out(r: &DrillReport) -> ReportOut {
    ReportOut {
        schema: SCHEMA,
        passed: r.passed(),
        backup: r.plan.manifest.backup_id.clone(),
        target: r.plan.target.describe(),
        scratch: r.scratch.display().to_string(),
        port: r.port,
        restore: r.restored.as_ref().map(|(m, d)| RestoreOut {
            seconds: d.as_secs_f64(),
            files: m.files,
            bytes: m.bytes,
            verified_against_backup_manifest: m.verified,
        }),
        recovery: r.recovered.as_ref().map(|(p, d)| RecoveryOut {
            seconds_to_consistent: d.as_secs_f64(),
            replay_lsn: p.replay_lsn.map(|l: Lsn| l.to_string()),
            last_commit: p.last_commit.clone(),
            timeline: p.timeline,
        }),
        failure: r.failure.as_ref().map(|f| FailureOut {
            stage: f.stage.as_str(),
            error: f.error.to_string(),
        }),
        checks: r
            .checks
            .iter()
            .map(|c| CheckOut {
                name: c.name.clone(),
                status: c.status.as_str(),
                seconds: c.seconds,
                summary: c.summary.clone(),
                problems: c.problems.clone(),
            })
            .collect(),
        tables: r
            .tables
            .iter()
            .map(|t| TableOut {
                database: t.database.clone(),
                schema: t.schema.clone(),
                table: t.table.clone(),
                bytes: t.bytes,
                restored_rows: t.restored,
                source_rows: t.source,
            })
            .collect(),
        cleanup: CleanupOut {
            server_stopped: r.cleanup.server_stopped,
            scratch_removed: r.cleanup.scratch_removed,
            problems: r.cleanup.problems.clone(),
        },
    }
}

/// Problems shown per check in the human report; the JSON report has them all.
const SHOWN_PROBLEMS: usize = 30;

fn human(o: &ReportOut) -> String {
    let mut lines = vec![format!(
        "drill of backup {}: recover to {}; scratch {} (port {})",
        o.backup, o.target, o.scratch, o.port
    )];
    if let Some(r) = &o.restore {
        lines.push(format!(
            "restore:  {:.1} s, {} files ({}), {} checked against backup_manifest",
            r.seconds,
            r.files,
            format_bytes(r.bytes),
            r.verified_against_backup_manifest
        ));
    }
    if let Some(r) = &o.recovery {
        lines.push(format!(
            "recovery: {:.1} s to consistent and promoted, replayed to LSN {} (last commit {}), now on timeline {}",
            r.seconds_to_consistent,
            r.replay_lsn.as_deref().unwrap_or("?"),
            r.last_commit.as_deref().unwrap_or("none replayed"),
            r.timeline.map_or("?".into(), |t| t.to_string())
        ));
    }
    if let Some(f) = &o.failure {
        lines.push(format!("FAILED in {}: {}", f.stage, f.error));
    }
    if !o.checks.is_empty() {
        let mut t = Table::new(&["CHECK", "RESULT", "TIME", "WHAT"]);
        for c in &o.checks {
            t.row(vec![
                c.name.clone(),
                c.status.to_owned(),
                format!("{:.1} s", c.seconds),
                c.summary.clone(),
            ]);
        }
        lines.push(t.render());
        for c in o.checks.iter().filter(|c| !c.problems.is_empty()) {
            lines.push(format!("{}:", c.name));
            for p in c.problems.iter().take(SHOWN_PROBLEMS) {
                lines.push(format!("  {p}"));
            }
            if c.problems.len() > SHOWN_PROBLEMS {
                lines.push(format!(
                    "  ... {} more (see --json)",
                    c.problems.len() - SHOWN_PROBLEMS
                ));
            }
        }
    }
    let mut cleanup = Vec::new();
    if o.cleanup.server_stopped {
        cleanup.push("server stopped".to_owned());
    }
    cleanup.push(if o.cleanup.scratch_removed {
        format!("{} removed", o.scratch)
    } else {
        format!("{} kept", o.scratch)
    });
    cleanup.extend(o.cleanup.problems.iter().map(|p| format!("FAILED: {p}")));
    lines.push(format!("cleanup: {}", cleanup.join("; ")));
    let failed = o.checks.iter().filter(|c| c.status == "failed").count();
    lines.push(if o.passed {
        format!(
            "drill passed: {} checks passed, {} skipped",
            o.checks.iter().filter(|c| c.status == "passed").count(),
            o.checks.iter().filter(|c| c.status == "skipped").count()
        )
    } else {
        format!(
            "drill FAILED{}",
            if failed > 0 {
                format!(": {failed} of {} checks failed", o.checks.len())
            } else {
                String::new()
            }
        )
    });
    lines.join("\n")
}

/// The assertion files, read and split before anything is restored.
fn scripts(a: &DrillArgs) -> anyhow::Result<Vec<Script>> {
    a.sql
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).map_err(|e| {
                UsageError(format!("--sql {}: cannot read it: {e}", path.display()))
            })?;
            let statements = drill::script::parse(&text)
                .map_err(|e| UsageError(format!("--sql {}: {e}", path.display())))?;
            if statements.is_empty() {
                return Err(UsageError(format!(
                    "--sql {}: no SQL statement in it",
                    path.display()
                ))
                .into());
            }
            Ok(Script {
                name: path.display().to_string(),
                statements,
            })
        })
        .collect()
}

pub(crate) async fn run(s: &Settings, a: &DrillArgs, out: &Output) -> anyhow::Result<()> {
    let cluster = cmd::cluster(s)?;
    let target = match &a.target_time {
        Some(t) => RecoveryTarget::Time(
            parse_timestamp(t).map_err(|e| UsageError(format!("--target-time: {e}")))?,
        ),
        None => RecoveryTarget::End,
    };
    let jobs = s
        .jobs(a.jobs)?
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let source = if a.compare_source {
        Some(cmd::conn_config(s, a.pg.clone())?)
    } else {
        None
    };
    let opts = DrillOptions {
        scratch: a.scratch.clone(),
        keep: a.keep,
        port: a.port,
        pg_bin: a.pg_bin.clone(),
        db_user: a
            .db_user
            .clone()
            .or_else(pgkeep_engine::os_user_name)
            .unwrap_or_else(|| "postgres".into()),
        backup: match a.backup.as_deref() {
            None | Some("latest") => BackupChoice::Latest,
            Some(id) => BackupChoice::Id(id.to_owned()),
        },
        target,
        restore_command: cmd::restore::restore_command(s)?,
        lock: s.lock_options()?,
        jobs,
        amcheck: !a.no_amcheck,
        heapallindexed: a.heapallindexed,
        count_max_bytes: a.count_max_mib.unwrap_or(1024).saturating_mul(1 << 20),
        source,
        scripts: scripts(a)?,
        recovery_timeout: RECOVERY_TIMEOUT,
    };
    // Root, a busy scratch directory, a too long socket path: said before the passphrase
    // is asked for.
    drill::preflight(&opts)?;
    let repo = cmd::open(s).await?;
    let report = drill::run(&repo, &cluster, &opts, Box::pin(cmd::wait_for_signal()))
        .await
        .context("planning the drill")?;
    let shown = report_out(&report);
    out.emit(&shown, || human(&shown))?;
    let backup = report.plan.manifest.backup_id.clone();
    if let Some(f) = report.failure {
        return Err(match f.stage {
            // Its own exit code: 5 when the repository's data is damaged.
            Stage::Restore => anyhow::Error::new(f.error)
                .context(format!("drill failed: restoring backup {backup}")),
            Stage::Recovery => anyhow::anyhow!("drill failed: recovery: {}", f.error),
            Stage::Interrupted => anyhow::anyhow!("drill interrupted; cleaned up"),
        });
    }
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.status == CheckStatus::Failed)
        .map(|c| c.name.as_str())
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("drill failed: {}", failed.join(", "));
    }
    if !report.cleanup.problems.is_empty() {
        anyhow::bail!(
            "drill cleanup failed: {}",
            report.cleanup.problems.join("; ")
        );
    }
    Ok(())
}
