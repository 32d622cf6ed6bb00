//! The PITR proof: a cluster archiving through `pgkeep wal-push`, two backups, a workload whose
//! state is recorded at known instants, then restores to each instant (and to a restore
//! point, an LSN and an xid) with `pgkeep restore --start`, each compared with the recorded
//! state. Plus what planning must refuse, and a delta restore.

mod common;

use std::time::Duration;

use common::archiving::Archiving;
use common::free_port;
use pgkeep_testkit::pg::PgVersion;
use serde_json::Value;

const STATE: &str = "SELECT count(*) || ':' || coalesce(sum(v), 0) FROM ledger";

/// One recorded instant.
struct Mark {
    time: String,
    lsn: String,
    xid: String,
    state: String,
}

/// Restores with `target` flags (the tablespace remapped to a fresh directory), starts
/// recovery, returns the state it reached.
fn restore_and_query(a: &Archiving, name: &str, target: &[&str]) -> (String, Value) {
    let dir = a.pg.owned_dir(name).expect("dir");
    let ts_dir =
        a.pg.owned_dir(&format!("{name}-ts"))
            .expect("tablespace dir");
    let ts_oid = a.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'");
    let map = format!("{ts_oid}={}", ts_dir.display());
    let port = free_port();
    let dir_arg = dir.display().to_string();
    let port_arg = port.to_string();
    let bin = a.pg.bin_dir().display().to_string();
    let mut args = vec![
        "--json",
        "restore",
        "--pgdata",
        &dir_arg,
        "--start",
        "--port",
        &port_arg,
        "--pg-bin",
        &bin,
        "--tablespace-map",
        &map,
    ];
    args.extend_from_slice(target);
    let (out, _) = a.expect_as_server(&args, 0);
    let report: Value = serde_json::from_str(&out).expect("restore JSON");
    let state = a.query_restored(&dir, port, STATE);
    // The tablespace's table came back, in the mapped directory, behind pg_tblspc.
    assert_eq!(
        a.query_restored(&dir, port, "SELECT count(*) FROM in_ts"),
        "100"
    );
    let link = std::fs::read_link(dir.join("pg_tblspc").join(&ts_oid)).expect("pg_tblspc link");
    assert_eq!(link, ts_dir);
    a.stop_restored(&dir);
    (state, report)
}

fn pitr_proof(version: PgVersion, s3: bool) {
    let a = if s3 {
        Archiving::with_s3(version, 1, true)
    } else {
        Archiving::start(version, 1, &[])
    };
    let conn = a.pg.connstring();
    a.sql("CREATE TABLE ledger (id serial PRIMARY KEY, v int); CREATE TABLE victim (x int)");
    a.pg.create_tablespace("ts").expect("tablespace");
    a.sql("CREATE TABLE in_ts TABLESPACE ts AS SELECT g FROM generate_series(1, 100) g");
    a.sql("INSERT INTO ledger (v) SELECT g FROM generate_series(1, 1000) g");
    a.expect_as_server(&["backup", "--pg", &conn, "--label", "first"], 0);
    a.pgbench(&["-i", "-q", "-s", "1"]);

    let mut marks = Vec::new();
    for i in 0..6 {
        let xid = a.sql(&format!(
            "BEGIN; INSERT INTO ledger (v) SELECT g * {} FROM generate_series(1, 500) g; SELECT txid_current(); COMMIT;",
            i + 2
        ));
        let lsn = a.sql("SELECT pg_current_wal_insert_lsn()");
        let state = a.sql(STATE);
        std::thread::sleep(Duration::from_millis(600));
        let time = a.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || 'Z'");
        std::thread::sleep(Duration::from_millis(600));
        if i == 2 {
            a.sql("SELECT pg_create_restore_point('midway')");
        }
        if i == 3 {
            a.expect_as_server(&["backup", "--pg", &conn, "--label", "second"], 0);
        }
        a.pgbench(&["-n", "-t", "50"]);
        marks.push(Mark {
            time,
            lsn,
            xid,
            state,
        });
    }
    a.sql("DROP TABLE victim");
    a.sql("INSERT INTO ledger (v) VALUES (-1)");
    let final_state = a.sql(STATE);
    a.switch_and_wait();

    let (list, _) = a.expect_as_server(&["--json", "list"], 0);
    let list: Vec<Value> = serde_json::from_str(&list).expect("list JSON");
    let (first, second) = (list[0]["id"].clone(), list[1]["id"].clone());

    // Every recorded instant, exactly.
    for (i, m) in marks.iter().enumerate() {
        let (state, report) =
            restore_and_query(&a, &format!("time-{i}"), &["--target-time", &m.time]);
        assert_eq!(state, m.state, "restore to {} (mark {i}): {report}", m.time);
        assert_eq!(
            report["reached"]["in_recovery"], true,
            "paused at the target: {report}"
        );
        // The newest backup consistent before the target: the second from mark 4 on.
        let expected = if i >= 4 { &second } else { &first };
        assert_eq!(&report["plan"]["backup"], expected, "mark {i}: {report}");
    }
    let (state, _) = restore_and_query(&a, "name", &["--target-name", "midway"]);
    assert_eq!(state, marks[2].state, "restore point midway");
    let (state, _) = restore_and_query(&a, "lsn", &["--target-lsn", &marks[4].lsn]);
    assert_eq!(state, marks[4].state, "LSN {}", marks[4].lsn);
    let (state, _) = restore_and_query(&a, "xid", &["--target-xid", &marks[1].xid]);
    assert_eq!(state, marks[1].state, "xid {}", marks[1].xid);
    let (state, report) = restore_and_query(&a, "end", &[]);
    assert_eq!(state, final_state, "to the end of the archive: {report}");

    // Refused in planning, saying what the archive covers.
    let dir = a.pg.owned_dir("refused").expect("dir");
    let dir_arg = dir.display().to_string();
    let (_, err) = a.expect_as_server(
        &[
            "restore",
            "--pgdata",
            &dir_arg,
            "--target-time",
            "2001-01-01 00:00:00Z",
        ],
        2,
    );
    assert!(
        err.contains("no backup is consistent before") && err.contains("first"),
        "{err}"
    );
    let (_, err) = a.expect_as_server(
        &[
            "restore",
            "--pgdata",
            &dir_arg,
            "--target-time",
            "2099-01-01 00:00:00Z",
        ],
        2,
    );
    assert!(
        err.contains("after the last transaction in the archive") && err.contains("covers"),
        "{err}"
    );
    let (_, err) = a.expect_as_server(
        &["restore", "--pgdata", &dir_arg, "--target-name", "nope"],
        2,
    );
    assert!(err.contains("no restore point named"), "{err}");
    let live = a.pg.data_dir().display().to_string();
    let (_, err) = a.expect_as_server(&["restore", "--pgdata", &live, "--delta"], 2);
    assert!(err.contains("running PostgreSQL server"), "{err}");
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        0,
        "nothing written when refused"
    );

    // The tablespace's original location is the live server's: never written to.
    let target = a.pg.owned_dir("delta").expect("dir");
    let target_arg = target.display().to_string();
    let (_, err) = a.expect_as_server(
        &["restore", "--pgdata", &target_arg, "--target-immediate"],
        2,
    );
    assert!(err.contains("tablespaces/ts is not empty"), "{err}");
    // A restore into a non-empty directory is refused; --delta repairs one.
    let ts_oid = a.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'");
    let ts_dir = a.pg.owned_dir("delta-ts").expect("dir");
    let map = format!("{ts_oid}={}", ts_dir.display());
    a.expect_as_server(
        &[
            "restore",
            "--pgdata",
            &target_arg,
            "--target-immediate",
            "--tablespace-map",
            &map,
        ],
        0,
    );
    let (_, err) = a.expect_as_server(
        &[
            "restore",
            "--pgdata",
            &target_arg,
            "--target-immediate",
            "--tablespace-map",
            &map,
        ],
        2,
    );
    assert!(err.contains("not empty"), "{err}");
    let pg_version = target.join("PG_VERSION");
    let original = std::fs::read(&pg_version).expect("PG_VERSION");
    std::fs::write(&pg_version, b"damaged\n").expect("damage");
    std::fs::remove_file(target.join("global/pg_control")).expect("delete");
    std::fs::write(target.join("base/stray"), b"x").expect("stray");
    let (out, _) = a.expect_as_server(
        &[
            "--json",
            "restore",
            "--pgdata",
            &target_arg,
            "--target-immediate",
            "--delta",
            "--tablespace-map",
            &map,
        ],
        0,
    );
    let report: Value = serde_json::from_str(&out).expect("JSON");
    assert!(report["kept"].as_u64() > Some(100), "{report}");
    // The stray file and the previous recovery.signal (written again afterwards).
    assert!(report["removed"].as_u64() >= Some(1), "{report}");
    assert!(!target.join("base/stray").exists());
    assert!(target.join("recovery.signal").exists());
    // Rewritten and checked: PG_VERSION, global/pg_control, and the two files the first
    // restore had changed on purpose: postgresql.auto.conf (its recovery block) and
    // tablespace_map (pointed at the mapped directory).
    assert_eq!(report["verified_against_backup_manifest"], 4, "{report}");
    assert_eq!(std::fs::read(&pg_version).expect("PG_VERSION"), original);
    assert!(target.join("global/pg_control").exists());

    if s3 {
        return;
    }
    // A segment missing in the middle: refused at planning.
    let wal = a.repo.join("clusters/main/wal/00000001");
    let mut segments: Vec<String> = std::fs::read_dir(&wal)
        .expect("wal")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    segments.sort();
    let victim = &segments[segments.len() - 3];
    std::fs::remove_file(wal.join(victim)).expect("remove a segment");
    let (_, err) = a.expect_as_server(&["restore", "--pgdata", &dir_arg], 2);
    assert!(
        err.contains(victim.as_str()) || err.contains("missing"),
        "{err}"
    );
}

#[test]
fn pitr_proof_pg15_local() {
    pitr_proof(PgVersion::V15, false);
}

#[test]
fn pitr_proof_pg18_local() {
    pitr_proof(PgVersion::V18, false);
}

#[test]
fn pitr_proof_pg15_s3() {
    pitr_proof(PgVersion::V15, true);
}

#[test]
fn pitr_proof_pg18_s3() {
    pitr_proof(PgVersion::V18, true);
}

/// Restores along a timeline switch: a point-in-time restore promoted into timeline 2 keeps
/// archiving into the same repository; a later restore from the backup taken on timeline 1
/// reaches a time on timeline 2, as PostgreSQL's `recovery_target_timeline = latest` does.
#[test]
fn pitr_across_a_timeline_switch() {
    let a = Archiving::start(PgVersion::V15, 1, &[]);
    let conn = a.pg.connstring();
    a.sql("CREATE TABLE t (v int)");
    let (out, _) = a.expect_as_server(&["--json", "backup", "--pg", &conn], 0);
    let before_fork: Value = serde_json::from_str(&out).expect("backup JSON");
    let before_fork = before_fork["backup_id"].as_str().expect("id").to_owned();
    a.sql("INSERT INTO t SELECT generate_series(1, 100)");
    std::thread::sleep(Duration::from_millis(1100));
    let fork_time =
        a.sql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00')");
    std::thread::sleep(Duration::from_millis(1100));
    // Rows the old timeline gets after the fork point; the new timeline never sees them.
    a.sql("INSERT INTO t SELECT generate_series(1, 1000)");
    a.switch_and_wait();
    // A backup on timeline 1 after the fork point: newer than the first, but timeline 2 does
    // not pass through it. Both timelines are live, so which history to restore is the
    // operator's call: the newest backup is refused, naming the first.
    a.expect_as_server(&["backup", "--pg", &conn], 0);

    // The "failover": restore to the fork time and promote; the copy archives timeline 2.
    let tl2 = a.pg.owned_dir("tl2").expect("dir");
    let tl2_arg = tl2.display().to_string();
    let port = free_port();
    let port_arg = port.to_string();
    let bin = a.pg.bin_dir().display().to_string();
    let start = |dir: &str, extra: &[&str]| {
        let mut args = vec![
            "--json", "restore", "--pgdata", dir, "--start", "--port", &port_arg, "--pg-bin", &bin,
        ];
        args.extend_from_slice(extra);
        let (out, _) = a.expect_as_server(&args, 0);
        serde_json::from_str::<Value>(&out).expect("restore JSON")
    };
    let report = start(
        &tl2_arg,
        &["--target-time", &fork_time, "--target-action", "promote"],
    );
    assert_eq!(
        report["plan"]["timelines"],
        serde_json::json!([1]),
        "{report}"
    );
    assert_eq!(
        a.query_restored(&tl2, port, "SELECT count(*) FROM t"),
        "100"
    );
    // Wait for promotion, then write on timeline 2 and get it archived.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while a.query_restored(&tl2, port, "SELECT pg_is_in_recovery()") == "t" {
        assert!(std::time::Instant::now() < deadline, "not promoted");
        std::thread::sleep(Duration::from_millis(200));
    }
    a.query_restored(&tl2, port, "INSERT INTO t SELECT generate_series(1, 7)");
    std::thread::sleep(Duration::from_millis(1100));
    let after = a.query_restored(
        &tl2,
        port,
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00')",
    );
    std::thread::sleep(Duration::from_millis(1100));
    a.query_restored(&tl2, port, "INSERT INTO t SELECT 0");
    let segment = a.query_restored(&tl2, port, "SELECT pg_walfile_name(pg_switch_wal())");
    let archived = a.repo.join("clusters/main/wal/00000002").join(&segment);
    while !archived.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{segment} not archived from timeline 2"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    a.stop_restored(&tl2);

    // From the timeline-1 backup to a time on timeline 2.
    let again = a.pg.owned_dir("again").expect("dir");
    let again_arg = again.display().to_string();
    let (_, err) = a.expect_as_server(
        &["restore", "--pgdata", &again_arg, "--target-time", &after],
        2,
    );
    assert!(
        err.contains("left timeline 1") && err.contains(&format!("pass --backup {before_fork}")),
        "{err}"
    );
    let report = start(
        &again_arg,
        &["--target-time", &after, "--backup", &before_fork],
    );
    assert_eq!(
        report["plan"]["timelines"],
        serde_json::json!([1, 2]),
        "{report}"
    );
    assert_eq!(report["plan"]["timeline"], 1);
    assert_eq!(report["plan"]["backup"], before_fork.as_str(), "{report}");
    assert_eq!(
        a.query_restored(&again, port, "SELECT count(*) FROM t"),
        "107"
    );
    a.stop_restored(&again);
    // Staying on the backup's timeline, that time is after its last archived transaction.
    let current = a.pg.owned_dir("current").expect("dir");
    let current_arg = current.display().to_string();
    let (_, err) = a.expect_as_server(
        &[
            "restore",
            "--pgdata",
            &current_arg,
            "--target-time",
            &after,
            "--target-timeline",
            "current",
        ],
        2,
    );
    assert!(
        err.contains("after the last transaction") && err.contains("on timeline 1"),
        "{err}"
    );
}
