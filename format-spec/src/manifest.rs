//! Backup manifests: the commit point of a backup. A backup exists if and only if its manifest
//! exists.
//!
//! A file is a list of extents, each a slice of a chunk or a run of zeros, so an incremental
//! backup can point at its parent's chunks for unchanged pages and restore never needs a
//! combine step. Chunk ids are stored once in a table and extents refer to them by position.

use std::collections::HashMap;

use crate::error::FormatError;
use crate::ids::ChunkId;
use crate::wire::{Reader, Writer};

/// A chunk as a manifest refers to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    pub id: ChunkId,
    /// Bytes of the chunk's plaintext.
    pub raw_len: u32,
}

/// A contiguous piece of a file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// `len` bytes of `chunk`'s plaintext starting at `offset`.
    Chunk {
        chunk: ChunkRef,
        offset: u32,
        len: u32,
    },
    /// `len` zero bytes (sparse regions, all-zero pages), stored as nothing.
    Zeros { len: u64 },
    /// `len` bytes that are `base`'s plaintext from `base_offset` XOR `delta`'s from
    /// `delta_offset` (since format 1.4). A page changed since an earlier backup is stored as
    /// its difference from that backup's copy, which is mostly zeros and compresses to a
    /// fraction of the page (see SPEC.md §6).
    Xor {
        base: ChunkRef,
        base_offset: u32,
        delta: ChunkRef,
        delta_offset: u32,
        len: u32,
    },
}

impl Extent {
    pub fn len(&self) -> u64 {
        match self {
            Self::Chunk { len, .. } => u64::from(*len),
            Self::Zeros { len } => *len,
            Self::Xor { len, .. } => u64::from(*len),
        }
    }

    /// The chunks the extent reads: none, one, or (`Xor`) the base and then the delta.
    pub fn chunks(&self) -> impl Iterator<Item = ChunkRef> {
        let (first, second) = match *self {
            Self::Chunk { chunk, .. } => (Some(chunk), None),
            Self::Zeros { .. } => (None, None),
            Self::Xor { base, delta, .. } => (Some(base), Some(delta)),
        };
        first.into_iter().chain(second)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An extent covering a whole chunk.
    pub fn whole(chunk: ChunkRef) -> Self {
        Self::Chunk {
            chunk,
            offset: 0,
            len: chunk.raw_len,
        }
    }
}

/// What kind of entry a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FileType {
    Regular = 0,
    Directory = 1,
    Symlink = 2,
}

/// One file, directory or symlink of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// 0 for the data directory, else the tablespace's OID.
    pub tablespace: u32,
    /// Relative path with `/` separators, as the server sent it. Untrusted on restore.
    pub path: Vec<u8>,
    pub file_type: FileType,
    /// Permission bits.
    pub mode: u32,
    /// Bytes; equals the sum of the extents for regular files.
    pub size: u64,
    /// Unix seconds.
    pub mtime: i64,
    /// Symlink target (symlinks only).
    pub link_target: Vec<u8>,
    pub extents: Vec<Extent>,
}

/// A named byte string stored with the backup: `backup_label`, `tablespace_map`,
/// `backup_manifest` (PostgreSQL's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub size: u64,
    pub extents: Vec<Extent>,
}

/// Full, incremental, or a plain set of files/streams that is not a PostgreSQL base backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BackupKind {
    Full = 0,
    Incremental = 1,
    Files = 2,
}

/// Facts about the PostgreSQL server and the backup's WAL range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgInfo {
    pub system_id: u64,
    /// `server_version_num`, e.g. 150010.
    pub version_num: u32,
    pub timeline: u32,
    pub start_lsn: u64,
    pub stop_lsn: u64,
    pub checkpoint_lsn: u64,
    pub wal_segment_size: u32,
}

/// A tablespace other than the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    pub oid: u32,
    /// Where it was on the server.
    pub location: String,
}

/// Sizes recorded at commit time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackupStats {
    /// Bytes of all file content (what a restore writes).
    pub logical_bytes: u64,
    /// Bytes of the sealed chunks this backup references.
    pub stored_bytes: u64,
    /// Bytes this backup added to the repository (new sealed chunks and pack overhead).
    pub new_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
}

/// One backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub backup_id: String,
    pub cluster: String,
    pub kind: BackupKind,
    /// The backup this one is incremental to.
    pub parent: Option<String>,
    /// Every backup whose chunks this one was built against (the parent chain).
    pub references: Vec<String>,
    pub label: String,
    /// Unix microseconds.
    pub start_time_us: i64,
    pub stop_time_us: i64,
    pub postgres: Option<PgInfo>,
    pub tablespaces: Vec<Tablespace>,
    pub attachments: Vec<Attachment>,
    pub stats: BackupStats,
    pub files: Vec<FileEntry>,
    /// Free-form `key = value` facts (pgkeep version, host, ...).
    pub properties: Vec<(String, String)>,
}

impl Manifest {
    /// Every chunk referenced, each once.
    pub fn chunk_refs(&self) -> Vec<ChunkRef> {
        self.chunk_table().refs
    }

    fn chunk_table(&self) -> ChunkTable {
        let mut table = ChunkTable::default();
        for c in self.all_extents().flat_map(Extent::chunks) {
            table.intern(c);
        }
        table
    }

    fn all_extents(&self) -> impl Iterator<Item = &Extent> {
        self.files
            .iter()
            .flat_map(|f| f.extents.iter())
            .chain(self.attachments.iter().flat_map(|a| a.extents.iter()))
    }

    pub fn attachment(&self, name: &str) -> Option<&Attachment> {
        self.attachments.iter().find(|a| a.name == name)
    }

    pub fn encode(&self) -> Vec<u8> {
        let table = self.chunk_table();
        let mut w = Writer::with_capacity(256 + table.refs.len() * 36 + self.files.len() * 64);
        w.str(&self.backup_id)
            .str(&self.cluster)
            .u8(self.kind as u8)
            .option(self.parent.as_deref(), |w, p| {
                w.str(p);
            })
            .count(self.references.len());
        for r in &self.references {
            w.str(r);
        }
        w.str(&self.label)
            .i64(self.start_time_us)
            .i64(self.stop_time_us)
            .option(self.postgres.as_ref(), |w, p| {
                w.u64(p.system_id)
                    .u32(p.version_num)
                    .u32(p.timeline)
                    .u64(p.start_lsn)
                    .u64(p.stop_lsn)
                    .u64(p.checkpoint_lsn)
                    .u32(p.wal_segment_size);
            })
            .count(self.tablespaces.len());
        for t in &self.tablespaces {
            w.u32(t.oid).str(&t.location);
        }
        encode_stats_and_table(&mut w, &self.stats, &table);
        w.count(self.attachments.len());
        for a in &self.attachments {
            w.str(&a.name).u64(a.size);
            encode_extents(&mut w, &a.extents, &table);
        }
        w.count(self.files.len());
        for f in &self.files {
            w.u32(f.tablespace)
                .bytes(&f.path)
                .u8(f.file_type as u8)
                .u32(f.mode)
                .u64(f.size)
                .i64(f.mtime)
                .bytes(&f.link_target);
            encode_extents(&mut w, &f.extents, &table);
        }
        w.count(self.properties.len());
        for (k, v) in &self.properties {
            w.str(k).str(v);
        }
        w.into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, "backup manifest");
        let backup_id = r.string()?;
        let cluster = r.string()?;
        let kind = match r.u8()? {
            0 => BackupKind::Full,
            1 => BackupKind::Incremental,
            2 => BackupKind::Files,
            k => return Err(r.invalid(format!("unknown backup kind {k}"))),
        };
        let parent = r.option(|r| r.string())?;
        let n = r.count(4)?;
        let references = (0..n).map(|_| r.string()).collect::<Result<_, _>>()?;
        let label = r.string()?;
        let start_time_us = r.i64()?;
        let stop_time_us = r.i64()?;
        let postgres = r.option(|r| {
            Ok(PgInfo {
                system_id: r.u64()?,
                version_num: r.u32()?,
                timeline: r.u32()?,
                start_lsn: r.u64()?,
                stop_lsn: r.u64()?,
                checkpoint_lsn: r.u64()?,
                // Checked here, not where it is used: a reader divides by it.
                wal_segment_size: crate::pg::check_segment_size(u64::from(r.u32()?))?,
            })
        })?;
        let n = r.count(8)?;
        let tablespaces = (0..n)
            .map(|_| {
                Ok(Tablespace {
                    oid: r.u32()?,
                    location: r.string()?,
                })
            })
            .collect::<Result<_, FormatError>>()?;
        let (stats, table) = decode_stats_and_table(&mut r)?;
        let n = r.count(16)?;
        let mut attachments = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.string()?;
            let size = r.u64()?;
            let extents = decode_extents(&mut r, &table, size)?;
            attachments.push(Attachment {
                name,
                size,
                extents,
            });
        }
        // Smallest file entry: tablespace 4, empty path 4, type 1, mode 4, size 8, mtime 8,
        // empty link target 4, empty extent list 4.
        let n = r.count(37)?;
        let mut files = Vec::with_capacity(n);
        for _ in 0..n {
            let tablespace = r.u32()?;
            let path = r.bytes()?.to_vec();
            let file_type = match r.u8()? {
                0 => FileType::Regular,
                1 => FileType::Directory,
                2 => FileType::Symlink,
                t => return Err(r.invalid(format!("unknown file type {t}"))),
            };
            let mode = r.u32()?;
            let size = r.u64()?;
            let mtime = r.i64()?;
            let link_target = r.bytes()?.to_vec();
            let extents = decode_extents(
                &mut r,
                &table,
                if file_type == FileType::Regular {
                    size
                } else {
                    0
                },
            )?;
            files.push(FileEntry {
                tablespace,
                path,
                file_type,
                mode,
                size,
                mtime,
                link_target,
                extents,
            });
        }
        let n = r.count(8)?;
        let properties = (0..n)
            .map(|_| Ok((r.string()?, r.string()?)))
            .collect::<Result<_, FormatError>>()?;
        Ok(Self {
            backup_id,
            cluster,
            kind,
            parent,
            references,
            label,
            start_time_us,
            stop_time_us,
            postgres,
            tablespaces,
            attachments,
            stats,
            files,
            properties,
        })
    }
}

/// Interns chunk references into the manifest's table.
#[derive(Default)]
pub(crate) struct ChunkTable {
    pub(crate) refs: Vec<ChunkRef>,
    pos: HashMap<ChunkId, u32>,
}

impl ChunkTable {
    pub(crate) fn intern(&mut self, c: ChunkRef) -> u32 {
        let next = self.refs.len() as u32;
        *self.pos.entry(c.id).or_insert_with(|| {
            self.refs.push(c);
            next
        })
    }

    fn position(&self, id: &ChunkId) -> u32 {
        self.pos[id]
    }
}

/// The statistics and the chunk table, in this order, as manifests and dump manifests store
/// them (SPEC.md §6 and §11).
pub(crate) fn encode_stats_and_table(w: &mut Writer, s: &BackupStats, table: &ChunkTable) {
    w.u64(s.logical_bytes)
        .u64(s.stored_bytes)
        .u64(s.new_bytes)
        .u64(s.chunks)
        .u64(s.new_chunks)
        .count(table.refs.len());
    for c in &table.refs {
        w.raw(c.id.as_bytes()).u32(c.raw_len);
    }
}

/// Reads what [`encode_stats_and_table`] writes.
pub(crate) fn decode_stats_and_table(
    r: &mut Reader<'_>,
) -> Result<(BackupStats, Vec<ChunkRef>), FormatError> {
    let stats = BackupStats {
        logical_bytes: r.u64()?,
        stored_bytes: r.u64()?,
        new_bytes: r.u64()?,
        chunks: r.u64()?,
        new_chunks: r.u64()?,
    };
    let n = r.count(36)?;
    let mut table = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::with_capacity(n);
    for _ in 0..n {
        let c = ChunkRef {
            id: ChunkId(r.array()?),
            raw_len: r.u32()?,
        };
        // An id names one content, hence one length: a repeated id is a forgery.
        if !seen.insert(c.id) {
            return Err(r.invalid(format!("the chunk table lists chunk {} twice", c.id)));
        }
        table.push(c);
    }
    Ok((stats, table))
}

const EXTENT_CHUNK: u8 = 0;
const EXTENT_ZEROS: u8 = 1;
const EXTENT_XOR: u8 = 2;

pub(crate) fn encode_extents(w: &mut Writer, extents: &[Extent], table: &ChunkTable) {
    w.count(extents.len());
    for e in extents {
        match e {
            Extent::Chunk { chunk, offset, len } => {
                w.u8(EXTENT_CHUNK)
                    .u32(table.position(&chunk.id))
                    .u32(*offset)
                    .u32(*len);
            }
            Extent::Zeros { len } => {
                w.u8(EXTENT_ZEROS).u64(*len);
            }
            Extent::Xor {
                base,
                base_offset,
                delta,
                delta_offset,
                len,
            } => {
                w.u8(EXTENT_XOR)
                    .u32(table.position(&base.id))
                    .u32(*base_offset)
                    .u32(table.position(&delta.id))
                    .u32(*delta_offset)
                    .u32(*len);
            }
        }
    }
}

/// A slice `offset..offset + len` of chunk number `i` of the table, checked.
fn table_slice(
    r: &Reader<'_>,
    table: &[ChunkRef],
    i: u32,
    offset: u32,
    len: u32,
) -> Result<ChunkRef, FormatError> {
    let chunk = *table.get(i as usize).ok_or_else(|| {
        r.invalid(format!(
            "extent refers to chunk #{i}, table has {}",
            table.len()
        ))
    })?;
    if u64::from(offset) + u64::from(len) > u64::from(chunk.raw_len) {
        return Err(r.invalid(format!("extent runs past the end of chunk {}", chunk.id)));
    }
    Ok(chunk)
}

/// Decodes extents and checks them against the chunk table and the declared size.
pub(crate) fn decode_extents(
    r: &mut Reader<'_>,
    table: &[ChunkRef],
    size: u64,
) -> Result<Vec<Extent>, FormatError> {
    let n = r.count(9)?;
    let mut extents = Vec::with_capacity(n);
    let mut total = 0u64;
    for _ in 0..n {
        let e = match r.u8()? {
            EXTENT_CHUNK => {
                let (i, offset, len) = (r.u32()?, r.u32()?, r.u32()?);
                let chunk = table_slice(r, table, i, offset, len)?;
                Extent::Chunk { chunk, offset, len }
            }
            EXTENT_ZEROS => Extent::Zeros { len: r.u64()? },
            EXTENT_XOR => {
                let (b, base_offset, d, delta_offset, len) =
                    (r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?);
                Extent::Xor {
                    base: table_slice(r, table, b, base_offset, len)?,
                    base_offset,
                    delta: table_slice(r, table, d, delta_offset, len)?,
                    delta_offset,
                    len,
                }
            }
            t => {
                return Err(r.invalid(format!(
                    "unknown extent tag {t} (written by a newer pgkeep? upgrade pgkeep)"
                )))
            }
        };
        total = total
            .checked_add(e.len())
            .ok_or_else(|| r.invalid("extents add up to more than 2^64 bytes".to_string()))?;
        extents.push(e);
    }
    if total != size {
        return Err(r.invalid(format!(
            "extents add up to {total} bytes, the entry says {size}"
        )));
    }
    Ok(extents)
}
