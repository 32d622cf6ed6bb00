//! A real S3-compatible server on loopback: moto's `moto_server`.
//!
//! Why moto in server mode: the code under test talks to S3 through
//! `object_store` over real HTTP, so a mock at the Rust level would not
//! exercise request signing, path-style addressing, conditional puts and
//! error mapping. moto is a PyPI package (installable here, unlike MinIO's
//! binary downloads), keeps everything in memory and starts in about a second.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::http::{self, HttpResponse};

/// Environment variable naming the `moto_server` executable to use, ahead of
/// the repository's `.tools/venv` and `PATH`.
pub const MOTO_SERVER_ENV: &str = "PGKEEP_MOTO_SERVER";

/// Environment variable overriding how many seconds [`S3Server::start`] waits
/// for moto to answer (default 30). A loaded 2-core CI box running many test
/// binaries at once can be slow to import moto.
pub const START_TIMEOUT_ENV: &str = "PGKEEP_MOTO_START_TIMEOUT_SECS";

pub(crate) const INSTALL_HINT: &str =
    "run `bash scripts/install-test-deps.sh` from the repository root";
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
const START_ATTEMPTS: usize = 3;
const LOG_TAIL_LINES: usize = 40;

/// Dummy credentials: moto accepts any, but clients refuse to sign without.
const ACCESS_KEY_ID: &str = "testing";
const SECRET_ACCESS_KEY: &str = "testing";
const REGION: &str = "us-east-1";

/// Sent on every raw request. moto does not verify signatures, but it treats
/// a request *without* an `Authorization` header as anonymous, and anonymous
/// reads or overwrites of private objects get 403. The credential scope names
/// `s3` so moto routes the request to its S3 backend.
const DUMMY_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 \
    Credential=testing/20240101/us-east-1/s3/aws4_request, \
    SignedHeaders=host, \
    Signature=0000000000000000000000000000000000000000000000000000000000000000";

/// Runs as `/bin/sh -c WATCHDOG name LOGDIR MOTO_SERVER ARGS...` with stdin a
/// pipe whose only write end is held by the test process.
///
/// Why: a server behind [`S3Server::shared`] lives in a `static`, and Rust
/// never drops statics, so without this every test binary would leave a moto
/// process behind. A background subshell waits for EOF on that pipe, which
/// the kernel delivers when the test process exits by any means (even
/// SIGKILL), then sends SIGTERM to moto and removes the log directory. The
/// main shell `exec`s moto, so `$$` (the same in the subshell) is moto's PID,
/// and so is the PID of the `Child` we hold. The subshell's stdin comes via
/// fd 3 because POSIX sh gives background jobs /dev/null as stdin.
pub(crate) const WATCHDOG: &str = r#"dir=$1
shift
exec 3<&0
( while read -r _; do :; done; kill -TERM $$ 2>/dev/null; rm -rf "$dir" ) <&3 >/dev/null 2>&1 &
exec "$@" 3<&- </dev/null
"#;

/// Error from starting or talking to the test server.
///
/// The message is meant for a human reading a failed test: it says what was
/// tried and, where it helps, how to fix the machine.
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Same as `Display`: `expect()` in a test prints `Debug`, and the message
/// (often with a multi-line log tail) should read as written, not escaped.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// A moto S3 server on `127.0.0.1`, private to this handle.
///
/// Its state is in memory only and vanishes with the process. Dropping the
/// handle kills the server; if the test process exits first, a small shell
/// watchdog that notices the exit kills it. Many tests can share one server
/// ([`S3Server::shared`]) as long as each uses its own bucket
/// ([`S3Server::unique_bucket`]).
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    /// Holds the log file; removed on drop (or by the watchdog).
    _log_dir: TempDir,
}

/// How one start attempt failed: a port stolen between our probe and moto's
/// bind is worth another try, anything else is not.
enum StartFailure {
    PortTaken(Error),
    Fatal(Error),
}

impl S3Server {
    /// Starts a new moto server on a free port of 127.0.0.1 and waits until
    /// it answers S3 requests.
    ///
    /// The executable is taken from `$PGKEEP_MOTO_SERVER`, else
    /// `<repo>/.tools/venv/bin/moto_server` (what `scripts/install-test-deps.sh`
    /// installs), else `PATH`. moto's output goes to a log file, not to the
    /// test's output; a failed start includes the log's tail in the error.
    pub fn start() -> Result<S3Server, Error> {
        let exe = find_moto_server()?;
        let timeout = start_timeout()?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&exe, timeout) {
                Ok(server) => return Ok(server),
                Err(StartFailure::PortTaken(e)) => last = Some(e),
                Err(StartFailure::Fatal(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::new("moto_server did not start")))
    }

    /// The server shared by all tests of this process, started on first use.
    ///
    /// Why shared: moto takes about a second (much more on a loaded machine)
    /// to start, so one per test would dominate test time. Isolate tests with
    /// [`S3Server::unique_bucket`]. A failed start is remembered, so every
    /// test reports the same error at once instead of each waiting again.
    /// Under `cargo nextest`, each test is its own process and so gets its
    /// own server.
    pub fn shared() -> Result<&'static S3Server, Error> {
        static SHARED: OnceLock<Result<S3Server, Error>> = OnceLock::new();
        SHARED
            .get_or_init(S3Server::start)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// moto's log (its stdout and stderr), for debugging a failing test. It
    /// is deleted with the server.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// `s3://BUCKET`, the URL form pgkeep's repository locations use.
    pub fn bucket_url(&self, bucket: &str) -> String {
        format!("s3://{bucket}")
    }

    /// The environment an `object_store` `AmazonS3Builder::from_env()`
    /// client (or a `pgkeep` child process) needs to reach this server.
    ///
    /// Pass it to `Command::envs` or `AmazonS3Builder::with_config`; setting
    /// it on the test process itself races with tests running in parallel.
    /// Requests use path-style addressing (`object_store`'s default), which
    /// moto serves on a plain IP endpoint.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Creates bucket `name` (`PUT /name`). Fails on a name S3 would reject
    /// (3 to 63 of `a-z 0-9 . -`) and on any non-2xx answer.
    pub fn create_bucket(&self, name: &str) -> Result<(), Error> {
        validate_bucket_name(name)?;
        let response = self.request("PUT", &format!("/{name}"), &[], b"")?;
        if response.is_success() {
            Ok(())
        } else {
            Err(Error::new(format!(
                "creating bucket {name:?} on {}: HTTP {}: {}",
                self.endpoint(),
                response.status,
                response.body_text()
            )))
        }
    }

    /// Creates a bucket with a fresh name starting with (a sanitised form of)
    /// `prefix` and returns the name, so parallel tests on one server never
    /// see each other's objects.
    pub fn unique_bucket(&self, prefix: &str) -> Result<String, Error> {
        let name = unique_bucket_name(prefix);
        self.create_bucket(&name)?;
        Ok(name)
    }

    /// Sends one raw HTTP request to the server and returns its response,
    /// whatever its status.
    ///
    /// `path` is sent as is (percent-encode keys yourself), e.g.
    /// `/bucket/some/key`. A dummy `Authorization` header is added unless
    /// `headers` has one (moto answers 403 to anonymous reads of private
    /// objects; it does not check signatures), and
    /// `Content-Type: application/octet-stream` for a non-empty body unless
    /// given, since moto's web layer would parse a form-encoded body away.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse, Error> {
        let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let mut all: Vec<(&str, &str)> = Vec::with_capacity(headers.len() + 2);
        if !has("Authorization") {
            all.push(("Authorization", DUMMY_AUTHORIZATION));
        }
        if !body.is_empty() && !has("Content-Type") {
            all.push(("Content-Type", "application/octet-stream"));
        }
        all.extend_from_slice(headers);
        http::send(self.addr, method, path, &all, body, REQUEST_TIMEOUT).map_err(|e| {
            Error::new(format!(
                "{method} {path} to moto at {}: {e} (log: {})",
                self.endpoint(),
                self.log_path.display()
            ))
        })
    }

    fn start_once(exe: &Path, timeout: Duration) -> Result<S3Server, StartFailure> {
        let fatal =
            |what: &str, e: std::io::Error| StartFailure::Fatal(Error::new(format!("{what}: {e}")));
        let log_dir = tempfile::Builder::new()
            .prefix("pgkeep-moto-")
            .tempdir()
            .map_err(|e| fatal("creating moto's log directory", e))?;
        let log_path = log_dir.path().join("moto_server.log");
        let log = File::create(&log_path).map_err(|e| fatal("creating moto's log file", e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| fatal("duplicating moto's log file", e))?;
        let addr =
            free_loopback_addr().map_err(|e| fatal("finding a free port on 127.0.0.1", e))?;

        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("pgkeep-moto-watchdog")
            .arg(log_dir.path())
            .arg(exe)
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            // moto prefers $MOTO_PORT over -p for the URLs it generates.
            .env_remove("MOTO_PORT")
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| fatal(&format!("spawning {}", exe.display()), e))?;

        // From here on, dropping `server` stops the process, including on the
        // error paths below.
        let mut server = S3Server {
            child,
            addr,
            log_path,
            _log_dir: log_dir,
        };
        server.wait_ready(exe, timeout)?;
        Ok(server)
    }

    /// Polls until moto answers a ListBuckets request, the process exits, or
    /// `timeout` passes.
    fn wait_ready(&mut self, exe: &Path, timeout: Duration) -> Result<(), StartFailure> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    let tail = log_tail(&self.log_path);
                    let err = Error::new(format!(
                        "{} -H 127.0.0.1 -p {} exited ({status}) before answering; log tail:\n{tail}",
                        exe.display(),
                        self.port()
                    ));
                    return Err(if tail.contains("in use") {
                        StartFailure::PortTaken(err)
                    } else {
                        StartFailure::Fatal(err)
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(StartFailure::Fatal(Error::new(format!(
                        "checking on moto_server: {e}"
                    ))))
                }
            }
            // Only a ListBuckets answer counts: anything else on this port
            // would be another program, and moto will exit on its failed bind.
            let probe = http::send(
                self.addr,
                "GET",
                "/",
                &[("Authorization", DUMMY_AUTHORIZATION)],
                b"",
                PROBE_TIMEOUT,
            );
            if let Ok(r) = probe {
                if r.status == 200 && r.body_text().contains("ListAllMyBucketsResult") {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(StartFailure::Fatal(Error::new(format!(
                    "{} -H 127.0.0.1 -p {} did not answer within {}s (raise {START_TIMEOUT_ENV} \
                     on a slow machine); log tail:\n{}",
                    exe.display(),
                    self.port(),
                    timeout.as_secs(),
                    log_tail(&self.log_path)
                ))));
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // Closing the pipe first lets the watchdog exit; it also sends
        // SIGTERM, harmless since moto's PID stays ours until `wait` reaps it.
        drop(self.child.stdin.take());
        // SIGKILL: moto's state is disposable and SIGTERM takes up to half a
        // second (its serve loop polls). Errors mean it is already gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port the OS reports free on 127.0.0.1. Another process may take it
/// before moto binds; [`S3Server::start`] retries that case.
pub(crate) fn free_loopback_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind(("127.0.0.1", 0))?.local_addr()
}

fn start_timeout() -> Result<Duration, Error> {
    match std::env::var(START_TIMEOUT_ENV) {
        Err(_) => Ok(DEFAULT_START_TIMEOUT),
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| {
                Error::new(format!(
                    "{START_TIMEOUT_ENV}={s:?} is not a number of seconds"
                ))
            }),
    }
}

/// The repository root: the nearest ancestor of this crate holding the
/// install script, so `.tools/` is found however the workspace is laid out.
pub(crate) fn repo_root() -> Option<&'static Path> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("scripts/install-test-deps.sh").is_file())
}

fn find_moto_server() -> Result<PathBuf, Error> {
    locate_moto_server(
        std::env::var_os(MOTO_SERVER_ENV),
        repo_root(),
        std::env::var_os("PATH"),
    )
}

/// The search behind [`S3Server::start`], with its inputs passed in so it can
/// be tested without touching the process environment.
fn locate_moto_server(
    from_env: Option<OsString>,
    repo_root: Option<&Path>,
    path_var: Option<OsString>,
) -> Result<PathBuf, Error> {
    if let Some(exe) = from_env.filter(|v| !v.is_empty()) {
        let exe = PathBuf::from(exe);
        // An explicit choice that is wrong is an error, not a reason to fall
        // back silently to some other moto.
        return if is_executable(&exe) {
            Ok(exe)
        } else {
            Err(Error::new(format!(
                "{MOTO_SERVER_ENV}={} is not an executable file; unset it, or {INSTALL_HINT}",
                exe.display()
            )))
        };
    }
    let mut looked = vec![format!("${MOTO_SERVER_ENV} (unset)")];
    if let Some(root) = repo_root {
        let exe = root.join(".tools/venv/bin/moto_server");
        if is_executable(&exe) {
            return Ok(exe);
        }
        looked.push(exe.display().to_string());
    }
    if let Some(path_var) = path_var {
        for dir in std::env::split_paths(&path_var) {
            let exe = dir.join("moto_server");
            if is_executable(&exe) {
                return Ok(exe);
            }
        }
    }
    looked.push("PATH".to_owned());
    Err(Error::new(format!(
        "moto_server (moto's S3 server, needed by this test) was not found; looked at: {}. \
         To install it, {INSTALL_HINT}",
        looked.join(", ")
    )))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    let Ok(meta) = path.metadata() else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

fn validate_bucket_name(name: &str) -> Result<(), Error> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if (3..=63).contains(&name.len()) && ok_chars {
        Ok(())
    } else {
        Err(Error::new(format!(
            "invalid bucket name {name:?}: S3 wants 3 to 63 characters of a-z, 0-9, '.', '-'"
        )))
    }
}

/// `PREFIX-PID-COUNTER-RANDOM`: the counter makes names unique within the
/// process, the PID and random part across processes (which, with one server
/// per process, only matters for a server passed between processes).
pub(crate) fn unique_bucket_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);

    let mut clean: String = prefix
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(30)
        .collect();
    clean = clean.trim_matches('-').to_owned();
    if clean.is_empty() {
        clean.push_str("test");
    }
    format!("{clean}-{:x}-{n}-{:08x}", std::process::id(), random_u32())
}

/// Non-cryptographic randomness from std alone: `RandomState` is seeded
/// randomly per process, mixed with the clock.
pub(crate) fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() as u32
}

/// The last lines of moto's log, without the ANSI colours werkzeug adds even
/// when writing to a file.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("(could not read {}: {e})", path.display()),
    };
    let text = strip_ansi(&text);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "(empty)".to_owned();
    }
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..].join("\n")
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters... final byte in '@'..='~'
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_override_wins_and_must_exist() {
        let root = tempfile::tempdir().expect("tempdir");
        let err = locate_moto_server(Some(root.path().join("nope").into_os_string()), None, None)
            .expect_err("missing override must fail");
        assert!(err.to_string().contains(MOTO_SERVER_ENV), "{err}");
        assert!(err.to_string().contains("install-test-deps.sh"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn finds_repo_venv_then_path() {
        use std::os::unix::fs::PermissionsExt;
        let make_exe = |p: &Path| {
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        let root = tempfile::tempdir().expect("tempdir");
        let bin = root.path().join("bin");
        make_exe(&bin.join("moto_server"));
        let path_var = std::env::join_paths([&bin]).expect("join");

        let found = locate_moto_server(None, Some(root.path()), Some(path_var.clone()))
            .expect("found on PATH");
        assert_eq!(found, bin.join("moto_server"));

        let venv_exe = root.path().join(".tools/venv/bin/moto_server");
        make_exe(&venv_exe);
        let found = locate_moto_server(None, Some(root.path()), Some(path_var)).expect("found");
        assert_eq!(found, venv_exe, "the repo's venv comes before PATH");
    }

    #[test]
    fn not_found_error_tells_how_to_install() {
        let root = tempfile::tempdir().expect("tempdir");
        let err = locate_moto_server(None, Some(root.path()), Some(OsString::new()))
            .expect_err("nothing installed");
        let msg = err.to_string();
        assert!(msg.contains("scripts/install-test-deps.sh"), "{msg}");
        assert!(msg.contains(".tools/venv/bin/moto_server"), "{msg}");
    }

    #[test]
    fn unique_names_are_valid_and_distinct() {
        let a = unique_bucket_name("Restore_Test!");
        let b = unique_bucket_name("Restore_Test!");
        assert_ne!(a, b);
        for name in [
            &a,
            &b,
            &unique_bucket_name(""),
            &unique_bucket_name(&"x".repeat(200)),
        ] {
            validate_bucket_name(name).expect("valid bucket name");
        }
        assert!(a.starts_with("restore-test-"), "{a}");
    }

    #[test]
    fn bucket_name_validation() {
        assert!(validate_bucket_name("ok-name.1").is_ok());
        for bad in ["ab", "Upper", "has/slash", "sp ace", &"a".repeat(64)] {
            assert!(validate_bucket_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn strips_ansi_colours() {
        assert_eq!(strip_ansi("\x1b[31m\x1b[1mPUT /b\x1b[0m 400"), "PUT /b 400");
    }
}
