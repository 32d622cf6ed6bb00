//! `pack::read_pack` on arbitrary bytes, under fixed repository keys.
//!
//! Mostly exercises the rejection paths (header, trailer, table-of-contents length and
//! bounds, authentication): forging an AES-GCM tag is out of reach, so the table of contents
//! only opens for a valid pack from the seed corpus. Checks: no panic; any entry returned lies
//! inside the pack's chunk area.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_format::{pack, MasterKey, RepoId, RepoKeys};
use std::sync::OnceLock;

fn keys() -> &'static RepoKeys {
    static KEYS: OnceLock<RepoKeys> = OnceLock::new();
    KEYS.get_or_init(|| RepoKeys::derive(RepoId([1; 16]), &MasterKey::from_bytes([2; 32])))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = pack::read_pack(keys(), data) {
        for e in entries {
            assert!(e.offset as usize + e.stored_len as usize <= data.len() - pack::TRAILER_LEN);
        }
    }
});
