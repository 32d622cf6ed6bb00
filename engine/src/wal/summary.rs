//! The time index of one segment: decode its records and keep what point-in-time recovery
//! planning and `pgkeep events` need (format-spec §7, "Summary").

use pgkeep_format::wal::MAX_TAIL;
use pgkeep_format::{Lsn, RelFile, WalEvent, WalEventKind, WalSummary};

use crate::wal::decode::{DecodedRecord, RecordKind, WalStreamDecoder, XactInfo};

/// How much of a segment the decoder is given at a time.
const FEED: usize = 64 << 10;

/// Summarizes the WAL in `file` (given in consecutive parts), which starts at `start` (a
/// segment boundary). `prev_tail` is the start of a record begun in the previous segment, so
/// the record that straddles the boundary is decoded here; without it that one record is
/// skipped and the summary says so.
///
/// Never fails: a decoding problem ends the summary early and is recorded in
/// [`WalSummary::stopped`]; the file itself is archived regardless.
pub fn summarize<'a>(
    file: impl IntoIterator<Item = &'a [u8]>,
    start: Lsn,
    segment_size: u32,
    prev_tail: Option<(Lsn, Vec<u8>)>,
) -> WalSummary {
    let mut summarizer = Summarizer::new(start, segment_size, prev_tail);
    for part in file {
        summarizer.feed(part);
    }
    summarizer.finish()
}

/// [`summarize`] a part at a time, as the parts of a segment arrive (`wal-push` summarizes
/// each part as soon as its thread has read it, while the later parts are still read and
/// compressed).
#[derive(Debug)]
pub struct Summarizer {
    decoder: WalStreamDecoder,
    summary: WalSummary,
}

impl Summarizer {
    pub fn new(start: Lsn, segment_size: u32, prev_tail: Option<(Lsn, Vec<u8>)>) -> Self {
        let mut decoder = WalStreamDecoder::new(start, segment_size);
        if let Some((lsn, bytes)) = prev_tail.filter(|(lsn, _)| *lsn < start) {
            decoder = decoder.with_tail(lsn, bytes);
        }
        Self {
            decoder,
            summary: WalSummary {
                end: start,
                ..WalSummary::default()
            },
        }
    }

    /// Decodes the next bytes of the file.
    pub fn feed(&mut self, part: &[u8]) {
        // Fed a piece at a time, so the decoder never holds a copy of a whole part.
        for piece in part.chunks(FEED) {
            if self.summary.stopped.is_some() {
                return;
            }
            self.decoder.feed(piece);
            loop {
                match self.decoder.poll() {
                    Ok(Some(record)) => {
                        self.summary.records += 1;
                        self.summary.end = record.end;
                        if let Some(event) = event_of(&record) {
                            self.summary.events.push(event);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.summary.stopped = Some(e.to_string());
                        return;
                    }
                }
            }
        }
    }

    /// The summary of everything fed.
    pub fn finish(self) -> WalSummary {
        let Self {
            decoder,
            mut summary,
        } = self;
        summary.head_unknown = decoder.skipped_continuation().is_some();
        if summary.stopped.is_none() {
            summary.tail = decoder
                .incomplete_tail()
                .filter(|(_, bytes)| bytes.len() <= MAX_TAIL)
                .map(|(lsn, bytes)| (lsn, bytes.to_vec()));
        }
        summary
    }
}

/// The event a record is, if it is one the time index keeps.
fn event_of(record: &DecodedRecord) -> Option<WalEvent> {
    let xact = |kind: WalEventKind, x: &XactInfo| WalEvent {
        kind,
        lsn: record.lsn,
        end: record.end,
        time_us: x.time.unix_micros(),
        xid: x.xid,
        name: String::new(),
        dropped: x
            .dropped_relations
            .iter()
            .map(|r| RelFile {
                tablespace: r.spc,
                database: r.db,
                relation: r.rel,
            })
            .collect(),
    };
    Some(match &record.kind {
        RecordKind::Commit(x) => xact(WalEventKind::Commit, x),
        RecordKind::Abort(x) => xact(WalEventKind::Abort, x),
        RecordKind::CommitPrepared(x) => xact(WalEventKind::CommitPrepared, x),
        RecordKind::AbortPrepared(x) => xact(WalEventKind::AbortPrepared, x),
        RecordKind::RestorePoint { time, name } => WalEvent {
            kind: WalEventKind::RestorePoint,
            lsn: record.lsn,
            end: record.end,
            time_us: time.unix_micros(),
            xid: 0,
            name: name.clone(),
            dropped: Vec::new(),
        },
        _ => return None,
    })
}
