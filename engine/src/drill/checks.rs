//! The drill's checks on the restored server: pg_amcheck, row counts (optionally compared
//! with the source), and assertion files. Each returns a [`Check`]; none fails the drill
//! by itself erroring out, so every check runs and reports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use crate::conninfo::{self, ConnConfig};
use crate::error::{Error, Result};
use crate::replication::connection::ResultSet;
use crate::replication::{PgConnection, ReplicationMode};

use super::script::Script;

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Passed,
    Failed,
    /// Could not run here (no pg_amcheck binary, no amcheck extension); not a failure.
    Skipped,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// One check.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub status: CheckStatus,
    pub seconds: f64,
    /// One line: what was checked.
    pub summary: String,
    /// What failed, one line each.
    pub problems: Vec<String>,
}

impl Check {
    fn new(name: String, started: Instant, summary: String, problems: Vec<String>) -> Self {
        Self {
            name,
            status: if problems.is_empty() {
                CheckStatus::Passed
            } else {
                CheckStatus::Failed
            },
            seconds: started.elapsed().as_secs_f64(),
            summary,
            problems,
        }
    }

    fn skipped(name: &str, started: Instant, why: String) -> Self {
        Self {
            name: name.into(),
            status: CheckStatus::Skipped,
            seconds: started.elapsed().as_secs_f64(),
            summary: why,
            problems: Vec::new(),
        }
    }
}

/// One table's row count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    pub database: String,
    pub schema: String,
    pub table: String,
    /// Size of the main fork on the restored server.
    pub bytes: u64,
    /// `None`: not counted (over the size limit, or the count failed; see the check).
    pub restored: Option<u64>,
    /// The source's count, when compared.
    pub source: Option<u64>,
}

/// The drill server: a Unix socket in the scratch data directory.
#[derive(Debug, Clone)]
pub struct Local {
    pub socket_dir: String,
    pub port: u16,
    pub user: String,
}

impl Local {
    fn config(&self, database: &str) -> Result<ConnConfig> {
        let bad = |e: conninfo::ConnInfoError| Error::InvalidInput(e.to_string());
        let mut params = conninfo::Params::new();
        for (k, v) in [
            ("dbname", database),
            ("sslmode", "disable"),
            ("host", self.socket_dir.as_str()),
            ("port", &self.port.to_string()),
            ("user", self.user.as_str()),
            ("application_name", "pgkeep drill"),
        ] {
            params.set(k, v).map_err(bad)?;
        }
        conninfo::resolve(&params, &|_| None, &self.user, None).map_err(bad)
    }

    async fn connect(&self, database: &str) -> Result<PgConnection> {
        Ok(PgConnection::connect(&self.config(database)?, ReplicationMode::None).await?)
    }
}

/// The source server's connection settings with another database.
fn source_config(source: &ConnConfig, database: &str) -> ConnConfig {
    let mut cfg = source.clone();
    cfg.dbname = Some(database.to_owned());
    cfg.replication = None;
    cfg
}

/// `pg_amcheck --all --install-missing` on the drill server: heap and B-tree index
/// checks in every database. Skipped when the binaries have no pg_amcheck (before 14) or
/// the server has no amcheck extension (a contrib package).
pub async fn amcheck(
    bin_dir: &Path,
    server: &Local,
    heapallindexed: bool,
    jobs: usize,
    workdir: &Path,
) -> Check {
    const NAME: &str = "pg_amcheck";
    let started = Instant::now();
    let exe = bin_dir.join("pg_amcheck");
    if !exe.is_file() {
        return Check::skipped(
            NAME,
            started,
            format!(
                "no pg_amcheck in {} (PostgreSQL 14 and later have it)",
                bin_dir.display()
            ),
        );
    }
    let available = async {
        let mut conn = server.connect("postgres").await?;
        let row = conn
            .query_row("SELECT count(*) FROM pg_available_extensions WHERE name = 'amcheck'")
            .await?;
        let _ = conn.close().await;
        Ok::<_, Error>(row.first().cloned().flatten().as_deref() == Some("1"))
    };
    match available.await {
        Ok(true) => {}
        Ok(false) => {
            return Check::skipped(
                NAME,
                started,
                "the server has no amcheck extension (install PostgreSQL's contrib modules)".into(),
            )
        }
        Err(e) => {
            return Check::new(
                NAME.into(),
                started,
                "could not ask the server for the amcheck extension".into(),
                vec![e.to_string()],
            )
        }
    }
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("--host")
        .arg(&server.socket_dir)
        .args(["--port", &server.port.to_string()])
        .args(["--username", &server.user])
        .args(["--no-password", "--all", "--install-missing"])
        .args(["--jobs", &jobs.max(1).to_string()])
        .current_dir(workdir)
        .stdin(std::process::Stdio::null());
    if heapallindexed {
        cmd.arg("--heapallindexed");
    }
    // The connection is given in full: PG* variables meant for the source must not steer it.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    let summary = format!(
        "heap and B-tree checks in every database{}",
        if heapallindexed {
            ", every heap tuple found in its indexes"
        } else {
            ""
        }
    );
    match cmd.output().await {
        Err(e) => Check::new(
            NAME.into(),
            started,
            summary,
            vec![format!("running {}: {e}", exe.display())],
        ),
        Ok(out) if out.status.success() => Check::new(NAME.into(), started, summary, Vec::new()),
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let mut problems = vec![format!("pg_amcheck {}", out.status)];
            problems.extend(first_lines(&text, 20));
            Check::new(NAME.into(), started, summary, problems)
        }
    }
}

fn first_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out: Vec<String> = lines.iter().take(n).map(|l| (*l).to_owned()).collect();
    if lines.len() > n {
        out.push(format!("... {} more lines", lines.len() - n));
    }
    out
}

/// An identifier quoted for SQL.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal for SQL (standard_conforming_strings is on since 9.1).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

const DATABASES: &str =
    "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1";

/// Ordinary, permanent tables with their main fork's size. Unlogged tables are empty after
/// recovery by design and temporary ones belong to sessions; views, foreign tables and
/// partitioned parents hold no rows of their own (their partitions are counted).
const TABLES: &str = "SELECT n.nspname, c.relname, pg_relation_size(c.oid) \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND c.relpersistence = 'p' \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND n.nspname NOT LIKE 'pg\\_toast%' \
     ORDER BY 1, 2";

type Tables = BTreeMap<(String, String), u64>;

async fn list_tables(conn: &mut PgConnection) -> Result<Tables> {
    let sets = conn.query(TABLES).await?;
    Ok(rows(sets)
        .into_iter()
        .filter_map(|r| {
            let size = r.get(2)?.as_deref()?.parse().ok()?;
            Some(((r.first()?.clone()?, r.get(1)?.clone()?), size))
        })
        .collect())
}

async fn list_databases(conn: &mut PgConnection) -> Result<Vec<String>> {
    let sets = conn.query(DATABASES).await?;
    Ok(rows(sets)
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

fn rows(sets: Vec<ResultSet>) -> Vec<Vec<Option<String>>> {
    sets.into_iter().flat_map(|s| s.rows).collect()
}

async fn count(conn: &mut PgConnection, schema: &str, table: &str) -> Result<u64> {
    let sql = format!(
        "SELECT count(*) FROM ONLY {}.{}",
        quote_ident(schema),
        quote_ident(table)
    );
    let row = conn.query_row(&sql).await?;
    row.first()
        .cloned()
        .flatten()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::InvalidInput(format!("{sql}: not a count")))
}

/// Counts the rows of every permanent table up to `max_bytes` in every database of the
/// drill server (a full read of each table's heap: unreadable pages fail it), and, with
/// `source`, compares each count with the source's. Any difference is a failure: the
/// comparison means something only when the source has not changed since the drill's
/// target, which the caller asks for knowingly.
pub async fn row_counts(
    server: &Local,
    max_bytes: u64,
    source: Option<&ConnConfig>,
) -> (Check, Vec<TableCount>) {
    const NAME: &str = "row counts";
    let started = Instant::now();
    let mut problems = Vec::new();
    let mut tables = Vec::new();
    let databases = match async {
        let mut conn = server.connect("postgres").await?;
        let dbs = list_databases(&mut conn).await;
        let _ = conn.close().await;
        dbs
    }
    .await
    {
        Ok(d) => d,
        Err(e) => {
            return (
                Check::new(
                    NAME.into(),
                    started,
                    "could not list the databases".into(),
                    vec![e.to_string()],
                ),
                tables,
            )
        }
    };
    let mut over_limit = 0usize;
    for db in &databases {
        let mut conn = match server.connect(db).await {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("database {db}: {e}"));
                continue;
            }
        };
        let listed = match list_tables(&mut conn).await {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("database {db}: listing tables: {e}"));
                continue;
            }
        };
        for ((schema, table), bytes) in listed {
            let restored = if bytes > max_bytes {
                over_limit += 1;
                None
            } else {
                match count(&mut conn, &schema, &table).await {
                    Ok(n) => Some(n),
                    Err(e) => {
                        problems.push(format!("{db}.{schema}.{table}: {e}"));
                        None
                    }
                }
            };
            tables.push(TableCount {
                database: db.clone(),
                schema,
                table,
                bytes,
                restored,
                source: None,
            });
        }
        let _ = conn.close().await;
    }
    let counted = tables.iter().filter(|t| t.restored.is_some()).count();
    let mut summary = format!(
        "{counted} tables in {} databases counted{}",
        databases.len(),
        if over_limit > 0 {
            format!(", {over_limit} over the size limit not counted")
        } else {
            String::new()
        }
    );
    if let Some(source) = source {
        compare_with_source(source, &databases, &mut tables, &mut problems).await;
        summary.push_str(", compared with the source");
    }
    (Check::new(NAME.into(), started, summary, problems), tables)
}

async fn compare_with_source(
    source: &ConnConfig,
    databases: &[String],
    tables: &mut [TableCount],
    problems: &mut Vec<String>,
) {
    let first = source_config(source, "postgres");
    let source_dbs = match async {
        let mut conn = PgConnection::connect(&first, ReplicationMode::None).await?;
        let dbs = list_databases(&mut conn).await;
        let _ = conn.close().await;
        dbs
    }
    .await
    {
        Ok(d) => d,
        Err(e) => {
            problems.push(format!("source: listing databases: {e}"));
            return;
        }
    };
    let restored_dbs: BTreeSet<&String> = databases.iter().collect();
    for db in &source_dbs {
        if !restored_dbs.contains(db) {
            problems.push(format!(
                "database {db} is on the source but not in the restored copy"
            ));
        }
    }
    for db in databases {
        if !source_dbs.contains(db) {
            problems.push(format!(
                "database {db} is in the restored copy but not on the source"
            ));
            continue;
        }
        let mut conn =
            match PgConnection::connect(&source_config(source, db), ReplicationMode::None).await {
                Ok(c) => c,
                Err(e) => {
                    problems.push(format!("source database {db}: {e}"));
                    continue;
                }
            };
        let source_tables = match list_tables(&mut conn).await {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("source database {db}: listing tables: {e}"));
                continue;
            }
        };
        let mut seen = BTreeSet::new();
        for t in tables.iter_mut().filter(|t| &t.database == db) {
            let key = (t.schema.clone(), t.table.clone());
            seen.insert(key.clone());
            let Some(restored) = t.restored else { continue };
            if !source_tables.contains_key(&key) {
                problems.push(format!(
                    "{db}.{}.{}: in the restored copy ({restored} rows) but not on the source",
                    t.schema, t.table
                ));
                continue;
            }
            match count(&mut conn, &t.schema, &t.table).await {
                Ok(n) => {
                    t.source = Some(n);
                    if n != restored {
                        problems.push(format!(
                            "{db}.{}.{}: {restored} rows restored, {n} on the source",
                            t.schema, t.table
                        ));
                    }
                }
                Err(e) => problems.push(format!(
                    "{db}.{}.{}: counting on the source: {e}",
                    t.schema, t.table
                )),
            }
        }
        for (schema, table) in source_tables.keys() {
            if !seen.contains(&(schema.clone(), table.clone())) {
                problems.push(format!(
                    "{db}.{schema}.{table}: on the source but not in the restored copy"
                ));
            }
        }
        let _ = conn.close().await;
    }
}

/// Whether a statement's result is a passed assertion: exactly one boolean `true`, or no
/// rows at all (a command: `SET`, `CREATE TEMP TABLE`, `DO`) that ran without error.
pub fn verdict(sets: &[ResultSet]) -> std::result::Result<(), String> {
    let Some(set) = sets.last() else {
        return Ok(());
    };
    if set.columns.is_empty() {
        return Ok(());
    }
    match (set.rows.len(), set.rows.first()) {
        (1, Some(row)) if row.len() == 1 => match row[0].as_deref() {
            Some("t") => Ok(()),
            Some("f") => Err("returned false".into()),
            None => Err("returned NULL".into()),
            Some(other) => Err(format!(
                "returned {}, not a boolean",
                quote_literal(&other.chars().take(60).collect::<String>())
            )),
        },
        (1, Some(row)) => Err(format!("returned {} columns, not one boolean", row.len())),
        (n, _) => Err(format!("returned {n} rows, not one boolean")),
    }
}

/// Runs an assertion file on the drill server: every statement runs (in its own
/// transaction, in the database of the last `\connect`) and each failing one is named.
pub async fn assertions(server: &Local, script: &Script) -> Check {
    let started = Instant::now();
    let mut problems = Vec::new();
    let mut conn: Option<(String, std::result::Result<PgConnection, String>)> = None;
    for st in &script.statements {
        if conn.as_ref().map(|(db, _)| db) != Some(&st.database) {
            if let Some((_, Ok(old))) = conn.take() {
                let _ = old.close().await;
            }
            let c = server
                .connect(&st.database)
                .await
                .map_err(|e| format!("connecting to database {}: {e}", st.database));
            conn = Some((st.database.clone(), c));
        }
        let result = match conn.as_mut().map(|(_, c)| c) {
            Some(Ok(c)) => match c.query(&st.sql).await {
                Ok(sets) => verdict(&sets),
                Err(e) => Err(e.to_string()),
            },
            Some(Err(e)) => Err(e.clone()),
            None => Err("no connection".into()),
        };
        if let Err(why) = result {
            problems.push(format!(
                "{}:{}: {} -- {why}",
                script.name,
                st.line,
                st.short()
            ));
        }
    }
    if let Some((_, Ok(c))) = conn {
        let _ = c.close().await;
    }
    let total = script.statements.len();
    let summary = format!(
        "{} of {total} statements passed",
        total - problems.len().min(total)
    );
    Check::new(
        format!("assertions {}", script.name),
        started,
        summary,
        problems,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(columns: &[&str], rows: &[&[Option<&str>]]) -> ResultSet {
        ResultSet {
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: rows
                .iter()
                .map(|r| r.iter().map(|c| c.map(str::to_owned)).collect())
                .collect(),
            tag: "SELECT".into(),
        }
    }

    #[test]
    fn verdict_wants_one_true_or_a_command() {
        assert_eq!(verdict(&[set(&["ok"], &[&[Some("t")]])]), Ok(()));
        assert_eq!(verdict(&[]), Ok(()));
        assert_eq!(verdict(&[set(&[], &[])]), Ok(()));
        assert_eq!(
            verdict(&[set(&["ok"], &[&[Some("f")]])]),
            Err("returned false".into())
        );
        assert_eq!(
            verdict(&[set(&["ok"], &[&[None]])]),
            Err("returned NULL".into())
        );
        assert_eq!(
            verdict(&[set(&["n"], &[&[Some("it's")]])]),
            Err("returned 'it''s', not a boolean".into())
        );
        assert_eq!(
            verdict(&[set(&["a", "b"], &[&[Some("t"), Some("t")]])]),
            Err("returned 2 columns, not one boolean".into())
        );
        assert_eq!(
            verdict(&[set(&["ok"], &[])]),
            Err("returned 0 rows, not one boolean".into())
        );
        assert_eq!(
            verdict(&[set(&["ok"], &[&[Some("t")], &[Some("t")]])]),
            Err("returned 2 rows, not one boolean".into())
        );
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_ident("T"), "\"T\"");
    }

    #[test]
    fn long_output_is_shortened() {
        let text = (0..30).map(|i| format!("line {i}\n")).collect::<String>();
        let lines = first_lines(&text, 20);
        assert_eq!(lines.len(), 21);
        assert_eq!(lines[20], "... 10 more lines");
    }
}
