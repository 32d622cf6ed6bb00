//! Shared inputs for pgkeep's benchmarks: synthetic PostgreSQL heap pages, fixed keys and
//! throw-away local repositories.
//!
//! The numbers a benchmark reports depend on its input as much as on the code: BLAKE3 and
//! AES-GCM run at the same speed on any bytes, but zstd's speed and ratio (and so the whole
//! pipeline's) swing by an order of magnitude between zeros, text and noise. So every
//! benchmark draws from one generator, [`heap_pages`], whose output is built like the
//! relation files pgkeep backs up, and compresses by a realistic ~3x rather than the 100x of
//! a zero-filled buffer or the 1x of random bytes. Everything here is deterministic (seeded),
//! so runs on different days and machines measure the same work.

use std::fmt::Write as _;

use pgkeep_engine::format::{KdfParams, MasterKey, RepoId, RepoKeys};
use pgkeep_engine::{InitOptions, Repository, Store};

/// One mebibyte, the unit the benchmarks' buffer sizes are written in.
pub const MIB: usize = 1 << 20;

/// PostgreSQL's default block size: the unit relation files are made of.
pub const PAGE_SIZE: usize = 8192;

/// Bytes of a heap page's header (`PageHeaderData`).
const PAGE_HEADER_LEN: usize = 24;

/// Bytes of a heap tuple header (`HeapTupleHeaderData`, 23 bytes, padded to `MAXALIGN`).
const TUPLE_HEADER_LEN: usize = 24;

/// Cheap Argon2 parameters. Repository creation is set-up, not what the pipeline benchmark
/// measures, and the production cost (hundreds of MiB, about a second) would dominate it.
pub const FAST_KDF: KdfParams = KdfParams {
    memory_kib: 256,
    iterations: 1,
    parallelism: 1,
};

/// The passphrase of every benchmark repository.
pub const PASSPHRASE: &[u8] = b"benchmark passphrase";

/// xorshift64: a deterministic, dependency-free byte source. Not `rand`, whose generators
/// may change output between versions and so silently change what the benchmarks measure.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Rows of an imaginary `orders` table, produced in insertion order.
#[derive(Debug)]
struct Orders {
    rng: XorShift,
    row: u64,
    /// Microseconds since 2000-01-01 (PostgreSQL's timestamp epoch).
    created: i64,
    /// A tuple generated for a page that had no room left; it starts the next page.
    pending: Option<Vec<u8>>,
}

impl Orders {
    const STATUS: [&'static str; 5] = ["pending", "paid", "shipped", "delivered", "refunded"];
    const CHANNEL: [&'static str; 4] = ["web", "mobile app", "phone", "partner api"];

    fn new(seed: u64) -> Self {
        Self {
            rng: XorShift::new(seed),
            row: 1 + seed.wrapping_mul(10_000_000) % 1_000_000_000,
            created: 845_000_000_000_000,
            pending: None,
        }
    }

    /// The next row as an on-disk heap tuple: header, then `id int8, created timestamptz,
    /// amount_cents int4, token uuid, note text`. The uuid (16 random bytes) and the jittered
    /// numbers are what keep the data from compressing better than real tables do.
    fn next_tuple(&mut self, block: u32, offset: u16) -> Vec<u8> {
        if let Some(t) = self.pending.take() {
            return t;
        }
        let rng = &mut self.rng;
        self.row += 1;
        self.created += 500_000 + rng.below(2_000_000) as i64;
        let mut t = Vec::with_capacity(128);
        // HeapTupleHeaderData: xmin advances slowly (many rows per transaction), xmax and
        // cid are zero, ctid points at the tuple itself.
        let xmin = 1_000 + (self.row / 40) as u32;
        t.extend_from_slice(&xmin.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&((block >> 16) as u16).to_le_bytes());
        t.extend_from_slice(&(block as u16).to_le_bytes());
        t.extend_from_slice(&offset.to_le_bytes());
        t.extend_from_slice(&5u16.to_le_bytes()); // t_infomask2: natts
        t.extend_from_slice(&0x0902u16.to_le_bytes()); // HASVARWIDTH | XMIN_COMMITTED | XMAX_INVALID
        t.push(TUPLE_HEADER_LEN as u8); // t_hoff
        t.push(0); // padding to MAXALIGN
        t.extend_from_slice(&self.row.to_le_bytes());
        t.extend_from_slice(&self.created.to_le_bytes());
        t.extend_from_slice(&(rng.below(250_000) as u32).to_le_bytes());
        t.extend_from_slice(&rng.next().to_le_bytes());
        t.extend_from_slice(&rng.next().to_le_bytes());
        let mut note = String::with_capacity(96);
        let status = Self::STATUS[rng.below(Self::STATUS.len() as u64) as usize];
        let channel = Self::CHANNEL[rng.below(Self::CHANNEL.len() as u64) as usize];
        let _ = write!(
            note,
            "{status} order for customer_{:06} via {channel}, {} items",
            rng.below(200_000),
            1 + rng.below(12)
        );
        // A short varlena: a 1-byte header holding the total length.
        t.push((((note.len() + 1) << 1) | 1) as u8);
        t.extend_from_slice(note.as_bytes());
        t
    }
}

/// Synthetic heap-table data: `len` bytes of 8 KiB pages laid out like PostgreSQL's (page
/// header, line pointers growing down, tuples growing up from the end, free space between),
/// filled with rows of a plausible `orders` table. Compresses about 3x with zstd level 3.
///
/// Different seeds give different rows; every page is distinct (distinct row ids and random
/// uuids), so no two chunks of the output deduplicate.
pub fn heap_pages(len: usize, seed: u64) -> Vec<u8> {
    let mut orders = Orders::new(seed);
    let mut out = Vec::with_capacity(len.next_multiple_of(PAGE_SIZE));
    let mut block = 0u32;
    while out.len() < len {
        push_page(&mut out, &mut orders, block);
        block += 1;
    }
    restamp_pages(&mut out, 0);
    out.truncate(len);
    out
}

fn push_page(out: &mut Vec<u8>, orders: &mut Orders, block: u32) {
    let mut page = [0u8; PAGE_SIZE];
    let mut lower = PAGE_HEADER_LEN;
    let mut upper = PAGE_SIZE;
    loop {
        let offset = ((lower - PAGE_HEADER_LEN) / 4 + 1) as u16;
        let tuple = orders.next_tuple(block, offset);
        let start = (upper - tuple.len()) & !7;
        if start < lower + 4 {
            orders.pending = Some(tuple);
            break;
        }
        page[start..start + tuple.len()].copy_from_slice(&tuple);
        // ItemIdData: lp_off (15 bits), lp_flags (2 bits, LP_NORMAL = 1), lp_len (15 bits).
        let item = start as u32 | (1 << 15) | ((tuple.len() as u32) << 17);
        page[lower..lower + 4].copy_from_slice(&item.to_le_bytes());
        lower += 4;
        upper = start;
    }
    // PageHeaderData after pd_lsn (set by `restamp_pages`): checksum, flags, lower, upper,
    // special, page size and layout version, prune xid.
    let checksum = orders.rng.next() as u16;
    page[8..10].copy_from_slice(&checksum.to_le_bytes());
    page[12..14].copy_from_slice(&(lower as u16).to_le_bytes());
    page[14..16].copy_from_slice(&(upper as u16).to_le_bytes());
    page[16..18].copy_from_slice(&(PAGE_SIZE as u16).to_le_bytes());
    page[18..20].copy_from_slice(&(PAGE_SIZE as u16 | 4).to_le_bytes());
    out.extend_from_slice(&page);
}

/// Rewrites the LSN in every whole page's header to one derived from `stamp` and the page's
/// position, as if the whole table had been modified again.
///
/// This is how the pipeline benchmark gets fresh, never-deduplicated data for each iteration
/// without regenerating it: for different stamps every page, and so every chunk, differs,
/// while the bytes (and so zstd's work) stay essentially the same.
pub fn restamp_pages(data: &mut [u8], stamp: u64) {
    for (i, page) in data.chunks_exact_mut(PAGE_SIZE).enumerate() {
        // pd_lsn is {xlogid u32, xrecoff u32}.
        let xlogid = stamp as u32;
        let xrecoff = (i as u32).wrapping_mul(0x2000) | 0x28;
        page[0..4].copy_from_slice(&xlogid.to_le_bytes());
        page[4..8].copy_from_slice(&xrecoff.to_le_bytes());
    }
}

/// Uncompressed size divided by zstd-compressed size at `level`, to report next to the
/// timings (a compression speed means little without the ratio it bought).
pub fn compression_ratio(data: &[u8], level: i32) -> f64 {
    let compressed = zstd::bulk::compress(data, level).expect("zstd compresses any buffer");
    data.len() as f64 / compressed.len() as f64
}

/// Fixed repository keys for the micro-benchmarks: derived exactly as a real repository's
/// are, but from a constant master key, since key material does not affect speed.
pub fn bench_keys() -> RepoKeys {
    RepoKeys::derive(RepoId([7; 16]), &MasterKey::from_bytes([42; 32]))
}

/// Repository options for benchmarks: production pack size and compression level (they are
/// what is measured), cheap KDF (it is not).
pub fn init_options() -> InitOptions {
    InitOptions {
        kdf: FAST_KDF,
        key_label: "bench".into(),
        ..InitOptions::default()
    }
}

/// A new, empty repository on the local file system, deleted when dropped.
///
/// The pipeline benchmark makes one per iteration so the index starts empty every time:
/// nothing deduplicates against earlier iterations and the index does not grow across them.
#[derive(Debug)]
pub struct TempRepo {
    pub repo: Repository,
    /// Keeps the directory alive; removes it on drop.
    _dir: tempfile::TempDir,
}

impl TempRepo {
    /// Initializes a repository in a fresh temporary directory (the same local backend a
    /// `file://` location opens).
    pub async fn new() -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let dir = tempfile::Builder::new().prefix("pgkeep-bench-").tempdir()?;
        let path = dir.path().join("repo");
        let store = Store::open(&path.to_string_lossy(), &[], true)?;
        let repo = Repository::init(store, PASSPHRASE, init_options()).await?;
        Ok(Self { repo, _dir: dir })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_pages_are_deterministic_and_sized() {
        let a = heap_pages(100_000, 3);
        assert_eq!(a.len(), 100_000);
        assert_eq!(a, heap_pages(100_000, 3));
        assert_ne!(a, heap_pages(100_000, 4));
    }

    #[test]
    fn heap_pages_compress_moderately() {
        let ratio = compression_ratio(&heap_pages(MIB, 1), 3);
        assert!((2.0..=4.5).contains(&ratio), "ratio {ratio:.2}");
    }

    #[test]
    fn pages_are_distinct_and_restamping_changes_every_page() {
        let mut data = heap_pages(64 * PAGE_SIZE, 9);
        let pages: std::collections::HashSet<&[u8]> = data.chunks(PAGE_SIZE).collect();
        assert_eq!(pages.len(), 64);
        let before = data.clone();
        restamp_pages(&mut data, 1);
        assert!(before
            .chunks(PAGE_SIZE)
            .zip(data.chunks(PAGE_SIZE))
            .all(|(a, b)| a != b));
    }
}
