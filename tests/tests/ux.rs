//! What a user meets: the client refuses to trust blindly and says what it checked, errors say what to
//! do (exact exit codes and first stderr lines), the cache is visible and bounded, the configuration
//! file and environment work, and the trained demo model answers on topic through the whole stack.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use confidant_e2e::*;

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn ca() -> String {
    fixtures().join("ca/root.pem").display().to_string()
}

#[test]
fn nothing_is_sent_to_an_unpinned_enclave_unless_asked_for_loudly() {
    let stack = Stack::new(&[], &[]);
    let root = vec!["--root".to_string(), ca()];
    let out = stack.client(&stack.relay_addr, &["ask", "hello"], &root, None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        first_line(&stderr(&out)).starts_with("error: unpinned: refusing to send anything"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--pcr 0=HEX"));
    assert_eq!(stack.health()["requests"], 0);

    let mut open = root.clone();
    open.push("--insecure-unpinned".into());
    let out = stack.client(&stack.relay_addr, &["attest"], &open, None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("pinned     NOTHING (--insecure-unpinned)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn attest_names_the_root_and_verify_repeats_every_check_offline() {
    let stack = Stack::new(&[], &[]);
    let saved = stack.dir.path().join("attestation.json");
    let out = stack.client(
        &stack.relay_addr,
        &["attest", "--out", saved.to_str().unwrap()],
        &stack.trusted(),
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("a DEVELOPMENT root, not AWS"), "{text}");
    assert!(text.contains("pinned     PCR0, PCR1, PCR2"), "{text}");

    let model = {
        let json = stack.client(
            &stack.relay_addr,
            &["attest", "--json"],
            &stack.trusted(),
            None,
        );
        let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(v["root"]["aws_nitro_root"], false);
        v["model_digest"].as_str().unwrap().to_string()
    };
    let verify = |extra: &[&str]| {
        Command::new(bin("confidant"))
            .args(["verify", saved.to_str().unwrap(), "--root", &ca()])
            .args(pins())
            .args(extra)
            .output()
            .unwrap()
    };
    let out = verify(&["--model-digest", &model]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("model      {model}")), "{text}");
    assert!(text.contains("(bound: SHA-256 matches)"), "{text}");
    assert!(
        text.contains("pinned     PCR0, PCR1, PCR2, model digest (all matched)"),
        "{text}"
    );

    // The policy file's digest is applied, as attest applies it.
    let policy = stack.dir.path().join("policy.toml");
    std::fs::write(&policy, format!("model_digest = \"{}\"\n", "ab".repeat(32))).unwrap();
    let out = verify(&["--policy", policy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        first_line(&stderr(&out)),
        "rejected: model_mismatch: attested model digest differs from the pinned one"
    );
    // Tampered key configs in the saved file no longer match the document.
    let mut bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    bundle["key_configs"] = "AAAA".into();
    std::fs::write(&saved, bundle.to_string()).unwrap();
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        first_line(&stderr(&out)).starts_with("rejected: key_configs_mismatch"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_cache_is_shown_bounded_by_max_age_bypassed_and_cleared() {
    let stack = Stack::new(&[], &[]);
    let ask = |extra: &[&str]| {
        let mut args = vec!["ask", "--max-tokens", "2"];
        args.extend_from_slice(extra);
        args.push("hello");
        let out = stack.client(&stack.relay_addr, &args, &stack.trusted(), None);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        first_line(&stderr(&out)).to_string()
    };
    assert!(ask(&[]).contains("(fetched now)"));
    let second = ask(&[]);
    assert!(second.contains("(cached, fetched "), "{second}");
    assert!(ask(&["--fresh"]).contains("(fetched now)"));
    std::thread::sleep(Duration::from_millis(2100));
    assert!(
        ask(&["--max-age", "1"]).contains("(fetched now)"),
        "an older cached document is not used"
    );

    let clear = Command::new(bin("confidant"))
        .args(["cache", "clear"])
        .env("CONFIDANT_CACHE_DIR", stack.dir.path().join("cache"))
        .output()
        .unwrap();
    assert_eq!(clear.status.code(), Some(0));
    assert_eq!(stderr(&clear), "removed 1 cached attestation\n");
    assert!(ask(&[]).contains("(fetched now)"));
}

#[test]
fn errors_say_what_went_wrong_and_what_to_do() {
    let stack = Stack::new(&[], &[]);

    // The relay is down: fast, with the connect timeout, exit 3.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let out = stack.client(
        &format!("127.0.0.1:{port}"),
        &["ask", "--connect-timeout", "1", "hello"],
        &stack.trusted(),
        None,
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(first_line(&stderr(&out)).starts_with(&format!(
        "error: relay_unreachable: cannot reach the relay: 127.0.0.1:{port}: no answer within 1 s"
    )));
    assert_eq!(stdout(&out), "", "nothing on stdout before an answer");

    // A relay CA file without a certificate is named as such.
    let out = Command::new(bin("confidant"))
        .args([
            "attest",
            "--relay",
            &stack.relay_addr,
            "--relay-ca",
            "/etc/hostname",
            "--root",
            &ca(),
        ])
        .args(pins())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        first_line(&stderr(&out)),
        "error: --relay-ca /etc/hostname: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file"
    );

    // A PCR mismatch shows both values in full.
    let mut bad = stack.trusted();
    let i = bad.iter().position(|a| a.starts_with("0=")).unwrap();
    let real = bad[i][2..].to_string();
    bad[i] = format!("0={}", "ab".repeat(48));
    let out = stack.client(&stack.relay_addr, &["attest"], &bad, None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        first_line(&stderr(&out)),
        format!(
            "rejected: pcr_mismatch: PCR0 is {real}, pinned {}",
            "ab".repeat(48)
        )
    );

    // Limits the enclave attested are checked before sending; with --json the failure is JSON too.
    let out = stack.client(
        &stack.relay_addr,
        &["ask", "--json", "--max-tokens", "100000", "hello"],
        &stack.trusted(),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    // The limits come from the attested document, so the attestation line comes first.
    let err = stderr(&out);
    assert!(first_line(&err).starts_with("attested "), "{err}");
    assert!(
        err.lines().nth(1).unwrap_or("").starts_with(
            "rejected: bad_request: max_tokens 100000 is outside the enclave's attested range 1..=512 (checked before sending)"
        ),
        "{}",
        stderr(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["code"].as_str()),
        (Some(false), Some("bad_request"))
    );
    assert_eq!(stack.health()["requests"], 0);

    // A truncated answer is marked.
    let out = stack.client(
        &stack.relay_addr,
        &["ask", "--max-tokens", "2", "hello"],
        &stack.trusted(),
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("[truncated: the answer reached its token limit (2 tokens)"),
        "{}",
        stderr(&out)
    );

    // The enclave is down behind a running relay: the relay says so, and the client passes it on.
    let mut stack = stack;
    let mut enclave = stack.enclave.take().unwrap();
    enclave.child.kill().unwrap();
    enclave.child.wait().unwrap();
    let out = stack.client(
        &stack.relay_addr,
        &["ask", "--fresh", "hello"],
        &stack.trusted(),
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        first_line(&stderr(&out)).starts_with("error: enclave_unreachable: "),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "");
}

#[test]
fn the_config_file_and_environment_stand_in_for_flags_and_flags_win() {
    let stack = Stack::new(&[], &[]);
    let config = stack.dir.path().join("config.toml");
    let mut pcrs = String::from("[pcrs]\n");
    for p in pins().iter().filter(|p| *p != "--pcr") {
        let (i, v) = p.split_once('=').unwrap();
        pcrs.push_str(&format!("{i} = \"{v}\"\n"));
    }
    std::fs::write(
        &config,
        format!(
            "relay_ca = \"relay-tls/cert.pem\"\nroots = [\"{}\"]\n{pcrs}",
            ca()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(bin("confidant"))
            .args(args)
            .env("CONFIDANT_CONFIG", &config)
            .env("CONFIDANT_RELAY", &stack.relay_addr)
            .env("CONFIDANT_CACHE_DIR", stack.dir.path().join("cache"))
            .output()
            .unwrap()
    };
    let out = run(&["ask", "--max-tokens", "2", "hello"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        first_line(&stderr(&out)).contains("pinned PCR0, PCR1, PCR2"),
        "{}",
        stderr(&out)
    );
    let out = run(&["attest", "--pcr", &format!("0={}", "cd".repeat(48))]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the flag replaces the file's PCR0"
    );
    let out = run(&["config-path"]);
    assert_eq!(
        stdout(&out),
        format!("{} (from CONFIDANT_CONFIG)\n", config.display())
    );
}

#[test]
fn completions_man_page_and_version_come_from_the_cli_definition() {
    let run = |args: &[&str]| Command::new(bin("confidant")).args(args).output().unwrap();
    let bash = stdout(&run(&["completions", "bash"]));
    assert!(bash.contains("_confidant()") && bash.contains("--insecure-unpinned"));
    assert!(stdout(&run(&["completions", "zsh"])).starts_with("#compdef confidant"));
    let man = stdout(&run(&["man"]));
    assert!(
        man.starts_with(".ie") || man.contains(".TH confidant"),
        "{}",
        &man[..man.len().min(200)]
    );
    let version = stdout(&run(&["--version"]));
    assert!(
        version.starts_with("confidant 0.") && version.contains("(commit "),
        "{version}"
    );
    assert!(
        !version.contains("(commit unknown)"),
        "built from a git checkout: {version}"
    );
}

#[test]
fn the_trained_demo_model_answers_on_topic_through_the_whole_stack() {
    let dir = scratch_dir();
    let model = dir.path().join("demo-model");
    let out = Command::new(bin("confidant-model"))
        .args(["demo-model", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let stack = Stack::with_model(&model, &[], &[]);
    let q = "My name is Ana Ruiz and my plan number is 4471-22. Is a hearing aid covered by my health plan?";
    let mut trust = vec!["--root".to_string(), ca()];
    trust.extend(pins_for(&model));
    let out = stack.client(
        &stack.relay_addr,
        &[
            "ask",
            "--json",
            "--temperature",
            "0",
            "--max-tokens",
            "128",
            q,
        ],
        &trust,
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let answer = v["answer"].as_str().unwrap();
    // The served answer is the trained model's own greedy answer, readable and on topic.
    let local = Command::new(bin("confidant-model"))
        .args(["answer", "--max-tokens", "128", "--model"])
        .arg(&model)
        .arg(q)
        .output()
        .unwrap();
    let want: serde_json::Value = serde_json::from_slice(&local.stdout).unwrap();
    assert_eq!(answer, want[q].as_str().unwrap());
    assert!(!answer.contains('\u{fffd}'), "{answer}");
    assert!(answer.contains("hearing aids"), "{answer}");
    assert_eq!(v["finish"], "stop", "{answer}");
}
