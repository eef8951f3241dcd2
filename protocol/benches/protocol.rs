//! Benchmarks against the baselines issue #3 names:
//! - `request/<suite>`: encapsulate + decapsulate (+ replay check) of a 1 KiB request, against
//!   `hpke-raw/<suite>`: the `hpke` crate's single-shot seal + open of the same size;
//! - `chunk-seal/<aead>/<size>`: response chunk sealing, against `aead-raw/<aead>/<size>`;
//! - `session-turn/<aead>`: one 64-byte turn sealed by the client and opened by the enclave.

#![allow(clippy::unwrap_used)]

use aead::{AeadInOut, KeyInit};
use confidant_protocol::keyconfig::KeyPair;
use confidant_protocol::replay::ReplayCache;
use confidant_protocol::request::{self, CONFIDANT_LABELS};
use confidant_protocol::session::SessionLimits;
use confidant_protocol::{system_rng, Aead, Kem, Suite, UnixMillis};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};

fn raw_hpke<A: hpke::aead::Aead, K: hpke::Kem>(
    c: &mut Criterion,
    name: &str,
    pair: &KeyPair,
    sk: &[u8],
) {
    let pk = K::PublicKey::from_bytes(&pair.config.public_key).unwrap();
    let sk = K::PrivateKey::from_bytes(sk).unwrap();
    let msg = vec![0x42u8; 1024];
    let info = b"message/confidant request";
    c.bench_function(&format!("hpke-raw/{name}"), |b| {
        b.iter(|| {
            let (enc, ct) = hpke::single_shot_seal::<A, hpke::kdf::HkdfSha256, K>(
                &OpModeS::Base,
                &pk,
                info,
                &msg,
                b"",
            )
            .unwrap();
            let pt = hpke::single_shot_open::<A, hpke::kdf::HkdfSha256, K>(
                &OpModeR::Base,
                &sk,
                &enc,
                info,
                &ct,
                b"",
            )
            .unwrap();
            black_box((enc.to_bytes(), pt))
        })
    });
}

fn requests(c: &mut Criterion) {
    let mut rng = system_rng();
    for suite in [
        Suite {
            kem: Kem::X25519HkdfSha256,
            aead: Aead::Aes128Gcm,
        },
        Suite {
            kem: Kem::XWing,
            aead: Aead::Aes128Gcm,
        },
        Suite {
            kem: Kem::XWing,
            aead: Aead::Aes256Gcm,
        },
    ] {
        let ikm = [7u8; 32];
        let pair = KeyPair::derive(1, suite.kem, &ikm, &[suite.aead]);
        let sk = confidant_protocol::hpke_ops::derive_keypair(suite.kem, &ikm)
            .0
            .to_bytes();
        let name = format!("{}+{}", suite.kem.name(), suite.aead.name());
        let keys = [pair];
        let msg = vec![0x42u8; 1024];
        let mut cache = ReplayCache::new(usize::MAX);
        let binding = [9u8; 32];
        c.bench_function(&format!("request/{name}"), |b| {
            b.iter(|| {
                let (bytes, client) = request::encapsulate(
                    &keys[0].config,
                    suite,
                    &binding,
                    &msg,
                    &CONFIDANT_LABELS,
                    &mut rng,
                )
                .unwrap();
                let server =
                    request::decapsulate(&keys, &binding, &bytes, &CONFIDANT_LABELS).unwrap();
                cache.check_and_record(server.key_id, server.enc()).unwrap();
                black_box((client, server))
            })
        });
        match (suite.kem, suite.aead) {
            (Kem::X25519HkdfSha256, Aead::Aes128Gcm) => raw_hpke::<
                hpke::aead::AesGcm128,
                hpke::kem::X25519HkdfSha256,
            >(c, &name, &keys[0], &sk),
            (Kem::XWing, Aead::Aes128Gcm) => {
                raw_hpke::<hpke::aead::AesGcm128, hpke::kem::XWing>(c, &name, &keys[0], &sk)
            }
            (Kem::XWing, Aead::Aes256Gcm) => {
                raw_hpke::<hpke::aead::AesGcm256, hpke::kem::XWing>(c, &name, &keys[0], &sk)
            }
            _ => {}
        }
    }
}

fn raw_aead<A: KeyInit + AeadInOut>(c: &mut Criterion, name: &str, size: usize) {
    let key = A::new_from_slice(&vec![1u8; A::key_size()]).unwrap();
    let nonce = aead::Nonce::<A>::default();
    let mut group = c.benchmark_group(format!("aead-raw/{name}"));
    group.throughput(Throughput::Bytes(size as u64));
    let data = vec![0x42u8; size];
    let mut out = Vec::with_capacity(size + 16);
    group.bench_function(format!("{size}"), |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(&data);
            let tag = key
                .encrypt_inout_detached(&nonce, b"", out.as_mut_slice().into())
                .unwrap();
            out.extend_from_slice(tag.as_slice());
            black_box(&out);
        })
    });
    group.finish();
}

/// One X25519 request with `aead`, encapsulated and opened: the state the chunk and session benches start from.
fn exchange(aead: Aead) -> (request::ClientRequest, request::ServerRequest) {
    let key = KeyPair::derive(1, Kem::X25519HkdfSha256, &[7; 32], &Aead::ALL);
    let suite = Suite {
        kem: Kem::X25519HkdfSha256,
        aead,
    };
    let (bytes, client) = request::encapsulate(
        &key.config,
        suite,
        b"",
        b"q",
        &CONFIDANT_LABELS,
        &mut system_rng(),
    )
    .unwrap();
    let server =
        request::decapsulate(std::slice::from_ref(&key), b"", &bytes, &CONFIDANT_LABELS).unwrap();
    (client, server)
}

fn chunks(c: &mut Criterion) {
    let mut rng = system_rng();
    for aead in Aead::ALL {
        let (_, server) = exchange(aead);
        for size in [64usize, 16 * 1024] {
            let (_, mut sealer) = server.respond(&mut rng);
            let data = vec![0x42u8; size];
            let mut out = Vec::with_capacity(size + 16);
            let mut group = c.benchmark_group(format!("chunk-seal/{}", aead.name()));
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_function(format!("{size}"), |b| {
                b.iter(|| {
                    out.clear();
                    sealer.seal(&data, &mut out).unwrap();
                    black_box(&out);
                })
            });
            group.finish();
            match aead {
                Aead::Aes128Gcm => raw_aead::<aes_gcm::Aes128Gcm>(c, aead.name(), size),
                Aead::Aes256Gcm => raw_aead::<aes_gcm::Aes256Gcm>(c, aead.name(), size),
                Aead::ChaCha20Poly1305 => {
                    raw_aead::<chacha20poly1305::ChaCha20Poly1305>(c, aead.name(), size)
                }
            }
        }
    }
}

fn sessions(c: &mut Criterion) {
    for aead in Aead::ALL {
        let (client, server) = exchange(aead);
        let mut client = client.into_session();
        let mut enclave = server.session(
            UnixMillis::EPOCH,
            SessionLimits {
                idle: std::time::Duration::MAX,
                absolute: std::time::Duration::MAX,
            },
        );
        let msg = [0x42u8; 64];
        c.bench_function(&format!("session-turn/{}", aead.name()), |b| {
            b.iter(|| {
                let (seq, frame) = client.seal_turn(&msg);
                let confidant_protocol::Frame::Session { ciphertext, .. } = frame else {
                    unreachable!()
                };
                black_box(
                    enclave
                        .open_turn(seq, &ciphertext, UnixMillis::from_millis(1))
                        .unwrap(),
                );
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = requests, chunks, sessions
}
criterion_main!(benches);
