//! A restored file's writer: batches of bytes written and hashed on the blocking pool, while
//! the next batch is being fetched and decrypted.
//!
//! `tokio::fs::File` hands every write to the blocking pool separately, and a restore writes a
//! file as many extents (page slices, runs of zeros): one thread handoff each, with SHA-256
//! computed on the async runtime in between. Here bytes collect in a buffer of [`BATCH`]
//! bytes; a full buffer goes to one blocking task that writes it with `std::fs` and feeds the
//! hasher, and a second buffer fills meanwhile (double buffering), so fetching, writing and
//! hashing overlap.

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;
use tokio::task::JoinHandle;

/// Bytes handed to the blocking pool at once.
const BATCH: usize = 4 << 20;

type Done = std::io::Result<(File, Sha256, Vec<u8>)>;

/// See the module documentation.
pub(crate) struct BatchedFileWriter {
    /// The file and hasher, while no batch is in flight.
    idle: Option<(File, Sha256)>,
    in_flight: Option<JoinHandle<Done>>,
    buf: Vec<u8>,
    /// The buffer the last batch used, for reuse.
    spare: Vec<u8>,
}

impl BatchedFileWriter {
    pub(crate) fn new(file: File) -> Self {
        Self {
            idle: Some((file, Sha256::new())),
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
            file.write_all(&batch)?;
            hasher.update(&batch);
            Ok((file, hasher, batch))
        }));
        Poll::Ready(Ok(()))
    }

    /// Writes everything, fsyncs, and returns the SHA-256 of all bytes written.
    pub(crate) async fn finish(mut self) -> std::io::Result<[u8; 32]> {
        std::future::poll_fn(|cx| self.poll_send(cx)).await?;
        std::future::poll_fn(|cx| self.poll_land(cx)).await?;
        let (file, hasher) = self
            .idle
            .take()
            .ok_or_else(|| std::io::Error::other("the file is gone"))?;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| std::io::Error::other(format!("an fsync task failed: {e}")))??;
        Ok(hasher.finalize().into())
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
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn writes_and_hashes_across_batches() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("f");
        let mut w = BatchedFileWriter::new(File::create(&path).expect("create"));
        let data: Vec<u8> = (0..(BATCH * 2 + 12345)).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(8192 + 17) {
            w.write_all(piece).await.expect("write");
        }
        w.flush().await.expect("flush");
        let sum = w.finish().await.expect("finish");
        assert_eq!(std::fs::read(&path).expect("read"), data);
        assert_eq!(sum, <[u8; 32]>::from(Sha256::digest(&data)));
    }
}
