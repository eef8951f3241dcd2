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

/// The stable code of a boot failure: the `[code]` the unsealing errors carry, else what failed.
fn boot_code(error: &str) -> &str {
    let bracketed = error
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(code, _)| code)
        .filter(|c| {
            !c.is_empty()
                && c.len() <= 40
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
    match bracketed {
        Some(code) => code,
        None if error.starts_with("loading the model") => "model_load",
        None => "boot_failed",
    }
}

/// Tells the parent the boot failed, with the code only; best effort (bounded by a deadline).
fn report_boot_failure(to: &confidant_protocol::endpoint::Endpoint, code: &str) {
    use tokio::io::AsyncWriteExt;
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let line = format!("confidant-boot-failure {code}\n");
    let sent = rt.block_on(tokio::time::timeout(
        std::time::Duration::from_secs(3),
        async {
            let mut s = confidant_runtime::endpoint::connect(to).await?;
            s.write_all(line.as_bytes()).await?;
            s.shutdown().await
        },
    ));
    if !matches!(sent, Ok(Ok(()))) {
        eprintln!("could not report the boot failure to {to}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            confidant_runtime::logging::init();
            let report = args.report_boot.clone();
            let result = serve::run(*args);
            if let (Err(e), Some(to)) = (&result, report) {
                report_boot_failure(&to, boot_code(e));
            }
            result
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

#[cfg(test)]
mod tests {
    #[test]
    fn boot_codes_are_stable_and_carry_nothing_else() {
        assert_eq!(
            super::boot_code(
                "unsealing x: [kms_refused] KMS Decrypt: AccessDenied; refusing to serve"
            ),
            "kms_refused"
        );
        assert_eq!(
            super::boot_code("loading the model: no such file"),
            "model_load"
        );
        assert_eq!(super::boot_code("[Secret prompt] x"), "boot_failed");
        assert_eq!(super::boot_code("anything"), "boot_failed");
    }
}
