//! `pgkeep dump` and `dump-restore`: logical dumps (pg_dump, SQLite snapshots) stored in the
//! same deduplicated, encrypted archive as base backups.
//!
//! pg_dump writes its custom format uncompressed (`-Fc -Z0`) to a pipe; the stream is cut with
//! FastCDC, so tomorrow's dump of a mostly unchanged database stores only the chunks around
//! what changed (compression happens per chunk, after deduplication). A dump commits like a
//! backup: chunks, then the index segment, then the dump manifest, under a shared lock that
//! keeps `prune` out. A dump whose tool fails leaves no manifest, and its error is the tool's
//! own stderr.

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

use self::selection::{RowFilterSpec, Selection};
use self::tools::{find_tool, libpq_env, major_of, spawn, tool_version};
use crate::chunker::Chunking;
use crate::conninfo::ConnConfig;
use crate::error::{Error, Result};
use crate::lock::{LockOptions, RepoLock};
use crate::pipeline::{SessionStats, StoredStream, WriteOptions, WriteSession};
use crate::replication::{Event, PgConnection, PgError, ReplicationMode};
use crate::repository::{limits, Repository};
use crate::storage::Created;

/// The main stream of a dump.
pub const MAIN_STREAM: &str = "dump";

/// What `dump_postgres` should take.
#[derive(Debug, Clone)]
pub struct PgDumpOptions {
    /// Directory of pg_dump; else PATH and the standard locations.
    pub pg_bin: Option<PathBuf>,
    pub selection: Selection,
    pub row_filters: Vec<RowFilterSpec>,
    pub write: WriteOptions,
    pub lock: LockOptions,
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

/// Takes a pg_dump of the database `conn` names and stores it in `cluster`.
pub async fn dump_postgres(
    repo: &Repository,
    cluster: &ClusterName,
    conn: &ConnConfig,
    opts: &PgDumpOptions,
) -> Result<DumpSummary> {
    opts.selection.check(&opts.row_filters)?;
    let clock = std::time::Instant::now();
    let started = SystemTime::now();
    if conn.replication.is_some() {
        return Err(Error::InvalidInput(
            "pg_dump needs an ordinary connection: remove `replication` from --pg".into(),
        ));
    }
    // An ordinary session first: the server's version picks pg_dump, and a tenant export
    // needs a snapshot shared by pg_dump and the row streams.
    let mut session = PgConnection::connect(conn, ReplicationMode::None).await?;
    let version_num = session.server_version_num().ok_or_else(|| {
        Error::Postgres(PgError::Protocol(
            "the server did not report server_version".into(),
        ))
    })?;
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
    let mut args: Vec<String> = vec![
        "--format=custom".into(),
        // Uncompressed: pg_dump's own compression would defeat deduplication.
        "--compress=0".into(),
        "--no-password".into(),
    ];
    args.extend(opts.selection.args());
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
        let mut streams = Vec::new();
        let main = run_into(&write, &pg_dump, &args, &env, chunking).await?;
        streams.push(stream(MAIN_STREAM, main));
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
        let (session_stats, _) = write.finish().await?;
        let mut manifest = DumpManifest {
            dump_id: String::new(),
            cluster: cluster.to_string(),
            source: DumpSource::PgDump,
            format: DumpFormat::Custom,
            database: conn.effective_dbname().to_owned(),
            selection: opts.selection.args(),
            row_filters: filters,
            server_version_num: version_num,
            tool_version: tool.clone(),
            start_time_us: micros(started),
            stop_time_us: micros(SystemTime::now()),
            stats: stats(repo, &streams, &session_stats),
            streams,
            properties: vec![
                ("pgkeep_version".into(), env!("CARGO_PKG_VERSION").into()),
                ("host".into(), conn.display_target()),
            ],
        };
        repo.commit_dump(&mut manifest, &lock).await?;
        Ok(DumpSummary {
            manifest,
            session: session_stats,
            seconds: clock.elapsed().as_secs_f64(),
        })
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
    pub tables: Vec<String>,
    pub schema_only: bool,
    pub data_only: bool,
    /// `--clean --if-exists`: drop objects before recreating them.
    pub clean: bool,
    /// `--create`: create the database (connect to another one, e.g. `postgres`).
    pub create: bool,
    pub lock: LockOptions,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct DumpRestoreSummary {
    pub bytes: u64,
    /// Rows loaded from row-filter streams.
    pub filtered_rows: u64,
}

/// Writes a dump's main stream to `path` unchanged (pg_dump's own file), and each row
/// filter's rows to `PATH.rows-N.copy`. Refuses to overwrite.
pub async fn dump_to_file(
    repo: &Repository,
    cluster: &ClusterName,
    dump_id: &str,
    path: &Path,
    lock: LockOptions,
) -> Result<Vec<PathBuf>> {
    let lock = repo.lock(LockMode::Shared, "dump-restore", lock).await?;
    let result: Result<_> = async {
        let m = repo.read_dump(cluster, dump_id).await?;
        let mut written = Vec::new();
        let main = m
            .stream(MAIN_STREAM)
            .ok_or_else(|| missing_stream(&m, MAIN_STREAM))?;
        write_stream_file(repo, &main.extents, path).await?;
        written.push(path.to_owned());
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

/// Restores a pg_dump dump into the database `conn` names with pg_restore. A tenant export
/// (row filters) is restored in sections: schema, pg_dump's data, the filtered rows with
/// `COPY ... FROM STDIN`, then indexes and constraints, so the rows load before the
/// constraints that check them are built, as pg_restore itself does.
pub async fn restore_dump(
    repo: &Repository,
    cluster: &ClusterName,
    dump_id: &str,
    conn: &ConnConfig,
    opts: &DumpRestoreOptions,
) -> Result<DumpRestoreSummary> {
    if opts.schema_only && opts.data_only {
        return Err(Error::InvalidInput(
            "--schema-only and --data-only exclude each other".into(),
        ));
    }
    let lock = repo
        .lock(LockMode::Shared, "dump-restore", opts.lock)
        .await?;
    let result = restore_locked(repo, cluster, dump_id, conn, opts).await;
    let released = lock.release().await;
    let out = result?;
    released?;
    Ok(out)
}

async fn restore_locked(
    repo: &Repository,
    cluster: &ClusterName,
    dump_id: &str,
    conn: &ConnConfig,
    opts: &DumpRestoreOptions,
) -> Result<DumpRestoreSummary> {
    let m = repo.read_dump(cluster, dump_id).await?;
    if m.format != DumpFormat::Custom {
        return Err(Error::InvalidInput(format!(
            "dump {dump_id} is a {} dump: restore it with --sqlite-to PATH or --to-file PATH",
            m.format.name()
        )));
    }
    let main = m
        .stream(MAIN_STREAM)
        .ok_or_else(|| missing_stream(&m, MAIN_STREAM))?;
    let mut session = PgConnection::connect(conn, ReplicationMode::None).await?;
    let target_major = session.server_version_num().unwrap_or(0) / 10000;
    let dump_major = major_of(&m.tool_version).unwrap_or(0);
    let pg_restore = find_tool(
        opts.pg_bin.as_deref(),
        "pg_restore",
        target_major.max(dump_major),
    )?;
    let mut base: Vec<String> = vec!["--exit-on-error".into(), "--no-password".into()];
    if opts.clean {
        base.push("--clean".into());
        base.push("--if-exists".into());
    }
    for t in &opts.tables {
        base.push(format!("--table={t}"));
    }
    let wants_rows = |f: &RowFilter| {
        !opts.schema_only
            && (opts.tables.is_empty()
                || opts
                    .tables
                    .iter()
                    .any(|t| f.table == *t || f.table.rsplit('.').next() == Some(t.as_str())))
    };
    let rows: Vec<&RowFilter> = m.row_filters.iter().filter(|f| wants_rows(f)).collect();
    // With --create, pg_restore connects to `conn`'s database and creates the dumped one;
    // later passes and the row loads go to the created database.
    let created_db = opts.create.then(|| m.database.clone());
    let mut summary = DumpRestoreSummary {
        bytes: 0,
        filtered_rows: 0,
    };
    let passes: Vec<Vec<&str>> = if rows.is_empty() {
        let mut p = Vec::new();
        if opts.schema_only {
            p.push("--schema-only");
        }
        if opts.data_only {
            p.push("--data-only");
        }
        vec![p]
    } else if opts.data_only {
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
        if opts.create && first {
            args.push("--create".into());
        }
        let db = if first { None } else { created_db.as_deref() };
        let env = libpq_env(conn, db);
        args.push(format!(
            "--dbname={}",
            env.iter()
                .find(|(k, _)| k == "PGDATABASE")
                .map_or("", |(_, v)| v.as_str())
        ));
        summary.bytes += pipe_into(repo, &main.extents, &pg_restore, &args, &env).await?;
        let is_data_pass = pass.contains(&"--section=data") || pass.contains(&"--data-only");
        if is_data_pass && !rows.is_empty() {
            let target = match &created_db {
                Some(db) => {
                    let mut c = conn.clone();
                    c.dbname = Some(db.clone());
                    session_db.insert(PgConnection::connect(&c, ReplicationMode::None).await?)
                }
                None => &mut session,
            };
            for f in &rows {
                let s = m
                    .stream(&f.stream)
                    .ok_or_else(|| missing_stream(&m, &f.stream))?;
                summary.filtered_rows += copy_in(repo, target, &f.table, &s.extents).await?;
            }
        }
    }
    if let Some(s) = session_db {
        let _ = s.close().await;
    }
    let _ = session.close().await;
    Ok(summary)
}

/// Pipes a stream into a tool's stdin and waits for it.
async fn pipe_into(
    repo: &Repository,
    extents: &[pgkeep_format::Extent],
    tool: &Path,
    args: &[String],
    env: &[(String, String)],
) -> Result<u64> {
    let mut running = spawn(tool, args, env, Stdio::piped(), Stdio::null())?;
    let mut stdin = running
        .child
        .stdin
        .take()
        .ok_or_else(|| Error::Pipeline("the tool's stdin is not a pipe".into()))?;
    let written = repo.write_extents(extents, &mut stdin).await;
    drop(stdin);
    // The tool's failure explains a broken pipe better than the pipe does.
    let waited = running.wait().await;
    waited?;
    written
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
    // Chunk by chunk: a tenant's rows can be large, and need not be held in memory.
    for e in extents {
        match e {
            pgkeep_format::Extent::Chunk { chunk, offset, len } => {
                let data = repo.read_chunk(&chunk.id).await?;
                let slice = data
                    .get(*offset as usize..(*offset + *len) as usize)
                    .ok_or_else(|| {
                        Error::InvalidInput(format!("extent runs past chunk {}", chunk.id))
                    })?;
                session.send_copy_data(slice).await.map_err(pg)?;
            }
            pgkeep_format::Extent::Zeros { len } => {
                let zeros = vec![0u8; (*len).min(1 << 20) as usize];
                let mut left = *len;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    session.send_copy_data(&zeros[..n]).await.map_err(pg)?;
                    left -= n as u64;
                }
            }
        }
    }
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
}
