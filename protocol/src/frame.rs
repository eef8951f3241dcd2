//! Frames: `type (u8) | length (u32, big-endian) | body`, decoded incrementally from pieces of any size.
//!
//! | type | frame | body |
//! |---|---|---|
//! | 0x01 | `ATTEST` | empty (the enclave's cached document) or a 32-byte nonce |
//! | 0x02 | `ATTESTATION` | document length (u32) ‖ document ‖ key-config list |
//! | 0x03 | `REQUEST` | SHA-256 of the attestation document the client verified (32) ‖ encapsulated request |
//! | 0x04 | `SESSION` | session id (16) ‖ sequence number (u64) ‖ AEAD ciphertext |
//! | 0x05 | `RESPONSE` | response nonce (starts a response to a `REQUEST`) |
//! | 0x06 | `CHUNK` | flags (bit 0: final) ‖ sealed chunk |
//! | 0x07 | `ERROR` | code length (u8) ‖ code (ASCII) ‖ message (UTF-8) |
//! | 0x08 | `HEALTH` | empty (a probe) or UTF-8 JSON status (the answer: counts, never secrets) |
//! | 0x09 | `CLOSE` | session id (16) ‖ sequence number (u64) ‖ AEAD tag (ends a session; echoed as the ack) |
//! | 0x0a | `ROUTE` | enclave instance id (16), from `user_data`; optional, before the exchange's frame |
//! | 0x0b | `RELEASE` | empty (asking), or the signed release manifests served: (length (u32) ‖ manifest)* |
//!
//! `ROUTE` is the one frame a relay reads: with several enclaves behind it, it takes the stream to the
//! enclave holding the keys the exchange was encrypted to. It tells the relay nothing it could not
//! see anyway (which enclave answers), and the enclave checks it names itself. `RELEASE` is the one
//! exchange the relay answers itself: manifests are signed, so the carrier need not be trusted, and a
//! manifest naming an image's PCR0 cannot be inside that image.

use crate::codes::Code;
use crate::error::ProtocolError;

/// Largest body a frame may carry: an attestation document with X-Wing key configs is ~8 KiB; a
/// question of a few pages is well under this.
pub const MAX_BODY: u32 = 256 * 1024;
/// Bytes before the body.
pub const HEADER_LEN: usize = 5;

/// Flag bit of a `CHUNK` frame marking the last chunk of a response.
pub const CHUNK_FINAL: u8 = 0x01;

/// The type byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Attest = 0x01,
    Attestation = 0x02,
    Request = 0x03,
    Session = 0x04,
    Response = 0x05,
    Chunk = 0x06,
    Error = 0x07,
    Health = 0x08,
    Close = 0x09,
    Route = 0x0a,
    Release = 0x0b,
}

impl FrameType {
    /// Every frame type.
    pub const ALL: [FrameType; 11] = [
        FrameType::Attest,
        FrameType::Attestation,
        FrameType::Request,
        FrameType::Session,
        FrameType::Response,
        FrameType::Chunk,
        FrameType::Error,
        FrameType::Health,
        FrameType::Close,
        FrameType::Route,
        FrameType::Release,
    ];

    /// The type for a type byte, if it is defined.
    pub fn from_byte(byte: u8) -> Option<FrameType> {
        FrameType::ALL.into_iter().find(|t| *t as u8 == byte)
    }

    /// The frame's name, as in the specification.
    pub const fn name(self) -> &'static str {
        match self {
            FrameType::Attest => "ATTEST",
            FrameType::Attestation => "ATTESTATION",
            FrameType::Request => "REQUEST",
            FrameType::Session => "SESSION",
            FrameType::Response => "RESPONSE",
            FrameType::Chunk => "CHUNK",
            FrameType::Error => "ERROR",
            FrameType::Health => "HEALTH",
            FrameType::Close => "CLOSE",
            FrameType::Route => "ROUTE",
            FrameType::Release => "RELEASE",
        }
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Ask for an attestation document, with a fresh nonce or for the cached one.
    Attest { nonce: Option<[u8; 32]> },
    /// The document and the key-config list it commits to.
    Attestation {
        document: Vec<u8>,
        key_configs: Vec<u8>,
    },
    /// An encapsulated request bound to a document.
    Request {
        attestation_sha256: [u8; 32],
        encapsulated: Vec<u8>,
    },
    /// A follow-up turn of a session.
    Session {
        id: [u8; 16],
        seq: u64,
        ciphertext: Vec<u8>,
    },
    /// The start of a response: its nonce.
    Response { nonce: Vec<u8> },
    /// One sealed chunk of a response.
    Chunk { last: bool, sealed: Vec<u8> },
    /// A rejection: a registered code and a message built from fixed text (never secret).
    Error { code: Code, message: String },
    /// A health probe (empty) or its answer.
    Health { status: String },
    /// The end of a session, authenticated with its key; the enclave echoes it as the ack.
    Close {
        id: [u8; 16],
        seq: u64,
        tag: Vec<u8>,
    },
    /// Which enclave behind the relay this stream is for (its `user_data` instance id).
    Route { enclave: [u8; 16] },
    /// Asking for the release manifests (none), or those served.
    Release { manifests: Vec<Vec<u8>> },
}

impl Frame {
    /// The frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Attest { .. } => FrameType::Attest,
            Frame::Attestation { .. } => FrameType::Attestation,
            Frame::Request { .. } => FrameType::Request,
            Frame::Session { .. } => FrameType::Session,
            Frame::Response { .. } => FrameType::Response,
            Frame::Chunk { .. } => FrameType::Chunk,
            Frame::Error { .. } => FrameType::Error,
            Frame::Health { .. } => FrameType::Health,
            Frame::Close { .. } => FrameType::Close,
            Frame::Route { .. } => FrameType::Route,
            Frame::Release { .. } => FrameType::Release,
        }
    }

    /// The frame's name, for errors.
    pub fn name(&self) -> &'static str {
        self.frame_type().name()
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(self.frame_type() as u8);
        out.extend_from_slice(&[0; 4]);
        match self {
            Frame::Attest { nonce } => {
                if let Some(n) = nonce {
                    out.extend_from_slice(n);
                }
            }
            Frame::Attestation {
                document,
                key_configs,
            } => {
                out.extend_from_slice(&(document.len() as u32).to_be_bytes());
                out.extend_from_slice(document);
                out.extend_from_slice(key_configs);
            }
            Frame::Request {
                attestation_sha256,
                encapsulated,
            } => {
                out.extend_from_slice(attestation_sha256);
                out.extend_from_slice(encapsulated);
            }
            Frame::Session {
                id,
                seq,
                ciphertext,
            } => {
                out.extend_from_slice(id);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(ciphertext);
            }
            Frame::Response { nonce } => out.extend_from_slice(nonce),
            Frame::Chunk { last, sealed } => {
                out.push(if *last { CHUNK_FINAL } else { 0 });
                out.extend_from_slice(sealed);
            }
            Frame::Error { code, message } => {
                // Registered codes are short ASCII (well under 255 bytes).
                let code = code.as_str().as_bytes();
                out.push(code.len() as u8);
                out.extend_from_slice(code);
                out.extend_from_slice(message.as_bytes());
            }
            Frame::Health { status } => out.extend_from_slice(status.as_bytes()),
            Frame::Close { id, seq, tag } => {
                out.extend_from_slice(id);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(tag);
            }
            Frame::Route { enclave } => out.extend_from_slice(enclave),
            Frame::Release { manifests } => {
                for m in manifests {
                    out.extend_from_slice(&(m.len() as u32).to_be_bytes());
                    out.extend_from_slice(m);
                }
            }
        }
        let len = (out.len() - start - HEADER_LEN) as u32;
        out[start + 1..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    }

    /// The encoded frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// An `ERROR` frame for `error`.
    pub fn error(error: &ProtocolError) -> Frame {
        Frame::Error {
            code: error.code(),
            message: error.to_string(),
        }
    }

    /// Decodes a body of type `ty`.
    pub fn decode_body(ty: FrameType, body: &[u8]) -> Result<Frame, ProtocolError> {
        let malformed = |detail: &str| ProtocolError::MalformedFrame {
            frame: ty.name(),
            detail: detail.to_string(),
        };
        Ok(match ty {
            FrameType::Attest => match body.len() {
                0 => Frame::Attest { nonce: None },
                32 => Frame::Attest {
                    nonce: Some(body.try_into().map_err(|_| malformed("nonce"))?),
                },
                _ => return Err(malformed("body must be empty or a 32-byte nonce")),
            },
            FrameType::Attestation => {
                let (len, rest) = split_u32(body).ok_or_else(|| malformed("no document length"))?;
                if rest.len() < len as usize {
                    return Err(malformed("document longer than the frame"));
                }
                let (document, key_configs) = rest.split_at(len as usize);
                Frame::Attestation {
                    document: document.to_vec(),
                    key_configs: key_configs.to_vec(),
                }
            }
            FrameType::Request => {
                if body.len() < 32 + 7 {
                    return Err(malformed("shorter than a binding and a request header"));
                }
                let (hash, rest) = body.split_at(32);
                Frame::Request {
                    attestation_sha256: hash.try_into().map_err(|_| malformed("binding"))?,
                    encapsulated: rest.to_vec(),
                }
            }
            FrameType::Session => {
                if body.len() < 16 + 8 {
                    return Err(malformed("shorter than a session id and sequence number"));
                }
                let (id, rest) = body.split_at(16);
                let (seq, ct) = rest.split_at(8);
                Frame::Session {
                    id: id.try_into().map_err(|_| malformed("session id"))?,
                    seq: u64::from_be_bytes(seq.try_into().map_err(|_| malformed("sequence"))?),
                    ciphertext: ct.to_vec(),
                }
            }
            FrameType::Response => {
                if body.len() != 16 && body.len() != 32 {
                    return Err(malformed("response nonce must be 16 or 32 bytes"));
                }
                Frame::Response {
                    nonce: body.to_vec(),
                }
            }
            FrameType::Chunk => {
                let (&flags, sealed) = body.split_first().ok_or_else(|| malformed("empty"))?;
                if flags & !CHUNK_FINAL != 0 {
                    return Err(malformed("unknown flag bits"));
                }
                Frame::Chunk {
                    last: flags & CHUNK_FINAL != 0,
                    sealed: sealed.to_vec(),
                }
            }
            FrameType::Error => {
                let (&n, rest) = body.split_first().ok_or_else(|| malformed("empty"))?;
                if rest.len() < n as usize {
                    return Err(malformed("code longer than the frame"));
                }
                let (code, message) = rest.split_at(n as usize);
                let code = std::str::from_utf8(code)
                    .ok()
                    .and_then(Code::from_wire)
                    .ok_or_else(|| malformed("code is not a registered error code"))?;
                Frame::Error {
                    code,
                    message: String::from_utf8_lossy(message).into_owned(),
                }
            }
            FrameType::Health => Frame::Health {
                status: String::from_utf8(body.to_vec())
                    .map_err(|_| malformed("status is not UTF-8"))?,
            },
            FrameType::Close => {
                if body.len() != 16 + 8 + 16 {
                    return Err(malformed("not a session id, sequence number and tag"));
                }
                let (id, rest) = body.split_at(16);
                let (seq, tag) = rest.split_at(8);
                Frame::Close {
                    id: id.try_into().map_err(|_| malformed("session id"))?,
                    seq: u64::from_be_bytes(seq.try_into().map_err(|_| malformed("sequence"))?),
                    tag: tag.to_vec(),
                }
            }
            FrameType::Route => Frame::Route {
                enclave: body
                    .try_into()
                    .map_err(|_| malformed("not a 16-byte enclave instance id"))?,
            },
            FrameType::Release => {
                let mut manifests = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (len, tail) =
                        split_u32(rest).ok_or_else(|| malformed("no manifest length"))?;
                    if tail.len() < len as usize || len == 0 {
                        return Err(malformed("a manifest longer than the frame, or empty"));
                    }
                    let (m, tail) = tail.split_at(len as usize);
                    manifests.push(m.to_vec());
                    rest = tail;
                }
                Frame::Release { manifests }
            }
        })
    }
}

fn split_u32(b: &[u8]) -> Option<(u32, &[u8])> {
    if b.len() < 4 {
        return None;
    }
    let (n, rest) = b.split_at(4);
    Some((u32::from_be_bytes(n.try_into().ok()?), rest))
}

/// Incremental decoder: push bytes as they arrive, pull whole frames.
///
/// Errors are final: after one, the stream must be closed (with an `ERROR` frame where possible).
/// Unknown types and oversize lengths are reported as soon as the header arrives, without waiting for
/// (or buffering) the body.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_body: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(MAX_BODY)
    }
}

impl FrameDecoder {
    /// A decoder accepting bodies up to `max_body` bytes (at most [`MAX_BODY`]).
    pub fn new(max_body: u32) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            max_body: max_body.min(MAX_BODY),
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        let Some(&byte) = self.buf.first() else {
            return Ok(None);
        };
        let ty = FrameType::from_byte(byte).ok_or(ProtocolError::UnknownFrame(byte))?;
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        if len > self.max_body {
            return Err(ProtocolError::OversizeFrame {
                len: u64::from(len),
                max: self.max_body,
            });
        }
        let end = HEADER_LEN + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let frame = Frame::decode_body(ty, &self.buf[HEADER_LEN..end]);
        self.buf.drain(..end);
        frame.map(Some)
    }

    /// Call at end of stream: an error if a frame was cut short.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TruncatedFrame(self.buf.len()))
        }
    }

    /// Bytes buffered and not yet returned as a frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Attest { nonce: None },
            Frame::Attest {
                nonce: Some([7; 32]),
            },
            Frame::Attestation {
                document: vec![1, 2, 3],
                key_configs: vec![4, 5],
            },
            Frame::Request {
                attestation_sha256: [9; 32],
                encapsulated: vec![0; 50],
            },
            Frame::Session {
                id: [3; 16],
                seq: 42,
                ciphertext: vec![8; 20],
            },
            Frame::Response { nonce: vec![1; 16] },
            Frame::Chunk {
                last: true,
                sealed: vec![2; 17],
            },
            Frame::Chunk {
                last: false,
                sealed: vec![],
            },
            Frame::Error {
                code: Code::Replayed,
                message: "seen before".into(),
            },
            Frame::Close {
                id: [4; 16],
                seq: 7,
                tag: vec![5; 16],
            },
            Frame::Route { enclave: [6; 16] },
        ]
    }

    #[test]
    fn round_trips_byte_by_byte() {
        let mut wire = Vec::new();
        for f in all_frames() {
            f.encode_into(&mut wire);
        }
        let mut dec = FrameDecoder::default();
        let mut got = Vec::new();
        for b in &wire {
            dec.push(std::slice::from_ref(b));
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        dec.finish().unwrap();
        assert_eq!(got, all_frames());
    }

    #[test]
    fn rejects_unknown_oversize_and_truncated_with_distinct_errors() {
        let mut dec = FrameDecoder::default();
        dec.push(&[0x42]);
        assert_eq!(dec.next_frame(), Err(ProtocolError::UnknownFrame(0x42)));

        let mut dec = FrameDecoder::default();
        dec.push(&[FrameType::Chunk as u8, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            dec.next_frame(),
            Err(ProtocolError::OversizeFrame { .. })
        ));

        let mut dec = FrameDecoder::default();
        let wire = Frame::Response { nonce: vec![1; 16] }.encode();
        dec.push(&wire[..wire.len() - 1]);
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(
            dec.finish(),
            Err(ProtocolError::TruncatedFrame(wire.len() - 1))
        );
    }

    #[test]
    fn rejects_malformed_bodies() {
        use FrameType::*;
        for (ty, body) in [
            (Attest, vec![0; 5]),
            (Attestation, vec![0, 0, 0, 9, 1]),
            (Request, vec![0; 10]),
            (Session, vec![0; 23]),
            (Response, vec![0; 12]),
            (Chunk, vec![]),
            (Chunk, vec![0x02, 1]),
            (Error, vec![5, b'a']),
            (Error, vec![1, b'A']),
            (Error, [&[8u8][..], b"replayex"].concat()),
            (Close, vec![0; 39]),
        ] {
            assert!(
                matches!(
                    Frame::decode_body(ty, &body),
                    Err(ProtocolError::MalformedFrame { .. })
                ),
                "{ty:?} {body:?}"
            );
        }
    }
}
