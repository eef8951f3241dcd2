//! The enclave's RSA recipient key, and opening what KMS releases to it: `CiphertextForRecipient`,
//! a CMS envelope whose content key is wrapped with RSAES-OAEP (SHA-256, MGF1-SHA-256) to an RSA-2048
//! key made inside the enclave. RSA and AES come from AWS-LC (constant-time, FIPS-validated); keys are
//! dropped (and the data key zeroized) as soon as the content is open.

use aws_lc_rs::cipher::{DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey, AES_256};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA256_MGF1SHA256,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::cms::{self, CmsError};

/// Why a KMS envelope could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("envelope: {0}")]
    Envelope(#[from] CmsError),
    #[error("the RSA key cannot be made or read")]
    Key,
    #[error("RSA-OAEP unwrap failed (not for this key, or altered)")]
    Unwrap,
    #[error("the unwrapped content key is {0} bytes, AES-256 needs 32")]
    ContentKeyLength(usize),
    #[error("AES-256-CBC decryption failed (altered ciphertext or padding)")]
    Decrypt,
}

/// The enclave's RSA-2048 recipient key for one KMS exchange.
pub struct RecipientKey {
    key: OaepPrivateDecryptingKey,
    spki_der: Vec<u8>,
    ski: [u8; 32],
}

impl std::fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientKey")
            .field("ski", &hex::encode(self.ski))
            .finish_non_exhaustive()
    }
}

impl RecipientKey {
    /// A fresh RSA-2048 key.
    pub fn generate() -> Result<RecipientKey, KmsError> {
        Self::from_key(PrivateDecryptingKey::generate(KeySize::Rsa2048).map_err(|_| KmsError::Key)?)
    }

    /// A key from PKCS#8 DER (for fixtures and vectors).
    pub fn from_pkcs8(der: &[u8]) -> Result<RecipientKey, KmsError> {
        Self::from_key(PrivateDecryptingKey::from_pkcs8(der).map_err(|_| KmsError::Key)?)
    }

    fn from_key(key: PrivateDecryptingKey) -> Result<RecipientKey, KmsError> {
        let spki_der = key
            .public_key()
            .as_der()
            .map_err(|_| KmsError::Key)?
            .as_ref()
            .to_vec();
        let ski = Sha256::digest(&spki_der).into();
        Ok(RecipientKey {
            key: OaepPrivateDecryptingKey::new(key).map_err(|_| KmsError::Key)?,
            spki_der,
            ski,
        })
    }

    /// DER SubjectPublicKeyInfo: what goes into the attestation document's `public_key`.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// RSAES-OAEP-SHA256/MGF1-SHA256 decryption with an optional label: the unwrap step the enclave
    /// uses, and the one the Wycheproof vectors exercise.
    pub fn unwrap_key(
        &self,
        wrapped: &[u8],
        label: Option<&[u8]>,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let mut out = Zeroizing::new(vec![0u8; self.key.min_output_size()]);
        let n = self
            .key
            .decrypt(&OAEP_SHA256_MGF1SHA256, wrapped, &mut out, label)
            .map_err(|_| KmsError::Unwrap)?
            .len();
        out.truncate(n);
        Ok(out)
    }

    /// Parses `ciphertext_for_recipient`, checks it is addressed to this key, unwraps the content key
    /// and decrypts the content.
    pub fn open(&self, ciphertext_for_recipient: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let envelope = cms::parse(ciphertext_for_recipient, &self.ski)?;
        let content_key = self.unwrap_key(&envelope.encrypted_key, None)?;
        if content_key.len() != 32 {
            return Err(KmsError::ContentKeyLength(content_key.len()));
        }
        let key = UnboundCipherKey::new(&AES_256, &content_key).map_err(|_| KmsError::Decrypt)?;
        let key = PaddedBlockDecryptingKey::cbc_pkcs7(key).map_err(|_| KmsError::Decrypt)?;
        let mut buf = Zeroizing::new(envelope.ciphertext);
        let n = key
            .decrypt(
                &mut buf,
                DecryptionContext::Iv128(FixedLength::from(envelope.iv)),
            )
            .map_err(|_| KmsError::Decrypt)?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}
