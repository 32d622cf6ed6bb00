//! Writing well-formed WAL, for tests and fuzzing.
//!
//! Real servers cannot produce the cases a decoder must handle on demand (a record spanning
//! several segments, a crash leaving a record overwritten, a timeline change mid-segment,
//! every byte split), and random bytes almost never get past a page header and a CRC. This
//! writer lays records out exactly as PostgreSQL does (page headers, long headers at segment
//! starts, continuation flags and remaining lengths, 8-byte alignment, CRC-32C), with any body
//! the caller gives, so tests can compare what they wrote with what the decoder reads and the
//! fuzzer can reach the body parsers. It is not meant to produce WAL a server would replay.

use pgkeep_format::pg::{Lsn, TimelineId};

use super::page::{
    WalVersion, XLOG_BLCKSZ, XLP_BKP_REMOVABLE, XLP_FIRST_IS_CONTRECORD,
    XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLP_LONG_HEADER,
};
use super::record::{record_crc, RECORD_HEADER_LEN};

const BLCKSZ: u64 = XLOG_BLCKSZ as u64;

/// The system identifier the writer uses unless told otherwise.
pub const DEFAULT_SYSTEM_ID: u64 = 0x6B01_5125_4902_B3EB;

/// A record body with only main data: the short (up to 255 bytes) or long data header, then
/// the data.
pub fn main_data_body(main: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(main.len() + 5);
    match u8::try_from(main.len()) {
        Ok(n) => body.extend_from_slice(&[255, n]),
        Err(_) => {
            body.push(254);
            body.extend_from_slice(&u32::try_from(main.len()).unwrap_or(u32::MAX).to_le_bytes());
        }
    }
    body.extend_from_slice(main);
    body
}

/// A complete record: the 24-byte header (with `xl_tot_len` and `xl_crc` computed) and `body`.
pub fn encode_record(xid: u32, prev: Lsn, info: u8, rmid: u8, body: &[u8]) -> Vec<u8> {
    let total = u32::try_from(RECORD_HEADER_LEN + body.len()).unwrap_or(u32::MAX);
    let mut rec = Vec::with_capacity(RECORD_HEADER_LEN + body.len());
    rec.extend_from_slice(&total.to_le_bytes());
    rec.extend_from_slice(&xid.to_le_bytes());
    rec.extend_from_slice(&prev.0.to_le_bytes());
    rec.extend_from_slice(&[info, rmid, 0, 0]);
    rec.extend_from_slice(&[0; 4]);
    rec.extend_from_slice(body);
    let crc = record_crc(&rec);
    rec[20..24].copy_from_slice(&crc.to_le_bytes());
    rec
}

/// Writes WAL from a page boundary on, as a server would lay it out.
#[derive(Debug, Clone)]
pub struct WalWriter {
    version: WalVersion,
    segment_size: u32,
    timeline: TimelineId,
    system_id: u64,
    start: Lsn,
    pos: u64,
    prev: Lsn,
    out: Vec<u8>,
}

impl WalWriter {
    /// A writer whose first byte is at `start` (a page boundary), timeline 1,
    /// [`DEFAULT_SYSTEM_ID`], and `xl_prev` 0 for the first record.
    pub fn new(start: Lsn, segment_size: u32, version: WalVersion) -> Self {
        Self {
            version,
            segment_size: segment_size.max(1),
            timeline: TimelineId(1),
            system_id: DEFAULT_SYSTEM_ID,
            start,
            pos: start.0,
            prev: Lsn(0),
            out: Vec::new(),
        }
    }

    /// Uses this system identifier in long headers.
    pub fn with_system_id(mut self, system_id: u64) -> Self {
        self.system_id = system_id;
        self
    }

    /// The `xl_prev` of the next record.
    pub fn with_prev(mut self, prev: Lsn) -> Self {
        self.prev = prev;
        self
    }

    /// The timeline written in the headers of pages begun from now on.
    pub fn set_timeline(&mut self, timeline: TimelineId) {
        self.timeline = timeline;
    }

    /// Where the next byte goes.
    pub fn position(&self) -> Lsn {
        Lsn(self.pos)
    }

    /// The first byte's position.
    pub fn start(&self) -> Lsn {
        self.start
    }

    /// Everything written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }

    /// Appends a record with this body (everything after the 24-byte header); returns its LSN.
    pub fn record(&mut self, rmid: u8, info: u8, xid: u32, body: &[u8]) -> Lsn {
        self.begin_record();
        let start = Lsn(self.pos);
        let rec = encode_record(xid, self.prev, info, rmid, body);
        let mut rest = &rec[..];
        while !rest.is_empty() {
            if self.pos % BLCKSZ == 0 {
                let remaining = u32::try_from(rest.len()).unwrap_or(u32::MAX);
                self.page_header(XLP_FIRST_IS_CONTRECORD, remaining);
            }
            let n = rest.len().min(self.page_left());
            self.put(&rest[..n]);
            rest = &rest[n..];
        }
        self.prev = start;
        start
    }

    /// Appends a record whose body is only `main` as main data.
    pub fn record_with_main_data(&mut self, rmid: u8, info: u8, xid: u32, main: &[u8]) -> Lsn {
        self.record(rmid, info, xid, &main_data_body(main))
    }

    /// Appends an `XLOG_SWITCH` record and the rest of its segment (page headers and zeros, as
    /// the server leaves it); returns the record's LSN.
    pub fn switch(&mut self) -> Lsn {
        let lsn = self.record(0, 0x40, 0, &[]);
        let seg = u64::from(self.segment_size);
        while self.pos % seg != 0 {
            if self.pos % BLCKSZ == 0 {
                self.page_header(0, 0);
            }
            self.zeros(self.page_left());
        }
        lsn
    }

    /// Simulates a crash while the record was written: writes its bytes up to the end of the
    /// current page only (`body` should make it longer than that), then begins the next page
    /// with `XLP_FIRST_IS_OVERWRITE_CONTRECORD`, as the server does after recovery. The next
    /// record's `xl_prev` is the record before the lost one. Returns the lost record's LSN.
    pub fn lost_record(&mut self, rmid: u8, info: u8, xid: u32, body: &[u8]) -> Lsn {
        self.begin_record();
        let start = Lsn(self.pos);
        let rec = encode_record(xid, self.prev, info, rmid, body);
        let n = rec.len().min(self.page_left());
        self.put(&rec[..n]);
        self.zero_fill_page();
        self.page_header(XLP_FIRST_IS_OVERWRITE_CONTRECORD, 0);
        start
    }

    /// Appends raw bytes (for corrupting or padding).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.put(bytes);
    }

    /// Zeros to the end of the current page (a partially written last page).
    pub fn zero_fill_page(&mut self) {
        if self.pos % BLCKSZ != 0 {
            self.zeros(self.page_left());
        }
    }

    fn begin_record(&mut self) {
        let pad = ((8 - self.pos % 8) % 8) as usize;
        self.zeros(pad);
        if self.pos % BLCKSZ == 0 {
            self.page_header(0, 0);
        }
    }

    fn page_left(&self) -> usize {
        (BLCKSZ - self.pos % BLCKSZ) as usize
    }

    fn put(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        self.pos += bytes.len() as u64;
    }

    fn zeros(&mut self, n: usize) {
        self.out.resize(self.out.len() + n, 0);
        self.pos += n as u64;
    }

    fn page_header(&mut self, flags: u16, rem_len: u32) {
        let long = self.pos % u64::from(self.segment_size) == 0;
        let info = flags | XLP_BKP_REMOVABLE | if long { XLP_LONG_HEADER } else { 0 };
        let mut h = Vec::with_capacity(40);
        h.extend_from_slice(&self.version.magic().to_le_bytes());
        h.extend_from_slice(&info.to_le_bytes());
        h.extend_from_slice(&self.timeline.0.to_le_bytes());
        h.extend_from_slice(&self.pos.to_le_bytes());
        h.extend_from_slice(&rem_len.to_le_bytes());
        h.extend_from_slice(&[0; 4]);
        if long {
            h.extend_from_slice(&self.system_id.to_le_bytes());
            h.extend_from_slice(&self.segment_size.to_le_bytes());
            h.extend_from_slice(&XLOG_BLCKSZ.to_le_bytes());
        }
        self.put(&h);
    }
}
