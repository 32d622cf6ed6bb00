//! `pgkeep backup`: a base backup over the replication protocol, stored as chunks.
//!
//! The backup commits only after the server has sent its end position and every chunk and
//! index entry is stored: the manifest is written last. A backup that fails at any point
//! leaves no manifest (only unreferenced packs, which pruning removes) and a clear error.

pub mod command;
pub mod ingest;

use std::time::{Instant, SystemTime};

use pgkeep_format::{
    Attachment, BackupKind, BackupStats, ClusterName, Lsn, Manifest, PgInfo, Tablespace, TimelineId,
};

use self::command::{parse_position, parse_tablespace, BaseBackupRequest, TablespaceRow};
use self::ingest::{Ingest, PageStats, Parent};
use crate::chunker::{Chunker, Chunking};
use crate::conninfo::ConnConfig;
use crate::error::{Error, Result};
use crate::pipeline::{SessionStats, WriteOptions, WriteSession};
use crate::replication::wire::{parse_backup_copy_data, BackupCopyData};
use crate::replication::{identify, Event, PgConnection, PgError, ReplicationMode, ServerInfo};
use crate::repository::Repository;
use crate::tar::{TarEvent, TarReader, Termination};

/// How an incremental backup finds unchanged pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncrementalMethod {
    /// The server's own incremental backup (PostgreSQL 17+ with `summarize_wal = on`) when
    /// available, else page LSNs.
    #[default]
    Auto,
    /// Compare each page's header LSN with the parent's start (every version).
    PageLsn,
    /// `UPLOAD_MANIFEST` + `BASE_BACKUP ( INCREMENTAL )`: the server sends only changed
    /// blocks, known from its WAL summaries; an error where unavailable.
    Server,
}

/// What `take_backup` should do.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Label shown by PostgreSQL (`backup_label`) and by `pgkeep list`.
    pub label: Option<String>,
    pub fast_checkpoint: bool,
    /// Force a full backup even when a parent is available.
    pub full: bool,
    pub incremental_method: IncrementalMethod,
    /// Store a changed page of an incremental backup as its difference from the parent's
    /// copy (an [`pgkeep_format::Extent::Xor`]), which the backup reads back from the
    /// repository. Off: changed pages are stored whole, and nothing is read.
    pub page_deltas: bool,
    /// Throttle the server's sending, in kB/s.
    pub max_rate_kb: Option<u32>,
    pub verify_checksums: bool,
    /// The per-file checksums of PostgreSQL's `backup_manifest`, which a restore checks every
    /// file against (see [`crate::manifest_checksum`]).
    pub manifest_checksums: crate::manifest_checksum::ManifestChecksum,
    /// Fail when the server sends nothing for this long once the backup data flows (not
    /// during the initial checkpoint, which may legitimately take long when spread).
    pub read_timeout: Option<std::time::Duration>,
    pub write: WriteOptions,
    /// Waiting for a running `prune` (see [`crate::lock`]).
    pub lock: crate::lock::LockOptions,
}

impl Default for BackupOptions {
    fn default() -> Self {
        Self {
            label: None,
            fast_checkpoint: true,
            full: false,
            incremental_method: IncrementalMethod::Auto,
            page_deltas: true,
            max_rate_kb: None,
            verify_checksums: true,
            manifest_checksums: Default::default(),
            read_timeout: Some(std::time::Duration::from_secs(300)),
            write: WriteOptions::default(),
            lock: crate::lock::LockOptions::default(),
        }
    }
}

/// Receives progress; called from the backup task.
pub trait Progress: Send + Sync {
    /// The server's size estimate, in bytes (with PROGRESS).
    fn total(&self, bytes: u64);
    /// Bytes the server has sent so far.
    fn sent(&self, bytes: u64);
}

/// A progress sink that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn total(&self, _: u64) {}
    fn sent(&self, _: u64) {}
}

/// What a finished backup reports.
#[derive(Debug, Clone)]
pub struct BackupSummary {
    pub manifest: Manifest,
    pub session: SessionStats,
    pub pages: PageStats,
    pub seconds: f64,
}

/// The newest backup of `cluster` that can serve as parent for page-level reuse: same
/// system, same timeline, and started at or before the server's current position. After a
/// point-in-time recovery or a promotion the server is on another timeline, where LSNs may
/// be lower than the parent's yet name newer page versions; reusing pages by LSN there
/// would store wrong data, so such a backup is full.
async fn find_parent(
    repo: &Repository,
    cluster: &ClusterName,
    system_id: u64,
    timeline: TimelineId,
    position: Lsn,
) -> Result<Option<Manifest>> {
    let ids = repo.list_backups(cluster).await?;
    for id in ids.iter().rev() {
        let m = repo.read_manifest(cluster, id).await?;
        let usable = matches!(m.kind, BackupKind::Full | BackupKind::Incremental)
            && m.postgres.is_some_and(|p| {
                p.system_id == system_id && p.timeline == timeline.0 && Lsn(p.start_lsn) <= position
            });
        if usable {
            return Ok(Some(m));
        }
        if m.postgres.is_some_and(|p| p.system_id == system_id) {
            tracing::info!(backup = %m.backup_id, "newest backup is on another timeline or ahead of the server: taking a full backup");
            return Ok(None);
        }
    }
    Ok(None)
}

/// Whether to ask the server for an incremental backup: PostgreSQL 17+, WAL summaries on,
/// and the parent's backup_manifest stored (the server needs it, `UPLOAD_MANIFEST`).
async fn use_server_incremental(
    conn: &mut PgConnection,
    version_num: u32,
    parent: &Manifest,
    method: IncrementalMethod,
) -> Result<bool> {
    if method == IncrementalMethod::PageLsn {
        return Ok(false);
    }
    let why_not = if version_num < 170_000 {
        Some("it needs PostgreSQL 17 or later".to_owned())
    } else if parent.attachment("backup_manifest").is_none() {
        Some(format!(
            "backup {} has no stored backup_manifest",
            parent.backup_id
        ))
    } else {
        let row = conn.query_row("SHOW summarize_wal").await?;
        match row.first().and_then(|c| c.as_deref()) {
            Some("on") => None,
            _ => Some("the server has summarize_wal = off".to_owned()),
        }
    };
    match (why_not, method) {
        (None, _) => Ok(true),
        (Some(why), IncrementalMethod::Server) => Err(Error::InvalidInput(format!(
            "a server-side incremental backup is not possible: {why}"
        ))),
        (Some(why), _) => {
            tracing::info!("using page LSNs for the incremental backup: {why}");
            Ok(false)
        }
    }
}

/// Sends the parent's backup_manifest with `UPLOAD_MANIFEST`, so the next `BASE_BACKUP`
/// can be incremental relative to it.
async fn upload_manifest(
    repo: &Repository,
    conn: &mut PgConnection,
    parent: &Manifest,
) -> Result<()> {
    let att = parent
        .attachment("backup_manifest")
        .ok_or_else(|| Error::InvalidInput("the parent has no backup_manifest".into()))?;
    let mut bytes = Vec::with_capacity(att.size as usize);
    repo.write_extents(&att.extents, &mut bytes).await?;
    conn.send_query("UPLOAD_MANIFEST").await?;
    match conn.next_event().await? {
        Event::CopyIn => {}
        other => {
            return Err(PgError::Protocol(format!("UPLOAD_MANIFEST answered {other:?}")).into())
        }
    }
    for piece in bytes.chunks(64 << 10) {
        conn.send_copy_data(piece).await?;
    }
    conn.send_copy_done().await?;
    loop {
        match conn.next_event().await? {
            Event::ReadyForQuery => return Ok(()),
            Event::CommandComplete(_) | Event::RowDescription(_) | Event::DataRow(_) => {}
            other => {
                return Err(PgError::Protocol(format!(
                    "unexpected {other:?} after UPLOAD_MANIFEST"
                ))
                .into())
            }
        }
    }
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A backup id not yet used in the cluster: the start time, with `-2`, `-3`... on a clash.
async fn fresh_backup_id(
    repo: &Repository,
    cluster: &ClusterName,
    started: SystemTime,
) -> Result<String> {
    let base = Repository::backup_id_at(started);
    let existing = repo.list_backups(cluster).await?;
    let mut id = base.clone();
    let mut n = 1;
    while existing.contains(&id) {
        n += 1;
        id = format!("{base}-{n}");
    }
    Ok(id)
}

/// The value of a `KEY: value` line of backup_label.
fn label_field<'a>(label: &'a str, key: &str) -> Option<&'a str> {
    label
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
}

/// Takes a base backup of the server `conn_cfg` points at into `cluster`.
pub async fn take_backup(
    repo: &Repository,
    cluster: &ClusterName,
    conn_cfg: &ConnConfig,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupSummary> {
    let clock = Instant::now();
    let started = SystemTime::now();
    let mut conn = PgConnection::connect(conn_cfg, ReplicationMode::Physical).await?;
    // The setup queries answer at once on a healthy server: a stopped one must not hang us.
    conn.set_read_timeout(opts.read_timeout);
    let server = identify(&mut conn).await?;
    repo.bind_cluster(cluster, server.system_id, server.version_num)
        .await?;
    // Held from before the parent and the index are read until the manifest is written:
    // a prune in between could delete chunks this backup refers to.
    let lock = repo
        .lock(pgkeep_format::LockMode::Shared, "backup", opts.lock)
        .await?;
    let result = backup_locked(
        repo, cluster, opts, progress, conn, &server, started, clock, &lock,
    )
    .await;
    let released = lock.release().await;
    let summary = result?;
    released?;
    Ok(summary)
}

/// The part of [`take_backup`] that runs under the backup's shared lock.
#[allow(clippy::too_many_arguments)]
async fn backup_locked(
    repo: &Repository,
    cluster: &ClusterName,
    opts: &BackupOptions,
    progress: &dyn Progress,
    mut conn: PgConnection,
    server: &ServerInfo,
    started: SystemTime,
    clock: Instant,
    lock: &crate::lock::RepoLock,
) -> Result<BackupSummary> {
    let backup_id = fresh_backup_id(repo, cluster, started).await?;
    let parent = if opts.full {
        None
    } else {
        find_parent(
            repo,
            cluster,
            server.system_id,
            server.timeline,
            server.position,
        )
        .await?
    };

    let server_side = match &parent {
        Some(p) => {
            use_server_incremental(&mut conn, server.version_num, p, opts.incremental_method)
                .await?
        }
        None => false,
    };
    if let (true, Some(p)) = (server_side, &parent) {
        upload_manifest(repo, &mut conn, p).await?;
    }
    let session = repo.write_session(opts.write).await?;
    let config = repo.config();
    let parent_pages = parent.as_ref().and_then(|p| {
        p.postgres
            .map(|pg| Parent::new(Lsn(pg.start_lsn), &p.files))
    });
    let max_pending = 8 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut ingest = Ingest::new(
        &session,
        config.page_chunk_size as usize,
        Chunking::from_config(config),
        parent_pages,
        opts.page_deltas,
        max_pending,
    );
    let request = BaseBackupRequest {
        label: opts
            .label
            .clone()
            .unwrap_or_else(|| format!("pgkeep {backup_id}")),
        fast_checkpoint: opts.fast_checkpoint,
        max_rate: opts.max_rate_kb,
        verify_checksums: opts.verify_checksums,
        manifest_checksums: opts.manifest_checksums,
        incremental: server_side,
    };
    let expected_parent = parent
        .as_ref()
        .and_then(|p| p.postgres)
        .map(|p| (TimelineId(p.timeline), Lsn(p.start_lsn)));
    let stream = run_base_backup(
        &mut conn,
        &request,
        server.version_num,
        opts.read_timeout,
        expected_parent,
        &mut ingest,
        &session,
        progress,
    )
    .await?;
    // Recovery starts at the checkpoint named in backup_label: without it the backup is not
    // restorable, so it is refused rather than guessed, before anything is committed.
    let checkpoint_lsn = label_field(&stream.backup_label, "CHECKPOINT LOCATION")
        .and_then(|v| v.parse::<Lsn>().ok())
        .ok_or_else(|| {
            PgError::Protocol(
                "the data directory archive has no backup_label with a CHECKPOINT LOCATION".into(),
            )
        })?;
    let (files, pages) = ingest.finish().await?;
    let (session_stats, _) = session.finish().await?;
    let _ = conn.close().await;

    let (kind, parent_id, references) = match &parent {
        Some(p) => {
            let mut refs = p.references.clone();
            refs.push(p.backup_id.clone());
            (BackupKind::Incremental, Some(p.backup_id.clone()), refs)
        }
        None => (BackupKind::Full, None, Vec::new()),
    };
    let mut manifest = Manifest {
        backup_id,
        cluster: cluster.to_string(),
        kind,
        parent: parent_id,
        references,
        label: request.label.clone(),
        start_time_us: micros(started),
        stop_time_us: micros(SystemTime::now()),
        postgres: Some(PgInfo {
            system_id: server.system_id,
            version_num: server.version_num,
            timeline: stream.start.1 .0,
            start_lsn: stream.start.0 .0,
            stop_lsn: stream.end.0 .0,
            checkpoint_lsn: checkpoint_lsn.0,
            wal_segment_size: server.wal_segment_size,
        }),
        tablespaces: stream
            .tablespaces
            .iter()
            .filter_map(|t| {
                Some(Tablespace {
                    oid: t.oid?,
                    location: t.location.clone().unwrap_or_default(),
                })
            })
            .collect(),
        attachments: stream.manifest.into_iter().collect(),
        stats: BackupStats::default(),
        files,
        properties: vec![
            ("pgkeep_version".into(), env!("CARGO_PKG_VERSION").into()),
            (
                "incremental_method".into(),
                match (&parent, server_side) {
                    (None, _) => "none",
                    (Some(_), true) => "server",
                    (Some(_), false) => "page-lsn",
                }
                .into(),
            ),
            (
                "server_version".into(),
                crate::replication::version_text(server.version_num),
            ),
        ],
    };
    let chunks = manifest.chunk_refs();
    manifest.stats = BackupStats {
        logical_bytes: manifest.files.iter().map(|f| f.size).sum(),
        stored_bytes: repo.stored_size(&chunks),
        new_bytes: session_stats.new_bytes,
        chunks: chunks.len() as u64,
        new_chunks: session_stats.new_chunks,
    };
    lock.confirm().await?;
    repo.write_manifest(&manifest).await?;
    Ok(BackupSummary {
        manifest,
        session: session_stats,
        pages,
        seconds: clock.elapsed().as_secs_f64(),
    })
}

/// What the copy stream delivered besides the files.
struct StreamOutcome {
    start: (Lsn, TimelineId),
    end: (Lsn, TimelineId),
    tablespaces: Vec<TablespaceRow>,
    manifest: Option<Attachment>,
    backup_label: String,
}

/// The archive currently being received.
struct Archive {
    name: String,
    tablespace: u32,
    tar: TarReader,
    /// Inside the data directory's `backup_label` entry (its data may span messages).
    in_label: bool,
}

impl Archive {
    fn new(name: String, tablespace: u32, termination: Termination) -> Self {
        Self {
            name,
            tablespace,
            tar: TarReader::new(termination),
            in_label: false,
        }
    }
}

/// Runs `BASE_BACKUP` and feeds every archive into `ingest`.
#[allow(clippy::too_many_arguments)]
async fn run_base_backup(
    conn: &mut PgConnection,
    request: &BaseBackupRequest,
    version_num: u32,
    read_timeout: Option<std::time::Duration>,
    parent: Option<(TimelineId, Lsn)>,
    ingest: &mut Ingest<'_>,
    session: &WriteSession,
    progress: &dyn Progress,
) -> Result<StreamOutcome> {
    let modern = version_num >= 150_000;
    // The checkpoint before the start position may take as long as the server's
    // checkpoint_timeout (spread) or its dirty buffers (fast): not timed.
    conn.set_read_timeout(None);
    conn.send_query(&request.command(version_num)).await?;

    // 1. Start position; 2. tablespaces (the data directory last).
    let mut sets: Vec<Vec<Vec<Option<String>>>> = Vec::new();
    let mut rows = Vec::new();
    while sets.len() < 2 {
        match conn.next_event().await? {
            Event::RowDescription(_) => {}
            Event::DataRow(r) => rows.push(
                r.into_iter()
                    .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .collect::<Vec<_>>(),
            ),
            Event::CommandComplete(_) => sets.push(std::mem::take(&mut rows)),
            other => {
                return Err(PgError::Protocol(format!(
                    "unexpected {other:?} before the backup data"
                ))
                .into())
            }
        }
    }
    let start_row = sets[0]
        .first()
        .ok_or_else(|| PgError::Protocol("BASE_BACKUP sent no start position".into()))?;
    let start = parse_position(start_row, "BASE_BACKUP start")?;
    // The checkpoint is done; from here on the server sends continuously.
    conn.set_read_timeout(read_timeout);
    if let Some((tli, parent_start)) = parent {
        if start.1 != tli || start.0 < parent_start {
            return Err(Error::InvalidInput(format!(
                "the server switched to timeline {} (at {}) while the backup started; run the backup again",
                start.1, start.0
            )));
        }
    }
    let tablespaces: Vec<TablespaceRow> = sets[1]
        .iter()
        .map(|r| parse_tablespace(r))
        .collect::<Result<_, _>>()?;
    let total: u64 = tablespaces.iter().filter_map(|t| t.size_kb).sum::<u64>() * 1024;
    progress.total(total);

    let mut archive: Option<Archive> = None;
    let mut manifest_chunker: Option<(Chunker, Vec<pgkeep_format::Extent>, u64)> = None;
    let mut manifest_pending = Vec::new();
    let mut legacy_next = 0usize;
    let mut sent = 0u64;
    let mut backup_label = String::new();
    let termination = if modern {
        Termination::Required
    } else {
        Termination::Optional
    };

    let end = loop {
        match conn.next_event().await? {
            Event::CopyOut => {
                if !modern {
                    // 13/14: one COPY per tablespace in row order, then one for the manifest.
                    finish_archive(archive.take(), ingest).await?;
                    if manifest_chunker.is_some() {
                        return Err(
                            PgError::Protocol("a COPY after the backup manifest".into()).into()
                        );
                    }
                    match tablespaces.get(legacy_next) {
                        Some(t) => {
                            if t.oid == Some(0) {
                                return Err(
                                    PgError::Protocol("a tablespace with OID 0".into()).into()
                                );
                            }
                            let tablespace = t.oid.unwrap_or(0);
                            let name = t
                                .oid
                                .map_or_else(|| "base.tar".to_owned(), |o| format!("{o}.tar"));
                            archive = Some(Archive::new(name, tablespace, termination));
                            legacy_next += 1;
                        }
                        None => manifest_chunker = Some((manifest_chunker_new(), Vec::new(), 0)),
                    }
                }
            }
            Event::CopyData(payload) => {
                let message = if modern {
                    parse_backup_copy_data(payload)?
                } else if manifest_chunker.is_some() {
                    BackupCopyData::Data(payload)
                } else {
                    sent += payload.len() as u64;
                    progress.sent(sent);
                    BackupCopyData::Data(payload)
                };
                match message {
                    BackupCopyData::NewArchive {
                        name,
                        tablespace_path: _,
                    } => {
                        finish_archive(archive.take(), ingest).await?;
                        let tablespace = archive_tablespace(&name)?;
                        archive = Some(Archive::new(name, tablespace, termination));
                    }
                    BackupCopyData::Manifest => {
                        if manifest_chunker.is_some() {
                            return Err(PgError::Protocol("a second backup manifest".into()).into());
                        }
                        finish_archive(archive.take(), ingest).await?;
                        manifest_chunker = Some((manifest_chunker_new(), Vec::new(), 0));
                    }
                    BackupCopyData::Progress(done) => progress.sent(done),
                    BackupCopyData::Data(bytes) => {
                        if let Some((chunker, _, size)) = manifest_chunker.as_mut() {
                            *size += bytes.len() as u64;
                            chunker.push(&bytes);
                            while let Some(c) = chunker.next_chunk() {
                                manifest_pending.push(session.submit(c).await?);
                            }
                        } else if let Some(a) = archive.as_mut() {
                            a.tar.push(bytes);
                            pump(a, ingest, &mut backup_label).await?;
                        } else {
                            return Err(PgError::Protocol(
                                "backup data before any archive began".into(),
                            )
                            .into());
                        }
                    }
                }
            }
            Event::CopyDone => {}
            Event::RowDescription(_) => {}
            Event::DataRow(r) => {
                let row: Vec<Option<String>> = r
                    .into_iter()
                    .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .collect();
                break parse_position(&row, "BASE_BACKUP end")?;
            }
            other => {
                return Err(
                    PgError::Protocol(format!("unexpected {other:?} in the backup stream")).into(),
                )
            }
        }
    };
    finish_archive(archive.take(), ingest).await?;
    // CommandComplete(s) and ReadyForQuery: the server confirms the backup is complete.
    loop {
        match conn.next_event().await? {
            Event::ReadyForQuery => break,
            Event::CommandComplete(_) | Event::RowDescription(_) => {}
            other => {
                return Err(
                    PgError::Protocol(format!("unexpected {other:?} after the backup")).into(),
                )
            }
        }
    }
    let manifest = match manifest_chunker {
        None => None,
        Some((mut chunker, mut extents, size)) => {
            while let Some(c) = chunker.finish() {
                manifest_pending.push(session.submit(c).await?);
            }
            for p in manifest_pending {
                extents.push(pgkeep_format::Extent::whole(p.wait().await?.chunk));
            }
            Some(Attachment {
                name: "backup_manifest".into(),
                size,
                extents,
            })
        }
    };
    if manifest.is_none() {
        return Err(PgError::Protocol("the server sent no backup_manifest".into()).into());
    }
    Ok(StreamOutcome {
        start,
        end,
        tablespaces,
        manifest,
        backup_label,
    })
}

/// The chunker for PostgreSQL's backup_manifest: JSON of a few hundred bytes per file, so
/// smaller content-defined chunks than for data let consecutive manifests share most chunks.
fn manifest_chunker_new() -> Chunker {
    Chunker::new(Chunking::ContentDefined {
        min: 64 << 10,
        avg: 256 << 10,
        max: 1 << 20,
    })
}

/// `base.tar` is the data directory (0); `<oid>.tar` a tablespace.
fn archive_tablespace(name: &str) -> Result<u32> {
    if name == "base.tar" {
        return Ok(0);
    }
    name.strip_suffix(".tar")
        .and_then(|o| o.parse::<u32>().ok())
        .filter(|o| *o != 0)
        .ok_or_else(|| PgError::Protocol(format!("unexpected archive name {name:?}")).into())
}

/// Moves every complete tar event into `ingest`.
async fn pump(a: &mut Archive, ingest: &mut Ingest<'_>, backup_label: &mut String) -> Result<()> {
    loop {
        let event = a.tar.next_event().map_err(|source| Error::Archive {
            archive: a.name.clone(),
            source,
        })?;
        match event {
            None => return Ok(()),
            Some(TarEvent::Entry(e)) => {
                a.in_label = a.tablespace == 0 && e.path == b"backup_label";
                ingest.begin(a.tablespace, e)?;
            }
            Some(TarEvent::Data(d)) => {
                if a.in_label {
                    backup_label.push_str(&String::from_utf8_lossy(&d));
                }
                ingest.data(d).await?;
            }
            Some(TarEvent::EntryEnd) => {
                a.in_label = false;
                ingest.end().await?;
            }
            Some(TarEvent::End) => {}
        }
    }
}

/// Checks that an archive ended cleanly (a truncated tar must never look complete). Every
/// pushed byte was already pumped, so only the end is checked here.
async fn finish_archive(a: Option<Archive>, _ingest: &mut Ingest<'_>) -> Result<()> {
    let Some(mut a) = a else {
        return Ok(());
    };
    a.tar.finish().map_err(|source| Error::Archive {
        archive: a.name.clone(),
        source,
    })
}
