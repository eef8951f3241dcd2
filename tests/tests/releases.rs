//! Signed releases through the whole stack: the operator makes a release key and signs manifests
//! (`confidant-ops`), the relay serves them, and a client that pins only the release key — no PCR
//! values — asks; an expired manifest, another key, an image no manifest lists and an older release
//! after a newer one (rollback) are each refused with their code.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use confidant_e2e::*;

fn sign(key: &Path, version: u64, pcrs: &[&str], model: &str, extra: &[&str], out: &Path) {
    let v = version.to_string();
    let mut args = vec!["release-sign", "--version", &v, "--model-digest", model];
    for p in pcrs {
        args.extend(["--pcrs", p]);
    }
    args.extend([
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    args.extend(extra);
    ops(&args);
}

#[test]
fn a_release_key_admits_listed_images_and_refuses_expiry_other_keys_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let public = String::from_utf8(ops(&["release-key", "--out", keys.to_str().unwrap()]).stdout)
        .unwrap()
        .trim()
        .to_string();
    let key = keys.join("release-key.pk8");
    let other = dir.path().join("other");
    let other_public =
        String::from_utf8(ops(&["release-key", "--out", other.to_str().unwrap()]).stdout)
            .unwrap()
            .trim()
            .to_string();
    let served = dir.path().join("served.cose");
    // A first manifest so that the relay starts; the model digest comes from the enclave itself.
    let fake = ["aa".repeat(48), "bb".repeat(48), "cc".repeat(48)].join(",");
    sign(&key, 1, &[&fake], &"00".repeat(32), &[], &served);
    let stack = Stack::new(&[], &["--release-manifest", served.to_str().unwrap()]);
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
    let root = vec![
        "--root".to_string(),
        fixtures().join("ca/root.pem").display().to_string(),
    ];
    let ask = |release_key: &str| {
        let mut trust = root.clone();
        trust.extend(["--release-key".to_string(), release_key.to_string()]);
        stack.client(
            &stack.relay_addr,
            &["ask", "--fresh", "--max-tokens", "2", "hello"],
            &trust,
            None,
        )
    };
    let first = |o: &Output| {
        stderr(o)
            .lines()
            .find(|l| l.starts_with("rejected") || l.starts_with("error"))
            .unwrap_or("")
            .to_string()
    };

    // Release 2 lists the old (fake) image and this one, as during a rollout: admitted, no PCR pinned.
    let real = release_tuple();
    sign(&key, 2, &[&fake, &real], &model, &[], &served);
    let out = ask(&public);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pinned release key (admitted by release 2)"),
        "{}",
        stderr(&out)
    );

    // Another operator's key.
    let out = ask(&other_public);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        first(&out).starts_with("rejected: release_signature"),
        "{}",
        stderr(&out)
    );

    // Expired (valid for a day, a year ago).
    let year_ago = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 365 * 86_400)
        .to_string();
    sign(
        &key,
        3,
        &[&real],
        &model,
        &["--not-before", &year_ago, "--days", "1"],
        &served,
    );
    let out = ask(&public);
    assert!(
        first(&out).starts_with("rejected: release_expired"),
        "{}",
        stderr(&out)
    );

    // Release 3 drops this image.
    sign(&key, 3, &[&fake], &model, &[], &served);
    let out = ask(&public);
    assert!(
        first(&out).starts_with("rejected: release_pcrs"),
        "{}",
        stderr(&out)
    );

    // Release 4 admits it again; then the relay goes back to release 2: a rollback.
    sign(&key, 4, &[&real], &model, &[], &served);
    assert_eq!(ask(&public).status.code(), Some(0));
    sign(&key, 2, &[&fake, &real], &model, &[], &served);
    let out = ask(&public);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        first(&out).starts_with("rejected: release_rollback"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("release 2, older than release 4"),
        "{}",
        stderr(&out)
    );
}

/// The release key kept in KMS (moto stands in): `release-sign --tbs-out`, KMS signs the bytes (RAW,
/// ECDSA_SHA_384), `release-sign --kms-signature` assembles a manifest that opens under the KMS key's
/// public half — and a signature over other flags does not.
#[test]
fn a_release_signed_by_a_kms_key_opens_under_its_public_key() {
    let python = std::env::var_os("CONFIDANT_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    assert!(
        python.exists(),
        "{}: `make deps` installs moto",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import subprocess, sys
import boto3
from moto import mock_aws
ops, d, version = sys.argv[1], sys.argv[2], sys.argv[3]
flags = ["release-sign", "--pcrs", ",".join(["11" * 48, "22" * 48, "33" * 48]),
         "--model-digest", "44" * 32, "--not-before", "1700000000"]
with mock_aws():
    kms = boto3.client("kms", region_name="us-east-1")
    key = kms.create_key(KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    public = kms.get_public_key(KeyId=key)["PublicKey"][-97:].hex()
    subprocess.run([ops, *flags, "--version", "7", "--tbs-out", f"{d}/tbs.bin"], check=True)
    tbs = open(f"{d}/tbs.bin", "rb").read()
    sig = kms.sign(KeyId=key, Message=tbs, MessageType="RAW", SigningAlgorithm="ECDSA_SHA_384")["Signature"]
    open(f"{d}/sig.der", "wb").write(sig)
    done = subprocess.run([ops, *flags, "--version", version, "--kms-signature", f"{d}/sig.der",
                           "--public-key", public, "--out", f"{d}/release.cose"])
    print(public, done.returncode)
"#;
    let run = |version: &str| {
        let out = Command::new(&python)
            .arg("-c")
            .arg(script)
            .arg(bin("confidant-ops"))
            .arg(dir.path())
            .arg(version)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let line = stdout(&out);
        let (public, status) = line.trim().split_once(' ').unwrap();
        (
            hex::decode(public).unwrap(),
            status.to_string(),
            stderr(&out),
        )
    };
    let (public, status, err) = run("7");
    assert_eq!(status, "0", "{err}");
    let cose = std::fs::read(dir.path().join("release.cose")).unwrap();
    let m = confidant_protocol::release::open(&cose, &public).unwrap();
    assert_eq!(m.version, 7);
    assert_eq!(m.pcrs, vec![[[0x11; 48], [0x22; 48], [0x33; 48]]]);
    // KMS signed release 7's bytes; assembled as release 8, it does not verify and is not written.
    std::fs::remove_file(dir.path().join("release.cose")).unwrap();
    let (_, status, err) = run("8");
    assert_ne!(status, "0");
    assert!(err.contains("the signed manifest does not verify"), "{err}");
    assert!(!dir.path().join("release.cose").exists());
}
