//! `RepoKeys::open_chunk` on arbitrary bytes, under fixed repository keys: the first 32 input
//! bytes are the chunk id, the rest is the sealed unit (salt, ciphertext, tag).
//!
//! Mostly exercises rejection (length checks, authentication). Checks: no panic; if a unit
//! ever opens, its plaintext hashes to the given id and fits the 1 MiB limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_format::{ChunkId, MasterKey, RepoId, RepoKeys};
use std::sync::OnceLock;

const LIMIT: u64 = 1 << 20;

fn keys() -> &'static RepoKeys {
    static KEYS: OnceLock<RepoKeys> = OnceLock::new();
    KEYS.get_or_init(|| RepoKeys::derive(RepoId([1; 16]), &MasterKey::from_bytes([2; 32])))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 32 {
        return;
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&data[..32]);
    let id = ChunkId(id);
    if let Ok(plain) = keys().open_chunk(&id, &data[32..], LIMIT) {
        assert_eq!(keys().chunk_id(&plain), id);
        assert!(plain.len() as u64 <= LIMIT);
    }
});
