//! `confidant-enclave seal`: the operator's side of sealed settings, run outside the enclave.

use std::path::PathBuf;

use confidant_enclave::kms::client::{self, KmsTarget};
use confidant_enclave::kms::sealed::SealedFile;
use confidant_enclave::kms::settings::Settings;

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
fn write_new(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[derive(Debug, clap::Args)]
pub struct EncryptWeightsArgs {
    /// Model directory: model.safetensors is encrypted to model.safetensors.enc beside it.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Settings JSON to receive the fresh weights_key (seal it next).
    #[arg(long, value_name = "FILE")]
    settings: PathBuf,
}

/// Encrypts the weights under a fresh key and records the key in the settings file.
pub fn encrypt_weights(args: EncryptWeightsArgs) -> Result<u8, String> {
    use confidant_enclave::model::encrypted;
    use zeroize::Zeroizing;
    let files = confidant_enclave::model::ModelFiles::in_dir(&args.model);
    let settings_text = Zeroizing::new(
        std::fs::read(&args.settings).map_err(|e| format!("{}: {e}", args.settings.display()))?,
    );
    Settings::parse(&settings_text).map_err(|e| format!("{}: {e}", args.settings.display()))?;
    let mut settings: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&settings_text).map_err(|e| e.to_string())?;

    let mut key = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(key.as_mut()).map_err(|_| "no randomness")?;
    let input = std::fs::File::open(&files.weights)
        .map_err(|e| format!("{}: {e}", files.weights.display()))?;
    let len = input.metadata().map_err(|e| e.to_string())?.len();
    let tmp = files.encrypted_weights.with_extension("enc.tmp");
    let out = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, out);
    encrypted::encrypt(
        &mut std::io::BufReader::with_capacity(1 << 20, input),
        len,
        &mut writer,
        &key,
        encrypted::DEFAULT_CHUNK,
    )
    .map_err(|e| e.to_string())?;
    std::io::Write::flush(&mut writer).map_err(|e| e.to_string())?;
    drop(writer);
    std::fs::rename(&tmp, &files.encrypted_weights).map_err(|e| e.to_string())?;

    settings.insert(
        "weights_key".into(),
        serde_json::Value::String(hex::encode(key.as_ref())),
    );
    let updated = Zeroizing::new(serde_json::to_vec_pretty(&settings).map_err(|e| e.to_string())?);
    Settings::parse(&updated).map_err(|e| e.to_string())?;
    write_new(&args.settings, &updated)?;
    eprintln!(
        "wrote {} ({len} bytes encrypted) and its key into {}: seal the settings, then remove {} \
         and the plain settings from anything the parent keeps",
        files.encrypted_weights.display(),
        args.settings.display(),
        files.weights.display()
    );
    Ok(0)
}
