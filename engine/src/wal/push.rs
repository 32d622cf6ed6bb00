//! `archive_command`: store one file PostgreSQL hands over, and look ahead.
//!
//! PostgreSQL calls `archive_command` once per file, in order, and waits for each. One call
//! costs a process start, a key unlock and a round trip to storage, so when the server has
//! fallen behind (several `.ready` files waiting in `pg_wal/archive_status`), the call also
//! stores the next ones, in parallel, and leaves a marker for each in the spool directory
//! (`pg_wal/pgkeep-spool/pushed/`): the file's identity (device, inode, size, modification
//! time) and checksum. The following call for such a file finds the marker matching the file
//! and the stored object's meta matching the marker, and returns without reading the file
//! (PostgreSQL never rewrites a segment it marked ready). Without a matching marker the file
//! is read and hashed as usual. Nothing is ever acknowledged before it is stored: a look-ahead
//! file that fails is simply pushed again by its own call.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use futures::future::join_all;
use pgkeep_format::{FileChecksum, Lsn, WalFileKind, WalFileName, WalMeta};

use crate::error::{Error, Result};
use crate::repository::blocking;
use crate::wal::archive::{compare, PushOutcome, WalArchive};
use crate::wal::segment::{fingerprint, SegmentIdentity, WalSource};

/// Tuning of `wal-push`.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// zstd level for the stored file.
    pub level: i8,
    /// How many further `.ready` segments to store in the same call (0: none).
    pub lookahead: usize,
    /// Where look-ahead markers go; default `<the file's directory>/pgkeep-spool`.
    pub spool: Option<PathBuf>,
}

/// What one `wal-push` call did.
#[derive(Debug)]
pub struct PushReport {
    pub name: WalFileName,
    pub outcome: PushOutcome,
    /// Look-ahead files stored in the same call, with what happened to each.
    pub ahead: Vec<(WalFileName, Result<PushOutcome>)>,
}

/// A look-ahead marker: which file was stored, and with which content.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    /// The stored object's checksum as `<algorithm>:<hex>` (one whitespace-free field).
    checksum: String,
}

impl Marker {
    fn of(stat: &std::fs::Metadata, checksum: &FileChecksum) -> Self {
        Self {
            dev: stat.dev(),
            ino: stat.ino(),
            size: stat.size(),
            mtime_ns: i128::from(stat.mtime()) * 1_000_000_000 + i128::from(stat.mtime_nsec()),
            checksum: format!(
                "{}:{}",
                checksum.algorithm.name(),
                hex::encode(checksum.digest)
            ),
        }
    }

    fn encode(&self) -> String {
        format!(
            "{} {} {} {} {}\n",
            self.dev, self.ino, self.size, self.mtime_ns, self.checksum
        )
    }

    fn decode(text: &str) -> Option<Self> {
        let mut f = text.split_whitespace();
        Some(Self {
            dev: f.next()?.parse().ok()?,
            ino: f.next()?.parse().ok()?,
            size: f.next()?.parse().ok()?,
            mtime_ns: f.next()?.parse().ok()?,
            checksum: f.next()?.to_owned(),
        })
    }
}

/// The fast path after a look-ahead: the marker matches the file as it is now, and the stored
/// object's meta matches the marker. Anything else (no marker, a changed file, a missing or
/// different object, any error) falls back to the full path.
async fn pushed_earlier(
    archive: &WalArchive,
    path: &Path,
    name: &WalFileName,
    markers: &Path,
) -> Option<(PushOutcome, Option<(Lsn, Vec<u8>)>)> {
    let marker_path = markers.join(name.as_str());
    let text = tokio::fs::read_to_string(&marker_path).await.ok()?;
    let _ = tokio::fs::remove_file(&marker_path).await;
    let marker = Marker::decode(&text)?;
    let stat = tokio::fs::metadata(path).await.ok()?;
    let stored = archive.meta(name).await.ok()??;
    let now = Marker::of(&stat, &stored.checksum);
    if now != marker || stored.size != stat.size() {
        return None;
    }
    Some((
        PushOutcome::AlreadyStored,
        stored.summary.and_then(|s| s.tail),
    ))
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

/// Stores the file at `path` (as `archive_command` passes it, `%p`), then looks ahead.
pub async fn push_file(
    archive: &WalArchive,
    path: &Path,
    opts: &PushOptions,
) -> Result<PushReport> {
    let name = file_name(path)?;
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let markers = opts
        .spool
        .clone()
        .unwrap_or_else(|| dir.join("pgkeep-spool"))
        .join("pushed");
    let look_ahead = opts.lookahead > 0 && name.kind() == WalFileKind::Segment;
    let own = match pushed_earlier(archive, path, &name, &markers).await {
        Some((outcome, tail)) => Own::Done(outcome, tail),
        None => check_own(archive, path, &name).await?,
    };
    let (outcome, ahead) = match own {
        Own::Done(outcome, tail) if look_ahead => {
            let chain = Chain::after(&name, Tail::Known(tail));
            let (_, ahead) = push_chain(archive, &dir, chain, opts, &markers).await;
            (outcome, ahead)
        }
        Own::Done(outcome, _) => (outcome, Vec::new()),
        Own::Store { source, prev_tail } => {
            // The own file heads the chain: sealed beside the look-ahead files, stored with them.
            let mut chain = Chain::after(&name, prev_tail);
            chain.own = Some((name.clone(), source));
            if !look_ahead {
                chain.current = None;
            }
            let (own, ahead) = push_chain(archive, &dir, chain, opts, &markers).await;
            let outcome = own.ok_or_else(|| {
                Error::Pipeline(format!("{name}: the file was prepared but not stored"))
            })??;
            (outcome, ahead)
        }
    };
    Ok(PushReport {
        name,
        outcome,
        ahead,
    })
}

/// What the call's own file needs.
enum Own {
    /// Stored before (identical): the outcome, and its summary's tail for the next segment.
    Done(PushOutcome, Option<(Lsn, Vec<u8>)>),
    /// Not stored yet (or a `.partial` to replace): where its bytes are, and the previous
    /// segment's tail.
    Store { source: WalSource, prev_tail: Tail },
}

/// The record start a chain's first file continues.
enum Tail {
    Known(Option<(Lsn, Vec<u8>)>),
    /// In the previous segment's meta: read while the chain's files are read and compressed
    /// (a segment of small transactions has a meta of a few hundred KiB to fetch, open and
    /// decode, and only the summary, which comes last, needs it).
    OfPrevious(WalFileName),
}

/// Checks the call's own file. A new file is left to be read while it is compressed (see
/// `segment::prepare_chain`); one already stored is read here and compared by its checksum,
/// in the stored copy's algorithm.
async fn check_own(archive: &WalArchive, path: &Path, name: &WalFileName) -> Result<Own> {
    let Some(stored) = archive.meta(name).await? else {
        return Ok(Own::Store {
            source: WalSource::Path(path.to_path_buf()),
            prev_tail: Tail::OfPrevious(name.clone()),
        });
    };
    // Already stored (by a look-ahead, or before a crash): only its checksum is needed. The
    // header is checked first, so that a foreign or misnamed segment is reported as such.
    let (owned_name, owned_path) = (name.clone(), path.to_path_buf());
    let algorithm = stored.checksum.algorithm;
    let (size, checksum, identity) =
        blocking(move || fingerprint(&owned_name, &owned_path, algorithm)).await??;
    if let (Some(id), Some(facts)) = (identity, stored.segment) {
        if id.system_id != facts.system_id {
            return Err(Error::WrongSystem {
                cluster: archive.cluster().to_string(),
                bound: facts.system_id,
                found: id.system_id,
            });
        }
    }
    let new = WalMeta {
        size,
        checksum,
        segment: None,
        summary: None,
    };
    match archive.settled(name, compare(name, &stored, &new)).await {
        Ok(outcome) => Ok(Own::Done(outcome, stored.summary.and_then(|s| s.tail))),
        // A newer .partial replaces the stored one (see `WalArchive::store`).
        Err(Error::WalConflict { .. }) if name.kind() == WalFileKind::Partial => Ok(Own::Store {
            source: WalSource::Path(path.to_path_buf()),
            prev_tail: Tail::OfPrevious(name.clone()),
        }),
        Err(e) => Err(e),
    }
}

/// Files to store together: optionally the call's own, then the ready segments after
/// `current` (none when `current` is `None`).
struct Chain {
    own: Option<(WalFileName, WalSource)>,
    current: Option<WalFileName>,
    tail: Tail,
}

impl Chain {
    fn after(current: &WalFileName, tail: Tail) -> Self {
        Self {
            own: None,
            current: Some(current.clone()),
            tail,
        }
    }
}

/// Stores a chain: files read in order, sealed in parallel, summarized in order (each summary
/// needs the previous one's tail), uploaded together; a marker for each look-ahead file
/// stored. Returns the own file's outcome (if it had one) and the look-ahead outcomes.
async fn push_chain(
    archive: &WalArchive,
    dir: &Path,
    chain: Chain,
    opts: &PushOptions,
    markers: &Path,
) -> (
    Option<Result<PushOutcome>>,
    Vec<(WalFileName, Result<PushOutcome>)>,
) {
    let mut results = Vec::new();
    // (name, bytes, the file's identity for a marker: None for the own file)
    let mut files: Vec<(WalFileName, WalSource, Option<std::fs::Metadata>)> = Vec::new();
    let own_name = chain.own.as_ref().map(|(n, _)| n.clone());
    if let Some((name, source)) = chain.own {
        files.push((name, source, None));
    }
    if let Some(current) = &chain.current {
        gather_ready(
            archive,
            dir,
            current,
            opts.lookahead,
            markers,
            &mut files,
            &mut results,
        )
        .await;
    }
    if files.is_empty() {
        return (None, results);
    }
    let stats: Vec<Option<std::fs::Metadata>> = files.iter_mut().map(|f| f.2.take()).collect();
    let named: Vec<(WalFileName, WalSource)> = files.into_iter().map(|(n, f, _)| (n, f)).collect();
    let tail = async {
        match chain.tail {
            Tail::Known(tail) => tail,
            Tail::OfPrevious(name) => previous_tail(archive, &name).await,
        }
    };
    let prepared = match archive.prepare_chain(named, tail, opts.level).await {
        Ok(p) => p,
        Err(e) => {
            let own = own_name.map(|_| Err(e));
            return (own, results);
        }
    };
    let uploads = prepared
        .into_iter()
        .zip(stats)
        .map(|((name, prepared), stat)| async move {
            let outcome = async {
                let (prepared, identity) = prepared?;
                let checksum = prepared.meta.checksum;
                if let Some(id) = identity {
                    bind(archive, &id).await?;
                }
                // Every file of a chain was just found absent (`check_own`, `gather_ready`),
                // except a `.partial` that replaces a stored one.
                let outcome = if name.kind() == WalFileKind::Partial {
                    archive.store(prepared, opts.level).await?
                } else {
                    archive.store_absent(prepared, opts.level).await?
                };
                if let Some(stat) = stat {
                    write_marker(markers, &name, &Marker::of(&stat, &checksum)).await;
                }
                Ok(outcome)
            };
            let outcome = outcome.await;
            (name, outcome)
        });
    let mut own = None;
    for (name, r) in join_all(uploads).await {
        if Some(&name) == own_name.as_ref() {
            own = Some(r);
            continue;
        }
        match &r {
            Ok(outcome) => tracing::debug!(segment = %name, ?outcome, "look-ahead"),
            Err(e) => {
                tracing::warn!(segment = %name, error = %e, "look-ahead failed; PostgreSQL will push it again")
            }
        }
        results.push((name, r));
    }
    (own, results)
}

/// Finds up to `limit` ready segments after `current` that the archive does not hold yet,
/// stopping at the first one that is stored or cannot be looked at. Their identity (for the
/// marker) is taken here, before `prepare_chain` reads them.
async fn gather_ready(
    archive: &WalArchive,
    dir: &Path,
    current: &WalFileName,
    limit: usize,
    markers: &Path,
    files: &mut Vec<(WalFileName, WalSource, Option<std::fs::Metadata>)>,
    results: &mut Vec<(WalFileName, Result<PushOutcome>)>,
) {
    let ready = match ready_segments(dir, current).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list archive_status; no look-ahead");
            return;
        }
    };
    trim_markers(markers, current).await;
    for name in ready.into_iter().take(limit) {
        match archive.meta(&name).await {
            Ok(None) => {}
            // Stored already (by a concurrent wal-stream, say): its own call compares.
            Ok(Some(_)) => break,
            Err(e) => {
                results.push((name, Err(e)));
                break;
            }
        }
        let path = dir.join(name.as_str());
        match tokio::fs::metadata(&path).await {
            Ok(stat) => files.push((name, WalSource::Path(path), Some(stat))),
            Err(e) => {
                let context = format!("reading {}", path.display());
                results.push((name, Err(Error::io(context, e))));
                break;
            }
        }
    }
}

/// The first push (or backup) binds the cluster to the segment's system; later ones must match.
async fn bind(archive: &WalArchive, id: &SegmentIdentity) -> Result<()> {
    archive
        .repository()
        .bind_cluster(archive.cluster(), id.system_id, id.pg_major * 10000)
        .await
        .map(|_| ())
}

/// Records a stored look-ahead file. A marker that cannot be written only costs the next
/// call a read and a hash.
async fn write_marker(markers: &Path, name: &WalFileName, marker: &Marker) {
    let write = async {
        crate::wal::fetch::private_dir(markers).await?;
        let tmp = markers.join(format!("{name}.tmp"));
        tokio::fs::write(&tmp, marker.encode()).await?;
        tokio::fs::rename(&tmp, markers.join(name.as_str())).await
    };
    if let Err(e) = write.await {
        tracing::debug!(error = %e, "look-ahead marker not written");
    }
}

/// Removes markers of files at or before `current` (consumed, or left by a crash).
async fn trim_markers(markers: &Path, current: &WalFileName) {
    let Ok(mut entries) = tokio::fs::read_dir(markers).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let stale = entry
            .file_name()
            .to_str()
            .and_then(|f| WalFileName::parse(f).ok())
            .is_none_or(|n| n <= *current);
        if stale {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
    }
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
