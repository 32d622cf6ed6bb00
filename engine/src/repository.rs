//! The repository: a store, its keys and config, and typed access to its objects.

use std::sync::Arc;

use bytes::Bytes;
use pgkeep_format::{
    layout, open_object, seal_object, ClusterBinding, ClusterName, KdfParams, KeyFile, KeyFileId,
    KeyFileMeta, Kind, Manifest, MasterKey, RepoConfig, RepoId, RepoKeys,
};
use rand::RngCore;

use crate::error::{Error, Result};
use crate::index::SharedIndex;
use crate::storage::{Created, Store};

/// Largest plaintext accepted when reading each object kind, so a forged size field cannot
/// make a reader allocate without bound.
pub(crate) mod limits {
    pub(crate) const CONFIG: u64 = 1 << 20;
    pub(crate) const INDEX: u64 = 1 << 30;
    pub(crate) const MANIFEST: u64 = 4 << 30;
}

/// Options for `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub kdf: KdfParams,
    /// Label of the first key (shown by `key list`).
    pub key_label: String,
    pub pack_target_size: u32,
    pub compression_level: i8,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            kdf: KdfParams::DEFAULT,
            key_label: default_key_label(),
            pack_target_size: RepoConfig::DEFAULT_PACK_TARGET,
            // Level 1: see docs/design.md, "Compression level".
            compression_level: 1,
        }
    }
}

/// `user@host`, the default label for new keys.
pub fn default_key_label() -> String {
    let user = os_user_name().unwrap_or_else(|| "unknown".into());
    format!("{user}@{}", host_name())
}

/// This machine's name from /etc/hostname, or `localhost`.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The name of the user running this process: `$USER`, `$LOGNAME`, or /etc/passwd (libpq's
/// default user name for connections too).
pub fn os_user_name() -> Option<String> {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(current_user_from_passwd)
}

/// The name of the process's user from /etc/passwd (cron and archive_command often run
/// without `$USER`).
fn current_user_from_passwd() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
        })
}

/// One key file as `key list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: KeyFileId,
    pub label: String,
    /// Unix seconds.
    pub created: i64,
    pub kdf: KdfParams,
    /// Whether this is the key the repository was opened with.
    pub current: bool,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) keys: RepoKeys,
    /// Kept (zeroized on drop) for wrapping it under new passphrases; the derived keys in
    /// `keys` are equally sensitive, so holding it adds no exposure.
    master: MasterKey,
    pub(crate) config: RepoConfig,
    /// The key file the passphrase unlocked.
    key_file: KeyFileId,
    pub(crate) index: SharedIndex,
}

/// An open repository. Cheap to clone; clones share the loaded index.
#[derive(Clone)]
pub struct Repository {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.inner.store.location())
            .field("repo_id", &self.inner.config.repo_id)
            .finish_non_exhaustive()
    }
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Runs Argon2id off the async runtime: it is deliberately slow.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Pipeline(format!("a blocking task failed: {e}")))
}

impl Repository {
    /// Creates a repository: a random master key wrapped under `passphrase`, then the config
    /// object, written create-if-absent as the commit point of `init`.
    pub async fn init(store: Store, passphrase: &[u8], opts: InitOptions) -> Result<Self> {
        if store.head(layout::CONFIG).await?.is_some() {
            return Err(Error::AlreadyInitialized {
                location: store.location().to_owned(),
            });
        }
        let mut config = RepoConfig::new(RepoId(random_bytes()), now_unix());
        config.pack_target_size = opts.pack_target_size;
        config.compression_level = opts.compression_level;
        config
            .validate()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let master = MasterKey::from_bytes(random_bytes());
        let key_file = make_key_file(
            config.repo_id,
            &master,
            passphrase,
            opts.kdf,
            &opts.key_label,
        )
        .await?;
        let kf_name = layout::key_file(&key_file.id);
        store
            .put_new(&kf_name, Bytes::from(key_file.encode()))
            .await?;

        let keys = RepoKeys::derive(config.repo_id, &master);
        let sealed = seal_object(
            &keys,
            Kind::Config,
            layout::CONFIG,
            random_bytes(),
            &config.encode(),
            0,
        );
        match store.put_new(layout::CONFIG, Bytes::from(sealed)).await {
            Ok(Created::New) => {}
            Ok(Created::Identical) | Err(Error::AlreadyExists { .. }) => {
                // Another init won the race; leave its repository alone, remove our key.
                store.delete(&kf_name).await?;
                return Err(Error::AlreadyInitialized {
                    location: store.location().to_owned(),
                });
            }
            Err(e) => {
                let _ = store.delete(&kf_name).await;
                return Err(e);
            }
        }
        Ok(Self::assemble(store, keys, master, config, key_file.id))
    }

    /// Opens a repository with a passphrase: tries each key file, then reads and
    /// authenticates the config.
    pub async fn open(store: Store, passphrase: &[u8]) -> Result<Self> {
        // The config and the key files are fetched at once: on object storage each request is
        // a round trip, and every command (each `archive_command` call among them) opens the
        // repository first. The config is opened once a key file has given the keys.
        let (raw, key_files) = tokio::join!(store.get(layout::CONFIG), read_key_files(&store));
        let raw = match raw {
            Err(Error::NotFound { .. }) => {
                return Err(Error::NotInitialized {
                    location: store.location().to_owned(),
                })
            }
            other => other?,
        };
        let key_files = key_files?;
        if key_files.is_empty() {
            return Err(Error::corrupt(
                layout::KEYS_DIR,
                pgkeep_format::FormatError::Invalid {
                    what: "repository",
                    reason: "has a config but no key files".into(),
                },
            ));
        }
        let tried: Vec<String> = key_files.iter().map(|k| layout::key_file(&k.id)).collect();
        let pass = zeroize::Zeroizing::new(passphrase.to_vec());
        let unlocked = blocking(move || {
            key_files
                .into_iter()
                .find_map(|kf| kf.unlock(&pass).ok().map(|m| (kf, m)))
        })
        .await?;
        let Some((key_file, master)) = unlocked else {
            return Err(Error::WrongPassphrase {
                location: store.location().to_owned(),
                key_files: tried,
            });
        };
        let keys = RepoKeys::derive(key_file.repo_id, &master);
        let config = open_object(&keys, Kind::Config, layout::CONFIG, &raw, limits::CONFIG)
            .and_then(|p| RepoConfig::decode(&p))
            .map_err(|e| Error::corrupt(layout::CONFIG, e))?;
        if config.repo_id != key_file.repo_id {
            return Err(Error::corrupt(
                layout::key_file(&key_file.id),
                pgkeep_format::FormatError::Invalid {
                    what: "key file",
                    reason: format!(
                        "belongs to repository {}, the config is of {}",
                        key_file.repo_id, config.repo_id
                    ),
                },
            ));
        }
        Ok(Self::assemble(store, keys, master, config, key_file.id))
    }

    fn assemble(
        store: Store,
        keys: RepoKeys,
        master: MasterKey,
        config: RepoConfig,
        key_file: KeyFileId,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                keys,
                master,
                config,
                key_file,
                index: SharedIndex::default(),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &RepoConfig {
        &self.inner.config
    }

    pub fn keys(&self) -> &RepoKeys {
        &self.inner.keys
    }

    pub fn repo_id(&self) -> RepoId {
        self.inner.config.repo_id
    }

    /// Seals `plaintext` as an object of `kind` named `name` (off the async runtime).
    pub(crate) async fn seal(
        &self,
        kind: Kind,
        name: &str,
        plaintext: Vec<u8>,
        level: i8,
    ) -> Result<Bytes> {
        let repo = self.clone();
        let owned = name.to_owned();
        let sealed = blocking(move || {
            seal_object(
                &repo.inner.keys,
                kind,
                &owned,
                random_bytes(),
                &plaintext,
                level,
            )
        })
        .await?;
        Ok(Bytes::from(sealed))
    }

    /// Seals `plaintext` as an object of `kind` and writes it create-if-absent.
    pub(crate) async fn put_new_object(
        &self,
        kind: Kind,
        name: &str,
        plaintext: Vec<u8>,
        level: i8,
    ) -> Result<Created> {
        let sealed = self.seal(kind, name, plaintext, level).await?;
        self.inner.store.put_new(name, sealed).await
    }

    /// Reads and opens an object of `kind`.
    pub(crate) async fn get_object(&self, kind: Kind, name: &str, limit: u64) -> Result<Vec<u8>> {
        let raw = self.inner.store.get(name).await?;
        let repo = self.clone();
        let owned = name.to_owned();
        blocking(move || open_object(&repo.inner.keys, kind, &owned, &raw, limit))
            .await?
            .map_err(|e| Error::corrupt(name, e))
    }

    // ---- keys -------------------------------------------------------------------------

    /// Lists the key files; `current` marks the one this handle was opened with.
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        Ok(read_key_files(&self.inner.store)
            .await?
            .into_iter()
            .map(|kf| KeyInfo {
                current: kf.id == self.inner.key_file,
                id: kf.id,
                label: kf.label,
                created: kf.created,
                kdf: kf.kdf,
            })
            .collect())
    }

    /// Adds a passphrase: a new key file wrapping the same master key.
    pub async fn add_key(
        &self,
        passphrase: &[u8],
        label: &str,
        kdf: KdfParams,
    ) -> Result<KeyFileId> {
        let kf = make_key_file(self.repo_id(), &self.inner.master, passphrase, kdf, label).await?;
        self.inner
            .store
            .put_new(&layout::key_file(&kf.id), Bytes::from(kf.encode()))
            .await?;
        Ok(kf.id)
    }

    /// Removes a key file. Refuses the last key (the repository would become unreadable)
    /// and the key in use (change it with `change_passphrase` instead).
    pub async fn remove_key(&self, id: &KeyFileId) -> Result<()> {
        let keys = self.list_keys().await?;
        if !keys.iter().any(|k| k.id == *id) {
            return Err(Error::NotFound {
                object: layout::key_file(id),
            });
        }
        if keys.len() == 1 {
            return Err(Error::KeyRefused(format!(
                "refusing to remove key {id}: it is the repository's only key, and without it no one can read the repository"
            )));
        }
        if *id == self.inner.key_file {
            return Err(Error::KeyRefused(format!(
                "refusing to remove key {id}: it is the key this passphrase opened; open with another key to remove it, or use `key passwd` to change its passphrase"
            )));
        }
        self.inner.store.delete(&layout::key_file(id)).await
    }

    /// Replaces the current key's passphrase: writes a new key file, then removes the old
    /// one, so the repository never has zero keys. The new file carries `label`, or the old
    /// one's label when `None` (the label lives in the key file, so this is the moment to
    /// change it).
    pub async fn change_passphrase(
        &self,
        new_passphrase: &[u8],
        label: Option<&str>,
        kdf: KdfParams,
    ) -> Result<KeyFileId> {
        let old = self.inner.key_file;
        let label = match label {
            Some(l) => l.to_owned(),
            None => self
                .list_keys()
                .await?
                .into_iter()
                .find(|k| k.id == old)
                .map(|k| k.label)
                .unwrap_or_else(default_key_label),
        };
        let new = self.add_key(new_passphrase, &label, kdf).await?;
        self.inner.store.delete(&layout::key_file(&old)).await?;
        Ok(new)
    }

    // ---- clusters ---------------------------------------------------------------------

    /// Binds `cluster` to a PostgreSQL system on first use, and refuses another system
    /// afterwards, so backups and WAL of two servers never mix under one name.
    pub async fn bind_cluster(
        &self,
        cluster: &ClusterName,
        system_id: u64,
        pg_version_num: u32,
    ) -> Result<ClusterBinding> {
        let name = layout::cluster_binding(cluster);
        let binding = match self.get_object(Kind::Cluster, &name, limits::CONFIG).await {
            Ok(plain) => ClusterBinding::decode(&plain).map_err(|e| Error::corrupt(&name, e))?,
            Err(Error::NotFound { .. }) => {
                let new = ClusterBinding {
                    name: cluster.to_string(),
                    system_id,
                    pg_version_num,
                    created: now_unix(),
                };
                match self
                    .put_new_object(Kind::Cluster, &name, new.encode(), 0)
                    .await
                {
                    Ok(_) => new,
                    // A concurrent first backup or WAL push bound it first: use theirs.
                    Err(Error::AlreadyExists { .. }) => {
                        let plain = self
                            .get_object(Kind::Cluster, &name, limits::CONFIG)
                            .await?;
                        ClusterBinding::decode(&plain).map_err(|e| Error::corrupt(&name, e))?
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        if binding.system_id != system_id {
            return Err(Error::WrongSystem {
                cluster: cluster.to_string(),
                bound: binding.system_id,
                found: system_id,
            });
        }
        Ok(binding)
    }

    // ---- manifests --------------------------------------------------------------------

    /// Writes a backup manifest: the commit point of a backup. Refuses to overwrite.
    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        let cluster =
            ClusterName::new(&manifest.cluster).map_err(|e| Error::InvalidInput(e.to_string()))?;
        layout::check_component("backup id", &manifest.backup_id)
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let name = layout::manifest(&cluster, &manifest.backup_id);
        match self
            .put_new_object(Kind::Manifest, &name, manifest.encode(), 3)
            .await?
        {
            Created::New => Ok(()),
            Created::Identical => Err(Error::AlreadyExists { object: name }),
        }
    }

    pub async fn read_manifest(&self, cluster: &ClusterName, backup_id: &str) -> Result<Manifest> {
        layout::check_component("backup id", backup_id)
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let name = layout::manifest(cluster, backup_id);
        let plain = self
            .get_object(Kind::Manifest, &name, limits::MANIFEST)
            .await?;
        let m = Manifest::decode(&plain).map_err(|e| Error::corrupt(&name, e))?;
        if m.backup_id != backup_id || m.cluster != cluster.as_str() {
            return Err(Error::corrupt(
                &name,
                pgkeep_format::FormatError::Invalid {
                    what: "backup manifest",
                    reason: format!("describes backup {}/{} instead", m.cluster, m.backup_id),
                },
            ));
        }
        Ok(m)
    }

    /// A new backup id for a backup starting at `time`: `YYYYMMDDTHHMMSSZ` (UTC), so ids
    /// sort by time.
    pub fn backup_id_at(time: std::time::SystemTime) -> String {
        humantime::format_rfc3339_seconds(time)
            .to_string()
            .replace(['-', ':'], "")
    }

    /// Backup ids of a cluster, oldest first (ids sort by time).
    pub async fn list_backups(&self, cluster: &ClusterName) -> Result<Vec<String>> {
        let dir = layout::backups_dir(cluster);
        Ok(self
            .inner
            .store
            .list(&dir)
            .await?
            .into_iter()
            .filter_map(|o| o.name.strip_prefix(&dir).map(str::to_owned))
            .collect())
    }
}

async fn make_key_file(
    repo_id: RepoId,
    master: &MasterKey,
    passphrase: &[u8],
    kdf: KdfParams,
    label: &str,
) -> Result<KeyFile> {
    kdf.validate()
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let master = master.clone();
    let pass = zeroize::Zeroizing::new(passphrase.to_vec());
    let label = label.to_owned();
    blocking(move || {
        KeyFile::create(
            KeyFileMeta {
                id: KeyFileId(random_bytes()),
                repo_id,
                kdf,
                salt: random_bytes(),
                created: now_unix(),
                label,
            },
            &pass,
            &master,
        )
    })
    .await?
    .map_err(|e| Error::InvalidInput(e.to_string()))
}

/// Reads and decodes every key file. A key file that does not decode is reported, not
/// skipped: silently ignoring it could hide the only key that works.
async fn read_key_files(store: &Store) -> Result<Vec<KeyFile>> {
    let mut out = Vec::new();
    for obj in store.list(layout::KEYS_DIR).await? {
        let raw = store.get(&obj.name).await?;
        let kf = KeyFile::decode(&raw).map_err(|e| Error::corrupt(&obj.name, e))?;
        let expected = layout::key_file(&kf.id);
        if expected != obj.name {
            return Err(Error::corrupt(
                &obj.name,
                pgkeep_format::FormatError::Invalid {
                    what: "key file",
                    reason: format!("its header names it {expected}"),
                },
            ));
        }
        out.push(kf);
    }
    Ok(out)
}
