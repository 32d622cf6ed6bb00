//! Assertion files for `pgkeep drill --sql`: SQL statements separated by `;`, plus psql's
//! `\connect DB` (or `\c DB`) to switch database. Sans-IO: text in, statements out.
//!
//! The file is split here instead of being sent whole because the simple query protocol
//! stops at the first error and reports no statement: a drill must name every failing
//! assertion. The splitter knows what can hide a `;`: quoted strings (`'…'`, `E'…'` with
//! backslash escapes), quoted identifiers, dollar quotes (`$tag$…$tag$`), line comments and
//! nested block comments.

use std::fmt;

/// An assertion file, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// How the report names it (the path as given).
    pub name: String,
    pub statements: Vec<Statement>,
}

/// One statement to run, in a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Line of the statement's first character (1-based).
    pub line: usize,
    /// The database it runs in: the last `\connect` before it, else `postgres`.
    pub database: String,
    /// The statement as written, without its `;`.
    pub sql: String,
}

impl Statement {
    /// The statement on one line, shortened for a report.
    pub fn short(&self) -> String {
        let one_line = self.sql.split_whitespace().collect::<Vec<_>>().join(" ");
        if one_line.chars().count() > 120 {
            format!("{}…", one_line.chars().take(119).collect::<String>())
        } else {
            one_line
        }
    }
}

/// Why a file cannot be split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The database statements run in before any `\connect`.
pub const DEFAULT_DATABASE: &str = "postgres";

/// Splits `text` into statements. Empty statements (`;;`, comments only) are dropped.
pub fn parse(text: &str) -> Result<Vec<Statement>, ScriptError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut database = DEFAULT_DATABASE.to_owned();
    let mut current = String::new();
    // Line where the current statement's first significant character is.
    let mut start_line: Option<usize> = None;
    let mut line = 1usize;
    let mut i = 0usize;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        // A psql meta-command: a backslash where a statement would begin.
        if c == '\\' && start_line.is_none() && current.trim().is_empty() {
            let end = chars[i..]
                .iter()
                .position(|&ch| ch == '\n')
                .map_or(chars.len(), |p| i + p);
            let meta: String = chars[i + 1..end].iter().collect();
            database = meta_connect(&meta).map_err(|message| ScriptError { line, message })?;
            current.clear();
            i = end;
            continue;
        }
        match c {
            '\n' => {
                line += 1;
                current.push(c);
                i += 1;
            }
            '-' if next == Some('-') => {
                // Line comment: kept out of the statement.
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                let open_line = line;
                let mut depth = 0usize;
                loop {
                    match (chars.get(i), chars.get(i + 1)) {
                        (Some('/'), Some('*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some('*'), Some('/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        (Some(ch), _) => {
                            if *ch == '\n' {
                                line += 1;
                            }
                            i += 1;
                        }
                        (None, _) => {
                            return Err(ScriptError {
                                line: open_line,
                                message: "unterminated /* comment".into(),
                            })
                        }
                    }
                }
                current.push(' ');
            }
            ';' => {
                if let Some(l) = start_line.take() {
                    out.push(Statement {
                        line: l,
                        database: database.clone(),
                        sql: current.trim().to_owned(),
                    });
                }
                current.clear();
                i += 1;
            }
            _ => {
                if start_line.is_none() && !c.is_whitespace() {
                    start_line = Some(line);
                }
                let end = match c {
                    '\'' => {
                        let escapes = i > 0
                            && matches!(chars[i - 1], 'e' | 'E')
                            && (i < 2 || !is_ident_char(chars[i - 2]));
                        Some(quoted(&chars, i, '\'', escapes, line, "string")?)
                    }
                    '"' => Some(quoted(&chars, i, '"', false, line, "quoted identifier")?),
                    '$' if i == 0 || !is_ident_char(chars[i - 1]) => match dollar_tag(&chars, i) {
                        Some(tag) => Some(dollar_quoted(&chars, i, &tag, line)?),
                        None => None,
                    },
                    _ => None,
                };
                match end {
                    Some(end) => {
                        for &ch in &chars[i..end] {
                            if ch == '\n' {
                                line += 1;
                            }
                            current.push(ch);
                        }
                        i = end;
                    }
                    None => {
                        current.push(c);
                        i += 1;
                    }
                }
            }
        }
    }
    if let Some(l) = start_line {
        out.push(Statement {
            line: l,
            database,
            sql: current.trim().to_owned(),
        });
    }
    Ok(out)
}

/// `connect DB` / `c DB` (the text after the backslash): the database to switch to.
fn meta_connect(meta: &str) -> Result<String, String> {
    let meta = meta.trim();
    let (command, rest) = meta
        .split_once(char::is_whitespace)
        .map_or((meta, ""), |(c, r)| (c, r.trim()));
    if command != "c" && command != "connect" {
        return Err(format!(
            "unsupported psql meta-command \\{command}: only \\connect DB (or \\c DB) is understood"
        ));
    }
    let (db, after) = if let Some(quoted) = rest.strip_prefix('"') {
        let close = quoted
            .find('"')
            .ok_or_else(|| format!("\\{command}: unterminated quoted database name"))?;
        (quoted[..close].to_owned(), quoted[close + 1..].trim())
    } else {
        let (word, after) = rest
            .split_once(char::is_whitespace)
            .map_or((rest, ""), |(w, a)| (w, a.trim()));
        (word.to_owned(), after)
    };
    if db.is_empty() {
        return Err(format!("\\{command} needs a database name"));
    }
    if !after.is_empty() {
        return Err(format!(
            "\\{command} takes only a database name (the drill connects as its own role)"
        ));
    }
    Ok(db)
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// End (exclusive) of a quoted run starting at `start` with `quote`; a doubled quote is
/// the quote itself, and with `escapes` a backslash escapes the next character.
fn quoted(
    chars: &[char],
    start: usize,
    quote: char,
    escapes: bool,
    line: usize,
    what: &str,
) -> Result<usize, ScriptError> {
    let mut i = start + 1;
    while i < chars.len() {
        if escapes && chars[i] == '\\' {
            i += 2;
            continue;
        }
        if chars[i] == quote {
            if chars.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Ok(i + 1);
        }
        i += 1;
    }
    Err(ScriptError {
        line,
        message: format!("unterminated {what}"),
    })
}

/// The tag of a dollar quote opening at `start` (`$$` or `$tag$`), if it is one (`$1` is a
/// parameter, not a quote).
fn dollar_tag(chars: &[char], start: usize) -> Option<String> {
    let mut i = start + 1;
    while let Some(&c) = chars.get(i) {
        if c == '$' {
            return Some(chars[start..=i].iter().collect());
        }
        let ok = if i == start + 1 {
            c.is_alphabetic() || c == '_'
        } else {
            c.is_alphanumeric() || c == '_'
        };
        if !ok {
            return None;
        }
        i += 1;
    }
    None
}

fn dollar_quoted(
    chars: &[char],
    start: usize,
    tag: &str,
    line: usize,
) -> Result<usize, ScriptError> {
    let tag: Vec<char> = tag.chars().collect();
    let mut i = start + tag.len();
    while i + tag.len() <= chars.len() {
        if chars[i..i + tag.len()] == tag[..] {
            return Ok(i + tag.len());
        }
        i += 1;
    }
    Err(ScriptError {
        line,
        message: format!(
            "unterminated dollar quote {}",
            tag.iter().collect::<String>()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqls(text: &str) -> Vec<(usize, String, String)> {
        parse(text)
            .expect("parses")
            .into_iter()
            .map(|s| (s.line, s.database, s.sql))
            .collect()
    }

    #[test]
    fn splits_on_semicolons_outside_quotes_and_comments() {
        let text = "-- header; not a statement\n\
                    SELECT count(*) = 3 FROM t;\n\
                    SELECT 'a;b' = E'a\\';b' OR \"we;ird\" IS NULL FROM x;\n\
                    /* block; /* nested; */ still */ SELECT $$;$$ <> $f$ $$ ; $f$;\n\
                    DO $body$ BEGIN PERFORM 1; END $body$\n\
                    ;;\n\
                    SELECT $1 ; -- trailing\n\
                    SELECT true";
        let got = sqls(text);
        assert_eq!(got.len(), 6, "{got:?}");
        assert_eq!(
            got[0],
            (2, "postgres".into(), "SELECT count(*) = 3 FROM t".into())
        );
        assert_eq!(got[1].0, 3);
        assert_eq!(
            got[1].2,
            "SELECT 'a;b' = E'a\\';b' OR \"we;ird\" IS NULL FROM x"
        );
        assert_eq!(got[2].0, 4);
        assert!(
            got[2].2.ends_with("SELECT $$;$$ <> $f$ $$ ; $f$"),
            "{:?}",
            got[2]
        );
        assert_eq!(
            got[3],
            (
                5,
                "postgres".into(),
                "DO $body$ BEGIN PERFORM 1; END $body$".into()
            )
        );
        assert_eq!(got[4].2, "SELECT $1");
        assert_eq!(got[5], (8, "postgres".into(), "SELECT true".into()));
    }

    #[test]
    fn connect_switches_the_database() {
        let got = sqls("SELECT 1;\n\\connect app\nSELECT 2;\n  \\c \"other db\"\nSELECT 3;");
        let dbs: Vec<&str> = got.iter().map(|s| s.1.as_str()).collect();
        assert_eq!(dbs, ["postgres", "app", "other db"]);
        assert_eq!(got[2].0, 5);
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let err = parse("SELECT 1;\n\\set x 1\n").expect_err("meta");
        assert_eq!(err.line, 2);
        assert!(err.message.contains("only \\connect"), "{err}");
        let err = parse("SELECT 1;\nSELECT 'open\n;").expect_err("quote");
        assert_eq!(err.to_string(), "line 2: unterminated string");
        assert!(parse("SELECT $a$ x").is_err());
        assert!(parse("/* /* */").is_err());
        assert!(parse("\\c").is_err());
        assert!(parse("\\c a b").is_err());
        assert_eq!(parse("-- nothing\n;\n").expect("empty"), Vec::new());
    }

    #[test]
    fn short_is_one_line_and_bounded() {
        let s = Statement {
            line: 1,
            database: "postgres".into(),
            sql: format!("SELECT\n  {}", "x".repeat(300)),
        };
        let short = s.short();
        assert!(!short.contains('\n'));
        assert_eq!(short.chars().count(), 120);
    }
}
