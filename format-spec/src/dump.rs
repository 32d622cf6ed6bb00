//! Dump manifests (format 1.3): the commit point of a logical dump. A dump exists if and only
//! if its manifest exists.
//!
//! A dump is a few named byte streams (the pg_dump archive, the filtered rows of a tenant
//! export, the globals of `pg_dumpall`, a SQLite database file), each a list of extents over
//! the repository's shared chunks, exactly like a backup's attachments. Keeping it a kind of
//! its own (rather than a backup manifest of kind "files") keeps retention, `list` and
//! point-in-time restore planning, which reason about base backups and WAL, blind to it.

use crate::error::FormatError;
use crate::manifest::{
    decode_extents, decode_stats_and_table, encode_extents, encode_stats_and_table, Attachment,
    BackupStats, ChunkRef, ChunkTable,
};
use crate::wire::{Reader, Writer};

/// What produced the dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DumpSource {
    /// `pg_dump` of one database.
    PgDump = 0,
    /// `pg_dumpall --globals-only` plus `pg_dump` of every database.
    PgDumpAll = 1,
    /// A SQLite database file, snapshotted with SQLite's online backup API.
    Sqlite = 2,
}

/// The format of the main stream(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DumpFormat {
    /// pg_dump's custom archive format, uncompressed (`-Fc -Z0`), for `pg_restore`.
    Custom = 0,
    /// Plain SQL, for `psql`.
    Plain = 1,
    /// A SQLite database file.
    SqliteFile = 2,
    /// pg_dump's directory format, uncompressed (`-Fd -Z0`): one stream per file of the
    /// directory (`dir/toc.dat`, `dir/<n>.dat`, ...), so each table's data deduplicates on
    /// its own.
    Directory = 3,
}

impl DumpSource {
    pub fn name(self) -> &'static str {
        match self {
            Self::PgDump => "pg_dump",
            Self::PgDumpAll => "pg_dumpall",
            Self::Sqlite => "sqlite",
        }
    }
}

impl DumpFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::Custom => "custom",
            Self::Plain => "plain",
            Self::SqliteFile => "sqlite",
            Self::Directory => "directory",
        }
    }
}

/// The main stream of a `pg_dump` (custom or plain) or SQLite dump.
pub const MAIN_STREAM: &str = "dump";
/// The `pg_dumpall --globals-only` stream of a `pg_dumpall` dump.
pub const GLOBALS_STREAM: &str = "globals.sql";
/// Prefix of each database's archive in a `pg_dumpall` dump: `db/<database>`.
pub const DATABASE_PREFIX: &str = "db/";
/// Prefix of each file of a directory-format dump: `dir/<file>`.
pub const DIRECTORY_PREFIX: &str = "dir/";
/// Prefix of the streams of row filters: `rows/<n>`.
pub const ROWS_PREFIX: &str = "rows/";

/// Whether `name` can be a file of a directory-format dump: one non-empty path component,
/// not `.` or `..`, without `/` or NUL. Restore creates these files, so a name that could
/// leave the directory is refused when the manifest is read.
pub fn is_directory_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// A table whose rows were exported with a condition (`COPY (SELECT ...) TO STDOUT`), stored
/// as its own stream in COPY text format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowFilter {
    /// Qualified table name as given (`schema.table` or `table`).
    pub table: String,
    /// The SQL condition (`tenant_id = 42`).
    pub condition: String,
    /// The stream holding the rows.
    pub stream: String,
    /// Rows exported.
    pub rows: u64,
}

/// One dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpManifest {
    pub dump_id: String,
    pub cluster: String,
    pub source: DumpSource,
    pub format: DumpFormat,
    /// The database name (PostgreSQL) or the file path (SQLite).
    pub database: String,
    /// The selection options passed to pg_dump (`--schema-only`, `--table=public.t`, ...),
    /// in order, so `list` can say what the dump contains and restore can honour it.
    pub selection: Vec<String>,
    pub row_filters: Vec<RowFilter>,
    /// `server_version_num` of the source (0 for SQLite).
    pub server_version_num: u32,
    /// The dump tool's version line (`pg_dump (PostgreSQL) 18.1`, `SQLite 3.46.0`).
    pub tool_version: String,
    /// Unix microseconds.
    pub start_time_us: i64,
    pub stop_time_us: i64,
    pub stats: BackupStats,
    /// The dump's byte streams, by name: `dump` (the main stream), `rows/<n>` (filtered rows),
    /// `globals.sql` and `db/<name>` (for `pg_dumpall` dumps).
    pub streams: Vec<Attachment>,
    /// Free-form `key = value` facts (pgkeep version, host, ...).
    pub properties: Vec<(String, String)>,
}

impl DumpManifest {
    /// Every chunk referenced, each once.
    pub fn chunk_refs(&self) -> Vec<ChunkRef> {
        self.table().refs
    }

    pub fn stream(&self, name: &str) -> Option<&Attachment> {
        self.streams.iter().find(|a| a.name == name)
    }

    /// The databases of a `pg_dumpall` dump with their archives, in manifest order.
    pub fn databases(&self) -> impl Iterator<Item = (&str, &Attachment)> {
        self.streams
            .iter()
            .filter_map(|s| Some((s.name.strip_prefix(DATABASE_PREFIX)?, s)))
    }

    /// The files of a directory-format dump with their streams, in manifest order.
    pub fn directory_files(&self) -> impl Iterator<Item = (&str, &Attachment)> {
        self.streams
            .iter()
            .filter_map(|s| Some((s.name.strip_prefix(DIRECTORY_PREFIX)?, s)))
    }

    /// Bytes of all streams (what a restore reads).
    pub fn logical_bytes(&self) -> u64 {
        self.streams.iter().map(|s| s.size).sum()
    }

    fn table(&self) -> ChunkTable {
        let mut table = ChunkTable::default();
        for s in &self.streams {
            for c in s.extents.iter().flat_map(crate::Extent::chunks) {
                table.intern(c);
            }
        }
        table
    }

    pub fn encode(&self) -> Vec<u8> {
        let table = self.table();
        let mut w = Writer::with_capacity(256 + table.refs.len() * 36);
        w.str(&self.dump_id)
            .str(&self.cluster)
            .u8(self.source as u8)
            .u8(self.format as u8)
            .str(&self.database)
            .count(self.selection.len());
        for s in &self.selection {
            w.str(s);
        }
        w.count(self.row_filters.len());
        for f in &self.row_filters {
            w.str(&f.table).str(&f.condition).str(&f.stream).u64(f.rows);
        }
        w.u32(self.server_version_num)
            .str(&self.tool_version)
            .i64(self.start_time_us)
            .i64(self.stop_time_us);
        encode_stats_and_table(&mut w, &self.stats, &table);
        w.count(self.streams.len());
        for a in &self.streams {
            w.str(&a.name).u64(a.size);
            encode_extents(&mut w, &a.extents, &table);
        }
        w.count(self.properties.len());
        for (k, v) in &self.properties {
            w.str(k).str(v);
        }
        w.into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, "dump manifest");
        let dump_id = r.string()?;
        let cluster = r.string()?;
        let source = match r.u8()? {
            0 => DumpSource::PgDump,
            1 => DumpSource::PgDumpAll,
            2 => DumpSource::Sqlite,
            k => return Err(r.invalid(format!("unknown dump source {k}"))),
        };
        let format = match r.u8()? {
            0 => DumpFormat::Custom,
            1 => DumpFormat::Plain,
            2 => DumpFormat::SqliteFile,
            3 => DumpFormat::Directory,
            k => return Err(r.invalid(format!("unknown dump format {k}"))),
        };
        let database = r.string()?;
        let n = r.count(4)?;
        let selection = (0..n).map(|_| r.string()).collect::<Result<_, _>>()?;
        let n = r.count(20)?;
        let row_filters: Vec<RowFilter> = (0..n)
            .map(|_| {
                Ok(RowFilter {
                    table: r.string()?,
                    condition: r.string()?,
                    stream: r.string()?,
                    rows: r.u64()?,
                })
            })
            .collect::<Result<_, FormatError>>()?;
        let server_version_num = r.u32()?;
        let tool_version = r.string()?;
        let start_time_us = r.i64()?;
        let stop_time_us = r.i64()?;
        let (stats, table) = decode_stats_and_table(&mut r)?;
        let n = r.count(16)?;
        let mut streams: Vec<Attachment> = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.string()?;
            let size = r.u64()?;
            let extents = decode_extents(&mut r, &table, size)?;
            if streams.iter().any(|s| s.name == name) {
                return Err(r.invalid(format!("stream {name:?} is listed twice")));
            }
            streams.push(Attachment {
                name,
                size,
                extents,
            });
        }
        for f in &row_filters {
            if !streams.iter().any(|s| s.name == f.stream) {
                return Err(r.invalid(format!(
                    "row filter of {} names stream {:?}, which the dump does not have",
                    f.table, f.stream
                )));
            }
        }
        check_streams(&r, source, format, &streams, &row_filters)?;
        let n = r.count(8)?;
        let properties = (0..n)
            .map(|_| Ok((r.string()?, r.string()?)))
            .collect::<Result<_, FormatError>>()?;
        Ok(Self {
            dump_id,
            cluster,
            source,
            format,
            database,
            selection,
            row_filters,
            server_version_num,
            tool_version,
            start_time_us,
            stop_time_us,
            stats,
            streams,
            properties,
        })
    }
}

/// The stream names and combinations §11 allows: a `pg_dumpall` dump is custom archives
/// (`globals.sql` and `db/<database>`, no row filters); a directory dump's files are
/// `dir/<file>` with one safe path component each (restore creates them); row filters'
/// streams are `rows/...`, so none can pass for a file or a database.
fn check_streams(
    r: &Reader<'_>,
    source: DumpSource,
    format: DumpFormat,
    streams: &[Attachment],
    row_filters: &[RowFilter],
) -> Result<(), FormatError> {
    // Row filters are restored between pg_restore's sections, which only archives have.
    let valid = match (source, format) {
        (DumpSource::PgDump, DumpFormat::Custom | DumpFormat::Directory) => true,
        (DumpSource::PgDump, DumpFormat::Plain)
        | (DumpSource::PgDumpAll, DumpFormat::Custom)
        | (DumpSource::Sqlite, DumpFormat::SqliteFile) => row_filters.is_empty(),
        _ => false,
    };
    if !valid {
        return Err(r.invalid(format!(
            "a {} dump cannot be in {} format{}",
            source.name(),
            format.name(),
            if row_filters.is_empty() {
                ""
            } else {
                " with row filters"
            }
        )));
    }
    for s in streams {
        let name = s.name.as_str();
        let ok = if row_filters.iter().any(|f| f.stream == name) {
            name.starts_with(ROWS_PREFIX)
        } else if source == DumpSource::PgDumpAll {
            name == GLOBALS_STREAM
                || name
                    .strip_prefix(DATABASE_PREFIX)
                    .is_some_and(|d| !d.is_empty())
        } else if format == DumpFormat::Directory {
            name.strip_prefix(DIRECTORY_PREFIX)
                .is_some_and(is_directory_file_name)
        } else {
            name == MAIN_STREAM
        };
        if !ok {
            return Err(r.invalid(format!(
                "stream {name:?} has no place in a {} dump in {} format",
                source.name(),
                format.name()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChunkId, Extent};

    pub(crate) fn sample() -> DumpManifest {
        let a = ChunkRef {
            id: ChunkId([1; 32]),
            raw_len: 1000,
        };
        let b = ChunkRef {
            id: ChunkId([2; 32]),
            raw_len: 500,
        };
        DumpManifest {
            dump_id: "20261121T053200Z".into(),
            cluster: "main".into(),
            source: DumpSource::PgDump,
            format: DumpFormat::Custom,
            database: "shop".into(),
            selection: vec!["--table=public.orders".into(), "--schema-only".into()],
            row_filters: vec![RowFilter {
                table: "public.orders".into(),
                condition: "tenant_id = 42".into(),
                stream: "rows/0".into(),
                rows: 7,
            }],
            server_version_num: 180_001,
            tool_version: "pg_dump (PostgreSQL) 18.1".into(),
            start_time_us: 1_795_000_000_000_000,
            stop_time_us: 1_795_000_001_000_000,
            stats: BackupStats {
                logical_bytes: 1700,
                stored_bytes: 900,
                new_bytes: 900,
                chunks: 3,
                new_chunks: 2,
            },
            streams: vec![
                Attachment {
                    name: "dump".into(),
                    size: 1500,
                    extents: vec![Extent::whole(a), Extent::whole(b)],
                },
                Attachment {
                    name: "rows/0".into(),
                    size: 200,
                    extents: vec![Extent::Chunk {
                        chunk: a,
                        offset: 100,
                        len: 200,
                    }],
                },
            ],
            properties: vec![("pgkeep_version".into(), "0.1.0".into())],
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(DumpManifest::decode(&bytes).expect("decodes"), m);
        assert_eq!(m.chunk_refs().len(), 2, "chunks are listed once");
        assert_eq!(m.logical_bytes(), 1700);
        // Bytes appended by a newer minor version are ignored.
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"future field");
        assert_eq!(DumpManifest::decode(&longer).expect("decodes"), m);
        // Every truncation is an error, never a panic.
        for cut in 0..bytes.len() {
            assert!(DumpManifest::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn refuses_inconsistent_manifests() {
        let mut m = sample();
        m.row_filters[0].stream = "rows/9".into();
        let e = DumpManifest::decode(&m.encode()).expect_err("dangling row filter");
        assert!(e.to_string().contains("rows/9"), "{e}");
        let mut m = sample();
        m.streams[1].name = "dump".into();
        m.row_filters.clear();
        let e = DumpManifest::decode(&m.encode()).expect_err("duplicate stream");
        assert!(e.to_string().contains("twice"), "{e}");
        let mut bytes = sample().encode();
        // The source byte follows two strings ("20261121T053200Z", "main").
        let at = 4 + 16 + 4 + 4;
        bytes[at] = 9;
        assert!(DumpManifest::decode(&bytes).is_err());
    }

    /// A `pg_dumpall` dump and a directory dump round-trip, and list their databases and
    /// files.
    #[test]
    fn pg_dumpall_and_directory_dumps_round_trip() {
        let base = sample();
        let stream = |name: &str| Attachment {
            name: name.into(),
            ..base.streams[0].clone()
        };
        let all = DumpManifest {
            source: DumpSource::PgDumpAll,
            database: "postgres".into(),
            selection: Vec::new(),
            row_filters: Vec::new(),
            streams: vec![
                stream("globals.sql"),
                stream("db/postgres"),
                stream("db/shop"),
            ],
            ..base.clone()
        };
        let decoded = DumpManifest::decode(&all.encode()).expect("decodes");
        assert_eq!(decoded, all);
        let dbs: Vec<&str> = decoded.databases().map(|(d, _)| d).collect();
        assert_eq!(dbs, ["postgres", "shop"]);

        let dir = DumpManifest {
            format: DumpFormat::Directory,
            streams: vec![
                stream("dir/toc.dat"),
                stream("dir/3301.dat"),
                base.streams[1].clone(),
            ],
            ..base.clone()
        };
        let decoded = DumpManifest::decode(&dir.encode()).expect("decodes");
        assert_eq!(decoded, dir);
        let files: Vec<&str> = decoded.directory_files().map(|(f, _)| f).collect();
        assert_eq!(files, ["toc.dat", "3301.dat"]);
        assert_eq!(DumpFormat::Directory.name(), "directory");
    }

    /// Stream names that do not fit the dump's source and format, and combinations §11 does
    /// not define, are refused: a directory file that would leave the directory never
    /// reaches restore.
    #[test]
    fn refuses_streams_out_of_place() {
        let base = sample();
        let with = |source, format, names: &[&str], filters: bool| {
            let mut m = DumpManifest {
                source,
                format,
                streams: names
                    .iter()
                    .map(|n| Attachment {
                        name: (*n).into(),
                        ..base.streams[0].clone()
                    })
                    .collect(),
                ..base.clone()
            };
            if !filters {
                m.row_filters.clear();
            }
            DumpManifest::decode(&m.encode())
        };
        use DumpFormat::*;
        use DumpSource::*;
        for name in [
            "dir/../x", "dir/a/b", "dir/", "dir/.", "dir/..", "dir/a\0b", "dump",
        ] {
            let e = with(PgDump, Directory, &[name, "rows/0"], true).expect_err(name);
            assert!(e.to_string().contains("has no place"), "{name}: {e}");
        }
        assert!(with(PgDump, Directory, &["dir/toc.dat", "rows/0"], true).is_ok());
        // A row filter's stream posing as a file outside the directory.
        let mut m = DumpManifest {
            format: Directory,
            ..base.clone()
        };
        m.streams[1].name = "dir/../x".into();
        m.row_filters[0].stream = "dir/../x".into();
        let e = DumpManifest::decode(&m.encode()).expect_err("row stream out of place");
        assert!(e.to_string().contains("has no place"), "{e}");
        assert!(with(PgDumpAll, Custom, &["globals.sql", "db/"], false).is_err());
        assert!(with(PgDumpAll, Custom, &["globals.sql", "dump"], false).is_err());
        assert!(with(PgDumpAll, Directory, &["globals.sql"], false).is_err());
        assert!(with(PgDumpAll, Custom, &["globals.sql", "rows/0"], true).is_err());
        assert!(with(PgDump, Plain, &["dump", "rows/0"], true).is_err());
        assert!(with(PgDump, Plain, &["dump"], false).is_ok());
        assert!(with(PgDump, SqliteFile, &["dump"], false).is_err());
        assert!(with(Sqlite, Custom, &["dump"], false).is_err());
        assert!(with(PgDump, Custom, &["dir/toc.dat"], false).is_err());
    }
}
