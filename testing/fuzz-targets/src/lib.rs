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
