//! `confidant verify-receipt`: checks a receipt file offline, as of each document's own time.

use std::path::PathBuf;

use confidant_client::policy::{build_policy, PolicyArgs};
use confidant_client::receipts::{ReceiptFailure, ReceiptFile};
use confidant_client::roots;
use confidant_protocol::receipt::Receipt;
use confidant_verifier::{PcrPin, Verifier};
use serde_json::json;

use crate::time_arg::format_ms;
use crate::{exit, CliError};

#[derive(Debug, clap::Args)]
pub struct VerifyReceiptArgs {
    /// The receipt file `confidant ask --receipt` or `chat --receipt` saved.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Trust this root certificate (PEM) instead of the embedded AWS Nitro root; repeatable.
    #[arg(long = "root", value_name = "PEM")]
    pub roots: Vec<PathBuf>,
    /// Require the document to carry this PCR: index 0..31 and 48 bytes of hex; repeatable.
    #[arg(long = "pcr", value_name = "IDX=HEX")]
    pub pcrs: Vec<PcrPin>,
    /// TOML file with PCR pins (`[pcrs]`, as `verify --policy` reads it); --pcr values override it.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Accept a document from an enclave in debug mode (PCR0 all zeros).
    #[arg(long)]
    pub allow_debug: bool,
    /// The question (a file, UTF-8, exactly as asked): the last receipt must cover it.
    #[arg(long, value_name = "FILE")]
    pub question: Option<PathBuf>,
    /// The answer (a file, UTF-8, exactly as streamed): the last receipt must cover it.
    #[arg(long, value_name = "FILE")]
    pub answer: Option<PathBuf>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    pub json: bool,
}

fn read_text(flag: &str, path: &Option<PathBuf>) -> Result<Option<String>, CliError> {
    let Some(p) = path else { return Ok(None) };
    let bytes =
        std::fs::read(p).map_err(|e| CliError::Io(format!("{flag} {}: {e}", p.display())))?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| CliError::Invalid(format!("{flag} {}: not UTF-8 text", p.display())))
}

fn receipt_json(r: &Receipt) -> serde_json::Value {
    json!({
        "time": format_ms(r.time.as_millis()),
        "finish": r.finish,
        "prompt_tokens": r.prompt_tokens,
        "generated_tokens": r.generated_tokens,
        "question_sha256": hex::encode(r.question),
        "answer_sha256": hex::encode(r.answer),
        "request_sha256": hex::encode(r.request),
    })
}

pub fn run(args: &VerifyReceiptArgs) -> Result<i32, CliError> {
    // Freshness means nothing for an archived document: it is verified as of its own time.
    let policy = build_policy(
        &PolicyArgs {
            file: args.policy.as_deref(),
            pcrs: &args.pcrs,
            max_age_secs: None,
            allow_debug: args.allow_debug,
            nonce: None,
            user_data: None,
            public_key: None,
        },
        u64::MAX / 1000,
    )
    .map_err(|e| CliError::Invalid(e.to_string()))?;
    let verifier = Verifier::new(roots::load(&args.roots)?)
        .map_err(|e| CliError::Invalid(format!("--root: {}", e.detail())))?;
    let question = read_text("--question", &args.question)?;
    let answer = read_text("--answer", &args.answer)?;
    let bytes = std::fs::read(&args.file)
        .map_err(|e| CliError::Io(format!("{}: {e}", args.file.display())))?;
    let outcome = ReceiptFile::from_json(&bytes)
        .and_then(|f| f.verify(&verifier, &policy, question.as_deref(), answer.as_deref()));
    let verified = match outcome {
        Ok(v) => v,
        Err(ReceiptFailure::Unreadable(m)) => {
            return Err(CliError::Invalid(format!("{}: {m}", args.file.display())))
        }
        Err(e) => {
            let code = match &e {
                ReceiptFailure::Attestation { error, .. } => error.code().as_str(),
                ReceiptFailure::Receipt { error, .. } => error.code().as_str(),
                ReceiptFailure::Unreadable(_) => "usage",
            };
            if args.json {
                println!(
                    "{}",
                    json!({"valid": false, "code": code, "detail": e.to_string()})
                );
            }
            eprintln!("rejected: {code}: {e}");
            return Ok(exit::REJECTED);
        }
    };
    let checked: Vec<&str> = [
        ("question", question.is_some()),
        ("answer", answer.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, on)| on.then_some(n))
    .collect();
    if args.json {
        let chains: Vec<_> = verified
            .chains
            .iter()
            .map(|c| {
                let d = c.verified.doc();
                json!({
                    "module_id": d.module_id,
                    "document_time": format_ms(d.timestamp),
                    "root_sha256": hex::encode(c.verified.root().sha256),
                    "pcrs": d
                        .pcrs
                        .iter()
                        .filter(|(i, _)| [0, 1, 2, 8].contains(*i))
                        .map(|(i, v)| (i.to_string(), json!(hex::encode(v))))
                        .collect::<serde_json::Map<_, _>>(),
                    "model_digest": hex::encode(c.user_data.model),
                    "settings_digest": c.user_data.settings.map(hex::encode),
                    "dtype": c.user_data.dtype,
                    "receipts": c.receipts.iter().map(receipt_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({"valid": true, "checked": checked, "chains": chains})
        );
        return Ok(exit::VALID);
    }
    let n: usize = verified.chains.iter().map(|c| c.receipts.len()).sum();
    println!(
        "valid: {n} receipt{} in {} chain{}, each signed by the key its enclave attested",
        if n == 1 { "" } else { "s" },
        verified.chains.len(),
        if verified.chains.len() == 1 { "" } else { "s" }
    );
    for c in &verified.chains {
        let d = c.verified.doc();
        println!(
            "  enclave    {} (document of {})",
            d.module_id,
            format_ms(d.timestamp)
        );
        println!(
            "  root       sha256:{}",
            hex::encode(c.verified.root().sha256)
        );
        for i in [0usize, 1, 2] {
            if let Some(v) = d.pcrs.get(&i) {
                println!("  PCR{i}       {}", hex::encode(v));
            }
        }
        println!("  model      sha256:{}", hex::encode(c.user_data.model));
        if let Some(s) = c.user_data.settings {
            println!("  settings   sha256:{}", hex::encode(s));
        }
        if let Some(dt) = &c.user_data.dtype {
            println!("  dtype      {dt}");
        }
        for (i, r) in c.receipts.iter().enumerate() {
            println!(
                "  answer {:<3} {}: {} prompt tokens, {} generated, finish {}",
                i + 1,
                format_ms(r.time.as_millis()),
                r.prompt_tokens,
                r.generated_tokens,
                r.finish
            );
        }
    }
    if !checked.is_empty() {
        println!(
            "  covers     the given {} (last receipt)",
            checked.join(" and ")
        );
    }
    Ok(exit::VALID)
}
