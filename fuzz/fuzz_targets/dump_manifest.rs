//! `DumpManifest::decode` on arbitrary bytes.
//!
//! Checks: decoding never panics and never allocates beyond what the input can justify; any
//! dump manifest that decodes passes the stream rules of SPEC.md §11 again after a round
//! trip, `DumpManifest::decode(&m.encode()) == Ok(m)`; and no directory-format file name it
//! accepts could leave the directory a restore writes it into.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_format::DumpManifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = DumpManifest::decode(data) {
        for (name, _) in m.directory_files() {
            // Stated here independently of the decoder's own check.
            assert!(
                !matches!(name, "" | "." | "..") && !name.contains(['/', '\0']),
                "directory file {name:?} accepted"
            );
        }
        assert_eq!(
            DumpManifest::decode(&m.encode()),
            Ok(m),
            "dump manifest round trip"
        );
    }
});
