//! What the WAL archive holds, per timeline: continuous ranges, gaps, the time they cover, and
//! the events (commits, aborts, restore points) inside a time window. Built from object names
//! and the small meta units only; no segment is downloaded.

use std::collections::BTreeMap;

use futures::stream::{self, StreamExt, TryStreamExt};
use pgkeep_format::{
    SegmentName, TimelineId, WalEvent, WalEventKind, WalFileKind, WalFileName, WalMeta,
};

use crate::error::Result;
use crate::wal::archive::WalArchive;

/// Meta reads in flight at once.
const PARALLEL_READS: usize = 16;

/// A run of consecutive segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRange {
    pub first: WalFileName,
    pub last: WalFileName,
    pub segments: u64,
    /// First and last transaction end (commit/abort) time in the range, unix µs.
    pub first_xact_us: Option<i64>,
    pub last_xact_us: Option<i64>,
}

/// The archive of one timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineWal {
    pub timeline: TimelineId,
    /// Consecutive runs, in order; more than one means gaps.
    pub ranges: Vec<SegmentRange>,
    /// Missing segments between the ranges: (first missing, last missing).
    pub gaps: Vec<(String, String)>,
    pub partial: Vec<WalFileName>,
    pub history: bool,
    pub backup_history: Vec<WalFileName>,
    pub stored_bytes: u64,
    /// Segment size, from the segments' headers (0 if there are none).
    pub segment_size: u32,
}

/// One event, with the segment it was found in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedEvent {
    pub timeline: TimelineId,
    pub segment: WalFileName,
    pub event: WalEvent,
}

/// Per-timeline view of the archive.
pub async fn timelines(archive: &WalArchive) -> Result<Vec<TimelineWal>> {
    let mut out = Vec::new();
    for (timeline, files) in archive.list().await? {
        let mut t = TimelineWal {
            timeline,
            ranges: Vec::new(),
            gaps: Vec::new(),
            partial: Vec::new(),
            history: false,
            backup_history: Vec::new(),
            stored_bytes: files.iter().map(|f| f.stored_size).sum(),
            segment_size: 0,
        };
        let mut segments = Vec::new();
        for f in files {
            match f.name.kind() {
                WalFileKind::Segment => segments.push(f.name),
                WalFileKind::Partial => t.partial.push(f.name),
                WalFileKind::History => t.history = true,
                WalFileKind::BackupHistory => t.backup_history.push(f.name),
            }
        }
        if let Some(first) = segments.first() {
            let size = match archive.meta(first).await? {
                Some(WalMeta {
                    segment: Some(facts),
                    ..
                }) => facts.segment_size,
                _ => 16 << 20,
            };
            t.segment_size = size;
            let runs = runs(&segments, size);
            for (i, run) in runs.iter().enumerate() {
                let (first_xact_us, last_xact_us) = time_span(archive, run).await?;
                t.ranges.push(SegmentRange {
                    first: run[0].clone(),
                    last: run[run.len() - 1].clone(),
                    segments: run.len() as u64,
                    first_xact_us,
                    last_xact_us,
                });
                if let Some(next) = runs.get(i + 1) {
                    let after = parse(&run[run.len() - 1], size);
                    let before = parse(&next[0], size);
                    if let (Some(a), Some(b)) = (after, before) {
                        let missing_first = SegmentName::new(timeline, a.segment + 1, size);
                        let missing_last = SegmentName::new(timeline, b.segment - 1, size);
                        t.gaps
                            .push((missing_first.to_string(), missing_last.to_string()));
                    }
                }
            }
        }
        out.push(t);
    }
    Ok(out)
}

fn parse(name: &WalFileName, size: u32) -> Option<SegmentName> {
    SegmentName::parse(name.segment_part()?, size).ok()
}

/// Splits sorted segment names into runs of consecutive segments.
fn runs(segments: &[WalFileName], size: u32) -> Vec<Vec<WalFileName>> {
    let mut out: Vec<Vec<WalFileName>> = Vec::new();
    let mut prev: Option<u64> = None;
    for name in segments {
        let Some(seg) = parse(name, size) else {
            continue;
        };
        match (prev, out.last_mut()) {
            (Some(p), Some(run)) if seg.segment == p + 1 => run.push(name.clone()),
            _ => out.push(vec![name.clone()]),
        }
        prev = Some(seg.segment);
    }
    out
}

/// The first and last transaction end time of a run: scans inward from each end until a
/// segment with transaction ends is found (usually the first one read).
async fn time_span(
    archive: &WalArchive,
    run: &[WalFileName],
) -> Result<(Option<i64>, Option<i64>)> {
    let mut first = None;
    for name in run {
        if let Some((lo, _)) = xact_range(archive, name).await? {
            first = Some(lo);
            break;
        }
    }
    let mut last = None;
    for name in run.iter().rev() {
        if let Some((_, hi)) = xact_range(archive, name).await? {
            last = Some(hi);
            break;
        }
    }
    Ok((first, last))
}

async fn xact_range(archive: &WalArchive, name: &WalFileName) -> Result<Option<(i64, i64)>> {
    Ok(archive
        .meta(name)
        .await?
        .and_then(|m| m.summary)
        .and_then(|s| s.xact_time_range()))
}

/// Events with times in `[since, until]` (unix µs; open ends when `None`), on one timeline or
/// all, in timeline then LSN order.
pub async fn events(
    archive: &WalArchive,
    timeline: Option<TimelineId>,
    since_us: Option<i64>,
    until_us: Option<i64>,
) -> Result<Vec<LocatedEvent>> {
    let listing = archive.list().await?;
    let segments: Vec<WalFileName> = listing
        .into_iter()
        .filter(|(t, _)| timeline.is_none_or(|want| want == *t))
        .flat_map(|(_, files)| files.into_iter().map(|f| f.name))
        .filter(|n| matches!(n.kind(), WalFileKind::Segment | WalFileKind::Partial))
        .collect();
    let metas: Vec<(WalFileName, Option<WalMeta>)> = stream::iter(segments)
        .map(|name| async move {
            let meta = archive.meta(&name).await?;
            Ok::<_, crate::Error>((name, meta))
        })
        .buffered(PARALLEL_READS)
        .try_collect()
        .await?;
    let mut by_lsn: BTreeMap<(TimelineId, u64), LocatedEvent> = BTreeMap::new();
    for (name, meta) in metas {
        let Some(summary) = meta.and_then(|m| m.summary) else {
            continue;
        };
        for event in summary.events {
            let in_window = since_us.is_none_or(|s| event.time_us >= s)
                && until_us.is_none_or(|u| event.time_us <= u);
            if in_window {
                // A segment and its .partial may both hold an event: keep one.
                by_lsn.insert(
                    (name.timeline(), event.lsn.0),
                    LocatedEvent {
                        timeline: name.timeline(),
                        segment: name.clone(),
                        event,
                    },
                );
            }
        }
    }
    Ok(by_lsn.into_values().collect())
}

/// Whether an event is one a user hunting for "the instant before a mistake" wants by
/// default: restore points, aborts, and commits that dropped relations.
pub fn is_notable(e: &WalEvent) -> bool {
    e.kind == WalEventKind::RestorePoint
        || matches!(e.kind, WalEventKind::Abort | WalEventKind::AbortPrepared)
        || !e.dropped.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_at_gaps() {
        let names: Vec<WalFileName> = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000004",
            "0000000100000000000000FF",
            "000000010000000100000000",
        ]
        .iter()
        .map(|s| WalFileName::parse(s).expect("name"))
        .collect();
        let r = runs(&names, 16 << 20);
        let lens: Vec<usize> = r.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![2, 1, 2], "{r:?}");
    }
}
