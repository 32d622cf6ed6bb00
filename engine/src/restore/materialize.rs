//! Writing a backup's files into a data directory, in parallel, checked as they are written.
//!
//! Paths come from a manifest, which is untrusted input: every path is checked to be relative,
//! free of `..` and of empty or `.` components, and nothing is written through a symlink that
//! the restore did not create itself (tablespace links are made last, and their targets are
//! the directories the operator chose). Every file's checksum (the algorithm the backup asked
//! the server for, CRC32C by default) is computed while it is written and compared with
//! PostgreSQL's own `backup_manifest` stored with the backup.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::stream::{self, StreamExt, TryStreamExt};
use pgkeep_format::{FileEntry, FileType, Manifest};

use super::file_writer::{BatchedFileWriter, FileSink};
use crate::error::{Error, Result};
use crate::manifest_checksum::{FileDigest, ManifestChecksum};
use crate::read::Check;
use crate::repository::{blocking, Repository};

/// What to write where.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The data directory.
    pub pgdata: PathBuf,
    /// Tablespace OID → directory (the backup's own location unless remapped).
    pub tablespaces: HashMap<u32, PathBuf>,
}

/// What materializing did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Materialized {
    pub files: u64,
    pub bytes: u64,
    /// Files checked against `backup_manifest` (size and SHA-256).
    pub verified: u64,
    /// Files kept as they were (`--delta`).
    pub kept: u64,
    /// Files the backup does not have, removed (`--delta`).
    pub removed: u64,
}

/// What PostgreSQL's `backup_manifest` says of one file.
struct Expected {
    size: u64,
    /// The algorithm and its hex value; `None` when the manifest has no checksum (`NONE`)
    /// or one of an algorithm this version does not know, and only the size is checked.
    checksum: Option<(ManifestChecksum, String)>,
}

/// `backup_manifest` entries by path.
type Checksums = HashMap<String, Expected>;

/// Checks a manifest path and returns it as a relative path.
pub fn safe_relative(raw: &[u8]) -> Result<PathBuf> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| Error::InvalidInput(format!("backup path {raw:?} is not UTF-8")))?;
    // A leading `./` (tar entries of some servers have it) is harmless; `Path` yields it as
    // one `CurDir` component at the start, and `.` anywhere else disappears in `components`.
    let mut out = PathBuf::new();
    let mut ok = !text.is_empty() && !text.contains('\0');
    for c in Path::new(text).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => ok = false,
        }
    }
    if !ok || out.as_os_str().is_empty() {
        return Err(Error::InvalidInput(format!(
            "backup path {text:?} would leave the restore directory (absolute, `..` or empty): refusing to restore it"
        )));
    }
    Ok(out)
}

/// Where a manifest file goes.
fn destination(layout: &Layout, f: &FileEntry) -> Result<PathBuf> {
    let rel = safe_relative(&f.path)?;
    if f.tablespace == 0 {
        return Ok(layout.pgdata.join(rel));
    }
    let root = layout.tablespaces.get(&f.tablespace).ok_or_else(|| {
        Error::InvalidInput(format!(
            "the backup has files of tablespace {} but no location for it",
            f.tablespace
        ))
    })?;
    Ok(root.join(rel))
}

/// Refuses a manifest naming one destination twice (`base/1` and `./base/1`, a file and a
/// directory of one name, a file and a symlink): only one of them could be restored, files
/// are written in parallel, and which one would win is a race. Checked before anything is
/// written.
///
/// Also refuses an entry below one of the backup's symbolic links: restoring it would mean
/// writing through that link.
fn refuse_collisions(layout: &Layout, m: &Manifest) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(m.files.len());
    let links: std::collections::HashSet<PathBuf> = m
        .files
        .iter()
        .filter(|f| f.file_type == FileType::Symlink)
        .map(|f| destination(layout, f))
        .collect::<Result<_>>()?;
    for f in &m.files {
        let path = destination(layout, f)?;
        if let Some(link) = path.ancestors().skip(1).find(|a| links.contains(*a)) {
            return Err(Error::InvalidInput(format!(
                "the backup lists {:?} below its symbolic link {}: refusing to restore it",
                String::from_utf8_lossy(&f.path),
                link.display()
            )));
        }
        if !seen.insert(path) {
            return Err(Error::InvalidInput(format!(
                "the backup lists {:?} (tablespace {}) twice: refusing to restore it",
                String::from_utf8_lossy(&f.path),
                f.tablespace
            )));
        }
    }
    Ok(())
}

/// Reads PostgreSQL's `backup_manifest` stored with the backup.
async fn checksums(repo: &Repository, m: &Manifest) -> Result<Checksums> {
    let Some(att) = m.attachment("backup_manifest") else {
        return Ok(Checksums::new());
    };
    let mut json = Vec::new();
    repo.write_extents(&att.extents, &mut json).await?;
    let doc: serde_json::Value = serde_json::from_slice(&json).map_err(|e| {
        Error::InvalidInput(format!(
            "backup {}: its stored backup_manifest is not JSON: {e}",
            m.backup_id
        ))
    })?;
    let mut out = Checksums::new();
    for f in doc["Files"].as_array().into_iter().flatten() {
        let path = match (f["Path"].as_str(), f["Encoded-Path"].as_str()) {
            (Some(p), _) => p.to_owned(),
            (None, Some(hexed)) => hex::decode(hexed)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default(),
            _ => continue,
        };
        let Some(size) = f["Size"].as_u64() else {
            continue;
        };
        let algorithm = f["Checksum-Algorithm"]
            .as_str()
            .and_then(|a| a.parse().ok());
        let checksum = match (algorithm, f["Checksum"].as_str()) {
            (Some(a), Some(sum)) if a != ManifestChecksum::None => Some((a, sum.to_owned())),
            _ => None,
        };
        out.insert(path, Expected { size, checksum });
    }
    Ok(out)
}

/// The `backup_manifest` key of a file: relative to the data directory, tablespace files under
/// `pg_tblspc/<oid>/`.
fn manifest_key(f: &FileEntry) -> String {
    let rel = String::from_utf8_lossy(&f.path);
    if f.tablespace == 0 {
        rel.into_owned()
    } else {
        format!("pg_tblspc/{}/{rel}", f.tablespace)
    }
}

/// Writes the backup's files. With `delta`, existing files whose SHA-256 matches the
/// backup's are kept and files the backup does not have are removed; otherwise the
/// directories must be empty (the caller checks).
pub async fn materialize(
    repo: &Repository,
    m: &Manifest,
    layout: &Layout,
    jobs: usize,
    delta: bool,
) -> Result<Materialized> {
    refuse_collisions(layout, m)?;
    let sums = checksums(repo, m).await?;
    let group_readable = m
        .files
        .iter()
        .any(|f| f.file_type == FileType::Regular && f.mode & 0o040 != 0);
    let dir_mode = if group_readable { 0o750 } else { 0o700 };
    make_dir(&layout.pgdata, dir_mode)?;
    let _writing = lock_target(&layout.pgdata)?;
    for dir in layout.tablespaces.values() {
        make_dir(dir, dir_mode)?;
    }
    // Directories first (in order, parents before children), then files in parallel, then
    // the tablespace links.
    for f in m
        .files
        .iter()
        .filter(|f| f.file_type == FileType::Directory)
    {
        let path = destination(layout, f)?;
        make_dir(&path, dir_mode_of(f.mode))?;
    }
    // Only now, with every check that can refuse the directory passed: a refused restore
    // must leave a standby's `standby.signal` where it was.
    if delta {
        unmark_recovery(&layout.pgdata)?;
    }
    // Largest files first: the longest single job starts at once and the small ones fill
    // in around it, rather than a large file found late running on alone at the end.
    let mut files: Vec<&FileEntry> = m
        .files
        .iter()
        .filter(|f| f.file_type == FileType::Regular)
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.size));
    let stats = Counters::default();
    // By index, not by `&FileEntry`: a closure taking a reference makes this future fail
    // the `Send` check of `tokio::spawn` (rustc's higher-ranked lifetime limitation).
    stream::iter(0..files.len())
        .map(|i| restore_file(repo, layout, files[i], &sums, delta, &stats))
        .buffer_unordered(jobs.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    for f in m.files.iter().filter(|f| f.file_type == FileType::Symlink) {
        link_tablespace(layout, f)?;
    }
    rewrite_tablespace_map(layout)?;
    let mut out = stats.snapshot();
    if delta {
        out.removed = remove_extra(layout, m)?;
    }
    sync_dirs(layout, m)?;
    Ok(out)
}

/// Locks the data directory against a second restore into it while this one writes (an
/// advisory lock on the directory itself, so nothing is left behind in it): two restores
/// into one directory would each remove and rewrite the other's files. The lock goes with
/// the returned handle.
fn lock_target(pgdata: &Path) -> Result<std::fs::File> {
    use rustix::fs::{flock, FlockOperation};
    let dir = std::fs::File::open(pgdata)
        .map_err(|e| Error::io(format!("opening {}", pgdata.display()), e))?;
    match flock(&dir, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(dir),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(Error::InvalidInput(format!(
            "another restore is writing into {}: wait for it to finish, or restore elsewhere",
            pgdata.display()
        ))),
        Err(e) => Err(Error::io(
            format!("locking {}", pgdata.display()),
            std::io::Error::from(e),
        )),
    }
}

/// A directory's mode from the backup, limited to what PostgreSQL itself uses (0700, or
/// 0750 with group access): the manifest's modes are the server's to give, and a
/// set-id, sticky or world bit has no place in a data directory.
fn dir_mode_of(mode: u32) -> u32 {
    (mode & 0o750) | 0o700
}

/// A file's mode from the backup, limited to 0600 or 0640 (see [`dir_mode_of`]).
fn file_mode_of(mode: u32) -> u32 {
    (mode & 0o640) | 0o600
}

/// For `--delta`, before any file is written: removes the previous restore's
/// `recovery.signal` (and any `standby.signal`) so that a restore that fails halfway does
/// not leave a directory of old and new files that a server would start recovering from.
/// PostgreSQL leaves both out of base backups; the finished restore writes its own.
fn unmark_recovery(pgdata: &Path) -> Result<()> {
    let mut removed = false;
    for name in ["recovery.signal", "standby.signal"] {
        let path = pgdata.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }
    if removed {
        sync_dir(pgdata)?;
    }
    Ok(())
}

/// Makes the restore's directory entries durable, as every file's content already is: every
/// directory of the backup, the data and tablespace directories, and (as far as they can be
/// opened) the directories that hold those. Without it a crash soon after "restored" could
/// lose files, the `pg_tblspc` links or the rewritten `tablespace_map`, whose loss would link
/// a remapped tablespace back to its original location.
fn sync_dirs(layout: &Layout, m: &Manifest) -> Result<()> {
    let mut dirs = std::collections::BTreeSet::new();
    for f in &m.files {
        let path = destination(layout, f)?;
        if f.file_type == FileType::Directory {
            dirs.insert(path.clone());
        }
        if let Some(parent) = path.parent() {
            dirs.insert(parent.to_path_buf());
        }
    }
    let mut parents = std::collections::BTreeSet::new();
    for root in std::iter::once(&layout.pgdata).chain(layout.tablespaces.values()) {
        dirs.insert(root.clone());
        parents.extend(root.parent().map(Path::to_path_buf));
    }
    // Deepest first: a directory's own entry is then synced after its contents.
    for dir in dirs.iter().rev() {
        sync_dir(dir)?;
    }
    // Outside the restore: a parent the restoring user may not read (a 0711 home directory)
    // is warned about, not an error; the directory in it was there before, or was just made.
    for parent in parents.difference(&dirs) {
        if let Err(e) = sync_dir(parent) {
            tracing::warn!(error = %e, "the restore is complete but its parent directory was not synced");
        }
    }
    Ok(())
}

/// fsyncs a directory. A file system that cannot fsync directories (`EINVAL`) is not an
/// error, as for PostgreSQL's own `fsync_fname`.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        other => other.map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e)),
    }
}

#[derive(Default)]
struct Counters {
    files: AtomicU64,
    bytes: AtomicU64,
    verified: AtomicU64,
    kept: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Materialized {
        Materialized {
            files: self.files.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            verified: self.verified.load(Ordering::Relaxed),
            kept: self.kept.load(Ordering::Relaxed),
            removed: 0,
        }
    }
}

async fn restore_file(
    repo: &Repository,
    layout: &Layout,
    f: &FileEntry,
    sums: &Checksums,
    delta: bool,
    stats: &Counters,
) -> Result<()> {
    let path = destination(layout, f)?;
    let key = manifest_key(f);
    let expected = sums.get(&key);
    stats.files.fetch_add(1, Ordering::Relaxed);
    if delta {
        if let Some(Expected {
            size,
            checksum: Some((algorithm, sum)),
        }) = expected
        {
            if matches_file(&path, *size, *algorithm, sum).await {
                stats.kept.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
    }
    if let Some(parent) = path.parent() {
        refuse_symlinked(layout, parent)?;
    }
    let algorithm = expected.and_then(|e| e.checksum.as_ref()).map(|(a, _)| *a);
    let digest = algorithm.and_then(ManifestChecksum::digest);
    // A file checked against the server's checksum once written needs no id check of each
    // of its chunks (SPEC §5.1); one without (PostgreSQL 17+'s reconstructed incremental
    // files, `--manifest-checksums none`) gets it.
    let check = if digest.is_some() {
        Check::Authenticated
    } else {
        Check::Id
    };
    let mode = file_mode_of(f.mode);
    let (written, digest) = match repo.one_read(&f.extents, check).await? {
        // Most files: created, read, written, synced in one blocking task.
        Some(read) => {
            let extents = f.extents.clone();
            let path = path.clone();
            blocking(move || {
                let mut out = FileSink::new(create_fresh(&path)?, digest);
                let written = read.write(&extents, |piece| {
                    out.write(piece)
                        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
                })?;
                Ok::<_, Error>((written, out.finish(&path, mode)?))
            })
            .await??
        }
        None => {
            let file = {
                let path = path.clone();
                blocking(move || create_fresh(&path)).await??
            };
            let mut out = BatchedFileWriter::new(file, digest);
            let written = repo.write_extents_into(&f.extents, check, &mut out).await?;
            (written, out.finish(path.clone(), mode).await?)
        }
    };
    stats.bytes.fetch_add(written, Ordering::Relaxed);
    if written != f.size {
        return Err(Error::InvalidInput(format!(
            "{}: wrote {written} bytes, the backup lists {}",
            path.display(),
            f.size
        )));
    }
    if let Some(e) = expected {
        let mismatch = match (&e.checksum, &digest) {
            (Some((a, sum)), Some(actual)) if !FileDigest::matches(actual, sum) => Some(format!(
                "{written} bytes with {a} {actual}; PostgreSQL's backup_manifest says {} bytes, \
                 {sum} (`pgkeep verify --read-data` checks every stored chunk against its id)",
                e.size
            )),
            _ if e.size != written => Some(format!(
                "{written} bytes; PostgreSQL's backup_manifest says {} bytes",
                e.size
            )),
            _ => None,
        };
        if let Some(reason) = mismatch {
            return Err(Error::Corrupt {
                object: format!("backup {} file {key}", f.path.escape_ascii()),
                source: pgkeep_format::FormatError::Invalid {
                    what: "restored file",
                    reason,
                },
            });
        }
        stats.verified.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Creates `path` as a fresh file (mode 0600 until written), never through an existing
/// symlink: whatever is there is removed first, unless it is a directory.
fn create_fresh(path: &Path) -> Result<std::fs::File> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(Error::InvalidInput(format!(
                "{} is a directory in the target, a file in the backup",
                path.display()
            )))
        }
        Ok(_) => std::fs::remove_file(path)
            .map_err(|e| Error::io(format!("replacing {}", path.display()), e))?,
        Err(_) => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))
}

/// For `--delta`: whether the file on disk already has the backup's content: its size and
/// its checksum by the manifest's algorithm. (With CRC32C, a changed file of the same size
/// passes with a chance of 2^-32; backups made with `--manifest-checksums sha256` make it
/// negligible.)
async fn matches_file(path: &Path, size: u64, algorithm: ManifestChecksum, sum: &str) -> bool {
    match tokio::fs::symlink_metadata(path).await {
        Ok(meta) if meta.is_file() && meta.len() == size => {}
        _ => return false,
    }
    let path = path.to_owned();
    let sum = sum.to_owned();
    tokio::task::spawn_blocking(move || {
        let Ok(mut f) = std::fs::File::open(&path) else {
            return false;
        };
        let Some(mut h) = algorithm.digest() else {
            return false;
        };
        if std::io::copy(&mut f, &mut h).is_err() {
            return false;
        }
        FileDigest::matches(&h.finish(), &sum)
    })
    .await
    .unwrap_or(false)
}

/// Refuses to write below a directory that is (or passes through) a symlink the restore
/// did not make: a crafted backup or a prepared target could otherwise redirect writes.
fn refuse_symlinked(layout: &Layout, dir: &Path) -> Result<()> {
    let roots: Vec<&Path> = std::iter::once(layout.pgdata.as_path())
        .chain(layout.tablespaces.values().map(PathBuf::as_path))
        .collect();
    let Some(root) = roots.iter().find(|r| dir.starts_with(r)) else {
        return Err(Error::InvalidInput(format!(
            "{} is outside the restore directories",
            dir.display()
        )));
    };
    let mut p = root.to_path_buf();
    for c in dir.strip_prefix(root).unwrap_or(Path::new("")).components() {
        p.push(c);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Error::InvalidInput(format!(
                "{} is a symbolic link: refusing to restore through it",
                p.display()
            )));
        }
    }
    Ok(())
}

fn make_dir(path: &Path, mode: u32) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(Error::InvalidInput(format!(
                "{} is a symbolic link: refusing to restore through it",
                path.display()
            )))
        }
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::InvalidInput(format!(
                "{} exists and is not a directory",
                path.display()
            )))
        }
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?,
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), e))
}

/// `pg_tblspc/<oid>` → the tablespace's directory.
fn link_tablespace(layout: &Layout, f: &FileEntry) -> Result<()> {
    let rel = safe_relative(&f.path)?;
    let oid = rel
        .strip_prefix("pg_tblspc")
        .ok()
        .and_then(|r| r.to_str())
        .and_then(|r| r.parse::<u32>().ok())
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "the backup has a symbolic link {} outside pg_tblspc: refusing it",
                rel.display()
            ))
        })?;
    let target = layout
        .tablespaces
        .get(&oid)
        .ok_or_else(|| Error::InvalidInput(format!("no location for tablespace {oid}")))?;
    let link = layout.pgdata.join(&rel);
    if std::fs::symlink_metadata(&link).is_ok() {
        std::fs::remove_file(&link)
            .map_err(|e| Error::io(format!("replacing {}", link.display()), e))?;
    }
    std::os::unix::fs::symlink(target, &link).map_err(|e| {
        Error::io(
            format!("linking {} to {}", link.display(), target.display()),
            e,
        )
    })
}

/// Points `tablespace_map` at the restore's tablespace directories. PostgreSQL recreates the
/// `pg_tblspc` links from this file when recovery starts, so a remapped tablespace left with
/// its original line would be linked back to the original location: the restored server
/// would then use (and write into) the source server's tablespace.
fn rewrite_tablespace_map(layout: &Layout) -> Result<()> {
    let path = layout.pgdata.join("tablespace_map");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let mut out = String::new();
    for (oid, original) in parse_tablespace_map(&text) {
        let dir = match oid
            .parse::<u32>()
            .ok()
            .and_then(|o| layout.tablespaces.get(&o))
        {
            Some(dir) => dir.to_string_lossy().into_owned(),
            None => original,
        };
        out.push_str(&format!("{oid} {}\n", escape_map_path(&dir)));
    }
    // A new file renamed over the old one: a crash leaves the old map or the new one, never
    // a truncated one. `sync_dirs` makes the rename durable.
    let tmp = layout.pgdata.join("tablespace_map.pgkeep-new");
    crate::restore::recovery::write_private(&tmp, &out)?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(format!("replacing {}", path.display()), e))
}

/// `tablespace_map` entries: `<oid> <path>` per line, where a backslash escapes the next
/// character (so a path may hold a newline).
pub(crate) fn parse_tablespace_map(text: &str) -> Vec<(String, String)> {
    let mut entries = Vec::new();
    let mut chars = text.chars();
    let mut line = String::new();
    let mut flush = |line: &mut String| {
        if let Some((oid, path)) = line.split_once(' ') {
            entries.push((oid.to_owned(), path.to_owned()));
        }
        line.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    line.push(next);
                }
            }
            '\n' => flush(&mut line),
            c => line.push(c),
        }
    }
    flush(&mut line);
    entries
}

/// `tablespace_map` escapes backslash, CR and LF in paths with a backslash.
fn escape_map_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\\n"),
            '\r' => out.push_str("\\\r"),
            c => out.push(c),
        }
    }
    out
}

/// For `--delta`: removes files the backup does not have (directories are left): anywhere in
/// the data directory, but in a tablespace's directory only below the version directories
/// (`PG_<major>_<catalog version>`) the backup has. A tablespace directory may hold other
/// versions' directories too (`pg_upgrade` leaves the old one beside the new), and those are
/// not this restore's to remove.
fn remove_extra(layout: &Layout, m: &Manifest) -> Result<u64> {
    let mut wanted = std::collections::HashSet::new();
    let mut stack = vec![layout.pgdata.clone()];
    for f in &m.files {
        let path = destination(layout, f)?;
        if f.tablespace != 0 {
            let first = safe_relative(&f.path)?
                .components()
                .next()
                .map(|c| c.as_os_str().to_owned());
            if let (Some(first), Some(root)) = (first, layout.tablespaces.get(&f.tablespace)) {
                let top = root.join(first);
                // (`top` may be a file: reading it as a directory then finds nothing.)
                if !stack.contains(&top) {
                    stack.push(top);
                }
            }
        }
        wanted.insert(path);
    }
    let mut removed = 0;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(path);
            } else if !wanted.contains(&path) {
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_cannot_be_synced_is_an_error_naming_it() {
        let root = tempfile::tempdir().expect("tmp");
        sync_dir(root.path()).expect("synced");
        let gone = root.path().join("gone");
        let err = sync_dir(&gone).expect_err("absent");
        assert!(err.to_string().contains(&*gone.to_string_lossy()), "{err}");
    }

    #[test]
    fn modes_are_limited_to_postgresqls() {
        assert_eq!(file_mode_of(0o4777), 0o640);
        assert_eq!(file_mode_of(0), 0o600);
        assert_eq!(dir_mode_of(0o1777), 0o750);
        assert_eq!(dir_mode_of(0o700), 0o700);
    }

    #[test]
    fn tablespace_map_round_trips_with_escapes() {
        let text = "16400 /srv/ts one\n16401 /srv/odd\\\nname\\\\x\n";
        let entries = parse_tablespace_map(text);
        assert_eq!(
            entries,
            vec![
                ("16400".to_owned(), "/srv/ts one".to_owned()),
                ("16401".to_owned(), "/srv/odd\nname\\x".to_owned()),
            ]
        );
        assert_eq!(
            escape_map_path("/srv/odd\nname\\x"),
            "/srv/odd\\\nname\\\\x"
        );
    }

    #[test]
    fn paths_that_leave_the_directory_are_refused() {
        for bad in [
            &b"../etc/passwd"[..],
            b"/etc/passwd",
            b"base/../../x",
            b"",
            b".",
            b"a\0b",
        ] {
            assert!(
                safe_relative(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            safe_relative(b"./pg_wal/archive_status").expect("fine"),
            PathBuf::from("pg_wal/archive_status")
        );
        assert_eq!(
            safe_relative(b"base/5/16384").expect("fine"),
            PathBuf::from("base/5/16384")
        );
    }
}
