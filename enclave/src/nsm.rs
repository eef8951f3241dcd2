//! The Nitro Security Module: the real device (`/dev/nsm`), or an emulation that signs documents of the
//! real structure with the development chain, for machines without Nitro.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use aws_nitro_enclaves_nsm_api::api::{AttestationDoc, Digest, Request, Response};
use confidant_certs::dev_ca::Chain;
use confidant_verifier::encode::sign_document;
use serde_bytes::ByteBuf;
use time::OffsetDateTime;

/// Why the NSM produced no document.
#[derive(Debug, thiserror::Error)]
pub enum NsmError {
    #[error("cannot open /dev/nsm (not inside a Nitro Enclave?)")]
    NoDevice,
    #[error("the NSM refused: {0}")]
    Refused(String),
    #[error("development CA in {dir}: {detail}")]
    DevCa { dir: String, detail: String },
    #[error("signing the document failed: {0}")]
    Sign(String),
}

/// Something that makes attestation documents.
pub trait Nsm: Send + Sync {
    /// A signed document carrying `user_data`, `nonce` and `public_key`.
    fn attest(
        &self,
        user_data: &[u8],
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError>;
    /// "device" or "emulated".
    fn kind(&self) -> &'static str;
}

/// `/dev/nsm` through `aws-nitro-enclaves-nsm-api`.
#[derive(Debug)]
pub struct DeviceNsm {
    fd: i32,
}

impl DeviceNsm {
    pub fn open() -> Result<DeviceNsm, NsmError> {
        let fd = aws_nitro_enclaves_nsm_api::driver::nsm_init();
        if fd < 0 {
            return Err(NsmError::NoDevice);
        }
        Ok(DeviceNsm { fd })
    }
}

impl Drop for DeviceNsm {
    fn drop(&mut self) {
        aws_nitro_enclaves_nsm_api::driver::nsm_exit(self.fd);
    }
}

/// The request the device is sent (separate so it can be unit-tested without a device).
pub fn attestation_request(
    user_data: &[u8],
    nonce: Option<&[u8]>,
    public_key: Option<&[u8]>,
) -> Request {
    Request::Attestation {
        user_data: Some(ByteBuf::from(user_data.to_vec())),
        nonce: nonce.map(|n| ByteBuf::from(n.to_vec())),
        public_key: public_key.map(|k| ByteBuf::from(k.to_vec())),
    }
}

/// The document in a device response, or why there is none.
pub fn document_from_response(response: Response) -> Result<Vec<u8>, NsmError> {
    match response {
        Response::Attestation { document } => Ok(document),
        Response::Error(code) => Err(NsmError::Refused(format!("{code:?}"))),
        other => Err(NsmError::Refused(format!("unexpected response {other:?}"))),
    }
}

impl Nsm for DeviceNsm {
    fn attest(
        &self,
        user_data: &[u8],
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        let request = attestation_request(user_data, nonce, public_key);
        document_from_response(aws_nitro_enclaves_nsm_api::driver::nsm_process_request(
            self.fd, request,
        ))
    }

    fn kind(&self) -> &'static str {
        "device"
    }
}

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
    use hpke::rand_core::Rng;
    confidant_protocol::system_rng().fill_bytes(buf);
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
    use aws_nitro_enclaves_nsm_api::api::ErrorCode;

    #[test]
    fn device_requests_and_responses_map_to_the_crate_types() {
        match attestation_request(b"ud", Some(b"nonce"), None) {
            Request::Attestation {
                user_data,
                nonce,
                public_key,
            } => {
                assert_eq!(user_data.unwrap().as_slice(), b"ud");
                assert_eq!(nonce.unwrap().as_slice(), b"nonce");
                assert!(public_key.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            document_from_response(Response::Attestation {
                document: vec![1, 2]
            })
            .unwrap(),
            vec![1, 2]
        );
        assert!(matches!(
            document_from_response(Response::Error(ErrorCode::InvalidArgument)),
            Err(NsmError::Refused(_))
        ));
        assert!(matches!(
            document_from_response(Response::GetRandom { random: vec![] }),
            Err(NsmError::Refused(_))
        ));
    }

    #[test]
    fn without_dev_nsm_the_device_is_reported_missing_not_a_panic() {
        if !std::path::Path::new("/dev/nsm").exists() {
            assert!(matches!(DeviceNsm::open(), Err(NsmError::NoDevice)));
        }
    }

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
        let mut policy = confidant_verifier::Policy {
            nonce: Some(vec![9; 32]),
            max_age_ms: Some(60_000),
            ..Default::default()
        };
        for (i, v) in &pcrs {
            policy.pin_pcr(*i, v.to_vec()).unwrap();
        }
        let now = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64;
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
