//! Restore drills: restore a backup into a scratch directory, run PostgreSQL on it, check
//! the data, report, and clean up. The automated form of the restore test runbooks ask for.
//!
//! ```text
//! preflight (not root, scratch usable, socket path fits) ──> plan (as restore)
//!   ──> [scratch created] materialize + recovery settings + drill settings
//!   ──> start, recover to the target, promote ──> checks ──> stop, remove the scratch
//! ```
//! Everything after the scratch directory exists ends in the cleanup, whether the drill
//! passed, failed, or was interrupted: the report records how far it got.
//!
//! The drill server is promoted at the target rather than paused: checks then run as on a
//! normal server (pg_amcheck installs its extension, assertions may use temporary tables),
//! and the drill proves the end-of-recovery checkpoint a real restore needs. Promotion
//! creates a new timeline, so the drill settings turn archiving off: the copy never writes
//! to the repository.

pub mod checks;
pub mod script;

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use pgkeep_format::ClusterName;

use crate::conninfo::ConnConfig;
use crate::error::{Error, Result};
use crate::repository::Repository;
use crate::restore::start::{find_bin_dir, start_and_wait, ReachedPoint, StartOptions};
use crate::restore::{
    plan, restore, tablespace_layout, BackupChoice, Materialized, Plan, RecoverySettings,
    RecoveryTarget, TargetAction, TargetTimeline,
};

pub use checks::{Check, CheckStatus, TableCount};
pub use script::{Script, Statement};

/// What to restore and which checks to run.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Scratch directory (absent or empty); `None`: a new one in the system temp dir.
    pub scratch: Option<PathBuf>,
    /// Leave the scratch directory (server stopped) for inspection.
    pub keep: bool,
    /// Port number of the drill server's socket; `None`: a free loopback port.
    pub port: Option<u16>,
    /// Directory of PostgreSQL's binaries; `None`: found as `restore --start` finds them.
    pub pg_bin: Option<PathBuf>,
    /// Role the drill connects as (a superuser of the restored cluster).
    pub db_user: String,
    pub backup: BackupChoice,
    /// `End` (the latest state) or a time.
    pub target: RecoveryTarget,
    /// `pgkeep … wal-fetch %f %p` for the restored server.
    pub restore_command: String,
    /// Files written at once, and pg_amcheck's jobs.
    pub jobs: usize,
    /// Run pg_amcheck (when the binaries and the extension exist).
    pub amcheck: bool,
    /// pg_amcheck `--heapallindexed`.
    pub heapallindexed: bool,
    /// Tables whose main fork is larger are not counted.
    pub count_max_bytes: u64,
    /// Compare row counts with this server (the source), when given.
    pub source: Option<ConnConfig>,
    /// Assertion files.
    pub scripts: Vec<Script>,
    /// Give up waiting for recovery after this long.
    pub recovery_timeout: Duration,
    /// Waiting for a running `prune` while restoring.
    pub lock: crate::lock::LockOptions,
}

/// How far a failed drill got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Writing the backup's files (damaged data is detected here).
    Restore,
    /// Starting PostgreSQL and replaying WAL to the target.
    Recovery,
    /// Stopped by a signal.
    Interrupted,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restore => "restore",
            Self::Recovery => "recovery",
            Self::Interrupted => "interrupted",
        }
    }
}

/// The stage that failed, and why.
#[derive(Debug)]
pub struct Failure {
    pub stage: Stage,
    pub error: Error,
}

/// What the cleanup did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// A server was running and was stopped.
    pub server_stopped: bool,
    /// The scratch directory was removed (its contents, if it existed before the drill).
    pub scratch_removed: bool,
    /// What could not be cleaned up.
    pub problems: Vec<String>,
}

/// The drill's outcome.
#[derive(Debug)]
pub struct DrillReport {
    pub plan: Plan,
    pub scratch: PathBuf,
    pub port: u16,
    /// The files written, and how long it took.
    pub restored: Option<(Materialized, Duration)>,
    /// Where recovery stopped, and the time from server start until the server was
    /// consistent and promoted.
    pub recovered: Option<(ReachedPoint, Duration)>,
    pub checks: Vec<Check>,
    /// Row counts per table (the row-count check's data).
    pub tables: Vec<TableCount>,
    pub failure: Option<Failure>,
    pub cleanup: Cleanup,
}

impl DrillReport {
    /// Restored, recovered, every check passed (or was skipped), and cleaned up.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
            && self.checks.iter().all(|c| c.status != CheckStatus::Failed)
            && self.cleanup.problems.is_empty()
    }
}

/// The scratch directory: its root, and whether the drill created it.
#[derive(Debug, Clone)]
pub struct Scratch {
    pub root: PathBuf,
    pub created: bool,
}

impl Scratch {
    pub fn pgdata(&self) -> PathBuf {
        self.root.join("pgdata")
    }
}

/// Unix socket paths are limited to 107 bytes (`sun_path`).
const MAX_SOCKET_PATH: usize = 107;

/// Checks what can be checked before the repository is opened: the OS user, the scratch
/// directory, the socket path. Returns the scratch directory (not yet created) and port.
pub fn preflight(opts: &DrillOptions) -> Result<(Scratch, u16)> {
    if effective_uid() == Some(0) {
        return Err(Error::InvalidInput(
            "PostgreSQL refuses to run as root: run the drill as the OS user that runs \
             PostgreSQL (e.g. sudo -u postgres pgkeep drill ...), with a config and \
             passphrase file that user can read"
                .into(),
        ));
    }
    let root = match &opts.scratch {
        Some(dir) => {
            let dir = std::path::absolute(dir)
                .map_err(|e| Error::io(format!("resolving {}", dir.display()), e))?;
            match std::fs::read_dir(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
                Ok(mut entries) => {
                    if entries.next().is_some() {
                        return Err(Error::InvalidInput(format!(
                            "--scratch {} is not empty: the drill needs an absent or empty \
                             directory (it removes everything in it afterwards)",
                            dir.display()
                        )));
                    }
                }
            }
            dir
        }
        None => std::env::temp_dir().join(format!(
            "pgkeep-drill-{}",
            hex::encode(rand::random::<[u8; 6]>())
        )),
    };
    let port = match opts.port {
        Some(p) => p,
        None => free_port()?,
    };
    let scratch = Scratch {
        created: !root.exists(),
        root,
    };
    let socket = scratch.pgdata().join(format!(".s.PGSQL.{port}"));
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(Error::InvalidInput(format!(
            "the drill server's socket {} would be {len} bytes long, over the {MAX_SOCKET_PATH} \
             a Unix socket path may have: choose a shorter --scratch",
            socket.display()
        )));
    }
    Ok((scratch, port))
}

/// The process's effective user id (the owner of `/proc/self`).
fn effective_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// A port no one listens on at the moment. The drill server listens on its Unix socket
/// only; the number names the socket and keys its shared memory.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("finding a free port on 127.0.0.1", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("finding a free port on 127.0.0.1", e))
}

/// A cancellation signal (Ctrl-C, SIGTERM): when it completes, the drill stops what it
/// does, cleans up, and reports `Stage::Interrupted`.
pub type Cancel<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

fn interrupted() -> Error {
    Error::io(
        "the drill was interrupted (SIGINT or SIGTERM)",
        std::io::Error::from(std::io::ErrorKind::Interrupted),
    )
}

/// Runs a drill. `Err` only for what fails before the scratch directory exists (preflight,
/// planning, binaries); everything later is in the report, after the cleanup.
pub async fn run(
    repo: &Repository,
    cluster: &ClusterName,
    opts: &DrillOptions,
    mut cancel: Cancel<'_>,
) -> Result<DrillReport> {
    let (scratch, port) = preflight(opts)?;
    let before = async {
        let plan = plan(
            repo,
            cluster,
            &opts.backup,
            opts.target.clone(),
            TargetTimeline::Latest,
        )
        .await?;
        let major = plan
            .manifest
            .postgres
            .as_ref()
            .map(|p| p.version_num / 10000)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "backup {} has no PostgreSQL facts in its manifest",
                    plan.manifest.backup_id
                ))
            })?;
        let bin_dir = find_bin_dir(opts.pg_bin.as_deref(), major)?;
        Ok::<_, Error>((plan, bin_dir))
    };
    let (plan, bin_dir) = tokio::select! {
        r = before => r?,
        () = &mut cancel => return Err(interrupted()),
    };
    make_scratch(&scratch)?;
    let mut report = DrillReport {
        plan,
        scratch: scratch.root.clone(),
        port,
        restored: None,
        recovered: None,
        checks: Vec::new(),
        tables: Vec::new(),
        failure: None,
        cleanup: Cleanup::default(),
    };
    let outcome = {
        let work = body(repo, opts, &scratch, port, &bin_dir, &mut report);
        tokio::select! {
            r = work => r,
            () = &mut cancel => Err(Failure { stage: Stage::Interrupted, error: interrupted() }),
        }
    };
    report.failure = outcome.err();
    report.cleanup = cleanup(&scratch, &bin_dir, opts.keep).await;
    Ok(report)
}

fn make_scratch(scratch: &Scratch) -> Result<()> {
    if scratch.created {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&scratch.root)
            .map_err(|e| Error::io(format!("creating {}", scratch.root.display()), e))?;
    }
    Ok(())
}

/// Restore, recover, check. Fills `report` as it goes, so an interruption keeps what was
/// done.
async fn body(
    repo: &Repository,
    opts: &DrillOptions,
    scratch: &Scratch,
    port: u16,
    bin_dir: &Path,
    report: &mut DrillReport,
) -> std::result::Result<(), Failure> {
    let pgdata = scratch.pgdata();
    let fail = |stage| move |error| Failure { stage, error };

    // Every tablespace inside the scratch directory: never the original locations, which
    // belong to the source server.
    let map = report
        .plan
        .manifest
        .tablespaces
        .iter()
        .map(|t| {
            (
                t.oid,
                scratch.root.join("tablespaces").join(t.oid.to_string()),
            )
        })
        .collect();
    let layout = tablespace_layout(&report.plan, &pgdata, &map).map_err(fail(Stage::Restore))?;
    let settings = RecoverySettings {
        restore_command: opts.restore_command.clone(),
        target: report.plan.target.clone(),
        exclusive: false,
        timeline: "latest".into(),
        action: TargetAction::Promote,
        comment: format!(
            "pgkeep drill of backup {}: recover to {}",
            report.plan.manifest.backup_id,
            report.plan.target.describe()
        ),
    };
    let started = Instant::now();
    let done = restore(
        repo,
        &report.plan,
        &layout,
        &settings,
        opts.jobs,
        false,
        opts.lock,
    )
    .await
    .map_err(fail(Stage::Restore))?;
    report.restored = Some((done, started.elapsed()));
    drill_settings(scratch).map_err(fail(Stage::Restore))?;

    let start = StartOptions {
        bin_dir: bin_dir.to_owned(),
        port,
        user: opts.db_user.clone(),
        action: TargetAction::Promote,
        timeout: opts.recovery_timeout,
    };
    let started = Instant::now();
    let point = start_and_wait(&pgdata, &start)
        .await
        .map_err(fail(Stage::Recovery))?;
    report.recovered = Some((point, started.elapsed()));

    let server = checks::Local {
        socket_dir: pgdata.to_string_lossy().into_owned(),
        port,
        user: opts.db_user.clone(),
    };
    if opts.amcheck {
        report.checks.push(
            checks::amcheck(
                bin_dir,
                &server,
                opts.heapallindexed,
                opts.jobs,
                &scratch.root,
            )
            .await,
        );
    }
    let (check, tables) =
        checks::row_counts(&server, opts.count_max_bytes, opts.source.as_ref()).await;
    report.checks.push(check);
    report.tables = tables;
    for s in &opts.scripts {
        report.checks.push(checks::assertions(&server, s).await);
    }
    Ok(())
}

const DRILL_BEGIN: &str = "# --- pgkeep drill: settings of the scratch copy (begin) ---";
const DRILL_END: &str = "# --- pgkeep drill: settings of the scratch copy (end) ---";

/// The settings that keep the scratch copy to itself, appended to `postgresql.auto.conf`
/// after the recovery block (the last setting wins): no archiving into the repository, no
/// commands of the source's recovery configuration, no synchronous standbys to wait for,
/// no TLS files from the source's host, and local trust authentication through an
/// `hba_file` in the scratch directory (the socket is in a 0700 directory, so only the
/// drill's OS user reaches it). The log goes to pg_ctl's log file, where the drill reads
/// the server's last messages. Debian keeps `postgresql.conf` outside the data directory;
/// an empty one is written when the backup has none.
fn drill_settings(scratch: &Scratch) -> Result<()> {
    use std::io::Write;
    let pgdata = scratch.pgdata();
    let hba = scratch.root.join("pg_hba.drill.conf");
    write_new(
        &hba,
        "# pgkeep drill: the server listens on a Unix socket in a 0700 directory only\nlocal all all trust\n",
    )?;
    let conf = pgdata.join("postgresql.conf");
    if !conf.exists() {
        write_new(
            &conf,
            "# written by pgkeep drill: the backup had no postgresql.conf\n",
        )?;
    }
    let quote = |p: &Path| crate::restore::recovery::quote_conf(&p.to_string_lossy());
    let block = [
        DRILL_BEGIN.to_owned(),
        "archive_mode = 'off'".into(),
        "archive_cleanup_command = ''".into(),
        "recovery_end_command = ''".into(),
        "primary_conninfo = ''".into(),
        "synchronous_standby_names = ''".into(),
        "ssl = 'off'".into(),
        "logging_collector = 'off'".into(),
        "log_destination = 'stderr'".into(),
        format!("hba_file = {}", quote(&hba)),
        DRILL_END.to_owned(),
    ]
    .join("\n")
        + "\n";
    let auto = pgdata.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&auto)
        .map_err(|e| Error::io(format!("opening {}", auto.display()), e))?;
    f.write_all(block.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", auto.display()), e))
}

fn write_new(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Stops the drill server (immediate: the copy is thrown away) and removes the scratch
/// directory, unless `keep`. Never fails: what it could not do is in `problems`.
pub async fn cleanup(scratch: &Scratch, bin_dir: &Path, keep: bool) -> Cleanup {
    let mut out = Cleanup::default();
    let pgdata = scratch.pgdata();
    if let Some(pid) = running_postmaster(&pgdata) {
        let status = tokio::process::Command::new(bin_dir.join("pg_ctl"))
            .arg("-D")
            .arg(&pgdata)
            .args(["-m", "immediate", "-w", "stop"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
        if running_postmaster(&pgdata).is_some() {
            out.problems.push(format!(
                "the drill server (pid {pid}) did not stop ({}): stop it with pg_ctl -D {} stop",
                match status {
                    Ok(s) => format!("pg_ctl stop: {s}"),
                    Err(e) => format!("running pg_ctl: {e}"),
                },
                pgdata.display()
            ));
            // Removing the files of a running server would leave it failing on its own.
            return out;
        }
        out.server_stopped = true;
    }
    if keep {
        return out;
    }
    let removed = if scratch.created {
        std::fs::remove_dir_all(&scratch.root)
    } else {
        remove_contents(&scratch.root)
    };
    match removed {
        Ok(()) => out.scratch_removed = true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.scratch_removed = true,
        Err(e) => out
            .problems
            .push(format!("removing {}: {e}", scratch.root.display())),
    }
    out
}

/// The pid in `postmaster.pid` if that process is alive.
fn running_postmaster(pgdata: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn remove_contents(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(scratch: Option<PathBuf>) -> DrillOptions {
        DrillOptions {
            scratch,
            keep: false,
            port: Some(5432),
            pg_bin: None,
            db_user: "postgres".into(),
            backup: BackupChoice::Latest,
            target: RecoveryTarget::End,
            restore_command: String::new(),
            jobs: 1,
            amcheck: true,
            heapallindexed: false,
            count_max_bytes: 0,
            source: None,
            scripts: Vec::new(),
            recovery_timeout: Duration::from_secs(1),
            lock: crate::lock::LockOptions::default(),
        }
    }

    #[test]
    fn preflight_refuses_a_busy_scratch_or_a_long_socket_path() {
        if effective_uid() == Some(0) {
            let err = preflight(&opts(None)).expect_err("root");
            assert!(err.to_string().contains("refuses to run as root"), "{err}");
            return;
        }
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("x"), "").expect("file");
        let err = preflight(&opts(Some(dir.path().to_owned()))).expect_err("busy");
        assert!(err.to_string().contains("is not empty"), "{err}");
        let long = dir.path().join("d".repeat(90));
        let err = preflight(&opts(Some(long))).expect_err("long");
        assert!(err.to_string().contains("shorter --scratch"), "{err}");
        let (s, port) = preflight(&opts(Some(dir.path().join("new")))).expect("ok");
        assert!(s.created);
        assert_eq!(port, 5432);
    }

    #[tokio::test]
    async fn cleanup_removes_what_the_drill_made_and_only_that() {
        let dir = tempfile::tempdir().expect("tmp");
        let made = Scratch {
            root: dir.path().join("made"),
            created: true,
        };
        make_scratch(&made).expect("mkdir");
        std::fs::create_dir_all(made.pgdata().join("base")).expect("pgdata");
        let c = cleanup(&made, Path::new("/nonexistent"), false).await;
        assert!(c.scratch_removed && c.problems.is_empty(), "{c:?}");
        assert!(!made.root.exists());

        let given = Scratch {
            root: dir.path().join("given"),
            created: false,
        };
        std::fs::create_dir_all(given.pgdata()).expect("pgdata");
        std::fs::write(given.root.join("f"), "").expect("file");
        let c = cleanup(&given, Path::new("/nonexistent"), false).await;
        assert!(c.scratch_removed, "{c:?}");
        assert!(given.root.exists(), "a directory the user made stays");
        assert_eq!(std::fs::read_dir(&given.root).expect("dir").count(), 0);

        std::fs::create_dir_all(given.pgdata()).expect("pgdata");
        let c = cleanup(&given, Path::new("/nonexistent"), true).await;
        assert!(!c.scratch_removed && c.problems.is_empty(), "{c:?}");
        assert!(given.pgdata().exists(), "--keep keeps");
    }
}
