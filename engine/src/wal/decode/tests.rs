//! Round trips through the synthetic writer: what was written is what is decoded, whatever
//! the split of the input, across pages and segments; and every kind of damage is reported
//! with the position it is at.

use pgkeep_format::pg::{Lsn, TimelineId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::synth::{encode_record, main_data_body, WalWriter, DEFAULT_SYSTEM_ID};
use super::*;

/// Small segments (8 pages) so that a few records cross segment boundaries.
const SEG: u32 = 64 << 10;
const START: Lsn = Lsn(3 * SEG as u64);

const RM_XLOG: u8 = 0;
const RM_XACT: u8 = 1;
const RM_SMGR: u8 = 2;
const RM_HEAP: u8 = 10;
const RM_LOGICALMSG: u8 = 21;

use super::xact::{
    XACT_XINFO_HAS_DBINFO as XINFO_DBINFO, XACT_XINFO_HAS_DROPPED_STATS as XINFO_DROPPED_STATS,
    XACT_XINFO_HAS_GID as XINFO_GID, XACT_XINFO_HAS_INVALS as XINFO_INVALS,
    XACT_XINFO_HAS_ORIGIN as XINFO_ORIGIN, XACT_XINFO_HAS_RELFILELOCATORS as XINFO_RELS,
    XACT_XINFO_HAS_SUBXACTS as XINFO_SUBXACTS, XACT_XINFO_HAS_TWOPHASE as XINFO_TWOPHASE,
    XLOG_XACT_HAS_INFO as HAS_INFO,
};

/// The parts of a commit/abort record's main data (see `xact.rs`).
#[derive(Default, Clone)]
struct XactSpec {
    time: i64,
    db: Option<u32>,
    subxacts: Vec<u32>,
    rels: Vec<RelFileLocator>,
    stats: usize,
    invals: usize,
    twophase: Option<u32>,
    gid: Option<&'static str>,
    origin: bool,
}

impl XactSpec {
    fn encode(&self, version: WalVersion) -> Vec<u8> {
        let mut xinfo = 0;
        let mut m = self.time.to_le_bytes().to_vec();
        let mut rest = Vec::new();
        if let Some(db) = self.db {
            xinfo |= XINFO_DBINFO;
            rest.extend_from_slice(&db.to_le_bytes());
            rest.extend_from_slice(&1663u32.to_le_bytes());
        }
        if !self.subxacts.is_empty() {
            xinfo |= XINFO_SUBXACTS;
            rest.extend_from_slice(&(self.subxacts.len() as i32).to_le_bytes());
            for x in &self.subxacts {
                rest.extend_from_slice(&x.to_le_bytes());
            }
        }
        if !self.rels.is_empty() {
            xinfo |= XINFO_RELS;
            rest.extend_from_slice(&(self.rels.len() as i32).to_le_bytes());
            for r in &self.rels {
                for v in [r.spc, r.db, r.rel] {
                    rest.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        if self.stats > 0 {
            xinfo |= XINFO_DROPPED_STATS;
            rest.extend_from_slice(&(self.stats as i32).to_le_bytes());
            let item = if version == WalVersion::V18 { 16 } else { 12 };
            rest.extend(std::iter::repeat_n(0xAB, self.stats * item));
        }
        if self.invals > 0 {
            xinfo |= XINFO_INVALS;
            rest.extend_from_slice(&(self.invals as i32).to_le_bytes());
            rest.extend(std::iter::repeat_n(0xCD, self.invals * 16));
        }
        if let Some(x) = self.twophase {
            xinfo |= XINFO_TWOPHASE;
            rest.extend_from_slice(&x.to_le_bytes());
            if let Some(gid) = self.gid {
                xinfo |= XINFO_GID;
                rest.extend_from_slice(gid.as_bytes());
                rest.push(0);
            }
        }
        if self.origin {
            xinfo |= XINFO_ORIGIN;
            rest.extend_from_slice(&[0xEE; 16]);
        }
        if xinfo != 0 {
            m.extend_from_slice(&xinfo.to_le_bytes());
        }
        m.extend_from_slice(&rest);
        m
    }

    fn info(&self, op: u8) -> u8 {
        let plain = self.db.is_none()
            && self.subxacts.is_empty()
            && self.rels.is_empty()
            && self.stats == 0
            && self.invals == 0
            && self.twophase.is_none()
            && !self.origin;
        if plain {
            op
        } else {
            op | HAS_INFO
        }
    }

    fn expected(&self, xid: u32) -> XactInfo {
        XactInfo {
            time: PgTimestamp(self.time),
            xid,
            subxacts: self.subxacts.clone(),
            dropped_relations: self.rels.clone(),
            db_id: self.db,
            gid: self.gid.map(str::to_owned),
        }
    }
}

fn restore_point_main(time: i64, name: &str) -> Vec<u8> {
    let mut m = time.to_le_bytes().to_vec();
    let mut n = [0u8; 64];
    n[..name.len()].copy_from_slice(name.as_bytes());
    m.extend_from_slice(&n);
    m
}

/// A body with block references (full-page image with a hole, data, a second block of the
/// same relation) before `main`, laid out per `version`'s image flags.
fn heap_body(version: WalVersion, compressed: bool, main: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    let image = vec![0x11u8; 300];
    let data = vec![0x22u8; 40];
    // block 0: image + data, relation follows
    b.extend_from_slice(&[0, 0x10 | 0x20]);
    b.extend_from_slice(&(data.len() as u16).to_le_bytes());
    b.extend_from_slice(&(image.len() as u16).to_le_bytes());
    b.extend_from_slice(&64u16.to_le_bytes()); // hole offset
    let compress_flag = match version {
        WalVersion::V13 | WalVersion::V14 => 0x02,
        _ => 0x04, // pglz
    };
    if compressed {
        b.push(0x01 | compress_flag);
        b.extend_from_slice(&1000u16.to_le_bytes()); // hole length
    } else {
        b.push(0x01);
    }
    for v in [1663u32, 5, 16384] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&7u32.to_le_bytes());
    // block 3: data only, same relation
    b.extend_from_slice(&[3, 0x20 | 0x80]);
    b.extend_from_slice(&5u16.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.push(252); // top-level xid
    b.extend_from_slice(&900u32.to_le_bytes());
    let header = main_data_body(main);
    b.extend_from_slice(&header[..header.len() - main.len()]);
    b.extend_from_slice(&image);
    b.extend_from_slice(&data);
    b.extend_from_slice(&[0x33; 5]);
    b.extend_from_slice(main);
    b
}

/// What the writer wrote: each record's LSN, its expected kind, and its xid.
struct Written {
    bytes: Vec<u8>,
    records: Vec<(Lsn, RecordKind, u32)>,
    /// The switch record's LSN.
    switch: Lsn,
}

/// A stream exercising every record kind, block layouts, records spanning several pages and
/// segment boundaries, a switch, then more records and trailing zeros.
fn sample_stream(version: WalVersion) -> Written {
    let mut w = WalWriter::new(START, SEG, version);
    let mut records = Vec::new();
    let mut push = |lsn, kind, xid| records.push((lsn, kind, xid));

    let commit = XactSpec {
        time: 816_000_000_123_456,
        db: Some(5),
        subxacts: vec![741, 742],
        rels: vec![
            RelFileLocator {
                spc: 1663,
                db: 5,
                rel: 16387,
            },
            RelFileLocator {
                spc: 1663,
                db: 5,
                rel: 16390,
            },
        ],
        stats: 2,
        invals: 3,
        ..Default::default()
    };
    let lsn = w.record_with_main_data(RM_XACT, commit.info(0x00), 740, &commit.encode(version));
    push(lsn, RecordKind::Commit(commit.expected(740)), 740);

    let lsn = w.record_with_main_data(
        RM_XLOG,
        0x70,
        0,
        &restore_point_main(816_000_000_200_000, "before_drop"),
    );
    push(
        lsn,
        RecordKind::RestorePoint {
            time: PgTimestamp(816_000_000_200_000),
            name: "before_drop".into(),
        },
        0,
    );

    let abort = XactSpec {
        time: 816_000_000_300_000,
        ..Default::default()
    };
    let lsn = w.record_with_main_data(RM_XACT, abort.info(0x20), 743, &abort.encode(version));
    push(lsn, RecordKind::Abort(abort.expected(743)), 743);

    // Heap record with block references (and a full-page image) before its main data.
    let lsn = w.record(RM_HEAP, 0x00, 744, &heap_body(version, false, &[1, 2, 3]));
    push(lsn, RecordKind::Other, 744);
    let lsn = w.record(RM_HEAP, 0x00, 744, &heap_body(version, true, &[4, 5]));
    push(lsn, RecordKind::Other, 744);

    // Prepare, then COMMIT PREPARED with GID and origin after stats and invalidations (the
    // two-phase xid is only found if every part before it is sized right).
    let mut prep = Vec::new();
    for v in [0x57F9_4534u32, 250, 745, 5] {
        prep.extend_from_slice(&v.to_le_bytes());
    }
    prep.extend_from_slice(&816_000_000_400_000i64.to_le_bytes());
    prep.extend_from_slice(&[0; 40]);
    let lsn = w.record_with_main_data(RM_XACT, 0x10, 745, &prep);
    push(
        lsn,
        RecordKind::Prepare {
            xid: 745,
            time: PgTimestamp(816_000_000_400_000),
        },
        745,
    );
    let cp = XactSpec {
        time: 816_000_000_500_000,
        db: Some(5),
        stats: 1,
        invals: 2,
        twophase: Some(745),
        gid: Some("p1"),
        origin: true,
        ..Default::default()
    };
    let lsn = w.record_with_main_data(RM_XACT, cp.info(0x30), 0, &cp.encode(version));
    push(lsn, RecordKind::CommitPrepared(cp.expected(745)), 0);
    let ap = XactSpec {
        time: 816_000_000_600_000,
        subxacts: vec![9],
        twophase: Some(746),
        ..Default::default()
    };
    let lsn = w.record_with_main_data(RM_XACT, ap.info(0x40), 0, &ap.encode(version));
    push(lsn, RecordKind::AbortPrepared(ap.expected(746)), 0);

    let mut trunc = 12u32.to_le_bytes().to_vec();
    for v in [1663u32, 5, 16384, 7] {
        trunc.extend_from_slice(&v.to_le_bytes());
    }
    let lsn = w.record_with_main_data(RM_SMGR, 0x20, 0, &trunc);
    push(
        lsn,
        RecordKind::Truncate {
            locator: RelFileLocator {
                spc: 1663,
                db: 5,
                rel: 16384,
            },
            block: 12,
        },
        0,
    );

    let mut ckpt = (START.0 + 40).to_le_bytes().to_vec();
    ckpt.extend_from_slice(&[0; 80]);
    let lsn = w.record_with_main_data(RM_XLOG, 0x10, 0, &ckpt);
    push(
        lsn,
        RecordKind::CheckpointOnline {
            redo: Lsn(START.0 + 40),
        },
        0,
    );
    let lsn = w.record_with_main_data(RM_XLOG, 0x00, 0, &ckpt);
    push(
        lsn,
        RecordKind::CheckpointShutdown {
            redo: Lsn(START.0 + 40),
        },
        0,
    );
    let lsn = w.record_with_main_data(RM_XLOG, 0x50, 0, &START.0.to_le_bytes());
    push(lsn, RecordKind::BackupEnd { start: START }, 0);

    // A 30000-byte record: spans four or five pages.
    let lsn = w.record_with_main_data(RM_LOGICALMSG, 0x00, 747, &vec![0x78; 30_000]);
    push(lsn, RecordKind::Other, 747);

    // Small records until past the first segment boundary, then a long one across the next.
    let mut i = 0u32;
    while w.position().0 < START.0 + u64::from(SEG) + 1000 {
        let lsn = w.record_with_main_data(RM_HEAP, 0x00, 800 + i, &[i as u8; 37]);
        push(lsn, RecordKind::Other, 800 + i);
        i += 1;
    }
    while w.position().0 < START.0 + 2 * u64::from(SEG) - 5000 {
        let lsn = w.record_with_main_data(RM_HEAP, 0x00, 800 + i, &[i as u8; 100]);
        push(lsn, RecordKind::Other, 800 + i);
        i += 1;
    }
    let lsn = w.record_with_main_data(RM_LOGICALMSG, 0x00, 999, &vec![0x79; 20_000]);
    push(lsn, RecordKind::Other, 999);
    let commit2 = XactSpec {
        time: 816_000_001_000_000,
        ..Default::default()
    };
    let lsn = w.record_with_main_data(RM_XACT, 0x00, 999, &commit2.encode(version));
    push(lsn, RecordKind::Commit(commit2.expected(999)), 999);

    let switch = w.switch();
    push(switch, RecordKind::Switch, 0);
    let after = XactSpec {
        time: 816_000_002_000_000,
        ..Default::default()
    };
    let lsn = w.record_with_main_data(RM_XACT, 0x00, 1000, &after.encode(version));
    push(lsn, RecordKind::Commit(after.expected(1000)), 1000);
    w.raw(&[0; 100]); // end of WAL: a zero length where the next record would be

    let mut bytes = w.into_bytes();
    // The rest of the switch's segment is never read: garbage there must not matter.
    let seg_end = (switch.0 / u64::from(SEG) + 1) * u64::from(SEG);
    let garbage_from = (switch.0 - START.0) as usize + 64;
    let garbage_to = (seg_end - START.0) as usize;
    for b in &mut bytes[garbage_from..garbage_to] {
        *b = 0xFF;
    }
    Written {
        bytes,
        records,
        switch,
    }
}

/// Feeds `bytes` in pieces whose lengths `next_len` chooses, polling after each.
fn decode(
    mut d: WalStreamDecoder,
    bytes: &[u8],
    mut next_len: impl FnMut() -> usize,
) -> (Vec<DecodedRecord>, WalStreamDecoder) {
    let mut out = Vec::new();
    let mut rest = bytes;
    loop {
        while let Some(r) = d.poll().expect("decodes") {
            out.push(r);
        }
        if rest.is_empty() {
            return (out, d);
        }
        let n = next_len().clamp(1, rest.len());
        d.feed(&rest[..n]);
        rest = &rest[n..];
    }
}

fn check_against(written: &Written, got: &[DecodedRecord]) {
    let lsns: Vec<Lsn> = got.iter().map(|r| r.lsn).collect();
    let want: Vec<Lsn> = written.records.iter().map(|r| r.0).collect();
    assert_eq!(lsns, want, "record positions");
    let mut prev = None;
    for (r, (lsn, kind, xid)) in got.iter().zip(&written.records) {
        assert_eq!(&r.kind, kind, "kind at {lsn}");
        assert_eq!(r.xid, *xid, "xid at {lsn}");
        if let Some(p) = prev {
            assert_eq!(r.prev, p, "prev link at {lsn}");
        }
        assert!(r.end.0 >= r.lsn.0 + u64::from(r.total_len), "end at {lsn}");
        assert_eq!(r.end.0 % 8, 0);
        prev = Some(r.lsn);
    }
}

#[test]
fn round_trip_whole_and_in_every_split() {
    for version in WalVersion::ALL {
        let w = sample_stream(version);
        let (whole, d) = decode(WalStreamDecoder::new(START, SEG), &w.bytes, || usize::MAX);
        check_against(&w, &whole);
        assert_eq!(d.version(), Some(version));
        assert_eq!(d.system_id(), Some(DEFAULT_SYSTEM_ID));
        assert_eq!(d.timeline(), Some(TimelineId(1)));
        assert_eq!(d.skipped_continuation(), None);
        let last = whole.last().expect("records");
        assert_eq!(
            d.end_of_wal(),
            Some(last.end),
            "{version}: WAL ends after the last record"
        );
        assert_eq!(d.records_decoded(), whole.len() as u64);
        let switch = whole.iter().find(|r| r.lsn == w.switch).expect("switch");
        assert_eq!(
            switch.end.0 % u64::from(SEG),
            0,
            "a switch ends its segment"
        );

        let (bytewise, _) = decode(WalStreamDecoder::new(START, SEG), &w.bytes, || 1);
        assert_eq!(bytewise, whole, "{version}: one byte at a time");
        let mut rng = StdRng::seed_from_u64(0x5EED + version.major() as u64);
        for _ in 0..20 {
            let max = [3, 30, 700, 9000][rng.gen_range(0..4)];
            let (split, _) = decode(WalStreamDecoder::new(START, SEG), &w.bytes, || {
                rng.gen_range(1..=max)
            });
            assert_eq!(split, whole, "{version}: random split");
        }
    }
}

#[test]
fn segment_by_segment_with_tails_equals_the_whole_stream() {
    let w = sample_stream(WalVersion::V16);
    let (whole, _) = decode(WalStreamDecoder::new(START, SEG), &w.bytes, || usize::MAX);
    let mut got = Vec::new();
    let mut straddling = 0;
    let mut d = WalStreamDecoder::new(START, SEG).expect_system_id(DEFAULT_SYSTEM_ID);
    for (i, segment) in w.bytes.chunks(SEG as usize).enumerate() {
        if i > 0 {
            d = d.successor();
            assert_eq!(d.start().0, START.0 + i as u64 * u64::from(SEG));
        }
        let primed = d.incomplete_tail().map(|(lsn, _)| lsn);
        let (records, next) = decode(d, segment, || 4096);
        if let Some(lsn) = primed {
            assert_eq!(
                records.first().map(|r| r.lsn),
                Some(lsn),
                "the primed record comes first"
            );
            straddling += 1;
        }
        got.extend(records);
        d = next;
    }
    assert!(straddling >= 2, "records straddling segments: {straddling}");
    assert_eq!(got, whole);
}

#[test]
fn a_segment_decoded_alone_skips_the_continuation_it_starts_with() {
    let w = sample_stream(WalVersion::V15);
    let seg2 = START.0 + u64::from(SEG);
    let bytes = &w.bytes[SEG as usize..];
    let (records, d) = decode(WalStreamDecoder::new(Lsn(seg2), SEG), bytes, || 777);
    let (from, len) = d
        .skipped_continuation()
        .expect("the first page continues a record");
    assert_eq!(from, Lsn(seg2 + 40), "after the long header");
    let straddler = w
        .records
        .iter()
        .rev()
        .find(|r| r.0 .0 < seg2)
        .expect("one")
        .0;
    assert_eq!(
        records.first().map(|r| r.lsn.0),
        Some(maxalign_test(from.0 + u64::from(len)))
    );
    let want: Vec<Lsn> = w
        .records
        .iter()
        .map(|r| r.0)
        .filter(|l| l.0 > seg2)
        .collect();
    assert_eq!(records.iter().map(|r| r.lsn).collect::<Vec<_>>(), want);
    assert!(straddler.0 < seg2);
    // The first record's xl_prev (the skipped one) is only checked for pointing back.
    assert_eq!(records[0].prev, straddler);
}

fn maxalign_test(x: u64) -> u64 {
    (x + 7) & !7
}

#[test]
fn every_prefix_gives_a_prefix_of_the_records_and_never_panics() {
    let w = sample_stream(WalVersion::V17);
    let (whole, _) = decode(WalStreamDecoder::new(START, SEG), &w.bytes, || usize::MAX);
    let mut len = 0;
    while len < w.bytes.len() {
        let (got, d) = decode(WalStreamDecoder::new(START, SEG), &w.bytes[..len], || {
            usize::MAX
        });
        assert_eq!(got[..], whole[..got.len()], "prefix of {len} bytes");
        if let Some((lsn, tail)) = d.incomplete_tail() {
            assert_eq!(
                Some(lsn),
                whole.get(got.len()).map(|r| r.lsn),
                "the tail is the next record"
            );
            assert!(!tail.is_empty());
        }
        len += 1 + len / 7;
    }
}

#[test]
fn a_corrupt_byte_is_a_crc_error_naming_the_record() {
    let w = sample_stream(WalVersion::V15);
    let (_, kind, _) = &w.records[1];
    assert!(matches!(kind, RecordKind::RestorePoint { .. }));
    let lsn = w.records[1].0;
    let mut bytes = w.bytes.clone();
    bytes[(lsn.0 - START.0) as usize + 40] ^= 0x01; // inside the restore point's name
    let mut d = WalStreamDecoder::new(START, SEG);
    d.feed(&bytes);
    assert_eq!(d.poll().map(|r| r.map(|r| r.lsn)), Ok(Some(w.records[0].0)));
    let err = d.poll().expect_err("corrupt");
    assert!(
        matches!(err, WalDecodeError::CrcMismatch { lsn: l, .. } if l == lsn),
        "{err}"
    );
    assert!(err.to_string().contains(&lsn.to_string()), "{err}");
    assert_eq!(d.poll(), Err(err), "the error sticks");
}

#[test]
fn corrupt_page_headers_are_reported_at_the_page() {
    let w = sample_stream(WalVersion::V15);
    let page = 8192usize; // second page of the first segment
    let at = Lsn(START.0 + page as u64);
    type Check = fn(&WalDecodeError) -> bool;
    let cases: Vec<(usize, u8, Check)> = vec![
        (0, 0x01, |e| {
            matches!(e, WalDecodeError::UnknownVersion { magic: 0xD111, .. })
        }),
        (2, 0x40, |e| {
            matches!(e, WalDecodeError::InvalidPageInfo { .. })
        }),
        (9, 0x01, |e| {
            matches!(e, WalDecodeError::PageAddressMismatch { .. })
        }),
        (16, 0x01, |e| {
            matches!(e, WalDecodeError::ContinuationMismatch { .. })
        }),
        (0, 0x09, |e| {
            matches!(
                e,
                WalDecodeError::VersionChanged { found: 0xD119, .. }
                    | WalDecodeError::UnknownVersion { .. }
            )
        }),
    ];
    for (offset, xor, check) in cases {
        let mut bytes = w.bytes.clone();
        bytes[page + offset] ^= xor;
        let mut d = WalStreamDecoder::new(START, SEG);
        d.feed(&bytes);
        let err = loop {
            match d.poll() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("no error for byte {offset}"),
                Err(e) => break e,
            }
        };
        assert!(check(&err), "byte {offset}: {err}");
        assert_eq!(err.lsn(), at, "byte {offset}: {err}");
    }
    // A different version's magic on a later page.
    let mut bytes = w.bytes.clone();
    bytes[page..page + 2].copy_from_slice(&WalVersion::V16.magic().to_le_bytes());
    let mut d = WalStreamDecoder::new(START, SEG);
    d.feed(&bytes);
    let err = std::iter::from_fn(|| Some(d.poll()))
        .find_map(Result::err)
        .expect("error");
    assert_eq!(
        err,
        WalDecodeError::VersionChanged {
            lsn: at,
            expected: 0xD110,
            found: 0xD113
        }
    );
}

#[test]
fn long_header_checks() {
    let w = sample_stream(WalVersion::V18);
    let first = |d: WalStreamDecoder, bytes: &[u8]| {
        let mut d = d;
        d.feed(bytes);
        d.poll()
    };
    let err = first(
        WalStreamDecoder::new(START, SEG).expect_system_id(42),
        &w.bytes,
    )
    .expect_err("sysid");
    assert_eq!(
        err,
        WalDecodeError::WrongSystemId {
            lsn: START,
            expected: 42,
            found: DEFAULT_SYSTEM_ID
        }
    );
    let big = 2 * SEG;
    let err = first(
        WalStreamDecoder::new(Lsn(2 * u64::from(big)), big),
        &w.bytes,
    )
    .expect_err("size");
    assert!(
        matches!(err, WalDecodeError::WrongSegmentSize { expected, found, .. } if expected == big && found == SEG),
        "{err}"
    );
    let mut bytes = w.bytes.clone();
    bytes[36..40].copy_from_slice(&16384u32.to_le_bytes());
    let err = first(WalStreamDecoder::new(START, SEG), &bytes).expect_err("blcksz");
    assert_eq!(
        err,
        WalDecodeError::WrongBlockSize {
            lsn: START,
            found: 16384
        }
    );
    // The first page of a segment must have the long header.
    let mut bytes = w.bytes.clone();
    bytes[2] &= !0x02;
    let err = first(WalStreamDecoder::new(START, SEG), &bytes).expect_err("short at segment start");
    assert!(
        matches!(
            err,
            WalDecodeError::InvalidPageInfo {
                missing_long_header: true,
                ..
            }
        ),
        "{err}"
    );
    // The second segment's long header names another cluster.
    let mut bytes = w.bytes.clone();
    bytes[SEG as usize + 24] ^= 1;
    let mut d = WalStreamDecoder::new(START, SEG);
    d.feed(&bytes);
    let err = std::iter::from_fn(|| Some(d.poll()))
        .find_map(Result::err)
        .expect("error");
    assert!(
        matches!(err, WalDecodeError::WrongSystemId { lsn, .. } if lsn.0 == START.0 + u64::from(SEG)),
        "{err}"
    );
}

#[test]
fn timelines_may_grow_up_to_the_expected_one_and_never_shrink() {
    let mut w = WalWriter::new(START, SEG, WalVersion::V15);
    let mut lsns = Vec::new();
    for i in 0..60u32 {
        if i == 20 {
            w.set_timeline(TimelineId(2)); // pages begun from here on
        }
        lsns.push(w.record_with_main_data(RM_HEAP, 0, i, &[0; 300]));
    }
    let bytes = w.into_bytes();
    let (got, d) = decode(
        WalStreamDecoder::new(START, SEG).expect_timeline(TimelineId(2)),
        &bytes,
        || 1000,
    );
    assert_eq!(got.len(), 60);
    assert_eq!(d.timeline(), Some(TimelineId(2)));
    let mut d = WalStreamDecoder::new(START, SEG).expect_timeline(TimelineId(1));
    d.feed(&bytes);
    let err = std::iter::from_fn(|| Some(d.poll()))
        .find_map(Result::err)
        .expect("error");
    assert!(
        matches!(
            err,
            WalDecodeError::WrongTimeline {
                found: TimelineId(2),
                expected: TimelineId(1),
                ..
            }
        ),
        "{err}"
    );
    // Going back from 2 to 1 on a later page.
    let mut bytes = bytes;
    let last_page = (bytes.len() - 1) / 8192 * 8192;
    bytes[last_page + 4..last_page + 8].copy_from_slice(&1u32.to_le_bytes());
    let mut d = WalStreamDecoder::new(START, SEG);
    d.feed(&bytes);
    let err = std::iter::from_fn(|| Some(d.poll()))
        .find_map(Result::err)
        .expect("error");
    assert!(
        matches!(
            err,
            WalDecodeError::TimelineWentBack {
                previous: TimelineId(2),
                found: TimelineId(1),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn prev_links_are_checked() {
    // Exact check when the previous record is known.
    let mut w = WalWriter::new(START, SEG, WalVersion::V15).with_prev(Lsn(0x2_FF00));
    w.record_with_main_data(RM_HEAP, 0, 1, &[1]);
    let mut d = WalStreamDecoder::new(START, SEG).expect_prev_record(Lsn(0x2_FF08));
    d.feed(w.bytes());
    let err = d.poll().expect_err("mismatch");
    assert_eq!(
        err,
        WalDecodeError::PrevLinkMismatch {
            lsn: Lsn(START.0 + 40),
            expected: Lsn(0x2_FF08),
            found: Lsn(0x2_FF00)
        }
    );
    let mut d = WalStreamDecoder::new(START, SEG);
    d.feed(w.bytes());
    assert!(d.poll().expect("only points backwards").is_some());
    // Without it, the link must at least point backwards.
    let mut w = WalWriter::new(START, SEG, WalVersion::V15).with_prev(Lsn(START.0 + 40));
    w.record_with_main_data(RM_HEAP, 0, 1, &[1]);
    let mut d = WalStreamDecoder::new(START, SEG);
    d.feed(w.bytes());
    assert!(matches!(
        d.poll(),
        Err(WalDecodeError::PrevLinkNotBefore { .. })
    ));
}

#[test]
fn record_lengths_are_bounded_before_waiting_for_bytes() {
    for (len, what) in [(5u32, "shorter than a header"), (0x4000_0001, "over 1 GiB")] {
        let mut w = WalWriter::new(START, SEG, WalVersion::V15);
        w.record_with_main_data(RM_HEAP, 0, 1, &[1]);
        let at = w.position().0.next_multiple_of(8);
        let mut bytes = w.into_bytes();
        bytes.resize((at - START.0) as usize, 0);
        bytes.extend_from_slice(&len.to_le_bytes());
        let mut d = WalStreamDecoder::new(START, SEG);
        d.feed(&bytes);
        assert!(d.poll().expect("first").is_some());
        assert_eq!(
            d.poll(),
            Err(WalDecodeError::InvalidRecordLength { lsn: Lsn(at), len }),
            "{what}"
        );
    }
    // A legal but large length: the decoder buffers what arrives, nothing more.
    let mut w = WalWriter::new(START, SEG, WalVersion::V15);
    let body = main_data_body(&vec![0; 1 << 20]);
    let lsn = w.record(RM_LOGICALMSG, 0, 1, &body);
    let bytes = w.into_bytes();
    let mut d = WalStreamDecoder::new(START, SEG);
    d.feed(&bytes[..5000]);
    assert_eq!(d.poll(), Ok(None));
    assert_eq!(
        d.incomplete_tail().map(|(l, b)| (l, b.len())),
        Some((lsn, 5000 - 40))
    );
}

#[test]
fn overwritten_contrecord_is_abandoned_and_decoding_goes_on() {
    let mut w = WalWriter::new(START, SEG, WalVersion::V15);
    let before = w.record_with_main_data(RM_HEAP, 0, 1, &[1; 100]);
    let lost = w.lost_record(RM_LOGICALMSG, 0, 2, &main_data_body(&[9; 20_000]));
    let mut m = lost.0.to_le_bytes().to_vec();
    m.extend_from_slice(&77i64.to_le_bytes());
    let ow = w.record_with_main_data(RM_XLOG, 0xD0, 0, &m);
    let after = w.record_with_main_data(RM_HEAP, 0, 3, &[3; 10]);
    let (got, d) = decode(WalStreamDecoder::new(START, SEG), w.bytes(), || 333);
    assert_eq!(
        got.iter().map(|r| r.lsn).collect::<Vec<_>>(),
        vec![before, ow, after]
    );
    assert_eq!(
        got[1].prev, before,
        "the overwrite record links to the record before the lost one"
    );
    assert_eq!(
        got[1].kind,
        RecordKind::OverwriteContrecord {
            overwritten: lost,
            time: PgTimestamp(77)
        }
    );
    assert_eq!(d.overwritten_record(), Some(lost));
}

#[test]
fn end_of_wal_at_zeros_and_unwritten_pages() {
    // Zeros right after a record, mid-page.
    let mut w = WalWriter::new(START, SEG, WalVersion::V15);
    let a = w.record_with_main_data(RM_HEAP, 0, 1, &[1; 10]);
    w.zero_fill_page();
    let (got, d) = decode(WalStreamDecoder::new(START, SEG), w.bytes(), || 100);
    assert_eq!(got.len(), 1);
    assert_eq!(d.end_of_wal(), Some(got[0].end));
    assert_eq!(d.next_record_lsn(), Some(got[0].end));
    assert_eq!(got[0].lsn, a);
    // A record that ends exactly at a page end, then a never-written page.
    let mut w = WalWriter::new(START, SEG, WalVersion::V15);
    let body_len = 8192 - 40 - 24;
    let r = w.record(RM_LOGICALMSG, 0, 1, &main_data_body(&vec![5; body_len - 5]));
    assert_eq!(w.position().0 % 8192, 0);
    let mut bytes = w.into_bytes();
    bytes.extend_from_slice(&[0; 8192]);
    let (got, d) = decode(WalStreamDecoder::new(START, SEG), &bytes, || 999);
    assert_eq!(got.iter().map(|r| r.lsn).collect::<Vec<_>>(), vec![r]);
    assert_eq!(d.end_of_wal(), Some(Lsn(START.0 + 8192)));
    // A record cut short by a never-written page: the WAL ends where that record begins.
    let mut w = WalWriter::new(START, SEG, WalVersion::V15);
    w.record_with_main_data(RM_HEAP, 0, 1, &[1; 10]);
    let cut = w.record_with_main_data(RM_LOGICALMSG, 0, 2, &[2; 10_000]);
    let mut bytes = w.into_bytes();
    bytes.truncate(8192);
    bytes.extend_from_slice(&[0; 8192]);
    let (got, d) = decode(WalStreamDecoder::new(START, SEG), &bytes, || 4000);
    assert_eq!(got.len(), 1);
    assert_eq!(d.end_of_wal(), Some(cut));
    assert_eq!(d.incomplete_tail(), None);
    // Bytes fed after the end are ignored.
    let mut d = d;
    d.feed(&[1, 2, 3]);
    assert_eq!(d.poll(), Ok(None));
    // A segment of zeros.
    let (got, d) = decode(WalStreamDecoder::new(START, SEG), &vec![0; 9000], || 100);
    assert!(got.is_empty());
    assert_eq!(d.end_of_wal(), Some(START));
}

#[test]
fn a_record_spanning_whole_segments_is_carried_through_tails() {
    let mut w = WalWriter::new(START, SEG, WalVersion::V18);
    let a = w.record_with_main_data(RM_HEAP, 0, 1, &[1; 10]);
    let big = w.record_with_main_data(RM_LOGICALMSG, 0, 2, &vec![7; 3 * SEG as usize]);
    let c = w.record_with_main_data(RM_HEAP, 0, 3, &[3; 10]);
    let mut got = Vec::new();
    let mut d = WalStreamDecoder::new(START, SEG);
    for (i, seg) in w.bytes().chunks(SEG as usize).enumerate() {
        if i > 0 {
            d = d.successor();
        }
        let (records, next) = decode(d, seg, || 10_000);
        got.extend(records.into_iter().map(|r| (r.lsn, r.total_len)));
        d = next;
    }
    assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), vec![a, big, c]);
    assert!(got[1].1 > 3 * SEG);
}

#[test]
fn invalid_setups_are_reported_by_poll() {
    let mut d = WalStreamDecoder::new(Lsn(START.0 + 8), SEG);
    assert!(matches!(d.poll(), Err(WalDecodeError::InvalidSetup { .. })));
    for seg in [0, 4096, 3 << 20, 1 << 31] {
        let mut d = WalStreamDecoder::new(Lsn(0), seg);
        assert!(
            matches!(d.poll(), Err(WalDecodeError::InvalidSetup { .. })),
            "segment size {seg}"
        );
    }
    // A tail whose length does not match the distance to the start.
    let w = sample_stream(WalVersion::V15);
    let seg2 = Lsn(START.0 + u64::from(SEG));
    let mut first = WalStreamDecoder::new(START, SEG);
    first.feed(&w.bytes[..SEG as usize]);
    while first.poll().expect("ok").is_some() {}
    let (lsn, tail) = first.incomplete_tail().expect("a record straddles");
    let mut short = tail.to_vec();
    short.pop();
    let mut d = WalStreamDecoder::new(seg2, SEG).with_tail(lsn, short);
    assert!(matches!(d.poll(), Err(WalDecodeError::InvalidSetup { lsn: l, .. }) if l == lsn));
    let mut d = WalStreamDecoder::new(seg2, SEG).with_tail(seg2, tail.to_vec());
    assert!(
        matches!(d.poll(), Err(WalDecodeError::InvalidSetup { .. })),
        "tail after start"
    );
    // The right tail works; a second one is refused.
    let mut d = WalStreamDecoder::new(seg2, SEG).with_tail(lsn, tail.to_vec());
    d.feed(&w.bytes[SEG as usize..]);
    assert_eq!(d.poll().expect("ok").map(|r| r.lsn), Some(lsn));
    let mut d = WalStreamDecoder::new(seg2, SEG)
        .with_tail(lsn, tail.to_vec())
        .with_tail(lsn, tail.to_vec());
    assert!(matches!(d.poll(), Err(WalDecodeError::InvalidSetup { .. })));
    // A tail that disagrees with the page's remaining length.
    let mut bytes = w.bytes[SEG as usize..].to_vec();
    bytes[16] ^= 1;
    let mut d = WalStreamDecoder::new(seg2, SEG).with_tail(lsn, tail.to_vec());
    d.feed(&bytes);
    assert!(
        matches!(d.poll(), Err(WalDecodeError::ContinuationMismatch { record, .. }) if record == lsn)
    );
}

#[test]
fn version_specific_layouts() {
    // The dropped-statistics items grew from 12 to 16 bytes in 18: reading 18's layout as 17
    // must not silently give a wrong two-phase xid.
    let cp = XactSpec {
        time: 1,
        stats: 3,
        twophase: Some(4242),
        ..Default::default()
    };
    let main = cp.encode(WalVersion::V18);
    let mut w = WalWriter::new(START, SEG, WalVersion::V17);
    w.record_with_main_data(RM_XACT, cp.info(0x30), 0, &main);
    let mut d = WalStreamDecoder::new(START, SEG);
    d.feed(w.bytes());
    match d.poll() {
        Ok(Some(DecodedRecord {
            kind: RecordKind::CommitPrepared(x),
            ..
        })) => assert_ne!(x.xid, 4242),
        other => assert!(other.is_err(), "{other:?}"),
    }
    // An image flagged 0x02: compressed in 14, "apply" in 15 (no hole length follows).
    for (version, ok) in [(WalVersion::V14, true), (WalVersion::V15, false)] {
        let mut b = vec![0u8, 0x10, 0, 0];
        b.extend_from_slice(&10u16.to_le_bytes());
        b.extend_from_slice(&8u16.to_le_bytes());
        b.push(0x01 | 0x02);
        b.extend_from_slice(&100u16.to_le_bytes()); // hole length, only read when compressed
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&[255, 1]);
        b.extend_from_slice(&[0xAA; 10]);
        b.push(0x42);
        let mut w = WalWriter::new(START, SEG, version);
        w.record(RM_HEAP, 0, 1, &b);
        let mut d = WalStreamDecoder::new(START, SEG);
        d.feed(w.bytes());
        assert_eq!(d.poll().is_ok(), ok, "{version}");
    }
}

#[test]
fn encode_record_matches_the_writer() {
    let mut w = WalWriter::new(START, SEG, WalVersion::V13).with_prev(Lsn(8));
    let lsn = w.record(RM_HEAP, 0x10, 99, &[255, 2, 7, 7]);
    let rec = encode_record(99, Lsn(8), 0x10, RM_HEAP, &[255, 2, 7, 7]);
    let at = (lsn.0 - START.0) as usize;
    assert_eq!(&w.bytes()[at..at + rec.len()], &rec[..]);
}

#[test]
fn random_damage_never_panics() {
    let w = sample_stream(WalVersion::V15);
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..300 {
        let mut bytes = w.bytes[..rng.gen_range(0..w.bytes.len())].to_vec();
        for _ in 0..rng.gen_range(1..4) {
            if bytes.is_empty() {
                break;
            }
            let i = rng.gen_range(0..bytes.len());
            bytes[i] = rng.gen();
        }
        let mut d = WalStreamDecoder::new(START, SEG);
        let mut rest = &bytes[..];
        let mut last = None;
        loop {
            match d.poll() {
                Ok(Some(r)) => {
                    assert!(last.is_none_or(|l| r.lsn > l), "records move forward");
                    last = Some(r.lsn);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    assert!(e.lsn() >= START, "{e}");
                    break;
                }
            }
            if rest.is_empty() {
                break;
            }
            let n = rng.gen_range(1..2000).min(rest.len());
            d.feed(&rest[..n]);
            rest = &rest[n..];
        }
        let _ = d.incomplete_tail();
        let _ = d.successor().poll();
    }
}
