//! An async connection to PostgreSQL: socket (TCP or Unix), TLS per `sslmode`, startup,
//! authentication (trust, cleartext, MD5, SCRAM-SHA-256, SCRAM-SHA-256-PLUS), the simple
//! query protocol, and COPY streams. Replication commands are simple queries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::backend::{self, AuthRequest, BackendMessage};
use super::{tls, wire, PgError, ServerError};
use crate::conninfo::{ChannelBinding as BindingPolicy, ConnConfig, Host, SslMode};

/// What kind of session to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationMode {
    /// An ordinary session.
    None,
    /// A physical walsender (`replication=true`): base backups and WAL streaming.
    Physical,
    /// A logical walsender (`replication=database`).
    Logical,
}

/// One step of a query's response, as the caller consumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    RowDescription(Vec<String>),
    DataRow(Vec<Option<Bytes>>),
    CommandComplete(String),
    EmptyQuery,
    CopyOut,
    CopyIn,
    CopyBoth,
    CopyData(Bytes),
    CopyDone,
    ReadyForQuery,
}

/// The rows of one result set: values as text (`T = String`, invalid UTF-8 replaced), or as
/// the bytes the server sent (`T = Vec<u8>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultSet<T = String> {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<T>>>,
    pub tag: String,
}

impl<T> Default for ResultSet<T> {
    fn default() -> Self {
        Self {
            columns: Vec::new(),
            rows: Vec::new(),
            tag: String::new(),
        }
    }
}

/// One connection attempt's credentials: the password is resolved per host (`.pgpass`
/// lines may differ by host) and zeroed on drop.
struct Login<'a> {
    cfg: &'a ConnConfig,
    password: Option<zeroize::Zeroizing<String>>,
    mode: ReplicationMode,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An open, authenticated connection.
pub struct PgConnection {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    target: String,
    params: HashMap<String, String>,
    read_timeout: Option<Duration>,
    tls: bool,
}

impl std::fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnection")
            .field("target", &self.target)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

fn closed(during: &str) -> PgError {
    PgError::Closed(format!(" during {during}"))
}

impl PgConnection {
    /// Connects to the first reachable host of `cfg` (libpq tries them in order).
    pub async fn connect(cfg: &ConnConfig, mode: ReplicationMode) -> Result<Self, PgError> {
        let pgpass = match cfg.load_pgpass() {
            Ok(content) => content,
            Err(warning) => {
                tracing::warn!("{warning}");
                None
            }
        };
        // `.pgpass` lines name the database `replication` for physical replication sessions
        // (as pg_basebackup users write them); the session's mode decides, not the string.
        let mut for_pgpass = cfg.clone();
        for_pgpass.replication = match mode {
            ReplicationMode::None => None,
            ReplicationMode::Physical => Some("true".into()),
            ReplicationMode::Logical => Some("database".into()),
        };
        let mut last = None;
        for (host, port) in &cfg.hosts {
            let login = Login {
                cfg,
                password: for_pgpass
                    .password_for(host, *port, pgpass.as_deref())
                    .map(zeroize::Zeroizing::new),
                mode,
            };
            let attempt = Self::connect_host(&login, host, *port);
            let result = match cfg.connect_timeout {
                Some(t) => tokio::time::timeout(t, attempt)
                    .await
                    .unwrap_or_else(|_| Err(PgError::Timeout(t))),
                None => attempt.await,
            };
            match result {
                Ok(c) => return Ok(c),
                // The server answered and refused: another host would not know better.
                Err(e @ (PgError::Server(_) | PgError::Auth { .. })) => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "connection attempt failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| PgError::Connect {
            target: "(no host)".into(),
            reason: "the connection settings name no host".into(),
        }))
    }

    async fn connect_host(login: &Login<'_>, host: &Host, port: u16) -> Result<Self, PgError> {
        let cfg = login.cfg;
        match host {
            Host::Unix(dir) => {
                // libpq ignores sslmode on Unix sockets: there is no TLS there.
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let target = path.display().to_string();
                let s = UnixStream::connect(&path)
                    .await
                    .map_err(|e| PgError::Connect {
                        target: target.clone(),
                        reason: e.to_string(),
                    })?;
                Self::startup(Box::new(s), target, false, None, login).await
            }
            Host::Tcp(name) => {
                let target = format!("{name}:{port}");
                match cfg.sslmode {
                    SslMode::Disable => Self::tcp(login, name, port, &target, false).await,
                    // allow: plaintext first, TLS if the server insists.
                    SslMode::Allow => match Self::tcp(login, name, port, &target, false).await {
                        Err(PgError::Server(e)) if e.code == "28000" => {
                            Self::tcp(login, name, port, &target, true).await
                        }
                        other => other,
                    },
                    _ => Self::tcp(login, name, port, &target, true).await,
                }
            }
        }
    }

    async fn tcp(
        login: &Login<'_>,
        name: &str,
        port: u16,
        target: &str,
        try_tls: bool,
    ) -> Result<Self, PgError> {
        let cfg = login.cfg;
        let mut sock = TcpStream::connect((name, port))
            .await
            .map_err(|e| PgError::Connect {
                target: target.to_owned(),
                reason: e.to_string(),
            })?;
        sock.set_nodelay(true)?;
        if !try_tls {
            return Self::startup(Box::new(sock), target.to_owned(), false, None, login).await;
        }
        let tls_err = |reason: String| PgError::Tls {
            target: target.to_owned(),
            reason,
        };
        let mut req = BytesMut::new();
        frontend::ssl_request(&mut req);
        sock.write_all(&req).await?;
        // Exactly one byte: anything buffered beyond it would be unauthenticated plaintext
        // injected before the handshake (CVE-2021-23222).
        let mut answer = [0u8; 1];
        sock.read_exact(&mut answer)
            .await
            .map_err(|_| closed("TLS negotiation"))?;
        match answer[0] {
            b'S' => {}
            b'N' if cfg.sslmode == SslMode::Prefer || cfg.sslmode == SslMode::Allow => {
                return Self::startup(Box::new(sock), target.to_owned(), false, None, login).await;
            }
            b'N' => {
                return Err(tls_err(format!(
                    "the server does not accept TLS, and sslmode is {:?}",
                    cfg.sslmode
                )))
            }
            // An error here comes before authentication and may be forged: not shown
            // (CVE-2024-10977).
            _ => {
                return Err(tls_err(
                    "the server answered the TLS request with an error".into(),
                ))
            }
        }
        if cfg.sslrootcert_is_system() {
            return Err(tls_err(
                "sslrootcert=system is not supported: name a root certificate file".into(),
            ));
        }
        let settings = tls::settings(
            &cfg.sslmode,
            cfg.sslrootcert.as_deref(),
            cfg.sslcert.as_deref().zip(cfg.sslkey.as_deref()),
        )
        .map_err(tls_err)?;
        let config = tls::client_config(&settings).map_err(tls_err)?;
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())
            .map_err(|e| tls_err(format!("{name:?} is not a valid server name: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, sock)
            .await
            .map_err(|e| tls_err(e.to_string()))?;
        let end_point = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| tls::server_end_point(c.as_ref()));
        Self::startup(Box::new(stream), target.to_owned(), true, end_point, login).await
    }

    async fn startup(
        stream: Box<dyn Stream>,
        target: String,
        tls: bool,
        end_point: Option<Vec<u8>>,
        login: &Login<'_>,
    ) -> Result<Self, PgError> {
        let cfg = login.cfg;
        let mut conn = Self {
            stream,
            rbuf: BytesMut::with_capacity(64 << 10),
            target,
            params: HashMap::new(),
            read_timeout: None,
            tls,
        };
        // libpq's parameters, with the replication mode this session needs and pgkeep's
        // application name unless the user set one.
        let mut params: Vec<(&str, String)> = cfg
            .startup_params()
            .into_iter()
            .filter(|(k, _)| *k != "replication")
            .collect();
        match login.mode {
            ReplicationMode::None => {}
            ReplicationMode::Physical => params.push(("replication", "true".into())),
            ReplicationMode::Logical => params.push(("replication", "database".into())),
        }
        if cfg.application_name.is_none() {
            params.push(("application_name", "pgkeep".into()));
        }
        let mut buf = BytesMut::new();
        frontend::startup_message(params.iter().map(|(k, v)| (*k, v.as_str())), &mut buf)?;
        conn.write(&buf).await?;
        conn.authenticate(login, end_point).await?;
        loop {
            match conn.read_message("startup").await? {
                BackendMessage::ReadyForQuery => return Ok(conn),
                BackendMessage::ParameterStatus { name, value } => {
                    conn.params.insert(name, value);
                }
                BackendMessage::BackendKeyData | BackendMessage::Ignored(_) => {}
                BackendMessage::Notice(n) => {
                    tracing::info!(target = %conn.target, "server notice: {n}")
                }
                BackendMessage::Error(e) => return Err(PgError::Server(e)),
                other => {
                    return Err(PgError::Protocol(format!(
                        "unexpected {other:?} during startup"
                    )))
                }
            }
        }
    }

    fn auth_err(&self, reason: impl Into<String>) -> PgError {
        PgError::Auth {
            target: self.target.clone(),
            reason: reason.into(),
        }
    }

    fn password<'a>(&self, login: &'a Login<'_>) -> Result<&'a [u8], PgError> {
        login.password.as_deref().map(|p| p.as_bytes()).ok_or_else(|| {
            self.auth_err(format!(
                "the server asks user {:?} for a password, but none was given (set PGPASSWORD, use ~/.pgpass, or password= in the connection string)",
                login.cfg.user
            ))
        })
    }

    async fn authenticate(
        &mut self,
        login: &Login<'_>,
        end_point: Option<Vec<u8>>,
    ) -> Result<(), PgError> {
        let cfg = login.cfg;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let req = match self.read_message("authentication").await? {
                BackendMessage::Auth(req) => req,
                BackendMessage::Error(e) => return Err(PgError::Server(e)),
                BackendMessage::Notice(_) | BackendMessage::Ignored(_) => continue,
                other => {
                    return Err(PgError::Protocol(format!(
                        "unexpected {other:?} during authentication"
                    )))
                }
            };
            let mut buf = BytesMut::new();
            match req {
                AuthRequest::Ok => {
                    if scram.is_some() {
                        return Err(self.auth_err("the server ended SCRAM without its final message"));
                    }
                    return Ok(());
                }
                AuthRequest::Cleartext => {
                    self.refuse_without_binding(cfg, "a cleartext password")?;
                    frontend::password_message(self.password(login)?, &mut buf)?;
                }
                AuthRequest::Md5 { salt } => {
                    self.refuse_without_binding(cfg, "MD5")?;
                    let hash = postgres_protocol::authentication::md5_hash(cfg.user.as_bytes(), self.password(login)?, salt);
                    frontend::password_message(hash.as_bytes(), &mut buf)?;
                }
                AuthRequest::Sasl { mechanisms } => {
                    let password = self.password(login)?;
                    let plus = cfg.channel_binding != BindingPolicy::Disable
                        && mechanisms.iter().any(|m| m == "SCRAM-SHA-256-PLUS");
                    if cfg.channel_binding == BindingPolicy::Require && !(plus && end_point.is_some()) {
                        return Err(self.auth_err(
                            "channel_binding=require, but the server offers no SCRAM-SHA-256-PLUS over this connection",
                        ));
                    }
                    let (mechanism, binding) = match (&end_point, plus) {
                        (Some(hash), true) => ("SCRAM-SHA-256-PLUS", ChannelBinding::tls_server_end_point(hash.clone())),
                        _ if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") => {
                            return Err(self.auth_err(format!("no supported SASL mechanism among {mechanisms:?}")))
                        }
                        (Some(_), false) => ("SCRAM-SHA-256", ChannelBinding::unrequested()),
                        (None, _) if self.tls => ("SCRAM-SHA-256", ChannelBinding::unrequested()),
                        (None, _) => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
                    };
                    let s = ScramSha256::new(password, binding);
                    frontend::sasl_initial_response(mechanism, s.message(), &mut buf)?;
                    scram = Some(s);
                }
                AuthRequest::SaslContinue(data) => {
                    let s = scram.as_mut().ok_or_else(|| PgError::Protocol("SASL continue without SASL".into()))?;
                    s.update(&data).map_err(|e| self.auth_err(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut buf)?;
                }
                AuthRequest::SaslFinal(data) => {
                    let mut s = scram.take().ok_or_else(|| PgError::Protocol("SASL final without SASL".into()))?;
                    // Verifies the server's signature: proof that it knows the password too.
                    s.finish(&data).map_err(|e| self.auth_err(format!("SCRAM server proof rejected: {e}")))?;
                    continue;
                }
                AuthRequest::Unsupported(code) => {
                    return Err(self.auth_err(format!(
                        "the server asks for authentication method {code} (Kerberos/GSSAPI/SSPI), which pgkeep does not support; use scram-sha-256, md5, password or trust in pg_hba.conf"
                    )))
                }
            }
            self.write(&buf).await?;
        }
    }

    /// `channel_binding=require` accepts only SCRAM-SHA-256-PLUS (libpq's rule).
    fn refuse_without_binding(&self, cfg: &ConnConfig, method: &str) -> Result<(), PgError> {
        if cfg.channel_binding == BindingPolicy::Require {
            return Err(self.auth_err(format!(
                "channel_binding=require, but the server asks for {method} authentication"
            )));
        }
        Ok(())
    }

    async fn write(&mut self, buf: &[u8]) -> Result<(), PgError> {
        self.stream.write_all(buf).await?;
        self.stream.flush().await?;
        Ok(())
    }

    async fn read_message(&mut self, during: &str) -> Result<BackendMessage, PgError> {
        loop {
            if let Some(m) = backend::parse(&mut self.rbuf)? {
                return Ok(m);
            }
            let read = self.stream.read_buf(&mut self.rbuf);
            let n = match self.read_timeout {
                Some(t) => tokio::time::timeout(t, read)
                    .await
                    .map_err(|_| PgError::Timeout(t))??,
                None => read.await?,
            };
            if n == 0 {
                return Err(closed(during));
            }
        }
    }

    /// Fails reads that see no message for `timeout` (a server that stopped sending).
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// Where the connection goes, for messages (no credentials).
    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// A `ParameterStatus` value reported by the server (`server_version`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// `server_version_num` derived from `server_version` (10 and later: major × 10000 + minor).
    pub fn server_version_num(&self) -> Option<u32> {
        let v = self.parameter("server_version")?;
        let numeric: String = v
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = numeric.split('.');
        let major: u32 = parts.next()?.parse().ok()?;
        let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        Some(if major >= 10 {
            major * 10000 + minor
        } else {
            major * 10000 + minor * 100
        })
    }

    /// Sends a simple query; read its response with [`next_event`](Self::next_event).
    pub async fn send_query(&mut self, sql: &str) -> Result<(), PgError> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf)?;
        self.write(&buf).await
    }

    /// The next step of the current response. An `ErrorResponse` becomes `Err(Server)`;
    /// notices are logged and parameter changes recorded.
    pub async fn next_event(&mut self) -> Result<Event, PgError> {
        loop {
            return Ok(match self.read_message("a query").await? {
                BackendMessage::RowDescription(c) => Event::RowDescription(c),
                BackendMessage::DataRow(r) => Event::DataRow(r),
                BackendMessage::CommandComplete(t) => Event::CommandComplete(t),
                BackendMessage::EmptyQuery => Event::EmptyQuery,
                BackendMessage::CopyOut => Event::CopyOut,
                BackendMessage::CopyIn => Event::CopyIn,
                BackendMessage::CopyBoth => Event::CopyBoth,
                BackendMessage::CopyData(d) => Event::CopyData(d),
                BackendMessage::CopyDone => Event::CopyDone,
                BackendMessage::ReadyForQuery => Event::ReadyForQuery,
                BackendMessage::Error(e) => return Err(PgError::Server(e)),
                BackendMessage::Notice(n) => {
                    tracing::info!(target = %self.target, "server notice: {n}");
                    continue;
                }
                BackendMessage::ParameterStatus { name, value } => {
                    self.params.insert(name, value);
                    continue;
                }
                BackendMessage::BackendKeyData | BackendMessage::Ignored(_) => continue,
                BackendMessage::Auth(_) => {
                    return Err(PgError::Protocol(
                        "authentication request after startup".into(),
                    ))
                }
            });
        }
    }

    /// After an error mid-response, reads up to `ReadyForQuery` so the connection can be
    /// used again.
    async fn drain(&mut self) -> Result<(), PgError> {
        loop {
            match self.read_message("error recovery").await? {
                BackendMessage::ReadyForQuery => return Ok(()),
                _ => continue,
            }
        }
    }

    /// Runs a simple query that returns result sets (no COPY) and collects them as text.
    /// On a server error the connection stays usable.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<ResultSet>, PgError> {
        self.query_as(sql, |b| String::from_utf8_lossy(&b).into_owned())
            .await
    }

    /// [`query`](Self::query) with each value as the bytes the server sent: for file
    /// contents (`TIMELINE_HISTORY`), which must be stored byte for byte whatever their
    /// encoding.
    pub async fn query_bytes(&mut self, sql: &str) -> Result<Vec<ResultSet<Vec<u8>>>, PgError> {
        self.query_as(sql, |b| b.to_vec()).await
    }

    async fn query_as<T>(
        &mut self,
        sql: &str,
        value: impl Fn(Bytes) -> T,
    ) -> Result<Vec<ResultSet<T>>, PgError> {
        self.send_query(sql).await?;
        let mut sets = Vec::new();
        let mut current = ResultSet::default();
        loop {
            match self.next_event().await {
                Ok(Event::RowDescription(c)) => current.columns = c,
                Ok(Event::DataRow(r)) => current
                    .rows
                    .push(r.into_iter().map(|c| c.map(&value)).collect()),
                Ok(Event::CommandComplete(tag)) => {
                    current.tag = tag;
                    sets.push(std::mem::take(&mut current));
                }
                Ok(Event::EmptyQuery) => {}
                Ok(Event::ReadyForQuery) => return Ok(sets),
                Ok(other) => {
                    return Err(PgError::Protocol(format!(
                        "unexpected {other:?} in the response to {sql:?}"
                    )))
                }
                Err(PgError::Server(e)) => {
                    self.drain().await?;
                    return Err(PgError::Server(e));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs a query expected to return exactly one row.
    pub async fn query_row(&mut self, sql: &str) -> Result<Vec<Option<String>>, PgError> {
        one_row(sql, self.query(sql).await?)
    }

    /// [`query_row`](Self::query_row) with the values as the bytes the server sent.
    pub async fn query_row_bytes(&mut self, sql: &str) -> Result<Vec<Option<Vec<u8>>>, PgError> {
        one_row(sql, self.query_bytes(sql).await?)
    }

    /// Sends one CopyData message.
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), PgError> {
        let msg = wire::copy_data_message(payload)?;
        self.write(&msg).await
    }

    /// Sends CopyDone.
    pub async fn send_copy_done(&mut self) -> Result<(), PgError> {
        self.write(&wire::copy_done_message()).await
    }

    /// Ends the session politely.
    pub async fn close(mut self) -> Result<(), PgError> {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        self.write(&buf).await
    }
}

/// The server error, if `e` is one (for callers matching on SQLSTATE).
pub fn server_error(e: &PgError) -> Option<&ServerError> {
    match e {
        PgError::Server(s) => Some(s),
        _ => None,
    }
}
/// The only row of `sets`, or a protocol error naming the query.
fn one_row<T>(sql: &str, sets: Vec<ResultSet<T>>) -> Result<Vec<Option<T>>, PgError> {
    let mut rows = sets.into_iter().flat_map(|s| s.rows);
    match (rows.next(), rows.next()) {
        (Some(row), None) => Ok(row),
        _ => Err(PgError::Protocol(format!(
            "{sql:?} did not return exactly one row"
        ))),
    }
}
