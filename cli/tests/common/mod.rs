//! Running the `pgkeep` binary as a user would, in a hermetic environment.
#![allow(dead_code, unreachable_pub)]

pub mod archiving;

use std::path::PathBuf;
use std::process::{Command, Output};

/// No inherited PGKEEP_*/AWS_*/PG* variables, an empty config file, cheap key derivation,
/// and a repository path inside a private temporary directory.
pub struct Env {
    pub dir: tempfile::TempDir,
    vars: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("empty.toml"), "").expect("config");
        let mut e = Self {
            dir,
            vars: Vec::new(),
        };
        e.set("PGKEEP_CONFIG", &e.path("empty.toml").display().to_string());
        e.set("PGKEEP_KDF_MEMORY_MIB", "1");
        e.set("PGKEEP_KDF_ITERATIONS", "1");
        e
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn repo(&self) -> String {
        self.path("repo").display().to_string()
    }

    pub fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.vars.retain(|(key, _)| key != k);
        self.vars.push((k.into(), v.into()));
        self
    }

    pub fn unset(&mut self, k: &str) -> &mut Self {
        self.vars.retain(|(key, _)| key != k);
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pgkeep"));
        c.env_clear().env("HOME", self.dir.path()).args(args);
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("pgkeep runs")
    }

    /// Runs and asserts the exit code; returns stdout and stderr.
    pub fn expect(&self, args: &[&str], code: i32) -> (String, String) {
        expect_code(&self.run(args), args, code)
    }

    /// `pgkeep list --json`.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let (out, _) = self.expect(&["--json", "list"], 0);
        serde_json::from_str::<Vec<serde_json::Value>>(&out).expect("list --json")
    }
}

/// Asserts a pgkeep run's exit code (showing its output if wrong); returns stdout and stderr.
pub fn expect_code(out: &Output, args: &[&str], code: i32) -> (String, String) {
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "pgkeep {args:?}\nstdout: {so}\nstderr: {se}"
    );
    (so, se)
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
