//! Secrets and permissions, end to end through the CLI on a real PostgreSQL 15 cluster: a
//! distinctive passphrase (from a passphrase file, and from PGKEEP_PASSPHRASE) and the
//! repository's master key must appear in no output at the most verbose log level, no server
//! log, no repository object, no restore_command and no started server's argv or environment;
//! key files, spooled WAL and restored data directories are private to their owner.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use common::archiving::Archiving;
use common::free_port;
use pgkeep_testkit::pg::PgVersion;

/// The passphrase under test: long and unlike anything else in a log.
const SECRET: &str = "Quokka-Saffron-5521-zebra-LIGHTHOUSE";
/// A wrong one, which must not be echoed either.
const WRONG: &str = "Marmalade-Wrong-0917-otter";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

/// Every regular file under `dir`.
fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        let t = entry.file_type().expect("type");
        if t.is_dir() {
            files_under(&entry.path(), out);
        } else if t.is_file() {
            out.push(entry.path());
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs pgkeep as the server's OS user with extra variables, keeping its output.
fn run(a: &Archiving, args: &[&str], vars: &[(&str, &str)], transcript: &mut Vec<u8>) -> Output {
    let mut cmd = a.env.command(args);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let home = a.config.parent().expect("config dir").to_owned();
    let out =
        a.pg.run_as_owner(&mut cmd)
            .env("HOME", home)
            .output()
            .expect("pgkeep runs");
    transcript.extend_from_slice(&out.stdout);
    transcript.extend_from_slice(&out.stderr);
    out
}

fn expect(a: &Archiving, args: &[&str], vars: &[(&str, &str)], code: i32, t: &mut Vec<u8>) {
    let out = run(a, args, vars, t);
    common::expect_code(&out, args, code);
}

#[test]
fn no_secret_in_logs_objects_or_child_processes_and_private_files() {
    let a = Archiving::with(PgVersion::V15, 1, &[], false);
    let mut transcript = Vec::new();
    let trace = [("PGKEEP_LOG", "trace")];

    // The distinctive passphrase replaces the setup's, given through PGKEEP_NEW_PASSPHRASE;
    // then the passphrase file holds it, and the config file turns on the most verbose logs
    // (for archive_command and restore_command too, whose output goes to server logs).
    expect(
        &a,
        &["key", "passwd"],
        &[("PGKEEP_NEW_PASSPHRASE", SECRET), trace[0]],
        0,
        &mut transcript,
    );
    let pass_file = a.config.parent().expect("dir").join("passphrase");
    a.pg.write_owned(&pass_file, &format!("{SECRET}\n"), 0o600)
        .expect("passphrase file");
    let config = std::fs::read_to_string(&a.config).expect("config");
    a.pg.write_owned(
        &a.config,
        &format!("log_level = \"trace\"\n{config}"),
        0o600,
    )
    .expect("config");
    a.install_archive_command();

    // A full scenario: backup, archived WAL, verify reading everything, list, info, a
    // wal-fetch with prefetch into a spool, a restore started as a server.
    let conn = a.pg.connstring();
    a.sql("CREATE TABLE t (id int, v text)");
    a.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g");
    let first = a.switch_and_wait();
    expect(
        &a,
        &["backup", "--pg", &conn, "--label", "secret-test"],
        &trace,
        0,
        &mut transcript,
    );
    a.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g");
    for _ in 0..3 {
        a.switch_and_wait();
    }
    expect(&a, &["verify", "--read-data"], &trace, 0, &mut transcript);
    expect(&a, &["--json", "list"], &trace, 0, &mut transcript);
    expect(&a, &["info"], &trace, 0, &mut transcript);
    // The same through PGKEEP_PASSPHRASE (it takes precedence over the config's file).
    expect(
        &a,
        &["list"],
        &[("PGKEEP_PASSPHRASE", SECRET), trace[0]],
        0,
        &mut transcript,
    );
    // A wrong passphrase is refused (exit 3) without being echoed.
    let out = run(
        &a,
        &["list"],
        &[("PGKEEP_PASSPHRASE", WRONG), trace[0]],
        &mut transcript,
    );
    common::expect_code(&out, &["list"], 3);

    // wal-fetch under a permissive umask: the restored file, the spool and the prefetched
    // segments are the owner's only (plaintext WAL).
    let fetch_dir = a.pg.owned_dir("fetched").expect("dir");
    let dest = fetch_dir.join("RECOVERYXLOG");
    let dest_arg = dest.display().to_string();
    expect(
        &a,
        &["wal-fetch", &first, &dest_arg],
        &trace,
        0,
        &mut transcript,
    );
    let spool = fetch_dir.join("pgkeep-spool");
    assert_eq!(mode(&spool), 0o700, "spool directory");
    let mut spooled = Vec::new();
    files_under(&spool, &mut spooled);
    assert!(!spooled.is_empty(), "prefetch spooled the next segments");
    for f in &spooled {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }

    // Restore and start: PGDATA 0700, restore_command without the passphrase, and the server
    // (which pgkeep started) without it in its argv or environment.
    let pgdata = a.pg.owned_dir("restored").expect("dir");
    let port = free_port();
    let (pgdata_arg, port_arg) = (pgdata.display().to_string(), port.to_string());
    let bin = a.pg.bin_dir().display().to_string();
    expect(
        &a,
        &[
            "restore",
            "--pgdata",
            &pgdata_arg,
            "--start",
            "--port",
            &port_arg,
            "--pg-bin",
            &bin,
        ],
        &trace,
        0,
        &mut transcript,
    );
    assert_eq!(mode(&pgdata), 0o700, "restored PGDATA");
    // Recovery replays the whole archive: both inserts.
    assert_eq!(
        a.query_restored(&pgdata, port, "SELECT count(*) FROM t"),
        "2000"
    );
    let pid = std::fs::read_to_string(pgdata.join("postmaster.pid")).expect("postmaster.pid");
    let pid = pid.lines().next().expect("pid").trim().to_owned();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let auto_conf = std::fs::read(pgdata.join("postgresql.auto.conf")).expect("auto.conf");
    assert!(
        contains(&auto_conf, b"restore_command"),
        "restore_command is set"
    );
    a.stop_restored(&pgdata);

    // The master key, unwrapped here from the key file, to look for its hex.
    let mut keys = Vec::new();
    files_under(&a.repo.join("keys"), &mut keys);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key_file =
        pgkeep_format::KeyFile::decode(&std::fs::read(&keys[0]).expect("key")).expect("key file");
    let master = key_file.unlock(SECRET.as_bytes()).expect("unlock");
    let master_hex = hex::encode(master.as_bytes());
    let master_hex_upper = master_hex.to_uppercase();

    // Everything that could leak: pgkeep's output, the server logs (archive_command), the
    // restored server's logs (restore_command), restore_command itself, the started server's
    // process, and every object in the repository.
    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("pgkeep output".into(), transcript),
        ("server environment".into(), environ),
        ("server argv".into(), cmdline),
        ("postgresql.auto.conf".into(), auto_conf),
        (
            "server log".into(),
            std::fs::read(a.pg.log_path()).expect("server log"),
        ),
    ];
    let mut restored_files = Vec::new();
    files_under(&pgdata, &mut restored_files);
    for f in restored_files.iter().filter(|f| {
        let name = f.display().to_string();
        name.ends_with(".log") || name.contains("/log/")
    }) {
        places.push((f.display().to_string(), std::fs::read(f).expect("log")));
    }
    let mut repo_files = Vec::new();
    files_under(&a.repo, &mut repo_files);
    for f in &repo_files {
        places.push((f.display().to_string(), std::fs::read(f).expect("object")));
    }
    let logged = &places[0].1;
    assert!(
        contains(logged, b"TRACE") || contains(logged, b"DEBUG"),
        "the most verbose level was on"
    );
    for (place, bytes) in &places {
        for (what, needle) in [
            ("passphrase", SECRET.as_bytes()),
            ("wrong passphrase", WRONG.as_bytes()),
            ("master key", master_hex.as_bytes()),
            ("master key", master_hex_upper.as_bytes()),
        ] {
            assert!(!contains(bytes, needle), "the {what} appears in {place}");
        }
    }

    // Repository files: directory 0700, key files private. The passphrase file must be.
    assert_eq!(mode(&a.repo), 0o700, "repository directory");
    for k in &keys {
        assert_eq!(mode(k) & 0o077, 0, "key file {}", k.display());
    }
    a.pg.write_owned(&pass_file, &format!("{SECRET}\n"), 0o644)
        .expect("loosen");
    let out = run(&a, &["list"], &[], &mut Vec::new());
    let (_, err) = common::expect_code(&out, &["list"], 2);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(SECRET), "{err}");
}
