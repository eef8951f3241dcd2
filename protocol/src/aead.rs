//! The symmetric AEADs used after the KEM: response chunks and session turns.
//!
//! Keys live in RustCrypto cipher states built with `zeroize`, so they are wiped on drop.

use aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use chacha20poly1305::ChaCha20Poly1305;

use crate::suite::Aead;

/// A keyed AEAD.
pub(crate) enum AeadKey {
    Aes128(Box<Aes128Gcm>),
    Aes256(Box<Aes256Gcm>),
    ChaCha(Box<ChaCha20Poly1305>),
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey(..)")
    }
}

/// Authentication failed (or the input was shorter than a tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AuthError;

impl AeadKey {
    /// Keys `aead` with `key`, which must be `aead.key_len()` bytes.
    pub(crate) fn new(aead: Aead, key: &[u8]) -> AeadKey {
        match aead {
            Aead::Aes128Gcm => AeadKey::Aes128(Box::new(
                Aes128Gcm::new_from_slice(key).unwrap_or_else(|_| unreachable!("key length")),
            )),
            Aead::Aes256Gcm => AeadKey::Aes256(Box::new(
                Aes256Gcm::new_from_slice(key).unwrap_or_else(|_| unreachable!("key length")),
            )),
            Aead::ChaCha20Poly1305 => AeadKey::ChaCha(Box::new(
                ChaCha20Poly1305::new_from_slice(key)
                    .unwrap_or_else(|_| unreachable!("key length")),
            )),
        }
    }

    /// Seals `plaintext` into `out` (appending ciphertext ‖ tag).
    pub(crate) fn seal_into(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        out.extend_from_slice(plaintext);
        let buf = &mut out[start..];
        // Only inputs beyond the AEADs' limits (2^36 bytes) fail; frames are far smaller.
        let tag = match self {
            AeadKey::Aes128(k) => k.encrypt_inout_detached(nonce.into(), aad, buf.into()),
            AeadKey::Aes256(k) => k.encrypt_inout_detached(nonce.into(), aad, buf.into()),
            AeadKey::ChaCha(k) => k.encrypt_inout_detached(nonce.into(), aad, buf.into()),
        }
        .unwrap_or_else(|_| unreachable!("AEAD input too long"));
        out.extend_from_slice(tag.as_slice());
    }

    /// Opens `ciphertext ‖ tag`.
    pub(crate) fn open(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, AuthError> {
        if sealed.len() < 16 {
            return Err(AuthError);
        }
        let (ct, tag) = sealed.split_at(sealed.len() - 16);
        let mut buf = ct.to_vec();
        let tag = <&[u8; 16]>::try_from(tag).map_err(|_| AuthError)?;
        let result = match self {
            AeadKey::Aes128(k) => {
                k.decrypt_inout_detached(nonce.into(), aad, buf.as_mut_slice().into(), tag.into())
            }
            AeadKey::Aes256(k) => {
                k.decrypt_inout_detached(nonce.into(), aad, buf.as_mut_slice().into(), tag.into())
            }
            AeadKey::ChaCha(k) => {
                k.decrypt_inout_detached(nonce.into(), aad, buf.as_mut_slice().into(), tag.into())
            }
        };
        result.map(|()| buf).map_err(|_| AuthError)
    }
}

/// `base XOR counter`, the counter right-aligned big-endian (RFC 9180 §5.2, chunked OHTTP).
pub(crate) fn xor_nonce(base: &[u8; 12], counter: u64) -> [u8; 12] {
    let mut nonce = *base;
    for (n, c) in nonce[4..].iter_mut().zip(counter.to_be_bytes()) {
        *n ^= c;
    }
    nonce
}

/// Nonce for chunk `chunk` of turn `seq`: `base XOR (seq ‖ chunk)`, seq in bytes 0..8, chunk in 8..12.
pub(crate) fn turn_nonce(base: &[u8; 12], seq: u64, chunk: u32) -> [u8; 12] {
    let mut nonce = *base;
    for (n, c) in nonce
        .iter_mut()
        .zip(seq.to_be_bytes().into_iter().chain(chunk.to_be_bytes()))
    {
        *n ^= c;
    }
    nonce
}
