//! The enclave's server core, without I/O, in the manner of `quinn-proto`: bytes and events in,
//! frames and commands out; the clock is passed in (`now`) and the randomness comes from a seeded
//! generator the core owns. A thin tokio shell (the `confidant-enclave` binary) does the sockets and
//! carries [`Output::Submit`] to the model engine and its events back; tests drive the core in memory
//! with a scripted engine.
//!
//! What the core decides: which frames are valid, attestation documents and the keys they bind,
//! request decryption with replay and binding checks, sessions and their states, answer sealing
//! chunk by chunk, and every refusal's code (from the registry in `confidant-protocol`).

mod config;
mod core;
pub mod inference;
pub mod keys;
pub mod sessions;

pub use crate::config::{Identity, ServeConfig};
pub use crate::core::{Core, Output, StreamId};

use confidant_protocol::{Code, ProtocolError};

/// A refusal sent as an `ERROR` frame: a registered code and a message built from fixed text (at most
/// field names and numbers, never anything the client encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
}

impl Refusal {
    pub fn new(code: Code, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl From<ProtocolError> for Refusal {
    fn from(e: ProtocolError) -> Refusal {
        Refusal {
            code: e.code(),
            message: e.to_string(),
        }
    }
}
