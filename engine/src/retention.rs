//! Retention: which backups a policy keeps, and `expire`, which removes the rest and the WAL
//! only they needed.
//!
//! [`decide`] is a pure function of the backups, the policy and the clock, so every policy is
//! tested on synthetic dates. Rules combine as a union: a backup is kept when any rule keeps
//! it, and every reason is reported (`expire --dry-run` shows them).
//!
//! - `keep_last N`: the N newest backups.
//! - `keep_daily/weekly/monthly/yearly N` (grandfather-father-son): for each of the N most
//!   recent days (ISO weeks, months, years) that have a backup, the newest backup of that
//!   period. Periods are read in the given time zone (the host's local zone from the CLI), as
//!   an operator reads "the Monday backup".
//! - `keep_within D`: a point-in-time window: every backup that finished within D of now, and
//!   the newest one that finished before the window began, since restoring to the window's
//!   first instants needs it.
//! - Pinned backups (`pgkeep pin`) are kept, and a kept incremental keeps its parent chain.
//!
//! An incremental in pgkeep is complete on its own (its manifest lists every chunk), so its
//! parents are kept for the operator's expectations and for `info`'s lineage, not because a
//! restore would need them.
//!
//! WAL follows the backups: segments wholly before the oldest kept backup's start are
//! removed on every timeline, as are `.backup` and `.partial` files there; timeline history
//! files are always kept (they are tiny and recovery reads them to follow timelines).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use jiff::tz::TimeZone;
use pgkeep_format::manifest::{BackupKind, Manifest};
use pgkeep_format::{layout, BackupPin, ClusterName, Kind, Lsn, WalFileKind, WalFileName};

use crate::error::{Error, Result};
use crate::repository::{limits, Repository};
use crate::wal::archive::WalArchive;

/// A retention policy. Every count is at least 1 when set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<Duration>,
}

impl Policy {
    /// Whether any rule is set. `expire` refuses an empty policy rather than delete every
    /// unpinned backup.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("keep-last", self.keep_last),
            ("keep-daily", self.keep_daily),
            ("keep-weekly", self.keep_weekly),
            ("keep-monthly", self.keep_monthly),
            ("keep-yearly", self.keep_yearly),
        ] {
            if v == Some(0) {
                return Err(Error::InvalidInput(format!(
                    "--{name} 0 would keep nothing by that rule; leave it out instead"
                )));
            }
        }
        if self.is_empty() {
            return Err(Error::InvalidInput(
                "no retention policy: give at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within (or set them under [retention] in the config file)".into(),
            ));
        }
        Ok(())
    }
}

/// What retention needs to know about one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFacts {
    pub id: String,
    pub kind: BackupKind,
    pub parent: Option<String>,
    /// Unix microseconds of the backup's end: from then on it can be restored.
    pub stop_time_us: i64,
    /// (timeline, start LSN) for PostgreSQL backups.
    pub start: Option<(u32, Lsn)>,
    pub pinned: bool,
}

impl BackupFacts {
    pub fn of(m: &Manifest, pinned: bool) -> Self {
        Self {
            id: m.backup_id.clone(),
            kind: m.kind,
            parent: m.parent.clone(),
            stop_time_us: m.stop_time_us,
            start: m.postgres.map(|p| (p.timeline, Lsn(p.start_lsn))),
            pinned,
        }
    }
}

/// Why a backup is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Among the newest N (1-based rank).
    Last(u32),
    /// Newest of its day, week, month or year; the period as text (`2026-11-21`,
    /// `2026-W47`, `2026-11`, `2026`).
    Daily(String),
    Weekly(String),
    Monthly(String),
    Yearly(String),
    /// Finished inside the keep-within window.
    Within,
    /// The newest backup before the keep-within window: restores to the window's start need it.
    WindowBase,
    Pinned,
    /// Parent of a kept incremental.
    ParentOf(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Last(n) => write!(f, "last #{n}"),
            Self::Daily(p) => write!(f, "daily {p}"),
            Self::Weekly(p) => write!(f, "weekly {p}"),
            Self::Monthly(p) => write!(f, "monthly {p}"),
            Self::Yearly(p) => write!(f, "yearly {p}"),
            Self::Within => f.write_str("within the keep-within window"),
            Self::WindowBase => f.write_str("base of the keep-within window"),
            Self::Pinned => f.write_str("pinned"),
            Self::ParentOf(c) => write!(f, "parent of kept {c}"),
        }
    }
}

/// The verdict on one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: String,
    /// Empty when the backup expires.
    pub reasons: Vec<Reason>,
}

impl Decision {
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// A calendar rule's count and the reason it gives.
type CalendarRule = (Option<u32>, fn(String) -> Reason);

/// The period key of a time for each calendar rule.
fn periods(time_us: i64, tz: &TimeZone) -> Option<[String; 4]> {
    let ts = jiff::Timestamp::from_microsecond(time_us).ok()?;
    let dt = ts.to_zoned(tz.clone()).datetime();
    let week = dt.date().iso_week_date();
    Some([
        format!("{:04}-{:02}-{:02}", dt.year(), dt.month(), dt.day()),
        format!("{:04}-W{:02}", week.year(), week.week()),
        format!("{:04}-{:02}", dt.year(), dt.month()),
        format!("{:04}", dt.year()),
    ])
}

/// Decides which backups `policy` keeps at `now_us`. Returns one decision per backup, newest
/// first.
pub fn decide(
    backups: &[BackupFacts],
    policy: &Policy,
    now_us: i64,
    tz: &TimeZone,
) -> Vec<Decision> {
    let mut order: Vec<&BackupFacts> = backups.iter().collect();
    order.sort_by(|a, b| b.stop_time_us.cmp(&a.stop_time_us).then(b.id.cmp(&a.id)));
    let mut reasons: Vec<Vec<Reason>> = vec![Vec::new(); order.len()];

    if let Some(n) = policy.keep_last {
        for (i, r) in reasons.iter_mut().enumerate().take(n as usize) {
            r.push(Reason::Last(i as u32 + 1));
        }
    }
    let calendar: [CalendarRule; 4] = [
        (policy.keep_daily, Reason::Daily),
        (policy.keep_weekly, Reason::Weekly),
        (policy.keep_monthly, Reason::Monthly),
        (policy.keep_yearly, Reason::Yearly),
    ];
    let keys: Vec<Option<[String; 4]>> =
        order.iter().map(|b| periods(b.stop_time_us, tz)).collect();
    for (rule, (count, reason)) in calendar.iter().enumerate() {
        let Some(n) = count else { continue };
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for (i, k) in keys.iter().enumerate() {
            if seen.len() >= *n as usize {
                break;
            }
            let Some(k) = k else { continue };
            // Newest first, so the first backup met in a period is its newest.
            if seen.insert(&k[rule]) {
                reasons[i].push(reason(k[rule].clone()));
            }
        }
    }
    if let Some(window) = policy.keep_within {
        let start = now_us.saturating_sub(window.as_micros() as i64);
        let mut base_found = false;
        for (i, b) in order.iter().enumerate() {
            if b.stop_time_us >= start {
                reasons[i].push(Reason::Within);
            } else if !base_found {
                reasons[i].push(Reason::WindowBase);
                base_found = true;
            }
        }
    }
    for (i, b) in order.iter().enumerate() {
        if b.pinned {
            reasons[i].push(Reason::Pinned);
        }
    }
    // Parent chains: a kept incremental keeps its parent, transitively.
    let pos: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, b)| (b.id.as_str(), i))
        .collect();
    for i in 0..order.len() {
        if reasons[i].is_empty() {
            continue;
        }
        let mut child = i;
        while let Some(parent) = order[child].parent.as_deref() {
            let Some(&p) = pos.get(parent) else { break };
            let reason = Reason::ParentOf(order[child].id.clone());
            if reasons[p].contains(&reason) {
                break;
            }
            reasons[p].push(reason);
            child = p;
        }
    }
    order
        .iter()
        .zip(reasons)
        .map(|(b, reasons)| Decision {
            id: b.id.clone(),
            reasons,
        })
        .collect()
}

/// The first WAL segment number any kept backup needs: WAL wholly before it can go.
/// `None` (keep all WAL) when no kept backup has a start position.
pub fn wal_cutoff(kept: &[&BackupFacts], segment_size: u64) -> Option<u64> {
    kept.iter()
        .filter_map(|b| b.start)
        .map(|(_, lsn)| lsn.0 / segment_size)
        .min()
}

/// What `expire` did or, with `dry_run`, would do.
#[derive(Debug, Clone, Default)]
pub struct ExpireReport {
    /// Newest first.
    pub decisions: Vec<Decision>,
    /// Manifests removed (or to remove).
    pub expired: Vec<String>,
    /// WAL objects removed (or to remove), object names.
    pub wal_removed: Vec<String>,
    pub wal_bytes_removed: u64,
    /// The first segment kept, as a segment file name on the oldest kept backup's timeline.
    pub wal_kept_from: Option<String>,
    pub dry_run: bool,
}

/// Pins `backup_id` so retention keeps it.
pub async fn pin(
    repo: &Repository,
    cluster: &ClusterName,
    backup_id: &str,
    note: &str,
) -> Result<()> {
    // Refuses an unknown id with NotFound.
    repo.read_manifest(cluster, backup_id).await?;
    let name = layout::pin(cluster, backup_id);
    let pin = BackupPin {
        backup_id: backup_id.to_owned(),
        pinned_us: crate::timestamp::now_us(),
        note: note.to_owned(),
    };
    match repo.put_new_object(Kind::Pin, &name, pin.encode(), 0).await {
        Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes a pin; unpinning a backup that is not pinned is `NotFound`.
pub async fn unpin(repo: &Repository, cluster: &ClusterName, backup_id: &str) -> Result<()> {
    layout::check_component("backup id", backup_id)
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let name = layout::pin(cluster, backup_id);
    if repo.store().head(&name).await?.is_none() {
        return Err(Error::NotFound { object: name });
    }
    repo.store().delete(&name).await
}

/// The pins of a cluster, by backup id.
pub async fn pins(repo: &Repository, cluster: &ClusterName) -> Result<HashMap<String, BackupPin>> {
    let dir = layout::pins_dir(cluster);
    let mut out = HashMap::new();
    for obj in repo.store().list(&dir).await? {
        let plain = repo
            .get_object(Kind::Pin, &obj.name, limits::CONFIG)
            .await?;
        let pin = BackupPin::decode(&plain).map_err(|e| Error::corrupt(&obj.name, e))?;
        if obj.name != layout::pin(cluster, &pin.backup_id) {
            return Err(Error::corrupt(
                &obj.name,
                pgkeep_format::FormatError::Invalid {
                    what: "backup pin",
                    reason: format!("pins {} instead", pin.backup_id),
                },
            ));
        }
        out.insert(pin.backup_id.clone(), pin);
    }
    Ok(out)
}

/// Applies `policy` to `cluster` at `now_us`: removes the manifests of expired backups, then
/// the WAL no kept backup needs. Space comes back with `prune`.
pub async fn expire(
    repo: &Repository,
    cluster: &ClusterName,
    policy: &Policy,
    now_us: i64,
    tz: &TimeZone,
    dry_run: bool,
) -> Result<ExpireReport> {
    policy.validate()?;
    let pinned = pins(repo, cluster).await?;
    let mut facts = Vec::new();
    let mut segment_size = None;
    for id in repo.list_backups(cluster).await? {
        let m = repo.read_manifest(cluster, &id).await?;
        if let Some(pg) = m.postgres {
            segment_size.get_or_insert(u64::from(pg.wal_segment_size));
        }
        facts.push(BackupFacts::of(&m, pinned.contains_key(&id)));
    }
    let decisions = decide(&facts, policy, now_us, tz);
    let keep: BTreeSet<&str> = decisions
        .iter()
        .filter(|d| d.keep())
        .map(|d| d.id.as_str())
        .collect();
    let kept: Vec<&BackupFacts> = facts
        .iter()
        .filter(|f| keep.contains(f.id.as_str()))
        .collect();
    let expired: Vec<String> = decisions
        .iter()
        .filter(|d| !d.keep())
        .map(|d| d.id.clone())
        .collect();
    let mut report = ExpireReport {
        expired: expired.clone(),
        dry_run,
        ..ExpireReport::default()
    };
    // Manifests first: should WAL removal then fail, no kept backup has lost anything.
    if !dry_run {
        for id in &expired {
            repo.store().delete(&layout::manifest(cluster, id)).await?;
        }
    }
    if let (Some(seg_size), false) = (segment_size, kept.is_empty()) {
        if let Some(cutoff) = wal_cutoff(&kept, seg_size) {
            let archive = WalArchive::new(repo.clone(), cluster.clone());
            let oldest = kept
                .iter()
                .filter_map(|b| b.start)
                .min_by_key(|(_, lsn)| lsn.0)
                .map(|(tli, _)| tli);
            if let Some(tli) = oldest {
                report.wal_kept_from = Some(segment_file_name(tli, cutoff, seg_size));
            }
            for file in archive.list().await?.into_values().flatten() {
                if segment_number(&file.name, seg_size).is_some_and(|n| n < cutoff) {
                    report.wal_bytes_removed += file.stored_size;
                    report.wal_removed.push(file.name.object_name(cluster));
                }
            }
            if !dry_run {
                for name in &report.wal_removed {
                    repo.store().delete(name).await?;
                }
            }
        }
    }
    report.decisions = decisions;
    Ok(report)
}

/// What `expire --dumps` decided and did.
#[derive(Debug, Clone, Default)]
pub struct DumpExpireReport {
    /// Newest first.
    pub decisions: Vec<Decision>,
    pub expired: Vec<String>,
    pub dry_run: bool,
}

/// Applies `policy` to the dumps of `cluster`: removes the manifests of dumps it does not
/// keep. Dumps have their own policy, separate from the backups': a nightly tenant export and
/// a weekly base backup are kept on different schedules, and a dump needs no WAL. The same
/// rules and [`decide`] apply (a dump has no parent and no WAL position).
pub async fn expire_dumps(
    repo: &Repository,
    cluster: &ClusterName,
    policy: &Policy,
    now_us: i64,
    tz: &TimeZone,
    dry_run: bool,
) -> Result<DumpExpireReport> {
    policy.validate()?;
    let mut facts = Vec::new();
    for id in repo.list_dumps(cluster).await? {
        let m = repo.read_dump(cluster, &id).await?;
        facts.push(BackupFacts {
            id: m.dump_id,
            kind: BackupKind::Files,
            parent: None,
            stop_time_us: m.stop_time_us,
            start: None,
            pinned: false,
        });
    }
    let decisions = decide(&facts, policy, now_us, tz);
    let expired: Vec<String> = decisions
        .iter()
        .filter(|d| !d.keep())
        .map(|d| d.id.clone())
        .collect();
    if !dry_run {
        for id in &expired {
            repo.delete_dump(cluster, id).await?;
        }
    }
    Ok(DumpExpireReport {
        decisions,
        expired,
        dry_run,
    })
}

/// The segment number a file's name starts with: segments, `.partial` and `.backup` files;
/// `None` for timeline history files.
fn segment_number(file: &WalFileName, seg_size: u64) -> Option<u64> {
    if file.kind() == WalFileKind::History {
        return None;
    }
    let s = file.as_str();
    let hi = u64::from_str_radix(s.get(8..16)?, 16).ok()?;
    let lo = u64::from_str_radix(s.get(16..24)?, 16).ok()?;
    Some(hi * (0x1_0000_0000 / seg_size) + lo)
}

/// `TTTTTTTTXXXXXXXXYYYYYYYY` for segment `n`.
fn segment_file_name(tli: u32, n: u64, seg_size: u64) -> String {
    let per_xlogid = 0x1_0000_0000 / seg_size;
    format!("{tli:08X}{:08X}{:08X}", n / per_xlogid, n % per_xlogid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;

    fn at(days: i64) -> i64 {
        // 2026-01-01T02:00:00Z plus `days` days.
        1_767_232_800_000_000 + days * DAY
    }

    fn backup(id: &str, time_us: i64) -> BackupFacts {
        BackupFacts {
            id: id.into(),
            kind: BackupKind::Full,
            parent: None,
            stop_time_us: time_us,
            start: None,
            pinned: false,
        }
    }

    fn kept(d: &[Decision]) -> Vec<&str> {
        let mut v: Vec<&str> = d
            .iter()
            .filter(|d| d.keep())
            .map(|d| d.id.as_str())
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn keep_last() {
        let b: Vec<_> = (0..5).map(|i| backup(&format!("b{i}"), at(i))).collect();
        let p = Policy {
            keep_last: Some(2),
            ..Policy::default()
        };
        let d = decide(&b, &p, at(10), &TimeZone::UTC);
        assert_eq!(kept(&d), ["b3", "b4"]);
        assert_eq!(d[0].reasons, [Reason::Last(1)]);
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        // Two backups a day for five days.
        let mut b = Vec::new();
        for day in 0..5 {
            b.push(backup(&format!("d{day}am"), at(day)));
            b.push(backup(&format!("d{day}pm"), at(day) + DAY / 2));
        }
        let p = Policy {
            keep_daily: Some(3),
            ..Policy::default()
        };
        let d = decide(&b, &p, at(5), &TimeZone::UTC);
        assert_eq!(kept(&d), ["d2pm", "d3pm", "d4pm"]);
        assert!(d
            .iter()
            .any(|x| x.id == "d4pm" && x.reasons == [Reason::Daily("2026-01-05".into())]));
    }

    #[test]
    fn periods_follow_the_time_zone() {
        // 23:30 UTC on Jan 1 is already Jan 2 in Tokyo.
        let t = at(0) + 21 * 3_600_000_000 + 1_800_000_000;
        let tokyo = TimeZone::get("Asia/Tokyo").expect("tzdb");
        assert_eq!(periods(t, &TimeZone::UTC).expect("valid")[0], "2026-01-01");
        assert_eq!(periods(t, &tokyo).expect("valid")[0], "2026-01-02");
    }

    /// Grandfather-father-son 7/4/12 over a simulated year of daily backups: the kept set is
    /// exactly the last 7 days, the newest backup of each of the last 4 ISO weeks, and of
    /// each of the last 12 months.
    #[test]
    fn gfs_over_a_year() {
        let b: Vec<_> = (0..365)
            .map(|i| backup(&format!("{i:03}"), at(i)))
            .collect();
        let p = Policy {
            keep_daily: Some(7),
            keep_weekly: Some(4),
            keep_monthly: Some(12),
            ..Policy::default()
        };
        let now = at(365);
        let d = decide(&b, &p, now, &TimeZone::UTC);
        // Day 364 is 2026-12-31 (a Thursday).
        let mut expected: BTreeSet<i64> = (358..=364).collect();
        // ISO weeks end on Sunday: the newest backup of the last 4 weeks are Thu 12-31 (W53),
        // and the Sundays 12-27, 12-20, 12-13.
        expected.extend([364, 360, 353, 346]);
        // Month ends: Jan 31 is day 30, ... Dec 31 is day 364.
        let mut day = 0;
        for len in [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31] {
            day += len;
            expected.insert(day - 1);
        }
        let want: Vec<String> = expected.iter().map(|i| format!("{i:03}")).collect();
        assert_eq!(
            kept(&d),
            want.iter().map(String::as_str).collect::<Vec<_>>()
        );
        // Overlaps: Thu 12-31 and Sun 12-27 are also daily, 12-31 also monthly.
        assert_eq!(d.iter().filter(|x| x.keep()).count(), 7 + 2 + 11);
    }

    #[test]
    fn keep_within_keeps_the_window_and_its_base() {
        let b: Vec<_> = (0..10).map(|i| backup(&format!("b{i}"), at(i))).collect();
        let p = Policy {
            keep_within: Some(Duration::from_secs(3 * 86_400)),
            ..Policy::default()
        };
        // Window starts at day 6.5: b7..b9 inside, b6 is the base.
        let d = decide(&b, &p, at(9) + DAY / 2, &TimeZone::UTC);
        assert_eq!(kept(&d), ["b6", "b7", "b8", "b9"]);
        assert!(d
            .iter()
            .any(|x| x.id == "b6" && x.reasons == [Reason::WindowBase]));
    }

    #[test]
    fn pins_and_parent_chains_are_kept() {
        let mut b: Vec<_> = (0..6).map(|i| backup(&format!("b{i}"), at(i))).collect();
        b[1].pinned = true;
        // b5 is incremental on b4, which is incremental on b3.
        b[5].kind = BackupKind::Incremental;
        b[5].parent = Some("b4".into());
        b[4].kind = BackupKind::Incremental;
        b[4].parent = Some("b3".into());
        let p = Policy {
            keep_last: Some(1),
            ..Policy::default()
        };
        let d = decide(&b, &p, at(6), &TimeZone::UTC);
        assert_eq!(kept(&d), ["b1", "b3", "b4", "b5"]);
        let b3 = d.iter().find(|x| x.id == "b3").expect("b3");
        assert_eq!(b3.reasons, [Reason::ParentOf("b4".into())]);
    }

    #[test]
    fn empty_and_zero_policies_are_refused() {
        assert!(Policy::default().validate().is_err());
        let zero = Policy {
            keep_last: Some(0),
            ..Policy::default()
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn wal_cutoff_is_the_oldest_kept_start() {
        let mut a = backup("a", at(0));
        a.start = Some((1, Lsn(0x0500_0028)));
        let mut b = backup("b", at(1));
        b.start = Some((2, Lsn(0x0900_0028)));
        assert_eq!(wal_cutoff(&[&a, &b], 16 << 20), Some(5));
        assert_eq!(
            segment_file_name(1, 5, 16 << 20),
            "000000010000000000000005"
        );
        assert_eq!(
            segment_file_name(1, 0x105, 16 << 20),
            "000000010000000100000005"
        );
        for (name, n) in [
            ("000000020000000100000005", Some(0x105)),
            ("000000020000000100000005.partial", Some(0x105)),
            ("000000010000000000000007.00000028.backup", Some(7)),
            ("00000002.history", None),
        ] {
            let f = WalFileName::parse(name).expect("valid");
            assert_eq!(segment_number(&f, 16 << 20), n, "{name}");
        }
    }
}
