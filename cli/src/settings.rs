//! Resolved settings: flags, then `PGKEEP_*` variables, then the config file, then defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::{GlobalArgs, KdfArgs, KeyLabelArgs};
use crate::exit::UsageError;

/// Read when neither `--config` nor `PGKEEP_CONFIG` names a file.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/pgkeep/pgkeep.toml";

/// `--jobs` (`PGKEEP_JOBS`, `jobs`): worker threads and files in flight. Far beyond any
/// machine's cores, and low enough that the queues sized from it cannot overflow.
pub(crate) const JOBS: std::ops::RangeInclusive<usize> = 1..=1024;

/// `--lock-wait` at most: far beyond any real wait, and small enough that the deadline it
/// sets stays representable (values near `u64::MAX` seconds overflowed the clock: a panic).
pub(crate) const MAX_LOCK_WAIT: std::time::Duration =
    std::time::Duration::from_secs(365 * 24 * 60 * 60);

/// The config file. Unknown keys are errors, so a typo cannot silently fall back to a
/// default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    pub(crate) repo: Option<String>,
    pub(crate) cluster: Option<String>,
    pub(crate) passphrase_file: Option<PathBuf>,
    pub(crate) json: Option<bool>,
    pub(crate) log_level: Option<String>,
    pub(crate) kdf_memory_mib: Option<u32>,
    pub(crate) kdf_iterations: Option<u32>,
    pub(crate) kdf_parallelism: Option<u32>,
    pub(crate) key_label: Option<String>,
    pub(crate) pack_size_mib: Option<u32>,
    pub(crate) compression: Option<i8>,
    /// libpq connection string of the server to back up.
    pub(crate) pg: Option<String>,
    pub(crate) checkpoint: Option<String>,
    pub(crate) incremental_method: Option<String>,
    /// `backup`: `on` or `off`.
    pub(crate) page_deltas: Option<String>,
    pub(crate) max_rate: Option<u32>,
    /// `backup`: the checksum algorithm of PostgreSQL's `backup_manifest`.
    pub(crate) manifest_checksums: Option<String>,
    pub(crate) timeout: Option<u64>,
    pub(crate) jobs: Option<usize>,
    /// `backup`: packs uploading at once.
    pub(crate) uploads: Option<usize>,
    /// `wal-push`: further ready segments stored per call.
    pub(crate) lookahead: Option<usize>,
    /// `wal-fetch`: segments downloaded ahead.
    pub(crate) prefetch: Option<usize>,
    /// `wal-fetch`: directory for prefetched segments.
    pub(crate) spool: Option<PathBuf>,
    /// `wal-stream`: replication slot.
    pub(crate) slot: Option<String>,
    /// `wal-stream`: seconds between `.partial` uploads.
    pub(crate) partial_interval: Option<u64>,
    /// `wal-stream`: Prometheus endpoint address.
    pub(crate) metrics_addr: Option<String>,
    /// `prune`: repack threshold, percent.
    pub(crate) repack_threshold: Option<u8>,
    /// Wait for conflicting repository locks (humantime duration).
    pub(crate) lock_wait: Option<String>,
    /// `expire`: retention policy (see README, "Repository lifecycle").
    #[serde(default)]
    pub(crate) retention: Retention,
    /// `expire --dumps`: the dumps' own retention policy, same keys as `[retention]`.
    #[serde(default)]
    pub(crate) dump_retention: Retention,
    /// `check`: WARNING when the newest backup is older (humantime, e.g. `26h`).
    pub(crate) max_backup_age: Option<String>,
    /// `check`: WARNING when the newest archived WAL is older (humantime, e.g. `1h`).
    pub(crate) max_wal_age: Option<String>,
    /// `object_store` options for the repository's storage.
    #[serde(default)]
    pub(crate) storage: BTreeMap<String, String>,
}

impl ConfigFile {
    /// Loads the file named by `--config`/`PGKEEP_CONFIG`, or the default if it exists.
    pub(crate) fn load(explicit: Option<&Path>) -> Result<(Self, Option<PathBuf>), UsageError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None if Path::new(DEFAULT_CONFIG).exists() => PathBuf::from(DEFAULT_CONFIG),
            None => return Ok((Self::default(), None)),
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| UsageError(format!("cannot read config file {}: {e}", path.display())))?;
        let parsed: Self = toml::from_str(&text)
            .map_err(|e| UsageError(format!("config file {}: {e}", path.display())))?;
        Ok((parsed, Some(path)))
    }
}

/// The `[retention]` table (`expire`'s policy when no `--keep-*` flag is given), and the
/// `[dump_retention]` table (the same for `expire --dumps`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Retention {
    pub(crate) keep_last: Option<u32>,
    pub(crate) keep_daily: Option<u32>,
    pub(crate) keep_weekly: Option<u32>,
    pub(crate) keep_monthly: Option<u32>,
    pub(crate) keep_yearly: Option<u32>,
    pub(crate) keep_within: Option<String>,
}

/// Parses a duration such as `90s`, `15min`, `7d`, `2weeks`.
pub(crate) fn parse_duration(what: &str, s: &str) -> Result<std::time::Duration, UsageError> {
    if s.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    humantime::parse_duration(s.trim()).map_err(|e| {
        UsageError(format!(
            "{what} {s:?}: {e} (write e.g. 90s, 15min, 12h, 7d, 2weeks)"
        ))
    })
}

/// A value of a `PGKEEP_*` variable, parsed; empty counts as unset.
pub(crate) fn env_var<T: std::str::FromStr>(name: &str) -> Result<Option<T>, UsageError>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|e| UsageError(format!("{name}={v:?}: {e}"))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(UsageError(format!("{name} is not valid UTF-8")))
        }
    }
}

/// A path from a `PGKEEP_*` variable (not necessarily UTF-8); empty counts as unset.
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn env_bool(name: &str) -> Result<Option<bool>, UsageError> {
    match std::env::var(name).ok().as_deref() {
        None | Some("") => Ok(None),
        Some("1" | "true" | "yes" | "on") => Ok(Some(true)),
        Some("0" | "false" | "no" | "off") => Ok(Some(false)),
        Some(v) => Err(UsageError(format!(
            "{name}={v:?}: expected 1/0, true/false, yes/no or on/off"
        ))),
    }
}

/// Settings every command shares.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) repo: Option<String>,
    pub(crate) cluster: String,
    /// Whether the cluster was named (flag, `PGKEEP_CLUSTER`, config) rather than defaulted:
    /// `verify` then checks only that cluster.
    pub(crate) cluster_explicit: bool,
    pub(crate) passphrase_file: Option<PathBuf>,
    /// Whether the passphrase file came from the command line (which then outranks
    /// `PGKEEP_PASSPHRASE`).
    pub(crate) passphrase_file_from_flag: bool,
    pub(crate) storage_options: Vec<(String, String)>,
    pub(crate) json: bool,
    pub(crate) log_level: String,
    pub(crate) config_path: Option<PathBuf>,
    /// `--lock-wait`, `PGKEEP_LOCK_WAIT` or `lock_wait`, unparsed.
    pub(crate) lock_wait: Option<String>,
    pub(crate) file: ConfigFile,
}

fn parse_option(s: &str, source: &str) -> Result<(String, String), UsageError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| UsageError(format!("{source}: {s:?} is not KEY=VALUE")))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

impl Settings {
    pub(crate) fn resolve(g: &GlobalArgs) -> Result<Self, UsageError> {
        // PGKEEP_CONFIG, PGKEEP_REPO and PGKEEP_CLUSTER are read here rather than by clap's
        // `env`, which would take an empty variable as an empty value: `PGKEEP_REPO=` in a
        // service file must leave the config file's repo in force, as for every variable.
        let config = g.config.clone().or_else(|| env_path("PGKEEP_CONFIG"));
        let (file, config_path) = ConfigFile::load(config.as_deref())?;
        let repo_env: Option<String> = env_var("PGKEEP_REPO")?;
        let cluster_env: Option<String> = env_var("PGKEEP_CLUSTER")?;
        // Storage options: the file's table, overridden by the environment, then flags.
        let mut storage: BTreeMap<String, String> = file.storage.clone();
        if let Some(list) = env_var::<String>("PGKEEP_STORAGE_OPTIONS")? {
            for item in list.split(',').filter(|s| !s.trim().is_empty()) {
                let (k, v) = parse_option(item, "PGKEEP_STORAGE_OPTIONS")?;
                storage.insert(k, v);
            }
        }
        for item in &g.storage_options {
            let (k, v) = parse_option(item, "--storage-option")?;
            storage.insert(k, v);
        }
        let passphrase_file_env: Option<PathBuf> =
            env_var::<String>("PGKEEP_PASSPHRASE_FILE")?.map(PathBuf::from);
        Ok(Self {
            repo: g.repo.clone().or(repo_env).or_else(|| file.repo.clone()),
            cluster_explicit: g.cluster.is_some()
                || cluster_env.is_some()
                || file.cluster.is_some(),
            cluster: g
                .cluster
                .clone()
                .or(cluster_env)
                .or_else(|| file.cluster.clone())
                .unwrap_or_else(|| "main".into()),
            passphrase_file_from_flag: g.passphrase_file.is_some(),
            passphrase_file: g
                .passphrase_file
                .clone()
                .or(passphrase_file_env)
                .or_else(|| file.passphrase_file.clone()),
            storage_options: storage.into_iter().collect(),
            json: g.json || env_bool("PGKEEP_JSON")?.or(file.json).unwrap_or(false),
            log_level: g
                .log_level
                .clone()
                .or(env_var("PGKEEP_LOG")?)
                .or_else(|| file.log_level.clone())
                .unwrap_or_else(|| "warn".into()),
            config_path,
            lock_wait: g
                .lock_wait
                .clone()
                .or(env_var("PGKEEP_LOCK_WAIT")?)
                .or_else(|| file.lock_wait.clone()),
            file,
        })
    }

    /// Lock waiting for the commands that take a repository lock (`--lock-wait`).
    pub(crate) fn lock_options(&self) -> Result<pgkeep_engine::lock::LockOptions, UsageError> {
        let mut opts = pgkeep_engine::lock::LockOptions::default();
        if let Some(w) = &self.lock_wait {
            opts.wait = parse_duration("lock wait", w)?;
            if opts.wait > MAX_LOCK_WAIT {
                return Err(UsageError(format!(
                    "lock wait {w:?} (--lock-wait, PGKEEP_LOCK_WAIT or config key lock_wait): \
                     must be 0 to 365 days; write e.g. 90s, 15min, 2h"
                )));
            }
        }
        Ok(opts)
    }

    /// `--jobs`, else `PGKEEP_JOBS`, else the config key `jobs`, within [`JOBS`]; `None`
    /// when unset (the command's default: one per core).
    pub(crate) fn jobs(&self, flag: Option<usize>) -> Result<Option<usize>, UsageError> {
        pick_bounded(
            (flag, "--jobs"),
            "PGKEEP_JOBS",
            (self.file.jobs, "config key jobs"),
            JOBS,
        )
    }

    pub(crate) fn repo(&self) -> Result<&str, UsageError> {
        self.repo.as_deref().ok_or_else(|| {
            UsageError(
                "no repository given: use --repo, PGKEEP_REPO, or `repo = ...` in the config file"
                    .into(),
            )
        })
    }

    /// KDF parameters for a new key.
    pub(crate) fn kdf(&self, a: &KdfArgs) -> Result<pgkeep_engine::format::KdfParams, UsageError> {
        let d = pgkeep_engine::format::KdfParams::DEFAULT;
        let memory_mib = pick(
            a.kdf_memory_mib,
            "PGKEEP_KDF_MEMORY_MIB",
            self.file.kdf_memory_mib,
        )?
        .unwrap_or(d.memory_kib / 1024);
        let params = pgkeep_engine::format::KdfParams {
            memory_kib: memory_mib
                .checked_mul(1024)
                .ok_or_else(|| UsageError(format!("KDF memory {memory_mib} MiB is too large")))?,
            iterations: pick(
                a.kdf_iterations,
                "PGKEEP_KDF_ITERATIONS",
                self.file.kdf_iterations,
            )?
            .unwrap_or(d.iterations),
            parallelism: pick(
                a.kdf_parallelism,
                "PGKEEP_KDF_PARALLELISM",
                self.file.kdf_parallelism,
            )?
            .unwrap_or(d.parallelism),
        };
        params.validate().map_err(|e| UsageError(e.to_string()))?;
        Ok(params)
    }

    pub(crate) fn key_label(&self, a: &KeyLabelArgs) -> Result<String, UsageError> {
        Ok(pick(
            a.label.clone(),
            "PGKEEP_KEY_LABEL",
            self.file.key_label.clone(),
        )?
        .unwrap_or_else(pgkeep_engine::default_key_label))
    }
}

/// Flag, else environment variable, else config file value.
pub(crate) fn pick<T: std::str::FromStr>(
    flag: Option<T>,
    env: &str,
    file: Option<T>,
) -> Result<Option<T>, UsageError>
where
    T::Err: std::fmt::Display,
{
    if flag.is_some() {
        return Ok(flag);
    }
    Ok(env_var(env)?.or(file))
}

/// [`pick`], with the value checked against `range`: an out-of-range number is refused here,
/// naming where it came from, instead of overflowing a capacity or a deadline deep inside a
/// command (a panic). `flag` and `file` carry how to name their source (`--jobs`,
/// `config key jobs`).
pub(crate) fn pick_bounded<T>(
    flag: (Option<T>, &str),
    env: &str,
    file: (Option<T>, &str),
    range: std::ops::RangeInclusive<T>,
) -> Result<Option<T>, UsageError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    T::Err: std::fmt::Display,
{
    let (value, source) = match (flag.0, env_var::<T>(env)?, file.0) {
        (Some(v), _, _) => (v, flag.1),
        (None, Some(v), _) => (v, env),
        (None, None, Some(v)) => (v, file.1),
        (None, None, None) => return Ok(None),
    };
    if !range.contains(&value) {
        return Err(UsageError(format!(
            "{source} {value}: must be {} to {}",
            range.start(),
            range.end()
        )));
    }
    Ok(Some(value))
}
