//! Sans-IO pieces of `BASE_BACKUP`: building the command for the server's version and
//! reading the values in its result sets.

use pgkeep_format::{Lsn, TimelineId};

use crate::manifest_checksum::ManifestChecksum;
use crate::replication::PgError;

/// What the backup asks the server for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupRequest {
    pub label: String,
    /// `CHECKPOINT 'fast'` instead of a spread checkpoint.
    pub fast_checkpoint: bool,
    /// kB/s, as the server counts it (32 to 1048576).
    pub max_rate: Option<u32>,
    pub verify_checksums: bool,
    /// The per-file checksums of the server's `backup_manifest`.
    pub manifest_checksums: ManifestChecksum,
    /// Server-side incremental (PostgreSQL 17+, after `UPLOAD_MANIFEST`).
    pub incremental: bool,
}

/// `'...'` with quotes doubled, as the replication grammar reads string literals.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl BaseBackupRequest {
    /// The command text for a server of `version_num` (`server_version_num`).
    pub fn command(&self, version_num: u32) -> String {
        if version_num >= 150_000 {
            let mut opts = vec![
                format!("LABEL {}", quote(&self.label)),
                "PROGRESS".to_owned(),
                format!(
                    "CHECKPOINT {}",
                    quote(if self.fast_checkpoint {
                        "fast"
                    } else {
                        "spread"
                    })
                ),
                "WAIT false".to_owned(),
                "MANIFEST 'yes'".to_owned(),
                format!(
                    "MANIFEST_CHECKSUMS {}",
                    quote(self.manifest_checksums.sql_name())
                ),
                "TABLESPACE_MAP".to_owned(),
            ];
            if let Some(rate) = self.max_rate {
                opts.push(format!("MAX_RATE {rate}"));
            }
            if !self.verify_checksums {
                opts.push("VERIFY_CHECKSUMS false".to_owned());
            }
            if self.incremental {
                opts.push("INCREMENTAL".to_owned());
            }
            format!("BASE_BACKUP ( {} )", opts.join(", "))
        } else {
            // PostgreSQL 13 and 14: the legacy grammar without parentheses.
            let mut cmd = format!("BASE_BACKUP LABEL {} PROGRESS", quote(&self.label));
            if self.fast_checkpoint {
                cmd.push_str(" FAST");
            }
            cmd.push_str(&format!(
                " NOWAIT MANIFEST 'yes' MANIFEST_CHECKSUMS {} TABLESPACE_MAP",
                quote(self.manifest_checksums.sql_name())
            ));
            if let Some(rate) = self.max_rate {
                cmd.push_str(&format!(" MAX_RATE {rate}"));
            }
            if !self.verify_checksums {
                cmd.push_str(" NOVERIFY_CHECKSUMS");
            }
            cmd
        }
    }
}

/// A tablespace row of `BASE_BACKUP`'s second result set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablespaceRow {
    /// `None` for the data directory (the last row).
    pub oid: Option<u32>,
    pub location: Option<String>,
    /// Estimated size in kB (with PROGRESS).
    pub size_kb: Option<u64>,
}

fn text<'a>(row: &'a [Option<String>], i: usize, what: &str) -> Result<&'a str, PgError> {
    row.get(i)
        .and_then(|c| c.as_deref())
        .ok_or_else(|| PgError::Protocol(format!("{what}: column {i} is missing or NULL")))
}

/// Parses a `(lsn, timeline)` row (start and end of `BASE_BACKUP`).
pub fn parse_position(row: &[Option<String>], what: &str) -> Result<(Lsn, TimelineId), PgError> {
    let lsn = text(row, 0, what)?
        .parse::<Lsn>()
        .map_err(|e| PgError::Protocol(format!("{what}: {e}")))?;
    let tli = text(row, 1, what)?
        .parse::<u32>()
        .map_err(|_| PgError::Protocol(format!("{what}: timeline is not a number")))?;
    Ok((lsn, TimelineId(tli)))
}

/// Parses a tablespace row.
pub fn parse_tablespace(row: &[Option<String>]) -> Result<TablespaceRow, PgError> {
    let num = |i: usize| -> Result<Option<u64>, PgError> {
        row.get(i)
            .and_then(|c| c.as_deref())
            .map(|s| {
                s.parse::<u64>().map_err(|_| {
                    PgError::Protocol(format!("tablespace row: {s:?} is not a number"))
                })
            })
            .transpose()
    };
    Ok(TablespaceRow {
        oid: num(0)?
            .map(|o| {
                u32::try_from(o)
                    .map_err(|_| PgError::Protocol("tablespace oid out of range".into()))
            })
            .transpose()?,
        location: row.get(1).cloned().flatten(),
        size_kb: num(2)?,
    })
}

/// Parses `SHOW wal_segment_size` / `SHOW block_size` output (`16MB`, `1GB`, `8192`).
pub fn parse_size(value: &str) -> Result<u64, PgError> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| PgError::Protocol(format!("size {value:?} is not a number")))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        other => {
            return Err(PgError::Protocol(format!(
                "size {value:?} has unknown unit {other:?}"
            )))
        }
    };
    // The value comes from the server: a forged `99999999999GB` must be an error, not an
    // overflow.
    n.checked_mul(mult)
        .ok_or_else(|| PgError::Protocol(format!("size {value:?} is too large")))
}

/// Whether a path inside a backup archive is a relation data file (8 KiB pages, whose page
/// headers carry an LSN): `base/<db>/<relfilenode>[_fsm|_vm|_init][.<segment>]`,
/// `global/<relfilenode>…`, and in tablespace archives `PG_<ver>_<catver>/<db>/<relfilenode>…`.
pub fn is_relation_file(tablespace: u32, path: &[u8]) -> bool {
    let Ok(path) = std::str::from_utf8(path) else {
        return false;
    };
    let parts: Vec<&str> = path.split('/').collect();
    let name = match (tablespace, parts.as_slice()) {
        (0, ["base", db, name]) if is_number(db) => name,
        (0, ["global", name]) => name,
        (t, [version, db, name]) if t != 0 && version.starts_with("PG_") && is_number(db) => name,
        _ => return false,
    };
    let (stem, segment) = match name.split_once('.') {
        Some((s, seg)) => (s, Some(seg)),
        None => (*name, None),
    };
    if segment.is_some_and(|s| !is_number(s)) {
        return false;
    }
    let rel = stem
        .strip_suffix("_fsm")
        .or_else(|| stem.strip_suffix("_vm"))
        .or_else(|| stem.strip_suffix("_init"))
        .unwrap_or(stem);
    is_number(rel)
}

/// Whether unchanged pages of this relation file can be recognized by their header LSN:
/// only the main fork. The visibility map is changed without an LSN update
/// (`visibilitymap_clear` only dirties the page) and the free space map is not WAL-logged,
/// so their pages may differ from the parent's with an old LSN; they are always read in full.
pub fn has_reliable_page_lsn(path: &[u8]) -> bool {
    let name = path.rsplit(|b| *b == b'/').next().unwrap_or(path);
    let stem = name.split(|b| *b == b'.').next().unwrap_or(name);
    !stem.ends_with(b"_vm") && !stem.ends_with(b"_fsm") && !stem.ends_with(b"_init")
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_for_each_server_generation() {
        let r = BaseBackupRequest {
            label: "pgkeep's nightly".into(),
            fast_checkpoint: true,
            max_rate: Some(1024),
            verify_checksums: true,
            manifest_checksums: ManifestChecksum::Sha256,
            incremental: false,
        };
        assert_eq!(
            r.command(150_010),
            "BASE_BACKUP ( LABEL 'pgkeep''s nightly', PROGRESS, CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', MANIFEST_CHECKSUMS 'SHA256', TABLESPACE_MAP, MAX_RATE 1024 )"
        );
        assert_eq!(
            r.command(140_005),
            "BASE_BACKUP LABEL 'pgkeep''s nightly' PROGRESS FAST NOWAIT MANIFEST 'yes' MANIFEST_CHECKSUMS 'SHA256' TABLESPACE_MAP MAX_RATE 1024"
        );
        let spread = BaseBackupRequest {
            fast_checkpoint: false,
            max_rate: None,
            verify_checksums: false,
            manifest_checksums: ManifestChecksum::Crc32c,
            incremental: true,
            ..r
        };
        assert!(spread
            .command(170_000)
            .contains(", MANIFEST_CHECKSUMS 'CRC32C', "));
        assert!(spread.command(170_000).contains("CHECKPOINT 'spread'"));
        assert!(spread
            .command(170_000)
            .ends_with("VERIFY_CHECKSUMS false, INCREMENTAL )"));
        assert!(spread.command(130_000).ends_with("NOVERIFY_CHECKSUMS"));
    }

    #[test]
    fn result_rows_and_sizes_parse() {
        let row = vec![Some("0/2000028".to_owned()), Some("1".to_owned())];
        assert_eq!(
            parse_position(&row, "start").expect("row"),
            (Lsn(0x200_0028), TimelineId(1))
        );
        assert!(parse_position(&[None, Some("1".into())], "start").is_err());
        let ts = parse_tablespace(&[
            Some("16390".into()),
            Some("/srv/ts".into()),
            Some("42".into()),
        ])
        .expect("row");
        assert_eq!((ts.oid, ts.size_kb), (Some(16390), Some(42)));
        let base = parse_tablespace(&[None, None, Some("100".into())]).expect("row");
        assert_eq!(base.oid, None);
        assert_eq!(parse_size("16MB").expect("size"), 16 << 20);
        assert_eq!(parse_size("1GB").expect("size"), 1 << 30);
        assert_eq!(parse_size("8192").expect("size"), 8192);
        assert!(parse_size("16XB").is_err());
        // A forged answer must be an error, not an overflow.
        assert!(parse_size("99999999999GB")
            .expect_err("overflow")
            .to_string()
            .contains("too large"));
    }

    #[test]
    fn relation_files_are_recognized() {
        for yes in [
            "base/5/16384",
            "base/5/16384.1",
            "base/5/16384_fsm",
            "base/1/1259_vm",
            "global/1262",
            "base/5/16390_init",
        ] {
            assert!(is_relation_file(0, yes.as_bytes()), "{yes}");
        }
        assert!(is_relation_file(16390, b"PG_15_202209061/5/16391"));
        for no in [
            "base/5/PG_VERSION",
            "global/pg_control",
            "base/5/pg_filenode.map",
            "pg_xact/0000",
            "backup_label",
            "base/5/16384.x",
            "base/x/1",
        ] {
            assert!(!is_relation_file(0, no.as_bytes()), "{no}");
        }
        assert!(!is_relation_file(0, b"PG_15_202209061/5/16391"));
        assert!(has_reliable_page_lsn(b"base/5/16384.2"));
        for no in ["base/5/16384_vm", "base/5/16384_fsm.1", "base/5/16384_init"] {
            assert!(!has_reliable_page_lsn(no.as_bytes()), "{no}");
        }
    }
}
