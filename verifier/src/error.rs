//! Rejections: a stable machine-readable [`Code`] and a human detail that never holds secret material.

use std::fmt;

/// The stable code of a rejection. The string forms (see [`Code::as_str`]) are part of the CLI's and the
/// conformance manifests' interface: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// Not a COSE_Sign1 attestation document of the expected shape (CBOR, keys, types, sizes).
    Malformed,
    /// Algorithm other than ES384 in the protected header, a digest other than SHA384, or a key type
    /// that is not P-384.
    UnsupportedAlg,
    /// The COSE signature does not verify under the leaf certificate's key.
    BadSignature,
    /// The chain does not lead from the leaf to a pinned root (names or signatures do not link).
    ChainUntrusted,
    /// A certificate cannot be parsed or carries something a verifier must not ignore.
    BadCertificate,
    /// A certificate's `notAfter` is before the verification time.
    CertExpired,
    /// A certificate's `notBefore` is after the verification time.
    CertNotYetValid,
    /// A CA without `cA=true`, a leaf that is a CA, or a path length constraint exceeded.
    BadBasicConstraints,
    /// A CA without `keyCertSign`, or a leaf without `digitalSignature`.
    BadKeyUsage,
    /// The document is older than the policy's maximum age.
    Stale,
    /// The document's timestamp is ahead of the verification time by more than the allowed skew.
    FromFuture,
    /// The document's nonce is not the challenge the verifier sent.
    NonceMismatch,
    /// A pinned PCR has a different value.
    PcrMismatch,
    /// A pinned PCR index is absent from the document.
    PcrMissing,
    /// PCR0 is all zeros (an enclave in debug mode) and debug mode was not allowed.
    DebugMode,
    /// `user_data` differs from what the policy expects.
    UserDataMismatch,
    /// `public_key` differs from what the policy expects.
    PublicKeyMismatch,
}

impl Code {
    /// Every code, for tables and tests.
    pub const ALL: [Code; 17] = [
        Code::Malformed,
        Code::UnsupportedAlg,
        Code::BadSignature,
        Code::ChainUntrusted,
        Code::BadCertificate,
        Code::CertExpired,
        Code::CertNotYetValid,
        Code::BadBasicConstraints,
        Code::BadKeyUsage,
        Code::Stale,
        Code::FromFuture,
        Code::NonceMismatch,
        Code::PcrMismatch,
        Code::PcrMissing,
        Code::DebugMode,
        Code::UserDataMismatch,
        Code::PublicKeyMismatch,
    ];

    /// The stable string form, e.g. `cert_expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Malformed => "malformed",
            Code::UnsupportedAlg => "unsupported_alg",
            Code::BadSignature => "bad_signature",
            Code::ChainUntrusted => "chain_untrusted",
            Code::BadCertificate => "bad_certificate",
            Code::CertExpired => "cert_expired",
            Code::CertNotYetValid => "cert_not_yet_valid",
            Code::BadBasicConstraints => "bad_basic_constraints",
            Code::BadKeyUsage => "bad_key_usage",
            Code::Stale => "stale",
            Code::FromFuture => "from_future",
            Code::NonceMismatch => "nonce_mismatch",
            Code::PcrMismatch => "pcr_mismatch",
            Code::PcrMissing => "pcr_missing",
            Code::DebugMode => "debug_mode",
            Code::UserDataMismatch => "user_data_mismatch",
            Code::PublicKeyMismatch => "public_key_mismatch",
        }
    }

    /// The code whose string form is `s`.
    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a document was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: Code,
    detail: String,
}

impl Error {
    pub(crate) fn new(code: Code, detail: impl Into<String>) -> Error {
        Error {
            code,
            detail: detail.into(),
        }
    }

    /// The stable code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// What exactly failed, for people.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert_eq!(Code::parse(code.as_str()), Some(code));
        }
        assert_eq!(Code::parse("nope"), None);
    }
}
