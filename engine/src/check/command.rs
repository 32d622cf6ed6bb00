//! Reading `archive_command`: does it call `pgkeep wal-push`, and with which repository,
//! cluster and config file? Sans-IO: the caller resolves config files.
//!
//! The command is a shell command line; it is split the way `sh` splits words (quotes,
//! backslashes) and cut into simple commands at `;`, `&&`, `||` and `|`, so
//! `test ! -f x && PGKEEP_REPO=/r pgkeep wal-push %p` is understood. A command that runs a
//! script which calls pgkeep cannot be seen through; `--archive-test` proves those.

/// A `pgkeep … wal-push …` call found in `archive_command`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgkeepCall {
    /// The program as written (`pgkeep`, `/usr/local/bin/pgkeep`).
    pub program: String,
    /// `--config` (or `PGKEEP_CONFIG=` before the program).
    pub config: Option<String>,
    /// `--repo` (or `PGKEEP_REPO=`).
    pub repo: Option<String>,
    /// `--cluster` (or `PGKEEP_CLUSTER=`).
    pub cluster: Option<String>,
    /// The file argument of `wal-push` (`%p` normally).
    pub file_arg: Option<String>,
}

/// Options of pgkeep that take a value (global ones and `wal-push`'s own).
const VALUE_OPTIONS: [&str; 9] = [
    "--config",
    "--repo",
    "--cluster",
    "--passphrase-file",
    "--storage-option",
    "--log-level",
    "--lock-wait",
    "--lookahead",
    "--spool",
];

/// Finds the first simple command of `command` that runs a program named `pgkeep…` with
/// the `wal-push` subcommand. `None` when there is none.
pub fn parse_archive_command(command: &str) -> Option<PgkeepCall> {
    split_commands(command)
        .into_iter()
        .find_map(|words| pgkeep_call(&words))
}

fn pgkeep_call(words: &[String]) -> Option<PgkeepCall> {
    let mut env: Vec<(&str, &str)> = Vec::new();
    let mut i = 0;
    // Leading `VAR=value` assignments, and `env`/`exec` in front of the program.
    while let Some(w) = words.get(i) {
        if let Some((k, v)) = assignment(w) {
            env.push((k, v));
        } else if w != "env" && w != "exec" && !w.ends_with("/env") {
            break;
        }
        i += 1;
    }
    let program = words.get(i)?;
    let base = program.rsplit('/').next().unwrap_or(program);
    if !base.starts_with("pgkeep") {
        return None;
    }
    let mut call = PgkeepCall {
        program: program.clone(),
        ..PgkeepCall::default()
    };
    // pgkeep takes an empty variable as unset.
    for (k, v) in env.into_iter().filter(|(_, v)| !v.is_empty()) {
        match k {
            "PGKEEP_CONFIG" => call.config = Some(v.to_owned()),
            "PGKEEP_REPO" => call.repo = Some(v.to_owned()),
            "PGKEEP_CLUSTER" => call.cluster = Some(v.to_owned()),
            _ => {}
        }
    }
    let mut subcommand: Option<&str> = None;
    let mut rest = words[i + 1..].iter();
    while let Some(w) = rest.next() {
        let (opt, inline) = match w.split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o, Some(v.to_owned())),
            _ => (w.as_str(), None),
        };
        if VALUE_OPTIONS.contains(&opt) {
            let value = match inline {
                Some(v) => Some(v),
                None => rest.next().cloned(),
            };
            match opt {
                "--config" => call.config = value,
                "--repo" => call.repo = value,
                "--cluster" => call.cluster = value,
                _ => {}
            }
        } else if opt.starts_with('-') {
            // A flag without a value (`--json`).
        } else if subcommand.is_none() {
            subcommand = Some(w);
        } else if call.file_arg.is_none() {
            call.file_arg = Some(w.clone());
        }
    }
    (subcommand == Some("wal-push")).then_some(call)
}

/// `NAME=value` with a shell variable name.
fn assignment(word: &str) -> Option<(&str, &str)> {
    let (k, v) = word.split_once('=')?;
    let mut chars = k.chars();
    let first = chars.next()?;
    ((first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'))
    .then_some((k, v))
}

/// Splits a shell command line into simple commands of words. Quoting follows `sh`: single
/// quotes are literal, double quotes allow `\"`, `\\`, `\$` and `` \` ``, a backslash outside
/// quotes escapes the next character. Expansions (`$VAR`) are kept as written.
fn split_commands(line: &str) -> Vec<Vec<String>> {
    let mut commands: Vec<Vec<String>> = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let end_word = |word: &mut String, in_word: &mut bool, words: &mut Vec<String>| {
        if *in_word {
            words.push(std::mem::take(word));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => match chars.peek() {
                            Some(&n @ ('"' | '\\' | '$' | '`')) => {
                                word.push(n);
                                chars.next();
                            }
                            _ => word.push('\\'),
                        },
                        _ => word.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            ';' | '&' | '|' => {
                end_word(&mut word, &mut in_word, &mut words);
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
                // `&&`, `||`: the second character belongs to the same operator.
                if chars.peek() == Some(&c) {
                    chars.next();
                }
            }
            c if c.is_whitespace() => end_word(&mut word, &mut in_word, &mut words),
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    end_word(&mut word, &mut in_word, &mut words);
    if !words.is_empty() {
        commands.push(words);
    }
    commands
}

/// A repository location in a form two spellings of the same place compare equal in:
/// `file:///x` and `/x` are the same directory, trailing slashes do not matter, and the
/// scheme is case-insensitive. (Symbolic links are the caller's business.)
pub fn normalize_location(location: &str) -> String {
    let trimmed = location.trim();
    let (scheme, rest) = match trimmed.split_once("://") {
        Some((s, r)) => (Some(s.to_ascii_lowercase()), r),
        None => (None, trimmed),
    };
    let rest = rest.trim_end_matches('/');
    match scheme.as_deref() {
        None | Some("file") => {
            if rest.is_empty() {
                "/".to_owned()
            } else {
                rest.to_owned()
            }
        }
        Some("s3a") => format!("s3://{rest}"),
        Some(s) => format!("{s}://{rest}"),
    }
}

/// Single-quotes a word for a shell command line (for suggested `archive_command`s).
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=%@,".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(cmd: &str) -> PgkeepCall {
        parse_archive_command(cmd).unwrap_or_else(|| panic!("no pgkeep call in {cmd:?}"))
    }

    #[test]
    fn finds_the_pgkeep_call_and_its_settings() {
        let c = call("/usr/local/bin/pgkeep --config /etc/pgkeep/pgkeep.toml wal-push %p");
        assert_eq!(c.program, "/usr/local/bin/pgkeep");
        assert_eq!(c.config.as_deref(), Some("/etc/pgkeep/pgkeep.toml"));
        assert_eq!(c.repo, None);
        assert_eq!(c.file_arg.as_deref(), Some("%p"));

        let c = call("pgkeep --repo=s3://b/p wal-push --lookahead 8 %p --cluster=db1");
        assert_eq!(c.repo.as_deref(), Some("s3://b/p"));
        assert_eq!(c.cluster.as_deref(), Some("db1"));
        assert_eq!(c.file_arg.as_deref(), Some("%p"));

        let c = call(
            r#"test ! -f /x/%f && env PGKEEP_REPO='/srv/my repo' PGKEEP_CLUSTER=c2 pgkeep wal-push "%p""#,
        );
        assert_eq!(c.repo.as_deref(), Some("/srv/my repo"));
        assert_eq!(c.cluster.as_deref(), Some("c2"));
        assert_eq!(c.file_arg.as_deref(), Some("%p"));

        // Quoting and escapes.
        let c = call(r#"pgkeep --config "/etc/a \"b\"/c.toml" wal-push pg_wal/%f"#);
        assert_eq!(c.config.as_deref(), Some(r#"/etc/a "b"/c.toml"#));
        assert_eq!(c.file_arg.as_deref(), Some("pg_wal/%f"));
        let c = call(r"pgkeep --repo /a\ b wal-push");
        assert_eq!(c.repo.as_deref(), Some("/a b"));
        assert_eq!(c.file_arg, None);
    }

    #[test]
    fn value_of_lock_wait_and_empty_variables_are_read_as_pgkeep_does() {
        let c = call("pgkeep --lock-wait 5min --repo /r wal-push %p");
        assert_eq!(c.repo.as_deref(), Some("/r"));
        assert_eq!(c.file_arg.as_deref(), Some("%p"));
        let c = call("PGKEEP_REPO= PGKEEP_CLUSTER= PGKEEP_CONFIG= pgkeep wal-push %p");
        assert_eq!((c.repo, c.cluster, c.config), (None, None, None));
    }

    #[test]
    fn other_commands_are_not_pgkeep_calls() {
        for cmd in [
            "",
            "cp %p /mnt/archive/%f",
            "pgbackrest --stanza=main archive-push %p",
            "pgkeep wal-fetch %f %p",
            "/usr/bin/pgkeep --config /x backup",
            "echo pgkeep wal-push %p",
            "/bin/true",
        ] {
            assert_eq!(parse_archive_command(cmd), None, "{cmd:?}");
        }
        // The second command of a list.
        assert!(parse_archive_command("echo start; pgkeep wal-push %p").is_some());
        assert!(parse_archive_command("false || pgkeep wal-push %p").is_some());
    }

    #[test]
    fn locations_compare_by_meaning() {
        assert_eq!(normalize_location("file:///srv/repo/"), "/srv/repo");
        assert_eq!(normalize_location("/srv/repo"), "/srv/repo");
        assert_eq!(normalize_location("S3://bucket/p/"), "s3://bucket/p");
        assert_eq!(normalize_location("s3a://bucket/p"), "s3://bucket/p");
        assert_ne!(
            normalize_location("s3://bucket/p"),
            normalize_location("s3://bucket/q")
        );
        assert_eq!(normalize_location("/"), "/");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/usr/bin/pgkeep"), "/usr/bin/pgkeep");
        assert_eq!(shell_quote("/srv/my repo"), "'/srv/my repo'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        // What is quoted comes back through the parser unchanged.
        let c = call(&format!(
            "pgkeep --repo {} wal-push %p",
            shell_quote("/a b/it's")
        ));
        assert_eq!(c.repo.as_deref(), Some("/a b/it's"));
    }
}
