//! Generates `test-vectors/receipts/vectors.json` from fixed seeds (Ed25519 signatures are
//! deterministic, so the file is the same on every run): two chained receipts that verify, then
//! negative cases — every field altered (each validly signed, each `receipt_mismatch` naming the
//! field), and every way the COSE_Sign1 or its payload can be wrong (`bad_receipt`).
//!
//! `cargo run -p confidant-protocol --example gen-receipt-vectors -- test-vectors/receipts`
//!
//! Malformed receipts are built here by hand (the library signs only well-formed ones).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use confidant_protocol::cose;
use confidant_protocol::message::Finish;
use confidant_protocol::receipt::{self, Receipt, ReceiptSigner, CONTENT_TYPE};
use confidant_protocol::user_data::{sha256, Limits, UserData};
use confidant_protocol::UnixMillis;
use confidant_verifier::cbor::{write_head, write_text};
use confidant_verifier::signature::sig_structure;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};
use zeroize::Zeroizing;

/// A change to one field of a receipt.
type Alter = Box<dyn Fn(&mut Receipt)>;

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

/// The receipt's protected header with COSE algorithm `alg`.
fn header(alg: i64) -> Vec<u8> {
    cose::protected(alg, CONTENT_TYPE)
}

/// A COSE_Sign1 over `payload` with `protected`, signed by `seed`'s key.
fn sign_raw(seed: &[u8; 32], protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let key = Ed25519KeyPair::from_seed_unchecked(seed).unwrap();
    let sig = key.sign(&sig_structure(protected, payload));
    cose::encode(protected, payload, sig.as_ref())
}

/// A receipt's fields, for readers checking an implementation by hand.
fn fields(r: &Receipt) -> Value {
    json!({
        "v": 1, "doc": h(&r.document), "req": h(&r.request), "q": h(&r.question), "ans": h(&r.answer),
        "model": h(&r.model), "settings": r.settings.map(|s| h(&s)), "dtype": r.dtype,
        "pt": r.prompt_tokens, "gt": r.generated_tokens, "finish": r.finish,
        "time": r.time.as_millis(), "prev": r.previous.map(|p| h(&p)), "payload": h(&r.encode()),
    })
}

fn main() {
    let out = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: gen-receipt-vectors DIR"),
    );
    let seed = sha256(b"confidant receipt key");
    let other_seed = sha256(b"confidant other receipt key");
    let signer = ReceiptSigner::from_seed(Zeroizing::new(seed));
    let pk = signer.public_key();
    let other_pk = Ed25519KeyPair::from_seed_unchecked(&other_seed)
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();

    let document = b"a stand-in for the attestation document's bytes";
    let document_time = UnixMillis::from_millis(1_780_000_000_000);
    let user_data = UserData {
        kc: sha256(b"confidant key configs"),
        model: sha256(b"confidant model"),
        settings: Some(sha256(b"confidant settings")),
        dtype: Some("bf16".into()),
        limits: Some(Limits {
            context_tokens: 2048,
            max_new_tokens: 512,
        }),
        exp: UnixMillis::from_secs(1_780_003_600),
        id: Some([0x11; 16]),
        rk: Some(pk),
    };
    let question = "Is a fasting glucose of 6.1 mmol/L high?";
    let answer = "It is above the usual range; ask your doctor about a repeat test.";
    let follow_up = "What does HbA1c add?";
    let follow_answer = "It reflects the average over about three months.";
    let first = Receipt {
        document: sha256(document),
        request: sha256(b"encapsulated request bytes"),
        question: sha256(question.as_bytes()),
        answer: sha256(answer.as_bytes()),
        model: user_data.model,
        settings: user_data.settings,
        dtype: "bf16".into(),
        prompt_tokens: 14,
        generated_tokens: 17,
        finish: Finish::Eos,
        time: UnixMillis::from_millis(1_780_000_004_321),
        previous: None,
    };
    let first_cose = signer.sign(&first);
    let second = Receipt {
        request: receipt::turn_request(&[0x22; 16], 1, b"session turn ciphertext"),
        question: sha256(follow_up.as_bytes()),
        answer: sha256(follow_answer.as_bytes()),
        prompt_tokens: 40,
        generated_tokens: 11,
        finish: Finish::Stop,
        time: UnixMillis::from_millis(1_780_000_009_876),
        previous: Some(receipt::hash(&first_cose)),
        ..first.clone()
    };
    let second_cose = signer.sign(&second);

    let context = |q: &str, a: &str, r: &Receipt, prev: Option<[u8; 32]>| {
        json!({
            "document_sha256": h(&sha256(document)),
            "document_time": document_time.as_millis(),
            "user_data": h(&user_data.encode()),
            "request_sha256": h(&r.request),
            "question": q,
            "answer": a,
            "trailer": {"finish": r.finish, "prompt_tokens": r.prompt_tokens, "generated_tokens": r.generated_tokens},
            "previous": prev.map(|p| h(&p)),
        })
    };
    let ctx1 = context(question, answer, &first, None);
    let ctx2 = context(
        follow_up,
        follow_answer,
        &second,
        Some(receipt::hash(&first_cose)),
    );

    let mut cases: Vec<Value> = vec![
        json!({"name": "turn-1", "receipt": fields(&first), "cose": h(&first_cose), "context": ctx1, "expect": "ok"}),
        json!({"name": "turn-2-chained", "receipt": fields(&second), "cose": h(&second_cose), "context": ctx2, "expect": "ok"}),
    ];
    // Every field altered, each signed properly: the receipt verifies but covers something else.
    let altered: Vec<(&str, Alter)> = vec![
        (
            "doc",
            Box::new(|r| r.document = sha256(b"another document")),
        ),
        ("req", Box::new(|r| r.request = sha256(b"another request"))),
        ("q", Box::new(|r| r.question = sha256(b"another question"))),
        ("ans", Box::new(|r| r.answer = sha256(b"another answer"))),
        ("model", Box::new(|r| r.model = sha256(b"another model"))),
        ("settings", Box::new(|r| r.settings = None)),
        ("dtype", Box::new(|r| r.dtype = "int8".into())),
        ("pt", Box::new(|r| r.prompt_tokens += 1)),
        ("gt", Box::new(|r| r.generated_tokens -= 1)),
        ("finish", Box::new(|r| r.finish = Finish::Length)),
        (
            "time",
            Box::new(|r| r.time = UnixMillis::from_millis(1_770_000_000_000)),
        ),
        (
            "prev",
            Box::new(|r| r.previous = Some(sha256(b"another receipt"))),
        ),
    ];
    for (field, alter) in altered {
        let mut r = first.clone();
        alter(&mut r);
        cases.push(json!({
            "name": format!("altered-{field}"), "cose": h(&signer.sign(&r)), "context": ctx1,
            "expect": "receipt_mismatch", "field": field,
        }));
    }
    // The chain: turn 2 presented as a first turn, and turn 1's receipt where turn 2's belongs.
    cases.push(json!({"name": "chain-missing-prev", "cose": h(&second_cose),
        "context": context(follow_up, follow_answer, &second, None), "expect": "receipt_mismatch", "field": "prev"}));
    cases.push(json!({"name": "chain-replayed-first", "cose": h(&first_cose),
        "context": context(question, answer, &first, Some(receipt::hash(&first_cose))), "expect": "receipt_mismatch", "field": "prev"}));

    // The COSE_Sign1 and its payload, wrong in form or signature.
    let payload = first.encode();
    let mut bad: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut flipped_sig = first_cose.clone();
    *flipped_sig.last_mut().unwrap() ^= 1;
    bad.push(("signature-altered", flipped_sig));
    let mut flipped_payload = first_cose.clone();
    let at = first_cose.len() - 64 - 3 - 40; // inside the payload, before the signature
    flipped_payload[at] ^= 1;
    bad.push(("payload-altered", flipped_payload));
    bad.push(("other-key", sign_raw(&other_seed, &header(-8), &payload)));
    bad.push(("alg-es384", sign_raw(&seed, &header(-35), &payload)));
    let mut no_ct = Vec::new();
    write_head(&mut no_ct, 5, 1);
    write_head(&mut no_ct, 0, 1);
    write_head(&mut no_ct, 1, 7);
    bad.push(("no-content-type", sign_raw(&seed, &no_ct, &payload)));
    let mut tagged = vec![0xd2]; // tag 18
    tagged.extend_from_slice(&first_cose);
    bad.push(("tagged", tagged));
    let mut trailing = first_cose.clone();
    trailing.push(0);
    bad.push(("trailing-byte", trailing));
    bad.push(("truncated", first_cose[..first_cose.len() - 1].to_vec()));
    // Payload maps signed properly but not canonical or not complete.
    let mut reordered = Vec::new();
    write_head(&mut reordered, 5, 12);
    reordered.extend_from_slice(&payload[4..]);
    reordered.extend_from_slice(&payload[1..4]); // "v": 1 moved last
    bad.push((
        "payload-not-canonical",
        sign_raw(&seed, &header(-8), &reordered),
    ));
    let mut extra = payload.clone();
    extra[0] += 1;
    write_text(&mut extra, "note");
    write_text(&mut extra, "x");
    bad.push(("payload-unknown-key", sign_raw(&seed, &header(-8), &extra)));
    let mut dup = payload.clone();
    dup[0] += 1;
    dup.extend_from_slice(&payload[1..4]);
    bad.push(("payload-duplicate-key", sign_raw(&seed, &header(-8), &dup)));
    let mut v2 = payload.clone();
    v2[3] = 2;
    bad.push(("payload-version-2", sign_raw(&seed, &header(-8), &v2)));
    let mut missing = Vec::new();
    write_head(&mut missing, 5, 11);
    missing.extend_from_slice(&payload[1..]);
    let cut = {
        // Drop the `ans` entry: key "ans" (4 bytes) and a 34-byte digest.
        let key = [0x63, b'a', b'n', b's'];
        let i = missing.windows(4).position(|w| w == key).unwrap();
        let mut m = missing[..i].to_vec();
        m.extend_from_slice(&missing[i + 4 + 34..]);
        m
    };
    bad.push(("payload-missing-ans", sign_raw(&seed, &header(-8), &cut)));
    for (name, cose) in bad {
        cases.push(
            json!({"name": name, "cose": h(&cose), "context": ctx1, "expect": "bad_receipt"}),
        );
    }

    let file = json!({
        "description": "Confidant answer receipts (docs/protocol.md, \"Receipts\"): Ed25519 COSE_Sign1 over a canonical CBOR payload; generated by `cargo run -p confidant-protocol --example gen-receipt-vectors`.",
        "key_seed": "confidant receipt key",
        "public_key": h(&pk),
        "other_public_key": h(&other_pk),
        "cases": cases,
    });
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("vectors.json"),
        serde_json::to_string_pretty(&file).unwrap() + "\n",
    )
    .unwrap();
    eprintln!(
        "wrote {} receipt cases",
        file["cases"].as_array().unwrap().len()
    );
}
