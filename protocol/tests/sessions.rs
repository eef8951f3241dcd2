//! Session lifetimes and ordering.

#![allow(clippy::unwrap_used)]

use confidant_protocol::frame::Frame;
use confidant_protocol::keyconfig::KeyPair;
use confidant_protocol::request::{self, CONFIDANT_LABELS};
use confidant_protocol::session::{ClientSession, EnclaveSession, SessionLimits};
use confidant_protocol::{Aead, Kem, ProtocolError, Suite, UnixMillis};
use std::time::Duration;

fn t(ms: u64) -> UnixMillis {
    UnixMillis::from_millis(ms)
}

fn open_session(limits: SessionLimits) -> (ClientSession, EnclaveSession) {
    let key = KeyPair::derive(
        1,
        Kem::X25519HkdfSha256,
        &[3; 32],
        &[Aead::ChaCha20Poly1305],
    );
    let suite = Suite {
        kem: Kem::X25519HkdfSha256,
        aead: Aead::ChaCha20Poly1305,
    };
    let mut rng = confidant_protocol::system_rng();
    let (bytes, client) =
        request::encapsulate(&key.config, suite, b"", b"hi", &CONFIDANT_LABELS, &mut rng).unwrap();
    let server =
        request::decapsulate(std::slice::from_ref(&key), b"", &bytes, &CONFIDANT_LABELS).unwrap();
    let enclave = server.session(t(1_000), limits);
    let client = client.into_session();
    assert_eq!(client.id(), enclave.id());
    (client, enclave)
}

fn turn(client: &mut ClientSession, text: &[u8]) -> (u64, Vec<u8>) {
    match client.seal_turn(text) {
        (seq, Frame::Session { ciphertext, .. }) => (seq, ciphertext),
        _ => unreachable!(),
    }
}

#[test]
fn idle_and_absolute_expiry() {
    let limits = SessionLimits {
        idle: Duration::from_millis(100),
        absolute: Duration::from_millis(250),
    };
    let (mut client, mut enclave) = open_session(limits);
    let (s1, c1) = turn(&mut client, b"one");
    assert_eq!(&enclave.open_turn(s1, &c1, t(1_090)).unwrap()[..], b"one");
    let (s2, c2) = turn(&mut client, b"two");
    assert_eq!(&enclave.open_turn(s2, &c2, t(1_180)).unwrap()[..], b"two");
    // Idle: more than 100 ms since the last accepted turn.
    let (s3, c3) = turn(&mut client, b"three");
    assert_eq!(
        enclave.open_turn(s3, &c3, t(1_281)).unwrap_err(),
        ProtocolError::SessionExpired
    );
    assert!(enclave.is_expired(t(1_281)));

    // Absolute: turns keep it from idling, but not past 250 ms after it began.
    let (mut client, mut enclave) = open_session(limits);
    for (i, now) in [1_080, 1_160, 1_240].into_iter().enumerate() {
        let (s, c) = turn(&mut client, format!("t{i}").as_bytes());
        enclave.open_turn(s, &c, t(now)).unwrap();
    }
    let (s, c) = turn(&mut client, b"late");
    assert_eq!(
        enclave.open_turn(s, &c, t(1_251)).unwrap_err(),
        ProtocolError::SessionExpired
    );
}

#[test]
fn a_forged_turn_does_not_advance_the_sequence() {
    let (mut client, mut enclave) = open_session(SessionLimits::default());
    let (s1, mut c1) = turn(&mut client, b"one");
    let last = c1.len() - 1;
    c1[last] ^= 1;
    assert_eq!(
        enclave.open_turn(s1, &c1, t(1_001)).unwrap_err(),
        ProtocolError::SessionAuth
    );
    c1[last] ^= 1;
    assert_eq!(&enclave.open_turn(s1, &c1, t(1_002)).unwrap()[..], b"one");
    assert!(matches!(
        enclave.open_turn(s1, &c1, t(1_003)),
        Err(ProtocolError::SequenceReused { got: 1, last: 1 })
    ));
}
