//! `confidant verify` and `confidant conformance` as a user runs them: arguments, exit codes, output.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine;

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-vectors")
}

fn real(name: &str) -> PathBuf {
    vectors().join("attestation/real").join(name)
}

const PROD: &str = "veracruz-20221109T225200-prod.cose";
const PROD_PCR0: &str = "22f9e1c949208da55eb01b9b9fc88f87454f77ba133f0d82320b509621c92482152a99d0a12335b97178c02d6f977d01";

fn confidant(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_confidant"))
        .args(args)
        .output()
        .unwrap()
}

fn confidant_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_confidant"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `confidant ARGS` and checks it rejected the document with `code`.
fn expect_rejected(args: &[&str], code: &str) {
    let o = confidant(args);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
    assert!(
        stderr(&o).starts_with(&format!("rejected: {code}: ")),
        "{args:?}: {}",
        stderr(&o)
    );
}

#[test]
fn verify_valid_as_of_document_time_prints_a_summary() {
    let pin = format!("0={PROD_PCR0}");
    let o = confidant(&[
        "verify",
        real(PROD).to_str().unwrap(),
        "--at",
        "doc",
        "--pcr",
        &pin,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("valid attestation document"), "{out}");
    assert!(
        out.contains("i-04fd167167daacf3b-enc01845e97d0b3eb4e"),
        "{out}"
    );
    assert!(out.contains("production"), "{out}");
}

#[test]
fn verify_now_rejects_expired_with_code_on_the_first_stderr_line() {
    let o = confidant(&["verify", real(PROD).to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let first = stderr(&o).lines().next().unwrap().to_string();
    assert!(first.starts_with("rejected: cert_expired: "), "{first}");
    assert!(stdout(&o).is_empty());
}

#[test]
fn verify_json_has_every_field() {
    let o = confidant(&[
        "verify",
        real(PROD).to_str().unwrap(),
        "--at",
        "doc",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["error"], serde_json::Value::Null);
    assert_eq!(v["module_id"], "i-04fd167167daacf3b-enc01845e97d0b3eb4e");
    assert_eq!(v["timestamp_ms"], 1_668_034_320_696u64);
    assert_eq!(v["digest"], "SHA384");
    assert_eq!(v["pcrs"]["0"], PROD_PCR0);
    assert_eq!(v["pcrs"].as_object().unwrap().len(), 16);
    assert_eq!(v["public_key"], serde_json::Value::Null);
    assert_eq!(v["user_data"].as_str().unwrap().len(), 64);
    assert_eq!(v["nonce"].as_str().unwrap().len(), 64);
    let chain = v["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 5);
    assert!(chain[0]["subject"]
        .as_str()
        .unwrap()
        .contains("aws.nitro-enclaves"));
    assert!(chain[4]["not_after"]
        .as_str()
        .unwrap()
        .starts_with("2022-11-10T01:52:00"));
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 5);
    assert!(steps.iter().all(|s| s["status"] == "passed"));
}

#[test]
fn verify_json_on_rejection_still_reports_what_parsed() {
    let o = confidant(&[
        "verify",
        real(PROD).to_str().unwrap(),
        "--at",
        "now",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["error"], "cert_expired");
    assert_eq!(v["steps"][1]["status"], "failed");
    assert_eq!(v["steps"][2]["status"], "skipped");
    assert!(stderr(&o).starts_with("rejected: cert_expired: "));
}

#[test]
fn verify_reads_stdin_as_raw_hex_or_base64() {
    let raw = std::fs::read(real(PROD)).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
    for input in [
        raw.clone(),
        hex::encode(&raw).into_bytes(),
        b64.into_bytes(),
    ] {
        let o = confidant_stdin(&["verify", "-", "--at", "doc"], &input);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
}

#[test]
fn verify_policy_file_pins_and_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!("max_age_secs = 60\n[pcrs]\n0 = \"{}\"\n", "ab".repeat(48)),
    )
    .unwrap();
    let doc = real(PROD);
    let o = confidant(&[
        "verify",
        doc.to_str().unwrap(),
        "--at",
        "doc",
        "--policy",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("rejected: pcr_mismatch: PCR0"),
        "{}",
        stderr(&o)
    );
    // The command line overrides the file's pin.
    let pin = format!("0={PROD_PCR0}");
    let o = confidant(&[
        "verify",
        doc.to_str().unwrap(),
        "--at",
        "doc",
        "--policy",
        policy.to_str().unwrap(),
        "--pcr",
        &pin,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Pinned index absent: fail closed.
    let pin = format!("20={}", "00".repeat(48));
    expect_rejected(
        &[
            "verify",
            doc.to_str().unwrap(),
            "--at",
            "doc",
            "--pcr",
            &pin,
        ],
        "pcr_missing",
    );
    // Stale at a given instant one hour later.
    let later = (1_668_034_320_696u64 + 3_600_000).to_string();
    expect_rejected(
        &[
            "verify",
            doc.to_str().unwrap(),
            "--at",
            &later,
            "--max-age",
            "300",
        ],
        "stale",
    );
    expect_rejected(
        &[
            "verify",
            doc.to_str().unwrap(),
            "--at",
            "2022-11-09T22:53:00Z",
            "--nonce",
            "00",
        ],
        "nonce_mismatch",
    );
    expect_rejected(
        &[
            "verify",
            doc.to_str().unwrap(),
            "--at",
            "doc",
            "--user-data",
            "00",
        ],
        "user_data_mismatch",
    );
}

#[test]
fn verify_with_another_root_rejects_aws_documents() {
    let root = vectors().join("attestation/synthetic/root.pem");
    expect_rejected(
        &[
            "verify",
            real(PROD).to_str().unwrap(),
            "--at",
            "doc",
            "--root",
            root.to_str().unwrap(),
        ],
        "chain_untrusted",
    );
}

#[test]
fn usage_and_io_errors_exit_2() {
    let doc = real(PROD);
    let doc = doc.to_str().unwrap();
    for args in [
        vec!["verify", "/nonexistent/doc"],
        vec!["verify", doc, "--pcr", "0"],
        vec!["verify", doc, "--pcr", "32=00"],
        vec!["verify", doc, "--at", "yesterday"],
        vec!["verify", doc, "--root", "/nonexistent.pem"],
        vec!["verify", doc, "--policy", "/nonexistent.toml"],
        vec!["verify", doc, "--nonce", "xyz"],
        vec!["verify"],
        vec!["conformance", "--suite", "nope"],
        vec!["conformance", "/nonexistent"],
    ] {
        let o = confidant(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn conformance_passes_from_a_copy_and_reports_a_broken_case() {
    let o = confidant(&["conformance"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let out = stdout(&o);
    let last = out.lines().last().unwrap();
    let passed: usize = last.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 70, "{last}");
    assert!(last.ends_with(" passed, 0 failed"), "{last}");

    // A copy elsewhere, as an installed binary would use it, with one expectation made wrong.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&vectors(), dir.path());
    let manifest = dir.path().join("attestation/manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let broken = text.replacen("\"expect\": \"pcr_mismatch\"", "\"expect\": \"stale\"", 1);
    assert_ne!(text, broken);
    std::fs::write(&manifest, broken).unwrap();
    let o = confidant(&[
        "conformance",
        dir.path().to_str().unwrap(),
        "--suite",
        "attestation",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("FAIL attestation/pcr-mismatch: expected stale, rejected with pcr_mismatch"),
        "{out}"
    );
    assert!(out.lines().last().unwrap().ends_with(" passed, 1 failed"));

    let o = confidant(&["conformance", dir.path().to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["failed"], 1);
    assert_eq!(
        v["suites"]["attestation"]["failures"][0]["case"],
        "attestation/pcr-mismatch"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
