//! `pgkeep key list|add|remove|passwd`.

use pgkeep_engine::format::KeyFileId;
use serde::Serialize;

use crate::cli::KeyCommand;
use crate::exit::UsageError;
use crate::output::{format_unix, Output, Table};
use crate::settings::Settings;
use crate::{cmd, secret};

#[derive(Serialize)]
struct KeyRow {
    id: String,
    current: bool,
    label: String,
    created: String,
    kdf: &'static str,
    kdf_memory_kib: u32,
    kdf_iterations: u32,
    kdf_parallelism: u32,
}

#[derive(Serialize)]
struct KeyChanged<'a> {
    action: &'a str,
    key_id: String,
}

pub(crate) async fn run(s: &Settings, c: &KeyCommand, out: &Output) -> anyhow::Result<()> {
    let repo = cmd::open(s).await?;
    match c {
        KeyCommand::List => {
            let rows: Vec<KeyRow> = repo
                .list_keys()
                .await?
                .into_iter()
                .map(|k| KeyRow {
                    id: k.id.to_hex(),
                    current: k.current,
                    label: k.label,
                    created: format_unix(k.created),
                    kdf: "argon2id",
                    kdf_memory_kib: k.kdf.memory_kib,
                    kdf_iterations: k.kdf.iterations,
                    kdf_parallelism: k.kdf.parallelism,
                })
                .collect();
            out.emit(&rows, || {
                let mut t = Table::new(&["ID", "CURRENT", "CREATED", "KDF", "LABEL"]);
                for r in &rows {
                    t.row(vec![
                        r.id.clone(),
                        if r.current { "*".into() } else { String::new() },
                        r.created.clone(),
                        format!(
                            "argon2id m={}MiB t={} p={}",
                            r.kdf_memory_kib / 1024,
                            r.kdf_iterations,
                            r.kdf_parallelism
                        ),
                        r.label.clone(),
                    ]);
                }
                t.render()
            })
        }
        KeyCommand::Add(a) => {
            let (kdf, label) = (s.kdf(&a.kdf)?, s.key_label(&a.label)?);
            let pass = secret::new_passphrase(a.new_passphrase_file.as_deref())?;
            let id = repo.add_key(&pass, &label, kdf).await?;
            let done = KeyChanged {
                action: "added",
                key_id: id.to_hex(),
            };
            out.emit(&done, || format!("Added key {} ({label}).", done.key_id))
        }
        KeyCommand::Remove { id } => {
            let parsed: KeyFileId = id.parse().map_err(|_| {
                UsageError(format!(
                    "{id:?} is not a key id (16 hex digits, see `pgkeep key list`)"
                ))
            })?;
            repo.remove_key(&parsed).await?;
            let done = KeyChanged {
                action: "removed",
                key_id: parsed.to_hex(),
            };
            out.emit(&done, || format!("Removed key {}.", done.key_id))
        }
        KeyCommand::Passwd(a) => {
            let kdf = s.kdf(&a.kdf)?;
            let pass = secret::new_passphrase(a.new_passphrase_file.as_deref())?;
            let id = repo
                .change_passphrase(&pass, a.label.as_deref(), kdf)
                .await?;
            let done = KeyChanged {
                action: "replaced",
                key_id: id.to_hex(),
            };
            out.emit(&done, || {
                format!(
                    "Passphrase changed; the key is now {} (the old key file was removed).",
                    done.key_id
                )
            })
        }
    }
}
