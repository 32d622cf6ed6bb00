//! One module per command. Each takes resolved settings and prints through `output`.

pub(crate) mod backup;
pub(crate) mod bench;
pub(crate) mod check;
pub(crate) mod drill;
pub(crate) mod dump;
pub(crate) mod events;
pub(crate) mod expire;
pub(crate) mod info;
pub(crate) mod init;
pub(crate) mod key;
pub(crate) mod list;
pub(crate) mod prune;
pub(crate) mod restore;
pub(crate) mod stream;
pub(crate) mod verify;
pub(crate) mod wal;

use anyhow::Context;
use pgkeep_engine::conninfo::{self, ConnConfig};
use pgkeep_engine::format::ClusterName;
use pgkeep_engine::{Repository, Store};

use crate::exit::UsageError;

use crate::secret;
use crate::settings::{pick, Settings};

/// Opens the store at the configured location (`create`: make a local directory).
pub(crate) fn store(s: &Settings, create: bool) -> anyhow::Result<Store> {
    let repo = s.repo()?;
    Ok(Store::open(repo, &s.storage_options, create)?)
}

/// The configured cluster name, validated.
pub(crate) fn cluster(s: &Settings) -> anyhow::Result<ClusterName> {
    ClusterName::new(&s.cluster).map_err(|e| UsageError(format!("--cluster: {e}")).into())
}

/// Opens the configured repository with its passphrase.
pub(crate) async fn open(s: &Settings) -> anyhow::Result<Repository> {
    let store = store(s, false)?;
    let pass = secret::repository(s, false)?;
    Repository::open(store, &pass)
        .await
        .context("opening the repository")
}

/// The PostgreSQL server to talk to: `--pg` (or `PGKEEP_PG`, config key `pg`), completed by
/// libpq's variables and `~/.pgpass`.
pub(crate) fn conn_config(s: &Settings, flag: Option<String>) -> anyhow::Result<ConnConfig> {
    let text = pick(flag, "PGKEEP_PG", s.file.pg.clone())?.unwrap_or_default();
    let params = conninfo::parse(&text).map_err(|e| UsageError(format!("--pg: {e}")))?;
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    Ok(conninfo::resolve(
        &params,
        &conninfo::process_env,
        &pgkeep_engine::os_user_name().unwrap_or_default(),
        home.as_deref(),
    )
    .map_err(|e| UsageError(format!("PostgreSQL connection settings: {e}")))?)
}

/// Resolves on SIGTERM or SIGINT (the shutdown signals of `wal-stream` and `drill`).
pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
