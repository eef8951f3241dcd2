//! The one COSE_Sign1 shape Confidant itself signs — answer receipts and release manifests: untagged
//! like a Nitro document, a protected header fixed per use (algorithm and content type, so that no
//! signature can be taken for another kind), an empty unprotected header. Signatures are over
//! RFC 9052's `Sig_structure`, built by the verifier's `sig_structure` as for Nitro documents.

use confidant_verifier::cbor::{write_bytes, write_head, write_text, Item, Reader};

/// `{1: alg, 3: content_type}`; `alg` is a negative COSE algorithm (EdDSA −8, ES384 −35).
pub fn protected(alg: i64, content_type: &str) -> Vec<u8> {
    debug_assert!(alg < 0);
    let mut p = Vec::with_capacity(8 + content_type.len());
    write_head(&mut p, 5, 2);
    write_head(&mut p, 0, 1);
    write_head(&mut p, 1, alg.unsigned_abs() - 1);
    write_head(&mut p, 0, 3);
    write_text(&mut p, content_type);
    p
}

/// `[protected, {}, payload, signature]`.
pub fn encode(protected: &[u8], payload: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + signature.len() + protected.len() + 16);
    write_head(&mut out, 4, 4);
    write_bytes(&mut out, protected);
    write_head(&mut out, 5, 0);
    write_bytes(&mut out, payload);
    write_bytes(&mut out, signature);
    out
}

/// A COSE_Sign1 taken apart, its signature not yet checked.
#[derive(Debug)]
pub struct Parts<'a> {
    pub protected: &'a [u8],
    pub payload: &'a [u8],
    pub signature: &'a [u8],
}

/// Takes `cose` apart strictly: an array of four, the protected header exactly `protected` (`what`
/// names it in the error), an empty unprotected header, byte strings, nothing after.
pub fn parse<'a>(cose: &'a [u8], protected: &[u8], what: &str) -> Result<Parts<'a>, String> {
    let mut r = Reader::new(cose);
    if !matches!(r.read()?, Item::Array(Some(4))) {
        return Err("not a COSE_Sign1 array of 4".into());
    }
    let protected_bytes = match r.read()? {
        Item::Bytes(b) if b == protected => b,
        _ => return Err(format!("the protected header is not {what}")),
    };
    if !matches!(r.read()?, Item::Map(Some(0))) {
        return Err("the unprotected header must be empty".into());
    }
    let payload = match r.read()? {
        Item::Bytes(b) => b,
        _ => return Err("the payload must be bytes".into()),
    };
    let signature = match r.read()? {
        Item::Bytes(b) => b,
        _ => return Err("the signature must be bytes".into()),
    };
    if r.remaining() != 0 {
        return Err("trailing bytes after the COSE_Sign1".into());
    }
    Ok(Parts {
        protected: protected_bytes,
        payload,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_encode_the_negative_algorithm() {
        assert_eq!(&protected(-8, "x")[..4], &[0xa2, 0x01, 0x27, 0x03]);
        assert_eq!(&protected(-35, "x")[..5], &[0xa2, 0x01, 0x38, 0x22, 0x03]);
    }

    #[test]
    fn parts_round_trip_and_anything_else_is_refused() {
        let p = protected(-8, "application/x");
        let cose = encode(&p, b"payload", &[7; 64]);
        let parts = parse(&cose, &p, "EdDSA").unwrap();
        assert_eq!(
            (parts.payload, parts.signature.len()),
            (&b"payload"[..], 64)
        );
        assert!(parse(&cose, &protected(-35, "application/x"), "ES384")
            .unwrap_err()
            .contains("ES384"));
        let mut trailing = cose.clone();
        trailing.push(0);
        assert!(parse(&trailing, &p, "EdDSA").is_err());
        let mut tagged = vec![0xd2];
        tagged.extend_from_slice(&cose);
        assert!(parse(&tagged, &p, "EdDSA").is_err());
    }
}
