//! The 34 real Nitro documents: valid at their own timestamps with their PCRs pinned, expired at now,
//! and the shared negatives rejected.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use confidant_verifier::{Code, PcrPin, Policy, UnixMillis, Verifier, VerifyAt};

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
        let mut policy = Policy::default();
        policy
            .set_allow_debug(real.debug)
            .set_max_age(Some(Duration::ZERO));
        for (i, v) in &real.pcrs {
            policy.pin_pcr(PcrPin::new(*i, v).unwrap());
        }
        let report = verifier.report(&real.bytes, &policy, VerifyAt::DocumentTime);
        assert!(report.is_valid(), "{}: {:?}", real.file, report.error);
        let doc = report.document.unwrap();
        assert_eq!(doc.timestamp, real.timestamp_ms, "{}", real.file);
        // Also at an explicit instant equal to the timestamp, with freshness checked.
        let doc2 = verifier
            .verify(
                &real.bytes,
                &policy,
                VerifyAt::Instant(UnixMillis::from_millis(real.timestamp_ms)),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", real.file));
        assert_eq!(doc2.doc().module_id, doc.module_id);
    }
}

#[test]
fn all_real_documents_are_rejected_now_as_expired() {
    let now = UnixMillis::now();
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
        let mut policy = Policy::default();
        policy.set_allow_debug(true);
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
    let mut policy = Policy::default();
    policy.set_allow_debug(true);
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
    let now = UnixMillis::now();
    let third = verifier.report(&real.bytes, &policy, VerifyAt::Instant(now));
    assert_eq!(third.error.unwrap().code(), Code::CertExpired);
}
