//! The 34 real Nitro documents: valid at their own timestamps with their PCRs pinned, expired at now,
//! and the shared negatives rejected.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use confidant_verifier::{Code, Policy, Verifier, VerifyAt};

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-vectors/attestation")
}

struct Real {
    file: String,
    bytes: Vec<u8>,
    timestamp_ms: u64,
    pcrs: Vec<(usize, Vec<u8>)>,
    debug: bool,
}

fn real_documents() -> Vec<Real> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vectors().join("real/manifest.json")).unwrap())
            .unwrap();
    manifest["valid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let file = entry["file"].as_str().unwrap().to_string();
            let bytes = std::fs::read(vectors().join("real").join(&file)).unwrap();
            let pcrs = entry["pcrs"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    (
                        k.parse().unwrap(),
                        hex::decode(v.as_str().unwrap()).unwrap(),
                    )
                })
                .collect();
            Real {
                file,
                bytes,
                timestamp_ms: entry["timestamp_ms"].as_u64().unwrap(),
                pcrs,
                debug: entry["debug_mode"].as_bool().unwrap(),
            }
        })
        .collect()
}

fn aws() -> Verifier {
    Verifier::new(vec![confidant_certs::aws_nitro_root_g1().to_vec()]).unwrap()
}

#[test]
fn all_34_real_documents_verify_at_their_own_timestamp_with_pcrs_pinned() {
    let docs = real_documents();
    assert_eq!(docs.len(), 34);
    let verifier = aws();
    for real in &docs {
        let mut policy = Policy {
            allow_debug: real.debug,
            max_age_ms: Some(0),
            ..Policy::default()
        };
        for (i, v) in &real.pcrs {
            policy.pin_pcr(*i, v.clone()).unwrap();
        }
        let report = verifier.report(&real.bytes, &policy, VerifyAt::DocumentTime);
        assert!(report.is_valid(), "{}: {:?}", real.file, report.error);
        let doc = report.document.unwrap();
        assert_eq!(doc.timestamp, real.timestamp_ms, "{}", real.file);
        // Also at an explicit instant equal to the timestamp, with freshness checked.
        let doc2 = verifier
            .verify(&real.bytes, &policy, VerifyAt::Instant(real.timestamp_ms))
            .unwrap_or_else(|e| panic!("{}: {e}", real.file));
        assert_eq!(doc2.doc().module_id, doc.module_id);
    }
}

#[test]
fn all_real_documents_are_rejected_now_as_expired() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64 * 1000;
    let verifier = aws();
    for real in real_documents() {
        let err = verifier
            .verify(&real.bytes, &Policy::default(), VerifyAt::Instant(now))
            .unwrap_err();
        assert_eq!(err.code(), Code::CertExpired, "{}: {err}", real.file);
    }
}

#[test]
fn debug_documents_are_refused_unless_allowed() {
    let verifier = aws();
    for real in real_documents().iter().filter(|r| r.debug) {
        let err = verifier
            .verify(&real.bytes, &Policy::default(), VerifyAt::DocumentTime)
            .unwrap_err();
        assert_eq!(err.code(), Code::DebugMode, "{}", real.file);
    }
}

#[test]
fn shared_negatives_are_rejected_with_their_reason() {
    let verifier = aws();
    let cases = [
        (
            "base-20260103T204107-malformed-truncated-key.cose",
            Code::Malformed,
        ),
        ("eternis-20240723T212940-badsig.cose", Code::BadSignature),
        ("veracruz-20221109T225200-badsig.cose", Code::BadSignature),
        (
            "marlin-20241213T090545-synthetic-selfsigned.cose",
            Code::ChainUntrusted,
        ),
        (
            "marlin-20250430T140723-synthetic-selfsigned-pcr16.cose",
            Code::ChainUntrusted,
        ),
    ];
    for (file, code) in cases {
        let bytes = std::fs::read(vectors().join("negative").join(file)).unwrap();
        let policy = Policy {
            allow_debug: true,
            ..Policy::default()
        };
        let err = verifier
            .verify(&bytes, &policy, VerifyAt::DocumentTime)
            .unwrap_err();
        assert_eq!(err.code(), code, "{file}: {err}");
    }
}

#[test]
fn a_repeat_verification_takes_its_links_from_the_cache() {
    let verifier = aws();
    let real = &real_documents()[0];
    let policy = Policy {
        allow_debug: true,
        ..Policy::default()
    };
    let first = verifier.report(&real.bytes, &policy, VerifyAt::DocumentTime);
    assert!(
        first.steps[1].detail.contains("(0 from cache)"),
        "{}",
        first.steps[1].detail
    );
    assert_eq!(verifier.cache().len(), 4);
    let second = verifier.report(&real.bytes, &policy, VerifyAt::DocumentTime);
    assert!(
        second.steps[1].detail.contains("(4 from cache)"),
        "{}",
        second.steps[1].detail
    );
    // The cache never excuses validity.
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64 * 1000;
    let third = verifier.report(&real.bytes, &policy, VerifyAt::Instant(now));
    assert_eq!(third.error.unwrap().code(), Code::CertExpired);
}
