//! `pgkeep check`: is this server's WAL reaching this repository, and are backups recent?
//!
//! Split in three so the judgement is testable without a server: [`gather`] collects facts
//! (SQL on the server, listings of the repository, the end-to-end archive test), and
//! [`evaluate`] turns facts into [`Finding`]s, each with a status and, for every problem,
//! a concrete fix. [`command`] reads `archive_command`.

pub mod command;
pub mod gather;

use std::time::Duration;

use pgkeep_format::{SegmentName, WalFileName};

use crate::error::Error;
use command::{normalize_location, parse_archive_command, PgkeepCall};

/// A finding's verdict, in the Nagios plugin convention.
///
/// The order is severity for the overall status (monitoring-plugins' `max_state`):
/// a critical problem outranks a warning, which outranks "could not tell".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Ok,
    Unknown,
    Warning,
    Critical,
}

impl Status {
    /// The plugin exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Warning => 1,
            Self::Critical => 2,
            Self::Unknown => 3,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Warning => "WARNING",
            Self::Critical => "CRITICAL",
            Self::Unknown => "UNKNOWN",
        }
    }
}

/// One thing checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Stable identifier (`wal_level`, `backup_age`, ...), for scripts and JSON.
    pub name: &'static str,
    pub status: Status,
    /// What was seen (a setting's value, an age), when there is one.
    pub observed: Option<String>,
    pub message: String,
    /// What to do about it; set for every status but OK.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(name: &'static str, observed: impl Into<Option<String>>, message: String) -> Self {
        Self {
            name,
            status: Status::Ok,
            observed: observed.into(),
            message,
            fix: None,
        }
    }

    fn problem(
        name: &'static str,
        status: Status,
        observed: impl Into<Option<String>>,
        message: String,
        fix: String,
    ) -> Self {
        Self {
            name,
            status,
            observed: observed.into(),
            message,
            fix: Some(fix),
        }
    }
}

/// All findings of one check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// Ages measured, for performance data: (name, seconds, warning threshold seconds).
    pub ages: Vec<(&'static str, u64, u64)>,
}

impl Report {
    /// The worst status of all findings (OK when there are none).
    pub fn status(&self) -> Status {
        self.findings
            .iter()
            .map(|f| f.status)
            .max()
            .unwrap_or(Status::Ok)
    }
}

/// `pg_stat_archiver`, with times in unix µs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiverStats {
    pub archived_count: u64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time_us: Option<i64>,
    pub failed_count: u64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time_us: Option<i64>,
}

impl ArchiverStats {
    /// Whether the last attempt failed (a failure after the last success).
    pub fn failing(&self) -> bool {
        match (self.last_failed_time_us, self.last_archived_time_us) {
            (Some(f), Some(a)) => f > a,
            (Some(_), None) => true,
            _ => false,
        }
    }

    fn last_failure(&self) -> Option<String> {
        let wal = self.last_failed_wal.as_deref()?;
        let at = self
            .last_failed_time_us
            .map(|t| format!(" at {}", format_time(t)))
            .unwrap_or_default();
        Some(format!(
            "last failure archiving {wal}{at} ({} failure(s) since the statistics were reset)",
            self.failed_count
        ))
    }
}

/// A replication slot named in the settings, as the server has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotFacts {
    Missing,
    Present {
        /// `physical` or `logical`.
        slot_type: String,
        active: bool,
        /// `reserved`, `extended`, `unreserved`, `lost` (PostgreSQL 13+).
        wal_status: Option<String>,
        /// WAL the server keeps for the slot (from its `restart_lsn` to the current end).
        retained_bytes: Option<u64>,
    },
}

/// What the server says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFacts {
    /// Where the connection went (no credentials).
    pub target: String,
    pub server_version: String,
    pub in_recovery: bool,
    pub wal_level: String,
    pub archive_mode: String,
    pub archive_command: String,
    /// Empty when unset (and before PostgreSQL 15, which has no archive modules).
    pub archive_library: String,
    pub max_wal_senders: u32,
    pub wal_segment_size: u32,
    pub archiver: ArchiverStats,
    /// The segment being written (`None` on a standby).
    pub current_wal_file: Option<String>,
    /// The configured slot (`None` when no slot is configured).
    pub slot: Option<(String, SlotFacts)>,
}

/// Where a setting that `archive_command`'s pgkeep call uses comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The value and where it was read (`--repo in archive_command`, `config file X`).
    Known { value: String, source: String },
    /// It cannot be seen from here (the server's environment, an unreadable file).
    Hidden { reason: String },
}

/// The repository and cluster `archive_command` stores into, as far as they can be seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveTarget {
    pub repo: Resolved,
    pub cluster: Resolved,
}

/// The repository and its newest backup and WAL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoFacts {
    pub location: String,
    pub backups: usize,
    /// Id and stop time (unix µs) of the newest backup.
    pub newest_backup: Option<(String, i64)>,
    /// Name and storage modification time (unix µs) of the newest archived segment or
    /// `.partial`.
    pub newest_wal: Option<(WalFileName, Option<i64>)>,
}

/// Why the repository could not be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoProblem {
    pub status: Status,
    pub message: String,
    pub fix: String,
}

impl RepoProblem {
    /// Maps an engine error from opening or reading the repository: a wrong passphrase, a
    /// missing repository and unreachable or damaged storage are CRITICAL (backups are not
    /// being kept, or cannot be trusted); anything else is a check that could not run.
    pub fn from_error(e: &Error) -> Self {
        let (status, fix) = match e {
            Error::WrongPassphrase { .. } => (
                Status::Critical,
                "give the passphrase of one of the repository's keys (PGKEEP_PASSPHRASE_FILE, --passphrase-file or passphrase_file in the config file); `pgkeep key list` with a working passphrase shows the keys".to_owned(),
            ),
            Error::NotInitialized { .. } => (
                Status::Critical,
                "check --repo (or PGKEEP_REPO, config key repo); for a new repository run `pgkeep init`".to_owned(),
            ),
            Error::Corrupt { .. } => (
                Status::Critical,
                "the named object is damaged: restore it from a copy of the repository, or take a new backup".to_owned(),
            ),
            Error::Storage { .. } | Error::Io { .. } => (
                Status::Critical,
                "check that the storage is reachable from this host and the credentials (AWS_*, GOOGLE_*, AZURE_*, [storage] in the config file) are valid".to_owned(),
            ),
            _ => (
                Status::Unknown,
                "check the repository settings (--repo, --cluster, --storage-option)".to_owned(),
            ),
        };
        Self {
            status,
            message: e.to_string(),
            fix,
        }
    }
}

/// The end-to-end archive test: a WAL switch and the wait for its segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveTest {
    /// Not asked for (`--archive-test` not given).
    NotRequested,
    /// Asked for, but it could not run (the reason says why).
    NotRun(String),
    Ran {
        segment: String,
        arrived: bool,
        waited: Duration,
        /// `pg_stat_archiver` when the wait ended.
        archiver: Option<ArchiverStats>,
    },
}

/// What the check expects: the settings this pgkeep runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectations {
    /// The repository location in use (`None`: none configured).
    pub repo: Option<String>,
    pub cluster: String,
    /// The slot `wal-stream` uses, when one is configured.
    pub slot: Option<String>,
    /// An `archive_command` for these settings, for fixes.
    pub archive_command: String,
    /// WARNING beyond, CRITICAL beyond twice.
    pub max_backup_age: Duration,
    pub max_wal_age: Duration,
}

/// Everything gathered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `Err`: the server could not be reached or queried (the message says why).
    pub server: Result<ServerFacts, String>,
    /// For an `archive_command` that calls pgkeep: where it stores.
    pub archive_target: Option<ArchiveTarget>,
    pub repository: Result<RepoFacts, RepoProblem>,
    pub archive_test: ArchiveTest,
}

/// Turns facts into findings. `now_us` is the current time (unix µs).
pub fn evaluate(facts: &Facts, expect: &Expectations, now_us: i64) -> Report {
    let mut r = Report::default();
    let test_arrived = matches!(facts.archive_test, ArchiveTest::Ran { arrived: true, .. });
    match &facts.server {
        Ok(s) => server_findings(&mut r, s, facts.archive_target.as_ref(), expect, test_arrived),
        Err(e) => r.findings.push(Finding::problem(
            "connection",
            Status::Unknown,
            None,
            format!("cannot check the server: {e}"),
            "check --pg (or PGKEEP_PG, config key pg), that the server runs, and that pg_hba.conf admits this user to a database (check runs SQL; a `replication` line is not enough)".into(),
        )),
    }
    match &facts.repository {
        Ok(repo) => repo_findings(&mut r, repo, facts.server.as_ref().ok(), expect, now_us),
        Err(p) => r.findings.push(Finding {
            name: "repository",
            status: p.status,
            observed: expect.repo.clone(),
            message: p.message.clone(),
            fix: Some(p.fix.clone()),
        }),
    }
    archive_test_finding(&mut r, &facts.archive_test, expect);
    r
}

/// Whether WAL reaches the repository some other way than `archive_command`.
fn streaming(expect: &Expectations) -> Option<&str> {
    expect.slot.as_deref()
}

fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn set_archive_command(expect: &Expectations) -> String {
    format!(
        "set archive_command = {} in postgresql.conf (or ALTER SYSTEM SET archive_command = ...) and reload: SELECT pg_reload_conf()",
        conf_quote(&expect.archive_command)
    )
}

fn server_findings(
    r: &mut Report,
    s: &ServerFacts,
    target: Option<&ArchiveTarget>,
    expect: &Expectations,
    test_arrived: bool,
) {
    r.findings.push(Finding::ok(
        "connection",
        s.server_version.clone(),
        format!(
            "connected to {} (PostgreSQL {}{})",
            s.target,
            s.server_version,
            if s.in_recovery { ", a standby" } else { "" }
        ),
    ));

    r.findings.push(if s.wal_level == "minimal" {
        Finding::problem(
            "wal_level",
            Status::Critical,
            s.wal_level.clone(),
            "wal_level is minimal: the WAL cannot restore a backup, and neither archiving nor backups over replication work".into(),
            "set wal_level = replica and max_wal_senders = 10 in postgresql.conf (minimal forbids any WAL sender) and restart PostgreSQL".into(),
        )
    } else {
        Finding::ok(
            "wal_level",
            s.wal_level.clone(),
            format!("wal_level is {}", s.wal_level),
        )
    });

    r.findings.push(if s.max_wal_senders == 0 {
        Finding::problem(
            "max_wal_senders",
            Status::Critical,
            "0".to_owned(),
            "max_wal_senders is 0: pgkeep backup and wal-stream connect as WAL senders and will be refused".into(),
            "set max_wal_senders = 10 in postgresql.conf (with wal_level = replica) and restart PostgreSQL".into(),
        )
    } else {
        Finding::ok(
            "max_wal_senders",
            s.max_wal_senders.to_string(),
            format!("max_wal_senders is {}", s.max_wal_senders),
        )
    });

    let archiving_on = match s.archive_mode.as_str() {
        "always" => true,
        "on" => !s.in_recovery,
        _ => false,
    };
    r.findings.push(archive_mode_finding(s, expect));
    r.findings.push(archive_command_finding(
        s,
        target,
        expect,
        archiving_on,
        test_arrived,
    ));
    if archiving_on {
        r.findings.push(archiver_finding(&s.archiver));
    }
    if let Some((name, slot)) = &s.slot {
        r.findings.push(slot_finding(name, slot));
    }
}

fn archive_mode_finding(s: &ServerFacts, expect: &Expectations) -> Finding {
    let observed = s.archive_mode.clone();
    match (s.archive_mode.as_str(), s.in_recovery) {
        ("on", true) => Finding::problem(
            "archive_mode",
            Status::Warning,
            observed,
            "archive_mode is on, but this server is a standby: it archives nothing until promoted (the primary archives)".into(),
            "check the primary instead, or set archive_mode = always here to archive from the standby (restart needed)".into(),
        ),
        ("on" | "always", _) => Finding::ok(
            "archive_mode",
            observed,
            format!("archive_mode is {}", s.archive_mode),
        ),
        _ => match streaming(expect) {
            Some(slot) => Finding::ok(
                "archive_mode",
                observed,
                format!("archive_mode is {}; WAL is archived by wal-stream through slot {slot}", s.archive_mode),
            ),
            None => Finding::problem(
                "archive_mode",
                Status::Critical,
                observed,
                format!("archive_mode is {}: no WAL is archived, so no backup can be recovered to a point in time, nor even made consistent", s.archive_mode),
                "set archive_mode = on in postgresql.conf and restart PostgreSQL (a reload is not enough)".into(),
            ),
        },
    }
}

fn archive_command_finding(
    s: &ServerFacts,
    target: Option<&ArchiveTarget>,
    expect: &Expectations,
    archiving_on: bool,
    test_arrived: bool,
) -> Finding {
    let name = "archive_command";
    let observed = s.archive_command.clone();
    let fix = set_archive_command(expect);
    if !s.archive_library.is_empty() {
        return Finding::problem(
            name,
            Status::Critical,
            format!("archive_library = {}", s.archive_library),
            format!(
                "archive_library is {}, so archive_command is ignored and WAL does not go to pgkeep",
                conf_quote(&s.archive_library)
            ),
            format!("set archive_library = '' and {fix}"),
        );
    }
    if s.archive_command.trim().is_empty() {
        return match (streaming(expect), archiving_on) {
            (Some(slot), false) => Finding::ok(
                name,
                observed,
                format!("archive_command is empty; WAL is archived by wal-stream through slot {slot}"),
            ),
            (Some(_), true) => Finding::problem(
                name,
                Status::Warning,
                observed,
                "archive_command is empty while archive_mode is on: WAL reaches the repository only through wal-stream, and the server keeps every segment in pg_wal until the archiver has a command".into(),
                fix,
            ),
            (None, _) => Finding::problem(
                name,
                Status::Critical,
                observed,
                "archive_command is empty: no WAL reaches the repository (with archive_mode on, the server also keeps every segment in pg_wal until it has a command)".into(),
                fix,
            ),
        };
    }
    let Some(call) = parse_archive_command(&s.archive_command) else {
        if test_arrived {
            return Finding::ok(
                name,
                observed,
                "archive_command is not a direct pgkeep wal-push call, but the archive test proved that it archives into this repository".into(),
            );
        }
        return match streaming(expect) {
            Some(slot) => Finding::ok(
                name,
                observed,
                format!("archive_command does not call pgkeep wal-push; this repository gets WAL from wal-stream through slot {slot}"),
            ),
            None => Finding::problem(
                name,
                Status::Critical,
                observed,
                "archive_command does not call pgkeep wal-push, so WAL does not reach this repository (if it runs a script that calls pgkeep, prove it with --archive-test)".into(),
                fix,
            ),
        };
    };
    pgkeep_call_finding(&call, s, target, expect, test_arrived)
}

fn pgkeep_call_finding(
    call: &PgkeepCall,
    s: &ServerFacts,
    target: Option<&ArchiveTarget>,
    expect: &Expectations,
    test_arrived: bool,
) -> Finding {
    let name = "archive_command";
    let observed = s.archive_command.clone();
    let fix = set_archive_command(expect);
    let passes_file = call
        .file_arg
        .as_deref()
        .is_some_and(|a| a.contains("%p") || a.contains("%f"));
    if !passes_file {
        return Finding::problem(
            name,
            Status::Critical,
            observed,
            "archive_command calls pgkeep wal-push without the file to archive (%p)".into(),
            fix,
        );
    }
    let mut hidden: Vec<String> = Vec::new();
    let mut mismatch: Vec<String> = Vec::new();
    match target.map(|t| &t.repo) {
        Some(Resolved::Known { value, source }) => match &expect.repo {
            Some(ours) if normalize_location(ours) == normalize_location(value) => {}
            Some(ours) => mismatch.push(format!(
                "it stores into repository {value} ({source}), this check uses {ours}"
            )),
            None => hidden.push(format!(
                "it stores into {value} ({source}), but this check has no repository to compare with"
            )),
        },
        Some(Resolved::Hidden { reason }) => hidden.push(reason.clone()),
        None => hidden.push("where it stores was not resolved".into()),
    }
    match target.map(|t| &t.cluster) {
        Some(Resolved::Known { value, source }) if *value != expect.cluster => {
            mismatch.push(format!(
                "it stores as cluster {value} ({source}), this check uses cluster {}",
                expect.cluster
            ))
        }
        Some(Resolved::Hidden { reason }) if !hidden.contains(reason) => {
            hidden.push(reason.clone())
        }
        _ => {}
    }
    if !mismatch.is_empty() {
        return Finding::problem(
            name,
            Status::Critical,
            observed,
            format!(
                "archive_command calls pgkeep wal-push, but {}",
                mismatch.join("; ")
            ),
            format!("make archive_command and this check use the same settings (the same --config is simplest): {fix}"),
        );
    }
    if !hidden.is_empty() {
        if test_arrived {
            return Finding::ok(
                name,
                observed,
                "archive_command calls pgkeep wal-push, and the archive test proved that it archives into this repository".into(),
            );
        }
        return Finding::problem(
            name,
            Status::Warning,
            observed,
            format!(
                "archive_command calls pgkeep wal-push, but it cannot be confirmed that it stores into this repository: {}",
                hidden.join("; ")
            ),
            format!("name the config file in the command so it can be checked, e.g. {fix}; or run check --archive-test"),
        );
    }
    Finding::ok(
        name,
        observed,
        format!(
            "archive_command calls pgkeep wal-push into this repository (cluster {})",
            expect.cluster
        ),
    )
}

fn archiver_finding(a: &ArchiverStats) -> Finding {
    let observed = format!("{} archived, {} failed", a.archived_count, a.failed_count);
    if a.failing() {
        return Finding::problem(
            "archiver",
            Status::Critical,
            observed,
            format!(
                "the archiver is failing: {}; WAL piles up in pg_wal until it succeeds",
                a.last_failure().unwrap_or_else(|| "its last attempt failed".into())
            ),
            "read archive_command's error in the server log (running the command by hand as the server's OS user shows it too)".into(),
        );
    }
    let last = match (&a.last_archived_wal, a.last_archived_time_us) {
        (Some(w), Some(t)) => format!("last archived {w} at {}", format_time(t)),
        _ => "nothing archived since the statistics were reset".into(),
    };
    let earlier = match a.last_failure() {
        Some(f) => format!("; an earlier {f}, since succeeded"),
        None => String::new(),
    };
    Finding::ok("archiver", observed, format!("{last}{earlier}"))
}

fn slot_finding(name: &str, slot: &SlotFacts) -> Finding {
    let start = format!("start pgkeep wal-stream --slot {name} (as a service, so it restarts)");
    match slot {
        SlotFacts::Missing => Finding::problem(
            "slot",
            Status::Critical,
            None,
            format!("replication slot {name} does not exist: wal-stream has not run against this server"),
            format!("{start}; it creates the slot. Or remove the slot setting if WAL is not streamed"),
        ),
        SlotFacts::Present {
            slot_type,
            active,
            wal_status,
            retained_bytes,
        } => {
            let retained = retained_bytes
                .map(|b| format!(", the server keeps {} of WAL for it", format_bytes(b)))
                .unwrap_or_default();
            let observed = format!(
                "{slot_type}, {}, wal_status {}",
                if *active { "active" } else { "inactive" },
                wal_status.as_deref().unwrap_or("unknown")
            );
            if slot_type != "physical" {
                Finding::problem(
                    "slot",
                    Status::Critical,
                    observed,
                    format!("replication slot {name} is a {slot_type} slot; wal-stream needs a physical one"),
                    "use another --slot name (wal-stream creates a physical slot), or drop this one if nothing else uses it".into(),
                )
            } else if wal_status.as_deref() == Some("lost") {
                Finding::problem(
                    "slot",
                    Status::Critical,
                    observed,
                    format!("replication slot {name} lost WAL it needed (max_slot_wal_keep_size): the archive has a gap"),
                    format!("drop the slot (SELECT pg_drop_replication_slot('{name}')), {start}, and take a new backup right away"),
                )
            } else if !active {
                Finding::problem(
                    "slot",
                    Status::Warning,
                    observed,
                    format!("replication slot {name} is not in use: wal-stream is not connected{retained}"),
                    start,
                )
            } else if wal_status.as_deref() == Some("unreserved") {
                Finding::problem(
                    "slot",
                    Status::Warning,
                    observed,
                    format!("replication slot {name} is about to lose WAL it needs (wal_status unreserved){retained}"),
                    "check that wal-stream keeps up (its lag metrics), or raise max_slot_wal_keep_size".into(),
                )
            } else {
                Finding::ok(
                    "slot",
                    observed,
                    format!("replication slot {name} is in use by a WAL receiver{retained}"),
                )
            }
        }
    }
}

/// WARNING beyond `limit`, CRITICAL beyond twice `limit`.
fn age_status(age: Duration, limit: Duration) -> Status {
    if age > limit.saturating_mul(2) {
        Status::Critical
    } else if age > limit {
        Status::Warning
    } else {
        Status::Ok
    }
}

fn repo_findings(
    r: &mut Report,
    repo: &RepoFacts,
    server: Option<&ServerFacts>,
    expect: &Expectations,
    now_us: i64,
) {
    r.findings.push(Finding::ok(
        "repository",
        repo.location.clone(),
        format!(
            "opened {} with the key; cluster {} has {} backup(s)",
            repo.location, expect.cluster, repo.backups
        ),
    ));
    let limit = expect.max_backup_age;
    r.findings.push(match &repo.newest_backup {
        None => Finding::problem(
            "backup_age",
            Status::Critical,
            None,
            format!("cluster {} has no backup", expect.cluster),
            "take one: pgkeep backup --pg '...' (and schedule it, e.g. daily)".into(),
        ),
        Some((id, stop_us)) => {
            let age = age_since(*stop_us, now_us);
            r.ages.push(("backup_age", age.as_secs(), limit.as_secs()));
            let status = age_status(age, limit);
            let message = format!(
                "newest backup {id} finished {} ago (limit {})",
                format_age(age),
                format_age(limit)
            );
            if status == Status::Ok {
                Finding::ok("backup_age", format_age(age), message)
            } else {
                Finding::problem(
                    "backup_age",
                    status,
                    format_age(age),
                    format!("{message}; CRITICAL beyond twice the limit"),
                    "check the backup job (cron or systemd timer) and its log, then run pgkeep backup".into(),
                )
            }
        }
    });
    let wal = wal_age_finding(repo, server, expect, now_us, r);
    r.findings.push(wal);
}

fn wal_age_finding(
    repo: &RepoFacts,
    server: Option<&ServerFacts>,
    expect: &Expectations,
    now_us: i64,
    r: &mut Report,
) -> Finding {
    let limit = expect.max_wal_age;
    let Some((name, modified)) = &repo.newest_wal else {
        return Finding::problem(
            "wal_age",
            Status::Critical,
            None,
            format!("the archive of cluster {} holds no WAL", expect.cluster),
            format!(
                "archive WAL: {} (or run pgkeep wal-stream)",
                set_archive_command(expect)
            ),
        );
    };
    let Some(modified) = modified else {
        return Finding::problem(
            "wal_age",
            Status::Unknown,
            name.to_string(),
            format!("newest archived WAL file {name}: the storage reports no modification time"),
            "run check with --archive-test to prove archiving end to end".into(),
        );
    };
    let age = age_since(*modified, now_us);
    r.ages.push(("wal_age", age.as_secs(), limit.as_secs()));
    let message = format!(
        "newest archived WAL file {name} stored {} ago (limit {})",
        format_age(age),
        format_age(limit)
    );
    let status = age_status(age, limit);
    if status == Status::Ok {
        return Finding::ok("wal_age", format_age(age), message);
    }
    // An idle server completes no segment: an old newest segment is then up to date.
    if let Some(current) = server.and_then(|s| idle_since(s, name)) {
        return Finding::ok(
            "wal_age",
            format_age(age),
            format!("{message}, but nothing waits: the server is still filling {current} (set archive_timeout to bound how long WAL stays unarchived on a quiet server)"),
        );
    }
    Finding::problem(
        "wal_age",
        status,
        format_age(age),
        format!("{message}; CRITICAL beyond twice the limit"),
        "see the archive_command and archiver findings and the server log; if the server is merely quiet, set archive_timeout (e.g. 5min) so segments complete".into(),
    )
}

/// The segment the server fills, if it directly follows `newest` (a complete segment) on
/// the same timeline: nothing is waiting to be archived.
fn idle_since(s: &ServerFacts, newest: &WalFileName) -> Option<String> {
    let current = s.current_wal_file.as_deref()?;
    let size = s.wal_segment_size;
    let cur = SegmentName::parse(current, size).ok()?;
    let new = SegmentName::parse(newest.as_str(), size).ok()?;
    (cur.timeline == new.timeline && cur.segment == new.segment + 1).then(|| current.to_owned())
}

fn archive_test_finding(r: &mut Report, test: &ArchiveTest, expect: &Expectations) {
    let name = "archive_test";
    match test {
        ArchiveTest::NotRequested => {}
        ArchiveTest::NotRun(why) => r.findings.push(Finding::problem(
            name,
            Status::Unknown,
            None,
            format!("archive test not run: {why}"),
            "fix the findings above, then run check --archive-test again".into(),
        )),
        ArchiveTest::Ran {
            segment,
            arrived: true,
            waited,
            ..
        } => r.findings.push(Finding::ok(
            name,
            segment.clone(),
            format!(
                "switched WAL; segment {segment} was in the archive after {:.1} s",
                waited.as_secs_f64()
            ),
        )),
        ArchiveTest::Ran {
            segment,
            arrived: false,
            waited,
            archiver,
        } => {
            let failure = archiver
                .as_ref()
                .filter(|a| a.failing())
                .and_then(ArchiverStats::last_failure)
                .map(|f| format!("; {f}"))
                .unwrap_or_default();
            r.findings.push(Finding::problem(
                name,
                Status::Critical,
                segment.clone(),
                format!(
                    "switched WAL, but segment {segment} did not reach the archive within {:.0} s{failure}",
                    waited.as_secs_f64()
                ),
                format!(
                    "read the archiver's errors in the server log; archive_command should be {}{}",
                    conf_quote(&expect.archive_command),
                    streaming(expect)
                        .map(|s| format!(" (or wal-stream running on slot {s})"))
                        .unwrap_or_default()
                ),
            ));
        }
    }
}

fn age_since(then_us: i64, now_us: i64) -> Duration {
    Duration::from_micros(now_us.saturating_sub(then_us).max(0) as u64)
}

/// An age rounded to what a human reads: seconds below an hour, minutes above.
pub fn format_age(d: Duration) -> String {
    let secs = d.as_secs();
    let rounded = if secs >= 3600 { secs - secs % 60 } else { secs };
    humantime::format_duration(Duration::from_secs(rounded)).to_string()
}

fn format_time(us: i64) -> String {
    crate::timestamp::format_timestamp_us(us - us.rem_euclid(1_000_000)).replace(".000000", "")
}

fn format_bytes(n: u64) -> String {
    const MIB: u64 = 1 << 20;
    if n >= MIB {
        format!("{:.1} MiB", n as f64 / MIB as f64)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests;
