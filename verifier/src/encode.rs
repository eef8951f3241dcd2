//! Writing and signing attestation documents (feature `encode`): for the emulated NSM and for synthetic
//! test vectors. Never needed to verify, so the client does not enable it.
//!
//! Documents come out in the real NSM's shape: untagged COSE_Sign1, protected header `{1: -35}`, empty
//! unprotected map, the nine payload keys in AWS order, PCRs as a map of 48-byte strings.

use aws_nitro_enclaves_nsm_api::api::AttestationDoc;
use ciborium::Value;

use crate::cbor::{write_bytes, write_head};
use crate::signature::sig_structure;

/// The protected header `{1: -35}`.
pub const PROTECTED_ES384: [u8; 4] = [0xa1, 0x01, 0x38, 0x22];

/// Why a document could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("signing key is not a P-384 PKCS#8 key")]
    BadKey,
    #[error("signing failed")]
    Sign,
}

/// The payload's entries in AWS order, as CBOR values (callers that build odd documents edit them).
pub fn payload_entries(doc: &AttestationDoc) -> Vec<(Value, Value)> {
    let bytes = |b: &[u8]| Value::Bytes(b.to_vec());
    let optional = |b: &Option<serde_bytes::ByteBuf>| match b {
        Some(b) => Value::Bytes(b.to_vec()),
        None => Value::Null,
    };
    let digest = match doc.digest {
        aws_nitro_enclaves_nsm_api::api::Digest::SHA256 => "SHA256",
        aws_nitro_enclaves_nsm_api::api::Digest::SHA384 => "SHA384",
        aws_nitro_enclaves_nsm_api::api::Digest::SHA512 => "SHA512",
    };
    let key = |k: &str| Value::Text(k.to_string());
    vec![
        (key("module_id"), Value::Text(doc.module_id.clone())),
        (key("digest"), Value::Text(digest.into())),
        (key("timestamp"), Value::Integer(doc.timestamp.into())),
        (
            key("pcrs"),
            Value::Map(
                doc.pcrs
                    .iter()
                    .map(|(i, v)| (Value::Integer((*i as u64).into()), bytes(v)))
                    .collect(),
            ),
        ),
        (key("certificate"), bytes(&doc.certificate)),
        (
            key("cabundle"),
            Value::Array(doc.cabundle.iter().map(|c| bytes(c)).collect()),
        ),
        (key("public_key"), optional(&doc.public_key)),
        (key("user_data"), optional(&doc.user_data)),
        (key("nonce"), optional(&doc.nonce)),
    ]
}

/// Encodes map entries, definite-length (`a9…`) or indefinite-length (`bf…ff`) as the NSM has used
/// since late 2025. Entries are written as given: duplicates and odd types survive.
pub fn encode_map(entries: &[(Value, Value)], indefinite: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    if indefinite {
        out.push(0xbf);
    } else {
        write_head(&mut out, 5, entries.len() as u64);
    }
    for (k, v) in entries {
        encode_value(k, &mut out);
        encode_value(v, &mut out);
    }
    if indefinite {
        out.push(0xff);
    }
    out
}

/// Encodes one value (ciborium writes shortest-form heads).
pub fn encode_value(value: &Value, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail, and every Value we build is serializable.
    if ciborium::into_writer(value, &mut *out).is_err() {
        unreachable!("CBOR encoding into a Vec failed");
    }
}

/// Signs `["Signature1", protected, h'', payload]` with a P-384 PKCS#8 key: r ‖ s, 96 bytes.
pub fn sign(protected: &[u8], payload: &[u8], key_pkcs8: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let rng = ring::rand::SystemRandom::new();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        key_pkcs8,
        &rng,
    )
    .map_err(|_| EncodeError::BadKey)?;
    let sig = key
        .sign(&rng, &sig_structure(protected, payload))
        .map_err(|_| EncodeError::Sign)?;
    Ok(sig.as_ref().to_vec())
}

/// Assembles a COSE_Sign1 `[protected, {}, payload, signature]`, optionally under tag 18.
pub fn cose_sign1(protected: &[u8], payload: &[u8], signature: &[u8], tagged: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + signature.len() + 32);
    if tagged {
        out.push(0xd2); // tag 18
    }
    out.push(0x84);
    write_bytes(&mut out, protected);
    out.push(0xa0);
    write_bytes(&mut out, payload);
    write_bytes(&mut out, signature);
    out
}

/// Encodes `doc` in the NSM's shape and signs it with the leaf key whose certificate is
/// `doc.certificate`.
pub fn sign_document(
    doc: &AttestationDoc,
    leaf_key_pkcs8: &[u8],
    indefinite: bool,
) -> Result<Vec<u8>, EncodeError> {
    let payload = encode_map(&payload_entries(doc), indefinite);
    let signature = sign(&PROTECTED_ES384, &payload, leaf_key_pkcs8)?;
    Ok(cose_sign1(&PROTECTED_ES384, &payload, &signature, false))
}
