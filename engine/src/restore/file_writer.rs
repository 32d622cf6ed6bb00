//! A restored file's writer: batches of bytes written and checksummed on the blocking pool,
//! while the next batch is being fetched and decrypted.
//!
//! `tokio::fs::File` hands every write to the blocking pool separately, and a restore writes a
//! file as many extents (page slices, runs of zeros): one thread handoff each, with SHA-256
//! computed on the async runtime in between. Here bytes collect in a buffer of [`BATCH`]
//! bytes; a full buffer goes to one blocking task that writes it with `std::fs` and feeds the
//! checksum, and a second buffer fills meanwhile (double buffering), so fetching, writing and
//! checksumming overlap.

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;
use tokio::task::JoinHandle;

use crate::manifest_checksum::FileDigest;

/// Bytes handed to the blocking pool at once.
const BATCH: usize = 4 << 20;

/// Bytes per `write(2)` within a batch. Measured on ext4 (Linux 6.18, `benches/restore.sh`
/// with `WRITES=30`, 4 alternating rounds): restores writing 4 MiB per call spent a median
/// 2.0 s in the kernel against 1.3 s with 128 KiB calls, the difference inside the page
/// cache copy (`copy_folio_from_iter_atomic`); smaller calls keep the source in cache.
const WRITE_PIECE: usize = 128 << 10;

type Done = std::io::Result<(File, Option<FileDigest>, Vec<u8>)>;

/// See the module documentation.
pub(crate) struct BatchedFileWriter {
    /// The file and its checksum (if one is wanted), while no batch is in flight.
    idle: Option<(File, Option<FileDigest>)>,
    in_flight: Option<JoinHandle<Done>>,
    buf: Vec<u8>,
    /// The buffer the last batch used, for reuse.
    spare: Vec<u8>,
}

impl BatchedFileWriter {
    /// Writes `file`, computing `digest` over its bytes when given.
    pub(crate) fn new(file: File, digest: Option<FileDigest>) -> Self {
        Self {
            idle: Some((file, digest)),
            in_flight: None,
            buf: Vec::with_capacity(BATCH),
            spare: Vec::new(),
        }
    }

    /// Waits for the batch in flight, if any.
    fn poll_land(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(task) = self.in_flight.as_mut() {
            let done = ready!(Pin::new(task).poll(cx))
                .map_err(|e| std::io::Error::other(format!("a write task failed: {e}")))?;
            self.in_flight = None;
            let (file, hasher, mut spare) = done?;
            spare.clear();
            self.spare = spare;
            self.idle = Some((file, hasher));
        }
        Poll::Ready(Ok(()))
    }

    /// Sends the buffer to the blocking pool (after the previous batch landed).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_land(cx))?;
        if self.buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let Some((mut file, mut hasher)) = self.idle.take() else {
            return Poll::Ready(Err(std::io::Error::other("the file is gone")));
        };
        let next = std::mem::take(&mut self.spare);
        let batch = std::mem::replace(&mut self.buf, next);
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            for piece in batch.chunks(WRITE_PIECE) {
                file.write_all(piece)?;
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&batch);
            }
            Ok((file, hasher, batch))
        }));
        Poll::Ready(Ok(()))
    }

    /// Writes everything, fsyncs, and returns the checksum of all bytes written (hex, see
    /// [`FileDigest::finish`]) if one was asked for.
    pub(crate) async fn finish(mut self) -> std::io::Result<Option<String>> {
        std::future::poll_fn(|cx| self.poll_send(cx)).await?;
        std::future::poll_fn(|cx| self.poll_land(cx)).await?;
        let (file, hasher) = self
            .idle
            .take()
            .ok_or_else(|| std::io::Error::other("the file is gone"))?;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| std::io::Error::other(format!("an fsync task failed: {e}")))??;
        Ok(hasher.map(FileDigest::finish))
    }
}

impl AsyncWrite for BatchedFileWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.buf.len() >= BATCH {
            ready!(this.poll_send(cx))?;
        }
        let n = data.len().min(BATCH - this.buf.len());
        this.buf.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    /// Flushing only waits for the batch in flight: the buffer is written by `finish`.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_land(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;

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
        for piece in data.chunks(8192 + 17) {
            w.write_all(piece).await.expect("write");
        }
        w.flush().await.expect("flush");
        let sum = w.finish().await.expect("finish");
        assert_eq!(std::fs::read(&path).expect("read"), data);
        assert_eq!(sum, Some(hex::encode(sha2::Sha256::digest(&data))));
    }
}
