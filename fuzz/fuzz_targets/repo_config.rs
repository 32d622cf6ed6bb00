//! `RepoConfig::decode` on arbitrary bytes.
//!
//! Checks: no panic; a decoded config passes `validate()` and round-trips,
//! `RepoConfig::decode(&c.encode()) == Ok(c)`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_format::RepoConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = RepoConfig::decode(data) {
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(RepoConfig::decode(&c.encode()), Ok(c), "config round trip");
    }
});
