//! `confidant-ops encrypt-weights`: the weights encrypted at rest under a fresh key that travels only
//! inside the sealed settings.

use std::path::PathBuf;

use confidant_protocol::digest::ModelFiles;
use confidant_sealing::settings::Settings;
use confidant_sealing::weights;
use zeroize::Zeroizing;

use crate::seal::write_new;

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
pub fn run(args: EncryptWeightsArgs) -> Result<u8, String> {
    let files = ModelFiles::in_dir(&args.model);
    let settings_text = Zeroizing::new(
        std::fs::read(&args.settings).map_err(|e| format!("{}: {e}", args.settings.display()))?,
    );
    Settings::parse(&settings_text).map_err(|e| format!("{}: {e}", args.settings.display()))?;
    let mut settings: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&settings_text).map_err(|e| e.to_string())?;

    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::fill(key.as_mut()).map_err(|e| format!("randomness: {e}"))?;
    let input = std::fs::File::open(&files.weights)
        .map_err(|e| format!("{}: {e}", files.weights.display()))?;
    let len = input.metadata().map_err(|e| e.to_string())?.len();
    let tmp = files.encrypted_weights.with_extension("enc.tmp");
    let out = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, out);
    weights::encrypt(
        &mut std::io::BufReader::with_capacity(1 << 20, input),
        len,
        &mut writer,
        &key,
        weights::DEFAULT_CHUNK,
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
