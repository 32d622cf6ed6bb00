//! Streaming tar reader (sans-IO) and a small ustar header writer.
//!
//! PostgreSQL sends a base backup as one tar stream per tablespace, cut into CopyData messages
//! at arbitrary boundaries: a 512-byte header may straddle two messages, and a message may hold
//! the end of one file and the start of the next. [`TarReader`] therefore does no I/O: the
//! caller [`push`](TarReader::push)es whatever bytes arrived and pulls [`TarEvent`]s until the
//! reader needs more input, in the style of `postgres-protocol`'s message parsing. Entry
//! content is handed out as zero-copy slices of the pushed buffers, so memory stays bounded
//! however large the files are: only header blocks, GNU long names and pax records are
//! buffered, each under a fixed limit checked *before* anything is allocated.
//!
//! What is accepted, and why:
//! - PostgreSQL's own writer (`src/port/tar.c`, `tarCreateHeader`): ustar with octal numbers
//!   that switch to GNU base-256 when they do not fit (file sizes of 8 GiB and more, but also
//!   uids of 2^21 and more, and pre-1970 mtimes, which PostgreSQL casts to an unsigned 64-bit
//!   number), names of at most 99 bytes, typeflags `0`, `5` and `2`. It appends a `/` to the
//!   names of directories *and* of symbolic links (tablespace links in `pg_tblspc`), so one
//!   trailing slash is stripped from both.
//! - Other producers (GNU tar, bsdtar, Go, Python): the ustar `prefix` field, GNU long name
//!   (`L`) and long link (`K`) records, pax extended headers (`x`, and Solaris' `X`) with
//!   `path`, `linkpath`, `size`, `mtime` (fractional allowed), `uid` and `gid`; pax global
//!   headers (`g`) are checked for syntax and otherwise ignored. The old `\0` typeflag is a
//!   regular file (a directory if its name ends with `/`), `7` (contiguous file) is a regular
//!   file, `1` is reported as a hard link. Device nodes, FIFOs and other types are reported as
//!   [`EntryKind::Other`] for the caller to refuse.
//! - Refused: bad checksums, non-numeric or overflowing numeric fields, negative sizes, GNU
//!   sparse files described by pax records (their data is not the file's content), and
//!   anything after the end-of-archive marker except zero padding.
//!
//! The end of the stream is the subtle part: PostgreSQL 15 and later terminate each archive
//! with two zero blocks, PostgreSQL 13 and 14 do not (pg_basebackup appends them itself). A
//! reader that accepted an unterminated stream from a 15+ server would take a connection cut
//! at a file boundary for a complete backup; [`Termination`] says which rule applies.
//!
//! Paths and link targets are **untrusted**: they are reported as sent (apart from the one
//! trailing slash), and may be absolute, contain `..`, be empty, or not be UTF-8. Callers
//! decide what is safe before touching the file system.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;

use bytes::Bytes;

/// Size of a tar block: headers are one block, content is padded to a multiple of it.
pub const BLOCK_SIZE: usize = 512;

/// Largest GNU long name or long link record, and largest pax `path`/`linkpath` value, the
/// reader buffers. Linux paths are at most 4096 bytes; this leaves room for other systems
/// while bounding what a hostile stream can make the reader hold.
pub const MAX_NAME_LEN: usize = 64 * 1024;

/// Largest pax extended header (all records of one `x` or `g` header) the reader buffers.
pub const MAX_PAX_LEN: usize = 1024 * 1024;

/// The end-of-archive marker: two zero blocks.
pub const END_OF_ARCHIVE: [u8; 2 * BLOCK_SIZE] = [0; 2 * BLOCK_SIZE];

// Header fields (POSIX ustar; GNU and old formats share the first 257 bytes).
const NAME: Range<usize> = 0..100;
const MODE: Range<usize> = 100..108;
const UID: Range<usize> = 108..116;
const GID: Range<usize> = 116..124;
const SIZE: Range<usize> = 124..136;
const MTIME: Range<usize> = 136..148;
const CHKSUM: Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const LINKNAME: Range<usize> = 157..257;
const MAGIC: Range<usize> = 257..263;
const VERSION: Range<usize> = 263..265;
const PREFIX: Range<usize> = 345..500;
/// star writes a shorter prefix (131 bytes, then atime and ctime) and marks its headers with
/// `tar\0` at the end of the block.
const STAR_PREFIX: Range<usize> = 345..476;
const STAR_MAGIC: Range<usize> = 508..512;

/// Length of the name and link fields of a header.
const NAME_FIELD_LEN: usize = 100;
/// Length of the ustar prefix field.
const PREFIX_FIELD_LEN: usize = 155;

/// What the reader requires at the end of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// The archive must end with the end-of-archive marker (two zero blocks), as PostgreSQL 15
    /// and later send it: a stream that stops before the marker is truncated, even at a file
    /// boundary.
    Required,
    /// PostgreSQL 13 and 14 leave the marker out. The stream may then also end right after an
    /// entry (content and padding complete), or after a single zero block; ending inside a
    /// header, inside content or padding, or between an extended header and its entry is
    /// still truncation.
    Optional,
}

/// What an entry is. The names of the typeflags follow POSIX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Typeflag `0`, the old `\0` (without a trailing `/` in the name) or `7` (contiguous file).
    Regular,
    /// Typeflag `5` (or the old `\0` with a name ending in `/`).
    Directory,
    /// Typeflag `2`: `link_target` is the link's content.
    Symlink,
    /// Typeflag `1`: `link_target` names an earlier entry of the archive.
    HardLink,
    /// Any other typeflag (character and block devices `3`/`4`, FIFOs `6`, GNU extensions such
    /// as sparse files `S` or volume labels `V`): reported with its raw typeflag so the caller
    /// can refuse it. Its content, if the header declares any, is passed through as data.
    Other(u8),
}

/// One archive member, as described by its header and the extension headers before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// The member's path, untrusted and unnormalized (see the module docs); one trailing `/` is
    /// removed from directories and symbolic links.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits as sent. PostgreSQL and GNU tar send only `0o7777`; old writers may
    /// include file type bits, so mask before use.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Length of the content that follows the header (pax `size` if given). The reader honors
    /// it for every kind, as PostgreSQL's own reader does; directories and links normally have
    /// zero, and callers should refuse or ignore content for anything but regular files.
    pub size: u64,
    /// Modification time, seconds since the epoch (a fractional pax time is floored).
    pub mtime: i64,
    /// Target of a symbolic or hard link, empty for other kinds (untrusted, as sent).
    pub link_target: Vec<u8>,
}

/// What the reader found next in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarEvent {
    /// A new member starts. Its content follows as [`TarEvent::Data`], then
    /// [`TarEvent::EntryEnd`].
    Entry(TarEntry),
    /// The next piece of the current member's content: never empty, in order, a zero-copy
    /// slice of a pushed buffer. The pieces of one entry add up to exactly its `size`.
    Data(Bytes),
    /// The current member is complete, its padding included.
    EntryEnd,
    /// The end-of-archive marker (two zero blocks). Nothing but zero padding may follow.
    End,
}

/// Why a stream (or an entry to write) was refused. Offsets are byte offsets in the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TarError {
    /// A header's checksum does not match its bytes: corruption, or not a tar stream.
    #[error(
        "tar header at byte {offset}: checksum mismatch (stored {stored}, computed {computed})"
    )]
    BadChecksum {
        offset: u64,
        stored: i64,
        computed: u32,
    },
    /// A header (or extension record) is malformed.
    #[error("tar header at byte {offset}: {reason}")]
    BadHeader { offset: u64, reason: String },
    /// The input ended before the archive did.
    #[error("tar stream truncated: input ended at byte {offset} inside {what}")]
    Truncated { offset: u64, what: &'static str },
    /// An extension record is larger than the reader is willing to buffer.
    #[error("tar header at byte {offset}: {what} of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        offset: u64,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    /// Non-zero bytes after the end-of-archive marker.
    #[error("tar stream: unexpected data at byte {offset}, after the end-of-archive marker")]
    TrailingData { offset: u64 },
    /// A valid tar feature this reader does not implement (so it refuses rather than
    /// misreads).
    #[error("tar header at byte {offset}: {what} is not supported")]
    Unsupported { offset: u64, what: String },
    /// `finish()` was called while events were still waiting in the reader: a caller bug,
    /// not a property of the stream. The reader is left usable.
    #[error("tar reader: finish() called before next_event() returned Ok(None)")]
    Undrained,
    /// [`write_header`] cannot represent this entry.
    #[error("cannot write a tar header for {path:?}: {reason}")]
    InvalidEntry { path: String, reason: String },
}

/// Zero bytes that follow `size` bytes of content to reach a block boundary.
pub fn padding(size: u64) -> usize {
    // The remainder is below 512, so the cast cannot truncate.
    ((BLOCK_SIZE as u64 - size % BLOCK_SIZE as u64) % BLOCK_SIZE as u64) as usize
}

/// Pushed buffers not yet consumed, and how much of the stream has been consumed.
#[derive(Debug, Default)]
struct Input {
    /// Never holds an empty buffer.
    chunks: VecDeque<Bytes>,
    len: usize,
    consumed: u64,
}

impl Input {
    fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.len += data.len();
            self.chunks.push_back(data);
        }
    }

    /// Up to `max` bytes from the front buffer (zero-copy), or None if there is no input.
    fn take(&mut self, max: usize) -> Option<Bytes> {
        if max == 0 {
            return None;
        }
        let front = self.chunks.front_mut()?;
        let chunk = if front.len() <= max {
            self.chunks.pop_front()?
        } else {
            front.split_to(max)
        };
        self.len -= chunk.len();
        self.consumed += chunk.len() as u64;
        Some(chunk)
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }
}

/// Records that describe the next header rather than being members themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetaKind {
    LongName,
    LongLink,
    Pax,
    GlobalPax,
}

impl MetaKind {
    fn from_typeflag(typeflag: u8) -> Option<Self> {
        match typeflag {
            b'L' => Some(Self::LongName),
            b'K' => Some(Self::LongLink),
            b'x' | b'X' => Some(Self::Pax),
            b'g' => Some(Self::GlobalPax),
            _ => None,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::LongName => "GNU long name record",
            Self::LongLink => "GNU long link record",
            Self::Pax => "pax extended header",
            Self::GlobalPax => "pax global header",
        }
    }

    fn limit(self) -> usize {
        match self {
            Self::LongName | Self::LongLink => MAX_NAME_LEN,
            Self::Pax | Self::GlobalPax => MAX_PAX_LEN,
        }
    }
}

/// Values from extension records, applied to the next entry header and then dropped.
#[derive(Debug, Default)]
struct Pending {
    /// Offset of the first extension header of the coming entry, if any.
    since: Option<u64>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<i64>,
    uid: Option<u64>,
    gid: Option<u64>,
}

impl Pending {
    /// Applies one record of a per-entry pax header. An empty value removes an earlier
    /// override, as POSIX specifies; unknown keys (atime, ctime, uname, comment, vendor keys)
    /// are ignored.
    fn apply_pax(&mut self, key: &[u8], value: &[u8], offset: u64) -> Result<(), TarError> {
        let number = |what: &str| -> Result<Option<u64>, TarError> {
            if value.is_empty() {
                return Ok(None);
            }
            parse_decimal(value)
                .map(Some)
                .ok_or_else(|| bad(offset, format!("pax record {what}: not a decimal number")))
        };
        match key {
            b"path" => self.path = pax_name(value, offset, "pax path")?,
            b"linkpath" => self.linkpath = pax_name(value, offset, "pax linkpath")?,
            b"size" => self.size = number("size")?,
            b"uid" => self.uid = number("uid")?,
            b"gid" => self.gid = number("gid")?,
            b"mtime" => {
                self.mtime = if value.is_empty() {
                    None
                } else {
                    Some(parse_pax_time(value).ok_or_else(|| {
                        bad(offset, "pax record mtime: not a decimal time".to_string())
                    })?)
                };
            }
            k if k.starts_with(b"GNU.sparse.") => {
                return Err(TarError::Unsupported {
                    offset,
                    what: "a GNU sparse file (pax GNU.sparse records)".to_string(),
                })
            }
            _ => {}
        }
        Ok(())
    }
}

/// Where the reader is in the stream.
enum State {
    /// Collecting a header block.
    Header,
    /// One zero block seen; collecting the next block, which must be zero too.
    SecondZero,
    /// Passing an entry's content through.
    Data { remaining: u64, pad: usize },
    /// Skipping the padding after content (`entry_end`: then report EntryEnd) or after an
    /// extension record.
    Padding { remaining: usize, entry_end: bool },
    /// Collecting the content of an extension record (its size is already checked).
    Meta {
        kind: MetaKind,
        buf: Vec<u8>,
        remaining: usize,
        pad: usize,
        offset: u64,
    },
    /// The end-of-archive marker was seen.
    Ended,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::SecondZero => "second zero block",
            Self::Data { .. } => "data",
            Self::Padding { .. } => "padding",
            Self::Meta { .. } => "extension record",
            Self::Ended => "ended",
        }
    }
}

/// Sans-IO tar stream parser: push bytes in, pull [`TarEvent`]s out.
///
/// ```
/// use pgkeep_engine::tar::{TarEvent, TarReader, Termination};
/// # fn main() -> Result<(), pgkeep_engine::tar::TarError> {
/// let mut reader = TarReader::new(Termination::Required);
/// reader.push(bytes::Bytes::from_static(&[0u8; 1024])); // an empty archive
/// while let Some(event) = reader.next_event()? {
///     assert_eq!(event, TarEvent::End);
/// }
/// reader.finish()?; // the input ended: Ok only if the archive was complete
/// # Ok(())
/// # }
/// ```
///
/// After an error the reader is poisoned: every later call returns the same error and pushed
/// data is dropped.
pub struct TarReader {
    termination: Termination,
    input: Input,
    state: State,
    pending: Pending,
    block: [u8; BLOCK_SIZE],
    block_fill: usize,
    /// True when the last `next_event` returned `Ok(None)` and nothing was pushed since.
    drained: bool,
    failed: Option<TarError>,
}

impl fmt::Debug for TarReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TarReader")
            .field("termination", &self.termination)
            .field("state", &self.state.name())
            .field("offset", &self.input.consumed)
            .field("buffered", &self.input.len)
            .field("failed", &self.failed)
            .finish()
    }
}

impl TarReader {
    pub fn new(termination: Termination) -> Self {
        Self {
            termination,
            input: Input::default(),
            state: State::Header,
            pending: Pending::default(),
            block: [0; BLOCK_SIZE],
            block_fill: 0,
            drained: true,
            failed: None,
        }
    }

    /// Adds the next bytes of the stream, of any size, split anywhere.
    pub fn push(&mut self, data: Bytes) {
        if self.failed.is_some() || data.is_empty() {
            return;
        }
        self.input.push(data);
        self.drained = false;
    }

    /// The next event, or `Ok(None)` when the reader needs more input (or, after
    /// [`TarEvent::End`], when the remaining input was zero padding).
    pub fn next_event(&mut self) -> Result<Option<TarEvent>, TarError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.step() {
            Ok(event) => {
                // After End with no input left, nothing can be pending: finish() may follow.
                self.drained = event.is_none() || (self.is_ended() && self.input.len == 0);
                Ok(event)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Declares the end of the input. `Ok` only if the stream ended cleanly under this
    /// reader's [`Termination`]. Call it once `next_event` returned `Ok(None)` (or
    /// [`TarEvent::End`] with no input left); before that it returns [`TarError::Undrained`].
    pub fn finish(&mut self) -> Result<(), TarError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if !self.drained {
            return Err(TarError::Undrained);
        }
        let optional = self.termination == Termination::Optional;
        let what = match &self.state {
            State::Ended => return Ok(()),
            State::Header if self.block_fill > 0 => "a header block",
            State::Header if self.pending.since.is_some() => {
                "the entry announced by an extension header"
            }
            State::Header if optional => return Ok(()),
            State::Header => "the archive (no end-of-archive marker)",
            State::SecondZero if optional && self.block_fill == 0 => return Ok(()),
            State::SecondZero => "the end-of-archive marker",
            State::Data { .. } => "entry data",
            State::Padding {
                entry_end: true, ..
            } => "the padding after entry data",
            State::Padding { .. } | State::Meta { .. } => "an extension header",
        };
        let offset = self.input.consumed;
        Err(self.fail(TarError::Truncated { offset, what }))
    }

    /// Stream bytes consumed so far (the offset of the next byte to parse).
    pub fn offset(&self) -> u64 {
        self.input.consumed
    }

    /// Pushed bytes not yet consumed.
    pub fn buffered(&self) -> usize {
        self.input.len
    }

    /// Whether the end-of-archive marker was seen.
    pub fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    pub fn termination(&self) -> Termination {
        self.termination
    }

    fn fail(&mut self, e: TarError) -> TarError {
        self.failed = Some(e.clone());
        self.input.clear();
        self.pending = Pending::default();
        e
    }

    fn step(&mut self) -> Result<Option<TarEvent>, TarError> {
        loop {
            match &mut self.state {
                State::Header | State::SecondZero => {
                    if !self.fill_block() {
                        return Ok(None);
                    }
                    if let Some(event) = self.on_block()? {
                        return Ok(Some(event));
                    }
                }
                State::Data { remaining, .. } if *remaining > 0 => {
                    let want = usize::try_from(*remaining).unwrap_or(usize::MAX);
                    let Some(chunk) = self.input.take(want) else {
                        return Ok(None);
                    };
                    *remaining -= chunk.len() as u64;
                    return Ok(Some(TarEvent::Data(chunk)));
                }
                State::Data { pad, .. } => {
                    let pad = *pad;
                    self.state = State::Padding {
                        remaining: pad,
                        entry_end: true,
                    };
                }
                State::Padding { remaining, .. } if *remaining > 0 => {
                    // Padding is not checked: GNU tar does not either, and PostgreSQL writes
                    // zeros.
                    let Some(chunk) = self.input.take(*remaining) else {
                        return Ok(None);
                    };
                    *remaining -= chunk.len();
                }
                State::Padding { entry_end, .. } => {
                    let entry_end = *entry_end;
                    self.state = State::Header;
                    if entry_end {
                        return Ok(Some(TarEvent::EntryEnd));
                    }
                }
                State::Meta { buf, remaining, .. } if *remaining > 0 => {
                    let Some(chunk) = self.input.take(*remaining) else {
                        return Ok(None);
                    };
                    *remaining -= chunk.len();
                    buf.extend_from_slice(&chunk);
                }
                State::Meta { .. } => {
                    if let State::Meta {
                        kind,
                        buf,
                        pad,
                        offset,
                        ..
                    } = std::mem::replace(&mut self.state, State::Header)
                    {
                        self.on_meta(kind, &buf, offset)?;
                        self.state = State::Padding {
                            remaining: pad,
                            entry_end: false,
                        };
                    }
                }
                State::Ended => {
                    // Tar writers pad archives to a record size (10 KiB for GNU tar).
                    while let Some(chunk) = self.input.take(usize::MAX) {
                        if let Some(i) = chunk.iter().position(|&b| b != 0) {
                            let start = self.input.consumed - chunk.len() as u64;
                            return Err(TarError::TrailingData {
                                offset: start + i as u64,
                            });
                        }
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// Copies input into the header block; true once it holds a whole block.
    fn fill_block(&mut self) -> bool {
        while self.block_fill < BLOCK_SIZE {
            let Some(chunk) = self.input.take(BLOCK_SIZE - self.block_fill) else {
                return false;
            };
            let end = self.block_fill + chunk.len();
            if let Some(dst) = self.block.get_mut(self.block_fill..end) {
                dst.copy_from_slice(&chunk);
            }
            self.block_fill = end;
        }
        self.block_fill = 0;
        true
    }

    /// Handles a complete block read in the Header or SecondZero state.
    fn on_block(&mut self) -> Result<Option<TarEvent>, TarError> {
        let offset = self.input.consumed.saturating_sub(BLOCK_SIZE as u64);
        let zero = self.block.iter().all(|&b| b == 0);
        if matches!(self.state, State::SecondZero) {
            if zero {
                self.state = State::Ended;
                return Ok(Some(TarEvent::End));
            }
            // GNU tar would stop at the lone zero block and ignore what follows; silently
            // dropping members is worse than refusing the stream.
            return Err(bad(
                offset,
                "a header follows a single zero block (the end-of-archive marker is two)".into(),
            ));
        }
        if zero {
            if self.pending.since.is_some() {
                return Err(bad(
                    offset,
                    "end-of-archive marker where the entry of an extension header belongs".into(),
                ));
            }
            self.state = State::SecondZero;
            return Ok(None);
        }

        verify_checksum(&self.block, offset)?;
        let typeflag = self.block[TYPEFLAG];
        let size = header_number(&self.block, SIZE, "size", offset)?;
        let size = u64::try_from(size)
            .map_err(|_| bad(offset, format!("size field: {size} is not a valid size")))?;

        if let Some(kind) = MetaKind::from_typeflag(typeflag) {
            let limit = kind.limit();
            let len = usize::try_from(size)
                .ok()
                .filter(|&len| len <= limit)
                .ok_or(TarError::TooLarge {
                    offset,
                    what: kind.what(),
                    size,
                    limit: limit as u64,
                })?;
            if kind != MetaKind::GlobalPax {
                self.pending.since.get_or_insert(offset);
            }
            self.state = State::Meta {
                kind,
                buf: Vec::with_capacity(len),
                remaining: len,
                pad: padding(size),
                offset,
            };
            return Ok(None);
        }

        let entry = self.build_entry(typeflag, size, offset)?;
        self.state = State::Data {
            remaining: entry.size,
            pad: padding(entry.size),
        };
        Ok(Some(TarEvent::Entry(entry)))
    }

    /// Interprets a complete extension record.
    fn on_meta(&mut self, kind: MetaKind, data: &[u8], offset: u64) -> Result<(), TarError> {
        match kind {
            MetaKind::LongName | MetaKind::LongLink => {
                // The record holds the name and a terminating NUL.
                let name = cstr(data);
                if name.is_empty() {
                    return Err(bad(offset, format!("empty {}", kind.what())));
                }
                if kind == MetaKind::LongName {
                    self.pending.long_name = Some(name.to_vec());
                } else {
                    self.pending.long_link = Some(name.to_vec());
                }
            }
            MetaKind::Pax => {
                let pending = &mut self.pending;
                parse_pax(data, offset, |key, value| {
                    pending.apply_pax(key, value, offset)
                })?;
            }
            MetaKind::GlobalPax => parse_pax(data, offset, |_, _| Ok(()))?,
        }
        Ok(())
    }

    /// The entry described by the header block and the pending extension records.
    fn build_entry(
        &mut self,
        typeflag: u8,
        header_size: u64,
        offset: u64,
    ) -> Result<TarEntry, TarError> {
        let pending = std::mem::take(&mut self.pending);
        let block = &self.block;
        let mode = header_number(block, MODE, "mode", offset)?;
        let mode = u32::try_from(mode)
            .map_err(|_| bad(offset, format!("mode field: {mode} is not a valid mode")))?;
        let uid = match pending.uid {
            Some(uid) => uid,
            None => id_number(block, UID, "uid", offset)?,
        };
        let gid = match pending.gid {
            Some(gid) => gid,
            None => id_number(block, GID, "gid", offset)?,
        };
        let mtime = match pending.mtime {
            Some(mtime) => mtime,
            None => {
                let raw = header_number(block, MTIME, "mtime", offset)?;
                header_mtime(raw)
                    .ok_or_else(|| bad(offset, format!("mtime field: {raw} is out of range")))?
            }
        };
        let mut path = match pending.path.or(pending.long_name) {
            Some(path) => path,
            None => header_path(block),
        };
        let link_target = match pending.linkpath.or(pending.long_link) {
            Some(link) => link,
            None => cstr(field(block, LINKNAME)).to_vec(),
        };
        let kind = match typeflag {
            b'0' | b'7' => EntryKind::Regular,
            // Pre-POSIX tar marked directories only by the trailing slash.
            0 if path.ends_with(b"/") => EntryKind::Directory,
            0 => EntryKind::Regular,
            b'1' => EntryKind::HardLink,
            b'2' => EntryKind::Symlink,
            b'5' => EntryKind::Directory,
            other => EntryKind::Other(other),
        };
        if matches!(kind, EntryKind::Directory | EntryKind::Symlink) && path.ends_with(b"/") {
            path.pop();
        }
        Ok(TarEntry {
            path,
            kind,
            mode,
            uid,
            gid,
            size: pending.size.unwrap_or(header_size),
            mtime,
            link_target,
        })
    }
}

fn bad(offset: u64, reason: String) -> TarError {
    TarError::BadHeader { offset, reason }
}

fn field(block: &[u8; BLOCK_SIZE], range: Range<usize>) -> &[u8] {
    block.get(range).unwrap_or_default()
}

fn field_mut(block: &mut [u8; BLOCK_SIZE], range: Range<usize>) -> &mut [u8] {
    block.get_mut(range).unwrap_or_default()
}

/// The bytes before the first NUL (all of them if there is none: a full field has no NUL).
fn cstr(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    bytes.get(..end).unwrap_or_default()
}

/// The header's own path: the name, joined to the prefix for POSIX ustar headers. GNU headers
/// keep other data (atime, ctime, sparse maps) where ustar has its prefix, so the magic
/// decides.
fn header_path(block: &[u8; BLOCK_SIZE]) -> Vec<u8> {
    let name = cstr(field(block, NAME));
    if field(block, MAGIC) != b"ustar\0" {
        return name.to_vec();
    }
    let prefix = if field(block, STAR_MAGIC) == b"tar\0" {
        field(block, STAR_PREFIX)
    } else {
        field(block, PREFIX)
    };
    let prefix = cstr(prefix);
    if prefix.is_empty() {
        return name.to_vec();
    }
    let mut path = Vec::with_capacity(prefix.len() + 1 + name.len());
    path.extend_from_slice(prefix);
    path.push(b'/');
    path.extend_from_slice(name);
    path
}

/// Unsigned header checksum (the POSIX one) and the signed variant some old writers used,
/// both with the checksum field counted as spaces.
fn checksums(block: &[u8; BLOCK_SIZE]) -> (u32, i32) {
    let mut unsigned = 0u32;
    let mut signed = 0i32;
    for (i, &b) in block.iter().enumerate() {
        let b = if CHKSUM.contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i32::from(b as i8);
    }
    (unsigned, signed)
}

fn verify_checksum(block: &[u8; BLOCK_SIZE], offset: u64) -> Result<(), TarError> {
    let stored = header_number(block, CHKSUM, "checksum", offset)?;
    let (unsigned, signed) = checksums(block);
    if stored == i128::from(unsigned) || stored == i128::from(signed) {
        return Ok(());
    }
    Err(TarError::BadChecksum {
        offset,
        stored: i64::try_from(stored).unwrap_or(i64::MAX),
        computed: unsigned,
    })
}

fn header_number(
    block: &[u8; BLOCK_SIZE],
    range: Range<usize>,
    name: &str,
    offset: u64,
) -> Result<i128, TarError> {
    parse_number(field(block, range))
        .map_err(|reason| bad(offset, format!("{name} field: {reason}")))
}

fn id_number(
    block: &[u8; BLOCK_SIZE],
    range: Range<usize>,
    name: &str,
    offset: u64,
) -> Result<u64, TarError> {
    let raw = header_number(block, range, name, offset)?;
    u64::try_from(raw).map_err(|_| bad(offset, format!("{name} field: {raw} is out of range")))
}

/// A header mtime as seconds. PostgreSQL's `print_tar_number` takes a `uint64`, so a negative
/// `time_t` arrives as a base-256 number between 2^63 and 2^64; no real time is that large,
/// so such a value is read back as the negative time it came from.
fn header_mtime(raw: i128) -> Option<i64> {
    if let Ok(t) = i64::try_from(raw) {
        return Some(t);
    }
    u64::try_from(raw).ok().map(|t| t as i64)
}

/// A numeric header field: octal, or GNU base-256 (first byte 0x80 for positive numbers,
/// 0xff for negative ones in two's complement).
fn parse_number(field: &[u8]) -> Result<i128, &'static str> {
    match field.split_first() {
        Some((0x80, rest)) => parse_base256(rest, false),
        Some((0xff, rest)) => parse_base256(rest, true),
        Some((first, _)) if first & 0x80 != 0 => Err("neither octal nor base-256"),
        _ => parse_octal(field).map(i128::from),
    }
}

fn parse_base256(rest: &[u8], negative: bool) -> Result<i128, &'static str> {
    // Header fields are at most 12 bytes; anything larger could overflow below.
    if rest.len() > 15 {
        return Err("base-256 number too long");
    }
    let mut x: u128 = 0;
    for &b in rest {
        x = (x << 8) | u128::from(if negative { !b } else { b });
    }
    let x = i128::try_from(x).map_err(|_| "base-256 number out of range")?;
    Ok(if negative { -x - 1 } else { x })
}

/// Octal digits after optional leading spaces, ended by a NUL, a space or the field's end
/// (what GNU tar accepts; the rest of the field after the terminator is not examined). A blank
/// field reads as zero, as in Go's and Python's readers.
fn parse_octal(field: &[u8]) -> Result<u64, &'static str> {
    let start = field.iter().position(|&b| b != b' ').unwrap_or(field.len());
    let mut value: u64 = 0;
    for &b in field.get(start..).unwrap_or_default() {
        match b {
            b'0'..=b'7' => {
                value = value
                    .checked_mul(8)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                    .ok_or("octal number out of range")?;
            }
            0 | b' ' => break,
            _ => return Err("not an octal number"),
        }
    }
    Ok(value)
}

/// An unsigned decimal number of at least one digit, no sign, no spaces.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// A pax time: `[-]seconds[.fraction]`, floored to whole seconds.
fn parse_pax_time(value: &[u8]) -> Option<i64> {
    let (negative, value) = match value.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, value),
    };
    let (int, frac) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (value.get(..dot)?, value.get(dot + 1..)?),
        None => (value, &[][..]),
    };
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let secs = i64::try_from(parse_decimal(int)?).ok()?;
    if !negative {
        return Some(secs);
    }
    let below = frac.iter().any(|&b| b != b'0');
    (-secs).checked_sub(i64::from(below))
}

/// A pax path-like value: empty means "no override"; NUL bytes cannot be a path.
fn pax_name(value: &[u8], offset: u64, what: &'static str) -> Result<Option<Vec<u8>>, TarError> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > MAX_NAME_LEN {
        return Err(TarError::TooLarge {
            offset,
            what,
            size: value.len() as u64,
            limit: MAX_NAME_LEN as u64,
        });
    }
    if value.contains(&0) {
        return Err(bad(offset, format!("{what} contains a NUL byte")));
    }
    Ok(Some(value.to_vec()))
}

/// Splits pax records (`<length> <key>=<value>\n`, the length counting the whole record)
/// and hands each key and value to `apply`. Trailing NUL bytes are tolerated.
fn parse_pax(
    data: &[u8],
    offset: u64,
    mut apply: impl FnMut(&[u8], &[u8]) -> Result<(), TarError>,
) -> Result<(), TarError> {
    let malformed = |why: &str| bad(offset, format!("malformed pax record: {why}"));
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| malformed("no length"))?;
        let len = rest
            .get(..space)
            .and_then(parse_decimal)
            .and_then(|len| usize::try_from(len).ok())
            .ok_or_else(|| malformed("length is not a decimal number"))?;
        let record = rest
            .get(..len)
            .ok_or_else(|| malformed("length runs past the header"))?;
        let body = record
            .get(space + 1..len.saturating_sub(1))
            .filter(|_| len >= space + 2 && record.last() == Some(&b'\n'))
            .ok_or_else(|| malformed("record does not end with a newline at its length"))?;
        let eq = body
            .iter()
            .position(|&b| b == b'=')
            .filter(|&eq| eq > 0)
            .ok_or_else(|| malformed("no key=value"))?;
        let (key, value) = body.split_at(eq);
        apply(key, value.get(1..).unwrap_or_default())?;
        rest = rest.get(len..).unwrap_or_default();
    }
    Ok(())
}

/// Writes a number into a header field: zero-padded octal and a NUL when it fits, GNU
/// base-256 otherwise (as PostgreSQL and GNU tar do). False if even base-256 cannot hold it.
fn put_number(dst: &mut [u8], value: i128) -> bool {
    let Some(digits) = dst.len().checked_sub(1) else {
        return false;
    };
    if value >= 0 && value < 1i128 << (3 * digits) {
        let mut v = value;
        for d in dst.iter_mut().take(digits).rev() {
            *d = b'0' + (v & 7) as u8;
            v >>= 3;
        }
        if let Some(last) = dst.last_mut() {
            *last = 0;
        }
        return true;
    }
    let max = 1i128 << (8 * digits);
    if value >= max || value < -max {
        return false;
    }
    let mut v = value;
    for d in dst.iter_mut().rev() {
        *d = (v & 0xff) as u8;
        v >>= 8;
    }
    if let Some(first) = dst.first_mut() {
        *first = if value < 0 { 0xff } else { 0x80 };
    }
    true
}

fn put_bytes(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
}

/// Fills in the checksum of an otherwise complete header: six octal digits, NUL, space.
fn seal(block: &mut [u8; BLOCK_SIZE]) {
    let (sum, _) = checksums(block);
    let chk = field_mut(block, CHKSUM);
    put_number(chk.get_mut(..7).unwrap_or_default(), i128::from(sum));
    put_bytes(chk.get_mut(7..).unwrap_or_default(), b" ");
}

/// Where a long path can be cut into ustar prefix and name: at a `/` leaving a non-empty
/// prefix of at most 155 bytes and a non-empty name of at most 100.
fn ustar_split(path: &[u8]) -> Option<usize> {
    path.iter().enumerate().position(|(i, &b)| {
        b == b'/'
            && (1..=PREFIX_FIELD_LEN).contains(&i)
            && (1..=NAME_FIELD_LEN).contains(&(path.len() - i - 1))
    })
}

const GNU_MAGIC: &[u8; 8] = b"ustar  \0";
const USTAR_MAGIC: &[u8; 8] = b"ustar\x0000";

/// A GNU `L`/`K` record: a header named `././@LongLink`, then the value and a NUL, padded.
fn gnu_long_record(typeflag: u8, value: &[u8], out: &mut Vec<u8>) {
    let size = value.len() as u64 + 1;
    let mut block = [0u8; BLOCK_SIZE];
    put_bytes(field_mut(&mut block, NAME), b"././@LongLink");
    for range in [MODE, UID, GID, MTIME] {
        put_number(field_mut(&mut block, range), 0);
    }
    put_number(field_mut(&mut block, SIZE), i128::from(size));
    block[TYPEFLAG] = typeflag;
    put_bytes(field_mut(&mut block, MAGIC.start..VERSION.end), GNU_MAGIC);
    seal(&mut block);
    out.extend_from_slice(&block);
    out.extend_from_slice(value);
    out.push(0);
    out.resize(out.len() + padding(size), 0);
}

/// The header block(s) for `entry`: a ustar header, preceded by GNU `L`/`K` records when the
/// path or link target does not fit (the ustar prefix field is used first for paths).
/// Directories get the conventional trailing `/`. Numbers too large for octal are written in
/// base-256, as PostgreSQL does. The caller writes exactly `entry.size` bytes of content and
/// [`padding`] zero bytes after it, and [`END_OF_ARCHIVE`] after the last entry.
pub fn write_header(entry: &TarEntry) -> Result<Vec<u8>, TarError> {
    let invalid = |reason: String| TarError::InvalidEntry {
        path: String::from_utf8_lossy(&entry.path).into_owned(),
        reason,
    };
    let typeflag = match entry.kind {
        EntryKind::Regular => b'0',
        EntryKind::Directory => b'5',
        EntryKind::Symlink => b'2',
        EntryKind::HardLink => b'1',
        EntryKind::Other(t)
            if MetaKind::from_typeflag(t).is_some()
                || matches!(t, 0 | b'0' | b'1' | b'2' | b'5' | b'7') =>
        {
            return Err(invalid(format!(
                "typeflag {:?} is an extension header or has a named kind",
                char::from(t)
            )))
        }
        EntryKind::Other(t) => t,
    };
    if entry.path.is_empty() {
        return Err(invalid("empty path".into()));
    }
    if entry.path.contains(&0) || entry.link_target.contains(&0) {
        return Err(invalid("NUL byte in the path or link target".into()));
    }
    let mut name = entry.path.clone();
    if entry.kind == EntryKind::Directory && !name.ends_with(b"/") {
        name.push(b'/');
    }
    for (what, value) in [("path", &name), ("link target", &entry.link_target)] {
        // The long record holds a terminating NUL too; keep it readable by TarReader.
        if value.len() >= MAX_NAME_LEN {
            return Err(invalid(format!(
                "{what} of {} bytes exceeds the limit of {}",
                value.len(),
                MAX_NAME_LEN - 1
            )));
        }
    }

    let long_link = entry.link_target.len() > NAME_FIELD_LEN;
    let split = if name.len() > NAME_FIELD_LEN && !long_link {
        ustar_split(&name)
    } else {
        None
    };
    let long_name = name.len() > NAME_FIELD_LEN && split.is_none();
    // GNU records go with GNU headers, which have no prefix field.
    let gnu = long_name || long_link;

    let mut out = Vec::with_capacity(BLOCK_SIZE);
    let mut block = [0u8; BLOCK_SIZE];
    if long_link {
        gnu_long_record(b'K', &entry.link_target, &mut out);
    }
    if long_name {
        gnu_long_record(b'L', &name, &mut out);
    }
    match split {
        Some(at) => {
            put_bytes(
                field_mut(&mut block, PREFIX),
                name.get(..at).unwrap_or_default(),
            );
            put_bytes(
                field_mut(&mut block, NAME),
                name.get(at + 1..).unwrap_or_default(),
            );
        }
        // Truncated when a long record carries the whole path, as GNU tar does.
        None => put_bytes(field_mut(&mut block, NAME), &name),
    }
    put_bytes(field_mut(&mut block, LINKNAME), &entry.link_target);
    let numbers: [(Range<usize>, i128, &str); 5] = [
        (MODE, i128::from(entry.mode), "mode"),
        (UID, i128::from(entry.uid), "uid"),
        (GID, i128::from(entry.gid), "gid"),
        (SIZE, i128::from(entry.size), "size"),
        (MTIME, i128::from(entry.mtime), "mtime"),
    ];
    for (range, value, what) in numbers {
        if !put_number(field_mut(&mut block, range), value) {
            return Err(invalid(format!(
                "{what} {value} does not fit its header field"
            )));
        }
    }
    block[TYPEFLAG] = typeflag;
    let magic = if gnu { GNU_MAGIC } else { USTAR_MAGIC };
    put_bytes(field_mut(&mut block, MAGIC.start..VERSION.end), magic);
    seal(&mut block);
    out.extend_from_slice(&block);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use std::collections::BTreeMap;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::process::{Command, Stdio};

    type Member = (TarEntry, Vec<u8>);

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut v = vec![0u8; n];
        rng.fill(&mut v[..]);
        v
    }

    fn entry(path: &[u8], kind: EntryKind, size: u64) -> TarEntry {
        TarEntry {
            path: path.to_vec(),
            kind,
            mode: if kind == EntryKind::Directory {
                0o755
            } else {
                0o644
            },
            uid: 1000,
            gid: 1000,
            size,
            mtime: 1_700_000_000,
            link_target: Vec::new(),
        }
    }

    fn file(path: &str, content: Vec<u8>) -> Member {
        (
            entry(path.as_bytes(), EntryKind::Regular, content.len() as u64),
            content,
        )
    }

    fn dir(path: &str) -> Member {
        (entry(path.as_bytes(), EntryKind::Directory, 0), Vec::new())
    }

    fn link(path: &str, kind: EntryKind, target: &str) -> Member {
        let mut e = entry(path.as_bytes(), kind, 0);
        if kind == EntryKind::Symlink {
            e.mode = 0o777; // what Linux reports for every symlink
        }
        e.link_target = target.as_bytes().to_vec();
        (e, Vec::new())
    }

    /// The archive of `members` (written with `write_header`) and the offsets where members
    /// end (0 first): the only places an unterminated stream may cleanly stop.
    fn build(members: &[Member], terminated: bool) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut ends = vec![0];
        for (e, data) in members {
            assert_eq!(e.size, data.len() as u64);
            out.extend(write_header(e).expect("writable entry"));
            out.extend_from_slice(data);
            out.resize(out.len() + padding(e.size), 0);
            ends.push(out.len());
        }
        if terminated {
            out.extend_from_slice(&END_OF_ARCHIVE);
        }
        (out, ends)
    }

    /// Members of many kinds, sizes and header encodings.
    fn sample_members() -> Vec<Member> {
        let mut numbers = file("data/numbers", noise(3, 9));
        numbers.0.uid = 1 << 40; // base-256 in an 8-byte field
        numbers.0.gid = 3_000_000; // just over octal's 7 digits
        numbers.0.mtime = -1_000_000; // negative: base-256 two's complement
        numbers.0.mode = 0o4755;
        let mut future = file("data/future", Vec::new());
        future.0.mtime = 1 << 40; // more than 11 octal digits
        let mut non_utf8 = file("data/x", b"bytes".to_vec());
        non_utf8.0.path = b"data/\xff\xfe name".to_vec();
        vec![
            dir("data"),
            file("data/empty", Vec::new()),
            file("data/one", noise(1, 1)),
            file("data/b511", noise(511, 2)),
            file("data/b512", noise(512, 3)),
            file("data/b513", noise(513, 4)),
            file("data/b1025", noise(1025, 5)),
            link("data/link", EntryKind::Symlink, "b512"),
            link("data/hard", EntryKind::HardLink, "data/b512"),
            (entry(b"data/fifo", EntryKind::Other(b'6'), 0), Vec::new()),
            file(&format!("data/{}", "x".repeat(95)), noise(5, 6)), // name field full, no NUL
            dir(&format!("data/{}", "y".repeat(94))),               // 100 bytes with the slash
            file(
                &format!("data/{}/{}", "p".repeat(90), "q".repeat(90)),
                noise(700, 7),
            ), // prefix
            dir(&format!("data/{}/{}", "e".repeat(60), "f".repeat(60))), // prefix
            file(&format!("data/{}", "L".repeat(200)), noise(10, 8)), // GNU L
            dir(&format!("data/{}", "d".repeat(120))),              // GNU L
            link("data/longlink", EntryKind::Symlink, &"t/".repeat(80)), // GNU K
            link(
                &format!("data/{}", "h".repeat(150)),
                EntryKind::HardLink,
                &"u".repeat(130),
            ),
            numbers,
            future,
            non_utf8,
        ]
    }

    /// Everything one parse produced.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        members: Vec<Member>,
        /// The member being read when the parse stopped.
        partial: Option<Member>,
        ended: bool,
        result: Result<(), TarError>,
    }

    impl Outcome {
        /// Pulls every available event, checking the event grammar on the way.
        fn drain(&mut self, reader: &mut TarReader) -> Result<(), TarError> {
            while let Some(event) = reader.next_event()? {
                assert!(!self.ended, "event after End: {event:?}");
                match event {
                    TarEvent::Entry(e) => {
                        assert!(self.partial.is_none(), "Entry inside an entry");
                        self.partial = Some((e, Vec::new()));
                    }
                    TarEvent::Data(d) => {
                        assert!(!d.is_empty(), "empty Data event");
                        let (e, data) = self.partial.as_mut().expect("Data outside an entry");
                        data.extend_from_slice(&d);
                        assert!(data.len() as u64 <= e.size, "more data than the size");
                    }
                    TarEvent::EntryEnd => {
                        let (e, data) = self.partial.take().expect("EntryEnd outside an entry");
                        assert_eq!(data.len() as u64, e.size, "short entry");
                        self.members.push((e, data));
                    }
                    TarEvent::End => {
                        assert!(self.partial.is_none(), "End inside an entry");
                        self.ended = true;
                    }
                }
            }
            Ok(())
        }
    }

    fn parse_pieces(pieces: Vec<Bytes>, termination: Termination) -> Outcome {
        let mut reader = TarReader::new(termination);
        let mut out = Outcome {
            members: Vec::new(),
            partial: None,
            ended: false,
            result: Ok(()),
        };
        for piece in pieces {
            reader.push(piece);
            if let Err(e) = out.drain(&mut reader) {
                out.result = Err(e);
                return out;
            }
        }
        out.result = reader.finish();
        if out.result.is_ok() {
            assert!(out.partial.is_none());
        }
        out
    }

    fn parse(data: &[u8], termination: Termination) -> Outcome {
        parse_pieces(vec![Bytes::copy_from_slice(data)], termination)
    }

    fn fixed_pieces(data: &[u8], n: usize) -> Vec<Bytes> {
        data.chunks(n).map(Bytes::copy_from_slice).collect()
    }

    fn random_pieces(data: &[u8], seed: u64, max: usize) -> Vec<Bytes> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pieces = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = rng.gen_range(1..=max).min(rest.len());
            let (piece, tail) = rest.split_at(n);
            pieces.push(Bytes::copy_from_slice(piece));
            rest = tail;
        }
        pieces
    }

    /// Ways to cut `data` into pushes: whole, byte by byte, around block sizes, randomly.
    fn split_patterns(data: &[u8]) -> Vec<(String, Vec<Bytes>)> {
        let mut patterns = vec![("whole".to_string(), vec![Bytes::copy_from_slice(data)])];
        for n in [1, 3, 100, 511, 512, 513, 4096] {
            patterns.push((format!("fixed {n}"), fixed_pieces(data, n)));
        }
        for (seed, max) in [(1, 10), (2, 700), (3, 1500), (4, 20_000)] {
            patterns.push((
                format!("random {seed}/{max}"),
                random_pieces(data, seed, max),
            ));
        }
        patterns
    }

    /// A header built field by field (for shapes `write_header` does not produce).
    fn raw_header(name: &[u8], typeflag: u8, size: u64, magic: &[u8; 8]) -> [u8; BLOCK_SIZE] {
        let mut b = [0u8; BLOCK_SIZE];
        put_bytes(field_mut(&mut b, NAME), name);
        put_number(field_mut(&mut b, MODE), 0o644);
        put_number(field_mut(&mut b, UID), 0);
        put_number(field_mut(&mut b, GID), 0);
        put_number(field_mut(&mut b, SIZE), i128::from(size));
        put_number(field_mut(&mut b, MTIME), 1_700_000_000);
        b[TYPEFLAG] = typeflag;
        put_bytes(field_mut(&mut b, MAGIC.start..VERSION.end), magic);
        seal(&mut b);
        b
    }

    fn reseal(mut b: [u8; BLOCK_SIZE]) -> [u8; BLOCK_SIZE] {
        field_mut(&mut b, CHKSUM).fill(0);
        seal(&mut b);
        b
    }

    /// A pax record; its length counts its own digits.
    fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        let base = key.len() + value.len() + 3;
        let mut len = base + 1;
        while base + len.to_string().len() != len {
            len = base + len.to_string().len();
        }
        let mut r = format!("{len} {key}=").into_bytes();
        r.extend_from_slice(value);
        r.push(b'\n');
        r
    }

    /// A block-padded member with raw content.
    fn raw_member(header: [u8; BLOCK_SIZE], content: &[u8]) -> Vec<u8> {
        let mut out = header.to_vec();
        out.extend_from_slice(content);
        out.resize(out.len() + padding(content.len() as u64), 0);
        out
    }

    fn pax_header(typeflag: u8, records: &[(&str, &[u8])]) -> Vec<u8> {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        let header = raw_header(b"PaxHeaders/x", typeflag, data.len() as u64, USTAR_MAGIC);
        raw_member(header, &data)
    }

    fn terminated(mut data: Vec<u8>) -> Vec<u8> {
        data.extend_from_slice(&END_OF_ARCHIVE);
        data
    }

    fn single(data: &[u8]) -> Member {
        let out = parse(data, Termination::Required);
        assert_eq!(out.result, Ok(()), "{out:?}");
        assert!(out.ended);
        assert_eq!(out.members.len(), 1, "{out:?}");
        out.members.into_iter().next().expect("one member")
    }

    fn error_of(data: &[u8], termination: Termination) -> TarError {
        let out = parse(data, termination);
        out.result.expect_err("the stream must be refused")
    }

    #[test]
    fn padding_rounds_up_to_blocks() {
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(511), 1);
        assert_eq!(padding(512), 0);
        assert_eq!(padding(513), 511);
        assert_eq!(padding(u64::MAX), 1);
    }

    #[test]
    fn numeric_fields_octal_base256_and_garbage() {
        assert_eq!(parse_number(b"0000644\0"), Ok(0o644));
        assert_eq!(parse_number(b"0000644 "), Ok(0o644));
        assert_eq!(parse_number(b"   644  "), Ok(0o644));
        assert_eq!(parse_number(b"644\0junk"), Ok(0o644));
        assert_eq!(parse_number(b"77777777777 "), Ok(0o77777777777));
        assert_eq!(
            parse_number(b"777777777777"),
            Ok(0o777777777777),
            "full field"
        );
        assert_eq!(parse_number(b"\0\0\0\0\0\0\0\0"), Ok(0), "blank");
        assert_eq!(parse_number(b"        "), Ok(0), "blank");
        assert!(parse_number(b"0000648\0").is_err());
        assert!(parse_number(b"-000644\0").is_err());
        assert!(parse_number(b"0x1234\0\0").is_err());
        assert!(parse_number(b"\x81\0\0\0\0\0\0\0").is_err());
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[7..].copy_from_slice(&[1, 2, 3, 4, 5]);
        assert_eq!(parse_number(&f), Ok(0x01_0203_0405));
        assert_eq!(parse_number(&[0xff; 12]), Ok(-1));
        let mut f = [0xffu8; 8];
        f[7] = 0xfe;
        assert_eq!(parse_number(&f), Ok(-2));
        // Writer and reader agree on every boundary.
        for len in [8usize, 12] {
            let max = 1i128 << (8 * (len - 1));
            for v in [
                0,
                1,
                7,
                8,
                (1 << (3 * (len - 1))) - 1,
                1 << (3 * (len - 1)),
                -1,
                -max,
                max - 1,
            ] {
                let mut f = vec![0u8; len];
                assert!(put_number(&mut f, v), "{v} in {len}");
                assert_eq!(parse_number(&f), Ok(v), "{v} in {len}");
            }
            let mut f = vec![0u8; len];
            assert!(!put_number(&mut f, max));
            assert!(!put_number(&mut f, -max - 1));
        }
        assert_eq!(parse_pax_time(b"1700000000"), Some(1_700_000_000));
        assert_eq!(parse_pax_time(b"1700000000.999999999"), Some(1_700_000_000));
        assert_eq!(parse_pax_time(b"-1.5"), Some(-2));
        assert_eq!(parse_pax_time(b"-3.000"), Some(-3));
        assert_eq!(parse_pax_time(b"12."), Some(12));
        for bad in [
            &b""[..],
            b".5",
            b"1e9",
            b"1.2.3",
            b"+5",
            b"99999999999999999999",
            b"-",
        ] {
            assert_eq!(
                parse_pax_time(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn round_trip_every_split() {
        let members = sample_members();
        let (archive, _) = build(&members, true);
        for (name, pieces) in split_patterns(&archive) {
            for termination in [Termination::Required, Termination::Optional] {
                let out = parse_pieces(pieces.clone(), termination);
                assert_eq!(out.result, Ok(()), "{name}");
                assert!(out.ended, "{name}");
                assert_eq!(out.members, members, "{name}");
            }
        }
    }

    #[test]
    fn round_trip_every_two_and_some_three_piece_splits() {
        let members = sample_members();
        let (archive, _) = build(&members[..9], true);
        let mut rng = StdRng::seed_from_u64(42);
        for cut in 0..=archive.len() {
            let (a, b) = archive.split_at(cut);
            let mut pieces = vec![Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)];
            let out = parse_pieces(pieces.clone(), Termination::Required);
            assert_eq!((out.result, out.ended), (Ok(()), true), "cut {cut}");
            assert_eq!(out.members, &members[..9], "cut {cut}");
            let second = rng.gen_range(0..=b.len());
            let (b1, b2) = b.split_at(second);
            pieces.splice(
                1..,
                [Bytes::copy_from_slice(b1), Bytes::copy_from_slice(b2)],
            );
            let out = parse_pieces(pieces, Termination::Required);
            assert_eq!(out.members, &members[..9], "cuts {cut}, +{second}");
        }
    }

    #[test]
    fn multi_mib_entry_round_trips_and_data_is_zero_copy() {
        let members = vec![
            file("a", noise(100, 1)),
            file("big", noise(3 * 1024 * 1024 + 5, 2)),
            file("z", noise(600, 3)),
        ];
        let (archive, _) = build(&members, true);
        let mut patterns = split_patterns(&archive);
        patterns.push(("fixed 8192".into(), fixed_pieces(&archive, 8192)));
        for (name, pieces) in patterns {
            let out = parse_pieces(pieces, Termination::Required);
            assert_eq!((out.result, out.ended), (Ok(()), true), "{name}");
            assert!(out.members == members, "{name}: content differs");
        }

        // Pushed as one buffer, the content comes back as slices of that very buffer.
        let whole = Bytes::from(archive);
        let range = whole.as_ptr() as usize..whole.as_ptr() as usize + whole.len();
        let mut reader = TarReader::new(Termination::Required);
        reader.push(whole.clone());
        let mut data_events = 0;
        while let Some(event) = reader.next_event().expect("valid archive") {
            if let TarEvent::Data(d) = event {
                data_events += 1;
                assert!(range.contains(&(d.as_ptr() as usize)), "data was copied");
            }
        }
        assert_eq!(data_events, 3, "one slice per entry when pushed whole");
        reader.finish().expect("complete archive");
    }

    #[test]
    fn memory_stays_bounded_for_huge_entries() {
        // 256 MiB of content pushed as 64 KiB buffers: nothing accumulates in the reader.
        static ZEROS: [u8; 65536] = [0; 65536];
        let size = 256 * 1024 * 1024u64;
        let header = write_header(&entry(b"huge", EntryKind::Regular, size)).expect("header");
        let mut reader = TarReader::new(Termination::Required);
        reader.push(Bytes::from(header));
        let mut seen = 0u64;
        let mut push_and_drain = |reader: &mut TarReader, data: Bytes| {
            reader.push(data);
            while let Some(event) = reader.next_event().expect("valid") {
                if let TarEvent::Data(d) = event {
                    seen += d.len() as u64;
                }
            }
            assert_eq!(reader.buffered(), 0);
        };
        for _ in 0..size / ZEROS.len() as u64 {
            push_and_drain(&mut reader, Bytes::from_static(&ZEROS));
        }
        push_and_drain(&mut reader, Bytes::from_static(&END_OF_ARCHIVE));
        assert_eq!(seen, size);
        assert!(reader.is_ended());
        reader.finish().expect("complete");
    }

    #[test]
    fn truncation_at_every_offset_is_detected() {
        let members = sample_members();
        let (archive, ends) = build(&members, true);
        let entries_end = archive.len() - END_OF_ARCHIVE.len();
        for cut in 0..=archive.len() {
            let prefix = &archive[..cut];
            let pieces = [
                vec![Bytes::copy_from_slice(prefix)],
                random_pieces(prefix, cut as u64, 600),
            ];
            for pieces in pieces {
                let required = parse_pieces(pieces.clone(), Termination::Required);
                let optional = parse_pieces(pieces, Termination::Optional);
                if cut == archive.len() {
                    assert_eq!(required.result, Ok(()));
                    assert_eq!(optional.result, Ok(()));
                    assert!(required.ended && optional.ended);
                    continue;
                }
                assert!(!required.ended && !optional.ended, "End seen at cut {cut}");
                assert!(
                    matches!(required.result, Err(TarError::Truncated { offset, .. }) if offset == cut as u64),
                    "cut {cut}: {:?}",
                    required.result
                );
                let clean = ends.contains(&cut) || cut == entries_end + BLOCK_SIZE;
                if clean {
                    assert_eq!(optional.result, Ok(()), "cut {cut}");
                    let complete = ends.iter().position(|&e| e == cut).unwrap_or(members.len());
                    assert_eq!(optional.members, &members[..complete], "cut {cut}");
                } else {
                    assert!(
                        matches!(optional.result, Err(TarError::Truncated { offset, .. }) if offset == cut as u64),
                        "cut {cut}: {:?}",
                        optional.result
                    );
                }
            }
        }
    }

    #[test]
    fn legacy_unterminated_stream_and_lone_zero_block() {
        let members = sample_members();
        let (archive, _) = build(&members, false);
        let out = parse(&archive, Termination::Optional);
        assert_eq!((out.result, out.ended), (Ok(()), false));
        assert_eq!(out.members, members);
        assert!(matches!(
            error_of(&archive, Termination::Required),
            TarError::Truncated { offset, .. } if offset == archive.len() as u64
        ));

        let mut one_zero = archive.clone();
        one_zero.extend_from_slice(&[0; BLOCK_SIZE]);
        let out = parse(&one_zero, Termination::Optional);
        assert_eq!((out.result, out.ended), (Ok(()), false));
        assert_eq!(out.members, members);
        assert!(matches!(
            error_of(&one_zero, Termination::Required),
            TarError::Truncated { .. }
        ));

        // Empty input: a legacy archive with no members, but never a complete 15+ one.
        assert_eq!(parse(&[], Termination::Optional).result, Ok(()));
        assert!(matches!(
            error_of(&[], Termination::Required),
            TarError::Truncated { offset: 0, .. }
        ));
    }

    #[test]
    fn zero_padding_after_the_end_is_allowed_other_data_is_not() {
        let (mut archive, _) = build(&sample_members()[..3], true);
        archive.resize(10240, 0); // GNU tar's record size
        for (name, pieces) in split_patterns(&archive) {
            let out = parse_pieces(pieces, Termination::Required);
            assert_eq!((out.result, out.ended), (Ok(()), true), "{name}");
        }
        let at = archive.len() - 100;
        archive[at] = b'x';
        for (name, pieces) in split_patterns(&archive) {
            let out = parse_pieces(pieces, Termination::Required);
            assert!(out.ended, "{name}");
            assert_eq!(
                out.result,
                Err(TarError::TrailingData { offset: at as u64 }),
                "{name}"
            );
        }
        // A whole archive appended after the end marker is refused, not read.
        let (mut twice, _) = build(&sample_members()[..3], true);
        let (second, _) = build(&sample_members()[..3], true);
        let end = twice.len() as u64;
        twice.extend_from_slice(&second);
        assert_eq!(
            error_of(&twice, Termination::Optional),
            TarError::TrailingData { offset: end }
        );
    }

    #[test]
    fn lone_zero_block_followed_by_a_header_is_refused() {
        let (first, _) = build(&sample_members()[..2], false);
        let (second, _) = build(&sample_members()[2..4], true);
        let mut data = first.clone();
        data.extend_from_slice(&[0; BLOCK_SIZE]);
        data.extend_from_slice(&second);
        for termination in [Termination::Required, Termination::Optional] {
            assert!(matches!(
                error_of(&data, termination),
                TarError::BadHeader { offset, .. } if offset == first.len() as u64 + 512
            ));
        }
    }

    #[test]
    fn corrupted_checksums_are_refused() {
        let members = sample_members();
        let (archive, ends) = build(&members, true);
        // The fourth member's header starts where the third ended.
        let header_at = ends[3];
        let mut bad = archive.clone();
        bad[header_at + 10] ^= 0x20;
        let err = error_of(&bad, Termination::Required);
        assert!(
            matches!(err, TarError::BadChecksum { offset, .. } if offset == header_at as u64),
            "{err:?}"
        );
        let mut bad = archive.clone();
        bad[header_at + CHKSUM.start] = b'9';
        assert!(matches!(
            error_of(&bad, Termination::Required),
            TarError::BadHeader { offset, .. } if offset == header_at as u64
        ));
        // Three members made it through before the corrupt header.
        let out = parse(&bad, Termination::Required);
        assert_eq!(out.members, &members[..3]);
    }

    #[test]
    fn signed_checksum_variant_is_accepted() {
        let mut h = raw_header("caf\u{e9}/\u{fc}ber".as_bytes(), b'0', 3, USTAR_MAGIC);
        let (unsigned, signed) = checksums(&h);
        assert_ne!(i64::from(unsigned), i64::from(signed));
        field_mut(&mut h, CHKSUM).fill(0);
        put_number(&mut field_mut(&mut h, CHKSUM)[..7], i128::from(signed));
        let (e, data) = single(&terminated(raw_member(h, b"abc")));
        assert_eq!(e.path, "caf\u{e9}/\u{fc}ber".as_bytes());
        assert_eq!(data, b"abc");
    }

    #[test]
    fn gnu_long_records_and_gnu_headers() {
        // Written by write_header: L for the path, K for the target, GNU magic.
        let mut m = link(&"n".repeat(300), EntryKind::Symlink, &"t".repeat(400));
        m.0.mode = 0o777;
        let (archive, _) = build(std::slice::from_ref(&m), true);
        assert_eq!(&archive[TYPEFLAG..TYPEFLAG + 1], b"K");
        assert_eq!(single(&archive), m);

        // A GNU header keeps atime and ctime where ustar has its prefix: not part of the path.
        let mut h = raw_header(b"gnu/file", b'0', 2, GNU_MAGIC);
        put_number(&mut h[345..357], 1_700_000_000);
        put_number(&mut h[357..369], 1_700_000_000);
        let (e, _) = single(&terminated(raw_member(reseal(h), b"hi")));
        assert_eq!(e.path, b"gnu/file");

        // An L record's NUL and anything after it are not part of the name.
        let long = raw_header(b"././@LongLink", b'L', 9, GNU_MAGIC);
        let mut data = raw_member(long, b"abc/def\0\0");
        data.extend(raw_member(raw_header(b"abc/d", b'0', 0, GNU_MAGIC), b""));
        assert_eq!(single(&terminated(data)).0.path, b"abc/def");

        // An empty L record cannot name anything.
        let long = raw_header(b"././@LongLink", b'L', 1, GNU_MAGIC);
        let mut data = raw_member(long, b"\0");
        data.extend(raw_member(raw_header(b"x", b'0', 0, GNU_MAGIC), b""));
        assert!(matches!(
            error_of(&terminated(data), Termination::Required),
            TarError::BadHeader { offset: 0, .. }
        ));
    }

    #[test]
    fn pax_headers_override_the_ustar_fields() {
        let long_path = format!("pax/{}", "p".repeat(300));
        let content = noise(1000, 11);
        let mut data = pax_header(b'g', &[("path", b"ignored/global"), ("comment", b"hello")]);
        data.extend(pax_header(
            b'x',
            &[
                ("path", long_path.as_bytes()),
                ("size", b"1000"),
                ("mtime", b"1700000123.75"),
                ("atime", b"whatever"),
                ("uid", b"4294967296"),
                ("gid", b"77"),
                ("SCHILY.xattr.user.x", b"binary\n=value"),
            ],
        ));
        // The ustar size says 0; the pax size says how much content follows.
        data.extend(raw_member(
            raw_header(b"pax/short", b'0', 0, USTAR_MAGIC),
            &content,
        ));
        data.extend(pax_header(
            b'x',
            &[("linkpath", "l".repeat(200).as_bytes()), ("mtime", b"-1.5")],
        ));
        data.extend(raw_member(
            raw_header(b"pax/link", b'2', 0, USTAR_MAGIC),
            b"",
        ));
        // An empty value removes an override: the header's name stands.
        data.extend(pax_header(b'x', &[("path", b"first"), ("path", b"")]));
        data.extend(raw_member(
            raw_header(b"pax/plain", b'0', 0, USTAR_MAGIC),
            b"",
        ));
        let data = terminated(data);
        for (name, pieces) in split_patterns(&data) {
            let out = parse_pieces(pieces, Termination::Required);
            assert_eq!(out.result, Ok(()), "{name}");
            let [(a, a_data), (b, _), (c, _)] = &out.members[..] else {
                panic!("{name}: {:?}", out.members)
            };
            assert_eq!(a.path, long_path.as_bytes());
            assert_eq!(
                (a.size, a.mtime, a.uid, a.gid),
                (1000, 1_700_000_123, 1 << 32, 77)
            );
            assert!(a_data == &content);
            assert_eq!((b.kind, b.mtime), (EntryKind::Symlink, -2));
            assert_eq!(b.link_target, "l".repeat(200).as_bytes());
            assert_eq!(b.path, b"pax/link");
            assert_eq!(c.path, b"pax/plain");
        }
    }

    #[test]
    fn malformed_or_unsupported_pax_headers_are_refused() {
        let entry_after = |mut pax: Vec<u8>| {
            pax.extend(raw_member(raw_header(b"f", b'0', 0, USTAR_MAGIC), b""));
            terminated(pax)
        };
        let raw_pax = |body: &[u8]| {
            raw_member(
                raw_header(b"PaxHeaders/f", b'x', body.len() as u64, USTAR_MAGIC),
                body,
            )
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("no length", raw_pax(b"path=x\n")),
            ("length too long", raw_pax(b"99 path=x\n")),
            ("length too short", raw_pax(b"5 path=x\n")),
            ("no newline", raw_pax(b"10 path=xy")),
            ("no key", raw_pax(b"6 =xy\n")),
            ("no equals", raw_pax(b"7 pathx\n")),
            ("huge length", raw_pax(b"99999999999999999999999 path=x\n")),
            ("bad size", pax_header(b'x', &[("size", b"12k")])),
            ("negative size", pax_header(b'x', &[("size", b"-1")])),
            ("bad mtime", pax_header(b'x', &[("mtime", b"yesterday")])),
            ("bad uid", pax_header(b'x', &[("uid", b"0x10")])),
            ("NUL in path", pax_header(b'x', &[("path", b"a\0b")])),
            (
                "malformed global",
                raw_member(raw_header(b"g", b'g', 4, USTAR_MAGIC), b"junk"),
            ),
        ];
        for (name, pax) in cases {
            let err = error_of(&entry_after(pax), Termination::Required);
            assert!(
                matches!(err, TarError::BadHeader { offset: 0, .. }),
                "{name}: {err:?}"
            );
        }
        let sparse = pax_header(
            b'x',
            &[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")],
        );
        let err = error_of(&entry_after(sparse), Termination::Required);
        assert!(
            matches!(err, TarError::Unsupported { offset: 0, .. }),
            "{err:?}"
        );
        let long = pax_header(b'x', &[("path", "a".repeat(MAX_NAME_LEN + 1).as_bytes())]);
        let err = error_of(&entry_after(long), Termination::Required);
        assert!(
            matches!(err, TarError::TooLarge { offset: 0, .. }),
            "{err:?}"
        );

        // An extension header must be followed by its entry.
        let pax = pax_header(b'x', &[("path", b"x")]);
        assert!(matches!(
            error_of(&terminated(pax.clone()), Termination::Optional),
            TarError::BadHeader { .. }
        ));
        for termination in [Termination::Required, Termination::Optional] {
            assert!(matches!(
                error_of(&pax, termination),
                TarError::Truncated { .. }
            ));
        }
    }

    #[test]
    fn ustar_prefix_field() {
        let mut h = raw_header(b"c.txt", b'0', 1, USTAR_MAGIC);
        put_bytes(field_mut(&mut h, PREFIX), b"a/b");
        let (e, data) = single(&terminated(raw_member(reseal(h), b"!")));
        assert_eq!(
            (e.path.as_slice(), data.as_slice()),
            (&b"a/b/c.txt"[..], &b"!"[..])
        );

        // A full prefix has no NUL; the old-GNU magic ignores the field.
        let mut h = raw_header(b"name", b'5', 0, USTAR_MAGIC);
        put_bytes(field_mut(&mut h, PREFIX), "p".repeat(155).as_bytes());
        let (e, _) = single(&terminated(raw_member(reseal(h), b"")));
        assert_eq!(e.path, format!("{}/name", "p".repeat(155)).as_bytes());
        let mut gnu = h;
        put_bytes(field_mut(&mut gnu, MAGIC.start..VERSION.end), GNU_MAGIC);
        assert_eq!(
            single(&terminated(raw_member(reseal(gnu), b""))).0.path,
            b"name"
        );

        // star: 131-byte prefix, then atime and ctime, and "tar\0" at the end of the block.
        let mut h = raw_header(b"name", b'0', 0, USTAR_MAGIC);
        put_bytes(field_mut(&mut h, STAR_PREFIX), b"star/dir");
        put_number(&mut h[476..488], 1_700_000_000);
        put_bytes(field_mut(&mut h, STAR_MAGIC), b"tar\0");
        assert_eq!(
            single(&terminated(raw_member(reseal(h), b""))).0.path,
            b"star/dir/name"
        );

        // The writer splits at a slash when the path is too long for the name field.
        let path = format!("{}/{}", "a".repeat(150), "b".repeat(100));
        let header = write_header(&entry(path.as_bytes(), EntryKind::Regular, 0)).expect("fits");
        assert_eq!(header.len(), BLOCK_SIZE, "no GNU record needed");
        assert_eq!(cstr(&header[PREFIX]), "a".repeat(150).as_bytes());
        assert_eq!(&header[NAME], "b".repeat(100).as_bytes());
    }

    #[test]
    fn base256_sizes_and_bad_sizes() {
        // 8 GiB and more: only the headers are needed to see the sizes.
        for size in [8u64 << 30, 100 << 30, u64::MAX] {
            let header = write_header(&entry(b"big", EntryKind::Regular, size)).expect("header");
            assert_eq!(header[SIZE.start], 0x80, "base-256");
            let mut reader = TarReader::new(Termination::Required);
            reader.push(Bytes::from(header));
            let Some(TarEvent::Entry(e)) = reader.next_event().expect("header") else {
                panic!("no entry")
            };
            assert_eq!(e.size, size);
            assert_eq!(reader.next_event(), Ok(None));
            assert!(matches!(
                reader.finish(),
                Err(TarError::Truncated {
                    what: "entry data",
                    ..
                })
            ));
        }
        // Just below 8 GiB is still octal.
        let header =
            write_header(&entry(b"big", EntryKind::Regular, (8 << 30) - 1)).expect("header");
        assert_eq!(&header[SIZE], b"77777777777\0");

        let mut too_big = raw_header(b"f", b'0', 0, USTAR_MAGIC);
        too_big[SIZE].copy_from_slice(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut negative = raw_header(b"f", b'0', 0, USTAR_MAGIC);
        negative[SIZE].fill(0xff);
        let mut garbage = raw_header(b"f", b'0', 0, USTAR_MAGIC);
        garbage[SIZE].copy_from_slice(b"0000000001x\0");
        let mut bad_mode = raw_header(b"f", b'0', 0, USTAR_MAGIC);
        bad_mode[MODE].copy_from_slice(&[0x80, 0, 0, 1, 0, 0, 0, 0]);
        let mut bad_uid = raw_header(b"f", b'0', 0, USTAR_MAGIC);
        bad_uid[UID].fill(0xff);
        let mut bad_mtime = raw_header(b"f", b'0', 0, USTAR_MAGIC);
        bad_mtime[MTIME].copy_from_slice(&[0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for (name, h) in [
            ("size > u64", too_big),
            ("negative size", negative),
            ("garbage size", garbage),
            ("mode > u32", bad_mode),
            ("negative uid", bad_uid),
            ("mtime > u64", bad_mtime),
        ] {
            let err = error_of(
                &terminated(raw_member(reseal(h), b"")),
                Termination::Required,
            );
            assert!(
                matches!(err, TarError::BadHeader { offset: 0, .. }),
                "{name}: {err:?}"
            );
        }
    }

    #[test]
    fn old_and_other_typeflags() {
        let data = |h| terminated(raw_member(reseal(h), b""));
        assert_eq!(
            single(&data(raw_header(b"f", 0, 0, &[0; 8]))).0.kind,
            EntryKind::Regular
        );
        let (e, _) = single(&data(raw_header(b"old/dir/", 0, 0, &[0; 8])));
        assert_eq!(
            (e.kind, e.path.as_slice()),
            (EntryKind::Directory, &b"old/dir"[..])
        );
        assert_eq!(
            single(&data(raw_header(b"c", b'7', 0, USTAR_MAGIC))).0.kind,
            EntryKind::Regular
        );
        for t in [b'3', b'4', b'6', b'V', b'S', b'D', b'Z'] {
            assert_eq!(
                single(&data(raw_header(b"o", t, 0, USTAR_MAGIC))).0.kind,
                EntryKind::Other(t)
            );
        }
        // A regular file keeps a trailing slash (the caller decides); one slash only is removed.
        assert_eq!(
            single(&data(raw_header(b"f/", b'0', 0, USTAR_MAGIC)))
                .0
                .path,
            b"f/"
        );
        assert_eq!(
            single(&data(raw_header(b"d//", b'5', 0, USTAR_MAGIC)))
                .0
                .path,
            b"d/"
        );
        // Content declared for a non-file is passed through, not skipped silently.
        let (e, content) = single(&terminated(raw_member(
            raw_header(b"d", b'5', 3, USTAR_MAGIC),
            b"abc",
        )));
        assert_eq!(
            (e.kind, content.as_slice()),
            (EntryKind::Directory, &b"abc"[..])
        );
    }

    #[test]
    fn garbage_input_is_refused() {
        let random = noise(64 * 1024, 99);
        let text = b"This is not a tar file. ".repeat(100);
        let mut almost = vec![0u8; BLOCK_SIZE];
        almost[0] = b'x';
        for (name, data) in [("random", random), ("text", text), ("one byte set", almost)] {
            for (split, pieces) in split_patterns(&data) {
                for termination in [Termination::Required, Termination::Optional] {
                    let out = parse_pieces(pieces.clone(), termination);
                    assert!(out.members.is_empty() && !out.ended, "{name} {split}");
                    assert!(
                        matches!(
                            out.result,
                            Err(TarError::BadChecksum { offset: 0, .. }
                                | TarError::BadHeader { offset: 0, .. })
                        ),
                        "{name} {split}: {:?}",
                        out.result
                    );
                }
            }
        }
        // Too short to be a header at all.
        assert!(matches!(
            error_of(b"short", Termination::Optional),
            TarError::Truncated {
                offset: 5,
                what: "a header block"
            }
        ));
    }

    #[test]
    fn hostile_extension_lengths_are_refused_before_buffering() {
        for (typeflag, size, limit) in [
            (b'L', 0o77777777777u64, MAX_NAME_LEN),
            (b'K', (MAX_NAME_LEN + 1) as u64, MAX_NAME_LEN),
            (b'L', u64::MAX, MAX_NAME_LEN),
            (b'x', (MAX_PAX_LEN + 1) as u64, MAX_PAX_LEN),
            (b'g', 1 << 40, MAX_PAX_LEN),
        ] {
            let header = raw_header(b"././@LongLink", typeflag, size, GNU_MAGIC);
            let mut reader = TarReader::new(Termination::Required);
            reader.push(Bytes::copy_from_slice(&header));
            assert_eq!(
                reader.next_event(),
                Err(TarError::TooLarge {
                    offset: 0,
                    what: MetaKind::from_typeflag(typeflag).expect("meta").what(),
                    size,
                    limit: limit as u64,
                })
            );
        }
        // At the limit, it is read.
        let name = "n/".repeat(MAX_NAME_LEN / 2 - 1);
        let (archive, _) = build(&[file(&name, b"x".to_vec())], true);
        assert_eq!(single(&archive).0.path, name.as_bytes());
    }

    #[test]
    fn mutated_archives_never_panic_and_parse_the_same_whatever_the_split() {
        let (archive, _) = build(&sample_members()[..12], true);
        let mut rng = StdRng::seed_from_u64(7);
        let mut refused = 0;
        for i in 0..300u64 {
            let mut data = archive.clone();
            for _ in 0..rng.gen_range(1..=3) {
                let at = rng.gen_range(0..data.len());
                data[at] = rng.gen();
            }
            if i % 10 == 0 {
                data.truncate(rng.gen_range(0..data.len()));
            }
            let reference = parse(&data, Termination::Required);
            refused += usize::from(reference.result.is_err());
            for pieces in [fixed_pieces(&data, 1), random_pieces(&data, i, 700)] {
                assert_eq!(
                    parse_pieces(pieces, Termination::Required),
                    reference,
                    "mutation {i}"
                );
            }
        }
        assert!(
            refused > 100,
            "most mutations of headers should be caught ({refused})"
        );
    }

    #[test]
    fn errors_poison_the_reader_and_finish_wants_a_drained_reader() {
        let (archive, _) = build(&sample_members()[..2], true);
        let mut reader = TarReader::new(Termination::Required);
        reader.push(Bytes::copy_from_slice(&archive));
        assert_eq!(reader.finish(), Err(TarError::Undrained));
        assert!(matches!(reader.next_event(), Ok(Some(TarEvent::Entry(_)))));
        assert_eq!(reader.finish(), Err(TarError::Undrained));
        while reader.next_event().expect("valid") != Some(TarEvent::End) {}
        assert_eq!(
            reader.finish(),
            Ok(()),
            "End and no input left: nothing pending"
        );
        assert_eq!(reader.next_event(), Ok(None));
        assert_eq!(reader.finish(), Ok(()));
        // With trailing bytes still to check after End, finish() must wait for them.
        let mut reader = TarReader::new(Termination::Required);
        reader.push(Bytes::copy_from_slice(&archive));
        reader.push(Bytes::from_static(b"junk"));
        while reader.next_event().expect("valid") != Some(TarEvent::End) {}
        assert_eq!(reader.finish(), Err(TarError::Undrained));
        assert!(matches!(
            reader.next_event(),
            Err(TarError::TrailingData { .. })
        ));
        assert!(format!("{reader:?}").contains("ended"));

        let mut reader = TarReader::new(Termination::Required);
        reader.push(Bytes::from(vec![1u8; 1024]));
        let err = reader.next_event().expect_err("garbage");
        assert_eq!(reader.buffered(), 0, "input dropped after an error");
        reader.push(Bytes::copy_from_slice(&archive));
        assert_eq!(reader.buffered(), 0);
        assert_eq!(reader.next_event(), Err(err.clone()));
        assert_eq!(reader.finish(), Err(err));
    }

    #[test]
    fn writer_refuses_what_it_cannot_represent() {
        let bad = |e: TarEntry| matches!(write_header(&e), Err(TarError::InvalidEntry { .. }));
        assert!(bad(entry(b"", EntryKind::Regular, 0)));
        assert!(bad(entry(b"a\0b", EntryKind::Regular, 0)));
        assert!(bad(link("l", EntryKind::Symlink, "a\0b").0));
        assert!(bad(entry(b"x", EntryKind::Other(b'x'), 0)));
        assert!(bad(entry(b"x", EntryKind::Other(b'L'), 0)));
        assert!(bad(entry(b"x", EntryKind::Other(b'5'), 0)));
        assert!(bad(entry(
            "p".repeat(MAX_NAME_LEN).as_bytes(),
            EntryKind::Regular,
            0
        )));
        let mut e = entry(b"x", EntryKind::Regular, 0);
        e.uid = 1 << 56;
        assert!(bad(e));
        let mut e = entry(b"x", EntryKind::Regular, 0);
        e.mtime = i64::MIN;
        assert!(
            write_header(&e).is_ok(),
            "any i64 fits 11 bytes of base-256"
        );
    }

    /// PostgreSQL's `tarCreateHeader` (src/port/tar.c, 15+; 13 and 14 are the same),
    /// transcribed: what a server actually sends.
    #[allow(clippy::too_many_arguments)]
    fn pg_header(
        filename: &str,
        linktarget: Option<&str>,
        is_dir: bool,
        size: u64,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: i64,
    ) -> [u8; BLOCK_SIZE] {
        fn print_tar_number(s: &mut [u8], val: u64) {
            let len = s.len();
            if val < 1u64 << ((len - 1) * 3) {
                s[len - 1] = b' ';
                let mut v = val;
                for i in (0..len - 1).rev() {
                    s[i] = b'0' + (v & 7) as u8;
                    v >>= 3;
                }
            } else {
                s[0] = 0o200;
                let mut v = val;
                for i in (1..len).rev() {
                    s[i] = (v & 255) as u8;
                    v >>= 8;
                }
            }
        }
        assert!(filename.len() <= 99 && linktarget.is_none_or(|l| l.len() <= 99));
        let mut h = [0u8; BLOCK_SIZE];
        h[..filename.len()].copy_from_slice(filename.as_bytes());
        if linktarget.is_some() || is_dir {
            let flen = filename.len().min(99);
            h[flen] = b'/';
            h[flen + 1] = 0;
        }
        print_tar_number(&mut h[100..108], u64::from(mode & 0o7777));
        print_tar_number(&mut h[108..116], uid);
        print_tar_number(&mut h[116..124], gid);
        let size = if linktarget.is_some() || is_dir {
            0
        } else {
            size
        };
        print_tar_number(&mut h[124..136], size);
        print_tar_number(&mut h[136..148], mtime as u64);
        if let Some(l) = linktarget {
            h[156] = b'2';
            h[157..157 + l.len()].copy_from_slice(l.as_bytes());
        } else if is_dir {
            h[156] = b'5';
        } else {
            h[156] = b'0';
        }
        h[257..262].copy_from_slice(b"ustar");
        h[263..265].copy_from_slice(b"00");
        h[265..273].copy_from_slice(b"postgres");
        h[297..305].copy_from_slice(b"postgres");
        print_tar_number(&mut h[329..337], 0);
        print_tar_number(&mut h[337..345], 0);
        let sum = 8 * u64::from(b' ')
            + h.iter()
                .enumerate()
                .filter(|(i, _)| !(148..156).contains(i))
                .map(|(_, &b)| u64::from(b))
                .sum::<u64>();
        print_tar_number(&mut h[148..156], sum);
        h
    }

    #[test]
    fn postgresql_headers() {
        let relation = noise(8192, 5);
        let dir99 = format!("base/{}", "9".repeat(94));
        let mut stream = Vec::new();
        stream.extend(pg_header(
            "backup_label",
            None,
            false,
            6,
            0o600,
            26,
            26,
            1_700_000_000,
        ));
        stream.extend(raw_member([0; BLOCK_SIZE], b"label\n")[BLOCK_SIZE..].iter());
        stream.extend(pg_header(
            "base",
            None,
            true,
            0,
            0o40700,
            26,
            26,
            1_700_000_000,
        ));
        stream.extend(pg_header(
            &dir99,
            None,
            true,
            0,
            0o700,
            26,
            26,
            1_700_000_000,
        ));
        stream.extend(pg_header(
            "base/1/1259",
            None,
            false,
            8192,
            0o100600,
            3_000_000,
            26,
            -1,
        ));
        stream.extend_from_slice(&relation);
        stream.extend(pg_header(
            "pg_tblspc/16384",
            Some("/srv/ts"),
            false,
            0,
            0o777,
            26,
            26,
            0,
        ));
        let expect = |path: &str, kind, size, mode, uid, mtime, link: &str| TarEntry {
            path: path.as_bytes().to_vec(),
            kind,
            mode,
            uid,
            gid: 26,
            size,
            mtime,
            link_target: link.as_bytes().to_vec(),
        };
        let expected = vec![
            (
                expect(
                    "backup_label",
                    EntryKind::Regular,
                    6,
                    0o600,
                    26,
                    1_700_000_000,
                    "",
                ),
                b"label\n".to_vec(),
            ),
            (
                expect(
                    "base",
                    EntryKind::Directory,
                    0,
                    0o700,
                    26,
                    1_700_000_000,
                    "",
                ),
                Vec::new(),
            ),
            (
                expect(
                    &dir99,
                    EntryKind::Directory,
                    0,
                    0o700,
                    26,
                    1_700_000_000,
                    "",
                ),
                Vec::new(),
            ),
            // uid >= 2^21 and a negative mtime both arrive in base-256.
            (
                expect(
                    "base/1/1259",
                    EntryKind::Regular,
                    8192,
                    0o600,
                    3_000_000,
                    -1,
                    "",
                ),
                relation,
            ),
            // Tablespace links carry a trailing slash, like directories.
            (
                expect(
                    "pg_tblspc/16384",
                    EntryKind::Symlink,
                    0,
                    0o777,
                    26,
                    0,
                    "/srv/ts",
                ),
                Vec::new(),
            ),
        ];
        assert_eq!(
            &stream[BLOCK_SIZE * 3 + 100..BLOCK_SIZE * 3 + 108],
            b"0000700 "
        );

        // PostgreSQL 13/14: no end-of-archive marker.
        for (name, pieces) in split_patterns(&stream) {
            let out = parse_pieces(pieces.clone(), Termination::Optional);
            assert_eq!((&out.result, out.ended), (&Ok(()), false), "{name}");
            assert_eq!(out.members, expected, "{name}");
            let out = parse_pieces(pieces, Termination::Required);
            assert!(
                matches!(out.result, Err(TarError::Truncated { .. })),
                "{name}"
            );
        }
        // PostgreSQL 15+: exactly two zero blocks after the last member.
        let stream = terminated(stream);
        for (name, pieces) in split_patterns(&stream) {
            let out = parse_pieces(pieces, Termination::Required);
            assert_eq!((&out.result, out.ended), (&Ok(()), true), "{name}");
            assert_eq!(out.members, expected, "{name}");
        }
    }

    // --- Interoperability with the system's GNU tar ---

    fn gnu_tar() -> bool {
        match Command::new("tar").arg("--version").output() {
            Ok(out) if String::from_utf8_lossy(&out.stdout).contains("GNU tar") => true,
            _ => {
                eprintln!("note: GNU tar not found; skipping the interoperability test");
                false
            }
        }
    }

    /// A tree with the shapes that matter: long paths (splittable and not), a symlink with a
    /// long target, an empty directory, a 1 MiB file, an empty file, a hard link.
    fn make_tree(root: &Path, ustar_only: bool) {
        let data = root.join("data");
        let deep = data.join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).expect("mkdir");
        std::fs::create_dir_all(data.join("empty_dir")).expect("mkdir");
        std::fs::write(data.join("big.bin"), noise(1024 * 1024, 1)).expect("write");
        std::fs::write(data.join("zero.bin"), b"").expect("write");
        std::fs::write(data.join("\u{e9}t\u{e9}.txt"), b"unicode\n").expect("write");
        std::fs::write(deep.join("file.txt"), b"deep\n").expect("write");
        std::fs::hard_link(data.join("big.bin"), data.join("hard.bin")).expect("link");
        std::os::unix::fs::symlink("zero.bin", data.join("link")).expect("symlink");
        if !ustar_only {
            std::fs::write(data.join(format!("{}.txt", "c".repeat(150))), b"long\n")
                .expect("write");
            let target = format!("{}/{}/file.txt", "a".repeat(60), "b".repeat(60));
            std::os::unix::fs::symlink(target, data.join("longlink")).expect("symlink");
        }
    }

    #[derive(Debug)]
    struct Seen {
        kind: EntryKind,
        content: Vec<u8>,
        link: Vec<u8>,
        mode: u32,
        mtime: i64,
        uid: u64,
        gid: u64,
        ino: u64,
    }

    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<Vec<u8>, Seen>) {
        let path = root.join(rel);
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        let (kind, content, link) = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).expect("readlink");
            (
                EntryKind::Symlink,
                Vec::new(),
                target.as_os_str().as_bytes().to_vec(),
            )
        } else if meta.is_dir() {
            (EntryKind::Directory, Vec::new(), Vec::new())
        } else {
            (
                EntryKind::Regular,
                std::fs::read(&path).expect("read"),
                Vec::new(),
            )
        };
        out.insert(
            rel.as_os_str().as_bytes().to_vec(),
            Seen {
                kind,
                content,
                link,
                mode: meta.mode() & 0o7777,
                mtime: meta.mtime(),
                uid: u64::from(meta.uid()),
                gid: u64::from(meta.gid()),
                ino: meta.ino(),
            },
        );
        if kind == EntryKind::Directory {
            for child in std::fs::read_dir(&path).expect("readdir") {
                walk(root, &rel.join(child.expect("entry").file_name()), out);
            }
        }
    }

    /// Checks parsed members against the tree they were made from.
    fn compare(members: &[Member], tree: &BTreeMap<Vec<u8>, Seen>, what: &str, check_owner: bool) {
        let parsed: BTreeMap<&[u8], &Member> =
            members.iter().map(|m| (m.0.path.as_slice(), m)).collect();
        assert_eq!(parsed.len(), members.len(), "{what}: duplicate paths");
        fn names(k: Vec<&[u8]>) -> Vec<String> {
            k.into_iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect()
        }
        assert_eq!(
            names(parsed.keys().copied().collect()),
            names(tree.keys().map(Vec::as_slice).collect()),
            "{what}: different paths"
        );
        for (path, (e, content)) in parsed {
            let name = String::from_utf8_lossy(path);
            let seen = &tree[path];
            if e.kind == EntryKind::HardLink {
                let target = &tree[e.link_target.as_slice()];
                assert_eq!(
                    target.ino, seen.ino,
                    "{what} {name}: hard link to another file"
                );
                assert_eq!(target.kind, EntryKind::Regular, "{what} {name}");
                continue;
            }
            assert_eq!(e.kind, seen.kind, "{what} {name}");
            assert!(*content == seen.content, "{what} {name}: content differs");
            assert_eq!(e.size, seen.content.len() as u64, "{what} {name}");
            assert_eq!(e.link_target, seen.link, "{what} {name}");
            assert_eq!(e.mode, seen.mode, "{what} {name}");
            assert_eq!(e.mtime, seen.mtime, "{what} {name}");
            if check_owner {
                assert_eq!((e.uid, e.gid), (seen.uid, seen.gid), "{what} {name}");
            }
        }
    }

    #[test]
    fn archives_from_gnu_tar_match_the_directory() {
        if !gnu_tar() {
            return;
        }
        for (format, ustar_only) in [
            ("posix", false),
            ("gnu", false),
            ("ustar", true),
            ("v7", true),
        ] {
            let tmp = tempfile::tempdir().expect("tempdir");
            make_tree(tmp.path(), ustar_only);
            let out = Command::new("tar")
                .arg("-C")
                .arg(tmp.path())
                .args([
                    &format!("--format={format}"),
                    "--sort=name",
                    "-cf",
                    "-",
                    "data",
                ])
                .output()
                .expect("run tar");
            if format == "v7" {
                // v7 cannot hold the long directory path; tar says so and skips it.
                assert!(!out.stdout.is_empty());
            } else {
                assert!(
                    out.status.success(),
                    "tar {format}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let mut tree = BTreeMap::new();
            walk(tmp.path(), Path::new("data"), &mut tree);
            if format == "v7" {
                tree.retain(|k, _| k.len() < 100);
            }
            for (split, pieces) in split_patterns(&out.stdout) {
                let parsed = parse_pieces(pieces, Termination::Required);
                let what = format!("--format={format}, {split}");
                assert_eq!((&parsed.result, parsed.ended), (&Ok(()), true), "{what}");
                compare(&parsed.members, &tree, &what, true);
                if format != "v7" {
                    let kinds: Vec<EntryKind> = parsed.members.iter().map(|m| m.0.kind).collect();
                    assert!(kinds.contains(&EntryKind::HardLink), "{what}");
                }
            }
        }
    }

    #[test]
    fn gnu_tar_extracts_what_write_header_writes() {
        if !gnu_tar() {
            return;
        }
        let mut numbers = file("data/numbers", noise(100, 4));
        numbers.0.uid = 3_000_000;
        numbers.0.gid = 3_000_001;
        numbers.0.mtime = -86_400 * 365;
        let members = vec![
            dir("data"),
            dir("data/empty"),
            file("data/big.bin", noise(1024 * 1024 + 3, 2)),
            file("data/zero.bin", Vec::new()),
            dir(&format!("data/{}", "p".repeat(90))),
            file(
                &format!("data/{}/{}", "p".repeat(90), "q".repeat(90)),
                noise(700, 3),
            ),
            dir(&format!("data/{}", "d".repeat(120))),
            file(
                &format!("data/{}/{}", "d".repeat(120), "L".repeat(200)),
                noise(10, 5),
            ),
            link(
                "data/longlink",
                EntryKind::Symlink,
                &format!("{}/x", "d".repeat(120)),
            ),
            link("data/hard.bin", EntryKind::HardLink, "data/big.bin"),
            numbers,
        ];
        let (archive, _) = build(&members, true);
        let tmp = tempfile::tempdir().expect("tempdir");
        let run = |args: &[&str]| {
            let mut child = Command::new("tar")
                .arg("-C")
                .arg(tmp.path())
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run tar");
            let mut stdin = child.stdin.take().expect("stdin");
            let input = archive.clone();
            let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
            let out = child.wait_with_output().expect("tar output");
            writer.join().expect("writer thread").expect("write to tar");
            assert!(
                out.status.success(),
                "tar {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.stderr.is_empty(),
                "tar {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let listing = run(&["--numeric-owner", "-tvf", "-"]);
        assert!(listing.contains("3000000/3000001"), "{listing}");
        assert!(listing.contains("1969-01-01"), "{listing}");
        // GNU tar warns about pre-1970 times unless told not to.
        run(&["--no-same-owner", "--warning=no-timestamp", "-xf", "-"]);

        let mut tree = BTreeMap::new();
        walk(tmp.path(), Path::new("data"), &mut tree);
        // Directory mtimes change as tar fills them in; compare the rest.
        let members: Vec<Member> = members
            .into_iter()
            .map(|(mut e, d)| {
                if e.kind == EntryKind::Directory {
                    e.mtime = tree[e.path.as_slice()].mtime;
                }
                (e, d)
            })
            .collect();
        compare(&members, &tree, "extracted by GNU tar", false);
    }
}
