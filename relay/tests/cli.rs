//! The relay as an operator starts it: arguments, certificates, the listening line.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_confidant-relay"))
}

#[test]
fn refuses_to_start_without_a_certificate_or_with_a_bad_upstream() {
    let out = relay()
        .args(["--listen", "127.0.0.1:0", "--upstream", "tcp:127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--self-signed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = relay()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "udp:1.2.3.4:5",
            "--self-signed",
            "/tmp/x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = relay()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "tcp:127.0.0.1:9",
            "--self-signed",
            "/tmp/x",
            "--fault-test-only",
            "bend:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn self_signed_mode_writes_a_certificate_and_announces_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = relay()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "tcp:127.0.0.1:9",
            "--self-signed",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("listening udp:127.0.0.1:"), "{line}");
    assert!(line.contains("upstream tcp:127.0.0.1:9"), "{line}");
    let pem = std::fs::read_to_string(dir.path().join("cert.pem")).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(dir.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o077,
        0,
        "the key is private"
    );
}
