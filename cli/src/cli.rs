//! Command-line definitions. Every setting has a flag, a `PGKEEP_*` variable and a config
//! file key; flags win over the environment, which wins over the file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub(crate) const AFTER_HELP: &str = "\
Settings come from flags, then PGKEEP_* environment variables, then the config file
(--config, PGKEEP_CONFIG, or /etc/pgkeep/pgkeep.toml if it exists). The passphrase comes
from PGKEEP_PASSPHRASE, --passphrase-file, or a prompt; never from the command line.

Exit codes: 0 success; 1 error; 2 bad usage or configuration; 3 wrong passphrase or key
refused; 4 repository missing, or already initialized; 5 damaged data detected;
6 PostgreSQL unreachable, or it refused the connection or the command; 7 the repository is
locked by a conflicting operation (prune, or the backups it waits for): retry later.
wal-fetch exits 1 only when the archive lacks the file, 200 on any other failure (bad usage
included); check exits with the Nagios codes (3 UNKNOWN for bad usage).

Example:
  export PGKEEP_REPO=/var/lib/pgkeep/repo
  pgkeep init
  pgkeep key list";

#[derive(Debug, Parser)]
#[command(
    name = "pgkeep",
    version,
    about = "PostgreSQL backups: deduplicated, compressed, encrypted, in object storage",
    after_help = AFTER_HELP
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Config file (TOML). Also PGKEEP_CONFIG. [default: /etc/pgkeep/pgkeep.toml if it
    /// exists]
    // Not clap's `env`: it would take an empty variable as an empty value, and an empty
    // PGKEEP_* variable counts as unset (Settings::resolve reads these three).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Repository location: a path, file:///path, s3://bucket/prefix, gs://bucket/prefix or
    /// az://container/prefix. Also PGKEEP_REPO; config key: repo.
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) repo: Option<String>,

    /// Cluster name inside the repository. Also PGKEEP_CLUSTER; config key: cluster.
    /// [default: main]
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) cluster: Option<String>,

    /// File holding the repository passphrase (first line; must not be readable by others).
    /// Also PGKEEP_PASSPHRASE_FILE; config key: passphrase_file. PGKEEP_PASSPHRASE, if set,
    /// is used before the file from the environment or config.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) passphrase_file: Option<PathBuf>,

    /// An object_store option for the repository's storage, e.g. aws_endpoint=http://127.0.0.1:9000
    /// (repeatable). Also PGKEEP_STORAGE_OPTIONS (comma-separated); config table [storage].
    #[arg(long = "storage-option", global = true, value_name = "KEY=VALUE")]
    pub(crate) storage_options: Vec<String>,

    /// Machine-readable JSON output. Also PGKEEP_JSON=1; config key: json.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// How long the commands that take a repository lock (backup, restore, drill, verify,
    /// dump, dump-restore, prune) wait for a conflicting one (a prune, or the commands a
    /// prune waits for), e.g. 90s, 15min, 2h; 0 fails at once, at most 365 days.
    /// Also PGKEEP_LOCK_WAIT; config key: lock_wait. [default: 15min]
    #[arg(long, global = true, value_name = "DURATION")]
    pub(crate) lock_wait: Option<String>,

    /// Log filter for stderr (error, warn, info, debug, trace, or tracing directives).
    /// Also PGKEEP_LOG; config key: log_level. [default: warn]
    #[arg(long, global = true, value_name = "FILTER")]
    pub(crate) log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a repository: a random master key, wrapped under your passphrase.
    #[command(
        after_help = "Example:\n  PGKEEP_PASSPHRASE_FILE=~/.pgkeep-pass pgkeep --repo /srv/backups/db1 init"
    )]
    Init(InitArgs),
    /// Manage the passphrases (key files) that unlock the repository.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Take a base backup over the replication protocol (incremental when a parent exists).
    #[command(
        after_help = "The server is given as a libpq connection string or URI (--pg, PGKEEP_PG, config key pg),\n\
completed by libpq's variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGSSLMODE, ...) and ~/.pgpass.\n\
The user needs the REPLICATION attribute and a `replication` line in pg_hba.conf.\n\n\
Example:\n  pgkeep backup --pg 'host=db1 user=backup' --label nightly"
    )]
    Backup(BackupArgs),
    /// List the backups of the cluster (--cluster), oldest first, then its dumps.
    #[command(after_help = "Example:\n  pgkeep --cluster main list --json\n  pgkeep list --dumps")]
    List(ListArgs),
    /// Archive one WAL file: use as PostgreSQL's archive_command.
    #[command(
        name = "wal-push",
        after_help = "Exit 0 only once the file is durably stored; an identical file already stored is \
success, a different one under the same name is refused. While more segments wait in \
pg_wal/archive_status, the call stores the next ones too (--lookahead), in parallel.\n\n\
Example (postgresql.conf):\n  archive_mode = on\n  archive_command = 'pgkeep --config /etc/pgkeep/pgkeep.toml wal-push %p'"
    )]
    WalPush(WalPushArgs),
    /// Restore one archived WAL file: use as PostgreSQL's restore_command.
    #[command(
        name = "wal-fetch",
        after_help = "Exit 0 with the file in place; 1 when the archive does not have it (PostgreSQL then \
looks elsewhere or ends recovery). Every other outcome exits 200: a file that exists but cannot \
be read (damaged, wrong key, storage failing after retries), and a call that could not look (bad \
configuration, a bad flag or argument, an internal error). PostgreSQL treats any status above \
125 as fatal and stops recovery, instead of ending it early at the wrong point.\n\n\
Example (postgresql.conf):\n  restore_command = 'pgkeep --config /etc/pgkeep/pgkeep.toml wal-fetch %f %p'"
    )]
    WalFetch(WalFetchArgs),
    /// Receive WAL continuously over a physical replication slot (near-zero data loss).
    #[command(
        name = "wal-stream",
        after_help = "Runs until SIGTERM or SIGINT. Streams from the slot (created if absent), stores every \
complete segment, uploads the segment being filled as .partial every --partial-interval, and \
reports to the server as flushed only what is stored, so the slot keeps all WAL not yet \
archived. Reconnects with backoff. Can run beside archive_command on the same repository.\n\n\
Example:\n  pgkeep wal-stream --pg 'host=db1 user=replicator' --slot pgkeep --metrics-addr 127.0.0.1:9187"
    )]
    WalStream(WalStreamArgs),
    /// List transaction ends and restore points found in the archived WAL.
    #[command(
        after_help = "By default only notable events: restore points, aborts, and commits that dropped or \
truncated relations. --all lists every commit.\n\n\
Example:\n  pgkeep events --since '2026-11-21 08:00:00' --until '2026-11-21 09:00:00Z'"
    )]
    Events(EventsArgs),
    /// Restore a backup into a data directory and set up point-in-time recovery.
    #[command(
        after_help = "Plans first (which backup, which WAL, where recovery stops) and refuses a target the \
archive cannot reach, before writing anything. Files are written in parallel and checked against \
PostgreSQL's backup_manifest. Recovery settings go to postgresql.auto.conf in a marked block, with \
restore_command = pgkeep wal-fetch on the same repository, and recovery.signal. A time without a \
zone is local time (TZ, else /etc/localtime); the plan echoes it in UTC.\n\n\
Examples:\n  pgkeep restore --pgdata /var/lib/postgresql/15/restored --target-time '2026-11-21 09:14:00+01' --dry-run\n  \
pgkeep restore --pgdata /srv/pg/restored --target-name before_migration --start"
    )]
    Restore(RestoreArgs),
    /// Show the cluster's backups and WAL archive: timelines, ranges, gaps, time covered.
    #[command(after_help = "Example:\n  pgkeep info --json")]
    Info,
    /// Apply the retention policy: remove the manifests of backups it does not keep, and the
    /// WAL only they needed.
    #[command(
        after_help = "Rules combine: a backup is kept when any rule keeps it. Calendar rules (daily, weekly,
monthly, yearly) keep the newest backup of each of the last N periods that have one, in the
local time zone. --keep-within keeps every backup finished within the duration and the newest
one before it, so any instant of the window can be restored. Pinned backups and the parents
of kept incrementals are always kept. WAL before the oldest kept backup's start is removed;
timeline history files stay. Space comes back with `pgkeep prune`.
Each rule: the flag, else PGKEEP_KEEP_LAST (..._DAILY, ...), else [retention] in the config.
With --dumps the rules apply to dumps instead: the flag, else PGKEEP_DUMP_KEEP_LAST (...),
else [dump_retention].

Example (grandfather-father-son, and a 2-day PITR window):
  pgkeep expire --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --keep-within 2d --dry-run
  pgkeep expire --dumps --keep-daily 7 --keep-monthly 6"
    )]
    Expire(ExpireArgs),
    /// Pin a backup: retention keeps it until `pgkeep unpin`.
    #[command(after_help = "Example:
  pgkeep pin 20261121T053200Z --note 'before the 2026 schema migration'")]
    Pin(PinArgs),
    /// Remove a backup's pin.
    #[command(after_help = "Example:
  pgkeep unpin 20261121T053200Z")]
    Unpin(UnpinArgs),
    /// Reclaim the space of data no backup references (after `expire`).
    #[command(
        after_help = "Deletes packs that hold only unreferenced chunks, repacks packs whose unreferenced share
reaches --repack-threshold, and rewrites the index as one segment. It holds the repository's
exclusive lock: it waits (--lock-wait) for running backups and restores, and they wait for it.
WAL archiving is never blocked. Safe to interrupt: a rerun finishes the job.

Example:
  pgkeep expire --keep-last 7 && pgkeep prune"
    )]
    Prune(PruneArgs),
    /// Restore drill: restore into a scratch directory, start PostgreSQL, check, clean up.
    #[command(
        after_help = "Restores the latest state (or --target-time) into a scratch directory (a new one in the \
temp dir, or --scratch), runs PostgreSQL on a Unix socket there with archiving off, waits until \
recovery reached the target and promoted, then checks: pg_amcheck on every database (when \
available), the row count of every table (read in full; --compare-source compares them with the \
source server), and each --sql assertion file (every statement must return one true, or be a \
command that succeeds). Then stops the server and removes the scratch directory (also on failure \
and on Ctrl-C; --keep leaves it). Run it as the OS user that runs PostgreSQL, never as root.\n\n\
Exit codes: 0 every check passed; 1 a check failed, recovery failed, or the drill was interrupted; \
5 damaged data detected while restoring; 2, 3, 4 as for every command (planning refusals are 2).\n\n\
Example (weekly, from the postgres user's crontab):\n  \
pgkeep --config /etc/pgkeep/pgkeep.toml drill --sql /etc/pgkeep/drill.sql --heapallindexed"
    )]
    Drill(DrillArgs),
    /// Check the server's archiving setup and the repository's freshness (Nagios plugin).
    #[command(after_help = CHECK_HELP)]
    Check(CheckArgs),
    /// Check the repository: what is missing or damaged, and which restores still work.
    #[command(
        after_help = "Without --read-data only listings, index segments and manifests are read \
(fast): packs are stored at the indexed sizes, every chunk a backup references is indexed, and \
WAL is continuous from each backup's start to its stop and onward. --read-data also downloads \
packs (BLAKE3 against the pack's name, then every chunk decrypted and checked against its id) \
and WAL files (their BLAKE3 or SHA-256 checksum), all of them or a random PERCENT of each. \
Damage is reported as what it breaks: backups and their files, WAL ranges and the \
point-in-time windows they cut. Packs and the index (shared by all clusters) are always \
checked; backups and WAL of every cluster, or only of the cluster named with --cluster (flag, \
PGKEEP_CLUSTER or config key cluster).\n\n\
Exit codes: 0 no damage (warnings allowed); 5 damage found (or damaged data stopped the \
check); 1 verify could not run (storage unreachable, ...); 2 bad usage or configuration; 3 wrong \
passphrase; 4 no repository at the location; 7 a prune held the repository's lock beyond \
--lock-wait (retry later).\n\n\
Examples:\n  pgkeep verify\n  pgkeep verify --read-data 10%\n  pgkeep --json verify --read-data"
    )]
    Verify(VerifyArgs),
    /// Take a logical dump (pg_dump, or a SQLite snapshot) into the archive.
    #[command(after_help = DUMP_HELP)]
    Dump(DumpArgs),
    /// Restore a dump: into a database with pg_restore, to a SQLite file, or as the dump file.
    #[command(name = "dump-restore", after_help = DUMP_RESTORE_HELP)]
    DumpRestore(DumpRestoreArgs),
    /// Measure this machine's CPU and the configured storage: numbers for choosing the
    /// compression level and upload concurrency.
    #[command(after_help = BENCH_HELP)]
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ExpireArgs {
    /// Keep the N newest backups. Also PGKEEP_KEEP_LAST; [retention] keep_last.
    #[arg(long, value_name = "N")]
    pub(crate) keep_last: Option<u32>,
    /// Keep the newest backup of each of the last N days. Also PGKEEP_KEEP_DAILY.
    #[arg(long, value_name = "N")]
    pub(crate) keep_daily: Option<u32>,
    /// Keep the newest backup of each of the last N ISO weeks. Also PGKEEP_KEEP_WEEKLY.
    #[arg(long, value_name = "N")]
    pub(crate) keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the last N months. Also PGKEEP_KEEP_MONTHLY.
    #[arg(long, value_name = "N")]
    pub(crate) keep_monthly: Option<u32>,
    /// Keep the newest backup of each of the last N years. Also PGKEEP_KEEP_YEARLY.
    #[arg(long, value_name = "N")]
    pub(crate) keep_yearly: Option<u32>,
    /// Keep what restoring to any instant of the last DURATION needs (e.g. 36h, 14d).
    /// Also PGKEEP_KEEP_WITHIN.
    #[arg(long, value_name = "DURATION")]
    pub(crate) keep_within: Option<String>,
    /// Show what would be removed and why each kept backup is kept; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Apply the rules to the cluster's dumps instead of its backups. Dumps have their own
    /// policy: each rule comes from its flag, else PGKEEP_DUMP_KEEP_LAST (..._DAILY, ...),
    /// else [dump_retention] in the config (never PGKEEP_KEEP_* or [retention], the
    /// backups' policy); WAL is not touched.
    #[arg(long)]
    pub(crate) dumps: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// List only the dumps (with --json: an array of dumps instead of backups).
    #[arg(long)]
    pub(crate) dumps: bool,
}

const DUMP_HELP: &str = "\
Runs pg_dump (custom format, uncompressed, so that the stream deduplicates) against the
database --pg names, cuts its output with content-defined chunking, and stores it compressed
and encrypted like backups: a dump of a mostly unchanged database stores only what changed.
pg_dump is taken from --pg-bin, else PATH, else the standard locations, of the server's major
version or newer. --where 'TABLE:CONDITION' exports only the matching rows of TABLE (COPY
(SELECT ...) TO STDOUT, in the same snapshot as pg_dump, which leaves that table's data out).
If pg_dump fails, nothing is listed and its own message is shown. --sqlite PATH snapshots a
live SQLite database with SQLite's online backup API (writers keep working).

--format directory runs pg_dump -Fd (with --parallel N workers) into a private scratch
directory (--scratch, else TMPDIR; it needs room for the whole dump and is removed afterwards)
and stores each file on its own: each table's data deduplicates separately. --format plain
stores pg_dump's SQL script, restored with psql. --all dumps the whole cluster as one dump:
pg_dumpall --globals-only (roles, tablespaces) and a custom archive of every database that
accepts connections except template0 and template1 (--pg names the database to connect to);
pg_dump and pg_dumpall come from the same directory.

Examples:
  pgkeep dump --pg 'host=db1 dbname=shop user=backup'
  pgkeep dump --pg 'dbname=shop' --schema-only
  pgkeep dump --pg 'dbname=shop' --table public.orders --table public.customers \\
      --where 'public.orders:tenant_id = 42' --where 'public.customers:tenant_id = 42'
  pgkeep dump --pg 'dbname=shop' --format directory --parallel 4
  pgkeep dump --pg 'dbname=shop' --format plain
  pgkeep dump --all --pg 'host=db1 dbname=postgres user=postgres'
  pgkeep --cluster devdb dump --sqlite /srv/app/dev.sqlite";

const DUMP_RESTORE_HELP: &str = "\
Pipes the dump into pg_restore against the database --pg names (with --create, a database to
connect to, such as postgres, from which the dumped one is created), or with --to-file writes
pg_dump's file back unchanged (and each --where export as FILE.rows-N.copy), or with
--sqlite-to writes a SQLite dump to a new file and runs PRAGMA integrity_check. ID is an id
from `pgkeep list --dumps`, or latest.

Directory-format dumps are written back into a private scratch directory (--scratch, else
TMPDIR) for pg_restore, with --parallel N workers; --to-file DIR writes the directory. Plain
SQL dumps are piped into psql -v ON_ERROR_STOP=1; pg_restore's options (--table,
--schema-only, --data-only, --clean, --create, --parallel) are refused for them.

A dump --all dump restores the globals with psql (errors of roles or tablespaces that already
exist are tolerated and reported, as when restoring pg_dumpall's script; any other error fails
the restore after the script, before any database), then creates every database with pg_restore --create from the database --pg
names; postgres is restored into, not created. Databases that already exist are refused
unless --clean (drop and recreate them). --database NAME restores only that database, exactly
like a pg_dump dump of it (into --pg's database, or with --create under its own name), and
without the globals. --to-file DIR writes DIR/globals.sql and DIR/NAME.dump per database.

--table TABLE or SCHEMA.TABLE: pg_restore matches the name exactly (no patterns); SCHEMA.TABLE
becomes --schema SCHEMA --table TABLE. Unquoted names are folded to lower case as in SQL.
All tables of one run must be in one schema. Like pg_restore -t, it restores the table's
definition and data, not its indexes, constraints or triggers.

Examples:
  pgkeep dump-restore latest --pg 'dbname=shop_copy'
  pgkeep dump-restore 20261121T053200Z --pg 'dbname=postgres' --create --clean
  pgkeep dump-restore 20261121T053200Z --pg 'dbname=shop' --table public.orders --data-only
  pgkeep dump-restore latest --to-file /tmp/shop.dump
  pgkeep dump-restore 20261121T060000Z --pg 'host=db2 dbname=postgres user=postgres'
  pgkeep dump-restore 20261121T060000Z --database shop --pg 'dbname=shop_copy'
  pgkeep --cluster devdb dump-restore latest --sqlite-to /tmp/dev-restored.sqlite";

#[derive(Debug, Args)]
pub(crate) struct DumpArgs {
    /// PostgreSQL connection string or URI (an ordinary session; the database to dump, or
    /// with --all the one to connect to). Also PGKEEP_PG; config key: pg.
    #[arg(long, value_name = "CONNINFO", conflicts_with = "sqlite")]
    pub(crate) pg: Option<String>,
    /// Directory of pg_dump (and pg_dumpall). [default: PATH, then the standard locations, of
    /// the server's major version or newer]
    #[arg(long, value_name = "DIR", conflicts_with = "sqlite")]
    pub(crate) pg_bin: Option<std::path::PathBuf>,
    /// Every database of the cluster and its globals (roles, tablespaces), as one dump.
    #[arg(long, conflicts_with_all = ["sqlite", "table", "exclude_table", "schema", "where"])]
    pub(crate) all: bool,
    /// pg_dump's output format: custom (one archive), directory (one stream per file;
    /// tables deduplicate separately) or plain (an SQL script for psql).
    #[arg(
        long,
        value_name = "FORMAT",
        value_parser = ["custom", "directory", "plain"],
        default_value = "custom",
        conflicts_with = "sqlite"
    )]
    pub(crate) format: String,
    /// pg_dump's parallel workers (pg_dump --jobs); directory format only. [default: 1]
    #[arg(long, value_name = "N", conflicts_with = "sqlite")]
    pub(crate) parallel: Option<u32>,
    /// Where the directory format waits until it is stored (a private directory inside it,
    /// removed afterwards); directory format only. [default: TMPDIR, else /tmp]
    #[arg(long, value_name = "DIR", conflicts_with = "sqlite")]
    pub(crate) scratch: Option<std::path::PathBuf>,
    /// Only the schema (no data).
    #[arg(long, conflicts_with_all = ["data_only", "sqlite"])]
    pub(crate) schema_only: bool,
    /// Only the data (no schema).
    #[arg(long, conflicts_with = "sqlite")]
    pub(crate) data_only: bool,
    /// Only this table (pg_dump pattern; repeatable).
    #[arg(long, value_name = "TABLE", conflicts_with = "sqlite")]
    pub(crate) table: Vec<String>,
    /// Leave this table out (pg_dump pattern; repeatable).
    #[arg(long, value_name = "TABLE", conflicts_with = "sqlite")]
    pub(crate) exclude_table: Vec<String>,
    /// Only this schema (pg_dump pattern; repeatable).
    #[arg(long, value_name = "SCHEMA", conflicts_with = "sqlite")]
    pub(crate) schema: Vec<String>,
    /// Export only the rows of TABLE matching the SQL CONDITION (repeatable), e.g.
    /// 'public.orders:tenant_id = 42'.
    #[arg(
        long = "where",
        value_name = "TABLE:CONDITION",
        conflicts_with = "sqlite"
    )]
    pub(crate) r#where: Vec<String>,
    /// Snapshot this SQLite database file instead of dumping PostgreSQL.
    #[arg(long, value_name = "PATH")]
    pub(crate) sqlite: Option<std::path::PathBuf>,
    /// Worker threads for hashing, compression and encryption (1 to 1024). Also
    /// PGKEEP_JOBS; config key: jobs. [default: one per core]
    #[arg(long, value_name = "N")]
    pub(crate) jobs: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct DumpRestoreArgs {
    /// The dump: an id from `pgkeep list --dumps`, or latest.
    pub(crate) id: String,
    /// Target database: a connection string or URI. Also PGKEEP_PG; config key: pg.
    #[arg(long, value_name = "CONNINFO", conflicts_with_all = ["to_file", "sqlite_to"])]
    pub(crate) pg: Option<String>,
    /// Directory of pg_restore and psql. [default: PATH, then the standard locations, of the
    /// target server's and the dump's major version or newer]
    #[arg(long, value_name = "DIR")]
    pub(crate) pg_bin: Option<std::path::PathBuf>,
    /// Restore only this table: TABLE or SCHEMA.TABLE, no patterns (repeatable; all in one
    /// schema). Its definition and data, not its indexes or constraints (as pg_restore -t).
    #[arg(long, value_name = "TABLE", conflicts_with_all = ["to_file", "sqlite_to"])]
    pub(crate) table: Vec<String>,
    /// Restore only the schema.
    #[arg(long, conflicts_with_all = ["data_only", "to_file", "sqlite_to"])]
    pub(crate) schema_only: bool,
    /// Restore only the data.
    #[arg(long, conflicts_with_all = ["to_file", "sqlite_to"])]
    pub(crate) data_only: bool,
    /// Drop the objects before recreating them (pg_restore --clean --if-exists); for a
    /// dump --all dump, drop and recreate databases that exist.
    #[arg(long, conflicts_with_all = ["to_file", "sqlite_to"])]
    pub(crate) clean: bool,
    /// Create the dumped database (--pg then names the database to connect to first).
    #[arg(long, conflicts_with_all = ["to_file", "sqlite_to"])]
    pub(crate) create: bool,
    /// A dump --all dump: restore only this database, without the globals.
    #[arg(long, value_name = "NAME", conflicts_with = "sqlite_to")]
    pub(crate) database: Option<String>,
    /// pg_restore's parallel workers (pg_restore --jobs); directory-format dumps only.
    /// [default: 1]
    #[arg(long, value_name = "N", conflicts_with_all = ["to_file", "sqlite_to"])]
    pub(crate) parallel: Option<u32>,
    /// Where a directory-format dump is written back for pg_restore (a private directory
    /// inside it, removed afterwards); directory-format dumps only. [default: TMPDIR, else
    /// /tmp]
    #[arg(long, value_name = "DIR", conflicts_with_all = ["to_file", "sqlite_to"])]
    pub(crate) scratch: Option<std::path::PathBuf>,
    /// Write the dump back as pg_dump made it instead of restoring (refuses to overwrite):
    /// a file, or a directory for directory-format and dump --all dumps.
    #[arg(long, value_name = "PATH", conflicts_with = "sqlite_to")]
    pub(crate) to_file: Option<std::path::PathBuf>,
    /// Write a SQLite dump to this new file and run PRAGMA integrity_check.
    #[arg(long, value_name = "PATH")]
    pub(crate) sqlite_to: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct PinArgs {
    /// Backup id (see `pgkeep list`).
    pub(crate) backup: String,
    /// Why it is kept (shown by `list` and `expire --dry-run`).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub(crate) note: String,
}

#[derive(Debug, Args)]
pub(crate) struct UnpinArgs {
    /// Backup id.
    pub(crate) backup: String,
}

#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// Repack a pack once this share of it (percent) is unreferenced; 100 only deletes packs
    /// that are wholly unreferenced. Also PGKEEP_REPACK_THRESHOLD; config key
    /// repack_threshold. [default: 50]
    #[arg(long, value_name = "PERCENT")]
    pub(crate) repack_threshold: Option<u8>,
    /// Report what would be deleted and repacked; change nothing (takes no lock).
    #[arg(long)]
    pub(crate) dry_run: bool,
}

const CHECK_HELP: &str = "\
Checks wal_level, max_wal_senders, archive_mode, archive_command (does it run pgkeep wal-push
into this repository and cluster?), pg_stat_archiver, the wal-stream slot (with --slot), the
repository and its key, and the age of the newest backup and archived WAL. Each problem is
reported with a fix. The first line is a Nagios summary with performance data.

Exit codes (Nagios plugin convention): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the check
could not run: bad usage, server unreachable). The worst finding decides; CRITICAL outranks
WARNING, which outranks UNKNOWN. Ages are WARNING beyond their limit, CRITICAL beyond twice.

Examples:
  pgkeep check --pg 'host=db1 user=monitor' --archive-test
  pgkeep --json check --max-backup-age 26h --max-wal-age 15min";

#[derive(Debug, Args)]
pub(crate) struct WalPushArgs {
    /// The file to archive (archive_command's %p).
    pub(crate) path: PathBuf,
    /// Further ready segments to store in the same call (0 to disable). Also
    /// PGKEEP_LOOKAHEAD; config key: lookahead. [default: 4]
    #[arg(long, value_name = "N")]
    pub(crate) lookahead: Option<usize>,
    /// Directory for look-ahead markers (in its `pushed/` subdirectory). Also PGKEEP_SPOOL;
    /// config key: spool. [default: pgkeep-spool beside the file, i.e. in pg_wal]
    #[arg(long, value_name = "DIR")]
    pub(crate) spool: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct WalFetchArgs {
    /// The file PostgreSQL asks for (restore_command's %f).
    pub(crate) name: String,
    /// Where to put it (restore_command's %p).
    pub(crate) path: PathBuf,
    /// Segments to download ahead into the spool (0 to disable, at most 1024). Also
    /// PGKEEP_PREFETCH; config key: prefetch. [default: 8]
    #[arg(long, value_name = "N")]
    pub(crate) prefetch: Option<usize>,
    /// Directory for prefetched segments (at most --prefetch files). Also PGKEEP_SPOOL;
    /// config key: spool. [default: pgkeep-spool beside the destination, i.e. in pg_wal]
    #[arg(long, value_name = "DIR")]
    pub(crate) spool: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct WalStreamArgs {
    /// PostgreSQL connection string or URI (a role with REPLICATION). Also PGKEEP_PG; config
    /// key: pg.
    #[arg(long, value_name = "CONNINFO")]
    pub(crate) pg: Option<String>,
    /// Physical replication slot. Also PGKEEP_SLOT; config key: slot. [default: pgkeep]
    #[arg(long, value_name = "NAME")]
    pub(crate) slot: Option<String>,
    /// Fail instead of creating the slot when it does not exist.
    #[arg(long)]
    pub(crate) no_create_slot: bool,
    /// Seconds between uploads of the segment being filled (.partial): the data-loss window
    /// (1 to 86400). Also PGKEEP_PARTIAL_INTERVAL; config key: partial_interval. [default: 5]
    #[arg(long, value_name = "SECONDS")]
    pub(crate) partial_interval: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics. Also PGKEEP_METRICS_ADDR; config
    /// key: metrics_addr.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) metrics_addr: Option<String>,
    /// Reconnect when the server sends nothing (not even a keepalive) this many seconds;
    /// also bounds connecting (unless --pg sets connect_timeout) and the setup queries
    /// (0: wait forever). Also PGKEEP_TIMEOUT; config key: timeout. [default: 300]
    #[arg(long, value_name = "SECONDS")]
    pub(crate) timeout: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The data directory to create (absent or empty, unless --delta).
    #[arg(long, value_name = "DIR")]
    pub(crate) pgdata: PathBuf,
    /// The backup to restore: an id from `pgkeep list`, or latest (the newest one that is
    /// consistent before the target). [default: latest]
    #[arg(long, value_name = "ID")]
    pub(crate) backup: Option<String>,
    /// Recover to this time (inclusive unless --target-exclusive).
    #[arg(long, value_name = "TIME", group = "target")]
    pub(crate) target_time: Option<String>,
    /// Recover to this WAL position (X/X).
    #[arg(long, value_name = "LSN", group = "target")]
    pub(crate) target_lsn: Option<String>,
    /// Recover to the end of this transaction. An epoch-qualified id as pg_current_xact_id()
    /// returns it is taken as PostgreSQL takes it: by its low 32 bits.
    #[arg(long, value_name = "XID", group = "target")]
    pub(crate) target_xid: Option<u64>,
    /// Recover to this restore point (pg_create_restore_point).
    #[arg(long, value_name = "NAME", group = "target")]
    pub(crate) target_name: Option<String>,
    /// Stop as soon as the backup is consistent.
    #[arg(long, group = "target")]
    pub(crate) target_immediate: bool,
    /// Stop just before the target instead of just after it.
    #[arg(long)]
    pub(crate) target_exclusive: bool,
    /// Timeline to follow: latest, current or a number. [default: latest]
    #[arg(long, value_name = "TLI")]
    pub(crate) target_timeline: Option<String>,
    /// What the server does at the target: pause, promote or shutdown. [default: pause]
    #[arg(long, value_name = "ACTION", value_parser = ["pause", "promote", "shutdown"])]
    pub(crate) target_action: Option<String>,
    /// Put tablespace OID in DIR instead of its original location (repeatable).
    #[arg(long = "tablespace-map", value_name = "OID=DIR")]
    pub(crate) tablespace_map: Vec<String>,
    /// Update an existing directory: keep files whose content matches the backup, rewrite
    /// the others, remove files the backup does not have.
    #[arg(long)]
    pub(crate) delta: bool,
    /// Files written at once (1 to 1024). Also PGKEEP_JOBS; config key: jobs. [default: one
    /// per core]
    #[arg(long, value_name = "N")]
    pub(crate) jobs: Option<usize>,
    /// Print the plan and stop.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Start PostgreSQL on the restored directory and wait until recovery reaches the target.
    #[arg(long)]
    pub(crate) start: bool,
    /// With --start: stop the server once the target is reached.
    #[arg(long, requires = "start")]
    pub(crate) stop: bool,
    /// With --start: the port (the server listens on a Unix socket in the data directory
    /// only). [default: 5432]
    #[arg(long, value_name = "PORT")]
    pub(crate) port: Option<u16>,
    /// Directory of PostgreSQL's binaries for --start. [default: PATH, then the standard
    /// locations for the backup's major version]
    #[arg(long, value_name = "DIR")]
    pub(crate) pg_bin: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// Only events at or after this time: `YYYY-MM-DD HH:MM[:SS[.ffffff]]` with an optional
    /// zone (`Z`, `+01:00`, ` Europe/Berlin`); without one, local time.
    #[arg(long, value_name = "TIME")]
    pub(crate) since: Option<String>,
    /// Only events at or before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub(crate) until: Option<String>,
    /// Only this timeline.
    #[arg(long, value_name = "N")]
    pub(crate) timeline: Option<u32>,
    /// Every commit, not only the notable events.
    #[arg(long)]
    pub(crate) all: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// PostgreSQL connection string or URI (an ordinary session; the checks are SQL). Also
    /// PGKEEP_PG; config key: pg.
    #[arg(long, value_name = "CONNINFO")]
    pub(crate) pg: Option<String>,
    /// wal-stream's replication slot, to check its state. Also PGKEEP_SLOT; config key:
    /// slot. [default: no slot check]
    #[arg(long, value_name = "NAME")]
    pub(crate) slot: Option<String>,
    /// WARNING when the newest backup finished longer ago than this, CRITICAL beyond twice
    /// (e.g. 26h, 7d). Also PGKEEP_MAX_BACKUP_AGE; config key: max_backup_age. [default: 26h]
    #[arg(long, value_name = "DURATION")]
    pub(crate) max_backup_age: Option<String>,
    /// WARNING when the newest archived WAL file was stored longer ago than this, CRITICAL
    /// beyond twice; not while the server is still filling the next segment. Also
    /// PGKEEP_MAX_WAL_AGE; config key: max_wal_age. [default: 1h]
    #[arg(long, value_name = "DURATION")]
    pub(crate) max_wal_age: Option<String>,
    /// End-to-end test: write a little WAL, switch segments (pg_switch_wal(), which needs a
    /// superuser or a GRANT) and wait until the completed segment is in the archive.
    #[arg(long)]
    pub(crate) archive_test: bool,
    /// How long --archive-test waits for the segment. [default: 60s]
    #[arg(long, value_name = "DURATION", requires = "archive_test")]
    pub(crate) archive_timeout: Option<String>,
}

#[derive(Debug, Args, Default)]
pub(crate) struct KdfArgs {
    /// Argon2id memory in MiB for the new key. Also PGKEEP_KDF_MEMORY_MIB; config key:
    /// kdf_memory_mib. [default: 64]
    #[arg(long, value_name = "MIB")]
    pub(crate) kdf_memory_mib: Option<u32>,
    /// Argon2id passes. Also PGKEEP_KDF_ITERATIONS; config key: kdf_iterations. [default: 3]
    #[arg(long, value_name = "N")]
    pub(crate) kdf_iterations: Option<u32>,
    /// Argon2id lanes. Also PGKEEP_KDF_PARALLELISM; config key: kdf_parallelism. [default: 1]
    #[arg(long, value_name = "N")]
    pub(crate) kdf_parallelism: Option<u32>,
}

/// The label of a new key (`init`, `key add`); `key passwd` has its own `--label`, which
/// keeps the current label by default.
#[derive(Debug, Args, Default)]
pub(crate) struct KeyLabelArgs {
    /// Label shown by `key list`. Also PGKEEP_KEY_LABEL; config key: key_label.
    /// [default: user@host]
    #[arg(long, value_name = "TEXT")]
    pub(crate) label: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    #[command(flatten)]
    pub(crate) kdf: KdfArgs,
    #[command(flatten)]
    pub(crate) label: KeyLabelArgs,
    /// Target size of pack objects in MiB (1 to 256). Also PGKEEP_PACK_SIZE_MIB; config key:
    /// pack_size_mib. [default: 16]
    #[arg(long, value_name = "MIB")]
    pub(crate) pack_size_mib: Option<u32>,
    /// Default zstd level for stored data (0 = none, 1 to 22). Also PGKEEP_COMPRESSION;
    /// config key: compression. [default: 1]
    #[arg(long, value_name = "LEVEL")]
    pub(crate) compression: Option<i8>,
}

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// PostgreSQL connection string or URI. Also PGKEEP_PG; config key: pg. [default: libpq's
    /// PG* variables and defaults]
    #[arg(long, value_name = "CONNINFO")]
    pub(crate) pg: Option<String>,
    /// Label for the backup (in backup_label and `pgkeep list`). [default: pgkeep <backup id>]
    #[arg(long, value_name = "TEXT")]
    pub(crate) label: Option<String>,
    /// Take a full backup even when an earlier backup could serve as parent.
    #[arg(long)]
    pub(crate) full: bool,
    /// How an incremental backup finds unchanged pages: auto (the server's own incremental
    /// backup on PostgreSQL 17+ with summarize_wal=on, else page LSNs), page-lsn, or server.
    /// Also PGKEEP_INCREMENTAL_METHOD; config key: incremental_method. [default: auto]
    #[arg(long, value_name = "METHOD", value_parser = ["auto", "page-lsn", "server"])]
    pub(crate) incremental_method: Option<String>,
    /// Store a page changed since the parent as its difference from the parent's copy (on),
    /// or whole (off). Differences are usually a fraction of the page, but the backup reads
    /// the parent's chunks back from the repository to compute them: off saves those reads
    /// (on object storage billed per request, say). Also PGKEEP_PAGE_DELTAS; config key:
    /// page_deltas. [default: on]
    #[arg(long, value_name = "ON|OFF", value_parser = ["on", "off"])]
    pub(crate) page_deltas: Option<String>,
    /// Checkpoint at the start: fast (immediate) or spread (throttled by the server). Also
    /// PGKEEP_CHECKPOINT; config key: checkpoint. [default: fast]
    #[arg(long, value_name = "MODE", value_parser = ["fast", "spread"])]
    pub(crate) checkpoint: Option<String>,
    /// Limit the server's sending rate, in kB/s (32 to 1048576). Also PGKEEP_MAX_RATE; config
    /// key: max_rate.
    #[arg(long, value_name = "KB_PER_S")]
    pub(crate) max_rate: Option<u32>,
    /// Fail when the server sends nothing for this many seconds once the backup data flows
    /// (0: wait forever); also bounds connecting (unless --pg sets connect_timeout) and the
    /// queries before the backup. The initial checkpoint is not timed. Also PGKEEP_TIMEOUT;
    /// config key: timeout. [default: 300]
    #[arg(long, value_name = "SECONDS")]
    pub(crate) timeout: Option<u64>,
    /// Do not ask the server to verify data checksums while sending.
    #[arg(long)]
    pub(crate) no_verify_checksums: bool,
    /// Checksum algorithm of PostgreSQL's backup_manifest, which a restore checks every file
    /// against: crc32c, sha224, sha256, sha384, sha512 or none (sizes only). The server
    /// computes it while sending; SHA-256 costs it about a core-second per 2 GB. Also
    /// PGKEEP_MANIFEST_CHECKSUMS; config key: manifest_checksums. [default: crc32c]
    #[arg(long, value_name = "ALGORITHM")]
    pub(crate) manifest_checksums: Option<String>,
    /// Worker threads for hashing, compression and encryption (1 to 1024). Also
    /// PGKEEP_JOBS; config key: jobs. [default: one per core]
    #[arg(long, value_name = "N")]
    pub(crate) jobs: Option<usize>,
    /// Packs uploading at once (1 to 64); `pgkeep bench` measures which value the storage
    /// rewards. Each costs one pack of memory. Also PGKEEP_UPLOADS; config key: uploads.
    /// [default: 3]
    #[arg(long, value_name = "N")]
    pub(crate) uploads: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// List the key files.
    List,
    /// Add a passphrase (a new key file for the same master key).
    #[command(
        after_help = "Example:\n  PGKEEP_NEW_PASSPHRASE_FILE=/root/ops-pass pgkeep key add --label ops"
    )]
    Add(NewKeyArgs),
    /// Remove a key file by id (not the last one, not the one in use).
    Remove {
        /// Key id as shown by `key list`.
        id: String,
    },
    /// Change the passphrase of the key in use (a new key file replaces it).
    #[command(
        after_help = "Example:\n  PGKEEP_NEW_PASSPHRASE_FILE=/root/new-pass pgkeep key passwd --label ops-2027"
    )]
    Passwd(PasswdArgs),
}

#[derive(Debug, Args)]
pub(crate) struct NewKeyArgs {
    #[command(flatten)]
    pub(crate) kdf: KdfArgs,
    #[command(flatten)]
    pub(crate) label: KeyLabelArgs,
    /// File holding the new passphrase. Also PGKEEP_NEW_PASSPHRASE_FILE, or the
    /// passphrase itself in PGKEEP_NEW_PASSPHRASE; else a prompt (twice).
    #[arg(long, value_name = "FILE")]
    pub(crate) new_passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct PasswdArgs {
    #[command(flatten)]
    pub(crate) kdf: KdfArgs,
    /// A new label for the key. Flag only: PGKEEP_KEY_LABEL and key_label name new keys,
    /// and must not rename this one. [default: the current label]
    #[arg(long, value_name = "TEXT")]
    pub(crate) label: Option<String>,
    /// File holding the new passphrase. Also PGKEEP_NEW_PASSPHRASE_FILE, or the
    /// passphrase itself in PGKEEP_NEW_PASSPHRASE; else a prompt (twice).
    #[arg(long, value_name = "FILE")]
    pub(crate) new_passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DrillArgs {
    /// The backup to restore: an id from `pgkeep list`, or latest (the newest one that is
    /// consistent before the target). [default: latest]
    #[arg(long, value_name = "ID")]
    pub(crate) backup: Option<String>,
    /// Recover to this time (same forms as for restore) instead of the end of the archive.
    #[arg(long, value_name = "TIME")]
    pub(crate) target_time: Option<String>,
    /// Scratch directory (absent or empty; its contents are removed afterwards). [default: a
    /// new pgkeep-drill-* directory in the system temp dir]
    #[arg(long, value_name = "DIR")]
    pub(crate) scratch: Option<PathBuf>,
    /// Keep the scratch directory (the server stopped) for inspection.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Port number of the drill server (it listens on a Unix socket in the scratch
    /// directory only). [default: a free port]
    #[arg(long, value_name = "PORT")]
    pub(crate) port: Option<u16>,
    /// Directory of PostgreSQL's binaries. [default: PATH, then the standard locations for
    /// the backup's major version]
    #[arg(long, value_name = "DIR")]
    pub(crate) pg_bin: Option<PathBuf>,
    /// Role the checks connect as: a superuser of the backed-up cluster. [default: the OS
    /// user's name]
    #[arg(long, value_name = "ROLE")]
    pub(crate) db_user: Option<String>,
    /// Assertion file: SQL statements separated by `;` (and `\connect DB` lines), each
    /// returning one true, or a command that succeeds (repeatable).
    #[arg(long, value_name = "FILE")]
    pub(crate) sql: Vec<PathBuf>,
    /// Do not run pg_amcheck.
    #[arg(long)]
    pub(crate) no_amcheck: bool,
    /// pg_amcheck --heapallindexed: also check that every heap tuple is in its indexes
    /// (slower).
    #[arg(long, conflicts_with = "no_amcheck")]
    pub(crate) heapallindexed: bool,
    /// Count the rows only of tables up to this size (MiB, main fork); 0 counts none.
    /// [default: 1024]
    #[arg(long, value_name = "MIB")]
    pub(crate) count_max_mib: Option<u64>,
    /// Compare each table's row count with the source server (--pg); any difference fails
    /// the drill. Meaningful only when the source has not changed since the drill's target.
    #[arg(long)]
    pub(crate) compare_source: bool,
    /// The source server for --compare-source: a connection string or URI (a role that can
    /// read every table). Also PGKEEP_PG; config key: pg.
    #[arg(long, value_name = "CONNINFO", requires = "compare_source")]
    pub(crate) pg: Option<String>,
    /// Files written at once, and pg_amcheck's jobs (1 to 1024). Also PGKEEP_JOBS; config
    /// key: jobs. [default: one per core]
    #[arg(long, value_name = "N")]
    pub(crate) jobs: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Also download and check data: every pack and WAL file (no value, or all), or a random
    /// PERCENT of them (e.g. 10 or 10%; each object picked independently).
    #[arg(long, value_name = "PERCENT|all", num_args = 0..=1, default_missing_value = "all")]
    pub(crate) read_data: Option<String>,
    /// Packs and WAL files downloaded and checked at once, 1 to 1024 (each is held in memory
    /// while checked). Also PGKEEP_JOBS; config key: jobs. [default: one per core]
    #[arg(long, value_name = "N")]
    pub(crate) jobs: Option<usize>,
}

const BENCH_HELP: &str = "CPU stages run on one core for --seconds each, on synthetic PostgreSQL \
heap pages cut into the repository's chunk size: chunk id (keyed BLAKE3), zstd at each --levels \
level (speed and ratio), AES-256-GCM sealing, and the whole per-chunk worker path (id, compress, \
seal); then the worker path at the repository's level on 1 to all cores. MB/s are of plaintext \
(10^6 bytes per second). Storage: puts, then gets, of pack-sized objects of random bytes at each \
--concurrency, with per-object latency, under bench/<random>/ in the repository, deleted \
afterwards (no other command reads bench/). The recommendation names the lowest concurrency \
that no higher one beats by more than 10%, and the highest level at which all cores compress \
faster than storage takes the result. --cpu-only needs no repository or passphrase.\n\n\
Examples:\n  pgkeep bench --cpu-only\n  pgkeep bench --levels 1,3,9 --concurrency 1,4,16 --seconds 3\n  \
pgkeep --json bench --object-mib 64";

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Measure the CPU only: no repository, storage or passphrase needed.
    #[arg(long)]
    pub(crate) cpu_only: bool,
    /// How long each stage (and each storage put and get run) goes on, in seconds.
    #[arg(long, value_name = "SECONDS", default_value = "1")]
    pub(crate) seconds: f64,
    /// zstd levels to measure (0 = none, 1 to 22), comma-separated.
    #[arg(
        long,
        value_name = "LEVELS",
        value_delimiter = ',',
        default_value = "1,3,6,9,19"
    )]
    pub(crate) levels: Vec<i8>,
    /// Objects put (and got) at once, one run per value, comma-separated.
    #[arg(
        long,
        value_name = "N,...",
        value_delimiter = ',',
        default_value = "1,2,4,8"
    )]
    pub(crate) concurrency: Vec<usize>,
    /// Size of the storage test objects in MiB (1 to 256). [default: the repository's pack
    /// size]
    #[arg(long, value_name = "MIB", conflicts_with = "cpu_only")]
    pub(crate) object_mib: Option<u32>,
}
