//! Streamed, chunked AEAD in the manner of the chunked-OHTTP draft: each chunk sealed under a nonce
//! derived from a counter, the last one authenticated with the extra AAD `"final"`. A reordered,
//! dropped, duplicated or altered chunk fails to open; a stream without its final chunk is truncated.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::aead::{turn_nonce, xor_nonce, AeadKey};
use crate::error::ProtocolError;

/// AAD suffix marking the last chunk.
pub const FINAL_AAD: &[u8] = b"final";

/// How chunk nonces derive from the base nonce.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Schedule {
    /// `base XOR counter` (chunked OHTTP responses).
    Counter,
    /// `base XOR (seq ‖ chunk)` (session turns).
    Turn { seq: u64 },
}

#[derive(Debug)]
struct ChunkState {
    key: Arc<AeadKey>,
    base: [u8; 12],
    schedule: Schedule,
    /// Bound into every chunk's AAD (session id and sequence for turns; empty for responses).
    aad_prefix: Vec<u8>,
    next: u64,
}

impl ChunkState {
    fn nonce(&self) -> [u8; 12] {
        match self.schedule {
            Schedule::Counter => xor_nonce(&self.base, self.next),
            // Turn chunks are limited to 2^32 by `ChunkSealer::seal`.
            Schedule::Turn { seq } => turn_nonce(&self.base, seq, self.next as u32),
        }
    }

    fn aad<'a>(&self, last: bool, buf: &'a mut [u8; 64]) -> &'a [u8] {
        let n = self.aad_prefix.len();
        buf[..n].copy_from_slice(&self.aad_prefix);
        if last {
            buf[n..n + FINAL_AAD.len()].copy_from_slice(FINAL_AAD);
            &buf[..n + FINAL_AAD.len()]
        } else {
            &buf[..n]
        }
    }

    fn limit(&self) -> u64 {
        match self.schedule {
            Schedule::Counter => u64::MAX,
            Schedule::Turn { .. } => u64::from(u32::MAX),
        }
    }
}

/// The sending half: seals chunks in order; [`ChunkSealer::seal_last`] consumes it, so nothing can
/// follow the final chunk.
#[derive(Debug)]
pub struct ChunkSealer(ChunkState);

/// The chunk counter ran out (2^32 chunks in one turn): the response cannot continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many chunks in one response")]
pub struct TooManyChunks;

impl ChunkSealer {
    pub(crate) fn new(
        key: Arc<AeadKey>,
        base: [u8; 12],
        schedule: Schedule,
        aad_prefix: Vec<u8>,
    ) -> ChunkSealer {
        debug_assert!(aad_prefix.len() + FINAL_AAD.len() <= 64);
        ChunkSealer(ChunkState {
            key,
            base,
            schedule,
            aad_prefix,
            next: 0,
        })
    }

    fn seal_inner(
        &mut self,
        plaintext: &[u8],
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), TooManyChunks> {
        if self.0.next >= self.0.limit() {
            return Err(TooManyChunks);
        }
        let mut buf = [0u8; 64];
        let nonce = self.0.nonce();
        let aad = self.0.aad(last, &mut buf);
        self.0.key.seal_into(&nonce, aad, plaintext, out);
        self.0.next += 1;
        Ok(())
    }

    /// Seals a non-final chunk, appending `ciphertext ‖ tag` to `out`.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), TooManyChunks> {
        self.seal_inner(plaintext, false, out)
    }

    /// Seals the final chunk (possibly empty).
    pub fn seal_last(mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), TooManyChunks> {
        self.seal_inner(plaintext, true, out)
    }

    /// Chunks sealed so far.
    pub fn count(&self) -> u64 {
        self.0.next
    }
}

/// The receiving half.
#[derive(Debug)]
pub struct ChunkOpener {
    state: ChunkState,
    done: bool,
}

impl ChunkOpener {
    pub(crate) fn new(
        key: Arc<AeadKey>,
        base: [u8; 12],
        schedule: Schedule,
        aad_prefix: Vec<u8>,
    ) -> ChunkOpener {
        ChunkOpener {
            state: ChunkState {
                key,
                base,
                schedule,
                aad_prefix,
                next: 0,
            },
            done: false,
        }
    }

    /// Opens the next chunk; `last` is the sender's claim, which the AAD authenticates.
    pub fn open(&mut self, sealed: &[u8], last: bool) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
        if self.done {
            return Err(ProtocolError::TrailingChunk);
        }
        if self.state.next >= self.state.limit() {
            return Err(ProtocolError::ChunkAuth(self.state.next));
        }
        let mut buf = [0u8; 64];
        let nonce = self.state.nonce();
        let aad = self.state.aad(last, &mut buf);
        let plaintext = self
            .state
            .key
            .open(&nonce, aad, sealed)
            .map_err(|_| ProtocolError::ChunkAuth(self.state.next))?;
        self.state.next += 1;
        self.done = last;
        Ok(Zeroizing::new(plaintext))
    }

    /// Call when the stream ends: an error unless the final chunk arrived.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.done {
            Ok(())
        } else {
            Err(ProtocolError::TruncatedResponse)
        }
    }

    /// Whether the final chunk has been opened.
    pub fn is_done(&self) -> bool {
        self.done
    }
}
