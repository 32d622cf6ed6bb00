//! Writing a restored file: in calls of a measured size, checksummed as written, and, for a
//! file of many reads, in batches on the blocking pool while the next batch is fetched.
//!
//! `tokio::fs::File` hands every write to the blocking pool separately, and a restore writes a
//! file as many extents (page slices, runs of zeros): one thread handoff each, with the
//! checksum computed on the async runtime in between. Here pieces collect until they hold
//! [`BATCH`] bytes; a full batch goes to one blocking task that writes it with `std::fs` and
//! feeds the checksum, and the next batch fills meanwhile (double buffering), so fetching,
//! writing and checksumming overlap. Pieces are kept as the shared slices of opened chunks
//! they arrive as, not copied into a buffer; only small ones are, so that a batch of page
//! slices cannot hold hundreds of whole chunks alive.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::manifest_checksum::FileDigest;
use crate::read::ExtentSink;
use crate::repository::blocking;

/// Bytes handed to the blocking pool at once.
const BATCH: usize = 4 << 20;

/// Bytes per `write(2)`. Measured on ext4 (Linux 6.18, `benches/restore.sh` with
/// `WRITES=30`, 4 alternating rounds): restores writing 4 MiB per call spent a median 2.0 s
/// in the kernel against 1.3 s with 128 KiB calls, the difference inside the page cache copy
/// (`copy_folio_from_iter_atomic`); smaller calls keep the source in cache.
const WRITE_PIECE: usize = 128 << 10;

/// Pieces smaller than this are copied together (up to [`WRITE_PIECE`]) rather than kept.
const SMALL_PIECE: usize = 32 << 10;

/// Bytes written after which a large file's writeback is started (a sync on another
/// thread), so the disk works while the rest of the file is decoded rather than all at the
/// final fsync.
const SYNC_AHEAD: u64 = 32 << 20;

/// A file being written on the current (blocking) thread: calls of at most [`WRITE_PIECE`]
/// bytes, smaller pieces gathered, each fed to the checksum right after it is written.
pub(crate) struct FileSink {
    out: BufWriter<File>,
    digest: Option<FileDigest>,
    /// Bytes written since the last sync started.
    unsynced: u64,
    /// The sync running on another thread, if any. Its result is collected (an error of a
    /// sync is reported once, to one of the descriptors sharing the file).
    syncing: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl FileSink {
    /// Writes `file`, computing `digest` over its bytes when given.
    pub(crate) fn new(file: File, digest: Option<FileDigest>) -> Self {
        Self {
            out: BufWriter::with_capacity(WRITE_PIECE, file),
            digest,
            unsynced: 0,
            syncing: None,
        }
    }

    pub(crate) fn write(&mut self, piece: &[u8]) -> std::io::Result<()> {
        for part in piece.chunks(WRITE_PIECE) {
            self.out.write_all(part)?;
            if let Some(h) = self.digest.as_mut() {
                h.update(part);
            }
        }
        self.unsynced += piece.len() as u64;
        if self.unsynced >= SYNC_AHEAD && self.syncing.as_ref().is_none_or(|t| t.is_finished()) {
            self.collect_sync()?;
            self.out.flush()?;
            let file = self.out.get_ref().try_clone()?;
            self.syncing = Some(std::thread::spawn(move || file.sync_data()));
            self.unsynced = 0;
        }
        Ok(())
    }

    /// Waits for the sync running on another thread, if any, and returns its result.
    fn collect_sync(&mut self) -> std::io::Result<()> {
        match self.syncing.take() {
            Some(t) => t
                .join()
                .map_err(|_| std::io::Error::other("a sync thread panicked"))?,
            None => Ok(()),
        }
    }

    /// Writes what is buffered, fsyncs, sets the file's mode, and returns the checksum of
    /// all bytes written (hex, see [`FileDigest::finish`]) if one was asked for. `path` is
    /// the file's, for messages.
    pub(crate) fn finish(mut self, path: &Path, mode: u32) -> Result<Option<String>> {
        let file = self
            .collect_sync()
            .and_then(|()| self.out.into_inner().map_err(|e| e.into_error()))
            .and_then(|file| file.sync_all().map(|()| file))
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), e))?;
        Ok(self.digest.map(FileDigest::finish))
    }
}

/// See the module documentation.
pub(crate) struct BatchedFileWriter {
    /// The file, while no batch is in flight.
    idle: Option<FileSink>,
    in_flight: Option<JoinHandle<std::io::Result<FileSink>>>,
    /// The next batch.
    batch: Vec<Bytes>,
    batch_len: usize,
    /// Small pieces being gathered into one.
    small: Vec<u8>,
}

impl BatchedFileWriter {
    /// Writes `file`, computing `digest` over its bytes when given.
    pub(crate) fn new(file: File, digest: Option<FileDigest>) -> Self {
        Self {
            idle: Some(FileSink::new(file, digest)),
            in_flight: None,
            batch: Vec::new(),
            batch_len: 0,
            small: Vec::new(),
        }
    }

    /// Waits for the batch in flight, if any.
    async fn land(&mut self) -> std::io::Result<()> {
        if let Some(task) = self.in_flight.as_mut() {
            let done = task
                .await
                .map_err(|e| std::io::Error::other(format!("a write task failed: {e}")));
            self.in_flight = None;
            self.idle = Some(done??);
        }
        Ok(())
    }

    /// Moves gathered small pieces into the batch as one piece.
    fn seal_small(&mut self) {
        if !self.small.is_empty() {
            let small = std::mem::replace(&mut self.small, Vec::with_capacity(WRITE_PIECE));
            self.batch.push(Bytes::from(small));
        }
    }

    /// Takes the file and the batch once the previous batch landed.
    async fn take_batch(&mut self) -> std::io::Result<(FileSink, Vec<Bytes>)> {
        self.land().await?;
        self.seal_small();
        let sink = self
            .idle
            .take()
            .ok_or_else(|| std::io::Error::other("the file is gone"))?;
        self.batch_len = 0;
        Ok((sink, std::mem::take(&mut self.batch)))
    }

    /// Writes everything, fsyncs, sets the file's mode, and returns the checksum of all
    /// bytes written (see [`FileSink::finish`]).
    pub(crate) async fn finish(mut self, path: PathBuf, mode: u32) -> Result<Option<String>> {
        let written = |e: std::io::Error| Error::io(format!("writing {}", path.display()), e);
        let (mut sink, batch) = self.take_batch().await.map_err(written)?;
        blocking(move || {
            for piece in &batch {
                sink.write(piece)
                    .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            }
            sink.finish(&path, mode)
        })
        .await?
    }
}

impl ExtentSink for BatchedFileWriter {
    async fn put(&mut self, piece: Bytes) -> Result<()> {
        self.batch_len += piece.len();
        if piece.len() < SMALL_PIECE {
            self.small.extend_from_slice(&piece);
            if self.small.len() >= WRITE_PIECE {
                self.seal_small();
            }
        } else {
            self.seal_small();
            self.batch.push(piece);
        }
        if self.batch_len >= BATCH {
            let (mut sink, batch) = self
                .take_batch()
                .await
                .map_err(|e| Error::io("writing restored data", e))?;
            self.in_flight = Some(tokio::task::spawn_blocking(move || {
                for piece in &batch {
                    sink.write(piece)?;
                }
                Ok(sink)
            }));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use sha2::Digest;

    use super::*;
    use crate::manifest_checksum::ManifestChecksum;

    #[tokio::test]
    async fn writes_and_hashes_across_batches() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("f");
        let mut w = BatchedFileWriter::new(
            File::create(&path).expect("create"),
            ManifestChecksum::Sha256.digest(),
        );
        let data: Vec<u8> = (0..(BATCH * 2 + 12345)).map(|i| (i % 251) as u8).collect();
        let data = Bytes::from(data);
        // Page-sized pieces (gathered), chunk-sized ones (kept), and sizes between.
        let sizes = [
            8192 + 17,
            1 << 20,
            8192,
            SMALL_PIECE,
            SMALL_PIECE - 1,
            300_000,
            1,
        ];
        let mut at = 0;
        for size in sizes.iter().cycle() {
            let end = (at + size).min(data.len());
            w.put(data.slice(at..end)).await.expect("put");
            at = end;
            if at == data.len() {
                break;
            }
        }
        let sum = w.finish(path.clone(), 0o640).await.expect("finish");
        assert_eq!(std::fs::read(&path).expect("read"), data);
        assert_eq!(sum, Some(hex::encode(sha2::Sha256::digest(&data))));
        let mode = std::fs::metadata(&path).expect("stat").mode() & 0o7777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn a_large_file_syncs_ahead_and_still_checks_out() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("f");
        let mut sink = FileSink::new(
            File::create(&path).expect("create"),
            ManifestChecksum::Sha256.digest(),
        );
        let piece: Vec<u8> = (0..(1 << 20) + 7).map(|i| (i % 253) as u8).collect();
        let mut whole = sha2::Sha256::new();
        let mut len = 0u64;
        let mut started = 0;
        while len < 2 * SYNC_AHEAD + 5 {
            sink.write(&piece).expect("write");
            whole.update(&piece);
            len += piece.len() as u64;
            if sink.unsynced == 0 {
                started += 1;
            }
        }
        assert!(started >= 1, "a sync started ahead of the end");
        let sum = sink.finish(&path, 0o600).expect("finish");
        assert_eq!(sum, Some(hex::encode(whole.finalize())));
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), len);
    }
}
