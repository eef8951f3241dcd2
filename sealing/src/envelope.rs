//! Building `CiphertextForRecipient` the way AWS KMS does: the other side of [`super::cms`]. Used by
//! `confidant-kms-gate` (the test KMS's attestation gate) and by tests; the enclave never builds one.
//!
//! The shape follows KMS's responses: BER with indefinite lengths on the outer structures, one
//! KeyTransRecipientInfo v2 identified by SHA-256 of the recipient's SPKI, RSAES-OAEP with explicit
//! SHA-256/MGF1-SHA-256 parameters, AES-256-CBC content split into OCTET STRING segments.

use aws_lc_rs::cipher::{PaddedBlockEncryptingKey, UnboundCipherKey, AES_256};
use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA256_MGF1SHA256};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::cms::{
    OID_AES256_CBC, OID_DATA, OID_ENVELOPED_DATA, OID_MGF1, OID_RSAES_OAEP, OID_SHA256,
};

/// Why an envelope could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the recipient key is not an RSA SubjectPublicKeyInfo")]
    RecipientKey,
    #[error("encryption failed")]
    Encrypt,
}

/// Encrypts `content` to the RSA key `spki_der`, the ciphertext split into `segment`-byte pieces.
pub fn build(spki_der: &[u8], content: &[u8], segment: usize) -> Result<Vec<u8>, EnvelopeError> {
    let public =
        PublicEncryptingKey::from_der(spki_der).map_err(|_| EnvelopeError::RecipientKey)?;
    let public = OaepPublicEncryptingKey::new(public).map_err(|_| EnvelopeError::RecipientKey)?;
    let mut content_key = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(content_key.as_mut()).map_err(|_| EnvelopeError::Encrypt)?;
    let mut wrapped = vec![0u8; public.ciphertext_size()];
    let wrapped_len = public
        .encrypt(
            &OAEP_SHA256_MGF1SHA256,
            content_key.as_ref(),
            &mut wrapped,
            None,
        )
        .map_err(|_| EnvelopeError::Encrypt)?
        .len();
    wrapped.truncate(wrapped_len);

    let key = UnboundCipherKey::new(&AES_256, content_key.as_ref())
        .map_err(|_| EnvelopeError::Encrypt)?;
    let key = PaddedBlockEncryptingKey::cbc_pkcs7(key).map_err(|_| EnvelopeError::Encrypt)?;
    let mut ciphertext = content.to_vec();
    // AWS-LC chooses the IV at random.
    let iv: [u8; 16] = match key
        .encrypt(&mut ciphertext)
        .map_err(|_| EnvelopeError::Encrypt)?
    {
        aws_lc_rs::cipher::DecryptionContext::Iv128(iv) => *iv.as_ref(),
        _ => return Err(EnvelopeError::Encrypt),
    };

    let ski = Sha256::digest(spki_der);
    let sha256_alg = der(0x30, &[der(0x06, OID_SHA256), der(0x05, &[])].concat());
    let oaep_params = der(
        0x30,
        &[
            der(0xa0, &sha256_alg),
            der(
                0xa1,
                &der(0x30, &[der(0x06, OID_MGF1), sha256_alg.clone()].concat()),
            ),
        ]
        .concat(),
    );
    let recipient = der(
        0x30,
        &[
            der(0x02, &[2]),
            der(0x80, &ski),
            der(0x30, &[der(0x06, OID_RSAES_OAEP), oaep_params].concat()),
            der(0x04, &wrapped),
        ]
        .concat(),
    );
    let segments: Vec<u8> = ciphertext
        .chunks(segment.max(1))
        .flat_map(|c| der(0x04, c))
        .collect();
    let content_info = indefinite(
        0x30,
        &[
            der(0x06, OID_DATA),
            der(0x30, &[der(0x06, OID_AES256_CBC), der(0x04, &iv)].concat()),
            indefinite(0xa0, &segments),
        ]
        .concat(),
    );
    let enveloped = indefinite(
        0x30,
        &[der(0x02, &[2]), der(0x31, &recipient), content_info].concat(),
    );
    Ok(indefinite(
        0x30,
        &[der(0x06, OID_ENVELOPED_DATA), indefinite(0xa0, &enveloped)].concat(),
    ))
}

/// A definite-length TLV.
fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = body.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(body);
    out
}

/// An indefinite-length constructed TLV, closed by end-of-contents.
fn indefinite(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag, 0x80];
    out.extend_from_slice(body);
    out.extend_from_slice(&[0, 0]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipient::{KmsError, RecipientKey};

    #[test]
    fn what_it_builds_the_enclave_opens() {
        let key = RecipientKey::generate().expect("key");
        for (len, segment) in [(0, 16), (12, 16), (100, 7), (5000, 1000)] {
            let content: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let ber = build(key.spki_der(), &content, segment).expect("build");
            assert_eq!(key.open(&ber).expect("open").as_slice(), content.as_slice());
        }
    }

    #[test]
    fn another_key_cannot_open_it() {
        let (a, b) = (
            RecipientKey::generate().expect("a"),
            RecipientKey::generate().expect("b"),
        );
        let ber = build(a.spki_der(), b"secret", 16).expect("build");
        assert!(matches!(
            b.open(&ber),
            Err(KmsError::Envelope(crate::cms::CmsError::RidMismatch))
        ));
        assert_eq!(
            build(b"not a key", b"x", 16),
            Err(EnvelopeError::RecipientKey)
        );
    }

    #[test]
    fn long_lengths_are_minimal() {
        assert_eq!(der(0x04, &[0; 0x7f])[..2], [0x04, 0x7f]);
        assert_eq!(der(0x04, &[0; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(der(0x04, &[0; 0x100])[..4], [0x04, 0x82, 0x01, 0x00]);
    }
}
