//! `confidant-ops seal`: the operator's side of sealed settings — validate them, then seal them under
//! a fresh KMS data key (GenerateDataKey, AES-256-GCM).

use std::path::PathBuf;

use confidant_kms::client::{self, KmsTarget};
use confidant_sealing::sealed::SealedFile;
use confidant_sealing::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct SealArgs {
    /// The KMS key (id, ARN or alias) whose policy admits only the attested enclave.
    #[arg(long, value_name = "KEY")]
    key_id: String,
    /// Settings JSON: system_prompt, max_new_tokens, default_new_tokens, weights_key.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// Where to write the sealed file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// KMS endpoint URL (default: the region's); plain http only to loopback.
    #[arg(long, value_name = "URL")]
    kms_endpoint: Option<String>,
    /// AWS region of the key (default: $AWS_REGION).
    #[arg(long, env = "AWS_REGION")]
    region: Option<String>,
}

pub fn run(args: SealArgs) -> Result<u8, String> {
    let region = args.region.ok_or("--region (or AWS_REGION) is required")?;
    let input = zeroize::Zeroizing::new(
        std::fs::read(&args.input).map_err(|e| format!("{}: {e}", args.input.display()))?,
    );
    // Validate before anything leaves this machine.
    let settings = Settings::parse(&input).map_err(|e| format!("{}: {e}", args.input.display()))?;
    let target = KmsTarget {
        region,
        endpoint: args.kms_endpoint,
        tunnel: None,
    };
    let kms =
        client::client(&target, client::credentials_from_env()?).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let data_key = runtime
        .block_on(client::generate_data_key(&kms, &args.key_id))
        .map_err(|e| e.to_string())?;
    let sealed = SealedFile::seal(
        &data_key.key_id,
        data_key.blob.clone(),
        &data_key.plaintext,
        &input,
    )
    .map_err(|e| e.to_string())?;
    drop(data_key);
    write_new(&args.out, &sealed.to_json())?;
    eprintln!("sealed {} under {}", args.out.display(), sealed.key_id);
    // The one line clients need: what to pin with --settings-digest.
    println!("settings digest {}", hex::encode(settings.digest));
    Ok(0)
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
pub fn write_new(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
