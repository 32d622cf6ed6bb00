//! One module per command. Each takes resolved settings and prints through `output`.

pub(crate) mod backup;
pub(crate) mod init;
pub(crate) mod key;
pub(crate) mod list;

use anyhow::Context;
use pgkeep_engine::format::ClusterName;
use pgkeep_engine::{Repository, Store};

use crate::exit::UsageError;

use crate::secret;
use crate::settings::Settings;

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
