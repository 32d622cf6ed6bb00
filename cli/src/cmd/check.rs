//! `pgkeep check`: a Nagios-style plugin over `pgkeep_engine::check`. Gathers the facts,
//! resolves where `archive_command` stores (reading the config file it names), prints the
//! findings and returns the plugin's exit code itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgkeep_engine::check::command::{normalize_location, shell_quote, PgkeepCall};
use pgkeep_engine::check::gather::{
    archive_test, archive_test_blocker, connect, repo_facts, server_facts,
};
use pgkeep_engine::check::{
    evaluate, ArchiveTarget, ArchiveTest, Expectations, Facts, Finding, RepoProblem, Report,
    Resolved, Status,
};
use pgkeep_engine::wal::WalArchive;
use pgkeep_engine::{Repository, Store};
use serde::Serialize;

use crate::cli::CheckArgs;
use crate::cmd;
use crate::exit::UsageError;
use crate::output::Output;
use crate::secret;
use crate::settings::{pick, ConfigFile, Settings, DEFAULT_CONFIG};

/// UNKNOWN: the check could not run (bad usage, unusable settings). `main` ends even clap's
/// usage errors of `check` with it, instead of 2, which a monitoring system reads as CRITICAL.
pub(crate) const UNKNOWN: u8 = 3;

/// Connection attempts give up after this long unless the connection string says otherwise:
/// a monitoring check must answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The JSON document. `schema` changes only when a field changes meaning or disappears.
#[derive(Serialize)]
struct CheckJson {
    schema: u32,
    /// ok, warning, critical or unknown: the worst finding.
    status: &'static str,
    exit_code: u8,
    summary: String,
    findings: Vec<FindingJson>,
    /// Ages measured, with their thresholds.
    ages: Vec<AgeJson>,
}

#[derive(Serialize)]
struct FindingJson {
    name: &'static str,
    status: &'static str,
    observed: Option<String>,
    message: String,
    fix: Option<String>,
}

#[derive(Serialize)]
struct AgeJson {
    name: &'static str,
    seconds: u64,
    warning_seconds: u64,
    critical_seconds: u64,
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Warning => "warning",
        Status::Critical => "critical",
        Status::Unknown => "unknown",
    }
}

/// Runs the check and returns its exit code (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
pub(crate) async fn run(s: &Settings, a: &CheckArgs, out: &Output) -> u8 {
    let report = match check(s, a).await {
        Ok(r) => r,
        Err(e) => Report {
            findings: vec![Finding {
                name: "usage",
                status: Status::Unknown,
                observed: None,
                message: format!("{e:#}"),
                fix: Some("see pgkeep check --help".into()),
            }],
            ages: Vec::new(),
        },
    };
    let status = report.status();
    let doc = CheckJson {
        schema: 1,
        status: status_name(status),
        exit_code: status.exit_code(),
        summary: summary(&report),
        findings: report
            .findings
            .iter()
            .map(|f| FindingJson {
                name: f.name,
                status: status_name(f.status),
                observed: f.observed.clone(),
                message: f.message.clone(),
                fix: f.fix.clone(),
            })
            .collect(),
        ages: report
            .ages
            .iter()
            .map(|(name, seconds, warn)| AgeJson {
                name,
                seconds: *seconds,
                warning_seconds: *warn,
                critical_seconds: warn.saturating_mul(2),
            })
            .collect(),
    };
    if let Err(e) = out.emit(&doc, || human(&report, &doc.summary)) {
        eprintln!("pgkeep: {e:#}");
        return UNKNOWN;
    }
    status.exit_code()
}

/// The Nagios status line: `PGKEEP CRITICAL - 2 critical (wal_level, archive_mode) | perfdata`.
fn summary(r: &Report) -> String {
    let status = r.status();
    let mut parts = Vec::new();
    for s in [Status::Critical, Status::Warning, Status::Unknown] {
        let names: Vec<&str> = r
            .findings
            .iter()
            .filter(|f| f.status == s)
            .map(|f| f.name)
            .collect();
        if !names.is_empty() {
            parts.push(format!(
                "{} {} ({})",
                names.len(),
                status_name(s),
                names.join(", ")
            ));
        }
    }
    let text = if parts.is_empty() {
        format!("{} checks passed", r.findings.len())
    } else {
        parts.join(", ")
    };
    let perf: Vec<String> = r
        .ages
        .iter()
        .map(|(name, secs, warn)| format!("{name}={secs}s;{warn};{};0;", warn.saturating_mul(2)))
        .collect();
    let perf = if perf.is_empty() {
        String::new()
    } else {
        format!(" | {}", perf.join(" "))
    };
    format!("PGKEEP {} - {text}{perf}", status.label())
}

fn human(r: &Report, summary: &str) -> String {
    let mut lines = vec![summary.to_owned()];
    for f in &r.findings {
        lines.push(format!("{} {}: {}", f.status.label(), f.name, f.message));
        if let Some(fix) = &f.fix {
            lines.push(format!("  fix: {fix}"));
        }
    }
    lines.join("\n")
}

/// A duration setting (humantime syntax), given or `default`.
fn duration(given: Option<String>, what: &str, default: &str) -> Result<Duration, UsageError> {
    let text = given.unwrap_or_else(|| default.to_owned());
    let d = humantime::parse_duration(&text).map_err(|e| {
        UsageError(format!(
            "{what} {text:?}: {e} (write a duration such as 90s, 15min, 26h or 7d)"
        ))
    })?;
    if d.is_zero() {
        return Err(UsageError(format!("{what} must be longer than 0")));
    }
    Ok(d)
}

/// Slot names are `[a-z0-9_]`, at most 63 characters (PostgreSQL's rule).
fn check_slot(name: &str) -> Result<(), UsageError> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(UsageError(format!(
            "--slot {name:?}: a replication slot name is 1 to 63 of a-z, 0-9 and _"
        )));
    }
    Ok(())
}

async fn check(s: &Settings, a: &CheckArgs) -> anyhow::Result<Report> {
    let max_backup_age = duration(
        pick(
            a.max_backup_age.clone(),
            "PGKEEP_MAX_BACKUP_AGE",
            s.file.max_backup_age.clone(),
        )?,
        "--max-backup-age",
        "26h",
    )?;
    let max_wal_age = duration(
        pick(
            a.max_wal_age.clone(),
            "PGKEEP_MAX_WAL_AGE",
            s.file.max_wal_age.clone(),
        )?,
        "--max-wal-age",
        "1h",
    )?;
    let archive_timeout = duration(a.archive_timeout.clone(), "--archive-timeout", "60s")?;
    let slot = pick(a.slot.clone(), "PGKEEP_SLOT", s.file.slot.clone())?;
    if let Some(name) = &slot {
        check_slot(name)?;
    }
    let mut conn_cfg = cmd::conn_config(s, a.pg.clone())?;
    if conn_cfg.connect_timeout.is_none() {
        conn_cfg.connect_timeout = Some(CONNECT_TIMEOUT);
    }
    let expect = Expectations {
        repo: s.repo.as_deref().map(canonical_location),
        cluster: s.cluster.clone(),
        slot: slot.clone(),
        archive_command: suggested_archive_command(s),
        max_backup_age,
        max_wal_age,
    };

    let mut conn = None;
    let server = match connect(&conn_cfg).await {
        Ok(mut c) => {
            let facts = server_facts(&mut c, slot.as_deref()).await;
            conn = Some(c);
            facts.map_err(|e| format!("querying {}: {e}", conn_cfg.display_target()))
        }
        Err(e) => Err(e.to_string()),
    };
    let archive_target = server.as_ref().ok().and_then(|srv| {
        pgkeep_engine::check::command::parse_archive_command(&srv.archive_command)
            .map(|call| resolve_target(&call))
    });
    let (repository, archive) = match open_repository(s).await {
        Ok((repo, cluster)) => match repo_facts(&repo, &cluster).await {
            Ok(f) => (Ok(f), Some(WalArchive::new(repo, cluster))),
            Err(e) => (Err(RepoProblem::from_error(&e)), None),
        },
        Err(p) => (Err(p), None),
    };
    let archive_test = if !a.archive_test {
        ArchiveTest::NotRequested
    } else {
        match (&server, conn.as_mut(), &archive) {
            (Err(_), _, _) | (_, None, _) => {
                ArchiveTest::NotRun("the server could not be checked".into())
            }
            (_, _, None) => ArchiveTest::NotRun("the repository could not be opened".into()),
            (Ok(srv), Some(c), Some(archive)) => match archive_test_blocker(srv, slot.is_some()) {
                Some(why) => ArchiveTest::NotRun(why),
                None => self::archive_test(c, archive, archive_timeout).await,
            },
        }
    };
    if let Some(c) = conn {
        let _ = c.close().await;
    }
    let facts = Facts {
        server,
        archive_target,
        repository,
        archive_test,
    };
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    Ok(evaluate(&facts, &expect, now_us))
}

/// Opens the repository; every failure becomes a finding (a check reports, it does not
/// stop at the first problem).
async fn open_repository(
    s: &Settings,
) -> Result<(Repository, pgkeep_engine::format::ClusterName), RepoProblem> {
    let usage = |message: String, fix: &str| RepoProblem {
        status: Status::Unknown,
        message,
        fix: fix.to_owned(),
    };
    let cluster = cmd::cluster(s).map_err(|e| usage(format!("{e:#}"), "give a valid --cluster"))?;
    let location = s.repo().map_err(|e| {
        usage(
            e.to_string(),
            "name the repository archive_command stores into: --repo, PGKEEP_REPO, or repo in the config file",
        )
    })?;
    let store = Store::open(location, &s.storage_options, false)
        .map_err(|e| RepoProblem::from_error(&e))?;
    let pass = secret::repository(s, false).map_err(|e| {
        usage(
            e.to_string(),
            "give the check a passphrase: PGKEEP_PASSPHRASE_FILE, --passphrase-file or passphrase_file in the config file",
        )
    })?;
    let repo = Repository::open(store, &pass)
        .await
        .map_err(|e| RepoProblem::from_error(&e))?;
    Ok((repo, cluster))
}

/// A local repository path with symbolic links resolved, so two spellings of one directory
/// compare equal; other locations unchanged.
fn canonical_location(location: &str) -> String {
    let normalized = normalize_location(location);
    if normalized.contains("://") {
        return normalized;
    }
    std::fs::canonicalize(&normalized)
        .map(|p| p.display().to_string())
        .unwrap_or(normalized)
}

/// Where the `pgkeep wal-push` call in `archive_command` stores: its own flags first, then
/// the config file it names (or the default one, as pgkeep itself would read it).
fn resolve_target(call: &PgkeepCall) -> ArchiveTarget {
    resolve_target_with(call, Path::new(DEFAULT_CONFIG))
}

/// [`resolve_target`] with the default config file at `default`. Without `--config` the
/// call reads `default` whenever it exists, as `Settings::resolve` does, also when it gives
/// `--repo`: the file can still name its cluster.
fn resolve_target_with(call: &PgkeepCall, default: &Path) -> ArchiveTarget {
    let config_path = call
        .config
        .as_deref()
        .map(PathBuf::from)
        .or_else(|| default.exists().then(|| default.to_path_buf()));
    let config: Option<(String, Result<ConfigFile, String>)> = config_path.map(|p| {
        let shown = p.display().to_string();
        let loaded = if p.is_relative() {
            Err("it is relative to the server's data directory".to_owned())
        } else {
            ConfigFile::load(Some(&p))
                .map(|(f, _)| f)
                .map_err(|e| e.to_string())
        };
        (shown, loaded)
    });
    let repo = match (&call.repo, &config) {
        (Some(r), _) => Resolved::Known {
            value: canonical_location(r),
            source: "--repo in archive_command".into(),
        },
        (None, Some((path, Ok(file)))) => match &file.repo {
            Some(r) => Resolved::Known {
                value: canonical_location(r),
                source: format!("config file {path}"),
            },
            None => Resolved::Hidden {
                reason: format!("config file {path} names no repo, so it comes from the server's environment (PGKEEP_REPO)"),
            },
        },
        (None, Some((path, Err(e)))) => Resolved::Hidden {
            reason: format!("cannot read config file {path} from here: {e}"),
        },
        (None, None) => Resolved::Hidden {
            reason: "archive_command names neither --repo nor --config, so the repository comes from the server's environment (PGKEEP_REPO)".into(),
        },
    };
    let cluster = match (&call.cluster, &config) {
        (Some(c), _) => Resolved::Known {
            value: c.clone(),
            source: "--cluster in archive_command".into(),
        },
        (None, Some((path, Ok(file)))) => Resolved::Known {
            value: file.cluster.clone().unwrap_or_else(|| "main".into()),
            source: format!("config file {path}"),
        },
        (None, Some((path, Err(e)))) => Resolved::Hidden {
            reason: format!("cannot read config file {path} from here: {e}"),
        },
        (None, None) => Resolved::Known {
            value: "main".into(),
            source: "the default".into(),
        },
    };
    ArchiveTarget { repo, cluster }
}

/// An `archive_command` for the settings this check runs with: this binary's absolute path,
/// the config file if there is one, and what the flags or environment override.
fn suggested_archive_command(s: &Settings) -> String {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "pgkeep".into());
    let mut words = vec![shell_quote(&exe)];
    // Without a config file, `s.file` is empty and everything in use must be spelled out.
    if let Some(config) = &s.config_path {
        let abs = std::fs::canonicalize(config).unwrap_or_else(|_| config.clone());
        words.push(format!(
            "--config {}",
            shell_quote(&abs.display().to_string())
        ));
    }
    // The server's pgkeep needs a passphrase file: PGKEEP_PASSPHRASE given to this check
    // does not reach it (and a passphrase never belongs in a command line).
    match &s.passphrase_file {
        Some(p) if s.file.passphrase_file.as_ref() == Some(p) => {}
        Some(p) => words.push(format!(
            "--passphrase-file {}",
            shell_quote(&p.display().to_string())
        )),
        None => words.push("--passphrase-file PASSPHRASE_FILE".into()),
    }
    match &s.repo {
        Some(r) if s.file.repo.as_ref() == Some(r) => {}
        Some(r) => words.push(format!("--repo {}", shell_quote(r))),
        None => words.push("--repo REPOSITORY".into()),
    }
    if s.cluster != s.file.cluster.as_deref().unwrap_or("main") {
        words.push(format!("--cluster {}", shell_quote(&s.cluster)));
    }
    words.push("wal-push %p".into());
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(r: &Resolved) -> (&str, &str) {
        match r {
            Resolved::Known { value, source } => (value, source),
            Resolved::Hidden { reason } => panic!("hidden: {reason}"),
        }
    }

    #[test]
    fn call_with_repo_but_no_config_still_reads_the_default_config_for_its_cluster() {
        let dir = tempfile::tempdir().expect("tmp");
        let default = dir.path().join("pgkeep.toml");
        let call = PgkeepCall {
            program: "pgkeep".into(),
            repo: Some("/srv/repo".into()),
            file_arg: Some("%p".into()),
            ..PgkeepCall::default()
        };

        // No default file: the cluster is the built-in default.
        let t = resolve_target_with(&call, &default);
        assert_eq!(known(&t.cluster), ("main", "the default"));

        // With one, `pgkeep --repo R wal-push` takes its cluster from it, and the repo from
        // the flag.
        std::fs::write(&default, "repo = \"/elsewhere\"\ncluster = \"db1\"\n").expect("write");
        let t = resolve_target_with(&call, &default);
        assert_eq!(known(&t.repo), ("/srv/repo", "--repo in archive_command"));
        let shown = format!("config file {}", default.display());
        assert_eq!(known(&t.cluster), ("db1", shown.as_str()));

        // A --cluster in the call wins over the file.
        let call = PgkeepCall {
            cluster: Some("db2".into()),
            ..call
        };
        let t = resolve_target_with(&call, &default);
        assert_eq!(known(&t.cluster), ("db2", "--cluster in archive_command"));
    }
}
