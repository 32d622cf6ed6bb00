//! The WAL archive of one cluster: storing, comparing, listing and fetching archived files.
//!
//! Every archived file is one object (format-spec §7), immutable except for `.partial`
//! segments, which a newer snapshot replaces. Storing is create-if-absent, and a name that is
//! already stored is compared by its checksum (read from the small meta unit at the front of
//! the object): identical is success, different is refused. That is exactly what PostgreSQL
//! asks of `archive_command`, and it makes `wal-push` and `wal-stream` safe to run side by
//! side on the same repository.

use std::collections::BTreeMap;
use std::future::Future;

use bytes::Bytes;
use pgkeep_format::wal::{
    self, open_wal_meta, open_wal_object, seal_wal_data, wal_frame, wal_object_front,
};
use pgkeep_format::{ClusterName, Lsn, TimelineId, WalFileKind, WalFileName, WalMeta};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::repository::{blocking, random_bytes, Repository};
use crate::storage::Created;
use crate::wal::checksum::file_checksum;
use crate::wal::segment::{prepare_chain, SegmentIdentity, WalSource};

/// A file ready to store: its meta, and its bytes compressed and encrypted (the object's data
/// unit).
#[derive(Debug)]
pub struct PreparedWal {
    pub name: WalFileName,
    pub meta: WalMeta,
    pub data_unit: Vec<u8>,
}

/// What storing a file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The file was stored now.
    Stored,
    /// An identical copy was already stored (a re-push after a crash, or `wal-stream` and
    /// `archive_command` both archiving it).
    AlreadyStored,
}

/// One archived file, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedFile {
    pub name: WalFileName,
    /// Size of the stored object (compressed and encrypted).
    pub stored_size: u64,
}

/// The WAL archive of one cluster of a repository.
#[derive(Debug, Clone)]
pub struct WalArchive {
    repo: Repository,
    cluster: ClusterName,
}

impl WalArchive {
    pub fn new(repo: Repository, cluster: ClusterName) -> Self {
        Self { repo, cluster }
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    pub fn cluster(&self) -> &ClusterName {
        &self.cluster
    }

    /// The object name of an archived file.
    pub fn object_name(&self, name: &WalFileName) -> String {
        name.object_name(&self.cluster)
    }

    /// Checks and prepares a file held in memory for storing, off the async runtime (see
    /// `segment::prepare_chain`).
    pub async fn prepare(
        &self,
        name: WalFileName,
        file: Vec<u8>,
        prev_tail: Option<(Lsn, Vec<u8>)>,
        level: i8,
    ) -> Result<(PreparedWal, Option<SegmentIdentity>)> {
        let files = vec![(name.clone(), WalSource::Bytes(file))];
        let prepared = self
            .prepare_chain(files, std::future::ready(prev_tail), level)
            .await?;
        prepared
            .into_iter()
            .next()
            .map(|(_, prepared)| prepared)
            .unwrap_or_else(|| Err(Error::Pipeline(format!("{name}: nothing was prepared"))))
    }

    /// Seals `file` as `name` with a meta the caller computed, its checksum in
    /// `name.checksum_algorithm()` (storing it fails with `InvalidInput` otherwise): nothing
    /// else is checked or summarized, and the compression runs on this thread. For callers
    /// that vouch for the meta themselves, such as tests storing stand-in files; everything
    /// else uses [`prepare`](Self::prepare).
    pub fn prepare_as_is(
        &self,
        name: WalFileName,
        meta: WalMeta,
        file: &[u8],
        level: i8,
    ) -> PreparedWal {
        let object = self.object_name(&name);
        let kind = name.object_kind();
        let data_unit = seal_wal_data(self.repo.keys(), kind, &object, random_bytes(), file, level);
        PreparedWal {
            name,
            meta,
            data_unit,
        }
    }

    /// [`prepare`](Self::prepare) for consecutive segments (see `segment::prepare_chain`).
    pub async fn prepare_chain(
        &self,
        files: Vec<(WalFileName, WalSource)>,
        tail: impl Future<Output = Option<(Lsn, Vec<u8>)>>,
        level: i8,
    ) -> Result<Vec<(WalFileName, Result<(PreparedWal, Option<SegmentIdentity>)>)>> {
        let repo = self.repo.clone();
        let names: Vec<WalFileName> = files.iter().map(|(n, _)| n.clone()).collect();
        let objects: Vec<String> = names.iter().map(|n| self.object_name(n)).collect();
        // The tail is awaited here while the files are read and compressed; the summary of
        // the first file, the last step, waits for it.
        let (tx, rx) = oneshot::channel();
        let prepare = blocking(move || {
            let tail = move || rx.blocking_recv().ok().flatten();
            prepare_chain(files, tail, repo.keys(), &objects, level)
        });
        let send = async move {
            let _ = tx.send(tail.await);
        };
        let ((), prepared) = tokio::join!(send, prepare);
        Ok(names.into_iter().zip(prepared?).collect())
    }

    /// Reads the meta unit of a stored file (one or two ranged reads, never the file itself);
    /// `None` when the archive does not have it.
    pub async fn meta(&self, name: &WalFileName) -> Result<Option<WalMeta>> {
        let object = self.object_name(name);
        let store = self.repo.store();
        let Some(size) = store.head(&object).await? else {
            return Ok(None);
        };
        let probe = size.min(wal::META_PROBE as u64);
        let mut bytes = store.get_range(&object, 0..probe).await?.to_vec();
        let kind = name.object_kind();
        let frame =
            wal_frame(self.repo.keys(), kind, &bytes).map_err(|e| Error::corrupt(&object, e))?;
        if frame.meta_end as u64 > size {
            return Err(Error::corrupt(
                &object,
                pgkeep_format::FormatError::Truncated { what: kind.name() },
            ));
        }
        if frame.meta_end > bytes.len() {
            let rest = store
                .get_range(&object, bytes.len() as u64..frame.meta_end as u64)
                .await?;
            bytes.extend_from_slice(&rest);
        }
        let repo = self.repo.clone();
        let owned = object.clone();
        blocking(move || open_wal_meta(repo.keys(), &frame, &owned, &bytes))
            .await?
            .map(Some)
            .map_err(|e| Error::corrupt(&object, e))
    }

    /// Stores a prepared file, create-if-absent, its meta unit compressed at `level`. A
    /// stored file of the same name is compared by size and checksum: identical is success,
    /// anything else is [`Error::WalConflict`].
    ///
    /// A `.partial` segment is the exception: it is a snapshot of a segment still being
    /// written (by `wal-stream`) or the last one of a timeline (archived by PostgreSQL at
    /// promotion), so a newer one replaces what is stored.
    pub async fn store(&self, prepared: PreparedWal, level: i8) -> Result<PushOutcome> {
        if let Some(stored) = self.meta(&prepared.name).await? {
            return match self
                .compare_stored(&prepared.name, &stored, &prepared.meta)
                .await
            {
                Err(Error::WalConflict { .. }) if prepared.name.kind() == WalFileKind::Partial => {
                    self.replace(prepared, level).await?;
                    Ok(PushOutcome::Stored)
                }
                other => other,
            };
        }
        self.store_absent(prepared, level).await
    }

    /// [`store`](Self::store) for a file the caller has just found absent (by
    /// [`meta`](Self::meta)): it is not asked for again, which on object storage saves a
    /// HEAD and a ranged GET per file. The write is still create-if-absent, and a file
    /// stored in between is compared as [`store`](Self::store) compares it.
    pub async fn store_absent(&self, prepared: PreparedWal, level: i8) -> Result<PushOutcome> {
        let object = self.object_name(&prepared.name);
        let name = prepared.name.clone();
        // Size and checksum only: a segment's summary can be a few hundred KiB.
        let meta = WalMeta {
            size: prepared.meta.size,
            checksum: prepared.meta.checksum,
            segment: None,
            summary: None,
        };
        let (front, data_unit) = self.seal(&object, prepared, level).await?;
        let parts = vec![Bytes::from(front), Bytes::from(data_unit)];
        match self.repo.store().put_new_parts(&object, parts).await {
            Ok(Created::New | Created::Identical) => Ok(PushOutcome::Stored),
            // Someone else stored it between our check and our write: compare with theirs.
            Err(Error::AlreadyExists { .. }) => match self.meta(&name).await? {
                Some(stored) => self.compare_stored(&name, &stored, &meta).await,
                None => Err(Error::NotFound { object }),
            },
            Err(e) => Err(e),
        }
    }

    /// Stores a file whatever is stored under its name (for `.partial` segments only).
    pub async fn replace(&self, prepared: PreparedWal, level: i8) -> Result<()> {
        if prepared.name.kind() != WalFileKind::Partial {
            return Err(Error::InvalidInput(format!(
                "{}: only .partial segments are ever replaced in the archive",
                prepared.name
            )));
        }
        let object = self.object_name(&prepared.name);
        let (mut sealed, data_unit) = self.seal(&object, prepared, level).await?;
        sealed.extend_from_slice(&data_unit);
        self.repo.store().put(&object, Bytes::from(sealed)).await
    }

    /// Deletes a `.partial` segment (once the complete segment is stored); no error when
    /// there is none.
    pub async fn remove(&self, name: &WalFileName) -> Result<()> {
        if name.kind() != WalFileKind::Partial {
            return Err(Error::InvalidInput(format!(
                "{name}: only .partial segments are removed this way"
            )));
        }
        self.repo.store().delete(&self.object_name(name)).await
    }

    /// The object's bytes, in two parts: its front (header and meta unit, sealed here at
    /// `level`), then its data unit.
    async fn seal(
        &self,
        object: &str,
        prepared: PreparedWal,
        level: i8,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let PreparedWal {
            name,
            meta,
            data_unit,
        } = prepared;
        let repo = self.repo.clone();
        let owned = object.to_owned();
        let front = blocking(move || {
            let kind = name.object_kind();
            wal_object_front(repo.keys(), kind, &owned, &meta, random_bytes(), level).map_err(|e| {
                Error::InvalidInput(format!(
                    "{name}: {e}: prepare it with WalArchive::prepare, or compute its checksum \
                     with WalFileName::checksum_algorithm"
                ))
            })
        })
        .await??;
        Ok((front, data_unit))
    }

    /// Fetches and checks a stored file: authenticated decryption, then size and checksum
    /// against its meta. `None` when the archive does not have it.
    pub async fn fetch(&self, name: &WalFileName) -> Result<Option<(WalMeta, Vec<u8>)>> {
        let object = self.object_name(name);
        let bytes = match self.repo.store().get(&object).await {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let repo = self.repo.clone();
        let kind = name.object_kind();
        let owned = object.clone();
        let opened = blocking(move || {
            let (meta, file) = open_wal_object(repo.keys(), kind, &owned, &bytes)?;
            let actual = file_checksum(meta.checksum.algorithm, &file);
            if actual != meta.checksum {
                return Err(pgkeep_format::FormatError::Invalid {
                    what: kind.name(),
                    reason: format!("content has {actual}, its meta says {}", meta.checksum),
                });
            }
            Ok((meta, file))
        })
        .await?
        .map_err(|e| Error::corrupt(&object, e))?;
        Ok(Some(opened))
    }

    /// Every archived file of the cluster, by timeline then name.
    pub async fn list(&self) -> Result<BTreeMap<TimelineId, Vec<ArchivedFile>>> {
        let dir = format!("{}wal/", pgkeep_format::layout::cluster_dir(&self.cluster));
        let mut out: BTreeMap<TimelineId, Vec<ArchivedFile>> = BTreeMap::new();
        for info in self.repo.store().list(&dir).await? {
            let Some(file) = info.name.rsplit('/').next() else {
                continue;
            };
            // Anything else under wal/ (a temporary file of a local store, say) is not ours.
            let Ok(name) = WalFileName::parse(file) else {
                continue;
            };
            if info.name != self.object_name(&name) {
                continue;
            }
            out.entry(name.timeline()).or_default().push(ArchivedFile {
                name,
                stored_size: info.size,
            });
        }
        for files in out.values_mut() {
            files.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(out)
    }

    /// [`compare`] when the new file's checksum may be in another algorithm than the stored
    /// copy's: a segment stored before format 1.5 has SHA-256, a new one BLAKE3. Then the
    /// stored file itself is fetched (and checked against its own meta) and hashed in the new
    /// file's algorithm. That happens only when a file stored by an older pgkeep is pushed
    /// again, so it costs a download there and nothing anywhere else.
    async fn compare_stored(
        &self,
        name: &WalFileName,
        stored: &WalMeta,
        new: &WalMeta,
    ) -> Result<PushOutcome> {
        let algorithm = new.checksum.algorithm;
        if stored.checksum.algorithm == algorithm || stored.size != new.size {
            return self.settled(name, compare(name, stored, new)).await;
        }
        let Some((_, file)) = self.fetch(name).await? else {
            return Err(Error::NotFound {
                object: self.object_name(name),
            });
        };
        let restated = WalMeta {
            size: file.len() as u64,
            checksum: blocking(move || file_checksum(algorithm, &file)).await?,
            segment: None,
            summary: None,
        };
        self.settled(name, compare(name, &restated, new)).await
    }

    /// `outcome`, after making a file found already stored durable on a local store. Another
    /// writer (`wal-stream`, a concurrent `wal-push`) may have linked it into place and not
    /// yet synced it; PostgreSQL must not be told a file is archived that a power loss could
    /// still take away.
    pub(crate) async fn settled(
        &self,
        name: &WalFileName,
        outcome: Result<PushOutcome>,
    ) -> Result<PushOutcome> {
        if let Ok(PushOutcome::AlreadyStored) = outcome {
            self.repo
                .store()
                .make_durable(&self.object_name(name))
                .await?;
        }
        outcome
    }
}

/// Same name, same bytes: success. Same name, other bytes: refused, naming both checksums.
/// Checksums in two algorithms never match: see [`WalArchive::compare_stored`].
pub(crate) fn compare(name: &WalFileName, stored: &WalMeta, new: &WalMeta) -> Result<PushOutcome> {
    if stored.size == new.size && stored.checksum == new.checksum {
        Ok(PushOutcome::AlreadyStored)
    } else {
        Err(Error::WalConflict {
            file: name.to_string(),
            stored_checksum: stored.checksum,
            stored_size: stored.size,
            new_checksum: new.checksum,
            new_size: new.size,
        })
    }
}
