//! The `pgkeep` binary, run as a user would: settings sources, passphrase handling, exit
//! codes, and `init`/`key` on a local directory and on a real S3 server.

mod common;

use std::path::Path;

use common::Env;

fn private_file(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[test]
fn init_open_wrong_passphrase_and_exit_codes_on_a_local_directory() {
    let mut e = Env::new();
    let repo = e.repo();
    e.set("PGKEEP_REPO", &repo)
        .set("PGKEEP_PASSPHRASE", "first secret");
    let (out, _) = e.expect(&["init"], 0);
    assert!(out.contains("Initialized repository"), "{out}");
    let (_, err) = e.expect(&["init"], 4);
    assert!(err.contains("already exists"), "{err}");

    let (out, _) = e.expect(&["key", "list"], 0);
    assert!(out.contains("argon2id m=1MiB t=1 p=1"), "{out}");

    e.set("PGKEEP_PASSPHRASE", "wrong");
    let (_, err) = e.expect(&["key", "list"], 3);
    assert!(
        err.contains("wrong passphrase") && err.contains("keys/"),
        "{err}"
    );
    // The passphrase never appears in any output.
    assert!(!err.contains("first secret"));

    let (_, err) = e.expect(
        &[
            "--repo",
            &e.path("nothing").display().to_string(),
            "key",
            "list",
        ],
        4,
    );
    assert!(err.contains("pgkeep init"), "{err}");

    e.unset("PGKEEP_REPO");
    let (_, err) = e.expect(&["key", "list"], 2);
    assert!(err.contains("--repo"), "{err}");
}

#[test]
fn keys_add_list_remove_passwd_through_the_cli() {
    let mut e = Env::new();
    let repo = e.repo();
    e.set("PGKEEP_REPO", &repo).set("PGKEEP_PASSPHRASE", "one");
    e.expect(&["init", "--label", "first"], 0);
    e.set("PGKEEP_NEW_PASSPHRASE", "two");
    let (out, _) = e.expect(&["--json", "key", "add", "--label", "ops"], 0);
    let added: serde_json::Value = serde_json::from_str(&out).expect("json");
    let second = added["key_id"].as_str().expect("key id").to_owned();

    let (out, _) = e.expect(&["key", "list", "--json"], 0);
    let keys: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(keys.as_array().map(Vec::len), Some(2));
    let first = keys
        .as_array()
        .and_then(|k| k.iter().find(|k| k["current"] == true))
        .and_then(|k| k["id"].as_str())
        .expect("current key")
        .to_owned();

    let (_, err) = e.expect(&["key", "remove", &first], 3);
    assert!(err.contains("key this passphrase opened"), "{err}");
    let (_, err) = e.expect(&["key", "remove", "zz"], 2);
    assert!(err.contains("16 hex digits"), "{err}");

    // Through the second passphrase, the first key can go; the last one cannot.
    e.set("PGKEEP_PASSPHRASE", "two");
    e.expect(&["key", "remove", &first], 0);
    let (_, err) = e.expect(&["key", "remove", &second], 3);
    assert!(err.contains("only key"), "{err}");

    // passwd from a file; the old passphrase stops working.
    let new_pass = e.path("new-pass");
    private_file(&new_pass, "three\n");
    e.unset("PGKEEP_NEW_PASSPHRASE");
    e.expect(
        &[
            "key",
            "passwd",
            "--new-passphrase-file",
            &new_pass.display().to_string(),
        ],
        0,
    );
    e.expect(&["key", "list"], 3);
    e.set("PGKEEP_PASSPHRASE", "three");
    let (out, _) = e.expect(&["key", "list"], 0);
    assert!(out.contains("ops"), "passwd keeps the label: {out}");

    // ... even with PGKEEP_KEY_LABEL set (it names new keys); --label renames the key.
    e.set("PGKEEP_NEW_PASSPHRASE", "four")
        .set("PGKEEP_KEY_LABEL", "not this");
    e.expect(&["key", "passwd"], 0);
    e.set("PGKEEP_PASSPHRASE", "four");
    let (out, _) = e.expect(&["key", "list", "--json"], 0);
    let keys: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(keys[0]["label"], "ops", "{keys}");
    e.set("PGKEEP_NEW_PASSPHRASE", "five");
    e.expect(&["key", "passwd", "--label", "ops-2027"], 0);
    e.set("PGKEEP_PASSPHRASE", "five");
    let (out, _) = e.expect(&["key", "list", "--json"], 0);
    let keys: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
    assert_eq!(keys[0]["label"], "ops-2027", "{keys}");
}

#[test]
fn passphrase_sources_files_and_their_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let mut e = Env::new();
    let repo = e.repo();
    e.set("PGKEEP_REPO", &repo);
    let pass = e.path("pass");
    private_file(&pass, "from file\r\n");
    let pass_arg = pass.display().to_string();
    e.expect(&["--passphrase-file", &pass_arg, "init"], 0);
    // The same passphrase via the environment (CRLF and the newline were stripped).
    e.set("PGKEEP_PASSPHRASE", "from file");
    e.expect(&["key", "list"], 0);
    // A flag outranks the environment.
    e.set("PGKEEP_PASSPHRASE", "wrong");
    e.expect(&["--passphrase-file", &pass_arg, "key", "list"], 0);
    e.unset("PGKEEP_PASSPHRASE")
        .set("PGKEEP_PASSPHRASE_FILE", &pass_arg);
    e.expect(&["key", "list"], 0);

    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (_, err) = e.expect(&["key", "list"], 2);
    assert!(err.contains("chmod 600"), "{err}");

    // No source and no terminal: a clear error, not a hang.
    e.unset("PGKEEP_PASSPHRASE_FILE");
    let (_, err) = e.expect(&["key", "list"], 2);
    assert!(err.contains("PGKEEP_PASSPHRASE"), "{err}");
}

#[test]
fn config_file_is_read_and_flags_and_environment_override_it() {
    let mut e = Env::new();
    let from_file = e.path("from-file").display().to_string();
    let pass = e.path("pass");
    private_file(&pass, "secret");
    let config = e.path("pgkeep.toml");
    std::fs::write(
        &config,
        format!(
            "repo = \"{from_file}\"\ncluster = \"prod\"\npassphrase_file = \"{}\"\nkdf_memory_mib = 2\npack_size_mib = 8\n",
            pass.display()
        ),
    )
    .expect("config");
    e.set("PGKEEP_CONFIG", &config.display().to_string())
        .unset("PGKEEP_KDF_MEMORY_MIB");
    e.expect(&["init"], 0);
    assert!(
        Path::new(&from_file).join("config").exists(),
        "repo from the config file"
    );
    let (out, _) = e.expect(&["key", "list"], 0);
    assert!(
        out.contains("m=2MiB"),
        "kdf_memory_mib from the config file: {out}"
    );

    // Environment beats the file, a flag beats the environment.
    let from_env = e.path("from-env").display().to_string();
    e.set("PGKEEP_REPO", &from_env);
    e.expect(&["init"], 0);
    assert!(Path::new(&from_env).join("config").exists());
    let from_flag = e.path("from-flag").display().to_string();
    e.expect(&["--repo", &from_flag, "init", "--kdf-memory-mib", "3"], 0);
    let (out, _) = e.expect(&["--repo", &from_flag, "key", "list"], 0);
    assert!(out.contains("m=3MiB"), "{out}");

    // The cluster from the file is used: `list` names it.
    let (out, _) = e.expect(&["list"], 0);
    assert!(out.contains("cluster prod"), "{out}");
    let (out, _) = e.expect(&["--cluster", "other", "list"], 0);
    assert!(out.contains("cluster other"), "{out}");
    let (_, err) = e.expect(&["--cluster", "../x", "list"], 2);
    assert!(err.contains("--cluster"), "{err}");

    // A typo in the file is an error, not a silent default.
    std::fs::write(&config, "repo = \"x\"\ncompresion = 3\n").expect("config");
    let (_, err) = e.expect(&["list"], 2);
    assert!(err.contains("compresion"), "{err}");
}

#[test]
fn init_on_a_real_s3_server() {
    let server = pgkeep_testkit::S3Server::shared()
        .expect("S3 test server (run scripts/install-test-deps.sh)");
    let bucket = server.unique_bucket("cli").expect("bucket");
    let mut e = Env::new();
    for (k, v) in server.env() {
        e.set(&k, &v);
    }
    let url = format!("s3://{bucket}/prod-db");
    e.set("PGKEEP_REPO", &url)
        .set("PGKEEP_PASSPHRASE", "s3 secret");
    let (out, _) = e.expect(&["init"], 0);
    assert!(out.contains(&format!("s3://{bucket}/prod-db")), "{out}");
    e.expect(&["key", "list"], 0);
    e.expect(&["init"], 4);
    e.set("PGKEEP_PASSPHRASE", "nope");
    e.expect(&["key", "list"], 3);

    // The endpoint can come from --storage-option instead of the environment.
    e.unset("AWS_ENDPOINT")
        .set("PGKEEP_PASSPHRASE", "s3 secret");
    let endpoint = format!("aws_endpoint={}", server.endpoint());
    e.expect(&["--storage-option", &endpoint, "key", "list"], 0);
}

#[test]
fn help_documents_every_command_and_setting() {
    let e = Env::new();
    let (out, _) = e.expect(&["--help"], 0);
    for needle in [
        "init",
        "key",
        "list",
        "--repo",
        "--cluster",
        "--config",
        "--passphrase-file",
        "PGKEEP_PASSPHRASE",
        "Exit codes",
    ] {
        assert!(out.contains(needle), "--help lacks {needle}:\n{out}");
    }
    let (out, _) = e.expect(&["init", "--help"], 0);
    for needle in [
        "--kdf-memory-mib",
        "--pack-size-mib",
        "--compression",
        "PGKEEP_COMPRESSION",
        "Example",
    ] {
        assert!(out.contains(needle), "init --help lacks {needle}:\n{out}");
    }
    let (out, _) = e.expect(&["key", "add", "--help"], 0);
    assert!(out.contains("PGKEEP_NEW_PASSPHRASE"), "{out}");
    let (out, _) = e.expect(&["key", "passwd", "--help"], 0);
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("[default: the current label]"), "{out}");
    // Every exit code verify can end with, and every command --lock-wait applies to.
    let (out, _) = e.expect(&["verify", "--help"], 0);
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "0 no damage",
        "5 damage found",
        "1 verify could not run",
        "2 bad usage",
        "3 wrong passphrase",
        "4 no repository",
        "7 a prune held",
        "(backup, restore, drill, verify, dump, dump-restore, prune)",
    ] {
        assert!(
            flat.contains(needle),
            "verify --help lacks {needle:?}:\n{out}"
        );
    }
    let (out, _) = e.expect(&["dump", "--help"], 0);
    for needle in [
        "--where",
        "--schema-only",
        "--sqlite",
        "--pg-bin",
        "Example",
    ] {
        assert!(out.contains(needle), "dump --help lacks {needle}:\n{out}");
    }
    let (out, _) = e.expect(&["dump-restore", "--help"], 0);
    for needle in ["--to-file", "--sqlite-to", "--clean", "--create", "Example"] {
        assert!(
            out.contains(needle),
            "dump-restore --help lacks {needle}:\n{out}"
        );
    }
}

/// `wal-fetch` is restore_command: PostgreSQL reads an exit status up to 125 as "no such
/// file" and ends recovery there, so every failure other than absence must exit 200 (fatal):
/// broken settings, bad usage, a panic.
#[test]
fn wal_fetch_exits_fatally_when_it_cannot_look() {
    let mut e = Env::new();
    let repo = e.repo();
    e.set("PGKEEP_REPO", &repo)
        .set("PGKEEP_PASSPHRASE", "secret");
    e.expect(&["init"], 0);
    let dest_path = e.path("RECOVERYXLOG").display().to_string();
    let dest = dest_path.as_str();
    let seg = "000000010000000000000001";

    // Absent: 1, so that PostgreSQL looks elsewhere or ends recovery.
    e.expect(&["wal-fetch", seg, dest], 1);

    // A config file with an unknown key, from PGKEEP_CONFIG or --config.
    let broken = e.path("broken.toml");
    std::fs::write(&broken, format!("repo = \"{repo}\"\nprefech = 8\n")).expect("config");
    let broken_arg = broken.display().to_string();
    let (_, err) = e.expect(&["--config", &broken_arg, "wal-fetch", seg, dest], 200);
    assert!(err.contains("prefech"), "{err}");
    e.set("PGKEEP_CONFIG", &broken_arg);
    e.expect(&["wal-fetch", seg, dest], 200);
    e.expect(&["wal-fetch", "--prefetch", "2", seg, dest], 200);
    // Other commands keep the usage status.
    e.expect(&["list"], 2);
    e.set("PGKEEP_CONFIG", &e.path("empty.toml").display().to_string());

    // Bad usage: an unknown flag (before or after the subcommand), a missing argument, a
    // mistyped global option.
    for args in [
        vec!["wal-fetch", "--bogus", seg, dest],
        vec!["--bogus", "wal-fetch", seg, dest],
        vec!["--cluster", "main", "wal-fetch", seg],
        vec!["--confg", "/etc/x.toml", "wal-fetch", seg, dest],
        vec!["wal-fetch", "--prefetch", "many", seg, dest],
    ] {
        let (_, err) = e.expect(&args, 200);
        assert!(err.contains("error"), "{args:?}: {err}");
    }
    e.expect(&["list", "--bogus"], 2);
    // Help is no failure.
    e.expect(&["wal-fetch", "--help"], 0);

    // Out-of-range settings, also a negative value in the environment.
    let (_, err) = e.expect(&["wal-fetch", "--prefetch", "100000", seg, dest], 200);
    assert!(
        err.contains("--prefetch 100000") && err.contains("1024"),
        "{err}"
    );
    e.set("PGKEEP_CLUSTER", "../x");
    e.expect(&["wal-fetch", seg, dest], 200);
    e.unset("PGKEEP_CLUSTER");

    // A panic: the server's log pipe gone, writing the error to stderr panics. 200, not
    // Rust's 101.
    e.set("PGKEEP_REPO", &e.path("nothing").display().to_string());
    let mut child = e
        .command(&["wal-fetch", seg, dest])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stderr.take());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(200), "{status}");
}

/// An empty PGKEEP_CONFIG, PGKEEP_REPO or PGKEEP_CLUSTER counts as unset, as every other
/// variable does (a service file's `PGKEEP_REPO=` leaves the config file's repo in force).
#[test]
fn empty_config_repo_and_cluster_variables_count_as_unset() {
    let mut e = Env::new();
    let repo = e.repo();
    let config = e.path("pgkeep.toml");
    std::fs::write(&config, format!("repo = \"{repo}\"\ncluster = \"prod\"\n")).expect("config");
    e.set("PGKEEP_CONFIG", &config.display().to_string())
        .set("PGKEEP_PASSPHRASE", "secret")
        .set("PGKEEP_REPO", "")
        .set("PGKEEP_CLUSTER", "");
    e.expect(&["init"], 0);
    assert!(
        Path::new(&repo).join("config").exists(),
        "repo from the file"
    );
    let (out, _) = e.expect(&["list"], 0);
    assert!(out.contains("cluster prod"), "cluster from the file: {out}");

    // An empty PGKEEP_CONFIG: the default file (absent on a test machine), not an error.
    if !Path::new("/etc/pgkeep/pgkeep.toml").exists() {
        e.set("PGKEEP_CONFIG", "").set("PGKEEP_REPO", &repo);
        let (out, _) = e.expect(&["list"], 0);
        assert!(out.contains("cluster main"), "{out}");
    }
}

/// Numbers that would overflow a capacity or a deadline (a panic) are refused up front,
/// naming where they came from and the range allowed.
/// `--target-action` and `--target-exclusive` mean something only with a target to stop at:
/// without one, recovery replays all archived WAL and promotes whatever they say, so
/// `--start --target-action shutdown` would wait for a shutdown that never comes.
#[test]
fn target_options_without_a_target_are_usage_errors() {
    let mut e = Env::new();
    let repo = e.repo();
    e.set("PGKEEP_REPO", &repo)
        .set("PGKEEP_PASSPHRASE", "secret");
    e.expect(&["init"], 0);
    let pgdata = e.path("restored").display().to_string();
    let (_, err) = e.expect(
        &[
            "restore",
            "--pgdata",
            &pgdata,
            "--target-action",
            "shutdown",
        ],
        2,
    );
    assert!(
        err.contains("--target-action needs a recovery target"),
        "{err}"
    );
    let (_, err) = e.expect(
        &[
            "restore",
            "--pgdata",
            &pgdata,
            "--target-immediate",
            "--target-exclusive",
        ],
        2,
    );
    assert!(
        err.contains("--target-exclusive needs a recovery target"),
        "{err}"
    );
    // With a target, both are taken (planning then fails for want of a backup).
    let (_, err) = e.expect(
        &[
            "restore",
            "--pgdata",
            &pgdata,
            "--target-lsn",
            "0/3000000",
            "--target-action",
            "shutdown",
            "--target-exclusive",
        ],
        2,
    );
    assert!(!err.contains("needs a recovery target"), "{err}");
    assert!(!std::path::Path::new(&pgdata).exists());
}

#[test]
fn out_of_range_numbers_are_usage_errors() {
    let mut e = Env::new();
    let repo = e.repo();
    e.set("PGKEEP_REPO", &repo)
        .set("PGKEEP_PASSPHRASE", "secret")
        .set("PGKEEP_PG", "host=127.0.0.1 port=1 connect_timeout=1");
    e.expect(&["init"], 0);
    let pgdata = e.path("restored").display().to_string();

    let huge = "4611686018427387904";
    let (_, err) = e.expect(&["backup", "--jobs", huge], 2);
    assert!(
        err.contains(&format!("--jobs {huge}: must be 1 to 1024")),
        "{err}"
    );
    let (_, err) = e.expect(&["verify", "--jobs", "1025"], 2);
    assert!(err.contains("--jobs 1025: must be 1 to 1024"), "{err}");
    e.set("PGKEEP_JOBS", huge);
    let (_, err) = e.expect(&["restore", "--pgdata", &pgdata, "--dry-run"], 2);
    assert!(err.contains(&format!("PGKEEP_JOBS {huge}")), "{err}");
    e.unset("PGKEEP_JOBS");
    let config = e.path("jobs.toml");
    std::fs::write(&config, "jobs = 100000\n").expect("config");
    let (_, err) = e.expect(
        &[
            "--config",
            &config.display().to_string(),
            "dump",
            "--sqlite",
            "x.db",
        ],
        2,
    );
    assert!(err.contains("config key jobs 100000"), "{err}");
    e.expect(&["drill", "--jobs", "0"], 2);

    // A lock wait beyond a year, from the flag or the environment.
    let (_, err) = e.expect(&["--lock-wait", "1000years", "prune"], 2);
    assert!(
        err.contains("--lock-wait") && err.contains("365 days"),
        "{err}"
    );
    e.set("PGKEEP_LOCK_WAIT", "18446744073709551615s");
    e.expect(&["prune"], 2);
    e.unset("PGKEEP_LOCK_WAIT");
    e.expect(&["--lock-wait", "1h", "prune", "--dry-run"], 0);

    // wal-stream would otherwise retry connecting forever: give it a deadline.
    let mut child = e
        .command(&["wal-stream", "--partial-interval", "18446744073709551615"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("wal-stream accepted --partial-interval 18446744073709551615");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--partial-interval") && err.contains("86400"),
        "{err}"
    );
}
