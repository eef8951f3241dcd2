//! The attestation `user_data` map: what the enclave commits to.
//!
//! `{"v": 1, "kc": SHA-256(key-config list), "model": SHA-256, ["settings": SHA-256,] "exp": unix s}`,
//! encoded with definite lengths in that key order. Decoding is strict: unknown or duplicate keys,
//! wrong types or sizes, and trailing bytes are errors.

use confidant_verifier::cbor::{write_bytes, write_head, write_text, Item, Reader};
use sha2::{Digest, Sha256};

use crate::error::ProtocolError;
use crate::time::UnixMillis;

/// Protocol version carried in `v`.
pub const VERSION: u64 = 1;

/// The decoded map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserData {
    /// SHA-256 of the key-config list.
    pub kc: [u8; 32],
    /// SHA-256 over the model's config, tokenizer and weights.
    pub model: [u8; 32],
    /// SHA-256 of the unsealed settings, when the enclave has any.
    pub settings: Option<[u8; 32]>,
    /// Key-config expiry (whole seconds on the wire).
    pub exp: UnixMillis,
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl UserData {
    /// The CBOR encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        write_head(&mut out, 5, if self.settings.is_some() { 5 } else { 4 });
        write_text(&mut out, "v");
        write_head(&mut out, 0, VERSION);
        write_text(&mut out, "kc");
        write_bytes(&mut out, &self.kc);
        write_text(&mut out, "model");
        write_bytes(&mut out, &self.model);
        if let Some(s) = &self.settings {
            write_text(&mut out, "settings");
            write_bytes(&mut out, s);
        }
        write_text(&mut out, "exp");
        write_head(&mut out, 0, self.exp.as_secs());
        out
    }

    /// Strict decoding.
    pub fn decode(bytes: &[u8]) -> Result<UserData, ProtocolError> {
        let bad = |d: String| ProtocolError::MalformedUserData(d);
        let mut r = Reader::new(bytes);
        let n = match r.read().map_err(bad)? {
            Item::Map(Some(n)) if (4..=5).contains(&n) => n,
            Item::Map(_) => return Err(bad("must be a definite map of 4 or 5 entries".into())),
            other => return Err(bad(format!("must be a map, found {}", other.kind()))),
        };
        let (mut v, mut kc, mut model, mut settings, mut exp) = (None, None, None, None, None);
        for _ in 0..n {
            let key = match r.read().map_err(bad)? {
                Item::Text(k) => k,
                other => return Err(bad(format!("key must be text, found {}", other.kind()))),
            };
            let value = r.read().map_err(bad)?;
            let digest = |value: Item<'_>| -> Result<[u8; 32], ProtocolError> {
                match value {
                    Item::Bytes(b) => b
                        .try_into()
                        .map_err(|_| bad(format!("`{key}` must be 32 bytes, is {}", b.len()))),
                    other => Err(bad(format!(
                        "`{key}` must be bytes, found {}",
                        other.kind()
                    ))),
                }
            };
            let number = |value: Item<'_>| match value {
                Item::Uint(n) => Ok(n),
                other => Err(bad(format!(
                    "`{key}` must be an unsigned integer, found {}",
                    other.kind()
                ))),
            };
            let dup = |set: bool| {
                if set {
                    Err(bad(format!("duplicate key `{key}`")))
                } else {
                    Ok(())
                }
            };
            match key {
                "v" => {
                    dup(v.is_some())?;
                    v = Some(number(value)?);
                }
                "kc" => {
                    dup(kc.is_some())?;
                    kc = Some(digest(value)?);
                }
                "model" => {
                    dup(model.is_some())?;
                    model = Some(digest(value)?);
                }
                "settings" => {
                    dup(settings.is_some())?;
                    settings = Some(digest(value)?);
                }
                "exp" => {
                    dup(exp.is_some())?;
                    exp = Some(number(value)?);
                }
                other => return Err(bad(format!("unknown key `{}`", other.escape_debug()))),
            }
        }
        if r.remaining() != 0 {
            return Err(bad("trailing bytes".into()));
        }
        let v = v.ok_or_else(|| bad("missing `v`".into()))?;
        if v != VERSION {
            return Err(ProtocolError::UnsupportedVersion(v));
        }
        Ok(UserData {
            kc: kc.ok_or_else(|| bad("missing `kc`".into()))?,
            model: model.ok_or_else(|| bad("missing `model`".into()))?,
            settings,
            exp: UnixMillis::from_secs(exp.ok_or_else(|| bad("missing `exp`".into()))?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_and_without_settings() {
        let mut u = UserData {
            kc: [1; 32],
            model: [2; 32],
            settings: None,
            exp: UnixMillis::from_secs(1_800_000_000),
        };
        assert_eq!(UserData::decode(&u.encode()).unwrap(), u);
        u.settings = Some([3; 32]);
        assert_eq!(UserData::decode(&u.encode()).unwrap(), u);
    }

    #[test]
    fn rejects_odd_maps() {
        let u = UserData {
            kc: [1; 32],
            model: [2; 32],
            settings: None,
            exp: UnixMillis::from_secs(5),
        };
        let good = u.encode();
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(UserData::decode(&trailing).is_err());
        let mut v2 = good.clone();
        v2[3] = 2;
        assert_eq!(
            UserData::decode(&v2),
            Err(ProtocolError::UnsupportedVersion(2))
        );
        let mut dup = good.clone();
        dup[5] = b'v'; // "kc" -> "vc"? keep the length: rename to an unknown key
        assert!(UserData::decode(&dup).is_err());
        assert!(UserData::decode(&[0xa0]).is_err());
        assert!(UserData::decode(&[]).is_err());
    }
}
