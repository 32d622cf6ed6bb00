//! The `pgkeep` command. Thin by design: parsing, settings, output and exit codes; the work
//! is done by `pgkeep-engine`.

mod cli;
mod cmd;
mod exit;
mod output;
mod secret;
mod settings;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::output::Output;
use crate::settings::Settings;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        // `check` is a Nagios plugin: its usage errors are UNKNOWN (3), not clap's 2.
        Err(e) if e.use_stderr() && cmd::check::invoked() => {
            let _ = e.print();
            return ExitCode::from(cmd::check::UNKNOWN);
        }
        Err(e) => e.exit(),
    };
    let settings = match Settings::resolve(&cli.global) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pgkeep: {e}");
            return ExitCode::from(match cli.command {
                Command::Check(_) => cmd::check::UNKNOWN,
                _ => exit::USAGE,
            });
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
            return ExitCode::from(exit::FAILURE);
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
            Command::Pin(a) => cmd::expire::pin(&settings, a).await,
            Command::Unpin(a) => cmd::expire::unpin(&settings, a).await,
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
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => exit::FAILURE,
    };
    ExitCode::from(code)
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
