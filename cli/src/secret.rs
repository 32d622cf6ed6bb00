//! Passphrases: from a variable, a private file, or a prompt; never from the command line
//! (argv is visible to every user of the machine) and never echoed or logged.

use std::io::IsTerminal;
use std::path::Path;

use zeroize::Zeroizing;

use crate::exit::UsageError;
use crate::settings::Settings;

pub(crate) type Passphrase = Zeroizing<Vec<u8>>;

/// Reads the first line of a passphrase file, refusing files other users can read.
pub(crate) fn read_file(path: &Path) -> Result<Passphrase, UsageError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| UsageError(format!("passphrase file {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(UsageError(format!(
            "passphrase file {} is accessible to other users (mode {mode:03o}); run: chmod 600 {}",
            path.display(),
            path.display()
        )));
    }
    let text = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| UsageError(format!("passphrase file {}: {e}", path.display())))?,
    );
    let line = text.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    non_empty(
        Zeroizing::new(line.to_vec()),
        &format!("passphrase file {}", path.display()),
    )
}

fn non_empty(p: Passphrase, source: &str) -> Result<Passphrase, UsageError> {
    if p.is_empty() {
        return Err(UsageError(format!("{source} holds an empty passphrase")));
    }
    Ok(p)
}

fn from_env(name: &str) -> Option<Passphrase> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(|v| Zeroizing::new(v.into_encoded_bytes()))
}

fn prompt(text: &str) -> Result<Passphrase, UsageError> {
    rpassword::prompt_password(text)
        .map(|s| Zeroizing::new(s.into_bytes()))
        .map_err(|e| UsageError(format!("reading the passphrase from the terminal: {e}")))
}

fn prompt_twice(what: &str) -> Result<Passphrase, UsageError> {
    let first = prompt(&format!("Enter {what}: "))?;
    let first = non_empty(first, "the prompt")?;
    let second = prompt(&format!("Repeat {what}: "))?;
    if *first != *second {
        return Err(UsageError("the passphrases do not match".into()));
    }
    Ok(first)
}

fn no_source(what: &str, hint: &str) -> UsageError {
    UsageError(format!(
        "no {what}: {hint}, or run on a terminal to be prompted"
    ))
}

/// The repository passphrase. `confirm` asks twice on a prompt (for `init`).
pub(crate) fn repository(s: &Settings, confirm: bool) -> Result<Passphrase, UsageError> {
    if s.passphrase_file_from_flag {
        if let Some(path) = &s.passphrase_file {
            return read_file(path);
        }
    }
    if let Some(p) = from_env("PGKEEP_PASSPHRASE") {
        return Ok(p);
    }
    if let Some(path) = &s.passphrase_file {
        return read_file(path);
    }
    if std::io::stdin().is_terminal() {
        return if confirm {
            prompt_twice("a passphrase for the new repository")
        } else {
            non_empty(prompt("Repository passphrase: ")?, "the prompt")
        };
    }
    Err(no_source(
        "repository passphrase",
        "set PGKEEP_PASSPHRASE or PGKEEP_PASSPHRASE_FILE, use --passphrase-file, or set passphrase_file in the config file",
    ))
}

/// A new passphrase for `key add` / `key passwd`.
pub(crate) fn new_passphrase(flag_file: Option<&Path>) -> Result<Passphrase, UsageError> {
    if let Some(path) = flag_file {
        return read_file(path);
    }
    if let Some(p) = from_env("PGKEEP_NEW_PASSPHRASE") {
        return Ok(p);
    }
    if let Some(path) = std::env::var_os("PGKEEP_NEW_PASSPHRASE_FILE").filter(|v| !v.is_empty()) {
        return read_file(Path::new(&path));
    }
    if std::io::stdin().is_terminal() {
        return prompt_twice("the new passphrase");
    }
    Err(no_source(
        "new passphrase",
        "set PGKEEP_NEW_PASSPHRASE or PGKEEP_NEW_PASSPHRASE_FILE, or use --new-passphrase-file",
    ))
}
