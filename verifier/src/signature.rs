//! ECDSA verification, the one primitive the verifier's cost rests on.
//!
//! ring by default; `aws-lc-rs` (FIPS-validated AWS-LC) with the `aws-lc` feature. Both verify over the
//! message (they hash internally) and both accept high-S signatures, which real NSM documents carry.

#[cfg(feature = "aws-lc")]
use aws_lc_rs::signature as backend;
#[cfg(not(feature = "aws-lc"))]
use ring::signature as backend;

/// The name of the backend in use, for reports and benchmarks.
pub const BACKEND: &str = if cfg!(feature = "aws-lc") {
    "aws-lc-rs"
} else {
    "ring"
};

/// An ECDSA algorithm a certificate or document may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcdsaAlg {
    P256Sha256,
    P384Sha384,
    /// P-384 key, SHA-256 digest (allowed by RFC 5758; not used by AWS, accepted for other chains).
    P384Sha256,
    P256Sha384,
}

fn asn1_algorithm(alg: EcdsaAlg) -> &'static backend::EcdsaVerificationAlgorithm {
    match alg {
        EcdsaAlg::P256Sha256 => &backend::ECDSA_P256_SHA256_ASN1,
        EcdsaAlg::P384Sha384 => &backend::ECDSA_P384_SHA384_ASN1,
        EcdsaAlg::P384Sha256 => &backend::ECDSA_P384_SHA256_ASN1,
        EcdsaAlg::P256Sha384 => &backend::ECDSA_P256_SHA384_ASN1,
    }
}

/// Verifies a DER-encoded ECDSA signature, as certificates carry. `public_key` is an uncompressed SEC1
/// point.
pub fn verify_ecdsa_asn1(
    alg: EcdsaAlg,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    backend::UnparsedPublicKey::new(asn1_algorithm(alg), public_key)
        .verify(message, signature)
        .is_ok()
}

/// Verifies an ES384 signature (P-384, SHA-384, r ‖ s of 96 bytes): the function COSE signatures go
/// through, and the one the Wycheproof P1363 vectors exercise.
pub fn verify_es384(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    signature.len() == crate::document::SIGNATURE_LEN
        && backend::UnparsedPublicKey::new(&backend::ECDSA_P384_SHA384_FIXED, public_key)
            .verify(message, signature)
            .is_ok()
}

/// The COSE `Sig_structure` for a COSE_Sign1 with empty external AAD:
/// `["Signature1", protected, h'', payload]`, built from the bytes as received.
pub fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(protected.len() + payload.len() + 32);
    out.push(0x84); // array of 4
    out.push(0x6a); // text of 10
    out.extend_from_slice(b"Signature1");
    crate::cbor::write_bytes(&mut out, protected);
    out.push(0x40); // empty external_aad
    crate::cbor::write_bytes(&mut out, payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sig_structure_matches_the_cose_layout() {
        let s = sig_structure(&[0xa1, 0x01, 0x38, 0x22], &[0xaa; 300]);
        assert_eq!(&s[..12], b"\x84\x6aSignature1");
        assert_eq!(&s[12..17], &[0x44, 0xa1, 0x01, 0x38, 0x22]);
        assert_eq!(s[17], 0x40);
        assert_eq!(&s[18..21], &[0x59, 0x01, 0x2c]);
        assert_eq!(s.len(), 21 + 300);
    }

    #[test]
    fn es384_rejects_wrong_lengths_without_calling_the_backend() {
        assert!(!verify_es384(&[4; 97], b"m", &[0; 95]));
        assert!(!verify_es384(&[4; 97], b"m", &[0; 97]));
    }
}
