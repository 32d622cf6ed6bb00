//! What a walsender says about its server, asked the same way by backups and the WAL
//! receiver.

use pgkeep_format::{Lsn, TimelineId};

use super::{PgConnection, PgError};
use crate::backup::command::parse_size;
use crate::backup::ingest::PAGE;
use crate::error::{Error, Result};

/// Facts a walsender reports about its server: IDENTIFY_SYSTEM, the version, and the WAL
/// segment and block sizes pgkeep depends on.
#[derive(Debug, Clone, Copy)]
pub struct ServerInfo {
    pub system_id: u64,
    pub timeline: TimelineId,
    /// The server's WAL flush position when asked.
    pub position: Lsn,
    pub version_num: u32,
    pub wal_segment_size: u32,
}

/// `server_version_num` as people write the version: `150020` is `15.20`, `180006` is
/// `18.6` (PostgreSQL 10 and later number releases major.minor).
pub fn version_text(version_num: u32) -> String {
    format!("{}.{}", version_num / 10000, version_num % 10000)
}

pub async fn identify(conn: &mut PgConnection) -> Result<ServerInfo> {
    let row = conn.query_row("IDENTIFY_SYSTEM").await?;
    let column = |i: usize| row.get(i).and_then(|c| c.as_deref());
    let system_id = column(0)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| PgError::Protocol("IDENTIFY_SYSTEM: no system identifier".into()))?;
    let timeline = column(1)
        .and_then(|s| s.parse::<u32>().ok())
        .map(TimelineId)
        .ok_or_else(|| PgError::Protocol("IDENTIFY_SYSTEM: no timeline".into()))?;
    let position = column(2)
        .and_then(|s| s.parse::<Lsn>().ok())
        .ok_or_else(|| PgError::Protocol("IDENTIFY_SYSTEM: no WAL position".into()))?;
    let version_num = conn
        .server_version_num()
        .ok_or_else(|| PgError::Protocol("the server did not report server_version".into()))?;
    if version_num < 130_000 {
        return Err(Error::InvalidInput(format!(
            "the server runs PostgreSQL {}; pgkeep supports 13 and later",
            version_num / 10000
        )));
    }
    let show = |v: Vec<Option<String>>| v.into_iter().next().flatten().unwrap_or_default();
    let seg = parse_size(&show(conn.query_row("SHOW wal_segment_size").await?))?;
    let wal_segment_size = pgkeep_format::pg::check_segment_size(seg)
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let block = parse_size(&show(conn.query_row("SHOW block_size").await?))?;
    if block != PAGE as u64 {
        return Err(Error::InvalidInput(format!(
            "the server uses {block}-byte blocks; pgkeep supports PostgreSQL's default of 8192"
        )));
    }
    Ok(ServerInfo {
        system_id,
        timeline,
        position,
        version_num,
        wal_segment_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_as_major_dot_minor() {
        assert_eq!(version_text(150_020), "15.20");
        assert_eq!(version_text(180_006), "18.6");
        assert_eq!(version_text(130_000), "13.0");
    }
}
