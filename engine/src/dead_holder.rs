//! Proving on this machine that a lock's holder died, so its lock stops blocking at once
//! instead of after the 10-minute stale timeout (SPEC.md §10, "Liveness").
//!
//! A lock names its holder's host name and pid, but a pid means something only inside one
//! pid namespace of one boot: a container sharing the host's name (host networking) has pids
//! of its own, and a pid is reused after a reboot. Taking "same host name, pid not running"
//! as proof of death could therefore drop a live holder's lock and let prune delete chunks
//! that holder is about to reference. So each holder also leaves a *marker* on its own
//! machine, `$TMPDIR/pgkeep-locks-<uid>/<lock id>`, saying which boot and pid namespace its
//! pid belongs to. A lock counts as abandoned only when
//!
//! * its host name is this host's,
//! * this user's marker for it exists (a private directory: mode 0700, owned by this uid, so
//!   no other user can forge one), and names the lock's pid, this boot and this process's pid
//!   namespace,
//! * and no process with that pid exists (`/proc/<pid>` is absent).
//!
//! Anything unknown (no `/proc`, no marker, another user, another container, a zombie or a
//! reused pid) keeps the lock live, and the stale timeout applies as before. Markers are
//! removed on release; one left by a killed process is removed with its lock.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

/// A marker this process wrote for a lock it holds; removed on drop.
#[derive(Debug)]
pub(crate) struct Marker {
    path: PathBuf,
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What ties a pid to one process: the boot and the pid namespace it runs in.
fn identity(pid: u32) -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!(
        "pid={pid}\nboot={}\nns={}\n",
        boot.trim(),
        ns.display()
    ))
}

/// This user's private marker directory, created if needed; `None` when it is missing and
/// cannot be made, or is not private (then nothing in it can be trusted).
fn directory() -> Option<PathBuf> {
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let dir = std::env::temp_dir().join(format!("pgkeep-locks-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    let private = meta.is_dir() && meta.uid() == uid && meta.permissions().mode() & 0o077 == 0;
    private.then_some(dir)
}

/// The marker file of lock `object` (`locks/<id>`).
fn marker_path(object: &str) -> Option<PathBuf> {
    let id = object.rsplit('/').next()?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(directory()?.join(id))
}

/// Leaves a marker for lock `object`, held by this process. Best effort: without one, the
/// lock of this process, if it is killed, goes stale only by the timeout.
pub(crate) fn mark(object: &str) -> Option<Marker> {
    let path = marker_path(object)?;
    let text = identity(std::process::id())?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .ok()?;
    std::io::Write::write_all(&mut file, text.as_bytes()).ok()?;
    Some(Marker { path })
}

/// Whether lock `object`, held by `pid` on `hostname`, provably belongs to a process of
/// this machine that no longer exists (see the module documentation).
pub(crate) fn is_dead(object: &str, hostname: &str, pid: u32) -> bool {
    if hostname != crate::repository::host_name() {
        return false;
    }
    let Some(path) = marker_path(object) else {
        return false;
    };
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return false;
    };
    if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
        return false;
    }
    let (Ok(text), Some(expected)) = (std::fs::read_to_string(&path), identity(pid)) else {
        return false;
    };
    text == expected && !std::path::Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes the marker of a lock that was deleted as abandoned or stale.
pub(crate) fn forget(object: &str) {
    if let Some(path) = marker_path(object) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> String {
        format!(
            "locks/{}",
            hex::encode(crate::repository::random_bytes::<16>())
        )
    }

    #[test]
    fn a_live_holder_is_not_dead_and_a_dead_one_is() {
        let obj = object();
        let host = crate::repository::host_name();
        let me = std::process::id();
        let marker = mark(&obj).expect("marker (Linux /proc and a writable temp dir)");
        assert!(!is_dead(&obj, &host, me), "this process is alive");
        assert!(!is_dead(&obj, "another-host", me));

        // A child that exits: its pid no longer exists. Its marker is forged here with the
        // child's pid, as the child would have written it.
        let mut child = std::process::Command::new("true").spawn().expect("true");
        let pid = child.id();
        child.wait().expect("reaped");
        drop(marker);
        let path = marker_path(&obj).expect("path");
        std::fs::write(&path, identity(pid).expect("identity")).expect("marker");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("mode");
        assert!(is_dead(&obj, &host, pid), "the exited child is dead");
        // Another host, or a marker of another pid namespace: no proof.
        assert!(!is_dead(&obj, "another-host", pid));
        let other_ns = identity(pid).expect("identity").replace("ns=", "ns=other:");
        std::fs::write(&path, other_ns).expect("marker");
        assert!(!is_dead(&obj, &host, pid));
        // No marker at all (a lock of another user or container): no proof.
        forget(&obj);
        assert!(!is_dead(&obj, &host, pid));
    }

    #[test]
    fn odd_lock_names_have_no_marker() {
        assert!(marker_path("locks/../../etc/passwd").is_none());
        assert!(marker_path("locks/").is_none());
    }
}
