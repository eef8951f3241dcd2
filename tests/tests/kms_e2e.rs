//! Sealed settings end to end: `seal` and `serve --sealed-settings` through the real AWS SDK, a real
//! KMS implementation (moto) and the attestation gate (`confidant-kms-gate`), then the client.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use confidant_e2e::*;
use confidant_sealing::sealed::SealedFile;

const REGION: &str = "us-east-1";
const SYSTEM_PROMPT: &str = "You answer health-benefit questions briefly.";
const ACCOUNT: &str = "123456789012";
const ADMIN: &str = "arn:aws:iam::123456789012:role/KeyAdmin";
const OPERATOR: &str = "arn:aws:iam::123456789012:role/Operator";

/// `confidant-ops kms-policy` for these `--pcr IDX=HEX` arguments: the key policy the gate
/// enforces, as AWS KMS would.
fn key_policy(pcr_args: &[String]) -> Vec<u8> {
    let out = Command::new(bin("confidant-ops"))
        .args(["kms-policy", "--account", ACCOUNT, "--admin-role", ADMIN])
        .args(["--operator-role", OPERATOR])
        .args(pcr_args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    out.stdout
}

/// moto's `moto_server`: $MOTO_SERVER, else the project's virtualenv (`make deps` installs it).
fn moto_server() -> PathBuf {
    let path = std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server"));
    assert!(
        path.is_file(),
        "{} not found: `make deps` installs moto (or set MOTO_SERVER)",
        path.display()
    );
    path
}

/// moto, the gate in front of it, a KMS key, and a parent-style credentials server.
struct Kms {
    _moto: Proc,
    gate: Proc,
    moto_addr: String,
    gate_addr: String,
    credentials_addr: String,
    key_arn: String,
    dir: tempfile::TempDir,
}

impl Kms {
    /// `gate_pcrs` (`--pcr IDX=HEX` arguments) are the measurements the key policy requires.
    fn start(gate_pcrs: &[String], gate_extra: &[&str]) -> Kms {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.json");
        std::fs::write(&policy, key_policy(gate_pcrs)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let moto_addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let moto = Proc {
            child,
            stderr_log: dir.path().join("moto.log"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(&moto_addr).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut cmd = Command::new(bin("confidant-kms-gate"));
        cmd.args(["--upstream", &moto_addr, "--root"])
            .arg(fixtures().join("ca/root.pem"))
            .arg("--policy")
            .arg(&policy)
            .args(gate_extra);
        let (gate, line) = start(&mut cmd, dir.path().join("gate.log"));
        let gate_addr = line.split_whitespace().nth(1).unwrap().to_string();
        let key_arn = runtime().block_on(async {
            let kms = sdk(&moto_addr);
            let out = kms.create_key().send().await.unwrap();
            out.key_metadata.unwrap().arn.unwrap()
        });
        Kms {
            _moto: moto,
            gate,
            moto_addr,
            gate_addr,
            credentials_addr: serve_credentials(),
            key_arn,
            dir,
        }
    }

    /// `confidant-ops seal` of `settings`, as an operator with credentials in the environment.
    fn seal(&self, settings: &str) -> (std::process::Output, PathBuf) {
        let input = self.dir.path().join("settings.json");
        let out = self.dir.path().join("settings.sealed");
        std::fs::write(&input, settings).unwrap();
        let output = Command::new(bin("confidant-ops"))
            .args([
                "seal",
                "--key-id",
                &self.key_arn,
                "--region",
                REGION,
                "--in",
            ])
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .args(["--kms-endpoint", &format!("http://{}", self.gate_addr)])
            .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .output()
            .unwrap();
        (output, out)
    }

    /// `serve` arguments that unseal `sealed` through the gate, credentials from the "parent".
    fn serve_args(&self, sealed: &Path) -> Vec<String> {
        vec![
            "--sealed-settings".into(),
            sealed.display().to_string(),
            "--kms-endpoint".into(),
            format!("http://{}", self.gate_addr),
            "--region".into(),
            REGION.into(),
            "--kms-credentials".into(),
            format!("tcp:{}", self.credentials_addr),
        ]
    }

    fn gate_log(&self) -> String {
        std::fs::read_to_string(&self.gate.stderr_log).unwrap_or_default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An SDK client straight to moto (for test set-up: keys, foreign data keys).
fn sdk(moto_addr: &str) -> aws_sdk_kms::Client {
    use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_kms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .endpoint_url(format!("http://{moto_addr}"))
        .build();
    aws_sdk_kms::Client::from_conf(config)
}

/// What the parent instance does at boot: serve its role's credentials (IMDS JSON) on a port.
fn serve_credentials() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(
                br#"{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"ASIATEST",
                    "SecretAccessKey":"secret","Token":"token","Expiration":"2999-01-01T00:00:00Z"}"#,
            );
        }
    });
    addr
}

/// Runs `serve` expecting it to refuse to start; returns its stderr.
fn serve_refused(extra: &[String]) -> String {
    serve_refused_with(&fixtures().join("model"), extra)
}

fn serve_refused_with(model: &Path, extra: &[String]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin("confidant-enclave"))
        .arg("serve")
        .arg("--listen")
        .arg(format!("unix:{}", dir.path().join("e.sock").display()))
        .arg("--model")
        .arg(model)
        .args(["--nsm", "emulated", "--threads", "1", "--dev-ca"])
        .arg(fixtures().join("ca"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve kept running; it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "it must not listen"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn settings_json() -> String {
    format!(r#"{{"system_prompt":"{SYSTEM_PROMPT}","max_new_tokens":12,"default_new_tokens":8}}"#)
}

fn digest_line(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("settings digest "))
        .unwrap_or_else(|| {
            panic!(
                "no digest line: {text}; {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string()
}

/// `confidant attest --json`, which must succeed.
fn attest(stack: &Stack, trust: &[String]) -> serde_json::Value {
    let out = stack.client(&stack.relay_addr, &["attest", "--json"], trust, None);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `confidant ask` of `q` for `max_tokens` tokens, which must succeed: the answer.
fn answer(stack: &Stack, trust: &[String], q: &str, max_tokens: usize) -> String {
    let n = max_tokens.to_string();
    let out = stack.client(
        &stack.relay_addr,
        &["ask", "--json", "--max-tokens", &n, q],
        trust,
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["answer"].as_str().unwrap().to_string()
}

#[test]
fn sealed_settings_reach_only_the_attested_enclave_and_are_attested() {
    let kms = Kms::start(&pins(), &[]);
    let (out, sealed) = kms.seal(&settings_json());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = digest_line(&out);
    assert_eq!(
        digest,
        hex::encode(confidant_sealing::settings::digest(
            settings_json().as_bytes()
        ))
    );
    let file = std::fs::read_to_string(&sealed).unwrap();
    assert!(
        !file.contains("health-benefit"),
        "the sealed file holds the prompt in the clear"
    );

    let serve: Vec<String> = kms.serve_args(&sealed);
    let serve: Vec<&str> = serve.iter().map(String::as_str).collect();
    let stack = Stack::new(&serve, &[]);
    assert!(kms.gate_log().contains("released to the attested key"));

    // The client sees the digest, and can pin it.
    let mut trust = stack.trusted();
    trust.extend(["--settings-digest".to_string(), digest.clone()]);
    let v = attest(&stack, &trust);
    assert_eq!(v["settings_digest"].as_str(), Some(digest.as_str()));

    // The unsealed settings are in force: the system prompt leads the conversation, and the limit
    // caps what a client may ask for.
    let q = "Is a hearing aid covered by my plan?";
    assert_eq!(
        answer(&stack, &trust, q, 6),
        expected(SYSTEM_PROMPT, &[q], 6)[0]
    );
    let out = stack.client(
        &stack.relay_addr,
        &["ask", "--max-tokens", "13", q],
        &trust,
        None,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad_request"), "{}", stderr(&out));

    // A different settings pin is refused before any question is sent.
    let mut wrong = stack.trusted();
    wrong.extend(["--settings-digest".to_string(), "00".repeat(32)]);
    let out = stack.client(&stack.relay_addr, &["ask", q], &wrong, None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("settings_mismatch"),
        "{}",
        stderr(&out)
    );

    // Nothing secret in any log.
    for log in [
        &stack.enclave.as_ref().unwrap().stderr_log,
        &stack.relay.stderr_log,
        &kms.gate.stderr_log,
    ] {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            !text.contains("health-benefit"),
            "{}: {text}",
            log.display()
        );
    }
}

#[test]
fn an_enclave_with_other_pcrs_is_refused_by_the_key_policy() {
    let mut other = pins();
    let pcr0 = other.iter_mut().find(|p| p.starts_with("0=")).unwrap();
    *pcr0 = format!("0={}", "ab".repeat(48));
    let kms = Kms::start(&other, &[]);
    let (out, sealed) = kms.seal(&settings_json());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = serve_refused(&kms.serve_args(&sealed));
    assert!(
        err.contains("[kms_refused]") && err.contains("AccessDeniedException"),
        "{err}"
    );
    assert!(err.contains("refusing to serve"), "{err}");
    assert!(
        kms.gate_log().contains(
            "refused by the key policy: no statement allows it (not satisfied: \
             EnclaveDecryptsWithMatchingAttestation: kms:RecipientAttestation:PCR0)"
        ),
        "{}",
        kms.gate_log()
    );
}

#[test]
fn kms_policy_binds_decrypt_to_the_measurements() {
    let pins = pins();
    let policy: serde_json::Value = serde_json::from_slice(&key_policy(&pins)).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    let allow = statements
        .iter()
        .find(|s| s["Effect"] == "Allow" && s["Action"] == "kms:Decrypt")
        .unwrap();
    let required = allow["Condition"]["StringEqualsIgnoreCase"]
        .as_object()
        .unwrap();
    // Exactly the PCRs `measure` printed, as condition keys.
    let want: Vec<(String, String)> = pins
        .iter()
        .filter(|a| *a != "--pcr")
        .map(|p| {
            let (i, v) = p.split_once('=').unwrap();
            (format!("kms:RecipientAttestation:PCR{i}"), v.to_lowercase())
        })
        .collect();
    let got: Vec<(String, String)> = required
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    assert_eq!(got.len(), want.len());
    for w in &want {
        assert!(got.contains(w), "{w:?} missing from {got:?}");
    }
    assert_eq!(
        allow["Condition"]["StringEquals"]["kms:EncryptionContext:purpose"],
        "confidant-settings"
    );
    assert!(statements.iter().any(|s| s["Effect"] == "Deny"
        && s["Action"] == "kms:Decrypt"
        && s["Condition"]["Null"]["kms:RecipientAttestation:ImageSha384"] == "true"));

    // Bad input: a clear error on stderr, nothing on stdout.
    let out = Command::new(bin("confidant-ops"))
        .args(["kms-policy", "--account", ACCOUNT, "--admin-role", ADMIN])
        .args(["--pcr", "0=zz"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("PCR0 pin: the value is not hex"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_parent_cannot_open_the_sealed_data_key_itself() {
    let kms = Kms::start(&pins(), &[]);
    let (out, sealed) = kms.seal(&settings_json());
    assert!(out.status.success(), "{}", stderr(&out));
    let file = SealedFile::parse(&std::fs::read(&sealed).unwrap()).unwrap();
    // The operator's credentials, the right key, blob and context, but no attestation: the key
    // policy's explicit Deny refuses, so only an attested enclave ever holds the data key.
    let gate = sdk(&kms.gate_addr);
    let err = runtime().block_on(async {
        gate.decrypt()
            .key_id(&kms.key_arn)
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(file.data_key_blob))
            .encryption_context("purpose", "confidant-settings")
            .send()
            .await
            .unwrap_err()
    });
    let err = format!("{:?}", aws_sdk_kms::error::DisplayErrorContext(err));
    assert!(err.contains("AccessDeniedException"), "{err}");
    assert!(
        kms.gate_log()
            .contains("kms:Decrypt: refused by the key policy: denied by statement DenyDecryptWithoutAttestation"),
        "{}",
        kms.gate_log()
    );
    // Nor may it make data keys for another purpose under this key.
    let err = runtime().block_on(async {
        gate.generate_data_key()
            .key_id(&kms.key_arn)
            .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
            .send()
            .await
            .unwrap_err()
    });
    let err = format!("{:?}", aws_sdk_kms::error::DisplayErrorContext(err));
    assert!(err.contains("AccessDeniedException"), "{err}");
}

#[test]
fn a_plaintext_answer_from_kms_is_refused() {
    let kms = Kms::start(&pins(), &["--ignore-recipient-test-only"]);
    let (out, sealed) = kms.seal(&settings_json());
    assert!(out.status.success());
    let err = serve_refused(&kms.serve_args(&sealed));
    assert!(err.contains("[kms_plaintext_only]"), "{err}");
}

#[test]
fn altered_sealed_files_and_foreign_data_keys_refuse_to_serve() {
    let kms = Kms::start(&pins(), &[]);
    let (out, sealed) = kms.seal(&settings_json());
    assert!(out.status.success());
    let original = SealedFile::parse(&std::fs::read(&sealed).unwrap()).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = kms.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };

    let mut tampered = original.clone();
    tampered.ciphertext[3] ^= 0x20;
    let p = write("tampered.sealed", &tampered.to_json());
    assert!(serve_refused(&kms.serve_args(&p)).contains("[sealed_tampered]"));

    let text = String::from_utf8(original.to_json()).unwrap();
    let p = write(
        "context.sealed",
        text.replace("confidant-settings", "other").as_bytes(),
    );
    assert!(serve_refused(&kms.serve_args(&p)).contains("[sealed_encryption_context]"));

    let p = write("truncated.sealed", &original.to_json()[..40]);
    assert!(serve_refused(&kms.serve_args(&p)).contains("[sealed_not_json]"));

    // A data key made under another encryption context: KMS itself refuses to decrypt it with ours.
    let foreign = runtime().block_on(async {
        let out = sdk(&kms.moto_addr)
            .generate_data_key()
            .key_id(&kms.key_arn)
            .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
            .encryption_context("purpose", "something-else")
            .send()
            .await
            .unwrap();
        let key = out.plaintext.unwrap().into_inner();
        SealedFile::seal(
            &kms.key_arn,
            out.ciphertext_blob.unwrap().into_inner(),
            &key,
            settings_json().as_bytes(),
        )
        .unwrap()
    });
    let p = write("foreign.sealed", &foreign.to_json());
    let err = serve_refused(&kms.serve_args(&p));
    assert!(
        err.contains("[kms_refused]") && err.contains("InvalidCiphertextException"),
        "{err}"
    );

    // The blob of another sealed file under the same context opens to another data key.
    let (_, other) = kms.seal(&settings_json());
    let other = SealedFile::parse(&std::fs::read(&other).unwrap()).unwrap();
    let mut swapped = original.clone();
    swapped.data_key_blob = other.data_key_blob;
    let p = write("swapped.sealed", &swapped.to_json());
    assert!(serve_refused(&kms.serve_args(&p)).contains("[sealed_tampered]"));
}

#[test]
fn seal_validates_settings_before_calling_kms() {
    let kms = Kms::start(&pins(), &[]);
    for (settings, want) in [
        (r#"{"temperature":0.2}"#, "unknown field `temperature`"),
        (
            r#"{"max_new_tokens":100000}"#,
            "max_new_tokens must be between 1 and 4096",
        ),
    ] {
        let (out, sealed) = kms.seal(settings);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
        assert!(!sealed.exists());
    }
}

#[test]
fn encrypted_weights_load_only_in_the_enclave_that_unseals_their_key() {
    // The operator: a copy of the demo model with its weights encrypted, the key into the settings.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("model").join(f), model.join(f)).unwrap();
    }
    let settings = dir.path().join("settings.json");
    std::fs::write(&settings, settings_json()).unwrap();
    let out = Command::new(bin("confidant-ops"))
        .args(["encrypt-weights", "--model"])
        .arg(&model)
        .arg("--settings")
        .arg(&settings)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(model.join("model.safetensors")).unwrap();
    let with_key = std::fs::read_to_string(&settings).unwrap();
    let v: serde_json::Value = serde_json::from_str(&with_key).unwrap();
    assert_eq!(v["weights_key"].as_str().unwrap().len(), 64);
    assert_eq!(v["system_prompt"].as_str(), Some(SYSTEM_PROMPT));

    // Without the sealed key the enclave cannot load them.
    let err = serve_refused_with(&model, &[]);
    assert!(err.contains("is encrypted"), "{err}");

    // The key policy admits this image (PCR0 measures the encrypted file as stored).
    let image_pins = pins_for(&model);
    assert_ne!(image_pins, pins(), "PCR0 covers the weights file as stored");
    let kms = Kms::start(&image_pins, &[]);
    let (out, sealed) = kms.seal(&with_key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let serve: Vec<String> = kms.serve_args(&sealed);
    let serve: Vec<&str> = serve.iter().map(String::as_str).collect();
    let stack = Stack::with_model(&model, &serve, &[]);

    // It attests the digest of the weights as loaded (the plain model's), and answers as the plain
    // model does.
    let mut trust = vec![
        "--root".to_string(),
        fixtures().join("ca/root.pem").display().to_string(),
    ];
    trust.extend(image_pins);
    let attested = attest(&stack, &trust);
    let plain =
        confidant_model::LoadedModel::load(&fixtures().join("model"), confidant_model::Dtype::F32)
            .unwrap();
    assert_eq!(
        attested["model_digest"].as_str().unwrap(),
        hex::encode(plain.digest)
    );
    drop(plain);
    let q = "Does my plan cover physiotherapy?";
    assert_eq!(
        answer(&stack, &trust, q, 5),
        expected(SYSTEM_PROMPT, &[q], 5)[0]
    );
}
