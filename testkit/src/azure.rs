//! A real Azure Blob Storage emulator on loopback: Azurite's blob service.
//!
//! Why Azurite: it is Microsoft's own emulator, an npm package (installable here), and it
//! speaks the Blob REST API with Shared Key signing, conditional puts (`If-None-Match: *`)
//! and block-list uploads, so pgkeep's `az://` stores are exercised over real HTTP the way
//! `object_store`'s Azure client talks to Azure. Run blob-only, in memory, telemetry off.

use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::http::{self, HttpResponse};
use crate::s3::{self, Error, INSTALL_HINT};

/// Environment variable naming the `azurite-blob` executable to use, ahead of the
/// repository's `.tools/azurite` and `PATH`.
pub const AZURITE_ENV: &str = "PGKEEP_AZURITE_BLOB";

/// Azurite's well-known development account and key: public (documented by Microsoft for
/// the emulator), accepted by Azurite only, never by Azure.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
pub const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The Blob REST API version this wrapper's own requests use.
const API_VERSION: &str = "2021-08-06";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
const START_ATTEMPTS: usize = 3;

/// An Azurite blob server on `127.0.0.1`, private to this handle, state in memory.
///
/// Dropping the handle kills the server; if the test process exits first, the same shell
/// watchdog as [`crate::S3Server`]'s kills it. Share one server ([`AzuriteServer::shared`])
/// and isolate tests with [`AzuriteServer::unique_container`].
#[derive(Debug)]
pub struct AzuriteServer {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    _dir: TempDir,
}

impl AzuriteServer {
    /// Starts Azurite's blob service on a free port of 127.0.0.1 and waits until it answers.
    ///
    /// The executable is `$PGKEEP_AZURITE_BLOB`, else `<repo>/.tools/azurite/node_modules/.bin/azurite-blob`
    /// (what `scripts/install-test-deps.sh` installs), else `azurite-blob` on `PATH`.
    pub fn start() -> Result<AzuriteServer, Error> {
        let exe = find_azurite()?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&exe) {
                Ok(server) => return Ok(server),
                Err((true, e)) => last = Some(e),
                Err((false, e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::new("azurite-blob did not start")))
    }

    /// The server shared by all tests of this process, started on first use (a failed start
    /// is remembered and reported to every test).
    pub fn shared() -> Result<&'static AzuriteServer, Error> {
        static SHARED: OnceLock<Result<AzuriteServer, Error>> = OnceLock::new();
        SHARED
            .get_or_init(AzuriteServer::start)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The account's blob endpoint, `http://127.0.0.1:PORT/devstoreaccount1` (path-style, as
    /// Azurite serves a plain IP address).
    pub fn endpoint(&self) -> String {
        format!("http://{}/{DEV_ACCOUNT}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Azurite's log, for debugging a failing test; deleted with the server.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// `az://CONTAINER`, the URL form pgkeep's repository locations use.
    pub fn container_url(&self, container: &str) -> String {
        format!("az://{container}")
    }

    /// The `AZURE_*` environment that pgkeep (its `az://` stores read `AZURE_*` variables, or
    /// the same names lower-cased as storage options) needs to reach this server: the dev
    /// account, its key, the endpoint, and plain HTTP allowed.
    ///
    /// Why an explicit endpoint rather than `AZURE_STORAGE_USE_EMULATOR`: the emulator switch
    /// takes its address from `AZURITE_BLOB_STORAGE_URL`, which `object_store` reads from the
    /// process environment itself, so parallel tests with different ports would race.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AZURE_STORAGE_ACCOUNT_NAME", DEV_ACCOUNT.to_owned()),
            ("AZURE_STORAGE_ACCOUNT_KEY", DEV_ACCOUNT_KEY.to_owned()),
            ("AZURE_STORAGE_ENDPOINT", self.endpoint()),
            ("AZURE_ALLOW_HTTP", "true".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Creates container `name` (Create Container, signed with the dev account's key).
    pub fn create_container(&self, name: &str) -> Result<(), Error> {
        validate_container_name(name)?;
        let path = format!("/{DEV_ACCOUNT}/{name}?restype=container");
        let response = self.signed_request("PUT", &path)?;
        if response.is_success() {
            Ok(())
        } else {
            Err(Error::new(format!(
                "creating container {name:?} on {}: HTTP {}: {}",
                self.endpoint(),
                response.status,
                response.body_text()
            )))
        }
    }

    /// Creates a container with a fresh name starting with (a sanitised form of) `prefix`.
    pub fn unique_container(&self, prefix: &str) -> Result<String, Error> {
        let mut name = s3::unique_bucket_name(prefix);
        while name.contains("--") {
            name = name.replace("--", "-");
        }
        self.create_container(&name)?;
        Ok(name)
    }

    /// Sends one body-less request signed with Shared Key (`path` is account-relative, e.g.
    /// `/devstoreaccount1/c?restype=container`; query keys must be lower-case).
    pub fn signed_request(&self, method: &str, path: &str) -> Result<HttpResponse, Error> {
        let date = http_date(SystemTime::now());
        let auth = shared_key_authorization(method, path, &date);
        let headers = [
            ("x-ms-date", date.as_str()),
            ("x-ms-version", API_VERSION),
            ("Authorization", auth.as_str()),
        ];
        http::send(self.addr, method, path, &headers, b"", REQUEST_TIMEOUT).map_err(|e| {
            Error::new(format!(
                "{method} {path} to Azurite at {}: {e} (log: {})",
                self.endpoint(),
                self.log_path.display()
            ))
        })
    }

    /// `Err((port_taken, error))`.
    fn start_once(exe: &Path) -> Result<AzuriteServer, (bool, Error)> {
        let fatal = |what: &str, e: std::io::Error| (false, Error::new(format!("{what}: {e}")));
        let dir = tempfile::Builder::new()
            .prefix("pgkeep-azurite-")
            .tempdir()
            .map_err(|e| fatal("creating Azurite's directory", e))?;
        let log_path = dir.path().join("azurite.log");
        let log = File::create(&log_path).map_err(|e| fatal("creating Azurite's log", e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| fatal("duplicating Azurite's log", e))?;
        let addr =
            s3::free_loopback_addr().map_err(|e| fatal("finding a free port on 127.0.0.1", e))?;
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(s3::WATCHDOG)
            .arg("pgkeep-azurite-watchdog")
            .arg(dir.path())
            .arg(exe)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &addr.port().to_string(),
            ])
            // In memory: nothing to clean up, and fast. No telemetry: the test network is
            // loopback only. Any API version: object_store may be newer than this Azurite.
            .args([
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--skipApiVersionCheck",
            ])
            // (`--location` and in-memory exclude each other; anything Azurite might still
            // write, such as a debug log, lands in the private directory.)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| fatal(&format!("spawning {}", exe.display()), e))?;
        let mut server = AzuriteServer {
            child,
            addr,
            log_path,
            _dir: dir,
        };
        server.wait_ready(exe)?;
        Ok(server)
    }

    fn wait_ready(&mut self, exe: &Path) -> Result<(), (bool, Error)> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let tail = s3::log_tail(&self.log_path);
                let taken = tail.contains("EADDRINUSE");
                return Err((
                    taken,
                    Error::new(format!(
                        "{} on port {} exited ({status}) before answering; log tail:\n{tail}",
                        exe.display(),
                        self.port()
                    )),
                ));
            }
            // Only Azurite's own answer counts (it names itself in `Server`).
            if let Ok(r) = http::send(self.addr, "GET", "/", &[], b"", PROBE_TIMEOUT) {
                if r.header("Server").is_some_and(|s| s.contains("Azurite")) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err((
                    false,
                    Error::new(format!(
                        "{} on port {} did not answer within {}s; log tail:\n{}",
                        exe.display(),
                        self.port(),
                        START_TIMEOUT.as_secs(),
                        s3::log_tail(&self.log_path)
                    )),
                ));
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
    }
}

impl Drop for AzuriteServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_azurite() -> Result<PathBuf, Error> {
    if let Some(exe) = std::env::var_os(AZURITE_ENV).filter(|v| !v.is_empty()) {
        let exe = PathBuf::from(exe);
        return if s3::is_executable(&exe) {
            Ok(exe)
        } else {
            Err(Error::new(format!(
                "{AZURITE_ENV}={} is not an executable file; unset it, or {INSTALL_HINT}",
                exe.display()
            )))
        };
    }
    let mut looked = vec![format!("${AZURITE_ENV} (unset)")];
    if let Some(root) = s3::repo_root() {
        let exe = root.join(".tools/azurite/node_modules/.bin/azurite-blob");
        if s3::is_executable(&exe) {
            return Ok(exe);
        }
        looked.push(exe.display().to_string());
    }
    if let Some(path_var) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path_var) {
            let exe = dir.join("azurite-blob");
            if s3::is_executable(&exe) {
                return Ok(exe);
            }
        }
    }
    looked.push("PATH".to_owned());
    Err(Error::new(format!(
        "azurite-blob (Azure's storage emulator, needed by this test) was not found; looked at: \
         {}. To install it, {INSTALL_HINT}",
        looked.join(", ")
    )))
}

/// Azure's rules: 3 to 63 of `a-z 0-9 -`, starting with a letter or digit, no `--`.
fn validate_container_name(name: &str) -> Result<(), Error> {
    let ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(Error::new(format!(
            "invalid container name {name:?}: Azure wants 3 to 63 characters of a-z, 0-9 and \
             single '-', starting and ending with a letter or digit"
        )))
    }
}

/// `Authorization: SharedKey account:signature` for a body-less request (Blob service
/// Shared Key, API version 2015-02-21 or later). Azurite's path-style URLs carry the account
/// in the path, so the canonical resource names it twice, as `object_store` signs it.
fn shared_key_authorization(method: &str, path_and_query: &str, date: &str) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut params: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    params.sort();
    let mut to_sign = format!("{method}\n");
    // Content-Encoding .. Range: eleven empty standard headers.
    to_sign.push_str(&"\n".repeat(11));
    let _ = write!(to_sign, "x-ms-date:{date}\nx-ms-version:{API_VERSION}\n");
    let _ = write!(to_sign, "/{DEV_ACCOUNT}{path}");
    for (k, v) in params {
        let _ = write!(to_sign, "\n{k}:{v}");
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(DEV_ACCOUNT_KEY).expect("the dev key is base64");
    format!(
        "SharedKey {DEV_ACCOUNT}:{}",
        b64.encode(hmac_sha256(&key, to_sign.as_bytes()))
    )
}

/// HMAC-SHA256 (RFC 2104), so the testkit needs no HMAC crate for one signature.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// RFC 1123 date (`Sun, 06 Nov 1994 08:49:37 GMT`), as `x-ms-date` wants.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_match_known_instants() {
        let at = |s: u64| http_date(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(1_709_208_000), "Thu, 29 Feb 2024 12:00:00 GMT");
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn container_names_follow_azure_rules() {
        assert!(validate_container_name("ok-name-1").is_ok());
        for bad in ["ab", "Upper", "a--b", "-lead", "trail-", "dot.ted"] {
            assert!(validate_container_name(bad).is_err(), "{bad}");
        }
    }
}
