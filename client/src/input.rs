//! Reading an attestation document given as raw COSE bytes, hex text or base64 text.

use std::io::Read;
use std::path::Path;

use base64::Engine;

/// Reads `path` (`-` for stdin) and decodes it. Text that is hex or base64 is decoded; anything else is
/// taken as raw bytes and left for the verifier to judge.
pub fn read_document(path: &Path) -> std::io::Result<Vec<u8>> {
    let bytes = if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin().lock().read_to_end(&mut buf)?;
        buf
    } else {
        std::fs::read(path)?
    };
    Ok(decode_document(bytes))
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
