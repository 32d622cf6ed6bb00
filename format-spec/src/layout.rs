//! Object names: where each object lives under the repository's URL prefix.

use crate::error::FormatError;
use crate::ids::{IndexId, KeyFileId, LockId, PackId};

pub const CONFIG: &str = "config";
pub const KEYS_DIR: &str = "keys/";
pub const DATA_DIR: &str = "data/";
pub const INDEX_DIR: &str = "index/";
pub const LOCKS_DIR: &str = "locks/";
pub const CLUSTERS_DIR: &str = "clusters/";

pub fn key_file(id: &KeyFileId) -> String {
    format!("{KEYS_DIR}{id}")
}

/// Packs fan out over 256 directories by the first byte of their id, which keeps listings
/// and local directories small.
pub fn pack(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("{DATA_DIR}{}/{hex}", &hex[..2])
}

pub fn index_segment(id: &IndexId) -> String {
    format!("{INDEX_DIR}{id}")
}

pub fn lock(id: &LockId) -> String {
    format!("{LOCKS_DIR}{id}")
}

pub fn cluster_dir(cluster: &ClusterName) -> String {
    format!("{CLUSTERS_DIR}{}/", cluster.as_str())
}

pub fn cluster_binding(cluster: &ClusterName) -> String {
    format!("{}cluster", cluster_dir(cluster))
}

pub fn backups_dir(cluster: &ClusterName) -> String {
    format!("{}backups/", cluster_dir(cluster))
}

pub fn manifest(cluster: &ClusterName, backup_id: &str) -> String {
    format!("{}{backup_id}", backups_dir(cluster))
}

pub fn pins_dir(cluster: &ClusterName) -> String {
    format!("{}pins/", cluster_dir(cluster))
}

pub fn pin(cluster: &ClusterName, backup_id: &str) -> String {
    format!("{}{backup_id}", pins_dir(cluster))
}

/// Dump manifests of a cluster (format 1.3).
pub fn dumps_dir(cluster: &ClusterName) -> String {
    format!("{}dumps/", cluster_dir(cluster))
}

pub fn dump(cluster: &ClusterName, dump_id: &str) -> String {
    format!("{}{dump_id}", dumps_dir(cluster))
}

pub fn wal_dir(cluster: &ClusterName, timeline: u32) -> String {
    format!("{}wal/{timeline:08X}/", cluster_dir(cluster))
}

/// Checks a name used as one path component (cluster names, backup ids): 1 to 64 of
/// `A-Z a-z 0-9 _ . -`, not starting with `.` or `-`.
pub fn check_component(what: &'static str, s: &str) -> Result<(), FormatError> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !s.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(FormatError::Invalid {
            what,
            reason: format!(
                "{s:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '.', '-', not starting with '.' or '-'"
            ),
        })
    }
}

/// A validated cluster name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterName(String);

impl ClusterName {
    pub fn new(name: &str) -> Result<Self, FormatError> {
        check_component("cluster name", name)?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ClusterName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let c = ClusterName::new("main").expect("valid");
        assert_eq!(
            manifest(&c, "20261121T053200Z"),
            "clusters/main/backups/20261121T053200Z"
        );
        assert_eq!(wal_dir(&c, 2), "clusters/main/wal/00000002/");
        assert_eq!(
            pin(&c, "20261121T053200Z"),
            "clusters/main/pins/20261121T053200Z"
        );
        assert_eq!(
            dump(&c, "20261121T053200Z.1"),
            "clusters/main/dumps/20261121T053200Z.1"
        );
        assert_eq!(
            pack(&PackId([0xab; 32])),
            format!("data/ab/{}", "ab".repeat(32))
        );
        for bad in ["", "../x", "a/b", ".hidden", "-x", &"x".repeat(65), "é"] {
            assert!(ClusterName::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
