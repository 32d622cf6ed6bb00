//! The PostgreSQL replication-protocol client: pgkeep speaks the protocol itself (no libpq,
//! no pg_basebackup subprocess).
//!
//! - [`backend`] and [`wire`] are sans-IO: bytes in, messages out.
//! - [`tls`] maps libpq's `sslmode` onto rustls.
//! - [`connection`] is the async edge: sockets, TLS, authentication, queries, COPY streams.

pub mod backend;
pub mod connection;
pub mod identify;
pub mod tls;
pub mod wire;

pub use connection::{Event, PgConnection, ReplicationMode};
pub use identify::{identify, version_text, ServerInfo};

use thiserror::Error;

/// An `ErrorResponse` or `NoticeResponse` from the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    /// SQLSTATE, e.g. `42710`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(d) = &self.detail {
            write!(f, "; DETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; HINT: {h}")?;
        }
        Ok(())
    }
}

/// What can go wrong talking to PostgreSQL.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PgError {
    /// No host of the connection settings could be reached.
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    /// TLS negotiation or certificate verification failed.
    #[error("TLS with {target}: {reason}")]
    Tls { target: String, reason: String },
    /// Authentication could not proceed (no password, unsupported method, bad server proof).
    #[error("authentication with {target}: {reason}")]
    Auth { target: String, reason: String },
    /// The server reported an error.
    #[error("server error: {0}")]
    Server(ServerError),
    /// The server sent something the protocol does not allow here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection ended where the protocol expects more.
    #[error("the server closed the connection unexpectedly{0}")]
    Closed(String),
    /// A read or write on the socket failed.
    #[error("connection I/O: {0}")]
    Io(#[from] std::io::Error),
    /// No message arrived within the configured timeout.
    #[error("no message from the server for {0:?}")]
    Timeout(std::time::Duration),
}

impl PgError {
    /// The SQLSTATE if the server reported one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Self::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}
