//! The attestation `user_data` map: what the enclave commits to.
//!
//! ```text
//! {"v": 1, "kc": SHA-256(key-config list), "model": SHA-256, ["settings": SHA-256,]
//!  ["dtype": "f32" | "bf16" | "int8",] ["limits": {"ctx": tokens, "out": tokens},] "exp": unix s,
//!  ["id": 16 bytes,] ["rk": Ed25519 public key]}
//! ```
//! encoded with definite lengths in that key order (the NSM takes at most 512 bytes; this is under
//! 200). Decoding is strict: unknown or duplicate keys, wrong types or sizes, and trailing bytes are
//! errors. `dtype`, `limits` and `id` are absent only in documents of earlier builds. `id` names this
//! enclave instance (random at boot): clients cache documents by it and send it in a `ROUTE` frame so
//! that a relay with several enclaves takes the exchange to the one holding the keys. `rk` is the
//! key that signs answer receipts (`receipt`); a client refuses to ask an enclave that attests none.

use confidant_verifier::cbor::{write_bytes, write_head, write_text, Item, Reader};
use sha2::{Digest, Sha256};

use crate::error::ProtocolError;
use crate::fields::Fields;
use crate::time::UnixMillis;

/// Protocol version carried in `v`.
pub const VERSION: u64 = 1;

/// Longest `dtype` name accepted.
const MAX_DTYPE_LEN: usize = 16;

/// What one request may use, attested so a client can check before it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Prompt plus answer tokens, per request and per session (`ctx`).
    pub context_tokens: u32,
    /// Most answer tokens a request may ask for (`out`).
    pub max_new_tokens: u32,
}

/// The decoded map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserData {
    /// SHA-256 of the key-config list.
    pub kc: [u8; 32],
    /// SHA-256 over the model's config, tokenizer and weights.
    pub model: [u8; 32],
    /// SHA-256 of the unsealed settings, when the enclave has any.
    pub settings: Option<[u8; 32]>,
    /// The dtype the model computes in (`f32`, `bf16`, `int8`).
    pub dtype: Option<String>,
    pub limits: Option<Limits>,
    /// Key-config expiry (whole seconds on the wire).
    pub exp: UnixMillis,
    /// The enclave instance, random at boot.
    pub id: Option<[u8; 16]>,
    /// The Ed25519 key that signs this enclave's answer receipts.
    pub rk: Option<[u8; 32]>,
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl UserData {
    /// The CBOR encoding.
    pub fn encode(&self) -> Vec<u8> {
        let entries = 4
            + usize::from(self.settings.is_some())
            + usize::from(self.dtype.is_some())
            + usize::from(self.limits.is_some())
            + usize::from(self.id.is_some())
            + usize::from(self.rk.is_some());
        let mut out = Vec::with_capacity(192);
        write_head(&mut out, 5, entries as u64);
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
        if let Some(d) = &self.dtype {
            write_text(&mut out, "dtype");
            write_text(&mut out, d);
        }
        if let Some(l) = &self.limits {
            write_text(&mut out, "limits");
            write_head(&mut out, 5, 2);
            write_text(&mut out, "ctx");
            write_head(&mut out, 0, u64::from(l.context_tokens));
            write_text(&mut out, "out");
            write_head(&mut out, 0, u64::from(l.max_new_tokens));
        }
        write_text(&mut out, "exp");
        write_head(&mut out, 0, self.exp.as_secs());
        if let Some(id) = &self.id {
            write_text(&mut out, "id");
            write_bytes(&mut out, id);
        }
        if let Some(rk) = &self.rk {
            write_text(&mut out, "rk");
            write_bytes(&mut out, rk);
        }
        out
    }

    /// Strict decoding.
    pub fn decode(bytes: &[u8]) -> Result<UserData, ProtocolError> {
        let mut r = Reader::new(bytes);
        let n = match r.read().map_err(bad)? {
            Item::Map(Some(n)) if (4..=9).contains(&n) => n,
            Item::Map(_) => return Err(bad("must be a definite map of 4 to 9 entries".into())),
            other => return Err(bad(format!("must be a map, found {}", other.kind()))),
        };
        let mut v = None;
        let mut d = Decoded::default();
        for _ in 0..n {
            let key = match r.read().map_err(bad)? {
                Item::Text(k) => k,
                other => return Err(bad(format!("key must be text, found {}", other.kind()))),
            };
            let value = r.read().map_err(bad)?;
            match key {
                "v" => F.set(&mut v, key, F.uint(key, value)?)?,
                "kc" => F.set(&mut d.kc, key, F.bytes(key, value)?)?,
                "model" => F.set(&mut d.model, key, F.bytes(key, value)?)?,
                "settings" => F.set(&mut d.settings, key, F.bytes(key, value)?)?,
                "dtype" => F.set(&mut d.dtype, key, dtype(value)?)?,
                "limits" => F.set(&mut d.limits, key, limits(&mut r, value)?)?,
                "exp" => F.set(&mut d.exp, key, F.uint(key, value)?)?,
                "id" => F.set(&mut d.id, key, instance(value)?)?,
                "rk" => F.set(&mut d.rk, key, F.bytes(key, value)?)?,
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
            kc: d.kc.ok_or_else(|| bad("missing `kc`".into()))?,
            model: d.model.ok_or_else(|| bad("missing `model`".into()))?,
            settings: d.settings,
            dtype: d.dtype,
            limits: d.limits,
            exp: UnixMillis::from_secs(d.exp.ok_or_else(|| bad("missing `exp`".into()))?),
            id: d.id,
            rk: d.rk,
        })
    }
}

#[derive(Default)]
struct Decoded {
    kc: Option<[u8; 32]>,
    model: Option<[u8; 32]>,
    settings: Option<[u8; 32]>,
    dtype: Option<String>,
    limits: Option<Limits>,
    exp: Option<u64>,
    id: Option<[u8; 16]>,
    rk: Option<[u8; 32]>,
}

fn bad(detail: String) -> ProtocolError {
    ProtocolError::MalformedUserData(detail)
}

const F: Fields = Fields(ProtocolError::MalformedUserData);

fn instance(value: Item<'_>) -> Result<[u8; 16], ProtocolError> {
    match value {
        Item::Bytes(b) => b
            .try_into()
            .map_err(|_| bad(format!("`id` must be 16 bytes, is {}", b.len()))),
        other => Err(bad(format!("`id` must be bytes, found {}", other.kind()))),
    }
}

fn dtype(value: Item<'_>) -> Result<String, ProtocolError> {
    match value {
        Item::Text(t)
            if !t.is_empty()
                && t.len() <= MAX_DTYPE_LEN
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) =>
        {
            Ok(t.to_string())
        }
        _ => Err(bad("`dtype` must be a short lowercase name".into())),
    }
}

fn limits(r: &mut Reader<'_>, value: Item<'_>) -> Result<Limits, ProtocolError> {
    if !matches!(value, Item::Map(Some(2))) {
        return Err(bad("`limits` must be a map of `ctx` and `out`".into()));
    }
    let (mut ctx, mut out) = (None, None);
    for _ in 0..2 {
        let key = match r.read().map_err(bad)? {
            Item::Text(k) => k,
            _ => return Err(bad("`limits` keys must be text".into())),
        };
        let n = F.uint(key, r.read().map_err(bad)?)?;
        let n = u32::try_from(n).map_err(|_| bad(format!("`{key}` is out of range")))?;
        match key {
            "ctx" => F.set(&mut ctx, key, n)?,
            "out" => F.set(&mut out, key, n)?,
            _ => return Err(bad("`limits` has an unknown key".into())),
        }
    }
    match (ctx, out) {
        (Some(context_tokens), Some(max_new_tokens)) => Ok(Limits {
            context_tokens,
            max_new_tokens,
        }),
        _ => Err(bad("`limits` must hold `ctx` and `out`".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> UserData {
        UserData {
            kc: [1; 32],
            model: [2; 32],
            settings: None,
            dtype: None,
            limits: None,
            exp: UnixMillis::from_secs(1_800_000_000),
            id: None,
            rk: None,
        }
    }

    #[test]
    fn round_trips_with_and_without_optional_entries() {
        let mut u = sample();
        assert_eq!(UserData::decode(&u.encode()).unwrap(), u);
        u.settings = Some([3; 32]);
        assert_eq!(UserData::decode(&u.encode()).unwrap(), u);
        u.dtype = Some("bf16".into());
        u.limits = Some(Limits {
            context_tokens: 2048,
            max_new_tokens: 512,
        });
        u.id = Some([9; 16]);
        u.rk = Some([8; 32]);
        let bytes = u.encode();
        assert!(bytes.len() < 260, "{}", bytes.len());
        assert_eq!(UserData::decode(&bytes).unwrap(), u);
    }

    #[test]
    fn an_instance_id_must_be_16_bytes() {
        let mut bytes = sample().encode();
        bytes[0] += 1; // one more entry
        write_text(&mut bytes, "id");
        write_bytes(&mut bytes, &[7; 15]);
        assert!(matches!(
            UserData::decode(&bytes),
            Err(ProtocolError::MalformedUserData(m)) if m.contains("16 bytes")
        ));
    }

    #[test]
    fn rejects_odd_maps() {
        let good = sample().encode();
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(UserData::decode(&trailing).is_err());
        let mut v2 = good.clone();
        v2[3] = 2;
        assert_eq!(
            UserData::decode(&v2),
            Err(ProtocolError::UnsupportedVersion(2))
        );
        let mut renamed = good.clone();
        renamed[5] = b'v'; // "kc" -> "vc": an unknown key
        assert!(UserData::decode(&renamed).is_err());
        assert!(UserData::decode(&[0xa0]).is_err());
        assert!(UserData::decode(&[]).is_err());
        let mut u = sample();
        u.dtype = Some("F32 ".into());
        assert!(UserData::decode(&u.encode()).is_err());
    }
}
