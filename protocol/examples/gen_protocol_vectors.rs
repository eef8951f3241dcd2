//! Generates `test-vectors/protocol/vectors.json` from fixed seeds: every input is SHA-256 of a seed
//! string, so the file is the same on every run.
//!
//! `cargo run -p confidant-protocol --example gen-protocol-vectors -- test-vectors/protocol`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use confidant_protocol::frame::Frame;
use confidant_protocol::keyconfig::{encode_list, KeyPair};
use confidant_protocol::request::{self, CONFIDANT_LABELS};
use confidant_protocol::session::SessionLimits;
use confidant_protocol::user_data::{sha256, UserData};
use confidant_protocol::{Aead, Kem, ReplayRng, Suite, UnixMillis};
use serde_json::{json, Value};

fn seed(s: &str) -> Vec<u8> {
    sha256(s.as_bytes()).to_vec()
}

fn seed64(s: &str) -> Vec<u8> {
    let mut v = seed(&format!("{s} / 0"));
    v.extend(seed(&format!("{s} / 1")));
    v
}

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

fn main() {
    let out = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: gen-protocol-vectors DIR"),
    );

    // Keys.
    let x25519 = KeyPair::derive(
        1,
        Kem::X25519HkdfSha256,
        &seed("confidant key 1"),
        &[Aead::Aes256Gcm, Aead::ChaCha20Poly1305, Aead::Aes128Gcm],
    );
    let xwing = KeyPair::derive(
        2,
        Kem::XWing,
        &seed("confidant key 2"),
        &[Aead::Aes256Gcm, Aead::ChaCha20Poly1305, Aead::Aes128Gcm],
    );
    let list = encode_list(&[x25519.config.clone(), xwing.config.clone()]);
    let key_json = |k: &KeyPair, seed_name: &str| {
        json!({
            "key_id": k.config.key_id, "kem_id": k.config.kem.id(), "ikm_seed": seed_name, "ikm": h(&seed(seed_name)),
            "aead_ids": k.config.aeads.iter().map(|a| a.id()).collect::<Vec<_>>(),
            "public_key": h(&k.config.public_key), "config": h(&k.config.encode()),
        })
    };

    // user_data.
    let model = seed("confidant model");
    let settings = seed("confidant settings");
    let ud = |settings: Option<&[u8]>| {
        let u = UserData {
            dtype: None,
            limits: None,
            kc: sha256(&list),
            model: model.clone().try_into().unwrap(),
            settings: settings.map(|s| s.try_into().unwrap()),
            exp: UnixMillis::from_secs(1_800_000_000),
            id: None,
            rk: None,
        };
        json!({ "kc": h(&u.kc), "model": h(&u.model), "settings": u.settings.map(|s| h(&s)), "exp": u.exp.as_secs(), "cbor": h(&u.encode()) })
    };

    // Exchanges: one per KEM, each a request, a streamed response and two follow-up turns.
    let binding = seed("confidant attestation document");
    let mut exchanges = Vec::new();
    for (pair, aead, tag) in [
        (&x25519, Aead::Aes256Gcm, "x25519"),
        (&xwing, Aead::ChaCha20Poly1305, "xwing"),
    ] {
        let suite = Suite {
            kem: pair.config.kem,
            aead,
        };
        let plaintext = br#"{"question":"Is a hearing aid covered by my plan? My name is Ana Ruiz.","max_tokens":32}"#;
        let ikm_e_seed = format!("confidant {tag} ikmE");
        let ikm_e = if pair.config.kem == Kem::XWing {
            seed64(&ikm_e_seed)
        } else {
            seed(&ikm_e_seed)
        };
        let mut rng = ReplayRng::new(&ikm_e);
        let (encapsulated, client) = request::encapsulate(
            &pair.config,
            suite,
            &binding,
            plaintext,
            &CONFIDANT_LABELS,
            &mut rng,
        )
        .unwrap();
        assert!(rng.exhausted() && !rng.overrun());
        let request_frame = Frame::Request {
            attestation_sha256: binding.clone().try_into().unwrap(),
            encapsulated: encapsulated.clone(),
        };

        let server = request::decapsulate(
            std::slice::from_ref(pair),
            &binding,
            &encapsulated,
            &CONFIDANT_LABELS,
        )
        .unwrap();
        let nonce = seed(&format!("confidant {tag} response nonce"))
            [..request::response_nonce_len(aead)]
            .to_vec();
        let mut sealer = server.respond_with_nonce(&nonce);
        let pieces: [&[u8]; 3] = [
            b"Hearing aids are covered ",
            b"at 80% after the deductible",
            b".",
        ];
        let mut chunks = Vec::new();
        let mut wire = Frame::Response {
            nonce: nonce.clone(),
        }
        .encode();
        for (i, p) in pieces.iter().enumerate() {
            let last = i == pieces.len() - 1;
            let mut ct = Vec::new();
            if last {
                let s = std::mem::replace(&mut sealer, server.respond_with_nonce(&nonce));
                s.seal_last(p, &mut ct).unwrap();
            } else {
                sealer.seal(p, &mut ct).unwrap();
            }
            let frame = Frame::Chunk {
                last,
                sealed: ct.clone(),
            };
            frame.encode_into(&mut wire);
            chunks.push(json!({ "plaintext": h(p), "last": last, "sealed": h(&ct), "frame": h(&frame.encode()) }));
        }

        let mut client_session = client.into_session();
        let mut enclave_session = server.session(UnixMillis::EPOCH, SessionLimits::default());
        let mut turns = Vec::new();
        for (turn, reply) in [
            (
                &b"And for my daughter, Sofia?"[..],
                &[&b"Dependents "[..], b"are covered too."][..],
            ),
            (b"Thanks.", &[b"You're welcome."]),
        ] {
            let (seq, frame) = client_session.seal_turn(turn);
            let Frame::Session { ciphertext, .. } = &frame else {
                unreachable!()
            };
            assert_eq!(
                &enclave_session
                    .open_turn(seq, ciphertext, UnixMillis::from_millis(1))
                    .unwrap()[..],
                turn
            );
            let mut sealer = enclave_session.reply_sealer(seq);
            let mut reply_json = Vec::new();
            for (i, p) in reply.iter().enumerate() {
                let last = i == reply.len() - 1;
                let mut ct = Vec::new();
                if last {
                    let s = std::mem::replace(&mut sealer, enclave_session.reply_sealer(seq));
                    s.seal_last(p, &mut ct).unwrap();
                } else {
                    sealer.seal(p, &mut ct).unwrap();
                }
                reply_json.push(json!({ "plaintext": h(p), "last": last, "sealed": h(&ct) }));
            }
            turns.push(json!({ "seq": seq, "plaintext": h(turn), "frame": h(&frame.encode()), "reply": reply_json }));
        }

        exchanges.push(json!({
            "name": tag,
            "kem_id": suite.kem.id(), "kdf_id": 1, "aead_id": suite.aead.id(), "key_id": pair.config.key_id,
            "attestation_sha256_seed": "confidant attestation document", "attestation_sha256": h(&binding),
            "request": { "plaintext": h(plaintext), "ikmE_seed": ikm_e_seed, "ikmE": h(&ikm_e), "encapsulated": h(&encapsulated), "frame": h(&request_frame.encode()) },
            "response": { "nonce": h(&nonce), "chunks": chunks, "wire": h(&wire) },
            "session": { "id": h(client_session.id()), "turns": turns },
        }));
    }

    let frames: Vec<Value> = [
        (
            "ATTEST for the cached document",
            Frame::Attest { nonce: None },
        ),
        (
            "ATTEST with a nonce",
            Frame::Attest {
                nonce: Some(seed("confidant attest nonce").try_into().unwrap()),
            },
        ),
        (
            "ATTESTATION",
            Frame::Attestation {
                document: b"(document bytes)".to_vec(),
                key_configs: list.clone(),
            },
        ),
        (
            "ERROR",
            Frame::Error {
                code: confidant_protocol::Code::Replayed,
                message: "request `enc` was seen before under this key (replay)".into(),
            },
        ),
    ]
    .into_iter()
    .map(|(d, f)| json!({ "description": d, "hex": h(&f.encode()) }))
    .collect();

    let doc = json!({
        "description": "Confidant protocol vectors, version 1. See README.md in this directory. Every input is SHA-256 of its *_seed string (ikmE for X-Wing: SHA-256(seed + ' / 0') || SHA-256(seed + ' / 1')).",
        "labels": { "request": "message/confidant request", "response": "message/confidant response", "session_export": "confidant session" },
        "keys": [key_json(&x25519, "confidant key 1"), key_json(&xwing, "confidant key 2")],
        "key_config_list": h(&list),
        "key_config_list_sha256": h(&sha256(&list)),
        "user_data": [ud(None), ud(Some(&settings))],
        "frames": frames,
        "exchanges": exchanges,
        "negative": negatives(),
    });
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("vectors.json"),
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();
    eprintln!("wrote {}", out.join("vectors.json").display());
}

/// Negative cases refer to exchange 0 (X25519) and describe the change to make; the suite applies it.
fn negatives() -> Value {
    json!([
        { "name": "tampered-request-tag", "target": "request", "change": "flip the last byte of the encapsulated request", "expect": "request_decrypt" },
        { "name": "wrong-key-id", "target": "request", "change": "set the key id byte to 9", "expect": "unknown_key_id" },
        { "name": "wrong-suite", "target": "request", "change": "set the AEAD id to 0x0004", "expect": "suite_mismatch" },
        { "name": "other-attestation-binding", "target": "request", "change": "decapsulate with SHA-256('another document') as the binding", "expect": "request_decrypt" },
        { "name": "replayed-enc", "target": "request", "change": "present the same request twice; the second is refused", "expect": "replayed" },
        { "name": "reordered-chunk", "target": "response", "change": "open chunks in the order 1, 0, 2", "expect": "chunk_auth" },
        { "name": "dropped-chunk", "target": "response", "change": "open chunks 0, 2", "expect": "chunk_auth" },
        { "name": "duplicated-chunk", "target": "response", "change": "open chunks 0, 0, 1, 2", "expect": "chunk_auth" },
        { "name": "tampered-chunk", "target": "response", "change": "flip the first byte of chunk 1", "expect": "chunk_auth" },
        { "name": "final-flag-forged", "target": "response", "change": "open chunk 0 claiming it is the last", "expect": "chunk_auth" },
        { "name": "truncated-stream", "target": "response", "change": "open chunks 0, 1 and end the stream", "expect": "truncated_response" },
        { "name": "chunk-after-final", "target": "response", "change": "open chunks 0, 1, 2, then 2 again", "expect": "trailing_chunk" },
        { "name": "sequence-reuse", "target": "session", "change": "present turn seq 1 twice; the second is refused", "expect": "sequence_reused" },
        { "name": "sequence-rewind", "target": "session", "change": "present turn seq 2, then seq 1", "expect": "sequence_reused" },
        { "name": "tampered-turn", "target": "session", "change": "flip the last byte of turn seq 1's ciphertext", "expect": "session_auth" },
        { "name": "reply-to-other-turn", "target": "session", "change": "open turn 1's reply with turn 2's opener", "expect": "chunk_auth" },
        { "name": "unknown-frame-type", "target": "frame", "hex": "0c00000000", "expect": "unknown_frame" },
        { "name": "short-route", "target": "frame", "hex": "0a00000003aabbcc", "expect": "malformed_frame" },
        { "name": "oversize-frame", "target": "frame", "hex": "0600100001", "expect": "oversize_frame" },
        { "name": "truncated-frame", "target": "frame", "hex": "050000001000112233", "expect": "truncated_frame" },
        { "name": "malformed-chunk-flags", "target": "frame", "hex": "06000000020200", "expect": "malformed_frame" }
    ])
}
