//! Exit codes, documented in `--help` (AFTER_HELP) and the README.

use pgkeep_engine::Error;

/// Success.
pub(crate) const OK: u8 = 0;
/// Any failure not listed below.
pub(crate) const FAILURE: u8 = 1;
/// Bad usage or configuration (clap uses 2 too).
pub(crate) const USAGE: u8 = 2;
/// Wrong passphrase, or a key operation refused.
pub(crate) const KEY: u8 = 3;
/// No repository at the location, or `init` found one already.
pub(crate) const REPOSITORY: u8 = 4;
/// Damaged data detected (by any command; `verify` exits with it when it found damage).
pub(crate) const CORRUPT: u8 = 5;
/// PostgreSQL could not be reached, or refused the connection or the command.
pub(crate) const POSTGRES: u8 = 6;
/// Another operation holds a conflicting repository lock (a prune, or the backups a prune
/// waits for) beyond `--lock-wait`: retrying later succeeds.
pub(crate) const LOCKED: u8 = 7;

/// `wal-fetch` only: the file is not in the archive (PostgreSQL then looks elsewhere).
pub(crate) const WAL_NOT_FOUND: u8 = 1;
/// `wal-fetch` only: the file could not be restored for another reason than absence
/// (damaged, wrong key, storage failing, bad configuration). PostgreSQL stops recovery on any
/// exit status above 125; a status it would read as "not found" could end recovery early at
/// the wrong point and promote a server missing committed transactions.
pub(crate) const WAL_FETCH_FAILED: u8 = 200;

/// An error of the CLI's own (settings, input) that maps to `USAGE`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// Picks the exit code for an error by the first typed cause in its chain.
pub(crate) fn code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<UsageError>() {
            return USAGE;
        }
        if let Some(e) = cause.downcast_ref::<Error>() {
            return match e {
                Error::WrongPassphrase { .. } | Error::KeyRefused(_) => KEY,
                Error::NotInitialized { .. } | Error::AlreadyInitialized { .. } => REPOSITORY,
                Error::Corrupt { .. } => CORRUPT,
                Error::InvalidLocation { .. }
                | Error::InvalidInput(_)
                | Error::WrongSystem { .. } => USAGE,
                Error::Postgres(_) => POSTGRES,
                Error::Locked { .. } => LOCKED,
                _ => FAILURE,
            };
        }
    }
    FAILURE
}
