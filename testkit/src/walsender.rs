//! A scriptable fake PostgreSQL walsender on loopback, for tests of the replication client
//! against flows and faults a real server cannot be made to produce on demand.
//!
//! The real servers of [`crate::pg`] are the reference; this fake complements them where a
//! test needs a server version that is not installed (13, 14), byte-exact control over how a
//! stream is cut into messages, or a broken server (a connection dropped mid-file, a malformed
//! message, a length field claiming a gigabyte, a server that stops sending).
//!
//! ```no_run
//! use pgkeep_testkit::walsender::{Archive, FakeWalsender, Script};
//! # fn main() -> std::io::Result<()> {
//! let mut script = Script::new("14.10");
//! script.base_backup.archives = vec![
//!     Archive::tablespace(16390, "/srv/ts", Vec::new()),
//!     Archive::data_directory(Vec::new()),
//! ];
//! script.base_backup.manifest = Some(b"{}".to_vec());
//! let fake = FakeWalsender::start(script)?;
//! let conn = fake.connstring(); // "host=127.0.0.1 port=… user=postgres dbname=postgres"
//! // ... run the client, then:
//! let queries = fake.queries(); // ["IDENTIFY_SYSTEM", ..., "BASE_BACKUP LABEL ..."]
//! # let _ = (conn, queries);
//! # Ok(())
//! # }
//! ```
//!
//! # What it speaks
//!
//! Per connection: an optional `SSLRequest` (or `GSSENCRequest`), answered with exactly one
//! byte `N`; the `StartupMessage`; `AuthenticationOk`, `ParameterStatus` (`server_version`
//! and the usual others), `BackendKeyData`, `ReadyForQuery`. Then simple queries:
//!
//! * `IDENTIFY_SYSTEM`: systemid, timeline, xlogpos, dbname (NULL).
//! * `SHOW wal_segment_size | block_size | data_directory_mode | server_version |
//!   server_version_num`.
//! * `BASE_BACKUP ...`: the start position, the tablespace rows (data directory last, NULL
//!   oid and location), then the archives and the manifest. For servers before 15 this is
//!   the legacy flow: one `CopyOutResponse` per archive with raw tar bytes in `CopyData` (no
//!   type byte) and no end-of-archive marker, then one more `CopyOutResponse` for the
//!   manifest. For 15 and later it is the single `CopyOutResponse` with `n`/`d`/`p`/`m`
//!   messages, and each tar gets the two terminating zero blocks appended, as the server
//!   does. Then the end position, `CommandComplete`, `ReadyForQuery`.
//! * Anything else: `ErrorResponse` SQLSTATE 42601, then `ReadyForQuery`.
//!
//! Command tags follow the server version: 14 and later end replication commands with a
//! `CommandComplete` carrying the command's name (`IDENTIFY_SYSTEM`, `SHOW`, `BASE_BACKUP`;
//! walsender.c `EndReplicationCommand`), 13 with `SELECT`. The position result sets of
//! `BASE_BACKUP` end with `SELECT` in every version (basebackup.c).
//!
//! # Faults
//!
//! A [`Fault`] fires once a given number of archive bytes went out (see [`Fault`] for the
//! exact point): the connection is dropped, the fake stops sending, or it sends a malformed
//! message, a message declaring 1 GiB, or an `ErrorResponse`. Archive bytes are split into
//! `CopyData` messages of the sizes in [`BaseBackupScript::chunk_sizes`], cycled, so headers
//! straddle messages.
//!
//! For byte-exact hostile answers, [`Script::raw_answers`] replaces the answer to any query
//! (by prefix: `IDENTIFY_SYSTEM`, `START_REPLICATION`, ...) with given bytes, built with
//! [`message`] or by hand with a forged length, then closes, hangs or goes on.
//!
//! The fake uses plain threads and blocking sockets; dropping the [`FakeWalsender`] shuts
//! every connection down and joins every thread.

use std::collections::VecDeque;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Largest frontend message the fake accepts (startup packets and queries are far smaller).
const MAX_FRONTEND_MESSAGE: usize = 1 << 20;
/// How long a connection thread waits for the client before giving up on it.
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
const PROTOCOL_3_0: i32 = 196_608;

const TEXT_OID: i32 = 25;
const INT4_OID: i32 = 23;
const INT8_OID: i32 = 20;
const OID_OID: i32 = 26;

/// One tar archive of a base backup: a tablespace, or the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// The tablespace's OID; `None` for the data directory.
    pub oid: Option<u32>,
    /// The tablespace's location; `None` for the data directory.
    pub location: Option<String>,
    /// The archive's bytes, without the end-of-archive marker (the 15+ flow appends it).
    pub tar: Vec<u8>,
    /// The size column of the tablespace row, in kB; `None` sends the tar's size rounded up.
    pub size_kb: Option<u64>,
}

impl Archive {
    pub fn data_directory(tar: Vec<u8>) -> Self {
        Self {
            oid: None,
            location: None,
            tar,
            size_kb: None,
        }
    }

    pub fn tablespace(oid: u32, location: impl Into<String>, tar: Vec<u8>) -> Self {
        Self {
            oid: Some(oid),
            location: Some(location.into()),
            tar,
            size_kb: None,
        }
    }
}

/// What a [`Fault`] does when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Closes the connection (both directions) between two messages.
    Drop,
    /// Sends the header of a `CopyData` message declaring 1000 bytes and 10 of them, then
    /// closes the connection: a cut inside a message.
    DropInsideMessage,
    /// Sends nothing more and keeps the connection open until the fake is dropped.
    Hang,
    /// Sends a `DataRow` whose only column declares 1000 bytes in a 13-byte message, then
    /// hangs.
    MalformedDataRow,
    /// Sends the header of a `CopyData` message declaring 1 GiB and 16 bytes of it, then
    /// hangs (a client that waited for the rest would wait forever).
    HugeLength,
    /// Sends an `ErrorResponse` with this SQLSTATE and message, then `ReadyForQuery`, and
    /// goes on serving queries (as a server does after, say, a checksum failure: XX001).
    Error { code: String, message: String },
}

/// A fault injected into the `BASE_BACKUP` stream.
///
/// It fires once `after_bytes` bytes of archive content (tar bytes, across all archives, not
/// counting the manifest or protocol framing) have been sent: the `CopyData` message that
/// would cross that point is cut there, its first part sent as a complete message, and the
/// action follows. With `after_bytes` at or beyond the total archive size it fires after the
/// last archive, before the manifest. Nothing is sent after it, except where
/// [`FaultAction::Error`] says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub after_bytes: u64,
    pub action: FaultAction,
}

/// The answer to `BASE_BACKUP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupScript {
    /// Start position (`X/X`) and timeline, the first result set.
    pub start_lsn: String,
    pub start_tli: u32,
    /// End position and timeline, the result set after the data.
    pub end_lsn: String,
    pub end_tli: u32,
    /// The archives in the order the server sends them: tablespaces, then the data
    /// directory LAST (as PostgreSQL does). The tablespace result set lists them in the same
    /// order.
    pub archives: Vec<Archive>,
    /// The backup_manifest bytes; `None` sends no manifest (as with `MANIFEST 'no'`).
    pub manifest: Option<Vec<u8>>,
    /// Sizes of the `CopyData` payloads archive and manifest bytes are cut into, used in
    /// turn and cycled (zeros are skipped). Empty: one message per archive.
    pub chunk_sizes: Vec<usize>,
    /// Sends `p` progress messages after each archive (15+ flow only).
    pub progress_messages: bool,
    pub fault: Option<Fault>,
}

impl Default for BaseBackupScript {
    fn default() -> Self {
        Self {
            start_lsn: "0/2000028".into(),
            start_tli: 1,
            end_lsn: "0/2000100".into(),
            end_tli: 1,
            archives: Vec::new(),
            manifest: None,
            chunk_sizes: vec![1, 511, 700, 4096],
            progress_messages: true,
            fault: None,
        }
    }
}

/// How the fake answers; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// `server_version` as reported in `ParameterStatus`, e.g. `14.10`.
    pub server_version: String,
    pub system_id: u64,
    pub timeline: u32,
    /// `xlogpos` of `IDENTIFY_SYSTEM`.
    pub xlogpos: String,
    /// `SHOW wal_segment_size`, e.g. `16MB`.
    pub wal_segment_size: String,
    /// `SHOW block_size`, e.g. `8192`.
    pub block_size: String,
    pub base_backup: BaseBackupScript,
    /// Answers sent verbatim instead of the normal ones (see [`RawAnswer`]); the first whose
    /// prefix matches a query wins. Empty: every query gets the normal answer.
    pub raw_answers: Vec<RawAnswer>,
}

/// A hostile or broken server's answer to one query: bytes sent exactly as given (whole,
/// truncated, malformed or out-of-order messages; build them with [`message`]), then
/// [`RawThen`]. Queries it does not match get the normal answer, so a test can let
/// `IDENTIFY_SYSTEM` pass and break `START_REPLICATION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAnswer {
    /// Matched case-insensitively against the start of the query, e.g. `IDENTIFY_SYSTEM`
    /// or `START_REPLICATION`.
    pub query_prefix: String,
    pub bytes: Vec<u8>,
    pub then: RawThen,
}

/// What the fake does after a [`RawAnswer`]'s bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawThen {
    /// Closes the connection (the client sees EOF).
    Close,
    /// Sends nothing more and keeps the connection open until the fake is dropped.
    Hang,
    /// Goes on reading and answering queries.
    Continue,
}

impl RawAnswer {
    pub fn new(query_prefix: impl Into<String>, bytes: Vec<u8>, then: RawThen) -> Self {
        Self {
            query_prefix: query_prefix.into(),
            bytes,
            then,
        }
    }
}

/// One backend message: `tag`, a length field that counts itself and `body`, then `body`.
/// For a forged length, write the bytes by hand.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Out::default();
    out.msg(tag, body);
    out.take()
}

impl Script {
    /// A server of version `server_version` (`14.10`, `13.2`, `15.4`...) with a 16 MB WAL
    /// segment size, 8 KiB blocks and an empty base backup.
    pub fn new(server_version: impl Into<String>) -> Self {
        Self {
            server_version: server_version.into(),
            system_id: 7_301_234_567_890_123_456,
            timeline: 1,
            xlogpos: "0/3000000".into(),
            wal_segment_size: "16MB".into(),
            block_size: "8192".into(),
            base_backup: BaseBackupScript::default(),
            raw_answers: Vec::new(),
        }
    }

    /// The major version (`14` for `14.10`, `9` for `9.6.1`); 0 if unreadable.
    pub fn major(&self) -> u32 {
        self.server_version
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }

    /// `server_version_num` as the server computes it (10 and later: major × 10000 + minor).
    pub fn version_num(&self) -> u32 {
        let mut parts = self
            .server_version
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u32>().unwrap_or(0));
        let major = parts.next().unwrap_or(0);
        let minor = parts.next().unwrap_or(0);
        if major >= 10 {
            major * 10000 + minor
        } else {
            major * 10000 + minor * 100 + parts.next().unwrap_or(0)
        }
    }
}

/// Everything the fake received, across connections, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// Connections accepted.
    pub connections: usize,
    /// `SSLRequest`s (each answered `N`).
    pub ssl_requests: usize,
    /// The parameters of each `StartupMessage`.
    pub startups: Vec<Vec<(String, String)>>,
    /// The text of each simple query.
    pub queries: Vec<String>,
    /// `Terminate` messages.
    pub terminates: usize,
}

#[derive(Debug, Default)]
struct Shared {
    script: Mutex<Option<Script>>,
    received: Mutex<Received>,
    stopping: AtomicBool,
    /// Signalled when the fake is dropped (wakes hanging connections).
    stop_lock: Mutex<bool>,
    stop_cv: Condvar,
    /// Each connection's socket (to shut down on drop) and thread.
    connections: Mutex<Vec<(TcpStream, JoinHandle<()>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn script(&self) -> Script {
        lock(&self.script)
            .clone()
            .unwrap_or_else(|| Script::new("14.10"))
    }

    fn record(&self, f: impl FnOnce(&mut Received)) {
        f(&mut lock(&self.received));
    }

    /// Blocks until the fake is dropped.
    fn wait_for_stop(&self) {
        let mut stopped = lock(&self.stop_lock);
        while !*stopped {
            stopped = self
                .stop_cv
                .wait(stopped)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A fake walsender listening on `127.0.0.1` (a free port); see the module documentation.
#[derive(Debug)]
pub struct FakeWalsender {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FakeWalsender {
    /// Starts listening; every connection is answered from `script`.
    pub fn start(script: Script) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script: Mutex::new(Some(script)),
            ..Shared::default()
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name(format!("fake-walsender-{}", addr.port()))
            .spawn(move || accept_loop(&listener, &accept_shared))?;
        Ok(Self {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A libpq connection string for the fake: `host=127.0.0.1 port=… user=postgres
    /// dbname=postgres` (no sslmode: the client's default `prefer` meets the `N` answer).
    pub fn connstring(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port()
        )
    }

    /// Replaces the script for connections accepted from now on.
    pub fn set_script(&self, script: Script) {
        *lock(&self.shared.script) = Some(script);
    }

    /// A copy of everything received so far.
    pub fn received(&self) -> Received {
        lock(&self.shared.received).clone()
    }

    /// The simple queries received so far, across connections.
    pub fn queries(&self) -> Vec<String> {
        lock(&self.shared.received).queries.clone()
    }
}

impl Drop for FakeWalsender {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        *lock(&self.shared.stop_lock) = true;
        self.shared.stop_cv.notify_all();
        // Wakes the blocking accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let connections = std::mem::take(&mut *lock(&self.shared.connections));
        for (sock, handle) in connections {
            let _ = sock.shutdown(Shutdown::Both);
            let _ = handle.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(sock) = conn else { continue };
        let Ok(handle_sock) = sock.try_clone() else {
            continue;
        };
        shared.record(|r| r.connections += 1);
        let script = shared.script();
        let conn_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name("fake-walsender-conn".into())
            .spawn(move || {
                // Errors end the connection; the client sees the socket close.
                let _ = serve(sock, &script, &conn_shared);
            });
        if let Ok(handle) = spawned {
            lock(&shared.connections).push((handle_sock, handle));
        }
    }
}

/// Backend messages, built into a byte buffer.
#[derive(Debug, Default)]
struct Out(Vec<u8>);

impl Out {
    fn msg(&mut self, tag: u8, body: &[u8]) {
        self.0.push(tag);
        self.0
            .extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        self.0.extend_from_slice(body);
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

fn cstr(body: &mut Vec<u8>, s: &str) {
    body.extend_from_slice(s.as_bytes());
    body.push(0);
}

fn row_description(out: &mut Out, columns: &[(&str, i32)]) {
    let mut b = Vec::new();
    b.extend_from_slice(&(columns.len() as i16).to_be_bytes());
    for (name, type_oid) in columns {
        cstr(&mut b, name);
        b.extend_from_slice(&0i32.to_be_bytes()); // table oid
        b.extend_from_slice(&0i16.to_be_bytes()); // column number
        b.extend_from_slice(&type_oid.to_be_bytes());
        let typlen: i16 = match *type_oid {
            INT8_OID => 8,
            INT4_OID | OID_OID => 4,
            _ => -1,
        };
        b.extend_from_slice(&typlen.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes()); // typmod
        b.extend_from_slice(&0i16.to_be_bytes()); // text format
    }
    out.msg(b'T', &b);
}

fn data_row(out: &mut Out, values: &[Option<&[u8]>]) {
    let mut b = Vec::new();
    b.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        match v {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
        }
    }
    out.msg(b'D', &b);
}

fn command_complete(out: &mut Out, tag: &str) {
    let mut b = Vec::new();
    cstr(&mut b, tag);
    out.msg(b'C', &b);
}

fn ready_for_query(out: &mut Out) {
    out.msg(b'Z', b"I");
}

fn error_response(out: &mut Out, code: &str, message: &str) {
    let mut b = Vec::new();
    for (field, value) in [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', code),
        (b'M', message),
    ] {
        b.push(field);
        cstr(&mut b, value);
    }
    b.push(0);
    out.msg(b'E', &b);
}

fn copy_out_response(out: &mut Out) {
    // Overall format 0 (text/binary does not matter for COPY of raw bytes), no columns.
    out.msg(b'H', &[0, 0, 0]);
}

/// One result set of a single text row, as the walsender sends its small answers.
fn single_row(out: &mut Out, columns: &[(&str, i32)], values: &[Option<&[u8]>], tag: &str) {
    row_description(out, columns);
    data_row(out, values);
    command_complete(out, tag);
}

fn read_exact_or_eof(sock: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match sock.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn read_len(sock: &mut impl Read, len_bytes: [u8; 4]) -> io::Result<Vec<u8>> {
    let len = i32::from_be_bytes(len_bytes);
    let body_len = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_sub(4))
        .filter(|l| *l <= MAX_FRONTEND_MESSAGE)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad message length"))?;
    let mut body = vec![0; body_len];
    sock.read_exact(&mut body)?;
    Ok(body)
}

fn parse_startup(body: &[u8]) -> Vec<(String, String)> {
    let mut fields = body
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned());
    let mut params = Vec::new();
    while let Some(name) = fields.next() {
        if name.is_empty() {
            break;
        }
        params.push((name, fields.next().unwrap_or_default()));
    }
    params
}

fn serve(sock: TcpStream, script: &Script, shared: &Shared) -> io::Result<()> {
    sock.set_read_timeout(Some(CLIENT_IDLE_TIMEOUT))?;
    sock.set_nodelay(true)?;
    let mut reader = sock.try_clone()?;
    let mut conn = Conn {
        w: BufWriter::with_capacity(64 << 10, sock),
        script,
        shared,
    };

    // Startup: SSLRequest / GSSENCRequest are refused with exactly one byte.
    loop {
        let mut len = [0u8; 4];
        if !read_exact_or_eof(&mut reader, &mut len)? {
            return Ok(());
        }
        let body = read_len(&mut reader, len)?;
        let code = body
            .get(..4)
            .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .unwrap_or(0);
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                if code == SSL_REQUEST {
                    shared.record(|r| r.ssl_requests += 1);
                }
                conn.w.write_all(b"N")?;
                conn.w.flush()?;
            }
            PROTOCOL_3_0 => {
                let params = parse_startup(&body[4..]);
                shared.record(|r| r.startups.push(params));
                break;
            }
            CANCEL_REQUEST => return Ok(()),
            _ => {
                let mut out = Out::default();
                error_response(&mut out, "08P01", "unsupported frontend protocol");
                conn.w.write_all(&out.take())?;
                conn.w.flush()?;
                return Ok(());
            }
        }
    }

    let mut out = Out::default();
    out.msg(b'R', &0i32.to_be_bytes());
    for (name, value) in [
        ("application_name", "pgkeep"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("server_encoding", "UTF8"),
        ("server_version", script.server_version.as_str()),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
    ] {
        let mut b = Vec::new();
        cstr(&mut b, name);
        cstr(&mut b, value);
        out.msg(b'S', &b);
    }
    let mut key = Vec::new();
    key.extend_from_slice(&4242i32.to_be_bytes());
    key.extend_from_slice(&0x5eed_i32.to_be_bytes());
    out.msg(b'K', &key);
    ready_for_query(&mut out);
    conn.w.write_all(&out.take())?;
    conn.w.flush()?;

    loop {
        let mut tag = [0u8; 1];
        if !read_exact_or_eof(&mut reader, &mut tag)? {
            return Ok(());
        }
        let mut len = [0u8; 4];
        reader.read_exact(&mut len)?;
        let body = read_len(&mut reader, len)?;
        match tag[0] {
            b'Q' => {
                let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
                let query = String::from_utf8_lossy(&body[..end]).into_owned();
                shared.record(|r| r.queries.push(query.clone()));
                if conn.answer(&query)? == Flow::Stop {
                    return Ok(());
                }
            }
            b'X' => {
                shared.record(|r| r.terminates += 1);
                return Ok(());
            }
            // CopyData/CopyDone/Sync/Flush and anything else: nothing to answer.
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The connection is over (dropped by a fault, or the fake is stopping).
    Stop,
}

struct Conn<'a> {
    w: BufWriter<TcpStream>,
    script: &'a Script,
    shared: &'a Shared,
}

/// Cycles through the configured CopyData sizes.
struct Splitter {
    sizes: VecDeque<usize>,
}

impl Splitter {
    fn new(sizes: &[usize]) -> Self {
        Self {
            sizes: sizes.iter().copied().filter(|s| *s > 0).collect(),
        }
    }

    fn next(&mut self, remaining: usize) -> usize {
        match self.sizes.pop_front() {
            None => remaining,
            Some(s) => {
                self.sizes.push_back(s);
                s.min(remaining)
            }
        }
    }
}

impl Conn<'_> {
    fn send(&mut self, out: &mut Out) -> io::Result<()> {
        self.w.write_all(&out.take())
    }

    fn answer(&mut self, query: &str) -> io::Result<Flow> {
        let s = self.script;
        let tag = |name: &'static str| if s.major() >= 14 { name } else { "SELECT" };
        let q = query.trim().trim_end_matches(';').trim();
        let upper = q.to_ascii_uppercase();
        let mut out = Out::default();
        if let Some(raw) = s
            .raw_answers
            .iter()
            .find(|r| upper.starts_with(&r.query_prefix.to_ascii_uppercase()))
        {
            self.w.write_all(&raw.bytes)?;
            self.w.flush()?;
            return Ok(match raw.then {
                RawThen::Continue => Flow::Continue,
                RawThen::Close => {
                    let _ = self.w.get_ref().shutdown(Shutdown::Both);
                    Flow::Stop
                }
                RawThen::Hang => {
                    self.shared.wait_for_stop();
                    Flow::Stop
                }
            });
        }
        if upper == "IDENTIFY_SYSTEM" {
            let system_id = s.system_id.to_string();
            let timeline = s.timeline.to_string();
            single_row(
                &mut out,
                &[
                    ("systemid", TEXT_OID),
                    ("timeline", INT4_OID),
                    ("xlogpos", TEXT_OID),
                    ("dbname", TEXT_OID),
                ],
                &[
                    Some(system_id.as_bytes()),
                    Some(timeline.as_bytes()),
                    Some(s.xlogpos.as_bytes()),
                    None,
                ],
                tag("IDENTIFY_SYSTEM"),
            );
        } else if let Some(name) = upper.strip_prefix("SHOW ") {
            let name = name.trim().to_ascii_lowercase();
            let version_num = s.version_num().to_string();
            let value = match name.as_str() {
                "wal_segment_size" => Some(s.wal_segment_size.as_str()),
                "block_size" => Some(s.block_size.as_str()),
                "data_directory_mode" => Some("0700"),
                "server_version" => Some(s.server_version.as_str()),
                "server_version_num" => Some(version_num.as_str()),
                _ => None,
            };
            match value {
                Some(v) => single_row(
                    &mut out,
                    &[(name.as_str(), TEXT_OID)],
                    &[Some(v.as_bytes())],
                    tag("SHOW"),
                ),
                None => error_response(
                    &mut out,
                    "42704",
                    &format!("unrecognized configuration parameter \"{name}\""),
                ),
            }
        } else if upper == "BASE_BACKUP" || upper.starts_with("BASE_BACKUP ") {
            return self.base_backup();
        } else {
            error_response(
                &mut out,
                "42601",
                &format!("syntax error in replication command {q:?} (fake walsender)"),
            );
        }
        ready_for_query(&mut out);
        self.send(&mut out)?;
        self.w.flush()?;
        Ok(Flow::Continue)
    }

    fn base_backup(&mut self) -> io::Result<Flow> {
        let s = self.script;
        let bb = &s.base_backup;
        let modern = s.major() >= 15;
        let mut out = Out::default();

        let start_tli = bb.start_tli.to_string();
        single_row(
            &mut out,
            &[("recptr", TEXT_OID), ("tli", INT8_OID)],
            &[Some(bb.start_lsn.as_bytes()), Some(start_tli.as_bytes())],
            "SELECT",
        );
        row_description(
            &mut out,
            &[
                ("spcoid", OID_OID),
                ("spclocation", TEXT_OID),
                ("size", INT8_OID),
            ],
        );
        let rows: Vec<(Option<String>, Option<String>, String)> = bb
            .archives
            .iter()
            .map(|a| {
                (
                    a.oid.map(|o| o.to_string()),
                    a.location.clone(),
                    a.size_kb
                        .unwrap_or_else(|| (a.tar.len() as u64).div_ceil(1024))
                        .to_string(),
                )
            })
            .collect();
        for (oid, location, size) in &rows {
            data_row(
                &mut out,
                &[
                    oid.as_deref().map(str::as_bytes),
                    location.as_deref().map(str::as_bytes),
                    Some(size.as_bytes()),
                ],
            );
        }
        command_complete(&mut out, "SELECT");
        self.send(&mut out)?;

        let mut stream = Stream {
            split: Splitter::new(&bb.chunk_sizes),
            sent: 0,
            fault: bb.fault.as_ref(),
            fired: false,
        };
        let total: u64 = bb.archives.iter().map(|a| a.tar.len() as u64).sum();
        if modern {
            copy_out_response(&mut out);
            self.send(&mut out)?;
        }
        for a in &bb.archives {
            if modern {
                let mut b = vec![b'n'];
                match a.oid {
                    Some(oid) => cstr(&mut b, &format!("{oid}.tar")),
                    None => cstr(&mut b, "base.tar"),
                }
                cstr(&mut b, a.location.as_deref().unwrap_or(""));
                out.msg(b'd', &b);
                self.send(&mut out)?;
                if let Some(flow) = self.archive_bytes(&mut stream, &a.tar, true)? {
                    return Ok(flow);
                }
                // 15+ terminates every archive with two zero blocks (not archive content
                // for fault counting).
                self.chunked(&mut stream.split, &[0u8; 1024], Some(b'd'))?;
                if bb.progress_messages {
                    let mut p = vec![b'p'];
                    p.extend_from_slice(&stream.sent.to_be_bytes());
                    out.msg(b'd', &p);
                    self.send(&mut out)?;
                }
            } else {
                copy_out_response(&mut out);
                self.send(&mut out)?;
                if let Some(flow) = self.archive_bytes(&mut stream, &a.tar, false)? {
                    return Ok(flow);
                }
                out.msg(b'c', &[]);
                self.send(&mut out)?;
            }
        }
        if !stream.fired && stream.fault.is_some_and(|f| f.after_bytes >= total) {
            if let Some(flow) = self.fire(&mut stream)? {
                return Ok(flow);
            }
        }
        if let Some(manifest) = &bb.manifest {
            if modern {
                out.msg(b'd', b"m");
                self.send(&mut out)?;
                self.chunked(&mut stream.split, manifest, Some(b'd'))?;
            } else {
                copy_out_response(&mut out);
                self.send(&mut out)?;
                self.chunked(&mut stream.split, manifest, None)?;
                out.msg(b'c', &[]);
                self.send(&mut out)?;
            }
        }
        if modern {
            out.msg(b'c', &[]);
        }
        let end_tli = bb.end_tli.to_string();
        single_row(
            &mut out,
            &[("recptr", TEXT_OID), ("tli", INT8_OID)],
            &[Some(bb.end_lsn.as_bytes()), Some(end_tli.as_bytes())],
            "SELECT",
        );
        command_complete(
            &mut out,
            if s.major() >= 14 {
                "BASE_BACKUP"
            } else {
                "SELECT"
            },
        );
        ready_for_query(&mut out);
        self.send(&mut out)?;
        self.w.flush()?;
        Ok(Flow::Continue)
    }

    /// Sends `data` as CopyData messages cut by `split`; with `type_byte`, each payload
    /// starts with it (15+ flow).
    fn chunked(
        &mut self,
        split: &mut Splitter,
        data: &[u8],
        type_byte: Option<u8>,
    ) -> io::Result<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let n = split.next(rest.len());
            let (piece, tail) = rest.split_at(n);
            self.copy_data(piece, type_byte)?;
            rest = tail;
        }
        Ok(())
    }

    fn copy_data(&mut self, piece: &[u8], type_byte: Option<u8>) -> io::Result<()> {
        let mut out = Out::default();
        match type_byte {
            Some(t) => {
                let mut b = Vec::with_capacity(piece.len() + 1);
                b.push(t);
                b.extend_from_slice(piece);
                out.msg(b'd', &b);
            }
            None => out.msg(b'd', piece),
        }
        self.send(&mut out)
    }

    /// Sends one archive's bytes, firing the fault where it falls. `Some(flow)` if the
    /// fault ended the response.
    fn archive_bytes(
        &mut self,
        stream: &mut Stream<'_>,
        tar: &[u8],
        modern: bool,
    ) -> io::Result<Option<Flow>> {
        let type_byte = modern.then_some(b'd');
        let mut rest = tar;
        while !rest.is_empty() {
            let n = stream.split.next(rest.len());
            let (mut piece, tail) = rest.split_at(n);
            let cut = match stream.fault {
                Some(f) if !stream.fired && stream.sent + n as u64 > f.after_bytes => {
                    // after_bytes - sent < n, so it fits in usize.
                    piece = &piece[..(f.after_bytes - stream.sent) as usize];
                    true
                }
                _ => false,
            };
            if !piece.is_empty() {
                self.copy_data(piece, type_byte)?;
                stream.sent += piece.len() as u64;
            }
            if cut {
                if let Some(flow) = self.fire(stream)? {
                    return Ok(Some(flow));
                }
                // The fault let the stream go on (an ErrorResponse ends the command too).
                return Ok(Some(Flow::Continue));
            }
            rest = tail;
        }
        Ok(None)
    }

    /// Carries out the fault. `Some(flow)` when the response is over.
    fn fire(&mut self, stream: &mut Stream<'_>) -> io::Result<Option<Flow>> {
        stream.fired = true;
        let Some(fault) = stream.fault else {
            return Ok(None);
        };
        let mut out = Out::default();
        match &fault.action {
            FaultAction::Drop => {
                self.w.flush()?;
                let _ = self.w.get_ref().shutdown(Shutdown::Both);
                Ok(Some(Flow::Stop))
            }
            FaultAction::DropInsideMessage => {
                out.0.push(b'd');
                out.0.extend_from_slice(&1004i32.to_be_bytes());
                out.0.extend_from_slice(&[0u8; 10]);
                self.send(&mut out)?;
                self.w.flush()?;
                let _ = self.w.get_ref().shutdown(Shutdown::Both);
                Ok(Some(Flow::Stop))
            }
            FaultAction::Hang => {
                self.w.flush()?;
                self.shared.wait_for_stop();
                Ok(Some(Flow::Stop))
            }
            FaultAction::MalformedDataRow => {
                let mut b = Vec::new();
                b.extend_from_slice(&1i16.to_be_bytes());
                b.extend_from_slice(&1000i32.to_be_bytes());
                b.extend_from_slice(b"0/2");
                out.msg(b'D', &b);
                self.send(&mut out)?;
                self.w.flush()?;
                self.shared.wait_for_stop();
                Ok(Some(Flow::Stop))
            }
            FaultAction::HugeLength => {
                out.0.push(b'd');
                out.0.extend_from_slice(&((1i32 << 30) + 4).to_be_bytes());
                out.0.extend_from_slice(&[0x55u8; 16]);
                self.send(&mut out)?;
                self.w.flush()?;
                self.shared.wait_for_stop();
                Ok(Some(Flow::Stop))
            }
            FaultAction::Error { code, message } => {
                error_response(&mut out, code, message);
                ready_for_query(&mut out);
                self.send(&mut out)?;
                self.w.flush()?;
                Ok(Some(Flow::Continue))
            }
        }
    }
}

/// Progress of one `BASE_BACKUP` response.
struct Stream<'a> {
    split: Splitter,
    /// Archive bytes sent so far.
    sent: u64,
    fault: Option<&'a Fault>,
    fired: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads one backend message: (tag, body).
    fn read_msg(s: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).expect("message header");
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).expect("message body");
        (head[0], body)
    }

    fn startup(s: &mut TcpStream) {
        s.write_all(&[0, 0, 0, 8, 4, 210, 22, 47])
            .expect("ssl request");
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).expect("answer");
        assert_eq!(&answer, b"N");
        let mut body = Vec::new();
        body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        body.extend_from_slice(b"user\0postgres\0replication\0true\0\0");
        let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        s.write_all(&msg).expect("startup");
        loop {
            let (tag, _) = read_msg(s);
            if tag == b'Z' {
                break;
            }
        }
    }

    fn query(s: &mut TcpStream, q: &str) {
        let mut body = q.as_bytes().to_vec();
        body.push(0);
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        msg.extend_from_slice(&body);
        s.write_all(&msg).expect("query");
    }

    #[test]
    fn legacy_flow_message_sequence() {
        let mut script = Script::new("14.10");
        script.base_backup.archives = vec![
            Archive::tablespace(16390, "/srv/ts", vec![1u8; 1500]),
            Archive::data_directory(vec![2u8; 700]),
        ];
        script.base_backup.manifest = Some(b"{\"manifest\": 1}".to_vec());
        script.base_backup.chunk_sizes = vec![1, 511, 700, 4096];
        let fake = FakeWalsender::start(script).expect("start");
        let mut s = TcpStream::connect(fake.addr()).expect("connect");
        startup(&mut s);
        query(&mut s, "IDENTIFY_SYSTEM");
        let tags: Vec<u8> = (0..4).map(|_| read_msg(&mut s).0).collect();
        assert_eq!(tags, b"TDCZ");
        query(&mut s, "BASE_BACKUP LABEL 'x'");
        let mut seq = Vec::new();
        let mut copies: Vec<Vec<u8>> = Vec::new();
        loop {
            let (tag, body) = read_msg(&mut s);
            seq.push(tag);
            match tag {
                b'H' => copies.push(Vec::new()),
                b'd' => copies
                    .last_mut()
                    .expect("copy open")
                    .extend_from_slice(&body),
                b'Z' => break,
                _ => {}
            }
        }
        let text = String::from_utf8(seq).expect("ascii");
        // start set; tablespace set (2 rows); 2 archives; the manifest; end set; tags.
        assert!(text.starts_with("TDCTDDCH"), "{text}");
        assert!(text.ends_with("cHdcTDCCZ"), "{text}");
        assert_eq!(copies.len(), 3);
        assert_eq!(copies[0], vec![1u8; 1500]);
        assert_eq!(copies[1], vec![2u8; 700]);
        assert_eq!(copies[2], b"{\"manifest\": 1}");
        query(&mut s, "NONSENSE");
        let (tag, body) = read_msg(&mut s);
        assert_eq!(tag, b'E');
        assert!(String::from_utf8_lossy(&body).contains("42601"));
        assert_eq!(read_msg(&mut s).0, b'Z');
        let r = fake.received();
        assert_eq!(r.ssl_requests, 1);
        assert_eq!(
            r.queries,
            ["IDENTIFY_SYSTEM", "BASE_BACKUP LABEL 'x'", "NONSENSE"]
        );
    }

    #[test]
    fn drop_fault_cuts_at_the_byte() {
        let mut script = Script::new("14.10");
        script.base_backup.archives = vec![Archive::data_directory(vec![3u8; 5000])];
        script.base_backup.fault = Some(Fault {
            after_bytes: 1234,
            action: FaultAction::Drop,
        });
        let fake = FakeWalsender::start(script).expect("start");
        let mut s = TcpStream::connect(fake.addr()).expect("connect");
        startup(&mut s);
        query(&mut s, "BASE_BACKUP");
        let mut got = 0;
        let mut all = Vec::new();
        s.read_to_end(&mut all).expect("read to close");
        let mut rest = &all[..];
        while rest.len() >= 5 {
            let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if rest[0] == b'd' {
                got += len - 4;
            }
            rest = &rest[1 + len..];
        }
        assert_eq!(got, 1234);
    }

    #[test]
    fn hanging_connection_ends_when_the_fake_is_dropped() {
        let mut script = Script::new("13.2");
        script.base_backup.archives = vec![Archive::data_directory(vec![3u8; 100])];
        script.base_backup.fault = Some(Fault {
            after_bytes: 10,
            action: FaultAction::Hang,
        });
        let fake = FakeWalsender::start(script).expect("start");
        let mut s = TcpStream::connect(fake.addr()).expect("connect");
        startup(&mut s);
        query(&mut s, "BASE_BACKUP");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut buf = vec![0u8; 4096];
        let mut n = 0;
        loop {
            match s.read(&mut buf[n..]) {
                Ok(0) => panic!("closed"),
                Ok(k) => n += k,
                Err(_) => break,
            }
        }
        assert!(n > 0);
        drop(fake); // joins the hanging thread
    }
}
