//! `wal-stream`: a WAL receiver on a physical replication slot, archiving as WAL is written.
//!
//! ```text
//! walsender ──XLogData──> segment buffer ──full──> archive (segment, create-if-absent)
//!                               └──every --partial-interval──> archive (<segment>.partial)
//!            <──status update (flushed = durably stored)──
//! ```
//! The slot's restart point follows the *flush* position this receiver reports, and it
//! reports as flushed only what is stored: a complete segment, or the stored `.partial` of
//! the segment being filled. So the server never drops WAL that is not archived, and a
//! receiver killed at any point resumes from the archive (at the start of its newest
//! segment, which the slot still holds) without a gap.
//!
//! Segments it completes are stored like `wal-push` stores them, so it runs beside
//! `archive_command` on the same repository: the same segment with the same bytes is no
//! error. A `.partial` is the one object that is replaced: each upload of a growing segment
//! replaces the previous one, and the complete segment deletes it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgkeep_format::{Lsn, SegmentName, TimelineId, WalFileKind, WalFileName};
use tokio::sync::watch;

use crate::conninfo::ConnConfig;
use crate::error::{Error, Result};
use crate::replication::wire::{
    parse_replication_message, standby_status_update, ReplicationMessage,
};
use crate::replication::{identify, Event, PgConnection, PgError, ReplicationMode, ServerInfo};
use crate::wal::archive::{PushOutcome, WalArchive};

/// Tuning of the receiver.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The physical replication slot to stream from.
    pub slot: String,
    /// Create the slot when it does not exist.
    pub create_slot: bool,
    /// How often the segment being filled is uploaded as `.partial`: the data-loss window.
    pub partial_interval: Duration,
    /// How often a status update is sent when nothing else prompts one.
    pub status_interval: Duration,
    /// A server silent this long (no WAL, no keepalive) is treated as lost.
    pub timeout: Duration,
    /// Longest wait between reconnection attempts (the wait doubles from one second).
    pub max_backoff: Duration,
    /// zstd level for stored WAL.
    pub level: i8,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            slot: "pgkeep".into(),
            create_slot: true,
            partial_interval: Duration::from_secs(5),
            status_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(120),
            max_backoff: Duration::from_secs(30),
            level: 3,
        }
    }
}

/// Live counters of a receiver, shared with whoever reports them (the metrics endpoint).
#[derive(Debug, Default)]
pub struct StreamStatus {
    /// End of the WAL received.
    pub received_lsn: AtomicU64,
    /// End of the WAL durably stored (what is reported to the server as flushed).
    pub archived_lsn: AtomicU64,
    /// The server's end of WAL, from its last message.
    pub server_lsn: AtomicU64,
    /// The timeline being received.
    pub timeline: AtomicU64,
    /// Complete segments stored (or found already stored).
    pub segments_archived: AtomicU64,
    /// `.partial` uploads.
    pub partial_uploads: AtomicU64,
    /// Sessions that ended in an error.
    pub errors: AtomicU64,
    /// Unix seconds of the last successful store.
    pub last_success_unix: AtomicI64,
    /// The server's send time of its last message, unix microseconds (for lag in seconds).
    pub last_server_time_us: AtomicI64,
}

impl StreamStatus {
    /// Bytes received but not yet stored.
    pub fn lag_bytes(&self) -> u64 {
        let server = self.server_lsn.load(Ordering::Relaxed);
        server.saturating_sub(self.archived_lsn.load(Ordering::Relaxed))
    }
}

/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

fn now_unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Receives WAL until `shutdown` turns true, reconnecting with backoff after errors. Returns
/// `Ok` on shutdown; errors that retrying cannot fix (wrong system, configuration, a
/// conflicting archive) are returned at once.
pub async fn run(
    archive: &WalArchive,
    cfg: &ConnConfig,
    opts: &StreamOptions,
    status: &Arc<StreamStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut backoff = Duration::from_secs(1);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let started = Instant::now();
        match session(archive, cfg, opts, status, &mut shutdown).await {
            Ok(SessionEnd::Shutdown) => return Ok(()),
            Ok(SessionEnd::TimelineEnded) => {
                // Follow the server onto its new timeline at once.
                tracing::info!("the server ended the timeline; reconnecting");
                backoff = Duration::from_secs(1);
                continue;
            }
            Ok(SessionEnd::Reconnect(why)) => {
                tracing::info!("{why}; reconnecting");
                backoff = Duration::from_secs(1);
            }
            Err(e) if is_permanent(&e) => return Err(e),
            Err(e) => {
                status.errors.fetch_add(1, Ordering::Relaxed);
                if started.elapsed() > opts.max_backoff {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "WAL streaming failed");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        backoff = (backoff * 2).min(opts.max_backoff);
    }
}

/// Sleeps until `deadline`; forever without one (a timeout too long to represent).
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// One session of [`run`] (connect, identify, slot, stream) without its reconnect loop: the
/// session's error is returned instead of logged and retried. For callers that must see why
/// a server was refused (tests of hostile servers); `Ok` on shutdown or when the server
/// ends the stream.
pub async fn run_once(
    archive: &WalArchive,
    cfg: &ConnConfig,
    opts: &StreamOptions,
    status: &Arc<StreamStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    session(archive, cfg, opts, status, &mut shutdown)
        .await
        .map(|_| ())
}

/// Errors a reconnect cannot fix.
fn is_permanent(e: &Error) -> bool {
    matches!(
        e,
        Error::WrongSystem { .. }
            | Error::WalConflict { .. }
            | Error::WalRefused { .. }
            | Error::InvalidInput(_)
            | Error::Corrupt { .. }
            | Error::WrongPassphrase { .. }
    ) || matches!(e, Error::Postgres(PgError::Server(s)) if s.code.starts_with("28"))
}

enum SessionEnd {
    Shutdown,
    /// The server finished streaming this timeline (it was promoted, or its upstream was).
    TimelineEnded,
    /// The server ended the stream (shutting down?): reconnect after a pause.
    Reconnect(String),
}

/// One connection: identify, slot, start position, then the receive loop.
async fn session(
    archive: &WalArchive,
    cfg: &ConnConfig,
    opts: &StreamOptions,
    status: &StreamStatus,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd> {
    let mut conn = PgConnection::connect(cfg, ReplicationMode::Physical).await?;
    // A server that stops answering the setup queries is retried like one that stops
    // streaming (the receive loop times out on its own).
    if opts.timeout < Duration::from_secs(u64::from(u32::MAX)) {
        conn.set_read_timeout(Some(opts.timeout));
    }
    let server = identify(&mut conn).await?;
    archive
        .repository()
        .bind_cluster(archive.cluster(), server.system_id, server.version_num)
        .await?;
    let slot_restart = slot(&mut conn, &server, opts).await?;
    let switch_point = archive_history(archive, &mut conn, server.timeline, opts.level).await?;
    let start = start_position(archive, &server, slot_restart, switch_point).await?;
    tracing::info!(
        slot = %opts.slot, start = %start, timeline = server.timeline.0,
        "starting replication"
    );
    conn.send_query(&format!(
        "START_REPLICATION SLOT {} PHYSICAL {start} TIMELINE {}",
        quote_ident(&opts.slot),
        server.timeline.0
    ))
    .await?;
    match conn.next_event().await? {
        Event::CopyBoth => {}
        other => {
            return Err(PgError::Protocol(format!(
                "START_REPLICATION answered {other:?}, not CopyBoth"
            ))
            .into())
        }
    }
    status
        .timeline
        .store(u64::from(server.timeline.0), Ordering::Relaxed);
    let mut rx = Receiver::new(archive, opts, status, &server, start);
    rx.partial_len = stored_partial_len(archive, &rx.segment_name(WalFileKind::Partial)?).await;
    rx.receive(&mut conn, shutdown).await
}

/// Reads the slot's restart point, creating the slot if asked to. `None` when the server
/// cannot say (PostgreSQL before 15 has no READ_REPLICATION_SLOT) or the slot has none yet.
async fn slot(
    conn: &mut PgConnection,
    server: &ServerInfo,
    opts: &StreamOptions,
) -> Result<Option<Lsn>> {
    let name = quote_ident(&opts.slot);
    if server.version_num >= 150_000 {
        let row = conn
            .query_row(&format!("READ_REPLICATION_SLOT {name}"))
            .await?;
        let kind = row.first().cloned().flatten();
        match kind.as_deref() {
            Some("physical") => return Ok(valid_lsn(row.get(1).cloned().flatten())),
            Some(other) => {
                return Err(Error::InvalidInput(format!(
                    "replication slot {:?} is a {other} slot; wal-stream needs a physical one",
                    opts.slot
                )))
            }
            None if !opts.create_slot => {
                return Err(Error::InvalidInput(format!(
                    "replication slot {:?} does not exist (create it, or let wal-stream create it)",
                    opts.slot
                )))
            }
            None => {}
        }
    }
    if !opts.create_slot {
        return Ok(None);
    }
    match conn
        .query(&format!(
            "CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL"
        ))
        .await
    {
        Ok(_) => {
            tracing::info!(slot = %opts.slot, "created the replication slot");
            // A physical slot reserves WAL from the server's current position (its
            // consistent_point column is 0/0).
            Ok(Some(server.position))
        }
        // 42710 duplicate_object: it exists (PostgreSQL before 15 cannot tell us otherwise).
        Err(PgError::Server(e)) if e.code == "42710" => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Archives the current timeline's history file if it is not yet, and returns the
/// timeline's switch point (where it begins), from that file.
async fn archive_history(
    archive: &WalArchive,
    conn: &mut PgConnection,
    timeline: TimelineId,
    level: i8,
) -> Result<Option<Lsn>> {
    if timeline.0 <= 1 {
        return Ok(None);
    }
    let name = WalFileName::parse(&format!("{:08X}.history", timeline.0))
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let content = match archive.fetch(&name).await? {
        Some((_, bytes)) => bytes,
        None => {
            // As bytes: a reason line may be in any server encoding, and the stored file
            // must be the one PostgreSQL's archive_command would store.
            let row = conn
                .query_row_bytes(&format!("TIMELINE_HISTORY {}", timeline.0))
                .await?;
            let content =
                row.get(1).cloned().flatten().ok_or_else(|| {
                    PgError::Protocol("TIMELINE_HISTORY returned no content".into())
                })?;
            let (prepared, _) = archive
                .prepare(name.clone(), content.clone(), None, level)
                .await?;
            archive.store(prepared, level).await?;
            content
        }
    };
    Ok(switch_point(&String::from_utf8_lossy(&content)))
}

/// The switch point of the newest timeline a history file describes: the LSN on its last
/// entry line (`parentTLI<TAB>X/X<TAB>reason`).
///
/// Read with restore's own parser, so `wal-stream` and `restore` agree on what a (possibly
/// damaged) history file says: a line whose timeline is not a number counts for neither.
pub fn switch_point(history: &str) -> Option<Lsn> {
    crate::restore::plan::parse_history(history)
        .last()
        .map(|(_, lsn)| *lsn)
}

/// Where to start: after the newest complete segment archived on this timeline, or at the
/// start of a segment stored only as `.partial`; with nothing archived, at the timeline's
/// start or the slot's restart point. Never before the slot's restart point (the server no
/// longer has that WAL: the gap is real and `info` shows it) nor after the server's position.
async fn start_position(
    archive: &WalArchive,
    server: &ServerInfo,
    slot_restart: Option<Lsn>,
    switch_point: Option<Lsn>,
) -> Result<Lsn> {
    let size = server.wal_segment_size;
    let floor = |l: Lsn| Lsn(l.0 - l.0 % u64::from(size));
    let files = archive.list().await?;
    let mut next_full: Option<u64> = None;
    let mut partial: Option<u64> = None;
    for f in files.get(&server.timeline).into_iter().flatten() {
        let Some(seg) = f
            .name
            .segment_part()
            .and_then(|s| SegmentName::parse(s, size).ok())
        else {
            continue;
        };
        match f.name.kind() {
            WalFileKind::Segment => next_full = next_full.max(Some(seg.segment + 1)),
            WalFileKind::Partial => partial = partial.max(Some(seg.segment)),
            _ => {}
        }
    }
    let archived = match (next_full, partial) {
        (Some(n), Some(p)) if p >= n => Some(p),
        (Some(n), _) => Some(n),
        (None, Some(p)) => Some(p),
        (None, None) => None,
    }
    .map(|segment| Lsn(segment * u64::from(size)));
    let mut start = archived
        .or(switch_point.map(floor))
        .or(slot_restart.map(floor))
        .unwrap_or_else(|| floor(server.position));
    if let Some(restart) = slot_restart {
        if start < floor(restart) {
            tracing::warn!(
                archived = %start, slot = %restart,
                "the slot no longer holds the WAL after the archive's end: the archive will have a gap"
            );
            start = floor(restart);
        }
    }
    if start > server.position {
        start = floor(server.position);
    }
    Ok(start)
}

/// How many bytes of a segment the archive already holds as `.partial` (0 for none). A
/// receiver resuming in that segment receives it again from its start, and must not upload
/// a shorter `.partial` over the stored one before it has caught up: WAL already archived,
/// and already acknowledged to the server, would leave the archive until it had. A stored
/// one that cannot be read counts as none (it is then replaced, which is all it is good for).
async fn stored_partial_len(archive: &WalArchive, name: &WalFileName) -> usize {
    match archive.meta(name).await {
        Ok(Some(meta)) => usize::try_from(meta.size).unwrap_or(usize::MAX),
        Ok(None) => 0,
        Err(e) => {
            tracing::warn!(partial = %name, error = %e, "cannot read the stored .partial; it will be replaced");
            0
        }
    }
}

/// An LSN column, `None` when null or 0/0 (a slot that reserves nothing yet).
fn valid_lsn(text: Option<String>) -> Option<Lsn> {
    text.and_then(|s| s.parse::<Lsn>().ok())
        .filter(|l| l.0 != 0)
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The receive loop's state: the segment being filled and what is durably stored.
struct Receiver<'a> {
    archive: &'a WalArchive,
    opts: &'a StreamOptions,
    status: &'a StreamStatus,
    timeline: TimelineId,
    segment_size: u32,
    /// Start of the segment being filled.
    segment_start: Lsn,
    /// Its bytes received so far.
    buf: Vec<u8>,
    /// How many of them the stored `.partial` holds.
    partial_len: usize,
    /// The start of a record the previous segment ended in, for the next summary.
    tail: Option<(Lsn, Vec<u8>)>,
    /// End of what is durably stored: reported as flushed.
    stored: Lsn,
    last_message: Instant,
}

impl<'a> Receiver<'a> {
    fn new(
        archive: &'a WalArchive,
        opts: &'a StreamOptions,
        status: &'a StreamStatus,
        server: &ServerInfo,
        start: Lsn,
    ) -> Self {
        Self {
            archive,
            opts,
            status,
            timeline: server.timeline,
            segment_size: server.wal_segment_size,
            segment_start: start,
            buf: Vec::with_capacity(server.wal_segment_size as usize),
            partial_len: 0,
            tail: None,
            stored: start,
            last_message: Instant::now(),
        }
    }

    fn received(&self) -> Lsn {
        Lsn(self.segment_start.0 + self.buf.len() as u64)
    }

    fn segment_name(&self, kind: WalFileKind) -> Result<WalFileName> {
        let seg = SegmentName::containing(self.timeline, self.segment_start, self.segment_size);
        let name = match kind {
            WalFileKind::Partial => format!("{seg}.partial"),
            _ => seg.to_string(),
        };
        WalFileName::parse(&name).map_err(|e| Error::InvalidInput(e.to_string()))
    }

    async fn receive(
        &mut self,
        conn: &mut PgConnection,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd> {
        let mut partial_tick = tokio::time::interval(self.opts.partial_interval);
        let mut status_tick = tokio::time::interval(self.opts.status_interval);
        partial_tick.reset();
        loop {
            // Checked on its own clock, not only at status ticks: a short --timeout holds.
            let silence_ends = self.last_message.checked_add(self.opts.timeout);
            tokio::select! {
                () = sleep_until(silence_ends) => {
                    return Err(PgError::Timeout(self.opts.timeout).into());
                }
                event = conn.next_event() => {
                    self.last_message = Instant::now();
                    match event? {
                        Event::CopyData(payload) => {
                            if self.on_message(parse_replication_message(payload)?).await? {
                                self.send_status(conn).await?;
                            }
                        }
                        Event::CopyDone => {
                            // The server ended this timeline (its upstream was promoted).
                            self.upload_partial().await?;
                            conn.send_copy_done().await?;
                            return Ok(SessionEnd::TimelineEnded);
                        }
                        Event::CommandComplete(_) | Event::ReadyForQuery => {
                            self.upload_partial().await?;
                            return Ok(SessionEnd::Reconnect("the server ended the stream (shutdown?)".into()));
                        }
                        other => {
                            return Err(PgError::Protocol(format!("unexpected {other:?} while streaming")).into());
                        }
                    }
                }
                _ = partial_tick.tick() => {
                    self.upload_partial().await?;
                    self.send_status(conn).await?;
                }
                _ = status_tick.tick() => {
                    if self.last_message.elapsed() > self.opts.timeout {
                        return Err(PgError::Timeout(self.opts.timeout).into());
                    }
                    self.send_status(conn).await?;
                }
                _ = shutdown.changed() => {
                    self.upload_partial().await?;
                    self.send_status(conn).await?;
                    return Ok(SessionEnd::Shutdown);
                }
            }
        }
    }

    /// Handles one message; returns whether a status update is due now (the server asked
    /// for one, or a segment was stored and the slot may advance).
    async fn on_message(&mut self, msg: ReplicationMessage) -> Result<bool> {
        match msg {
            ReplicationMessage::Keepalive {
                end,
                send_time,
                reply_requested,
            } => {
                self.note_server(end, send_time);
                Ok(reply_requested)
            }
            ReplicationMessage::XLogData {
                start,
                end,
                send_time,
                data,
            } => {
                self.note_server(end, send_time);
                if start != self.received() {
                    return Err(PgError::Protocol(format!(
                        "the server sent WAL from {start}, expected {}",
                        self.received()
                    ))
                    .into());
                }
                let mut data = &data[..];
                let mut completed = false;
                while !data.is_empty() {
                    let room = self.segment_size as usize - self.buf.len();
                    let take = room.min(data.len());
                    self.buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.buf.len() == self.segment_size as usize {
                        self.complete_segment().await?;
                        completed = true;
                    }
                }
                self.status
                    .received_lsn
                    .store(self.received().0, Ordering::Relaxed);
                Ok(completed)
            }
        }
    }

    fn note_server(&self, end: Lsn, send_time: i64) {
        self.status.server_lsn.store(end.0, Ordering::Relaxed);
        self.status.last_server_time_us.store(
            send_time.saturating_add(PG_EPOCH_OFFSET_US),
            Ordering::Relaxed,
        );
    }

    /// Stores the segment just filled, removes its `.partial`, and moves to the next one.
    async fn complete_segment(&mut self) -> Result<()> {
        let name = self.segment_name(WalFileKind::Segment)?;
        let file = std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(self.segment_size as usize),
        );
        let tail = self.tail.take();
        let (prepared, _) = self
            .archive
            .prepare(name.clone(), file, tail, self.opts.level)
            .await?;
        self.tail = prepared.meta.summary.as_ref().and_then(|s| s.tail.clone());
        let outcome = self.archive.store(prepared, self.opts.level).await?;
        if outcome == PushOutcome::AlreadyStored {
            tracing::debug!(segment = %name, "already archived (archive_command?)");
        }
        let partial = self.segment_name(WalFileKind::Partial)?;
        self.archive.remove(&partial).await?;
        self.segment_start = Lsn(self.segment_start.0 + u64::from(self.segment_size));
        self.partial_len = 0;
        self.mark_stored(self.segment_start);
        self.status
            .segments_archived
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Uploads the segment being filled as `.partial` if it grew since the last upload.
    async fn upload_partial(&mut self) -> Result<()> {
        if self.buf.len() <= self.partial_len {
            // Resumed in a segment stored as a longer `.partial`: what has come again is
            // stored already.
            if self.received() > self.stored {
                self.mark_stored(self.received());
            }
            return Ok(());
        }
        let name = self.segment_name(WalFileKind::Partial)?;
        let (file, tail, len) = (self.buf.clone(), self.tail.clone(), self.buf.len());
        let (prepared, _) = self
            .archive
            .prepare(name, file, tail, self.opts.level)
            .await?;
        self.archive.replace(prepared, self.opts.level).await?;
        self.partial_len = len;
        self.mark_stored(self.received());
        self.status.partial_uploads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn mark_stored(&mut self, upto: Lsn) {
        self.stored = upto;
        self.status.archived_lsn.store(upto.0, Ordering::Relaxed);
        self.status
            .last_success_unix
            .store(now_unix_us() / 1_000_000, Ordering::Relaxed);
    }

    /// Reports received and stored positions; never asks the server for a reply.
    async fn send_status(&self, conn: &mut PgConnection) -> Result<()> {
        let now_pg = now_unix_us() - PG_EPOCH_OFFSET_US;
        let msg = standby_status_update(self.received(), self.stored, Lsn(0), now_pg, false);
        conn.send_copy_data(&msg).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_point_is_the_last_entry() {
        let h = "1\t0/3000000\tno recovery target specified\n\n# comment\n2\t0/5000158\tbefore 2026-11-21\n";
        assert_eq!(switch_point(h), Some(Lsn(0x500_0158)));
        assert_eq!(switch_point("# nothing\n"), None);
        // Found by the `wal_names` fuzz target: a line restore skips (its timeline is no
        // number) must not be the switch point for wal-stream either.
        assert_eq!(
            switch_point("1\t0/3000000\tx\nnot-a-timeline\t0/0\n"),
            Some(Lsn(0x300_0000))
        );
    }
}
