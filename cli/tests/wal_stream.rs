//! `pgkeep wal-stream` against real servers: segments and `.partial` uploads, SIGKILL and
//! restart without a gap, the slot never ahead of the archive, running beside
//! archive_command, metrics, clean shutdown, and a timeline switch (promoted standby).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::archiving::{scrape, Archiving};
use common::free_port;
use pgkeep_testkit::pg::{PgCluster, PgVersion};
use serde_json::Value;

/// A running `wal-stream`, killed on drop.
struct Streamer {
    child: Child,
    metrics: String,
}

impl Drop for Streamer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_stream(a: &Archiving, pg: &PgCluster, slot: &str) -> Streamer {
    let metrics = format!("127.0.0.1:{}", free_port());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(a.env.path("wal-stream.log"))
        .expect("log");
    // As the server's OS user, like its archive_command: both write the same repository.
    let mut cmd = a.env.command(&[
        "--log-level",
        "info",
        "wal-stream",
        "--pg",
        &pg.connstring(),
        "--slot",
        slot,
        "--partial-interval",
        "1",
        "--metrics-addr",
        &metrics,
    ]);
    let home = a.config.parent().expect("config dir").to_owned();
    let child =
        a.pg.run_as_owner(&mut cmd)
            .env("HOME", home)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("wal-stream starts");
    let s = Streamer { child, metrics };
    wait_for(Duration::from_secs(30), "the metrics endpoint", || {
        scrape(&s.metrics).is_some()
    });
    s
}

fn stream_log(a: &Archiving) -> String {
    std::fs::read_to_string(a.env.path("wal-stream.log")).unwrap_or_default()
}

fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').expect("X/X");
    (u64::from_str_radix(hi, 16).expect("hex") << 32) | u64::from_str_radix(lo, 16).expect("hex")
}

/// The archive holds one run of segments on `timeline`, without gaps, up to `last`.
fn assert_continuous(a: &Archiving, timeline: u64, last: &str) {
    let info = a.info();
    let tl = info["wal"]
        .as_array()
        .expect("wal")
        .iter()
        .find(|t| t["timeline"] == timeline)
        .unwrap_or_else(|| panic!("timeline {timeline} missing: {info}"));
    assert_eq!(tl["gaps"], Value::Array(vec![]), "{info}");
    let ranges = tl["ranges"].as_array().expect("ranges");
    assert_eq!(ranges.len(), 1, "{info}");
    assert!(ranges[0]["last"].as_str() >= Some(last), "{info}");
}

#[test]
fn stream_survives_sigkill_without_a_gap_and_the_slot_never_passes_the_archive() {
    let a = Archiving::with(PgVersion::V15, 1, &[], false);
    let pg = &a.pg;
    let mut s = start_stream(&a, pg, "pgkeep_test");
    a.write_wal(20_000);
    let seg = a.sql("SELECT pg_walfile_name(pg_switch_wal())");
    wait_for(Duration::from_secs(60), "the switched segment", || {
        a.stored_wal("00000001").contains(&seg)
    });
    // The segment being filled is uploaded as .partial within the interval.
    a.write_wal(2_000);
    wait_for(Duration::from_secs(30), "a .partial upload", || {
        a.stored_wal("00000001")
            .iter()
            .any(|n| n.ends_with(".partial"))
    });
    // The slot's restart point never passes what is stored.
    for _ in 0..5 {
        a.write_wal(2_000);
        let restart = lsn(
            &a.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pgkeep_test'")
        );
        let m = scrape(&s.metrics).expect("metrics");
        let archived = m["pgkeep_wal_stream_archived_lsn_bytes"] as u64;
        assert!(
            restart <= archived,
            "slot at {restart:X}, archive at {archived:X}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let m = scrape(&s.metrics).expect("metrics");
    assert!(
        m["pgkeep_wal_stream_segments_archived_total"] >= 1.0,
        "{m:?}"
    );
    assert!(m["pgkeep_wal_stream_partial_uploads_total"] >= 1.0, "{m:?}");
    assert_eq!(m["pgkeep_wal_stream_timeline"], 1.0);

    // The server drops the connection: the receiver reconnects by itself and goes on.
    a.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication");
    a.write_wal(5_000);
    let seg = a.sql("SELECT pg_walfile_name(pg_switch_wal())");
    wait_for(
        Duration::from_secs(60),
        "the segment after a dropped connection",
        || a.stored_wal("00000001").contains(&seg),
    );
    assert!(
        scrape(&s.metrics).expect("metrics")["pgkeep_wal_stream_errors_total"] >= 1.0,
        "{}",
        stream_log(&a)
    );

    // SIGKILL, more WAL while it is down, restart: no gap. Killed, the receiver reported
    // nothing beyond what the archive holds.
    s.child.kill().expect("kill");
    s.child.wait().expect("reaped");
    let restart =
        lsn(&a.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pgkeep_test'"));
    let end = a.archive_end(1 << 20);
    assert!(
        restart <= end,
        "slot at {restart:X}, archive ends at {end:X}"
    );
    for _ in 0..3 {
        a.write_wal(10_000);
        a.sql("SELECT pg_switch_wal()");
    }
    let last = a.sql("SELECT pg_walfile_name(pg_switch_wal())");
    drop(s);
    let s = start_stream(&a, pg, "pgkeep_test");
    wait_for(
        Duration::from_secs(60),
        "the segments written while down",
        || a.stored_wal("00000001").contains(&last),
    );
    assert_continuous(&a, 1, &last);
    // Stored bytes are the server's.
    let fetched = a.env.path("fetched");
    a.env
        .expect(&["wal-fetch", &last, &fetched.display().to_string()], 0);
    let original = pg.data_dir().join("pg_wal").join(&last);
    if original.exists() {
        assert!(
            std::fs::read(&fetched).expect("fetched") == std::fs::read(&original).expect("pg_wal")
        );
    }
    // SIGTERM: a clean stop (exit 0), after a last .partial upload.
    let pid = s.child.id();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let mut s = s;
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(st) = s.child.try_wait().expect("wait") {
            break st.code();
        }
        assert!(
            Instant::now() < deadline,
            "wal-stream did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, Some(0), "{}", stream_log(&a));
}

/// wal-stream and archive_command on one repository: the same segments, no conflict, no
/// archiver failure. Then a standby of this server is promoted: its archive_command stores
/// the history file and timeline 2.
#[test]
fn stream_beside_archive_command_and_a_promoted_standby() {
    let a = Archiving::start(PgVersion::V18, 1, &[]);
    let pg = &a.pg;
    let s = start_stream(&a, pg, "beside");
    for _ in 0..3 {
        a.write_wal(10_000);
    }
    let last = a.switch_and_wait();
    wait_for(
        Duration::from_secs(60),
        "wal-stream to store the last segment",
        || {
            scrape(&s.metrics)
                .is_some_and(|m| m["pgkeep_wal_stream_segments_archived_total"] >= 2.0)
                && a.stored_wal("00000001").contains(&last)
        },
    );
    let failed = a.sql("SELECT failed_count FROM pg_stat_archiver");
    assert_eq!(failed, "0", "{}", pg.log_tail());
    assert!(!stream_log(&a).contains("ERROR"), "{}", stream_log(&a));
    assert_continuous(&a, 1, &last);
    drop(s);

    // A standby (it inherits archive_command through postgresql.auto.conf), promoted.
    let standby = PgCluster::builder(PgVersion::V18)
        .standby_of(pg)
        .start()
        .expect("standby");
    a.write_wal(5_000);
    let primary_lsn = a.sql("SELECT pg_current_wal_lsn()");
    wait_for(Duration::from_secs(30), "the standby to replay", || {
        standby
            .psql(&format!(
                "SELECT pg_last_wal_replay_lsn() >= '{primary_lsn}'"
            ))
            .is_ok_and(|v| v == "t")
    });
    // A receiver on the standby (cascading, its own slot) follows it across the promotion.
    let follower = start_stream(&a, &standby, "on_standby");
    wait_for(
        Duration::from_secs(30),
        "the follower to store a .partial",
        || {
            scrape(&follower.metrics)
                .is_some_and(|m| m["pgkeep_wal_stream_partial_uploads_total"] >= 1.0)
        },
    );
    standby.promote().expect("promote");
    standby
        .psql("CREATE TABLE after_promotion AS SELECT 1 AS x")
        .expect("write on timeline 2");
    let switch = standby.psql("SELECT pg_switch_wal()").expect("switch");
    let tli2 = standby
        .psql(&format!("SELECT pg_walfile_name('{switch}')"))
        .expect("name");
    assert!(tli2.starts_with("00000002"), "{tli2}");
    wait_for(Duration::from_secs(60), "timeline 2 archived", || {
        a.stored_wal("00000002").contains(&tli2)
    });
    // The follower crossed over: it streams timeline 2 and stored the switched segment.
    wait_for(
        Duration::from_secs(60),
        "the follower on timeline 2",
        || {
            scrape(&follower.metrics).is_some_and(|m| {
                m["pgkeep_wal_stream_timeline"] == 2.0
                    && m["pgkeep_wal_stream_archived_lsn_bytes"] as u64 >= lsn(&switch)
            })
        },
    );
    let log = stream_log(&a);
    assert!(
        log.contains("reconnecting") && !log.contains("ERROR"),
        "{log}"
    );
    let on2 = a.stored_wal("00000002");
    assert!(on2.contains(&"00000002.history".to_owned()), "{on2:?}");
    let info = a.info();
    let timelines: Vec<u64> = info["wal"]
        .as_array()
        .expect("wal")
        .iter()
        .map(|t| t["timeline"].as_u64().expect("tli"))
        .collect();
    assert_eq!(timelines, [1, 2], "{info}");
    assert_eq!(info["wal"][1]["history_file"], true, "{info}");
    // pg_basebackup made the primary archive a backup history file.
    assert!(
        a.stored_wal("00000001")
            .iter()
            .any(|n| n.ends_with(".backup")),
        "{:?}",
        a.stored_wal("00000001")
    );
    // The old timeline's last segment comes as .partial from the promoted server.
    assert!(
        a.stored_wal("00000001")
            .iter()
            .any(|n| n.ends_with(".partial")),
        "{:?}",
        a.stored_wal("00000001")
    );
}
