//! `pgkeep drill` on a PostgreSQL 15 cluster archiving with pgkeep: a healthy repository
//! passes (pg_amcheck, row counts equal to the source, assertions), failing assertions and
//! a changed source are named, a point in time is honoured, a wrong role fails fast, Ctrl-C
//! cleans up; a damaged pack fails the drill with exit 5. Every run ends with the scratch
//! directory gone (or kept with --keep) and no server left running.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::archiving::Archiving;
use common::{expect_code, free_port};
use pgkeep_testkit::pg::PgVersion;
use serde_json::Value;

/// A cluster with `ledger` (1000 rows at the backup, 1500 at the end of the archive) in
/// `postgres` and `t` (1..10) in `app`; returns it with an instant between the two states.
fn archived_cluster() -> (Archiving, String) {
    let a = Archiving::start(PgVersion::V15, 1, &[]);
    a.sql("CREATE TABLE ledger (id int PRIMARY KEY, note text)");
    a.sql("INSERT INTO ledger SELECT g, 'row ' || g FROM generate_series(1, 1000) g");
    a.sql("CREATE DATABASE app;\n\\c app\nCREATE TABLE t AS SELECT g AS v FROM generate_series(1, 10) g;");
    // Unlogged tables are empty after recovery by design: not counted, not compared.
    a.sql("CREATE UNLOGGED TABLE scratchpad AS SELECT 1 AS x");
    a.expect_as_server(&["backup", "--pg", &a.pg.connstring()], 0);
    std::thread::sleep(Duration::from_millis(300));
    let between = a.sql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || 'Z'",
    );
    std::thread::sleep(Duration::from_millis(300));
    a.sql("INSERT INTO ledger SELECT g, 'later ' || g FROM generate_series(1001, 1500) g");
    a.switch_and_wait();
    (a, between)
}

/// A file the server's OS user can read.
fn owned_file(a: &Archiving, name: &str, text: &str) -> String {
    let path = a.config.parent().expect("dir").join(name);
    a.pg.write_owned(&path, text, 0o600).expect("write");
    path.display().to_string()
}

/// A path for a scratch directory that does not exist yet, in a directory the server's
/// OS user owns.
fn scratch_path(a: &Archiving, name: &str) -> PathBuf {
    a.pg.owned_dir(&format!("drill-{name}"))
        .expect("dir")
        .join("scratch")
}

fn no_server_in(dir: &Path) {
    let pid = dir.join("pgdata/postmaster.pid");
    if let Ok(text) = std::fs::read_to_string(&pid) {
        let p = text.lines().next().unwrap_or_default().trim().to_owned();
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "a drill server (pid {p}) is still running"
        );
    }
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with(name)))
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

#[test]
fn drill_healthy_failing_and_interrupted() {
    let (a, between) = archived_cluster();
    let bin = a.pg.bin_dir().display().to_string();
    let conn = a.pg.connstring();

    // Refused before anything happens: root, a busy scratch, an unreadable assertion file,
    // --pg without --compare-source.
    let (_, err) = a.env.expect(&["drill"], 2);
    assert!(err.contains("refuses to run as root"), "{err}");
    let busy = a.pg.owned_dir("busy").expect("dir");
    a.pg.write_owned(&busy.join("file"), "x", 0o600)
        .expect("file");
    let busy_arg = busy.display().to_string();
    let (_, err) = a.expect_as_server(&["drill", "--scratch", &busy_arg], 2);
    assert!(err.contains("is not empty"), "{err}");
    let broken = owned_file(&a, "broken.sql", "SELECT true;\nSELECT 'open;\n");
    let (_, err) = a.expect_as_server(&["drill", "--sql", &broken], 2);
    assert!(
        err.contains("broken.sql: line 2: unterminated string"),
        "{err}"
    );
    let long = a.pg.owned_dir("long").expect("dir").join("d".repeat(100));
    let long_arg = long.display().to_string();
    let (_, err) = a.expect_as_server(&["drill", "--scratch", &long_arg], 2);
    assert!(err.contains("choose a shorter --scratch"), "{err}");
    let (_, err) = a.expect_as_server(&["drill", "--pg", &conn], 2);
    assert!(err.contains("--compare-source"), "{err}");

    // Healthy: every check passes, the counts equal the source's, the scratch is gone.
    let good = owned_file(
        &a,
        "good.sql",
        "-- the drill's assertions\nSELECT count(*) = 1500 FROM ledger;\n\
         CREATE TEMP TABLE seen AS SELECT max(id) AS m FROM ledger;\n\
         SELECT m = 1500 FROM seen;\n\\connect app\nSELECT sum(v) = 55 FROM t;\n",
    );
    let scratch = scratch_path(&a, "healthy");
    let scratch_arg = scratch.display().to_string();
    let port = free_port().to_string();
    let started = Instant::now();
    let (out, _) = a.expect_as_server(
        &[
            "--json",
            "drill",
            "--scratch",
            &scratch_arg,
            "--port",
            &port,
            "--pg-bin",
            &bin,
            "--db-user",
            "postgres",
            "--sql",
            &good,
            "--heapallindexed",
            "--compare-source",
            "--pg",
            &conn,
        ],
        0,
    );
    eprintln!("healthy drill: {:?}", started.elapsed());
    let report: Value = serde_json::from_str(&out).expect("drill JSON");
    assert_eq!(report["schema"], 1, "{report}");
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["port"].to_string(), port);
    assert!(report["restore"]["files"].as_u64() > Some(100), "{report}");
    assert!(report["recovery"]["seconds_to_consistent"].as_f64() > Some(0.0));
    assert_eq!(report["recovery"]["timeline"], 2, "promoted: {report}");
    assert_eq!(check(&report, "pg_amcheck")["status"], "passed", "{report}");
    let counts = check(&report, "row counts");
    assert_eq!(counts["status"], "passed", "{report}");
    assert!(
        counts["summary"]
            .as_str()
            .is_some_and(|s| s.contains("compared with the source")),
        "{counts}"
    );
    let assertions = check(&report, "assertions");
    assert_eq!(assertions["status"], "passed", "{report}");
    assert_eq!(assertions["summary"], "4 of 4 statements passed");
    let tables = report["tables"].as_array().expect("tables");
    let ledger = tables
        .iter()
        .find(|t| t["table"] == "ledger")
        .expect("ledger counted");
    assert_eq!(ledger["restored_rows"], 1500);
    assert_eq!(ledger["source_rows"], 1500);
    assert!(tables
        .iter()
        .any(|t| t["database"] == "app" && t["table"] == "t"));
    assert!(
        !tables.iter().any(|t| t["table"] == "scratchpad"),
        "unlogged tables are not counted: {report}"
    );
    assert_eq!(report["cleanup"]["server_stopped"], true);
    assert_eq!(report["cleanup"]["scratch_removed"], true);
    assert!(!scratch.exists(), "scratch directory removed");

    // At a point in time, against a source that moved on: the failing statements and the
    // differing count are named; --keep leaves the stopped copy.
    a.sql("INSERT INTO ledger VALUES (0, 'after the drill target')");
    let bad = owned_file(
        &a,
        "bad.sql",
        "SELECT count(*) = 1000 FROM ledger;\nSELECT count(*) = 999\n  FROM ledger;\n\
         SELECT 1 / 0 = 1;\nSELECT id FROM ledger WHERE id < 3 ORDER BY id;\n\
         \\connect nosuchdb\nSELECT true;\n",
    );
    let kept = scratch_path(&a, "kept");
    let kept_arg = kept.display().to_string();
    let (out, err) = a.expect_as_server(
        &[
            "drill",
            "--scratch",
            &kept_arg,
            "--keep",
            "--pg-bin",
            &bin,
            "--target-time",
            &between,
            "--sql",
            &bad,
            "--no-amcheck",
            "--compare-source",
            "--pg",
            &conn,
        ],
        1,
    );
    assert!(
        out.contains("bad.sql:2: SELECT count(*) = 999 FROM ledger -- returned false"),
        "{out}"
    );
    assert!(
        out.contains("bad.sql:4:") && out.contains("division by zero"),
        "{out}"
    );
    assert!(out.contains("returned 2 rows, not one boolean"), "{out}");
    assert!(
        !out.contains("bad.sql:1:"),
        "the true assertion passed: {out}"
    );
    assert!(
        out.contains("postgres.public.ledger: 1000 rows restored, 1501 on the source"),
        "{out}"
    );
    assert!(
        out.contains("bad.sql:7: SELECT true -- connecting to database nosuchdb"),
        "{out}"
    );
    assert!(out.contains("1 of 5 statements passed"), "{out}");
    assert!(out.contains("drill FAILED: 2 of 2 checks failed"), "{out}");
    assert!(
        err.contains("drill failed: row counts, assertions"),
        "{err}"
    );
    assert!(out.contains(&format!("{kept_arg} kept")), "{out}");
    assert!(
        kept.join("pgdata/PG_VERSION").exists(),
        "--keep keeps the copy"
    );
    no_server_in(&kept);
    std::fs::remove_dir_all(&kept).expect("remove the kept copy");

    // A role the restored cluster does not have: recovery is not waited for an hour.
    let started = Instant::now();
    let (out, err) = a.expect_as_server(
        &["--json", "drill", "--pg-bin", &bin, "--db-user", "nobody"],
        1,
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let report: Value = serde_json::from_str(&out).expect("drill JSON");
    assert_eq!(report["failure"]["stage"], "recovery", "{report}");
    assert!(err.contains("\"nobody\""), "{err}");
    let default_scratch = PathBuf::from(report["scratch"].as_str().expect("scratch"));
    assert!(
        default_scratch.starts_with(std::env::temp_dir())
            && default_scratch
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pgkeep-drill-")),
        "{report}"
    );
    assert!(!default_scratch.exists(), "{report}");

    // Interrupted while checking: the server is stopped and the scratch removed.
    let slow = owned_file(&a, "slow.sql", "SELECT true FROM pg_sleep(120);\n");
    // Binaries without pg_amcheck (as before PostgreSQL 14): that check is skipped.
    let no_amcheck = a.pg.owned_dir("bin-without-pg_amcheck").expect("dir");
    for entry in std::fs::read_dir(a.pg.bin_dir()).expect("bin dir") {
        let entry = entry.expect("entry");
        if entry.file_name() != "pg_amcheck" {
            std::os::unix::fs::symlink(entry.path(), no_amcheck.join(entry.file_name()))
                .expect("symlink");
        }
    }
    let no_amcheck_arg = no_amcheck.display().to_string();
    let interrupted = scratch_path(&a, "interrupted");
    let interrupted_arg = interrupted.display().to_string();
    let port = free_port().to_string();
    let args = [
        "drill",
        "--scratch",
        &interrupted_arg,
        "--port",
        &port,
        "--pg-bin",
        &no_amcheck_arg,
        "--count-max-mib",
        "0",
        "--sql",
        &slow,
    ];
    let mut cmd = a.env.command(&args);
    a.pg.run_as_owner(&mut cmd)
        .env("HOME", a.config.parent().expect("dir"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn drill");
    let deadline = Instant::now() + Duration::from_secs(120);
    let pid_file = interrupted.join("pgdata/postmaster.pid");
    let postmaster = loop {
        assert!(Instant::now() < deadline, "the drill server never started");
        if let Some(p) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
        {
            break p;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Wait until the assertion runs (the checks stage), asking the drill server itself.
    loop {
        assert!(Instant::now() < deadline, "the assertion never ran");
        let mut psql = std::process::Command::new(a.pg.bin("psql"));
        psql.args(["-X", "-A", "-t", "-h"])
            .arg(interrupted.join("pgdata"))
            .args(["-p", &port, "-U", "postgres", "-d", "postgres", "-c"])
            .arg(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid()",
            );
        let out = a.pg.run_as_owner(&mut psql).output().expect("psql");
        if String::from_utf8_lossy(&out.stdout).trim() == "1" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let signalled = Instant::now();
    let output = child.wait_with_output().expect("drill ends");
    assert!(signalled.elapsed() < Duration::from_secs(60));
    let (out, err) = expect_code(&output, &args, 1);
    assert!(out.contains("FAILED in interrupted"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("pg_amcheck ")
            && l.contains("skipped  ")
            && l.contains("no pg_amcheck in")),
        "{out}"
    );
    assert!(
        out.contains("0 tables in 2 databases counted, 2 over the size limit not counted"),
        "--count-max-mib 0: {out}"
    );
    assert!(err.contains("drill interrupted; cleaned up"), "{err}");
    assert!(!interrupted.exists(), "{out}");
    // The postmaster is gone once the drill exits; allow its last moments as a zombie
    // until init reaps it (pg_ctl daemonizes it, so the drill is not its parent).
    let proc_dir = format!("/proc/{}", postmaster.trim());
    let gone_by = Instant::now() + Duration::from_secs(10);
    while Path::new(&proc_dir).exists()
        && !std::fs::read_to_string(format!("{proc_dir}/stat")).is_ok_and(|s| s.contains(") Z "))
        && Instant::now() < gone_by
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !Path::new(&proc_dir).exists()
            || std::fs::read_to_string(format!("{proc_dir}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "the drill server was stopped"
    );
}

#[test]
fn drill_fails_clearly_on_a_damaged_pack() {
    let a = Archiving::start(PgVersion::V15, 1, &[]);
    a.sql("CREATE TABLE ledger AS SELECT g AS id FROM generate_series(1, 1000) g");
    a.expect_as_server(&["backup", "--pg", &a.pg.connstring()], 0);
    a.switch_and_wait();

    // The largest object under data/: a pack of the backup's chunks.
    let mut packs = Vec::new();
    let mut dirs = vec![a.repo.join("data")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("data dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let len = std::fs::metadata(&path).expect("meta").len();
                packs.push((len, path));
            }
        }
    }
    packs.sort();
    let (len, pack) = packs.pop().expect("a pack");
    let mut bytes = std::fs::read(&pack).expect("read pack");
    let at = usize::try_from(len / 2).expect("size");
    bytes[at] ^= 0x01;
    std::fs::write(&pack, &bytes).expect("damage the pack");

    let scratch = scratch_path(&a, "damaged");
    let scratch_arg = scratch.display().to_string();
    let bin = a.pg.bin_dir().display().to_string();
    let (out, err) = a.expect_as_server(
        &[
            "--json",
            "drill",
            "--scratch",
            &scratch_arg,
            "--pg-bin",
            &bin,
        ],
        5,
    );
    let report: Value = serde_json::from_str(&out).expect("drill JSON");
    assert_eq!(report["passed"], false, "{report}");
    assert_eq!(report["failure"]["stage"], "restore", "{report}");
    let name = pack
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        report["failure"]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&name)),
        "the damaged pack is named: {report}"
    );
    assert!(err.contains("drill failed: restoring backup"), "{err}");
    assert!(report["recovery"].is_null(), "never started: {report}");
    assert_eq!(report["cleanup"]["scratch_removed"], true);
    assert!(!scratch.exists());
}
