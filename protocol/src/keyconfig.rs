//! Key configurations, encoded as in RFC 9458 section 3, and the enclave's key pairs.
//!
//! ```text
//! Key Config { Key Identifier (8), HPKE KEM ID (16), HPKE Public Key (Npk * 8),
//!              HPKE Symmetric Algorithms Length (16) = 4n, (KDF ID (16), AEAD ID (16)) * n }
//! ```
//! A list is the `application/ohttp-keys` form: each config preceded by its length (u16).

use hpke::rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::error::ProtocolError;
use crate::hpke_ops::{self, PrivateKey};
use crate::suite::{Aead, Kem, KDF_HKDF_SHA256};

/// One key configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConfig {
    pub key_id: u8,
    pub kem: Kem,
    pub public_key: Vec<u8>,
    /// Supported AEADs (all with HKDF-SHA256), in the server's order.
    pub aeads: Vec<Aead>,
}

fn malformed(detail: impl Into<String>) -> ProtocolError {
    ProtocolError::MalformedKeyConfig(detail.into())
}

/// A key config whose KEM this implementation does not speak: kept out of the parsed list (RFC 9458
/// says clients ignore them), but its bytes still count toward the list's hash.
enum Parsed {
    Known(KeyConfig),
    Unsupported,
}

impl KeyConfig {
    /// Encodes one config.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.public_key.len() + 4 * self.aeads.len());
        out.push(self.key_id);
        out.extend_from_slice(&self.kem.id().to_be_bytes());
        out.extend_from_slice(&self.public_key);
        out.extend_from_slice(&((4 * self.aeads.len()) as u16).to_be_bytes());
        for aead in &self.aeads {
            out.extend_from_slice(&KDF_HKDF_SHA256.to_be_bytes());
            out.extend_from_slice(&aead.id().to_be_bytes());
        }
        out
    }

    /// Decodes exactly one config (no trailing bytes). Unknown KDF/AEAD pairs are skipped; at least one
    /// supported pair is required.
    pub fn decode(bytes: &[u8]) -> Result<KeyConfig, ProtocolError> {
        match Self::parse(bytes)? {
            Parsed::Known(c) => Ok(c),
            Parsed::Unsupported => Err(malformed("unsupported KEM")),
        }
    }

    fn parse(bytes: &[u8]) -> Result<Parsed, ProtocolError> {
        if bytes.len() < 3 {
            return Err(malformed("shorter than a key id and KEM id"));
        }
        let key_id = bytes[0];
        let Some(kem) = Kem::from_id(u16::from_be_bytes([bytes[1], bytes[2]])) else {
            return Ok(Parsed::Unsupported);
        };
        let rest = &bytes[3..];
        let npk = kem.public_key_len();
        if rest.len() < npk + 2 {
            return Err(malformed(format!("{} public key cut short", kem.name())));
        }
        let (public_key, rest) = rest.split_at(npk);
        let sym_len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let rest = &rest[2..];
        if sym_len == 0 || !sym_len.is_multiple_of(4) {
            return Err(malformed(
                "symmetric algorithms length is not a positive multiple of 4",
            ));
        }
        if rest.len() != sym_len {
            return Err(malformed(format!(
                "symmetric algorithms are {} bytes, length says {sym_len}",
                rest.len()
            )));
        }
        let mut aeads = Vec::new();
        for pair in rest.chunks_exact(4) {
            let kdf = u16::from_be_bytes([pair[0], pair[1]]);
            let aead = u16::from_be_bytes([pair[2], pair[3]]);
            if kdf == KDF_HKDF_SHA256 {
                if let Some(a) = Aead::from_id(aead) {
                    if !aeads.contains(&a) {
                        aeads.push(a);
                    }
                }
            }
        }
        if aeads.is_empty() {
            return Ok(Parsed::Unsupported);
        }
        Ok(Parsed::Known(KeyConfig {
            key_id,
            kem,
            public_key: public_key.to_vec(),
            aeads,
        }))
    }
}

/// Encodes a list: `(length u16 ‖ config)*`.
pub fn encode_list(configs: &[KeyConfig]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in configs {
        let enc = c.encode();
        out.extend_from_slice(&(enc.len() as u16).to_be_bytes());
        out.extend_from_slice(&enc);
    }
    out
}

/// Decodes a list, keeping the configs this implementation supports. Structure errors are fatal.
pub fn decode_list(bytes: &[u8]) -> Result<Vec<KeyConfig>, ProtocolError> {
    let mut rest = bytes;
    let mut configs = Vec::new();
    if rest.is_empty() {
        return Err(malformed("empty key-config list"));
    }
    while !rest.is_empty() {
        if rest.len() < 2 {
            return Err(malformed("list entry length cut short"));
        }
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        if rest.len() < 2 + len {
            return Err(malformed("list entry longer than the list"));
        }
        if let Parsed::Known(c) = KeyConfig::parse(&rest[2..2 + len])? {
            if configs.iter().any(|k: &KeyConfig| k.key_id == c.key_id) {
                return Err(malformed(format!("key id {} appears twice", c.key_id)));
            }
            configs.push(c);
        }
        rest = &rest[2 + len..];
    }
    Ok(configs)
}

/// A key config with its private key (parsed once, zeroized on drop): what the enclave holds.
pub struct KeyPair {
    pub config: KeyConfig,
    private_key: PrivateKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh key pair offering every AEAD (AES-256-GCM first).
    pub fn generate(key_id: u8, kem: Kem, rng: &mut impl CryptoRng) -> KeyPair {
        let mut ikm = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(ikm.as_mut());
        Self::derive(
            key_id,
            kem,
            ikm.as_ref(),
            &[Aead::Aes256Gcm, Aead::ChaCha20Poly1305, Aead::Aes128Gcm],
        )
    }

    /// DeriveKeyPair(ikm) (RFC 9180 §7.1.3): deterministic, for vectors.
    pub fn derive(key_id: u8, kem: Kem, ikm: &[u8], aeads: &[Aead]) -> KeyPair {
        let (private_key, public_key) = hpke_ops::derive_keypair(kem, ikm);
        KeyPair {
            config: KeyConfig {
                key_id,
                kem,
                public_key: public_key.to_bytes(),
                aeads: aeads.to_vec(),
            },
            private_key,
        }
    }

    /// From a known private key (for vectors that give `skR`).
    pub fn from_private_key(
        config: KeyConfig,
        private_key: &[u8],
    ) -> Result<KeyPair, ProtocolError> {
        let private_key = PrivateKey::from_bytes(config.kem, private_key).map_err(|_| {
            ProtocolError::MalformedKeyConfig("private key rejected by the KEM".into())
        })?;
        Ok(KeyPair {
            config,
            private_key,
        })
    }

    pub(crate) fn private_key(&self) -> &PrivateKey {
        &self.private_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_round_trips_and_skips_unknown_kems() {
        let a = KeyPair::derive(1, Kem::X25519HkdfSha256, &[1; 32], &[Aead::Aes128Gcm]).config;
        let b = KeyPair::derive(2, Kem::XWing, &[2; 32], &Aead::ALL).config;
        let mut list = encode_list(&[a.clone(), b.clone()]);
        assert_eq!(decode_list(&list).unwrap(), vec![a.clone(), b.clone()]);
        // An entry with an unknown KEM is ignored.
        list.extend_from_slice(&[0, 4, 9, 0x00, 0x10, 0xaa]);
        assert_eq!(decode_list(&list).unwrap(), vec![a.clone(), b]);
        assert_eq!(KeyConfig::decode(&a.encode()).unwrap(), a);
    }

    #[test]
    fn rejects_structural_errors() {
        let a = KeyPair::derive(1, Kem::X25519HkdfSha256, &[1; 32], &[Aead::Aes128Gcm]).config;
        let enc = a.encode();
        assert!(KeyConfig::decode(&enc[..enc.len() - 1]).is_err());
        let mut extra = enc.clone();
        extra.push(0);
        assert!(KeyConfig::decode(&extra).is_err());
        assert!(decode_list(&[]).is_err());
        assert!(decode_list(&[0, 9, 1]).is_err());
        let dup = encode_list(&[a.clone(), a]);
        assert!(decode_list(&dup).is_err());
    }
}
