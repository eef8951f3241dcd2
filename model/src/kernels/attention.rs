//! Attention of one decoding token over its keys and values, which may lie in several segments (a
//! shared system-prompt prefix, then the conversation's own): BLOOM's `alibi + q·kᵀ/√d`, softmax in
//! f32, then the weighted sum of the values. Positions count from the first segment.

use super::elementwise::{exp, sum};
use super::{isa, Isa};

/// `len` positions of keys and values, each `[n_head, head_dim]`, rows contiguous.
#[derive(Debug, Clone, Copy)]
pub struct KvSegment<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub len: usize,
}

/// One query and what it attends to.
#[derive(Debug)]
pub struct AttentionInput<'a> {
    /// `[n_head, head_dim]`.
    pub q: &'a [f32],
    /// In position order.
    pub segments: &'a [KvSegment<'a>],
    /// ALiBi slope per head.
    pub slopes: &'a [f32],
    pub head_dim: usize,
}

const LANES: usize = 16;

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn heads_impl(
    input: &AttentionInput<'_>,
    heads: std::ops::Range<usize>,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let hd = input.head_dim;
    let width = input.slopes.len() * hd;
    let total: usize = input.segments.iter().map(|s| s.len).sum();
    let inv = 1.0 / (hd as f32).sqrt();
    scores.clear();
    scores.resize(total, 0.0);
    for (h, o) in heads.clone().zip(out.chunks_exact_mut(hd)) {
        let q = &input.q[h * hd..(h + 1) * hd];
        let slope = input.slopes[h];
        let mut pos = 0;
        let mut max = f32::NEG_INFINITY;
        for seg in input.segments {
            for j in 0..seg.len {
                let k = &seg.k[j * width + h * hd..j * width + (h + 1) * hd];
                let s = dot(q, k) * inv + slope * pos as f32;
                scores[pos] = s;
                max = max.max(s);
                pos += 1;
            }
        }
        for s in scores.iter_mut() {
            *s = exp(*s - max);
        }
        let norm = 1.0 / sum(scores);
        o.fill(0.0);
        let mut pos = 0;
        for seg in input.segments {
            for j in 0..seg.len {
                let p = scores[pos] * norm;
                let v = &seg.v[j * width + h * hd..j * width + (h + 1) * hd];
                for (a, b) in o.iter_mut().zip(v) {
                    *a += p * b;
                }
                pos += 1;
            }
        }
    }
}

/// Writes the attention output of `heads` (`[heads.len(), head_dim]`) into `out`; `scores` is
/// scratch.
///
/// # Panics
/// If the shapes do not agree (a bug of the caller).
pub fn decode_attention_heads(
    input: &AttentionInput<'_>,
    heads: std::ops::Range<usize>,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let hd = input.head_dim;
    let width = input.slopes.len() * hd;
    assert_eq!(input.q.len(), width, "q is not n_head × head_dim");
    assert!(heads.end <= input.slopes.len(), "no such head");
    assert_eq!(out.len(), heads.len() * hd, "out is not heads × head_dim");
    for s in input.segments {
        assert!(s.k.len() >= s.len * width && s.v.len() >= s.len * width);
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,fma")]
        unsafe fn wide(
            input: &AttentionInput<'_>,
            heads: std::ops::Range<usize>,
            out: &mut [f32],
            scores: &mut Vec<f32>,
        ) {
            heads_impl(input, heads, out, scores)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn narrow(
            input: &AttentionInput<'_>,
            heads: std::ops::Range<usize>,
            out: &mut [f32],
            scores: &mut Vec<f32>,
        ) {
            heads_impl(input, heads, out, scores)
        }
        match isa() {
            // SAFETY: `isa()` names only instruction sets this CPU has.
            Isa::Avx512Dot | Isa::Avx512 => return unsafe { wide(input, heads, out, scores) },
            Isa::Avx2 => return unsafe { narrow(input, heads, out, scores) },
            Isa::Portable => {}
        }
    }
    heads_impl(input, heads, out, scores)
}

/// [`decode_attention_heads`] for every head: `out` is `[n_head, head_dim]`.
pub fn decode_attention(input: &AttentionInput<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
    decode_attention_heads(input, 0..input.slopes.len(), out, scores)
}
