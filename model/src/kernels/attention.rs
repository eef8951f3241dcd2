//! Attention of one decoding token over its keys and values, which may lie in several segments (a
//! shared system-prompt prefix, then the conversation's own): BLOOM's `alibi + q·kᵀ/√d`, softmax in
//! f32, then the weighted sum of the values. Positions count from the first segment.
//!
//! Keys come in rows (a sequence's own, one row per position as the step writes them) or transposed
//! per head (the shared system prompt's, laid out once at boot): then `q·kᵀ` over many positions
//! runs along the positions — a decoding token's in tiles of accumulators held in registers, a
//! prompt chunk's query by query, four key rows per pass over its score row — instead of a 64-long
//! dot product and a horizontal sum per position.

use super::elementwise::{exp, sum};
use super::{isa, Isa};

/// Positions per tile of the transposed-key product, and the multiple a transposed segment's
/// stride is padded to.
pub const KEY_TILE: usize = 64;

/// How a segment's keys are laid out.
#[derive(Debug, Clone, Copy)]
pub enum Keys<'a> {
    /// One row `[n_head, head_dim]` per position.
    Rows(&'a [f32]),
    /// Per head, `head_dim` rows of `stride` positions (`[n_head][head_dim][stride]`); `stride` is a
    /// multiple of [`KEY_TILE`] at least the segment's length, the padding zero.
    Transposed { kt: &'a [f32], stride: usize },
}

/// `len` positions of keys and values; values are rows `[n_head, head_dim]`, contiguous.
#[derive(Debug, Clone, Copy)]
pub struct KvSegment<'a> {
    pub k: Keys<'a>,
    pub v: &'a [f32],
    pub len: usize,
}

/// Lays `len` key rows of `width` out as [`Keys::Transposed`] in `kt` (`width × stride`, `stride` a
/// multiple of [`KEY_TILE`] not below `len`): row `c` of the transpose is column `c` of the rows,
/// which is head `c / head_dim`, dimension `c % head_dim`. The padding is zeroed.
///
/// # Panics
/// If the shapes do not agree (a bug of the caller).
pub fn transpose_keys(rows: &[f32], len: usize, width: usize, stride: usize, kt: &mut [f32]) {
    assert!(stride.is_multiple_of(KEY_TILE) && stride >= len && kt.len() == width * stride);
    assert!(rows.len() >= len * width);
    kt.fill(0.0);
    for (j, row) in rows.chunks_exact(width.max(1)).enumerate().take(len) {
        for (c, x) in row.iter().enumerate() {
            kt[c * stride + j] = *x;
        }
    }
}

/// `out[t·os + j] = Σ_d q[t·hd + d] · kt[d·stride + j]` for `t < nq`, `j < len`: the scores of
/// `nq` queries against one head's transposed keys. `kt` holds `hd` rows of `stride` (padded)
/// positions. One query: tiles of 64 positions (`WIDE`: 512-bit registers) or 32, accumulated in
/// registers. Several: the register tiles of [`super::attention_tiles`] where there are fused
/// multiply-adds, else each query's score row in turn, four key rows per pass.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn scores_transposed<const FMA: bool, const WIDE: bool>(
    q: &[f32],
    nq: usize,
    hd: usize,
    kt: &[f32],
    stride: usize,
    len: usize,
    out: &mut [f32],
    os: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if nq > 1 && FMA {
        // SAFETY: `FMA` is set only inside functions enabling AVX2 and FMA, `WIDE` only inside
        // ones enabling AVX-512F; the callers check the shapes (`stride` a multiple of KEY_TILE).
        unsafe {
            if WIDE {
                super::attention_tiles::scores_avx512(q, nq, hd, kt, stride, len, out, os)
            } else {
                super::attention_tiles::scores_avx2(q, nq, hd, kt, stride, len, out, os)
            }
        }
        return;
    }
    if nq > 1 {
        // Several queries (a prompt chunk) without fused multiply-adds: row by row, each score row (a few KiB) staying in L1
        // while the key rows stream past it.
        for t in 0..nq {
            let row = &mut out[t * os..t * os + len];
            row.fill(0.0);
            // Four key rows per pass: one load and store of the scores for four multiply-adds.
            let mut d = 0;
            while d + 4 <= hd {
                let w = &q[t * hd + d..t * hd + d + 4];
                let k = |i: usize| &kt[(d + i) * stride..(d + i) * stride + len];
                let (k0, k1, k2, k3) = (k(0), k(1), k(2), k(3));
                for (j, s) in row.iter_mut().enumerate() {
                    *s = if FMA {
                        w[3].mul_add(
                            k3[j],
                            w[2].mul_add(k2[j], w[1].mul_add(k1[j], w[0].mul_add(k0[j], *s))),
                        )
                    } else {
                        *s + w[0] * k0[j] + w[1] * k1[j] + w[2] * k2[j] + w[3] * k3[j]
                    };
                }
                d += 4;
            }
            for d in d..hd {
                let w = q[t * hd + d];
                for (s, k) in row.iter_mut().zip(&kt[d * stride..d * stride + len]) {
                    *s = if FMA { w.mul_add(*k, *s) } else { *s + w * k };
                }
            }
        }
        return;
    }
    if WIDE {
        tile_row::<64, FMA>(q, hd, kt, stride, len, out)
    } else {
        tile_row::<32, FMA>(q, hd, kt, stride, len, out)
    }
}

/// One query's scores, `P` positions per tile accumulated in registers (`P` divides
/// [`KEY_TILE`], so tiles never pass the padded stride).
#[inline(always)]
fn tile_row<const P: usize, const FMA: bool>(
    q: &[f32],
    hd: usize,
    kt: &[f32],
    stride: usize,
    len: usize,
    out: &mut [f32],
) {
    for j0 in (0..len).step_by(P) {
        let mut acc = [0f32; P];
        for (d, &w) in q[..hd].iter().enumerate() {
            let k: &[f32; P] = match kt[d * stride + j0..d * stride + j0 + P].try_into() {
                Ok(k) => k,
                Err(_) => unreachable!("a tile is P long"),
            };
            for (a, x) in acc.iter_mut().zip(k) {
                *a = if FMA { w.mul_add(*x, *a) } else { *a + w * x };
            }
        }
        let n = P.min(len - j0);
        out[j0..j0 + n].copy_from_slice(&acc[..n]);
    }
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
fn heads_impl<const FMA: bool, const WIDE: bool>(
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
            match seg.k {
                Keys::Rows(k) => {
                    for j in 0..seg.len {
                        let k = &k[j * width + h * hd..j * width + (h + 1) * hd];
                        let s = dot(q, k) * inv + slope * pos as f32;
                        scores[pos] = s;
                        max = max.max(s);
                        pos += 1;
                    }
                }
                Keys::Transposed { kt, stride } => {
                    let row = &mut scores[pos..pos + seg.len];
                    let kt = &kt[h * hd * stride..(h + 1) * hd * stride];
                    scores_transposed::<FMA, WIDE>(q, 1, hd, kt, stride, seg.len, row, 0);
                    for s in row.iter_mut() {
                        *s = *s * inv + slope * pos as f32;
                        max = max.max(*s);
                        pos += 1;
                    }
                }
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
        assert!(s.v.len() >= s.len * width);
        match s.k {
            Keys::Rows(k) => assert!(k.len() >= s.len * width),
            Keys::Transposed { kt, stride } => assert!(
                stride.is_multiple_of(KEY_TILE) && stride >= s.len && kt.len() >= width * stride,
                "transposed keys are not n_head × head_dim × stride"
            ),
        }
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
            heads_impl::<true, true>(input, heads, out, scores)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn narrow(
            input: &AttentionInput<'_>,
            heads: std::ops::Range<usize>,
            out: &mut [f32],
            scores: &mut Vec<f32>,
        ) {
            heads_impl::<true, false>(input, heads, out, scores)
        }
        match isa() {
            // SAFETY: `isa()` names only instruction sets this CPU has.
            Isa::Avx512Dot | Isa::Avx512 => return unsafe { wide(input, heads, out, scores) },
            Isa::Avx2 => return unsafe { narrow(input, heads, out, scores) },
            Isa::Portable => {}
        }
    }
    heads_impl::<false, false>(input, heads, out, scores)
}

/// [`decode_attention_heads`] for every head: `out` is `[n_head, head_dim]`.
pub fn decode_attention(input: &AttentionInput<'_>, out: &mut [f32], scores: &mut Vec<f32>) {
    decode_attention_heads(input, 0..input.slopes.len(), out, scores)
}
