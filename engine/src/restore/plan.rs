//! Planning a restore before writing anything: which backup, which WAL, where recovery will
//! stop, and whether the archive can get there.
//!
//! The plan is made from manifests and the WAL time index (object names and meta units), so
//! an impossible restore is refused in seconds with what the archive does cover, instead of
//! hours later by PostgreSQL's "recovery ended before configured recovery target was reached".

use pgkeep_format::{ClusterName, Lsn, Manifest, SegmentName, TimelineId, WalEventKind};

use crate::error::{Error, Result};
use crate::repository::Repository;
use crate::timestamp::format_timestamp_us;
use crate::wal::catalog::{events, timelines, LocatedEvent};
use crate::wal::WalArchive;

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay all archived WAL.
    End,
    /// Stop as soon as the backup is consistent.
    Immediate,
    /// `recovery_target_time`, unix microseconds.
    Time(i64),
    /// `recovery_target_lsn`.
    Lsn(Lsn),
    /// `recovery_target_xid`.
    Xid(u64),
    /// `recovery_target_name`: a restore point.
    Name(String),
}

impl RecoveryTarget {
    /// How the plan describes it.
    pub fn describe(&self) -> String {
        match self {
            Self::End => "the end of the archived WAL".into(),
            Self::Immediate => "the end of the backup (consistency)".into(),
            Self::Time(t) => format!("time {}", format_timestamp_us(*t)),
            Self::Lsn(l) => format!("LSN {l}"),
            Self::Xid(x) => format!("transaction {x}"),
            Self::Name(n) => format!("restore point {n:?}"),
        }
    }
}

/// Which backup to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupChoice {
    /// The newest backup that ends before the target.
    Latest,
    Id(String),
}

/// A restore, decided.
#[derive(Debug, Clone)]
pub struct Plan {
    pub manifest: Manifest,
    pub target: RecoveryTarget,
    pub timeline: TimelineId,
    /// The WAL recovery needs: from the segment holding the backup's start to the segment
    /// holding the target (or the archive's end).
    pub first_segment: String,
    pub last_segment: String,
    /// Where replay is expected to stop (target found in the index), if known.
    pub expected_stop: Option<(Lsn, Option<i64>)>,
    /// The archive's last transaction end on this timeline, unix µs.
    pub archive_end_time: Option<i64>,
}

/// Makes the plan, or says why the target cannot be reached.
pub async fn plan(
    repo: &Repository,
    cluster: &ClusterName,
    choice: &BackupChoice,
    target: RecoveryTarget,
) -> Result<Plan> {
    let mut manifests = Vec::new();
    for id in repo.list_backups(cluster).await? {
        let m = repo.read_manifest(cluster, &id).await?;
        if m.postgres.is_some() {
            manifests.push(m);
        }
    }
    if manifests.is_empty() {
        return Err(Error::InvalidInput(format!(
            "cluster {cluster} has no base backup to restore: run `pgkeep backup` first"
        )));
    }
    manifests.sort_by_key(|m| m.stop_time_us);
    let archive = WalArchive::new(repo.clone(), cluster.clone());
    // The event the target names, if it names one, found in the time index.
    let event = match &target {
        RecoveryTarget::Name(n) => Some(
            find_event(&archive, |e| {
                e.event.kind == WalEventKind::RestorePoint && e.event.name == *n
            })
            .await?
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "no restore point named {n:?} in the archived WAL (see `pgkeep events`)"
                ))
            })?,
        ),
        RecoveryTarget::Xid(x) => Some(
            find_event(&archive, |e| {
                e.event.kind != WalEventKind::RestorePoint && u64::from(e.event.xid) == *x
            })
            .await?
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "transaction {x} did not end in the archived WAL (see `pgkeep events --all`)"
                ))
            })?,
        ),
        _ => None,
    };
    let manifest = pick_backup(&manifests, choice, &target, event.as_ref())?;
    let pg = manifest
        .postgres
        .ok_or_else(|| Error::InvalidInput("not a PostgreSQL backup".into()))?;
    let timeline = TimelineId(pg.timeline);
    let size = pg.wal_segment_size;
    let start_seg = SegmentName::containing(timeline, Lsn(pg.start_lsn), size);
    let stop_seg = SegmentName::containing(timeline, Lsn(pg.stop_lsn), size);

    // The continuous archived WAL on the backup's timeline from the backup's start.
    let tl = timelines(&archive)
        .await?
        .into_iter()
        .find(|t| t.timeline == timeline);
    let range = tl.as_ref().and_then(|t| {
        t.ranges.iter().find(|r| {
            SegmentName::parse(r.first.as_str(), size).is_ok_and(|f| f <= start_seg)
                && SegmentName::parse(r.last.as_str(), size).is_ok_and(|l| l >= start_seg)
        })
    });
    let Some(range) = range else {
        return Err(Error::InvalidInput(format!(
            "the archive lacks WAL segment {start_seg}, where backup {} starts: it cannot be restored{}",
            manifest.backup_id,
            gaps_hint(tl.as_ref())
        )));
    };
    let covered_last = SegmentName::parse(range.last.as_str(), size)
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    if covered_last < stop_seg {
        return Err(Error::InvalidInput(format!(
            "the archive's WAL from backup {} stops at {} before the backup's end ({stop_seg}){}",
            manifest.backup_id,
            range.last,
            gaps_hint(tl.as_ref())
        )));
    }
    let archive_end_time = range.last_xact_us;
    let covers = || {
        format!(
            "continuous WAL from backup {} covers {} .. {} ({} .. {})",
            manifest.backup_id,
            format_timestamp_us(manifest.stop_time_us),
            archive_end_time.map_or("?".into(), format_timestamp_us),
            range.first,
            range.last
        )
    };
    // Where the target lies, checked against what the archive covers.
    let (needed_last, expected_stop) = match &target {
        RecoveryTarget::End => {
            // WAL archived after a gap cannot be replayed: recovery would stop at the gap and
            // promote, quietly missing everything after it.
            if let Some(t) = tl.as_ref().filter(|t| t.ranges.len() > 1) {
                if t.ranges.last().is_some_and(|r| r.last != range.last) {
                    return Err(Error::InvalidInput(format!(
                        "WAL is missing after {}: recovery would stop there{}. Restore to a target before it (--target-time, --target-lsn), or find the missing segments",
                        range.last,
                        gaps_hint(tl.as_ref())
                    )));
                }
            }
            (covered_last, None)
        }
        RecoveryTarget::Immediate => (stop_seg, Some((Lsn(pg.stop_lsn), None))),
        RecoveryTarget::Lsn(l) => {
            if l.0 < pg.stop_lsn {
                return Err(Error::InvalidInput(format!(
                    "LSN {l} is before backup {}'s consistency point {}: choose an earlier backup or a later target",
                    manifest.backup_id,
                    Lsn(pg.stop_lsn)
                )));
            }
            let seg = SegmentName::containing(timeline, *l, size);
            if seg > covered_last {
                return Err(Error::InvalidInput(format!(
                    "LSN {l} is beyond the archived WAL: {}",
                    covers()
                )));
            }
            (seg, Some((*l, None)))
        }
        RecoveryTarget::Time(t) => {
            // Recovery stops at the first transaction end after the target: that record
            // must be in the archive, or PostgreSQL would run out of WAL first.
            let after = find_event(&archive, |e| {
                e.timeline == timeline
                    && e.event.kind != WalEventKind::RestorePoint
                    && e.event.time_us > *t
                    && e.event.lsn.0 >= pg.stop_lsn
            })
            .await?;
            let Some(after) = after else {
                return Err(Error::InvalidInput(format!(
                    "time {} is after the last transaction in the archive: {}. Restore without a target to replay everything",
                    format_timestamp_us(*t),
                    covers()
                )));
            };
            let seg = SegmentName::containing(timeline, after.event.end, size);
            if seg > covered_last {
                return Err(Error::InvalidInput(format!(
                    "the WAL up to time {} is not all archived: {}{}",
                    format_timestamp_us(*t),
                    covers(),
                    gaps_hint(tl.as_ref())
                )));
            }
            (seg, Some((after.event.lsn, Some(after.event.time_us))))
        }
        RecoveryTarget::Name(_) | RecoveryTarget::Xid(_) => {
            let e = event
                .as_ref()
                .ok_or_else(|| Error::InvalidInput("the target's event was not found".into()))?;
            if e.timeline != timeline {
                return Err(Error::InvalidInput(format!(
                    "{} is on timeline {}, backup {} on timeline {}",
                    target.describe(),
                    e.timeline.0,
                    manifest.backup_id,
                    timeline.0
                )));
            }
            let seg = SegmentName::containing(timeline, e.event.end, size);
            if seg > covered_last {
                return Err(Error::InvalidInput(format!(
                    "{} is beyond the continuous WAL: {}",
                    target.describe(),
                    covers()
                )));
            }
            (seg, Some((e.event.lsn, Some(e.event.time_us))))
        }
    };
    Ok(Plan {
        first_segment: start_seg.to_string(),
        last_segment: needed_last.max(stop_seg).to_string(),
        manifest: manifest.clone(),
        target,
        timeline,
        expected_stop,
        archive_end_time,
    })
}

/// The newest backup consistent before the target, or the named one if it is.
fn pick_backup<'m>(
    manifests: &'m [Manifest],
    choice: &BackupChoice,
    target: &RecoveryTarget,
    event: Option<&LocatedEvent>,
) -> Result<&'m Manifest> {
    let usable = |m: &Manifest| -> std::result::Result<(), String> {
        let Some(pg) = m.postgres else {
            return Err("it is not a PostgreSQL backup".into());
        };
        match target {
            RecoveryTarget::Time(t) if m.stop_time_us > *t => Err(format!(
                "it ended at {}, after the target {}: a restore cannot stop before its backup is consistent",
                format_timestamp_us(m.stop_time_us),
                format_timestamp_us(*t)
            )),
            RecoveryTarget::Lsn(l) if pg.stop_lsn > l.0 => Err(format!(
                "it ends at LSN {}, after the target {l}",
                Lsn(pg.stop_lsn)
            )),
            RecoveryTarget::Name(_) | RecoveryTarget::Xid(_)
                if event.is_some_and(|e| e.event.lsn.0 < pg.stop_lsn) =>
            {
                Err(format!(
                    "it ends at LSN {}, after the target's record at {}",
                    Lsn(pg.stop_lsn),
                    event.map_or(Lsn(0), |e| e.event.lsn)
                ))
            }
            _ => Ok(()),
        }
    };
    match choice {
        BackupChoice::Id(id) => {
            let m = manifests.iter().find(|m| m.backup_id == *id).ok_or_else(|| {
                Error::NotFound {
                    object: format!("backup {id}"),
                }
            })?;
            usable(m).map_err(|why| {
                Error::InvalidInput(format!(
                    "backup {id} cannot reach {}: {why}",
                    target.describe()
                ))
            })?;
            Ok(m)
        }
        BackupChoice::Latest => manifests
            .iter()
            .rev()
            .find(|m| usable(m).is_ok())
            .ok_or_else(|| {
                let first = &manifests[0];
                Error::InvalidInput(format!(
                    "no backup is consistent before {}: the earliest backup, {} ({:?}), became consistent at {} (LSN {}); a restore cannot stop earlier",
                    target.describe(),
                    first.backup_id,
                    first.label,
                    format_timestamp_us(first.stop_time_us),
                    Lsn(first.postgres.map_or(0, |p| p.stop_lsn))
                ))
            }),
    }
}

async fn find_event(
    archive: &WalArchive,
    want: impl Fn(&LocatedEvent) -> bool,
) -> Result<Option<LocatedEvent>> {
    Ok(events(archive, None, None, None)
        .await?
        .into_iter()
        .find(|e| want(e)))
}

fn gaps_hint(tl: Option<&crate::wal::catalog::TimelineWal>) -> String {
    match tl {
        None => " (no WAL archived on its timeline)".into(),
        Some(t) if !t.gaps.is_empty() => format!(
            " (missing: {})",
            t.gaps
                .iter()
                .map(|(a, b)| if a == b {
                    a.clone()
                } else {
                    format!("{a} .. {b}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(_) => String::new(),
    }
}
