//! `body::decode` (the plaintext of a sealed unit: codec, level, raw length, payload) on
//! arbitrary bytes, with a small limit (64 KiB).
//!
//! Checks: no panic and no allocation past the limit, even for forged raw lengths or zstd
//! frames that claim or expand to more; a decoded body is at most `limit` bytes and exactly the
//! declared raw length; re-encoding it (at the declared level) decodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_format::body;

const LIMIT: u64 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = body::decode(data.to_vec(), LIMIT, "fuzz") {
        let (_, level, raw_len) = body::peek(data).expect("a decoded body has a header");
        assert!(out.len() as u64 <= LIMIT, "decoded past the limit");
        assert_eq!(
            out.len() as u64,
            raw_len,
            "decoded length differs from declared"
        );
        let again = body::decode(body::encode(&out, level), LIMIT, "fuzz");
        assert_eq!(again.as_deref(), Ok(&out[..]), "body round trip");
    }
});
