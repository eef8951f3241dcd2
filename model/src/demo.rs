//! Small BLOOM checkpoints the project makes itself: the byte-level BPE tokenizer trained on the text
//! it ships, the checkpoint writer, and a random-weight model for tests (a test double: its answers are
//! noise). The demo's model is trained on the same corpus by [`crate::train`].

use std::collections::HashMap;
use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::ModelError;

/// Shape of the random-weight test model.
#[derive(Debug, Clone, Copy)]
pub struct DemoSpec {
    pub seed: u64,
    pub vocab_target: usize,
    pub hidden_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
}

impl Default for DemoSpec {
    fn default() -> Self {
        // Six heads: the non-power-of-two ALiBi path runs in every demo.
        DemoSpec {
            seed: 7,
            vocab_target: 1024,
            hidden_size: 384,
            n_layer: 4,
            n_head: 6,
        }
    }
}

pub(crate) fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

/// Trains the BPE tokenizer on `lines` (special tokens at BLOOM's ids: `<unk>` 0, `<s>` 1, `</s>` 2,
/// `<pad>` 3). Every byte is in its alphabet, so any text encodes.
pub fn train_tokenizer(vocab_target: usize, lines: &[String]) -> Result<Tokenizer, ModelError> {
    let specials = ["<unk>", "<s>", "</s>", "<pad>"]
        .map(|t| AddedToken::from(t, true))
        .to_vec();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_target)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default()));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    tokenizer
        .train(&mut trainer, lines.iter())
        .map_err(tok_err)?;
    Ok(tokenizer)
}

/// Standard-normal samples, deterministic from the RNG (Box–Muller).
fn normals(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    use rand::Rng;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
        let u2: f32 = rng.random::<f32>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let t = 2.0 * std::f32::consts::PI * u2;
        out.push(r * t.cos());
        if out.len() < n {
            out.push(r * t.sin());
        }
    }
    out
}

/// A tensor to save: name, shape, values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// The layer shape a checkpoint's config states.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub hidden_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
}

/// Writes the random-weight test model (`config.json`, `tokenizer.json`, `model.safetensors`) to `dir`.
pub fn write_demo_model(dir: &Path, spec: DemoSpec) -> Result<(), ModelError> {
    let lines = crate::train::transcript(&crate::train::pairs(crate::train::QA)?);
    let tokenizer = train_tokenizer(spec.vocab_target, &lines)?;
    let vocab = tokenizer.get_vocab_size(true);
    let h = spec.hidden_size;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut tensors: Vec<NamedTensor> = Vec::new();
    let ln = |name: &str, tensors: &mut Vec<NamedTensor>| {
        tensors.push((format!("{name}.weight"), vec![h], vec![1.0; h]));
        tensors.push((format!("{name}.bias"), vec![h], vec![0.0; h]));
    };
    tensors.push((
        "word_embeddings.weight".into(),
        vec![vocab, h],
        normals(&mut rng, vocab * h, 0.02),
    ));
    ln("word_embeddings_layernorm", &mut tensors);
    for i in 0..spec.n_layer {
        let p = format!("h.{i}");
        ln(&format!("{p}.input_layernorm"), &mut tensors);
        ln(&format!("{p}.post_attention_layernorm"), &mut tensors);
        for (name, out, inp) in [
            ("self_attention.query_key_value", 3 * h, h),
            ("self_attention.dense", h, h),
            ("mlp.dense_h_to_4h", 4 * h, h),
            ("mlp.dense_4h_to_h", h, 4 * h),
        ] {
            tensors.push((
                format!("{p}.{name}.weight"),
                vec![out, inp],
                normals(&mut rng, out * inp, 0.02),
            ));
            tensors.push((format!("{p}.{name}.bias"), vec![out], vec![0.0; out]));
        }
    }
    ln("ln_f", &mut tensors);
    let shape = Shape {
        hidden_size: h,
        n_layer: spec.n_layer,
        n_head: spec.n_head,
    };
    let note = format!(
        "random weights (seed {}): a test double, not a trained model",
        spec.seed
    );
    write_checkpoint(dir, &tokenizer, shape, &note, tensors)
}

/// Writes a BLOOM checkpoint: `config.json` (with `note` under `confidant_demo`), `tokenizer.json` and
/// `model.safetensors` (f32, tied embeddings).
pub fn write_checkpoint(
    dir: &Path,
    tokenizer: &Tokenizer,
    shape: Shape,
    note: &str,
    tensors: Vec<NamedTensor>,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::Io(format!("{}: {e}", dir.display())))?;
    let tokenizer_json = tokenizer.to_string(false).map_err(tok_err)?;
    write(dir, "tokenizer.json", tokenizer_json.as_bytes())?;
    let config = json!({
        "model_type": "bloom",
        "architectures": ["BloomForCausalLM"],
        "vocab_size": tokenizer.get_vocab_size(true),
        "hidden_size": shape.hidden_size,
        "n_layer": shape.n_layer,
        "n_head": shape.n_head,
        "layer_norm_epsilon": 1e-5,
        "apply_residual_connection_post_layernorm": false,
        "tie_word_embeddings": true,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 3,
        "confidant_demo": { "note": note },
    });
    write(
        dir,
        "config.json",
        (serde_json::to_string_pretty(&config).unwrap_or_default() + "\n").as_bytes(),
    )?;
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<_, _>>()
        .map_err(|e| ModelError::Weights(e.to_string()))?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let data = safetensors::serialize(views, Some(metadata))
        .map_err(|e| ModelError::Weights(e.to_string()))?;
    write(dir, "model.safetensors", &data)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ModelError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))
}
