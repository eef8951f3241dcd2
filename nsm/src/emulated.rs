//! An NSM for machines without Nitro: documents of exactly the real structure, signed by a
//! development chain (root → intermediate → leaf, P-384) whose root says it is not AWS. Clients accept
//! them only when given that root with `--root`. Compiled only with the `emulated` feature, which the
//! enclave image leaves out, so a production binary cannot be started with a fake NSM.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use aws_nitro_enclaves_nsm_api::api::{AttestationDoc, Digest};
use confidant_certs::dev_ca::Chain;
use confidant_verifier::encode::sign_document;
use serde_bytes::ByteBuf;
use time::OffsetDateTime;

use crate::{Nsm, NsmError};

/// Files of a development CA directory (`confidant-enclave dev-ca --out DIR`).
pub const DEV_CA_FILES: [&str; 4] = [
    "root.pem",
    "root.key.pem",
    "intermediate.pem",
    "intermediate.key.pem",
];

/// Writes a new development chain to `dir` (refusing to overwrite one).
pub fn write_dev_ca(dir: &Path) -> Result<(), NsmError> {
    let err = |detail: String| NsmError::DevCa {
        dir: dir.display().to_string(),
        detail,
    };
    if dir.join("root.pem").exists() {
        return Err(err(
            "already holds a CA (root.pem); remove it to make a new one".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let chain = Chain::development(OffsetDateTime::now_utc()).map_err(|e| err(e.to_string()))?;
    for (name, text) in DEV_CA_FILES.iter().zip(chain.to_pem()) {
        std::fs::write(dir.join(name), text).map_err(|e| err(format!("{name}: {e}")))?;
    }
    restrict(&dir.join("root.key.pem"));
    restrict(&dir.join("intermediate.key.pem"));
    Ok(())
}

fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

/// Leaf certificates of the emulated NSM live 3 hours, like the real ones; a new one is issued when
/// less than this much of it remains.
const LEAF_LIFETIME: time::Duration = time::Duration::hours(3);
const LEAF_RENEW_BEFORE: time::Duration = time::Duration::minutes(30);

/// Documents of the real structure signed by the development chain.
pub struct EmulatedNsm {
    chain: Chain,
    pcrs: BTreeMap<usize, [u8; 48]>,
    module_id: String,
    leaf: Mutex<Option<(confidant_certs::dev_ca::Leaf, OffsetDateTime)>>,
    /// Test only: documents claim to be this much older than they are.
    backdate: time::Duration,
}

impl std::fmt::Debug for EmulatedNsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedNsm")
            .field("module_id", &self.module_id)
            .finish_non_exhaustive()
    }
}

impl EmulatedNsm {
    /// Loads the chain from a dev-CA directory; `pcrs` are what every document will report.
    pub fn load(dir: &Path, pcrs: BTreeMap<usize, [u8; 48]>) -> Result<EmulatedNsm, NsmError> {
        let err = |detail: String| NsmError::DevCa {
            dir: dir.display().to_string(),
            detail,
        };
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| err(format!("{name}: {e}")))
        };
        let chain = Chain::from_pem(
            &read("root.pem")?,
            &read("intermediate.pem")?,
            &read("intermediate.key.pem")?,
        )
        .map_err(|e| err(e.to_string()))?;
        let mut id = [0u8; 8];
        getrandom_fill(&mut id);
        Ok(EmulatedNsm {
            chain,
            pcrs,
            module_id: format!("i-emulated-enc{}", hex::encode(id)),
            leaf: Mutex::new(None),
            backdate: time::Duration::ZERO,
        })
    }

    /// Test only: stamp documents `secs` in the past, to exercise clients' freshness checks.
    pub fn backdated(mut self, secs: u64) -> EmulatedNsm {
        self.backdate = time::Duration::seconds(secs as i64);
        self
    }

    /// DER of the development root (what clients pin with `--root`).
    pub fn root_der(&self) -> &[u8] {
        &self.chain.root_der
    }
}

fn getrandom_fill(buf: &mut [u8]) {
    // A module id, not a secret: the OS generator without ceremony.
    let _ = getrandom::fill(buf);
}

impl Nsm for EmulatedNsm {
    fn attest(
        &self,
        user_data: &[u8],
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        let now = OffsetDateTime::now_utc();
        let mut guard = self
            .leaf
            .lock()
            .map_err(|_| NsmError::Sign("leaf lock poisoned".into()))?;
        if guard
            .as_ref()
            .is_none_or(|(_, until)| *until - now < LEAF_RENEW_BEFORE)
        {
            let names = vec![
                ("C", "US".to_string()),
                ("O", "Confidant development".to_string()),
                ("OU", "NOT AWS".to_string()),
                ("CN", format!("{}.emulated", self.module_id)),
            ];
            let leaf = self
                .chain
                .issue_leaf(
                    &names,
                    now - time::Duration::seconds(5),
                    now + LEAF_LIFETIME,
                )
                .map_err(|e| NsmError::Sign(e.to_string()))?;
            *guard = Some((leaf, now + LEAF_LIFETIME));
        }
        let Some((leaf, _)) = guard.as_ref() else {
            return Err(NsmError::Sign("no leaf".into()));
        };
        let doc = AttestationDoc {
            module_id: self.module_id.clone(),
            digest: Digest::SHA384,
            timestamp: ((now - self.backdate).unix_timestamp_nanos() / 1_000_000) as u64,
            pcrs: self
                .pcrs
                .iter()
                .map(|(i, v)| (*i, ByteBuf::from(v.to_vec())))
                .collect(),
            certificate: ByteBuf::from(leaf.cert_der.clone()),
            cabundle: vec![
                ByteBuf::from(self.chain.root_der.clone()),
                ByteBuf::from(self.chain.intermediate_der.clone()),
            ],
            public_key: public_key.map(|k| ByteBuf::from(k.to_vec())),
            user_data: Some(ByteBuf::from(user_data.to_vec())),
            nonce: nonce.map(|n| ByteBuf::from(n.to_vec())),
        };
        sign_document(&doc, &leaf.key_pkcs8, true).map_err(|e| NsmError::Sign(e.to_string()))
    }

    fn kind(&self) -> &'static str {
        "emulated"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulated_documents_verify_against_the_development_root_with_their_pcrs() {
        let dir = tempfile::tempdir().unwrap();
        write_dev_ca(dir.path()).unwrap();
        assert!(
            write_dev_ca(dir.path()).is_err(),
            "an existing CA is never overwritten"
        );
        let pcrs = crate::measure::emulated_pcrs(&[1; 48], &[2; 32]);
        let nsm = EmulatedNsm::load(dir.path(), pcrs.clone()).unwrap();
        let doc = nsm.attest(b"user data", Some(&[9; 32]), None).unwrap();
        let verifier = confidant_verifier::Verifier::new(vec![nsm.root_der().to_vec()]).unwrap();
        let mut policy = confidant_verifier::Policy::default();
        policy.expect_nonce(vec![9; 32]);
        for (i, v) in &pcrs {
            policy.pin_pcr(confidant_verifier::PcrPin::new(*i, v).unwrap());
        }
        let now = confidant_verifier::UnixMillis::now();
        let verified = verifier
            .verify(&doc, &policy, confidant_verifier::VerifyAt::Instant(now))
            .unwrap();
        assert_eq!(
            verified.doc().user_data.as_ref().unwrap().as_slice(),
            b"user data"
        );
        // And never against the AWS root.
        let aws =
            confidant_verifier::Verifier::new(vec![confidant_certs::aws_nitro_root_g1().to_vec()])
                .unwrap();
        assert_eq!(
            aws.verify(&doc, &policy, confidant_verifier::VerifyAt::Instant(now))
                .unwrap_err()
                .code(),
            confidant_verifier::Code::ChainUntrusted
        );
    }
}
