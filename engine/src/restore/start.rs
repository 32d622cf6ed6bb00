//! `restore --start`: run PostgreSQL on the restored directory, wait until recovery reaches
//! its target (or fails), and report where it stopped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgkeep_format::Lsn;

use crate::conninfo::{self, ConnConfig};
use crate::error::{Error, Result};
use crate::replication::{PgConnection, ReplicationMode};
use crate::restore::recovery::TargetAction;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Directory with `pg_ctl` and `postgres`.
    pub bin_dir: PathBuf,
    pub port: u16,
    /// Role to connect as for the progress queries (the cluster's bootstrap superuser).
    pub user: String,
    pub action: TargetAction,
    /// Give up after this long.
    pub timeout: Duration,
}

/// Where recovery stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReachedPoint {
    /// Still in recovery (paused at the target) or promoted.
    pub in_recovery: bool,
    pub replay_lsn: Option<Lsn>,
    /// The last replayed transaction's commit time, as PostgreSQL prints it.
    pub last_commit: Option<String>,
    pub timeline: Option<u32>,
    /// The server was stopped (target action `shutdown`).
    pub stopped: bool,
}

/// Finds PostgreSQL's binaries of `major`: `explicit`, else `pg_ctl` on PATH, else the
/// standard locations (Debian, RHEL, source builds). The version must match.
pub fn find_bin_dir(explicit: Option<&Path>, major: u32) -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = explicit {
        candidates.push(dir.to_owned());
    } else {
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
        candidates.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
        candidates.push(PathBuf::from(format!("/usr/pgsql-{major}/bin")));
        candidates.push(PathBuf::from("/usr/local/pgsql/bin"));
    }
    let mut seen = Vec::new();
    for dir in candidates {
        let pg_ctl = dir.join("pg_ctl");
        if !pg_ctl.is_file() {
            continue;
        }
        match server_major(&dir) {
            Some(m) if m == major => return Ok(dir),
            Some(m) => seen.push(format!("{} ({m})", dir.display())),
            None => seen.push(format!("{} (version unknown)", dir.display())),
        }
    }
    Err(Error::InvalidInput(format!(
        "no PostgreSQL {major} binaries found{}: pass --pg-bin DIR",
        if seen.is_empty() {
            String::new()
        } else {
            format!(" (found other versions: {})", seen.join(", "))
        }
    )))
}

/// The major version `postgres --version` reports.
fn server_major(dir: &Path) -> Option<u32> {
    let out = std::process::Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(2)?;
    version.split(['.', 'b', 'r', 'd']).next()?.parse().ok()
}

/// Starts the server on `pgdata` (socket in `pgdata`, no TCP), waits for recovery to reach
/// its target, and reports. Recovery failing (the server exits) is an error carrying the
/// server's own last messages.
pub async fn start_and_wait(pgdata: &Path, opts: &StartOptions) -> Result<ReachedPoint> {
    let log = pgdata.join("pgkeep-restore.log");
    let socket_dir = pgdata.to_string_lossy().into_owned();
    let server_opts = format!(
        "-p {} -c listen_addresses='' -c unix_socket_directories='{}'",
        opts.port,
        socket_dir.replace('\'', "\\'")
    );
    let pg_ctl = opts.bin_dir.join("pg_ctl");
    let status = tokio::process::Command::new(&pg_ctl)
        .arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(&log)
        .args(["-o", &server_opts, "start"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| Error::io(format!("running {} start", pg_ctl.display()), e))?;
    if !status.success() {
        return Err(Error::InvalidInput(format!(
            "pg_ctl start -D {} failed (log {}): {}",
            pgdata.display(),
            log.display(),
            log_tail(&log)
        )));
    }
    let cfg = local_conn(&socket_dir, opts.port, &opts.user)?;
    let deadline = Instant::now() + opts.timeout;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let running = pgdata.join("postmaster.pid").exists();
        if !running {
            // Stopped: by target action `shutdown`, or by a failed recovery.
            let tail = log_tail(&log);
            if opts.action == TargetAction::Shutdown && !tail.contains("FATAL") {
                return Ok(ReachedPoint {
                    in_recovery: true,
                    replay_lsn: None,
                    last_commit: None,
                    timeline: None,
                    stopped: true,
                });
            }
            return Err(Error::InvalidInput(format!(
                "recovery failed; the server said: {tail}"
            )));
        }
        match progress(&cfg).await {
            Ok(point) => {
                let done = match opts.action {
                    TargetAction::Pause => point.0 == "paused" || !point.1.in_recovery,
                    TargetAction::Promote => !point.1.in_recovery,
                    TargetAction::Shutdown => false,
                };
                if done {
                    return Ok(point.1);
                }
            }
            // Refused for who we are (no such role, authentication): waiting cannot help.
            // Other errors ("the database system is starting up") pass with time.
            Err(Error::Postgres(e))
                if e.sqlstate()
                    .is_some_and(|s| s.starts_with("28") || s == "3D000") =>
            {
                return Err(Error::InvalidInput(format!(
                    "the restored server refuses the progress queries as role {:?}: {e}",
                    opts.user
                )));
            }
            Err(_) => {}
        }
        if Instant::now() > deadline {
            return Err(Error::InvalidInput(format!(
                "recovery did not reach its target within {:?}; the server keeps running. Its log: {}",
                opts.timeout,
                log.display()
            )));
        }
    }
}

/// Stops the server (`pg_ctl stop -m fast`).
pub async fn stop(pgdata: &Path, bin_dir: &Path) -> Result<()> {
    let pg_ctl = bin_dir.join("pg_ctl");
    let status = tokio::process::Command::new(&pg_ctl)
        .arg("-D")
        .arg(pgdata)
        .args(["-m", "fast", "-w", "stop"])
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| Error::io(format!("running {} stop", pg_ctl.display()), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "pg_ctl stop -D {} failed ({status}): see {}, or stop it with \
             `pg_ctl stop -D {} -m immediate`",
            pgdata.display(),
            pgdata.join("pgkeep-restore.log").display(),
            pgdata.display()
        )))
    }
}

fn local_conn(socket_dir: &str, port: u16, user: &str) -> Result<ConnConfig> {
    let bad = |e: conninfo::ConnInfoError| Error::InvalidInput(e.to_string());
    let mut params = conninfo::Params::new();
    for (k, v) in [
        ("dbname", "postgres"),
        ("sslmode", "disable"),
        ("host", socket_dir),
        ("port", &port.to_string()),
        ("user", user),
    ] {
        params.set(k, v).map_err(bad)?;
    }
    conninfo::resolve(&params, &|_| None, user, None).map_err(bad)
}

/// (pause state, point) from the running server.
async fn progress(cfg: &ConnConfig) -> Result<(String, ReachedPoint)> {
    let mut conn = PgConnection::connect(cfg, ReplicationMode::None).await?;
    let version = conn.server_version_num().unwrap_or(0);
    let pause = if version >= 140_000 {
        "pg_get_wal_replay_pause_state()"
    } else {
        "CASE WHEN pg_is_wal_replay_paused() THEN 'paused' ELSE 'not paused' END"
    };
    let row = conn
        .query_row(&format!(
            "SELECT pg_is_in_recovery(), \
             CASE WHEN pg_is_in_recovery() THEN {pause} ELSE 'promoted' END, \
             pg_last_wal_replay_lsn(), pg_last_xact_replay_timestamp(), \
             (SELECT timeline_id FROM pg_control_checkpoint())"
        ))
        .await?;
    let _ = conn.close().await;
    let col = |i: usize| row.get(i).cloned().flatten();
    Ok((
        col(1).unwrap_or_default(),
        ReachedPoint {
            in_recovery: col(0).as_deref() == Some("t"),
            replay_lsn: col(2).and_then(|s| s.parse().ok()),
            last_commit: col(3),
            timeline: col(4).and_then(|s| s.parse().ok()),
            stopped: false,
        },
    ))
}

/// The server log's last lines (its FATAL message is what the user needs).
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(6);
    lines[start..].join(" | ")
}
