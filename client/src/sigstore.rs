//! Release manifests signed through Sigstore: the operator runs `cosign sign-blob --key … --bundle`
//! over a manifest's canonical body, which logs the signature in a transparency log (Rekor), and the
//! relay serves the body with the bundle ([`release::Signed::Sigstore`]). The client checks the
//! bundle offline against a trusted root given as a file (the log's keys; no network, no TUF):
//! the log's checkpoint signature and the entry's inclusion proof, that the logged entry is this
//! body and this signature, and that the signature is the pinned Sigstore release key's. The
//! manifest itself is then held to the same rules as a COSE-signed one.
//!
//! Verification is `sigstore-verify`'s (the sigstore-rust project's verifier), not ours: a managed
//! key bundle under a [`PublicKeyVerificationPolicy`], which requires log inclusion.
//!
//! The Sigstore key is the operator's cosign key, pinned on its own (`cosign.pub`), not the P-384
//! COSE release key: cosign signs with a P-384 key over SHA-384 and logs a SHA-384 entry, which
//! `sigstore-verify` 0.15 does not check (its hashedrekord entries are SHA-256), while cosign's
//! default key, P-256 over SHA-256, is what Rekor and every Sigstore verifier handle.

use std::path::Path;

use confidant_protocol::release::{self, Manifest};
use confidant_protocol::ProtocolError;
use sigstore_verify::crypto::VerificationKey;
use sigstore_verify::trust_root::TrustedRoot;
use sigstore_verify::types::{Bundle, DerPublicKey};
use sigstore_verify::{PublicKeyVerificationPolicy, Verifier};

use crate::SetupError;

/// The largest trusted root or key file read (the public-good root is about 10 KiB).
const MAX_FILE_LEN: u64 = 1 << 20;

fn read_small(flag: &str, path: &Path) -> Result<String, SetupError> {
    let invalid = |e: String| SetupError::Invalid(format!("{flag} {}: {e}", path.display()));
    let len = std::fs::metadata(path)
        .map_err(|e| invalid(e.to_string()))?
        .len();
    if len > MAX_FILE_LEN {
        return Err(invalid(format!("larger than {MAX_FILE_LEN} bytes")));
    }
    std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))
}

/// What a Sigstore-signed manifest must verify against: a trusted root (`trusted_root.json`, as
/// Sigstore's TUF repository publishes it) and the operator's cosign public key.
pub struct SigstorePin {
    verifier: Verifier,
    key: DerPublicKey,
}

impl std::fmt::Debug for SigstorePin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigstorePin")
    }
}

impl SigstorePin {
    /// Reads `--release-sigstore-root` and `--release-sigstore-key` (PEM, as `cosign.pub`).
    pub fn load(root: &Path, key: &Path) -> Result<SigstorePin, SetupError> {
        let root_json = read_small("--release-sigstore-root", root)?;
        let key_pem = read_small("--release-sigstore-key", key)?;
        SigstorePin::new(&root_json, &key_pem).map_err(|(which, e)| {
            let (flag, path) = match which {
                Which::Root => ("--release-sigstore-root", root),
                Which::Key => ("--release-sigstore-key", key),
            };
            SetupError::Invalid(format!("{flag} {}: {e}", path.display()))
        })
    }

    /// Parses a trusted root and a PEM public key. A root with no transparency log is refused,
    /// since it could admit nothing, and so is a key no Sigstore scheme verifies with.
    pub fn new(root_json: &str, key_pem: &str) -> Result<SigstorePin, (Which, String)> {
        let root = TrustedRoot::from_json(root_json).map_err(|e| (Which::Root, e.to_string()))?;
        if root.tlogs.is_empty() {
            return Err((
                Which::Root,
                "the trusted root lists no transparency log".into(),
            ));
        }
        let verifier = Verifier::new(&root).map_err(|e| (Which::Root, e.to_string()))?;
        let key = DerPublicKey::from_pem(key_pem).map_err(|e| (Which::Key, e.to_string()))?;
        VerificationKey::from_spki(&key).map_err(|e| (Which::Key, e.to_string()))?;
        Ok(SigstorePin { verifier, key })
    }

    /// Verifies `bundle` (JSON) as the pinned key's logged signature over `body`, then decodes the
    /// body strictly. Every failure of the bundle is `release_sigstore` with what failed.
    pub fn open(&self, body: &[u8], bundle: &str) -> Result<Manifest, ProtocolError> {
        let refused = |e: String| ProtocolError::ReleaseSigstore(e);
        let bundle = Bundle::from_json(bundle).map_err(|e| refused(format!("bundle: {e}")))?;
        let policy = PublicKeyVerificationPolicy::new(self.key.clone());
        self.verifier
            .verify(body, &bundle, &policy)
            .map_err(|e| refused(e.to_string()))?;
        Manifest::decode(body)
    }
}

/// Which of the two inputs of a [`SigstorePin`] is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Root,
    Key,
}

/// Opens one item of a `RELEASE` frame in whichever form it has, under the pin for that form; an
/// item of a form nothing is pinned for is refused (a Sigstore-signed one is never taken on a key's
/// word alone: the point of the form is the log).
pub fn open_item(
    item: &[u8],
    release_key: Option<&[u8]>,
    sigstore: Option<&SigstorePin>,
) -> Result<Manifest, ProtocolError> {
    match release::Signed::parse(item)? {
        release::Signed::Cose(cose) => match release_key {
            Some(key) => release::open(cose, key),
            None => Err(ProtocolError::ReleaseSignature),
        },
        release::Signed::Sigstore { body, bundle } => match sigstore {
            Some(pin) => pin.open(body, bundle),
            None => Err(ProtocolError::ReleaseSigstore(
                "the relay serves a Sigstore-signed manifest; pin --release-sigstore-key and \
                 --release-sigstore-root to check it"
                    .into(),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_ROOT: &str = r#"{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs":[],"certificateAuthorities":[],"ctlogs":[]}"#;

    #[test]
    fn a_root_without_a_log_or_not_json_is_refused() {
        let err = SigstorePin::new(EMPTY_ROOT, "").unwrap_err();
        assert_eq!(err.0, Which::Root);
        assert!(err.1.contains("no transparency log"));
        assert_eq!(SigstorePin::new("not json", "").unwrap_err().0, Which::Root);
    }

    #[test]
    fn an_item_of_a_form_nothing_is_pinned_for_is_refused() {
        let item = release::pack_sigstore(b"body", "{}");
        assert!(matches!(
            open_item(&item, Some(&[4; 97]), None),
            Err(ProtocolError::ReleaseSigstore(_))
        ));
        assert!(matches!(
            open_item(b"\x84\x40\xa0\x40\x40", None, None),
            Err(ProtocolError::ReleaseSignature)
        ));
        assert!(matches!(
            open_item(b"\x00", Some(&[4; 97]), None),
            Err(ProtocolError::MalformedManifest(_))
        ));
    }
}
