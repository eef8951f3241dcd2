//! Property tests: round trips for every suite and random chunkings; any single-bit change anywhere in
//! a request, a response or a session frame is rejected.

#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use confidant_protocol::frame::{Frame, FrameDecoder};
use confidant_protocol::keyconfig::KeyPair;
use confidant_protocol::request::{self, CONFIDANT_LABELS};
use confidant_protocol::session::SessionLimits;
use confidant_protocol::{Aead, Kem, ReplayRng, Suite, UnixMillis};
use proptest::prelude::*;

fn keys() -> &'static [KeyPair; 2] {
    static KEYS: OnceLock<[KeyPair; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [
            KeyPair::derive(1, Kem::X25519HkdfSha256, &[1; 32], &Aead::ALL),
            KeyPair::derive(2, Kem::XWing, &[2; 32], &Aead::ALL),
        ]
    })
}

fn suite() -> impl Strategy<Value = Suite> {
    (0..Suite::ALL.len()).prop_map(|i| Suite::ALL[i])
}

fn pair(suite: Suite) -> &'static KeyPair {
    keys().iter().find(|k| k.config.kem == suite.kem).unwrap()
}

/// Splits `data` at the given cut points into chunks.
fn chunked(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for p in points {
        out.push(data[start..p].to_vec());
        start = p;
    }
    out.push(data[start..].to_vec());
    out
}

struct Exchange {
    encapsulated: Vec<u8>,
    client: request::ClientRequest,
    server: request::ServerRequest,
}

fn exchange(suite: Suite, plaintext: &[u8], seed: u8) -> Exchange {
    let ikm = vec![seed; if suite.kem == Kem::XWing { 64 } else { 32 }];
    let (encapsulated, client) = request::encapsulate(
        &pair(suite).config,
        suite,
        &[7; 32],
        plaintext,
        &CONFIDANT_LABELS,
        &mut ReplayRng::new(&ikm),
    )
    .unwrap();
    let server = request::decapsulate(keys(), &[7; 32], &encapsulated, &CONFIDANT_LABELS).unwrap();
    Exchange {
        encapsulated,
        client,
        server,
    }
}

/// Seals `pieces` as one response (the last chunk final) and returns the wire frames.
fn response_wire(server: &request::ServerRequest, pieces: &[Vec<u8>]) -> Vec<u8> {
    let nonce = vec![9u8; request::response_nonce_len(server.suite().aead)];
    let mut sealer = Some(server.respond_with_nonce(&nonce));
    let mut wire = Frame::Response { nonce }.encode();
    for (i, p) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let mut ct = Vec::new();
        if last {
            sealer.take().unwrap().seal_last(p, &mut ct).unwrap();
        } else {
            sealer.as_mut().unwrap().seal(p, &mut ct).unwrap();
        }
        Frame::Chunk { last, sealed: ct }.encode_into(&mut wire);
    }
    wire
}

/// What the client makes of response wire bytes delivered in arbitrary pieces.
fn read_response(
    client: &request::ClientRequest,
    wire: &[u8],
    cuts: &[usize],
) -> Result<Vec<u8>, String> {
    let mut dec = FrameDecoder::default();
    let mut opener = None;
    let mut out = Vec::new();
    for piece in chunked(wire, cuts) {
        dec.push(&piece);
        while let Some(frame) = dec.next_frame().map_err(|e| e.code().to_string())? {
            match frame {
                Frame::Response { nonce } if opener.is_none() => {
                    opener = Some(
                        client
                            .response_opener(&nonce)
                            .map_err(|e| e.code().to_string())?,
                    )
                }
                Frame::Chunk { last, sealed } => {
                    let o = opener.as_mut().ok_or("chunk before RESPONSE")?;
                    out.extend_from_slice(
                        &o.open(&sealed, last).map_err(|e| e.code().to_string())?,
                    );
                }
                other => return Err(format!("unexpected {}", other.name())),
            }
        }
    }
    dec.finish().map_err(|e| e.code().to_string())?;
    opener
        .ok_or("no RESPONSE")?
        .finish()
        .map_err(|e| e.code().to_string())?;
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_suite_round_trips_with_any_chunking(
        suite in suite(),
        request_body in proptest::collection::vec(any::<u8>(), 0..600),
        answer in proptest::collection::vec(any::<u8>(), 0..2000),
        chunk_cuts in proptest::collection::vec(any::<usize>(), 0..12),
        wire_cuts in proptest::collection::vec(any::<usize>(), 0..40),
        seed in any::<u8>(),
    ) {
        let x = exchange(suite, &request_body, seed);
        prop_assert_eq!(&x.server.plaintext[..], &request_body[..]);
        let wire = response_wire(&x.server, &chunked(&answer, &chunk_cuts));
        prop_assert_eq!(read_response(&x.client, &wire, &wire_cuts), Ok(answer));
    }

    #[test]
    fn any_bit_flip_in_a_request_is_rejected(suite in suite(), bit in any::<usize>(), seed in any::<u8>()) {
        let x = exchange(suite, b"what does my plan cover?", seed);
        let mut bytes = x.encapsulated.clone();
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(request::decapsulate(keys(), &[7; 32], &bytes, &CONFIDANT_LABELS).is_err(), "bit {}", bit);
    }

    #[test]
    fn any_bit_flip_in_a_response_is_rejected(suite in suite(), bit in any::<usize>(), seed in any::<u8>()) {
        let x = exchange(suite, b"q", seed);
        let wire = response_wire(&x.server, &[b"Your plan ".to_vec(), b"covers it.".to_vec(), Vec::new()]);
        let mut bad = wire.clone();
        let bit = bit % (bad.len() * 8);
        bad[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(read_response(&x.client, &bad, &[]).is_err(), "bit {}", bit);
    }

    #[test]
    fn any_bit_flip_in_a_session_frame_is_rejected(suite in suite(), bit in any::<usize>(), seed in any::<u8>()) {
        let x = exchange(suite, b"q", seed);
        let mut client = x.client.into_session();
        let mut enclave = x.server.session(UnixMillis::EPOCH, SessionLimits::default());
        let (_, frame) = client.seal_turn(b"and for my daughter?");
        let mut bytes = frame.encode();
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let mut dec = FrameDecoder::default();
        dec.push(&bytes);
        let accepted = match dec.next_frame() {
            Ok(Some(Frame::Session { id, seq, ciphertext })) => {
                id == *enclave.id() && enclave.open_turn(seq, &ciphertext, UnixMillis::from_millis(1)).is_ok()
            }
            _ => false,
        };
        prop_assert!(!accepted, "bit {}", bit);
    }
}
