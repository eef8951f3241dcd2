//! The development CA for the emulated NSM, and any other chain the project makes for itself.
//!
//! A [`Chain`] is a P-384 root and one intermediate, like the top of the AWS chain; [`Chain::issue_leaf`]
//! makes short-lived leaf certificates (the real NSM's live 3 hours) whose keys sign attestation
//! documents. Keys are PKCS#8 DER, which `ring` reads directly, and are zeroized on drop.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P384_SHA384,
};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// Why a chain could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum DevCaError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what}: {source}")]
    Pem {
        what: &'static str,
        source: crate::pem::PemError,
    },
    #[error("{0} holds {1} certificates, expected exactly one")]
    NotOne(&'static str, usize),
}

/// The subject of one certificate, as (attribute, value) pairs in order. Attributes: C, ST, L, O, OU, CN.
pub type Names = Vec<(&'static str, String)>;

/// Names of the development root: it says plainly that it is not AWS.
pub fn development_root_names() -> Names {
    vec![
        ("C", "US".into()),
        ("O", "Confidant development".into()),
        ("OU", "NOT AWS".into()),
        ("CN", "confidant development root (not AWS Nitro)".into()),
    ]
}

/// Names of the development intermediate.
pub fn development_intermediate_names() -> Names {
    vec![
        ("C", "US".into()),
        ("O", "Confidant development".into()),
        ("OU", "NOT AWS".into()),
        ("CN", "confidant development intermediate".into()),
    ]
}

fn distinguished_name(names: &Names) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (attr, value) in names {
        let ty = match *attr {
            "C" => DnType::CountryName,
            "ST" => DnType::StateOrProvinceName,
            "L" => DnType::LocalityName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            _ => DnType::CommonName,
        };
        dn.push(ty, value.clone());
    }
    dn
}

fn ca_params(
    names: &Names,
    path_len: u8,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(names);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

/// A leaf certificate and its signing key.
#[derive(Debug)]
pub struct Leaf {
    pub cert_der: Vec<u8>,
    pub key_pkcs8: Zeroizing<Vec<u8>>,
}

/// A root and an intermediate, with their keys.
pub struct Chain {
    pub root_der: Vec<u8>,
    pub root_key_pkcs8: Zeroizing<Vec<u8>>,
    pub intermediate_der: Vec<u8>,
    pub intermediate_key_pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain").finish_non_exhaustive()
    }
}

impl Chain {
    /// The development chain: root valid 20 years, intermediate 10, from `now`.
    pub fn development(now: OffsetDateTime) -> Result<Chain, DevCaError> {
        Self::generate(
            &development_root_names(),
            &development_intermediate_names(),
            now - time::Duration::hours(1),
            now + time::Duration::days(365 * 10),
        )
    }

    /// A root and an intermediate with the given names and validity (the same for both).
    pub fn generate(
        root_names: &Names,
        intermediate_names: &Names,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Chain, DevCaError> {
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let root_params = ca_params(root_names, 2, not_before, not_after);
        let root_cert = root_params.self_signed(&root_key)?;
        let root = Issuer::new(root_params, &root_key);

        let inter_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let inter_params = ca_params(intermediate_names, 1, not_before, not_after);
        let inter_cert = inter_params.signed_by(&inter_key, &root)?;

        Ok(Chain {
            root_der: root_cert.der().to_vec(),
            root_key_pkcs8: Zeroizing::new(root_key.serialize_der()),
            intermediate_der: inter_cert.der().to_vec(),
            intermediate_key_pkcs8: Zeroizing::new(inter_key.serialize_der()),
        })
    }

    /// A leaf for `names`, issued by the intermediate, valid over `[not_before, not_after]`.
    pub fn issue_leaf(
        &self,
        names: &Names,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Leaf, DevCaError> {
        let inter_key = KeyPair::try_from(self.intermediate_key_pkcs8.as_slice())?;
        let issuer =
            Issuer::from_ca_cert_der(&self.intermediate_der.as_slice().into(), &inter_key)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(names);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Leaf {
            cert_der: cert.der().to_vec(),
            key_pkcs8: Zeroizing::new(key.serialize_der()),
        })
    }

    /// The chain as four PEM texts: root cert, root key, intermediate cert, intermediate key.
    pub fn to_pem(&self) -> [String; 4] {
        let key_pem = |der: &[u8]| ::pem::encode(&::pem::Pem::new("PRIVATE KEY", der.to_vec()));
        [
            crate::pem::certificate_to_pem(&self.root_der),
            key_pem(&self.root_key_pkcs8),
            crate::pem::certificate_to_pem(&self.intermediate_der),
            key_pem(&self.intermediate_key_pkcs8),
        ]
    }

    /// Reads a chain written by [`Chain::to_pem`]. The root key is optional: the emulated NSM only
    /// needs the intermediate to issue leaves.
    pub fn from_pem(
        root_cert: &str,
        intermediate_cert: &str,
        intermediate_key: &str,
    ) -> Result<Chain, DevCaError> {
        let one = |what: &'static str, text: &str| -> Result<Vec<u8>, DevCaError> {
            let mut certs = crate::pem::certificates_from_pem(text)
                .map_err(|source| DevCaError::Pem { what, source })?;
            if certs.len() != 1 {
                return Err(DevCaError::NotOne(what, certs.len()));
            }
            Ok(certs.remove(0))
        };
        let key = ::pem::parse(intermediate_key).map_err(|e| DevCaError::Pem {
            what: "intermediate key",
            source: crate::pem::PemError::Invalid(e.to_string()),
        })?;
        Ok(Chain {
            root_der: one("root certificate", root_cert)?,
            root_key_pkcs8: Zeroizing::new(Vec::new()),
            intermediate_der: one("intermediate certificate", intermediate_cert)?,
            intermediate_key_pkcs8: Zeroizing::new(key.into_contents()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_chain_issues_leaves_and_round_trips_through_pem() {
        let now = OffsetDateTime::now_utc();
        let chain = Chain::development(now).unwrap();
        let [root, _root_key, inter, inter_key] = chain.to_pem();
        let loaded = Chain::from_pem(&root, &inter, &inter_key).unwrap();
        assert_eq!(loaded.root_der, chain.root_der);
        let leaf = loaded
            .issue_leaf(
                &vec![("CN", "leaf".to_string())],
                now,
                now + time::Duration::hours(3),
            )
            .unwrap();
        assert!(!leaf.cert_der.is_empty());
        // ring must be able to sign with the generated leaf key.
        let rng = ring::rand::SystemRandom::new();
        ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &leaf.key_pkcs8,
            &rng,
        )
        .unwrap();
    }
}
