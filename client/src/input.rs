//! Reading an attestation document given as raw COSE bytes, hex text or base64 text, or as the bundle
//! `confidant attest --out` saves: the document with the key configs it committed to, which is what
//! `verify` needs to repeat every check `ask` made.

use std::io::Read;
use std::path::Path;

use base64::Engine;

/// A document and, when saved by `attest --out`, the key configs served beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub document: Vec<u8>,
    pub key_configs: Option<Vec<u8>>,
}

/// The bundle's format tag.
pub const BUNDLE_FORMAT: &str = "confidant-attestation/1";

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Bundle {
    format: String,
    /// Base64 of the COSE_Sign1 bytes as received.
    document: String,
    /// Base64 of the key configs as received (their SHA-256 is in the document's user_data).
    key_configs: String,
}

/// The bundle `attest --out` writes (JSON: format, document, key_configs; both base64).
pub fn bundle_json(document: &[u8], key_configs: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let bundle = Bundle {
        format: BUNDLE_FORMAT.into(),
        document: b64.encode(document),
        key_configs: b64.encode(key_configs),
    };
    serde_json::to_string_pretty(&bundle).unwrap_or_default() + "\n"
}

/// Reads `path` (`-` for stdin): a bundle, or a bare document (raw, hex or base64; anything else is
/// taken as raw bytes and left for the verifier to judge).
pub fn read_saved(path: &Path) -> std::io::Result<Saved> {
    let bytes = if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin().lock().read_to_end(&mut buf)?;
        buf
    } else {
        std::fs::read(path)?
    };
    if bytes.trim_ascii_start().first() == Some(&b'{') {
        let bundle: Bundle = serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a saved attestation: {e}"),
            )
        })?;
        if bundle.format != BUNDLE_FORMAT {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "saved attestation format {:?}, expected {BUNDLE_FORMAT:?}",
                    bundle.format
                ),
            ));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let field = |name: &str, v: &str| {
            b64.decode(v).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("saved attestation {name}: {e}"),
                )
            })
        };
        return Ok(Saved {
            document: field("document", &bundle.document)?,
            key_configs: Some(field("key_configs", &bundle.key_configs)?),
        });
    }
    Ok(Saved {
        document: decode_document(bytes),
        key_configs: None,
    })
}

/// Reads a bare document or a bundle's document.
pub fn read_document(path: &Path) -> std::io::Result<Vec<u8>> {
    read_saved(path).map(|s| s.document)
}

/// Raw COSE starts with a CBOR array or tag byte, never printable ASCII; printable text is tried as hex,
/// then as base64 (standard or URL-safe, padded or not).
pub fn decode_document(bytes: Vec<u8>) -> Vec<u8> {
    let text = match std::str::from_utf8(&bytes) {
        Ok(t)
            if !t.trim().is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) =>
        {
            t
        }
        _ => return bytes,
    };
    let compact: String = text.split_ascii_whitespace().collect();
    let hex_body = compact.strip_prefix("0x").unwrap_or(&compact);
    if let Ok(raw) = hex::decode(hex_body) {
        return raw;
    }
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    for engine in engines {
        if let Ok(raw) = engine.decode(&compact) {
            return raw;
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_round_trips_and_a_foreign_one_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("att.json");
        std::fs::write(&path, bundle_json(&[0x84, 1, 2], &[9, 8])).expect("write");
        let saved = read_saved(&path).expect("read");
        assert_eq!(saved.document, vec![0x84, 1, 2]);
        assert_eq!(saved.key_configs, Some(vec![9, 8]));
        std::fs::write(
            &path,
            r#"{"format":"other/1","document":"","key_configs":""}"#,
        )
        .expect("write");
        let e = read_saved(&path).expect_err("foreign").to_string();
        assert!(e.contains("format \"other/1\""), "{e}");
    }

    #[test]
    fn decodes_raw_hex_and_base64_alike() {
        let raw = vec![0x84, 0x44, 0xa1, 0x01, 0x38, 0x22, 0xff, 0x00];
        assert_eq!(decode_document(raw.clone()), raw);
        assert_eq!(decode_document(b"8444a1013822ff00\n".to_vec()), raw);
        assert_eq!(decode_document(b"0x8444A1013822FF00".to_vec()), raw);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert_eq!(decode_document(format!("{b64}\n").into_bytes()), raw);
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(decode_document(b64url.into_bytes()), raw);
        // Neither: passed through for the verifier to reject.
        assert_eq!(
            decode_document(b"not a document!".to_vec()),
            b"not a document!".to_vec()
        );
    }
}
