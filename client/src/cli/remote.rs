//! `confidant attest`, `ask` and `chat`.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use confidant_client::config::ConfigFile;
use confidant_client::receipts::ReceiptFile;
use confidant_client::remote::{self, Attested};
use confidant_client::{input, Client, RemoteError, ReportedCode, Timeouts, Trust, TrustConfig};
use confidant_protocol::keyconfig::decode_list;
use confidant_protocol::message::{Ask, Finish};
use confidant_protocol::receipt;
use confidant_protocol::session::ClientSession;
use confidant_protocol::Code;
use confidant_verifier::PcrPin;
use serde_json::json;

use crate::pins::DigestPins;
use crate::time_arg::{format_ms, format_secs};
use crate::{exit, CliError};

/// The trust options every remote command shares. Flags win over environment variables, which win
/// over the configuration file (`confidant config-path` prints where it is looked for).
#[derive(Debug, Clone, clap::Args)]
pub struct TrustArgs {
    /// The relay in front of the enclave [env: CONFIDANT_RELAY; config: relay].
    #[arg(long, value_name = "HOST:PORT", env = "CONFIDANT_RELAY")]
    pub relay: Option<String>,
    /// CA certificate (PEM) for the relay's TLS certificate [default: the system roots].
    #[arg(long, value_name = "PEM")]
    pub relay_ca: Option<PathBuf>,
    /// Trust this attestation root instead of the AWS Nitro root (e.g. a development root).
    #[arg(long = "root", value_name = "PEM")]
    pub roots: Vec<PathBuf>,
    /// Pin a PCR (index and 48 bytes of hex); repeatable. PCR0 (or PCR8) must be pinned.
    #[arg(long = "pcr", value_name = "IDX=HEX")]
    pub pcrs: Vec<PcrPin>,
    /// TOML policy file (pcrs, max_age_secs, allow_debug, model_digest, settings_digest, dtype).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub digests: DigestPins,
    /// Pin the operator's release key (hex, from `confidant-ops release-key`) instead of, or as well
    /// as, PCRs: the enclave's PCR0/1/2 must be listed in a valid manifest it signed, of a release no
    /// older than one already accepted from this relay [config: release_key].
    #[arg(long, value_name = "HEX")]
    pub release_key: Option<String>,
    /// Pin releases signed through Sigstore: the transparency log's trusted root (JSON, as
    /// Sigstore's TUF repository publishes it); checked offline [config: release_sigstore_root].
    #[arg(long, value_name = "FILE", requires = "release_sigstore_key")]
    pub release_sigstore_root: Option<PathBuf>,
    /// The operator's cosign public key (PEM, `cosign.pub`) that signed those releases
    /// [config: release_sigstore_key].
    #[arg(long, value_name = "FILE", requires = "release_sigstore_root")]
    pub release_sigstore_key: Option<PathBuf>,
    /// Maximum age of a fetched document, seconds; a cached one older than this is fetched again.
    #[arg(long, value_name = "SECS")]
    pub max_age: Option<u64>,
    /// Accept an enclave in debug mode (PCR0 all zeros).
    #[arg(long)]
    pub allow_debug: bool,
    /// Accept ANY enclave, pinned or not: for experiments only, never with real data.
    #[arg(long)]
    pub insecure_unpinned: bool,
    /// Fetch a fresh attestation instead of using the cache.
    #[arg(long)]
    pub fresh: bool,
    /// Seconds to wait for the relay's QUIC connection [default: 5].
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<u64>,
    /// Seconds an exchange (a question and its whole answer) may take, however the bytes trickle in
    /// [default: 120].
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Configuration file [env: CONFIDANT_CONFIG; default: ~/.config/confidant/config.toml].
    #[arg(long, value_name = "FILE", env = "CONFIDANT_CONFIG")]
    pub config: Option<PathBuf>,
    /// No progress or attestation lines on stderr (errors still go there).
    #[arg(long, short)]
    pub quiet: bool,
}

/// The relay and trust, resolved from flags, environment and the configuration file.
struct Resolved {
    relay: String,
    relay_ca: Option<PathBuf>,
    trust: Trust,
    timeouts: Timeouts,
}

impl TrustArgs {
    fn resolve(&self) -> Result<Resolved, CliError> {
        let (_, file) = ConfigFile::load(self.config.as_deref())?;
        let relay = self.relay.clone().or(file.relay.clone()).ok_or_else(|| {
            CliError::Invalid(
                "no relay: give --relay HOST:PORT, set CONFIDANT_RELAY, or put relay in the config file"
                    .into(),
            )
        })?;
        let trust = Trust::build(&TrustConfig {
            roots: self.roots.clone(),
            pcrs: self.pcrs.clone(),
            policy: self.policy.clone(),
            model_digest: self.digests.model_digest.clone(),
            settings_digest: self.digests.settings_digest.clone(),
            dtype: self.digests.dtype.clone(),
            release_key: self.release_key.clone(),
            release_sigstore_root: self.release_sigstore_root.clone(),
            release_sigstore_key: self.release_sigstore_key.clone(),
            max_age: self.max_age,
            allow_debug: self.allow_debug,
            allow_unpinned: self.insecure_unpinned,
            file: file.clone(),
        })?;
        let timeouts = Timeouts {
            connect: Duration::from_secs(
                self.connect_timeout
                    .or(file.connect_timeout_secs)
                    .unwrap_or(5)
                    .max(1),
            ),
            exchange: Duration::from_secs(self.timeout.or(file.timeout_secs).unwrap_or(120).max(1)),
            ..Timeouts::default()
        };
        Ok(Resolved {
            relay,
            relay_ca: self.relay_ca.clone().or(file.relay_ca),
            trust,
            timeouts,
        })
    }

    fn progress(&self, message: &str) {
        if !self.quiet && std::io::stderr().is_terminal() {
            eprintln!("\u{2026} {message}");
        }
    }

    /// Connects to the relay with this trust.
    async fn connect(&self, resolved: Resolved) -> Result<Client, RemoteError> {
        self.progress(&format!("connecting to the relay {}", resolved.relay));
        let client = Client::connect(
            &resolved.relay,
            resolved.relay_ca.as_deref(),
            resolved.trust,
            resolved.timeouts,
        )
        .await?;
        Ok(if self.fresh {
            client.without_cache()
        } else {
            client
        })
    }

    /// The line every successful attestation prints: what was trusted in the end.
    fn announce(&self, a: &Attested, pins: &[String]) {
        if self.quiet {
            return;
        }
        let root = a.verified.root();
        let source = if a.cached {
            format!("cached, fetched {} s ago", a.age_secs())
        } else {
            "fetched now".into()
        };
        let instance = a
            .enclave()
            .map(|id| format!(", instance {}", &hex::encode(id)[..8]))
            .unwrap_or_default();
        eprintln!(
            "attested {}{instance} ({source}); root {} [{}]{}; pinned {}",
            a.verified.doc().module_id,
            root.subject,
            &hex::encode(root.sha256)[..16],
            if root.is_aws_nitro_root() {
                ", the AWS Nitro root"
            } else {
                ", a DEVELOPMENT root, not AWS"
            },
            if pins.is_empty() {
                "NOTHING (--insecure-unpinned: any enclave would have been accepted)".to_string()
            } else {
                pins.join(", ")
            } + &a
                .release
                .map(|v| format!(" (admitted by release {v})"))
                .unwrap_or_default()
        );
    }
}

#[derive(Debug, clap::Args)]
pub struct AttestArgs {
    #[command(flatten)]
    trust: TrustArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Save the document (raw COSE) for `confidant verify`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct GenerationArgs {
    /// Most tokens in the answer.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Sampling temperature (0: greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling threshold.
    #[arg(long)]
    top_p: Option<f32>,
    /// Sampling seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Ask for each piece of the answer as it is generated, unpadded: a first token up to one
    /// cadence (100 ms) sooner and fewer bytes, but whoever carries the traffic sees the question's
    /// size and the answer's length and token timing. By default requests are padded to size
    /// buckets and answers arrive as fixed-size chunks on a fixed cadence.
    #[arg(long)]
    unshaped: bool,
}

impl GenerationArgs {
    /// A question; `session` asks the enclave to keep the conversation for follow-up turns.
    fn ask(&self, prompt: String, session: bool) -> Ask {
        Ask {
            session,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: None,
            seed: self.seed,
            shape: self.unshaped.then_some(false),
            ..Ask::new(prompt)
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct AskArgs {
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    generation: GenerationArgs,
    /// Print one JSON object at the end instead of streaming.
    #[arg(long)]
    json: bool,
    /// Save the answer's signed receipt, with the attestation document it was bound to, for
    /// `confidant verify-receipt`.
    #[arg(long, value_name = "FILE")]
    receipt: Option<PathBuf>,
    /// The question, or `-` to read it from stdin.
    #[arg(value_name = "QUESTION")]
    question: String,
}

#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    generation: GenerationArgs,
    /// Save every answer's signed receipt (a session's turns chained), with the attestation
    /// document, for `confidant verify-receipt`; rewritten after each answer.
    #[arg(long, value_name = "FILE")]
    receipt: Option<PathBuf>,
}

/// Saves `file` to `path` (after an answer was shown: a failure is reported, the answer stands).
fn save_receipts(file: &ReceiptFile, path: &std::path::Path) -> Result<(), CliError> {
    file.save(path)
        .map_err(|e| CliError::Io(format!("--receipt {}: {e}", path.display())))
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Io(e.to_string()))
}

/// Maps a remote failure to the exit status and the message on stderr (and, with `--json`, one JSON
/// object on stdout): `rejected: <code>: …` for a verdict against the enclave, `error: <code>: …` for
/// a failure to complete the exchange.
fn fail(e: RemoteError, json: bool) -> Result<i32, CliError> {
    if let RemoteError::Setup(m) = &e {
        return Err(CliError::Invalid(m.clone()));
    }
    let (code, detail) = match &e {
        RemoteError::Attestation(a) => (a.code().to_string(), a.detail().to_string()),
        other => (other.code().to_string(), other.to_string()),
    };
    let unavailable = matches!(e, RemoteError::Connect(_) | RemoteError::Timeout(_))
        || matches!(
            e.code(),
            ReportedCode::Wire(
                Code::EnclaveUnreachable
                    | Code::EnclaveUnknown
                    | Code::RelayOverloaded
                    | Code::Busy
            )
        );
    let (verdict, status) = if e.is_rejection() {
        ("rejected", exit::REJECTED)
    } else if unavailable {
        ("error", exit::UNAVAILABLE)
    } else {
        ("error", exit::REJECTED)
    };
    eprintln!("{verdict}: {code}: {detail}");
    if json {
        println!(
            "{}",
            json!({"ok": false, verdict: true, "code": code, "detail": detail})
        );
    }
    Ok(status)
}

pub fn attest(args: &AttestArgs) -> Result<i32, CliError> {
    let resolved = args.trust.resolve()?;
    let pins = resolved.trust.pins.clone();
    runtime()?.block_on(async {
        let mut client = match args.trust.connect(resolved).await {
            Ok(c) => c,
            Err(e) => return fail(e, args.json),
        };
        args.trust.progress("verifying the enclave's attestation");
        let attested = match client.attest_fresh().await {
            Ok(a) => a.clone(),
            Err(e) => return fail(e, args.json),
        };
        client.close();
        if let Some(path) = &args.out {
            std::fs::write(
                path,
                input::bundle_json(&attested.document, &attested.key_configs),
            )
            .map_err(|e| CliError::Io(format!("{}: {e}", path.display())))?;
        }
        let summary = summary_json(&attested, &pins);
        if args.json {
            println!("{summary}");
        } else {
            print!("{}", summary_text(&summary));
        }
        Ok(exit::VALID)
    })
}

fn summary_json(a: &Attested, pins: &[String]) -> serde_json::Value {
    let doc = a.verified.doc();
    let root = a.verified.root();
    let ud = &a.recipient.user_data;
    let configs = decode_list(&a.key_configs).unwrap_or_default();
    json!({
        "module_id": doc.module_id,
        "timestamp_ms": doc.timestamp,
        "document_sha256": hex::encode(a.verified.document_sha256()),
        "pcrs": doc.pcrs.iter().map(|(i, v)| (i.to_string(), json!(hex::encode(v)))).collect::<serde_json::Map<_, _>>(),
        "model_digest": hex::encode(ud.model),
        "release": a.release,
        "settings_digest": ud.settings.map(hex::encode),
        "dtype": ud.dtype,
        "keys_expire": ud.exp.as_secs(),
        "key_configs": configs.iter().map(|c| json!({
            "key_id": c.key_id, "kem": c.kem.name(), "aeads": c.aeads.iter().map(|x| x.name()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "suite": format!("{} + {}", a.recipient.suite.kem.name(), a.recipient.suite.aead.name()),
        "limits": ud.limits.map(|l| json!({"context_tokens": l.context_tokens, "max_new_tokens": l.max_new_tokens})),
        "root": {"subject": root.subject, "sha256": hex::encode(root.sha256), "aws_nitro_root": root.is_aws_nitro_root()},
        "pinned": pins,
        "cached": a.cached,
        "enclave": ud.id.map(hex::encode),
    })
}

fn summary_text(s: &serde_json::Value) -> String {
    let mut out =
        String::from("attested enclave: document verified, pins matched, key configs bound\n");
    let aws = s["root"]["aws_nitro_root"].as_bool().unwrap_or(false);
    out.push_str(&format!(
        "  root       {} (SHA-256 {}){}\n",
        s["root"]["subject"].as_str().unwrap_or(""),
        s["root"]["sha256"].as_str().unwrap_or(""),
        if aws {
            ", the AWS Nitro root"
        } else {
            "\n             a DEVELOPMENT root, not AWS: only a local test enclave chains to it"
        }
    ));
    let pins: Vec<&str> = s["pinned"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str())
        .collect();
    out.push_str(&format!(
        "  pinned     {}\n",
        if pins.is_empty() {
            "NOTHING (--insecure-unpinned): any enclave would have been accepted".to_string()
        } else {
            pins.join(", ")
        }
    ));
    out.push_str(&format!(
        "  module     {}\n",
        s["module_id"].as_str().unwrap_or("")
    ));
    out.push_str(&format!(
        "  time       {}\n",
        format_ms(s["timestamp_ms"].as_u64().unwrap_or(0))
    ));
    for i in ["0", "1", "2"] {
        if let Some(v) = s["pcrs"][i].as_str() {
            out.push_str(&format!("  PCR{i}       {v}\n"));
        }
    }
    out.push_str(&format!(
        "  model      {}\n",
        s["model_digest"].as_str().unwrap_or("")
    ));
    out.push_str(&format!(
        "  settings   {}\n",
        s["settings_digest"].as_str().unwrap_or("none")
    ));
    for k in s["key_configs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  key {:<6} {} ({})\n",
            k["key_id"],
            k["kem"].as_str().unwrap_or(""),
            k["aeads"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "  expires    {}\n",
        format_secs(s["keys_expire"].as_i64().unwrap_or(0))
    ));
    if let Some(l) = s["limits"].as_object() {
        out.push_str(&format!(
            "  limits     {} tokens of context, {} new tokens per answer\n",
            l["context_tokens"], l["max_new_tokens"]
        ));
    }
    out.push_str(&format!(
        "  using      {}\n",
        s["suite"].as_str().unwrap_or("")
    ));
    out
}

pub fn ask(args: &AskArgs) -> Result<i32, CliError> {
    let question = if args.question == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::Io(format!("stdin: {e}")))?;
        s
    } else {
        args.question.clone()
    };
    if question.trim().is_empty() {
        return Err(CliError::Invalid("the question is empty".into()));
    }
    let resolved = args.trust.resolve()?;
    let pins = resolved.trust.pins.clone();
    // A one-shot question: the enclave keeps nothing once it has answered.
    let request = args.generation.ask(question, false);
    runtime()?.block_on(async {
        let mut client = match args.trust.connect(resolved).await {
            Ok(c) => c,
            Err(e) => return fail(e, args.json),
        };
        args.trust.progress("verifying the enclave's attestation");
        let attested = match client.attested().await {
            Ok(a) => a.clone(),
            Err(e) => return fail(e, args.json),
        };
        args.trust.announce(&attested, &pins);
        if let Err(e) = remote::check_limits(&attested, &request) {
            return fail(e, args.json);
        }
        args.trust.progress("waiting for the first token");
        let mut streamed = false;
        let mut sink = remote::stdout_sink();
        let mut stream = |piece: &str| {
            streamed |= !piece.is_empty();
            sink(piece);
        };
        let mut quiet = |_: &str| {};
        let out: &mut (dyn FnMut(&str) + Send) = if args.json { &mut quiet } else { &mut stream };
        let result = client.ask(&request, out).await;
        // The answer may have come from a re-attested enclave (its keys had changed): report that one.
        let attested = match (&result, client.attested().await) {
            (Ok(_), Ok(now)) => now.clone(),
            _ => attested,
        };
        client.close();
        match result {
            Ok((answer, _)) => {
                if let Some(path) = &args.receipt {
                    let mut file = ReceiptFile::default();
                    file.push(&attested.document, answer.receipt.clone(), false);
                    save_receipts(&file, path)?;
                }
                let t = &answer.trailer;
                if args.json {
                    println!(
                        "{}",
                        json!({
                            "ok": true,
                            "answer": answer.text,
                            "finish": t.finish,
                            "prompt_tokens": t.prompt_tokens,
                            "generated_tokens": t.generated_tokens,
                            "model_digest": hex::encode(attested.recipient.user_data.model),
                            "module_id": attested.verified.doc().module_id,
                            "root_sha256": hex::encode(attested.verified.root().sha256),
                            "cached_attestation": attested.cached,
                            "enclave": attested.enclave().map(hex::encode),
                            "first_chunk_ms": answer.first_chunk.map(|d| d.as_secs_f64() * 1e3),
                            "total_ms": answer.total.as_secs_f64() * 1e3,
                            "receipt_sha256": hex::encode(receipt::hash(&answer.receipt)),
                        })
                    );
                } else {
                    println!();
                    finish_note(&answer, args.trust.quiet);
                }
                Ok(exit::VALID)
            }
            Err(e) => {
                // The partial answer stays on stdout; the line ends before the error.
                if streamed {
                    println!();
                }
                fail(e, args.json)
            }
        }
    })
}

/// How the answer ended, on stderr: a truncated answer is always marked.
fn finish_note(answer: &confidant_client::Answer, quiet: bool) {
    let t = &answer.trailer;
    if t.finish == Finish::Length {
        eprintln!(
            "[truncated: the answer reached its token limit ({} tokens); ask again with a larger --max-tokens]",
            t.generated_tokens
        );
    } else if !quiet {
        eprintln!(
            "[finish: {}; {} prompt tokens, {} generated]",
            t.finish, t.prompt_tokens, t.generated_tokens
        );
    }
}

pub fn chat(args: &ChatArgs) -> Result<i32, CliError> {
    let interactive = std::io::stdin().is_terminal();
    let resolved = args.trust.resolve()?;
    let pins = resolved.trust.pins.clone();
    runtime()?.block_on(async {
        let mut client = match args.trust.connect(resolved).await {
            Ok(c) => c,
            Err(e) => return fail(e, false),
        };
        args.trust.progress("verifying the enclave's attestation");
        let attested = match client.attested().await {
            Ok(a) => a.clone(),
            Err(e) => return fail(e, false),
        };
        args.trust.announce(&attested, &pins);
        if interactive {
            eprintln!(
                "chatting with {} (/reset starts over, /quit or Ctrl-D ends)",
                attested.verified.doc().module_id
            );
        }
        let mut session: Option<ClientSession> = None;
        let mut receipts = ReceiptFile::default();
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        loop {
            if interactive {
                eprint!("you> ");
                let _ = std::io::stderr().flush();
            }
            let Some(line) = lines.next() else { break };
            let line = line.map_err(|e| CliError::Io(format!("stdin: {e}")))?;
            match line.trim() {
                "" => continue,
                "/quit" => break,
                "/reset" => {
                    if let Some(mut s) = session.take() {
                        // Best effort: the enclave would expire it anyway.
                        let _ = client.close_session(&mut s).await;
                    }
                    continue;
                }
                _ => {}
            }
            let request = args.generation.ask(line, true);
            let mut sink = remote::stdout_sink();
            let result = match session.as_mut() {
                Some(s) => client.turn(s, &request, &mut sink).await.map(|a| (a, None)),
                None => client.ask(&request, &mut sink).await.map(|(a, c)| {
                    let mut s = c.into_session();
                    s.chain_receipt(receipt::hash(&a.receipt));
                    (a, Some(s))
                }),
            };
            println!();
            match result {
                Ok((answer, new_session)) => {
                    if answer.trailer.finish == Finish::Length {
                        finish_note(&answer, true);
                    }
                    if let Some(path) = &args.receipt {
                        let document = match client.attested().await {
                            Ok(a) => a.document.clone(),
                            Err(e) => return fail(e, false),
                        };
                        receipts.push(&document, answer.receipt.clone(), new_session.is_none());
                        save_receipts(&receipts, path)?;
                    }
                    if let Some(s) = new_session {
                        session = Some(s);
                    }
                }
                Err(e) => {
                    // The conversation's state is gone with the failed turn; the next line starts over.
                    session = None;
                    if !interactive {
                        client.close();
                        return fail(e, false);
                    }
                    let _ = fail(e, false);
                }
            }
        }
        if let Some(mut s) = session.take() {
            let _ = client.close_session(&mut s).await;
        }
        client.close();
        Ok(exit::VALID)
    })
}
