//! The BLOOM forward pass, matching Hugging Face `BloomForCausalLM` (eager attention), for a batch of
//! sequences at once.
//!
//! word embeddings → `word_embeddings_layernorm` → blocks → `ln_f` → logits with the tied embedding.
//! Block: input LN → attention (fused QKV, interleaved per head as `[n_head, 3, head_dim]`; scores
//! `alibi + q·kᵀ/√d`, ALiBi not scaled; causal; softmax in f32) → residual → post-attention LN → MLP
//! (4×, tanh GELU) → residual. With `apply_residual_connection_post_layernorm` the residuals are the
//! LN outputs instead.
//!
//! A [`step`](Bloom::step) runs a batch of [`Segment`]s, each some tokens of one sequence after what
//! its cache holds: decoding sequences bring one token, a prompt brings a chunk. All their tokens go
//! through each weight matrix together, so a step streams the weights once however many sequences
//! it carries. The products run on the project's kernels (`kernels`); the attention of a decoding
//! token too; a prompt chunk's attention (a real matrix product) runs on libtorch.

use std::panic::AssertUnwindSafe;

use rayon::prelude::*;

use super::cache::{KvCache, KvPrecision};
use super::config::BloomConfig;
use super::kernels::{self, AttentionInput, Keys, KvSegment, Matrix, Values};
use super::weights::Weights;
use super::{Dtype, ModelError};
use confidant_protocol::digest::FileHash;

/// Prompt tokens run per step by [`Bloom::forward`]: bounds the memory of a long prompt's
/// attention and activations.
pub const PREFILL_CHUNK: usize = 512;

/// Up to this many query × key pairs, a prompt chunk's attention runs on the kernel, query by
/// query; beyond, on libtorch's batched products.
const DIRECT_ATTENTION: usize = 1 << 13;

/// A layer norm's parameters.
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Norm {
    fn load(w: &Weights, prefix: &str, dim: i64) -> Result<Norm, ModelError> {
        Ok(Norm {
            weight: w.vector(&format!("{prefix}.weight"), dim)?,
            bias: w.vector(&format!("{prefix}.bias"), dim)?,
        })
    }
}

struct Linear {
    weight: Matrix,
    bias: Vec<f32>,
}

impl Linear {
    fn load(
        w: &Weights,
        prefix: &str,
        out: i64,
        inp: i64,
        dtype: Dtype,
    ) -> Result<Linear, ModelError> {
        Ok(Linear {
            weight: w.matrix(&format!("{prefix}.weight"), [out, inp], dtype)?,
            bias: w.vector(&format!("{prefix}.bias"), out)?,
        })
    }
}

struct Block {
    input_layernorm: Norm,
    query_key_value: Linear,
    dense: Linear,
    post_attention_layernorm: Norm,
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
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

/// Some tokens of one sequence for a [`Bloom::step`].
#[derive(Debug)]
pub struct Segment<'a> {
    /// The sequence's cache: the tokens run after what it holds, and are appended to it.
    pub cache: &'a mut KvCache,
    pub tokens: &'a [i64],
    /// Whether to compute the logits after the last token (not needed for a prompt's early chunks).
    pub logits: bool,
}

/// Buffers a step works in, kept between steps so a step allocates nothing once warm.
#[derive(Debug, Default)]
pub struct Scratch {
    x: Vec<f32>,
    a: Vec<f32>,
    t: Vec<f32>,
    qkv: Vec<f32>,
    q: Vec<f32>,
    ctx: Vec<f32>,
    up: Vec<f32>,
    last: Vec<f32>,
    logits: Vec<f32>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        // Activations and logits are derived from the prompts.
        for v in [
            &mut self.x,
            &mut self.a,
            &mut self.t,
            &mut self.qkv,
            &mut self.q,
            &mut self.ctx,
            &mut self.up,
            &mut self.last,
            &mut self.logits,
        ] {
            v.zeroize();
        }
    }
}

fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// What a step gave each of its segments, in order.
#[derive(Debug)]
pub struct StepOutput<'s> {
    logits: &'s [f32],
    vocab: usize,
    slots: Vec<Slot>,
}

#[derive(Debug)]
enum Slot {
    /// Ran; the logits are row `usize` of the output.
    Logits(usize),
    /// Ran; no logits were asked for.
    Ran,
    /// Did not run (bad input, no memory, a failure in its attention); its cache is unchanged.
    Failed(ModelError),
}

impl StepOutput<'_> {
    /// Segment `i`'s result: the logits after its last token (f32, `vocab` long) when asked for.
    pub fn result(&self, i: usize) -> Result<Option<&[f32]>, &ModelError> {
        match &self.slots[i] {
            Slot::Logits(row) => Ok(Some(&self.logits[row * self.vocab..(row + 1) * self.vocab])),
            Slot::Ran => Ok(None),
            Slot::Failed(e) => Err(e),
        }
    }

    /// Takes segment `i`'s failure, if it failed.
    pub fn take_failure(&mut self, i: usize) -> Option<ModelError> {
        match std::mem::replace(&mut self.slots[i], Slot::Ran) {
            Slot::Failed(e) => Some(e),
            other => {
                self.slots[i] = other;
                None
            }
        }
    }
}

/// A loaded BLOOM model.
pub struct Bloom {
    pub config: BloomConfig,
    dtype: Dtype,
    /// `[vocab, hidden]`: the token embeddings, and the logits' weights when tied.
    embeddings: Matrix,
    /// A separate `lm_head`, for checkpoints that do not tie it.
    lm_head: Option<Matrix>,
    word_embeddings_layernorm: Norm,
    blocks: Vec<Block>,
    ln_f: Norm,
    slopes: Vec<f32>,
    eps: f32,
    pool: rayon::ThreadPool,
    weights_hash: FileHash,
}

impl std::fmt::Debug for Bloom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bloom")
            .field("config", &self.config)
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Bloom {
    /// Builds the model from a checkpoint, its matrices in `dtype` (norms and biases stay f32).
    pub fn new(config: BloomConfig, weights: &Weights, dtype: Dtype) -> Result<Bloom, ModelError> {
        let h = config.hidden_size as i64;
        let v = config.vocab_size as i64;
        if !config.hidden_size.is_multiple_of(config.n_head) {
            return Err(ModelError::Config(
                "hidden_size is not a multiple of n_head".into(),
            ));
        }
        let embeddings = weights.matrix("word_embeddings.weight", [v, h], dtype)?;
        // The published checkpoints have no lm_head: logits use the tied embedding.
        let lm_head = if !config.tie_word_embeddings && weights.contains("lm_head.weight") {
            Some(weights.matrix("lm_head.weight", [v, h], dtype)?)
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("h.{i}");
            let linear = |name: &str, out: i64, inp: i64| {
                Linear::load(weights, &format!("{p}.{name}"), out, inp, dtype)
            };
            blocks.push(Block {
                input_layernorm: Norm::load(weights, &format!("{p}.input_layernorm"), h)?,
                query_key_value: linear("self_attention.query_key_value", 3 * h, h)?,
                dense: linear("self_attention.dense", h, h)?,
                post_attention_layernorm: Norm::load(
                    weights,
                    &format!("{p}.post_attention_layernorm"),
                    h,
                )?,
                dense_h_to_4h: linear("mlp.dense_h_to_4h", 4 * h, h)?,
                dense_4h_to_h: linear("mlp.dense_4h_to_h", h, 4 * h)?,
            });
        }
        Ok(Bloom {
            word_embeddings_layernorm: Norm::load(weights, "word_embeddings_layernorm", h)?,
            ln_f: Norm::load(weights, "ln_f", h)?,
            slopes: alibi_slopes(config.n_head)
                .into_iter()
                .map(|s| s as f32)
                .collect(),
            eps: config.layer_norm_epsilon as f32,
            embeddings,
            lm_head,
            blocks,
            dtype,
            pool: {
                tch::set_num_threads(1);
                kernels::pool(default_threads())
            },
            weights_hash: weights.file_hash(),
            config,
        })
    }

    /// Runs the model on `threads` threads: the kernels' pool. libtorch is set to one thread of
    /// its own and runs inside the pool's tasks: its OpenMP workers spin for a while after each
    /// call, and would take the cores from the kernels that follow.
    pub fn set_threads(&mut self, threads: usize) {
        self.pool = kernels::pool(threads);
        tch::set_num_threads(1);
    }

    /// Length and SHA-256 of the weights file as loaded.
    pub fn weights_hash(&self) -> FileHash {
        self.weights_hash
    }

    /// The dtype the matrices are stored in.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Number of transformer blocks.
    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// The precision a shared system prompt's keys and values are kept in: bf16 for bf16 and int8
    /// weights where the CPU multiplies bf16 pairs (twice the products per instruction, half the
    /// bytes per decoding token), else f32. An f32 model keeps f32 throughout.
    pub fn prefix_precision(&self) -> KvPrecision {
        let narrow = self.dtype != Dtype::F32;
        let pairs = self.config.head_dim().is_multiple_of(2);
        if narrow && pairs && kernels::isa() == kernels::Isa::Avx512Dot {
            KvPrecision::Bf16
        } else {
            KvPrecision::F32
        }
    }

    /// An empty cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.blocks.len(), self.config.hidden_size)
    }

    /// Bytes of KV cache one token takes: keys and values of every layer, in f32.
    pub fn kv_bytes_per_token(&self) -> u64 {
        (self.blocks.len() * 2 * self.config.hidden_size * 4) as u64
    }

    /// Bytes of the weights as held in memory.
    pub fn weight_bytes(&self) -> u64 {
        let mut n = self.embeddings.bytes() + self.lm_head.as_ref().map_or(0, Matrix::bytes);
        for b in &self.blocks {
            n += b.query_key_value.weight.bytes()
                + b.dense.weight.bytes()
                + b.dense_h_to_4h.weight.bytes()
                + b.dense_4h_to_h.weight.bytes();
        }
        n as u64
    }

    /// Bytes of weights a decoding step streams (every matrix once).
    pub fn bytes_per_step(&self) -> u64 {
        self.weight_bytes()
    }

    fn check(&self, seg: &Segment<'_>) -> Result<(), ModelError> {
        if seg.tokens.is_empty() {
            return Err(ModelError::Input("no tokens".into()));
        }
        if let Some(bad) = seg
            .tokens
            .iter()
            .find(|&&t| t < 0 || t as usize >= self.config.vocab_size)
        {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary"
            )));
        }
        if seg.cache.layers() != self.blocks.len() || seg.cache.width() != self.config.hidden_size {
            return Err(ModelError::Input(
                "KV cache belongs to another model".into(),
            ));
        }
        Ok(())
    }

    /// Runs every segment's tokens after its cache, appends their keys and values to it, and gives
    /// the logits after the last token of each segment that asks for them. A segment that cannot
    /// run (bad input, no memory for its cache, a failed allocation in its attention) fails alone:
    /// its cache is left as it was, and the others run.
    pub fn step<'s>(
        &self,
        segments: &mut [Segment<'_>],
        scratch: &'s mut Scratch,
    ) -> StepOutput<'s> {
        // The whole step on the pool: the products' tasks are then handed between threads that are
        // already awake, not from the caller's thread to sleeping ones for every product.
        self.pool.install(|| self.step_in_pool(segments, scratch))
    }

    fn step_in_pool<'s>(
        &self,
        segments: &mut [Segment<'_>],
        scratch: &'s mut Scratch,
    ) -> StepOutput<'s> {
        let mut slots: Vec<Slot> = segments
            .iter_mut()
            .map(|seg| {
                match self
                    .check(seg)
                    .and_then(|()| seg.cache.reserve(seg.tokens.len()))
                {
                    Ok(()) => Slot::Ran,
                    Err(e) => Slot::Failed(e),
                }
            })
            .collect();
        // The rows of the activations each running segment owns.
        let mut rows = Vec::with_capacity(segments.len());
        let mut n = 0;
        for (i, seg) in segments.iter().enumerate() {
            if matches!(slots[i], Slot::Ran) {
                rows.push((i, n, seg.tokens.len()));
                n += seg.tokens.len();
            }
        }
        let vocab = self.config.vocab_size;
        if n == 0 {
            return StepOutput {
                logits: &[],
                vocab,
                slots,
            };
        }
        let h = self.config.hidden_size;
        let Scratch {
            x,
            a,
            t,
            qkv,
            q,
            ctx,
            up,
            last,
            logits,
        } = scratch;
        let (mut x, a, mut t) = (sized(x, n * h), sized(a, n * h), sized(t, n * h));
        let (qkv, q, ctx) = (sized(qkv, n * 3 * h), sized(q, n * h), sized(ctx, n * h));
        let up = sized(up, n * 4 * h);

        for &(i, r0, _) in &rows {
            for (j, &id) in segments[i].tokens.iter().enumerate() {
                self.embeddings
                    .row_f32(id as usize, &mut t[(r0 + j) * h..(r0 + j + 1) * h]);
            }
        }
        let norm = &self.word_embeddings_layernorm;
        kernels::layer_norm(t, &norm.weight, &norm.bias, self.eps, x);

        let post_ln = self.config.apply_residual_connection_post_layernorm;
        for (layer, block) in self.blocks.iter().enumerate() {
            let ln = &block.input_layernorm;
            kernels::layer_norm(x, &ln.weight, &ln.bias, self.eps, a);
            self.linear(&block.query_key_value, a, n, qkv);
            self.attention(layer, segments, &rows, &mut slots, qkv, q, ctx);
            self.linear(&block.dense, ctx, n, t);
            kernels::add(t, if post_ln { a } else { x });
            std::mem::swap(&mut x, &mut t);

            let ln = &block.post_attention_layernorm;
            kernels::layer_norm(x, &ln.weight, &ln.bias, self.eps, a);
            self.linear(&block.dense_h_to_4h, a, n, up);
            // Many tokens: in parallel (it is the costliest of the per-element steps).
            up.par_chunks_mut(1 << 16).for_each(kernels::gelu);
            self.linear(&block.dense_4h_to_h, up, n, t);
            kernels::add(t, if post_ln { a } else { x });
            std::mem::swap(&mut x, &mut t);
        }

        // Logits only after each asking segment's last token.
        let wanted: Vec<(usize, usize)> = rows
            .iter()
            .filter(|&&(i, _, _)| segments[i].logits && matches!(slots[i], Slot::Ran))
            .map(|&(i, r0, len)| (i, r0 + len - 1))
            .collect();
        let m = wanted.len();
        let last = sized(last, m * h);
        for (j, &(_, row)) in wanted.iter().enumerate() {
            a[j * h..(j + 1) * h].copy_from_slice(&x[row * h..(row + 1) * h]);
        }
        kernels::layer_norm(
            &a[..m * h],
            &self.ln_f.weight,
            &self.ln_f.bias,
            self.eps,
            last,
        );
        let logits = sized(logits, m * vocab);
        let head = self.lm_head.as_ref().unwrap_or(&self.embeddings);
        kernels::matmul(&self.pool, last, m, head, None, logits);
        for (j, &(i, _)) in wanted.iter().enumerate() {
            slots[i] = Slot::Logits(j);
        }
        for &(i, _, len) in &rows {
            if !matches!(slots[i], Slot::Failed(_)) {
                segments[i].cache.advance(len);
            }
        }
        StepOutput {
            logits: &logits[..],
            vocab,
            slots,
        }
    }

    fn linear(&self, l: &Linear, x: &[f32], n: usize, y: &mut [f32]) {
        kernels::matmul(&self.pool, x, n, &l.weight, Some(&l.bias), y);
    }

    /// Splits the fused QKV rows into the queries (`q`) and the caches' new slots, then writes every
    /// token's attention output to `ctx`. A segment whose attention fails is marked failed.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: usize,
        segments: &mut [Segment<'_>],
        rows: &[(usize, usize, usize)],
        slots: &mut [Slot],
        qkv: &[f32],
        q: &mut [f32],
        ctx: &mut [f32],
    ) {
        let (h, nh) = (self.config.hidden_size, self.config.n_head);
        let hd = h / nh;
        for &(i, r0, len) in rows {
            let (k, v) = segments[i].cache.append_slots(layer, len);
            for j in 0..len {
                let src = &qkv[(r0 + j) * 3 * h..(r0 + j + 1) * 3 * h];
                let dst = &mut q[(r0 + j) * h..(r0 + j + 1) * h];
                for head in 0..nh {
                    let (o, s) = (head * hd, head * 3 * hd);
                    dst[o..o + hd].copy_from_slice(&src[s..s + hd]);
                    let o = j * h + o;
                    k[o..o + hd].copy_from_slice(&src[s + hd..s + 2 * hd]);
                    v[o..o + hd].copy_from_slice(&src[s + 2 * hd..s + 3 * hd]);
                }
            }
        }
        let q = &*q;
        // Each segment's keys and values: the shared prefix, then its own (the new ones included).
        let kv: Vec<Vec<KvSegment<'_>>> = rows
            .iter()
            .map(|&(i, _, len)| {
                let cache = &*segments[i].cache;
                let mut segs = Vec::with_capacity(2);
                if let Some(p) = cache.prefix() {
                    let (k, v) = p.layer(layer);
                    segs.push(KvSegment { k, v, len: p.len() });
                }
                let (k, v) = cache.own().layer_with(layer, len);
                segs.push(KvSegment {
                    k: Keys::Rows(k),
                    v: Values::Rows(v),
                    len: cache.own().len() + len,
                });
                segs
            })
            .collect();

        // Rows are consecutive, in segment order: hand each its part of `ctx`.
        let mut direct = Vec::new();
        let mut prefill = Vec::new();
        let mut work = 0usize;
        let mut rest: &mut [f32] = ctx;
        for (s, &(i, r0, len)) in rows.iter().enumerate() {
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(len * h);
            rest = tail;
            let total: usize = kv[s].iter().map(|k| k.len).sum();
            // Decoding tokens, and short prompt chunks (where libtorch's per-call cost would
            // dominate): the kernel, query by query, heads split in four so both threads work even
            // for one sequence, and can even out heads of unequal cost (over a shared prefix the
            // steep heads leave most keys out).
            if len * total <= DIRECT_ATTENTION {
                work += len * total;
                let per = nh.div_ceil(4);
                for (j, row) in mine.chunks_mut(h).enumerate() {
                    let visible = total - len + j + 1;
                    for (c, out) in row.chunks_mut(per * hd).enumerate() {
                        direct.push((s, r0 + j, visible, c * per..c * per + out.len() / hd, out));
                    }
                }
            } else {
                prefill.push((s, i, r0, len, mine));
            }
        }
        type Task<'o> = (usize, usize, usize, std::ops::Range<usize>, &'o mut [f32]);
        let run = |(s, row, visible, heads, out): &mut Task<'_>| {
            // The keys this query sees: all but the later positions of its own chunk.
            let mut segments = kv[*s].clone();
            let mut cut = segments.iter().map(|k| k.len).sum::<usize>() - *visible;
            for seg in segments.iter_mut().rev() {
                let n = cut.min(seg.len);
                seg.len -= n;
                cut -= n;
            }
            let input = AttentionInput {
                q: &q[*row * h..(*row + 1) * h],
                segments: &segments,
                slopes: &self.slopes,
                head_dim: hd,
            };
            kernels::decode_attention_heads(&input, heads.clone(), out, &mut Vec::new());
        };
        // Short contexts cost less than waking the threads.
        if work * h < (1 << 16) {
            direct.iter_mut().for_each(run);
        } else {
            self.pool.install(|| direct.par_iter_mut().for_each(run));
        }

        // Longer prompt chunks: blocked products, a job per head, which the threads share out:
        // heads do not cost the same (over a shared prefix the steep ones leave most keys out,
        // see `kernels::far_keys`), so equal ranges of heads would leave one thread waiting. A
        // failure (say, no memory for the scores) fails that sequence only.
        let jobs: Vec<(usize, usize, std::ops::Range<usize>)> = prefill
            .iter()
            .enumerate()
            .flat_map(|(p, &(s, ..))| (0..nh).map(move |h0| (p, s, h0..h0 + 1)))
            .collect();
        let results: Vec<Result<Vec<f32>, ModelError>> = self.pool.install(|| {
            jobs.par_iter()
                .map(|(p, s, heads)| {
                    let (_, _, r0, len, _) = prefill[*p];
                    let q = &q[r0 * h..(r0 + len) * h];
                    // Scratch grows with the context: a failed allocation fails this sequence.
                    std::panic::catch_unwind(AssertUnwindSafe(|| {
                        let mut out = Vec::new();
                        out.try_reserve_exact(len * heads.len() * hd).map_err(|_| {
                            ModelError::Memory("no memory for the attention".into())
                        })?;
                        out.resize(len * heads.len() * hd, 0.0);
                        kernels::prefill_attention_heads(
                            q,
                            &kv[*s],
                            len,
                            &self.slopes,
                            heads.clone(),
                            hd,
                            &mut out,
                        );
                        Ok(out)
                    }))
                    .unwrap_or_else(|_| Err(ModelError::Memory("the attention failed".into())))
                })
                .collect()
        });
        for ((p, _, heads), result) in jobs.iter().zip(results) {
            let (_, i, _, len, ref mut out) = prefill[*p];
            match result {
                // `[len, heads, hd]` into the heads' columns of each row.
                Ok(part) => {
                    let w = heads.len() * hd;
                    for (j, row) in part.chunks_exact(w).enumerate().take(len) {
                        out[j * h + heads.start * hd..j * h + heads.end * hd].copy_from_slice(row);
                    }
                }
                Err(e) => {
                    out.fill(0.0);
                    if !matches!(slots[i], Slot::Failed(_)) {
                        slots[i] = Slot::Failed(e);
                    }
                }
            }
        }
    }

    /// Runs `ids` (one sequence) after whatever `cache` holds, in chunks of [`PREFILL_CHUNK`],
    /// appends their keys and values to it, and returns the last position's logits (f32, `vocab`).
    pub fn forward(&self, ids: &[i64], cache: &mut KvCache) -> Result<Vec<f32>, ModelError> {
        if ids.is_empty() {
            return Err(ModelError::Input("no tokens".into()));
        }
        let mut scratch = Scratch::default();
        let chunks: Vec<&[i64]> = ids.chunks(PREFILL_CHUNK).collect();
        for (c, chunk) in chunks.iter().enumerate() {
            let last = c + 1 == chunks.len();
            let mut segs = [Segment {
                cache: &mut *cache,
                tokens: chunk,
                logits: last,
            }];
            let mut out = self.step(&mut segs, &mut scratch);
            if let Some(e) = out.take_failure(0) {
                return Err(e);
            }
            if last {
                return match out.result(0) {
                    Ok(Some(l)) => Ok(l.to_vec()),
                    _ => Err(ModelError::Input("no logits".into())),
                };
            }
        }
        Err(ModelError::Input("no tokens".into()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::alibi_slopes;
    use crate::kernels::{
        decode_attention_heads, key_norms_bf16, paired, prefill_attention_heads, transpose_keys,
        transpose_keys_bf16, values_per_head, values_per_head_bf16, AttentionInput, Keys,
        KvSegment, Values, KEY_TILE,
    };

    #[test]
    fn prefill_attention_matches_the_kernel_query_by_query() {
        // (prefix, own positions, chunk): the chunk is the last of the own positions. Heads 1..4
        // of 6; the second case spans two query blocks.
        for (prefix, own, n, hd) in [
            (5usize, 9usize, 6usize, 8usize),
            (3, 80, 70, 8),
            (0, 20, 20, 8),
            // bloom-560m's head size, which has its own path; queries not a multiple of 4.
            (40, 45, 35, 64),
            // A system prompt over several tiles of transposed keys, the last partial.
            (150, 10, 10, 64),
        ] {
            let nh = 6usize;
            let w = nh * hd;
            let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
            let (pk, pv): (Vec<f32>, Vec<f32>) =
                (0..prefix * w).map(|i| (val(i), val(i + 7))).unzip();
            let (ok, ov): (Vec<f32>, Vec<f32>) =
                (0..own * w).map(|i| (val(i + 3), val(i + 11))).unzip();
            let q: Vec<f32> = (0..n * w).map(|i| val(i + 5) * 2.0).collect();
            let slopes: Vec<f32> = alibi_slopes(nh).into_iter().map(|s| s as f32).collect();
            let stride = prefix.div_ceil(KEY_TILE) * KEY_TILE;
            let mut pkt = vec![0f32; w * stride];
            transpose_keys(&pk, prefix, (w, hd), stride, &mut pkt);
            let mut pvh = vec![0f32; prefix * w];
            values_per_head(&pv, prefix, (w, hd), &mut pvh);
            let rows = [
                KvSegment {
                    k: Keys::Rows(&pk),
                    v: Values::Rows(&pv),
                    len: prefix,
                },
                KvSegment {
                    k: Keys::Rows(&ok),
                    v: Values::Rows(&ov),
                    len: own,
                },
            ];
            // The prefix as the engine shares it (keys transposed), against the reference with rows.
            let transposed = [
                KvSegment {
                    k: Keys::Transposed { kt: &pkt, stride },
                    v: Values::PerHead {
                        v: &pvh,
                        positions: prefix,
                    },
                    len: prefix,
                },
                rows[1],
            ];
            // And in bf16, as bf16 and int8 models keep it where the CPU multiplies bf16 pairs:
            // against the same layout query by query (the same rounding), and against the f32 rows
            // within bf16's precision.
            let mut pkb = vec![0u16; w * stride];
            transpose_keys_bf16(&pk, prefix, (w, hd), stride, &mut pkb);
            let mut pvb = vec![0u16; paired(prefix) * w];
            values_per_head_bf16(&pv, prefix, (w, hd), &mut pvb);
            let norms = key_norms_bf16(&pkb, hd, stride);
            let bf16 = [
                KvSegment {
                    k: Keys::TransposedBf16 {
                        kt: &pkb,
                        stride,
                        norms: &norms,
                    },
                    v: Values::PerHeadBf16 {
                        v: &pvb,
                        positions: prefix,
                    },
                    len: prefix,
                },
                rows[1],
            ];
            let cases = [
                (rows, rows, 1e-5),
                (transposed, rows, 1e-5),
                // The prompt chunk rounds the query scaled by 1/√d, a decoding token the query:
                // the same for heads of 64 (an exact power of two), not for heads of 8.
                (bf16, bf16, if hd == 64 { 1e-5 } else { 4e-3 }),
                (bf16, rows, 5e-3),
            ];
            for (kv, reference, tolerance) in cases {
                let mut got = vec![0f32; n * 3 * hd];
                prefill_attention_heads(&q, &kv, n, &slopes, 1..4, hd, &mut got);
                for j in 0..n {
                    let visible = own - n + j + 1;
                    let segs = [
                        reference[0],
                        KvSegment {
                            len: visible,
                            ..rows[1]
                        },
                    ];
                    let mut want = vec![0f32; 3 * hd];
                    let input = AttentionInput {
                        q: &q[j * w..(j + 1) * w],
                        segments: &segs,
                        slopes: &slopes,
                        head_dim: hd,
                    };
                    decode_attention_heads(&input, 1..4, &mut want, &mut Vec::new());
                    let row = &got[j * 3 * hd..(j + 1) * 3 * hd];
                    let worst = row
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(worst < tolerance, "{prefix}/{own}/{n}, query {j}: {worst}");
                }
            }
        }
    }

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
