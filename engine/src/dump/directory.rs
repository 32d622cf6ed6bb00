//! pg_dump's directory format in the archive: pg_dump (with `--jobs`, its workers) writes a
//! directory into a private scratch directory, each of its files becomes a stream
//! `dir/<file>`, and a restore writes the files back into a fresh directory for pg_restore.
//!
//! One stream per file is what makes this format deduplicate best from day to day: each
//! table's data is its own file, so an unchanged table gives the same chunks whatever
//! changed in the tables before it in the dump.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use pgkeep_format::dump::{is_directory_file_name, DIRECTORY_PREFIX};
use pgkeep_format::{Attachment, DumpManifest};

use super::tools::spawn;
use super::{scratch_dir, stream, write_stream_file};
use crate::chunker::Chunking;
use crate::error::{Error, Result};
use crate::pipeline::WriteSession;
use crate::repository::Repository;

/// Runs pg_dump with `args` (which select the directory format) writing into a directory
/// inside `scratch`, then stores each file it wrote as `dir/<file>`, in name order.
pub(super) async fn dump_into(
    write: &WriteSession,
    pg_dump: &Path,
    args: &[String],
    env: &[(String, String)],
    chunking: Chunking,
    scratch: Option<&Path>,
) -> Result<Vec<Attachment>> {
    let tmp = scratch_dir(scratch, "dump")?;
    // pg_dump creates the directory itself and refuses one that exists and is not empty.
    let out = tmp.path().join("dump");
    let mut args = args.to_vec();
    args.push(format!("--file={}", out.display()));
    spawn(pg_dump, &args, env, Stdio::null(), Stdio::null())?
        .wait()
        .await?;
    let mut names = Vec::new();
    let entries =
        std::fs::read_dir(&out).map_err(|e| Error::io(format!("reading {}", out.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("reading {}", out.display()), e))?;
        let kind = entry
            .file_type()
            .map_err(|e| Error::io(format!("reading {}", entry.path().display()), e))?;
        let name = entry.file_name().into_string().ok();
        match name {
            Some(n) if kind.is_file() && is_directory_file_name(&n) => names.push(n),
            _ => {
                return Err(Error::InvalidInput(format!(
                    "pg_dump wrote {}, which is not a plain file with a UTF-8 name: the directory format cannot be stored",
                    entry.path().display()
                )))
            }
        }
    }
    names.sort();
    let mut streams = Vec::with_capacity(names.len());
    for n in names {
        let path = out.join(&n);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let stored = write.store_stream(file, chunking).await?;
        streams.push(stream(&format!("{DIRECTORY_PREFIX}{n}"), stored));
    }
    tmp.close()
        .map_err(|e| Error::io(format!("removing {}", out.display()), e))?;
    Ok(streams)
}

/// Writes the files of a directory-format dump into `dir`, which is created (mode 0700) and
/// must not exist. Returns the bytes written.
pub(super) async fn write_directory(
    repo: &Repository,
    m: &DumpManifest,
    dir: &Path,
) -> Result<u64> {
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let mut bytes = 0;
    for (name, s) in m.directory_files() {
        // The manifest decoder refused names that could leave the directory.
        write_stream_file(repo, &s.extents, &dir.join(name)).await?;
        bytes += s.size;
    }
    Ok(bytes)
}

/// A directory-format dump written back into a scratch directory for pg_restore; removed
/// when dropped.
#[derive(Debug)]
pub(super) struct Recreated {
    _tmp: tempfile::TempDir,
    pub(super) path: PathBuf,
    pub(super) bytes: u64,
}

pub(super) async fn recreate(
    repo: &Repository,
    m: &DumpManifest,
    scratch: Option<&Path>,
) -> Result<Recreated> {
    let tmp = scratch_dir(scratch, "restore")?;
    let path = tmp.path().join("dump");
    let bytes = write_directory(repo, m, &path).await?;
    Ok(Recreated {
        _tmp: tmp,
        path,
        bytes,
    })
}
