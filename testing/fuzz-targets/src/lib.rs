//! The fuzz targets' bodies: every parser that reads bytes an attacker controls. Each function must
//! return (an error is fine) and never panic, hang or allocate without bound, whatever `data` is.
//! `fuzz/` runs them under libFuzzer; `tests/corpus.rs` replays the committed corpora in `make test`,
//! so every crash found once stays fixed.

use std::sync::OnceLock;

use confidant_protocol::frame::FrameDecoder;
use confidant_protocol::keyconfig::{decode_list, KeyPair};
use confidant_protocol::link::LinkDecoder;
use confidant_protocol::message::Ask;
use confidant_protocol::request::{decapsulate, encapsulate, CONFIDANT_LABELS};
use confidant_protocol::session::{EnclaveSession, SessionLimits};
use confidant_protocol::user_data::UserData;
use confidant_protocol::{Aead, Kem, ReplayRng, Suite, UnixMillis};
use confidant_verifier::{Policy, Verifier, VerifyAt};

/// A target: bytes in, nothing out (and never a panic).
pub type Target = fn(&[u8]);

/// The targets by name (the directory names under `fuzz/corpus/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("attestation", attestation),
    ("frame", frame),
    ("request", request),
    ("session", session),
    ("key_configs", key_configs),
    ("user_data", user_data),
    ("ask", ask),
    ("link", link),
    ("cms", cms),
    ("sealed_settings", sealed_settings),
    ("receipt", receipt),
    ("manifest", manifest),
];

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        // The only root the client trusts by default; the corpus holds real documents under it.
        Verifier::new(vec![confidant_certs::aws_nitro_root_g1().to_vec()])
            .unwrap_or_else(|e| panic!("the embedded root: {e}"))
    })
}

/// Attestation parsing and every verification step, as of the document's time and of a fixed instant.
pub fn attestation(data: &[u8]) {
    let mut policy = Policy::default();
    policy.set_allow_debug(true);
    let _ = verifier().report(data, &policy, VerifyAt::DocumentTime);
    let _ = verifier().verify(
        data,
        &Policy::default(),
        VerifyAt::Instant(UnixMillis::from_millis(1_700_000_000_000)),
    );
}

/// The frame decoder, fed in two pieces.
pub fn frame(data: &[u8]) {
    let split = data
        .first()
        .map_or(0, |b| usize::from(*b) % (data.len() + 1));
    let mut dec = FrameDecoder::default();
    dec.push(&data[..split]);
    while let Ok(Some(_)) = dec.next_frame() {}
    dec.push(&data[split..]);
    while let Ok(Some(_)) = dec.next_frame() {}
    let _ = dec.finish();
}

fn keys() -> &'static Vec<KeyPair> {
    static K: OnceLock<Vec<KeyPair>> = OnceLock::new();
    K.get_or_init(|| {
        let aeads = [Aead::Aes256Gcm, Aead::ChaCha20Poly1305, Aead::Aes128Gcm];
        vec![
            KeyPair::derive(0x10, Kem::XWing, &[7; 32], &aeads),
            KeyPair::derive(0x11, Kem::X25519HkdfSha256, &[8; 32], &aeads),
        ]
    })
}

/// The encapsulated-request parser and HPKE opening (the enclave's side of `REQUEST`).
pub fn request(data: &[u8]) {
    let _ = decapsulate(keys(), &[0; 32], data, &CONFIDANT_LABELS);
}

fn session_keys() -> EnclaveSession {
    // A real session from a fixed, deterministic request: the turns the fuzzer sends meet its checks.
    let key = &keys()[1];
    let suite = Suite {
        kem: key.config.kem,
        aead: key.config.aeads[0],
    };
    let mut rng = ReplayRng::new(&[3; 64]);
    let (encapsulated, _) = encapsulate(
        &key.config,
        suite,
        &[0; 32],
        b"{}",
        &CONFIDANT_LABELS,
        &mut rng,
    )
    .unwrap_or_else(|e| panic!("a fixed request: {e}"));
    decapsulate(keys(), &[0; 32], &encapsulated, &CONFIDANT_LABELS)
        .unwrap_or_else(|e| panic!("a fixed request: {e}"))
        .session(UnixMillis::EPOCH, SessionLimits::default())
}

/// Session turns and closes (`SESSION`, `CLOSE` bodies after framing).
pub fn session(data: &[u8]) {
    let mut s = session_keys();
    let seq = data
        .get(..8)
        .map_or(1, |b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
    let body = data.get(8..).unwrap_or(&[]);
    let _ = s.open_turn(seq, body, UnixMillis::from_millis(1));
    let _ = s.open_close(seq.wrapping_add(1), body);
}

/// The key-config list (`application/ohttp-keys`).
pub fn key_configs(data: &[u8]) {
    let _ = decode_list(data);
}

/// The attested `user_data` map.
pub fn user_data(data: &[u8]) {
    let _ = UserData::decode(data);
}

/// An answer's receipt, as a client or `verify-receipt` opens it: the COSE_Sign1 (under the receipt
/// vectors' key, so that seeds get past the signature), its payload on its own, and a shaped chunk.
pub fn receipt(data: &[u8]) {
    const RK: &str = "be189a41044caa97593ae2169ff38f00c7cfbb9c8ae07015d0b8c0757f6515b2";
    let mut rk = [0u8; 32];
    if hex::decode_to_slice(RK, &mut rk).is_ok() {
        let _ = confidant_protocol::receipt::open(data, &rk);
    }
    let _ = confidant_protocol::receipt::Receipt::decode(data);
    let _ = confidant_protocol::shape::decode_data(data);
}

/// A release manifest: the COSE_Sign1 under a fixed key, and the body on its own.
pub fn manifest(data: &[u8]) {
    // The key that signed the seeds (fuzz/corpus/manifest/), so that they get past the signature.
    const RELEASE_KEY: &str = "04ab2bee7c63ae74bafa38526cca535d49e47415439d23f800fcdce868514c42f7cf8364e6693681ee97d0ef0812251cac6bb6b58172122bc9df8982238d12046f957ce695023a6386c315f8d6f95d5f7f6d2504a324222d9600c59e4a22b78a99";
    if let Ok(key) = hex::decode(RELEASE_KEY) {
        let _ = confidant_protocol::release::open(data, &key);
    }
    let _ = confidant_protocol::release::Manifest::decode(data);
}

/// The decrypted question.
pub fn ask(data: &[u8]) {
    let _ = Ask::from_bytes(data);
}

/// The relay–enclave link decoder.
pub fn link(data: &[u8]) {
    let mut dec = LinkDecoder::default();
    dec.push(data);
    while let Ok(Some(_)) = dec.next_frame() {}
}

/// The CMS envelope KMS returns (`CiphertextForRecipient`).
pub fn cms(data: &[u8]) {
    let _ = confidant_sealing::cms::parse(data, &[0; 32]);
}

/// The sealed-settings file.
pub fn sealed_settings(data: &[u8]) {
    if let Ok(sealed) = confidant_sealing::sealed::SealedFile::parse(data) {
        let _ = sealed.open(&[0; 32]);
    }
    let _ = confidant_sealing::settings::Settings::parse(data);
}
