//! `pgkeep backup` and `pgkeep list` against a real PostgreSQL server, run as a user would,
//! including SIGKILL at several points of a backup.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::Env;

use pgkeep_testkit::pg::{Auth, PgCluster, PgVersion};

/// A CLI environment with a repository location and passphrase set.
fn env() -> Env {
    let mut e = Env::new();
    let repo = e.repo();
    e.set("PGKEEP_REPO", &repo)
        .set("PGKEEP_PASSPHRASE", "backup test");
    e
}

#[test]
fn backup_list_incremental_and_failures_through_the_cli() {
    let pg = PgCluster::builder(PgVersion::V15)
        .auth(Auth::Scram)
        .start()
        .expect("cluster");
    pg.pgbench_init(2).expect("pgbench -i");
    let e = env();
    e.expect(&["init"], 0);
    let conn = pg.connstring();

    let (out, _) = e.expect(&["--json", "backup", "--pg", &conn, "--label", "first"], 0);
    let first: serde_json::Value = serde_json::from_str(&out).expect("summary JSON");
    assert_eq!(first["kind"], "full");
    assert!(first["logical_bytes"].as_u64().expect("bytes") > 20 << 20);

    pg.psql("UPDATE pgbench_accounts SET abalance = 7 WHERE aid < 50")
        .expect("update");
    let (out, _) = e.expect(&["backup", "--pg", &conn], 0);
    assert!(
        out.contains("incremental of") && out.contains("unchanged since the parent"),
        "{out}"
    );

    let list = e.list();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["label"], "first");
    assert_eq!(list[1]["kind"], "incremental");
    assert_eq!(list[1]["parent"], list[0]["id"]);
    assert_eq!(list[1]["timeline"], 1);
    assert!(list[1]["start_lsn"].as_str().expect("lsn").contains('/'));
    let start_wal = list[1]["start_wal"].as_str().expect("start_wal");
    assert!(
        start_wal.len() == 24 && start_wal.starts_with("00000001"),
        "{start_wal}"
    );
    let (table, _) = e.expect(&["list"], 0);
    assert!(
        table.contains("START LSN") && table.contains("15."),
        "{table}"
    );

    // --full forces a full backup; one upload at a time works, none is refused. Any of
    // PostgreSQL's manifest checksum algorithms can be asked for, nothing else.
    let (out, _) = e.expect(
        &[
            "--json",
            "backup",
            "--pg",
            &conn,
            "--full",
            "--uploads",
            "1",
            "--manifest-checksums",
            "SHA512",
        ],
        0,
    );
    assert!(out.contains("\"kind\": \"full\""), "{out}");
    let (_, err) = e.expect(&["backup", "--pg", &conn, "--uploads", "0"], 2);
    assert!(err.contains("uploads 0 is outside 1..=64"), "{err}");
    let (_, err) = e.expect(&["backup", "--pg", &conn, "--manifest-checksums", "md5"], 2);
    assert!(err.contains("\"md5\" is not one of none, crc32c"), "{err}");

    // PostgreSQL refusing the password: exit 6, the server's message, no password shown.
    let bad = format!("{conn} password=wrong-password");
    let (_, err) = e.expect(&["backup", "--pg", &bad], 6);
    assert!(
        err.contains("28P01") && !err.contains("wrong-password"),
        "{err}"
    );
    let (_, err) = e.expect(
        &["backup", "--pg", "host=127.0.0.1 port=1 sslmode=disable"],
        6,
    );
    assert!(err.contains("cannot connect"), "{err}");
    let (_, err) = e.expect(&["backup", "--pg", "host=x nosuchoption=1"], 2);
    assert!(err.contains("nosuchoption"), "{err}");

    // Another server into the same cluster is refused; another cluster name works.
    let other = PgCluster::builder(PgVersion::V15)
        .start()
        .expect("second cluster");
    let (_, err) = e.expect(&["backup", "--pg", &other.connstring()], 2);
    assert!(err.contains("belongs to PostgreSQL system"), "{err}");
    e.expect(
        &["--cluster", "other", "backup", "--pg", &other.connstring()],
        0,
    );
    assert_eq!(e.list().len(), 3, "the refused backup left nothing behind");
}

/// Kills `pgkeep backup` with SIGKILL at several points: no killed backup is ever listed,
/// and the next backup succeeds. The server is throttled (`--max-rate`) so each backup takes
/// several seconds whatever the machine's load, and every kill lands mid-backup: during the
/// checkpoint, early, middle and late in the data.
#[test]
fn a_killed_backup_is_never_listed_and_the_next_one_succeeds() {
    let pg = PgCluster::builder(PgVersion::V15).start().expect("cluster");
    pg.pgbench_init(5).expect("pgbench -i");
    let e = env();
    e.expect(&["init"], 0);
    let conn = pg.connstring();
    // About 80 MB at 16 MB/s: five seconds or more.
    let throttled = [
        "backup",
        "--pg",
        conn.as_str(),
        "--full",
        "--max-rate",
        "16384",
    ];
    for at in [
        Duration::from_millis(300),
        Duration::from_secs(1),
        Duration::from_secs(2),
        Duration::from_secs(3),
    ] {
        pg.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 997 = 0")
            .expect("change");
        let mut child = e
            .command(&throttled)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(at);
        child.kill().expect("kill");
        let status = child.wait().expect("wait");
        assert_eq!(
            status.code(),
            None,
            "the backup finished within {at:?}; the throttle did not hold"
        );
        assert!(
            e.list().is_empty(),
            "a backup killed after {at:?} appeared in the list"
        );
    }
    // The repository is consistent: a new backup succeeds and is the only one listed.
    e.expect(&["backup", "--pg", &conn], 0);
    assert_eq!(e.list().len(), 1);
}

#[test]
fn list_of_an_empty_cluster_and_help() {
    let e = env();
    e.expect(&["init"], 0);
    let (out, _) = e.expect(&["list"], 0);
    assert!(out.contains("No backups"), "{out}");
    let (out, _) = e.expect(&["backup", "--help"], 0);
    for needle in [
        "--pg",
        "PGKEEP_PG",
        "--full",
        "--checkpoint",
        "--max-rate",
        "--uploads",
        "PGKEEP_UPLOADS",
        "PGHOST",
        "Example",
    ] {
        assert!(out.contains(needle), "backup --help lacks {needle}");
    }
}
