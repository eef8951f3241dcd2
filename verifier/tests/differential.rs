//! A second opinion on every document: Confidant's verifier against `aws-nitro-enclaves-cose`, the COSE
//! crate the design names (a dev-dependency only, so the client's tree stays free of OpenSSL), over
//! every real, synthetic and negative document and the attestation fuzz corpus.
//!
//! Where both parse a document, both must reach the same verdict on its COSE signature. Where the
//! crate accepts what Confidant rejects, the case must be one of [`STRICTER`], with its reason: the
//! crate's serde_cbor parser is lenient where Confidant's strict reader is not. The opposite (Confidant
//! accepting what the crate rejects) must never happen.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aws_nitro_enclaves_cose::crypto::Openssl;
use aws_nitro_enclaves_cose::CoseSign1;
use confidant_verifier::document;
use confidant_verifier::signature::{sig_structure, verify_es384};

/// Documents the crate accepts (parses, and finds the signature valid) and Confidant refuses, and why.
/// Most are payload rules: the crate checks the COSE envelope and its signature, never the attestation
/// payload it carries; two are header rules where the crate is lenient.
const STRICTER: &[(&str, &str)] = &[
    (
        "synthetic/cabundle-empty.cose",
        "payload: cabundle must hold the root at least",
    ),
    (
        "synthetic/digest-sha256.cose",
        "payload: digest must be SHA384",
    ),
    (
        "synthetic/duplicate-map-key.cose",
        "payload: a duplicate key (serde_cbor keeps one; Confidant refuses the document)",
    ),
    (
        "synthetic/duplicate-pcr-index.cose",
        "payload: a PCR index twice in `pcrs`",
    ),
    (
        "synthetic/missing-required-key.cose",
        "payload: one of the nine keys is missing",
    ),
    (
        "synthetic/oversize-nonce.cose",
        "payload: nonce longer than the NSM allows (512 bytes)",
    ),
    (
        "synthetic/oversize-public-key.cose",
        "payload: public_key longer than the NSM allows (1024 bytes)",
    ),
    (
        "synthetic/oversize-user-data.cose",
        "payload: user_data longer than the NSM allows (512 bytes)",
    ),
    (
        "synthetic/pcr-index-out-of-range.cose",
        "payload: a PCR index above 31",
    ),
    (
        "synthetic/pcr-wrong-length.cose",
        "payload: a PCR that is not 48 bytes",
    ),
    (
        "synthetic/protected-header-extra-entry.cose",
        "header: the protected header must be exactly {1: -35}; the crate accepts extra entries",
    ),
    (
        "synthetic/unknown-payload-key.cose",
        "payload: a key beyond the nine",
    ),
    (
        "synthetic/unprotected-header-not-empty.cose",
        "header: the unprotected header must be empty; the crate ignores it",
    ),
    (
        "synthetic/wrong-type-module-id.cose",
        "payload: module_id is not text",
    ),
    (
        "synthetic/wrong-type-nonce-integer.cose",
        "payload: nonce is an integer",
    ),
    (
        "synthetic/wrong-type-pcrs.cose",
        "payload: pcrs is not a map",
    ),
    (
        "synthetic/wrong-type-timestamp.cose",
        "payload: timestamp is not an unsigned integer",
    ),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// The envelope did not parse.
    Unparsed(String),
    /// It parsed; the signature over it is (or is not) valid under the leaf's key.
    Signature(bool),
}

fn ours(bytes: &[u8]) -> Verdict {
    let parsed = match document::parse(bytes) {
        Ok(p) => p,
        Err(e) => return Verdict::Unparsed(e.code().as_str().to_string()),
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&parsed.doc.certificate) else {
        return Verdict::Unparsed("bad_certificate".into());
    };
    let key = cert.public_key().subject_public_key.data.to_vec();
    let message = sig_structure(parsed.protected, parsed.payload);
    Verdict::Signature(verify_es384(&key, &message, parsed.signature))
}

fn theirs(bytes: &[u8]) -> Verdict {
    let Ok(cose) = CoseSign1::from_bytes(bytes) else {
        return Verdict::Unparsed("crate".into());
    };
    let Ok(payload) = cose.get_payload::<Openssl>(None) else {
        return Verdict::Unparsed("crate payload".into());
    };
    let Ok(serde_cbor::Value::Map(map)) = serde_cbor::from_slice::<serde_cbor::Value>(&payload)
    else {
        return Verdict::Unparsed("crate payload map".into());
    };
    let Some(serde_cbor::Value::Bytes(der)) =
        map.get(&serde_cbor::Value::Text("certificate".into()))
    else {
        return Verdict::Unparsed("crate certificate".into());
    };
    let Ok(key) = openssl::x509::X509::from_der(der).and_then(|c| c.public_key()) else {
        return Verdict::Unparsed("crate certificate".into());
    };
    Verdict::Signature(cose.verify_signature::<Openssl>(&key).unwrap_or(false))
}

fn documents() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    let dirs: [(&str, PathBuf); 4] = [
        ("real", root.join("test-vectors/attestation/real")),
        ("synthetic", root.join("test-vectors/attestation/synthetic")),
        ("negative", root.join("test-vectors/attestation/negative")),
        ("fuzz", root.join("fuzz/corpus/attestation")),
    ];
    // Each distinct document once, under the first name it appears with (fuzz seeds copy vectors).
    let mut seen = std::collections::HashSet::new();
    for (tag, dir) in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| tag == "fuzz" || p.extension().is_some_and(|e| e == "cose"))
            .collect();
        files.sort();
        for p in files {
            let bytes = std::fs::read(&p).unwrap();
            if seen.insert(bytes.clone()) {
                let name = format!("{tag}/{}", p.file_name().unwrap().to_string_lossy());
                out.push((name, bytes));
            }
        }
    }
    out
}

#[test]
fn both_verifiers_agree_on_every_signature_and_the_stricter_cases_are_listed() {
    let known: BTreeMap<&str, &str> = STRICTER.iter().copied().collect();
    let mut stricter = Vec::new();
    let mut disagreements = Vec::new();
    let mut compared = 0;
    for (name, bytes) in documents() {
        let (a, b) = (ours(&bytes), theirs(&bytes));
        match (&a, &b) {
            (Verdict::Signature(x), Verdict::Signature(y)) => {
                compared += 1;
                if x != y {
                    disagreements.push(format!("{name}: Confidant {a:?}, crate {b:?}"));
                }
            }
            (Verdict::Unparsed(code), Verdict::Signature(true)) => {
                stricter.push(name.clone());
                if !known.contains_key(name.as_str()) {
                    disagreements.push(format!(
                        "{name}: the crate accepts, Confidant refuses ({code}): not listed"
                    ));
                }
            }
            (Verdict::Signature(true), Verdict::Unparsed(_)) => disagreements.push(format!(
                "{name}: Confidant accepts what the crate cannot parse"
            )),
            _ => {}
        }
    }
    for name in known.keys() {
        if !stricter.iter().any(|s| s == name) {
            disagreements.push(format!("{name}: listed as stricter but no longer is"));
        }
    }
    assert!(compared >= 34, "{compared} compared");
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
