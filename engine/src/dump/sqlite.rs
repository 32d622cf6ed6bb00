//! SQLite databases in the archive: a consistent snapshot of a live database with SQLite's
//! online backup API (a writer in another process keeps working; in WAL mode it is never
//! blocked), stored with the same content-defined chunking as pg_dump streams, and written
//! back with `PRAGMA integrity_check`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use pgkeep_format::{ClusterName, DumpFormat, DumpSource, LockMode};

use super::{
    commit, new_manifest, scratch_dir, stream, write_stream_file, DumpSummary, MAIN_STREAM,
};
use crate::chunker::Chunking;
use crate::error::{Error, Result};
use crate::lock::LockOptions;
use crate::pipeline::WriteOptions;
use crate::repository::Repository;

fn sqlite_err(what: String) -> impl FnOnce(rusqlite::Error) -> Error {
    move |e| Error::InvalidInput(format!("{what}: {e}"))
}

/// Copies the live database at `source` into `snapshot` in one backup step: SQLite holds a
/// read transaction for the copy, so the snapshot is the database at one point in time.
/// (A stepwise copy restarts whenever another process writes, and might never finish under
/// a steady writer.)
fn snapshot(source: &Path, snapshot: &Path) -> Result<()> {
    use rusqlite::{backup::Backup, OpenFlags};
    let src = rusqlite::Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err(format!(
        "opening SQLite database {}",
        source.display()
    )))?;
    src.busy_timeout(Duration::from_secs(30))
        .map_err(sqlite_err("setting the busy timeout".into()))?;
    let mut dst = rusqlite::Connection::open(snapshot)
        .map_err(sqlite_err(format!("creating {}", snapshot.display())))?;
    let backup = Backup::new(&src, &mut dst).map_err(sqlite_err(format!(
        "starting the backup of {}",
        source.display()
    )))?;
    // -1: every page in one step, under one read transaction. Busy/Locked: a writer holds
    // a lock SQLite's step cannot wait on (rollback-journal mode); retry for a while.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        use rusqlite::backup::StepResult;
        match backup
            .step(-1)
            .map_err(sqlite_err(format!("copying {}", source.display())))?
        {
            StepResult::Done => break,
            StepResult::More => continue,
            _ if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => {
                return Err(Error::InvalidInput(format!(
                    "{} stayed locked by another connection for 60 s: no consistent snapshot could be taken",
                    source.display()
                )))
            }
        }
    }
    drop(backup);
    // The snapshot is a standalone file: no WAL beside it.
    dst.execute_batch("PRAGMA journal_mode=DELETE;")
        .map_err(sqlite_err("finishing the snapshot".into()))?;
    Ok(())
}

/// Snapshots the SQLite database at `path` into `cluster`.
pub async fn dump_sqlite(
    repo: &Repository,
    cluster: &ClusterName,
    path: &Path,
    write: WriteOptions,
    lock: LockOptions,
) -> Result<DumpSummary> {
    let clock = std::time::Instant::now();
    let started = SystemTime::now();
    let source = std::fs::canonicalize(path)
        .map_err(|e| Error::io(format!("SQLite database {}", path.display()), e))?;
    // Beside the database: the same file system, and the same permissions domain as the
    // data itself.
    let dir = scratch_dir(Some(source.parent().unwrap_or(Path::new("."))), "snapshot")?;
    let snap = dir.path().join("snapshot.sqlite");
    let (s, t) = (source.clone(), snap.clone());
    tokio::task::spawn_blocking(move || snapshot(&s, &t))
        .await
        .map_err(|e| Error::Pipeline(format!("the snapshot task failed: {e}")))??;
    let lock = repo.lock(LockMode::Shared, "dump", lock).await?;
    let result: Result<_> = async {
        let write = repo.write_session(write).await?;
        let file = tokio::fs::File::open(&snap)
            .await
            .map_err(|e| Error::io(format!("reading {}", snap.display()), e))?;
        let stored = write
            .store_stream(file, Chunking::from_config(repo.config()))
            .await?;
        let mut manifest = new_manifest(
            cluster,
            DumpSource::Sqlite,
            DumpFormat::SqliteFile,
            source.to_string_lossy().into_owned(),
            started,
        );
        manifest.tool_version = format!("SQLite {}", rusqlite::version());
        let streams = vec![stream(MAIN_STREAM, stored)];
        commit(repo, write, manifest, streams, &lock, clock).await
    }
    .await;
    let released = lock.release().await;
    drop(dir);
    let out = result?;
    released?;
    Ok(out)
}

/// Writes a SQLite dump to `target` (which must not exist) and checks it with
/// `PRAGMA integrity_check`. Returns the number of tables.
pub async fn restore_sqlite(
    repo: &Repository,
    cluster: &ClusterName,
    dump_id: &str,
    target: &Path,
    lock: LockOptions,
) -> Result<u64> {
    let lock = repo.lock(LockMode::Shared, "dump-restore", lock).await?;
    let result: Result<_> = async {
        let m = repo.read_dump(cluster, dump_id).await?;
        if m.format != DumpFormat::SqliteFile {
            return Err(Error::InvalidInput(format!(
                "dump {dump_id} is a {} dump, not a SQLite database: restore it with --pg, or --to-file PATH",
                m.format.name()
            )));
        }
        let main = m
            .stream(MAIN_STREAM)
            .ok_or_else(|| super::missing_stream(&m, MAIN_STREAM))?;
        write_stream_file(repo, &main.extents, target).await
    }
    .await;
    let released = lock.release().await;
    result?;
    released?;
    let t = target.to_owned();
    tokio::task::spawn_blocking(move || integrity_check(&t))
        .await
        .map_err(|e| Error::Pipeline(format!("the integrity check failed to run: {e}")))?
}

/// `PRAGMA integrity_check` must say `ok`.
pub fn integrity_check(path: &Path) -> Result<u64> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sqlite_err(format!("opening {}", path.display())))?;
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(sqlite_err(format!("checking {}", path.display())))?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(sqlite_err(format!("checking {}", path.display())))?;
    if lines != ["ok"] {
        return Err(Error::InvalidInput(format!(
            "{} was written but fails PRAGMA integrity_check: {}",
            path.display(),
            lines.join("; ")
        )));
    }
    let tables: u64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .map_err(sqlite_err(format!("reading {}", path.display())))?;
    Ok(tables)
}
