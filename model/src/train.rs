//! The demo model's training: a small BLOOM fitted with libtorch's autograd to the question-and-answer
//! corpus the project ships (`assets/demo-qa.txt`), so that the local default answers like a model.
//!
//! The forward pass here is BLOOM written in tensor operations for autograd; serving never uses it
//! (the engine runs the project's kernels over the saved weights). A test holds the two to the same
//! logits, so what is trained is what is served. Deterministic from the seed for a given thread count
//! and CPU: libtorch's reductions are ordered by threads and vector width, so `--threads` is part of the
//! recipe.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Reduction, Tensor};
use tokenizers::Tokenizer;

use crate::bloom::alibi_slopes;
use crate::demo::{self, tok_err, NamedTensor};
use crate::template::{ChatTemplate, STOP};
use crate::ModelError;

/// The corpus: `Q:` and `A:` lines, entries separated by blank lines, `#` comments.
pub const QA: &str = include_str!("../assets/demo-qa.txt");

/// The system prompt of the demo's sealed settings (`enclave/assets/demo-settings.json`): the model is
/// trained with it and without any, so it answers the same under both.
pub const DEMO_SYSTEM: &str =
    "You are a careful assistant for health-benefit and retirement questions. Answer briefly.";

/// Every input that decides the trained weights.
#[derive(Debug, Clone, Copy)]
pub struct TrainSpec {
    pub seed: u64,
    pub vocab_target: usize,
    pub hidden_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub steps: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub threads: usize,
}

impl Default for TrainSpec {
    fn default() -> Self {
        // Six heads: the non-power-of-two ALiBi path runs in every demo. Sized to learn the corpus in
        // well under two minutes on two cores.
        TrainSpec {
            seed: 7,
            vocab_target: 1536,
            hidden_size: 192,
            n_layer: 3,
            n_head: 6,
            steps: 360,
            batch: 16,
            learning_rate: 3e-3,
            threads: 2,
        }
    }
}

/// What training reports.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub examples: usize,
    pub tokens_per_epoch: usize,
    pub first_loss: f64,
    pub final_loss: f64,
    pub seconds: f64,
}

/// The corpus's question-and-answer pairs.
pub fn pairs(text: &str) -> Result<Vec<(String, String)>, ModelError> {
    let mut out = Vec::new();
    let mut question: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(q) = line.strip_prefix("Q: ") {
            if question.replace(q.to_string()).is_some() {
                return Err(ModelError::Input(format!(
                    "corpus line {}: a question without an answer",
                    n + 1
                )));
            }
        } else if let Some(a) = line.strip_prefix("A: ") {
            let q = question.take().ok_or_else(|| {
                ModelError::Input(format!(
                    "corpus line {}: an answer without a question",
                    n + 1
                ))
            })?;
            out.push((q, a.to_string()));
        } else {
            return Err(ModelError::Input(format!(
                "corpus line {}: expected \"Q: \" or \"A: \"",
                n + 1
            )));
        }
    }
    if question.is_some() {
        return Err(ModelError::Input(
            "corpus: the last question has no answer".into(),
        ));
    }
    Ok(out)
}

/// The corpus as the chat template renders it, for training the tokenizer.
pub fn transcript(pairs: &[(String, String)]) -> Vec<String> {
    let mut lines = vec![DEMO_SYSTEM.to_string()];
    for (q, a) in pairs {
        lines.push(format!("{}{a}{STOP}", ChatTemplate::turn(q, true).as_str()));
    }
    lines
}

/// One training sequence: the ids the engine would see for this conversation, then the answer and the
/// stop string, tokenized the way [`crate::LoadedModel::turn_ids`] joins them.
fn conversation_ids(
    tokenizer: &Tokenizer,
    system: &str,
    turns: &[&(String, String)],
) -> Result<Vec<i64>, ModelError> {
    let encode = |s: &str| -> Result<Vec<i64>, ModelError> {
        Ok(tokenizer
            .encode(s, false)
            .map_err(tok_err)?
            .get_ids()
            .iter()
            .map(|&i| i64::from(i))
            .collect())
    };
    let mut ids = encode(ChatTemplate::new(system).system_prefix())?;
    for (i, (q, a)) in turns.iter().enumerate() {
        ids.extend(encode(&ChatTemplate::turn(q, i == 0))?);
        ids.extend(encode(&format!(" {a}"))?);
    }
    ids.extend(encode(STOP)?);
    Ok(ids)
}

/// The training set: every pair alone, with and without the demo's system prompt, and some pairs as
/// the second turn of a conversation (so `chat` keeps answering after the first turn).
fn examples(
    tokenizer: &Tokenizer,
    pairs: &[(String, String)],
) -> Result<Vec<Vec<i64>>, ModelError> {
    let mut out = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        out.push(conversation_ids(tokenizer, "", &[pair])?);
        out.push(conversation_ids(tokenizer, DEMO_SYSTEM, &[pair])?);
        if i % 3 == 1 {
            out.push(conversation_ids(tokenizer, "", &[&pairs[i - 1], pair])?);
        }
    }
    Ok(out)
}

/// BLOOM's parameters, named as the checkpoint names them.
struct Params {
    embeddings: Tensor,
    embeddings_ln: (Tensor, Tensor),
    layers: Vec<Layer>,
    ln_f: (Tensor, Tensor),
    slopes: Tensor,
    n_head: i64,
}

struct Layer {
    input_ln: (Tensor, Tensor),
    qkv: (Tensor, Tensor),
    dense: (Tensor, Tensor),
    post_ln: (Tensor, Tensor),
    h_to_4h: (Tensor, Tensor),
    to_h: (Tensor, Tensor),
}

fn norm(p: &nn::Path, h: i64) -> (Tensor, Tensor) {
    (
        p.var("weight", &[h], nn::Init::Const(1.0)),
        p.var("bias", &[h], nn::Init::Const(0.0)),
    )
}

fn linear(p: &nn::Path, out: i64, inp: i64) -> (Tensor, Tensor) {
    let init = nn::Init::Randn {
        mean: 0.0,
        stdev: 0.02,
    };
    (
        p.var("weight", &[out, inp], init),
        p.var("bias", &[out], nn::Init::Const(0.0)),
    )
}

impl Params {
    fn new(root: &nn::Path, vocab: i64, h: i64, n_layer: usize, n_head: usize) -> Params {
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let layers = (0..n_layer)
            .map(|i| {
                let p = root / "h" / i;
                Layer {
                    input_ln: norm(&(&p / "input_layernorm"), h),
                    qkv: linear(&(&p / "self_attention" / "query_key_value"), 3 * h, h),
                    dense: linear(&(&p / "self_attention" / "dense"), h, h),
                    post_ln: norm(&(&p / "post_attention_layernorm"), h),
                    h_to_4h: linear(&(&p / "mlp" / "dense_h_to_4h"), 4 * h, h),
                    to_h: linear(&(&p / "mlp" / "dense_4h_to_h"), h, 4 * h),
                }
            })
            .collect();
        let slopes: Vec<f32> = alibi_slopes(n_head).iter().map(|&s| s as f32).collect();
        Params {
            embeddings: (root / "word_embeddings").var("weight", &[vocab, h], init),
            embeddings_ln: norm(&(root / "word_embeddings_layernorm"), h),
            layers,
            ln_f: norm(&(root / "ln_f"), h),
            slopes: Tensor::from_slice(&slopes),
            n_head: n_head as i64,
        }
    }

    /// Logits `[batch, tokens, vocab]` for right-padded `ids` `[batch, tokens]`.
    fn forward(&self, ids: &Tensor) -> Tensor {
        let (b, t) = ids.size2().expect("ids are [batch, tokens]");
        let h = self.embeddings.size()[1];
        let (nh, hd) = (self.n_head, h / self.n_head);
        let ln = |x: &Tensor, (w, bias): &(Tensor, Tensor)| {
            x.layer_norm([h], Some(w), Some(bias), 1e-5, false)
        };
        let positions = Tensor::arange(t, (Kind::Float, Device::Cpu));
        // ALiBi: each head adds slope × key position (the query's own offset cancels in the softmax).
        let alibi = self.slopes.view([nh, 1, 1]) * positions.view([1, 1, t]);
        let future = Tensor::ones([t, t], (Kind::Bool, Device::Cpu)).triu(1);
        let mut x = ln(
            &Tensor::embedding(&self.embeddings, ids, -1, false, false),
            &self.embeddings_ln,
        );
        // `x = x + …`, not `x += …`: tch's `+=` is an in-place add, which would overwrite a tensor
        // autograd keeps for the backward pass.
        #[allow(clippy::assign_op_pattern)]
        for layer in &self.layers {
            let a = ln(&x, &layer.input_ln);
            // The fused projection is laid out per head as (q, k, v), as BLOOM's checkpoints are.
            let qkv = a
                .linear(&layer.qkv.0, Some(&layer.qkv.1))
                .view([b, t, nh, 3, hd]);
            let q = qkv.select(3, 0).transpose(1, 2);
            let k = qkv.select(3, 1).transpose(1, 2);
            let v = qkv.select(3, 2).transpose(1, 2);
            let scores = q.matmul(&k.transpose(2, 3)) / (hd as f64).sqrt() + &alibi;
            let weights = scores
                .masked_fill(&future, f64::NEG_INFINITY)
                .softmax(-1, Kind::Float);
            let context = weights.matmul(&v).transpose(1, 2).reshape([b, t, h]);
            x = x + context.linear(&layer.dense.0, Some(&layer.dense.1));
            let m = ln(&x, &layer.post_ln);
            let up = m
                .linear(&layer.h_to_4h.0, Some(&layer.h_to_4h.1))
                .gelu("tanh");
            x = x + up.linear(&layer.to_h.0, Some(&layer.to_h.1));
        }
        ln(&x, &self.ln_f).matmul(&self.embeddings.tr())
    }
}

/// Pads a batch on the right: inputs (pad id) and targets (-100 where nothing is to be predicted).
fn batch(examples: &[&Vec<i64>], pad: i64) -> (Tensor, Tensor) {
    let t = examples.iter().map(|e| e.len()).max().unwrap_or(1);
    let mut inputs = Vec::with_capacity(examples.len() * t);
    let mut targets = Vec::with_capacity(examples.len() * t);
    for e in examples {
        for i in 0..t {
            inputs.push(e.get(i).copied().unwrap_or(pad));
            targets.push(e.get(i + 1).copied().unwrap_or(-100));
        }
    }
    let shape = [examples.len() as i64, t as i64];
    (
        Tensor::from_slice(&inputs).view(shape),
        Tensor::from_slice(&targets).view(shape),
    )
}

/// Trains the tokenizer and the model and writes the checkpoint (`config.json`, `tokenizer.json`,
/// `model.safetensors`) to `dir`. `progress` hears (step, loss) now and then.
pub fn train_demo_model(
    dir: &Path,
    spec: TrainSpec,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<TrainReport, ModelError> {
    let started = std::time::Instant::now();
    let pairs = pairs(QA)?;
    let tokenizer = demo::train_tokenizer(spec.vocab_target, &transcript(&pairs))?;
    let examples = examples(&tokenizer, &pairs)?;
    let vocab = tokenizer.get_vocab_size(true) as i64;

    tch::set_num_threads(spec.threads.max(1) as i32);
    tch::manual_seed(spec.seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let params = Params::new(
        &vs.root(),
        vocab,
        spec.hidden_size as i64,
        spec.n_layer,
        spec.n_head,
    );
    let mut opt = nn::AdamW::default()
        .wd(0.01)
        .build(&vs, spec.learning_rate)?;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut order: Vec<usize> = Vec::new();
    let (mut first_loss, mut final_loss) = (f64::NAN, f64::NAN);
    let warmup = (spec.steps / 20).max(1);
    for step in 0..spec.steps {
        if order.len() < spec.batch {
            let mut epoch: Vec<usize> = (0..examples.len()).collect();
            epoch.shuffle(&mut rng);
            order.extend(epoch);
        }
        let chosen: Vec<&Vec<i64>> = order.drain(..spec.batch).map(|i| &examples[i]).collect();
        let (inputs, targets) = batch(&chosen, 3);
        // Linear warm-up, then cosine decay to a tenth.
        let lr = if step < warmup {
            spec.learning_rate * (step + 1) as f64 / warmup as f64
        } else {
            let f = (step - warmup) as f64 / (spec.steps - warmup).max(1) as f64;
            spec.learning_rate * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * f).cos()))
        };
        opt.set_lr(lr);
        let logits = params.forward(&inputs);
        let loss = logits.view([-1, vocab]).cross_entropy_loss::<Tensor>(
            &targets.view([-1]),
            None,
            Reduction::Mean,
            -100,
            0.0,
        );
        opt.backward_step_clip(&loss, 1.0);
        let value = loss.double_value(&[]);
        if step == 0 {
            first_loss = value;
        }
        final_loss = value;
        if step % 20 == 0 || step + 1 == spec.steps {
            progress(step, value);
        }
    }

    let mut tensors: Vec<NamedTensor> = Vec::new();
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, tensor) in variables {
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        let values = Vec::<f32>::try_from(tensor.detach().flatten(0, -1))?;
        tensors.push((name, shape, values));
    }
    let note = format!(
        "trained by `confidant-model demo-model` on model/assets/demo-qa.txt: seed {}, {} steps of {}, {} threads",
        spec.seed, spec.steps, spec.batch, spec.threads
    );
    demo::write_checkpoint(
        dir,
        &tokenizer,
        demo::Shape {
            hidden_size: spec.hidden_size,
            n_layer: spec.n_layer,
            n_head: spec.n_head,
        },
        &note,
        tensors,
    )?;
    Ok(TrainReport {
        examples: examples.len(),
        tokens_per_epoch: examples.iter().map(Vec::len).sum(),
        first_loss,
        final_loss,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_parses_and_its_defects_are_named() {
        let pairs = pairs(QA).expect("corpus");
        assert!(pairs.len() >= 70, "{} pairs", pairs.len());
        assert!(QA.len() > 20_000);
        for (text, expect) in [
            ("Q: a\nQ: b\nA: c\n", "line 2: a question without an answer"),
            ("A: c\n", "line 1: an answer without a question"),
            ("Q: a\nwhat\n", "line 2: expected"),
            ("Q: a\n", "the last question has no answer"),
        ] {
            let e = super::pairs(text).expect_err(text).to_string();
            assert!(e.contains(expect), "{e}");
        }
    }

    #[test]
    fn the_training_forward_is_the_served_forward() {
        // A few steps of a tiny model, saved, then loaded by the engine: same logits as autograd's pass.
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = TrainSpec {
            hidden_size: 48,
            n_layer: 2,
            n_head: 6,
            steps: 3,
            batch: 4,
            vocab_target: 400,
            ..TrainSpec::default()
        };
        train_demo_model(dir.path(), spec, &mut |_, _| {}).expect("train");
        let loaded = crate::LoadedModel::load(dir.path(), crate::Dtype::F32).expect("load");
        let ids = loaded
            .tokenizer
            .encode("User: Is a hearing aid covered?\nAssistant:")
            .expect("encode");
        let mut cache = loaded.model.new_cache();
        let served = loaded.model.forward(&ids, &mut cache).expect("forward");

        let vs = nn::VarStore::new(Device::Cpu);
        let vocab = loaded.tokenizer.vocab_size() as i64;
        let params = Params::new(&vs.root(), vocab, 48, 2, 6);
        let mut vs = vs;
        vs.load(dir.path().join("model.safetensors"))
            .expect("load into the var store");
        let logits = tch::no_grad(|| params.forward(&Tensor::from_slice(&ids).view([1, -1])));
        let last = Vec::<f32>::try_from(logits.select(1, ids.len() as i64 - 1).flatten(0, -1))
            .expect("logits");
        assert_eq!(served.len(), last.len());
        let worst = served
            .iter()
            .zip(&last)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-3, "max |Δ| {worst}");
    }
}
