//! `archive_command`: store one file PostgreSQL hands over, and look ahead.
//!
//! PostgreSQL calls `archive_command` once per file, in order, and waits for each. One call
//! costs a process start, a key unlock and a round trip to storage, so when the server has
//! fallen behind (several `.ready` files waiting in `pg_wal/archive_status`), the call also
//! stores the next ones, in parallel: the following calls then find their file already
//! stored, compare its SHA-256 with one small ranged read, and return at once. Nothing is ever
//! acknowledged before it is stored: a look-ahead file that fails is simply pushed again by its
//! own call.

use std::path::{Path, PathBuf};

use futures::future::join_all;
use pgkeep_format::{Lsn, WalFileKind, WalFileName, WalMeta};

use crate::error::{Error, Result};
use crate::repository::blocking;
use crate::wal::archive::{compare, sha256, PreparedWal, PushOutcome, WalArchive};
use crate::wal::segment::{identify_segment, prepare, SegmentIdentity};

/// Tuning of `wal-push`.
#[derive(Debug, Clone, Copy)]
pub struct PushOptions {
    /// zstd level for the stored file.
    pub level: i8,
    /// How many further `.ready` segments to store in the same call (0: none).
    pub lookahead: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            level: 3,
            lookahead: 4,
        }
    }
}

/// What one `wal-push` call did.
#[derive(Debug)]
pub struct PushReport {
    pub name: WalFileName,
    pub outcome: PushOutcome,
    /// Look-ahead files stored in the same call, with what happened to each.
    pub ahead: Vec<(WalFileName, Result<PushOutcome>)>,
}

/// Stores the file at `path` (as `archive_command` passes it, `%p`), then looks ahead.
pub async fn push_file(archive: &WalArchive, path: &Path, opts: PushOptions) -> Result<PushReport> {
    let name = file_name(path)?;
    let mut tail = previous_tail(archive, &name).await;
    let (outcome, next_tail) = push_one(archive, path, &name, tail.take(), opts.level).await?;
    let mut ahead = Vec::new();
    if opts.lookahead > 0 && name.kind() == WalFileKind::Segment {
        ahead = push_ahead(archive, path, &name, next_tail, opts).await;
    }
    Ok(PushReport {
        name,
        outcome,
        ahead,
    })
}

/// Validates a path's file name as an archived WAL file name.
pub fn file_name(path: &Path) -> Result<WalFileName> {
    let base = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::InvalidInput(format!("{}: not a file path", path.display())))?;
    WalFileName::parse(base).map_err(|e| {
        Error::InvalidInput(format!(
            "{}: {e}; archive_command must pass %p (the path of the file to archive)",
            path.display()
        ))
    })
}

/// The record start carried over from the previous segment's summary, when that segment is
/// archived (it usually is: PostgreSQL archives in order).
async fn previous_tail(archive: &WalArchive, name: &WalFileName) -> Option<(Lsn, Vec<u8>)> {
    let prev = previous_segment(name)?;
    match archive.meta(&prev).await {
        Ok(Some(meta)) => meta.summary.and_then(|s| s.tail),
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(segment = %prev, error = %e, "cannot read the previous segment's summary");
            None
        }
    }
}

/// The segment before `name` on the same timeline, for segment sizes we can infer from the
/// name alone: the low part counts up within a "log id", so the previous name is found
/// without knowing the segment size unless the low part is 0.
fn previous_segment(name: &WalFileName) -> Option<WalFileName> {
    let seg = name.segment_part()?;
    let tli = &seg[..8];
    let hi = u32::from_str_radix(&seg[8..16], 16).ok()?;
    let lo = u32::from_str_radix(&seg[16..24], 16).ok()?;
    if lo == 0 {
        // The previous one is the last of log id hi-1, which depends on the segment size.
        return None;
    }
    WalFileName::parse(&format!("{tli}{hi:08X}{:08X}", lo - 1)).ok()
}

/// Reads, checks and stores one file; returns the tail of its last record for the next one.
async fn push_one(
    archive: &WalArchive,
    path: &Path,
    name: &WalFileName,
    prev_tail: Option<(Lsn, Vec<u8>)>,
    level: i8,
) -> Result<(PushOutcome, Option<(Lsn, Vec<u8>)>)> {
    let file = tokio::fs::read(path)
        .await
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    // The header check costs no I/O: do it first, so a foreign or misnamed segment is
    // reported as such even when a file of that name is stored.
    let identity = match name.kind() {
        WalFileKind::Segment | WalFileKind::Partial => Some(identify_segment(name, &file)?),
        _ => None,
    };
    // Already stored (by a look-ahead, or before a crash)? Then only its checksum is needed.
    if let Some(stored) = archive.meta(name).await? {
        if let (Some(id), Some(facts)) = (identity, stored.segment) {
            if id.system_id != facts.system_id {
                return Err(Error::WrongSystem {
                    cluster: archive.cluster().to_string(),
                    bound: facts.system_id,
                    found: id.system_id,
                });
            }
        }
        let (file_back, digest) = blocking(move || {
            let digest = sha256(&file);
            (file, digest)
        })
        .await?;
        let new = WalMeta {
            size: file_back.len() as u64,
            sha256: digest,
            segment: None,
            summary: None,
        };
        match compare(name, &stored, &new) {
            Ok(outcome) => return Ok((outcome, stored.summary.and_then(|s| s.tail))),
            // A newer .partial replaces the stored one (see `WalArchive::store`).
            Err(Error::WalConflict { .. }) if name.kind() == WalFileKind::Partial => {
                return store_new(archive, name, file_back, prev_tail, level).await;
            }
            Err(e) => return Err(e),
        }
    }
    store_new(archive, name, file, prev_tail, level).await
}

/// Prepares (summary, checks) and stores a file the archive does not hold yet.
async fn store_new(
    archive: &WalArchive,
    name: &WalFileName,
    file: Vec<u8>,
    prev_tail: Option<(Lsn, Vec<u8>)>,
    level: i8,
) -> Result<(PushOutcome, Option<(Lsn, Vec<u8>)>)> {
    let owned = name.clone();
    let (prepared, identity) = blocking(move || prepare(owned, file, prev_tail)).await??;
    if let Some(id) = identity {
        bind(archive, &id).await?;
    }
    let next_tail = prepared.meta.summary.as_ref().and_then(|s| s.tail.clone());
    let outcome = archive.store(prepared, level).await?;
    Ok((outcome, next_tail))
}

/// The first push (or backup) binds the cluster to the segment's system; later ones must match.
async fn bind(archive: &WalArchive, id: &SegmentIdentity) -> Result<()> {
    archive
        .repository()
        .bind_cluster(archive.cluster(), id.system_id, id.pg_major * 10000)
        .await
        .map(|_| ())
}

/// Stores the next `.ready` segments of the same timeline, in parallel. Their summaries need
/// each other's tails, so they are read and summarized in order, then uploaded together.
async fn push_ahead(
    archive: &WalArchive,
    path: &Path,
    current: &WalFileName,
    mut tail: Option<(Lsn, Vec<u8>)>,
    opts: PushOptions,
) -> Vec<(WalFileName, Result<PushOutcome>)> {
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let ready = match ready_segments(&dir, current).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list archive_status; no look-ahead");
            return Vec::new();
        }
    };
    let mut uploads = Vec::new();
    for name in ready.into_iter().take(opts.lookahead) {
        let file_path = dir.join(name.as_str());
        let archive = archive.clone();
        // Summaries chain: each waits for the previous one's tail, so prepare in order here
        // and let the uploads (the slow part) run together.
        let prepared = match prepare_ahead(&archive, &file_path, &name, tail.take()).await {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                uploads.push(futures::future::Either::Left(async move { (name, Err(e)) }));
                continue;
            }
        };
        tail = prepared.meta.summary.as_ref().and_then(|s| s.tail.clone());
        uploads.push(futures::future::Either::Right(async move {
            let outcome = archive.store(prepared, opts.level).await;
            (name, outcome)
        }));
    }
    let results = join_all(uploads).await;
    for (name, r) in &results {
        match r {
            Ok(outcome) => tracing::debug!(segment = %name, ?outcome, "look-ahead"),
            Err(e) => {
                tracing::warn!(segment = %name, error = %e, "look-ahead failed; PostgreSQL will push it again")
            }
        }
    }
    results
}

/// Reads and prepares a look-ahead segment; `None` when it is already stored.
async fn prepare_ahead(
    archive: &WalArchive,
    path: &Path,
    name: &WalFileName,
    tail: Option<(Lsn, Vec<u8>)>,
) -> Result<Option<PreparedWal>> {
    if archive.meta(name).await?.is_some() {
        return Ok(None);
    }
    let file = tokio::fs::read(path)
        .await
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let owned = name.clone();
    let (prepared, identity) = blocking(move || prepare(owned, file, tail)).await??;
    if let Some(id) = identity {
        bind(archive, &id).await?;
    }
    Ok(Some(prepared))
}

/// Segments after `current` on its timeline that the server has marked ready to archive, in
/// order.
async fn ready_segments(pg_wal: &Path, current: &WalFileName) -> std::io::Result<Vec<WalFileName>> {
    let status = pg_wal.join("archive_status");
    let mut entries = tokio::fs::read_dir(&status).await?;
    let mut out = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        let file = entry.file_name();
        let Some(base) = file.to_str().and_then(|f| f.strip_suffix(".ready")) else {
            continue;
        };
        let Ok(name) = WalFileName::parse(base) else {
            continue;
        };
        if name.kind() == WalFileKind::Segment
            && name.timeline() == current.timeline()
            && name > *current
        {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_segment_names() {
        let n = |s: &str| WalFileName::parse(s).expect("name");
        assert_eq!(
            previous_segment(&n("0000000200000001000000A0")),
            Some(n("00000002000000010000009F"))
        );
        assert_eq!(previous_segment(&n("000000020000000100000000")), None);
        assert_eq!(previous_segment(&n("00000002.history")), None);
    }
}
