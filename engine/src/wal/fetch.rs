//! `restore_command`: bring one archived file back, and prefetch the next segments.
//!
//! Recovery asks for one segment at a time and waits for each, so one storage round trip per
//! segment would bound replay speed. When asked for a segment, `wal-fetch` also downloads the
//! next ones in parallel into a spool directory beside the destination (`pg_wal/pgkeep-spool`
//! by default); the following calls find their segment there and return after a rename. The
//! spool is refilled in batches, once half of it is used up: topping it up by one segment per
//! call would make every call wait for one download again. Every spooled file was
//! authenticated and checked against its checksum when it was fetched, and is written under
//! a temporary name, fsynced and renamed, so a spooled file is always complete, even after a
//! crash of the machine (a renamed file whose data never reached the disk would read as
//! zeros, which recovery takes for the end of the WAL). The spool holds at most `prefetch`
//! files: segments before the one asked for are deleted.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use pgkeep_format::pg::check_segment_size;
use pgkeep_format::{SegmentName, WalFileKind, WalFileName};

use crate::error::{Error, Result};
use crate::wal::archive::WalArchive;

/// Tuning of `wal-fetch`.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Segments to download ahead of the one asked for (0: none).
    pub prefetch: usize,
    /// Where prefetched segments wait; default `<destination's directory>/pgkeep-spool`.
    pub spool: Option<PathBuf>,
}

/// What `wal-fetch` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The file is in place; `from_spool` when an earlier call had prefetched it.
    Restored { from_spool: bool },
    /// The archive does not have the file (normal: recovery probes for files).
    NotFound,
}

/// Puts the archived file `name` at `dest`, then prefetches what recovery will ask for next.
pub async fn fetch_file(
    archive: &WalArchive,
    name: &WalFileName,
    dest: &Path,
    opts: &FetchOptions,
) -> Result<FetchOutcome> {
    let spool = opts.spool.clone().unwrap_or_else(|| {
        dest.parent()
            .unwrap_or_else(|| Path::new("."))
            .join("pgkeep-spool")
    });
    let spooled = spool.join(name.as_str());
    let (from_spool, head) = if tokio::fs::try_exists(&spooled).await.unwrap_or(false) {
        let head = read_head(&spooled).await;
        move_into_place(&spooled, dest).await?;
        (true, head)
    } else {
        let Some((_, file)) = archive.fetch(name).await? else {
            return Ok(FetchOutcome::NotFound);
        };
        let head = file.get(..40).map(<[u8]>::to_vec);
        // Not fsynced: PostgreSQL reads it at once, and after a crash asks for it again.
        write_atomically(dest, &file, false).await?;
        (false, head)
    };
    if opts.prefetch > 0 && name.kind() == WalFileKind::Segment {
        if let Some(size) = head.as_deref().and_then(segment_size_from_header) {
            prefetch(archive, name, size, &spool, opts.prefetch).await;
        }
    }
    Ok(FetchOutcome::Restored { from_spool })
}

/// The segment size a segment's long page header declares (bytes 32..36).
fn segment_size_from_header(head: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = head.get(32..36)?.try_into().ok()?;
    check_segment_size(u64::from(u32::from_le_bytes(bytes))).ok()
}

async fn read_head(path: &Path) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path).await.ok()?;
    let mut head = vec![0u8; 40];
    f.read_exact(&mut head).await.ok()?;
    Some(head)
}

/// Most bytes of downloaded segments held in memory at once by a prefetch (each download is
/// held whole until written): 16 segments of 16 MiB, one of 1 GiB.
const PREFETCH_MEMORY: usize = 256 << 20;

/// Removes spooled segments recovery has moved past and, when fewer than half of the `count`
/// segments after `name` are spooled (or the next one is missing), downloads the missing ones
/// in parallel. Failures only cost the prefetch: the next call fetches its segment itself.
async fn prefetch(archive: &WalArchive, name: &WalFileName, size: u32, spool: &Path, count: usize) {
    let Some(current) = name
        .segment_part()
        .and_then(|s| SegmentName::parse(s, size).ok())
    else {
        return;
    };
    if let Err(e) = private_dir(spool).await {
        tracing::debug!(error = %e, spool = %spool.display(), "no spool directory; no prefetch");
        return;
    }
    let wanted: Vec<WalFileName> = (1..=count as u64)
        .filter_map(|i| {
            let next = SegmentName::new(current.timeline, current.segment + i, size);
            WalFileName::parse(&next.to_string()).ok()
        })
        .collect();
    trim_spool(spool, name, wanted.last()).await;
    let next = wanted.first().cloned();
    let mut missing = Vec::new();
    for next in wanted {
        if !tokio::fs::try_exists(spool.join(next.as_str()))
            .await
            .unwrap_or(false)
        {
            missing.push(next);
        }
    }
    let next_spooled = next.is_some_and(|n| !missing.contains(&n));
    if next_spooled && (count - missing.len()) * 2 >= count {
        return;
    }
    let parallel = (PREFETCH_MEMORY / size as usize).clamp(1, count);
    futures::stream::iter(missing)
        .map(|next| async move {
            let path = spool.join(next.as_str());
            match archive.fetch(&next).await {
                Ok(Some((_, file))) => {
                    if let Err(e) = write_atomically(&path, &file, true).await {
                        tracing::debug!(segment = %next, error = %e, "prefetch not spooled");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(segment = %next, error = %e, "prefetch failed"),
            }
        })
        .buffer_unordered(parallel)
        .collect::<Vec<()>>()
        .await;
}

/// Deletes spooled files outside `(current, last]`: recovery has consumed them or moved to
/// another timeline, and the spool stays bounded.
async fn trim_spool(spool: &Path, current: &WalFileName, last: Option<&WalFileName>) {
    let Ok(mut entries) = tokio::fs::read_dir(spool).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let keep = entry
            .file_name()
            .to_str()
            .and_then(|f| WalFileName::parse(f).ok())
            .is_some_and(|n| n > *current && last.is_some_and(|l| n <= *l));
        if !keep {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
    }
}

/// Writes `data` to a temporary name beside `dest`, then renames: whoever sees `dest` sees
/// all of it; with `durable`, fsynced before the rename, so that after a crash of the machine
/// `dest` is either absent or whole. A failed write leaves no temporary file behind.
async fn write_atomically(dest: &Path, data: &[u8], durable: bool) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let tmp = temp_path(dest);
    // WAL holds the database's content in the clear: owner-only, whatever the umask of the
    // process that runs restore_command (PostgreSQL's own files in pg_wal are 0600 too).
    let write = async {
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .await?;
        f.write_all(data).await?;
        f.flush().await?;
        if durable {
            f.sync_all().await?;
        }
        Ok(())
    };
    if let Err(e) = write.await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(Error::io(format!("writing {}", tmp.display()), e));
    }
    tokio::fs::rename(&tmp, dest).await.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(
            format!("renaming {} to {}", tmp.display(), dest.display()),
            e,
        )
    })
}

/// Creates the spool directory (and missing parents) readable by its owner only: spooled
/// segments are plaintext WAL.
pub(crate) async fn private_dir(dir: &Path) -> std::io::Result<()> {
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .await
}

/// Moves a spooled file into place: a rename on the same file system, else copy then rename.
async fn move_into_place(spooled: &Path, dest: &Path) -> Result<()> {
    if tokio::fs::rename(spooled, dest).await.is_ok() {
        return Ok(());
    }
    let data = tokio::fs::read(spooled)
        .await
        .map_err(|e| Error::io(format!("reading {}", spooled.display()), e))?;
    write_atomically(dest, &data, false).await?;
    let _ = tokio::fs::remove_file(spooled).await;
    Ok(())
}

fn temp_path(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".pgkeep-tmp.{}", std::process::id()));
    dest.with_file_name(name)
}
