//! Unsealing the settings at boot: a fresh RSA-2048 key, an attestation document carrying its public
//! key, KMS `Decrypt` with that document as `Recipient`, and the returned envelope opened here. Any
//! failure stops the boot with its reason; nothing secret is in the reason.

use confidant_nsm::Nsm;
use confidant_sealing::sealed::{SealedError, SealedFile};
use confidant_sealing::settings::{Settings, SettingsError};
use confidant_sealing::{KmsError, RecipientKey};

use crate::client::{decrypt_for_recipient, KmsCallError, RecipientReply};

/// Why the settings could not be unsealed.
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    #[error(transparent)]
    Sealed(#[from] SealedError),
    #[error("attestation for KMS: {0}")]
    Attest(String),
    #[error(transparent)]
    Kms(#[from] KmsCallError),
    #[error(
        "KMS returned the data key in plaintext: the attestation was not honoured, refusing it"
    )]
    PlaintextOnly,
    #[error("KMS returned no CiphertextForRecipient")]
    NoCiphertextForRecipient,
    #[error("CiphertextForRecipient: {0}")]
    Envelope(#[from] KmsError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

impl UnsealError {
    /// A stable code for scripts and logs.
    pub fn code(&self) -> &'static str {
        match self {
            UnsealError::Sealed(e) => e.code(),
            UnsealError::Attest(_) => "unseal_attestation",
            UnsealError::Kms(KmsCallError::Service { .. }) => "kms_refused",
            UnsealError::Kms(_) => "kms_unreachable",
            UnsealError::PlaintextOnly => "kms_plaintext_only",
            UnsealError::NoCiphertextForRecipient => "kms_no_ciphertext_for_recipient",
            UnsealError::Envelope(KmsError::Envelope(_)) => "cms_envelope",
            UnsealError::Envelope(_) => "cms_decrypt",
            UnsealError::Settings(e) => e.code(),
        }
    }
}

/// Unseals `sealed` through `kms`, attesting with `nsm`.
pub async fn unseal(
    sealed: &SealedFile,
    nsm: &dyn Nsm,
    kms: &aws_sdk_kms::Client,
) -> Result<Settings, UnsealError> {
    // The RSA key lives only for this exchange; AWS-LC frees (and clears) it on drop.
    let key = RecipientKey::generate()?;
    let document = nsm
        .attest(&[], None, Some(key.spki_der()))
        .map_err(|e| UnsealError::Attest(e.to_string()))?;
    let reply = decrypt_for_recipient(kms, &sealed.key_id, &sealed.data_key_blob, document).await?;
    let envelope = match reply {
        RecipientReply::CiphertextForRecipient(c) => c,
        RecipientReply::PlaintextOnly => return Err(UnsealError::PlaintextOnly),
        RecipientReply::Neither => return Err(UnsealError::NoCiphertextForRecipient),
    };
    let data_key = key.open(&envelope)?;
    drop(key);
    let bytes = sealed.open(&data_key)?;
    drop(data_key);
    Ok(Settings::parse(&bytes)?)
}
