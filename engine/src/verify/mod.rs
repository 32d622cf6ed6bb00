//! `verify`: checks that what the repository holds can still be restored, and when it cannot,
//! says what is lost: which backups, which files, which WAL ranges.
//!
//! The structure pass reads listings, index segments, manifests and cluster bindings, never
//! chunk data or WAL content:
//! - every index segment authenticates and decodes;
//! - every pack an index lists is stored, with the size the index records (packs present but
//!   in no index are garbage of crashed sessions, reported but not damage);
//! - every manifest authenticates and decodes, and every chunk it references is indexed;
//! - for each PostgreSQL backup, the WAL segments from its start to its stop are archived
//!   (without them it cannot become consistent), and onward: a hole after the stop limits
//!   point-in-time recovery to the WAL before it.
//!
//! `--read-data` (a percentage, or all) also downloads packs and WAL files: a pack must hash
//! to its name (BLAKE3 of its bytes, checkable without keys), and every chunk in it must
//! authenticate, decompress and hash to its keyed id; a WAL file must authenticate and match
//! its SHA-256. A damaged chunk is traced to the files of every backup that use it, a damaged
//! or missing segment to the backups it makes unrestorable and the recovery windows it cuts.
//!
//! Listings are taken in commit order reversed (manifests and WAL, then index segments, then
//! packs), so a backup committing during the run cannot look damaged: anything a listed
//! manifest needs was stored before it, hence before the later listings.

pub mod affects;
pub mod report;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use pgkeep_format::{
    layout, ChunkId, ClusterBinding, ClusterName, IndexId, IndexSegment, Kind, Lsn, Manifest,
    PackEntry, PackId, PgInfo, SegmentName, TimelineId, WalFileKind, WalFileName,
};

pub use affects::{check_pack, damaged_files, sample, segment_run, PackCheck, SegmentRun};
pub use report::{
    AffectedBackup, Affects, BackupStatus, Checked, DumpStatus, Problem, ProblemKind, Severity,
    VerifyReport, WalImpact, WalReach,
};

use crate::error::{Error, Result};
use crate::repository::{blocking, limits, Repository};
use crate::wal::WalArchive;

/// Index segments and manifests read at once (small objects; more would only queue).
const PARALLEL_SMALL_READS: usize = 8;

/// What to check.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Share of packs and WAL files to download and check, in percent: 0 for the structure
    /// pass only, 100 for everything. Each object is picked independently at random.
    pub read_percent: f64,
    /// Objects downloaded and checked at once (each holds one pack or WAL file in memory).
    pub jobs: usize,
    /// Waiting for a running `prune`: verify holds a shared lock, so packs do not vanish
    /// under it and get reported as missing.
    pub lock: crate::lock::LockOptions,
    /// Check only this cluster's backups and WAL (packs and the index are shared and always
    /// checked); `None`: every cluster.
    pub cluster: Option<ClusterName>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            read_percent: 0.0,
            jobs: 4,
            lock: crate::lock::LockOptions::default(),
            cluster: None,
        }
    }
}

/// One pack as the index lists it.
#[derive(Debug)]
struct PackInfo {
    id: PackId,
    size: u64,
    /// The index segment that listed it first, for messages.
    segment: IndexId,
    entries: Vec<PackEntry>,
}

/// The index as verify needs it: packs with their entries (to check every chunk in a pack)
/// and chunks with a pack (to count the packs of a backup).
#[derive(Debug, Default)]
struct Index {
    packs: Vec<PackInfo>,
    pos: HashMap<PackId, usize>,
    /// Chunk → (pack position of its first location, raw length).
    chunks: HashMap<ChunkId, (usize, u32)>,
}

impl Index {
    fn merge(&mut self, segment_id: IndexId, segment: IndexSegment) {
        for p in segment.packs {
            if self.pos.contains_key(&p.pack_id) {
                continue;
            }
            let pos = self.packs.len();
            self.pos.insert(p.pack_id, pos);
            for e in &p.entries {
                self.chunks.entry(e.chunk_id).or_insert((pos, e.raw_len));
            }
            self.packs.push(PackInfo {
                id: p.pack_id,
                size: p.pack_size,
                segment: segment_id,
                entries: p.entries,
            });
        }
    }
}

/// What the listing of `clusters/` holds for one cluster.
#[derive(Debug)]
struct ClusterListing {
    name: ClusterName,
    binding: bool,
    backups: Vec<String>,
    dumps: Vec<String>,
    wal: Vec<(WalFileName, u64)>,
}

/// Stored and damaged segment numbers of one timeline.
type SegmentSets = (BTreeSet<u64>, BTreeSet<u64>);

/// A PostgreSQL backup, for the WAL checks.
#[derive(Debug)]
struct PgBackup {
    cluster: usize,
    backup_id: String,
    pg: PgInfo,
    status: usize,
}

struct Verifier {
    repo: Repository,
    opts: VerifyOptions,
    report: VerifyReport,
    /// Chunks known to be missing or damaged, with the problem that explains it.
    bad: HashMap<ChunkId, usize>,
    /// Packs read in full and found intact.
    intact: HashSet<usize>,
    /// Damaged WAL files: (cluster position, name) → problem.
    bad_wal: HashMap<(usize, WalFileName), usize>,
    /// Problems about missing WAL, by (cluster, timeline, first missing segment).
    wal_holes: HashMap<(usize, u32, u64), usize>,
}

/// Checks the repository (see the module documentation). Damage is reported in the
/// returned report; an `Err` means verify could not run (storage unreachable, for example).
pub async fn verify(repo: &Repository, opts: VerifyOptions) -> Result<VerifyReport> {
    let lock = crate::restore::reader_lock(repo, "verify", opts.lock).await?;
    let result = verify_locked(repo, opts).await;
    if let Some(l) = lock {
        l.release().await?;
    }
    result
}

async fn verify_locked(repo: &Repository, opts: VerifyOptions) -> Result<VerifyReport> {
    let mut v = Verifier {
        repo: repo.clone(),
        opts: VerifyOptions {
            jobs: opts.jobs.max(1),
            ..opts
        },
        report: VerifyReport::default(),
        bad: HashMap::new(),
        intact: HashSet::new(),
        bad_wal: HashMap::new(),
        wal_holes: HashMap::new(),
    };
    v.report.checked.read_percent = opts.read_percent.clamp(0.0, 100.0);
    let clusters = v.list_clusters().await?;
    let index = Arc::new(v.load_index().await?);
    let listed = v.list_packs().await?;
    v.check_packs(&index, &listed).await?;
    for (i, c) in clusters.iter().enumerate() {
        v.check_binding(c).await?;
        v.read_wal(i, c).await?;
    }
    let mut pg = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        v.check_manifests(i, c, &index, &mut pg).await?;
        v.check_dumps(c, &index).await?;
    }
    v.check_wal_continuity(&clusters, &pg);
    v.report.checked.clusters = clusters.len();
    let mut report = v.report;
    // Damage first, then by object name: stable output whatever order reads finished in.
    report.problems.sort_by(|a, b| {
        (a.severity != Severity::Damage, &a.object)
            .cmp(&(b.severity != Severity::Damage, &b.object))
    });
    Ok(report)
}

impl Verifier {
    /// Records that problem `i` breaks these files of backup `m`.
    fn affect_files(&mut self, i: usize, m: &Manifest, files: Vec<String>) {
        self.report.problems[i]
            .affects
            .backups
            .push(AffectedBackup {
                cluster: m.cluster.clone(),
                backup_id: m.backup_id.clone(),
                files,
                whole: false,
            });
    }

    fn problem(
        &mut self,
        severity: Severity,
        kind: ProblemKind,
        object: impl Into<String>,
        detail: impl Into<String>,
    ) -> usize {
        self.report.problems.push(Problem {
            severity,
            kind,
            object: object.into(),
            detail: detail.into(),
            affects: Affects::default(),
        });
        self.report.problems.len() - 1
    }

    /// One listing of `clusters/`, split per cluster into binding, manifests and WAL files.
    async fn list_clusters(&self) -> Result<Vec<ClusterListing>> {
        let mut by_name: BTreeMap<String, ClusterListing> = BTreeMap::new();
        for o in self.repo.store().list(layout::CLUSTERS_DIR).await? {
            let Some(rest) = o.name.strip_prefix(layout::CLUSTERS_DIR) else {
                continue;
            };
            let Some((cluster, rest)) = rest.split_once('/') else {
                continue;
            };
            // Anything that is not a pgkeep object (a local store's temporary file, say) is
            // not ours to judge.
            let Ok(name) = ClusterName::new(cluster) else {
                continue;
            };
            let entry = by_name
                .entry(cluster.to_owned())
                .or_insert_with(|| ClusterListing {
                    name,
                    binding: false,
                    backups: Vec::new(),
                    dumps: Vec::new(),
                    wal: Vec::new(),
                });
            if rest == "cluster" {
                entry.binding = true;
            } else if let Some(id) = rest.strip_prefix("backups/") {
                if !id.contains('/') {
                    entry.backups.push(id.to_owned());
                }
            } else if let Some(id) = rest.strip_prefix("dumps/") {
                if !id.contains('/') {
                    entry.dumps.push(id.to_owned());
                }
            } else if rest.starts_with("wal/") {
                let file = rest.rsplit('/').next().unwrap_or_default();
                if let Ok(wal) = WalFileName::parse(file) {
                    if wal.object_name(&entry.name) == o.name {
                        entry.wal.push((wal, o.size));
                    }
                }
            }
        }
        Ok(by_name
            .into_values()
            .filter(|c| {
                self.opts
                    .cluster
                    .as_ref()
                    .is_none_or(|only| *only == c.name)
            })
            .collect())
    }

    async fn load_index(&mut self) -> Result<Index> {
        let ids = self.repo.index_segment_ids().await?;
        self.report.checked.index_segments = ids.len();
        let repo = self.repo.clone();
        let mut reads = stream::iter(ids)
            .map(|id| {
                let repo = repo.clone();
                async move {
                    let name = layout::index_segment(&id);
                    let seg = repo.read_index_segment(&id).await;
                    (id, name, seg)
                }
            })
            .buffer_unordered(PARALLEL_SMALL_READS);
        let mut index = Index::default();
        while let Some((id, name, seg)) = reads.next().await {
            match seg {
                Ok(seg) => index.merge(id, seg),
                Err(Error::Corrupt { source, .. }) => {
                    self.problem(
                        Severity::Damage,
                        ProblemKind::IndexUnreadable,
                        name,
                        format!("{source}; the chunks it lists count as missing unless another segment lists them"),
                    );
                }
                // Removed since the listing (pruning): nothing to check.
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.report.checked.packs = index.packs.len();
        self.report.checked.pack_bytes = index.packs.iter().map(|p| p.size).sum();
        self.report.checked.chunks = index.chunks.len();
        Ok(index)
    }

    /// Stored packs by id, with their sizes.
    async fn list_packs(&self) -> Result<HashMap<PackId, (String, u64)>> {
        Ok(self
            .repo
            .store()
            .list(layout::DATA_DIR)
            .await?
            .into_iter()
            .filter_map(|o| {
                let id: PackId = o.name.rsplit('/').next()?.parse().ok()?;
                (layout::pack(&id) == o.name).then_some((id, (o.name, o.size)))
            })
            .collect())
    }

    fn mark_pack_bad(&mut self, index: &Index, pos: usize, problem: usize) {
        for e in &index.packs[pos].entries {
            self.bad.entry(e.chunk_id).or_insert(problem);
        }
    }

    /// Presence and sizes of indexed packs; with `--read-data`, their content.
    async fn check_packs(
        &mut self,
        index: &Arc<Index>,
        listed: &HashMap<PackId, (String, u64)>,
    ) -> Result<()> {
        let mut readable = Vec::new();
        let mut size_problems: HashMap<usize, usize> = HashMap::new();
        for (pos, p) in index.packs.iter().enumerate() {
            let name = layout::pack(&p.id);
            match listed.get(&p.id) {
                None => {
                    let i = self.problem(
                        Severity::Damage,
                        ProblemKind::PackMissing,
                        name,
                        format!(
                            "not in storage, though index segment {} lists it ({} chunks, {} bytes)",
                            layout::index_segment(&p.segment),
                            p.entries.len(),
                            p.size
                        ),
                    );
                    self.mark_pack_bad(index, pos, i);
                }
                Some((_, size)) if *size != p.size => {
                    let i = self.problem(
                        Severity::Damage,
                        ProblemKind::PackSize,
                        name,
                        format!(
                            "stored with {size} bytes, index segment {} records {} (truncated or altered)",
                            layout::index_segment(&p.segment),
                            p.size
                        ),
                    );
                    size_problems.insert(pos, i);
                    // Read it whenever data is read at all: the chunks before the damage
                    // may still be intact, and reading says which.
                    readable.push((pos, self.opts.read_percent > 0.0));
                }
                Some(_) => readable.push((pos, false)),
            }
        }
        let picks = sample(
            readable.len(),
            self.report.checked.read_percent,
            &mut rand::thread_rng(),
        );
        let selected: Vec<usize> = readable
            .iter()
            .zip(picks)
            .filter(|((_, forced), pick)| *forced || *pick)
            .map(|((pos, _), _)| *pos)
            .collect();
        let read: HashSet<usize> = selected.iter().copied().collect();
        // Packs of the wrong size not read: every chunk in them counts as lost.
        for (pos, i) in &size_problems {
            if !read.contains(pos) {
                self.mark_pack_bad(index, *pos, *i);
            }
        }
        let repo = self.repo.clone();
        let mut reads = stream::iter(selected)
            .map(|pos| {
                let repo = repo.clone();
                let index = Arc::clone(index);
                async move {
                    let name = layout::pack(&index.packs[pos].id);
                    let bytes = match repo.store().get(&name).await {
                        Ok(b) => b,
                        Err(Error::NotFound { .. }) => return Ok((pos, None)),
                        Err(e) => return Err(e),
                    };
                    let len = bytes.len() as u64;
                    let check = blocking(move || {
                        let p = &index.packs[pos];
                        check_pack(repo.keys(), &p.id, &bytes, &p.entries)
                    })
                    .await?;
                    Ok::<_, Error>((pos, Some((len, check))))
                }
            })
            .buffer_unordered(self.opts.jobs);
        while let Some(r) = reads.next().await {
            let (pos, outcome) = r?;
            let name = layout::pack(&index.packs[pos].id);
            let Some((len, check)) = outcome else {
                let i = self.problem(
                    Severity::Damage,
                    ProblemKind::PackMissing,
                    name,
                    "disappeared from storage while verify ran",
                );
                self.mark_pack_bad(index, pos, i);
                continue;
            };
            let c = &mut self.report.checked;
            c.packs_read += 1;
            c.pack_bytes_read += len;
            c.chunks_read += check.chunks;
            if check.is_clean() && !size_problems.contains_key(&pos) {
                self.intact.insert(pos);
                continue;
            }
            self.pack_damage(index, pos, &name, &check, size_problems.get(&pos).copied());
        }
        for (id, (name, size)) in listed {
            if !index.pos.contains_key(id) {
                self.report.unindexed_packs.push((name.clone(), *size));
            }
        }
        self.report.unindexed_packs.sort();
        Ok(())
    }

    /// Records what reading a damaged pack found, as a new problem or added to the size
    /// problem already raised for it.
    fn pack_damage(
        &mut self,
        index: &Index,
        pos: usize,
        name: &str,
        check: &PackCheck,
        existing: Option<usize>,
    ) {
        let total = index.packs[pos].entries.len();
        let mut parts = Vec::new();
        if !check.hash_ok {
            parts.push("its bytes do not hash to its name (altered in storage)".to_owned());
        }
        if let Some((_, why)) = check.bad_chunks.first() {
            parts.push(format!(
                "{} of {total} chunks cannot be read (first: {why})",
                check.bad_chunks.len()
            ));
        } else {
            parts.push(format!(
                "all {total} chunks the index places in it still read correctly, so restores are unaffected"
            ));
        }
        if let Some(e) = &check.toc_error {
            parts.push(format!(
                "its table of contents is unreadable ({e}): the index could not be rebuilt from it"
            ));
        }
        let detail = parts.join("; ");
        let i = match existing {
            Some(i) => {
                let p = &mut self.report.problems[i];
                p.detail = format!("{}; read in full: {detail}", p.detail);
                i
            }
            None => {
                let kind = if !check.hash_ok {
                    ProblemKind::PackHash
                } else if !check.bad_chunks.is_empty() {
                    ProblemKind::ChunkUnreadable
                } else {
                    ProblemKind::PackToc
                };
                self.problem(Severity::Damage, kind, name, detail)
            }
        };
        for (chunk, _) in &check.bad_chunks {
            self.bad.entry(*chunk).or_insert(i);
        }
    }

    async fn check_binding(&mut self, c: &ClusterListing) -> Result<()> {
        if !c.binding {
            return Ok(());
        }
        let name = layout::cluster_binding(&c.name);
        let decoded = match self
            .repo
            .get_object(Kind::Cluster, &name, limits::CONFIG)
            .await
        {
            Ok(plain) => ClusterBinding::decode(&plain).map_err(|e| Error::corrupt(&name, e)),
            Err(e) => Err(e),
        };
        match decoded {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
            Err(Error::Corrupt { source, .. }) => {
                self.problem(
                    Severity::Damage,
                    ProblemKind::ClusterUnreadable,
                    name,
                    format!("{source}; new backups and WAL archiving of cluster {} will fail until it is restored", c.name),
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// With `--read-data`: downloads and checks (a sample of) the cluster's WAL files.
    async fn read_wal(&mut self, ci: usize, c: &ClusterListing) -> Result<()> {
        self.report.checked.wal_files += c.wal.len();
        self.report.checked.wal_bytes += c.wal.iter().map(|w| w.1).sum::<u64>();
        let picks = sample(
            c.wal.len(),
            self.report.checked.read_percent,
            &mut rand::thread_rng(),
        );
        let selected: Vec<(WalFileName, u64)> = c
            .wal
            .iter()
            .zip(picks)
            .filter(|(_, p)| *p)
            .map(|(w, _)| w.clone())
            .collect();
        let archive = WalArchive::new(self.repo.clone(), c.name.clone());
        let mut reads = stream::iter(selected)
            .map(|(name, size)| {
                let archive = archive.clone();
                async move {
                    let r = archive.fetch(&name).await.map(|o| o.is_some());
                    (name, size, r)
                }
            })
            .buffer_unordered(self.opts.jobs);
        while let Some((name, size, r)) = reads.next().await {
            match r {
                Ok(true) => {
                    self.report.checked.wal_read += 1;
                    self.report.checked.wal_bytes_read += size;
                }
                // Removed since the listing (a .partial replaced by its segment, expiry).
                Ok(false) => {}
                Err(Error::Corrupt { object, source }) => {
                    self.report.checked.wal_read += 1;
                    self.report.checked.wal_bytes_read += size;
                    let i = self.problem(
                        Severity::Damage,
                        ProblemKind::WalDamaged,
                        object,
                        source.to_string(),
                    );
                    self.bad_wal.insert((ci, name), i);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads every manifest: it must decode and every chunk it references must be indexed;
    /// then maps the bad chunks found so far to its files.
    async fn check_manifests(
        &mut self,
        ci: usize,
        c: &ClusterListing,
        index: &Index,
        pg: &mut Vec<PgBackup>,
    ) -> Result<()> {
        let repo = self.repo.clone();
        let cluster = c.name.clone();
        let mut reads = stream::iter(c.backups.clone())
            .map(|id| {
                let (repo, cluster) = (repo.clone(), cluster.clone());
                async move {
                    let m = repo.read_manifest(&cluster, &id).await;
                    (id, m)
                }
            })
            .buffered(PARALLEL_SMALL_READS);
        while let Some((id, m)) = reads.next().await {
            let object = layout::manifest(&c.name, &id);
            let m = match m {
                Ok(m) => m,
                Err(Error::NotFound { .. }) => continue,
                Err(e @ (Error::Corrupt { .. } | Error::InvalidInput(_))) => {
                    let detail = match e {
                        Error::Corrupt { source, .. } => source.to_string(),
                        other => other.to_string(),
                    };
                    let i = self.problem(
                        Severity::Damage,
                        ProblemKind::ManifestUnreadable,
                        object,
                        format!("{detail}: the backup cannot be restored"),
                    );
                    self.report.problems[i]
                        .affects
                        .backups
                        .push(AffectedBackup {
                            cluster: c.name.to_string(),
                            backup_id: id.clone(),
                            files: Vec::new(),
                            whole: true,
                        });
                    self.report.backups.push(BackupStatus {
                        cluster: c.name.to_string(),
                        backup_id: id,
                        label: String::new(),
                        manifest_ok: false,
                        data_damaged: true,
                        packs: 0,
                        packs_read: 0,
                        wal: None,
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.report.checked.manifests += 1;
            let status = self.check_manifest(&object, &m, index);
            if let Some(p) = m.postgres {
                pg.push(PgBackup {
                    cluster: ci,
                    backup_id: m.backup_id.clone(),
                    pg: p,
                    status,
                });
            }
        }
        Ok(())
    }

    /// Reads every dump manifest: it must decode, every chunk it references must be indexed,
    /// and none may be among the damaged chunks found so far.
    async fn check_dumps(&mut self, c: &ClusterListing, index: &Index) -> Result<()> {
        for id in &c.dumps {
            let object = layout::dump(&c.name, id);
            let m = match self.repo.read_dump(&c.name, id).await {
                Ok(m) => m,
                Err(Error::NotFound { .. }) => continue,
                Err(e @ (Error::Corrupt { .. } | Error::InvalidInput(_))) => {
                    let detail = match e {
                        Error::Corrupt { source, .. } => source.to_string(),
                        other => other.to_string(),
                    };
                    self.problem(
                        Severity::Damage,
                        ProblemKind::ManifestUnreadable,
                        object,
                        format!("{detail}: the dump cannot be restored"),
                    );
                    self.report.dumps.push(DumpStatus {
                        cluster: c.name.to_string(),
                        dump_id: id.clone(),
                        manifest_ok: false,
                        data_damaged: true,
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.report.checked.dumps += 1;
            let refs = m.chunk_refs();
            self.report.checked.chunk_refs += refs.len() as u64;
            let unindexed = refs
                .iter()
                .filter(|r| !matches!(index.chunks.get(&r.id), Some((_, len)) if *len == r.raw_len))
                .count();
            let damaged_chunks = refs.iter().filter(|r| self.bad.contains_key(&r.id)).count();
            if unindexed > 0 {
                self.problem(
                    Severity::Damage,
                    ProblemKind::ChunksNotIndexed,
                    object.clone(),
                    format!(
                        "{unindexed} of the {} chunks this dump references are in no index segment (or indexed with another length): the dump cannot be restored",
                        refs.len()
                    ),
                );
            }
            self.report.dumps.push(DumpStatus {
                cluster: c.name.to_string(),
                dump_id: id.clone(),
                manifest_ok: true,
                data_damaged: unindexed > 0 || damaged_chunks > 0,
            });
        }
        Ok(())
    }

    /// Checks one decoded manifest; returns the position of its status.
    fn check_manifest(&mut self, object: &str, m: &Manifest, index: &Index) -> usize {
        let refs = m.chunk_refs();
        self.report.checked.chunk_refs += refs.len() as u64;
        let mut packs = BTreeSet::new();
        let mut unindexed = HashSet::new();
        for r in &refs {
            match index.chunks.get(&r.id) {
                Some((pack, raw_len)) if *raw_len == r.raw_len => {
                    packs.insert(*pack);
                }
                _ => {
                    unindexed.insert(r.id);
                }
            }
        }
        let mut damaged = false;
        if !unindexed.is_empty() {
            damaged = true;
            let files = damaged_files(m, |c| unindexed.contains(c).then_some(()))
                .remove(&())
                .unwrap_or_default();
            let i = self.problem(
                Severity::Damage,
                ProblemKind::ChunksNotIndexed,
                object,
                format!(
                    "{} of the {} chunks it references are in no index segment (or indexed with another length): their data cannot be found",
                    unindexed.len(),
                    refs.len()
                ),
            );
            self.affect_files(i, m, files);
        }
        for (i, files) in damaged_files(m, |c| self.bad.get(c).copied()) {
            damaged = true;
            self.affect_files(i, m, files);
        }
        self.report.backups.push(BackupStatus {
            cluster: m.cluster.clone(),
            backup_id: m.backup_id.clone(),
            label: m.label.clone(),
            manifest_ok: true,
            data_damaged: damaged,
            packs: packs.len(),
            packs_read: packs.iter().filter(|p| self.intact.contains(p)).count(),
            wal: None,
        });
        self.report.backups.len() - 1
    }

    /// For each PostgreSQL backup: the archived WAL from its start must reach its stop, and
    /// how far past it recovery can go.
    fn check_wal_continuity(&mut self, clusters: &[ClusterListing], backups: &[PgBackup]) {
        // Stored and damaged segment numbers per (cluster, timeline, segment size).
        let mut sets: HashMap<(usize, u32, u32), SegmentSets> = HashMap::new();
        for b in backups {
            let (tl, size) = (b.pg.timeline, b.pg.wal_segment_size);
            let (stored, damaged) = &*sets
                .entry((b.cluster, tl, size))
                .or_insert_with(|| self.segment_sets(b.cluster, &clusters[b.cluster], tl, size));
            let run = segment_run(stored, damaged, Lsn(b.pg.start_lsn).segment(size));
            let next_stored = stored.range(run.first_unusable + 1..).next().copied();
            self.backup_wal(&clusters[b.cluster], b, &run, next_stored);
        }
    }

    /// The complete segments archived on one timeline, and those found damaged.
    fn segment_sets(&self, ci: usize, c: &ClusterListing, tl: u32, size: u32) -> SegmentSets {
        let mut stored = BTreeSet::new();
        let mut damaged = BTreeSet::new();
        for (name, _) in &c.wal {
            if name.kind() != WalFileKind::Segment || name.timeline().0 != tl {
                continue;
            }
            if let Ok(seg) = SegmentName::parse(name.as_str(), size) {
                stored.insert(seg.segment);
                if self.bad_wal.contains_key(&(ci, name.clone())) {
                    damaged.insert(seg.segment);
                }
            }
        }
        (stored, damaged)
    }

    fn backup_wal(
        &mut self,
        c: &ClusterListing,
        b: &PgBackup,
        run: &SegmentRun,
        next_stored: Option<u64>,
    ) {
        let (tl, size) = (TimelineId(b.pg.timeline), b.pg.wal_segment_size);
        let seg = |n: u64| SegmentName::new(tl, n, size);
        let first = seg(run.first_unusable);
        let stop = Lsn(b.pg.stop_lsn).segment(size);
        let consistent = run.first_unusable > stop;
        let object = WalFileName::parse(&first.to_string())
            .map(|w| w.object_name(&c.name))
            .unwrap_or_else(|_| first.to_string());
        let impact = WalImpact {
            cluster: c.name.to_string(),
            backup_id: b.backup_id.clone(),
            timeline: tl.0,
            first_unusable: first,
            last_unusable: run.next_usable.map(|n| seg(n - 1)),
            not_restorable: !consistent,
            recoverable_to: consistent.then(|| first.start_lsn()),
        };
        self.report.backups[b.status].wal = Some(if consistent {
            WalReach::Restorable {
                until: first.start_lsn(),
                last_segment: seg(run.first_unusable - 1),
                cut_by: run.is_break().then_some(first),
            }
        } else {
            WalReach::NotRestorable {
                first_unusable: first,
                pending: !run.is_break(),
            }
        });
        if !run.is_break() {
            if !consistent {
                // The archive ends before the backup's stop: not archived yet (the backup
                // does not wait for its WAL to be archived), or archiving is failing.
                let i = self.problem(
                    Severity::Warning,
                    ProblemKind::WalNotArchived,
                    object,
                    format!(
                        "not archived yet: backup {} needs WAL up to {} to become consistent, the archive ends before {first} (archiving may be behind or failing)",
                        b.backup_id,
                        seg(stop)
                    ),
                );
                self.report.problems[i].affects.wal.push(impact);
            }
            return;
        }
        let existing = if run.damaged {
            WalFileName::parse(&first.to_string())
                .ok()
                .and_then(|w| self.bad_wal.get(&(b.cluster, w)).copied())
        } else {
            self.wal_holes
                .get(&(b.cluster, tl.0, run.first_unusable))
                .copied()
        };
        let i = match existing {
            Some(i) => i,
            None => {
                let last_missing = next_stored.map_or(run.first_unusable, |n| n - 1);
                let count = last_missing - run.first_unusable + 1;
                let range = if count == 1 {
                    format!("{first}")
                } else {
                    format!("{first} .. {} ({count} segments)", seg(last_missing))
                };
                let i = self.problem(
                    Severity::Damage,
                    ProblemKind::WalMissing,
                    object,
                    format!(
                        "missing from the WAL archive of cluster {} on timeline {}: {range}; archived WAL resumes at {}",
                        c.name,
                        tl.0,
                        next_stored.map_or_else(|| "?".to_owned(), |n| seg(n).to_string())
                    ),
                );
                self.wal_holes
                    .insert((b.cluster, tl.0, run.first_unusable), i);
                i
            }
        };
        self.report.problems[i].affects.wal.push(impact);
    }
}
