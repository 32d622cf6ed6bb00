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
