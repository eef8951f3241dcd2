//! From a verified attestation document and its key-config list to a key the client may encrypt to,
//! in one call that fails closed.

use confidant_verifier::Verified;

use crate::error::ProtocolError;
use crate::keyconfig::{decode_list, KeyConfig};
use crate::suite::Suite;
use crate::time::UnixMillis;
use crate::user_data::{sha256, UserData};

/// What the client pins beyond the verifier's policy.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    /// The model digest the enclave must attest.
    pub model: Option<[u8; 32]>,
    /// The settings digest the enclave must attest (a pin with no attested settings is a mismatch).
    pub settings: Option<[u8; 32]>,
    /// The inference dtype the enclave must attest (`f32`, `bf16`, `int8`; a pin with no attested
    /// dtype is a mismatch).
    pub dtype: Option<String>,
    /// The client's clock, for the key configs' expiry.
    pub now: UnixMillis,
}

/// An enclave key the client may encrypt to, and what it was bound to.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub config: KeyConfig,
    pub suite: Suite,
    /// SHA-256 of the verified document: bound into every request's HPKE info.
    pub attestation_sha256: [u8; 32],
    pub user_data: UserData,
}

impl Recipient {
    /// Checks `key_configs` against the document's `user_data` commitments and picks a suite (X-Wing
    /// first, then the server's AEAD order).
    pub fn from_attestation(
        verified: &Verified,
        key_configs: &[u8],
        expect: &Expectations,
    ) -> Result<Recipient, ProtocolError> {
        let raw = verified.doc().user_data.as_ref().ok_or_else(|| {
            ProtocolError::MalformedUserData("the document carries no user_data".into())
        })?;
        let user_data = UserData::decode(raw)?;
        if sha256(key_configs) != user_data.kc {
            return Err(ProtocolError::KeyConfigsMismatch);
        }
        if expect.model.is_some_and(|m| m != user_data.model) {
            return Err(ProtocolError::ModelMismatch);
        }
        if let Some(want) = expect.settings {
            if user_data.settings != Some(want) {
                return Err(ProtocolError::SettingsMismatch);
            }
        }
        if let Some(want) = &expect.dtype {
            if user_data.dtype.as_ref() != Some(want) {
                return Err(ProtocolError::DtypeMismatch);
            }
        }
        if user_data.exp <= expect.now {
            return Err(ProtocolError::KeysExpired {
                expired_at: user_data.exp,
                now: expect.now,
            });
        }
        let configs = decode_list(key_configs)?;
        let (config, suite) = Suite::ALL
            .iter()
            .find_map(|s| {
                configs
                    .iter()
                    .find(|c| c.kem == s.kem && c.aeads.contains(&s.aead))
                    .map(|c| (c.clone(), *s))
            })
            .ok_or(ProtocolError::NoSupportedSuite)?;
        Ok(Recipient {
            config,
            suite,
            attestation_sha256: *verified.document_sha256(),
            user_data,
        })
    }
}
