//! Step 2: the certificate path from a pinned root through `cabundle[1..]` to the leaf.
//!
//! `cabundle[0]` is never trusted: the path starts at whichever pinned root issued `cabundle[1]` (or the
//! leaf, for a one-certificate bundle). Links are checked by name and signature (older AWS certificates
//! lack key identifiers; where both are present they must agree), then basic constraints, path length and
//! key usage, then every certificate's validity at the verification time. Link signatures are remembered
//! in a [`CertCache`] so a repeat document from the same enclave costs one signature (the COSE one);
//! validity is checked on every call regardless.

use std::collections::HashSet;
use std::sync::Mutex;

use serde_bytes::ByteBuf;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ECDSA_WITH_SHA256,
    OID_SIG_ECDSA_WITH_SHA384, OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
    OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};

use crate::error::{Code, Error};
use crate::signature::{verify_ecdsa_asn1, EcdsaAlg};

/// A certificate's subject and validity, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// RFC 4514 form of the subject.
    pub subject: String,
    /// `notBefore`, unix seconds.
    pub not_before: i64,
    /// `notAfter`, unix seconds.
    pub not_after: i64,
}

/// The curve of an EC public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

/// A parsed certificate with the pieces the path checks use.
pub(crate) struct Cert<'a> {
    der: &'a [u8],
    x509: X509Certificate<'a>,
    curve: Curve,
}

impl std::fmt::Debug for Cert<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cert")
            .field("subject", &self.subject())
            .finish()
    }
}

/// Extensions a verifier understands; any other critical extension rejects the certificate.
const UNDERSTOOD: [&Oid<'static>; 5] = [
    &OID_X509_EXT_BASIC_CONSTRAINTS,
    &OID_X509_EXT_KEY_USAGE,
    &OID_X509_EXT_EXTENDED_KEY_USAGE,
    &OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
    &OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
];

impl<'a> Cert<'a> {
    /// Parses `der`; `what` names it in errors ("leaf", "cabundle[2]", "root 0").
    pub(crate) fn parse(der: &'a [u8], what: &str) -> Result<Cert<'a>, Error> {
        let bad = |detail: String| Error::new(Code::BadCertificate, format!("{what}: {detail}"));
        let (rest, x509) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| bad(format!("not a DER X.509 certificate ({e})")))?;
        if !rest.is_empty() {
            return Err(bad(format!(
                "{} trailing bytes after the certificate",
                rest.len()
            )));
        }
        if x509.signature_algorithm != x509.tbs_certificate.signature {
            return Err(bad("inner and outer signature algorithms differ".into()));
        }
        for ext in x509.extensions() {
            if ext.critical && !UNDERSTOOD.contains(&&ext.oid) {
                return Err(bad(format!("unknown critical extension {}", ext.oid)));
            }
            if let ParsedExtension::ParseError { error } = ext.parsed_extension() {
                return Err(bad(format!(
                    "extension {} does not parse ({error})",
                    ext.oid
                )));
            }
        }
        let spki = x509.public_key();
        if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
            return Err(Error::new(
                Code::UnsupportedAlg,
                format!(
                    "{what}: key algorithm {} is not EC",
                    spki.algorithm.algorithm
                ),
            ));
        }
        let curve = match spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
        {
            Some(oid) if oid == OID_NIST_EC_P384 => Curve::P384,
            Some(oid) if oid == OID_EC_P256 => Curve::P256,
            _ => {
                return Err(Error::new(
                    Code::UnsupportedAlg,
                    format!("{what}: EC key is not on P-256 or P-384"),
                ))
            }
        };
        Ok(Cert { der, x509, curve })
    }

    pub(crate) fn subject(&self) -> String {
        self.x509.subject().to_string()
    }

    pub(crate) fn summary(&self) -> CertSummary {
        CertSummary {
            subject: self.subject(),
            not_before: self.x509.validity().not_before.timestamp(),
            not_after: self.x509.validity().not_after.timestamp(),
        }
    }

    /// The uncompressed SEC1 point of the subject key.
    pub(crate) fn public_key_point(&self) -> &[u8] {
        &self.x509.public_key().subject_public_key.data
    }

    pub(crate) fn is_p384(&self) -> bool {
        self.curve == Curve::P384
    }

    fn key_identifier(&self) -> Option<&[u8]> {
        self.x509
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
                _ => None,
            })
    }

    fn authority_key_identifier(&self) -> Option<&[u8]> {
        self.x509
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0)
                }
                _ => None,
            })
    }

    /// Whether `self` issued `child`: names, key identifiers when both present, and the signature.
    fn issued(&self, child: &Cert<'_>) -> Result<(), String> {
        if self.x509.subject().as_raw() != child.x509.issuer().as_raw() {
            return Err(format!(
                "issuer `{}` of `{}` is not `{}`",
                child.x509.issuer(),
                child.subject(),
                self.subject()
            ));
        }
        if let (Some(ski), Some(aki)) = (self.key_identifier(), child.authority_key_identifier()) {
            if ski != aki {
                return Err(format!(
                    "authority key identifier of `{}` does not match `{}`",
                    child.subject(),
                    self.subject()
                ));
            }
        }
        let sig_oid = &child.x509.signature_algorithm.algorithm;
        let alg = match (self.curve, sig_oid) {
            (Curve::P384, o) if *o == OID_SIG_ECDSA_WITH_SHA384 => EcdsaAlg::P384Sha384,
            (Curve::P384, o) if *o == OID_SIG_ECDSA_WITH_SHA256 => EcdsaAlg::P384Sha256,
            (Curve::P256, o) if *o == OID_SIG_ECDSA_WITH_SHA256 => EcdsaAlg::P256Sha256,
            (Curve::P256, o) if *o == OID_SIG_ECDSA_WITH_SHA384 => EcdsaAlg::P256Sha384,
            _ => {
                return Err(format!(
                    "`{}` is signed with unsupported algorithm {sig_oid}",
                    child.subject()
                ))
            }
        };
        if verify_ecdsa_asn1(
            alg,
            self.public_key_point(),
            child.x509.tbs_certificate.as_ref(),
            &child.x509.signature_value.data,
        ) {
            Ok(())
        } else {
            Err(format!(
                "signature on `{}` does not verify under `{}`",
                child.subject(),
                self.subject()
            ))
        }
    }
}

/// Link signatures already verified, keyed by SHA-256 of the issuer's and the subject's DER.
///
/// Only the cryptographic link is remembered: names, constraints and validity are re-checked on every
/// verification. Bounded: when full it is cleared (a working set of one enclave's chain is four links).
#[derive(Debug)]
pub struct CertCache {
    links: Mutex<HashSet<[u8; 64]>>,
    capacity: usize,
}

impl Default for CertCache {
    fn default() -> Self {
        CertCache::with_capacity(4096)
    }
}

impl CertCache {
    /// A cache holding at most `capacity` links.
    pub fn with_capacity(capacity: usize) -> CertCache {
        CertCache {
            links: Mutex::new(HashSet::new()),
            capacity,
        }
    }

    /// A cache that remembers nothing (every verification is cold).
    pub fn disabled() -> CertCache {
        CertCache::with_capacity(0)
    }

    fn key(issuer: &Cert<'_>, child: &Cert<'_>) -> [u8; 64] {
        let mut key = [0u8; 64];
        key[..32].copy_from_slice(ring::digest::digest(&ring::digest::SHA256, issuer.der).as_ref());
        key[32..].copy_from_slice(ring::digest::digest(&ring::digest::SHA256, child.der).as_ref());
        key
    }

    /// Whether `issuer` → `child` was verified before. A disabled cache hashes nothing.
    fn contains(&self, issuer: &Cert<'_>, child: &Cert<'_>) -> bool {
        self.capacity > 0
            && self
                .links
                .lock()
                .is_ok_and(|set| set.contains(&CertCache::key(issuer, child)))
    }

    fn insert(&self, issuer: &Cert<'_>, child: &Cert<'_>) {
        if self.capacity == 0 {
            return;
        }
        let key = CertCache::key(issuer, child);
        if let Ok(mut set) = self.links.lock() {
            if set.len() >= self.capacity {
                set.clear();
            }
            set.insert(key);
        }
    }

    /// Number of links remembered.
    pub fn len(&self) -> usize {
        self.links.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the path check established.
#[derive(Debug)]
pub(crate) struct PathOutcome {
    /// Index into the roots of the anchor used.
    pub root_index: usize,
    /// Links whose signature was taken from the cache.
    pub cached_links: usize,
    /// Total links checked (root→…→leaf).
    pub links: usize,
}

/// Checks the path `root → bundle[1..] → leaf` at `at_ms` (unix milliseconds).
pub(crate) fn verify_path(
    roots: &[Cert<'_>],
    bundle: &[Cert<'_>],
    leaf: &Cert<'_>,
    at_ms: i128,
    cache: &CertCache,
) -> Result<PathOutcome, Error> {
    let untrusted = |detail: String| Error::new(Code::ChainUntrusted, detail);
    // The chain below the anchor: cabundle[1..], then the leaf.
    let below: Vec<&Cert<'_>> = bundle.iter().skip(1).chain(std::iter::once(leaf)).collect();
    let first = below[0];

    // Anchor: a pinned root that issued the first certificate below it.
    let mut anchor = None;
    let mut last_error = None;
    let mut cached_links = 0;
    for (i, root) in roots.iter().enumerate() {
        if cache.contains(root, first) {
            anchor = Some(i);
            cached_links += 1;
            break;
        }
        match root.issued(first) {
            Ok(()) => {
                cache.insert(root, first);
                anchor = Some(i);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let root_index = anchor.ok_or_else(|| {
        untrusted(match last_error {
            Some(e) => format!("no pinned root issued the chain: {e}"),
            None => "no pinned root".into(),
        })
    })?;
    let root = &roots[root_index];

    // Links down the bundle to the leaf.
    let mut path: Vec<&Cert<'_>> = Vec::with_capacity(below.len() + 1);
    path.push(root);
    path.extend(below.iter().copied());
    for pair in path.windows(2).skip(1) {
        let (issuer, child) = (pair[0], pair[1]);
        if cache.contains(issuer, child) {
            cached_links += 1;
            continue;
        }
        issuer.issued(child).map_err(untrusted)?;
        cache.insert(issuer, child);
    }

    // Constraints: every certificate but the leaf is a CA allowed to sign certificates, with room in its
    // path length for the CAs below it; the leaf is not a CA and may sign.
    let ca_count = path.len() - 1; // root and intermediates
    for (i, cert) in path.iter().enumerate() {
        let subject = cert.subject();
        let bc = cert.x509.basic_constraints().map_err(|e| {
            Error::new(
                Code::BadCertificate,
                format!("`{subject}`: basic constraints: {e}"),
            )
        })?;
        let ku = cert.x509.key_usage().map_err(|e| {
            Error::new(Code::BadCertificate, format!("`{subject}`: key usage: {e}"))
        })?;
        let bad_bc = |d: String| Error::new(Code::BadBasicConstraints, format!("`{subject}`: {d}"));
        let bad_ku = |d: String| Error::new(Code::BadKeyUsage, format!("`{subject}`: {d}"));
        if i < ca_count {
            let bc = bc.ok_or_else(|| bad_bc("a CA without basic constraints".into()))?;
            if !bc.value.ca {
                return Err(bad_bc(
                    "issues certificates but is not a CA (cA=false)".into(),
                ));
            }
            // Intermediate CAs below this one (the leaf does not count).
            let below_cas = (ca_count - 1 - i) as u32;
            if let Some(max) = bc.value.path_len_constraint {
                if below_cas > max {
                    return Err(bad_bc(format!(
                        "path length {below_cas} exceeds its constraint {max}"
                    )));
                }
            }
            match ku {
                Some(ku) if ku.value.key_cert_sign() => {}
                Some(_) => return Err(bad_ku("a CA whose key usage lacks keyCertSign".into())),
                None => return Err(bad_ku("a CA without key usage".into())),
            }
        } else {
            if bc.is_some_and(|bc| bc.value.ca) {
                return Err(bad_bc("the leaf is a CA".into()));
            }
            if let Some(ku) = ku {
                if !ku.value.digital_signature() {
                    return Err(bad_ku("the leaf's key usage lacks digitalSignature".into()));
                }
            }
        }
    }

    // Validity of every certificate at the verification time, leaf first: the leaf expires first.
    for cert in path.iter().rev() {
        let summary = cert.summary();
        if at_ms < i128::from(summary.not_before) * 1000 {
            return Err(Error::new(
                Code::CertNotYetValid,
                format!(
                    "`{}` is valid from {}, verification time is {}",
                    summary.subject,
                    rfc3339_ms(i128::from(summary.not_before) * 1000),
                    rfc3339_ms(at_ms)
                ),
            ));
        }
        if at_ms > i128::from(summary.not_after) * 1000 {
            return Err(Error::new(
                Code::CertExpired,
                format!(
                    "`{}` expired at {}, verification time is {}",
                    summary.subject,
                    rfc3339_ms(i128::from(summary.not_after) * 1000),
                    rfc3339_ms(at_ms)
                ),
            ));
        }
    }

    Ok(PathOutcome {
        root_index,
        cached_links,
        links: path.len() - 1,
    })
}

/// RFC 3339 form of unix milliseconds, for messages.
pub(crate) fn rfc3339_ms(ms: i128) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// Parses the document's certificates: the bundle in order, then the leaf.
pub(crate) fn parse_document_certs<'a>(
    bundle: &'a [ByteBuf],
    leaf: &'a [u8],
) -> Result<(Vec<Cert<'a>>, Cert<'a>), Error> {
    let bundle = bundle
        .iter()
        .enumerate()
        .map(|(i, der)| Cert::parse(der, &format!("cabundle[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = Cert::parse(leaf, "leaf certificate")?;
    Ok((bundle, leaf))
}
