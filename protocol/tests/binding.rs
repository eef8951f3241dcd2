//! From a verified document to a recipient key: every commitment is checked, and nothing but a
//! document the verifier accepted can be used.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use confidant_certs::dev_ca::Chain;
use confidant_protocol::keyconfig::{encode_list, KeyPair};
use confidant_protocol::request::{self, CONFIDANT_LABELS};
use confidant_protocol::user_data::{sha256, UserData};
use confidant_protocol::{Aead, Expectations, Kem, ProtocolError, Recipient, UnixMillis};
use confidant_verifier::encode::sign_document;
use confidant_verifier::{AttestationDoc, Policy, Verified, Verifier, VerifyAt};
use serde_bytes::ByteBuf;

struct Fixture {
    verifier: Verifier,
    chain: Chain,
    keys: Vec<KeyPair>,
    list: Vec<u8>,
    now: time::OffsetDateTime,
}

fn fixture() -> Fixture {
    let now = time::OffsetDateTime::now_utc();
    let chain = Chain::development(now).unwrap();
    let keys = vec![
        KeyPair::derive(1, Kem::X25519HkdfSha256, &[1; 32], &[Aead::Aes128Gcm]),
        KeyPair::derive(
            2,
            Kem::XWing,
            &[2; 32],
            &[Aead::Aes256Gcm, Aead::ChaCha20Poly1305],
        ),
    ];
    let list = encode_list(&keys.iter().map(|k| k.config.clone()).collect::<Vec<_>>());
    let verifier = Verifier::new(vec![chain.root_der.clone()]).unwrap();
    Fixture {
        verifier,
        chain,
        keys,
        list,
        now,
    }
}

impl Fixture {
    fn document(&self, user_data: Option<Vec<u8>>) -> Vec<u8> {
        let leaf = self
            .chain
            .issue_leaf(
                &vec![("CN", "test enclave".to_string())],
                self.now - time::Duration::minutes(1),
                self.now + time::Duration::hours(3),
            )
            .unwrap();
        let mut pcrs = BTreeMap::new();
        for i in 0..16 {
            pcrs.insert(i, ByteBuf::from(vec![i as u8 + 1; 48]));
        }
        let doc = AttestationDoc {
            module_id: "test-enclave".into(),
            digest: aws_nitro_enclaves_nsm_api::api::Digest::SHA384,
            timestamp: (self.now.unix_timestamp() * 1000) as u64,
            pcrs,
            certificate: ByteBuf::from(leaf.cert_der),
            cabundle: vec![
                ByteBuf::from(self.chain.root_der.clone()),
                ByteBuf::from(self.chain.intermediate_der.clone()),
            ],
            public_key: None,
            user_data: user_data.map(ByteBuf::from),
            nonce: None,
        };
        sign_document(&doc, &leaf.key_pkcs8, true).unwrap()
    }

    fn verified(&self, user_data: Option<Vec<u8>>) -> Verified {
        let bytes = self.document(user_data);
        self.verifier
            .verify(
                &bytes,
                &Policy::default(),
                VerifyAt::Instant(UnixMillis::from_secs(self.now.unix_timestamp() as u64)),
            )
            .unwrap()
    }

    fn user_data(&self, settings: Option<[u8; 32]>, exp_offset: i64) -> UserData {
        UserData {
            dtype: None,
            limits: None,
            kc: sha256(&self.list),
            model: [5; 32],
            settings,
            exp: UnixMillis::from_secs((self.now.unix_timestamp() + exp_offset) as u64),
            id: None,
            rk: None,
        }
    }

    fn expect(&self) -> Expectations {
        Expectations {
            model: Some([5; 32]),
            settings: None,
            dtype: None,
            now: UnixMillis::from_secs(self.now.unix_timestamp() as u64),
        }
    }
}

#[test]
fn a_verified_document_yields_the_x_wing_key_and_requests_reach_the_enclave() {
    let f = fixture();
    let verified = f.verified(Some(f.user_data(None, 3600).encode()));
    let r = Recipient::from_attestation(&verified, &f.list, &f.expect()).unwrap();
    assert_eq!(r.config.key_id, 2);
    assert_eq!(r.suite.kem, Kem::XWing);
    assert_eq!(r.suite.aead, Aead::Aes256Gcm);
    assert_eq!(&r.attestation_sha256, verified.document_sha256());

    let mut rng = confidant_protocol::system_rng();
    let (bytes, _) = request::encapsulate(
        &r.config,
        r.suite,
        &r.attestation_sha256,
        b"hello",
        &CONFIDANT_LABELS,
        &mut rng,
    )
    .unwrap();
    let server = request::decapsulate(
        &f.keys,
        verified.document_sha256(),
        &bytes,
        &CONFIDANT_LABELS,
    )
    .unwrap();
    assert_eq!(&server.plaintext[..], b"hello");
    // Redirected to another document (another enclave instance with the same key): it does not open.
    assert_eq!(
        request::decapsulate(&f.keys, &[0; 32], &bytes, &CONFIDANT_LABELS).unwrap_err(),
        ProtocolError::RequestDecrypt
    );
}

#[test]
fn every_commitment_is_checked() {
    let f = fixture();
    let good = f.user_data(Some([6; 32]), 3600);
    let v = f.verified(Some(good.encode()));
    let ok = Recipient::from_attestation(&v, &f.list, &f.expect());
    assert!(ok.is_ok());

    // Another key-config list than the one attested.
    let other = encode_list(&[f.keys[0].config.clone()]);
    assert_eq!(
        Recipient::from_attestation(&v, &other, &f.expect()).unwrap_err(),
        ProtocolError::KeyConfigsMismatch
    );
    // Model pin.
    let mut e = f.expect();
    e.model = Some([9; 32]);
    assert_eq!(
        Recipient::from_attestation(&v, &f.list, &e).unwrap_err(),
        ProtocolError::ModelMismatch
    );
    // Settings pin: wrong value, and a pin on a document without settings.
    let mut e = f.expect();
    e.settings = Some([7; 32]);
    assert_eq!(
        Recipient::from_attestation(&v, &f.list, &e).unwrap_err(),
        ProtocolError::SettingsMismatch
    );
    let without = f.verified(Some(f.user_data(None, 3600).encode()));
    let mut e = f.expect();
    e.settings = Some([6; 32]);
    assert_eq!(
        Recipient::from_attestation(&without, &f.list, &e).unwrap_err(),
        ProtocolError::SettingsMismatch
    );
    // Dtype pin: on a document without a dtype, then with another, then with it.
    let mut e = f.expect();
    e.dtype = Some("int8".into());
    assert_eq!(
        Recipient::from_attestation(&without, &f.list, &e).unwrap_err(),
        ProtocolError::DtypeMismatch
    );
    let mut ud = f.user_data(None, 3600);
    ud.dtype = Some("bf16".into());
    let bf16 = f.verified(Some(ud.encode()));
    assert_eq!(
        Recipient::from_attestation(&bf16, &f.list, &e).unwrap_err(),
        ProtocolError::DtypeMismatch
    );
    e.dtype = Some("bf16".into());
    assert!(Recipient::from_attestation(&bf16, &f.list, &e).is_ok());
    // Expired keys.
    let expired = f.verified(Some(f.user_data(None, -1).encode()));
    assert!(matches!(
        Recipient::from_attestation(&expired, &f.list, &f.expect()).unwrap_err(),
        ProtocolError::KeysExpired { .. }
    ));
    // No user_data, or garbage.
    let none = f.verified(None);
    assert!(matches!(
        Recipient::from_attestation(&none, &f.list, &f.expect()).unwrap_err(),
        ProtocolError::MalformedUserData(_)
    ));
    let garbage = f.verified(Some(b"not cbor".to_vec()));
    assert!(matches!(
        Recipient::from_attestation(&garbage, &f.list, &f.expect()).unwrap_err(),
        ProtocolError::MalformedUserData(_)
    ));
}

#[test]
fn only_unsupported_suites_are_refused() {
    let f = fixture();
    // A list whose only entry has an unknown KEM (0x0010, P-256): nothing to encrypt to.
    let mut list = vec![0, 74, 5, 0x00, 0x10];
    list.extend_from_slice(&[4; 65]);
    list.extend_from_slice(&[0, 4, 0, 1, 0, 1]);
    let ud = UserData {
        dtype: None,
        limits: None,
        kc: sha256(&list),
        model: [5; 32],
        settings: None,
        exp: UnixMillis::from_secs((f.now.unix_timestamp() + 60) as u64),
        id: None,
        rk: None,
    };
    let v = f.verified(Some(ud.encode()));
    assert_eq!(
        Recipient::from_attestation(&v, &list, &f.expect()).unwrap_err(),
        ProtocolError::NoSupportedSuite
    );
}
