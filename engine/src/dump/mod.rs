//! `pgkeep dump` and `dump-restore`: logical dumps (pg_dump, pg_dumpall, SQLite snapshots)
//! stored in the same deduplicated, encrypted archive as base backups.
//!
//! pg_dump writes its custom format uncompressed (`-Fc -Z0`) to a pipe (the directory format
//! into a scratch directory, see [`directory`]; `--all` in [`all`]); the stream is cut with
//! FastCDC, so tomorrow's dump of a mostly unchanged database stores only the chunks around
//! what changed (compression happens per chunk, after deduplication). A dump commits like a
//! backup: chunks, then the index segment, then the dump manifest, under a shared lock that
//! keeps `prune` out. A dump whose tool fails leaves no manifest, and its error is the tool's
//! own stderr.

pub mod all;
mod directory;
pub mod selection;
pub mod sqlite;
pub mod tools;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::SystemTime;

use pgkeep_format::{
    layout, Attachment, BackupStats, ClusterName, DumpFormat, DumpManifest, DumpSource, Kind,
    LockMode, RowFilter,
};
use tokio::io::AsyncWriteExt;

use self::selection::{restore_table_args, table_selected, RowFilterSpec, Selection};
use self::tools::{dbname_arg, find_tool, find_tools, libpq_env, major_of, spawn, tool_version};
use crate::chunker::Chunking;
use crate::conninfo::ConnConfig;
use crate::error::{Error, Result};
use crate::lock::{LockOptions, RepoLock};
use crate::pipeline::{SessionStats, StoredStream, WriteOptions, WriteSession};
use crate::read::Check;
use crate::replication::{Event, PgConnection, PgError, ReplicationMode};
use crate::repository::{limits, Repository};
use crate::storage::Created;

pub use pgkeep_format::dump::MAIN_STREAM;

/// What `dump_postgres` (one database) and [`all::dump_all`] (every database) should take.
#[derive(Debug, Clone)]
pub struct PgDumpOptions {
    /// Directory of pg_dump (and pg_dumpall); else PATH and the standard locations.
    pub pg_bin: Option<PathBuf>,
    /// Custom (the default), plain SQL or directory.
    pub format: DumpFormat,
    pub selection: Selection,
    pub row_filters: Vec<RowFilterSpec>,
    /// pg_dump's parallel workers (`--jobs`); directory format only.
    pub parallel: Option<u32>,
    /// Where the directory format's output waits until it is stored; else the system's
    /// temporary directory.
    pub scratch: Option<PathBuf>,
    pub write: WriteOptions,
    pub lock: LockOptions,
}

impl Default for PgDumpOptions {
    fn default() -> Self {
        Self {
            pg_bin: None,
            format: DumpFormat::Custom,
            selection: Selection::default(),
            row_filters: Vec::new(),
            parallel: None,
            scratch: None,
            write: WriteOptions::default(),
            lock: LockOptions::default(),
        }
    }
}

impl PgDumpOptions {
    /// Refuses combinations pg_dump or the restore could not honour, before anything runs.
    pub fn check(&self) -> Result<()> {
        self.selection.check(&self.row_filters)?;
        match self.format {
            DumpFormat::SqliteFile => {
                return Err(Error::InvalidInput(
                    "the sqlite format is for --sqlite PATH: PostgreSQL dumps are custom, directory or plain".into(),
                ))
            }
            DumpFormat::Plain if !self.row_filters.is_empty() => {
                return Err(Error::InvalidInput(
                    "--where needs an archive format (custom or directory): the filtered rows are loaded between pg_restore's sections, which a plain SQL script does not have".into(),
                ))
            }
            _ => {}
        }
        if self.scratch.is_some() && self.format != DumpFormat::Directory {
            return Err(Error::InvalidInput(format!(
                "--scratch holds the directory format's output; a {} dump streams from pg_dump without one: add --format directory or leave --scratch out",
                self.format.name()
            )));
        }
        match self.parallel {
            Some(0) => Err(Error::InvalidInput(
                "--parallel must be at least 1".into(),
            )),
            Some(_) if self.format != DumpFormat::Directory => Err(Error::InvalidInput(format!(
                "--parallel runs pg_dump's workers, which write the directory format, not {}: add --format directory",
                self.format.name()
            ))),
            _ => Ok(()),
        }
    }

    /// pg_dump's options for this dump, before connection and snapshot.
    fn pg_dump_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            format!("--format={}", self.format.name()),
            // Uncompressed: pg_dump's own compression would defeat deduplication.
            "--compress=0".into(),
            "--no-password".into(),
        ];
        if let Some(n) = self.parallel {
            args.push(format!("--jobs={n}"));
        }
        args.extend(self.selection.args());
        args
    }
}

/// What a dump stored.
#[derive(Debug, Clone)]
pub struct DumpSummary {
    pub manifest: DumpManifest,
    pub session: SessionStats,
    pub seconds: f64,
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The dump id for a dump started at `time`, unique among `existing`: the backup id form,
/// with `.1`, `.2`, ... when a dump of the same second exists.
pub fn fresh_dump_id(time: SystemTime, existing: &[String]) -> String {
    let base = Repository::backup_id_at(time);
    if !existing.contains(&base) {
        return base;
    }
    (1..)
        .map(|n| format!("{base}.{n}"))
        .find(|id| !existing.contains(id))
        .unwrap_or(base)
}

impl Repository {
    /// Dump ids of a cluster, oldest first.
    pub async fn list_dumps(&self, cluster: &ClusterName) -> Result<Vec<String>> {
        let dir = layout::dumps_dir(cluster);
        let mut ids: Vec<String> = self
            .store()
            .list(&dir)
            .await?
            .into_iter()
            .filter_map(|o| o.name.strip_prefix(&dir).map(str::to_owned))
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub async fn read_dump(&self, cluster: &ClusterName, dump_id: &str) -> Result<DumpManifest> {
        layout::check_component("dump id", dump_id)
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let name = layout::dump(cluster, dump_id);
        let plain = self.get_object(Kind::Dump, &name, limits::MANIFEST).await?;
        let m = DumpManifest::decode(&plain).map_err(|e| Error::corrupt(&name, e))?;
        if m.dump_id != dump_id || m.cluster != cluster.as_str() {
            return Err(Error::corrupt(
                &name,
                pgkeep_format::FormatError::Invalid {
                    what: "dump manifest",
                    reason: format!("describes dump {}/{} instead", m.cluster, m.dump_id),
                },
            ));
        }
        Ok(m)
    }

    /// Deletes a dump manifest (retention); its chunks become garbage for `prune`.
    pub async fn delete_dump(&self, cluster: &ClusterName, dump_id: &str) -> Result<()> {
        layout::check_component("dump id", dump_id)
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        self.store().delete(&layout::dump(cluster, dump_id)).await
    }

    /// Writes a dump manifest, the commit point of a dump, under a fresh id (the manifest's
    /// id is replaced when a concurrent dump took it).
    async fn commit_dump(&self, manifest: &mut DumpManifest, lock: &RepoLock) -> Result<()> {
        let cluster =
            ClusterName::new(&manifest.cluster).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let started = SystemTime::UNIX_EPOCH
            + std::time::Duration::from_micros(manifest.start_time_us.max(0) as u64);
        for _ in 0..16 {
            let existing = self.list_dumps(&cluster).await?;
            manifest.dump_id = fresh_dump_id(started, &existing);
            let name = layout::dump(&cluster, &manifest.dump_id);
            lock.confirm().await?;
            match self
                .put_new_object(Kind::Dump, &name, manifest.encode(), 3)
                .await
            {
                Ok(Created::New) => return Ok(()),
                Ok(Created::Identical) | Err(Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::AlreadyExists {
            object: layout::dumps_dir(&cluster),
        })
    }
}

fn stats(repo: &Repository, streams: &[Attachment], session: &SessionStats) -> BackupStats {
    let mut probe = DumpManifest {
        dump_id: String::new(),
        cluster: String::new(),
        source: DumpSource::PgDump,
        format: DumpFormat::Custom,
        database: String::new(),
        selection: Vec::new(),
        row_filters: Vec::new(),
        server_version_num: 0,
        tool_version: String::new(),
        start_time_us: 0,
        stop_time_us: 0,
        stats: BackupStats::default(),
        streams: streams.to_vec(),
        properties: Vec::new(),
    };
    let chunks = probe.chunk_refs();
    probe.stats = BackupStats {
        logical_bytes: probe.logical_bytes(),
        stored_bytes: repo.stored_size(&chunks),
        new_bytes: session.new_bytes,
        chunks: chunks.len() as u64,
        new_chunks: session.new_chunks,
    };
    probe.stats
}

/// A private scratch directory (mode 0700, from `tempfile`) under `parent`, or the system's
/// temporary directory; it and everything in it are removed when dropped, also when the
/// dump or restore fails.
fn scratch_dir(parent: Option<&Path>, what: &str) -> Result<tempfile::TempDir> {
    let parent = parent.map_or_else(std::env::temp_dir, Path::to_owned);
    tempfile::Builder::new()
        .prefix(&format!(".pgkeep-{what}-"))
        .tempdir_in(&parent)
        .map_err(|e| {
            Error::io(
                format!("creating a scratch directory in {}", parent.display()),
                e,
            )
        })
}

fn stream(name: &str, s: StoredStream) -> Attachment {
    Attachment {
        name: name.to_owned(),
        size: s.size,
        extents: s.extents,
    }
}

fn pg(e: PgError) -> Error {
    Error::Postgres(e)
}

/// An ordinary session to the server a dump reads, and its `server_version_num` (which
/// picks the dump tools).
async fn connect_source(conn: &ConnConfig, tool: &str) -> Result<(PgConnection, u32)> {
    if conn.replication.is_some() {
        return Err(Error::InvalidInput(format!(
            "{tool} needs an ordinary connection: remove `replication` from --pg"
        )));
    }
    let session = PgConnection::connect(conn, ReplicationMode::None).await?;
    let version_num = session.server_version_num().ok_or_else(|| {
        Error::Postgres(PgError::Protocol(
            "the server did not report server_version".into(),
        ))
    })?;
    Ok((session, version_num))
}

/// The manifest of a dump started at `started`, before its streams are stored.
fn new_manifest(
    cluster: &ClusterName,
    source: DumpSource,
    format: DumpFormat,
    database: String,
    started: SystemTime,
) -> DumpManifest {
    DumpManifest {
        dump_id: String::new(),
        cluster: cluster.to_string(),
        source,
        format,
        database,
        selection: Vec::new(),
        row_filters: Vec::new(),
        server_version_num: 0,
        tool_version: String::new(),
        start_time_us: micros(started),
        stop_time_us: 0,
        stats: BackupStats::default(),
        streams: Vec::new(),
        properties: vec![("pgkeep_version".into(), env!("CARGO_PKG_VERSION").into())],
    }
}

/// Ends the write session and commits `manifest` with `streams`, its stop time and stats.
async fn commit(
    repo: &Repository,
    write: WriteSession,
    mut manifest: DumpManifest,
    streams: Vec<Attachment>,
    lock: &RepoLock,
    clock: std::time::Instant,
) -> Result<DumpSummary> {
    let (session, _) = write.finish().await?;
    manifest.stop_time_us = micros(SystemTime::now());
    manifest.stats = stats(repo, &streams, &session);
    manifest.streams = streams;
    repo.commit_dump(&mut manifest, lock).await?;
    Ok(DumpSummary {
        manifest,
        session,
        seconds: clock.elapsed().as_secs_f64(),
    })
}

/// Takes a pg_dump of the database `conn` names and stores it in `cluster`.
pub async fn dump_postgres(
    repo: &Repository,
    cluster: &ClusterName,
    conn: &ConnConfig,
    opts: &PgDumpOptions,
) -> Result<DumpSummary> {
    opts.check()?;
    let clock = std::time::Instant::now();
    let started = SystemTime::now();
    // An ordinary session first: the server's version picks pg_dump, and a tenant export
    // needs a snapshot shared by pg_dump and the row streams.
    let (mut session, version_num) = connect_source(conn, "pg_dump").await?;
    let pg_dump = find_tool(opts.pg_bin.as_deref(), "pg_dump", version_num / 10000)?;
    let tool = tool_version(&pg_dump).unwrap_or_default();
    let snapshot = if opts.row_filters.is_empty() {
        None
    } else {
        session
            .query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(pg)?;
        let row = session
            .query_row("SELECT pg_export_snapshot()")
            .await
            .map_err(pg)?;
        Some(row.into_iter().next().flatten().ok_or_else(|| {
            Error::Postgres(PgError::Protocol(
                "pg_export_snapshot() returned NULL".into(),
            ))
        })?)
    };
    let mut args = opts.pg_dump_args();
    for f in &opts.row_filters {
        args.push(format!("--exclude-table-data={}", f.table));
    }
    if let Some(s) = &snapshot {
        args.push(format!("--snapshot={s}"));
    }
    let env = libpq_env(conn, None);

    let lock = repo.lock(LockMode::Shared, "dump", opts.lock).await?;
    let result: Result<_> = async {
        let write = repo.write_session(opts.write).await?;
        let chunking = Chunking::from_config(repo.config());
        let mut streams = match opts.format {
            DumpFormat::Directory => {
                directory::dump_into(
                    &write,
                    &pg_dump,
                    &args,
                    &env,
                    chunking,
                    opts.scratch.as_deref(),
                )
                .await?
            }
            _ => vec![stream(
                MAIN_STREAM,
                run_into(&write, &pg_dump, &args, &env, chunking).await?,
            )],
        };
        let mut filters = Vec::new();
        for (n, f) in opts.row_filters.iter().enumerate() {
            let name = format!("rows/{n}");
            let (s, rows) =
                copy_out_into(&write, &mut session, &f.copy_out_sql(), chunking).await?;
            streams.push(stream(&name, s));
            filters.push(RowFilter {
                table: f.table.clone(),
                condition: f.condition.clone(),
                stream: name,
                rows,
            });
        }
        if snapshot.is_some() {
            session.query("COMMIT").await.map_err(pg)?;
        }
        let mut manifest = new_manifest(
            cluster,
            DumpSource::PgDump,
            opts.format,
            conn.effective_dbname().to_owned(),
            started,
        );
        manifest.selection = opts.selection.args();
        manifest.row_filters = filters;
        manifest.server_version_num = version_num;
        manifest.tool_version = tool.clone();
        manifest
            .properties
            .push(("host".into(), conn.display_target()));
        commit(repo, write, manifest, streams, &lock, clock).await
    }
    .await;
    let released = lock.release().await;
    let _ = session.close().await;
    let summary = result?;
    released?;
    Ok(summary)
}

/// Runs a tool and stores its stdout as one stream. The tool failing is the error (with its
/// stderr), also when storing failed first because its output stopped.
async fn run_into(
    write: &WriteSession,
    tool: &Path,
    args: &[String],
    env: &[(String, String)],
    chunking: Chunking,
) -> Result<StoredStream> {
    let mut running = spawn(tool, args, env, Stdio::null(), Stdio::piped())?;
    let stdout = running
        .child
        .stdout
        .take()
        .ok_or_else(|| Error::Pipeline("the tool's stdout is not a pipe".into()))?;
    match write.store_stream(stdout, chunking).await {
        Ok(s) => {
            running.wait().await?;
            Ok(s)
        }
        Err(e) => {
            running.kill().await;
            Err(e)
        }
    }
}

/// Runs `COPY ... TO STDOUT` on `session` and stores the rows as one stream.
async fn copy_out_into(
    write: &WriteSession,
    session: &mut PgConnection,
    sql: &str,
    chunking: Chunking,
) -> Result<(StoredStream, u64)> {
    let (mut tx, rx) = tokio::io::duplex(1 << 20);
    session.send_query(sql).await.map_err(pg)?;
    let produce = async move {
        let mut rows = 0u64;
        let mut failure: Option<PgError> = None;
        loop {
            match session.next_event().await {
                Ok(Event::CopyData(d)) => {
                    if tx.write_all(&d).await.is_err() {
                        // The store side stopped; keep draining to ReadyForQuery.
                        continue;
                    }
                }
                Ok(Event::CommandComplete(tag)) => {
                    rows = tag
                        .strip_prefix("COPY ")
                        .and_then(|n| n.trim().parse().ok())
                        .unwrap_or(0);
                }
                Ok(Event::ReadyForQuery) => break,
                Ok(_) => {}
                Err(PgError::Server(e)) => {
                    failure = Some(PgError::Server(e));
                }
                Err(e) => return Err(e),
            }
        }
        drop(tx);
        match failure {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    };
    let (stored, rows) = tokio::join!(write.store_stream(rx, chunking), produce);
    let rows = rows.map_err(pg)?;
    Ok((stored?, rows))
}

/// What `restore_dump` does with a dump.
#[derive(Debug, Clone, Default)]
pub struct DumpRestoreOptions {
    /// Directory of pg_restore/psql; else PATH and the standard locations.
    pub pg_bin: Option<PathBuf>,
    /// `TABLE` or `SCHEMA.TABLE`, see [`selection::restore_table_args`].
    pub tables: Vec<String>,
    pub schema_only: bool,
    pub data_only: bool,
    /// `--clean --if-exists`: drop objects before recreating them.
    pub clean: bool,
    /// `--create`: create the database (connect to another one, e.g. `postgres`).
    pub create: bool,
    /// A `dump --all` dump: restore only this database, as a pg_dump dump of it.
    pub database: Option<String>,
    /// pg_restore's parallel workers (`--jobs`); directory-format dumps only.
    pub parallel: Option<u32>,
    /// Where a directory-format dump is written back for pg_restore; else the system's
    /// temporary directory.
    pub scratch: Option<PathBuf>,
    pub lock: LockOptions,
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct DumpRestoreSummary {
    pub bytes: u64,
    /// Rows loaded from row-filter streams.
    pub filtered_rows: u64,
    /// The databases restored from a `dump --all` dump, in order.
    pub databases: Vec<String>,
    /// Errors of `globals.sql` that were tolerated (objects that already exist), as psql
    /// reported them.
    pub tolerated: Vec<String>,
}

/// Writes a dump back as the files its tool made, refusing to overwrite anything:
/// - a custom or plain dump: pg_dump's file at `path`, and each row filter's rows at
///   `PATH.rows-N.copy`;
/// - a directory dump: the directory at `path` (created, mode 0700), rows as above;
/// - a `dump --all` dump: the directory `path` with `globals.sql` and one `<database>.dump`
///   per database (names escaped, see [`database_file_name`]); with `database`, only that
///   database's archive, at `path`;
/// - a SQLite dump: the database file.
pub async fn dump_to_file(
    repo: &Repository,
    cluster: &ClusterName,
    dump_id: &str,
    path: &Path,
    database: Option<&str>,
    lock: LockOptions,
) -> Result<Vec<PathBuf>> {
    let lock = repo.lock(LockMode::Shared, "dump-restore", lock).await?;
    let result: Result<_> = async {
        let m = repo.read_dump(cluster, dump_id).await?;
        if m.source == DumpSource::PgDumpAll {
            return all::write_files(repo, &m, path, database).await;
        }
        if database.is_some() {
            return Err(not_all(&m));
        }
        let mut written = vec![path.to_owned()];
        if m.format == DumpFormat::Directory {
            directory::write_directory(repo, &m, path).await?;
        } else {
            let main = m
                .stream(MAIN_STREAM)
                .ok_or_else(|| missing_stream(&m, MAIN_STREAM))?;
            write_stream_file(repo, &main.extents, path).await?;
        }
        for (n, f) in m.row_filters.iter().enumerate() {
            let s = m
                .stream(&f.stream)
                .ok_or_else(|| missing_stream(&m, &f.stream))?;
            let p = PathBuf::from(format!("{}.rows-{n}.copy", path.display()));
            write_stream_file(repo, &s.extents, &p).await?;
            written.push(p);
        }
        Ok(written)
    }
    .await;
    let released = lock.release().await;
    let out = result?;
    released?;
    Ok(out)
}

/// `--database` given for a dump that is not a `dump --all` dump.
fn not_all(m: &DumpManifest) -> Error {
    Error::InvalidInput(format!(
        "--database picks one database out of a `dump --all` dump, but dump {} is a {} dump of {}: leave --database out",
        m.dump_id,
        m.source.name(),
        m.database
    ))
}

fn missing_stream(m: &DumpManifest, name: &str) -> Error {
    Error::corrupt(
        format!("{}{}/dumps/{}", layout::CLUSTERS_DIR, m.cluster, m.dump_id),
        pgkeep_format::FormatError::Invalid {
            what: "dump manifest",
            reason: format!("it has no stream {name:?}"),
        },
    )
}

async fn write_stream_file(
    repo: &Repository,
    extents: &[pgkeep_format::Extent],
    path: &Path,
) -> Result<()> {
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let mut out = tokio::io::BufWriter::new(file);
    repo.write_extents(extents, &mut out).await?;
    out.into_inner()
        .sync_all()
        .await
        .map_err(|e| Error::io(format!("syncing {}", path.display()), e))
}

/// Restores a PostgreSQL dump into the server `conn` names: an archive (custom or
/// directory) with pg_restore into `conn`'s database (with `create`, a new one), a plain
/// SQL dump with psql, a `dump --all` dump as globals then every database (see
/// [`all::restore_all`]). A tenant export (row filters) is restored in sections: schema,
/// pg_dump's data, the filtered rows with `COPY ... FROM STDIN`, then indexes and
/// constraints, so the rows load before the constraints that check them are built, as
/// pg_restore itself does.
pub async fn restore_dump(
    repo: &Repository,
    cluster: &ClusterName,
    dump_id: &str,
    conn: &ConnConfig,
    opts: &DumpRestoreOptions,
) -> Result<DumpRestoreSummary> {
    let lock = repo
        .lock(LockMode::Shared, "dump-restore", opts.lock)
        .await?;
    let result = restore_locked(repo, cluster, dump_id, conn, opts).await;
    let released = lock.release().await;
    let out = result?;
    released?;
    Ok(out)
}

/// Ok when none of `flags` (each: is it given, its name) is given; else the usage error
/// `why` makes of the given ones' names.
fn refuse_flags(flags: &[(bool, &str)], why: impl FnOnce(String) -> String) -> Result<()> {
    let given: Vec<&str> = flags
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, f)| *f)
        .collect();
    if given.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidInput(why(given.join(", "))))
    }
}

/// Refuses options the dump's kind cannot honour, before anything is connected or run.
fn check_restore(m: &DumpManifest, opts: &DumpRestoreOptions) -> Result<()> {
    let id = &m.dump_id;
    if opts.schema_only && opts.data_only {
        return Err(Error::InvalidInput(
            "--schema-only and --data-only exclude each other".into(),
        ));
    }
    if opts.parallel == Some(0) {
        return Err(Error::InvalidInput("--parallel must be at least 1".into()));
    }
    if opts.scratch.is_some()
        && !(m.source == DumpSource::PgDump && m.format == DumpFormat::Directory)
    {
        return Err(Error::InvalidInput(format!(
            "--scratch holds a directory-format dump while pg_restore reads it; dump {id} is a {} dump, restored from a pipe: leave --scratch out",
            m.format.name()
        )));
    }
    let parallel_refused = || {
        Error::InvalidInput(format!(
            "--parallel needs a directory-format dump: pg_restore cannot run workers on an archive it reads from a pipe, and dump {id} is a {} dump",
            m.format.name()
        ))
    };
    match (m.source, m.format) {
        (_, DumpFormat::SqliteFile) => Err(Error::InvalidInput(format!(
            "dump {id} is a SQLite database: restore it with --sqlite-to PATH or --to-file PATH"
        ))),
        (DumpSource::PgDumpAll, _) => match &opts.database {
            Some(db) => {
                if m.stream(&format!("{}{db}", pgkeep_format::dump::DATABASE_PREFIX))
                    .is_none()
                {
                    let names: Vec<&str> = m.databases().map(|(d, _)| d).collect();
                    return Err(Error::InvalidInput(format!(
                        "dump {id} has no database {db:?}; it has {}",
                        names.join(", ")
                    )));
                }
                if opts.parallel.is_some() {
                    return Err(parallel_refused());
                }
                restore_table_args(&opts.tables).map(drop)
            }
            None => refuse_flags(
                &[
                    (!opts.tables.is_empty(), "--table"),
                    (opts.schema_only, "--schema-only"),
                    (opts.data_only, "--data-only"),
                    (opts.parallel.is_some(), "--parallel"),
                ],
                |flags| {
                    format!(
                    "dump {id} holds a whole cluster (dump --all), and {flags} apply to one database: pick it with --database NAME"
                )
                },
            ),
        },
        _ if opts.database.is_some() => Err(not_all(m)),
        (_, DumpFormat::Plain) => refuse_flags(
            &[
                (!opts.tables.is_empty(), "--table"),
                (opts.schema_only, "--schema-only"),
                (opts.data_only, "--data-only"),
                (opts.clean, "--clean"),
                (opts.create, "--create"),
                (opts.parallel.is_some(), "--parallel"),
            ],
            |flags| {
                format!(
                "dump {id} is a plain SQL script, which psql runs whole: {flags} are pg_restore's and need an archive (dump --format custom or directory). Restore without them, or take the script with --to-file FILE and edit it"
            )
            },
        ),
        (_, DumpFormat::Custom) if opts.parallel.is_some() => Err(parallel_refused()),
        _ => restore_table_args(&opts.tables).map(drop),
    }
}

async fn restore_locked(
    repo: &Repository,
    cluster: &ClusterName,
    dump_id: &str,
    conn: &ConnConfig,
    opts: &DumpRestoreOptions,
) -> Result<DumpRestoreSummary> {
    let m = repo.read_dump(cluster, dump_id).await?;
    check_restore(&m, opts)?;
    let mut session = PgConnection::connect(conn, ReplicationMode::None).await?;
    let target_major = session.server_version_num().unwrap_or(0) / 10000;
    // pg_restore reads archives of its own and older versions, and psql runs the scripts of
    // its own and older pg_dump (newer ones use meta-commands it may not know).
    let min_major = target_major.max(major_of(&m.tool_version).unwrap_or(0));
    let pg_bin = opts.pg_bin.as_deref();
    let result = async {
        if m.source == DumpSource::PgDumpAll {
            let tools = find_tools(pg_bin, &["pg_restore", "psql"], min_major)?;
            let (pg_restore, psql) = (&tools[0], &tools[1]);
            return match &opts.database {
                Some(db) => {
                    let s = m
                        .stream(&format!("{}{db}", pgkeep_format::dump::DATABASE_PREFIX))
                        .ok_or_else(|| missing_stream(&m, db))?;
                    let run = PgRestoreRun::from_options(pg_restore, opts)?;
                    let mut summary =
                        pg_restore_archive(repo, &m, &Archive::Stream(&s.extents), db, conn, &run)
                            .await?;
                    summary.databases.push(db.clone());
                    Ok(summary)
                }
                None => {
                    all::restore_all(repo, &m, conn, &mut session, pg_restore, psql, opts).await
                }
            };
        }
        match m.format {
            DumpFormat::Plain => {
                let psql = find_tool(pg_bin, "psql", min_major)?;
                restore_plain(repo, &m, conn, &psql).await
            }
            DumpFormat::Directory => {
                let pg_restore = find_tool(pg_bin, "pg_restore", min_major)?;
                let dir = directory::recreate(repo, &m, opts.scratch.as_deref()).await?;
                let run = PgRestoreRun::from_options(&pg_restore, opts)?;
                let archive = Archive::Directory(&dir.path);
                let mut summary =
                    pg_restore_archive(repo, &m, &archive, &m.database, conn, &run).await?;
                summary.bytes = dir.bytes;
                Ok(summary)
            }
            _ => {
                let pg_restore = find_tool(pg_bin, "pg_restore", min_major)?;
                let main = m
                    .stream(MAIN_STREAM)
                    .ok_or_else(|| missing_stream(&m, MAIN_STREAM))?;
                let run = PgRestoreRun::from_options(&pg_restore, opts)?;
                pg_restore_archive(
                    repo,
                    &m,
                    &Archive::Stream(&main.extents),
                    &m.database,
                    conn,
                    &run,
                )
                .await
            }
        }
    }
    .await;
    let _ = session.close().await;
    result
}

/// A plain SQL dump piped into `psql -v ON_ERROR_STOP=1`: the first error stops it, and is
/// the restore's error.
async fn restore_plain(
    repo: &Repository,
    m: &DumpManifest,
    conn: &ConnConfig,
    psql: &Path,
) -> Result<DumpRestoreSummary> {
    let main = m
        .stream(MAIN_STREAM)
        .ok_or_else(|| missing_stream(m, MAIN_STREAM))?;
    let args = psql_script_args(conn.effective_dbname(), &["ON_ERROR_STOP=1"]);
    let (bytes, _) = pipe_into(repo, &main.extents, psql, &args, &libpq_env(conn, None)).await?;
    Ok(DumpRestoreSummary {
        bytes,
        ..DumpRestoreSummary::default()
    })
}

/// psql's options to run the script on its stdin in database `db`, with the variables
/// `sets` (`NAME=VALUE`): no psqlrc, no prompts, and each error naming its script line.
fn psql_script_args(db: &str, sets: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--no-psqlrc".into(),
        "--quiet".into(),
        "--no-password".into(),
        "--file=-".into(),
        dbname_arg(db),
    ];
    args.extend(sets.iter().map(|v| format!("--set={v}")));
    args
}

/// What pg_restore reads: an archive streamed into its stdin, or a directory.
#[derive(Debug)]
enum Archive<'a> {
    Stream(&'a [pgkeep_format::Extent]),
    Directory(&'a Path),
}

/// One archive's pg_restore options.
#[derive(Debug)]
struct PgRestoreRun<'a> {
    pg_restore: &'a Path,
    /// `--schema`/`--table` from `dump-restore --table`.
    selection: Vec<String>,
    /// As given, to match the row filters.
    tables: &'a [String],
    schema_only: bool,
    data_only: bool,
    clean: bool,
    create: bool,
    parallel: Option<u32>,
    /// The database pg_restore connects to, when not `conn`'s.
    connect_db: Option<&'a str>,
}

impl<'a> PgRestoreRun<'a> {
    fn from_options(pg_restore: &'a Path, opts: &'a DumpRestoreOptions) -> Result<Self> {
        Ok(Self {
            pg_restore,
            selection: restore_table_args(&opts.tables)?,
            tables: &opts.tables,
            schema_only: opts.schema_only,
            data_only: opts.data_only,
            clean: opts.clean,
            create: opts.create,
            parallel: opts.parallel,
            connect_db: None,
        })
    }
}

/// Restores one archive with pg_restore, in sections when it has row filters to load.
/// `archive_db` is the database the archive creates with `--create`.
async fn pg_restore_archive(
    repo: &Repository,
    m: &DumpManifest,
    archive: &Archive<'_>,
    archive_db: &str,
    conn: &ConnConfig,
    run: &PgRestoreRun<'_>,
) -> Result<DumpRestoreSummary> {
    let mut base: Vec<String> = vec!["--exit-on-error".into(), "--no-password".into()];
    if run.clean {
        base.push("--clean".into());
        base.push("--if-exists".into());
    }
    if let Some(n) = run.parallel {
        base.push(format!("--jobs={n}"));
    }
    base.extend(run.selection.iter().cloned());
    let wants_rows = |f: &RowFilter| {
        !run.schema_only && (run.tables.is_empty() || table_selected(&f.table, run.tables))
    };
    let rows: Vec<&RowFilter> = m.row_filters.iter().filter(|f| wants_rows(f)).collect();
    // With --create, pg_restore connects to `conn`'s database and creates the dumped one;
    // later passes and the row loads go to the created database.
    let created_db = run.create.then_some(archive_db);
    let mut summary = DumpRestoreSummary::default();
    let passes: Vec<Vec<&str>> = if rows.is_empty() {
        let mut p = Vec::new();
        if run.schema_only {
            p.push("--schema-only");
        }
        if run.data_only {
            p.push("--data-only");
        }
        vec![p]
    } else if run.data_only {
        vec![vec!["--data-only"]]
    } else {
        vec![
            vec!["--section=pre-data"],
            vec!["--section=data"],
            vec!["--section=post-data"],
        ]
    };
    let mut session_db: Option<PgConnection> = None;
    for (i, pass) in passes.iter().enumerate() {
        let mut args = base.clone();
        args.extend(pass.iter().map(|s| (*s).to_owned()));
        let first = i == 0;
        if run.create && first {
            args.push("--create".into());
        }
        let db = if first { run.connect_db } else { created_db };
        let env = libpq_env(conn, db.or(run.connect_db));
        args.push(dbname_arg(
            db.or(run.connect_db).unwrap_or(conn.effective_dbname()),
        ));
        match archive {
            Archive::Stream(extents) => {
                summary.bytes += pipe_into(repo, extents, run.pg_restore, &args, &env)
                    .await?
                    .0;
            }
            Archive::Directory(dir) => {
                args.push(dir.display().to_string());
                spawn(run.pg_restore, &args, &env, Stdio::null(), Stdio::null())?
                    .wait()
                    .await?;
            }
        }
        let is_data_pass = pass.contains(&"--section=data") || pass.contains(&"--data-only");
        if is_data_pass && !rows.is_empty() {
            let mut c = conn.clone();
            if let Some(db) = created_db.or(run.connect_db) {
                c.dbname = Some(db.to_owned());
            }
            let target = session_db.insert(PgConnection::connect(&c, ReplicationMode::None).await?);
            for f in &rows {
                let s = m
                    .stream(&f.stream)
                    .ok_or_else(|| missing_stream(m, &f.stream))?;
                summary.filtered_rows += copy_in(repo, target, &f.table, &s.extents).await?;
            }
        }
    }
    if let Some(s) = session_db {
        let _ = s.close().await;
    }
    Ok(summary)
}

/// Pipes a stream into a tool's stdin and waits for it; returns the bytes written and the
/// tool's stderr (warnings; a failure is the error).
async fn pipe_into(
    repo: &Repository,
    extents: &[pgkeep_format::Extent],
    tool: &Path,
    args: &[String],
    env: &[(String, String)],
) -> Result<(u64, String)> {
    let mut running = spawn(tool, args, env, Stdio::piped(), Stdio::null())?;
    let mut stdin = running
        .child
        .stdin
        .take()
        .ok_or_else(|| Error::Pipeline("the tool's stdin is not a pipe".into()))?;
    let written = repo.write_extents(extents, &mut stdin).await;
    drop(stdin);
    // The tool's failure explains a broken pipe better than the pipe does.
    let stderr = running.wait().await?;
    Ok((written?, stderr))
}

/// A COPY IN in progress, as the destination of a stream's extents.
struct CopySink<'a>(&'a mut PgConnection);

impl crate::read::ExtentSink for CopySink<'_> {
    async fn put(&mut self, piece: bytes::Bytes) -> Result<()> {
        self.0.send_copy_data(&piece).await.map_err(pg)
    }
}

/// Loads a COPY text stream into `table`.
async fn copy_in(
    repo: &Repository,
    session: &mut PgConnection,
    table: &str,
    extents: &[pgkeep_format::Extent],
) -> Result<u64> {
    session
        .send_query(&RowFilterSpec::copy_in_sql(table))
        .await
        .map_err(pg)?;
    match session.next_event().await.map_err(pg)? {
        Event::CopyIn => {}
        other => {
            return Err(Error::Postgres(PgError::Protocol(format!(
                "expected COPY IN, got {other:?}"
            ))))
        }
    }
    // Piece by piece, with chunks fetched ahead: a tenant's rows can be large, and need not
    // be held in memory.
    repo.write_extents_into(extents, Check::Id, &mut CopySink(session))
        .await?;
    session.send_copy_done().await.map_err(pg)?;
    let mut rows = 0u64;
    let mut failure = None;
    loop {
        match session.next_event().await {
            Ok(Event::CommandComplete(tag)) => {
                rows = tag
                    .strip_prefix("COPY ")
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
            }
            Ok(Event::ReadyForQuery) => break,
            Ok(_) => {}
            Err(PgError::Server(e)) => failure = Some(PgError::Server(e)),
            Err(e) => return Err(pg(e)),
        }
    }
    match failure {
        Some(e) => Err(pg(e)),
        None => Ok(rows),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_ids_are_unique_within_a_second() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        let base = Repository::backup_id_at(t);
        assert_eq!(fresh_dump_id(t, &[]), base);
        let one = fresh_dump_id(t, std::slice::from_ref(&base));
        assert_eq!(one, format!("{base}.1"));
        let two = fresh_dump_id(t, &[base.clone(), one.clone()]);
        assert_eq!(two, format!("{base}.2"));
        let mut sorted = vec![two.clone(), base.clone(), one.clone()];
        sorted.sort();
        assert_eq!(sorted, [base, one, two], "suffixed ids sort by time");
    }

    fn manifest(source: DumpSource, format: DumpFormat, streams: &[&str]) -> DumpManifest {
        DumpManifest {
            dump_id: "20261121T053200Z".into(),
            cluster: "main".into(),
            source,
            format,
            database: "shop".into(),
            selection: Vec::new(),
            row_filters: Vec::new(),
            server_version_num: 150_000,
            tool_version: "pg_dump (PostgreSQL) 15.10".into(),
            start_time_us: 0,
            stop_time_us: 0,
            stats: BackupStats::default(),
            streams: streams
                .iter()
                .map(|n| Attachment {
                    name: (*n).into(),
                    size: 0,
                    extents: Vec::new(),
                })
                .collect(),
            properties: Vec::new(),
        }
    }

    /// Each kind of dump refuses the options it cannot honour, naming them.
    #[test]
    fn restore_options_fit_the_dump() {
        let plain = manifest(DumpSource::PgDump, DumpFormat::Plain, &["dump"]);
        let custom = manifest(DumpSource::PgDump, DumpFormat::Custom, &["dump"]);
        let dir = manifest(DumpSource::PgDump, DumpFormat::Directory, &["dir/toc.dat"]);
        let all = manifest(
            DumpSource::PgDumpAll,
            DumpFormat::Custom,
            &["globals.sql", "db/postgres", "db/shop"],
        );
        let ok = DumpRestoreOptions::default();
        for m in [&plain, &custom, &dir, &all] {
            assert!(check_restore(m, &ok).is_ok(), "{:?}", m.format);
        }
        let err = |m: &DumpManifest, o: &DumpRestoreOptions| {
            check_restore(m, o).expect_err("refused").to_string()
        };
        let tables = DumpRestoreOptions {
            tables: vec!["orders".into()],
            clean: true,
            ..ok.clone()
        };
        let e = err(&plain, &tables);
        assert!(
            e.contains("plain SQL") && e.contains("--table, --clean"),
            "{e}"
        );
        assert!(check_restore(&custom, &tables).is_ok());
        let e = err(&all, &tables);
        assert!(
            e.contains("--database NAME") && e.contains("--table"),
            "{e}"
        );
        let one = DumpRestoreOptions {
            database: Some("shop".into()),
            ..tables.clone()
        };
        assert!(
            check_restore(&all, &one).is_ok(),
            "one database takes --table"
        );
        let e = err(&custom, &one);
        assert!(e.contains("leave --database out"), "{e}");
        let missing = DumpRestoreOptions {
            database: Some("app".into()),
            ..ok.clone()
        };
        let e = err(&all, &missing);
        assert!(e.contains("it has postgres, shop"), "{e}");
        let parallel = DumpRestoreOptions {
            parallel: Some(4),
            ..ok.clone()
        };
        assert!(check_restore(&dir, &parallel).is_ok());
        assert!(err(&custom, &parallel).contains("directory-format"));
        assert!(err(&plain, &parallel).contains("--parallel"));
        let zero = DumpRestoreOptions {
            parallel: Some(0),
            ..ok.clone()
        };
        assert!(err(&dir, &zero).contains("at least 1"));
        let scratch = DumpRestoreOptions {
            scratch: Some(PathBuf::from("/var/tmp")),
            ..ok.clone()
        };
        assert!(check_restore(&dir, &scratch).is_ok());
        assert!(err(&custom, &scratch).contains("leave --scratch out"));
        let sqlite = manifest(DumpSource::Sqlite, DumpFormat::SqliteFile, &["dump"]);
        assert!(err(&sqlite, &ok).contains("--sqlite-to"));
        let two_schemas = DumpRestoreOptions {
            tables: vec!["a.x".into(), "b.y".into()],
            ..ok
        };
        assert!(err(&dir, &two_schemas).contains("once per schema"));
    }

    #[test]
    fn dump_options_fit_the_format() {
        let ok = PgDumpOptions::default();
        assert!(ok.check().is_ok() && ok.check_all().is_ok());
        let plain_rows = PgDumpOptions {
            format: DumpFormat::Plain,
            row_filters: vec![RowFilterSpec::parse("orders:tenant_id = 1").expect("parses")],
            ..PgDumpOptions::default()
        };
        assert!(plain_rows.check().is_err());
        let parallel = PgDumpOptions {
            parallel: Some(4),
            ..PgDumpOptions::default()
        };
        assert!(parallel.check().is_err(), "custom format has no workers");
        let dir = PgDumpOptions {
            format: DumpFormat::Directory,
            ..parallel
        };
        assert!(dir.check().is_ok());
        let scratch = PgDumpOptions {
            scratch: Some(PathBuf::from("/var/tmp")),
            ..PgDumpOptions::default()
        };
        assert!(
            scratch.check().is_err(),
            "custom format has no scratch directory"
        );
        assert_eq!(
            dir.pg_dump_args(),
            [
                "--format=directory",
                "--compress=0",
                "--no-password",
                "--jobs=4"
            ]
        );
        let e = dir.check_all().expect_err("--all is custom").to_string();
        assert!(e.contains("--format other than custom"), "{e}");
        let tables = PgDumpOptions {
            selection: Selection {
                tables: vec!["orders".into()],
                ..Selection::default()
            },
            ..PgDumpOptions::default()
        };
        assert!(tables.check().is_ok() && tables.check_all().is_err());
        let schema_only = PgDumpOptions {
            selection: Selection {
                schema_only: true,
                ..Selection::default()
            },
            ..PgDumpOptions::default()
        };
        assert!(schema_only.check_all().is_ok(), "--all --schema-only");
        let data_only = PgDumpOptions {
            selection: Selection {
                data_only: true,
                ..Selection::default()
            },
            ..PgDumpOptions::default()
        };
        let e = data_only.check_all().expect_err("no database to create");
        assert!(e.to_string().contains("--data-only"), "{e}");
    }
}
