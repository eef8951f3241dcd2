//! Signed release manifests: instead of three 96-digit PCR values, a client pins the operator's
//! release key and accepts an enclave whose measured PCR0/1/2 are listed, as a whole tuple, in a
//! manifest that key signed, that is valid now, and whose version is not below the highest this
//! client has accepted from the same relay (no rollback to an older, perhaps vulnerable, image).
//!
//! ```text
//! manifest = COSE_Sign1 (untagged) [ protected = bstr .cbor {1: -35 (ES384), 3: CONTENT_TYPE},
//!   unprotected = {}, payload = bstr .cbor body, signature = bstr (96: r ‖ s) ]
//! body = {"v": 1, "version": uint, "nbf": unix s, "exp": unix s,
//!         "pcrs": [[PCR0 h'48', PCR1 h'48', PCR2 h'48'], …], "model": h'32', ["settings": h'32']}
//! ```
//!
//! ES384 is what Nitro documents use, so the signature goes through the verifier's COSE path; the
//! key may live in AWS KMS (an `ECC_NIST_P384` key signs the `Sig_structure`'s SHA-384 digest). A
//! rollout lists the old and the new tuple in one manifest, so both kinds of enclave stay
//! acceptable while it lasts; the next manifest, with a higher version, lists only the new.
//!
//! A manifest may instead be signed through Sigstore ([`Signed::Sigstore`]): the body as above with
//! the bundle `cosign sign-blob` made for it, which the client checks against a trusted root and
//! the operator's cosign key.

use confidant_verifier::cbor::{write_bytes, write_head, write_text, Item, Reader};
use confidant_verifier::signature::{sig_structure, verify_es384};

use crate::cose;
use crate::error::ProtocolError;
use crate::fields::Fields;
use crate::time::UnixMillis;

/// Payload version carried in `v`.
pub const VERSION: u64 = 1;

/// The COSE content type naming a release manifest.
pub const CONTENT_TYPE: &str = "application/confidant-release";

/// Longest manifest accepted; most PCR tuples one lists.
pub const MAX_LEN: usize = 16 * 1024;
pub const MAX_TUPLES: usize = 64;

/// PCR0, PCR1 and PCR2 of one enclave image.
pub type PcrTuple = [[u8; 48]; 3];

/// What a release manifest states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Increases with every release; clients refuse to go back below the highest they accepted.
    pub version: u64,
    pub not_before: UnixMillis,
    pub expires: UnixMillis,
    /// The images this release admits, each as its whole (PCR0, PCR1, PCR2).
    pub pcrs: Vec<PcrTuple>,
    pub model: [u8; 32],
    pub settings: Option<[u8; 32]>,
}

fn bad(detail: impl Into<String>) -> ProtocolError {
    ProtocolError::MalformedManifest(detail.into())
}

const F: Fields = Fields(ProtocolError::MalformedManifest);

impl Manifest {
    /// The canonical CBOR body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.pcrs.len() * 150);
        write_head(&mut out, 5, 6 + u64::from(self.settings.is_some()));
        write_text(&mut out, "v");
        write_head(&mut out, 0, VERSION);
        write_text(&mut out, "version");
        write_head(&mut out, 0, self.version);
        write_text(&mut out, "nbf");
        write_head(&mut out, 0, self.not_before.as_secs());
        write_text(&mut out, "exp");
        write_head(&mut out, 0, self.expires.as_secs());
        write_text(&mut out, "pcrs");
        write_head(&mut out, 4, self.pcrs.len() as u64);
        for tuple in &self.pcrs {
            write_head(&mut out, 4, 3);
            for pcr in tuple {
                write_bytes(&mut out, pcr);
            }
        }
        write_text(&mut out, "model");
        write_bytes(&mut out, &self.model);
        if let Some(s) = &self.settings {
            write_text(&mut out, "settings");
            write_bytes(&mut out, s);
        }
        out
    }

    /// Strict decoding of a canonical body.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ProtocolError> {
        let mut r = Reader::new(bytes);
        let n = match r.read().map_err(bad)? {
            Item::Map(Some(n)) if (6..=7).contains(&n) => n,
            _ => return Err(bad("the body must be a definite map of 6 or 7 entries")),
        };
        let (mut v, mut version, mut nbf, mut exp) = (None, None, None, None);
        let (mut pcrs, mut model, mut settings) = (None, None, None);
        for _ in 0..n {
            let key = match r.read().map_err(bad)? {
                Item::Text(k) => k,
                _ => return Err(bad("body keys must be text")),
            };
            let value = r.read().map_err(bad)?;
            match key {
                "v" => F.set(&mut v, key, F.uint(key, value)?)?,
                "version" => F.set(&mut version, key, F.uint(key, value)?)?,
                "nbf" => F.set(&mut nbf, key, F.uint(key, value)?)?,
                "exp" => F.set(&mut exp, key, F.uint(key, value)?)?,
                "model" => F.set(&mut model, key, F.bytes(key, value)?)?,
                "settings" => F.set(&mut settings, key, F.bytes(key, value)?)?,
                "pcrs" => F.set(&mut pcrs, key, tuples(&mut r, value)?)?,
                _ => return Err(bad("the body has an unknown key")),
            }
        }
        if r.remaining() != 0 {
            return Err(bad("trailing bytes after the body"));
        }
        if v != Some(VERSION) {
            return Err(bad("unsupported manifest version"));
        }
        let missing = |k: &str| bad(format!("missing `{k}`"));
        let m = Manifest {
            version: version.ok_or_else(|| missing("version"))?,
            not_before: UnixMillis::from_secs(nbf.ok_or_else(|| missing("nbf"))?),
            expires: UnixMillis::from_secs(exp.ok_or_else(|| missing("exp"))?),
            pcrs: pcrs.ok_or_else(|| missing("pcrs"))?,
            model: model.ok_or_else(|| missing("model"))?,
            settings,
        };
        if m.encode() != bytes {
            return Err(bad("the body is not in canonical form"));
        }
        Ok(m)
    }

    /// The protected header and the body, whose `Sig_structure` the release key signs.
    pub fn to_be_signed(&self) -> (Vec<u8>, Vec<u8>) {
        (protected(), self.encode())
    }
}

fn tuples(r: &mut Reader<'_>, value: Item<'_>) -> Result<Vec<PcrTuple>, ProtocolError> {
    let n = match value {
        Item::Array(Some(n)) if (1..=MAX_TUPLES).contains(&n) => n,
        _ => {
            return Err(bad(format!(
                "`pcrs` must be an array of 1 to {MAX_TUPLES} tuples"
            )))
        }
    };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if !matches!(r.read().map_err(bad)?, Item::Array(Some(3))) {
            return Err(bad("each `pcrs` entry must be [PCR0, PCR1, PCR2]"));
        }
        let mut tuple = [[0u8; 48]; 3];
        for pcr in &mut tuple {
            match r.read().map_err(bad)? {
                Item::Bytes(b) if b.len() == 48 => pcr.copy_from_slice(b),
                _ => return Err(bad("each PCR must be 48 bytes")),
            }
        }
        out.push(tuple);
    }
    Ok(out)
}

/// `{1: -35 (ES384), 3: CONTENT_TYPE}`.
pub fn protected() -> Vec<u8> {
    cose::protected(-35, CONTENT_TYPE)
}

/// The COSE_Sign1 of a signed manifest.
pub fn assemble(protected: &[u8], body: &[u8], signature: &[u8]) -> Vec<u8> {
    cose::encode(protected, body, signature)
}

/// Decodes a manifest strictly and verifies it under `release_key` (an uncompressed SEC1 P-384
/// point, 97 bytes).
pub fn open(cose: &[u8], release_key: &[u8]) -> Result<Manifest, ProtocolError> {
    if cose.len() > MAX_LEN {
        return Err(bad("longer than any manifest"));
    }
    let parts =
        cose::parse(cose, &protected(), "ES384 with the release content type").map_err(bad)?;
    if !verify_es384(
        release_key,
        &sig_structure(parts.protected, parts.payload),
        parts.signature,
    ) {
        return Err(ProtocolError::ReleaseSignature);
    }
    Manifest::decode(parts.payload)
}

/// One item of a `RELEASE` frame: a manifest and its signature, in one of two forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed<'a> {
    /// A COSE_Sign1 under the release key ([`open`]).
    Cose(&'a [u8]),
    /// The canonical body with a Sigstore bundle (JSON) whose message signature is the operator's
    /// cosign key's over exactly these bytes — what `cosign sign-blob --key … --bundle …` makes,
    /// with the body logged in Rekor. Encoded `{"manifest": bstr .cbor body, "sigstore": tstr
    /// bundle}`.
    Sigstore { body: &'a [u8], bundle: &'a str },
}

impl<'a> Signed<'a> {
    /// Tells the forms apart by their first byte (a COSE_Sign1 is a 4-array, the Sigstore form a
    /// 2-map) and reads the Sigstore form strictly; the COSE form is read by [`open`].
    pub fn parse(item: &'a [u8]) -> Result<Signed<'a>, ProtocolError> {
        if item.len() > MAX_LEN {
            return Err(bad("longer than any manifest"));
        }
        match item.first() {
            Some(0x84) => return Ok(Signed::Cose(item)),
            Some(0xa2) => {}
            _ => return Err(bad("neither a COSE_Sign1 nor a Sigstore-signed manifest")),
        }
        let mut r = Reader::new(item);
        r.read().map_err(bad)?;
        let mut field = |want: &str| -> Result<Item<'a>, ProtocolError> {
            match r.read().map_err(bad)? {
                Item::Text(k) if k == want => r.read().map_err(bad),
                _ => Err(bad("the Sigstore form's keys are manifest, sigstore")),
            }
        };
        let body = match field("manifest")? {
            Item::Bytes(b) => b,
            _ => return Err(bad("`manifest` must be bytes")),
        };
        let bundle = match field("sigstore")? {
            Item::Text(t) => t,
            _ => return Err(bad("`sigstore` must be text (the bundle's JSON)")),
        };
        if r.remaining() != 0 {
            return Err(bad("trailing bytes after the Sigstore form"));
        }
        Ok(Signed::Sigstore { body, bundle })
    }
}

/// The Sigstore form of a manifest, as the relay serves it: the body and the bundle that signs it.
pub fn pack_sigstore(body: &[u8], bundle: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + bundle.len() + 32);
    write_head(&mut out, 5, 2);
    write_text(&mut out, "manifest");
    write_bytes(&mut out, body);
    write_text(&mut out, "sigstore");
    write_text(&mut out, bundle);
    out
}

/// What the attested enclave is, for holding it to manifests.
#[derive(Debug, Clone, Copy)]
pub struct Measured<'a> {
    pub pcrs: &'a PcrTuple,
    pub model: &'a [u8; 32],
    pub settings: Option<&'a [u8; 32]>,
}

/// Admits an enclave under the manifests served beside its document: the highest-version manifest
/// that verifies under `release_key`, is valid at `now`, lists the enclave's PCR tuple and states
/// its model and settings. Its version must not be below `high_water` (the highest this client
/// accepted from this relay). Returns that manifest; the caller raises its high-water mark to it.
/// The error is the most telling of the manifests' failures.
pub fn admit(
    manifests: &[Vec<u8>],
    release_key: &[u8],
    enclave: &Measured<'_>,
    now: UnixMillis,
    high_water: u64,
) -> Result<Manifest, ProtocolError> {
    choose(
        manifests.iter().map(|m| open(m, release_key)),
        enclave,
        now,
        high_water,
    )
}

/// [`admit`] over manifests already opened (their signatures checked, in whichever form): the
/// highest-version one valid at `now` that lists the enclave, not below `high_water`.
pub fn choose(
    opened: impl IntoIterator<Item = Result<Manifest, ProtocolError>>,
    enclave: &Measured<'_>,
    now: UnixMillis,
    high_water: u64,
) -> Result<Manifest, ProtocolError> {
    let mut best: Option<Manifest> = None;
    // Failures ranked by how far the manifest got: a later stage says more.
    let mut worst = (0u8, ProtocolError::ReleaseSignature);
    let mut note = |rank: u8, e: ProtocolError| {
        if rank >= worst.0 {
            worst = (rank, e);
        }
    };
    for opened in opened {
        let m = match opened {
            Ok(m) => m,
            Err(e @ ProtocolError::MalformedManifest(_)) => {
                note(1, e);
                continue;
            }
            Err(e) => {
                note(0, e);
                continue;
            }
        };
        if now < m.not_before || now >= m.expires {
            note(2, ProtocolError::ReleaseExpired { version: m.version });
            continue;
        }
        if !m.pcrs.iter().any(|t| t == enclave.pcrs) {
            note(3, ProtocolError::ReleasePcrs { version: m.version });
            continue;
        }
        if &m.model != enclave.model || m.settings.as_ref() != enclave.settings {
            note(4, ProtocolError::ReleaseMismatch { version: m.version });
            continue;
        }
        if best.as_ref().is_none_or(|b| m.version > b.version) {
            best = Some(m);
        }
    }
    let Some(m) = best else {
        return Err(worst.1);
    };
    if m.version < high_water {
        return Err(ProtocolError::ReleaseRollback {
            version: m.version,
            high_water,
        });
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};

    fn key() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap()
    }

    fn sign(k: &EcdsaKeyPair, m: &Manifest) -> Vec<u8> {
        let (p, body) = m.to_be_signed();
        let sig = k
            .sign(&SystemRandom::new(), &sig_structure(&p, &body))
            .unwrap();
        assemble(&p, &body, sig.as_ref())
    }

    const OLD: PcrTuple = [[1; 48], [2; 48], [3; 48]];
    const NEW: PcrTuple = [[4; 48], [2; 48], [3; 48]];

    fn manifest(version: u64, pcrs: Vec<PcrTuple>) -> Manifest {
        Manifest {
            version,
            not_before: UnixMillis::from_secs(1_000),
            expires: UnixMillis::from_secs(2_000),
            pcrs,
            model: [7; 32],
            settings: Some([8; 32]),
        }
    }

    fn enclave(pcrs: &PcrTuple) -> Measured<'_> {
        Measured {
            pcrs,
            model: &[7; 32],
            settings: Some(&[8; 32]),
        }
    }

    const NOW: UnixMillis = UnixMillis::from_secs(1_500);

    #[test]
    fn a_listed_enclave_is_admitted_and_everything_else_is_refused_with_its_reason() {
        let k = key();
        let pk = k.public_key().as_ref().to_vec();
        let m1 = sign(&k, &manifest(1, vec![OLD]));
        let one = std::slice::from_ref(&m1);
        assert_eq!(open(&m1, &pk).unwrap(), manifest(1, vec![OLD]));
        assert_eq!(admit(one, &pk, &enclave(&OLD), NOW, 0).unwrap().version, 1);
        // Another key's manifest.
        let other = key().public_key().as_ref().to_vec();
        assert_eq!(
            admit(one, &other, &enclave(&OLD), NOW, 0),
            Err(ProtocolError::ReleaseSignature)
        );
        // An image the release does not list (a tuple is whole: PCR0 alone does not match).
        assert_eq!(
            admit(one, &pk, &enclave(&NEW), NOW, 0),
            Err(ProtocolError::ReleasePcrs { version: 1 })
        );
        // Expired, and not yet valid.
        for t in [UnixMillis::from_secs(2_000), UnixMillis::from_secs(999)] {
            assert_eq!(
                admit(one, &pk, &enclave(&OLD), t, 0),
                Err(ProtocolError::ReleaseExpired { version: 1 })
            );
        }
        // Another model.
        let e = Measured {
            model: &[9; 32],
            ..enclave(&OLD)
        };
        assert_eq!(
            admit(one, &pk, &e, NOW, 0),
            Err(ProtocolError::ReleaseMismatch { version: 1 })
        );
        // Nothing served.
        assert_eq!(
            admit(&[], &pk, &enclave(&OLD), NOW, 0),
            Err(ProtocolError::ReleaseSignature)
        );
        // Every byte is signed.
        for i in 0..m1.len() {
            let mut t = m1.clone();
            t[i] ^= 1;
            assert!(open(&t, &pk).is_err(), "byte {i}");
        }
    }

    #[test]
    fn a_rollout_admits_both_images_and_then_no_going_back() {
        let k = key();
        let pk = k.public_key().as_ref().to_vec();
        let m1 = sign(&k, &manifest(1, vec![OLD]));
        let m2 = sign(&k, &manifest(2, vec![OLD, NEW]));
        let m3 = sign(&k, &manifest(3, vec![NEW]));
        // During the rollout both manifests are valid and served; either image is admitted under
        // the newest manifest listing it.
        let served = [m1.clone(), m2.clone()];
        assert_eq!(
            admit(&served, &pk, &enclave(&OLD), NOW, 1).unwrap().version,
            2
        );
        assert_eq!(
            admit(&served, &pk, &enclave(&NEW), NOW, 2).unwrap().version,
            2
        );
        // After it, a client that saw release 3 refuses an enclave only release 2 admits.
        assert_eq!(
            admit(std::slice::from_ref(&m3), &pk, &enclave(&NEW), NOW, 2)
                .unwrap()
                .version,
            3
        );
        assert_eq!(
            admit(&[m1, m2], &pk, &enclave(&OLD), NOW, 3),
            Err(ProtocolError::ReleaseRollback {
                version: 2,
                high_water: 3
            })
        );
        assert_eq!(
            admit(&[m3], &pk, &enclave(&OLD), NOW, 3),
            Err(ProtocolError::ReleasePcrs { version: 3 })
        );
    }

    #[test]
    fn the_sigstore_form_is_read_strictly_and_told_from_cose() {
        let k = key();
        let cose = sign(&k, &manifest(1, vec![OLD]));
        assert_eq!(Signed::parse(&cose).unwrap(), Signed::Cose(&cose));
        let body = manifest(1, vec![OLD]).encode();
        let packed = pack_sigstore(&body, "{}");
        assert_eq!(
            Signed::parse(&packed).unwrap(),
            Signed::Sigstore {
                body: &body,
                bundle: "{}"
            }
        );
        let mut trailing = packed.clone();
        trailing.push(0);
        for bad in [
            &trailing[..],
            &packed[..packed.len() - 1],
            &[0xa0][..],
            &[][..],
        ] {
            assert!(matches!(
                Signed::parse(bad),
                Err(ProtocolError::MalformedManifest(_))
            ));
        }
        // Keys in another order, or the bundle as bytes.
        let mut swapped = Vec::new();
        write_head(&mut swapped, 5, 2);
        write_text(&mut swapped, "sigstore");
        write_text(&mut swapped, "{}");
        write_text(&mut swapped, "manifest");
        write_bytes(&mut swapped, &body);
        assert!(Signed::parse(&swapped).is_err());
        let mut as_bytes = Vec::new();
        write_head(&mut as_bytes, 5, 2);
        write_text(&mut as_bytes, "manifest");
        write_bytes(&mut as_bytes, &body);
        write_text(&mut as_bytes, "sigstore");
        write_bytes(&mut as_bytes, b"{}");
        assert!(Signed::parse(&as_bytes).is_err());
    }

    #[test]
    fn the_body_has_one_form() {
        let m = manifest(5, vec![OLD, NEW]);
        let body = m.encode();
        assert_eq!(Manifest::decode(&body).unwrap(), m);
        let mut v2 = body.clone();
        v2[3] = 2;
        assert!(Manifest::decode(&v2).is_err());
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(Manifest::decode(&trailing).is_err());
        let empty = Manifest { pcrs: vec![], ..m };
        assert!(Manifest::decode(&empty.encode()).is_err());
    }
}
