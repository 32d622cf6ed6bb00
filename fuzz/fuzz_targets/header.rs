//! `Header::decode` (the 16-byte object header) on arbitrary bytes.
//!
//! Checks: no panic; a decoded header re-encodes to exactly the first 16 input bytes (magic,
//! major, flags are all checked, so nothing is lost) and decodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_format::Header;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::decode(data) {
        let encoded = h.encode();
        assert_eq!(&encoded[..], &data[..encoded.len()], "header not canonical");
        assert_eq!(Header::decode(&encoded), Ok(h), "header round trip");
    }
});
