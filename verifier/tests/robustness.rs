//! Fuzzing-grade robustness: random mutations of real documents never panic, and no single-byte change
//! of a valid document is accepted.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::OnceLock;

use confidant_verifier::{Policy, Verifier, VerifyAt};
use proptest::prelude::*;

fn documents() -> &'static Vec<Vec<u8>> {
    static DOCS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-vectors/attestation/real");
        let mut docs: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "cose"))
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        docs.sort();
        docs
    })
}

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| Verifier::new(vec![confidant_certs::aws_nitro_root_g1().to_vec()]).unwrap())
}

fn lenient() -> Policy {
    let mut policy = Policy::default();
    policy.set_allow_debug(true);
    policy
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Xor(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Delete(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Xor(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
    ]
}

fn apply(doc: &mut Vec<u8>, m: &Mutation) {
    let n = doc.len();
    match *m {
        Mutation::Set(i, b) => doc[i % n] = b,
        Mutation::Xor(i, b) => doc[i % n] ^= b,
        Mutation::Truncate(i) => doc.truncate(i % n),
        Mutation::Insert(i, b) => doc.insert(i % (n + 1), b),
        Mutation::Delete(i) => {
            doc.remove(i % n);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_documents_never_panic(which in any::<usize>(), muts in proptest::collection::vec(mutation(), 1..8)) {
        let docs = documents();
        let mut doc = docs[which % docs.len()].clone();
        for m in &muts {
            if doc.is_empty() { break; }
            apply(&mut doc, m);
        }
        let report = verifier().report(&doc, &lenient(), VerifyAt::DocumentTime);
        // Whatever happened, the report is complete and consistent.
        prop_assert_eq!(report.steps.len(), 5);
        prop_assert_eq!(report.is_valid(), report.steps.iter().all(|s| s.status == confidant_verifier::StepStatus::Passed));
    }

    #[test]
    fn any_single_byte_change_is_rejected(which in any::<usize>(), at in any::<usize>(), xor in 1u8..=255) {
        let docs = documents();
        let mut doc = docs[which % docs.len()].clone();
        let i = at % doc.len();
        doc[i] ^= xor;
        let report = verifier().report(&doc, &lenient(), VerifyAt::DocumentTime);
        prop_assert!(!report.is_valid(), "byte {} ^ {:#x} accepted", i, xor);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let report = verifier().report(&bytes, &lenient(), VerifyAt::Instant(confidant_verifier::UnixMillis::EPOCH));
        prop_assert!(!report.is_valid());
    }
}
