//! The streaming decoder: bytes of WAL in, records out, no I/O.
//!
//! WAL reaches pgkeep in pieces of any size (segment files read in chunks, replication
//! messages), and a record may span pages and segments. The decoder therefore keeps exactly the
//! state PostgreSQL's `XLogDecodeNextRecord` keeps between reads, as a plain state machine: where
//! it is, what it expects next (a page header, the rest of a record, a record start), and the
//! facts later pages must agree with (version, system identifier, timeline, previous record).
//! Being sans-IO makes it usable from async code, from tests with hand-made WAL, and from a
//! fuzzer; it never panics, and it never allocates more than the bytes it was given.
//!
//! Segments are independent units in the archive, so a record that straddles a segment
//! boundary is handed over explicitly: [`WalStreamDecoder::incomplete_tail`] on the decoder of
//! segment N gives its first bytes, [`WalStreamDecoder::with_tail`] primes the decoder of
//! segment N+1 with them ([`WalStreamDecoder::successor`] does both).

use std::mem;

use pgkeep_format::pg::{Lsn, TimelineId};

use super::error::WalDecodeError;
use super::kind::{classify, RecordKind, RM_XLOG_ID, XLOG_SWITCH};
use super::page::{PageHeader, WalVersion, SHORT_HEADER_LEN, XLOG_BLCKSZ, XLP_ALL_FLAGS};
use super::record::{main_data, record_crc, RecordHeader, MAX_RECORD_LEN, RECORD_HEADER_LEN};

const BLCKSZ: u64 = XLOG_BLCKSZ as u64;
/// Largest position the decoder works with: 2^62 bytes of WAL is far beyond any cluster, and
/// the bound lets every position computation be plain arithmetic that cannot overflow.
const MAX_POSITION: u64 = 1 << 62;
/// Largest segment size (PostgreSQL's `WalSegMaxSize`).
const MAX_SEGMENT_SIZE: u32 = 1 << 30;
/// Long minus short page header: the extra bytes the first page of a segment loses.
const LONG_EXTRA: u64 = 16;

/// `MAXALIGN`: records start at multiples of 8.
fn maxalign(pos: u64) -> u64 {
    (pos + 7) & !7
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    /// Where the record starts (what `pg_waldump` prints as `lsn:`).
    pub lsn: Lsn,
    /// Where replay stands once the record is applied (PostgreSQL's `EndRecPtr`): the record's
    /// end rounded up to 8 bytes, the value `pg_create_restore_point()` and commits report;
    /// for `XLOG_SWITCH`, the end of the segment.
    pub end: Lsn,
    /// `xl_xid`: the transaction that wrote it (0 for none).
    pub xid: u32,
    /// `xl_rmid`: the resource manager (0 XLOG, 1 Transaction, 2 Storage, 10 Heap, ...).
    pub rmid: u8,
    /// `xl_info`: the record type within its resource manager, plus flags in the low bits.
    pub info: u8,
    /// `xl_prev`: the start of the record before it.
    pub prev: Lsn,
    /// `xl_tot_len`: the record's length, header included, page headers excluded.
    pub total_len: u32,
    /// What the record means for the time index.
    pub kind: RecordKind,
}

/// A record being assembled.
#[derive(Debug)]
struct Partial {
    start: Lsn,
    total_len: u32,
    /// The record's bytes so far, page headers removed.
    buf: Vec<u8>,
    /// Whether the 24-byte header was checked (it may itself span two pages).
    header_checked: bool,
}

#[derive(Debug)]
enum State {
    /// Before the first page header, which decides what the first bytes are.
    Start {
        tail: Option<Partial>,
    },
    /// Skipping the rest of a record that began before the decoder's start and was not
    /// primed; `from` is where the skipped bytes begin.
    SkipContinuation {
        remaining: u32,
        from: Lsn,
    },
    /// Between records: the next one starts at the next 8-byte boundary.
    RecordStart,
    InRecord(Partial),
    /// After `XLOG_SWITCH`: the rest of the segment holds no records.
    SkipToSegmentEnd,
    /// The WAL ended (zeros where a record or page should be).
    Ended,
    Failed(WalDecodeError),
}

enum Step {
    Continue,
    NeedMore,
    Record(DecodedRecord),
}

/// Decodes a stream of WAL bytes into records. See the module documentation.
///
/// ```
/// use pgkeep_engine::wal::decode::WalStreamDecoder;
/// use pgkeep_engine::format::Lsn;
///
/// let segment = vec![0u8; 16 << 20]; // e.g. read from an archived segment file
/// let mut decoder = WalStreamDecoder::new(Lsn(0x100_0000), 16 << 20);
/// for chunk in segment.chunks(64 << 10) {
///     decoder.feed(chunk);
///     while let Some(record) = decoder.poll()? {
///         println!("{} {:?}", record.lsn, record.kind);
///     }
/// }
/// // A never-written segment: no records, the WAL ends at its start.
/// assert_eq!(decoder.end_of_wal(), Some(Lsn(0x100_0000)));
/// # Ok::<(), pgkeep_engine::wal::decode::WalDecodeError>(())
/// ```
#[derive(Debug)]
pub struct WalStreamDecoder {
    start: Lsn,
    segment_size: u32,
    /// The LSN of `input[off]`: everything before it was consumed.
    pos: u64,
    input: Vec<u8>,
    off: usize,
    /// The LSN just past the last byte fed.
    fed_end: u64,
    state: State,
    expect_system_id: Option<u64>,
    expect_timeline: Option<TimelineId>,
    version: Option<WalVersion>,
    system_id: Option<u64>,
    timeline: Option<TimelineId>,
    /// The start of the last record decoded: the next record's `xl_prev`.
    prev_record: Option<Lsn>,
    skipped: Option<(Lsn, u32)>,
    overwritten: Option<Lsn>,
    end_of_wal: Option<Lsn>,
    records: u64,
}

impl WalStreamDecoder {
    /// A decoder for WAL starting at `start`, a page boundary (normally a segment's first
    /// byte), of a cluster with `segment_size`-byte segments.
    ///
    /// `segment_size` must be a power of two from 8 KiB to 1 GiB. PostgreSQL only writes
    /// 1 MiB and up; smaller sizes are accepted so that tests and the fuzzer can cross segment
    /// boundaries with little data. An invalid setup is reported by the first
    /// [`poll`](Self::poll), as [`WalDecodeError::InvalidSetup`].
    pub fn new(start: Lsn, segment_size: u32) -> Self {
        let mut decoder = Self {
            start,
            segment_size,
            pos: start.0,
            input: Vec::new(),
            off: 0,
            fed_end: start.0,
            state: State::Start { tail: None },
            expect_system_id: None,
            expect_timeline: None,
            version: None,
            system_id: None,
            timeline: None,
            prev_record: None,
            skipped: None,
            overwritten: None,
            end_of_wal: None,
            records: 0,
        };
        let problem = if !segment_size.is_power_of_two()
            || !(XLOG_BLCKSZ..=MAX_SEGMENT_SIZE).contains(&segment_size)
        {
            Some(format!(
                "segment size {segment_size} is not a power of two from 8 KiB to 1 GiB"
            ))
        } else if start.0 % BLCKSZ != 0 {
            Some("the start is not at a WAL page boundary".to_owned())
        } else if start.0 > MAX_POSITION {
            Some("positions past 2^62 are not supported".to_owned())
        } else {
            None
        };
        if let Some(reason) = problem {
            decoder.state = State::Failed(WalDecodeError::InvalidSetup { lsn: start, reason });
        }
        decoder
    }

    /// Only accept long page headers carrying this system identifier (the cluster's, from
    /// `pg_control` or `IDENTIFY_SYSTEM`). Without it, the first long header seen sets it.
    pub fn expect_system_id(mut self, system_id: u64) -> Self {
        self.expect_system_id = Some(system_id);
        self
    }

    /// Only accept pages of this timeline or, before the point where it branched off, of its
    /// ancestors (the first segment of a new timeline begins with a copy of its parent's WAL,
    /// whose pages keep the parent's timeline id); timelines must never decrease from page to
    /// page.
    pub fn expect_timeline(mut self, timeline: TimelineId) -> Self {
        self.expect_timeline = Some(timeline);
        self
    }

    /// The start of the record before the first one this decoder will see, when known: its
    /// `xl_prev` is then checked exactly, instead of only for pointing backwards.
    pub fn expect_prev_record(mut self, lsn: Lsn) -> Self {
        self.prev_record = Some(lsn);
        self
    }

    /// Primes the decoder with the beginning of a record that started at `record_start`,
    /// before [`start`](Self::start): its bytes up to `start`, page headers removed, as
    /// [`incomplete_tail`](Self::incomplete_tail) returned them for the previous segment. The
    /// record is then completed from the first bytes fed instead of being skipped.
    ///
    /// Must be called before anything is decoded; the tail's length must be exactly the
    /// record bytes between `record_start` and `start`. Otherwise the first `poll` reports
    /// [`WalDecodeError::InvalidSetup`].
    pub fn with_tail(mut self, record_start: Lsn, bytes: Vec<u8>) -> Self {
        match self.state {
            State::Start { tail: None } => {}
            State::Failed(_) => return self,
            _ => {
                self.state = State::Failed(WalDecodeError::InvalidSetup {
                    lsn: record_start,
                    reason: "a tail can be primed only once, before decoding".to_owned(),
                });
                return self;
            }
        }
        self.state = match self.check_tail(record_start, &bytes) {
            Ok(total_len) => State::Start {
                tail: Some(Partial {
                    start: record_start,
                    total_len,
                    buf: bytes,
                    header_checked: false,
                }),
            },
            Err(e) => State::Failed(e),
        };
        self
    }

    /// Checks that a primed tail can be the beginning of a record continuing at `start`;
    /// returns the record's total length.
    fn check_tail(&self, record_start: Lsn, bytes: &[u8]) -> Result<u32, WalDecodeError> {
        let bad = |reason: String| WalDecodeError::InvalidSetup {
            lsn: record_start,
            reason,
        };
        let (a, b) = (record_start.0, self.start.0);
        if a >= b {
            return Err(bad(format!(
                "a primed record must begin before the decoder's start {}",
                self.start
            )));
        }
        if a % 8 != 0 || a % BLCKSZ < SHORT_HEADER_LEN as u64 {
            return Err(bad("not a position where a record can begin".to_owned()));
        }
        let total_len = bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| bad("a primed tail needs at least the record's length".to_owned()))?;
        if !(RECORD_HEADER_LEN as u32..=MAX_RECORD_LEN).contains(&total_len) {
            return Err(WalDecodeError::InvalidRecordLength {
                lsn: record_start,
                len: total_len,
            });
        }
        if bytes.len() as u64 >= u64::from(total_len) {
            return Err(bad(format!(
                "the primed tail holds {} bytes of a {total_len}-byte record: nothing is left to continue",
                bytes.len()
            )));
        }
        // The record fills every page from its start to `start`; only page headers are not
        // its bytes. Page boundaries strictly between a and b (b is one):
        let seg = u64::from(self.segment_size);
        let pages = (b - 1) / BLCKSZ - a / BLCKSZ;
        let segments = (b - 1) / seg - a / seg;
        let expected = (b - a) - pages * SHORT_HEADER_LEN as u64 - segments * LONG_EXTRA;
        if bytes.len() as u64 != expected {
            return Err(bad(format!(
                "the primed tail holds {} bytes, but {expected} bytes of the record lie between {record_start} and {}",
                bytes.len(),
                self.start
            )));
        }
        Ok(total_len)
    }

    /// A decoder for the next segment that carries on from this one: it starts at the segment
    /// boundary at or after the last byte fed, primed with the incomplete tail if any, and
    /// expects the same system identifier, version and (at least) timeline, and the exact
    /// previous-record link.
    pub fn successor(&self) -> WalStreamDecoder {
        let seg = u64::from(self.segment_size);
        let next = self.fed_end.div_ceil(seg).saturating_mul(seg);
        let mut d = WalStreamDecoder::new(Lsn(next), self.segment_size);
        if matches!(d.state, State::Failed(_)) {
            return d;
        }
        d.expect_system_id = self.expect_system_id.or(self.system_id);
        d.expect_timeline = self.expect_timeline;
        d.version = self.version;
        d.timeline = self.timeline;
        d.prev_record = self.prev_record;
        if let Some((start, bytes)) = self.incomplete_tail() {
            d = d.with_tail(start, bytes.to_vec());
        }
        d
    }

    /// Appends the next bytes of WAL, contiguous with those fed before. Any split works, one
    /// byte at a time included. Bytes fed after the end of WAL or an error are ignored.
    pub fn feed(&mut self, bytes: &[u8]) {
        let end = self.fed_end.saturating_add(bytes.len() as u64);
        if matches!(self.state, State::Ended | State::Failed(_)) {
            self.fed_end = end;
            return;
        }
        if end > MAX_POSITION {
            self.fail(WalDecodeError::InvalidSetup {
                lsn: Lsn(self.fed_end),
                reason: "positions past 2^62 are not supported".to_owned(),
            });
            return;
        }
        self.fed_end = end;
        // Drop consumed bytes once they outnumber the rest: amortised O(1) per byte.
        if self.off > 0 && self.off >= self.input.len() - self.off {
            self.input.drain(..self.off);
            self.off = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// The next complete record, `Ok(None)` when more bytes are needed (or the WAL ended:
    /// see [`end_of_wal`](Self::end_of_wal)). After an error, returns that error again.
    pub fn poll(&mut self) -> Result<Option<DecodedRecord>, WalDecodeError> {
        loop {
            match self.step() {
                Ok(Step::Continue) => {}
                Ok(Step::NeedMore) => return Ok(None),
                Ok(Step::Record(r)) => return Ok(Some(r)),
                Err(e) => {
                    self.fail(e.clone());
                    return Err(e);
                }
            }
        }
    }

    /// The start and the bytes so far (page headers removed) of a record begun but not
    /// finished in the bytes fed: what the next segment's decoder is primed with
    /// ([`with_tail`](Self::with_tail)). Meaningful once `poll` returned `None`.
    pub fn incomplete_tail(&self) -> Option<(Lsn, &[u8])> {
        match &self.state {
            State::InRecord(p) | State::Start { tail: Some(p) } => Some((p.start, &p.buf)),
            _ => None,
        }
    }

    /// Where the WAL ended, if it did: the position of a record length of zero (the unused
    /// rest of a `.partial` segment, trailing zeros) or of a never-written page, or the start
    /// of a record such a page cut short. Not an error: there is simply nothing more here.
    pub fn end_of_wal(&self) -> Option<Lsn> {
        self.end_of_wal
    }

    /// The continuation skipped at the start, when the first page began with the rest of a
    /// record and no tail was primed: where the skipped bytes begin, and how many there are.
    /// That record is not decoded (its beginning is in an earlier segment).
    pub fn skipped_continuation(&self) -> Option<(Lsn, u32)> {
        self.skipped
    }

    /// The start of the last record abandoned because the page that should have continued it
    /// is marked `XLP_FIRST_IS_OVERWRITE_CONTRECORD` (the server crashed while writing it and
    /// WAL went on after recovery without it).
    pub fn overwritten_record(&self) -> Option<Lsn> {
        self.overwritten
    }

    /// Where the next record starts, when known: after the last record decoded (rounded up to
    /// 8 bytes; at a page boundary, the record itself begins after that page's header), at
    /// the next segment after a switch, or the start of the record being assembled.
    pub fn next_record_lsn(&self) -> Option<Lsn> {
        let seg = u64::from(self.segment_size);
        match &self.state {
            State::RecordStart => Some(Lsn(maxalign(self.pos))),
            State::InRecord(p) => Some(p.start),
            State::SkipToSegmentEnd => Some(Lsn(self.pos.div_ceil(seg) * seg)),
            State::Ended => self.end_of_wal,
            State::Start { .. } | State::SkipContinuation { .. } | State::Failed(_) => None,
        }
    }

    /// The start of the last record decoded.
    pub fn last_record_lsn(&self) -> Option<Lsn> {
        self.prev_record
    }

    /// The position of the next byte the decoder will look at; everything before it has been
    /// consumed.
    pub fn position(&self) -> Lsn {
        Lsn(self.pos)
    }

    /// The position just past the last byte fed.
    pub fn fed_end(&self) -> Lsn {
        Lsn(self.fed_end)
    }

    /// Where the decoder started.
    pub fn start(&self) -> Lsn {
        self.start
    }

    /// The segment size it was made for.
    pub fn segment_size(&self) -> u32 {
        self.segment_size
    }

    /// The WAL format version, once a page header was read.
    pub fn version(&self) -> Option<WalVersion> {
        self.version
    }

    /// The system identifier of the first long page header read (or the one expected).
    pub fn system_id(&self) -> Option<u64> {
        self.system_id.or(self.expect_system_id)
    }

    /// The timeline of the last page header read.
    pub fn timeline(&self) -> Option<TimelineId> {
        self.timeline
    }

    /// How many records were decoded.
    pub fn records_decoded(&self) -> u64 {
        self.records
    }

    fn fail(&mut self, e: WalDecodeError) {
        self.state = State::Failed(e);
        self.input = Vec::new();
        self.off = 0;
    }

    /// Stops at the end of WAL found at `at`.
    fn end(&mut self, at: Lsn) {
        self.end_of_wal = Some(at);
        self.state = State::Ended;
        self.input = Vec::new();
        self.off = 0;
    }

    fn avail(&self) -> &[u8] {
        self.input.get(self.off..).unwrap_or_default()
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.input.len() - self.off);
        self.off += n;
        self.pos += n as u64;
        if self.off == self.input.len() {
            self.input.clear();
            self.off = 0;
        }
    }

    /// How many of `want` bytes can be taken now without crossing a page boundary.
    fn page_chunk(&self, want: u64) -> usize {
        let page_left = BLCKSZ - self.pos % BLCKSZ;
        want.min(page_left).min(self.avail().len() as u64) as usize
    }

    /// One move of the state machine: consumes bytes or changes state, or asks for more.
    fn step(&mut self) -> Result<Step, WalDecodeError> {
        match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Ended => return Ok(Step::NeedMore),
            State::SkipToSegmentEnd => return Ok(self.skip_to_segment_end()),
            _ => {}
        }
        if self.pos % BLCKSZ == 0 {
            return self.page_header();
        }
        match mem::replace(&mut self.state, State::RecordStart) {
            State::SkipContinuation { remaining, from } => {
                let n = self.page_chunk(u64::from(remaining));
                if n == 0 {
                    self.state = State::SkipContinuation { remaining, from };
                    return Ok(Step::NeedMore);
                }
                self.consume(n);
                // n <= remaining, a u32.
                let remaining = remaining - n as u32;
                if remaining > 0 {
                    self.state = State::SkipContinuation { remaining, from };
                }
                Ok(Step::Continue)
            }
            State::RecordStart => self.record_start(),
            State::InRecord(p) => self.in_record(p),
            other => {
                // Start is always at a page boundary, and the others returned above.
                self.state = other;
                Ok(Step::NeedMore)
            }
        }
    }

    fn skip_to_segment_end(&mut self) -> Step {
        let seg = u64::from(self.segment_size);
        let to_end = (seg - self.pos % seg) % seg;
        if to_end == 0 {
            self.state = State::RecordStart;
            return Step::Continue;
        }
        let n = to_end.min(self.avail().len() as u64) as usize;
        if n == 0 {
            return Step::NeedMore;
        }
        self.consume(n);
        Step::Continue
    }

    /// At a record boundary (state `RecordStart`): skip the alignment padding, read the
    /// record's length, start assembling it.
    fn record_start(&mut self) -> Result<Step, WalDecodeError> {
        let pad = maxalign(self.pos) - self.pos;
        if pad > 0 {
            let n = pad.min(self.avail().len() as u64) as usize;
            if n == 0 {
                return Ok(Step::NeedMore);
            }
            self.consume(n);
            return Ok(Step::Continue);
        }
        // Aligned and not at a page boundary, so at least 8 bytes of this page remain: the
        // length field is always on the record's first page.
        let Some(len) = self.avail().get(..4) else {
            return Ok(Step::NeedMore);
        };
        let total_len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        let lsn = Lsn(self.pos);
        if total_len == 0 {
            self.end(lsn);
            return Ok(Step::NeedMore);
        }
        if !(RECORD_HEADER_LEN as u32..=MAX_RECORD_LEN).contains(&total_len) {
            return Err(WalDecodeError::InvalidRecordLength {
                lsn,
                len: total_len,
            });
        }
        // Most records lie whole within one page and within the bytes at hand: decoded where
        // they are, without assembling a copy (that copy, an allocation per record, was most
        // of the decoder's cost on a segment of small records).
        let len = total_len as usize;
        if self.page_chunk(u64::from(total_len)) == len {
            let (header, kind) = {
                let bytes = self.avail().get(..len).unwrap_or_default();
                self.check_record_header(lsn, bytes)?;
                self.check_record(lsn, bytes)?
            };
            self.consume(len);
            return Ok(Step::Record(self.finish(lsn, &header, kind)));
        }
        self.state = State::InRecord(Partial {
            start: lsn,
            total_len,
            // Not from the untrusted length beyond one page: the buffer grows as bytes arrive.
            buf: Vec::with_capacity(total_len.min(XLOG_BLCKSZ) as usize),
            header_checked: false,
        });
        Ok(Step::Continue)
    }

    fn in_record(&mut self, mut p: Partial) -> Result<Step, WalDecodeError> {
        let need = p.total_len as usize - p.buf.len();
        let n = self.page_chunk(need as u64);
        if n == 0 {
            self.state = State::InRecord(p);
            return Ok(Step::NeedMore);
        }
        p.buf
            .extend_from_slice(self.avail().get(..n).unwrap_or_default());
        self.consume(n);
        if !p.header_checked && p.buf.len() >= RECORD_HEADER_LEN {
            self.check_record_header(p.start, &p.buf)?;
            p.header_checked = true;
        }
        if p.buf.len() < p.total_len as usize {
            self.state = State::InRecord(p);
            return Ok(Step::Continue);
        }
        let (header, kind) = self.check_record(p.start, &p.buf)?;
        Ok(Step::Record(self.finish(p.start, &header, kind)))
    }

    /// `ValidXLogRecordHeader`'s previous-record check, as soon as the header is complete.
    fn check_record_header(&self, start: Lsn, bytes: &[u8]) -> Result<(), WalDecodeError> {
        let h = RecordHeader::parse(bytes)
            .ok_or_else(|| WalDecodeError::malformed(start, "record header incomplete"))?;
        match self.prev_record {
            Some(expected) if h.prev != expected => Err(WalDecodeError::PrevLinkMismatch {
                lsn: start,
                expected,
                found: h.prev,
            }),
            None if h.prev >= start => Err(WalDecodeError::PrevLinkNotBefore {
                lsn: start,
                found: h.prev,
            }),
            _ => Ok(()),
        }
    }

    /// A record's bytes, complete and without page headers: check its CRC, find and classify
    /// its main data.
    fn check_record(
        &self,
        lsn: Lsn,
        bytes: &[u8],
    ) -> Result<(RecordHeader, RecordKind), WalDecodeError> {
        let h = RecordHeader::parse(bytes)
            .ok_or_else(|| WalDecodeError::malformed(lsn, "record header incomplete"))?;
        let computed = record_crc(bytes);
        if computed != h.crc {
            return Err(WalDecodeError::CrcMismatch {
                lsn,
                stored: h.crc,
                computed,
            });
        }
        let version = self
            .version
            .ok_or_else(|| WalDecodeError::malformed(lsn, "record before any page header"))?;
        let main = main_data(bytes, version, lsn)?;
        let kind = classify(h.rmid, h.info, h.xid, main, version, lsn)?;
        Ok((h, kind))
    }

    /// A checked record was consumed: move on past it.
    fn finish(&mut self, lsn: Lsn, h: &RecordHeader, kind: RecordKind) -> DecodedRecord {
        let is_switch = h.rmid == RM_XLOG_ID && h.info & 0xF0 == XLOG_SWITCH;
        let seg = u64::from(self.segment_size);
        let mut end = maxalign(self.pos);
        if is_switch {
            end = end.div_ceil(seg) * seg;
        }
        self.prev_record = Some(lsn);
        self.records += 1;
        self.state = if is_switch {
            State::SkipToSegmentEnd
        } else {
            State::RecordStart
        };
        DecodedRecord {
            lsn,
            end: Lsn(end),
            xid: h.xid,
            rmid: h.rmid,
            info: h.info,
            prev: h.prev,
            total_len: h.tot_len,
            kind,
        }
    }

    /// At a page boundary: read and check the page header, then decide what its first data
    /// bytes are (the continuation of a record, or a record start).
    fn page_header(&mut self) -> Result<Step, WalDecodeError> {
        let lsn = Lsn(self.pos);
        let avail = self.avail();
        let Some(first) = avail.get(..SHORT_HEADER_LEN) else {
            return Ok(Step::NeedMore);
        };
        if first.iter().all(|&b| b == 0) {
            // A page never written: the WAL ends here, or at the start of the record this
            // page should have continued.
            let at = match &self.state {
                State::InRecord(p) | State::Start { tail: Some(p) } => p.start,
                _ => lsn,
            };
            self.end(at);
            return Ok(Step::NeedMore);
        }
        let Ok(h) = PageHeader::parse(avail) else {
            return Ok(Step::NeedMore); // a long header needs 40 bytes
        };
        self.check_page(&h, lsn)?;
        self.consume(h.header_len());
        let data = Lsn(self.pos);
        self.state = match mem::replace(&mut self.state, State::RecordStart) {
            State::Start { tail: Some(p) } | State::InRecord(p) => {
                self.continue_record(p, &h, lsn)?
            }
            State::Start { tail: None } => {
                if h.is_continuation() {
                    if h.rem_len == 0 {
                        return Err(WalDecodeError::ContinuationMismatch {
                            lsn,
                            record: data,
                            reason: "continuation flag with nothing remaining".to_owned(),
                        });
                    }
                    self.skipped = Some((data, h.rem_len));
                    State::SkipContinuation {
                        remaining: h.rem_len,
                        from: data,
                    }
                } else {
                    State::RecordStart
                }
            }
            State::SkipContinuation { remaining, from } => {
                if h.is_overwrite_continuation() {
                    State::RecordStart
                } else if !h.is_continuation() || h.rem_len != remaining {
                    return Err(WalDecodeError::ContinuationMismatch {
                        lsn,
                        record: from,
                        reason: format!(
                            "{} bytes remain of the skipped record, the page says {} (continuation flag {})",
                            remaining,
                            h.rem_len,
                            if h.is_continuation() { "set" } else { "missing" }
                        ),
                    });
                } else {
                    State::SkipContinuation { remaining, from }
                }
            }
            State::RecordStart => {
                if h.is_continuation() {
                    return Err(WalDecodeError::UnexpectedContinuation { lsn });
                }
                State::RecordStart
            }
            other @ (State::SkipToSegmentEnd | State::Ended | State::Failed(_)) => other,
        };
        Ok(Step::Continue)
    }

    /// The state after a page header when a record is in progress.
    fn continue_record(
        &mut self,
        p: Partial,
        h: &PageHeader,
        lsn: Lsn,
    ) -> Result<State, WalDecodeError> {
        if h.is_overwrite_continuation() {
            // The record was lost in a crash; WAL resumes here with a new record, whose
            // xl_prev is the record before the lost one (PostgreSQL restarts the same way).
            self.overwritten = Some(p.start);
            return Ok(State::RecordStart);
        }
        let remaining = u64::from(p.total_len) - p.buf.len() as u64;
        if !h.is_continuation() || u64::from(h.rem_len) != remaining {
            return Err(WalDecodeError::ContinuationMismatch {
                lsn,
                record: p.start,
                reason: if h.is_continuation() {
                    format!(
                        "the page says {} bytes remain, the record needs {remaining}",
                        h.rem_len
                    )
                } else {
                    format!(
                        "the page has no continuation flag, {remaining} bytes of the record remain"
                    )
                },
            });
        }
        Ok(State::InRecord(p))
    }

    /// `XLogReaderValidatePageHeader`, plus the caller's expectations.
    fn check_page(&mut self, h: &PageHeader, lsn: Lsn) -> Result<(), WalDecodeError> {
        let version = h.version().ok_or(WalDecodeError::UnknownVersion {
            lsn,
            magic: h.magic,
        })?;
        if let Some(v) = self.version {
            if v != version {
                return Err(WalDecodeError::VersionChanged {
                    lsn,
                    expected: v.magic(),
                    found: h.magic,
                });
            }
        }
        if h.info & !XLP_ALL_FLAGS != 0 {
            return Err(WalDecodeError::InvalidPageInfo {
                lsn,
                info: h.info,
                missing_long_header: false,
            });
        }
        if let Some(long) = h.long {
            if let Some(expected) = self.expect_system_id.or(self.system_id) {
                if long.system_id != expected {
                    return Err(WalDecodeError::WrongSystemId {
                        lsn,
                        expected,
                        found: long.system_id,
                    });
                }
            }
            if long.seg_size != self.segment_size {
                return Err(WalDecodeError::WrongSegmentSize {
                    lsn,
                    expected: self.segment_size,
                    found: long.seg_size,
                });
            }
            if long.blcksz != XLOG_BLCKSZ {
                return Err(WalDecodeError::WrongBlockSize {
                    lsn,
                    found: long.blcksz,
                });
            }
        } else if lsn.0 % u64::from(self.segment_size) == 0 {
            return Err(WalDecodeError::InvalidPageInfo {
                lsn,
                info: h.info,
                missing_long_header: true,
            });
        }
        if h.pageaddr != lsn {
            return Err(WalDecodeError::PageAddressMismatch {
                lsn,
                found: h.pageaddr,
            });
        }
        if let Some(expected) = self.expect_timeline {
            if h.timeline > expected {
                return Err(WalDecodeError::WrongTimeline {
                    lsn,
                    expected,
                    found: h.timeline,
                });
            }
        }
        if let Some(previous) = self.timeline {
            if h.timeline < previous {
                return Err(WalDecodeError::TimelineWentBack {
                    lsn,
                    previous,
                    found: h.timeline,
                });
            }
        }
        self.version = Some(version);
        if let Some(long) = h.long {
            self.system_id = Some(long.system_id);
        }
        self.timeline = Some(h.timeline);
        Ok(())
    }
}
