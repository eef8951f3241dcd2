//! Releases signed through Sigstore. The operator writes a manifest's body (`release-sign
//! --body-out`), `cosign sign-blob --key … --bundle` signs it with the release key and logs it in
//! Rekor, and `release-pack` joins the two for the relay. Here a one-entry transparency log of the
//! test's own (an ECDSA P-256 key, as Rekor's) stands in for Rekor, and the bundle is made as cosign
//! makes it with its default key (`cosign generate-key-pair`, ECDSA P-256): a hashedrekord v0.0.1
//! entry over the body's SHA-256, the signature over that digest, an inclusion proof with a signed
//! checkpoint and a signed entry timestamp. The client, pinning the trusted root and `cosign.pub`,
//! admits it — and refuses every alteration, another log, another key, and a Sigstore-signed
//! manifest when it pins no Sigstore key.

#![allow(clippy::unwrap_used)]

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use confidant_client::sigstore::{open_item, SigstorePin};
use confidant_e2e::*;
use confidant_protocol::release::{self, Manifest};
use confidant_protocol::{ProtocolError, UnixMillis};
use serde_json::{json, Value};

/// DER SubjectPublicKeyInfo header of an uncompressed P-256 point.
const P256_SPKI_PREFIX: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";

fn p256_key() -> EcdsaKeyPair {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap()
}

fn spki(key: &EcdsaKeyPair) -> Vec<u8> {
    let mut spki = hex::decode(P256_SPKI_PREFIX).unwrap();
    spki.extend_from_slice(key.public_key().as_ref());
    spki
}

/// `cosign.pub`: the SubjectPublicKeyInfo as PEM.
fn pem(key: &EcdsaKeyPair) -> String {
    let b64 = B64.encode(spki(key));
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

fn sha256(data: &[u8]) -> [u8; 32] {
    digest(&SHA256, data).as_ref().try_into().unwrap()
}

/// A transparency log holding one entry per bundle (tree size 1: the root is the leaf's hash).
struct TestLog {
    key: EcdsaKeyPair,
    spki: Vec<u8>,
    log_id: [u8; 32],
}

impl TestLog {
    fn new() -> TestLog {
        let key = p256_key();
        let spki = spki(&key);
        let log_id = sha256(&spki);
        TestLog { key, spki, log_id }
    }

    fn sign(&self, data: &[u8]) -> Vec<u8> {
        self.key
            .sign(&SystemRandom::new(), data)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    /// A trusted root naming only this log, as `cosign trusted-root create` writes one.
    fn trusted_root(&self) -> String {
        json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{
                "baseUrl": "https://log.confidant.test",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": B64.encode(&self.spki),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": "2020-01-01T00:00:00Z"}
                },
                "logId": {"keyId": B64.encode(self.log_id)}
            }],
            "certificateAuthorities": [],
            "ctlogs": [],
            "timestampAuthorities": []
        })
        .to_string()
    }

    /// What `cosign sign-blob --key` returns for `artifact` signed by `signer`, logged here.
    fn bundle(&self, artifact: &[u8], signer: &EcdsaKeyPair) -> Value {
        let artifact_digest = sha256(artifact);
        let signature = signer
            .sign(&SystemRandom::new(), artifact)
            .unwrap()
            .as_ref()
            .to_vec();
        let signer_pem = pem(signer);
        let body = json!({
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": hex::encode(artifact_digest)}},
                "signature": {
                    "content": B64.encode(&signature),
                    "publicKey": {"content": B64.encode(&signer_pem)}
                }
            }
        })
        .to_string();
        let mut leaf = vec![0u8];
        leaf.extend_from_slice(body.as_bytes());
        let root = sha256(&leaf);
        let note = format!("log.confidant.test - 1\n1\n{}\n", B64.encode(root));
        let mut hinted = self.log_id[..4].to_vec();
        hinted.extend(self.sign(note.as_bytes()));
        let checkpoint = format!(
            "{note}\n\u{2014} log.confidant.test {}\n",
            B64.encode(hinted)
        );
        let integrated = UnixMillis::now().as_secs() - 60;
        // The signed entry timestamp: the log's signature over the entry in canonical JSON (keys
        // in order, no spaces).
        let set_payload = format!(
            r#"{{"body":"{}","integratedTime":{integrated},"logID":"{}","logIndex":0}}"#,
            B64.encode(&body),
            hex::encode(self.log_id)
        );
        json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "publicKey": {"hint": B64.encode(sha256(&spki(signer)))},
                "tlogEntries": [{
                    "logIndex": "0",
                    "logId": {"keyId": B64.encode(self.log_id)},
                    "kindVersion": {"kind": "hashedrekord", "version": "0.0.1"},
                    "integratedTime": integrated.to_string(),
                    "inclusionPromise": {
                        "signedEntryTimestamp": B64.encode(self.sign(set_payload.as_bytes()))
                    },
                    "inclusionProof": {
                        "logIndex": "0",
                        "rootHash": B64.encode(root),
                        "treeSize": "1",
                        "hashes": [],
                        "checkpoint": {"envelope": checkpoint}
                    },
                    "canonicalizedBody": B64.encode(&body)
                }]
            },
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": B64.encode(artifact_digest)},
                "signature": B64.encode(&signature)
            }
        })
    }
}

fn manifest(version: u64) -> Manifest {
    let now = UnixMillis::now().as_secs();
    Manifest {
        version,
        not_before: UnixMillis::from_secs(now - 3600),
        expires: UnixMillis::from_secs(now + 86_400),
        pcrs: vec![[[1; 48], [2; 48], [3; 48]]],
        model: [7; 32],
        settings: None,
    }
}

fn refused(r: Result<Manifest, ProtocolError>) -> String {
    match r {
        Err(ProtocolError::ReleaseSigstore(why)) => why,
        other => panic!("expected release_sigstore, got {other:?}"),
    }
}

#[test]
fn a_logged_signature_by_the_release_key_admits_and_every_alteration_is_refused() {
    let log = TestLog::new();
    let key = p256_key();
    let pin = SigstorePin::new(&log.trusted_root(), &pem(&key)).unwrap();
    let m = manifest(3);
    let body = m.encode();
    let bundle = log.bundle(&body, &key);
    let item = release::pack_sigstore(&body, &bundle.to_string());
    let open = |item: &[u8], pin: &SigstorePin| open_item(item, None, Some(pin));

    assert_eq!(open(&item, &pin).unwrap(), m);
    // The same item is refused with only a COSE release key pinned: the log is the point.
    refused(open_item(&item, Some(&[4; 97]), None));

    // Another key pinned.
    let other = p256_key();
    refused(open(
        &item,
        &SigstorePin::new(&log.trusted_root(), &pem(&other)).unwrap(),
    ));
    // Another log's root: the checkpoint's signer is unknown.
    refused(open(
        &item,
        &SigstorePin::new(&TestLog::new().trusted_root(), &pem(&key)).unwrap(),
    ));
    // Signed and logged, but by another key.
    let forged = release::pack_sigstore(&body, &log.bundle(&body, &other).to_string());
    refused(open(&forged, &pin));
    // A body other than the one signed (release 4 under release 3's bundle).
    let swapped = release::pack_sigstore(&manifest(4).encode(), &bundle.to_string());
    refused(open(&swapped, &pin));

    // Each part of the bundle altered.
    type Edit = fn(&mut Value);
    let edits: [(&str, Edit); 7] = [
        ("no log entry", |b| {
            b["verificationMaterial"]["tlogEntries"] = json!([]);
        }),
        ("no inclusion proof", |b| {
            let e = &mut b["verificationMaterial"]["tlogEntries"][0];
            e.as_object_mut().unwrap().remove("inclusionProof");
        }),
        ("another root hash", |b| {
            b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["rootHash"] =
                json!(B64.encode([9u8; 32]));
        }),
        ("checkpoint signature", |b| {
            let c = &mut b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]
                ["checkpoint"]["envelope"];
            let text = c.as_str().unwrap().to_string();
            let (head, sig) = text.rsplit_once(' ').unwrap();
            let mut raw = B64.decode(sig.trim()).unwrap();
            let last = raw.len() - 1;
            raw[last] ^= 1;
            *c = json!(format!("{head} {}\n", B64.encode(raw)));
        }),
        ("logged body", |b| {
            let e = &mut b["verificationMaterial"]["tlogEntries"][0]["canonicalizedBody"];
            let mut raw = B64.decode(e.as_str().unwrap()).unwrap();
            let i = raw.len() / 2;
            raw[i] ^= 1;
            *e = json!(B64.encode(raw));
        }),
        ("message signature", |b| {
            let s = &mut b["messageSignature"]["signature"];
            let mut raw = B64.decode(s.as_str().unwrap()).unwrap();
            let last = raw.len() - 1;
            raw[last] ^= 1;
            *s = json!(B64.encode(raw));
        }),
        ("signed entry timestamp", |b| {
            let s = &mut b["verificationMaterial"]["tlogEntries"][0]["inclusionPromise"]
                ["signedEntryTimestamp"];
            let mut raw = B64.decode(s.as_str().unwrap()).unwrap();
            let last = raw.len() - 1;
            raw[last] ^= 1;
            *s = json!(B64.encode(raw));
        }),
    ];
    // What each failure says it is (sigstore-verify's words).
    let said = [
        "must have an inclusion proof",
        "must have an inclusion proof",
        "root hash does not match checkpoint",
        "No valid Rekor signature found on checkpoint",
        "inclusion proof verification failed",
        "signature verification failed",
        "SET verification failed",
    ];
    for ((what, edit), said) in edits.into_iter().zip(said) {
        let mut b = bundle.clone();
        edit(&mut b);
        let item = release::pack_sigstore(&body, &b.to_string());
        let why = refused(open(&item, &pin));
        assert!(why.contains(said), "{what}: {why}");
    }
    // Not a bundle at all.
    refused(open(&release::pack_sigstore(&body, "{}"), &pin));
}

/// The operator's flow end to end: `release-sign --body-out`, the bundle (as `cosign sign-blob
/// --key cosign.key --bundle` makes it), `release-pack`, the relay serving it, and a client that
/// pins `cosign.pub` and the log's trusted root — no PCR values, no COSE release key.
#[test]
fn the_relay_serves_a_sigstore_signed_release_and_a_client_pinning_its_key_and_root_admits_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).display().to_string();
    let key = p256_key();
    std::fs::write(dir.path().join("cosign.pub"), pem(&key)).unwrap();
    let log = TestLog::new();
    std::fs::write(dir.path().join("trusted_root.json"), log.trusted_root()).unwrap();

    // A placeholder release so that the relay starts; the model digest comes from the enclave.
    let served = d("release.sigstore");
    let release = |version: u64, model: &str| {
        let v = version.to_string();
        ops(&[
            "release-sign",
            "--version",
            &v,
            "--pcrs",
            &release_tuple(),
            "--model-digest",
            model,
            "--body-out",
            &d("body.cbor"),
        ]);
        let body = std::fs::read(dir.path().join("body.cbor")).unwrap();
        let bundle = log.bundle(&body, &key).to_string();
        std::fs::write(dir.path().join("body.cbor.sigstore.json"), bundle).unwrap();
        ops(&[
            "release-pack",
            "--manifest",
            &d("body.cbor"),
            "--bundle",
            &d("body.cbor.sigstore.json"),
            "--out",
            &served,
        ]);
    };
    release(1, &"00".repeat(32));
    let stack = Stack::new(&[], &["--release-manifest", &served]);
    let model = {
        let out = stack.client(
            &stack.relay_addr,
            &["attest", "--json"],
            &stack.trusted(),
            None,
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["model_digest"].as_str().unwrap().to_string()
    };
    release(2, &model);

    let root = [
        "--root".to_string(),
        fixtures().join("ca/root.pem").display().to_string(),
    ];
    let ask = |pins: &[String]| {
        let trust: Vec<String> = root.iter().chain(pins).cloned().collect();
        stack.client(
            &stack.relay_addr,
            &["ask", "--fresh", "--max-tokens", "2", "hello"],
            &trust,
            None,
        )
    };
    let sigstore = [
        "--release-sigstore-root".to_string(),
        d("trusted_root.json"),
        "--release-sigstore-key".to_string(),
        d("cosign.pub"),
    ];
    let out = ask(&sigstore);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pinned Sigstore release key (admitted by release 2)"),
        "{}",
        stderr(&out)
    );
    // Another cosign key: refused with the code.
    std::fs::write(dir.path().join("other.pub"), pem(&p256_key())).unwrap();
    let out = ask(&[
        sigstore[0].clone(),
        sigstore[1].clone(),
        sigstore[2].clone(),
        d("other.pub"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("rejected: release_sigstore"),
        "{}",
        stderr(&out)
    );
    // A COSE release key alone does not admit a Sigstore-signed release.
    let cose_key = String::from_utf8(ops(&["release-key", "--out", &d("keys")]).stdout).unwrap();
    let out = ask(&["--release-key".to_string(), cose_key.trim().to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("rejected: release_sigstore"),
        "{}",
        stderr(&out)
    );
    // The root without the key is a usage error, before anything is sent.
    let out = ask(&sigstore[..2]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
