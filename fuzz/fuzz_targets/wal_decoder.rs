//! The engine's sans-IO `WalStreamDecoder`, fed WAL in pieces whose sizes come from the input.
//!
//! Byte 0 chooses: bits 0–1 the segment size (8, 16, 64 KiB or 1 MiB; the decoder accepts
//! sizes below PostgreSQL's 1 MiB minimum so that small inputs cross segments), bits 2–4 the
//! WAL version, bit 5 raw or structured input, bit 6 whether one byte is corrupted. Bytes 1–2
//! seed the piece sizes (1..=4096), bytes 3–5 place and choose the corruption.
//!
//! - Raw: the rest of the input is the WAL stream itself, from a segment boundary.
//! - Structured: the rest is a list of operations for the synthetic writer (records with raw
//!   bodies or with main data only, long records, switches, lost records, timeline steps), so
//!   page headers and CRCs are right and the fuzzer reaches the record body parsers.
//!
//! Checked, beyond never panicking:
//! - decoding in pieces gives exactly what decoding in one piece gives (records, error, end of
//!   WAL, incomplete tail);
//! - records move forward, each ends after it starts, errors are at or after the start;
//! - structured and not corrupted: the records are the ones written, in order, with the same
//!   position, header fields and length; an error can only be a malformed body, at a record
//!   whose body the fuzzer chose; and decoding segment by segment (`successor`, tails) gives the
//!   same records as one stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_engine::format::{Lsn, TimelineId};
use pgkeep_engine::wal::decode::synth::{main_data_body, WalWriter};
use pgkeep_engine::wal::decode::{DecodedRecord, WalDecodeError, WalStreamDecoder, WalVersion};

/// Keeps the written WAL small enough for many runs per second.
const MAX_WAL: u64 = 1 << 20;

#[derive(Debug, PartialEq)]
struct Outcome {
    records: Vec<DecodedRecord>,
    error: Option<WalDecodeError>,
    end_of_wal: Option<Lsn>,
    tail: Option<(Lsn, Vec<u8>)>,
}

/// A small deterministic generator for piece sizes.
struct Pieces(u32);

impl Pieces {
    fn next(&mut self) -> usize {
        // xorshift32; the seed is never 0.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        1 + (self.0 % 4096) as usize
    }
}

fn run(
    mut d: WalStreamDecoder,
    bytes: &[u8],
    mut pieces: Option<Pieces>,
) -> (Outcome, WalStreamDecoder) {
    // A primed record begins before the decoder's start.
    let floor = d
        .incomplete_tail()
        .map_or(d.start(), |(l, _)| l.min(d.start()));
    let mut records: Vec<DecodedRecord> = Vec::new();
    let mut error = None;
    let mut rest = bytes;
    'feed: loop {
        loop {
            match d.poll() {
                Ok(Some(r)) => {
                    assert!(r.lsn >= floor, "record before the start");
                    assert!(r.end > r.lsn, "record ends before it starts");
                    if let Some(last) = records.last() {
                        assert!(r.lsn >= last.end, "records overlap or go back");
                    }
                    records.push(r);
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(e.lsn() >= floor, "error before the start: {e}");
                    assert_eq!(d.poll(), Err(e.clone()), "errors stick");
                    error = Some(e);
                    break 'feed;
                }
            }
        }
        if rest.is_empty() {
            break;
        }
        let n = pieces
            .as_mut()
            .map_or(rest.len(), Pieces::next)
            .min(rest.len());
        d.feed(&rest[..n]);
        rest = &rest[n..];
    }
    let outcome = Outcome {
        records,
        error,
        end_of_wal: d.end_of_wal(),
        tail: d.incomplete_tail().map(|(l, b)| (l, b.to_vec())),
    };
    (outcome, d)
}

/// What the writer wrote: each record's position and header fields, and whether its body was
/// chosen by the fuzzer (and so may be refused as malformed).
struct Written {
    lsn: Lsn,
    rmid: u8,
    info: u8,
    xid: u32,
    may_be_malformed: bool,
}

fn structured(ops: &[u8], start: Lsn, seg: u32, version: WalVersion) -> (Vec<u8>, Vec<Written>) {
    let mut w = WalWriter::new(start, seg, version);
    let mut written = Vec::new();
    let mut tli = 1;
    let mut ops = ops;
    let take = |ops: &mut &[u8], n: usize| -> Vec<u8> {
        let n = n.min(ops.len());
        let (a, b) = ops.split_at(n);
        *ops = b;
        a.to_vec()
    };
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        if w.position().0 - start.0 > MAX_WAL {
            break;
        }
        let head = take(&mut ops, 4);
        let [rmid, info, len_lo, len_hi] = <[u8; 4]>::try_from(&head[..]).unwrap_or_default();
        let len = usize::from(u16::from_le_bytes([len_lo, len_hi]));
        // Only op 5 writes a switch (the writer then fills the rest of the segment).
        let info = if rmid % 4 == 0 && info & 0xF0 == 0x40 {
            info ^ 0x40
        } else {
            info
        };
        let xid = u32::from(op) << 8 | u32::from(len_lo);
        match op % 8 {
            // A record whose whole body comes from the input.
            0 | 1 => {
                let body = take(&mut ops, len % 512);
                let lsn = w.record(rmid, info, xid, &body);
                written.push(Written {
                    lsn,
                    rmid,
                    info,
                    xid,
                    may_be_malformed: true,
                });
            }
            // Main data only, from the input: the record kinds' parsers see arbitrary data.
            2 | 3 => {
                let rmid = rmid % 4; // XLOG, Transaction, Storage, or another one
                let main = take(&mut ops, len % 512);
                let lsn = w.record_with_main_data(rmid, info, xid, &main);
                written.push(Written {
                    lsn,
                    rmid,
                    info,
                    xid,
                    may_be_malformed: rmid <= 2,
                });
            }
            // A long record of another rmgr: spans pages and segments.
            4 => {
                let main = vec![rmid; len * 4];
                let lsn = w.record_with_main_data(21, info, xid, &main);
                written.push(Written {
                    lsn,
                    rmid: 21,
                    info,
                    xid,
                    may_be_malformed: false,
                });
            }
            5 => {
                let lsn = w.switch();
                written.push(Written {
                    lsn,
                    rmid: 0,
                    info: 0x40,
                    xid: 0,
                    may_be_malformed: false,
                });
            }
            // A record lost in a crash: longer than any page, so it never fits.
            6 => {
                w.lost_record(21, 0, xid, &main_data_body(&[rmid; 8300]));
            }
            _ => {
                tli += 1;
                w.set_timeline(TimelineId(tli));
            }
        }
    }
    (w.into_bytes(), written)
}

fuzz_target!(|data: &[u8]| {
    let Some((prefix, body)) = data.split_first_chunk::<6>() else {
        return;
    };
    let [opts, seed_lo, seed_hi, at_lo, at_hi, mask] = *prefix;
    let seg: u32 = [8 << 10, 16 << 10, 64 << 10, 1 << 20][usize::from(opts & 3)];
    let version = WalVersion::ALL[usize::from(opts >> 2 & 7) % WalVersion::ALL.len()];
    let is_structured = opts & 0x20 != 0;
    let corrupt = opts & 0x40 != 0;
    let start = Lsn(u64::from(seg) * (2 + u64::from(seed_lo & 3)));

    let (mut bytes, written) = if is_structured {
        let (b, w) = structured(body, start, seg, version);
        (b, Some(w))
    } else {
        (body.to_vec(), None)
    };
    if corrupt && !bytes.is_empty() {
        let at = usize::from(u16::from_le_bytes([at_lo, at_hi])) * 17 % bytes.len();
        bytes[at] ^= mask.max(1);
    }

    let seed = u32::from(u16::from_le_bytes([seed_lo, seed_hi])) | 0x1_0000;
    let (whole, _) = run(WalStreamDecoder::new(start, seg), &bytes, None);
    let (split, _) = run(
        WalStreamDecoder::new(start, seg),
        &bytes,
        Some(Pieces(seed)),
    );
    assert_eq!(whole, split, "decoding depends on how the input is split");

    let Some(written) = written.filter(|_| !corrupt) else {
        return;
    };
    assert!(whole.records.len() <= written.len());
    for (r, w) in whole.records.iter().zip(&written) {
        assert_eq!(
            (r.lsn, r.rmid, r.info, r.xid),
            (w.lsn, w.rmid, w.info, w.xid),
            "not the record written"
        );
    }
    match &whole.error {
        None => assert_eq!(
            whole.records.len(),
            written.len(),
            "records missing without an error"
        ),
        Some(e) => {
            let next = written.get(whole.records.len());
            assert!(
                next.is_some_and(|next| next.may_be_malformed
                    && matches!(e, WalDecodeError::MalformedRecord { lsn, .. } if *lsn == next.lsn)),
                "unexpected error on well-formed WAL: {e}"
            );
        }
    }

    // Segment by segment, handing tails over, gives the same records and error.
    let mut d = WalStreamDecoder::new(start, seg);
    let mut records = Vec::new();
    let mut error = None;
    for (i, segment) in bytes.chunks(seg as usize).enumerate() {
        if i > 0 {
            d = d.successor();
        }
        let (out, next) = run(d, segment, Some(Pieces(seed ^ i as u32)));
        records.extend(out.records);
        d = next;
        if out.error.is_some() {
            error = out.error;
            break;
        }
    }
    assert_eq!(
        records, whole.records,
        "segment by segment differs from one stream"
    );
    assert_eq!(error, whole.error, "segment by segment fails differently");
});
