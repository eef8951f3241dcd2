//! The sealed-settings file: envelope encryption under a KMS data key.
//!
//! One JSON document, versioned: the KMS key id, the encryption context the data key was made
//! with, the data key as KMS returned it encrypted (`CiphertextBlob`), and the settings sealed with
//! AES-256-GCM under the plaintext data key. The AAD binds the format, version, key id, context and
//! data-key blob, so no part of the header can be swapped without the seal failing.

use std::collections::BTreeMap;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The `format` field.
pub const FORMAT: &str = "confidant-sealed-settings";
/// The only version this build reads and writes.
pub const VERSION: u64 = 1;
/// The encryption context every settings data key carries; the key policy requires it too.
pub const CONTEXT_KEY: &str = "purpose";
pub const CONTEXT_VALUE: &str = "confidant-settings";

/// The encryption context settings data keys are made and opened with.
pub fn encryption_context() -> BTreeMap<String, String> {
    BTreeMap::from([(CONTEXT_KEY.to_string(), CONTEXT_VALUE.to_string())])
}

/// Why a sealed file was refused or did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealedError {
    #[error("sealed settings: not a sealed-settings file ({0})")]
    Json(String),
    #[error("sealed settings: format is not {FORMAT:?}")]
    Format,
    #[error("sealed settings: version {0} is not supported (this build reads {VERSION})")]
    Version(u64),
    #[error(
        "sealed settings: the encryption context is not {{\"{CONTEXT_KEY}\": \"{CONTEXT_VALUE}\"}}"
    )]
    EncryptionContext,
    #[error("sealed settings: {0} is not valid base64")]
    Base64(&'static str),
    #[error("sealed settings: the nonce is {0} bytes, AES-GCM needs 12")]
    NonceLength(usize),
    #[error("sealed settings: the data key is {0} bytes, AES-256 needs 32")]
    DataKeyLength(usize),
    #[error("sealed settings: authentication failed (the file was altered or the data key is not its own)")]
    Tampered,
    #[error("sealed settings: encryption failed")]
    Seal,
}

impl SealedError {
    /// A stable code for scripts and logs.
    pub fn code(&self) -> &'static str {
        match self {
            SealedError::Json(_) => "sealed_not_json",
            SealedError::Format => "sealed_format",
            SealedError::Version(_) => "sealed_version",
            SealedError::EncryptionContext => "sealed_encryption_context",
            SealedError::Base64(_) => "sealed_base64",
            SealedError::NonceLength(_) => "sealed_nonce_length",
            SealedError::DataKeyLength(_) => "sealed_data_key_length",
            SealedError::Tampered => "sealed_tampered",
            SealedError::Seal => "sealed_seal",
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    format: String,
    version: u64,
    key_id: String,
    encryption_context: BTreeMap<String, String>,
    /// KMS `CiphertextBlob` of the data key.
    data_key: String,
    nonce: String,
    ciphertext: String,
}

/// A parsed sealed-settings file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedFile {
    pub key_id: String,
    pub encryption_context: BTreeMap<String, String>,
    /// The data key encrypted under the KMS key: what `Decrypt` is asked to open.
    pub data_key_blob: Vec<u8>,
    pub nonce: [u8; 12],
    /// AES-256-GCM ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

impl SealedFile {
    /// Seals `settings` under `data_key` (the plaintext of `data_key_blob`).
    pub fn seal(
        key_id: &str,
        data_key_blob: Vec<u8>,
        data_key: &[u8],
        settings: &[u8],
    ) -> Result<SealedFile, SealedError> {
        let mut nonce = [0u8; 12];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealedError::Seal)?;
        let mut file = SealedFile {
            key_id: key_id.to_string(),
            encryption_context: encryption_context(),
            data_key_blob,
            nonce,
            ciphertext: Vec::new(),
        };
        let mut buf = settings.to_vec();
        aead_key(data_key)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(file.aad()),
                &mut buf,
            )
            .map_err(|_| SealedError::Seal)?;
        file.ciphertext = buf;
        Ok(file)
    }

    /// Parses the file and checks its format, version and encryption context.
    pub fn parse(bytes: &[u8]) -> Result<SealedFile, SealedError> {
        let wire: Wire = serde_json::from_slice(bytes)
            .map_err(|e| SealedError::Json(format!("line {}, column {}", e.line(), e.column())))?;
        if wire.format != FORMAT {
            return Err(SealedError::Format);
        }
        if wire.version != VERSION {
            return Err(SealedError::Version(wire.version));
        }
        if wire.encryption_context != encryption_context() {
            return Err(SealedError::EncryptionContext);
        }
        let b64 =
            |field: &'static str, s: &str| B64.decode(s).map_err(|_| SealedError::Base64(field));
        let nonce = b64("nonce", &wire.nonce)?;
        Ok(SealedFile {
            key_id: wire.key_id,
            encryption_context: wire.encryption_context,
            data_key_blob: b64("data_key", &wire.data_key)?,
            nonce: nonce
                .as_slice()
                .try_into()
                .map_err(|_| SealedError::NonceLength(nonce.len()))?,
            ciphertext: b64("ciphertext", &wire.ciphertext)?,
        })
    }

    /// The file's bytes (pretty JSON, newline-terminated).
    pub fn to_json(&self) -> Vec<u8> {
        let wire = Wire {
            format: FORMAT.to_string(),
            version: VERSION,
            key_id: self.key_id.clone(),
            encryption_context: self.encryption_context.clone(),
            data_key: B64.encode(&self.data_key_blob),
            nonce: B64.encode(self.nonce),
            ciphertext: B64.encode(&self.ciphertext),
        };
        let mut out = serde_json::to_vec_pretty(&wire).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Opens the settings with the plaintext data key.
    pub fn open(&self, data_key: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealedError> {
        let mut buf = Zeroizing::new(self.ciphertext.clone());
        let n = aead_key(data_key)?
            .open_in_place(
                Nonce::assume_unique_for_key(self.nonce),
                Aad::from(self.aad()),
                &mut buf,
            )
            .map_err(|_| SealedError::Tampered)?
            .len();
        buf.truncate(n);
        Ok(buf)
    }

    /// Length-prefixed header fields.
    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::new();
        let mut put = |b: &[u8]| {
            aad.extend_from_slice(&(b.len() as u32).to_be_bytes());
            aad.extend_from_slice(b);
        };
        put(FORMAT.as_bytes());
        put(&VERSION.to_be_bytes());
        put(self.key_id.as_bytes());
        for (k, v) in &self.encryption_context {
            put(k.as_bytes());
            put(v.as_bytes());
        }
        put(&self.data_key_blob);
        aad
    }
}

fn aead_key(data_key: &[u8]) -> Result<LessSafeKey, SealedError> {
    if data_key.len() != 32 {
        return Err(SealedError::DataKeyLength(data_key.len()));
    }
    let key = UnboundKey::new(&AES_256_GCM, data_key).map_err(|_| SealedError::Seal)?;
    Ok(LessSafeKey::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn sealed() -> SealedFile {
        SealedFile::seal("key-1", vec![1, 2, 3], &KEY, br#"{"max_new_tokens":8}"#).expect("seal")
    }

    #[test]
    fn round_trips_through_json() {
        let file = sealed();
        let parsed = SealedFile::parse(&file.to_json()).expect("parse");
        assert_eq!(parsed, file);
        assert_eq!(
            parsed.open(&KEY).expect("open").as_slice(),
            br#"{"max_new_tokens":8}"#
        );
    }

    #[test]
    fn any_altered_part_fails_to_open() {
        let file = sealed();
        let mut c = file.clone();
        c.ciphertext[0] ^= 1;
        assert_eq!(c.open(&KEY).expect_err("ct"), SealedError::Tampered);
        let mut c = file.clone();
        c.data_key_blob[0] ^= 1;
        assert_eq!(c.open(&KEY).expect_err("blob"), SealedError::Tampered);
        let mut c = file.clone();
        c.key_id.push('x');
        assert_eq!(c.open(&KEY).expect_err("key id"), SealedError::Tampered);
        let mut c = file.clone();
        c.nonce[0] ^= 1;
        assert_eq!(c.open(&KEY).expect_err("nonce"), SealedError::Tampered);
        assert_eq!(file.open(&[8; 32]).expect_err("key"), SealedError::Tampered);
        assert_eq!(
            file.open(&[7; 16]).expect_err("len"),
            SealedError::DataKeyLength(16)
        );
    }

    #[test]
    fn header_defects_have_their_own_errors() {
        let json = String::from_utf8(sealed().to_json()).expect("utf8");
        let cases = [
            (json.replace(FORMAT, "other"), "sealed_format"),
            (
                json.replace("\"version\": 1", "\"version\": 2"),
                "sealed_version",
            ),
            (
                json.replace(CONTEXT_VALUE, "other"),
                "sealed_encryption_context",
            ),
            (
                json.replace("\"nonce\": \"", "\"nonce\": \"!"),
                "sealed_base64",
            ),
            (
                json.replace("\"format\"", "\"extra\": 1, \"format\""),
                "sealed_not_json",
            ),
            (json[..json.len() / 2].to_string(), "sealed_not_json"),
        ];
        for (text, code) in cases {
            assert_ne!(text, json, "the case must change the file ({code})");
            let err = SealedFile::parse(text.as_bytes()).expect_err(code);
            assert_eq!(err.code(), code, "{err}");
        }
    }
}
