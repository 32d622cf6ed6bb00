//! `pgkeep verify`: checks the repository and says which restores still work.

use pgkeep_engine::verify::{
    verify, AffectedBackup, BackupStatus, Problem, Severity, VerifyOptions, VerifyReport,
    WalImpact, WalReach,
};
use serde::Serialize;

use crate::cli::VerifyArgs;
use crate::cmd;
use crate::exit::{self, UsageError};
use crate::output::{format_bytes, Output};
use crate::settings::Settings;

/// Files listed per backup and problem in the human output (`--json` lists all).
const FILES_SHOWN: usize = 10;

/// `--read-data`'s value: `all`, or a percentage `N` / `N%` (0 < N ≤ 100).
pub(crate) fn parse_read_data(v: &str) -> Result<f64, UsageError> {
    if v.eq_ignore_ascii_case("all") {
        return Ok(100.0);
    }
    let n = v.strip_suffix('%').unwrap_or(v).trim();
    match n.parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(UsageError(format!(
            "--read-data {v:?}: expected all, or a percentage of packs and WAL files to read from 0 (exclusive) to 100, e.g. 10 or 10%"
        ))),
    }
}

/// Runs verify; returns the exit code: 0 clean, 5 damage found, else the error's code (1
/// when verify could not run, 3 for a wrong passphrase, ...).
pub(crate) async fn run(s: &Settings, a: &VerifyArgs, out: &Output) -> u8 {
    match check(s, a, out).await {
        Ok(false) => exit::OK,
        Ok(true) => exit::CORRUPT,
        Err(e) => {
            eprintln!("pgkeep: {e:#}");
            exit::code_for(&e)
        }
    }
}

/// Returns whether damage was found.
async fn check(s: &Settings, a: &VerifyArgs, out: &Output) -> anyhow::Result<bool> {
    let read_percent = match &a.read_data {
        None => 0.0,
        Some(v) => parse_read_data(v)?,
    };
    let jobs = s
        .jobs(a.jobs)?
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let repo = cmd::open(s).await?;
    let report = verify(
        &repo,
        VerifyOptions {
            read_percent,
            jobs,
            lock: s.lock_options()?,
            cluster: s.cluster_explicit.then(|| cmd::cluster(s)).transpose()?,
        },
    )
    .await
    .map_err(|e| anyhow::Error::new(e).context("verifying the repository"))?;
    let doc = Doc::from(&report);
    out.emit(&doc, || human(&report))?;
    Ok(report.damaged())
}

/// The JSON document. `schema` changes only when a field changes meaning or disappears.
#[derive(Serialize)]
struct Doc {
    schema: u32,
    /// No damage found (warnings allowed).
    clean: bool,
    checked: Checked,
    problems: Vec<ProblemOut>,
    backups: Vec<BackupOut>,
    /// Per dump: can it be restored (its manifest reads, every chunk it needs is intact).
    dumps: Vec<DumpOut>,
    /// Packs in no index segment: left by interrupted sessions, not damage.
    unindexed_packs: Vec<NamedSize>,
}

#[derive(Serialize)]
struct DumpOut {
    cluster: String,
    dump: String,
    restorable: bool,
}

#[derive(Serialize)]
struct Checked {
    clusters: usize,
    index_segments: usize,
    packs: usize,
    pack_bytes: u64,
    chunks: usize,
    manifests: usize,
    chunk_refs: u64,
    wal_files: usize,
    wal_bytes: u64,
    read_percent: f64,
    packs_read: usize,
    pack_bytes_read: u64,
    chunks_read: u64,
    wal_read: usize,
    wal_bytes_read: u64,
}

#[derive(Serialize)]
struct ProblemOut {
    /// damage or warning.
    severity: &'static str,
    kind: &'static str,
    object: String,
    detail: String,
    affected_backups: Vec<AffectedOut>,
    wal_impact: Vec<WalImpactOut>,
}

#[derive(Serialize)]
struct AffectedOut {
    cluster: String,
    backup: String,
    /// The whole backup is unreadable (no file list).
    whole: bool,
    files: Vec<String>,
}

#[derive(Serialize)]
struct WalImpactOut {
    cluster: String,
    backup: String,
    timeline: u32,
    first_unusable_segment: String,
    last_unusable_segment: Option<String>,
    /// The backup cannot become consistent.
    not_restorable: bool,
    /// Otherwise recovery reaches this LSN and no further.
    recoverable_to_lsn: Option<String>,
}

#[derive(Serialize)]
struct BackupOut {
    cluster: String,
    backup: String,
    label: String,
    restorable: bool,
    manifest_ok: bool,
    data_damaged: bool,
    packs: usize,
    packs_read_intact: usize,
    wal: Option<WalOut>,
}

#[derive(Serialize)]
struct WalOut {
    /// restorable, not-restorable, or pending (WAL not archived yet).
    state: &'static str,
    /// restorable: recovery can replay up to this LSN.
    until_lsn: Option<String>,
    last_segment: Option<String>,
    /// restorable: the missing or damaged segment that ends the WAL before the archive's end.
    cut_by: Option<String>,
    /// not-restorable / pending: the first segment it lacks.
    first_unusable: Option<String>,
}

#[derive(Serialize)]
struct NamedSize {
    name: String,
    size: u64,
}

impl From<&VerifyReport> for Doc {
    fn from(r: &VerifyReport) -> Self {
        let c = &r.checked;
        Self {
            schema: 1,
            clean: !r.damaged(),
            checked: Checked {
                clusters: c.clusters,
                index_segments: c.index_segments,
                packs: c.packs,
                pack_bytes: c.pack_bytes,
                chunks: c.chunks,
                manifests: c.manifests,
                chunk_refs: c.chunk_refs,
                wal_files: c.wal_files,
                wal_bytes: c.wal_bytes,
                read_percent: c.read_percent,
                packs_read: c.packs_read,
                pack_bytes_read: c.pack_bytes_read,
                chunks_read: c.chunks_read,
                wal_read: c.wal_read,
                wal_bytes_read: c.wal_bytes_read,
            },
            problems: r.problems.iter().map(problem_out).collect(),
            backups: r.backups.iter().map(backup_out).collect(),
            dumps: r
                .dumps
                .iter()
                .map(|d| DumpOut {
                    cluster: d.cluster.clone(),
                    dump: d.dump_id.clone(),
                    restorable: d.restorable(),
                })
                .collect(),
            unindexed_packs: r
                .unindexed_packs
                .iter()
                .map(|(name, size)| NamedSize {
                    name: name.clone(),
                    size: *size,
                })
                .collect(),
        }
    }
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Damage => "damage",
        Severity::Warning => "warning",
    }
}

fn problem_out(p: &Problem) -> ProblemOut {
    ProblemOut {
        severity: severity(p.severity),
        kind: p.kind.code(),
        object: p.object.clone(),
        detail: p.detail.clone(),
        affected_backups: p
            .affects
            .backups
            .iter()
            .map(|b| AffectedOut {
                cluster: b.cluster.clone(),
                backup: b.backup_id.clone(),
                whole: b.whole,
                files: b.files.clone(),
            })
            .collect(),
        wal_impact: p
            .affects
            .wal
            .iter()
            .map(|w| WalImpactOut {
                cluster: w.cluster.clone(),
                backup: w.backup_id.clone(),
                timeline: w.timeline,
                first_unusable_segment: w.first_unusable.to_string(),
                last_unusable_segment: w.last_unusable.map(|s| s.to_string()),
                not_restorable: w.not_restorable,
                recoverable_to_lsn: w.recoverable_to.map(|l| l.to_string()),
            })
            .collect(),
    }
}

fn backup_out(b: &BackupStatus) -> BackupOut {
    BackupOut {
        cluster: b.cluster.clone(),
        backup: b.backup_id.clone(),
        label: b.label.clone(),
        restorable: b.restorable(),
        manifest_ok: b.manifest_ok,
        data_damaged: b.data_damaged,
        packs: b.packs,
        packs_read_intact: b.packs_read,
        wal: b.wal.as_ref().map(|w| match w {
            WalReach::Restorable {
                until,
                last_segment,
                cut_by,
            } => WalOut {
                state: "restorable",
                until_lsn: Some(until.to_string()),
                last_segment: Some(last_segment.to_string()),
                cut_by: cut_by.map(|s| s.to_string()),
                first_unusable: None,
            },
            WalReach::NotRestorable {
                first_unusable,
                pending,
            } => WalOut {
                state: if *pending {
                    "pending"
                } else {
                    "not-restorable"
                },
                until_lsn: None,
                last_segment: None,
                cut_by: None,
                first_unusable: Some(first_unusable.to_string()),
            },
        }),
    }
}

fn affected_line(b: &AffectedBackup) -> String {
    if b.whole {
        return format!("  backup {}/{}: the whole backup", b.cluster, b.backup_id);
    }
    let mut shown: Vec<&str> = b
        .files
        .iter()
        .take(FILES_SHOWN)
        .map(String::as_str)
        .collect();
    let more = b.files.len().saturating_sub(FILES_SHOWN);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    if shown.is_empty() {
        shown.push("(no file named)");
    }
    format!(
        "  backup {}/{}: {} file(s): {}{more}",
        b.cluster,
        b.backup_id,
        b.files.len(),
        shown.join(", ")
    )
}

fn impact_line(w: &WalImpact) -> String {
    let range = match w.last_unusable {
        Some(last) if last != w.first_unusable => format!("{} .. {last}", w.first_unusable),
        _ => w.first_unusable.to_string(),
    };
    match w.recoverable_to {
        Some(lsn) if !w.not_restorable => format!(
            "  backup {}/{}: point-in-time recovery only up to LSN {lsn} on timeline {}; beyond it needs {range}",
            w.cluster, w.backup_id, w.timeline
        ),
        _ => format!(
            "  backup {}/{}: cannot be restored: it needs {range} to become consistent",
            w.cluster, w.backup_id
        ),
    }
}

fn backup_line(b: &BackupStatus) -> String {
    let name = if b.label.is_empty() {
        format!("{}/{}", b.cluster, b.backup_id)
    } else {
        format!("{}/{} ({})", b.cluster, b.backup_id, b.label)
    };
    if !b.manifest_ok {
        return format!("  {name}: NOT restorable: its manifest is unreadable");
    }
    let mut why = Vec::new();
    if b.data_damaged {
        why.push("data missing or damaged".to_owned());
    }
    let wal = match &b.wal {
        None => String::new(),
        Some(WalReach::Restorable {
            until,
            last_segment,
            cut_by,
        }) => match cut_by {
            Some(s) => format!("; WAL to {until} ({last_segment}), cut by missing or damaged {s}"),
            None => format!("; WAL to {until} ({last_segment}, the archive's end)"),
        },
        Some(WalReach::NotRestorable {
            first_unusable,
            pending,
        }) => {
            why.push(if *pending {
                format!("WAL {first_unusable} not archived yet")
            } else {
                format!("WAL {first_unusable} missing or damaged")
            });
            String::new()
        }
    };
    let read = if b.packs_read > 0 {
        format!(", {} of {} packs read intact", b.packs_read, b.packs)
    } else {
        String::new()
    };
    if why.is_empty() {
        format!("  {name}: restorable{wal}{read}")
    } else {
        format!("  {name}: NOT restorable: {}{read}", why.join(", "))
    }
}

fn human(r: &VerifyReport) -> String {
    let c = &r.checked;
    let mut lines = vec![format!(
        "Checked {} index segment(s), {} pack(s) ({}, {} chunks), {} manifest(s) ({} chunk references), {} WAL file(s) ({}) in {} cluster(s).",
        c.index_segments,
        c.packs,
        format_bytes(c.pack_bytes),
        c.chunks,
        c.manifests,
        c.chunk_refs,
        c.wal_files,
        format_bytes(c.wal_bytes),
        c.clusters
    )];
    if c.read_percent > 0.0 {
        lines.push(format!(
            "Read {} pack(s) ({}, {} chunks opened) and {} WAL file(s) ({}){}.",
            c.packs_read,
            format_bytes(c.pack_bytes_read),
            c.chunks_read,
            c.wal_read,
            format_bytes(c.wal_bytes_read),
            if c.read_percent < 100.0 {
                format!(", a random {}% sample", c.read_percent)
            } else {
                String::new()
            }
        ));
    } else {
        lines.push(
            "No data read (structure only; --read-data downloads and checks packs and WAL).".into(),
        );
    }
    if !r.unindexed_packs.is_empty() {
        lines.push(format!(
            "{} pack(s) ({}) in no index segment: left by interrupted sessions, not damage.",
            r.unindexed_packs.len(),
            format_bytes(r.unindexed_packs.iter().map(|p| p.1).sum())
        ));
    }
    for p in &r.problems {
        lines.push(String::new());
        lines.push(format!(
            "{} [{}] {}: {}",
            match p.severity {
                Severity::Damage => "DAMAGE",
                Severity::Warning => "WARNING",
            },
            p.kind.code(),
            p.object,
            p.detail
        ));
        lines.extend(p.affects.backups.iter().map(affected_line));
        lines.extend(p.affects.wal.iter().map(impact_line));
        if p.affects.is_empty() && p.severity == Severity::Damage {
            lines.push("  no backup needs it".into());
        }
    }
    if !r.backups.is_empty() {
        lines.push(String::new());
        lines.push("Restores:".into());
        lines.extend(r.backups.iter().map(backup_line));
    }
    if !r.dumps.is_empty() {
        lines.push(String::new());
        lines.push("Dumps:".into());
        lines.extend(r.dumps.iter().map(|d| {
            format!(
                "  {}/{}: {}",
                d.cluster,
                d.dump_id,
                if d.restorable() {
                    "restorable"
                } else if !d.manifest_ok {
                    "NOT restorable: its manifest is unreadable"
                } else {
                    "NOT restorable: data it needs is missing or damaged"
                }
            )
        }));
    }
    lines.push(String::new());
    let damage = r
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Damage)
        .count();
    let warnings = r.problems.len() - damage;
    lines.push(match (damage, warnings) {
        (0, 0) => "No problems found.".into(),
        (0, w) => format!("No damage found; {w} warning(s)."),
        (d, w) => format!("DAMAGE: {d} problem(s), {w} warning(s)."),
    });
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_data_values() {
        assert_eq!(parse_read_data("all").expect("all"), 100.0);
        assert_eq!(parse_read_data("ALL").expect("ALL"), 100.0);
        assert_eq!(parse_read_data("10").expect("10"), 10.0);
        assert_eq!(parse_read_data("2.5%").expect("2.5%"), 2.5);
        assert_eq!(parse_read_data("100%").expect("100%"), 100.0);
        for bad in ["0", "0%", "-1", "101", "ten", "", "%", "nan"] {
            let e = parse_read_data(bad).expect_err(bad);
            assert!(e.0.contains("--read-data"), "{e}");
        }
    }
}
