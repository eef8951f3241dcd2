//! `confidant attest`, `ask` and `chat`.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use confidant_client::remote::{self, Attested};
use confidant_client::{Client, RemoteError, Timeouts, Trust, TrustConfig};
use confidant_protocol::keyconfig::decode_list;
use confidant_protocol::message::Ask;
use confidant_protocol::session::ClientSession;
use confidant_verifier::PcrPin;
use serde_json::json;

use crate::time_arg::{format_ms, format_secs};
use crate::{exit, CliError};

/// The trust options every remote command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct TrustArgs {
    /// The relay in front of the enclave.
    #[arg(long, value_name = "HOST:PORT")]
    pub relay: String,
    /// CA certificate (PEM) for the relay's TLS certificate [default: the system roots].
    #[arg(long, value_name = "PEM")]
    pub relay_ca: Option<PathBuf>,
    /// Trust this attestation root instead of the AWS Nitro root (e.g. a development root).
    #[arg(long = "root", value_name = "PEM")]
    pub roots: Vec<PathBuf>,
    /// Pin a PCR (index and 48 bytes of hex); repeatable.
    #[arg(long = "pcr", value_name = "IDX=HEX")]
    pub pcrs: Vec<PcrPin>,
    /// TOML policy file (pcrs, max_age_secs, allow_debug, model_digest, settings_digest, dtype).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The model digest the enclave must attest (SHA-256, hex).
    #[arg(long, value_name = "HEX")]
    pub model_digest: Option<String>,
    /// The settings digest the enclave must attest (SHA-256, hex).
    #[arg(long, value_name = "HEX")]
    pub settings_digest: Option<String>,
    /// The inference dtype the enclave must attest: f32, bf16 or int8 (the weights' precision).
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<String>,
    /// Maximum age of a fetched attestation document, seconds.
    #[arg(long, value_name = "SECS")]
    pub max_age: Option<u64>,
    /// Accept an enclave in debug mode (PCR0 all zeros).
    #[arg(long)]
    pub allow_debug: bool,
    /// Seconds to wait for the relay's QUIC connection.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub connect_timeout: u64,
    /// Seconds an exchange (a question and its whole answer) may take, however the bytes trickle in.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub timeout: u64,
}

impl TrustArgs {
    fn trust(&self) -> Result<Trust, CliError> {
        Trust::build(&TrustConfig {
            roots: self.roots.clone(),
            pcrs: self.pcrs.clone(),
            policy: self.policy.clone(),
            model_digest: self.model_digest.clone(),
            settings_digest: self.settings_digest.clone(),
            dtype: self.dtype.clone(),
            max_age: self.max_age,
            allow_debug: self.allow_debug,
        })
    }

    /// Connects to the relay with this trust.
    async fn connect(&self) -> Result<Client, RemoteError> {
        let trust = self
            .trust()
            .map_err(|e| RemoteError::Setup(e.to_string()))?;
        progress("connecting to the relay");
        let timeouts = Timeouts {
            connect: Duration::from_secs(self.connect_timeout.max(1)),
            exchange: Duration::from_secs(self.timeout.max(1)),
            ..Timeouts::default()
        };
        Client::connect(&self.relay, self.relay_ca.as_deref(), trust, timeouts).await
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
}

fn progress(message: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("\u{2026} {message}");
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Io(e.to_string()))
}

/// Maps a remote failure to the exit status and the message on stderr.
fn fail(e: RemoteError) -> Result<i32, CliError> {
    match &e {
        RemoteError::Setup(m) => Err(CliError::Invalid(m.clone())),
        RemoteError::Connect(m) => Err(CliError::Io(m.clone())),
        RemoteError::Attestation(a) => {
            eprintln!("rejected: {}: {}", a.code(), a.detail());
            Ok(exit::REJECTED)
        }
        _ => {
            eprintln!("error: {}: {e}", e.code());
            Ok(exit::REJECTED)
        }
    }
}

pub fn attest(args: &AttestArgs) -> Result<i32, CliError> {
    runtime()?.block_on(async {
        let mut client = match args.trust.connect().await {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        progress("verifying the enclave's attestation");
        let attested = match client.attest_fresh().await {
            Ok(a) => a.clone(),
            Err(e) => return fail(e),
        };
        client.close();
        if let Some(path) = &args.out {
            std::fs::write(path, &attested.document)
                .map_err(|e| CliError::Io(format!("{}: {e}", path.display())))?;
        }
        let summary = summary_json(&attested);
        if args.json {
            println!("{summary}");
        } else {
            print!("{}", summary_text(&summary));
        }
        Ok(exit::VALID)
    })
}

fn summary_json(a: &Attested) -> serde_json::Value {
    let doc = a.verified.doc();
    let ud = &a.recipient.user_data;
    let configs = decode_list(&a.key_configs).unwrap_or_default();
    json!({
        "module_id": doc.module_id,
        "timestamp_ms": doc.timestamp,
        "document_sha256": hex::encode(a.verified.document_sha256()),
        "pcrs": doc.pcrs.iter().map(|(i, v)| (i.to_string(), json!(hex::encode(v)))).collect::<serde_json::Map<_, _>>(),
        "model_digest": hex::encode(ud.model),
        "settings_digest": ud.settings.map(hex::encode),
        "dtype": ud.dtype,
        "keys_expire": ud.exp.as_secs(),
        "key_configs": configs.iter().map(|c| json!({
            "key_id": c.key_id, "kem": c.kem.name(), "aeads": c.aeads.iter().map(|x| x.name()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "suite": format!("{} + {}", a.recipient.suite.kem.name(), a.recipient.suite.aead.name()),
    })
}

fn summary_text(s: &serde_json::Value) -> String {
    let mut out = String::from("attested enclave (document verified, key configs bound)\n");
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
    // A one-shot question: the enclave keeps nothing once it has answered.
    let request = args.generation.ask(question, false);
    runtime()?.block_on(async {
        let mut client = match args.trust.connect().await {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        progress("verifying the enclave's attestation");
        if let Err(e) = client.attested().await {
            return fail(e);
        }
        progress("waiting for the first token");
        let mut sink = remote::stdout_sink();
        let mut quiet = |_: &str| {};
        let out: &mut (dyn FnMut(&str) + Send) = if args.json { &mut quiet } else { &mut sink };
        let result = client.ask(&request, out).await;
        client.close();
        match result {
            Ok((answer, _)) => {
                if args.json {
                    let attested = client.attested().await.ok().cloned();
                    println!(
                        "{}",
                        json!({
                            "answer": answer.text,
                            "finish": answer.trailer.finish,
                            "prompt_tokens": answer.trailer.prompt_tokens,
                            "generated_tokens": answer.trailer.generated_tokens,
                            "model_digest": attested.as_ref().map(|a| hex::encode(a.recipient.user_data.model)),
                            "module_id": attested.as_ref().map(|a| a.verified.doc().module_id.clone()),
                            "first_chunk_ms": answer.first_chunk.map(|d| d.as_secs_f64() * 1e3),
                            "total_ms": answer.total.as_secs_f64() * 1e3,
                        })
                    );
                } else {
                    println!();
                }
                Ok(exit::VALID)
            }
            Err(e) => {
                if !args.json {
                    println!();
                }
                fail(e)
            }
        }
    })
}

pub fn chat(args: &ChatArgs) -> Result<i32, CliError> {
    let interactive = std::io::stdin().is_terminal();
    runtime()?.block_on(async {
        let mut client = match args.trust.connect().await {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        progress("verifying the enclave's attestation");
        let module = match client.attested().await {
            Ok(a) => a.verified.doc().module_id.clone(),
            Err(e) => return fail(e),
        };
        if interactive {
            eprintln!("chatting with {module} (/reset starts over, /quit or Ctrl-D ends)");
        }
        let mut session: Option<ClientSession> = None;
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
                Some(s) => client.turn(s, &request, &mut sink).await.map(|_| None),
                None => client
                    .ask(&request, &mut sink)
                    .await
                    .map(|(_, c)| Some(c.into_session())),
            };
            println!();
            match result {
                Ok(Some(new_session)) => session = Some(new_session),
                Ok(None) => {}
                Err(e) => {
                    // The conversation's state is gone with the failed turn; the next line starts over.
                    session = None;
                    eprintln!("error: {}: {e}", e.code());
                    if !interactive {
                        client.close();
                        return Ok(exit::REJECTED);
                    }
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
