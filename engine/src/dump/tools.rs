//! PostgreSQL's client programs (pg_dump, pg_dumpall, pg_restore, psql): finding a version
//! that can talk to the server, handing them the connection without putting secrets on
//! their command line, and reporting their failures in their own words.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncReadExt;

use crate::conninfo::{conninfo_quote, ConnConfig, Host};
use crate::error::{Error, Result};

/// The most of a tool's stderr kept for its error message.
const STDERR_LIMIT: usize = 64 << 10;

/// Finds the directory of `tool` whose major version is at least `min_major`: `explicit`,
/// else PATH, else the standard locations (Debian, RHEL, source builds), closest version
/// first. pg_dump refuses servers newer than itself, and pg_restore archives of a newer
/// pg_dump, hence "at least".
pub fn find_tool(explicit: Option<&Path>, tool: &str, min_major: u32) -> Result<PathBuf> {
    let mut found = find_tools(explicit, &[tool], min_major)?;
    Ok(found.remove(0))
}

/// Like [`find_tool`] for programs that work together (pg_dump and pg_dumpall, pg_restore
/// and psql): the first directory holding all of them, each of `min_major` or newer, so
/// that one command never mixes programs of two installations. Returns their paths in the
/// order asked.
pub fn find_tools(explicit: Option<&Path>, tools: &[&str], min_major: u32) -> Result<Vec<PathBuf>> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = explicit {
        candidates.push(dir.to_owned());
    } else {
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
        for major in min_major..=min_major + 10 {
            candidates.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
            candidates.push(PathBuf::from(format!("/usr/pgsql-{major}/bin")));
        }
        candidates.push(PathBuf::from("/usr/local/pgsql/bin"));
    }
    let mut seen = Vec::new();
    'dirs: for dir in candidates {
        let paths: Vec<PathBuf> = tools.iter().map(|t| dir.join(t)).collect();
        if !paths[0].is_file() {
            continue;
        }
        for path in &paths {
            if !path.is_file() {
                seen.push(format!("{} (missing)", path.display()));
                continue 'dirs;
            }
            match tool_version(path).as_deref().and_then(major_of) {
                Some(m) if m >= min_major => {}
                Some(m) => {
                    seen.push(format!("{} ({m})", path.display()));
                    continue 'dirs;
                }
                None => {
                    seen.push(format!("{} (version unknown)", path.display()));
                    continue 'dirs;
                }
            }
        }
        return Ok(paths);
    }
    let what = tools.join(" and ");
    let together = if tools.len() > 1 {
        " in one directory"
    } else {
        ""
    };
    Err(Error::InvalidInput(format!(
        "no {what} of PostgreSQL {min_major} or newer found{together}{}: install the client programs of that version, or pass --pg-bin DIR",
        if seen.is_empty() {
            String::new()
        } else {
            format!(" (found unusable ones: {})", seen.join(", "))
        }
    )))
}

/// The first line of `tool --version`, e.g. `pg_dump (PostgreSQL) 18.1`.
pub fn tool_version(path: &Path) -> Option<String> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().next()?.trim().to_owned())
}

/// The major version in a `--version` line (`pg_dump (PostgreSQL) 18.1` → 18,
/// `psql (PostgreSQL) 15.10 (Debian 15.10-1)` → 15, `pg_dump (PostgreSQL) 19devel` → 19).
pub fn major_of(line: &str) -> Option<u32> {
    let version = line
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// libpq environment variables for a client program, from the resolved connection: the
/// password goes through the environment (readable only by this user), never argv.
pub fn libpq_env(cfg: &ConnConfig, dbname: Option<&str>) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Some((host, port)) = cfg.hosts.first() {
        let h = match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(dir) => dir.to_string_lossy().into_owned(),
        };
        env.push(("PGHOST".into(), h));
        env.push(("PGPORT".into(), port.to_string()));
    }
    env.push(("PGUSER".into(), cfg.user.clone()));
    env.push((
        "PGDATABASE".into(),
        dbname.unwrap_or(cfg.effective_dbname()).to_owned(),
    ));
    if let Some(p) = &cfg.password {
        env.push(("PGPASSWORD".into(), p.clone()));
    }
    if let Some(f) = &cfg.passfile {
        env.push(("PGPASSFILE".into(), f.to_string_lossy().into_owned()));
    }
    env.push(("PGSSLMODE".into(), cfg.sslmode.as_str().to_owned()));
    for (k, v) in [
        ("PGSSLROOTCERT", &cfg.sslrootcert),
        ("PGSSLCERT", &cfg.sslcert),
        ("PGSSLKEY", &cfg.sslkey),
    ] {
        if let Some(v) = v {
            env.push((k.into(), v.to_string_lossy().into_owned()));
        }
    }
    if let Some(a) = &cfg.application_name {
        env.push(("PGAPPNAME".into(), a.clone()));
    }
    env
}

/// The `--dbname` option of pg_restore and psql for database `db`, as a `dbname=...`
/// connection string: both hand a bare name to libpq, which reads one containing `=` as a
/// connection string of its own. The rest of the connection comes from [`libpq_env`].
pub(crate) fn dbname_arg(db: &str) -> String {
    format!("--dbname=dbname={}", conninfo_quote(db))
}

/// A tool started with its stderr collected in the background.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) name: String,
    pub(crate) child: tokio::process::Child,
    stderr: tokio::task::JoinHandle<String>,
}

/// Starts `path` with `args` and `env`; stdin/stdout as given.
pub(crate) fn spawn(
    path: &Path,
    args: &[String],
    env: &[(String, String)],
    stdin: Stdio,
    stdout: Stdio,
) -> Result<Running> {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut child = tokio::process::Command::new(path)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io(format!("starting {}", path.display()), e))?;
    let mut err = child.stderr.take();
    let stderr = tokio::spawn(async move {
        let mut text = Vec::new();
        if let Some(e) = err.as_mut() {
            let mut buf = [0u8; 8192];
            while let Ok(n) = e.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                // Keep reading past the limit so the tool never blocks on a full pipe.
                if text.len() < STDERR_LIMIT {
                    text.extend_from_slice(&buf[..n]);
                }
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    Ok(Running {
        name,
        child,
        stderr,
    })
}

impl Running {
    /// Waits for the tool; a non-zero exit (or a signal) is an error carrying its stderr.
    /// On success returns its stderr (warnings), if any.
    pub(crate) async fn wait(mut self) -> Result<String> {
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| Error::io(format!("waiting for {}", self.name), e))?;
        let stderr = self.stderr.await.unwrap_or_default();
        if status.success() {
            return Ok(stderr);
        }
        Err(Error::ToolFailed {
            tool: self.name,
            status: status.to_string(),
            stderr: stderr.trim_end().to_owned(),
        })
    }

    /// Stops the tool after a failure on pgkeep's side and waits for it.
    pub(crate) async fn kill(mut self) {
        let _ = self.child.kill().await;
        let _ = self.stderr.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(major_of("pg_dump (PostgreSQL) 18.1"), Some(18));
        assert_eq!(
            major_of("psql (PostgreSQL) 15.10 (Debian 15.10-1.pgdg120+1)"),
            Some(15)
        );
        assert_eq!(major_of("pg_dump (PostgreSQL) 19devel"), Some(19));
        assert_eq!(major_of("nonsense"), None);
    }

    #[test]
    fn no_password_on_the_command_line() {
        let params =
            crate::conninfo::parse("host=db1 port=5433 user=u dbname=shop password=s3cret")
                .expect("parses");
        let cfg = crate::conninfo::resolve(&params, &|_| None, "me", None).expect("resolves");
        let env = libpq_env(&cfg, None);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PGHOST"), Some("db1"));
        assert_eq!(get("PGPORT"), Some("5433"));
        assert_eq!(get("PGDATABASE"), Some("shop"));
        assert_eq!(get("PGPASSWORD"), Some("s3cret"));
        assert_eq!(dbname_arg("shop"), "--dbname=dbname=shop");
        assert_eq!(dbname_arg("it's x"), r"--dbname=dbname='it\'s x'");
        assert_eq!(
            libpq_env(&cfg, Some("other"))
                .iter()
                .find(|(k, _)| k == "PGDATABASE")
                .map(|(_, v)| v.as_str()),
            Some("other")
        );
    }
}
