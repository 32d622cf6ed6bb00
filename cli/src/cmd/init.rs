//! `pgkeep init`.

use anyhow::Context;
use pgkeep_engine::{InitOptions, Repository};
use serde::Serialize;

use crate::cli::InitArgs;
use crate::exit::UsageError;
use crate::output::Output;
use crate::settings::{pick, Settings};
use crate::{cmd, secret};

#[derive(Serialize)]
struct Initialized {
    repo_id: String,
    location: String,
    key_id: String,
    key_label: String,
}

pub(crate) async fn run(s: &Settings, a: &InitArgs, out: &Output) -> anyhow::Result<()> {
    let pack_mib = pick(
        a.pack_size_mib,
        "PGKEEP_PACK_SIZE_MIB",
        s.file.pack_size_mib,
    )?
    .unwrap_or(16);
    if !(1..=256).contains(&pack_mib) {
        return Err(UsageError(format!("pack size {pack_mib} MiB is outside 1..=256")).into());
    }
    let opts = InitOptions {
        kdf: s.kdf(&a.kdf)?,
        key_label: s.key_label(&a.label)?,
        pack_target_size: pack_mib << 20,
        compression_level: pick(a.compression, "PGKEEP_COMPRESSION", s.file.compression)?
            .unwrap_or(InitOptions::default().compression_level),
    };
    let store = cmd::store(s, true)?;
    let pass = secret::repository(s, true)?;
    let repo = Repository::init(store, &pass, opts.clone())
        .await
        .context("initializing the repository")?;
    let key = repo
        .list_keys()
        .await?
        .into_iter()
        .find(|k| k.current)
        .context("reading back the new key")?;
    let done = Initialized {
        repo_id: repo.repo_id().to_hex(),
        location: repo.store().location().to_owned(),
        key_id: key.id.to_hex(),
        key_label: key.label,
    };
    out.emit(&done, || {
        format!(
            "Initialized repository {} at {}\nKey {} ({}) unlocks it.\n\
             Keep the passphrase safe: without it nobody, including you, can read the backups.",
            done.repo_id, done.location, done.key_id, done.key_label
        )
    })
}
