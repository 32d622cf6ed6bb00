//! `pgkeep dump --all`: a whole cluster as one dump, the way `pg_dumpall` takes it, but with
//! each database as its own pg_dump custom archive so that one database can be restored
//! alone and each deduplicates on its own.
//!
//! The streams (SPEC.md §11, source 1): `globals.sql` from `pg_dumpall --globals-only`
//! (roles, memberships, tablespaces) and `db/<database>` for every database that accepts
//! connections, except `template0` and `template1`. pg_dumpall and pg_dump come from the
//! same directory. As with pg_dumpall, each database is dumped in its own snapshot, one
//! after the other: the databases are each consistent, not consistent with each other.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pgkeep_format::dump::{DATABASE_PREFIX, GLOBALS_STREAM};
use pgkeep_format::{ClusterName, DumpFormat, DumpManifest, DumpSource, LockMode};

use super::tools::{find_tools, libpq_env, tool_version};
use super::{
    commit, connect_source, missing_stream, new_manifest, pg, pg_restore_archive, pipe_into,
    psql_script_args, run_into, stream, write_stream_file, Archive, DumpRestoreOptions,
    DumpRestoreSummary, DumpSummary, PgDumpOptions, PgRestoreRun,
};
use crate::chunker::Chunking;
use crate::conninfo::ConnConfig;
use crate::error::{Error, Result};
use crate::replication::PgConnection;
use crate::repository::Repository;

/// The databases `dump --all` takes: those that accept connections, but not the templates
/// every cluster has (`template0` cannot be connected to; `template1` is recreated by
/// initdb and rarely holds anything of the user's).
const DATABASES_SQL: &str = "SELECT datname FROM pg_catalog.pg_database \
     WHERE datallowconn AND datname NOT IN ('template0', 'template1') ORDER BY datname";

/// The database every cluster has and a `dump --all` restore loads into rather than
/// creating, as the script of pg_dumpall does.
const MAINTENANCE_DB: &str = "postgres";

impl PgDumpOptions {
    /// `dump --all` takes custom archives of whole databases (or of their schema only):
    /// table, schema and row selections name objects of one database, and a data-only
    /// archive does not carry its database, which the restore creates from the archive.
    pub fn check_all(&self) -> Result<()> {
        self.check()?;
        let s = &self.selection;
        let mut refused = Vec::new();
        for (on, flag) in [
            (!s.tables.is_empty(), "--table"),
            (!s.exclude_tables.is_empty(), "--exclude-table"),
            (!s.schemas.is_empty(), "--schema"),
            (!self.row_filters.is_empty(), "--where"),
            (s.data_only, "--data-only"),
            (
                self.format != DumpFormat::Custom,
                "--format other than custom",
            ),
        ] {
            if on {
                refused.push(flag);
            }
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidInput(format!(
                "--all dumps every database whole, in custom format: {} cannot be combined with it (dump the one database without --all instead)",
                refused.join(", ")
            )))
        }
    }
}

/// Dumps the globals and every database of the cluster `conn` reaches, as one dump. `conn`
/// names the database to connect to for the list of databases and the globals.
pub async fn dump_all(
    repo: &Repository,
    cluster: &ClusterName,
    conn: &ConnConfig,
    opts: &PgDumpOptions,
) -> Result<DumpSummary> {
    opts.check_all()?;
    let clock = std::time::Instant::now();
    let started = SystemTime::now();
    let (mut session, version_num) = connect_source(conn, "pg_dumpall").await?;
    let listed = session.query(DATABASES_SQL).await.map_err(pg);
    let _ = session.close().await;
    let databases: Vec<String> = listed?
        .into_iter()
        .flat_map(|set| set.rows)
        .filter_map(|row| row.into_iter().next().flatten())
        .collect();
    let tools = find_tools(
        opts.pg_bin.as_deref(),
        &["pg_dump", "pg_dumpall"],
        version_num / 10000,
    )?;
    let (pg_dump, pg_dumpall) = (&tools[0], &tools[1]);
    let tool = tool_version(pg_dump).unwrap_or_default();
    let connect_db = conn.effective_dbname().to_owned();

    let lock = repo.lock(LockMode::Shared, "dump", opts.lock).await?;
    let result: Result<_> = async {
        let write = repo.write_session(opts.write).await?;
        let chunking = Chunking::from_config(repo.config());
        let globals_args: Vec<String> = vec![
            "--globals-only".into(),
            "--no-password".into(),
            // pg_dumpall ignores PGDATABASE; without this it tries postgres, then template1.
            format!("--database={connect_db}"),
        ];
        let env = libpq_env(conn, None);
        let globals = run_into(&write, pg_dumpall, &globals_args, &env, chunking).await?;
        let mut streams = vec![stream(GLOBALS_STREAM, globals)];
        let args = opts.pg_dump_args();
        for db in &databases {
            // The name goes through PGDATABASE, which libpq never reads as a connection
            // string, whatever the name holds.
            let env = libpq_env(conn, Some(db));
            let s = run_into(&write, pg_dump, &args, &env, chunking).await?;
            streams.push(stream(&format!("{DATABASE_PREFIX}{db}"), s));
        }
        let mut manifest = new_manifest(
            cluster,
            DumpSource::PgDumpAll,
            DumpFormat::Custom,
            connect_db.clone(),
            started,
        );
        manifest.selection = opts.selection.args();
        manifest.server_version_num = version_num;
        manifest.tool_version = tool.clone();
        manifest.properties.extend([
            ("host".into(), conn.display_target()),
            (
                "globals_tool_version".into(),
                tool_version(pg_dumpall).unwrap_or_default(),
            ),
        ]);
        commit(repo, write, manifest, streams, &lock, clock).await
    }
    .await;
    let released = lock.release().await;
    let summary = result?;
    released?;
    Ok(summary)
}

/// How one database of a `dump --all` dump is restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `pg_restore --create`: the database does not exist yet.
    Create,
    /// `pg_restore --clean --if-exists --create`: drop the existing database and create it.
    Recreate,
    /// Into the existing `postgres` database (with `--clean`: its objects are dropped
    /// first), as pg_dumpall's script does.
    Into,
}

/// The mode of each database, or the error naming every database in the way.
fn plan(
    databases: &[&str],
    existing: &BTreeSet<String>,
    connect_db: &str,
    clean: bool,
) -> Result<Vec<Mode>> {
    let mut blocked = Vec::new();
    let mut modes = Vec::new();
    for db in databases {
        let exists = existing.contains(*db);
        modes.push(match (exists, *db == MAINTENANCE_DB, clean) {
            (false, _, _) => Mode::Create,
            (true, true, _) => Mode::Into,
            (true, false, true) => Mode::Recreate,
            (true, false, false) => {
                blocked.push(*db);
                Mode::Create
            }
        });
    }
    if !blocked.is_empty() {
        return Err(Error::InvalidInput(format!(
            "the target already has database(s) {}: drop them, pass --clean to drop and recreate them, or restore the others one at a time with --database NAME",
            blocked.join(", ")
        )));
    }
    if let Some(i) = databases.iter().position(|d| *d == connect_db) {
        if modes[i] == Mode::Recreate {
            return Err(Error::InvalidInput(format!(
                "--clean would drop database {connect_db}, which --pg connects to: connect to another one, e.g. --pg 'dbname=postgres'"
            )));
        }
    }
    Ok(modes)
}

/// Restores a whole `dump --all` dump: `globals.sql` through psql, then every database with
/// pg_restore, created (`--create`) from `conn`'s database, except `postgres`, which every
/// cluster has and which is restored into. Existing databases are refused before anything
/// runs, unless `--clean` (then they are dropped and recreated).
///
/// The globals run as pg_dumpall's output is meant to run, without stopping at errors:
/// `CREATE ROLE` of a role that exists (the superuser at least) fails, and the `ALTER
/// ROLE` after it still sets the role's dumped attributes. Errors with SQLSTATE 42710
/// (duplicate_object: the role or tablespace exists) are tolerated and reported; any other
/// error fails the restore before a database is touched.
pub(super) async fn restore_all(
    repo: &Repository,
    m: &DumpManifest,
    conn: &ConnConfig,
    session: &mut PgConnection,
    pg_restore: &Path,
    psql: &Path,
    opts: &DumpRestoreOptions,
) -> Result<DumpRestoreSummary> {
    let existing: BTreeSet<String> = session
        .query("SELECT datname FROM pg_catalog.pg_database")
        .await
        .map_err(pg)?
        .into_iter()
        .flat_map(|set| set.rows)
        .filter_map(|row| row.into_iter().next().flatten())
        .collect();
    let connect_db = conn.effective_dbname();
    let databases: Vec<(&str, &pgkeep_format::Attachment)> = m.databases().collect();
    let names: Vec<&str> = databases.iter().map(|(d, _)| *d).collect();
    let modes = plan(&names, &existing, connect_db, opts.clean)?;

    let globals = m
        .stream(GLOBALS_STREAM)
        .ok_or_else(|| missing_stream(m, GLOBALS_STREAM))?;
    // Errors with their SQLSTATE, so the tolerated ones are told apart by code, whatever
    // language the server's lc_messages prints severities in; psql's own messages in the C
    // locale, so that its "error:" is recognised too.
    let args = psql_script_args(connect_db, &["VERBOSITY=verbose", "ON_ERROR_STOP=0"]);
    let mut env = libpq_env(conn, None);
    env.push(("LC_ALL".into(), "C".into()));
    let (bytes, stderr) = pipe_into(repo, &globals.extents, psql, &args, &env).await?;
    let (tolerated, fatal) = globals_errors(&stderr);
    if !fatal.is_empty() {
        return Err(Error::ToolFailed {
            tool: "psql (globals.sql)".into(),
            status: format!("{} error(s) besides objects that exist", fatal.len()),
            stderr: fatal.join("\n"),
        });
    }
    let mut summary = DumpRestoreSummary {
        bytes,
        tolerated,
        ..DumpRestoreSummary::default()
    };
    for ((db, s), mode) in databases.iter().zip(modes) {
        let run = PgRestoreRun {
            pg_restore,
            selection: Vec::new(),
            tables: &[],
            schema_only: false,
            data_only: false,
            clean: opts.clean,
            create: mode != Mode::Into,
            parallel: None,
            connect_db: (mode == Mode::Into).then_some(*db),
        };
        let one = pg_restore_archive(repo, m, &Archive::Stream(&s.extents), db, conn, &run)
            .await
            .map_err(|e| match e {
                Error::ToolFailed {
                    tool,
                    status,
                    stderr,
                } => Error::ToolFailed {
                    tool: format!("{tool} (database {db})"),
                    status,
                    stderr,
                },
                other => other,
            })?;
        summary.bytes += one.bytes;
        summary.databases.push((*db).to_owned());
    }
    Ok(summary)
}

/// The SQLSTATE of a server message as psql prints it with `VERBOSITY=verbose`:
/// `SEVERITY:  CODE: text`. The severity word is in the server's `lc_messages` language
/// (`ERROR`, `FEHLER`, `ERREUR`, ...); the code is not, so errors are told by it.
fn sqlstate(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once(":  ")?;
    let code = rest.get(..5)?;
    let valid = code
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    (valid && rest[5..].starts_with(':')).then_some(code)
}

/// Splits psql's stderr (with `VERBOSITY=verbose`) into the tolerated errors (SQLSTATE
/// 42710, the object exists) and every other error, each as psql printed its first line.
/// Server messages are classified by SQLSTATE (classes 00, 01 and 02 are notices, warnings
/// and "no data", everything else an error); psql's own errors carry none.
fn globals_errors(stderr: &str) -> (Vec<String>, Vec<String>) {
    let mut tolerated = Vec::new();
    let mut fatal = Vec::new();
    for line in stderr.lines() {
        // With --file, psql reports a script's problems as `psql:<stdin>:LINE: ...`
        // (without it, unprefixed); DETAIL, HINT and LOCATION lines follow, and NOTICE and
        // WARNING are not errors.
        let message = match line.strip_prefix("psql:") {
            Some(rest) => rest.splitn(3, ':').nth(2).unwrap_or(rest).trim_start(),
            None => line,
        };
        match sqlstate(message) {
            Some("42710") => tolerated.push(line.to_owned()),
            Some(code) if !matches!(&code[..2], "00" | "01" | "02") => fatal.push(line.to_owned()),
            Some(_) => {}
            None if ["ERROR:", "FATAL:", "PANIC:", "error:"]
                .iter()
                .any(|p| message.starts_with(p)) =>
            {
                fatal.push(line.to_owned())
            }
            None => {}
        }
    }
    (tolerated, fatal)
}

/// The file name of a database's archive in `dump-restore --to-file DIR`: the name with
/// every byte outside `A-Za-z0-9_-` written as `%XX`, then `.dump`, so any database name
/// gives one file inside the directory (`shop` is `shop.dump`, `my db` is `my%20db.dump`).
pub fn database_file_name(db: &str) -> String {
    let mut out = String::with_capacity(db.len() + 5);
    for b in db.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str(".dump");
    out
}

/// `--to-file` for a `dump --all` dump: the directory `path` (created, mode 0700) with
/// `globals.sql` and each database's archive, or with `database`, that archive at `path`.
pub(super) async fn write_files(
    repo: &Repository,
    m: &DumpManifest,
    path: &Path,
    database: Option<&str>,
) -> Result<Vec<PathBuf>> {
    if let Some(db) = database {
        let s = m.stream(&format!("{DATABASE_PREFIX}{db}")).ok_or_else(|| {
            let names: Vec<&str> = m.databases().map(|(d, _)| d).collect();
            Error::InvalidInput(format!(
                "dump {} has no database {db:?}; it has {}",
                m.dump_id,
                names.join(", ")
            ))
        })?;
        write_stream_file(repo, &s.extents, path).await?;
        return Ok(vec![path.to_owned()]);
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    }
    let globals = m
        .stream(GLOBALS_STREAM)
        .ok_or_else(|| missing_stream(m, GLOBALS_STREAM))?;
    let mut written = vec![path.join(GLOBALS_STREAM)];
    write_stream_file(repo, &globals.extents, &written[0]).await?;
    for (db, s) in m.databases() {
        let p = path.join(database_file_name(db));
        write_stream_file(repo, &s.extents, &p).await?;
        written.push(p);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_file_names_stay_inside_the_directory() {
        assert_eq!(database_file_name("shop"), "shop.dump");
        assert_eq!(database_file_name("my db"), "my%20db.dump");
        assert_eq!(database_file_name("../etc"), "%2E%2E%2Fetc.dump");
        assert_eq!(database_file_name("globals"), "globals.dump");
        assert_eq!(database_file_name("größe"), "gr%C3%B6%C3%9Fe.dump");
    }

    #[test]
    fn globals_errors_tolerate_only_existing_objects() {
        let stderr = "psql:<stdin>:14: ERROR:  42710: role \"postgres\" already exists\n\
             LOCATION:  CreateRole, user.c:333\n\
             psql:<stdin>:20: WARNING:  01000: something to say\n\
             psql:<stdin>:31: ERROR:  58P01: directory \"/srv/ts\" does not exist\n\
             psql:<stdin>:40: error: invalid command \\restrict\n\
             ERROR:  42501: permission denied to create role\n\
             psql:<stdin>:44: FEHLER:  42710: Rolle »app« existiert bereits\n\
             psql:<stdin>:45: HINWEIS:  00000: nur ein Hinweis\n\
             psql:<stdin>:46: FEHLER:  42501: keine Berechtigung\n\
             DETAIL:  a detail: with colons\n";
        let (tolerated, fatal) = globals_errors(stderr);
        // A server whose lc_messages is German: the same codes, other words.
        assert_eq!(
            tolerated,
            [
                "psql:<stdin>:14: ERROR:  42710: role \"postgres\" already exists",
                "psql:<stdin>:44: FEHLER:  42710: Rolle »app« existiert bereits"
            ]
        );
        assert_eq!(fatal.len(), 4, "{fatal:?}");
        assert!(fatal[3].contains("keine Berechtigung"), "{fatal:?}");
        assert!(fatal[0].contains("58P01") && fatal[1].contains("invalid command"));
        assert_eq!(globals_errors(""), (Vec::new(), Vec::new()));
    }

    #[test]
    fn restore_plan_refuses_existing_databases_unless_clean() {
        let existing: BTreeSet<String> = ["postgres", "shop", "template1"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let dbs = ["app", "postgres", "shop"];
        let e = plan(&dbs, &existing, "postgres", false).expect_err("shop exists");
        assert!(e.to_string().contains("database(s) shop"), "{e}");
        assert_eq!(
            plan(&dbs, &existing, "postgres", true).expect("clean"),
            [Mode::Create, Mode::Into, Mode::Recreate]
        );
        assert_eq!(
            plan(&["app", "postgres"], &existing, "postgres", false).expect("no conflict"),
            [Mode::Create, Mode::Into]
        );
        let e = plan(&dbs, &existing, "shop", true).expect_err("drops its own connection");
        assert!(e.to_string().contains("connect to another one"), "{e}");
        let none = BTreeSet::new();
        assert_eq!(
            plan(&["postgres"], &none, "template1", false).expect("created"),
            [Mode::Create]
        );
    }
}
