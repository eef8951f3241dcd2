//! Causal attention of a prompt chunk: `n` queries at the last `n` positions, over keys and values
//! in segments (a shared prefix, then the sequence's own, the chunk's included).
//!
//! Per head, in blocks of queries: the scores of a block against the keys it can see (no work above
//! the causal diagonal beyond the block) are a small matrix product on the f32 kernel, then ALiBi,
//! the mask and the softmax in place, then the product with the values (transposed per block so the
//! kernel reads both operands along rows). The operands of one head are gathered into contiguous
//! scratch for the duration of the call; the caches themselves are only read.

use super::attention::KvSegment;
use super::elementwise::{exp, sum};
use super::{isa, matmul_local, Isa};

/// Queries per block: the scores of a block stay in L2.
const QUERY_BLOCK: usize = 64;

/// Writes the attention output of `heads` for the `n` queries (`q` is `n × width`, `width = n_head ×
/// head_dim`) into `out` (`n × heads.len() × head_dim`).
///
/// # Panics
/// If the shapes do not agree (a bug of the caller).
pub fn prefill_attention_heads(
    q: &[f32],
    segments: &[KvSegment<'_>],
    n: usize,
    slopes: &[f32],
    heads: std::ops::Range<usize>,
    hd: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,fma")]
        unsafe fn wide(
            q: &[f32],
            segments: &[KvSegment<'_>],
            n: usize,
            slopes: &[f32],
            heads: std::ops::Range<usize>,
            hd: usize,
            out: &mut [f32],
        ) {
            attention(q, segments, n, slopes, heads, hd, out)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn narrow(
            q: &[f32],
            segments: &[KvSegment<'_>],
            n: usize,
            slopes: &[f32],
            heads: std::ops::Range<usize>,
            hd: usize,
            out: &mut [f32],
        ) {
            attention(q, segments, n, slopes, heads, hd, out)
        }
        match isa() {
            // SAFETY: `isa()` names only instruction sets this CPU has.
            Isa::Avx512Dot | Isa::Avx512 => {
                return unsafe { wide(q, segments, n, slopes, heads, hd, out) }
            }
            Isa::Avx2 => return unsafe { narrow(q, segments, n, slopes, heads, hd, out) },
            Isa::Portable => {}
        }
    }
    attention(q, segments, n, slopes, heads, hd, out)
}

#[inline(always)]
fn attention(
    q: &[f32],
    segments: &[KvSegment<'_>],
    n: usize,
    slopes: &[f32],
    heads: std::ops::Range<usize>,
    hd: usize,
    out: &mut [f32],
) {
    let width = slopes.len() * hd;
    let total: usize = segments.iter().map(|s| s.len).sum();
    assert!(n <= total && q.len() == n * width && heads.end <= slopes.len());
    assert_eq!(
        out.len(),
        n * heads.len() * hd,
        "out is not n × heads × head_dim"
    );
    let past = total - n;
    let inv = 1.0 / (hd as f32).sqrt();
    let hw = heads.len() * hd;
    let (mut k, mut vt, mut qh) = (
        vec![0f32; total * hd],
        vec![0f32; hd * total],
        vec![0f32; n * hd],
    );
    let mut scores = Vec::new();
    let mut ctx = vec![0f32; QUERY_BLOCK * hd];
    for (c, h) in heads.clone().enumerate() {
        // This head's keys, contiguous; its values transposed (`hd × total`); its queries, scaled.
        let mut pos = 0;
        for seg in segments {
            for j in 0..seg.len {
                let at = j * width + h * hd;
                k[pos * hd..(pos + 1) * hd].copy_from_slice(&seg.k[at..at + hd]);
                for (d, x) in seg.v[at..at + hd].iter().enumerate() {
                    vt[d * total + pos] = *x;
                }
                pos += 1;
            }
        }
        for (i, dst) in qh.chunks_exact_mut(hd).enumerate() {
            for (d, s) in dst
                .iter_mut()
                .zip(&q[i * width + h * hd..i * width + (h + 1) * hd])
            {
                *d = s * inv;
            }
        }
        let slope = slopes[h];
        for i0 in (0..n).step_by(QUERY_BLOCK) {
            let i1 = (i0 + QUERY_BLOCK).min(n);
            let (bq, seen) = (i1 - i0, past + i1);
            scores.clear();
            scores.resize(bq * seen, 0.0);
            matmul_local(&qh[i0 * hd..i1 * hd], bq, (&k, hd), seen, hd, &mut scores);
            for (r, row) in scores.chunks_exact_mut(seen).enumerate() {
                let visible = past + i0 + r + 1;
                softmax_alibi(&mut row[..visible], slope);
                row[visible..].fill(0.0);
            }
            matmul_local(&scores, bq, (&vt, total), hd, seen, &mut ctx[..bq * hd]);
            for (r, row) in ctx[..bq * hd].chunks_exact(hd).enumerate() {
                let o = (i0 + r) * hw + c * hd;
                out[o..o + hd].copy_from_slice(row);
            }
        }
    }
}

/// `row[j] += slope · j`, then the softmax of the row, in place.
#[inline(always)]
fn softmax_alibi(row: &mut [f32], slope: f32) {
    const LANES: usize = 16;
    let mut max = [f32::NEG_INFINITY; LANES];
    for (c, chunk) in row.chunks_mut(LANES).enumerate() {
        for (l, (s, m)) in chunk.iter_mut().zip(max.iter_mut()).enumerate() {
            *s += slope * (c * LANES + l) as f32;
            // A select, not `f32::max`: it vectorizes.
            *m = if *s > *m { *s } else { *m };
        }
    }
    let max = max
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for s in row.iter_mut() {
        *s = exp(*s - max);
    }
    let norm = 1.0 / sum(row);
    for s in row.iter_mut() {
        *s *= norm;
    }
}
