//! End to end on loopback: the real enclave (emulated NSM, demo model), relay and client binaries.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};

use confidant_e2e::*;

#[test]
fn ask_gives_the_models_exact_greedy_answer() {
    let stack = Stack::new(&[], &[]);
    let q = "My name is Ana Ruiz. Is a hearing aid covered by my plan?";
    let out = ask_json(&stack, &stack.relay_addr, q, "16");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["answer"].as_str().unwrap(), expected("", &[q], 16)[0]);
    assert_eq!(stack.health()["requests"], 1);
}

#[test]
fn a_three_turn_chat_matches_the_model_in_process() {
    let stack = Stack::new(&[], &[]);
    let turns = [
        "What is a deductible?",
        "And coinsurance?",
        "Thanks, what about my daughter Sofia?",
    ];
    let input = format!("{}\n", turns.join("\n"));
    let out = stack.client(
        &stack.relay_addr,
        &["chat", "--max-tokens", "10"],
        &stack.trusted(),
        Some(&input),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let want: String = expected("", &turns, 10)
        .iter()
        .map(|a| format!("{a}\n"))
        .collect();
    assert_eq!(stdout(&out), want);
    // At the end of the chat the client closed its session: nothing is left in the enclave.
    let h = stack.health();
    assert_eq!(
        (
            h["requests"].as_u64(),
            h["turns"].as_u64(),
            h["sessions"].as_u64(),
            h["closed_sessions"].as_u64(),
        ),
        (Some(1), Some(2), Some(0), Some(1))
    );
}

#[test]
fn wrong_pins_unknown_roots_and_stale_documents_are_refused_before_any_request() {
    let stack = Stack::new(&[], &[]);
    let mut bad = stack.trusted();
    let i = bad.iter().position(|a| a.starts_with("0=")).unwrap();
    bad[i] = format!("0={}", "ab".repeat(48));
    let out = stack.client(&stack.relay_addr, &["ask", "hello"], &bad, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("rejected: pcr_mismatch"),
        "{}",
        stderr(&out)
    );

    // No --root: the AWS root is the only default, and the development chain does not lead to it.
    let out = stack.client(&stack.relay_addr, &["ask", "hello"], &pins(), None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("rejected: chain_untrusted"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stack.health()["requests"], 0);

    // The enclave computes in f32 and says so: a bf16 pin is refused, an f32 pin is met.
    let mut bf16 = stack.trusted();
    bf16.extend(["--dtype".to_string(), "bf16".to_string()]);
    let out = stack.client(&stack.relay_addr, &["ask", "hello"], &bf16, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("dtype_mismatch"), "{}", stderr(&out));
    assert_eq!(stack.health()["requests"], 0);
    let mut f32_pin = stack.trusted();
    f32_pin.extend(["--dtype".to_string(), "f32".to_string()]);
    let out = stack.client(&stack.relay_addr, &["attest"], &f32_pin, None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let old = Stack::new(&["--backdate-documents-test-only", "3600"], &[]);
    let out = old.client(&old.relay_addr, &["ask", "hello"], &old.trusted(), None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("rejected: stale"),
        "{}",
        stderr(&out)
    );
    assert_eq!(old.health()["requests"], 0);
}

/// The error comes last on stderr, after the attestation line.
fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or("")
}

#[test]
fn a_relay_that_corrupts_the_answer_is_caught_and_nothing_passes_as_complete() {
    let stack = Stack::new(&[], &[]);
    // Attest through the honest relay; the faulty relays then carry only the request and answer.
    let ok = ask_json(&stack, &stack.relay_addr, "warm up", "4");
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let cache = stack.dir.path().join("cache");
    // The enclave the honest relay led to, as the cache lists it for that relay.
    let cached = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("relay-")
        })
        .unwrap();
    for fault in ["flip:70", "drop:60:20", "reorder:45:30", "drop:200:100000"] {
        let (_relay, addr) = start_relay(
            stack.dir.path(),
            &stack.socket,
            &["--fault-test-only", fault],
        );
        let alias = cache.join(format!("relay-{}.list", addr.replace(':', "_")));
        std::fs::copy(&cached, &alias).unwrap();
        let out = ask_json(&stack, &addr, "What does my plan cover?", "24");
        assert_eq!(out.status.code(), Some(1), "{fault}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            v["ok"] == false && v.get("answer").is_none(),
            "{fault}: a partial answer was printed as complete: {v}"
        );
        let err = stderr(&out);
        assert!(
            [
                "chunk_auth",
                "truncated_response",
                "malformed_frame",
                "unknown_frame",
                "truncated_frame",
                "oversize_frame"
            ]
            .iter()
            .any(|c| last_line(&err).starts_with(&format!("error: {c}"))),
            "{fault}: {err}"
        );
        // Streaming mode: whatever text arrived is followed by an error and a failing exit status.
        let out = stack.client(
            &addr,
            &["ask", "--max-tokens", "24", "What does my plan cover?"],
            &stack.trusted(),
            None,
        );
        assert_eq!(out.status.code(), Some(1), "{fault}");
        assert!(last_line(&stderr(&out)).starts_with("error: "), "{fault}");
    }
}

#[test]
fn an_enclave_restart_is_survived_by_re_attesting() {
    let mut stack = Stack::new(&[], &[]);
    let q = "How do I appeal a denied claim?";
    let first = ask_json(&stack, &stack.relay_addr, q, "8");
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    drop(stack.enclave.take());
    stack.enclave = Some(start_enclave(stack.dir.path(), &stack.socket, &[]));
    // The cached attestation names the old keys; the client must re-attest once and succeed.
    let second = ask_json(&stack, &stack.relay_addr, q, "8");
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    let a: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(a["answer"], b["answer"]);
    assert_ne!(a["module_id"], b["module_id"]);
}

#[test]
fn the_prompt_never_crosses_the_relay_or_reaches_a_log_in_the_clear() {
    let capture_dir = tempfile::tempdir().unwrap();
    let capture = capture_dir.path().join("relayed.bin");
    let stack = Stack::new(&[], &["--capture-test-only", capture.to_str().unwrap()]);
    let marker = "ZQX-MARKER-7731-ana-ruiz-plan-4471";
    let out = ask_json(
        &stack,
        &stack.relay_addr,
        &format!("My member id is {marker}. What is covered?"),
        "16",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let answer = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["answer"]
        .as_str()
        .unwrap()
        .to_string();
    let relayed = std::fs::read(&capture).unwrap();
    assert!(relayed.len() > 4000, "nothing captured");
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(&relayed, marker.as_bytes()),
        "the prompt crossed the relay in the clear"
    );
    if answer.len() >= 8 {
        assert!(
            !contains(&relayed, answer.as_bytes()),
            "the answer crossed the relay in the clear"
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    for log in [
        &stack.relay.stderr_log,
        &stack.enclave.as_ref().unwrap().stderr_log,
    ] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            !text.contains(marker),
            "{} logged the prompt",
            log.display()
        );
        assert!(!text.is_empty(), "{} logged nothing", log.display());
    }
}

#[test]
fn fifty_concurrent_clients_get_fifty_correct_answers() {
    let stack = Stack::new(&[], &[]);
    let questions = [
        "What is a copay?",
        "What is a deductible?",
        "Who sees my records?",
        "What is an HSA?",
        "When can I retire?",
    ];
    let want: Vec<String> = questions
        .iter()
        .map(|q| expected("", &[q], 6)[0].clone())
        .collect();
    let trust = stack.trusted();
    let children: Vec<(usize, Child)> = (0..50)
        .map(|i| {
            let child = Command::new(bin("confidant"))
                .args(["ask", "--json", "--max-tokens", "6", questions[i % 5]])
                .args(["--relay", &stack.relay_addr, "--relay-ca"])
                .arg(stack.dir.path().join("relay-tls/cert.pem"))
                .args(&trust)
                .env(
                    "CONFIDANT_CACHE_DIR",
                    stack.dir.path().join(format!("cache-{i}")),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (i, child)
        })
        .collect();
    for (i, child) in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "client {i}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["answer"].as_str().unwrap(), want[i % 5], "client {i}");
    }
    assert_eq!(stack.health()["requests"], 50);
}

#[test]
fn the_load_generator_with_twenty_clients_loses_and_mixes_up_nothing() {
    let stack = Stack::new(&[], &[]);
    let questions = [
        "What is a copay?",
        "What is a deductible?",
        "Who sees my records?",
        "What is an HSA?",
    ];
    let expect: serde_json::Map<String, serde_json::Value> = questions
        .iter()
        .map(|q| (q.to_string(), expected("", &[q], 8)[0].clone().into()))
        .collect();
    let file = stack.dir.path().join("expect.json");
    std::fs::write(&file, serde_json::Value::Object(expect).to_string()).unwrap();
    let out = Command::new(bin("confidant-load"))
        .args(["--relay", &stack.relay_addr, "--relay-ca"])
        .arg(stack.dir.path().join("relay-tls/cert.pem"))
        .args(stack.trusted())
        .args(["--clients", "20", "--questions", "2", "--max-tokens", "8"])
        .arg("--expect")
        .arg(&file)
        .args([
            "--enclave-pid",
            &stack.enclave.as_ref().unwrap().child.id().to_string(),
        ])
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", stderr(&out)));
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["answered_ok"], 40, "{report}");
    assert_eq!(report["mismatched"], 0, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert!(report["ttft_ms_p50"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["enclave_peak_rss_mib"].as_f64().unwrap() > 50.0,
        "{report}"
    );
}
