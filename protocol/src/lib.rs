//! Confidant's wire protocol, sans I/O: frames, key configs, HPKE request encapsulation bound to the
//! attestation document, chunked responses, sessions and replay protection. Both binaries and the
//! conformance suites drive it; it opens no sockets, reads no clock and touches no files (time comes in
//! as arguments; randomness through a `CryptoRng` the caller passes).
//!
//! The flow, client side: [`binding::Recipient::from_attestation`] → [`request::encapsulate`] →
//! `REQUEST` frame → [`request::ClientRequest::response_opener`] on the `RESPONSE` nonce → open each
//! `CHUNK` → [`request::ClientRequest::into_session`] for follow-up turns. Enclave side:
//! [`request::decapsulate`] → [`replay::ReplayCache::check_and_record`] →
//! [`request::ServerRequest::respond`] → seal chunks; [`request::ServerRequest::session`] keeps the
//! conversation. `docs/protocol.md` is the specification.

mod aead;
pub mod binding;
pub mod chunks;
pub mod codes;
pub mod cose;
pub mod digest;
pub mod endpoint;
pub mod error;
mod fields;
pub mod frame;
pub mod hpke_ops;
pub mod keyconfig;
pub mod link;
pub mod message;
pub mod receipt;
pub mod release;
pub mod replay;
pub mod request;
pub mod session;
pub mod shape;
pub mod suite;
pub mod user_data;

/// Time as unix milliseconds, shared with the verifier.
pub use confidant_verifier::time;

pub use binding::{Expectations, Recipient};
pub use codes::Code;
pub use error::ProtocolError;
pub use frame::{Frame, FrameDecoder, FrameType};
pub use hpke_ops::{system_rng, ReplayRng};
pub use keyconfig::{KeyConfig, KeyPair};
pub use suite::{Aead, Kem, Suite};
pub use time::UnixMillis;

/// The ALPN of Confidant's QUIC between client and relay.
pub const ALPN: &[u8] = b"confidant/1";
