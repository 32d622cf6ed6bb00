//! `pgkeep restore`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use pgkeep_engine::format::Lsn;
use pgkeep_engine::restore::start::{find_bin_dir, start_and_wait, stop, StartOptions};
use pgkeep_engine::restore::{
    check_target, plan, restore, tablespace_layout, BackupChoice, RecoverySettings, RecoveryTarget,
    TargetAction, TargetTimeline,
};
use pgkeep_engine::timestamp::{format_timestamp_us, parse_timestamp};
use serde::Serialize;

use crate::cli::RestoreArgs;
use crate::cmd;
use crate::exit::UsageError;
use crate::output::{format_bytes, Output};
use crate::settings::Settings;

#[derive(Serialize)]
struct PlanOut {
    backup: String,
    backup_start_lsn: String,
    backup_stop_lsn: String,
    backup_consistent_at: String,
    /// The backup's timeline.
    timeline: u32,
    /// The timelines replay follows, from the backup's to the target's.
    timelines: Vec<u32>,
    target: String,
    wal_first: String,
    wal_last: String,
    expected_stop_lsn: Option<String>,
    expected_stop_time: Option<String>,
    archive_last_transaction: Option<String>,
}

#[derive(Serialize)]
struct Outcome {
    plan: PlanOut,
    files: u64,
    bytes: u64,
    verified_against_backup_manifest: u64,
    kept: u64,
    removed: u64,
    reached: Option<Reached>,
}

#[derive(Serialize)]
struct Reached {
    in_recovery: bool,
    stopped: bool,
    replay_lsn: Option<String>,
    last_commit: Option<String>,
    timeline: Option<u32>,
}

fn target(a: &RestoreArgs) -> anyhow::Result<RecoveryTarget> {
    Ok(if let Some(t) = &a.target_time {
        RecoveryTarget::Time(
            parse_timestamp(t).map_err(|e| UsageError(format!("--target-time: {e}")))?,
        )
    } else if let Some(l) = &a.target_lsn {
        RecoveryTarget::Lsn(
            l.parse::<Lsn>()
                .map_err(|e| UsageError(format!("--target-lsn: {e}")))?,
        )
    } else if let Some(x) = a.target_xid {
        RecoveryTarget::Xid(x)
    } else if let Some(n) = &a.target_name {
        RecoveryTarget::Name(n.clone())
    } else if a.target_immediate {
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::End
    })
}

/// `OID=DIR` pairs; directories must be absolute.
fn tablespace_map(items: &[String]) -> anyhow::Result<HashMap<u32, PathBuf>> {
    let mut map = HashMap::new();
    for item in items {
        let (oid, dir) = item
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--tablespace-map {item:?}: expected OID=DIR")))?;
        let oid: u32 = oid
            .trim()
            .parse()
            .map_err(|_| UsageError(format!("--tablespace-map {item:?}: {oid:?} is not an OID")))?;
        let dir = PathBuf::from(dir.trim());
        if !dir.is_absolute() {
            return Err(UsageError(format!(
                "--tablespace-map {item:?}: the directory must be absolute"
            ))
            .into());
        }
        map.insert(oid, dir);
    }
    Ok(map)
}

/// Single-quotes a word for `sh -c` (PostgreSQL runs restore_command through the shell).
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// `pgkeep ... wal-fetch %f %p` with this run's repository, cluster and config, and the
/// passphrase file if there is one. Secrets never go into it (it lands in
/// postgresql.auto.conf and in the process list): storage options belong in the config file.
pub(crate) fn restore_command(s: &Settings) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("finding the pgkeep executable")?;
    let mut words = vec![shell_quote(&exe.display().to_string())];
    if let Some(config) = &s.config_path {
        let abs = std::fs::canonicalize(config).unwrap_or_else(|_| config.clone());
        words.push("--config".into());
        words.push(shell_quote(&abs.display().to_string()));
    }
    let repo = s.repo()?;
    let repo = if repo.contains("://") {
        repo.to_owned()
    } else {
        std::fs::canonicalize(repo).map_or_else(|_| repo.to_owned(), |p| p.display().to_string())
    };
    words.push("--repo".into());
    words.push(shell_quote(&repo));
    words.push("--cluster".into());
    words.push(shell_quote(&s.cluster));
    match &s.passphrase_file {
        Some(file) => {
            let abs = std::fs::canonicalize(file).unwrap_or_else(|_| file.clone());
            words.push("--passphrase-file".into());
            words.push(shell_quote(&abs.display().to_string()));
        }
        None => tracing::warn!(
            "the passphrase did not come from a file: restore_command will find it only if the \
             server's environment has PGKEEP_PASSPHRASE or the config file names a passphrase_file"
        ),
    }
    // restore_command gets the config file's [storage] table and nothing else: options from
    // flags or the environment (which may hold credentials) would otherwise be lost silently.
    let from_file: Vec<(String, String)> = s.file.storage.clone().into_iter().collect();
    if s.storage_options != from_file {
        tracing::warn!(
            "storage options given on the command line or in the environment are not passed to \
             restore_command (they may hold credentials): put them in the config file's [storage] \
             table, or restore_command will reach the repository without them"
        );
    }
    words.push("wal-fetch".into());
    words.push("%f".into());
    words.push("%p".into());
    Ok(words.join(" "))
}

pub(crate) async fn run(s: &Settings, a: &RestoreArgs, out: &Output) -> anyhow::Result<()> {
    let cluster = cmd::cluster(s)?;
    let target = target(a)?;
    let action = match a.target_action.as_deref() {
        None | Some("pause") => TargetAction::Pause,
        Some("promote") => TargetAction::Promote,
        Some("shutdown") => TargetAction::Shutdown,
        Some(other) => return Err(UsageError(format!("--target-action {other:?}")).into()),
    };
    // PostgreSQL applies these only when recovery has a target to stop at; without one it
    // replays to the end of the archive and promotes, whatever they say.
    // (`recovery_target_inclusive` means nothing for `immediate` either.)
    let needs_target = |flag: &str, targets: &str| {
        UsageError(format!(
            "{flag} needs a recovery target ({targets}): without one, recovery replays all \
             archived WAL and promotes"
        ))
    };
    let stop_at = "--target-time, --target-lsn, --target-xid or --target-name";
    if target == RecoveryTarget::End && a.target_action.is_some() {
        return Err(needs_target(
            "--target-action",
            &format!("{stop_at}, or --target-immediate"),
        )
        .into());
    }
    if matches!(target, RecoveryTarget::End | RecoveryTarget::Immediate) && a.target_exclusive {
        return Err(needs_target("--target-exclusive", stop_at).into());
    }
    // Absolute: `--start` puts the server's socket in the data directory, and PostgreSQL
    // would read a relative `unix_socket_directories` from inside it.
    let pgdata = std::path::absolute(&a.pgdata)
        .with_context(|| format!("resolving {}", a.pgdata.display()))?;
    let timeline = TargetTimeline::parse(a.target_timeline.as_deref().unwrap_or("latest"))
        .map_err(|e| UsageError(e.to_string()))?;
    let map = tablespace_map(&a.tablespace_map)?;
    let jobs = s
        .jobs(a.jobs)?
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    check_target(&pgdata, a.delta)?;
    let repo = cmd::open(s).await?;
    let choice = match a.backup.as_deref() {
        None | Some("latest") => BackupChoice::Latest,
        Some(id) => BackupChoice::Id(id.to_owned()),
    };
    let plan = plan(&repo, &cluster, &choice, target, timeline)
        .await
        .context("planning the restore")?;
    let pg = plan
        .manifest
        .postgres
        .context("the planned backup has no PostgreSQL facts")?;
    let plan_out = PlanOut {
        backup: plan.manifest.backup_id.clone(),
        backup_start_lsn: Lsn(pg.start_lsn).to_string(),
        backup_stop_lsn: Lsn(pg.stop_lsn).to_string(),
        backup_consistent_at: format_timestamp_us(plan.manifest.stop_time_us),
        timeline: pg.timeline,
        timelines: plan.path.iter().map(|t| t.0).collect(),
        target: plan.target.describe(),
        wal_first: plan.first_segment.clone(),
        wal_last: plan.last_segment.clone(),
        expected_stop_lsn: plan.expected_stop.map(|(l, _)| l.to_string()),
        expected_stop_time: plan
            .expected_stop
            .and_then(|(_, t)| t)
            .map(format_timestamp_us),
        archive_last_transaction: plan.archive_end_time.map(format_timestamp_us),
    };
    let plan_text = format!(
        "plan: backup {} (timeline {}, LSN {}..{}, consistent at {})\n      WAL {} .. {}{}\n      recover to {}{}",
        plan_out.backup,
        plan_out.timeline,
        plan_out.backup_start_lsn,
        plan_out.backup_stop_lsn,
        plan_out.backup_consistent_at,
        plan_out.wal_first,
        plan_out.wal_last,
        if plan_out.timelines.len() > 1 {
            format!(
                " across timelines {}",
                plan_out
                    .timelines
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" → ")
            )
        } else {
            String::new()
        },
        plan_out.target,
        match (&plan_out.expected_stop_lsn, &plan_out.expected_stop_time) {
            (Some(l), Some(t)) => format!(" (around the record at {l}, {t})"),
            (Some(l), None) => format!(" (stops at {l})"),
            _ => String::new(),
        }
    );
    // Before the dry run returns: a mistyped --tablespace-map OID is part of the plan.
    let layout = tablespace_layout(&plan, &pgdata, &map)?;
    if a.dry_run {
        return out.emit(&plan_out, || plan_text);
    }
    if !out.json {
        println!("{plan_text}");
    }
    // Found before anything is written: a missing PostgreSQL would otherwise show only after
    // the whole restore.
    let bin_dir = if a.start {
        Some(find_bin_dir(a.pg_bin.as_deref(), pg.version_num / 10000)?)
    } else {
        None
    };
    let settings = RecoverySettings {
        restore_command: restore_command(s)?,
        target: plan.target.clone(),
        exclusive: a.target_exclusive,
        timeline: timeline.as_conf(),
        action,
        comment: format!(
            "restored by pgkeep from backup {} of cluster {cluster}: recover to {}",
            plan.manifest.backup_id,
            plan.target.describe()
        ),
    };
    let started = std::time::Instant::now();
    let done = restore(
        &repo,
        &plan,
        &layout,
        &settings,
        jobs,
        a.delta,
        s.lock_options()?,
    )
    .await
    .with_context(|| format!("restoring into {}", pgdata.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    if !out.json {
        println!(
            "restored {} files ({}) in {seconds:.1} s, {} checked against backup_manifest{}",
            done.files,
            format_bytes(done.bytes),
            done.verified,
            if a.delta {
                format!(", {} kept, {} removed", done.kept, done.removed)
            } else {
                String::new()
            }
        );
    }
    let mut reached = None;
    if let Some(bin_dir) = bin_dir {
        let opts = StartOptions {
            bin_dir: bin_dir.clone(),
            port: a.port.unwrap_or(5432),
            user: pgkeep_engine::os_user_name().unwrap_or_else(|| "postgres".into()),
            action,
            timeout: Duration::from_secs(3600),
        };
        let point = start_and_wait(&pgdata, &opts)
            .await
            .context("running recovery")?;
        if a.stop && !point.stopped {
            stop(&pgdata, &bin_dir).await?;
        }
        reached = Some(Reached {
            in_recovery: point.in_recovery,
            stopped: point.stopped || a.stop,
            replay_lsn: point.replay_lsn.map(|l| l.to_string()),
            last_commit: point.last_commit,
            timeline: point.timeline,
        });
    }
    let outcome = Outcome {
        plan: plan_out,
        files: done.files,
        bytes: done.bytes,
        verified_against_backup_manifest: done.verified,
        kept: done.kept,
        removed: done.removed,
        reached,
    };
    if out.json {
        return out.emit(&outcome, String::new);
    }
    if let Some(r) = &outcome.reached {
        println!(
            "recovery stopped at LSN {} on timeline {}, last commit {}; the server is {}",
            r.replay_lsn.as_deref().unwrap_or("?"),
            r.timeline.map_or("?".into(), |t| t.to_string()),
            r.last_commit.as_deref().unwrap_or("none replayed"),
            if r.stopped {
                "stopped"
            } else if r.in_recovery {
                "paused in recovery (SELECT pg_wal_replay_resume() to end it)"
            } else {
                "promoted and running"
            }
        );
    } else {
        println!(
            "start PostgreSQL on {} to replay WAL (recovery.signal is in place)",
            pgdata.display()
        );
    }
    Ok(())
}
