//! `Manifest::decode` on arbitrary bytes.
//!
//! Checks: decoding never panics and never allocates beyond what the input can justify; any
//! manifest that decodes survives a round trip, `Manifest::decode(&m.encode()) == Ok(m)`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_format::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(Manifest::decode(&m.encode()), Ok(m), "manifest round trip");
    }
});
