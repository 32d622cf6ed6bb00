//! The WAL decoder against real PostgreSQL 15 and 18 servers: their segments decoded whole
//! and segment by segment, compared record for record with `pg_waldump` over the same files.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use pgkeep_engine::format::{Lsn, SegmentName, TimelineId};
use pgkeep_engine::wal::decode::{
    DecodedRecord, PgTimestamp, RecordKind, RelFileLocator, WalStreamDecoder, WalVersion,
};
use pgkeep_testkit::pg::{PgCluster, PgVersion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SEG: u32 = 16 << 20;

/// One line of `pg_waldump` output.
#[derive(Debug)]
struct Dumped {
    rmgr: String,
    total_len: u32,
    xid: u32,
    lsn: Lsn,
    prev: Lsn,
    desc: String,
}

/// Parses `rmgr: Heap len (rec/tot): 59/ 59, tx: 738, lsn: 0/01552FD0, prev 0/01552FA8, desc: ...`.
fn parse_dump_line(line: &str) -> Option<Dumped> {
    let rest = line.strip_prefix("rmgr: ")?;
    let (rmgr, rest) = rest.split_once(' ')?;
    let (_, rest) = rest.split_once("len (rec/tot):")?;
    let (lens, rest) = rest.split_once(", tx:")?;
    let total_len = lens.split('/').nth(1)?.trim().parse().ok()?;
    let (xid, rest) = rest.split_once(", lsn:")?;
    let (lsn, rest) = rest.split_once(", prev ")?;
    let (prev, desc) = rest.split_once(", desc: ")?;
    Some(Dumped {
        rmgr: rmgr.to_owned(),
        total_len,
        xid: xid.trim().parse().ok()?,
        lsn: lsn.trim().parse().ok()?,
        prev: prev.trim().parse().ok()?,
        desc: desc.trim_end().to_owned(),
    })
}

/// Runs `pg_waldump` (in UTC, so times print as the records store them) over segment files in
/// `dir`; returns the records and stderr.
fn waldump(pg: &PgCluster, dir: &Path, segments: &[&str]) -> (Vec<Dumped>, String) {
    let out = Command::new(pg.bin("pg_waldump"))
        .env("TZ", "UTC")
        .arg("-p")
        .arg(dir)
        .args(segments)
        .output()
        .expect("run pg_waldump");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let records: Vec<Dumped> = stdout
        .lines()
        .map(|l| parse_dump_line(l).unwrap_or_else(|| panic!("unparsed pg_waldump line: {l}")))
        .collect();
    (records, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The resource manager names `pg_waldump` prints, by id (`rmgrlist.h`, 13–18).
fn rmgr_name(rmid: u8) -> &'static str {
    const NAMES: [&str; 22] = [
        "XLOG",
        "Transaction",
        "Storage",
        "CLOG",
        "Database",
        "Tablespace",
        "MultiXact",
        "RelMap",
        "Standby",
        "Heap2",
        "Heap",
        "Btree",
        "Hash",
        "Gin",
        "Gist",
        "Sequence",
        "SPGist",
        "BRIN",
        "CommitTs",
        "ReplicationOrigin",
        "Generic",
        "LogicalMessage",
    ];
    NAMES.get(usize::from(rmid)).copied().unwrap_or("?")
}

/// A timestamp as `pg_waldump` prints it with `TZ=UTC`: `2026-11-21 08:00:00.123456 UTC`.
fn waldump_time(t: PgTimestamp) -> String {
    t.to_string().replace('T', " ").replace('Z', " UTC")
}

fn sql_one(pg: &PgCluster, sql: &str) -> String {
    pg.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn lsn_of(s: &str) -> Lsn {
    s.parse().unwrap_or_else(|e| panic!("LSN {s:?}: {e}"))
}

/// Feeds `bytes` in pieces of random length (fixed seed) and collects the records.
fn decode_into(
    d: &mut WalStreamDecoder,
    bytes: &[u8],
    rng: &mut StdRng,
    out: &mut Vec<DecodedRecord>,
) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = rng.gen_range(1..=256 << 10).min(rest.len());
        d.feed(&rest[..n]);
        rest = &rest[n..];
        while let Some(r) = d.poll().unwrap_or_else(|e| panic!("decode: {e}")) {
            out.push(r);
        }
    }
}

/// Every record the same as pg_waldump's: position, previous link, length, xid, rmgr; and
/// transaction ends with the same time to the microsecond.
fn compare(ours: &[DecodedRecord], theirs: &[Dumped], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: record count");
    for (o, t) in ours.iter().zip(theirs) {
        assert_eq!(o.lsn, t.lsn, "{what}: record position");
        assert_eq!(o.prev, t.prev, "{what}: prev link at {}", o.lsn);
        assert_eq!(o.total_len, t.total_len, "{what}: length at {}", o.lsn);
        assert_eq!(o.xid, t.xid, "{what}: xid at {}", o.lsn);
        assert_eq!(rmgr_name(o.rmid), t.rmgr, "{what}: rmgr at {}", o.lsn);
        let desc_prefix = match &o.kind {
            RecordKind::Commit(x) => Some(format!("COMMIT {}", waldump_time(x.time))),
            RecordKind::Abort(x) => Some(format!("ABORT {}", waldump_time(x.time))),
            RecordKind::CommitPrepared(x) => Some(format!(
                "COMMIT_PREPARED {}: {}",
                x.xid,
                waldump_time(x.time)
            )),
            RecordKind::AbortPrepared(x) => Some(format!(
                "ABORT_PREPARED {}: {}",
                x.xid,
                waldump_time(x.time)
            )),
            RecordKind::Prepare { .. } => Some("PREPARE gid ".to_owned()),
            RecordKind::RestorePoint { name, .. } => Some(format!("RESTORE_POINT {name}")),
            RecordKind::Switch => Some("SWITCH".to_owned()),
            RecordKind::CheckpointOnline { .. } => Some("CHECKPOINT_ONLINE redo ".to_owned()),
            RecordKind::CheckpointShutdown { .. } => Some("CHECKPOINT_SHUTDOWN redo ".to_owned()),
            RecordKind::Truncate { locator, block } => {
                Some(format!("TRUNCATE {} to {block} blocks", rel_path(locator)))
            }
            _ => None,
        };
        if let Some(prefix) = desc_prefix {
            assert!(
                t.desc.starts_with(&prefix),
                "{what}: at {}: ours {prefix:?}, pg_waldump {:?}",
                o.lsn,
                t.desc
            );
        }
        match &o.kind {
            RecordKind::Prepare { time, .. } => {
                let time = format!(": {}", waldump_time(*time));
                assert!(
                    t.desc.contains(&time),
                    "{what}: at {}: prepared {time:?}, pg_waldump {:?}",
                    o.lsn,
                    t.desc
                );
            }
            RecordKind::CheckpointOnline { redo } | RecordKind::CheckpointShutdown { redo } => {
                // 15 prints `%X/%X` here, 18 `%X/%08X`: compare the values.
                let theirs = t
                    .desc
                    .split_once("redo ")
                    .and_then(|(_, r)| r.split_once(';'))
                    .map(|(l, _)| lsn_of(l));
                assert_eq!(
                    theirs,
                    Some(*redo),
                    "{what}: checkpoint redo at {}: {:?}",
                    o.lsn,
                    t.desc
                );
            }
            _ => {}
        }
        if let RecordKind::Commit(x)
        | RecordKind::Abort(x)
        | RecordKind::CommitPrepared(x)
        | RecordKind::AbortPrepared(x) = &o.kind
        {
            if !x.dropped_relations.is_empty() {
                let rels: Vec<String> = x.dropped_relations.iter().map(rel_path).collect();
                assert!(
                    t.desc.contains(&format!("rels: {}", rels.join(" "))),
                    "{what}: at {}: {rels:?} vs {:?}",
                    o.lsn,
                    t.desc
                );
            } else {
                assert!(
                    !t.desc.contains("rels:"),
                    "{what}: at {}: no dropped relations decoded, pg_waldump {:?}",
                    o.lsn,
                    t.desc
                );
            }
            if !x.subxacts.is_empty() {
                let subs: Vec<String> = x.subxacts.iter().map(u32::to_string).collect();
                assert!(
                    t.desc.contains(&format!("subxacts: {}", subs.join(" "))),
                    "{what}: at {}: {subs:?} vs {:?}",
                    o.lsn,
                    t.desc
                );
            }
        }
    }
}

/// `relpathperm()` of a main fork in the default or global tablespace.
fn rel_path(r: &RelFileLocator) -> String {
    match r.spc {
        1663 => format!("base/{}/{}", r.db, r.rel),
        1664 => format!("global/{}", r.rel),
        _ => format!("pg_tblspc/{}/?/{}/{}", r.spc, r.db, r.rel),
    }
}

fn against_server(version: PgVersion) {
    let t0 = PgTimestamp::from_system_time(SystemTime::now()).expect("now");
    let pg = PgCluster::builder(version)
        .setting("max_prepared_transactions", "4")
        .setting("wal_compression", "pglz") // compressed full-page images with holes
        .setting("wal_keep_size", "1GB") // no segment is removed while the test reads them
        .start()
        .expect("cluster");
    let major = version.major();
    let wal_version = WalVersion::ALL
        .into_iter()
        .find(|v| v.major() == major)
        .expect("supported");
    let system_id: u64 = sql_one(&pg, "SELECT system_identifier FROM pg_control_system()")
        .parse()
        .expect("sysid");

    // Start at a fresh segment, after a checkpoint (so pages get full-page images again).
    sql_one(&pg, "CHECKPOINT");
    sql_one(&pg, "SELECT pg_switch_wal()");
    let first_lsn = lsn_of(&sql_one(&pg, "SELECT pg_current_wal_insert_lsn()"));
    let first_seg = first_lsn.segment(SEG);

    sql_one(
        &pg,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g;
         BEGIN; INSERT INTO t VALUES (1001, 'a'); SAVEPOINT s1; INSERT INTO t VALUES (1002, 'b');
           RELEASE s1; SAVEPOINT s2; INSERT INTO t VALUES (1003, 'c'); COMMIT;
         BEGIN; INSERT INTO t VALUES (2001, 'x'); ROLLBACK;
         BEGIN; INSERT INTO t VALUES (3001, 'p'); SAVEPOINT s; INSERT INTO t VALUES (3002, 'q');
           PREPARE TRANSACTION 'p1';
         COMMIT PREPARED 'p1';
         BEGIN; CREATE TABLE prep_victim (a int); PREPARE TRANSACTION 'p2';
         ROLLBACK PREPARED 'p2';
         CREATE TABLE victim AS SELECT g AS id FROM generate_series(1, 5000) g;
         SELECT pg_logical_emit_message(true, 'pgkeep', repeat('m', 100000));
         CREATE TABLE shrink AS SELECT g AS id, repeat('z', 200) AS pad FROM generate_series(1, 20000) g;
         DELETE FROM shrink WHERE id > 100;
         VACUUM shrink;
         CHECKPOINT;",
    );
    let db: u32 = sql_one(
        &pg,
        "SELECT oid FROM pg_database WHERE datname = current_database()",
    )
    .parse()
    .expect("db oid");
    let victim: u32 = sql_one(&pg, "SELECT pg_relation_filenode('victim')")
        .parse()
        .expect("filenode");
    let shrink: u32 = sql_one(&pg, "SELECT pg_relation_filenode('shrink')")
        .parse()
        .expect("filenode");
    let rp_end = lsn_of(&sql_one(
        &pg,
        "SELECT pg_create_restore_point('before_drop')",
    ));
    sql_one(&pg, "DROP TABLE victim");
    // Enough WAL to cross at least one segment boundary.
    sql_one(&pg, "CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 16) AS pad FROM generate_series(1, 40000) g");
    let switch_end = lsn_of(&sql_one(&pg, "SELECT pg_switch_wal()"));
    let last_seg = (switch_end.0 - 1) / u64::from(SEG);
    assert!(last_seg > first_seg, "the workload spans segments");

    // Then a little more WAL in the next (current, partly written) segment.
    sql_one(&pg, "INSERT INTO t VALUES (5000, 'after'); CHECKPOINT;");

    // Copy the segments now, before anything could recycle them.
    let copy = tempfile::tempdir().expect("tmp");
    let names: Vec<String> = (first_seg..=last_seg + 1)
        .map(|s| SegmentName::new(TimelineId(1), s, SEG).to_string())
        .collect();
    let mut files = Vec::new();
    for name in &names {
        let bytes = std::fs::read(pg.data_dir().join("pg_wal").join(name)).expect("read segment");
        assert_eq!(bytes.len(), SEG as usize);
        std::fs::write(copy.path().join(name), &bytes).expect("copy segment");
        files.push(bytes);
    }
    let (complete, current) = files.split_at(files.len() - 1);
    let (dumped, stderr) = waldump(&pg, copy.path(), &[&names[0], &names[names.len() - 2]]);
    assert!(!dumped.is_empty(), "pg_waldump printed nothing: {stderr}");

    // 1. One decoder over all complete segments.
    let mut rng = StdRng::seed_from_u64(u64::from(major));
    let start = Lsn(first_seg * u64::from(SEG));
    let mut d = WalStreamDecoder::new(start, SEG)
        .expect_system_id(system_id)
        .expect_timeline(TimelineId(1));
    let mut whole = Vec::new();
    for f in complete {
        decode_into(&mut d, f, &mut rng, &mut whole);
    }
    compare(&whole, &dumped, &format!("PG{major} whole stream"));
    assert_eq!(d.version(), Some(wal_version));
    assert_eq!(d.system_id(), Some(system_id));
    assert_eq!(
        d.skipped_continuation(),
        None,
        "a switch leaves no continuation"
    );
    assert_eq!(d.end_of_wal(), None);

    // 2. Segment by segment, carrying straddling records over.
    let mut d = WalStreamDecoder::new(start, SEG).expect_system_id(system_id);
    let mut by_segment = Vec::new();
    let mut straddling = 0;
    for (i, f) in complete.iter().enumerate() {
        if i > 0 {
            d = d.successor();
        }
        if let Some((lsn, tail)) = d.incomplete_tail() {
            assert!(lsn < d.start() && !tail.is_empty());
            straddling += 1;
        }
        decode_into(&mut d, f, &mut rng, &mut by_segment);
    }
    println!(
        "PG{major}: {} records in {} segments from {start}, {straddling} straddling a boundary",
        whole.len(),
        complete.len()
    );
    assert!(
        straddling >= 1,
        "PG{major}: no record straddled a segment boundary"
    );
    assert_eq!(by_segment, whole, "PG{major}: segment by segment");

    // 3. What the time index needs.
    let kinds: HashMap<Lsn, &RecordKind> = whole.iter().map(|r| (r.lsn, &r.kind)).collect();
    let rp = whole
        .iter()
        .find(|r| matches!(&r.kind, RecordKind::RestorePoint { name, .. } if name == "before_drop"))
        .expect("restore point");
    assert_eq!(
        rp.end, rp_end,
        "a restore point ends where pg_create_restore_point() says"
    );
    let rp_time = rp.kind.time().expect("time");
    assert!(rp_time >= t0 && rp_time.to_system_time().expect("time") <= SystemTime::now());
    let victim_file = RelFileLocator {
        spc: 1663,
        db,
        rel: victim,
    };
    let drop = whole
        .iter()
        .find(|r| matches!(&r.kind, RecordKind::Commit(x) if x.dropped_relations.contains(&victim_file)))
        .expect("the commit that dropped victim");
    assert!(drop.lsn > rp.lsn, "dropped after the restore point");
    assert!(drop.kind.time().expect("time") >= rp_time);
    assert!(
        whole.iter().any(
            |r| matches!(&r.kind, RecordKind::Truncate { locator, .. } if locator.rel == shrink)
        ),
        "VACUUM truncated shrink"
    );
    let count = |f: fn(&RecordKind) -> bool| whole.iter().filter(|r| f(&r.kind)).count();
    assert!(count(|k| matches!(k, RecordKind::Commit(x) if x.subxacts.len() == 2)) >= 1);
    assert!(count(|k| matches!(k, RecordKind::Abort(_))) >= 1);
    assert_eq!(count(|k| matches!(k, RecordKind::Prepare { .. })), 2);
    assert_eq!(
        count(|k| matches!(k, RecordKind::CommitPrepared(x) if x.subxacts.len() == 1)),
        1
    );
    assert_eq!(
        count(|k| matches!(k, RecordKind::AbortPrepared(x) if !x.dropped_relations.is_empty())),
        1
    );
    assert!(count(|k| matches!(k, RecordKind::CheckpointOnline { .. })) >= 1);
    // ROLLBACK PREPARED of a transaction that created a table: the two-phase xid comes after
    // the dropped relation files and the dropped statistics items (12 bytes each before 18, 16
    // in 18), so decoding it right, checked against pg_waldump above, checks their layout.
    let descs: HashMap<Lsn, &str> = dumped.iter().map(|d| (d.lsn, d.desc.as_str())).collect();
    let prepared_p2 = whole
        .iter()
        .rev()
        .filter_map(|r| match r.kind {
            RecordKind::Prepare { xid, .. } => Some(xid),
            _ => None,
        })
        .next()
        .expect("prepare p2");
    let abort_prepared = whole
        .iter()
        .find(|r| matches!(&r.kind, RecordKind::AbortPrepared(x) if x.xid == prepared_p2))
        .expect("ROLLBACK PREPARED 'p2'");
    assert!(
        descs[&abort_prepared.lsn].contains("dropped stats:"),
        "{:?}",
        descs[&abort_prepared.lsn]
    );
    let switch = whole.last().expect("records");
    assert_eq!(switch.kind, RecordKind::Switch);
    assert_eq!(
        Lsn(switch.lsn.0 + 24),
        switch_end,
        "pg_switch_wal() returns the switch record's end"
    );
    assert!(
        whole.iter().any(|r| r.total_len > 100_000),
        "the 100 kB logical message"
    );
    assert!(
        dumped.iter().any(|d| d.desc.contains("FPW")),
        "full-page images (compressed, with holes) were walked over"
    );
    assert!(kinds.len() == whole.len(), "distinct positions");

    // 4. The current segment: the WAL ends where pg_waldump says it does.
    let cur = &current[0];
    let cur_start = Lsn((last_seg + 1) * u64::from(SEG));
    let mut d = WalStreamDecoder::new(cur_start, SEG).expect_prev_record(switch.lsn);
    let mut tail_records = Vec::new();
    decode_into(&mut d, cur, &mut rng, &mut tail_records);
    let end = d.end_of_wal().expect("the current segment ends in zeros");
    let (dumped, stderr) = waldump(&pg, copy.path(), &[&names[names.len() - 1]]);
    compare(
        &tail_records,
        &dumped,
        &format!("PG{major} current segment"),
    );
    let theirs = stderr
        .split_once("invalid record length at ")
        .and_then(|(_, r)| r.split_once(':'))
        .map(|(l, _)| lsn_of(l))
        .unwrap_or_else(|| panic!("pg_waldump did not stop at a zero length: {stderr}"));
    assert_eq!(end, theirs, "end of WAL");
    assert!(tail_records
        .iter()
        .any(|r| matches!(r.kind, RecordKind::Commit(_))));
}

#[test]
fn pg15_wal_decodes_like_pg_waldump() {
    against_server(PgVersion::V15);
}

#[test]
fn pg18_wal_decodes_like_pg_waldump() {
    against_server(PgVersion::V18);
}
