//! `ClusterBinding::decode` on arbitrary bytes.
//!
//! Checks: no panic; a decoded binding round-trips,
//! `ClusterBinding::decode(&b.encode()) == Ok(b)`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_format::ClusterBinding;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = ClusterBinding::decode(data) {
        assert_eq!(
            ClusterBinding::decode(&b.encode()),
            Ok(b),
            "binding round trip"
        );
    }
});
