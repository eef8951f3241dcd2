//! Protocol errors, each with a stable code that travels in `ERROR` frames and appears in the
//! conformance vectors. Messages never carry secret material.

use crate::codes::Code;
use crate::time::UnixMillis;

/// Why a protocol step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    // Framing.
    #[error("frame type {0:#04x} is unknown")]
    UnknownFrame(u8),
    #[error("frame body of {len} bytes exceeds the maximum of {max}")]
    OversizeFrame { len: u64, max: u32 },
    #[error("stream ended inside a frame ({0} bytes pending)")]
    TruncatedFrame(usize),
    #[error("malformed {frame} frame: {detail}")]
    MalformedFrame { frame: &'static str, detail: String },
    #[error("unexpected {got} frame, expected {expected}")]
    UnexpectedFrame {
        got: &'static str,
        expected: &'static str,
    },

    // Key configs and attestation binding.
    #[error("malformed key config: {0}")]
    MalformedKeyConfig(String),
    #[error("malformed user_data: {0}")]
    MalformedUserData(String),
    #[error("user_data protocol version {0} is not 1")]
    UnsupportedVersion(u64),
    #[error("the key-config list does not hash to the attested `kc`")]
    KeyConfigsMismatch,
    #[error("attested model digest differs from the pinned one")]
    ModelMismatch,
    #[error("attested settings digest differs from the pinned one")]
    SettingsMismatch,
    #[error("the attested inference dtype differs from the pinned one")]
    DtypeMismatch,
    #[error("attested keys expired at {expired_at} (now {now})")]
    KeysExpired {
        expired_at: UnixMillis,
        now: UnixMillis,
    },
    #[error("no key config offers a supported suite")]
    NoSupportedSuite,

    // Release manifests.
    #[error("malformed release manifest: {0}")]
    MalformedManifest(String),
    #[error("no release manifest verifies under the pinned release key")]
    ReleaseSignature,
    #[error("release {version}'s manifest is expired or not yet valid")]
    ReleaseExpired { version: u64 },
    #[error("the enclave's PCR0/1/2 are not listed in release {version}'s manifest")]
    ReleasePcrs { version: u64 },
    #[error("release {version}'s manifest names another model or settings digest than the enclave attests")]
    ReleaseMismatch { version: u64 },
    #[error("the enclave runs release {version}, older than release {high_water} already accepted from this relay (rollback)")]
    ReleaseRollback { version: u64, high_water: u64 },
    /// Public data only: what in the bundle, the log entry or the trusted root failed.
    #[error("Sigstore-signed release manifest refused: {0}")]
    ReleaseSigstore(String),

    // Requests.
    #[error("request names key id {0}, which this enclave does not hold")]
    UnknownKeyId(u8),
    #[error("request suite (KEM {kem:#06x}, KDF {kdf:#06x}, AEAD {aead:#06x}) is not the key's")]
    SuiteMismatch { kem: u16, kdf: u16, aead: u16 },
    #[error("request is not bound to an attestation document this enclave issued")]
    UnknownAttestation,
    #[error("request did not decrypt")]
    RequestDecrypt,
    #[error("request `enc` was seen before under this key (replay)")]
    Replayed,
    #[error("key {0} has served its maximum number of requests; re-attest for a fresh key")]
    KeyExhausted(u8),

    // Responses and sessions.
    #[error("response chunk {0} did not authenticate (altered, reordered, dropped or duplicated)")]
    ChunkAuth(u64),
    #[error("response ended without its final chunk")]
    TruncatedResponse,
    #[error("data after the final response chunk")]
    TrailingChunk,
    #[error("bad receipt: {0}")]
    BadReceipt(String),
    #[error("the receipt's `{0}` does not match what it should cover")]
    ReceiptMismatch(&'static str),
    #[error("session is unknown")]
    UnknownSession,
    #[error("session expired")]
    SessionExpired,
    #[error("sequence number {got} is not above the last one, {last}")]
    SequenceReused { got: u64, last: u64 },
    #[error("session message did not authenticate")]
    SessionAuth,
}

impl ProtocolError {
    /// The stable code (see [`crate::codes`]).
    pub fn code(&self) -> Code {
        match self {
            ProtocolError::UnknownFrame(_) => Code::UnknownFrame,
            ProtocolError::OversizeFrame { .. } => Code::OversizeFrame,
            ProtocolError::TruncatedFrame(_) => Code::TruncatedFrame,
            ProtocolError::MalformedFrame { .. } => Code::MalformedFrame,
            ProtocolError::UnexpectedFrame { .. } => Code::UnexpectedFrame,
            ProtocolError::MalformedKeyConfig(_) => Code::MalformedKeyConfig,
            ProtocolError::MalformedUserData(_) => Code::MalformedUserData,
            ProtocolError::UnsupportedVersion(_) => Code::UnsupportedVersion,
            ProtocolError::KeyConfigsMismatch => Code::KeyConfigsMismatch,
            ProtocolError::ModelMismatch => Code::ModelMismatch,
            ProtocolError::DtypeMismatch => Code::DtypeMismatch,
            ProtocolError::SettingsMismatch => Code::SettingsMismatch,
            ProtocolError::KeysExpired { .. } => Code::KeysExpired,
            ProtocolError::NoSupportedSuite => Code::NoSupportedSuite,
            ProtocolError::MalformedManifest(_) => Code::MalformedManifest,
            ProtocolError::ReleaseSignature => Code::ReleaseSignature,
            ProtocolError::ReleaseExpired { .. } => Code::ReleaseExpired,
            ProtocolError::ReleasePcrs { .. } => Code::ReleasePcrs,
            ProtocolError::ReleaseMismatch { .. } => Code::ReleaseMismatch,
            ProtocolError::ReleaseRollback { .. } => Code::ReleaseRollback,
            ProtocolError::ReleaseSigstore(_) => Code::ReleaseSigstore,
            ProtocolError::UnknownKeyId(_) => Code::UnknownKeyId,
            ProtocolError::SuiteMismatch { .. } => Code::SuiteMismatch,
            ProtocolError::UnknownAttestation => Code::UnknownAttestation,
            ProtocolError::RequestDecrypt => Code::RequestDecrypt,
            ProtocolError::Replayed => Code::Replayed,
            ProtocolError::KeyExhausted(_) => Code::KeyExhausted,
            ProtocolError::ChunkAuth(_) => Code::ChunkAuth,
            ProtocolError::TruncatedResponse => Code::TruncatedResponse,
            ProtocolError::TrailingChunk => Code::TrailingChunk,
            ProtocolError::BadReceipt(_) => Code::BadReceipt,
            ProtocolError::ReceiptMismatch(_) => Code::ReceiptMismatch,
            ProtocolError::UnknownSession => Code::UnknownSession,
            ProtocolError::SessionExpired => Code::SessionExpired,
            ProtocolError::SequenceReused { .. } => Code::SequenceReused,
            ProtocolError::SessionAuth => Code::SessionAuth,
        }
    }
}
