//! Structured target for whole-object sealing: builds a *valid* sealed object from the input
//! and then damages it.
//!
//! Input layout: byte 0 picks the zstd level (`% 4`, so raw and compressed bodies) and the
//! object kind; bytes 1..3 pick the byte to flip (u16, modulo the object's length); byte 3 is
//! the XOR mask (0 becomes 1); the rest is the plaintext.
//!
//! Checks, under fixed keys and a fixed salt:
//! - the untouched object opens to exactly the plaintext;
//! - it is refused under a limit one byte below the plaintext's size, under another name and
//!   as another kind;
//! - with any single byte flipped, `open_object` returns an error (never a panic, never data).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgkeep_format::{open_object, seal_object, Kind, MasterKey, RepoId, RepoKeys};
use std::sync::OnceLock;

const NAME: &str = "fuzz/object";
const SALT: [u8; 24] = [7; 24];
const LIMIT: u64 = 1 << 20;

fn keys() -> &'static RepoKeys {
    static KEYS: OnceLock<RepoKeys> = OnceLock::new();
    KEYS.get_or_init(|| RepoKeys::derive(RepoId([1; 16]), &MasterKey::from_bytes([2; 32])))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let level = (data[0] % 4) as i8;
    let kind = Kind::from_u8(1 + (data[0] >> 2) % 12).expect("kinds 1..=12 exist");
    let flip_at = usize::from(u16::from_le_bytes([data[1], data[2]]));
    let mask = data[3].max(1);
    let plain = &data[4..];
    let k = keys();

    let object = seal_object(k, kind, NAME, SALT, plain, level);
    assert_eq!(
        open_object(k, kind, NAME, &object, LIMIT).as_deref(),
        Ok(plain),
        "sealed object does not round-trip"
    );
    if !plain.is_empty() {
        let below = plain.len() as u64 - 1;
        assert!(
            open_object(k, kind, NAME, &object, below).is_err(),
            "limit ignored"
        );
    }
    assert!(
        open_object(k, kind, "fuzz/other", &object, LIMIT).is_err(),
        "name not bound"
    );
    let other = Kind::from_u8(1 + (kind as u8) % 12).expect("kinds 1..=12 exist");
    assert!(
        open_object(k, other, NAME, &object, LIMIT).is_err(),
        "kind not bound"
    );

    let mut damaged = object;
    let i = flip_at % damaged.len();
    damaged[i] ^= mask;
    assert!(
        open_object(k, kind, NAME, &damaged, LIMIT).is_err(),
        "flipping byte {i} with {mask:#04x} went unnoticed"
    );
});
