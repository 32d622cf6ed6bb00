//! `LockInfo::decode` on arbitrary bytes.
//!
//! Checks: no panic; a decoded lock round-trips, `LockInfo::decode(&l.encode()) == Ok(l)`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_format::LockInfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(l) = LockInfo::decode(data) {
        assert_eq!(LockInfo::decode(&l.encode()), Ok(l), "lock round trip");
    }
});
