//! AES-256-GCM with the all-zero nonce, the one AEAD of the format.
//!
//! Every key passed here is used for exactly one message (a per-unit subkey, or a key file's
//! passphrase-derived key over its own random salt), which is what makes the fixed nonce safe
//! (SPEC.md, "Encryption").
//!
//! Why `ring` rather than the RustCrypto `aes-gcm` crate: the format only needs standard
//! AES-256-GCM, and `ring`'s assembly interleaves AES-CTR with GHASH and uses VAES and
//! VPCLMULQDQ where the CPU has them. `aes-gcm` 0.10 runs the two passes one after the other
//! with one-block PCLMULQDQ, about 1.4 GB/s on the reference machine against the 1.5 GB/s the
//! performance issue asks for (benches/README.md has the numbers of both). The committed test
//! vectors prove that the bytes on disk did not change.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};

/// Bytes of the authentication tag.
pub(crate) const TAG_LEN: usize = 16;

fn key(key: &[u8; 32]) -> LessSafeKey {
    // ring refuses only a key of the wrong length, which the type rules out.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("an AES-256 key is 32 bytes"))
}

/// Encrypts `buf` in place and returns the tag.
pub(crate) fn seal_in_place(k: &[u8; 32], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
    let tag = key(k)
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key([0u8; 12]), Aad::from(aad), buf)
        .expect("AES-GCM encrypts any buffer shorter than 64 GiB");
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Authenticates and decrypts `buf` in place; `Err` when the tag does not match (wrong key,
/// altered ciphertext, tag or associated data: indistinguishable by design).
pub(crate) fn open_in_place(
    k: &[u8; 32],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<(), AuthenticationFailed> {
    key(k)
        .open_in_place_separate_tag(
            Nonce::assume_unique_for_key([0u8; 12]),
            Aad::from(aad),
            Tag::from(*tag),
            buf,
            0..,
        )
        .map(|_| ())
        .map_err(|_| AuthenticationFailed)
}

/// The tag did not authenticate the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AuthenticationFailed;

#[cfg(test)]
mod tests {
    use super::*;

    /// McGrew & Viega, "The Galois/Counter Mode of Operation", test case 14: the all-zero
    /// 256-bit key and 96-bit nonce, one zero block, no associated data.
    #[test]
    fn matches_the_published_test_case_14() {
        let mut buf = [0u8; 16];
        let tag = seal_in_place(&[0u8; 32], b"", &mut buf);
        assert_eq!(hex::encode(buf), "cea7403d4d606b6e074ec5d3baf39d18");
        assert_eq!(hex::encode(tag), "d0d1c8a799996bf0265b98b5d48ab919");
        open_in_place(&[0u8; 32], b"", &mut buf, &tag).expect("opens");
        assert_eq!(buf, [0u8; 16]);
    }

    #[test]
    fn any_change_fails_authentication() {
        let mut buf = *b"sixteen bytes!!!";
        let tag = seal_in_place(&[7u8; 32], b"aad", &mut buf);
        let mut flipped = buf;
        flipped[3] ^= 1;
        assert_eq!(
            open_in_place(&[7u8; 32], b"aad", &mut flipped, &tag),
            Err(AuthenticationFailed)
        );
        let mut copy = buf;
        assert!(open_in_place(&[7u8; 32], b"aaD", &mut copy, &tag).is_err());
        let mut copy = buf;
        assert!(open_in_place(&[8u8; 32], b"aad", &mut copy, &tag).is_err());
        let mut bad_tag = tag;
        bad_tag[0] ^= 0x80;
        let mut copy = buf;
        assert!(open_in_place(&[7u8; 32], b"aad", &mut copy, &bad_tag).is_err());
        open_in_place(&[7u8; 32], b"aad", &mut buf, &tag).expect("opens");
        assert_eq!(&buf, b"sixteen bytes!!!");
    }
}
