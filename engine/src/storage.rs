//! Object storage: one [`Store`] per repository location, over `object_store`.
//!
//! Adds what the repository needs on top of `object_store`: a URL prefix, bounded retries with
//! backoff for transient failures, create-if-absent that is safe to retry, and durability on
//! local files (`object_store`'s local backend renames into place but does not fsync; an
//! archive tool that says "stored" must mean it survives a power cut).

use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use crate::error::{Error, Result};

/// Settings for retrying transient storage failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub attempts: u32,
    /// Delay before the first retry; doubled each time, with jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Metadata of one stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Name relative to the repository root.
    pub name: String,
    pub size: u64,
}

/// Outcome of a create-if-absent write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// This call created the object.
    New,
    /// The object was already there with identical content.
    Identical,
}

/// A repository location: an object store and a prefix inside it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// Prefix inside the store, empty or ending in `/`.
    prefix: String,
    /// Where the store lives, for messages (never contains credentials).
    location: String,
    /// For local stores: the directory objects are written under, to fsync them.
    local_root: Option<PathBuf>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// Is this error worth retrying? Answers that are final (missing, exists, refused) are not.
fn is_transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    matches!(e, E::Generic { .. } | E::JoinError { .. })
}

impl Store {
    /// Opens a location given as a URL (`file:///path`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix`, `azure://…`) or a plain local path.
    ///
    /// Cloud credentials and endpoints come from each cloud's usual environment variables
    /// (`AWS_*`, `GOOGLE_*`, `AZURE_*`); `options` are `object_store` configuration keys
    /// (e.g. `aws_endpoint`, `aws_allow_http`) that override them. For a local path the
    /// directory is created (mode 0700) if `create` is set.
    pub fn open(location: &str, options: &[(String, String)], create: bool) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidLocation {
            location: location.to_owned(),
            reason,
        };
        let scheme = location
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            None => Self::open_local(FsPath::new(location), create),
            Some("file") => {
                let url = url::Url::parse(location).map_err(|e| invalid(e.to_string()))?;
                let path = url
                    .to_file_path()
                    .map_err(|()| invalid("a file:// URL needs an absolute path".into()))?;
                Self::open_local(&path, create)
            }
            Some(scheme @ ("s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss")) => {
                let url = url::Url::parse(location).map_err(|e| invalid(e.to_string()))?;
                if url.host_str().unwrap_or("").is_empty() {
                    return Err(invalid("the URL names no bucket or container".into()));
                }
                let inner =
                    cloud_store(scheme, location, options).map_err(|e| invalid(e.to_string()))?;
                let prefix = url.path().trim_matches('/');
                let prefix = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                };
                let display = format!("{scheme}://{}/{}", url.host_str().unwrap_or(""), prefix);
                // The cloud client already retries requests with backoff (`cloud_store`);
                // one more attempt here covers failures while a response body streams.
                Ok(
                    Self::from_object_store(inner, &prefix, &display).with_retry(RetryPolicy {
                        attempts: 2,
                        ..RetryPolicy::default()
                    }),
                )
            }
            Some(other) => Err(invalid(format!(
                "unsupported scheme {other}://; use a path, file://, s3://, gs:// or az://"
            ))),
        }
    }

    fn open_local(path: &FsPath, create: bool) -> Result<Self> {
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| Error::io("resolving the current directory", e))?
                .join(path)
        };
        if create && !path.exists() {
            create_private_dir(&path)?;
        }
        if !path.is_dir() {
            return Err(Error::NotInitialized {
                location: path.display().to_string(),
            });
        }
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&path).map_err(|e| {
            Error::InvalidLocation {
                location: path.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        let mut store = Self::from_object_store(Arc::new(fs), "", &path.display().to_string());
        store.local_root = Some(path);
        Ok(store)
    }

    /// Wraps any `ObjectStore` (in-memory stores in tests, fault injectors).
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, prefix: &str, location: &str) -> Self {
        Self {
            inner,
            prefix: prefix.to_owned(),
            location: location.to_owned(),
            local_root: None,
            retry: RetryPolicy::default(),
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Where the store lives, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn path(&self, name: &str) -> Path {
        Path::from(format!("{}{name}", self.prefix))
    }

    fn storage_error(&self, op: &'static str, name: &str, source: object_store::Error) -> Error {
        match source {
            object_store::Error::NotFound { .. } => Error::NotFound {
                object: name.to_owned(),
            },
            source => Error::Storage {
                op,
                object: format!("{}{name}", self.location_prefix()),
                message: flatten(&source),
            },
        }
    }

    fn location_prefix(&self) -> String {
        if self.location.ends_with('/') {
            self.location.clone()
        } else {
            format!("{}/", self.location)
        }
    }

    /// Runs `op` with retries for transient errors, with exponential backoff and jitter.
    async fn retrying<T, F, Fut>(&self, op: F) -> std::result::Result<T, (object_store::Error, u32)>
    where
        F: Fn(u32) -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let mut delay = self.retry.initial_backoff;
        let mut attempt = 0;
        loop {
            match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) && attempt + 1 < self.retry.attempts => {
                    tracing::debug!(attempt, error = %e, "transient storage error, retrying");
                    let jitter = rand::random::<f64>() * 0.5 + 0.75;
                    tokio::time::sleep(delay.mul_f64(jitter)).await;
                    delay = (delay * 2).min(self.retry.max_backoff);
                    attempt += 1;
                }
                Err(e) => return Err((e, attempt)),
            }
        }
    }

    /// Reads a whole object. A body shorter than the size the store reported (a connection
    /// cut mid-body that a proxy turned into a clean end, a file shortened underneath) is a
    /// transient error, retried, and never returned as if it were the object.
    pub async fn get(&self, name: &str) -> Result<Bytes> {
        let path = self.path(name);
        self.retrying(|_| async {
            let result = self.inner.get(&path).await?;
            let want = result.range.end - result.range.start;
            let bytes = result.bytes().await?;
            check_length(&path, want, &bytes)?;
            Ok(bytes)
        })
        .await
        .map_err(|(e, _)| self.storage_error("get", name, e))
    }

    /// Reads `range` of an object; a short answer is retried like [`Store::get`]'s.
    pub async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(name);
        let want = range.end - range.start;
        self.retrying(|_| async {
            let bytes = self.inner.get_range(&path, range.clone()).await?;
            check_length(&path, want, &bytes)?;
            Ok(bytes)
        })
        .await
        .map_err(|(e, _)| self.storage_error("get", name, e))
    }

    /// For local stores: a reader of object ranges that runs on the calling thread, for a
    /// caller already on the blocking pool (a chunk read then opens what it read there,
    /// instead of handing the bytes back through the runtime to another blocking task).
    pub(crate) fn local_reader(&self) -> Option<LocalReader> {
        Some(LocalReader {
            root: self.local_root.clone()?,
            location: self.location_prefix(),
        })
    }

    /// Size of an object, or `None` if it does not exist.
    pub async fn head(&self, name: &str) -> Result<Option<u64>> {
        let path = self.path(name);
        match self.retrying(|_| self.inner.head(&path)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err((object_store::Error::NotFound { .. }, _)) => Ok(None),
            Err((e, _)) => Err(self.storage_error("head", name, e)),
        }
    }

    /// When an object was last written (unix µs, as the store reports it), or `None` if it
    /// does not exist. `pgkeep check` uses it as the time a WAL file was archived: the
    /// object formats carry no upload time of their own.
    pub async fn modified_us(&self, name: &str) -> Result<Option<i64>> {
        let path = self.path(name);
        match self.retrying(|_| self.inner.head(&path)).await {
            Ok(meta) => Ok(Some(meta.last_modified.timestamp_micros())),
            Err((object_store::Error::NotFound { .. }, _)) => Ok(None),
            Err((e, _)) => Err(self.storage_error("head", name, e)),
        }
    }

    /// Writes (or overwrites) an object durably.
    pub async fn put(&self, name: &str, data: Bytes) -> Result<()> {
        let path = self.path(name);
        let payload = PutPayload::from(data);
        self.retrying(|_| self.inner.put(&path, payload.clone()))
            .await
            .map_err(|(e, _)| self.storage_error("put", name, e))?;
        self.sync_local(name).await
    }

    /// Writes an object only if no object of that name exists.
    ///
    /// A retried attempt may find the object its own earlier, unacknowledged attempt wrote, and
    /// a concurrent writer may have stored identical bytes: both are `Created::Identical`.
    /// Different content is `AlreadyExists`.
    pub async fn put_new(&self, name: &str, data: Bytes) -> Result<Created> {
        self.put_new_parts(name, vec![data]).await
    }

    /// [`put_new`](Self::put_new) of an object given as consecutive parts, written one after
    /// the other: a WAL object's small front (header and meta unit) and its large data unit,
    /// without first copying both into one buffer.
    pub async fn put_new_parts(&self, name: &str, parts: Vec<Bytes>) -> Result<Created> {
        let path = self.path(name);
        let payload: PutPayload = parts.iter().cloned().collect();
        let opts = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .retrying(|_| self.inner.put_opts(&path, payload.clone(), opts()))
            .await
        {
            Ok(_) => {
                self.sync_local(name).await?;
                Ok(Created::New)
            }
            Err((
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
                _,
            )) => {
                let existing = self.get(name).await?;
                if same_bytes(&existing, &parts) {
                    // Another writer's, perhaps not synced yet: ours to make durable now.
                    self.make_durable(name).await?;
                    Ok(Created::Identical)
                } else {
                    Err(Error::AlreadyExists {
                        object: name.to_owned(),
                    })
                }
            }
            Err((e, _)) => Err(self.storage_error("create", name, e)),
        }
    }

    /// Lists objects whose names start with `prefix` (a directory such as `keys/`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let full = self.path(prefix.trim_end_matches('/'));
        let strip = self.prefix.len();
        let mut out: Vec<ObjectInfo> = self
            .retrying(|_| self.inner.list(Some(&full)).try_collect::<Vec<_>>())
            .await
            .map_err(|(e, _)| self.storage_error("list", prefix, e))?
            .into_iter()
            .filter_map(|m| {
                let name = m.location.as_ref().get(strip..)?.to_owned();
                Some(ObjectInfo { name, size: m.size })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Names of the "directories" directly under `prefix` (which ends in `/`), without the
    /// prefix or a trailing slash; one delimiter listing instead of every object below.
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let full = self.path(prefix.trim_end_matches('/'));
        let listing = self
            .retrying(|_| self.inner.list_with_delimiter(Some(&full)))
            .await
            .map_err(|(e, _)| self.storage_error("list", prefix, e))?;
        let mut out: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Deletes an object; deleting a missing object is not an error.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        match self.retrying(|_| self.inner.delete(&path)).await {
            Ok(()) | Err((object_store::Error::NotFound { .. }, _)) => {}
            Err((e, _)) => return Err(self.storage_error("delete", name, e)),
        }
        if let Some(root) = &self.local_root {
            let dir = object_parent(root, name);
            tokio::task::spawn_blocking(move || sync_dir(&dir))
                .await
                .map_err(|e| Error::io("syncing a directory", std::io::Error::other(e)))??;
        }
        Ok(())
    }

    /// On local stores: removes the directory `prefix` names and its parents up to the root,
    /// each only if empty (object stores have no directories; local ones leave them behind
    /// after deletes). Best effort: a directory another writer filled again stays.
    pub fn remove_empty_local_dirs(&self, prefix: &str) {
        let Some(root) = &self.local_root else {
            return;
        };
        let mut dir = root.join(prefix.trim_end_matches('/'));
        while dir.starts_with(root) && dir != *root && std::fs::remove_dir(&dir).is_ok() {
            match dir.parent() {
                Some(p) => dir = p.to_path_buf(),
                None => break,
            }
        }
    }

    /// On local stores: makes an object that exists durable (its file and directory entry),
    /// whoever wrote it; nothing to do on object stores, where a stored object is durable.
    pub async fn make_durable(&self, name: &str) -> Result<()> {
        self.sync_local_file(name, false).await
    }

    /// On local stores: makes the object's file and directory entry durable, and private.
    async fn sync_local(&self, name: &str) -> Result<()> {
        self.sync_local_file(name, true).await
    }

    /// Syncs a local object's file and directory; with `own`, first makes the file private
    /// (this process wrote it; another writer's file is left as it is).
    async fn sync_local_file(&self, name: &str, own: bool) -> Result<()> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = root.join(name);
        let dir = object_parent(root, name);
        tokio::task::spawn_blocking(move || -> Result<()> {
            if own {
                set_private(&file)?;
            }
            std::fs::File::open(&file)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(format!("syncing {}", file.display()), e))?;
            sync_dir(&dir)
        })
        .await
        .map_err(|e| Error::io("syncing a file", std::io::Error::other(e)))?
    }
}

/// Whether `whole` is `parts` one after the other.
fn same_bytes(whole: &[u8], parts: &[Bytes]) -> bool {
    let mut rest = whole;
    for part in parts {
        match rest.split_at_checked(part.len()) {
            Some((head, tail)) if head == part.as_ref() => rest = tail,
            _ => return false,
        }
    }
    rest.is_empty()
}

/// Blocking ranged reads of a local store's objects (see [`Store::local_reader`]). Errors are
/// those [`Store::get_range`] returns: a missing object is `NotFound`, a short read (the file
/// is shorter than the range) a `Storage` error. No retries: a local file shorter than asked
/// stays short.
pub(crate) struct LocalReader {
    root: PathBuf,
    /// The store's location with a trailing `/`, for messages.
    location: String,
}

impl LocalReader {
    /// The size of an object, if it exists (to explain a short read).
    pub(crate) fn size(&self, name: &str) -> Option<u64> {
        std::fs::metadata(self.root.join(name))
            .ok()
            .map(|m| m.len())
    }

    pub(crate) fn get_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let failed = |message: String| Error::Storage {
            op: "get",
            object: format!("{}{name}", self.location),
            message,
        };
        let file = std::fs::File::open(self.root.join(name)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                object: name.to_owned(),
            },
            _ => failed(e.to_string()),
        })?;
        let want = usize::try_from(range.end.saturating_sub(range.start))
            .map_err(|_| failed(format!("range {range:?} is too large to read")))?;
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            match file.read_at(&mut buf[got..], range.start + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(failed(e.to_string())),
            }
        }
        if got < want {
            return Err(failed(format!(
                "short read of {name}: asked for {want} bytes, got {got}"
            )));
        }
        Ok(buf)
    }
}

/// A read that returned other than `want` bytes, as a transient (`Generic`) error so that
/// [`Store::retrying`] tries again.
fn check_length(path: &Path, want: u64, bytes: &Bytes) -> object_store::Result<()> {
    if bytes.len() as u64 == want {
        return Ok(());
    }
    Err(object_store::Error::Generic {
        store: "pgkeep",
        source: format!(
            "short read of {path}: asked for {want} bytes, got {}",
            bytes.len()
        )
        .into(),
    })
}

/// The innermost distinct messages of an error chain, joined: object_store errors embed
/// their causes in their own text, so walking the chain naively repeats everything.
fn flatten(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        parts.retain(|p| !text.contains(p.as_str()));
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

fn object_parent(root: &FsPath, name: &str) -> PathBuf {
    root.join(name)
        .parent()
        .map_or_else(|| root.to_path_buf(), FsPath::to_path_buf)
}

fn sync_dir(dir: &FsPath) -> Result<()> {
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        // Deleting an object that never existed may name a directory that does not either.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e)),
    }
}

/// Repository files hold only ciphertext, but their names and sizes are still nobody
/// else's business: objects are 0600, directories 0700.
fn set_private(file: &FsPath) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("setting permissions of {}", file.display()), e))
}

fn create_private_dir(path: &FsPath) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))
}

/// Builds a cloud store: pgkeep's timeouts and retries first, then the cloud's usual
/// environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`, as `from_env` reads them), then
/// the URL, then explicit options, so each later source overrides the earlier ones.
fn cloud_store(
    scheme: &str,
    url: &str,
    options: &[(String, String)],
) -> object_store::Result<Arc<dyn ObjectStore>> {
    use object_store::ClientOptions;
    let retry = object_store::RetryConfig {
        max_retries: 5,
        retry_timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let client = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(300));
    macro_rules! build {
        ($builder:ty, $env_prefix:literal) => {{
            let mut b = <$builder>::new()
                .with_retry(retry)
                .with_client_options(client);
            for (k, v) in std::env::vars() {
                if k.starts_with($env_prefix) {
                    if let Ok(key) = k.to_ascii_lowercase().parse() {
                        b = b.with_config(key, v);
                    }
                }
            }
            b = b.with_url(url);
            for (k, v) in options {
                b = b.with_config(k.parse()?, v);
            }
            Arc::new(b.build()?) as Arc<dyn ObjectStore>
        }};
    }
    Ok(match scheme {
        "s3" | "s3a" => build!(object_store::aws::AmazonS3Builder, "AWS_"),
        "gs" => build!(object_store::gcp::GoogleCloudStorageBuilder, "GOOGLE_"),
        _ => build!(object_store::azure::MicrosoftAzureBuilder, "AZURE_"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_compares_the_parts_in_order() {
        let parts = [Bytes::from_static(b"head"), Bytes::from_static(b"-body")];
        assert!(same_bytes(b"head-body", &parts));
        assert!(!same_bytes(b"head-bod", &parts));
        assert!(!same_bytes(b"head-body!", &parts));
        assert!(!same_bytes(b"-bodyhead", &parts));
        assert!(same_bytes(b"", &[]));
    }
}
