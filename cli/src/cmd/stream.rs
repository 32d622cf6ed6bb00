//! `pgkeep wal-stream`: the receiver, signal handling, and the Prometheus endpoint.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pgkeep_engine::wal::stream::{run as receive, StreamOptions, StreamStatus};
use pgkeep_engine::wal::WalArchive;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::WalStreamArgs;
use crate::cmd;
use crate::exit::UsageError;
use crate::settings::{pick, pick_bounded, Settings};

/// `--partial-interval` in seconds: at least one, at most a day (a longer period is no
/// data-loss window any more, and one near `u64::MAX` overflowed the timer and panicked).
const PARTIAL_INTERVAL: std::ops::RangeInclusive<u64> = 1..=86_400;

pub(crate) async fn run(s: &Settings, a: &WalStreamArgs) -> anyhow::Result<()> {
    let cluster = cmd::cluster(s)?;
    let mut conn = cmd::conn_config(s, a.pg.clone())?;
    let partial = pick_bounded(
        (a.partial_interval, "--partial-interval"),
        "PGKEEP_PARTIAL_INTERVAL",
        (s.file.partial_interval, "config key partial_interval"),
        PARTIAL_INTERVAL,
    )?
    .unwrap_or(5);
    let timeout = pick(a.timeout, "PGKEEP_TIMEOUT", s.file.timeout)?.unwrap_or(300);
    let metrics_addr = pick(
        a.metrics_addr.clone(),
        "PGKEEP_METRICS_ADDR",
        s.file.metrics_addr.clone(),
    )?;
    // As for backup: --timeout bounds connecting too unless connect_timeout is set.
    if conn.connect_timeout.is_none() && timeout != 0 {
        conn.connect_timeout = Some(Duration::from_secs(timeout));
    }
    let repo = cmd::open(s).await?;
    let opts = StreamOptions {
        slot: pick(a.slot.clone(), "PGKEEP_SLOT", s.file.slot.clone())?
            .unwrap_or_else(|| "pgkeep".into()),
        create_slot: !a.no_create_slot,
        partial_interval: Duration::from_secs(partial),
        timeout: Duration::from_secs(if timeout == 0 { u64::MAX / 4 } else { timeout }),
        level: repo.config().compression_level,
        ..StreamOptions::default()
    };
    let status = Arc::new(StreamStatus::default());
    if let Some(addr) = metrics_addr {
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|e| UsageError(format!("--metrics-addr {addr}: {e}")))?;
        tracing::info!(addr = %addr, "serving metrics");
        tokio::spawn(serve_metrics(listener, status.clone()));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        cmd::wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let archive = WalArchive::new(repo, cluster);
    tracing::info!(server = %conn.display_target(), slot = %opts.slot, "wal-stream starting");
    receive(&archive, &conn, &opts, &status, stop_rx)
        .await
        .with_context(|| format!("streaming WAL from {}", conn.display_target()))
}

/// A minimal HTTP/1.0 responder: every request gets the metrics page. Enough for a
/// Prometheus scraper, and no web framework in a backup tool.
async fn serve_metrics(listener: TcpListener, status: Arc<StreamStatus>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let status = status.clone();
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            // The request itself does not matter; read what arrived so the client is not
            // reset while still sending.
            let _ = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut req)).await;
            let body = render_metrics(&status);
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

fn render_metrics(s: &StreamStatus) -> String {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let server_time = s.last_server_time_us.load(Ordering::Relaxed);
    let lag_seconds = if server_time > 0 {
        (now_us - server_time).max(0) as f64 / 1e6
    } else {
        0.0
    };
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed).to_string();
    #[rustfmt::skip]
    let rows: [(&str, &str, &str, String); 10] = [
        ("received_lsn_bytes", "gauge", "End of the WAL received, as a byte position.", load(&s.received_lsn)),
        ("archived_lsn_bytes", "gauge", "End of the WAL durably stored (reported to the server as flushed).", load(&s.archived_lsn)),
        ("server_lsn_bytes", "gauge", "The server's end of WAL from its last message.", load(&s.server_lsn)),
        ("lag_bytes", "gauge", "WAL the server has that is not stored yet.", s.lag_bytes().to_string()),
        ("lag_seconds", "gauge", "Age of the server's last message.", format!("{lag_seconds:.3}")),
        ("timeline", "gauge", "Timeline being received.", load(&s.timeline)),
        ("segments_archived_total", "counter", "Complete segments stored.", load(&s.segments_archived)),
        ("partial_uploads_total", "counter", "Uploads of the segment being filled.", load(&s.partial_uploads)),
        ("errors_total", "counter", "Streaming sessions that ended in an error.", load(&s.errors)),
        (
            "last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful store.",
            s.last_success_unix.load(Ordering::Relaxed).to_string(),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        let _ = write!(
            out,
            "# HELP pgkeep_wal_stream_{name} {help}\n# TYPE pgkeep_wal_stream_{name} {kind}\npgkeep_wal_stream_{name} {value}\n"
        );
    }
    out
}
