//! Stores files in a pgkeep repository as one backup, reads them back and checks them:
//! the library's write and read paths end to end.
//!
//! ```text
//! PGKEEP_PASSPHRASE_FILE=... cargo run --release -p pgkeep-engine --example store_files -- REPO FILE...
//! ```
//! The backup goes to cluster `$PGKEEP_CLUSTER` (default `main`) with kind `files`; run it
//! twice on the same files and the second run stores no new chunk data.

use std::time::{Instant, SystemTime};

use pgkeep_engine::format::{BackupKind, BackupStats, ClusterName, FileEntry, FileType, Manifest};
use pgkeep_engine::{Chunking, Repository, Store, WriteOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let location = args.next().ok_or("usage: store_files REPO FILE...")?;
    let files: Vec<String> = args.collect();
    if files.is_empty() {
        return Err("usage: store_files REPO FILE...".into());
    }
    let passphrase = match std::env::var("PGKEEP_PASSPHRASE") {
        Ok(p) => p,
        Err(_) => {
            let file = std::env::var("PGKEEP_PASSPHRASE_FILE")
                .map_err(|_| "set PGKEEP_PASSPHRASE or PGKEEP_PASSPHRASE_FILE")?;
            let text = std::fs::read_to_string(file)?;
            text.lines().next().unwrap_or_default().to_owned()
        }
    };
    let cluster =
        ClusterName::new(&std::env::var("PGKEEP_CLUSTER").unwrap_or_else(|_| "main".into()))?;

    let repo = Repository::open(Store::open(&location, &[], false)?, passphrase.as_bytes()).await?;
    let started = SystemTime::now();
    let clock = Instant::now();
    let session = repo.write_session(WriteOptions::default()).await?;
    let mut entries = Vec::new();
    for path in &files {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        let file = tokio::fs::File::open(path).await?;
        let stored = session
            .store_stream(file, Chunking::from_config(repo.config()))
            .await?;
        entries.push(FileEntry {
            tablespace: 0,
            path: path.as_bytes().to_vec(),
            file_type: FileType::Regular,
            mode: meta.mode() & 0o7777,
            size: stored.size,
            mtime: meta.mtime(),
            link_target: Vec::new(),
            extents: stored.extents,
        });
    }
    // Chunks become visible (and referenceable) only once the session's index is written.
    let (session_stats, _) = session.finish().await?;
    let mut manifest = Manifest {
        backup_id: Repository::backup_id_at(started),
        cluster: cluster.to_string(),
        kind: BackupKind::Files,
        parent: None,
        references: Vec::new(),
        label: "store_files example".into(),
        start_time_us: micros(started),
        stop_time_us: micros(SystemTime::now()),
        postgres: None,
        tablespaces: Vec::new(),
        attachments: Vec::new(),
        stats: BackupStats::default(),
        files: entries,
        properties: vec![("written_by".into(), "engine/examples/store_files.rs".into())],
    };
    let chunks = manifest.chunk_refs();
    manifest.stats = BackupStats {
        logical_bytes: session_stats.logical_bytes,
        stored_bytes: repo.stored_size(&chunks),
        new_bytes: session_stats.new_bytes,
        chunks: chunks.len() as u64,
        new_chunks: session_stats.new_chunks,
    };
    repo.write_manifest(&manifest).await?;
    let secs = clock.elapsed().as_secs_f64();
    println!(
        "stored backup {} ({} files): {} bytes, {} new bytes in {} packs, {:.1} MB/s",
        manifest.backup_id,
        manifest.files.len(),
        session_stats.logical_bytes,
        session_stats.new_bytes,
        session_stats.packs,
        session_stats.logical_bytes as f64 / secs / 1e6
    );

    // Read everything back through a fresh handle and compare with the originals.
    let fresh =
        Repository::open(Store::open(&location, &[], false)?, passphrase.as_bytes()).await?;
    let back = fresh.read_manifest(&cluster, &manifest.backup_id).await?;
    for f in &back.files {
        let mut restored = Vec::with_capacity(f.size as usize);
        fresh.write_extents(&f.extents, &mut restored).await?;
        let original = std::fs::read(String::from_utf8_lossy(&f.path).as_ref())?;
        if restored != original {
            return Err(format!(
                "{}: restored content differs",
                String::from_utf8_lossy(&f.path)
            )
            .into());
        }
    }
    println!(
        "read back {} files: identical to the originals",
        back.files.len()
    );
    Ok(())
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
