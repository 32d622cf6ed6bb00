//! What pgkeep does when the PostgreSQL server fails under it: restarted (fast or immediate)
//! or its walsender terminated in the middle of a backup, a walsender or postmaster that
//! stops answering (SIGSTOP), for `backup` and `wal-stream`. A backup fails within its
//! timeout with a non-zero exit and a message naming the cause, is never listed, and the
//! next one succeeds; `wal-stream` reconnects by itself and leaves no gap.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::archiving::{scrape, Archiving};
use common::free_port;
use pgkeep_testkit::pg::PgVersion;
use serde_json::Value;

fn listed(a: &Archiving) -> usize {
    let (out, _) = a.expect_as_server(&["--json", "list"], 0);
    serde_json::from_str::<Vec<Value>>(&out)
        .expect("list")
        .len()
}

fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(pid: &str, sig: &str) {
    let status = Command::new("kill")
        .args([sig, pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// A throttled full backup, started once its walsender streams the data files; returns the
/// child and the walsender's pid.
fn backup_in_flight(a: &Archiving, extra_env: &[(&str, &str)]) -> (Child, String) {
    let conn = a.pg.connstring();
    let mut cmd = a.command_as_server(&["backup", "--full", "--pg", &conn, "--max-rate", "4096"]);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("backup starts");
    let mut pid = String::new();
    wait_for(Duration::from_secs(60), "the backup to stream", || {
        pid = a.sql(
            "SELECT coalesce(max(pid)::text, '') FROM pg_stat_progress_basebackup \
             WHERE phase = 'streaming database files'",
        );
        !pid.is_empty()
    });
    (child, pid)
}

/// Waits for `child` to exit (at most `limit`); returns its exit code, stderr and how long
/// it took.
fn finish(child: Child, limit: Duration) -> (Option<i32>, String, Duration) {
    let t0 = Instant::now();
    let mut child = child;
    while child.try_wait().expect("wait").is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reaped");
            panic!(
                "pgkeep still ran {limit:?} after the fault: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("reaped");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t0.elapsed(),
    )
}

fn pg_ctl(a: &Archiving, args: &[&str]) {
    let mut cmd = Command::new(a.pg.bin("pg_ctl"));
    cmd.arg("-D")
        .arg(a.pg.data_dir())
        .arg("-l")
        .arg(a.pg.log_path())
        .args(args)
        .current_dir(a.pg.data_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let status = a.pg.run_as_owner(&mut cmd).status().expect("pg_ctl");
    assert!(status.success(), "pg_ctl {args:?}: {}", a.pg.log_tail());
}

/// The server restarted (fast, immediate) or the backup's walsender terminated while the
/// data streams: the backup exits 6 promptly, naming what happened, is not listed, and the
/// next backup succeeds and verifies.
#[test]
fn backup_fails_cleanly_when_the_server_restarts_or_drops_it() {
    let a = Archiving::start(PgVersion::V15, 1, &[]);
    a.pgbench(&["-i", "-q", "-s", "2"]);
    for fault in [
        "restart -m fast",
        "restart -m immediate",
        "pg_terminate_backend",
    ] {
        let (child, pid) = backup_in_flight(&a, &[]);
        match fault {
            "pg_terminate_backend" => {
                assert_eq!(a.sql(&format!("SELECT pg_terminate_backend({pid})")), "t");
            }
            mode => {
                let mode = mode.rsplit(' ').next().expect("mode");
                pg_ctl(&a, &["restart", "-m", mode, "-w", "-t", "60"]);
            }
        }
        let (code, err, took) = finish(child, Duration::from_secs(30));
        println!("{fault}: exit {code:?} after {took:?}: {err}");
        assert_eq!(code, Some(6), "{fault}: {err}");
        assert!(
            err.contains("backing up")
                && (err.contains("terminating connection")
                    || err.contains("closed the connection")
                    || err.contains("connection I/O")),
            "{fault}: the cause is not named: {err}"
        );
        assert_eq!(listed(&a), 0, "{fault}: a failed backup was listed");
    }
    a.expect_as_server(&["backup", "--pg", &a.pg.connstring()], 0);
    assert_eq!(listed(&a), 1);
    a.expect_as_server(&["verify"], 0);
}

/// A walsender that stops sending mid-backup (SIGSTOP), with the timeout from
/// PGKEEP_TIMEOUT: the backup fails after about that long, exit 6, saying the server sent
/// nothing; it is not listed. A stopped postmaster (connections accepted by the kernel,
/// never answered): `--timeout` bounds the connection attempt too.
#[test]
fn backup_times_out_when_the_server_stops_sending() {
    let a = Archiving::start(PgVersion::V15, 1, &[]);
    a.pgbench(&["-i", "-q", "-s", "2"]);
    let (child, pid) = backup_in_flight(&a, &[("PGKEEP_TIMEOUT", "2")]);
    signal(&pid, "-STOP");
    let (code, err, took) = finish(child, Duration::from_secs(30));
    signal(&pid, "-CONT");
    println!("stopped walsender: exit {code:?} after {took:?}");
    assert_eq!(code, Some(6), "{err}");
    assert!(err.contains("no message from the server for 2s"), "{err}");
    // (Counted from the stop: the walsender may have been quiet a moment before it.)
    assert!(
        took >= Duration::from_millis(1500),
        "gave up after {took:?}"
    );
    assert!(
        took < Duration::from_secs(15),
        "gave up only after {took:?}"
    );
    assert_eq!(listed(&a), 0);

    let postmaster = std::fs::read_to_string(a.pg.data_dir().join("postmaster.pid"))
        .expect("postmaster.pid")
        .lines()
        .next()
        .expect("pid")
        .to_owned();
    signal(&postmaster, "-STOP");
    let t0 = Instant::now();
    let out = a
        .command_as_server(&["backup", "--pg", &a.pg.connstring(), "--timeout", "2"])
        .output()
        .expect("backup");
    let took = t0.elapsed();
    signal(&postmaster, "-CONT");
    let err = String::from_utf8_lossy(&out.stderr);
    println!(
        "stopped postmaster: exit {:?} after {took:?}",
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("2s"), "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(listed(&a), 0);

    a.expect_as_server(&["backup", "--pg", &a.pg.connstring()], 0);
    a.expect_as_server(&["verify"], 0);
}

/// `wal-stream --timeout 2` whose walsender stops sending (SIGSTOP): the receiver gives up
/// on the connection after 2 s, counts an error and retries; once the server runs again it
/// streams on, and the archive has every segment without a gap.
#[test]
fn wal_stream_reconnects_when_the_server_stops_sending() {
    let a = Archiving::with(PgVersion::V18, 1, &[], false);
    let metrics = format!("127.0.0.1:{}", free_port());
    let log_path = a.env.path("wal-stream.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = a
        .command_as_server(&[
            "--log-level",
            "info",
            "wal-stream",
            "--pg",
            &a.pg.connstring(),
            "--slot",
            "faults",
            "--partial-interval",
            "1",
            "--timeout",
            "2",
            "--metrics-addr",
            &metrics,
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("wal-stream starts");
    let mut pid = String::new();
    wait_for(Duration::from_secs(30), "streaming", || {
        pid = a.sql("SELECT coalesce(max(pid)::text, '') FROM pg_stat_replication WHERE state = 'streaming'");
        !pid.is_empty()
    });
    let first = a.sql("SELECT pg_walfile_name(pg_switch_wal())");
    signal(&pid, "-STOP");
    let stopped = Instant::now();
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_for(Duration::from_secs(20), "the receiver to time out", || {
        log_text().contains("no message from the server for 2s")
    });
    let took = stopped.elapsed();
    signal(&pid, "-CONT");
    println!("wal-stream gave up on a stopped walsender after {took:?}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert!(
        scrape(&metrics).expect("metrics")["pgkeep_wal_stream_errors_total"] >= 1.0,
        "{}",
        log_text()
    );
    a.sql("CREATE TABLE after_stop AS SELECT g FROM generate_series(1, 20000) g");
    let last = a.sql("SELECT pg_walfile_name(pg_switch_wal())");
    let wal_dir = a.repo.join("clusters/main/wal/00000001");
    wait_for(
        Duration::from_secs(60),
        "the segment after the stop",
        || wal_dir.join(&last).exists(),
    );
    assert!(wal_dir.join(&first).exists());
    let _ = child.kill();
    let _ = child.wait();
    let info = a.info();
    let tl = &info["wal"][0];
    assert_eq!(tl["gaps"], serde_json::json!([]), "{info}");
    assert_eq!(tl["ranges"].as_array().expect("ranges").len(), 1, "{info}");
    a.expect_as_server(&["verify", "--read-data"], 0);
}
