//! A PostgreSQL cluster with a pgkeep repository set up the way a DBA would for WAL
//! archiving: config and passphrase files owned by the server's OS user, mode 0600.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgkeep_testkit::pg::{PgCluster, PgVersion};
use serde_json::Value;

use super::Env;

pub const PGKEEP: &str = env!("CARGO_BIN_EXE_pgkeep");

/// GET /metrics of a `wal-stream --metrics-addr`, parsed into name → value; `None` while
/// nothing answers there.
pub fn scrape(addr: &str) -> Option<std::collections::HashMap<String, f64>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect(),
    )
}

/// A cluster archiving into a pgkeep repository, configured the way a DBA would: a config
/// file and a passphrase file owned by the server's OS user, mode 0600.
pub struct Archiving {
    pub pg: PgCluster,
    pub env: Env,
    pub repo: PathBuf,
    pub config: PathBuf,
}

impl Archiving {
    /// Names of the archived WAL files of `timeline` (8 hex digits), sorted.
    pub fn stored_wal(&self, timeline: &str) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(self.repo.join("clusters/main/wal").join(timeline))
                .map(|d| {
                    d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
        v.sort();
        v
    }

    /// Where the archived WAL of timeline 1 ends: after the newest complete segment, or
    /// inside the newest `.partial` (its length, fetched back).
    pub fn archive_end(&self, segment_size: u64) -> u64 {
        let names = self.stored_wal("00000001");
        let seg_no = |n: &str| {
            let hi = u64::from_str_radix(&n[8..16], 16).expect("hex");
            let lo = u64::from_str_radix(&n[16..24], 16).expect("hex");
            hi * (0x1_0000_0000 / segment_size) + lo
        };
        let full = names
            .iter()
            .filter(|n| n.len() == 24)
            .map(|n| (seg_no(n) + 1) * segment_size)
            .max()
            .unwrap_or(0);
        let partial = names
            .iter()
            .filter(|n| n.ends_with(".partial"))
            .map(|n| {
                let dest = self.env.path("partial");
                self.env
                    .expect(&["wal-fetch", n, &dest.display().to_string()], 0);
                seg_no(n) * segment_size + std::fs::metadata(&dest).expect("partial").len()
            })
            .max()
            .unwrap_or(0);
        full.max(partial)
    }

    /// Inserts `rows` rows of about 200 bytes: WAL to archive.
    pub fn write_wal(&self, rows: u32) {
        self.pg
            .psql(&format!(
                "CREATE TABLE IF NOT EXISTS filler (x int, pad text); \
                 INSERT INTO filler SELECT g, repeat('x', 200) FROM generate_series(1, {rows}) g"
            ))
            .expect("insert");
    }

    /// A cluster with archive_mode on and a repository; `archive_command` is set to
    /// `pgkeep wal-push` unless `push` is false.
    pub fn start(version: PgVersion, segment_mib: u32, settings: &[(&str, &str)]) -> Self {
        Self::with(version, segment_mib, settings, true)
    }

    pub fn with(
        version: PgVersion,
        segment_mib: u32,
        settings: &[(&str, &str)],
        push: bool,
    ) -> Self {
        Self::build(version, segment_mib, settings, push, false)
    }

    /// The same with the repository on the loopback S3 server (credentials in the config
    /// file's `[storage]` table, as a DBA would keep them).
    pub fn with_s3(version: PgVersion, segment_mib: u32, push: bool) -> Self {
        Self::build(version, segment_mib, &[], push, true)
    }

    fn build(
        version: PgVersion,
        segment_mib: u32,
        settings: &[(&str, &str)],
        push: bool,
        s3: bool,
    ) -> Self {
        let mut builder = PgCluster::builder(version)
            .wal_segment_mib(segment_mib)
            .setting("archive_mode", "on")
            .setting("archive_command", "");
        for (k, v) in settings {
            builder = builder.setting(k, v);
        }
        let pg = builder.start().expect("cluster");
        let dir = pg.owned_dir("pgkeep").expect("dir");
        let repo = dir.join("repo");
        let pass = dir.join("passphrase");
        pg.write_owned(&pass, "wal archive test\n", 0o600)
            .expect("passphrase file");
        let mut text = format!(
            "passphrase_file = {:?}\ncluster = \"main\"\n",
            pass.display().to_string()
        );
        if s3 {
            let server = pgkeep_testkit::S3Server::shared()
                .expect("S3 test server (run scripts/install-test-deps.sh)");
            let bucket = server.unique_bucket("pitr").expect("bucket");
            text.push_str(&format!("repo = \"s3://{bucket}/pgkeep\"\n[storage]\n"));
            for (k, v) in server.env() {
                text.push_str(&format!("{} = {v:?}\n", k.to_ascii_lowercase()));
            }
        } else {
            text = format!("repo = {:?}\n{text}", repo.display().to_string());
        }
        let config = dir.join("pgkeep.toml");
        pg.write_owned(&config, &text, 0o600).expect("config");
        let mut env = Env::new();
        env.set("PGKEEP_CONFIG", &config.display().to_string());
        // Cheap key derivation: a pgkeep key for archive_command should use a long random
        // passphrase, which needs no stretching (see README, "WAL archiving").
        env.expect(&["init"], 0);
        if !s3 {
            pg.give_tree_to_owner(&repo).expect("chown repo");
        }
        let a = Self {
            pg,
            env,
            repo,
            config,
        };
        if push {
            a.install_archive_command();
        }
        a
    }

    /// pgkeep with this setup's config as the server's OS user (so the repository stays
    /// readable by `archive_command`), with HOME in the setup's directory; not started.
    pub fn command_as_server(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = self.env.command(args);
        let home = self.config.parent().expect("config dir").to_owned();
        self.pg.run_as_owner(&mut cmd).env("HOME", home);
        cmd
    }

    /// Runs [`Self::command_as_server`] to its end.
    pub fn pgkeep_as_server(&self, args: &[&str]) -> std::process::Output {
        self.command_as_server(args).output().expect("pgkeep runs")
    }

    /// [`Self::pgkeep_as_server`], asserting the exit code; returns stdout and stderr.
    pub fn expect_as_server(&self, args: &[&str], code: i32) -> (String, String) {
        super::expect_code(&self.pgkeep_as_server(args), args, code)
    }

    pub fn install_archive_command(&self) {
        let command = format!("{PGKEEP} --config {} wal-push %p", self.config.display());
        self.sql(&format!(
            "ALTER SYSTEM SET archive_command = '{command}'; SELECT pg_reload_conf();"
        ));
    }

    pub fn sql(&self, q: &str) -> String {
        self.pg.psql(q).unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    /// Switches to a new segment and waits until the server has archived the old one.
    /// Returns the archived segment's name.
    pub fn switch_and_wait(&self) -> String {
        let last = self.sql("SELECT pg_walfile_name(pg_switch_wal())");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let row = self
                .sql("SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver");
            let (archived, failed) = row.split_once('|').expect("row");
            assert_eq!(
                failed,
                "0",
                "archiver failures; server log:\n{}",
                self.pg.log_tail()
            );
            if archived >= last.as_str() {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "{last} not archived in time (last archived {archived:?}); server log:\n{}",
                self.pg.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn ready_count(&self) -> u64 {
        self.sql("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")
            .parse()
            .expect("count")
    }

    pub fn info(&self) -> Value {
        let (out, _) = self.env.expect(&["--json", "info"], 0);
        serde_json::from_str(&out).expect("info JSON")
    }

    /// psql on a restored server's socket (in its data directory), as the server's OS user.
    pub fn query_restored(&self, pgdata: &std::path::Path, port: u16, sql: &str) -> String {
        let mut cmd = std::process::Command::new(self.pg.bin("psql"));
        cmd.args(["-X", "-A", "-t", "-h"]).arg(pgdata).args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ]);
        let out = self.pg.run_as_owner(&mut cmd).output().expect("psql");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops a restored server (immediate: the tests are done with it).
    pub fn stop_restored(&self, pgdata: &std::path::Path) {
        let mut cmd = std::process::Command::new(self.pg.bin("pg_ctl"));
        cmd.arg("-D")
            .arg(pgdata)
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = self.pg.run_as_owner(&mut cmd).output();
    }

    pub fn pgbench(&self, args: &[&str]) {
        let status = std::process::Command::new(self.pg.bin("pgbench"))
            .envs(self.pg.env())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("pgbench runs");
        assert!(status.success(), "pgbench {args:?}");
    }
}
