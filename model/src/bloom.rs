//! The BLOOM forward pass, matching Hugging Face `BloomForCausalLM` (eager attention).
//!
//! word embeddings → `word_embeddings_layernorm` → blocks → `ln_f` → logits with the tied embedding.
//! Block: input LN → attention (fused QKV, interleaved per head as `[b, s, n_head, 3, head_dim]`; scores
//! `alibi + q·kᵀ/√d`, ALiBi not scaled; masked with the dtype's finite minimum; softmax in f32) →
//! residual → post-attention LN → MLP (4×, tanh GELU) → residual. With
//! `apply_residual_connection_post_layernorm` the residuals are the LN outputs instead.

use tch::{Kind, Tensor};

use super::cache::KvCache;
use super::config::BloomConfig;
use super::weights::Weights;
use super::ModelError;

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    dim: i64,
}

impl LayerNorm {
    fn load(w: &Weights, prefix: &str, dim: i64, eps: f64) -> Result<LayerNorm, ModelError> {
        Ok(LayerNorm {
            weight: w.get(&format!("{prefix}.weight"), &[dim])?,
            bias: w.get(&format!("{prefix}.bias"), &[dim])?,
            eps,
            dim,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            false,
        )
    }
}

struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn load(w: &Weights, prefix: &str, out: i64, inp: i64) -> Result<Linear, ModelError> {
        Ok(Linear {
            weight: w.get(&format!("{prefix}.weight"), &[out, inp])?,
            bias: w.get(&format!("{prefix}.bias"), &[out])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

struct Block {
    input_layernorm: LayerNorm,
    query_key_value: Linear,
    dense: Linear,
    post_attention_layernorm: LayerNorm,
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
}

/// BLOOM's GELU, `x · 0.5 · (1 + tanh(0.79788456 · x · (1 + 0.044715 · x²)))`, is libtorch's fused
/// tanh-approximate GELU (`√(2/π)` = 0.7978845608…): one kernel instead of seven during decoding.
fn bloom_gelu(x: &Tensor) -> Tensor {
    x.gelu("tanh")
}

/// ALiBi slopes for `n_head` heads, including head counts that are not a power of two.
pub fn alibi_slopes(n_head: usize) -> Vec<f64> {
    let closest = 1usize << (usize::BITS - 1 - n_head.leading_zeros());
    let base = 2f64.powf(-(2f64.powf(-((closest as f64).log2() - 3.0))));
    let mut slopes: Vec<f64> = (1..=closest).map(|p| base.powi(p as i32)).collect();
    if closest != n_head {
        let extra_base = 2f64.powf(-(2f64.powf(-((2.0 * closest as f64).log2() - 3.0))));
        let remaining = closest.min(n_head - closest);
        slopes.extend((0..remaining).map(|i| extra_base.powi((2 * i + 1) as i32)));
    }
    slopes
}

/// A loaded BLOOM model.
pub struct Bloom {
    pub config: BloomConfig,
    kind: Kind,
    word_embeddings: Tensor,
    lm_head: Tensor,
    word_embeddings_layernorm: LayerNorm,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// `[n_head]` slopes, f32.
    slopes: Tensor,
    /// Keeps zero-copy weights valid.
    weights: Weights,
}

impl std::fmt::Debug for Bloom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bloom")
            .field("config", &self.config)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Bloom {
    /// Builds the model from loaded weights (in `kind`).
    pub fn new(config: BloomConfig, weights: Weights, kind: Kind) -> Result<Bloom, ModelError> {
        let h = config.hidden_size as i64;
        let v = config.vocab_size as i64;
        let eps = config.layer_norm_epsilon;
        let word_embeddings = weights.get("word_embeddings.weight", &[v, h])?;
        // The published checkpoints have no lm_head: logits use the tied embedding.
        let lm_head = if !config.tie_word_embeddings && weights.contains("lm_head.weight") {
            weights.get("lm_head.weight", &[v, h])?
        } else {
            word_embeddings.shallow_clone()
        };
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("h.{i}");
            blocks.push(Block {
                input_layernorm: LayerNorm::load(
                    &weights,
                    &format!("{p}.input_layernorm"),
                    h,
                    eps,
                )?,
                query_key_value: Linear::load(
                    &weights,
                    &format!("{p}.self_attention.query_key_value"),
                    3 * h,
                    h,
                )?,
                dense: Linear::load(&weights, &format!("{p}.self_attention.dense"), h, h)?,
                post_attention_layernorm: LayerNorm::load(
                    &weights,
                    &format!("{p}.post_attention_layernorm"),
                    h,
                    eps,
                )?,
                dense_h_to_4h: Linear::load(&weights, &format!("{p}.mlp.dense_h_to_4h"), 4 * h, h)?,
                dense_4h_to_h: Linear::load(&weights, &format!("{p}.mlp.dense_4h_to_h"), h, 4 * h)?,
            });
        }
        let slopes = Tensor::from_slice(&alibi_slopes(config.n_head)).to_kind(Kind::Float);
        Ok(Bloom {
            word_embeddings_layernorm: LayerNorm::load(
                &weights,
                "word_embeddings_layernorm",
                h,
                eps,
            )?,
            ln_f: LayerNorm::load(&weights, "ln_f", h, eps)?,
            word_embeddings,
            lm_head,
            blocks,
            slopes,
            kind,
            config,
            weights,
        })
    }

    /// Length and SHA-256 of the weights file as loaded.
    pub fn weights_hash(&self) -> confidant_protocol::digest::FileHash {
        self.weights.file_hash()
    }

    /// The dtype the model computes in.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Runs `ids` (one sequence) after whatever `cache` holds, appends their keys and values to it, and
    /// returns the last position's logits as f32 `[vocab]`.
    pub fn forward(&self, ids: &[i64], cache: &mut KvCache) -> Result<Tensor, ModelError> {
        if ids.is_empty() {
            return Err(ModelError::Input("no tokens".into()));
        }
        if let Some(bad) = ids
            .iter()
            .find(|&&t| t < 0 || t as usize >= self.config.vocab_size)
        {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary"
            )));
        }
        if cache.layers() != 0 && cache.layers() != self.blocks.len() {
            return Err(ModelError::Input(
                "KV cache belongs to another model".into(),
            ));
        }
        let _guard = tch::no_grad_guard();
        let n_head = self.config.n_head as i64;
        let hd = self.config.head_dim() as i64;
        let h = self.config.hidden_size as i64;
        let past = cache.len() as i64;
        let q_len = ids.len() as i64;
        let kv_len = past + q_len;

        let input = Tensor::from_slice(ids).view([1, q_len]);
        let mut hidden = Tensor::embedding(&self.word_embeddings, &input, -1, false, false);
        hidden = self.word_embeddings_layernorm.forward(&hidden);

        // ALiBi: slope · key position, [n_head, 1, kv_len], computed in f32 then cast.
        let positions = Tensor::arange(kv_len, (Kind::Float, tch::Device::Cpu));
        let alibi =
            (self.slopes.view([n_head, 1, 1]) * positions.view([1, 1, kv_len])).to_kind(self.kind);
        // Causal mask over the new queries: query i (at past + i) sees keys 0..=past + i.
        let mask = if q_len > 1 {
            let q_pos = Tensor::arange_start(past, kv_len, (Kind::Int64, tch::Device::Cpu))
                .view([q_len, 1]);
            let k_pos = Tensor::arange(kv_len, (Kind::Int64, tch::Device::Cpu)).view([1, kv_len]);
            Some(k_pos.gt_tensor(&q_pos).view([1, q_len, kv_len]))
        } else {
            None
        };
        let min = match self.kind {
            Kind::BFloat16 => -3.389_531_389_251_535e38,
            Kind::Half => -65504.0,
            _ => f64::from(f32::MIN),
        };
        let inv_norm = 1.0 / (hd as f64).sqrt();

        for (i, block) in self.blocks.iter().enumerate() {
            let ln = block.input_layernorm.forward(&hidden);
            let residual = if self.config.apply_residual_connection_post_layernorm {
                ln.shallow_clone()
            } else {
                hidden
            };
            let qkv = block
                .query_key_value
                .forward(&ln)
                .view([q_len, n_head, 3, hd]);
            let q = qkv.select(2, 0).transpose(0, 1); // [n_head, q_len, hd]
            let k = qkv.select(2, 1).transpose(0, 1);
            let v = qkv.select(2, 2).transpose(0, 1);
            let (k, v) = cache.append(i, k, v);
            // scores = alibi + (q · kᵀ) / √d, [n_head, q_len, kv_len]
            let scores = alibi.baddbmm(&q, &k.transpose(1, 2), 1.0, inv_norm);
            let scores = match &mask {
                Some(m) => scores.masked_fill(m, min),
                None => scores,
            };
            let probs = scores.softmax(-1, Kind::Float).to_kind(self.kind);
            let context = probs.bmm(&v).transpose(0, 1).reshape([1, q_len, h]);
            let attn = block.dense.forward(&context) + residual;

            let ln2 = block.post_attention_layernorm.forward(&attn);
            let residual = if self.config.apply_residual_connection_post_layernorm {
                ln2.shallow_clone()
            } else {
                attn
            };
            let mlp = block
                .dense_4h_to_h
                .forward(&bloom_gelu(&block.dense_h_to_4h.forward(&ln2)));
            hidden = mlp + residual;
        }
        cache.advance(ids.len());
        let last = self.ln_f.forward(&hidden.select(1, q_len - 1)); // [1, h]
        let logits = last.matmul(&self.lm_head.tr()).view([-1]);
        Ok(logits.to_kind(Kind::Float))
    }

    /// Logits at every position of `ids` from an empty cache, f32 `[len, vocab]` (for checks).
    pub fn logits_all(&self, ids: &[i64]) -> Result<Vec<Tensor>, ModelError> {
        let mut cache = KvCache::new(self.blocks.len());
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.forward(std::slice::from_ref(id), &mut cache)?);
        }
        Ok(out)
    }

    /// Number of transformer blocks.
    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// Bytes of KV cache one token takes: keys and values of every layer, in the compute dtype.
    pub fn kv_bytes_per_token(&self) -> u64 {
        (self.blocks.len() * 2 * self.config.hidden_size * self.kind.elt_size_in_bytes()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::alibi_slopes;

    #[test]
    fn alibi_slopes_match_transformers() {
        // Values from transformers' build_alibi_tensor for 4, 6 and 16 heads.
        let s4 = alibi_slopes(4);
        assert_eq!(s4, vec![0.25, 0.0625, 0.015625, 0.00390625]);
        let s6 = alibi_slopes(6);
        assert_eq!(s6.len(), 6);
        assert_eq!(&s6[..4], &s4[..]);
        // Extra heads use base 2^(-2^-(log2(8) - 3)) = 0.5, odd powers: 0.5, 0.125.
        assert_eq!(&s6[4..], &[0.5, 0.125]);
        let s16 = alibi_slopes(16);
        assert!((s16[0] - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-15);
        assert!((s16[15] - 0.00390625).abs() < 1e-15);
    }
}
