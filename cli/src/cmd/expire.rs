//! `pgkeep expire`, `pin`, `unpin`: retention.

use pgkeep_engine::retention::{self, Policy};
use pgkeep_engine::timestamp::{format_timestamp_us, now_us};
use serde::Serialize;

use crate::cli::{ExpireArgs, PinArgs, UnpinArgs};
use crate::cmd;
use crate::output::{format_bytes, Output, Table};
use crate::settings::{parse_duration, pick, Settings};

/// The JSON document of `expire`. `schema` changes only when a field changes meaning or
/// disappears.
#[derive(Serialize)]
struct ExpireOutput {
    schema: u32,
    cluster: String,
    dry_run: bool,
    /// Newest first.
    backups: Vec<Verdict>,
    expired: Vec<String>,
    wal_removed: usize,
    wal_bytes_removed: u64,
    /// First WAL segment kept (on the oldest kept backup's timeline).
    wal_kept_from: Option<String>,
}

#[derive(Serialize)]
struct Verdict {
    backup: String,
    keep: bool,
    reasons: Vec<String>,
}

/// Each rule: flag, then `PGKEEP_KEEP_*`, then `[retention]` in the config file; for
/// `--dumps`, flag, then `PGKEEP_DUMP_KEEP_*`, then `[dump_retention]`.
fn policy(s: &Settings, a: &ExpireArgs) -> anyhow::Result<Policy> {
    let (r, var) = if a.dumps {
        (&s.file.dump_retention, "PGKEEP_DUMP_KEEP_")
    } else {
        (&s.file.retention, "PGKEEP_KEEP_")
    };
    let within = pick(
        a.keep_within.clone(),
        &format!("{var}WITHIN"),
        r.keep_within.clone(),
    )?;
    Ok(Policy {
        keep_last: pick(a.keep_last, &format!("{var}LAST"), r.keep_last)?,
        keep_daily: pick(a.keep_daily, &format!("{var}DAILY"), r.keep_daily)?,
        keep_weekly: pick(a.keep_weekly, &format!("{var}WEEKLY"), r.keep_weekly)?,
        keep_monthly: pick(a.keep_monthly, &format!("{var}MONTHLY"), r.keep_monthly)?,
        keep_yearly: pick(a.keep_yearly, &format!("{var}YEARLY"), r.keep_yearly)?,
        keep_within: within
            .map(|w| parse_duration("--keep-within", &w))
            .transpose()?,
    })
}

pub(crate) async fn run(s: &Settings, a: &ExpireArgs, out: &Output) -> anyhow::Result<()> {
    if a.dumps {
        return run_dumps(s, a, out).await;
    }
    let cluster = cmd::cluster(s)?;
    let policy = policy(s, a)?;
    policy
        .validate()
        .map_err(|e| crate::exit::UsageError(e.to_string()))?;
    let repo = cmd::open(s).await?;
    let tz = jiff::tz::TimeZone::system();
    let report = retention::expire(&repo, &cluster, &policy, now_us(), &tz, a.dry_run).await?;
    let doc = ExpireOutput {
        schema: 1,
        cluster: cluster.to_string(),
        dry_run: report.dry_run,
        backups: report
            .decisions
            .iter()
            .map(|d| Verdict {
                backup: d.id.clone(),
                keep: d.keep(),
                reasons: d.reasons.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        expired: report.expired.clone(),
        wal_removed: report.wal_removed.len(),
        wal_bytes_removed: report.wal_bytes_removed,
        wal_kept_from: report.wal_kept_from.clone(),
    };
    out.emit(&doc, || human(&doc))
}

/// The JSON document of `expire --dumps`.
#[derive(Serialize)]
struct DumpExpireOutput {
    schema: u32,
    cluster: String,
    dry_run: bool,
    /// Newest first.
    dumps: Vec<DumpVerdict>,
    expired: Vec<String>,
}

#[derive(Serialize)]
struct DumpVerdict {
    dump: String,
    keep: bool,
    reasons: Vec<String>,
}

/// `expire --dumps`: the dumps' own policy.
async fn run_dumps(s: &Settings, a: &ExpireArgs, out: &Output) -> anyhow::Result<()> {
    let cluster = cmd::cluster(s)?;
    let policy = policy(s, a)?;
    if policy.is_empty() {
        return Err(crate::exit::UsageError(
            "expire --dumps: no retention policy for dumps: give at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within (or PGKEEP_DUMP_KEEP_*, or the same keys under [dump_retention] in the config file)".into(),
        )
        .into());
    }
    policy
        .validate()
        .map_err(|e| crate::exit::UsageError(format!("expire --dumps: {e}")))?;
    let repo = cmd::open(s).await?;
    let tz = jiff::tz::TimeZone::system();
    let report =
        retention::expire_dumps(&repo, &cluster, &policy, now_us(), &tz, a.dry_run).await?;
    let doc = DumpExpireOutput {
        schema: 1,
        cluster: cluster.to_string(),
        dry_run: report.dry_run,
        dumps: report
            .decisions
            .iter()
            .map(|d| DumpVerdict {
                dump: d.id.clone(),
                keep: d.keep(),
                reasons: d.reasons.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        expired: report.expired.clone(),
    };
    out.emit(&doc, || {
        let mut t = Table::new(&["DUMP", "VERDICT", "WHY"]);
        for d in &doc.dumps {
            t.row(vec![
                d.dump.clone(),
                if d.keep { "keep" } else { "expire" }.into(),
                d.reasons.join(", "),
            ]);
        }
        let verb = if doc.dry_run {
            "would remove"
        } else {
            "removed"
        };
        let mut text = format!("{}\n{verb} {} dump(s)", t.render(), doc.expired.len());
        if !doc.dry_run && !doc.expired.is_empty() {
            text.push_str("\nrun `pgkeep prune` to reclaim the space of their data");
        }
        text
    })
}

fn human(doc: &ExpireOutput) -> String {
    let mut t = Table::new(&["BACKUP", "VERDICT", "WHY"]);
    for b in &doc.backups {
        t.row(vec![
            b.backup.clone(),
            if b.keep { "keep" } else { "expire" }.into(),
            b.reasons.join(", "),
        ]);
    }
    let verb = if doc.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut lines = vec![t.render()];
    lines.push(format!(
        "{verb} {} backup(s) and {} WAL file(s) ({}){}",
        doc.expired.len(),
        doc.wal_removed,
        format_bytes(doc.wal_bytes_removed),
        doc.wal_kept_from
            .as_ref()
            .map(|w| format!("; WAL kept from {w}"))
            .unwrap_or_default()
    ));
    if !doc.dry_run && !doc.expired.is_empty() {
        lines.push("run `pgkeep prune` to reclaim the space of their data".into());
    }
    lines.join("\n")
}

/// The JSON document of `pin` and `unpin`.
#[derive(Serialize)]
struct PinChanged {
    /// "pinned" or "unpinned".
    action: &'static str,
    cluster: String,
    backup: String,
    /// `pin` only: the note given, and the time of the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
}

pub(crate) async fn pin(s: &Settings, a: &PinArgs, out: &Output) -> anyhow::Result<()> {
    let cluster = cmd::cluster(s)?;
    let repo = cmd::open(s).await?;
    retention::pin(&repo, &cluster, &a.backup, &a.note).await?;
    let done = PinChanged {
        action: "pinned",
        cluster: cluster.to_string(),
        backup: a.backup.clone(),
        note: Some(a.note.clone()),
        time: Some(format_timestamp_us(now_us())),
    };
    out.emit(&done, || {
        format!(
            "pinned {}/{} at {}",
            done.cluster,
            done.backup,
            done.time.as_deref().unwrap_or_default()
        )
    })
}

pub(crate) async fn unpin(s: &Settings, a: &UnpinArgs, out: &Output) -> anyhow::Result<()> {
    let cluster = cmd::cluster(s)?;
    let repo = cmd::open(s).await?;
    retention::unpin(&repo, &cluster, &a.backup).await?;
    let done = PinChanged {
        action: "unpinned",
        cluster: cluster.to_string(),
        backup: a.backup.clone(),
        note: None,
        time: None,
    };
    out.emit(&done, || {
        format!("unpinned {}/{}", done.cluster, done.backup)
    })
}
