//! Full verification of a real document, against the signature primitive it rests on.
//!
//! `cargo bench -p confidant-verifier` (ring) and `cargo bench -p confidant-verifier --features aws-lc`
//! (AWS-LC). Groups are named after the backend so both runs can be compared side by side.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use confidant_verifier::signature::{sig_structure, verify_es384, BACKEND};
use confidant_verifier::{document, CertCache, Policy, Verifier, VerifyAt};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn load(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../test-vectors/attestation/real")
            .join(name),
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let doc = load("veracruz-20221109T225200-prod.cose");
    let root = confidant_certs::aws_nitro_root_g1().to_vec();
    let policy = Policy::default();
    let at = VerifyAt::DocumentTime;
    let mut group = c.benchmark_group(format!("verify-{BACKEND}"));

    // The floor: one ES384 verification of this document's COSE signature.
    let parsed = document::parse(&doc).unwrap();
    let message = sig_structure(parsed.protected, parsed.payload);
    let leaf = x509_parser::parse_x509_certificate(&parsed.doc.certificate)
        .unwrap()
        .1;
    let point = leaf.public_key().subject_public_key.data.to_vec();
    let signature = parsed.signature.to_vec();
    assert!(verify_es384(&point, &message, &signature));
    group.bench_function("es384-primitive", |b| {
        b.iter(|| {
            verify_es384(
                black_box(&point),
                black_box(&message),
                black_box(&signature),
            )
        })
    });

    group.bench_function("parse-only", |b| {
        b.iter(|| document::parse(black_box(&doc)).unwrap())
    });

    let cold = Verifier::new(vec![root.clone()])
        .unwrap()
        .with_cache(CertCache::disabled());
    group.bench_function("full-cold", |b| {
        b.iter(|| cold.verify(black_box(&doc), &policy, at).unwrap())
    });

    let warm = Verifier::new(vec![root]).unwrap();
    warm.verify(&doc, &policy, at).unwrap();
    group.bench_function("full-repeat-cached", |b| {
        b.iter(|| warm.verify(black_box(&doc), &policy, at).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
