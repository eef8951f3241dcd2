//! The end-to-end harness: the real binaries (`confidant-enclave`, `confidant-relay`, `confidant`,
//! `confidant-ops`, `confidant-kms-gate`) started on loopback, and the fixtures they share. The tests
//! themselves are in `tests/`.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use confidant_model::generate::{generate, Conversation, GenerateParams};
use confidant_model::template::ChatTemplate;
use confidant_model::testing::{process_scratch_dir, write_demo};
use confidant_model::{Dtype, LoadedModel};

pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built (cargo test --workspace or make test builds it)",
        path.display()
    );
    path
}

/// cargo's `target/tmp` (beside the profile directory the test binaries run from).
pub fn target_tmp() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .unwrap()
        .join("tmp")
}

/// A directory for the whole test process (see `confidant_model::testing`).
pub fn scratch_dir() -> tempfile::TempDir {
    process_scratch_dir(&target_tmp()).unwrap()
}

/// The demo model and a development CA, made once for all tests.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch_dir();
        write_demo(&dir.path().join("model")).unwrap();
        let status = Command::new(bin("confidant-ops"))
            .arg("dev-ca")
            .arg("--out")
            .arg(dir.path().join("ca"))
            .status()
            .unwrap();
        assert!(status.success());
        dir
    })
    .path()
}

pub fn pins() -> Vec<String> {
    pins_for(&fixtures().join("model"))
}

/// `--pcr IDX=HEX` arguments for the emulated PCRs of `model` as stored.
pub fn pins_for(model: &Path) -> Vec<String> {
    let out = Command::new(bin("confidant-enclave"))
        .args(["measure", "--model"])
        .arg(model)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .flat_map(|l| ["--pcr".to_string(), l.to_string()])
        .collect()
}

#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub stderr_log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a binary and waits for its `listening …` line on stdout.
pub fn start(cmd: &mut Command, log: PathBuf) -> (Proc, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("listening "),
        "no listening line: {line:?}; log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (
        Proc {
            child,
            stderr_log: log,
        },
        line,
    )
}

#[derive(Debug)]
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub enclave: Option<Proc>,
    pub relay: Proc,
    pub relay_addr: String,
    pub socket: PathBuf,
}

pub fn start_enclave(dir: &Path, socket: &Path, extra: &[&str]) -> Proc {
    start_enclave_with(&fixtures().join("model"), dir, socket, extra)
}

pub fn start_enclave_with(model: &Path, dir: &Path, socket: &Path, extra: &[&str]) -> Proc {
    start_enclave_env(model, dir, socket, extra, &[])
}

pub fn start_enclave_env(
    model: &Path,
    dir: &Path,
    socket: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let mut cmd = Command::new(bin("confidant-enclave"));
    cmd.envs(env.iter().copied());
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .arg("--model")
        .arg(model)
        .args(["--nsm", "emulated", "--threads", "1", "--dev-ca"])
        .arg(fixtures().join("ca"))
        .args(extra);
    start(
        &mut cmd,
        dir.join(format!(
            "enclave-{}-{}.log",
            std::process::id(),
            socket.file_stem().unwrap_or_default().to_string_lossy()
        )),
    )
    .0
}

pub fn start_relay(dir: &Path, socket: &Path, extra: &[&str]) -> (Proc, String) {
    start_relay_env(dir, socket, extra, &[])
}

pub fn start_relay_env(
    dir: &Path,
    socket: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Proc, String) {
    let mut cmd = Command::new(bin("confidant-relay"));
    cmd.envs(env.iter().copied());
    cmd.args(["--listen", "127.0.0.1:0", "--upstream"])
        .arg(format!("unix:{}", socket.display()))
        .arg("--self-signed")
        .arg(dir.join("relay-tls"))
        .args(extra);
    let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let (p, line) = start(&mut cmd, dir.join(format!("relay-{n}.log")));
    let addr = line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_start_matches("udp:")
        .to_string();
    (p, addr)
}

impl Stack {
    pub fn new(enclave_extra: &[&str], relay_extra: &[&str]) -> Stack {
        Self::with_model(&fixtures().join("model"), enclave_extra, relay_extra)
    }

    pub fn with_model(model: &Path, enclave_extra: &[&str], relay_extra: &[&str]) -> Stack {
        Self::launch(model, enclave_extra, relay_extra, &[])
    }

    /// Both processes with `env` added to their environment (e.g. `RUST_LOG`).
    pub fn launch(
        model: &Path,
        enclave_extra: &[&str],
        relay_extra: &[&str],
        env: &[(&str, &str)],
    ) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("enclave.sock");
        let enclave = start_enclave_env(model, dir.path(), &socket, enclave_extra, env);
        let (relay, relay_addr) = start_relay_env(dir.path(), &socket, relay_extra, env);
        Stack {
            dir,
            enclave: Some(enclave),
            relay,
            relay_addr,
            socket,
        }
    }

    pub fn client(
        &self,
        relay_addr: &str,
        args: &[&str],
        extra_trust: &[String],
        stdin: Option<&str>,
    ) -> Output {
        let mut cmd = Command::new(bin("confidant"));
        cmd.args(args)
            .args(["--relay", relay_addr, "--relay-ca"])
            .arg(self.dir.path().join("relay-tls/cert.pem"))
            .args(extra_trust)
            .env("CONFIDANT_CACHE_DIR", self.dir.path().join("cache"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let input = stdin.unwrap_or("").to_string();
        let mut pipe = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
        child.wait_with_output().unwrap()
    }

    pub fn trusted(&self) -> Vec<String> {
        let mut t = vec![
            "--root".to_string(),
            fixtures().join("ca/root.pem").display().to_string(),
        ];
        t.extend(pins());
        t
    }

    pub fn health(&self) -> serde_json::Value {
        let out = Command::new(bin("confidant-enclave"))
            .arg("health")
            .arg("--connect")
            .arg(format!("unix:{}", self.socket.display()))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// Peak resident set of a process (`VmHWM`), MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs `confidant-ops` and asserts it succeeded.
pub fn ops(args: &[&str]) -> Output {
    let out = Command::new(bin("confidant-ops"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "confidant-ops {args:?}: {}",
        stderr(&out)
    );
    out
}

/// PCR0,PCR1,PCR2 of the fixture model's emulated image, as `release-sign --pcrs` takes them.
pub fn release_tuple() -> String {
    let values: Vec<String> = pins()
        .iter()
        .filter(|p| !p.starts_with("--"))
        .filter_map(|p| p.split_once('=').map(|(_, v)| v.to_string()))
        .collect();
    values[..3].join(",")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What the model itself says, in process, for the same conversation.
pub fn expected(system: &str, turns: &[&str], max_tokens: usize) -> Vec<String> {
    static MODEL: OnceLock<std::sync::Mutex<LoadedModel>> = OnceLock::new();
    let m = MODEL.get_or_init(|| {
        std::sync::Mutex::new(LoadedModel::load(&fixtures().join("model"), Dtype::F32).unwrap())
    });
    let m = m.lock().unwrap();
    let params = GenerateParams {
        max_new_tokens: max_tokens,
        stop: ChatTemplate::stop_strings(),
        ..Default::default()
    };
    let template = ChatTemplate::new(system);
    let mut conv = Conversation::new(&m.model);
    turns
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let ids = m.turn_ids(&template, t, i == 0).unwrap();
            let mut out = String::new();
            generate(
                &m.model,
                &m.tokenizer,
                &mut conv,
                &ids,
                &params,
                m.eos,
                &mut |p| {
                    out.push_str(p);
                    true
                },
            )
            .unwrap();
            out
        })
        .collect()
}

pub fn ask_json(stack: &Stack, relay: &str, question: &str, max_tokens: &str) -> Output {
    stack.client(
        relay,
        &["ask", "--json", "--max-tokens", max_tokens, question],
        &stack.trusted(),
        None,
    )
}
