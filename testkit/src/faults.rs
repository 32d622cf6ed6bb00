//! A fault-injecting `ObjectStore` wrapper, so tests can prove that transient failures are
//! retried and persistent ones fail cleanly. Used in addition to the real backends, never
//! instead.
//!
//! Faults it injects:
//! - errors on chosen operations of chosen objects, a chosen number of times, optionally
//!   after letting some through ([`FaultyStore::fail`], [`FaultyStore::fail_after`],
//!   [`FaultyStore::fail_nth`]);
//! - errors at a random rate from a seeded RNG, so a failing run can be replayed
//!   ([`FaultyStore::fail_randomly`]);
//! - latency on every operation ([`FaultyStore::set_latency`]);
//! - truncated reads: a get that succeeds but returns fewer bytes than asked for, as a broken
//!   proxy or a file shortened underneath would ([`FaultyStore::truncate_reads`]);
//! - a chosen I/O error, such as "no space left on device", on writes
//!   ([`FaultyStore::fail_with_io`]).

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The kinds of operation a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    Delete,
    List,
}

impl Op {
    fn index(self) -> usize {
        self as usize
    }
}

/// What a matching rule injects.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `Generic`: what a network failure or a 5xx looks like to `object_store`.
    Error,
    /// An I/O error of this kind, as the local backend reports a failed write.
    Io(std::io::ErrorKind),
}

#[derive(Debug)]
struct Rule {
    op: Op,
    path_contains: String,
    /// Matching operations let through before the rule starts failing.
    skip: usize,
    remaining: usize,
    fault: Fault,
}

#[derive(Debug)]
struct Random {
    op: Option<Op>,
    rate: f64,
    rng: StdRng,
}

#[derive(Debug)]
struct Truncation {
    path_contains: String,
    remaining: usize,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    random: Option<Random>,
    truncations: Vec<Truncation>,
    latency: Duration,
}

/// Wraps a store and injects faults; see the module documentation.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    state: Mutex<State>,
    injected: AtomicUsize,
    truncated: AtomicUsize,
    /// Operations seen, by [`Op`], whether or not they failed.
    seen: [AtomicUsize; 4],
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
            state: Mutex::new(State::default()),
            injected: AtomicUsize::new(0),
            truncated: AtomicUsize::new(0),
            seen: Default::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `times` operations of kind `op` on objects whose path contains
    /// `path_contains` fail (`usize::MAX`: always).
    pub fn fail(&self, op: Op, path_contains: &str, times: usize) {
        self.fail_after(op, path_contains, 0, times);
    }

    /// Like [`FaultyStore::fail`], after letting `skip` matching operations succeed: "the
    /// third pack deletion fails", a crash at a chosen point of a multi-step operation.
    pub fn fail_after(&self, op: Op, path_contains: &str, skip: usize, times: usize) {
        self.add_rule(op, path_contains, skip, times, Fault::Error);
    }

    /// The `n`-th operation of kind `op` from now on (1-based, any object) fails, once.
    pub fn fail_nth(&self, op: Op, n: usize) {
        self.fail_after(op, "", n.saturating_sub(1), 1);
    }

    /// Like [`FaultyStore::fail`], with an I/O error of `kind` (e.g.
    /// `std::io::ErrorKind::StorageFull`) wrapped as the local backend wraps a failed write,
    /// so the caller sees what a full disk under the repository looks like.
    pub fn fail_with_io(
        &self,
        op: Op,
        path_contains: &str,
        times: usize,
        kind: std::io::ErrorKind,
    ) {
        self.add_rule(op, path_contains, 0, times, Fault::Io(kind));
    }

    fn add_rule(&self, op: Op, path_contains: &str, skip: usize, times: usize, fault: Fault) {
        self.state().rules.push(Rule {
            op,
            path_contains: path_contains.to_owned(),
            skip,
            remaining: times,
            fault,
        });
    }

    /// Each operation of kind `op` (`None`: every kind) fails with probability `rate`,
    /// decided by an RNG seeded with `seed`: the same seed and the same sequence of
    /// operations give the same failures.
    pub fn fail_randomly(&self, op: Option<Op>, rate: f64, seed: u64) {
        self.state().random = Some(Random {
            op,
            rate: rate.clamp(0.0, 1.0),
            rng: StdRng::seed_from_u64(seed),
        });
    }

    /// Every operation waits `latency` before it starts (a slow or distant store).
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// The next `times` gets (whole or ranged) of objects whose path contains
    /// `path_contains` succeed but return only the first half of the bytes asked for, while
    /// the result still claims the full range.
    pub fn truncate_reads(&self, path_contains: &str, times: usize) {
        self.state().truncations.push(Truncation {
            path_contains: path_contains.to_owned(),
            remaining: times,
        });
    }

    /// Removes every fault: rules, random failures, truncations and latency.
    pub fn heal(&self) {
        *self.state() = State::default();
    }

    /// How many failures were injected so far (not counting truncated reads).
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::Relaxed)
    }

    /// How many reads were truncated so far.
    pub fn truncated(&self) -> usize {
        self.truncated.load(Ordering::Relaxed)
    }

    /// How many operations of kind `op` were attempted so far, failed or not.
    pub fn seen(&self, op: Op) -> usize {
        self.seen[op.index()].load(Ordering::Relaxed)
    }

    /// Decides an operation's fate; returns the latency to wait first (outside the lock).
    fn decide(&self, op: Op, path: &Path) -> (Duration, Result<()>) {
        self.seen[op.index()].fetch_add(1, Ordering::Relaxed);
        let mut state = self.state();
        let latency = state.latency;
        let hit = state
            .rules
            .iter_mut()
            .find(|r| r.op == op && r.remaining > 0 && path.as_ref().contains(&r.path_contains));
        let mut fault = None;
        if let Some(rule) = hit {
            if rule.skip > 0 {
                rule.skip -= 1;
            } else {
                if rule.remaining != usize::MAX {
                    rule.remaining -= 1;
                }
                fault = Some(rule.fault);
            }
        }
        if fault.is_none() {
            if let Some(r) = state.random.as_mut() {
                if r.op.is_none_or(|o| o == op) && r.rng.gen_bool(r.rate) {
                    fault = Some(Fault::Error);
                }
            }
        }
        let Some(fault) = fault else {
            return (latency, Ok(()));
        };
        self.injected.fetch_add(1, Ordering::Relaxed);
        let err = match fault {
            Fault::Error => object_store::Error::Generic {
                store: "FaultyStore",
                source: format!("injected {op:?} failure on {path}").into(),
            },
            Fault::Io(kind) => object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(std::io::Error::new(
                    kind,
                    format!("injected I/O error on {path}"),
                )),
            },
        };
        (latency, Err(err))
    }

    async fn check(&self, op: Op, path: &Path) -> Result<()> {
        let (latency, outcome) = self.decide(op, path);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        outcome
    }

    /// Whether this read should come back short (and counts it).
    fn take_truncation(&self, path: &Path) -> bool {
        let mut state = self.state();
        let hit = state
            .truncations
            .iter_mut()
            .find(|t| t.remaining > 0 && path.as_ref().contains(&t.path_contains));
        match hit {
            Some(t) => {
                if t.remaining != usize::MAX {
                    t.remaining -= 1;
                }
                self.truncated.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

fn first_half(bytes: Bytes) -> Bytes {
    bytes.slice(..bytes.len() / 2)
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.check(Op::Put, location).await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.check(Op::Put, location).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.check(Op::Get, location).await?;
        // A head request carries no body to truncate.
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        if head || !self.take_truncation(location) {
            return Ok(result);
        }
        // Same metadata and claimed range, half the body: a short read that reports success.
        let meta = result.meta.clone();
        let range = result.range.clone();
        let attributes = result.attributes.clone();
        let body = first_half(result.bytes().await?);
        Ok(GetResult {
            payload: GetResultPayload::Stream(futures::stream::once(async { Ok(body) }).boxed()),
            meta,
            range,
            attributes,
        })
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> Result<Bytes> {
        self.check(Op::Get, location).await?;
        let bytes = self.inner.get_range(location, range).await?;
        Ok(if self.take_truncation(location) {
            first_half(bytes)
        } else {
            bytes
        })
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        self.check(Op::Get, location).await?;
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.check(Op::Delete, location).await?;
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let probe = prefix.cloned().unwrap_or_default();
        let (latency, outcome) = self.decide(Op::List, &probe);
        let inner = match outcome {
            Ok(()) => self.inner.list(prefix),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        };
        if latency.is_zero() {
            inner
        } else {
            futures::stream::once(tokio::time::sleep(latency))
                .flat_map(move |()| futures::stream::empty())
                .chain(inner)
                .boxed()
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.check(Op::List, &prefix.cloned().unwrap_or_default())
            .await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.check(Op::Put, to).await?;
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.check(Op::Put, to).await?;
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn store() -> Arc<FaultyStore> {
        FaultyStore::new(Arc::new(InMemory::new()))
    }

    async fn put(s: &FaultyStore, name: &str) -> Result<PutResult> {
        s.put(&Path::from(name), PutPayload::from_static(b"0123456789"))
            .await
    }

    #[tokio::test]
    async fn nth_operation_of_a_kind_fails_once() {
        let s = store();
        s.fail_nth(Op::Put, 3);
        assert!(put(&s, "a").await.is_ok());
        assert!(put(&s, "b").await.is_ok());
        assert!(put(&s, "c").await.is_err(), "the third put fails");
        assert!(put(&s, "c").await.is_ok(), "once");
        assert_eq!((s.injected(), s.seen(Op::Put)), (1, 4));
    }

    #[tokio::test]
    async fn random_failures_replay_with_the_same_seed() {
        let mut runs = Vec::new();
        for _ in 0..2 {
            let s = store();
            s.fail_randomly(Some(Op::Put), 0.3, 42);
            let mut pattern = Vec::new();
            for i in 0..200 {
                pattern.push(put(&s, &format!("o{i}")).await.is_err());
            }
            runs.push(pattern);
        }
        assert_eq!(runs[0], runs[1], "same seed, same failures");
        let failed = runs[0].iter().filter(|f| **f).count();
        assert!((30..=90).contains(&failed), "about 30% of 200: {failed}");
    }

    #[tokio::test]
    async fn truncated_reads_claim_the_full_range_but_return_half() {
        let s = store();
        put(&s, "obj").await.expect("put");
        s.truncate_reads("obj", 2);
        let r = s.get(&Path::from("obj")).await.expect("get");
        assert_eq!(r.range, 0..10);
        assert_eq!(r.bytes().await.expect("bytes").len(), 5);
        let b = s.get_range(&Path::from("obj"), 2..8).await.expect("range");
        assert_eq!(&b[..], b"234");
        let b = s.get(&Path::from("obj")).await.expect("get").bytes().await;
        assert_eq!(b.expect("bytes").len(), 10, "only twice");
        assert_eq!(s.truncated(), 2);
    }

    #[tokio::test]
    async fn latency_delays_every_operation() {
        let s = store();
        s.set_latency(Duration::from_millis(30));
        let t = std::time::Instant::now();
        put(&s, "a").await.expect("put");
        let listed: Vec<_> = s.list(None).collect().await;
        assert_eq!(listed.len(), 1);
        assert!(
            t.elapsed() >= Duration::from_millis(60),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn io_faults_carry_their_kind() {
        let s = store();
        s.fail_with_io(Op::Put, "", 1, std::io::ErrorKind::StorageFull);
        let err = put(&s, "a").await.expect_err("disk full");
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        let mut kinds = Vec::new();
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                kinds.push(io.kind());
            }
            source = e.source();
        }
        assert_eq!(kinds, [std::io::ErrorKind::StorageFull]);
    }
}
