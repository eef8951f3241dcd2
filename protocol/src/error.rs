//! Protocol errors, each with a stable code that travels in `ERROR` frames and appears in the
//! conformance vectors. Messages never carry secret material.

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
    #[error("attested keys expired at {expired_at} (now {now}, unix s)")]
    KeysExpired { expired_at: u64, now: u64 },
    #[error("no key config offers a supported suite")]
    NoSupportedSuite,

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
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolError::UnknownFrame(_) => "unknown_frame",
            ProtocolError::OversizeFrame { .. } => "oversize_frame",
            ProtocolError::TruncatedFrame(_) => "truncated_frame",
            ProtocolError::MalformedFrame { .. } => "malformed_frame",
            ProtocolError::UnexpectedFrame { .. } => "unexpected_frame",
            ProtocolError::MalformedKeyConfig(_) => "malformed_key_config",
            ProtocolError::MalformedUserData(_) => "malformed_user_data",
            ProtocolError::UnsupportedVersion(_) => "unsupported_version",
            ProtocolError::KeyConfigsMismatch => "key_configs_mismatch",
            ProtocolError::ModelMismatch => "model_mismatch",
            ProtocolError::SettingsMismatch => "settings_mismatch",
            ProtocolError::KeysExpired { .. } => "keys_expired",
            ProtocolError::NoSupportedSuite => "no_supported_suite",
            ProtocolError::UnknownKeyId(_) => "unknown_key_id",
            ProtocolError::SuiteMismatch { .. } => "suite_mismatch",
            ProtocolError::UnknownAttestation => "unknown_attestation",
            ProtocolError::RequestDecrypt => "request_decrypt",
            ProtocolError::Replayed => "replayed",
            ProtocolError::KeyExhausted(_) => "key_exhausted",
            ProtocolError::ChunkAuth(_) => "chunk_auth",
            ProtocolError::TruncatedResponse => "truncated_response",
            ProtocolError::TrailingChunk => "trailing_chunk",
            ProtocolError::UnknownSession => "unknown_session",
            ProtocolError::SessionExpired => "session_expired",
            ProtocolError::SequenceReused { .. } => "sequence_reused",
            ProtocolError::SessionAuth => "session_auth",
        }
    }
}
