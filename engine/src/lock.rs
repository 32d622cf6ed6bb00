//! Repository locks: what keeps `prune` from deleting chunks a running backup or restore uses.
//!
//! A lock is an object `locks/<random id>` (SPEC.md §2, §10). Backups and restores hold
//! *shared* locks; `prune` holds the one *exclusive* lock. A holder writes its lock, then lists
//! the others: an exclusive lock conflicts with any other live lock, a shared lock only with an
//! exclusive one. On a conflict the newcomer deletes its own lock and retries until its wait
//! runs out, so two contenders that see each other both back off and neither proceeds blind.
//! Correctness needs only read-after-write listings, which local files, S3, GCS and Azure give.
//!
//! Holders rewrite their lock every [`LockOptions::refresh`] (the heartbeat). A lock whose
//! heartbeat is older than [`LockOptions::stale_after`] belongs to a process that died: it no
//! longer blocks anyone, and `prune` deletes it. A lock whose holder provably died on this
//! machine (same host, a private marker of the same boot and pid namespace, the pid gone: see
//! the `dead_holder` module) counts as stale at once, so the rerun after a SIGKILL or a crash
//! is not blocked for the stale timeout. The heartbeat is the holder's clock, so hosts
//! sharing a repository need clocks within a small fraction of `stale_after` (default
//! 10 minutes) of each other.
//!
//! WAL archiving (`wal-push`, `wal-stream`, `wal-fetch`) takes no lock: WAL objects are
//! self-contained and `prune` never touches them.

use std::time::Duration;

use pgkeep_format::{layout, LockId, LockInfo, LockMode};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::repository::{limits, random_bytes, Repository};
use crate::timestamp::now_us;

/// Timing of lock acquisition and heartbeats.
#[derive(Debug, Clone, Copy)]
pub struct LockOptions {
    /// How long to keep retrying while a conflicting lock is held.
    pub wait: Duration,
    /// Interval between heartbeats.
    pub refresh: Duration,
    /// A lock not refreshed for this long is stale (its holder is gone).
    pub stale_after: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(15 * 60),
            refresh: Duration::from_secs(60),
            stale_after: Duration::from_secs(10 * 60),
        }
    }
}

/// One lock found in the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLock {
    pub object: String,
    pub info: LockInfo,
    /// Whether its heartbeat is older than the stale timeout, or its holder provably died
    /// on this machine.
    pub stale: bool,
}

impl HeldLock {
    /// "backup (shared) by pid 123 on db1, since 2026-11-21T10:00:00.000000Z".
    pub fn describe(&self) -> String {
        let mode = match self.info.mode {
            LockMode::Shared => "shared",
            LockMode::Exclusive => "exclusive",
        };
        format!(
            "{} ({mode}) by pid {} on {}, since {}",
            self.info.operation,
            self.info.pid,
            self.info.hostname,
            crate::timestamp::format_timestamp_us(self.info.created_us)
        )
    }
}

/// A lock this process holds. Release it with [`RepoLock::release`]; dropping it stops the
/// heartbeat and deletes the lock object in the background, best effort (a lock left behind
/// goes stale and stops blocking others).
#[derive(Debug)]
pub struct RepoLock {
    repo: Repository,
    object: String,
    stop: Option<watch::Sender<bool>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// This machine's proof of who holds the lock; removed with it.
    _marker: Option<crate::dead_holder::Marker>,
}

impl Repository {
    /// Every lock object in the repository, with its staleness under `stale_after`.
    pub async fn list_locks(&self, stale_after: Duration) -> Result<Vec<HeldLock>> {
        let now = now_us();
        let mut out = Vec::new();
        for obj in self.store().list(layout::LOCKS_DIR).await? {
            let info = match self
                .get_object(pgkeep_format::Kind::Lock, &obj.name, limits::CONFIG)
                .await
            {
                Ok(plain) => LockInfo::decode(&plain).map_err(|e| Error::corrupt(&obj.name, e))?,
                // Released between the listing and the read.
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let age = now.saturating_sub(info.refreshed_us);
            let stale = age > stale_after.as_micros() as i64
                || crate::dead_holder::is_dead(&obj.name, &info.hostname, info.pid);
            out.push(HeldLock {
                object: obj.name,
                info,
                stale,
            });
        }
        Ok(out)
    }

    /// Takes a lock of `mode` for `operation` ("backup", "restore", "prune"), waiting up to
    /// `opts.wait` for conflicting holders to finish.
    pub async fn lock(
        &self,
        mode: LockMode,
        operation: &str,
        opts: LockOptions,
    ) -> Result<RepoLock> {
        let deadline = tokio::time::Instant::now() + opts.wait;
        let created_us = now_us();
        let mut info = LockInfo {
            mode,
            hostname: crate::repository::host_name(),
            pid: std::process::id(),
            operation: operation.to_owned(),
            created_us,
            refreshed_us: created_us,
        };
        let mut announced = false;
        loop {
            let object = layout::lock(&LockId(random_bytes()));
            info.refreshed_us = now_us();
            // The marker first: a process killed right after storing its lock leaves both.
            let marker = crate::dead_holder::mark(&object);
            self.put_new_object(pgkeep_format::Kind::Lock, &object, info.encode(), 0)
                .await?;
            let conflict = match self.list_locks(opts.stale_after).await {
                Ok(locks) => locks.into_iter().find(|l| {
                    l.object != object
                        && !l.stale
                        && (mode == LockMode::Exclusive || l.info.mode == LockMode::Exclusive)
                }),
                Err(e) => {
                    let _ = self.store().delete(&object).await;
                    return Err(e);
                }
            };
            let Some(holder) = conflict else {
                return Ok(self.hold(object, info, opts.refresh, marker));
            };
            self.store().delete(&object).await?;
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Locked {
                    operation: operation.to_owned(),
                    holder: holder.describe(),
                    object: holder.object,
                });
            }
            if !announced {
                tracing::warn!(
                    "waiting up to {} for {} to finish ({})",
                    humantime::format_duration(opts.wait),
                    holder.describe(),
                    holder.object
                );
                announced = true;
            }
            // Jitter keeps two contenders from retrying in lockstep forever.
            let pause = Duration::from_millis(500 + u64::from(random_bytes::<1>()[0]) * 4);
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)).await;
        }
    }

    fn hold(
        &self,
        object: String,
        info: LockInfo,
        refresh: Duration,
        marker: Option<crate::dead_holder::Marker>,
    ) -> RepoLock {
        let (stop, mut stopped) = watch::channel(false);
        let repo = self.clone();
        let name = object.clone();
        let heartbeat = tokio::spawn(async move {
            let mut info = info;
            loop {
                tokio::select! {
                    _ = stopped.changed() => return,
                    () = tokio::time::sleep(refresh) => {}
                }
                info.refreshed_us = now_us();
                if let Err(e) = repo.rewrite_lock(&name, &info).await {
                    tracing::warn!("refreshing lock {name}: {e}");
                }
            }
        });
        RepoLock {
            repo: self.clone(),
            object,
            stop: Some(stop),
            heartbeat: Some(heartbeat),
            _marker: marker,
        }
    }

    async fn rewrite_lock(&self, object: &str, info: &LockInfo) -> Result<()> {
        let sealed = self
            .seal(pgkeep_format::Kind::Lock, object, info.encode(), 0)
            .await?;
        self.store().put(object, sealed).await
    }

    /// Deletes stale locks (holders that died); returns what it removed.
    pub async fn remove_stale_locks(&self, stale_after: Duration) -> Result<Vec<HeldLock>> {
        let stale: Vec<HeldLock> = self
            .list_locks(stale_after)
            .await?
            .into_iter()
            .filter(|l| l.stale)
            .collect();
        for l in &stale {
            tracing::warn!("removing stale lock {}: {}", l.object, l.describe());
            self.store().delete(&l.object).await?;
            crate::dead_holder::forget(&l.object);
        }
        Ok(stale)
    }
}

impl RepoLock {
    /// The lock's object name.
    pub fn object(&self) -> &str {
        &self.object
    }

    /// Checks that the lock is still there. A holder cut off from storage for longer than the
    /// stale timeout may have had its lock removed by `prune`, which then may have deleted
    /// chunks this holder counts on: such a holder must not commit.
    pub async fn confirm(&self) -> Result<()> {
        if self.repo.store().head(&self.object).await?.is_some() {
            return Ok(());
        }
        Err(Error::Locked {
            operation: "commit".into(),
            holder: format!(
                "nobody: this process's lock {} was removed as stale while it ran (was it cut off from storage for minutes?), so a prune may have deleted data it refers to; run it again",
                self.object
            ),
            object: self.object.clone(),
        })
    }

    /// Stops the heartbeat and deletes the lock.
    pub async fn release(mut self) -> Result<()> {
        self.stop_heartbeat().await;
        self.repo.store().delete(&self.object).await
    }

    async fn stop_heartbeat(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(h) = self.heartbeat.take() {
            let _ = h.await;
        }
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        let Some(stop) = self.stop.take() else {
            return; // released
        };
        let _ = stop.send(true);
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (repo, object) = (self.repo.clone(), self.object.clone());
            rt.spawn(async move {
                let _ = repo.store().delete(&object).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_holder() {
        let l = HeldLock {
            object: "locks/x".into(),
            info: LockInfo {
                mode: LockMode::Shared,
                hostname: "db1".into(),
                pid: 42,
                operation: "backup".into(),
                created_us: 0,
                refreshed_us: 0,
            },
            stale: false,
        };
        assert_eq!(
            l.describe(),
            "backup (shared) by pid 42 on db1, since 1970-01-01T00:00:00.000000Z"
        );
    }
}
