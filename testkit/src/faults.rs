//! A fault-injecting `ObjectStore` wrapper: fails chosen operations on chosen objects a
//! chosen number of times, so tests can prove that transient failures are retried and
//! persistent ones fail cleanly. Used in addition to the real backends, never instead.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// The kinds of operation a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    Delete,
    List,
}

#[derive(Debug)]
struct Rule {
    op: Op,
    path_contains: String,
    /// Matching operations let through before the rule starts failing.
    skip: usize,
    remaining: usize,
}

/// Wraps a store and injects `Generic` errors (what a network failure or a 5xx looks like).
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    rules: Mutex<Vec<Rule>>,
    injected: AtomicUsize,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore")
            .field("injected", &self.injected.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            rules: Mutex::new(Vec::new()),
            injected: AtomicUsize::new(0),
        })
    }

    /// The next `times` operations of kind `op` on objects whose path contains
    /// `path_contains` fail (`usize::MAX`: always).
    pub fn fail(&self, op: Op, path_contains: &str, times: usize) {
        self.fail_after(op, path_contains, 0, times);
    }

    /// Like [`FaultyStore::fail`], after letting `skip` matching operations succeed: "the
    /// third pack deletion fails", a crash at a chosen point of a multi-step operation.
    pub fn fail_after(&self, op: Op, path_contains: &str, skip: usize, times: usize) {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Rule {
                op,
                path_contains: path_contains.to_owned(),
                skip,
                remaining: times,
            });
    }

    /// Removes every rule.
    pub fn heal(&self) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// How many failures were injected so far.
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::Relaxed)
    }

    fn check(&self, op: Op, path: &Path) -> Result<()> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let hit = rules
            .iter_mut()
            .find(|r| r.op == op && r.remaining > 0 && path.as_ref().contains(&r.path_contains));
        if let Some(rule) = hit {
            if rule.skip > 0 {
                rule.skip -= 1;
                return Ok(());
            }
            if rule.remaining != usize::MAX {
                rule.remaining -= 1;
            }
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(object_store::Error::Generic {
                store: "FaultyStore",
                source: format!("injected {op:?} failure on {path}").into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.check(Op::Put, location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.check(Op::Put, location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.check(Op::Get, location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> Result<Bytes> {
        self.check(Op::Get, location)?;
        self.inner.get_range(location, range).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.check(Op::Delete, location)?;
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let probe = prefix.cloned().unwrap_or_default();
        match self.check(Op::List, &probe) {
            Ok(()) => self.inner.list(prefix),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.check(Op::List, &prefix.cloned().unwrap_or_default())?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.check(Op::Put, to)?;
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.check(Op::Put, to)?;
        self.inner.copy_if_not_exists(from, to).await
    }
}
