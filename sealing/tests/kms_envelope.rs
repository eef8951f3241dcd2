//! Opening KMS `CiphertextForRecipient`: the real-shaped fixture, field-by-field refusals, and the
//! Wycheproof RSA-OAEP-2048 SHA-256 vectors through the very unwrap function the enclave uses.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use confidant_sealing::cms::CmsError;
use confidant_sealing::{KmsError, RecipientKey};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-vectors/kms")
}

fn fixture() -> (RecipientKey, Vec<u8>) {
    let key =
        RecipientKey::from_pkcs8(&std::fs::read(dir().join("recipient-key.pk8.der")).unwrap())
            .unwrap();
    (
        key,
        std::fs::read(dir().join("kms-ciphertext-for-recipient.ber")).unwrap(),
    )
}

#[test]
fn the_fixture_opens_to_hello_world() {
    let (key, ber) = fixture();
    assert_eq!(&key.open(&ber).unwrap()[..], b"Hello, World");
}

fn envelope_error(ber: &[u8]) -> CmsError {
    let (key, _) = fixture();
    match key.open(ber) {
        Err(KmsError::Envelope(e)) => e,
        other => panic!("expected an envelope error, got {other:?}"),
    }
}

/// Replaces the first occurrence of `from` (which must exist) with `to`.
fn patch(ber: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let i = ber
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    let mut out = ber.to_vec();
    out[i..i + from.len()].copy_from_slice(to);
    out
}

#[test]
fn each_field_is_checked_with_its_own_error() {
    let (_, ber) = fixture();
    let sha256 = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    let sha384 = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    // Wrong recipient: another key's SKI.
    let other = RecipientKey::generate().unwrap();
    assert!(matches!(
        other.open(&ber),
        Err(KmsError::Envelope(CmsError::RidMismatch))
    ));
    // OAEP with SHA-384 (first sha256 OID is the hash, the second the MGF's).
    assert_eq!(
        envelope_error(&patch(&ber, &sha256, &sha384)),
        CmsError::OaepHash
    );
    let second = ber
        .windows(9)
        .enumerate()
        .filter(|(_, w)| *w == sha256)
        .nth(1)
        .unwrap()
        .0;
    let mut mgf = ber.clone();
    mgf[second..second + 9].copy_from_slice(&sha384);
    assert_eq!(envelope_error(&mgf), CmsError::OaepMgf);
    // Not RSAES-OAEP (rsaEncryption, PKCS#1 v1.5).
    assert_eq!(
        envelope_error(&patch(
            &ber,
            &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07],
            &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]
        )),
        CmsError::KeyAlgorithm
    );
    // AES-128-CBC instead of AES-256-CBC.
    assert_eq!(
        envelope_error(&patch(
            &ber,
            &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a],
            &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x02]
        )),
        CmsError::ContentAlgorithm
    );
    // Versions.
    assert_eq!(
        envelope_error(&patch(
            &ber,
            &[0x30, 0x80, 0x02, 0x01, 0x02],
            &[0x30, 0x80, 0x02, 0x01, 0x03]
        )),
        CmsError::Version(3)
    );
    // Not envelopedData (signedData).
    assert_eq!(
        envelope_error(&patch(
            &ber,
            &[0x0d, 0x01, 0x07, 0x03],
            &[0x0d, 0x01, 0x07, 0x02]
        )),
        CmsError::NotEnvelopedData
    );
    // Truncated BER, and trailing bytes.
    assert!(matches!(
        envelope_error(&ber[..ber.len() / 2]),
        CmsError::Truncated(_)
    ));
    let mut trailing = ber.clone();
    trailing.push(0);
    assert_eq!(envelope_error(&trailing), CmsError::TrailingBytes(1));
    assert!(matches!(envelope_error(&[]), CmsError::Truncated(0)));
}

#[test]
fn altered_ciphertexts_fail_to_open() {
    let (key, ber) = fixture();
    // A flipped bit in the wrapped key.
    let i = ber
        .windows(4)
        .position(|w| w == [0x04, 0x82, 0x01, 0x00])
        .unwrap()
        + 40;
    let mut k = ber.clone();
    k[i] ^= 1;
    assert!(matches!(key.open(&k), Err(KmsError::Unwrap)));
    // A flipped bit in the last content block breaks the padding.
    let mut c = ber.clone();
    let last = c.len() - 12;
    c[last] ^= 0x80;
    assert!(matches!(key.open(&c), Err(KmsError::Decrypt)));
}

#[test]
fn wycheproof_rsa_oaep_2048_sha256_vectors_pass_through_the_unwrap_function() {
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir().join("rsa_oaep_2048_sha256_mgf1sha256_test.json")).unwrap(),
    )
    .unwrap();
    let mut count = 0;
    for group in v["testGroups"].as_array().unwrap() {
        let key = RecipientKey::from_pkcs8(
            &hex::decode(group["privateKeyPkcs8"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        for t in group["tests"].as_array().unwrap() {
            let ct = hex::decode(t["ct"].as_str().unwrap()).unwrap();
            let label = hex::decode(t["label"].as_str().unwrap()).unwrap();
            let want = hex::decode(t["msg"].as_str().unwrap()).unwrap();
            let got = key.unwrap_key(&ct, Some(&label));
            match t["result"].as_str().unwrap() {
                "valid" => assert_eq!(
                    got.unwrap().as_slice(),
                    want.as_slice(),
                    "tcId {}",
                    t["tcId"]
                ),
                _ => assert!(got.is_err(), "tcId {} accepted", t["tcId"]),
            }
            count += 1;
        }
    }
    assert_eq!(count, 37);
}

/// Runs the `openssl` command-line tool (the independent oracle; `make deps` installs it).
fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command-line tool (make deps installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An RSA-2048 key made by OpenSSL: (directory with key.pem, PKCS#8 DER, SPKI DER).
fn openssl_key() -> (tempfile::TempDir, Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "key.pem",
        ],
    );
    let pkcs8 = openssl(
        d,
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER",
        ],
    );
    let spki = openssl(d, &["pkey", "-in", "key.pem", "-pubout", "-outform", "DER"]);
    (dir, pkcs8, spki)
}

#[test]
fn openssl_decrypts_the_envelopes_we_build() {
    let (dir, _, spki) = openssl_key();
    for (len, segment) in [(0usize, 1024usize), (12, 1024), (1000, 100), (5000, 1024)] {
        let content: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let ber = confidant_sealing::envelope::build(&spki, &content, segment).unwrap();
        std::fs::write(dir.path().join("env.ber"), &ber).unwrap();
        let opened = openssl(
            dir.path(),
            &[
                "cms", "-decrypt", "-inform", "DER", "-in", "env.ber", "-inkey", "key.pem",
                "-binary",
            ],
        );
        assert_eq!(opened, content, "{len} bytes in {segment}-byte segments");
    }
}

#[test]
fn the_enclave_opens_what_openssl_builds() {
    // OpenSSL as the sender: RSAES-OAEP-SHA256 to a certificate whose subjectKeyIdentifier is the
    // SHA-256 of the key (as KMS identifies the recipient), streamed BER with indefinite lengths.
    // It omits the NULL parameters of the SHA-256 identifiers, which RFC 4055 says to accept.
    let (dir, pkcs8, spki) = openssl_key();
    let d = dir.path();
    let ski = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&spki));
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "key.pem",
            "-subj",
            "/CN=enclave",
            "-days",
            "1",
            "-addext",
            &format!("subjectKeyIdentifier={ski}"),
            "-out",
            "cert.pem",
        ],
    );
    let key = RecipientKey::from_pkcs8(&pkcs8).unwrap();
    for len in [1usize, 16, 3000] {
        let content: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
        std::fs::write(d.join("msg"), &content).unwrap();
        openssl(
            d,
            &[
                "cms",
                "-encrypt",
                "-in",
                "msg",
                "-binary",
                "-aes-256-cbc",
                "-recip",
                "cert.pem",
                "-keyid",
                "-keyopt",
                "rsa_padding_mode:oaep",
                "-keyopt",
                "rsa_oaep_md:sha256",
                "-keyopt",
                "rsa_mgf1_md:sha256",
                "-outform",
                "DER",
                "-stream",
                "-out",
                "env.ber",
            ],
        );
        let ber = std::fs::read(d.join("env.ber")).unwrap();
        assert_eq!(&key.open(&ber).unwrap()[..], &content[..], "{len} bytes");
    }
}
