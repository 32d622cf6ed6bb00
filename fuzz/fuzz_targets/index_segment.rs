//! `IndexSegment::decode` on arbitrary bytes.
//!
//! Checks: no panic; every decoded entry lies inside its pack's declared size; a decoded
//! segment round-trips, `IndexSegment::decode(&s.encode()) == Ok(s)`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_format::IndexSegment;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = IndexSegment::decode(data) {
        for p in &s.packs {
            for e in &p.entries {
                assert!(u64::from(e.offset) + u64::from(e.stored_len) <= p.pack_size);
            }
        }
        assert_eq!(IndexSegment::decode(&s.encode()), Ok(s), "index round trip");
    }
});
