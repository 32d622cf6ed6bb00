//! `KeyFile::decode` on arbitrary bytes (a whole key-file object, header included).
//!
//! Checks: no panic (hostile Argon2 parameters are refused by `decode`; this target never
//! calls `unlock`, so it runs no KDF); a decoded key file round-trips,
//! `KeyFile::decode(&kf.encode()) == Ok(kf)`; and the encoding is canonical: re-encoding
//! gives back exactly the input bytes (the format has no slack a key file could hide in).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_format::KeyFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(kf) = KeyFile::decode(data) {
        let encoded = kf.encode();
        assert_eq!(encoded, data, "key file encoding is not canonical");
        assert_eq!(KeyFile::decode(&encoded), Ok(kf), "key file round trip");
    }
});
