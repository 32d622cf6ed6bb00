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
    /// The timelines recovery follows, from the backup's to the target's.
    pub path: Vec<TimelineId>,
    /// The last transaction end of the continuous WAL on the target's timeline, unix µs.
    pub archive_end_time: Option<i64>,
}

/// Makes the plan, or says why the target cannot be reached.
pub async fn plan(
    repo: &Repository,
    cluster: &ClusterName,
    choice: &BackupChoice,
    target: RecoveryTarget,
    timeline: TargetTimeline,
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
                e.event.kind != WalEventKind::RestorePoint && e.event.xid == xid_of(*x)
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
    let candidates = pick_backup(&manifests, choice, &target, event.as_ref())?;
    let listing = timelines(&archive).await?;
    // The newest candidate must lead to the target's timeline. With `Latest`, a newer backup
    // can be on the wrong side of a fork: taken on timeline 1 after timeline 2 left it (both
    // were live, as after a point-in-time restore that kept archiving). Which history is the
    // right one is the operator's call, not ours: the refusal names the newest backup that
    // does lead there, for `--backup`.
    let mut candidates = candidates.into_iter();
    let first = candidates
        .next()
        .ok_or_else(|| Error::InvalidInput("no backup to restore".into()))?;
    let path_of = |m: &'_ Manifest| {
        let pg = m.postgres;
        let archive = &archive;
        let listing = &listing;
        let id = m.backup_id.clone();
        async move {
            let pg = pg.ok_or_else(|| Error::InvalidInput("not a PostgreSQL backup".into()))?;
            let legs = recovery_path(
                archive,
                listing,
                &id,
                TimelineId(pg.timeline),
                (Lsn(pg.start_lsn), Lsn(pg.stop_lsn)),
                timeline,
            )
            .await?;
            Ok::<_, Error>((pg, legs))
        }
    };
    let (manifest, pg, legs) = match path_of(first).await {
        Ok((pg, legs)) => (first, pg, legs),
        Err(Error::InvalidInput(why)) if *choice == BackupChoice::Latest => {
            for older in candidates {
                if path_of(older).await.is_ok() {
                    return Err(Error::InvalidInput(format!(
                        "{why}. Backup {} (consistent at {}) was taken before that and leads \
                         there: pass --backup {} to restore it onto that timeline",
                        older.backup_id,
                        format_timestamp_us(older.stop_time_us),
                        older.backup_id
                    )));
                }
            }
            return Err(Error::InvalidInput(why));
        }
        Err(e) => return Err(e),
    };
    let size = pg.wal_segment_size;
    let path: Vec<TimelineId> = legs.iter().map(|l| l.timeline).collect();
    let on_path = |e: &LocatedEvent| legs.iter().position(|l| l.holds(e.timeline, e.event.lsn));
    let start_seg = SegmentName::containing(TimelineId(pg.timeline), Lsn(pg.start_lsn), size);
    let stop_seg = SegmentName::containing(TimelineId(pg.timeline), Lsn(pg.stop_lsn), size);

    // Where the target lies: the leg that holds it, the LSN where replay stops, and whether
    // the index found it there.
    let (target_leg, stop_at, expected_stop): (usize, Option<Lsn>, ExpectedStop) = match &target {
        RecoveryTarget::End => (legs.len() - 1, None, None),
        RecoveryTarget::Immediate => (0, Some(Lsn(pg.stop_lsn)), Some((Lsn(pg.stop_lsn), None))),
        RecoveryTarget::Lsn(l) => {
            if l.0 < pg.stop_lsn {
                return Err(Error::InvalidInput(format!(
                        "LSN {l} is before backup {}'s consistency point {}: choose an earlier backup or a later target",
                        manifest.backup_id,
                        Lsn(pg.stop_lsn)
                    )));
            }
            let leg = legs
                .iter()
                .position(|g| g.until.is_none_or(|u| l.0 < u.0))
                .unwrap_or(legs.len() - 1);
            (leg, Some(*l), Some((*l, None)))
        }
        RecoveryTarget::Time(t) => {
            // Recovery stops at the first transaction end after the target: that record
            // must be in the archive, or PostgreSQL would run out of WAL first.
            let after = events(&archive, None, None, None)
                .await?
                .into_iter()
                .filter(|e| {
                    e.event.kind != WalEventKind::RestorePoint
                        && e.event.time_us > *t
                        && e.event.lsn.0 >= pg.stop_lsn
                })
                .filter_map(|e| on_path(&e).map(|leg| (leg, e)))
                .min_by_key(|(leg, e)| (*leg, e.event.lsn));
            let Some((leg, after)) = after else {
                let end = legs
                    .last()
                    .map(|l| l.timeline)
                    .unwrap_or(TimelineId(pg.timeline));
                let last = listing
                    .iter()
                    .find(|t| t.timeline == end)
                    .and_then(|t| t.ranges.last())
                    .and_then(|r| r.last_xact_us);
                return Err(Error::InvalidInput(format!(
                        "time {} is after the last transaction in the archive: continuous WAL from backup {} covers {} .. {} on timeline {}. Restore without a target to replay everything",
                        format_timestamp_us(*t),
                        manifest.backup_id,
                        format_timestamp_us(manifest.stop_time_us),
                        last.map_or("?".into(), format_timestamp_us),
                        describe_path(&path)
                    )));
            };
            (
                leg,
                Some(after.event.end),
                Some((after.event.lsn, Some(after.event.time_us))),
            )
        }
        RecoveryTarget::Name(_) | RecoveryTarget::Xid(_) => {
            let e = event
                .as_ref()
                .ok_or_else(|| Error::InvalidInput("the target's event was not found".into()))?;
            let Some(leg) = on_path(e) else {
                return Err(Error::InvalidInput(format!(
                        "{} is on timeline {} at {}, which is not on the recovery path from backup {} (timeline {}); choose --target-timeline or another backup",
                        target.describe(),
                        e.timeline.0,
                        e.event.lsn,
                        manifest.backup_id,
                        describe_path(&path)
                    )));
            };
            (
                leg,
                Some(e.event.end),
                Some((e.event.lsn, Some(e.event.time_us))),
            )
        }
    };

    // Every leg up to the target's must be archived without a gap: in full before the
    // target's leg, up to the target in it.
    let mut archive_end_time = None;
    let mut last_needed = stop_seg;
    for (i, leg) in legs.iter().enumerate().take(target_leg + 1) {
        let tl = listing.iter().find(|t| t.timeline == leg.timeline);
        let first = SegmentName::containing(leg.timeline, leg.from, size);
        // The segment holding a switch point is read from the new timeline.
        let until_seg = leg
            .until
            .map(|u| SegmentName::containing(leg.timeline, u, size));
        if until_seg.is_some_and(|u| u <= first) {
            continue;
        }
        let range = tl.and_then(|t| {
            t.ranges.iter().find(|r| {
                SegmentName::parse(r.first.as_str(), size).is_ok_and(|f| f <= first)
                    && SegmentName::parse(r.last.as_str(), size).is_ok_and(|l| l >= first)
            })
        });
        let Some(range) = range else {
            return Err(Error::InvalidInput(if i == 0 {
                format!(
                    "the archive lacks WAL segment {first}, where backup {} starts: it cannot be restored{}",
                    manifest.backup_id,
                    gaps_hint(tl)
                )
            } else {
                format!(
                    "the archive lacks WAL segment {first}, where timeline {} begins (at {}) on the way to the target{}",
                    leg.timeline.0,
                    leg.from,
                    gaps_hint(tl)
                )
            }));
        };
        let covered_last = SegmentName::parse(range.last.as_str(), size)
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        archive_end_time = range.last_xact_us;
        let covers = || {
            format!(
                "continuous WAL from backup {} covers {} .. {} ({} .. {} on timeline {})",
                manifest.backup_id,
                format_timestamp_us(manifest.stop_time_us),
                range.last_xact_us.map_or("?".into(), format_timestamp_us),
                range.first,
                range.last,
                leg.timeline.0
            )
        };
        if i == 0 && covered_last < stop_seg {
            return Err(Error::InvalidInput(format!(
                "the archive's WAL from backup {} stops at {} before the backup's end ({stop_seg}){}",
                manifest.backup_id,
                range.last,
                gaps_hint(tl)
            )));
        }
        let needed = if i < target_leg {
            // The whole leg up to the switch.
            until_seg
                .map(|u| SegmentName::new(u.timeline, u.segment - 1, size))
                .unwrap_or(covered_last)
        } else {
            match stop_at {
                Some(l) => SegmentName::containing(leg.timeline, l, size),
                None => {
                    // WAL archived after a gap cannot be replayed: recovery would stop at the
                    // gap and promote, quietly missing everything after it.
                    if let Some(t) = tl.filter(|t| t.ranges.len() > 1) {
                        if t.ranges.last().is_some_and(|r| r.last != range.last) {
                            return Err(Error::InvalidInput(format!(
                                "WAL is missing after {}: recovery would stop there{}. Restore to a target before it (--target-time, --target-lsn), or find the missing segments",
                                range.last,
                                gaps_hint(tl)
                            )));
                        }
                    }
                    covered_last
                }
            }
        };
        if needed > covered_last {
            return Err(Error::InvalidInput(if i < target_leg {
                format!(
                    "WAL of timeline {} is missing before its switch to timeline {} at {}: {}{}",
                    leg.timeline.0,
                    legs[i + 1].timeline.0,
                    legs[i + 1].from,
                    covers(),
                    gaps_hint(tl)
                )
            } else {
                match &target {
                    RecoveryTarget::Lsn(l) => {
                        format!("LSN {l} is beyond the archived WAL: {}", covers())
                    }
                    RecoveryTarget::Time(t) => format!(
                        "the WAL up to time {} is not all archived: {}{}",
                        format_timestamp_us(*t),
                        covers(),
                        gaps_hint(tl)
                    ),
                    _ => format!(
                        "{} is beyond the continuous WAL: {}",
                        target.describe(),
                        covers()
                    ),
                }
            }));
        }
        last_needed = needed;
    }
    Ok(Plan {
        first_segment: start_seg.to_string(),
        last_segment: last_needed.max(stop_seg).to_string(),
        manifest: manifest.clone(),
        target,
        timeline: legs[target_leg].timeline,
        path,
        expected_stop,
        archive_end_time,
    })
}

/// Where replay is expected to stop, and the time of that record if known.
type ExpectedStop = Option<(Lsn, Option<i64>)>;

/// `recovery_target_timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetTimeline {
    /// The newest timeline in the archive (PostgreSQL's default).
    Latest,
    /// The backup's own timeline.
    Current,
    Id(TimelineId),
}

impl TargetTimeline {
    /// Parses `latest`, `current` or a timeline number.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "latest" => Ok(Self::Latest),
            "current" => Ok(Self::Current),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .map(|n| Self::Id(TimelineId(n)))
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "--target-timeline {s:?}: latest, current or a timeline number"
                    ))
                }),
        }
    }

    /// The value for `recovery_target_timeline`.
    pub fn as_conf(&self) -> String {
        match self {
            Self::Latest => "latest".into(),
            Self::Current => "current".into(),
            Self::Id(t) => t.0.to_string(),
        }
    }
}

/// One timeline's part of the way from a backup to the target: its WAL from `from` up to
/// `until`, where the next timeline branches off (open on the last leg).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg {
    pub timeline: TimelineId,
    pub from: Lsn,
    pub until: Option<Lsn>,
}

impl Leg {
    fn holds(&self, timeline: TimelineId, lsn: Lsn) -> bool {
        self.timeline == timeline && self.from <= lsn && self.until.is_none_or(|u| lsn < u)
    }
}

/// `1 → 2 → 3`.
fn describe_path(path: &[TimelineId]) -> String {
    path.iter()
        .map(|t| t.0.to_string())
        .collect::<Vec<_>>()
        .join(" → ")
}

/// The entries of a timeline history file: `(parent timeline, switch point)`, oldest first.
pub fn parse_history(text: &str) -> Vec<(TimelineId, Lsn)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let tli = f.next()?.parse::<u32>().ok()?;
            let lsn = f.next()?.parse::<Lsn>().ok()?;
            Some((TimelineId(tli), lsn))
        })
        .collect()
}

/// The timelines recovery follows from a backup on `backup_tli`, the way PostgreSQL does:
/// the target timeline's history file names the switch points.
async fn recovery_path(
    archive: &WalArchive,
    listing: &[crate::wal::catalog::TimelineWal],
    backup_id: &str,
    backup_tli: TimelineId,
    (start, stop): (Lsn, Lsn),
    choice: TargetTimeline,
) -> Result<Vec<Leg>> {
    let target = match choice {
        TargetTimeline::Current => backup_tli,
        TargetTimeline::Id(t) => t,
        TargetTimeline::Latest => listing
            .iter()
            .filter(|t| t.history && t.timeline > backup_tli)
            .map(|t| t.timeline)
            .max()
            .unwrap_or(backup_tli),
    };
    if target == backup_tli {
        return Ok(vec![Leg {
            timeline: backup_tli,
            from: start,
            until: None,
        }]);
    }
    let name = pgkeep_format::WalFileName::parse(&format!("{:08X}.history", target.0))
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let Some((_, text)) = archive.fetch(&name).await? else {
        return Err(Error::InvalidInput(format!(
            "timeline {} has no history file {name} in the archive, so the way from backup {backup_id} (timeline {}) to it is unknown; use --target-timeline current",
            target.0, backup_tli.0
        )));
    };
    let history = parse_history(&String::from_utf8_lossy(&text));
    let Some(pos) = history.iter().position(|(t, _)| *t == backup_tli) else {
        return Err(Error::InvalidInput(format!(
            "timeline {} does not descend from timeline {} of backup {backup_id} ({name} lists {}); use --target-timeline current or a backup taken on timeline {}",
            target.0,
            backup_tli.0,
            describe_path(&history.iter().map(|(t, _)| *t).collect::<Vec<_>>()),
            target.0
        )));
    };
    if history[pos].1 < stop {
        return Err(Error::InvalidInput(format!(
            "timeline {} left timeline {} at {}, before backup {backup_id} was consistent ({stop}); use --target-timeline current or a backup taken on timeline {}",
            target.0, backup_tli.0, history[pos].1, target.0
        )));
    }
    let mut legs = vec![Leg {
        timeline: backup_tli,
        from: start,
        until: Some(history[pos].1),
    }];
    for w in history[pos..].windows(2) {
        legs.push(Leg {
            timeline: w[1].0,
            from: w[0].1,
            until: Some(w[1].1),
        });
    }
    legs.push(Leg {
        timeline: target,
        from: history.last().map_or(start, |(_, l)| *l),
        until: None,
    });
    Ok(legs)
}

/// The newest backup consistent before the target, or the named one if it is.
///
/// For [`BackupChoice::Latest`], every backup consistent before the target, newest first: the
/// newest may still be on the wrong side of a timeline's fork (see [`plan`]).
fn pick_backup<'m>(
    manifests: &'m [Manifest],
    choice: &BackupChoice,
    target: &RecoveryTarget,
    event: Option<&LocatedEvent>,
) -> Result<Vec<&'m Manifest>> {
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
            Ok(vec![m])
        }
        BackupChoice::Latest => Some(
            manifests
                .iter()
                .rev()
                .filter(|m| usable(m).is_ok())
                .collect::<Vec<_>>(),
        )
        .filter(|c| !c.is_empty())
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

/// The 32-bit transaction id `recovery_target_xid` stops at. PostgreSQL reads the setting
/// as a 64-bit number and keeps its low 32 bits, so an epoch-qualified id as
/// `pg_current_xact_id()` returns it (`xid8`, epoch in the high half) names the same
/// transaction as its 32-bit id; the plan matches what the server will.
fn xid_of(target: u64) -> u32 {
    (target & u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_qualified_xid_names_its_32_bit_transaction() {
        assert_eq!(xid_of(1000), 1000);
        assert_eq!(xid_of((1 << 32) + 1000), 1000);
        assert_eq!(xid_of(u64::from(u32::MAX)), u32::MAX);
    }

    #[test]
    fn history_files_parse_and_legs_hold_their_lsns() {
        let text = "1\t0/5000000\tno recovery target specified\n\n# comment\n2\t0/9000A28\tat restore point \"x\"\n";
        assert_eq!(
            parse_history(text),
            [
                (TimelineId(1), Lsn(0x0500_0000)),
                (TimelineId(2), Lsn(0x0900_0a28))
            ]
        );
        let leg = Leg {
            timeline: TimelineId(2),
            from: Lsn(0x0500_0000),
            until: Some(Lsn(0x0900_0a28)),
        };
        assert!(leg.holds(TimelineId(2), Lsn(0x0500_0000)));
        assert!(!leg.holds(TimelineId(2), Lsn(0x0900_0a28)));
        assert!(!leg.holds(TimelineId(1), Lsn(0x0600_0000)));
        assert_eq!(describe_path(&[TimelineId(1), TimelineId(2)]), "1 → 2");
        assert_eq!(
            TargetTimeline::parse("3").expect("n"),
            TargetTimeline::Id(TimelineId(3))
        );
        assert!(TargetTimeline::parse("0").is_err());
        assert_eq!(
            TargetTimeline::parse("latest").expect("l").as_conf(),
            "latest"
        );
    }
}
