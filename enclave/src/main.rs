//! `confidant-enclave`: the binary in the enclave image. It serves attested, encrypted questions;
//! `health` probes a running one; `measure` (local builds) prints the PCRs the emulated NSM reports.
//! The operator's tools are `confidant-ops`; the model's are `confidant-model`.
//!
//! Exit codes: 0 success, 1 a check failed, 2 usage or I/O error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod health;
mod serve;
mod shell;

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
    /// Serve attested, encrypted questions.
    Serve(Box<serve::ServeArgs>),
    /// Ask a running enclave for its health (counts only, nothing secret).
    Health {
        /// Where it listens: vsock:CID:PORT, tcp:HOST:PORT or unix:PATH.
        #[arg(long, value_name = "ENDPOINT")]
        connect: confidant_protocol::endpoint::Endpoint,
    },
    /// Print the PCRs the emulated NSM will report for this binary and model, as IDX=HEX lines.
    #[cfg(feature = "emulated-nsm")]
    Measure {
        #[arg(long, value_name = "DIR")]
        model: std::path::PathBuf,
        /// Print one JSON object (PCRs and the model digest).
        #[arg(long)]
        json: bool,
    },
}

#[cfg(feature = "emulated-nsm")]
fn measure(model: &std::path::Path, json: bool) -> Result<u8, String> {
    use confidant_nsm::measure;
    let digest = measure::stored_model_digest(model)?;
    let pcrs = measure::this_binary_pcrs(&digest).map_err(|e| e.to_string())?;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            confidant_runtime::logging::init();
            serve::run(*args)
        }
        Command::Health { connect } => health::run(&connect),
        #[cfg(feature = "emulated-nsm")]
        Command::Measure { model, json } => measure(&model, json),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
