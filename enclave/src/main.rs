//! `confidant-enclave`: the enclave server and its tools.
//!
//! Exit codes: 0 success, 1 a check failed, 2 usage or I/O error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use confidant_enclave::model::Dtype;

mod bench_cmd;
mod kms_check;
mod model_check;
mod seal_cmd;
mod serve_cmd;

#[derive(Debug, Parser)]
#[command(
    name = "confidant-enclave",
    version,
    about = "Confidant enclave: attested, encrypted questions to BLOOM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a BLOOM checkpoint against reference logits and greedy continuations.
    ModelCheck {
        /// Model directory (config.json and model.safetensors).
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        /// Reference file (cases of input ids, last-position logits, 12-token greedy continuation).
        #[arg(long, value_name = "FILE")]
        reference: PathBuf,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Dtype,
    },
    /// Time prefill and decoding; prints one JSON object.
    Bench(bench_cmd::BenchArgs),
    /// Time a whole answer in process (the baseline of the end-to-end overhead); one JSON object.
    #[command(hide = true)]
    BenchGenerate(bench_cmd::GenerateBenchArgs),
    /// Serve attested, encrypted questions.
    Serve(serve_cmd::ServeArgs),
    /// Seal settings under a KMS key (operator side): GenerateDataKey, then AES-256-GCM.
    Seal(seal_cmd::SealArgs),
    /// Encrypt a model's weights (model.safetensors.enc) under a fresh key written into the
    /// settings file; only an enclave that unseals those settings can load them.
    EncryptWeights(seal_cmd::EncryptWeightsArgs),
    /// Make a development CA (root, intermediate) for --nsm emulated. Its root says it is not AWS.
    DevCa {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Print the PCRs the emulated NSM will report for this binary and model, as IDX=HEX lines.
    Measure {
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        /// Print one JSON object (PCRs and the model digest).
        #[arg(long)]
        json: bool,
    },
    /// Ask a running enclave for its health (counts only, nothing secret).
    Health {
        #[arg(long, value_name = "ENDPOINT")]
        connect: confidant_protocol::endpoint::Endpoint,
    },
    /// Print the KMS key policy for sealed settings: Decrypt only with a matching attestation.
    KmsPolicy {
        /// Require this PCR (IDX=HEX, SHA-384); repeatable.
        #[arg(long = "pcr", value_name = "IDX=HEX")]
        pcrs: Vec<String>,
        /// The AWS account that owns the key.
        #[arg(long)]
        account: String,
        /// The role that administers the key (and may not use it).
        #[arg(long, value_name = "ARN")]
        admin_role: String,
        /// The role that seals settings (GenerateDataKey); omit to grant it elsewhere.
        #[arg(long, value_name = "ARN")]
        operator_role: Option<String>,
        /// Require the enclave image's SHA-384.
        #[arg(long, value_name = "HEX")]
        image_sha384: Option<String>,
    },
    /// Check the KMS envelope fixture and the Wycheproof RSA-OAEP vectors in DIR; one JSON object.
    KmsCheck {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Write the local default's model: a BPE tokenizer trained on shipped text and a random-weight
    /// BLOOM of matching vocabulary, deterministic from the seed.
    DemoModel {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

fn init_logging() {
    let mut filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // The SDK and HTTP stack trace requests and responses at debug/trace levels; however verbose
    // the rest, they stay at warnings (KMS answers are ciphertext, but nothing should rely on that).
    for quiet in [
        "aws_smithy_runtime",
        "aws_smithy_http_client",
        "aws_sdk_kms",
        "aws_runtime",
        "hyper",
        "hyper_util",
        "rustls",
    ] {
        if let Ok(d) = format!("{quiet}=warn").parse() {
            filter = filter.add_directive(d);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn measure_cmd(model: &std::path::Path, json: bool) -> Result<u8, String> {
    let digest = confidant_enclave::measure::stored_model_digest(model)?;
    let pcrs = confidant_enclave::measure::this_binary_pcrs(&digest).map_err(|e| e.to_string())?;
    if json {
        let map: serde_json::Map<String, serde_json::Value> = pcrs
            .iter()
            .map(|(i, v)| (i.to_string(), serde_json::json!(hex::encode(v))))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "pcrs": map, "model_digest": hex::encode(digest) })
        );
    } else {
        for i in [0usize, 1, 2] {
            println!("{i}={}", hex::encode(pcrs[&i]));
        }
    }
    Ok(0)
}

fn health_cmd(endpoint: &confidant_protocol::endpoint::Endpoint) -> Result<u8, String> {
    use confidant_protocol::endpoint::Endpoint;
    use confidant_protocol::frame::{Frame, FrameDecoder};
    use std::io::{Read, Write};
    let timeout = Some(std::time::Duration::from_secs(10));
    let mut stream: Box<dyn ReadWrite> = match endpoint {
        Endpoint::Tcp(addr) => {
            let s = std::net::TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
            s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
            Box::new(s)
        }
        Endpoint::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
            Box::new(s)
        }
        Endpoint::Vsock { .. } => {
            return Err("health speaks TCP and Unix sockets (probe vsock from the parent)".into())
        }
    };
    stream
        .write_all(
            &Frame::Health {
                status: String::new(),
            }
            .encode(),
        )
        .map_err(|e| e.to_string())?;
    let mut dec = FrameDecoder::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the enclave closed the connection".into());
        }
        dec.push(&buf[..n]);
        if let Some(frame) = dec.next_frame().map_err(|e| e.to_string())? {
            return match frame {
                Frame::Health { status } => {
                    println!("{status}");
                    Ok(0)
                }
                other => Err(format!("unexpected {} frame", other.name())),
            };
        }
    }
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

fn kms_policy_cmd(
    pcrs: &[String],
    account: String,
    admin_role: String,
    operator_role: Option<String>,
    image_sha384: Option<String>,
) -> Result<u8, String> {
    let mut parsed = Vec::new();
    for p in pcrs {
        let (i, v) = p
            .split_once('=')
            .ok_or(format!("--pcr {p:?}: expected IDX=HEX"))?;
        parsed.push((
            i.parse::<usize>()
                .map_err(|_| format!("--pcr {p:?}: bad index"))?,
            v.to_string(),
        ));
    }
    let spec = confidant_enclave::kms::policy::PolicySpec {
        account,
        admin_role,
        operator_role,
        pcrs: parsed,
        image_sha384,
    };
    let policy = spec.policy().map_err(|e| e.to_string())?;
    println!(
        "{}",
        serde_json::to_string_pretty(&policy).map_err(|e| e.to_string())?
    );
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::ModelCheck {
            model,
            reference,
            dtype,
        } => model_check::run(&model, &reference, dtype),
        Command::Bench(args) => bench_cmd::run(&args),
        Command::BenchGenerate(args) => bench_cmd::run_generate(&args),
        Command::Serve(args) => {
            init_logging();
            serve_cmd::run(args)
        }
        Command::Seal(args) => seal_cmd::run(args),
        Command::EncryptWeights(args) => seal_cmd::encrypt_weights(args),
        Command::DevCa { out } => confidant_enclave::nsm::write_dev_ca(&out)
            .map(|()| {
                eprintln!(
                    "wrote a development CA to {} (root.pem is what clients pass to --root)",
                    out.display()
                );
                0
            })
            .map_err(|e| e.to_string()),
        Command::Measure { model, json } => measure_cmd(&model, json),
        Command::Health { connect } => health_cmd(&connect),
        Command::KmsCheck { dir } => kms_check::run(&dir),
        Command::KmsPolicy {
            pcrs,
            account,
            admin_role,
            operator_role,
            image_sha384,
        } => kms_policy_cmd(&pcrs, account, admin_role, operator_role, image_sha384),
        Command::DemoModel { out, seed } => {
            let spec = confidant_enclave::demo_model::DemoSpec {
                seed,
                ..Default::default()
            };
            confidant_enclave::demo_model::write_demo_model(&out, spec)
                .map(|()| {
                    eprintln!("wrote the demo model to {}", out.display());
                    0
                })
                .map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
