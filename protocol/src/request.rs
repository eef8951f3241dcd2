//! Request encapsulation (RFC 9458 §4.3) and response keys (§4.4), with the attestation binding.
//!
//! ```text
//! hdr  = key_id (1) ‖ kem_id (2) ‖ kdf_id (2) ‖ aead_id (2)
//! info = request_label ‖ 0x00 ‖ hdr ‖ binding          (binding: SHA-256 of the attestation document)
//! enc, ctx = SetupBaseS(pkR, info);  ct = ctx.Seal("", request)
//! encapsulated request = hdr ‖ enc ‖ ct
//!
//! secret = ctx.Export(response_label, max(Nn, Nk));  response_nonce = random(max(Nn, Nk))
//! prk = HKDF-Extract(enc ‖ response_nonce, secret);  key = Expand(prk, "key", Nk);  nonce = Expand(prk, "nonce", Nn)
//! session_secret = ctx.Export("confidant session", 32)
//! ```
//! With an empty binding and the `message/bhttp` labels this is exactly RFC 9458.

use std::sync::Arc;

use hkdf::Hkdf;
use hpke::rand_core::CryptoRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::aead::AeadKey;
use crate::chunks::{ChunkOpener, ChunkSealer, Schedule};
use crate::error::ProtocolError;
use crate::hpke_ops::{self, HpkeFailure};
use crate::keyconfig::{KeyConfig, KeyPair};
use crate::session::{SessionKeys, SESSION_EXPORT_LABEL, SESSION_SECRET_LEN};
use crate::suite::{Aead, Kem, Suite, KDF_HKDF_SHA256};

/// The media-type labels that separate one application's HPKE contexts from another's.
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    pub request: &'a [u8],
    pub response: &'a [u8],
}

/// Confidant's own labels.
pub const CONFIDANT_LABELS: Labels<'static> = Labels {
    request: b"message/confidant request",
    response: b"message/confidant response",
};

/// RFC 9458's labels for Binary HTTP.
pub const BHTTP_LABELS: Labels<'static> = Labels {
    request: b"message/bhttp request",
    response: b"message/bhttp response",
};

/// The request header.
pub fn header(key_id: u8, suite: Suite) -> [u8; 7] {
    let k = suite.kem.id().to_be_bytes();
    let f = KDF_HKDF_SHA256.to_be_bytes();
    let a = suite.aead.id().to_be_bytes();
    [key_id, k[0], k[1], f[0], f[1], a[0], a[1]]
}

/// The HPKE info: `request_label ‖ 0x00 ‖ hdr ‖ binding`.
pub fn info(labels: &Labels<'_>, hdr: &[u8; 7], binding: &[u8]) -> Vec<u8> {
    let mut info = Vec::with_capacity(labels.request.len() + 1 + 7 + binding.len());
    info.extend_from_slice(labels.request);
    info.push(0);
    info.extend_from_slice(hdr);
    info.extend_from_slice(binding);
    info
}

/// Length of the response nonce and exported secret: max(Nn, Nk).
pub fn response_nonce_len(aead: Aead) -> usize {
    aead.nonce_len().max(aead.key_len())
}

/// Secrets shared by both ends after one request.
struct Secrets {
    suite: Suite,
    enc: Vec<u8>,
    response_secret: Zeroizing<Vec<u8>>,
    session_secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl Secrets {
    fn response_keys(&self, response_nonce: &[u8]) -> (Arc<AeadKey>, [u8; 12]) {
        response_keys(
            self.suite.aead,
            &self.enc,
            &self.response_secret,
            response_nonce,
        )
    }

    fn session_keys(&self) -> SessionKeys {
        SessionKeys::derive(self.suite.aead, &self.session_secret, &self.enc)
    }
}

/// Response key and base nonce, RFC 9458 §4.4: `prk = Extract(enc ‖ response_nonce, secret)`,
/// `key = Expand(prk, "key", Nk)`, `nonce = Expand(prk, "nonce", Nn)`.
fn response_keys(
    aead: Aead,
    enc: &[u8],
    secret: &[u8],
    response_nonce: &[u8],
) -> (Arc<AeadKey>, [u8; 12]) {
    let mut salt = Vec::with_capacity(enc.len() + response_nonce.len());
    salt.extend_from_slice(enc);
    salt.extend_from_slice(response_nonce);
    let hk = Hkdf::<Sha256>::new(Some(&salt), secret);
    let mut key = Zeroizing::new(vec![0u8; aead.key_len()]);
    let mut nonce = [0u8; 12];
    // Lengths are at most 32 bytes, far below HKDF's 255 * 32 limit.
    let _ = hk.expand(b"key", &mut key);
    let _ = hk.expand(b"nonce", &mut nonce);
    (Arc::new(AeadKey::new(aead, &key)), nonce)
}

/// A response sealer from raw inputs: the exported `secret` (`Export(response_label, max(Nn, Nk))`),
/// the request's `enc` and the response nonce. For protocols built on these pieces, such as the
/// chunked-OHTTP draft.
pub fn response_sealer(
    aead: Aead,
    enc: &[u8],
    secret: &[u8],
    response_nonce: &[u8],
) -> ChunkSealer {
    let (key, base) = response_keys(aead, enc, secret, response_nonce);
    ChunkSealer::new(key, base, Schedule::Counter, Vec::new())
}

/// The opener matching [`response_sealer`].
pub fn response_opener(
    aead: Aead,
    enc: &[u8],
    secret: &[u8],
    response_nonce: &[u8],
) -> ChunkOpener {
    let (key, base) = response_keys(aead, enc, secret, response_nonce);
    ChunkOpener::new(key, base, Schedule::Counter, Vec::new())
}

fn exports<'a>(labels: &Labels<'a>, aead: Aead) -> [(&'a [u8], usize); 2] {
    [
        (labels.response, response_nonce_len(aead)),
        (SESSION_EXPORT_LABEL, SESSION_SECRET_LEN),
    ]
}

/// The client's state after sending a request.
#[derive(Debug)]
pub struct ClientRequest {
    secrets: Secrets,
}

/// Encapsulates `plaintext` to `config` with `suite`, binding `binding` into the HPKE info.
///
/// Returns the encapsulated request (`hdr ‖ enc ‖ ct`) and the state to read the response with.
pub fn encapsulate(
    config: &KeyConfig,
    suite: Suite,
    binding: &[u8],
    plaintext: &[u8],
    labels: &Labels<'_>,
    rng: &mut impl CryptoRng,
) -> Result<(Vec<u8>, ClientRequest), ProtocolError> {
    if suite.kem != config.kem || !config.aeads.contains(&suite.aead) {
        return Err(ProtocolError::NoSupportedSuite);
    }
    let hdr = header(config.key_id, suite);
    let info = info(labels, &hdr, binding);
    let public_key = hpke_ops::PublicKey::from_bytes(config.kem, &config.public_key)
        .map_err(|_| ProtocolError::MalformedKeyConfig("public key rejected by the KEM".into()))?;
    let sealed = hpke_ops::seal(
        suite.aead,
        &public_key,
        &info,
        &[(plaintext, b"")],
        &exports(labels, suite.aead),
        rng,
    )
    .map_err(|_| ProtocolError::MalformedKeyConfig("public key rejected by the KEM".into()))?;
    let [ct] =
        <[Vec<u8>; 1]>::try_from(sealed.ciphertexts).map_err(|_| ProtocolError::RequestDecrypt)?;
    let mut out = Vec::with_capacity(7 + sealed.enc.len() + ct.len());
    out.extend_from_slice(&hdr);
    out.extend_from_slice(&sealed.enc);
    out.extend_from_slice(&ct);
    let [response_secret, session_secret] = <[Zeroizing<Vec<u8>>; 2]>::try_from(sealed.exports)
        .map_err(|_| ProtocolError::RequestDecrypt)?;
    Ok((
        out,
        ClientRequest {
            secrets: Secrets {
                suite,
                enc: sealed.enc,
                response_secret,
                session_secret,
            },
        },
    ))
}

impl ClientRequest {
    /// The suite used.
    pub fn suite(&self) -> Suite {
        self.secrets.suite
    }

    /// An opener for the response that began with `response_nonce`.
    pub fn response_opener(&self, response_nonce: &[u8]) -> Result<ChunkOpener, ProtocolError> {
        if response_nonce.len() != response_nonce_len(self.secrets.suite.aead) {
            return Err(ProtocolError::MalformedFrame {
                frame: "RESPONSE",
                detail: format!(
                    "response nonce is {} bytes, the suite needs {}",
                    response_nonce.len(),
                    response_nonce_len(self.secrets.suite.aead)
                ),
            });
        }
        let (key, base) = self.secrets.response_keys(response_nonce);
        Ok(ChunkOpener::new(key, base, Schedule::Counter, Vec::new()))
    }

    /// The client end of the session this request opens.
    pub fn into_session(self) -> crate::session::ClientSession {
        crate::session::ClientSession::new(Arc::new(self.secrets.session_keys()))
    }
}

/// What the enclave learns from a request.
#[derive(Debug)]
pub struct ServerRequest {
    /// The key the request was encrypted to.
    pub key_id: u8,
    /// The decrypted request (zeroized on drop).
    pub plaintext: Zeroizing<Vec<u8>>,
    secrets: Secrets,
}

/// Parses `hdr ‖ enc ‖ ct`, finds the key, opens the request. `binding` must be what the client bound
/// (the SHA-256 of a document this enclave issued; the caller checks it issued it).
pub fn decapsulate(
    keys: &[KeyPair],
    binding: &[u8],
    encapsulated: &[u8],
    labels: &Labels<'_>,
) -> Result<ServerRequest, ProtocolError> {
    if encapsulated.len() < 7 {
        return Err(ProtocolError::MalformedFrame {
            frame: "REQUEST",
            detail: "shorter than its header".into(),
        });
    }
    let key_id = encapsulated[0];
    let kem = u16::from_be_bytes([encapsulated[1], encapsulated[2]]);
    let kdf = u16::from_be_bytes([encapsulated[3], encapsulated[4]]);
    let aead = u16::from_be_bytes([encapsulated[5], encapsulated[6]]);
    let pair = keys
        .iter()
        .find(|k| k.config.key_id == key_id)
        .ok_or(ProtocolError::UnknownKeyId(key_id))?;
    let suite = match (Kem::from_id(kem), Aead::from_id(aead)) {
        (Some(k), Some(a))
            if kdf == KDF_HKDF_SHA256 && k == pair.config.kem && pair.config.aeads.contains(&a) =>
        {
            Suite { kem: k, aead: a }
        }
        _ => return Err(ProtocolError::SuiteMismatch { kem, kdf, aead }),
    };
    let rest = &encapsulated[7..];
    let nenc = suite.kem.enc_len();
    if rest.len() < nenc + suite.aead.tag_len() {
        return Err(ProtocolError::MalformedFrame {
            frame: "REQUEST",
            detail: "shorter than enc and a tag".into(),
        });
    }
    let (enc, ct) = rest.split_at(nenc);
    let hdr = header(key_id, suite);
    let info = info(labels, &hdr, binding);
    let opened = hpke_ops::open(
        suite.aead,
        pair.private_key(),
        enc,
        &info,
        &[(ct, b"")],
        &exports(labels, suite.aead),
    )
    .map_err(|e| match e {
        HpkeFailure::BadKey | HpkeFailure::Open => ProtocolError::RequestDecrypt,
    })?;
    let mut plaintexts = opened.plaintexts;
    let plaintext = plaintexts.pop().ok_or(ProtocolError::RequestDecrypt)?;
    let [response_secret, session_secret] = <[Zeroizing<Vec<u8>>; 2]>::try_from(opened.exports)
        .map_err(|_| ProtocolError::RequestDecrypt)?;
    Ok(ServerRequest {
        key_id,
        plaintext,
        secrets: Secrets {
            suite,
            enc: enc.to_vec(),
            response_secret,
            session_secret,
        },
    })
}

impl ServerRequest {
    /// The suite used.
    pub fn suite(&self) -> Suite {
        self.secrets.suite
    }

    /// The encapsulated key, for the replay cache.
    pub fn enc(&self) -> &[u8] {
        &self.secrets.enc
    }

    /// A fresh response nonce and the sealer for the response's chunks.
    pub fn respond(&self, rng: &mut impl CryptoRng) -> (Vec<u8>, ChunkSealer) {
        let mut nonce = vec![0u8; response_nonce_len(self.secrets.suite.aead)];
        rng.fill_bytes(&mut nonce);
        let sealer = self.respond_with_nonce(&nonce);
        (nonce, sealer)
    }

    /// The sealer for a response under a given nonce (for known-answer tests).
    pub fn respond_with_nonce(&self, response_nonce: &[u8]) -> ChunkSealer {
        let (key, base) = self.secrets.response_keys(response_nonce);
        ChunkSealer::new(key, base, Schedule::Counter, Vec::new())
    }

    /// The enclave end of the session this request opens.
    pub fn session(
        &self,
        now: crate::time::UnixMillis,
        limits: crate::session::SessionLimits,
    ) -> crate::session::EnclaveSession {
        crate::session::EnclaveSession::new(Arc::new(self.secrets.session_keys()), now, limits)
    }
}
