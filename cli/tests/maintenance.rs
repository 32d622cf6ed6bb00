//! Repository lifecycle against a real server: pin, expire, prune, info, and every remaining
//! backup restoring afterwards; prune waiting for a backup in progress.

mod common;

use std::time::Duration;

use common::archiving::Archiving;
use common::free_port;
use pgkeep_testkit::pg::PgVersion;
use serde_json::Value;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Restores `backup` to its end, starts it, and returns the row count of `t`.
fn restored_count(a: &Archiving, backup: &str, name: &str) -> String {
    let dir = a.pg.owned_dir(name).expect("dir");
    let port = free_port();
    let (dir_arg, port_arg) = (dir.display().to_string(), port.to_string());
    let bin = a.pg.bin_dir().display().to_string();
    a.expect_as_server(
        &[
            "restore",
            "--pgdata",
            &dir_arg,
            "--backup",
            backup,
            "--target-immediate",
            "--start",
            "--port",
            &port_arg,
            "--pg-bin",
            &bin,
        ],
        0,
    );
    let n = a.query_restored(&dir, port, "SELECT count(*) FROM t");
    a.stop_restored(&dir);
    n
}

#[test]
fn expire_and_prune_reclaim_space_and_what_remains_restores() {
    let a = Archiving::start(PgVersion::V15, 1, &[]);
    let conn = a.pg.connstring();
    let mut ids = Vec::new();
    let mut counts = Vec::new();
    a.sql("CREATE TABLE t (id int, pad text)");
    for round in 0..3 {
        // Fresh, incompressible rows each round, so every backup adds its own chunks.
        a.sql(&format!(
            "INSERT INTO t SELECT g, md5(g::text || '{round}') || md5(random()::text) FROM generate_series(1, 60000) g"
        ));
        if round == 1 {
            a.sql("DELETE FROM t WHERE id % 2 = 0; VACUUM FULL t");
        }
        let full = if round == 2 { vec!["--full"] } else { vec![] };
        let mut args = vec!["--json", "backup", "--pg", &conn];
        args.extend(full);
        let (out, _) = a.expect_as_server(&args, 0);
        ids.push(json(&out)["backup_id"].as_str().expect("id").to_owned());
        counts.push(a.sql("SELECT count(*) FROM t"));
        a.switch_and_wait();
        // Backup ids have a one-second resolution.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let info = a.info();
    assert_eq!(info["schema"], 2);
    assert_eq!(info["backups"].as_array().expect("backups").len(), 3);
    assert_eq!(info["backups"][1]["kind"], "incremental", "{info}");
    assert_eq!(info["backups"][1]["parent"], ids[0].as_str());
    assert_eq!(info["recoverable"][0]["restorable"], true, "{info}");
    let before = info["repository"]["pack_bytes"].as_u64().expect("bytes");

    // Pin the first; keep the newest only: the second goes (its parent is pinned, not it).
    let (out, _) = a.expect_as_server(&["--json", "pin", &ids[0], "--note", "audit"], 0);
    let pinned = json(&out);
    assert_eq!(pinned["action"], "pinned", "{pinned}");
    assert_eq!(pinned["cluster"], "main", "{pinned}");
    assert_eq!(pinned["backup"], ids[0].as_str(), "{pinned}");
    assert_eq!(pinned["note"], "audit", "{pinned}");
    assert!(pinned["time"].is_string(), "{pinned}");
    let (out, _) = a.expect_as_server(&["list"], 0);
    assert!(out.contains("yes: audit"), "{out}");
    let (out, _) = a.expect_as_server(&["--json", "expire", "--keep-last", "1", "--dry-run"], 0);
    let dry = json(&out);
    assert_eq!(dry["expired"], serde_json::json!([ids[1]]), "{dry}");
    assert_eq!(dry["backups"][2]["reasons"], serde_json::json!(["pinned"]));
    assert_eq!(
        a.info()["backups"].as_array().expect("backups").len(),
        3,
        "a dry run expired something"
    );

    // Unpinned, the first goes too, with the WAL before the remaining backup.
    let (out, _) = a.expect_as_server(&["unpin", &ids[0], "--json"], 0);
    assert_eq!(
        json(&out),
        serde_json::json!({"action": "unpinned", "cluster": "main", "backup": ids[0]})
    );
    let (_, err) = a.expect_as_server(&["unpin", &ids[0]], 1);
    assert!(err.contains("not found"), "{err}");
    let wal_before = a.info()["repository"]["wal_bytes"].as_u64().expect("wal");
    let (out, _) = a.expect_as_server(&["--json", "expire", "--keep-last", "1"], 0);
    let report = json(&out);
    assert_eq!(
        report["expired"],
        serde_json::json!([ids[1], ids[0]]),
        "{report}"
    );
    assert!(report["wal_removed"].as_u64().expect("n") > 0, "{report}");
    let info = a.info();
    assert!(info["repository"]["wal_bytes"].as_u64().expect("wal") < wal_before);
    let reclaimable = info["repository"]["reclaimable_bytes"].as_u64().expect("r");
    assert!(reclaimable > 1 << 20, "{info}");

    let (out, _) = a.expect_as_server(&["--json", "prune", "--dry-run"], 0);
    assert!(json(&out)["freed_bytes"].as_u64().expect("freed") > 0);
    assert_eq!(a.info()["repository"]["pack_bytes"].as_u64(), Some(before));
    let (out, _) = a.expect_as_server(&["--json", "prune"], 0);
    let pruned = json(&out);
    assert!(
        pruned["freed_bytes"].as_u64().expect("freed") > 1 << 20,
        "{pruned}"
    );
    let after = a.info()["repository"]["pack_bytes"]
        .as_u64()
        .expect("bytes");
    assert!(after < before, "{before} -> {after}");

    // What remains verifies, data included, and restores with its rows.
    a.expect_as_server(&["verify", "--read-data"], 0);
    assert_eq!(restored_count(&a, &ids[2], "r-last"), counts[2]);
    // Refusals: no policy, a zero count.
    let (_, err) = a.expect_as_server(&["expire"], 2);
    assert!(err.contains("no retention policy"), "{err}");
    let (_, err) = a.expect_as_server(&["expire", "--keep-last", "0"], 2);
    assert!(err.contains("keep-last 0"), "{err}");
}

/// Prune started while a backup runs waits for it, then deletes only what no manifest,
/// including the new backup's, references.
#[test]
fn prune_waits_for_a_running_backup_which_then_restores() {
    let a = Archiving::start(PgVersion::V18, 1, &[]);
    let conn = a.pg.connstring();
    a.sql(
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS pad FROM generate_series(1, 200000) g",
    );
    let (out, _) = a.expect_as_server(&["--json", "backup", "--pg", &conn], 0);
    let first = json(&out)["backup_id"].as_str().expect("id").to_owned();
    std::thread::sleep(Duration::from_millis(1100));
    // The first is expired once the second has started (by removing its manifest, which is
    // what expire does): its chunks are garbage prune wants, and the second backup, a
    // slow one, dedups against them.
    let backup =
        a.pg.run_as_owner(&mut a.env.command(&[
            "--json",
            "backup",
            "--full",
            "--pg",
            &conn,
            "--max-rate",
            "8192",
        ]))
        .env("HOME", a.config.parent().expect("dir"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("backup starts");
    // Once the backup holds its lock (it then has read the index, or is about to).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(a.repo.join("locks")).map_or(0, |d| d.count()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the backup took no lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_file(a.repo.join("clusters/main/backups").join(&first))
        .expect("expire the first");
    // Without waiting: refused with the holder named, exit 7.
    let (_, err) = a.expect_as_server(&["prune", "--lock-wait", "0"], 7);
    assert!(err.contains("locked by backup (shared)"), "{err}");
    let (out, err) = a.expect_as_server(&["--json", "--log-level", "warn", "prune"], 0);
    assert!(err.contains("waiting up to"), "prune did not wait: {err}");
    let out_backup = backup.wait_with_output().expect("backup");
    assert!(out_backup.status.success(), "backup failed");
    let second = json(&String::from_utf8_lossy(&out_backup.stdout))["backup_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let pruned = json(&out);
    assert_eq!(pruned["dry_run"], false);
    assert_eq!(restored_count(&a, &second, "r-second"), "200000");
}
