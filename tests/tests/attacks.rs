//! Hostile clients against the real binaries on loopback, one test per attack: the enclave refuses
//! or sheds the attacker and still answers an honest client within seconds, during and after.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confidant_client::{Client, Timeouts, Trust, TrustConfig};
use confidant_e2e::*;
use confidant_protocol::frame::{Frame, FrameDecoder};
use confidant_protocol::message::Ask;
use confidant_protocol::request::{encapsulate, CONFIDANT_LABELS};
use confidant_protocol::{system_rng, Code};

const HONEST: &str = "What is a copay?";

/// An honest one-shot question through the CLI: it must succeed, with the model's exact answer,
/// within `within`.
fn honest_client_is_answered(stack: &Stack, within: Duration) {
    let started = Instant::now();
    let out = ask_json(stack, &stack.relay_addr, HONEST, "8");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["answer"].as_str().unwrap(), expected("", &[HONEST], 8)[0]);
    assert!(
        started.elapsed() < within,
        "the honest client waited {:?}",
        started.elapsed()
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The client library, trusting the stack's enclave as the CLI does.
async fn client(stack: &Stack) -> Client {
    let trust = Trust::build(&TrustConfig {
        roots: vec![fixtures().join("ca/root.pem")],
        pcrs: pins()
            .iter()
            .filter(|p| *p != "--pcr")
            .map(|p| p.parse().unwrap())
            .collect(),
        ..TrustConfig::default()
    })
    .unwrap();
    Client::connect(
        &stack.relay_addr,
        Some(&stack.dir.path().join("relay-tls/cert.pem")),
        trust,
        Timeouts::default(),
    )
    .await
    .unwrap()
    .without_cache()
}

#[test]
fn one_long_question_is_refused_before_any_model_work_and_the_enclave_goes_on() {
    let stack = Stack::new(&["--context-tokens", "512"], &[]);
    let pid = stack.enclave.as_ref().unwrap().child.id();
    honest_client_is_answered(&stack, Duration::from_secs(30));
    let before = peak_rss_mib(pid);
    // About 16 KB of text: thousands of tokens.
    let long = "Please read my whole medical history and tell me what is covered. ".repeat(250);
    let started = Instant::now();
    let out = stack.client(
        &stack.relay_addr,
        &["ask", "--max-tokens", "8", &long],
        &stack.trusted(),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with("error: context_limit:")
            && err.contains("512"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        stdout(&out).trim().is_empty(),
        "nothing passes as an answer"
    );
    honest_client_is_answered(&stack, Duration::from_secs(10));
    let h = stack.health();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["engine"]["failed_jobs"], 0);
    assert!(
        peak_rss_mib(pid) < before + 64.0,
        "the long question took memory: {before} -> {} MiB",
        peak_rss_mib(pid)
    );
    // Asking for more answer than the attested limit is refused before anything is sent.
    let out = stack.client(
        &stack.relay_addr,
        &["ask", "--max-tokens", "100000", "hi"],
        &stack.trusted(),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bad_request") && stderr(&out).contains("checked before sending"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stack.health()["requests"], h["requests"]);
}

#[test]
fn one_shot_questions_keep_nothing_and_a_session_flood_is_bounded_by_the_kv_budget() {
    // A budget of 4 MiB holds a handful of demo conversations (12 KiB per token).
    let stack = Stack::new(&["--kv-budget-mib", "4"], &[]);
    let rt = runtime();
    rt.block_on(async {
        let mut c = client(&stack).await;
        let question = "My records: ".to_string() + &"blood pressure normal; ".repeat(20);
        for _ in 0..10 {
            c.ask(
                &Ask {
                    max_tokens: Some(4),
                    ..Ask::new(question.clone())
                },
                &mut |_| {},
            )
            .await
            .unwrap();
        }
        let h = stack.health();
        assert_eq!(h["sessions"], 0, "{h}");
        assert_eq!(h["engine"]["kv_bytes"], 0, "{h}");
        assert_eq!(h["engine"]["conversations"], 0, "{h}");
        // Now 40 sessions that are never closed.
        for _ in 0..40 {
            c.ask(
                &Ask {
                    max_tokens: Some(8),
                    session: true,
                    ..Ask::new("Open a session for me")
                },
                &mut |_| {},
            )
            .await
            .unwrap();
        }
        c.close();
    });
    let h = stack.health();
    let budget = h["engine"]["kv_budget_bytes"].as_u64().unwrap();
    assert!(h["engine"]["kv_bytes"].as_u64().unwrap() <= budget, "{h}");
    assert!(h["evicted_sessions"].as_u64().unwrap() >= 20, "{h}");
    assert!(h["sessions"].as_u64().unwrap() <= 20, "{h}");
    honest_client_is_answered(&stack, Duration::from_secs(10));
}

#[test]
fn idle_and_dripping_connections_cannot_hold_the_enclave() {
    let stack = Stack::new(&[], &[]);
    // 520 connections straight to the enclave, each holding the start of a frame.
    let mut held = Vec::new();
    for _ in 0..520 {
        let mut s = std::os::unix::net::UnixStream::connect(&stack.socket).unwrap();
        std::io::Write::write_all(&mut s, &[0x03, 0, 0, 0x10, 0]).unwrap();
        held.push(s);
    }
    honest_client_is_answered(&stack, Duration::from_secs(10));
    // Within the deadlines they are all closed.
    std::thread::sleep(Duration::from_secs(7));
    let h = stack.health();
    assert!(h["frame_deadlines"].as_u64().unwrap() >= 520, "{h}");
    assert!(h["streams_open"].as_u64().unwrap() < 10, "{h}");
    drop(held);

    // Through the relay: another source, 9 connections × 16 streams, each dripping a byte a second.
    let rt = runtime();
    let relay: SocketAddr = stack.relay_addr.parse().unwrap();
    let ca = stack.dir.path().join("relay-tls/cert.pem");
    let attacker = rt.spawn(async move {
        let endpoint = quic_endpoint("127.0.0.2:0", &ca);
        let mut tasks = Vec::new();
        for _ in 0..9 {
            let conn = endpoint.connect(relay, "localhost").unwrap().await.unwrap();
            for _ in 0..16 {
                let conn = conn.clone();
                tasks.push(tokio::spawn(async move {
                    let Ok((mut send, mut recv)) = conn.open_bi().await else {
                        return None;
                    };
                    let header = [0x03u8, 0, 0, 0x10, 0];
                    for b in header.iter().cycle().take(20) {
                        if send.write_all(&[*b]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    let got = recv.read_to_end(1 << 16).await.ok()?;
                    let mut dec = FrameDecoder::default();
                    dec.push(&got);
                    match dec.next_frame() {
                        Ok(Some(Frame::Error { code, .. })) => Some(code),
                        _ => None,
                    }
                }));
            }
        }
        let mut codes = Vec::new();
        for t in tasks {
            codes.push(t.await.ok().flatten());
        }
        codes
    });
    std::thread::sleep(Duration::from_secs(2));
    honest_client_is_answered(&stack, Duration::from_secs(10));
    let codes = rt.block_on(attacker).unwrap();
    let deadline = codes
        .iter()
        .filter(|c| **c == Some(Code::FrameDeadline))
        .count();
    assert!(
        deadline >= 100,
        "the dripping streams were not cut off: {codes:?}"
    );
    honest_client_is_answered(&stack, Duration::from_secs(10));
}

fn quic_endpoint(bind: &str, ca: &std::path::Path) -> quinn::Endpoint {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut crypto = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    crypto.alpn_protocols = vec![confidant_protocol::ALPN.to_vec()];
    let mut endpoint = quinn::Endpoint::client(bind.parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap(),
    )));
    endpoint
}

#[test]
fn nothing_secret_reaches_a_log_at_trace_or_the_relay_in_the_clear() {
    let capture_dir = tempfile::tempdir().unwrap();
    let capture = capture_dir.path().join("relayed.bin");
    let stack = Stack::launch(
        &fixtures().join("model"),
        &[],
        &["--capture-test-only", capture.to_str().unwrap()],
        &[("RUST_LOG", "trace")],
    );
    let marker = "ZQX-MARKER-9902-sofia";
    let out = ask_json(
        &stack,
        &stack.relay_addr,
        &format!("My daughter {marker} needs a plan"),
        "8",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A mistyped field whose value is the marker: refused, naming the field only.
    let rt = runtime();
    let error = rt.block_on(async {
        let mut c = client(&stack).await;
        let attested = c.attested().await.unwrap().clone();
        let r = &attested.recipient;
        let body = format!(r#"{{"prompt":"hi","max_tokens":"{marker}"}}"#);
        let (encapsulated, _) = encapsulate(
            &r.config,
            r.suite,
            &r.attestation_sha256,
            body.as_bytes(),
            &CONFIDANT_LABELS,
            &mut system_rng(),
        )
        .unwrap();
        let relay = confidant_client::quic::Relay::connect(
            &stack.relay_addr,
            Some(&stack.dir.path().join("relay-tls/cert.pem")),
            Timeouts::default(),
        )
        .await
        .unwrap();
        let mut reader = relay
            .exchange(&Frame::Request {
                attestation_sha256: r.attestation_sha256,
                encapsulated,
            })
            .await
            .unwrap();
        reader.next().await.unwrap()
    });
    match error {
        Some(Frame::Error { code, message }) => {
            assert_eq!(code, Code::BadRequest);
            assert!(
                message.contains("max_tokens") && !message.contains(marker),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    std::thread::sleep(Duration::from_millis(300));
    let relayed = std::fs::read(&capture).unwrap();
    let contains = |hay: &[u8]| hay.windows(marker.len()).any(|w| w == marker.as_bytes());
    assert!(
        !contains(&relayed),
        "the marker crossed the relay in the clear"
    );
    for log in [
        &stack.relay.stderr_log,
        &stack.enclave.as_ref().unwrap().stderr_log,
    ] {
        let text = std::fs::read(log).unwrap();
        // Events below info are there: the filter really was open.
        let t = String::from_utf8_lossy(&text);
        assert!(
            t.contains("TRACE") || t.contains("DEBUG"),
            "{} logged nothing below info",
            log.display()
        );
        assert!(!contains(&text), "{} logged the marker", log.display());
    }
}

#[test]
fn a_relay_that_drips_bytes_cannot_stall_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (addr, cert) = rt.block_on(dripping_relay(dir.path().to_path_buf()));
    let started = Instant::now();
    let out = std::process::Command::new(bin("confidant"))
        .args(["attest", "--relay", &addr.to_string(), "--relay-ca"])
        .arg(&cert)
        .args(["--timeout", "3", "--root"])
        .arg(fixtures().join("ca/root.pem"))
        .args(pins())
        .output()
        .unwrap();
    // Exit 3: the service could not be reached in time, worth retrying (not a rejection).
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("error: timeout:"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// A QUIC server posing as the relay that answers every stream with a frame header, then one byte a
/// second, forever.
async fn dripping_relay(dir: PathBuf) -> (SocketAddr, PathBuf) {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = dir.join("cert.pem");
    std::fs::write(&cert_path, made.cert.pem()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
    let mut crypto = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![made.cert.der().clone()], key)
    .unwrap();
    crypto.alpn_protocols = vec![confidant_protocol::ALPN.to_vec()];
    let server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(crypto).unwrap(),
    ));
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, _recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let _ = send.write_all(&[0x02, 0, 0, 0x10, 0]).await;
                        loop {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            if send.write_all(&[0]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        }
    });
    (addr, cert_path)
}

#[test]
fn a_job_that_fails_to_allocate_fails_alone_and_the_worker_goes_on() {
    // A generous context limit and KV budget, and an address-space limit, set once the enclave has
    // served (its threads and buffers made), that leaves less room than a ~25k-token question's
    // keys and values need: reserving them fails, as it would in a 6 GiB enclave.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("enclave.sock");
    let mut cmd = std::process::Command::new(bin("confidant-enclave"));
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .arg("--model")
        .arg(fixtures().join("model"))
        .args(["--nsm", "emulated", "--threads", "1", "--dev-ca"])
        .arg(fixtures().join("ca"))
        .args(["--context-tokens", "60000", "--kv-budget-mib", "4096"]);
    let (enclave, _) = start(&mut cmd, dir.path().join("enclave.log"));
    let pid = enclave.child.id();
    let (relay, relay_addr) = start_relay(dir.path(), &socket, &[]);
    let stack = Stack {
        dir,
        enclave: Some(enclave),
        relay,
        relay_addr,
        socket,
    };
    honest_client_is_answered(&stack, Duration::from_secs(30));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let vm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let limit = (vm_kib << 10) + (160 << 20);
    let set = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--as={limit}"))
        .status()
        .unwrap();
    assert!(set.success());
    let long = "Please read my whole medical history and tell me what is covered. ".repeat(1500);
    let out = stack.client(
        &stack.relay_addr,
        &["ask", "--max-tokens", "4", &long],
        &stack.trusted(),
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error: generation_failed:"),
        "{}",
        stderr(&out)
    );
    honest_client_is_answered(&stack, Duration::from_secs(10));
    let h = stack.health();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["engine"]["failed_jobs"], 1, "{h}");
}
