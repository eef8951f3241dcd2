#![no_main]
//! Confidant's verifier against `aws-nitro-enclaves-cose` on the signature of whatever both parse
//! (see verifier/tests/differential.rs for the known, listed cases where Confidant is stricter).

use aws_nitro_enclaves_cose::crypto::Openssl;
use aws_nitro_enclaves_cose::CoseSign1;
use confidant_verifier::document;
use confidant_verifier::signature::{sig_structure, verify_es384};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let ours = document::parse(data).ok().and_then(|p| {
        let (_, cert) = x509_parser::parse_x509_certificate(&p.doc.certificate).ok()?;
        let key = cert.public_key().subject_public_key.data.to_vec();
        Some(verify_es384(&key, &sig_structure(p.protected, p.payload), p.signature))
    });
    let theirs = CoseSign1::from_bytes(data).ok().and_then(|cose| {
        let payload = cose.get_payload::<Openssl>(None).ok()?;
        let serde_cbor::Value::Map(map) = serde_cbor::from_slice(&payload).ok()? else {
            return None;
        };
        let serde_cbor::Value::Bytes(der) = map.get(&serde_cbor::Value::Text("certificate".into()))?
        else {
            return None;
        };
        let key = openssl::x509::X509::from_der(der).ok()?.public_key().ok()?;
        Some(cose.verify_signature::<Openssl>(&key).unwrap_or(false))
    });
    match (ours, theirs) {
        (Some(a), Some(b)) => assert_eq!(a, b, "the signature verdicts differ"),
        (Some(true), None) => panic!("Confidant accepts a signature the crate cannot parse"),
        _ => {}
    }
});
