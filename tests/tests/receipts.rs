//! Answer receipts through the whole stack: `ask --receipt` and `chat --receipt` save what the
//! client verified, `verify-receipt` checks it offline — the question and answer it covers, the
//! chain of a chat's turns — and refuses every tampering with a stable code.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;
use confidant_e2e::*;

fn ca() -> String {
    fixtures().join("ca/root.pem").display().to_string()
}

fn verify_receipt(file: &Path, extra: &[&str]) -> Output {
    Command::new(bin("confidant"))
        .arg("verify-receipt")
        .arg(file)
        .args(["--root", &ca()])
        .args(pins())
        .args(extra)
        .output()
        .unwrap()
}

fn first_line(o: &Output) -> String {
    stderr(o).lines().next().unwrap_or("").to_string()
}

fn edit(file: &Path, f: impl FnOnce(&mut serde_json::Value)) -> std::path::PathBuf {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    f(&mut v);
    let out = file.with_extension("edited.json");
    std::fs::write(&out, v.to_string()).unwrap();
    out
}

#[test]
fn an_answer_s_receipt_verifies_offline_and_every_tampering_is_refused() {
    let stack = Stack::new(&[], &[]);
    let dir = stack.dir.path();
    let receipt = dir.join("receipt.json");
    let question = "What does a receipt prove?";
    let out = stack.client(
        &stack.relay_addr,
        &[
            "ask",
            "--json",
            "--max-tokens",
            "8",
            "--receipt",
            receipt.to_str().unwrap(),
            question,
        ],
        &stack.trusted(),
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let answer = v["answer"].as_str().unwrap();
    assert_eq!(v["receipt_sha256"].as_str().unwrap().len(), 64);
    let (q, a, wrong) = (dir.join("q.txt"), dir.join("a.txt"), dir.join("wrong.txt"));
    std::fs::write(&q, question).unwrap();
    std::fs::write(&a, answer).unwrap();
    std::fs::write(&wrong, format!("{answer}!")).unwrap();

    let out = verify_receipt(
        &receipt,
        &[
            "--question",
            q.to_str().unwrap(),
            "--answer",
            a.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("valid: 1 receipt in 1 chain"), "{text}");
    assert!(
        text.contains("covers     the given question and answer"),
        "{text}"
    );
    assert!(text.contains("finish length"), "{text}");

    // Another answer, another question: named.
    let out = verify_receipt(&receipt, &["--answer", wrong.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        first_line(&out),
        "rejected: receipt_mismatch: chain 0, receipt 0: the receipt's `ans` does not match what it should cover"
    );
    let out = verify_receipt(&receipt, &["--question", a.to_str().unwrap()]);
    assert!(
        first_line(&out).contains("`q` does not match"),
        "{}",
        stderr(&out)
    );

    // Every byte of the receipt is signed.
    let b64 = base64::engine::general_purpose::STANDARD;
    let tampered = edit(&receipt, |v| {
        let r = v["chains"][0]["receipts"][0].as_str().unwrap();
        let mut bytes = b64.decode(r).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        v["chains"][0]["receipts"][0] = b64.encode(bytes).into();
    });
    let out = verify_receipt(&tampered, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        first_line(&out).starts_with("rejected: bad_receipt: chain 0, receipt 0"),
        "{}",
        stderr(&out)
    );
    // A receipt moved under another document: that document's key did not sign it.
    let other = dir.join("other.json");
    let out = stack.client(
        &stack.relay_addr,
        &[
            "ask",
            "--fresh",
            "--max-tokens",
            "2",
            "--receipt",
            other.to_str().unwrap(),
            "hi",
        ],
        &stack.trusted(),
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let other_doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&other).unwrap()).unwrap();
    let moved = edit(&receipt, |v| {
        v["chains"][0]["document"] = other_doc["chains"][0]["document"].clone();
    });
    let out = verify_receipt(&moved, &[]);
    assert!(
        first_line(&out)
            .starts_with("rejected: receipt_mismatch: chain 0, receipt 0: the receipt's `doc`"),
        "{}",
        stderr(&out)
    );
    // The document is held to the pins, as of its own time.
    let out = Command::new(bin("confidant"))
        .arg("verify-receipt")
        .arg(&receipt)
        .args(["--root", &ca(), "--pcr", &format!("0={}", "00".repeat(48))])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        first_line(&out).contains("rejected: pcr_mismatch"),
        "{}",
        stderr(&out)
    );
    // Not a receipt file at all: a usage error.
    let out = verify_receipt(&q, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn a_chat_s_receipts_chain_and_a_reordered_chain_is_refused() {
    let stack = Stack::new(&[], &[]);
    let receipt = stack.dir.path().join("chat.json");
    let out = stack.client(
        &stack.relay_addr,
        &[
            "chat",
            "--max-tokens",
            "4",
            "--receipt",
            receipt.to_str().unwrap(),
        ],
        &stack.trusted(),
        Some("first question\nsecond question\nthird question\n"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = verify_receipt(&receipt, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("valid: 3 receipts in 1 chain"),
        "{}",
        stdout(&out)
    );

    let swapped = edit(&receipt, |v| {
        let r = v["chains"][0]["receipts"].as_array_mut().unwrap();
        r.swap(1, 2);
    });
    let out = verify_receipt(&swapped, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        first_line(&out)
            .starts_with("rejected: receipt_mismatch: chain 0, receipt 1: the receipt's `prev`"),
        "{}",
        stderr(&out)
    );
    let dropped = edit(&receipt, |v| {
        v["chains"][0]["receipts"].as_array_mut().unwrap().remove(0);
    });
    let out = verify_receipt(&dropped, &[]);
    assert!(first_line(&out).contains("`prev`"), "{}", stderr(&out));
}
