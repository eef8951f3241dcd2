//! What the server core is configured with: its identity (what it attests) and its limits.

use std::time::Duration;

use confidant_protocol::session::SessionLimits;

/// What the enclave commits to in every attestation document, beside its keys and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The model digest over the files as loaded.
    pub model: [u8; 32],
    /// The unsealed settings' digest, when the enclave has sealed settings.
    pub settings: Option<[u8; 32]>,
    /// The dtype the model computes in (`f32`, `bf16`, `int8`).
    pub dtype: String,
}

/// Limits and lifetimes.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Lifetime of each key generation.
    pub key_ttl: Duration,
    /// How long the previous generation is still honoured.
    pub key_grace: Duration,
    /// How long a nonce-less `ATTEST` is answered from the cached document.
    pub cached_document_max_age: Duration,
    pub session_limits: SessionLimits,
    pub max_sessions: usize,
    /// Prompt plus answer tokens, per request and per session (attested).
    pub context_tokens: u32,
    /// Upper bound on `max_tokens` a client may ask for (attested).
    pub max_new_tokens: u32,
    /// `max_tokens` when the client asks for none.
    pub default_new_tokens: u32,
    /// How long a stream may take to deliver its first whole frame.
    pub first_frame_timeout: Duration,
    /// How long a frame may take to arrive once its first byte has.
    pub frame_timeout: Duration,
    /// The traffic shape's cadence: one answer chunk per stream this often (`protocol::shape`).
    pub shape_cadence: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            key_ttl: Duration::from_secs(3600),
            key_grace: Duration::from_secs(300),
            cached_document_max_age: Duration::from_secs(60),
            session_limits: SessionLimits::default(),
            // Sessions are small; their model state is bounded by the engine's KV budget.
            max_sessions: 65_536,
            context_tokens: 2048,
            max_new_tokens: 512,
            default_new_tokens: 64,
            first_frame_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(10),
            // Faster than this engine's per-sequence decode on 2 cores under batching (≈ 10–40
            // tokens/s), so a chunk of up to 254 bytes rarely waits for a second one.
            shape_cadence: Duration::from_millis(100),
        }
    }
}
