//! Collecting the facts `pgkeep check` judges: SQL on an ordinary session, listings and
//! manifests of the repository, and the end-to-end archive test.

use std::time::{Duration, Instant};

use pgkeep_format::{ClusterName, WalFileKind};

use super::{ArchiveTest, ArchiverStats, RepoFacts, ServerFacts, SlotFacts};
use crate::conninfo::ConnConfig;
use crate::error::Result;
use crate::replication::{PgConnection, PgError, ReplicationMode};
use crate::repository::Repository;
use crate::wal::WalArchive;

/// How often the archive test looks for its segment.
const POLL: Duration = Duration::from_millis(250);

/// An ordinary (non-replication) session: the checks are SQL, and `pg_hba.conf` lines for
/// `replication` do not admit it.
pub async fn connect(cfg: &ConnConfig) -> Result<PgConnection, PgError> {
    PgConnection::connect(cfg, ReplicationMode::None).await
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn text(row: &[Option<String>], i: usize) -> String {
    row.get(i).cloned().flatten().unwrap_or_default()
}

fn opt(row: &[Option<String>], i: usize) -> Option<String> {
    row.get(i).cloned().flatten().filter(|s| !s.is_empty())
}

fn number<T: std::str::FromStr>(row: &[Option<String>], i: usize) -> Option<T> {
    opt(row, i).and_then(|s| s.parse().ok())
}

/// Settings, role, archiver statistics and (when `slot` is given) that slot.
pub async fn server_facts(
    conn: &mut PgConnection,
    slot: Option<&str>,
) -> Result<ServerFacts, PgError> {
    // `current_setting(name, true)` is NULL for a setting this version does not have
    // (archive_library before 15). pg_walfile_name() fails during recovery, hence the CASE.
    let row = conn
        .query_row(
            "SELECT current_setting('server_version'), pg_is_in_recovery(), \
             current_setting('wal_level'), current_setting('archive_mode'), \
             current_setting('archive_command'), \
             coalesce(current_setting('archive_library', true), ''), \
             current_setting('max_wal_senders'), \
             (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), \
             CASE WHEN pg_is_in_recovery() THEN NULL \
                  ELSE pg_walfile_name(pg_current_wal_lsn()) END",
        )
        .await?;
    let mut facts = ServerFacts {
        target: conn.target().to_owned(),
        server_version: text(&row, 0),
        in_recovery: text(&row, 1) == "t",
        wal_level: text(&row, 2),
        archive_mode: text(&row, 3),
        archive_command: text(&row, 4),
        archive_library: text(&row, 5),
        max_wal_senders: number(&row, 6).unwrap_or(0),
        wal_segment_size: number(&row, 7).unwrap_or(16 << 20),
        current_wal_file: opt(&row, 8),
        ..ServerFacts::default()
    };
    facts.archiver = archiver_stats(conn).await?;
    if let Some(name) = slot {
        let sets = conn
            .query(&format!(
                "SELECT slot_type, active, wal_status, \
                 CASE WHEN restart_lsn IS NULL THEN NULL \
                      WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), restart_lsn) \
                      ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) END::bigint \
                 FROM pg_replication_slots WHERE slot_name = {}",
                sql_literal(name)
            ))
            .await?;
        let state = match sets.into_iter().flat_map(|s| s.rows).next() {
            None => SlotFacts::Missing,
            Some(row) => SlotFacts::Present {
                slot_type: text(&row, 0),
                active: text(&row, 1) == "t",
                wal_status: opt(&row, 2),
                retained_bytes: number(&row, 3),
            },
        };
        facts.slot = Some((name.to_owned(), state));
    }
    Ok(facts)
}

/// `pg_stat_archiver`.
pub async fn archiver_stats(conn: &mut PgConnection) -> Result<ArchiverStats, PgError> {
    let row = conn
        .query_row(
            "SELECT archived_count, last_archived_wal, \
             (extract(epoch FROM last_archived_time) * 1000000)::bigint, \
             failed_count, last_failed_wal, \
             (extract(epoch FROM last_failed_time) * 1000000)::bigint \
             FROM pg_stat_archiver",
        )
        .await?;
    Ok(ArchiverStats {
        archived_count: number(&row, 0).unwrap_or(0),
        last_archived_wal: opt(&row, 1),
        last_archived_time_us: number(&row, 2),
        failed_count: number(&row, 3).unwrap_or(0),
        last_failed_wal: opt(&row, 4),
        last_failed_time_us: number(&row, 5),
    })
}

/// The newest backup and WAL file of `cluster`. Reads one manifest and lists the WAL
/// archive (names only, plus one HEAD for the newest file's time).
pub async fn repo_facts(repo: &Repository, cluster: &ClusterName) -> Result<RepoFacts> {
    let ids = repo.list_backups(cluster).await?;
    let newest_backup = match ids.last() {
        Some(id) => {
            let m = repo.read_manifest(cluster, id).await?;
            Some((id.clone(), m.stop_time_us))
        }
        None => None,
    };
    let archive = WalArchive::new(repo.clone(), cluster.clone());
    let newest = archive
        .list()
        .await?
        .into_values()
        .flatten()
        .map(|f| f.name)
        .filter(|n| matches!(n.kind(), WalFileKind::Segment | WalFileKind::Partial))
        .max();
    let newest_wal = match newest {
        Some(name) => {
            let modified = repo
                .store()
                .modified_us(&archive.object_name(&name))
                .await?;
            Some((name, modified))
        }
        None => None,
    };
    Ok(RepoFacts {
        location: repo.store().location().to_owned(),
        backups: ids.len(),
        newest_backup,
        newest_wal,
    })
}

/// Why the archive test cannot run against this server, if it cannot.
pub fn archive_test_blocker(s: &ServerFacts, slot_configured: bool) -> Option<String> {
    if s.in_recovery {
        return Some(
            "the server is a standby, where pg_switch_wal() cannot run: test on the primary".into(),
        );
    }
    if s.wal_level == "minimal" {
        return Some("wal_level is minimal".into());
    }
    let archiver = s.archive_mode != "off"
        && (!s.archive_command.trim().is_empty() || !s.archive_library.is_empty());
    if !archiver && !slot_configured {
        return Some("nothing archives WAL (archive_mode off or archive_command empty, and no wal-stream slot configured)".into());
    }
    None
}

/// The end-to-end test: writes a little WAL (a transaction id's commit, so the switch is
/// never a no-op), switches to a new segment, and waits up to `timeout` until the segment
/// just completed is in the archive. A step the server refuses (pg_switch_wal() needs a
/// superuser or an explicit GRANT) makes the test [`ArchiveTest::NotRun`].
pub async fn archive_test(
    conn: &mut PgConnection,
    archive: &WalArchive,
    timeout: Duration,
) -> ArchiveTest {
    let segment = match switch_wal(conn).await {
        Ok(s) => s,
        Err(e) => {
            return ArchiveTest::NotRun(format!(
                "switching WAL failed: {e} (pg_switch_wal() needs a superuser, or GRANT EXECUTE ON FUNCTION pg_switch_wal() TO the check's role)"
            ))
        }
    };
    let Ok(name) = pgkeep_format::WalFileName::parse(&segment) else {
        return ArchiveTest::NotRun(format!("the server named the switched segment {segment:?}"));
    };
    let object = archive.object_name(&name);
    let store = archive.repository().store();
    let start = Instant::now();
    loop {
        match store.head(&object).await {
            Ok(Some(_)) => {
                return ArchiveTest::Ran {
                    segment,
                    arrived: true,
                    waited: start.elapsed(),
                    archiver: None,
                }
            }
            Ok(None) => {}
            Err(e) => {
                return ArchiveTest::NotRun(format!("looking for {segment} in the archive: {e}"))
            }
        }
        if start.elapsed() >= timeout {
            return ArchiveTest::Ran {
                segment,
                arrived: false,
                waited: start.elapsed(),
                archiver: archiver_stats(conn).await.ok(),
            };
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn switch_wal(conn: &mut PgConnection) -> Result<String, PgError> {
    conn.query("SELECT pg_current_xact_id()").await?;
    // pg_switch_wal() returns the end of the completed segment; pg_walfile_name() of a
    // position on a segment boundary names the segment before it, the completed one.
    let row = conn
        .query_row("SELECT pg_walfile_name(pg_switch_wal())")
        .await?;
    Ok(text(&row, 0))
}
