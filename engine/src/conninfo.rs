//! libpq-compatible connection settings, without libpq.
//!
//! Three steps, each usable on its own:
//!
//! 1. [`parse`] turns a connection string — `keyword=value` pairs or a
//!    `postgresql://` / `postgres://` URI — into [`Params`]: the keywords exactly as given,
//!    like libpq's `PQconninfoParse`. Nothing is defaulted yet.
//! 2. [`resolve`] applies libpq's fallbacks (environment variables `PG*`, then compiled-in
//!    defaults) and validates the values, giving a [`ConnConfig`]. It is pure: the environment,
//!    the OS user name and the home directory are arguments.
//! 3. The password file: [`read_pgpass`] reads `~/.pgpass` (or `passfile`/`PGPASSFILE`) with
//!    libpq's permission check; [`password_from_pgpass`] and [`ConnConfig::password_for`] do
//!    the matching on its content, so that part is pure too.
//!
//! # Behaviour taken from libpq (`fe-connect.c`, `libpq.sgml`)
//!
//! * `keyword=value`: whitespace around `=` is allowed; a value is either unquoted (ends at
//!   whitespace, `\x` stands for `x`) or single-quoted (`\'` and `\\` escapes; no whitespace
//!   needed after the closing quote). Keywords are case-sensitive; an unknown keyword is an
//!   error (`invalid connection option`); a repeated keyword: the last one wins. An empty
//!   string is valid and means "all defaults". `requiressl=1`/`0` is translated to
//!   `sslmode=require`/`prefer`, as libpq does.
//! * URI: `postgresql://[user[:password]@][host][:port][,host[:port]...][/dbname][?k=v&...]`.
//!   The userinfo ends at the first `@` before any `/` (so `@`, `/` and `?` in a password must
//!   be percent-encoded, as with libpq). IPv6 literals go in brackets. Hosts and ports are
//!   joined with commas exactly as libpq does (`a:1,b` gives `host=a,b port=1,`) and then
//!   percent-decoded; user, password, dbname and query keywords/values are percent-decoded
//!   too (`%00` and invalid escapes are errors; the result must be UTF-8). Query parameters
//!   are the `keyword=value` keywords (unknown ones are errors) and override the parts before
//!   them; `ssl=true` means `sslmode=require` (libpq's JDBC compatibility). Empty user,
//!   password, host, port or dbname parts are not stored, so they fall back to the
//!   environment.
//! * Fallbacks: a keyword absent from the connection string takes its environment variable
//!   (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`, `PGSSLROOTCERT`,
//!   `PGSSLCERT`, `PGSSLKEY`, `PGAPPNAME`, `PGCONNECT_TIMEOUT`, `PGPASSFILE`, `PGOPTIONS`,
//!   `PGCLIENTENCODING`, `PGCHANNELBINDING`, `PGTARGETSESSIONATTRS`, and the deprecated
//!   `PGREQUIRESSL=1`). Like libpq, a keyword given with an *empty* value is "given": it
//!   blocks the environment variable and then means the default (`host= ` ignores `PGHOST`).
//! * Defaults: host = the Unix socket directory [`DEFAULT_SOCKET_DIR`] (Debian's libpq
//!   default); port 5432; user = the OS user; dbname = the user (left as `None`, the server
//!   defaults it the same way); sslmode `prefer` (`verify-full` when `sslrootcert=system`);
//!   sslrootcert `~/.postgresql/root.crt`; sslkey `~/.postgresql/postgresql.key` when an
//!   sslcert is given; passfile `~/.pgpass`.
//! * Hosts: `host` is a comma-separated list; an element starting with `/` (or `@`, Linux's
//!   abstract namespace) is a Unix socket directory, an empty element is the default host.
//!   `port` is either one port for all hosts or one per host (empty element = 5432);
//!   otherwise "could not match N port numbers to M hosts". Ports and `connect_timeout` are
//!   parsed like libpq's `pqParseIntParam` (surrounding whitespace allowed); a
//!   `connect_timeout` of 0 or less means none, and 1 is raised to 2 seconds.
//! * `.pgpass`: `hostname:port:database:username:password`; `*` alone matches anything; `\`
//!   escapes the next character; lines starting with `#` are comments; the first matching
//!   line wins. The host searched for is `localhost` for the default socket directory (exact
//!   string comparison, as libpq does), otherwise the `host` value as given (a socket path is
//!   matched literally). A file with group/world permissions is ignored with a warning. An
//!   explicit password (connection string or `PGPASSWORD`) means `.pgpass` is not consulted.
//! * Replication: `replication` is accepted as libpq does (it is sent to the server in the
//!   startup packet). For physical replication (`replication=true`), `.pgpass` is matched
//!   with the database name `replication`, as pg_basebackup does by connecting with
//!   `dbname=replication` ([`ConnConfig::pgpass_dbname`]).
//!
//! # Deliberately different, or not implemented
//!
//! * Keywords pgkeep cannot honour are rejected rather than silently ignored when they have a
//!   non-empty value, from the connection string or the environment: `service`
//!   (`PGSERVICE`: pg_service.conf is not read), `hostaddr` (`PGHOSTADDR`), `require_auth`,
//!   `requirepeer`, `sslcrl`, `sslcrldir`, `sslpassword`, `sslkeylogfile`, OAuth and
//!   `scram_*_key` options. Some are accepted only with values pgkeep satisfies:
//!   `gssencmode` (disable/prefer: no GSSAPI), `sslnegotiation=postgres`, `sslcertmode=allow`,
//!   `load_balance_hosts=disable`, `ssl_min_protocol_version` up to TLSv1.2,
//!   `min_protocol_version=3.0`. Pure tuning knobs are accepted and ignored: `keepalives*`,
//!   `tcp_user_timeout`, `sslcompression`, `sslsni`, `ssl_max_protocol_version`,
//!   `krbsrvname`, `gsslib`, `gssdelegation`, `servicefile`, `max_protocol_version`.
//! * `PGDATESTYLE`, `PGTZ`, `PGGEQO` (sent by libpq as startup options) are not used.
//! * Errors never contain a password: a URI is shown with its password (and, if a secret
//!   query parameter is present, its query) replaced; tokens of a malformed `keyword=value`
//!   string are only quoted when they cannot be a password fragment.
//! * `.pgpass` ports are compared with the port as a number (`port=05432` matches `5432`;
//!   libpq compares the string as written). A matching line with an empty password gives no
//!   password (libpq would then fail with "no password supplied" anyway).
//! * Invalid ports are reported by [`resolve`], before connecting (libpq reports them when it
//!   tries that host).
//! * No default client certificate: libpq also uses `~/.postgresql/postgresql.crt` when that
//!   file exists; pgkeep uses a client certificate only when `sslcert`/`PGSSLCERT` is set
//!   (resolving stays free of file-system checks).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Default Unix socket directory (Debian's compiled-in `DEFAULT_PGSOCKET_DIR`).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// Default port (`DEF_PGPORT`).
pub const DEFAULT_PORT: u16 = 5432;
/// Default password file name, relative to the home directory.
pub const PGPASS_FILE_NAME: &str = ".pgpass";

/// What replaces secrets in messages.
const REDACTED: &str = "********";

/// Keywords whose values are secrets: never shown in `Debug` or errors.
const SECRET_KEYWORDS: &[&str] = &[
    "password",
    "sslpassword",
    "oauth_client_secret",
    "scram_client_key",
    "scram_server_key",
];

// ---------------------------------------------------------------------------------------------
// Keyword table
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Support {
    /// Turned into a [`ConnConfig`] field.
    Used,
    /// Accepted; has no effect in pgkeep.
    Ignored,
    /// Accepted if empty or one of these values (those pgkeep satisfies); error otherwise.
    Restricted {
        allowed: &'static [&'static str],
        ignore_case: bool,
    },
    /// Error if given a non-empty value.
    Unsupported,
}

struct Keyword {
    name: &'static str,
    env: Option<&'static str>,
    support: Support,
}

const fn kw(name: &'static str, env: Option<&'static str>, support: Support) -> Keyword {
    Keyword { name, env, support }
}

const fn only(allowed: &'static [&'static str]) -> Support {
    Support::Restricted {
        allowed,
        ignore_case: false,
    }
}

/// libpq's `PQconninfoOptions` (PostgreSQL 18), with pgkeep's support level.
const KEYWORDS: &[Keyword] = &[
    kw("service", Some("PGSERVICE"), Support::Unsupported),
    kw("servicefile", Some("PGSERVICEFILE"), Support::Ignored),
    kw("user", Some("PGUSER"), Support::Used),
    kw("password", Some("PGPASSWORD"), Support::Used),
    kw("passfile", Some("PGPASSFILE"), Support::Used),
    kw("channel_binding", Some("PGCHANNELBINDING"), Support::Used),
    kw("connect_timeout", Some("PGCONNECT_TIMEOUT"), Support::Used),
    kw("dbname", Some("PGDATABASE"), Support::Used),
    kw("host", Some("PGHOST"), Support::Used),
    kw("hostaddr", Some("PGHOSTADDR"), Support::Unsupported),
    kw("port", Some("PGPORT"), Support::Used),
    kw("client_encoding", Some("PGCLIENTENCODING"), Support::Used),
    kw("options", Some("PGOPTIONS"), Support::Used),
    kw("application_name", Some("PGAPPNAME"), Support::Used),
    kw("fallback_application_name", None, Support::Used),
    kw("keepalives", None, Support::Ignored),
    kw("keepalives_idle", None, Support::Ignored),
    kw("keepalives_interval", None, Support::Ignored),
    kw("keepalives_count", None, Support::Ignored),
    kw("tcp_user_timeout", None, Support::Ignored),
    kw("sslmode", Some("PGSSLMODE"), Support::Used),
    kw(
        "sslnegotiation",
        Some("PGSSLNEGOTIATION"),
        only(&["postgres"]),
    ),
    kw("sslcompression", Some("PGSSLCOMPRESSION"), Support::Ignored),
    kw("sslcert", Some("PGSSLCERT"), Support::Used),
    kw("sslkey", Some("PGSSLKEY"), Support::Used),
    kw("sslcertmode", Some("PGSSLCERTMODE"), only(&["allow"])),
    kw("sslpassword", None, Support::Unsupported),
    kw(
        "sslkeylogfile",
        Some("PGSSLKEYLOGFILE"),
        Support::Unsupported,
    ),
    kw("sslrootcert", Some("PGSSLROOTCERT"), Support::Used),
    kw("sslcrl", Some("PGSSLCRL"), Support::Unsupported),
    kw("sslcrldir", Some("PGSSLCRLDIR"), Support::Unsupported),
    kw("sslsni", Some("PGSSLSNI"), Support::Ignored),
    kw("requirepeer", Some("PGREQUIREPEER"), Support::Unsupported),
    kw("require_auth", Some("PGREQUIREAUTH"), Support::Unsupported),
    kw(
        "ssl_min_protocol_version",
        Some("PGSSLMINPROTOCOLVERSION"),
        Support::Restricted {
            allowed: &["TLSv1", "TLSv1.1", "TLSv1.2"],
            ignore_case: true,
        },
    ),
    kw(
        "ssl_max_protocol_version",
        Some("PGSSLMAXPROTOCOLVERSION"),
        Support::Ignored,
    ),
    kw(
        "min_protocol_version",
        Some("PGMINPROTOCOLVERSION"),
        only(&["3.0"]),
    ),
    kw(
        "max_protocol_version",
        Some("PGMAXPROTOCOLVERSION"),
        Support::Ignored,
    ),
    kw(
        "gssencmode",
        Some("PGGSSENCMODE"),
        only(&["disable", "prefer"]),
    ),
    kw("krbsrvname", Some("PGKRBSRVNAME"), Support::Ignored),
    kw("gsslib", Some("PGGSSLIB"), Support::Ignored),
    kw("gssdelegation", Some("PGGSSDELEGATION"), Support::Ignored),
    kw("replication", None, Support::Used),
    kw(
        "target_session_attrs",
        Some("PGTARGETSESSIONATTRS"),
        Support::Used,
    ),
    kw(
        "load_balance_hosts",
        Some("PGLOADBALANCEHOSTS"),
        only(&["disable"]),
    ),
    kw("oauth_issuer", None, Support::Unsupported),
    kw("oauth_client_id", None, Support::Unsupported),
    kw("oauth_client_secret", None, Support::Unsupported),
    kw("oauth_scope", None, Support::Unsupported),
    kw("scram_client_key", None, Support::Unsupported),
    kw("scram_server_key", None, Support::Unsupported),
];

fn find_keyword(name: &str) -> Option<&'static Keyword> {
    KEYWORDS.iter().find(|k| k.name == name)
}

fn is_secret_keyword(name: &str) -> bool {
    SECRET_KEYWORDS.contains(&name)
}

/// Whether `s` mentions something that looks like a secret keyword (conservative).
fn mentions_secret(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    ["password", "secret", "scram_"]
        .iter()
        .any(|needle| lower.contains(needle))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Where a value came from; shown in errors about values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The connection string, or [`Params::set`].
    Conninfo,
    /// The named environment variable.
    Env(&'static str),
}

impl fmt::Display for Origin {
    /// Empty for [`Origin::Conninfo`], ` (from environment variable X)` otherwise: a suffix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Conninfo => Ok(()),
            Origin::Env(var) => write!(f, " (from environment variable {var})"),
        }
    }
}

/// An invalid or unsupported connection setting. Messages never contain a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnInfoError {
    /// A malformed `keyword=value` string.
    #[error("invalid connection string: {message}")]
    Syntax { message: String },
    /// An unknown keyword; `None` when it is not shown because it could be part of a password.
    #[error("invalid connection option {}", quoted_or_hidden(.keyword))]
    InvalidOption { keyword: Option<String> },
    /// A malformed URI; `uri` is the URI with its secrets replaced.
    #[error("invalid connection URI: {message}: \"{uri}\"")]
    Uri { message: String, uri: String },
    /// A value that is not one of the keyword's values.
    #[error("invalid {keyword} value: \"{value}\"{origin}")]
    InvalidValue {
        keyword: &'static str,
        value: String,
        origin: Origin,
    },
    /// A value that should be an integer.
    #[error("invalid integer value \"{value}\" for connection option \"{keyword}\"{origin}")]
    InvalidInteger {
        keyword: &'static str,
        value: String,
        origin: Origin,
    },
    /// A port outside 1..=65535.
    #[error("invalid port number: \"{value}\"{origin}")]
    InvalidPort { value: String, origin: Origin },
    /// `port` lists neither one port nor one per host.
    #[error("could not match {ports} port numbers to {hosts} hosts")]
    PortCount { ports: usize, hosts: usize },
    /// `sslrootcert=system` with an sslmode other than `verify-full`.
    #[error(
        "weak sslmode \"{sslmode}\" may not be used with sslrootcert=system (use \"verify-full\")"
    )]
    WeakSslMode { sslmode: SslMode },
    /// A libpq keyword pgkeep does not implement, given a value.
    #[error("connection option \"{keyword}\" is not supported by pgkeep{origin}")]
    Unsupported {
        keyword: &'static str,
        origin: Origin,
    },
    /// A libpq keyword pgkeep implements only for some values.
    #[error(
        "connection option {keyword}=\"{value}\" is not supported by pgkeep \
         (supported: {supported}){origin}"
    )]
    UnsupportedValue {
        keyword: &'static str,
        value: String,
        supported: String,
        origin: Origin,
    },
    /// No user name given and no default.
    #[error("could not determine the user name to connect as (set user= or PGUSER)")]
    NoUser,
}

fn quoted_or_hidden(token: &Option<String>) -> String {
    match token {
        Some(t) => format!("\"{t}\""),
        None => "(not shown: it may be part of a password)".to_owned(),
    }
}

/// `tok` if it is safe to show in an error: a plain word, and no secret seen before it.
fn token_if_safe(tok: &str, secret_seen: bool) -> Option<String> {
    let plain = tok.len() <= 64
        && tok
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
    (plain && !secret_seen).then(|| tok.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Params and parsing
// ---------------------------------------------------------------------------------------------

/// Connection keywords as given (libpq's `PQconninfoParse` result): no defaults applied.
///
/// `Debug` hides secret values (`password`, `sslpassword`, ...).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// No keywords: resolving gives all defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value given for `keyword`, if any (possibly empty).
    pub fn get(&self, keyword: &str) -> Option<&str> {
        self.0.get(keyword).map(String::as_str)
    }

    /// Sets (or overrides) a keyword, e.g. `set("replication", "true")`. Unknown keywords
    /// are errors; `requiressl` is translated to `sslmode` as libpq does.
    pub fn set(&mut self, keyword: &str, value: &str) -> Result<(), ConnInfoError> {
        if keyword.contains('\0') || value.contains('\0') {
            return Err(ConnInfoError::Syntax {
                message: "a keyword or value contains a NUL character".to_owned(),
            });
        }
        if self.store(keyword, value) {
            Ok(())
        } else {
            Err(ConnInfoError::InvalidOption {
                keyword: token_if_safe(keyword, false),
            })
        }
    }

    /// Removes a keyword, returning its value.
    pub fn remove(&mut self, keyword: &str) -> Option<String> {
        self.0.remove(keyword)
    }

    /// The keywords and values, sorted by keyword.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of keywords given.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no keyword was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether libpq knows `keyword` (whether or not pgkeep supports it).
    pub fn is_known_keyword(keyword: &str) -> bool {
        keyword == "requiressl" || find_keyword(keyword).is_some()
    }

    /// libpq's `conninfo_storeval`: false for an unknown keyword.
    fn store(&mut self, keyword: &str, value: &str) -> bool {
        let (keyword, value) = if keyword == "requiressl" {
            let mode = if value.starts_with('1') {
                "require"
            } else {
                "prefer"
            };
            ("sslmode", mode)
        } else {
            (keyword, value)
        };
        if find_keyword(keyword).is_none() {
            return false;
        }
        self.0.insert(keyword.to_owned(), value.to_owned());
        true
    }
}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in &self.0 {
            if is_secret_keyword(k) {
                map.entry(k, &REDACTED);
            } else {
                map.entry(k, v);
            }
        }
        map.finish()
    }
}

impl FromStr for Params {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// Parses a connection string: a `postgresql://` or `postgres://` URI, otherwise
/// `keyword=value` pairs (an empty string is valid). See the module documentation.
pub fn parse(conninfo: &str) -> Result<Params, ConnInfoError> {
    if conninfo.contains('\0') {
        return Err(ConnInfoError::Syntax {
            message: "the string contains a NUL character".to_owned(),
        });
    }
    match uri_prefix_len(conninfo) {
        0 => parse_keyword_value(conninfo),
        prefix_len => parse_uri(conninfo, prefix_len),
    }
}

fn uri_prefix_len(s: &str) -> usize {
    if s.starts_with("postgresql://") {
        "postgresql://".len()
    } else if s.starts_with("postgres://") {
        "postgres://".len()
    } else {
        0
    }
}

/// C's `isspace` in the C locale.
fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// libpq's `conninfo_parse`.
fn parse_keyword_value(s: &str) -> Result<Params, ConnInfoError> {
    let b = s.as_bytes();
    let at = |i: usize| b.get(i).copied();
    let mut params = Params::new();
    let mut secret_seen = false;
    let mut i = 0;

    while let Some(c) = at(i) {
        if is_c_space(c) {
            i += 1;
            continue;
        }

        // The keyword: up to '=' or whitespace.
        let name_start = i;
        while at(i).is_some_and(|c| c != b'=' && !is_c_space(c)) {
            i += 1;
        }
        let name = s.get(name_start..i).unwrap_or_default();
        while at(i).is_some_and(is_c_space) {
            i += 1;
        }
        if at(i) != Some(b'=') {
            let mut message = format!(
                "missing \"=\" after {} at byte {name_start}",
                quoted_or_hidden(&token_if_safe(name, secret_seen))
            );
            if name.contains("://") {
                message.push_str(
                    " (a connection URI must start with \"postgresql://\" or \"postgres://\")",
                );
            }
            return Err(ConnInfoError::Syntax { message });
        }
        i += 1;
        while at(i).is_some_and(is_c_space) {
            i += 1;
        }

        // The value.
        let mut value = Vec::new();
        if at(i) == Some(b'\'') {
            i += 1;
            loop {
                match at(i) {
                    None => {
                        return Err(ConnInfoError::Syntax {
                            message: "unterminated quoted string".to_owned(),
                        })
                    }
                    Some(b'\\') => {
                        i += 1;
                        if let Some(c) = at(i) {
                            value.push(c);
                            i += 1;
                        }
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(c) = at(i) {
                i += 1;
                if is_c_space(c) {
                    break;
                }
                if c == b'\\' {
                    if let Some(escaped) = at(i) {
                        value.push(escaped);
                        i += 1;
                    }
                } else {
                    value.push(c);
                }
            }
        }
        // Only ASCII bytes were removed, so this is still UTF-8.
        let value = String::from_utf8(value).map_err(|_| ConnInfoError::Syntax {
            message: "a value is not valid UTF-8".to_owned(),
        })?;

        if !params.store(name, &value) {
            return Err(ConnInfoError::InvalidOption {
                keyword: token_if_safe(name, secret_seen),
            });
        }
        if is_secret_keyword(name) {
            secret_seen = true;
        }
    }
    Ok(params)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// libpq's `conninfo_uri_decode`, plus a UTF-8 check. The error never contains the input.
fn percent_decode(s: &str) -> Result<String, &'static str> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c != b'%' {
            out.push(c);
            i += 1;
            continue;
        }
        let hi = b.get(i + 1).copied().and_then(hex_value);
        let lo = b.get(i + 2).copied().and_then(hex_value);
        match (hi, lo) {
            (Some(hi), Some(lo)) => {
                let v = (hi << 4) | lo;
                if v == 0 {
                    return Err("forbidden value %00 in percent-encoded value");
                }
                out.push(v);
                i += 3;
            }
            _ => return Err("invalid percent-encoded token"),
        }
    }
    String::from_utf8(out).map_err(|_| "percent-decoded value is not valid UTF-8")
}

/// Percent-decoding that never fails (for redaction decisions only).
fn lenient_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let decoded = (c == b'%')
            .then(|| {
                let hi = b.get(i + 1).copied().and_then(hex_value)?;
                let lo = b.get(i + 2).copied().and_then(hex_value)?;
                Some((hi << 4) | lo)
            })
            .flatten();
        match decoded {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URI with its secrets replaced, for error messages.
///
/// More aggressive than the parser: the userinfo is taken to end at the *last* `@`, so a
/// password with an unencoded `/` or `?` is hidden too; if anything after it mentions a
/// secret keyword, the whole query is hidden.
fn redact_uri(uri: &str) -> String {
    let prefix_len = uri_prefix_len(uri);
    let prefix = uri.get(..prefix_len).unwrap_or_default();
    let rest = uri.get(prefix_len..).unwrap_or_default();
    let mut shown = String::from(prefix);
    let mut body = rest;
    if let Some(at) = rest.rfind('@') {
        let userinfo = rest.get(..at).unwrap_or_default();
        if let Some(colon) = userinfo.find(':') {
            shown.push_str(userinfo.get(..colon).unwrap_or_default());
            shown.push(':');
            shown.push_str(REDACTED);
            shown.push('@');
            body = rest.get(at + 1..).unwrap_or_default();
        }
    }
    if mentions_secret(&lenient_decode(body)) {
        match body.find('?') {
            Some(q) => {
                shown.push_str(body.get(..q).unwrap_or_default());
                shown.push_str("?<query not shown>");
            }
            None => shown.push_str(body),
        }
    } else {
        shown.push_str(body);
    }
    shown
}

/// Whether the URI carries a secret (then no fragment of it is quoted in errors).
fn uri_has_secret(uri: &str, prefix_len: usize) -> bool {
    let rest = uri.get(prefix_len..).unwrap_or_default();
    let userinfo_password = rest
        .rfind('@')
        .and_then(|at| rest.get(..at))
        .is_some_and(|userinfo| userinfo.contains(':'));
    userinfo_password || mentions_secret(&lenient_decode(rest))
}

/// libpq's `conninfo_uri_parse_options` and `conninfo_uri_parse_params`.
fn parse_uri(uri: &str, prefix_len: usize) -> Result<Params, ConnInfoError> {
    let secret = uri_has_secret(uri, prefix_len);
    let err = |message: String| ConnInfoError::Uri {
        message,
        uri: redact_uri(uri),
    };
    let decode = |part: &str, what: &str| {
        percent_decode(part).map_err(|e| err(format!("{e} in the {what}")))
    };
    let b = uri.as_bytes();
    let at = |i: usize| b.get(i).copied();
    let slice = |from: usize, to: usize| uri.get(from..to).unwrap_or_default();
    let mut params = Params::new();

    // user[:password]@ — the first '@' before any '/'.
    let mut p = prefix_len;
    let mut q = prefix_len;
    while at(q).is_some_and(|c| c != b'@' && c != b'/') {
        q += 1;
    }
    if at(q) == Some(b'@') {
        let userinfo = slice(prefix_len, q);
        let (user, password) = match userinfo.find(':') {
            Some(colon) => (
                userinfo.get(..colon).unwrap_or_default(),
                userinfo.get(colon + 1..),
            ),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            params.store("user", &decode(user, "user name")?);
        }
        if let Some(password) = password.filter(|pw| !pw.is_empty()) {
            params.store("password", &decode(password, "password")?);
        }
        p = q + 1;
    }

    // netloc[:port][,netloc[:port]...]
    let mut hosts = String::new();
    let mut ports = String::new();
    let mut terminator;
    loop {
        if at(p) == Some(b'[') {
            let start = p + 1;
            let mut end = start;
            while at(end).is_some_and(|c| c != b']') {
                end += 1;
            }
            if at(end).is_none() {
                return Err(err(
                    "end of string reached when looking for matching \"]\" in IPv6 host address"
                        .to_owned(),
                ));
            }
            if end == start {
                return Err(err("IPv6 host address may not be empty".to_owned()));
            }
            hosts.push_str(slice(start, end));
            p = end + 1;
            if let Some(c) = at(p) {
                if !matches!(c, b':' | b'/' | b'?' | b',') {
                    let shown = uri.get(p..).and_then(|s| s.chars().next()).unwrap_or('?');
                    return Err(err(format!(
                        "unexpected character \"{shown}\" at position {} (expected \":\" or \"/\")",
                        p + 1
                    )));
                }
            }
        } else {
            let start = p;
            while at(p).is_some_and(|c| !matches!(c, b':' | b'/' | b'?' | b',')) {
                p += 1;
            }
            hosts.push_str(slice(start, p));
        }
        terminator = at(p);
        if terminator == Some(b':') {
            p += 1;
            let start = p;
            while at(p).is_some_and(|c| !matches!(c, b'/' | b'?' | b',')) {
                p += 1;
            }
            let port = slice(start, p);
            // Checked here so that a password fragment (unencoded '/' in a password makes
            // the userinfo look like host:port) never reaches a later error message.
            let decoded = decode(port, "port")?;
            if !decoded.is_empty() && parse_c_int(&decoded).is_none() {
                return Err(err("invalid port number".to_owned()));
            }
            ports.push_str(port);
            terminator = at(p);
        }
        if terminator != Some(b',') {
            break;
        }
        p += 1;
        hosts.push(',');
        ports.push(',');
    }
    if !hosts.is_empty() {
        params.store("host", &decode(&hosts, "host")?);
    }
    if !ports.is_empty() {
        params.store("port", &decode(&ports, "port")?);
    }

    // /dbname
    if terminator == Some(b'/') {
        p += 1;
        let start = p;
        while at(p).is_some_and(|c| c != b'?') {
            p += 1;
        }
        let dbname = slice(start, p);
        if !dbname.is_empty() {
            params.store("dbname", &decode(dbname, "database name")?);
        }
        terminator = at(p);
    }

    // ?keyword=value&...
    if terminator == Some(b'?') {
        let query = uri.get(p + 1..).unwrap_or_default();
        let qb = query.as_bytes();
        let mut i = 0;
        while i < qb.len() {
            let start = i;
            let mut eq = None;
            loop {
                match qb.get(i) {
                    Some(b'=') => {
                        if eq.is_some() {
                            let key = query.get(start..eq.unwrap_or(start)).unwrap_or_default();
                            return Err(err(format!(
                                "extra key/value separator \"=\" in URI query parameter {}",
                                quoted_or_hidden(&token_if_safe(key, secret))
                            )));
                        }
                        eq = Some(i);
                        i += 1;
                    }
                    Some(b'&') | None => break,
                    Some(_) => i += 1,
                }
            }
            let end = i;
            i += 1; // past '&' (or past the end, which ends the loop)
            let Some(eq) = eq else {
                let key = query.get(start..end).unwrap_or_default();
                return Err(err(format!(
                    "missing key/value separator \"=\" in URI query parameter {}",
                    quoted_or_hidden(&token_if_safe(key, secret))
                )));
            };
            let key = decode(query.get(start..eq).unwrap_or_default(), "query")?;
            let value = decode(query.get(eq + 1..end).unwrap_or_default(), "query")?;
            let (key, value) = if key == "ssl" && value == "true" {
                ("sslmode", "require")
            } else {
                (key.as_str(), value.as_str())
            };
            if !params.store(key, value) {
                return Err(err(format!(
                    "invalid URI query parameter {}",
                    quoted_or_hidden(&token_if_safe(key, secret))
                )));
            }
        }
    }
    Ok(params)
}

// ---------------------------------------------------------------------------------------------
// Resolved settings
// ---------------------------------------------------------------------------------------------

/// `sslmode`. With `Require` (or `Prefer`/`Allow` when TLS is used), libpq still verifies
/// the server certificate against `sslrootcert` when that file exists; with `Verify*` a
/// missing root certificate file is an error when connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling (`verify-full`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Parses the libpq spelling (exact, case-sensitive, like libpq).
    pub fn from_libpq(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Whether the server certificate must chain to a trusted root.
    pub fn verifies_certificate(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// Whether the server certificate must also match the host name.
    pub fn verifies_host_name(self) -> bool {
        self == SslMode::VerifyFull
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `channel_binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelBinding {
    Disable,
    Prefer,
    Require,
}

impl ChannelBinding {
    fn from_libpq(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            _ => return None,
        })
    }
}

/// `target_session_attrs` (checking it needs a connection; this only carries the wish).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetSessionAttrs {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

impl TargetSessionAttrs {
    fn from_libpq(s: &str) -> Option<Self> {
        Some(match s {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            "primary" => TargetSessionAttrs::Primary,
            "standby" => TargetSessionAttrs::Standby,
            "prefer-standby" => TargetSessionAttrs::PreferStandby,
            _ => return None,
        })
    }
}

/// The kind of replication connection ([`ConnConfig::replication_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Replication {
    /// `replication=true` (or on/yes/1...): physical replication, walsender without database.
    Physical,
    /// `replication=database`: logical replication, connected to `dbname`.
    Database,
}

impl Replication {
    /// The value for the startup packet's `replication` parameter.
    pub fn startup_value(self) -> &'static str {
        match self {
            Replication::Physical => "true",
            Replication::Database => "database",
        }
    }
}

/// The server's reading of `replication`: `database`, or a boolean as `parse_bool` reads it
/// (case-insensitive unique prefixes of true/false/yes/no, on/off with at least 2 letters,
/// 1/0). `Ok(None)` for false.
fn parse_replication(v: &str) -> Option<Option<Replication>> {
    if v == "database" {
        return Some(Some(Replication::Database));
    }
    let lower = v.to_ascii_lowercase();
    let prefix_of = |word: &str, min_len: usize| lower.len() >= min_len && word.starts_with(&lower);
    let truth = if lower == "1" {
        true
    } else if lower == "0" {
        false
    } else if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) {
        true
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) {
        false
    } else {
        return None;
    };
    Some(truth.then_some(Replication::Physical))
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A host name or IP address (IPv6 without brackets).
    Tcp(String),
    /// A Unix socket *directory*. One starting with `@` names Linux's abstract namespace
    /// (libpq: replace the `@` by a NUL byte in the socket address).
    Unix(PathBuf),
}

impl Host {
    fn from_libpq(s: &str) -> Host {
        if s.is_empty() {
            Host::Unix(PathBuf::from(DEFAULT_SOCKET_DIR))
        } else if s.starts_with('/') || s.starts_with('@') {
            Host::Unix(PathBuf::from(s))
        } else {
            Host::Tcp(s.to_owned())
        }
    }

    /// The socket file for a Unix host: `<dir>/.s.PGSQL.<port>`.
    pub fn socket_path(&self, port: u16) -> Option<PathBuf> {
        match self {
            Host::Unix(dir) => Some(dir.join(format!(".s.PGSQL.{port}"))),
            Host::Tcp(_) => None,
        }
    }

    /// The host name `.pgpass` is searched for: `localhost` for the default socket directory
    /// (compared as a string, like libpq), otherwise the host as given.
    pub fn pgpass_name(&self) -> Cow<'_, str> {
        match self {
            Host::Tcp(name) => Cow::Borrowed(name),
            Host::Unix(dir) if dir.as_os_str() == DEFAULT_SOCKET_DIR => Cow::Borrowed("localhost"),
            Host::Unix(dir) => dir.to_string_lossy(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(name) => f.write_str(name),
            Host::Unix(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// Resolved connection settings. `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnConfig {
    /// Hosts to try in order, each with its port (at least one).
    pub hosts: Vec<(Host, u16)>,
    pub user: String,
    /// The password given explicitly (connection string or `PGPASSWORD`); `None` also for an
    /// empty one. See [`ConnConfig::password_for`] for the `.pgpass` fallback.
    pub password: Option<String>,
    /// The database, if given. `None`: the server (and libpq) use the user name; leave the
    /// startup packet's `database` out. See [`ConnConfig::effective_dbname`].
    pub dbname: Option<String>,
    pub sslmode: SslMode,
    /// Root certificates: given, or `~/.postgresql/root.crt`; `None` only without either.
    /// Like libpq, a missing file is an error only for `verify-ca`/`verify-full` (and when it
    /// exists, `require` verifies the chain too). The value `system` (libpq 16+: the
    /// system's trusted roots, see [`ConnConfig::sslrootcert_is_system`]) is kept as the
    /// path `system`; it forces `verify-full`.
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate, if given. (libpq would also try `~/.postgresql/postgresql.crt`
    /// when it exists; pgkeep only uses an explicit one.)
    pub sslcert: Option<PathBuf>,
    /// Client key: given, or `~/.postgresql/postgresql.key` when `sslcert` is given.
    pub sslkey: Option<PathBuf>,
    pub channel_binding: ChannelBinding,
    /// `application_name`, else `fallback_application_name`.
    pub application_name: Option<String>,
    /// Per host; `None` = no limit.
    pub connect_timeout: Option<Duration>,
    /// The password file: given, or `~/.pgpass`.
    pub passfile: Option<PathBuf>,
    /// Command-line options for the server (`options`, `PGOPTIONS`).
    pub options: Option<String>,
    pub client_encoding: Option<String>,
    /// The startup packet's `replication` value, normalised: `"true"` (physical) or
    /// `"database"` (logical); `None` for a normal connection (also `replication=false`).
    pub replication: Option<String>,
    pub target_session_attrs: TargetSessionAttrs,
}

impl fmt::Debug for ConnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnConfig")
            .field("hosts", &self.hosts)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("channel_binding", &self.channel_binding)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("passfile", &self.passfile)
            .field("options", &self.options)
            .field("client_encoding", &self.client_encoding)
            .field("replication", &self.replication)
            .field("target_session_attrs", &self.target_session_attrs)
            .finish()
    }
}

/// Quotes a value for a `keyword=value` string when needed.
pub(crate) fn conninfo_quote(v: &str) -> Cow<'_, str> {
    if !v.is_empty() && !v.bytes().any(|c| is_c_space(c) || c == b'\'' || c == b'\\') {
        return Cow::Borrowed(v);
    }
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    Cow::Owned(s)
}

impl ConnConfig {
    /// `host=... port=... user=... dbname=...` for messages (never the password). It is a
    /// valid connection string; several hosts are listed comma-separated.
    pub fn display_target(&self) -> String {
        let hosts: Vec<String> = self.hosts.iter().map(|(h, _)| h.to_string()).collect();
        let ports: Vec<String> = self.hosts.iter().map(|(_, p)| p.to_string()).collect();
        let ports = match ports.first() {
            Some(first) if ports.iter().all(|p| p == first) => first.clone(),
            _ => ports.join(","),
        };
        format!(
            "host={} port={} user={} dbname={}",
            conninfo_quote(&hosts.join(",")),
            conninfo_quote(&ports),
            conninfo_quote(&self.user),
            conninfo_quote(self.effective_dbname())
        )
    }

    /// The database connected to: `dbname`, or else the user name (as the server does).
    pub fn effective_dbname(&self) -> &str {
        self.dbname.as_deref().unwrap_or(&self.user)
    }

    /// The kind of replication connection, if any.
    pub fn replication_mode(&self) -> Option<Replication> {
        match self.replication.as_deref() {
            Some("database") => Some(Replication::Database),
            Some(_) => Some(Replication::Physical),
            None => None,
        }
    }

    /// Whether `sslrootcert=system`: use the system's trusted roots, not a file.
    pub fn sslrootcert_is_system(&self) -> bool {
        self.sslrootcert
            .as_deref()
            .is_some_and(|p| p.as_os_str() == "system")
    }

    /// The database name `.pgpass` lines are matched against: `replication` for a physical
    /// replication connection (as pg_basebackup connects with `dbname=replication`), else
    /// [`ConnConfig::effective_dbname`].
    pub fn pgpass_dbname(&self) -> &str {
        match self.replication_mode() {
            Some(Replication::Physical) => "replication",
            _ => self.effective_dbname(),
        }
    }

    /// The password for one host: the explicit one if given, else the first matching line
    /// of `pgpass` (the password file's content, see [`ConnConfig::load_pgpass`]).
    pub fn password_for(&self, host: &Host, port: u16, pgpass: Option<&str>) -> Option<String> {
        if let Some(password) = &self.password {
            return Some(password.clone());
        }
        password_from_pgpass(
            pgpass?,
            &host.pgpass_name(),
            port,
            self.pgpass_dbname(),
            &self.user,
        )
    }

    /// Reads the password file if it will be needed (no explicit password): see
    /// [`read_pgpass`]. `Ok(None)` when there is nothing to read.
    pub fn load_pgpass(&self) -> Result<Option<String>, PgpassWarning> {
        match (&self.password, &self.passfile) {
            (None, Some(path)) => read_pgpass(path),
            _ => Ok(None),
        }
    }

    /// The startup packet parameters, in libpq's order: `user`, `database`, `replication`,
    /// `options`, `application_name`, `client_encoding` (those that are set).
    pub fn startup_params(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("user", self.user.clone())];
        if let Some(d) = &self.dbname {
            out.push(("database", d.clone()));
        }
        if let Some(r) = &self.replication {
            out.push(("replication", r.clone()));
        }
        if let Some(o) = &self.options {
            out.push(("options", o.clone()));
        }
        if let Some(a) = &self.application_name {
            out.push(("application_name", a.clone()));
        }
        if let Some(e) = &self.client_encoding {
            out.push(("client_encoding", e.clone()));
        }
        out
    }
}

/// Reads the process environment, for [`resolve`]'s `env` argument (a variable that is not
/// valid UTF-8 counts as unset).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).and_then(|v| v.into_string().ok())
}

/// A keyword's value: from `params`, else from its environment variable.
fn lookup(
    params: &Params,
    env: &dyn Fn(&str) -> Option<String>,
    keyword: &Keyword,
) -> Option<(String, Origin)> {
    if let Some(v) = params.get(keyword.name) {
        return Some((v.to_owned(), Origin::Conninfo));
    }
    let var = keyword.env?;
    env(var).map(|v| (v, Origin::Env(var)))
}

/// libpq's `pqParseIntParam`: optional surrounding whitespace, optional sign, decimal digits,
/// within `int` range.
fn parse_c_int(v: &str) -> Option<i32> {
    let b = v.as_bytes();
    let start = b.iter().position(|&c| !is_c_space(c))?;
    let end = b.iter().rposition(|&c| !is_c_space(c))? + 1;
    let t = v.get(start..end)?;
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    t.parse::<i32>().ok()
}

fn nonempty(v: Option<(String, Origin)>) -> Option<String> {
    v.map(|(v, _)| v).filter(|v| !v.is_empty())
}

fn resolve_hosts(
    host: Option<(String, Origin)>,
    port: Option<(String, Origin)>,
) -> Result<Vec<(Host, u16)>, ConnInfoError> {
    let hosts: Vec<Host> = match &host {
        Some((h, _)) if !h.is_empty() => h.split(',').map(Host::from_libpq).collect(),
        _ => vec![Host::from_libpq("")],
    };
    let ports: Vec<u16> = match &port {
        Some((p, origin)) if !p.is_empty() => {
            let items: Vec<&str> = p.split(',').collect();
            if items.len() != 1 && items.len() != hosts.len() {
                return Err(ConnInfoError::PortCount {
                    ports: items.len(),
                    hosts: hosts.len(),
                });
            }
            let parsed = items
                .iter()
                .map(|item| parse_port(item, *origin))
                .collect::<Result<Vec<u16>, _>>()?;
            match parsed.as_slice() {
                [one] => vec![*one; hosts.len()],
                _ => parsed,
            }
        }
        _ => vec![DEFAULT_PORT; hosts.len()],
    };
    Ok(hosts.into_iter().zip(ports).collect())
}

fn parse_port(item: &str, origin: Origin) -> Result<u16, ConnInfoError> {
    if item.is_empty() {
        return Ok(DEFAULT_PORT);
    }
    let n = parse_c_int(item).ok_or_else(|| ConnInfoError::InvalidInteger {
        keyword: "port",
        value: item.to_owned(),
        origin,
    })?;
    u16::try_from(n)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| ConnInfoError::InvalidPort {
            value: item.to_owned(),
            origin,
        })
}

/// Applies libpq's fallbacks and checks the values: see the module documentation.
///
/// * `env`: looks up an environment variable (e.g. [`process_env`]).
/// * `user_default`: the OS user name (libpq: the effective uid's name); empty if unknown.
/// * `home`: the home directory, for `~/.pgpass` and `~/.postgresql/*`.
pub fn resolve(
    params: &Params,
    env: &dyn Fn(&str) -> Option<String>,
    user_default: &str,
    home: Option<&Path>,
) -> Result<ConnConfig, ConnInfoError> {
    let look = |name: &str| find_keyword(name).and_then(|k| lookup(params, env, k));

    for keyword in KEYWORDS {
        match keyword.support {
            Support::Unsupported => {
                if let Some((v, origin)) = lookup(params, env, keyword) {
                    if !v.is_empty() {
                        return Err(ConnInfoError::Unsupported {
                            keyword: keyword.name,
                            origin,
                        });
                    }
                }
            }
            Support::Restricted {
                allowed,
                ignore_case,
            } => {
                if let Some((v, origin)) = lookup(params, env, keyword) {
                    let ok = v.is_empty()
                        || allowed.iter().any(|a| {
                            if ignore_case {
                                a.eq_ignore_ascii_case(&v)
                            } else {
                                *a == v
                            }
                        });
                    if !ok {
                        return Err(ConnInfoError::UnsupportedValue {
                            keyword: keyword.name,
                            value: v,
                            supported: allowed.join(", "),
                            origin,
                        });
                    }
                }
            }
            Support::Used | Support::Ignored => {}
        }
    }

    let user = match nonempty(look("user")) {
        Some(user) => user,
        None if !user_default.is_empty() => user_default.to_owned(),
        None => return Err(ConnInfoError::NoUser),
    };
    let dbname = nonempty(look("dbname"));
    let password = nonempty(look("password"));
    let passfile = nonempty(look("passfile"))
        .map(PathBuf::from)
        .or_else(|| home.map(|h| h.join(PGPASS_FILE_NAME)));
    let hosts = resolve_hosts(look("host"), look("port"))?;

    let sslrootcert = nonempty(look("sslrootcert"))
        .map(PathBuf::from)
        .or_else(|| home.map(|h| h.join(".postgresql/root.crt")));
    let system_roots = sslrootcert
        .as_deref()
        .is_some_and(|p| p.as_os_str() == "system");
    let sslmode = match look("sslmode") {
        Some((v, origin)) => SslMode::from_libpq(&v).ok_or(ConnInfoError::InvalidValue {
            keyword: "sslmode",
            value: v,
            origin,
        })?,
        None if env("PGREQUIRESSL").is_some_and(|v| v.starts_with('1')) => SslMode::Require,
        None if system_roots => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if system_roots && sslmode != SslMode::VerifyFull {
        return Err(ConnInfoError::WeakSslMode { sslmode });
    }
    let sslcert = nonempty(look("sslcert")).map(PathBuf::from);
    let sslkey = nonempty(look("sslkey")).map(PathBuf::from).or_else(|| {
        sslcert
            .as_ref()
            .and(home)
            .map(|h| h.join(".postgresql/postgresql.key"))
    });

    let channel_binding = match look("channel_binding") {
        None => ChannelBinding::Prefer,
        Some((v, origin)) => ChannelBinding::from_libpq(&v).ok_or(ConnInfoError::InvalidValue {
            keyword: "channel_binding",
            value: v,
            origin,
        })?,
    };
    let target_session_attrs = match look("target_session_attrs") {
        None => TargetSessionAttrs::Any,
        Some((v, origin)) => {
            TargetSessionAttrs::from_libpq(&v).ok_or(ConnInfoError::InvalidValue {
                keyword: "target_session_attrs",
                value: v,
                origin,
            })?
        }
    };
    let connect_timeout = match look("connect_timeout") {
        None => None,
        Some((v, origin)) => {
            let secs = parse_c_int(&v).ok_or(ConnInfoError::InvalidInteger {
                keyword: "connect_timeout",
                value: v,
                origin,
            })?;
            // libpq: 0 or less = no limit; at least 2 seconds, against rounding.
            (secs > 0).then(|| Duration::from_secs(u64::from(secs.unsigned_abs().max(2))))
        }
    };
    let replication = match look("replication") {
        Some((v, origin)) if !v.is_empty() => parse_replication(&v)
            .ok_or(ConnInfoError::InvalidValue {
                keyword: "replication",
                value: v,
                origin,
            })?
            .map(|r| r.startup_value().to_owned()),
        _ => None,
    };

    Ok(ConnConfig {
        hosts,
        user,
        password,
        dbname,
        sslmode,
        sslrootcert,
        sslcert,
        sslkey,
        channel_binding,
        application_name: nonempty(look("application_name"))
            .or_else(|| nonempty(look("fallback_application_name"))),
        connect_timeout,
        passfile,
        options: nonempty(look("options")),
        client_encoding: nonempty(look("client_encoding")),
        replication,
        target_session_attrs,
    })
}

// ---------------------------------------------------------------------------------------------
// The password file
// ---------------------------------------------------------------------------------------------

/// Why a password file is ignored; print it as a warning (libpq prints `WARNING: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PgpassWarning {
    #[error("password file \"{}\" is not a plain file", .path.display())]
    NotPlainFile { path: PathBuf },
    #[error(
        "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
        .path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("could not read password file \"{}\": {error}", .path.display())]
    Unreadable { path: PathBuf, error: String },
    #[error("password file \"{}\" is not valid UTF-8", .path.display())]
    NotUtf8 { path: PathBuf },
}

/// Reads a password file as libpq does: `Ok(None)` if it does not exist; a warning (and the
/// file is to be ignored) if it is not a plain file or, on Unix, if its mode allows any group
/// or world access (`S_IRWXG | S_IRWXO`).
pub fn read_pgpass(path: &Path) -> Result<Option<String>, PgpassWarning> {
    // stat() first, like libpq: never open a FIFO or device.
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(None);
    };
    if !meta.is_file() {
        return Err(PgpassWarning::NotPlainFile {
            path: path.to_owned(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(PgpassWarning::InsecurePermissions {
                path: path.to_owned(),
                mode: mode & 0o7777,
            });
        }
    }
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| PgpassWarning::NotUtf8 {
                path: path.to_owned(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PgpassWarning::Unreadable {
            path: path.to_owned(),
            error: e.to_string(),
        }),
    }
}

/// libpq's `pwdfMatchesString`: if `field` (the rest of a line) starts with a field matching
/// `token`, the rest after its `:`. `*` alone matches anything; `\` escapes a character; an
/// unescaped `:` also matches a `:` in the token (libpq's behaviour, so `::1` works).
fn match_pgpass_field<'a>(field: &'a str, token: &str) -> Option<&'a str> {
    if let Some(rest) = field.strip_prefix("*:") {
        return Some(rest);
    }
    let fb = field.as_bytes();
    let tb = token.as_bytes();
    let (mut i, mut t) = (0, 0);
    loop {
        let mut c = *fb.get(i)?;
        let mut escaped = false;
        if c == b'\\' {
            i += 1;
            c = *fb.get(i)?;
            escaped = true;
        }
        if c == b':' && !escaped && t == tb.len() {
            return field.get(i + 1..);
        }
        if tb.get(t) != Some(&c) {
            return None;
        }
        i += 1;
        t += 1;
    }
}

/// The password field: up to the next unescaped `:`, with `\` escapes removed.
fn unescape_pgpass_password(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => out.push(chars.next().unwrap_or('\\')),
            c => out.push(c),
        }
    }
    out
}

/// The password for `host:port:dbname:user` in a password file's content (libpq's
/// `passwordFromFile`): the first matching line wins. `host` empty or equal to
/// [`DEFAULT_SOCKET_DIR`] is searched for as `localhost`. `None` if nothing matches, if the
/// matching line's password is empty, or if `dbname` or `user` is empty.
pub fn password_from_pgpass(
    content: &str,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    if dbname.is_empty() || user.is_empty() {
        return None;
    }
    let host = if host.is_empty() || host == DEFAULT_SOCKET_DIR {
        "localhost"
    } else {
        host
    };
    let port = port.to_string();
    for line in content.split('\n') {
        if line.starts_with('#') {
            continue;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            continue;
        }
        let matched = match_pgpass_field(line, host)
            .and_then(|rest| match_pgpass_field(rest, &port))
            .and_then(|rest| match_pgpass_field(rest, dbname))
            .and_then(|rest| match_pgpass_field(rest, user));
        if let Some(rest) = matched {
            let password = unescape_pgpass_password(rest);
            return (!password.is_empty()).then_some(password);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const HOME: &str = "/home/u";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn params(s: &str) -> Params {
        parse(s).unwrap_or_else(|e| panic!("parse {s:?}: {e}"))
    }

    fn pairs(p: &Params) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn expect_pairs(s: &str, want: &[(&str, &str)]) {
        let mut want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        want.sort();
        assert_eq!(pairs(&params(s)), want, "input {s:?}");
    }

    fn resolve_with(
        s: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConnConfig, ConnInfoError> {
        resolve(&params(s), env, "osuser", Some(Path::new(HOME)))
    }

    fn config(s: &str) -> ConnConfig {
        resolve_with(s, &no_env).unwrap_or_else(|e| panic!("resolve {s:?}: {e}"))
    }

    fn tcp(h: &str, port: u16) -> (Host, u16) {
        (Host::Tcp(h.to_owned()), port)
    }

    fn unix(d: &str, port: u16) -> (Host, u16) {
        (Host::Unix(PathBuf::from(d)), port)
    }

    // --- keyword=value -------------------------------------------------------------------

    #[test]
    fn keyword_value_examples() {
        expect_pairs(
            "host=localhost port=5432 dbname=mydb connect_timeout=10",
            &[
                ("host", "localhost"),
                ("port", "5432"),
                ("dbname", "mydb"),
                ("connect_timeout", "10"),
            ],
        );
        expect_pairs(
            "  host = db.example.com\tport =5433\n user=  alice  ",
            &[
                ("host", "db.example.com"),
                ("port", "5433"),
                ("user", "alice"),
            ],
        );
        expect_pairs(
            "host=/var/lib/postgresql",
            &[("host", "/var/lib/postgresql")],
        );
        expect_pairs("", &[]);
        expect_pairs(" \t\n ", &[]);
        // The last occurrence wins.
        expect_pairs("port=1 port=2", &[("port", "2")]);
        // requiressl is translated like libpq.
        expect_pairs("requiressl=1", &[("sslmode", "require")]);
        expect_pairs("requiressl=0", &[("sslmode", "prefer")]);
        // libpq quirk: blanks after '=' are skipped, so the next token becomes the value.
        expect_pairs("host= port=5", &[("host", "port=5")]);
    }

    #[test]
    fn keyword_value_quoting_and_escapes() {
        expect_pairs(
            r"password='my secret' user='o\'brien' options='-c search_path=a\\b'",
            &[
                ("password", "my secret"),
                ("user", "o'brien"),
                ("options", r"-c search_path=a\b"),
            ],
        );
        expect_pairs(r"dbname=a\ b", &[("dbname", "a b")]);
        expect_pairs(r"dbname=it\'s", &[("dbname", "it's")]);
        expect_pairs("application_name=''", &[("application_name", "")]);
        expect_pairs("application_name=", &[("application_name", "")]);
        // No whitespace needed after a closing quote.
        expect_pairs("host='a'port=5", &[("host", "a"), ("port", "5")]);
        expect_pairs("dbname='Ünïcødé db'", &[("dbname", "Ünïcødé db")]);
        expect_pairs(r"dbname=\é", &[("dbname", "é")]);
    }

    #[test]
    fn keyword_value_errors() {
        assert_eq!(
            parse("host=x bogus=1"),
            Err(ConnInfoError::InvalidOption {
                keyword: Some("bogus".into())
            })
        );
        assert_eq!(
            parse("host=x bogus=1").map_err(|e| e.to_string()),
            Err("invalid connection option \"bogus\"".to_owned())
        );
        // Keywords are case-sensitive, like libpq.
        assert!(matches!(
            parse("HOST=x"),
            Err(ConnInfoError::InvalidOption { .. })
        ));
        assert!(matches!(
            parse("=x"),
            Err(ConnInfoError::InvalidOption { keyword: Some(k) }) if k.is_empty()
        ));
        let e = parse("host").expect_err("missing =");
        assert!(
            e.to_string().contains("missing \"=\" after \"host\""),
            "{e}"
        );
        let e = parse("host='abc").expect_err("unterminated");
        assert!(e.to_string().contains("unterminated quoted string"), "{e}");
        let e = parse(r"host='abc\'").expect_err("unterminated");
        assert!(e.to_string().contains("unterminated quoted string"), "{e}");
        let e = parse(" postgresql://localhost").expect_err("URI with leading blank");
        assert!(e.to_string().contains("postgresql://\" or"), "{e}");
        assert!(parse("host=a\0b").is_err());
    }

    // --- URIs ----------------------------------------------------------------------------

    #[test]
    fn uri_examples_from_libpq_docs() {
        expect_pairs("postgresql://", &[]);
        expect_pairs("postgres://", &[]);
        expect_pairs("postgresql://localhost", &[("host", "localhost")]);
        expect_pairs(
            "postgresql://localhost:5433",
            &[("host", "localhost"), ("port", "5433")],
        );
        expect_pairs(
            "postgresql://localhost/mydb",
            &[("host", "localhost"), ("dbname", "mydb")],
        );
        expect_pairs(
            "postgresql://user@localhost",
            &[("host", "localhost"), ("user", "user")],
        );
        expect_pairs(
            "postgresql://user:secret@localhost",
            &[
                ("host", "localhost"),
                ("user", "user"),
                ("password", "secret"),
            ],
        );
        expect_pairs(
            "postgresql://other@localhost/otherdb?connect_timeout=10&application_name=myapp",
            &[
                ("host", "localhost"),
                ("user", "other"),
                ("dbname", "otherdb"),
                ("connect_timeout", "10"),
                ("application_name", "myapp"),
            ],
        );
        expect_pairs(
            "postgresql://host1:123,host2:456/somedb?target_session_attrs=any&application_name=myapp",
            &[
                ("host", "host1,host2"),
                ("port", "123,456"),
                ("dbname", "somedb"),
                ("target_session_attrs", "any"),
                ("application_name", "myapp"),
            ],
        );
        expect_pairs(
            "postgresql:///mydb?host=localhost&port=5433",
            &[("host", "localhost"), ("port", "5433"), ("dbname", "mydb")],
        );
        expect_pairs(
            "postgresql://[2001:db8::1234]/database",
            &[("host", "2001:db8::1234"), ("dbname", "database")],
        );
        expect_pairs(
            "postgresql:///dbname?host=/var/lib/postgresql",
            &[("host", "/var/lib/postgresql"), ("dbname", "dbname")],
        );
        expect_pairs(
            "postgresql://%2Fvar%2Flib%2Fpostgresql/dbname",
            &[("host", "/var/lib/postgresql"), ("dbname", "dbname")],
        );
        // Empty parts are not stored (so the environment still applies).
        expect_pairs("postgresql://:@/?", &[]);
        expect_pairs("postgresql://:5433", &[("port", "5433")]);
        expect_pairs("postgresql://u:@h", &[("user", "u"), ("host", "h")]);
        // A trailing '&' is fine.
        expect_pairs("postgresql://h?port=1&", &[("host", "h"), ("port", "1")]);
    }

    #[test]
    fn uri_percent_decoding() {
        expect_pairs(
            "postgresql://us%40er:p%3Aa%2Fs%40s@h%6Fst:5432/my%20db?application_name=a%26b%3Dc",
            &[
                ("user", "us@er"),
                ("password", "p:a/s@s"),
                ("host", "host"),
                ("port", "5432"),
                ("dbname", "my db"),
                ("application_name", "a&b=c"),
            ],
        );
        expect_pairs("postgresql:///caf%C3%A9", &[("dbname", "café")]);
        // '+' is not a space (libpq only decodes %XX).
        expect_pairs("postgresql:///a+b", &[("dbname", "a+b")]);
        // Keywords are decoded too.
        expect_pairs("postgresql://?p%6Frt=1", &[("port", "1")]);
        for bad in [
            "postgresql:///db%zz",
            "postgresql:///db%4",
            "postgresql:///db%",
            "postgresql:///db%00",
            "postgresql:///db%ff",
            "postgresql://h?application_name=%G0",
        ] {
            assert!(
                matches!(parse(bad), Err(ConnInfoError::Uri { .. })),
                "{bad}: {:?}",
                parse(bad)
            );
        }
        let e = parse("postgresql:///db%00").expect_err("%00");
        assert!(e.to_string().contains("%00"), "{e}");
    }

    #[test]
    fn uri_ipv6() {
        expect_pairs(
            "postgresql://[::1]:5433/db",
            &[("host", "::1"), ("port", "5433"), ("dbname", "db")],
        );
        expect_pairs(
            "postgresql://[::1],[fe80::1%25eth0]:6000",
            &[("host", "::1,fe80::1%eth0"), ("port", ",6000")],
        );
        let c = config("postgresql://[::1]:5433/db");
        assert_eq!(c.hosts, vec![tcp("::1", 5433)]);
        for bad in [
            "postgresql://[::1",
            "postgresql://[]/db",
            "postgresql://[::1]x/db",
        ] {
            assert!(
                matches!(parse(bad), Err(ConnInfoError::Uri { .. })),
                "{bad}"
            );
        }
        let e = parse("postgresql://[::1]x/db").expect_err("bad char");
        assert!(e.to_string().contains("\"x\""), "{e}");
    }

    #[test]
    fn uri_query_parameters() {
        expect_pairs(
            "postgresql://h?ssl=true",
            &[("host", "h"), ("sslmode", "require")],
        );
        // Only ssl=true is special; otherwise "ssl" is unknown, as in libpq.
        assert!(matches!(
            parse("postgresql://h?ssl=false"),
            Err(ConnInfoError::Uri { .. })
        ));
        let e = parse("postgresql://h?bogus=1").expect_err("unknown");
        assert!(
            e.to_string()
                .contains("invalid URI query parameter \"bogus\""),
            "{e}"
        );
        let e = parse("postgresql://h?port").expect_err("missing =");
        assert!(e.to_string().contains("missing key/value separator"), "{e}");
        let e = parse("postgresql://h?options=a=b").expect_err("extra =");
        assert!(e.to_string().contains("extra key/value separator"), "{e}");
        assert!(parse("postgresql://h?&port=1").is_err());
        // Query parameters override the parts before them.
        expect_pairs(
            "postgresql://h1:1/db1?host=h2&port=2&dbname=db2",
            &[("host", "h2"), ("port", "2"), ("dbname", "db2")],
        );
        expect_pairs(
            "postgresql://h?replication=database",
            &[("host", "h"), ("replication", "database")],
        );
        // Non-numeric URI ports are rejected while parsing.
        assert!(matches!(
            parse("postgresql://h:abc/db"),
            Err(ConnInfoError::Uri { .. })
        ));
    }

    // --- hosts and ports ------------------------------------------------------------------

    #[test]
    fn socket_directories() {
        assert_eq!(
            config("postgresql://%2Fvar%2Frun%2Fpostgresql/db").hosts,
            vec![unix("/var/run/postgresql", 5432)]
        );
        assert_eq!(
            config("postgresql://localhost/db?host=/tmp").hosts,
            vec![unix("/tmp", 5432)]
        );
        assert_eq!(
            config("host=/tmp port=5433").hosts,
            vec![unix("/tmp", 5433)]
        );
        assert_eq!(
            config("host=@abstract").hosts,
            vec![unix("@abstract", 5432)]
        );
        assert_eq!(config("").hosts, vec![unix(DEFAULT_SOCKET_DIR, 5432)]);
        assert_eq!(
            Host::Unix(PathBuf::from("/tmp")).socket_path(5433),
            Some(PathBuf::from("/tmp/.s.PGSQL.5433"))
        );
        assert_eq!(Host::Tcp("h".into()).socket_path(5432), None);
    }

    #[test]
    fn multiple_hosts() {
        assert_eq!(
            config("postgresql://host1:123,host2:456/somedb").hosts,
            vec![tcp("host1", 123), tcp("host2", 456)]
        );
        // libpq joins ports like hosts: "a,b:6000" gives port ",6000".
        assert_eq!(
            config("postgresql://a,b:6000").hosts,
            vec![tcp("a", 5432), tcp("b", 6000)]
        );
        assert_eq!(
            config("host=a,b,c port=7000").hosts,
            vec![tcp("a", 7000), tcp("b", 7000), tcp("c", 7000)]
        );
        assert_eq!(
            config("host=a,,/tmp port=1,,3").hosts,
            vec![tcp("a", 1), unix(DEFAULT_SOCKET_DIR, 5432), unix("/tmp", 3)]
        );
        assert_eq!(
            resolve_with("host=a,b,c port=1,2", &no_env),
            Err(ConnInfoError::PortCount { ports: 2, hosts: 3 })
        );
        assert_eq!(
            resolve_with("port=1,2", &no_env),
            Err(ConnInfoError::PortCount { ports: 2, hosts: 1 })
        );
        let c = config("host=a,b port=1,2 user=u dbname=d");
        assert_eq!(c.display_target(), "host=a,b port=1,2 user=u dbname=d");
    }

    #[test]
    fn ports() {
        assert_eq!(
            config("port=' 5433 '").hosts,
            vec![unix(DEFAULT_SOCKET_DIR, 5433)]
        );
        assert_eq!(
            config("port=+5433").hosts,
            vec![unix(DEFAULT_SOCKET_DIR, 5433)]
        );
        for bad in ["0", "65536", "-1", "99999999999"] {
            let e = resolve_with(&format!("port={bad}"), &no_env).expect_err(bad);
            assert!(
                matches!(
                    e,
                    ConnInfoError::InvalidPort { .. } | ConnInfoError::InvalidInteger { .. }
                ),
                "{bad}: {e}"
            );
            assert!(e.to_string().contains(bad), "{e}");
        }
        let e = resolve_with("port=abc", &no_env).expect_err("abc");
        assert_eq!(
            e.to_string(),
            "invalid integer value \"abc\" for connection option \"port\""
        );
        let e = resolve_with("", &env_of(&[("PGPORT", "x")])).expect_err("env");
        assert!(
            e.to_string().contains("(from environment variable PGPORT)"),
            "{e}"
        );
    }

    // --- environment and defaults -----------------------------------------------------------

    #[test]
    fn defaults() {
        let c = config("");
        assert_eq!(c.hosts, vec![unix("/var/run/postgresql", 5432)]);
        assert_eq!(c.user, "osuser");
        assert_eq!(c.dbname, None);
        assert_eq!(c.effective_dbname(), "osuser");
        assert_eq!(c.password, None);
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert_eq!(
            c.sslrootcert,
            Some(PathBuf::from("/home/u/.postgresql/root.crt"))
        );
        assert!(!c.sslrootcert_is_system());
        assert_eq!((c.sslcert, c.sslkey), (None, None));
        assert_eq!(c.passfile, Some(PathBuf::from("/home/u/.pgpass")));
        assert_eq!(c.connect_timeout, None);
        assert_eq!(c.options, None);
        assert_eq!(c.application_name, None);
        assert_eq!(c.replication, None);
        assert_eq!(c.channel_binding, ChannelBinding::Prefer);
        assert_eq!(c.target_session_attrs, TargetSessionAttrs::Any);

        let c = resolve(&Params::new(), &no_env, "osuser", None).expect("no home");
        assert_eq!((c.passfile, c.sslrootcert, c.sslcert), (None, None, None));

        assert_eq!(
            resolve(&Params::new(), &no_env, "", None),
            Err(ConnInfoError::NoUser)
        );
        let c = resolve(&params("user=bob"), &no_env, "", None).expect("user given");
        assert_eq!((c.user.as_str(), c.effective_dbname()), ("bob", "bob"));
    }

    #[test]
    fn environment_fallbacks_and_precedence() {
        let env = env_of(&[
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGDATABASE", "envdb"),
            ("PGSSLMODE", "require"),
            ("PGSSLROOTCERT", "/etc/ca.pem"),
            ("PGSSLCERT", "/etc/c.pem"),
            ("PGSSLKEY", "/etc/k.pem"),
            ("PGAPPNAME", "envapp"),
            ("PGCONNECT_TIMEOUT", "7"),
            ("PGPASSFILE", "/etc/pgpass"),
            ("PGOPTIONS", "-c work_mem=1MB"),
            ("PGCLIENTENCODING", "UTF8"),
            ("PGTARGETSESSIONATTRS", "primary"),
        ]);
        // Environment over defaults.
        let c = resolve_with("", &env).expect("env");
        assert_eq!(c.hosts, vec![tcp("envhost", 6000)]);
        assert_eq!(c.user, "envuser");
        assert_eq!(c.password.as_deref(), Some("envpw"));
        assert_eq!(c.dbname.as_deref(), Some("envdb"));
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.sslcert, Some(PathBuf::from("/etc/c.pem")));
        assert_eq!(c.sslkey, Some(PathBuf::from("/etc/k.pem")));
        assert_eq!(c.application_name.as_deref(), Some("envapp"));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(c.passfile, Some(PathBuf::from("/etc/pgpass")));
        assert_eq!(c.options.as_deref(), Some("-c work_mem=1MB"));
        assert_eq!(c.client_encoding.as_deref(), Some("UTF8"));
        assert_eq!(c.target_session_attrs, TargetSessionAttrs::Primary);

        // Explicit over environment.
        let c = resolve_with(
            "host=h port=1 user=u password=p dbname=d sslmode=disable application_name=a \
             connect_timeout=3 passfile=/p options=-cx=1",
            &env,
        )
        .expect("explicit");
        assert_eq!(c.hosts, vec![tcp("h", 1)]);
        assert_eq!(
            (c.user.as_str(), c.password.as_deref(), c.effective_dbname()),
            ("u", Some("p"), "d")
        );
        assert_eq!(c.sslmode, SslMode::Disable);
        assert_eq!(c.application_name.as_deref(), Some("a"));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(3)));
        assert_eq!(c.passfile, Some(PathBuf::from("/p")));
        assert_eq!(c.options.as_deref(), Some("-cx=1"));

        // libpq: a keyword given empty blocks its environment variable, then means default.
        let c = resolve_with("host='' port='' dbname='' password=''", &env).expect("empty");
        assert_eq!(c.hosts, vec![unix(DEFAULT_SOCKET_DIR, 5432)]);
        assert_eq!(c.dbname, None);
        assert_eq!(c.effective_dbname(), "envuser");
        assert_eq!(c.password, None);

        // An empty environment variable is also "given but empty".
        let c = resolve_with("", &env_of(&[("PGHOST", ""), ("PGPORT", "")])).expect("empty env");
        assert_eq!(c.hosts, vec![unix(DEFAULT_SOCKET_DIR, 5432)]);

        // A URI's missing parts fall back to the environment.
        let c = resolve_with("postgresql:///db", &env).expect("uri");
        assert_eq!(c.hosts, vec![tcp("envhost", 6000)]);
        assert_eq!(c.dbname.as_deref(), Some("db"));

        // fallback_application_name only when application_name is not set.
        let c = config("fallback_application_name=fb");
        assert_eq!(c.application_name.as_deref(), Some("fb"));
        let c = resolve_with("fallback_application_name=fb", &env).expect("fb");
        assert_eq!(c.application_name.as_deref(), Some("envapp"));
    }

    #[test]
    fn sslmode_values() {
        for (s, mode) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Allow),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(config(&format!("sslmode={s}")).sslmode, mode);
            assert_eq!(mode.as_str(), s);
            assert_eq!(mode.to_string(), s);
        }
        assert!(
            SslMode::VerifyCa.verifies_certificate() && !SslMode::Require.verifies_certificate()
        );
        assert!(
            SslMode::VerifyFull.verifies_host_name() && !SslMode::VerifyCa.verifies_host_name()
        );
        for bad in ["verify_full", "VERIFY-FULL", "", "true"] {
            let e = resolve_with(&format!("sslmode='{bad}'"), &no_env).expect_err(bad);
            assert_eq!(e.to_string(), format!("invalid sslmode value: \"{bad}\""));
        }
        let e = resolve_with("", &env_of(&[("PGSSLMODE", "bogus")])).expect_err("env");
        assert_eq!(
            e.to_string(),
            "invalid sslmode value: \"bogus\" (from environment variable PGSSLMODE)"
        );
        // Deprecated PGREQUIRESSL=1, below PGSSLMODE.
        let c = resolve_with("", &env_of(&[("PGREQUIRESSL", "1")])).expect("requiressl");
        assert_eq!(c.sslmode, SslMode::Require);
        let c = resolve_with(
            "",
            &env_of(&[("PGREQUIRESSL", "1"), ("PGSSLMODE", "disable")]),
        )
        .expect("requiressl");
        assert_eq!(c.sslmode, SslMode::Disable);
        // sslrootcert=system: default verify-full, weaker modes refused.
        let c = config("sslrootcert=system");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert!(c.sslrootcert_is_system());
        assert_eq!(
            resolve_with("sslrootcert=system sslmode=require", &no_env),
            Err(ConnInfoError::WeakSslMode {
                sslmode: SslMode::Require
            })
        );
        let c = config("sslmode=verify-ca sslrootcert=/ca.pem");
        assert_eq!(c.sslrootcert, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn client_certificate() {
        let c = config("sslcert=/c.pem");
        assert_eq!(c.sslcert, Some(PathBuf::from("/c.pem")));
        assert_eq!(
            c.sslkey,
            Some(PathBuf::from("/home/u/.postgresql/postgresql.key"))
        );
        let c = config("sslcert=/c.pem sslkey=/k.pem");
        assert_eq!(c.sslkey, Some(PathBuf::from("/k.pem")));
        let c = resolve(&params("sslcert=/c.pem"), &no_env, "u", None).expect("no home");
        assert_eq!(c.sslkey, None);
    }

    #[test]
    fn connect_timeout_values() {
        for (v, want) in [
            ("10", Some(10)),
            ("1", Some(2)),
            ("2", Some(2)),
            ("0", None),
            ("-5", None),
            (" 7 ", Some(7)),
        ] {
            assert_eq!(
                config(&format!("connect_timeout='{v}'")).connect_timeout,
                want.map(Duration::from_secs),
                "{v}"
            );
        }
        for bad in ["abc", "", "1.5", "10s", "3000000000"] {
            let e = resolve_with(&format!("connect_timeout='{bad}'"), &no_env).expect_err(bad);
            assert!(matches!(
                e,
                ConnInfoError::InvalidInteger {
                    keyword: "connect_timeout",
                    ..
                }
            ));
        }
    }

    #[test]
    fn other_values() {
        assert_eq!(
            config("channel_binding=require").channel_binding,
            ChannelBinding::Require
        );
        assert!(resolve_with("channel_binding=maybe", &no_env).is_err());
        for (v, want) in [
            ("any", TargetSessionAttrs::Any),
            ("read-write", TargetSessionAttrs::ReadWrite),
            ("read-only", TargetSessionAttrs::ReadOnly),
            ("primary", TargetSessionAttrs::Primary),
            ("standby", TargetSessionAttrs::Standby),
            ("prefer-standby", TargetSessionAttrs::PreferStandby),
        ] {
            assert_eq!(
                config(&format!("target_session_attrs={v}")).target_session_attrs,
                want
            );
        }
        let e = resolve_with("target_session_attrs=master", &no_env).expect_err("bad");
        assert!(e.to_string().contains("\"master\""), "{e}");
    }

    #[test]
    fn unsupported_and_ignored_keywords() {
        let e = resolve_with("hostaddr=127.0.0.1", &no_env).expect_err("hostaddr");
        assert_eq!(
            e,
            ConnInfoError::Unsupported {
                keyword: "hostaddr",
                origin: Origin::Conninfo
            }
        );
        let e = resolve_with("", &env_of(&[("PGSERVICE", "prod")])).expect_err("service");
        assert_eq!(
            e.to_string(),
            "connection option \"service\" is not supported by pgkeep \
             (from environment variable PGSERVICE)"
        );
        assert!(resolve_with("require_auth=scram-sha-256", &no_env).is_err());
        assert!(resolve_with("sslcrl=/crl.pem", &no_env).is_err());
        // Empty means not set.
        config("hostaddr='' service=''");
        // Restricted values.
        config("gssencmode=disable");
        config("gssencmode=prefer load_balance_hosts=disable sslnegotiation=postgres");
        config("ssl_min_protocol_version=tlsv1.2 min_protocol_version=3.0");
        let e = resolve_with("gssencmode=require", &no_env).expect_err("gss");
        assert!(
            matches!(&e, ConnInfoError::UnsupportedValue { keyword: "gssencmode", value, .. } if value == "require"),
            "{e}"
        );
        assert!(resolve_with("load_balance_hosts=random", &no_env).is_err());
        assert!(resolve_with("ssl_min_protocol_version=TLSv1.3", &no_env).is_err());
        // Ignored tuning knobs.
        config(
            "keepalives=1 keepalives_idle=30 keepalives_interval=5 keepalives_count=3 \
             tcp_user_timeout=1000 sslcompression=0 sslsni=1 krbsrvname=postgres",
        );
        assert!(Params::is_known_keyword("requiressl"));
        assert!(!Params::is_known_keyword("tty"));
    }

    // --- replication -------------------------------------------------------------------------

    #[test]
    fn replication_keyword() {
        for (v, want) in [
            ("true", Some(Replication::Physical)),
            ("on", Some(Replication::Physical)),
            ("yes", Some(Replication::Physical)),
            ("1", Some(Replication::Physical)),
            ("TRUE", Some(Replication::Physical)),
            ("t", Some(Replication::Physical)),
            ("database", Some(Replication::Database)),
            ("false", None),
            ("off", None),
            ("of", None),
            ("no", None),
            ("0", None),
            ("", None),
        ] {
            assert_eq!(
                config(&format!("replication='{v}'")).replication_mode(),
                want,
                "{v}"
            );
        }
        for bad in ["o", "2", "Database", "truee", "physical"] {
            let e = resolve_with(&format!("replication={bad}"), &no_env).expect_err(bad);
            assert!(matches!(
                e,
                ConnInfoError::InvalidValue {
                    keyword: "replication",
                    ..
                }
            ));
        }
        // The caller adds replication itself.
        let mut p = params("host=h dbname=mydb");
        p.set("replication", "true").expect("set");
        let c = resolve(&p, &no_env, "u", None).expect("resolve");
        assert_eq!(c.replication_mode(), Some(Replication::Physical));
        assert_eq!(c.replication.as_deref(), Some("true"));
        assert_eq!(c.pgpass_dbname(), "replication");
        assert_eq!(c.dbname.as_deref(), Some("mydb"));
        p.set("replication", "database").expect("set");
        let c = resolve(&p, &no_env, "u", None).expect("resolve");
        assert_eq!(c.pgpass_dbname(), "mydb");
        assert!(p.set("nonsense", "1").is_err());
        assert_eq!(
            c.startup_params(),
            vec![
                ("user", "u".to_owned()),
                ("database", "mydb".to_owned()),
                ("replication", "database".to_owned()),
            ]
        );
    }

    // --- .pgpass -----------------------------------------------------------------------------

    const PGPASS: &str = "\
# comment line:*:*:*:commentpw
db.example.com:5432:sales:alice:alicepw
db.example.com:*:*:alice:alice-any
*:*:replication:repl:replpw
h\\:colon:5432:*:*:colonpw
::1:5432:*:*:ipv6pw
localhost:5432:*:bob:bob\\:pw\\\\x:ignored:fields
/tmp:5433:*:carol:carolsock
\\*:5432:*:dave:starhost
*:*:*:erin:
*:*:*:*:fallback
";

    fn pw(host: &str, port: u16, db: &str, user: &str) -> Option<String> {
        password_from_pgpass(PGPASS, host, port, db, user)
    }

    #[test]
    fn pgpass_matching() {
        assert_eq!(
            pw("db.example.com", 5432, "sales", "alice").as_deref(),
            Some("alicepw")
        );
        // First match wins: the more specific line comes first.
        assert_eq!(
            pw("db.example.com", 6000, "hr", "alice").as_deref(),
            Some("alice-any")
        );
        assert_eq!(
            pw("other", 1, "replication", "repl").as_deref(),
            Some("replpw")
        );
        assert_eq!(
            pw("other", 1, "postgres", "repl").as_deref(),
            Some("fallback")
        );
        assert_eq!(pw("h:colon", 5432, "d", "u").as_deref(), Some("colonpw"));
        assert_eq!(pw("::1", 5432, "d", "u").as_deref(), Some("ipv6pw"));
        assert_eq!(
            pw("localhost", 5432, "d", "bob").as_deref(),
            Some(r"bob:pw\x")
        );
        // The default socket directory and an empty host search for "localhost".
        assert_eq!(
            pw(DEFAULT_SOCKET_DIR, 5432, "d", "bob").as_deref(),
            Some(r"bob:pw\x")
        );
        assert_eq!(pw("", 5432, "d", "bob").as_deref(), Some(r"bob:pw\x"));
        // Another socket directory is matched literally.
        assert_eq!(pw("/tmp", 5433, "d", "carol").as_deref(), Some("carolsock"));
        assert_eq!(pw("/tmp", 5432, "d", "carol").as_deref(), Some("fallback"));
        // "\*" is a literal star, not a wildcard.
        assert_eq!(pw("*", 5432, "d", "dave").as_deref(), Some("starhost"));
        assert_eq!(pw("x", 5432, "d", "dave").as_deref(), Some("fallback"));
        // A matching line with an empty password gives none (and stops the search).
        assert_eq!(pw("x", 1, "d", "erin"), None);
        // Comments are skipped even if they would match.
        assert_eq!(
            pw("# comment line", 1, "d", "z").as_deref(),
            Some("fallback")
        );
        // Empty user or dbname: no lookup.
        assert_eq!(pw("x", 1, "", "u"), None);
        assert_eq!(pw("x", 1, "d", ""), None);
    }

    #[test]
    fn pgpass_line_details() {
        let one = |content: &str| password_from_pgpass(content, "h", 5432, "d", "u");
        assert_eq!(one("h:5432:d:u:pw\r\n").as_deref(), Some("pw"));
        assert_eq!(one("h:5432:d:u:pw").as_deref(), Some("pw"));
        assert_eq!(one("\n\nh:5432:d:u:pw\n").as_deref(), Some("pw"));
        assert_eq!(one("h:5432:d:u:trailing\\").as_deref(), Some("trailing\\"));
        assert_eq!(one("h:5432:d:u:p\\é").as_deref(), Some("pé"));
        // Too few fields, prefixes, "*x" (not a wildcard) and so on do not match.
        for no in [
            "h:5432:d:u",
            "h:5432:d",
            "hh:5432:d:u:pw",
            "h:54321:d:u:pw",
            "*h:5432:d:u:pw",
            " h:5432:d:u:pw",
            "h\\",
        ] {
            assert_eq!(one(no), None, "{no:?}");
        }
        // Whole-field wildcards only.
        assert_eq!(one("*:*:*:*:all").as_deref(), Some("all"));
        assert_eq!(one("h:*:d:*:some").as_deref(), Some("some"));
    }

    #[test]
    fn password_for_hosts() {
        let c = config("host=localhost,/tmp,/var/run/postgresql,db.example.com user=bob");
        let (h0, h1, h2, h3) = (&c.hosts[0], &c.hosts[1], &c.hosts[2], &c.hosts[3]);
        assert_eq!(
            c.password_for(&h0.0, h0.1, Some(PGPASS)).as_deref(),
            Some(r"bob:pw\x")
        );
        assert_eq!(
            c.password_for(&h1.0, h1.1, Some(PGPASS)).as_deref(),
            Some("fallback")
        );
        assert_eq!(
            c.password_for(&h2.0, h2.1, Some(PGPASS)).as_deref(),
            Some(r"bob:pw\x")
        );
        assert_eq!(
            c.password_for(&h3.0, h3.1, Some(PGPASS)).as_deref(),
            Some("fallback")
        );
        assert_eq!(c.password_for(&h0.0, h0.1, None), None);
        assert_eq!(
            Host::Unix("/var/run/postgresql/".into()).pgpass_name(),
            "/var/run/postgresql/"
        );

        // An explicit password wins over .pgpass (and .pgpass is not read).
        let c = config("host=localhost user=bob password=explicit");
        assert_eq!(
            c.password_for(&c.hosts[0].0, 5432, Some(PGPASS)).as_deref(),
            Some("explicit")
        );
        assert_eq!(c.load_pgpass(), Ok(None));
        let c = resolve_with(
            "host=localhost user=bob",
            &env_of(&[("PGPASSWORD", "envpw")]),
        )
        .expect("env pw");
        assert_eq!(
            c.password_for(&c.hosts[0].0, 5432, Some(PGPASS)).as_deref(),
            Some("envpw")
        );

        // Physical replication matches the "replication" database field.
        let c = config("host=other user=repl dbname=whatever replication=true");
        assert_eq!(
            c.password_for(&c.hosts[0].0, 5432, Some(PGPASS)).as_deref(),
            Some("replpw")
        );
        let c = config("host=other user=repl dbname=whatever");
        assert_eq!(
            c.password_for(&c.hosts[0].0, 5432, Some(PGPASS)).as_deref(),
            Some("fallback")
        );
    }

    #[cfg(unix)]
    #[test]
    fn read_pgpass_checks_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "h:5432:d:u:pw\n").expect("write");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let w = read_pgpass(&path).expect_err("0644 must be refused");
        assert!(
            matches!(w, PgpassWarning::InsecurePermissions { mode: 0o644, .. }),
            "{w:?}"
        );
        assert!(w.to_string().contains("has group or world access"), "{w}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(read_pgpass(&path).is_err());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_pgpass(&path), Ok(Some("h:5432:d:u:pw\n".to_owned())));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        assert!(read_pgpass(&path).is_ok());

        assert_eq!(read_pgpass(&dir.path().join("missing")), Ok(None));
        assert!(matches!(
            read_pgpass(dir.path()),
            Err(PgpassWarning::NotPlainFile { .. })
        ));

        // Through ConnConfig.
        let c = resolve(
            &params(&format!(
                "user=u dbname=d host=h passfile='{}'",
                path.display()
            )),
            &no_env,
            "u",
            None,
        )
        .expect("resolve");
        let content = c.load_pgpass().expect("readable");
        assert_eq!(
            c.password_for(&c.hosts[0].0, c.hosts[0].1, content.as_deref())
                .as_deref(),
            Some("pw")
        );
    }

    // --- secrets -------------------------------------------------------------------------------

    #[test]
    fn debug_never_shows_password() {
        let p = params("host=h password=hunter2 sslpassword=keypw");
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("keypw"), "{dbg}");
        assert!(dbg.contains("\"host\": \"h\""), "{dbg}");

        let c = config("postgresql://u:hunter2@h/db");
        assert_eq!(c.password.as_deref(), Some("hunter2"));
        for shown in [format!("{c:?}"), format!("{c:#?}"), c.display_target()] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        assert!(format!("{c:?}").contains("password: Some(\"********\")"));
        assert_eq!(c.display_target(), "host=h port=5432 user=u dbname=db");
        assert!(c
            .startup_params()
            .iter()
            .all(|(_, v)| !v.contains("hunter2")));
    }

    #[test]
    fn errors_never_show_password() {
        let secret = "hunter2";
        let cases = [
            // URIs
            "postgresql://u:hunter2@h:bad/db",
            "postgresql://u:hunter2@[::1/db",
            "postgresql://u:hunter2@h/db?bogus=1",
            "postgresql://u:hunter2@h/db%zz",
            "postgresql://u:hunter2%zz@h/db",
            "postgresql://u:hunter2@h/db?application_name",
            "postgresql://u:hun/ter2@h/db",
            "postgresql://h/db?password=hunter2&bogus=1",
            "postgresql://h/db?password=hunter2&hunter2",
            "postgresql://h/db?password=hun&ter2=x",
            "postgresql://h/db?pass%77ord=hunter2&x",
            "postgresql://h/db?sslpassword=hunter2&x=",
            // keyword=value
            " postgresql://u:hunter2@h/db",
            "postgres://u:hunter2@h/db?x",
            "password=hun ter2",
            "password=hun ter2=1",
            "password='hunter2",
            "user=u password=x hunter2",
            "password=hunter2 bogus=1",
        ];
        for input in cases {
            let parsed = parse(input);
            let err = match parsed {
                Err(e) => e,
                Ok(p) => match resolve(&p, &no_env, "u", None) {
                    Err(e) => e,
                    Ok(_) => panic!("{input:?} should fail"),
                },
            };
            let (text, dbg) = (err.to_string(), format!("{err:?}"));
            assert!(
                !text.contains(secret) && !text.contains("ter2") && !dbg.contains("ter2"),
                "{input:?} leaks: {text} / {dbg}"
            );
        }
        // Like libpq, the userinfo ends at the first '@' before any '/', so '?' may stay raw.
        let p = params("postgresql://u:hun?ter2@h/db");
        assert_eq!(p.get("password"), Some("hun?ter2"));
        // The redacted URI is still useful.
        let e = parse("postgresql://u:hunter2@h/db?bogus=1").expect_err("bogus");
        assert!(
            e.to_string().contains("postgresql://u:********@h/db"),
            "{e}"
        );
        // Without secrets, offending tokens are quoted.
        let e = parse("postgresql://u@h/db?bogus=1").expect_err("bogus");
        assert!(e.to_string().contains("\"bogus\""), "{e}");
    }

    #[test]
    fn display_target_quotes() {
        let c = config("host=/tmp user='a b' dbname=''");
        assert_eq!(
            c.display_target(),
            "host=/tmp port=5432 user='a b' dbname='a b'"
        );
        let c = config(r"host=h user=o\'k dbname=x\\y");
        let shown = c.display_target();
        assert_eq!(shown, r"host=h port=5432 user='o\'k' dbname='x\\y'");
        // It parses back to the same target.
        let again = config(&shown);
        assert_eq!(
            (again.hosts, again.user, again.dbname),
            (c.hosts, c.user, c.dbname)
        );
    }

    // --- robustness ----------------------------------------------------------------------------

    #[test]
    fn no_panics_on_arbitrary_input() {
        use rand::{Rng, SeedableRng};
        let pieces = [
            "postgresql://",
            "postgres://",
            "@",
            ":",
            "/",
            "?",
            "&",
            "=",
            "%",
            "%2",
            "%2F",
            "%00",
            "%C3",
            "%A9",
            "[",
            "]",
            ",",
            "'",
            "\\",
            " ",
            "\t",
            "host",
            "port",
            "password",
            "user",
            "dbname",
            "sslmode",
            "replication",
            "ssl",
            "true",
            "a",
            "é",
            "5432",
            "-",
            "*",
            "#",
            "\n",
            "\r",
            "::1",
            "/tmp",
            "requiressl",
            "1",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for _ in 0..20_000 {
            let n = rng.gen_range(0..14);
            let s: String = (0..n)
                .map(|_| pieces[rng.gen_range(0..pieces.len())])
                .collect();
            match parse(&s) {
                Ok(p) => {
                    let _ = resolve(&p, &no_env, "u", Some(Path::new(HOME)));
                    let _ = format!("{p:?}");
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
            let _ = password_from_pgpass(&s, "h", 5432, "d", "u");
            let _ = password_from_pgpass(&s, &s, 1, &s, &s);
            let _ = redact_uri(&s);
        }
    }
}
