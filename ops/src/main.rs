//! `confidant-ops`: the operator's tools, run outside the enclave (no libtorch): seal the settings,
//! encrypt the weights at rest, print the KMS key policy, make a development CA.
//!
//! Exit codes: 0 success, 2 usage or I/O error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use confidant_verifier::PcrPin;

mod encrypt_weights;
mod release;
mod seal;

#[derive(Debug, Parser)]
#[command(
    name = "confidant-ops",
    version,
    about = "Confidant operator tools: seal settings, encrypt weights, KMS key policy, development CA"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Seal settings under a KMS key: GenerateDataKey, then AES-256-GCM.
    Seal(seal::SealArgs),
    /// Encrypt a model's weights (model.safetensors.enc) under a fresh key written into the settings
    /// file; only an enclave that unseals those settings can load them.
    EncryptWeights(encrypt_weights::EncryptWeightsArgs),
    /// Print the KMS key policy for sealed settings: Decrypt only with a matching attestation.
    KmsPolicy {
        /// Require this PCR (IDX=HEX, SHA-384); repeatable.
        #[arg(long = "pcr", value_name = "IDX=HEX")]
        pcrs: Vec<PcrPin>,
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
    /// Make a release key (P-384): release-key.pk8 (private) and release-key.pub (what clients pin).
    ReleaseKey(release::KeyArgs),
    /// Sign a release manifest: the images (PCR0,PCR1,PCR2 tuples) a release admits, its model and
    /// settings digests, its version and validity.
    ReleaseSign(release::SignArgs),
    /// Join a manifest body (release-sign --body-out) and the Sigstore bundle cosign made for it
    /// into the file the relay serves.
    ReleasePack(release::PackArgs),
    /// Make a development CA (root, intermediate) for an enclave with the emulated NSM. Its root says
    /// it is not AWS; clients trust it only when given it with --root.
    DevCa {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Seal(args) => seal::run(args),
        Command::EncryptWeights(args) => encrypt_weights::run(args),
        Command::ReleaseKey(args) => release::key(args).map(|()| 0),
        Command::ReleaseSign(args) => release::sign(args).map(|()| 0),
        Command::ReleasePack(args) => release::pack(args).map(|()| 0),
        Command::KmsPolicy {
            pcrs,
            account,
            admin_role,
            operator_role,
            image_sha384,
        } => {
            let spec = confidant_sealing::policy::PolicySpec {
                account,
                admin_role,
                operator_role,
                pcrs: pcrs
                    .iter()
                    .map(|p| (p.index(), hex::encode(p.value())))
                    .collect(),
                image_sha384,
            };
            spec.key_policy()
                .map_err(|e| e.to_string())
                .and_then(|p| serde_json::to_string_pretty(&p.to_json()).map_err(|e| e.to_string()))
                .map(|text| {
                    println!("{text}");
                    0
                })
        }
        Command::DevCa { out } => confidant_nsm::emulated::write_dev_ca(&out)
            .map(|()| {
                eprintln!(
                    "wrote a development CA to {} (root.pem is what clients pass to --root)",
                    out.display()
                );
                0
            })
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
