//! `pgkeep check` against real servers: a healthy archiving PostgreSQL 15 cluster (with the
//! end-to-end archive test), backup-age thresholds, a wrong passphrase, a repository that
//! another cluster name points at, an unreachable server and bad usage; and a misconfigured
//! PostgreSQL 18 (wal_level = minimal, archiving off) where each problem comes with its fix.

mod common;

use std::time::{Duration, SystemTime};

use common::archiving::Archiving;
use common::{expect_code, free_port, Env};
use pgkeep_testkit::pg::{PgCluster, PgVersion};
use serde_json::Value;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("check --json: {e}\n{out}"))
}

fn finding<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no finding {name}: {doc:#}"))
}

fn status<'a>(doc: &'a Value, name: &str) -> &'a str {
    finding(doc, name)["status"].as_str().expect("status")
}

#[test]
fn check_a_healthy_cluster_its_thresholds_and_what_it_cannot_reach() {
    let a = Archiving::start(PgVersion::V15, 1, &[]);
    let conn = a.pg.connstring();
    a.expect_as_server(&["backup", "--pg", &conn], 0);
    a.switch_and_wait();

    // Healthy, with the end-to-end test: every finding OK, exit 0.
    let args = ["--json", "check", "--pg", &conn, "--archive-test"];
    let (out, _) = expect_code(&a.env.run(&args), &args, 0);
    let doc = json(&out);
    assert_eq!(doc["schema"], 1, "{doc:#}");
    assert_eq!(doc["status"], "ok", "{doc:#}");
    assert_eq!(doc["exit_code"], 0, "{doc:#}");
    for name in [
        "connection",
        "wal_level",
        "max_wal_senders",
        "archive_mode",
        "archive_command",
        "archiver",
        "repository",
        "backup_age",
        "wal_age",
        "archive_test",
    ] {
        assert_eq!(status(&doc, name), "ok", "{name}: {doc:#}");
    }
    for f in doc["findings"].as_array().expect("findings") {
        assert_eq!(f["fix"], Value::Null, "{f:#}");
    }
    assert!(
        finding(&doc, "archive_command")["message"]
            .as_str()
            .expect("message")
            .contains("into this repository"),
        "{doc:#}"
    );
    let switched = finding(&doc, "archive_test")["observed"]
        .as_str()
        .expect("segment")
        .to_owned();
    let stored = a.info()["wal"][0]["ranges"][0]["last"]
        .as_str()
        .expect("last")
        .to_owned();
    assert!(
        stored >= switched,
        "{switched} not in the archive ({stored})"
    );

    // The human form: a Nagios status line with performance data, then one line each.
    let (out, _) = a.env.expect(&["check", "--pg", &conn], 0);
    let first = out.lines().next().expect("summary");
    assert!(first.starts_with("PGKEEP OK - "), "{out}");
    assert!(first.contains("| backup_age="), "{out}");
    assert!(
        out.contains("\nOK wal_level: wal_level is replica"),
        "{out}"
    );

    // Thresholds: WARNING beyond --max-backup-age, CRITICAL beyond twice.
    std::thread::sleep(Duration::from_secs(2));
    let list = a.env.list();
    let stop = list[0]["stop_time"].as_str().expect("stop time");
    let stop = humantime::parse_rfc3339_weak(&stop.replace(" UTC", "")).expect("time");
    let age = SystemTime::now()
        .duration_since(stop)
        .unwrap_or_default()
        .as_secs();
    let limit = format!("{}s", (age * 2).div_ceil(3).max(2));
    let args = ["--json", "check", "--pg", &conn, "--max-backup-age", &limit];
    let (out, _) = expect_code(&a.env.run(&args), &args, 1);
    let doc = json(&out);
    assert_eq!(status(&doc, "backup_age"), "warning", "{doc:#}");
    assert!(finding(&doc, "backup_age")["fix"]
        .as_str()
        .expect("fix")
        .contains("pgkeep backup"));
    let args = ["--json", "check", "--pg", &conn, "--max-backup-age", "1s"];
    let (out, _) = expect_code(&a.env.run(&args), &args, 2);
    let doc = json(&out);
    assert_eq!(status(&doc, "backup_age"), "critical", "{doc:#}");
    assert_eq!(doc["ages"][0]["name"], "backup_age", "{doc:#}");
    assert_eq!(doc["ages"][0]["warning_seconds"], 1, "{doc:#}");
    assert_eq!(doc["ages"][0]["critical_seconds"], 2, "{doc:#}");
    // From the environment, as a monitoring host would set it.
    let mut env = Env::new();
    env.set("PGKEEP_CONFIG", &a.config.display().to_string())
        .set("PGKEEP_MAX_BACKUP_AGE", "1s");
    env.expect(&["check", "--pg", &conn], 2);

    // A wrong passphrase: CRITICAL, and the server is still checked.
    let mut env = Env::new();
    env.set("PGKEEP_CONFIG", &a.config.display().to_string())
        .set("PGKEEP_PASSPHRASE", "not the passphrase");
    let args = ["--json", "check", "--pg", &conn];
    let (out, _) = expect_code(&env.run(&args), &args, 2);
    let doc = json(&out);
    assert_eq!(status(&doc, "repository"), "critical", "{doc:#}");
    assert!(
        finding(&doc, "repository")["message"]
            .as_str()
            .expect("message")
            .contains("wrong passphrase"),
        "{doc:#}"
    );
    assert_eq!(status(&doc, "wal_level"), "ok", "{doc:#}");

    // Checked as another cluster: archive_command stores elsewhere, and the slot wal-stream
    // would use does not exist.
    let args = [
        "--json",
        "--cluster",
        "other",
        "check",
        "--pg",
        &conn,
        "--slot",
        "pgkeep",
    ];
    let (out, _) = expect_code(&a.env.run(&args), &args, 2);
    let doc = json(&out);
    let cmd = finding(&doc, "archive_command");
    assert_eq!(cmd["status"], "critical", "{doc:#}");
    assert!(
        cmd["message"]
            .as_str()
            .expect("message")
            .contains("it stores as cluster main"),
        "{doc:#}"
    );
    assert!(cmd["fix"]
        .as_str()
        .expect("fix")
        .contains("--cluster other wal-push %p"));
    assert_eq!(status(&doc, "slot"), "critical", "{doc:#}");
    assert_eq!(status(&doc, "backup_age"), "critical", "{doc:#}");

    // An unreachable server: UNKNOWN, the repository still checked.
    let nowhere = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        free_port()
    );
    let args = ["--json", "check", "--pg", &nowhere, "--archive-test"];
    let (out, _) = expect_code(&a.env.run(&args), &args, 3);
    let doc = json(&out);
    assert_eq!(status(&doc, "connection"), "unknown", "{doc:#}");
    assert_eq!(status(&doc, "archive_test"), "unknown", "{doc:#}");
    assert_eq!(status(&doc, "repository"), "ok", "{doc:#}");
    assert_eq!(status(&doc, "backup_age"), "ok", "{doc:#}");

    // Bad usage is UNKNOWN too, not clap's 2 (which a monitoring system reads as CRITICAL).
    let (out, _) = a.env.expect(&["check", "--max-wal-age", "soon"], 3);
    assert!(
        out.starts_with("PGKEEP UNKNOWN - 1 unknown (usage)"),
        "{out}"
    );
    assert!(out.contains("--max-wal-age \"soon\""), "{out}");
    let (_, err) = a.env.expect(&["check", "--no-such-flag"], 3);
    assert!(err.contains("--no-such-flag"), "{err}");
    a.env.expect(&["check", "--archive-timeout", "5s"], 3);
    a.env
        .expect(&["check", "--pg", &conn, "--slot", "Bad-Name"], 3);
    let mut env = Env::new();
    env.set(
        "PGKEEP_CONFIG",
        &a.env.path("missing.toml").display().to_string(),
    );
    env.expect(&["check"], 3);
}

#[test]
fn check_reports_each_problem_of_a_misconfigured_server_with_a_fix() {
    // wal_level = minimal requires max_wal_senders = 0; archiving stays off.
    let pg = PgCluster::builder(PgVersion::V18)
        .setting("wal_level", "minimal")
        .setting("max_wal_senders", "0")
        .setting("archive_mode", "off")
        .start()
        .expect("cluster");
    let mut e = Env::new();
    e.set("PGKEEP_REPO", &e.repo())
        .set("PGKEEP_PASSPHRASE", "check test");
    e.expect(&["init"], 0);
    let conn = pg.connstring();

    let args = ["--json", "check", "--pg", &conn, "--archive-test"];
    let (out, _) = expect_code(&e.run(&args), &args, 2);
    let doc = json(&out);
    assert_eq!(doc["status"], "critical", "{doc:#}");
    for (name, observed, fix) in [
        ("wal_level", "minimal", "set wal_level = replica"),
        ("max_wal_senders", "0", "set max_wal_senders = 10"),
        ("archive_mode", "off", "set archive_mode = on"),
        ("archive_command", "", "wal-push %p' in postgresql.conf"),
        ("backup_age", "", "pgkeep backup"),
        ("wal_age", "", "archive_command"),
    ] {
        let f = finding(&doc, name);
        assert_eq!(f["status"], "critical", "{name}: {doc:#}");
        if !observed.is_empty() {
            assert_eq!(f["observed"], observed, "{name}: {doc:#}");
        }
        let text = f["fix"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no fix"));
        assert!(text.contains(fix), "{name}: {text}");
    }
    // The suggested archive_command is this pgkeep with this repository.
    let fix = finding(&doc, "archive_command")["fix"]
        .as_str()
        .expect("fix");
    assert!(
        fix.contains(&format!(
            "'{} --config {} --passphrase-file PASSPHRASE_FILE --repo {} wal-push %p'",
            common::archiving::PGKEEP,
            e.path("empty.toml").display(),
            e.repo()
        )),
        "{fix}"
    );
    // The archive test cannot succeed here, and says why instead of waiting.
    let t = finding(&doc, "archive_test");
    assert_eq!(t["status"], "unknown", "{doc:#}");
    assert!(
        t["message"].as_str().expect("message").contains("minimal"),
        "{doc:#}"
    );
    assert_eq!(status(&doc, "repository"), "ok", "{doc:#}");

    // The same as text: the summary names the problems, each has a fix line.
    let (out, _) = e.expect(&["check", "--pg", &conn], 2);
    let first = out.lines().next().expect("summary");
    assert!(
        first.starts_with("PGKEEP CRITICAL - 6 critical (wal_level, max_wal_senders, archive_mode, archive_command, backup_age, wal_age)"),
        "{out}"
    );
    assert!(
        out.contains("CRITICAL wal_level: wal_level is minimal")
            && out.contains("\n  fix: set wal_level = replica"),
        "{out}"
    );
    assert_eq!(out.matches("\n  fix: ").count(), 6, "{out}");

    // No repository there, or no passphrase to open it: CRITICAL and UNKNOWN, each with a fix.
    let nowhere = e.path("nowhere").display().to_string();
    let args = ["--json", "--repo", &nowhere, "check", "--pg", &conn];
    let (out, _) = expect_code(&e.run(&args), &args, 2);
    let repo = json(&out);
    let repo = finding(&repo, "repository");
    assert_eq!(repo["status"], "critical", "{repo:#}");
    assert!(
        repo["fix"].as_str().expect("fix").contains("pgkeep init"),
        "{repo:#}"
    );
    let mut no_pass = Env::new();
    no_pass.set("PGKEEP_REPO", &e.repo());
    let args = ["--json", "check", "--pg", &conn];
    let (out, _) = expect_code(&no_pass.run(&args), &args, 2);
    let repo = json(&out);
    let repo = finding(&repo, "repository");
    assert_eq!(repo["status"], "unknown", "{repo:#}");
    assert!(
        repo["fix"]
            .as_str()
            .expect("fix")
            .contains("PGKEEP_PASSPHRASE_FILE"),
        "{repo:#}"
    );

    let (help, _) = e.expect(&["check", "--help"], 0);
    for needle in [
        "--archive-test",
        "--max-backup-age",
        "PGKEEP_MAX_WAL_AGE",
        "0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
        "Examples:",
    ] {
        assert!(
            help.contains(needle),
            "check --help lacks {needle}:\n{help}"
        );
    }
}
