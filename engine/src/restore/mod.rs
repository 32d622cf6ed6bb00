//! Restore and point-in-time recovery: plan, materialize, configure recovery, optionally run
//! it.
//!
//! ```text
//! plan (manifests + WAL time index) ──> materialize (parallel, verified against
//! backup_manifest) ──> recovery settings (postgresql.auto.conf, recovery.signal)
//!   ──> [--start] PostgreSQL replays WAL through `pgkeep wal-fetch` to the target
//! ```
//! Nothing is written before the plan says the target is reachable.

mod file_writer;
pub mod materialize;
pub mod plan;
pub mod recovery;
pub mod start;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use materialize::{Layout, Materialized};
pub use plan::{plan, BackupChoice, Plan, RecoveryTarget, TargetTimeline};
pub use recovery::{RecoverySettings, TargetAction};

use pgkeep_format::LockMode;

use crate::error::{Error, Result};
use crate::lock::{LockOptions, RepoLock};
use crate::repository::Repository;

/// Checks the target directory: absent or empty, unless `delta`; never one a running server
/// uses.
pub fn check_target(pgdata: &Path, delta: bool) -> Result<()> {
    let pid = pgdata.join("postmaster.pid");
    if pid.exists() {
        let text = std::fs::read_to_string(&pid).unwrap_or_default();
        let server = text.lines().next().unwrap_or("?");
        let alive = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
            .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if alive {
            return Err(Error::InvalidInput(format!(
                "{} is in use by a running PostgreSQL server (pid {server}): stop it first",
                pgdata.display()
            )));
        }
    }
    match std::fs::read_dir(pgdata) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("reading {}", pgdata.display()), e)),
        Ok(mut entries) => {
            if entries.next().is_none() || delta {
                Ok(())
            } else {
                Err(Error::InvalidInput(format!(
                    "{} is not empty: restore into an empty directory, or pass --delta to update it in place",
                    pgdata.display()
                )))
            }
        }
    }
}

/// Checks a tablespace's directory as [`check_target`] checks the data directory. With
/// `delta`, a directory that is not empty and is the tablespace's original location
/// (`at_original`: not mapped elsewhere) must also be one `pgdata` already uses: linked from
/// `pg_tblspc/<oid>`, or named for the OID in its `tablespace_map` (a restore that was never
/// started). On the source's host the original location is the source server's own, and
/// updating it in place would overwrite and then prune a live server's files. A location the
/// caller mapped the tablespace to is the caller's to choose.
pub fn check_tablespace_target(
    pgdata: &Path,
    oid: u32,
    dir: &Path,
    at_original: bool,
    delta: bool,
) -> Result<()> {
    check_target(dir, delta)?;
    if !delta || !at_original {
        return Ok(());
    }
    // Absent or empty: nothing of anyone's to overwrite.
    let Ok(Some(_)) = std::fs::read_dir(dir).map(|mut entries| entries.next()) else {
        return Ok(());
    };
    let dir_real = dir.canonicalize().ok();
    let same = |a: &Path| dir_real.is_some() && a.canonicalize().ok() == dir_real;
    let links = pgdata.join("pg_tblspc");
    let linked =
        std::fs::read_link(links.join(oid.to_string())).is_ok_and(|t| same(&links.join(t)));
    let mapped = std::fs::read_to_string(pgdata.join("tablespace_map")).is_ok_and(|text| {
        materialize::parse_tablespace_map(&text)
            .iter()
            .any(|(o, path)| *o == oid.to_string() && same(Path::new(path)))
    });
    if linked || mapped {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "{} (tablespace {oid}'s original location) is not empty and {} does not use it: \
             it may be the source server's; pass --tablespace-map {oid}=DIR to restore the \
             tablespace elsewhere, or empty it first",
            dir.display(),
            pgdata.display(),
        )))
    }
}

/// Where each tablespace goes: the backup's own location unless `map` (OID → directory)
/// says otherwise. A `map` entry for a tablespace the backup does not have is refused: a
/// mistyped OID would otherwise leave the real one at its original location.
pub fn tablespace_layout(
    plan: &Plan,
    pgdata: &Path,
    map: &HashMap<u32, PathBuf>,
) -> Result<Layout> {
    let tablespaces = &plan.manifest.tablespaces;
    let mut unknown: Vec<u32> = map
        .keys()
        .filter(|oid| !tablespaces.iter().any(|t| t.oid == **oid))
        .copied()
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        let known: Vec<String> = tablespaces
            .iter()
            .map(|t| format!("{} ({})", t.oid, t.location))
            .collect();
        return Err(Error::InvalidInput(format!(
            "backup {} has no tablespace {}; its tablespaces are: {}",
            plan.manifest.backup_id,
            unknown
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )));
    }
    let tablespaces = tablespaces
        .iter()
        .map(|t| {
            let dir = map
                .get(&t.oid)
                .cloned()
                .unwrap_or_else(|| PathBuf::from(&t.location));
            (t.oid, dir)
        })
        .collect();
    Ok(Layout {
        pgdata: pgdata.to_owned(),
        tablespaces,
    })
}

/// Materializes the planned backup and writes the recovery settings.
pub async fn restore(
    repo: &Repository,
    plan: &Plan,
    layout: &Layout,
    settings: &RecoverySettings,
    jobs: usize,
    delta: bool,
    lock: LockOptions,
) -> Result<Materialized> {
    for (oid, dir) in &layout.tablespaces {
        let at_original = plan
            .manifest
            .tablespaces
            .iter()
            .any(|t| t.oid == *oid && Path::new(&t.location) == dir);
        check_tablespace_target(&layout.pgdata, *oid, dir, at_original, delta)?;
    }
    let lock = reader_lock(repo, "restore", lock).await?;
    repo.load_index().await?;
    let done = materialize::materialize(repo, &plan.manifest, layout, jobs, delta).await;
    if let Some(l) = lock {
        l.release().await?;
    }
    let done = done?;
    settings.write(&layout.pgdata)?;
    Ok(done)
}

/// A shared lock for an operation that only reads chunks, so `prune` cannot delete or repack
/// them meanwhile. A repository the caller may read but not write (a read-only credential on
/// the restore host) still restores: without a lock, with a warning. A conflict is an error.
pub async fn reader_lock(
    repo: &Repository,
    operation: &str,
    opts: LockOptions,
) -> Result<Option<RepoLock>> {
    match repo.lock(LockMode::Shared, operation, opts).await {
        Ok(l) => Ok(Some(l)),
        Err(e @ Error::Locked { .. }) => Err(e),
        Err(e) => {
            tracing::warn!("{operation} continues without a repository lock, so a concurrent prune could remove what it reads: {e}");
            Ok(None)
        }
    }
}
