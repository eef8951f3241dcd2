//! BLOOM on libtorch — the only crate of the workspace that links it: configuration, weights (plain or
//! encrypted at rest), the forward pass with a KV cache, the tokenizer, the chat template, sampling and
//! generation, and the inference [`engine`] the enclave serves from. The `confidant-model` binary
//! holds the tools (`check`, `bench`, `demo-model`).

pub mod bloom;
pub mod cache;
pub mod config;
pub mod demo;
pub mod engine;
pub mod generate;
pub mod kernels;
pub mod template;
#[doc(hidden)]
pub mod testing;
pub mod tokenizer;
pub mod train;
pub mod weights;

use std::path::Path;

use confidant_protocol::digest::{self, ModelFiles};

pub use bloom::Bloom;
pub use cache::KvCache;
pub use config::BloomConfig;
pub use weights::Weights;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    Io(String),
    #[error("config.json: {0}")]
    Config(String),
    #[error("weights: {0}")]
    Weights(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("input: {0}")]
    Input(String),
    /// Memory could not be had (the caller may retry later or with less).
    #[error("memory: {0}")]
    Memory(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// How the weight matrices are held and multiplied (norms, biases, activations, the KV cache and
/// every accumulation stay f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    F32,
    Bf16,
    /// Weight-only int8 with one scale (an f16) per 32 weights of a row (activations quantized the same
    /// way on the fly), quantized at load.
    Int8,
}

impl Dtype {
    /// The name used on command lines, in reports and in the attestation.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::Int8 => "int8",
        }
    }
}

/// A model ready to serve: weights, tokenizer and the digest the enclave attests.
#[derive(Debug)]
pub struct LoadedModel {
    pub model: Bloom,
    pub tokenizer: tokenizer::Tokenizer,
    /// `model` in the attestation `user_data`: over the bytes as loaded (decrypted weights included).
    pub digest: [u8; 32],
    /// The same digest over the files as stored (the encrypted weights file, when encrypted): what
    /// the emulated NSM's PCR0 measures. Absent for encrypted weights unless asked for.
    pub stored_digest: Option<[u8; 32]>,
    /// End-of-sequence token, from the config (or the tokenizer's `</s>`).
    pub eos: Option<i64>,
}

impl LoadedModel {
    /// Loads config, tokenizer and weights from `dir`; the digest covers the bytes as loaded.
    pub fn load(dir: &Path, dtype: Dtype) -> Result<LoadedModel, ModelError> {
        Self::load_with_key(dir, dtype, None, true)
    }

    /// As [`load`](Self::load); with `weights_key`, the weights come from `model.safetensors.enc`,
    /// and `hash_stored` says whether to hash that file as stored too (for a measurement).
    pub fn load_with_key(
        dir: &Path,
        dtype: Dtype,
        weights_key: Option<&[u8; 32]>,
        hash_stored: bool,
    ) -> Result<LoadedModel, ModelError> {
        let files = ModelFiles::in_dir(dir);
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| ModelError::Io(format!("{}: {e}", p.display())))
        };
        let config_bytes = read(&files.config)?;
        let tokenizer_bytes = read(&files.tokenizer)?;
        let text = std::str::from_utf8(&config_bytes)
            .map_err(|_| ModelError::Config("not UTF-8".into()))?;
        let config = BloomConfig::from_json(text)?;
        let tokenizer = tokenizer::Tokenizer::from_bytes(&tokenizer_bytes)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(ModelError::Tokenizer(format!(
                "tokenizer has {} tokens, the model only {}",
                tokenizer.vocab_size(),
                config.vocab_size
            )));
        }
        let eos = config.eos_token_id.or_else(|| tokenizer.token_id("</s>"));
        let (weights, stored_weights) = match weights_key {
            Some(key) => Weights::load_encrypted(&files.encrypted_weights, key, hash_stored)?,
            None if files.stored_weights() == files.encrypted_weights => {
                return Err(ModelError::Weights(format!(
                    "{} is encrypted: its key comes with the sealed settings (--sealed-settings)",
                    files.encrypted_weights.display()
                )))
            }
            None => {
                let w = Weights::load(&files.weights)?;
                let hash = w.file_hash();
                (w, Some(hash))
            }
        };
        let (config_hash, tokenizer_hash) = (
            digest::FileHash::of(&config_bytes),
            digest::FileHash::of(&tokenizer_bytes),
        );
        let digest = digest::model_digest(config_hash, tokenizer_hash, weights.file_hash());
        let stored_digest =
            stored_weights.map(|w| digest::model_digest(config_hash, tokenizer_hash, w));
        let model = Bloom::new(config, &weights, dtype)?;
        drop(weights);
        Ok(LoadedModel {
            model,
            tokenizer,
            digest,
            stored_digest,
            eos,
        })
    }
}

impl LoadedModel {
    /// The model input for one user turn: on the first turn the system prefix's tokens, then the
    /// turn's (see [`template`] for why they are tokenized apart).
    pub fn turn_ids(
        &self,
        template: &template::ChatTemplate,
        user: &str,
        first_turn: bool,
    ) -> Result<Vec<i64>, ModelError> {
        let mut ids = if first_turn {
            self.tokenizer.encode(template.system_prefix())?
        } else {
            Vec::new()
        };
        ids.extend(
            self.tokenizer
                .encode(&template::ChatTemplate::turn(user, first_turn))?,
        );
        Ok(ids)
    }
}

/// Loads config and weights from `dir` (no tokenizer needed) in `dtype`.
pub fn load_model(dir: &Path, dtype: Dtype) -> Result<Bloom, ModelError> {
    let files = ModelFiles::in_dir(dir);
    let text = std::fs::read_to_string(&files.config)
        .map_err(|e| ModelError::Io(format!("{}: {e}", files.config.display())))?;
    let config = BloomConfig::from_json(&text)?;
    let weights = Weights::load(&files.weights)?;
    Bloom::new(config, &weights, dtype)
}
