//! What Confidant seals, and the formats around it — no AWS SDK, no libtorch, no sockets:
//!
//! - [`settings`]: the settings schema (system prompt, generation limits, optional weights key);
//! - [`sealed`]: the sealed-settings file (a KMS data key blob + AES-256-GCM);
//! - [`recipient`] and [`cms`]: the enclave's RSA-2048 recipient key and the CMS envelope KMS returns
//!   to it (`CiphertextForRecipient`); [`envelope`] builds such envelopes, as KMS does (tests, gate);
//! - [`weights`]: the encrypted-weights format;
//! - [`policy`]: the KMS key policy as data, rendered for operators and evaluated by the test gate.

pub mod cms;
pub mod envelope;
pub mod policy;
pub mod recipient;
pub mod sealed;
pub mod settings;
pub mod weights;

pub use recipient::{KmsError, RecipientKey};
