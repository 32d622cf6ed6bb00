//! The `pgkeep` command. Thin by design: parsing, settings, output and exit codes; the work
//! is done by `pgkeep-engine`.

mod cli;
mod cmd;
mod exit;
mod output;
mod secret;
mod settings;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::output::Output;
use crate::settings::Settings;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let named = named_subcommand(&args);
    let wal_fetch = named.as_deref() == Some("wal-fetch");
    if wal_fetch {
        // restore_command: PostgreSQL reads an exit status up to 125 as "no such file" and
        // ends recovery there, promoting a server that lacks the rest of the archive. A
        // panic's 101 would be read so; 200 (fatal) stops recovery instead. A hook rather
        // than catch_unwind: it covers every thread, and builds with panic = "abort".
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            std::process::exit(exit::WAL_FETCH_FAILED.into());
        }));
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        // `check` is a Nagios plugin: its usage errors are UNKNOWN (3), not clap's 2.
        Err(e) if e.use_stderr() && named.as_deref() == Some("check") => {
            let _ = e.print();
            return ExitCode::from(cmd::check::UNKNOWN);
        }
        // `wal-fetch` (restore_command): a usage error must not read as "no such file".
        Err(e) if e.use_stderr() && wal_fetch => {
            let _ = e.print();
            return ExitCode::from(exit::WAL_FETCH_FAILED);
        }
        Err(e) => e.exit(),
    };
    // The status of the commands with codes of their own when they cannot run at all.
    let cannot_run = match cli.command {
        Command::Check(_) => Some(cmd::check::UNKNOWN),
        Command::WalFetch(_) => Some(exit::WAL_FETCH_FAILED),
        _ => None,
    };
    let settings = match Settings::resolve(&cli.global) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pgkeep: {e}");
            return ExitCode::from(cannot_run.unwrap_or(exit::USAGE));
        }
    };
    init_logging(&settings.log_level);
    if let Some(path) = &settings.config_path {
        tracing::debug!(config = %path.display(), "read config file");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgkeep: starting the async runtime: {e}");
            return ExitCode::from(cannot_run.unwrap_or(exit::FAILURE));
        }
    };
    let out = Output {
        json: settings.json,
    };
    // The command runs as a task on the runtime's workers, not on this thread: a worker
    // that finds a socket empty waits for it in epoll itself, and the kernel wakes it when
    // data comes. `block_on` here would leave the polling to a worker, which then has to
    // wake this thread through a futex each time: two context switches per wait, tens of
    // thousands per backup. Measured on a 2.7 GB database: full backups 20% faster, with a
    // quarter less system time (docs/design.md, "The runtime").
    let command = runtime.spawn(async move {
        let result = match &cli.command {
            Command::Init(a) => cmd::init::run(&settings, a, &out).await,
            Command::Key(k) => cmd::key::run(&settings, k, &out).await,
            Command::List(a) => cmd::list::run(&settings, a, &out).await,
            Command::Backup(a) => cmd::backup::run(&settings, a, &out).await,
            Command::WalPush(a) => cmd::wal::push(&settings, a, &out).await,
            // restore_command semantics: exit codes of its own.
            Command::WalFetch(a) => return cmd::wal::fetch(&settings, a).await,
            Command::WalStream(a) => cmd::stream::run(&settings, a).await,
            Command::Events(a) => cmd::events::run(&settings, a, &out).await,
            Command::Restore(a) => cmd::restore::run(&settings, a, &out).await,
            Command::Info => cmd::info::run(&settings, &out).await,
            Command::Expire(a) => cmd::expire::run(&settings, a, &out).await,
            Command::Pin(a) => cmd::expire::pin(&settings, a, &out).await,
            Command::Unpin(a) => cmd::expire::unpin(&settings, a, &out).await,
            Command::Prune(a) => cmd::prune::run(&settings, a, &out).await,
            Command::Drill(a) => cmd::drill::run(&settings, a, &out).await,
            // A Nagios plugin: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
            Command::Check(a) => return cmd::check::run(&settings, a, &out).await,
            // Exit 5 when damage is found, with the report printed.
            Command::Verify(a) => return cmd::verify::run(&settings, a, &out).await,
            Command::Bench(a) => cmd::bench::run(&settings, a, &out).await,
            Command::Dump(a) => cmd::dump::run(&settings, a, &out).await,
            Command::DumpRestore(a) => cmd::dump::restore(&settings, a, &out).await,
        };
        match result {
            Ok(()) => exit::OK,
            Err(e) => {
                // `{:#}` prints the context chain on one line: "opening repository x: wrong passphrase: ...".
                eprintln!("pgkeep: {}", one_line(&e));
                exit::code_for(&e)
            }
        }
    });
    let code = match runtime.block_on(command) {
        Ok(code) => code,
        // A panic was printed by the hook; end as an unhandled panic does (exit 101).
        // (wal-fetch's hook has ended the process with its fatal status already.)
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => cannot_run.unwrap_or(exit::FAILURE),
    };
    ExitCode::from(code)
}

/// The subcommand a command line names, found without parsing it (which may fail): the first
/// word that is neither an option nor the value of a global option taking one, and that
/// names a subcommand. `check` and `wal-fetch` need it to end even a usage error with their
/// own status. A word that names no subcommand is skipped, as the value a mistyped option
/// would have taken (`--confg FILE wal-fetch`).
fn named_subcommand(args: &[OsString]) -> Option<String> {
    let cli = Cli::command();
    let takes_value: Vec<String> = cli
        .get_arguments()
        .filter(|a| a.get_action().takes_values())
        .filter_map(|a| a.get_long())
        .map(|l| format!("--{l}"))
        .collect();
    let is_subcommand = |w: &str| w == "help" || cli.get_subcommands().any(|c| c.get_name() == w);
    let mut words = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(word) = words.next() {
        if word == "--" {
            return None;
        }
        if word.starts_with('-') && word.len() > 1 {
            if takes_value.iter().any(|o| *o == *word) {
                words.next();
            }
            continue;
        }
        if is_subcommand(&word) {
            return Some(word.into_owned());
        }
    }
    None
}

/// The error and its causes on one line, as `{:#}` prints them, but without a cause whose
/// text its parent already ends with (engine errors that show their source, such as
/// "PostgreSQL: server error: ...", would otherwise repeat it).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs of archive_command and wal-stream go to files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(line: &str) -> Option<String> {
        let args: Vec<OsString> = line.split(' ').map(OsString::from).collect();
        named_subcommand(&args)
    }

    #[test]
    fn the_subcommand_is_found_past_global_options_and_their_values() {
        assert_eq!(
            named("pgkeep wal-fetch 000000010000000000000001 pg_wal/RECOVERYXLOG").as_deref(),
            Some("wal-fetch")
        );
        // Values of global options are skipped, also when they spell a subcommand.
        assert_eq!(
            named("pgkeep --config /etc/p.toml --cluster check wal-fetch --bogus %f %p").as_deref(),
            Some("wal-fetch")
        );
        assert_eq!(
            named("pgkeep --cluster=check --json wal-fetch %f %p").as_deref(),
            Some("wal-fetch")
        );
        assert_eq!(
            named("pgkeep --lock-wait 5min --log-level debug check --bogus").as_deref(),
            Some("check")
        );
        // A mistyped option's value names no subcommand and is passed over.
        assert_eq!(
            named("pgkeep --confg /etc/p.toml wal-fetch %f %p").as_deref(),
            Some("wal-fetch")
        );
        assert_eq!(named("pgkeep --bogus").as_deref(), None);
        assert_eq!(named("pgkeep -- wal-fetch").as_deref(), None);
        assert_eq!(named("pgkeep").as_deref(), None);
    }
}
