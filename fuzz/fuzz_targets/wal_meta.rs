//! `WalMeta::decode` (a WAL object's meta unit, format-spec §7) on arbitrary bytes: the first
//! byte picks the checksum algorithm the object's kind would give (even: SHA-256, odd:
//! BLAKE3), the rest is the plaintext.
//!
//! Checks: no panic; a decoded meta keeps the algorithm it was read with and round-trips,
//! `WalMeta::decode(&m.encode(), algorithm) == Ok(m)`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_format::{ChecksumAlgorithm, WalMeta};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, plain)) = data.split_first() else {
        return;
    };
    let algorithm = if pick % 2 == 0 {
        ChecksumAlgorithm::Sha256
    } else {
        ChecksumAlgorithm::Blake3
    };
    if let Ok(m) = WalMeta::decode(plain, algorithm) {
        assert_eq!(m.checksum.algorithm, algorithm);
        assert_eq!(
            WalMeta::decode(&m.encode(), algorithm),
            Ok(m),
            "WAL meta round trip"
        );
    }
});
