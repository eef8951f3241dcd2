//! What the server core is configured with: its identity (what it attests) and its limits.

use std::time::Duration;

use confidant_protocol::session::SessionLimits;

/// What the enclave commits to in every attestation document, beside its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The model digest over the files as loaded.
    pub model: [u8; 32],
    /// The unsealed settings' digest, when the enclave has sealed settings.
    pub settings: Option<[u8; 32]>,
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
    /// Upper bound on `max_tokens` a client may ask for.
    pub max_new_tokens: u32,
    /// `max_tokens` when the client asks for none.
    pub default_new_tokens: u32,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            key_ttl: Duration::from_secs(3600),
            key_grace: Duration::from_secs(300),
            cached_document_max_age: Duration::from_secs(60),
            session_limits: SessionLimits::default(),
            max_sessions: 1024,
            max_new_tokens: 512,
            default_new_tokens: 64,
        }
    }
}
