//! Multi-turn sessions: keys exported from the first request's HPKE context, then `SESSION` frames
//! under per-direction keys with strictly increasing sequence numbers.
//!
//! ```text
//! session_secret = ctx.Export("confidant session", 32)
//! prk = HKDF-Extract(salt = enc, session_secret)
//! id = Expand(prk, "session id", 16)
//! c2e key/nonce = Expand(prk, "c2e key", Nk) / Expand(prk, "c2e nonce", 12)
//! e2c key/nonce = Expand(prk, "e2c key", Nk) / Expand(prk, "e2c nonce", 12)
//! turn seq (client → enclave): nonce = c2e_nonce XOR (seq ‖ 0u32), AAD = id ‖ seq
//! reply chunk i to turn seq:   nonce = e2c_nonce XOR (seq ‖ i),    AAD = id ‖ seq [‖ "final"]
//! close at seq (client → enclave): Seal(c2e, c2e_nonce XOR (seq ‖ 0u32), AAD = id ‖ seq ‖ "close", "")
//! ```
//! A close uses a sequence number like a turn, so it cannot be replayed, and only the holder of the
//! session keys can make one.
//! Sequence numbers start at 1. Keys sit in zeroizing cipher states and are wiped when the last
//! holder drops them.

use std::sync::Arc;
use std::time::Duration;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::aead::{turn_nonce, AeadKey};
use crate::chunks::{ChunkOpener, ChunkSealer, Schedule};
use crate::error::ProtocolError;
use crate::frame::Frame;
use crate::suite::Aead;
use crate::time::UnixMillis;

/// AAD suffix of a session's `CLOSE`.
pub const CLOSE_AAD: &[u8] = b"close";

/// Export label of the session secret.
pub const SESSION_EXPORT_LABEL: &[u8] = b"confidant session";
/// Length of the session secret.
pub const SESSION_SECRET_LEN: usize = 32;

/// Both directions' keys and the session id.
pub struct SessionKeys {
    id: [u8; 16],
    c2e: AeadKey,
    c2e_nonce: [u8; 12],
    e2c: Arc<AeadKey>,
    e2c_nonce: [u8; 12],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys").finish_non_exhaustive()
    }
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        self.c2e_nonce.zeroize();
        self.e2c_nonce.zeroize();
    }
}

impl SessionKeys {
    pub(crate) fn derive(aead: Aead, session_secret: &[u8], enc: &[u8]) -> SessionKeys {
        let hk = Hkdf::<Sha256>::new(Some(enc), session_secret);
        let expand = |label: &[u8], out: &mut [u8]| {
            // At most 32 bytes: never beyond HKDF's limit.
            let _ = hk.expand(label, out);
        };
        let mut id = [0u8; 16];
        expand(b"session id", &mut id);
        let mut key = Zeroizing::new(vec![0u8; aead.key_len()]);
        let mut c2e_nonce = [0u8; 12];
        expand(b"c2e key", &mut key);
        expand(b"c2e nonce", &mut c2e_nonce);
        let c2e = AeadKey::new(aead, &key);
        let mut e2c_nonce = [0u8; 12];
        expand(b"e2c key", &mut key);
        expand(b"e2c nonce", &mut e2c_nonce);
        let e2c = Arc::new(AeadKey::new(aead, &key));
        SessionKeys {
            id,
            c2e,
            c2e_nonce,
            e2c,
            e2c_nonce,
        }
    }

    /// The session id both ends derive.
    pub fn id(&self) -> &[u8; 16] {
        &self.id
    }

    fn turn_aad(&self, seq: u64) -> [u8; 24] {
        let mut aad = [0u8; 24];
        aad[..16].copy_from_slice(&self.id);
        aad[16..].copy_from_slice(&seq.to_be_bytes());
        aad
    }

    fn close_aad(&self, seq: u64) -> [u8; 29] {
        let mut aad = [0u8; 29];
        aad[..24].copy_from_slice(&self.turn_aad(seq));
        aad[24..].copy_from_slice(CLOSE_AAD);
        aad
    }
}

/// The client's end.
#[derive(Debug)]
pub struct ClientSession {
    keys: Arc<SessionKeys>,
    next_seq: u64,
    /// The hash of the last answer's receipt, which the next turn's receipt must chain to.
    last_receipt: Option<[u8; 32]>,
}

impl ClientSession {
    pub(crate) fn new(keys: Arc<SessionKeys>) -> ClientSession {
        ClientSession {
            keys,
            next_seq: 1,
            last_receipt: None,
        }
    }

    /// The receipt the next turn's receipt must name as `prev` (`receipt::hash` of it).
    pub fn last_receipt(&self) -> Option<[u8; 32]> {
        self.last_receipt
    }

    /// Records a verified answer's receipt hash: the next turn chains to it.
    pub fn chain_receipt(&mut self, hash: [u8; 32]) {
        self.last_receipt = Some(hash);
    }

    /// The session id.
    pub fn id(&self) -> &[u8; 16] {
        self.keys.id()
    }

    /// Seals the next turn into a `SESSION` frame; returns it with its sequence number.
    pub fn seal_turn(&mut self, plaintext: &[u8]) -> (u64, Frame) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut ciphertext = Vec::with_capacity(plaintext.len() + 16);
        self.keys.c2e.seal_into(
            &turn_nonce(&self.keys.c2e_nonce, seq, 0),
            &self.keys.turn_aad(seq),
            plaintext,
            &mut ciphertext,
        );
        (
            seq,
            Frame::Session {
                id: self.keys.id,
                seq,
                ciphertext,
            },
        )
    }

    /// Seals the session's end into a `CLOSE` frame (it takes the next sequence number).
    pub fn seal_close(&mut self) -> Frame {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut tag = Vec::with_capacity(16);
        self.keys.c2e.seal_into(
            &turn_nonce(&self.keys.c2e_nonce, seq, 0),
            &self.keys.close_aad(seq),
            b"",
            &mut tag,
        );
        Frame::Close {
            id: self.keys.id,
            seq,
            tag,
        }
    }

    /// An opener for the enclave's reply to turn `seq`.
    pub fn reply_opener(&self, seq: u64) -> ChunkOpener {
        ChunkOpener::new(
            self.keys.e2c.clone(),
            self.keys.e2c_nonce,
            Schedule::Turn { seq },
            self.keys.turn_aad(seq).to_vec(),
        )
    }
}

/// Idle and absolute lifetimes of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    pub idle: Duration,
    pub absolute: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            idle: Duration::from_secs(10 * 60),
            absolute: Duration::from_secs(60 * 60),
        }
    }
}

/// The enclave's end.
#[derive(Debug)]
pub struct EnclaveSession {
    keys: Arc<SessionKeys>,
    last_seq: u64,
    created: UnixMillis,
    last_used: UnixMillis,
    limits: SessionLimits,
}

impl EnclaveSession {
    pub(crate) fn new(
        keys: Arc<SessionKeys>,
        now: UnixMillis,
        limits: SessionLimits,
    ) -> EnclaveSession {
        EnclaveSession {
            keys,
            last_seq: 0,
            created: now,
            last_used: now,
            limits,
        }
    }

    /// The session id (the key of the enclave's session table).
    pub fn id(&self) -> &[u8; 16] {
        self.keys.id()
    }

    /// Whether the session has outlived either limit at `now`.
    pub fn is_expired(&self, now: UnixMillis) -> bool {
        now.saturating_since(self.last_used) > self.limits.idle
            || now.saturating_since(self.created) > self.limits.absolute
    }

    /// When the session was last used (created, or a turn authenticated).
    pub fn last_used(&self) -> UnixMillis {
        self.last_used
    }

    /// Opens turn `seq`: it must be fresh (above every accepted one) and authentic. Only an authentic
    /// turn advances the sequence and the idle clock.
    pub fn open_turn(
        &mut self,
        seq: u64,
        ciphertext: &[u8],
        now: UnixMillis,
    ) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
        if self.is_expired(now) {
            return Err(ProtocolError::SessionExpired);
        }
        if seq <= self.last_seq {
            return Err(ProtocolError::SequenceReused {
                got: seq,
                last: self.last_seq,
            });
        }
        let plaintext = self
            .keys
            .c2e
            .open(
                &turn_nonce(&self.keys.c2e_nonce, seq, 0),
                &self.keys.turn_aad(seq),
                ciphertext,
            )
            .map_err(|_| ProtocolError::SessionAuth)?;
        self.last_seq = seq;
        self.last_used = now;
        Ok(Zeroizing::new(plaintext))
    }

    /// Checks a `CLOSE` at `seq`: fresh and authentic, as a turn is. Expiry does not matter (an
    /// expired session may still be closed early by its owner).
    pub fn open_close(&mut self, seq: u64, tag: &[u8]) -> Result<(), ProtocolError> {
        if seq <= self.last_seq {
            return Err(ProtocolError::SequenceReused {
                got: seq,
                last: self.last_seq,
            });
        }
        self.keys
            .c2e
            .open(
                &turn_nonce(&self.keys.c2e_nonce, seq, 0),
                &self.keys.close_aad(seq),
                tag,
            )
            .map_err(|_| ProtocolError::SessionAuth)?;
        self.last_seq = seq;
        Ok(())
    }

    /// The sealer for the reply to turn `seq`.
    pub fn reply_sealer(&self, seq: u64) -> ChunkSealer {
        ChunkSealer::new(
            self.keys.e2c.clone(),
            self.keys.e2c_nonce,
            Schedule::Turn { seq },
            self.keys.turn_aad(seq).to_vec(),
        )
    }
}
