//! Causal attention of a prompt chunk: `n` queries at the last `n` positions, over keys and values
//! in segments (a shared prefix, then the sequence's own, the chunk's included).
//!
//! Per head, in blocks of queries: the scores of a block against the keys it can see (no work above
//! the causal diagonal beyond the block) — the f32 kernel over a sequence's own key rows, the
//! register tiles over a shared prefix's transposed keys — then ALiBi, the mask and the softmax in
//! place, then the probabilities times each segment's values, several queries per value row. The
//! caches are read in place, never copied.

use super::attention::{check_segments, scores_transposed, Keys, KvSegment};
use super::attention_bf16::{round_rows, scores_bf16, weighted_bf16};
use super::elementwise::{exp_with, sum};
use super::far_keys;
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
            attention::<true, true>(q, segments, n, slopes, heads, hd, out)
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
            attention::<true, false>(q, segments, n, slopes, heads, hd, out)
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
    attention::<false, false>(q, segments, n, slopes, heads, hd, out)
}

/// `FMA`: fused multiply-adds are instructions here (else `mul_add` would be a library call).
/// `WIDE`: 512-bit registers (32 of them), which hold larger tiles of accumulators.
#[inline(always)]
fn attention<const FMA: bool, const WIDE: bool>(
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
    check_segments(segments, width, hd);
    assert_eq!(
        out.len(),
        n * heads.len() * hd,
        "out is not n × heads × head_dim"
    );
    let past = total - n;
    let inv = 1.0 / (hd as f32).sqrt();
    let hw = heads.len() * hd;
    let mut qh = vec![0f32; n * hd];
    let mut scores = Vec::new();
    let mut ctx = vec![0f32; QUERY_BLOCK * hd];
    let mut sums = [0f32; QUERY_BLOCK];
    // A block's queries and probabilities rounded for bf16 segments.
    let (mut qb, mut pb) = (Vec::new(), Vec::new());
    // ALiBi's key positions.
    let positions: Vec<f32> = (0..total).map(|j| j as f32).collect();
    for (c, h) in heads.clone().enumerate() {
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
            let block = &qh[i0 * hd..i1 * hd];
            // Leading positions every query of the block leaves out (see `far_keys`): of a bf16
            // first segment that the block's first query sees whole.
            let skip = match segments.first() {
                Some(seg) if past + i0 + 1 >= seg.len => far_keys::left_out(seg, h, slope, || {
                    far_keys::largest(block.chunks_exact(hd).map(far_keys::norm))
                }),
                _ => 0,
            };
            // Scores against each segment's keys, read in place (rows `width` apart).
            let mut first = 0;
            for seg in segments {
                let rows = seg.len.min(seen.saturating_sub(first));
                if rows > 0 {
                    match seg.k {
                        Keys::Rows(k) => matmul_local(
                            block,
                            bq,
                            (&k[h * hd..], width),
                            rows,
                            hd,
                            (&mut scores[first..], seen),
                        ),
                        Keys::Transposed { kt, stride } => scores_transposed::<FMA, WIDE>(
                            block,
                            bq,
                            hd,
                            &kt[h * hd * stride..(h + 1) * hd * stride],
                            stride,
                            rows,
                            &mut scores[first..],
                            seen,
                        ),
                        Keys::TransposedBf16 { kt, stride, .. } => {
                            let left_out = if first == 0 { skip } else { 0 };
                            round_rows(block, hd, bq, hd, &mut qb);
                            scores_bf16(
                                &qb,
                                bq,
                                hd,
                                &kt[h * hd * stride + left_out * hd..(h + 1) * hd * stride],
                                stride - left_out,
                                rows - left_out,
                                &mut scores[first + left_out..],
                                seen,
                            )
                        }
                    }
                }
                first += seg.len;
            }
            // Unnormalized: each row's sum divides its output instead, one pass fewer over the
            // scores.
            for (r, (row, total)) in scores.chunks_exact_mut(seen).zip(&mut sums).enumerate() {
                let visible = past + i0 + r + 1;
                *total =
                    exp_alibi::<FMA>(&mut row[skip..visible], &positions[skip..visible], slope);
                row[..skip].fill(0.0);
                row[visible..].fill(0.0);
            }
            // The probabilities times each segment's values, read in place.
            let ctx = &mut ctx[..bq * hd];
            ctx.fill(0.0);
            let mut first = 0;
            for seg in segments {
                let rows = seg.len.min(seen.saturating_sub(first));
                if rows > 0 {
                    if let Some(v) = seg.v.head(h, hd, width) {
                        weighted_rows::<FMA, WIDE>(&scores[first..], seen, bq, v, rows, hd, ctx);
                    } else if let Some(v) = seg.v.head_bf16(h, hd) {
                        // The positions left out (an even count) are not read.
                        let left_out = if first == 0 { skip } else { 0 };
                        let (p, rows) = (&scores[first + left_out..], rows - left_out);
                        let ps = round_rows(p, seen, bq, rows, &mut pb);
                        weighted_bf16(&pb, ps, bq, &v[left_out * hd..], rows, hd, ctx);
                    }
                }
                first += seg.len;
            }
            for (r, (row, total)) in ctx.chunks_exact(hd).zip(&sums).enumerate() {
                let o = (i0 + r) * hw + c * hd;
                let norm = 1.0 / total;
                for (o, x) in out[o..o + hd].iter_mut().zip(row) {
                    *o = x * norm;
                }
            }
        }
    }
}

/// `row[j] ← e^(row[j] + slope · position[j] - max)`, in place; returns the row's sum (the
/// softmax's divisor).
#[inline(always)]
fn exp_alibi<const FMA: bool>(row: &mut [f32], positions: &[f32], slope: f32) -> f32 {
    const LANES: usize = 16;
    let mut max = [f32::NEG_INFINITY; LANES];
    let (chunks, tail) = row.as_chunks_mut::<LANES>();
    let (pos_chunks, pos_tail) = positions.as_chunks::<LANES>();
    for (chunk, pos) in chunks.iter_mut().zip(pos_chunks) {
        // Whole arrays, one operation at a time: written element by element (add, then the
        // maximum) the compiler emitted scalar adds and packed them for the maximum.
        let mut v = [0f32; LANES];
        for ((v, s), p) in v.iter_mut().zip(chunk.iter()).zip(pos) {
            *v = s + slope * p;
        }
        for (m, v) in max.iter_mut().zip(&v) {
            // A select, not `f32::max`: it vectorizes.
            *m = if *v > *m { *v } else { *m };
        }
        *chunk = v;
    }
    for ((s, p), m) in tail.iter_mut().zip(pos_tail).zip(max.iter_mut()) {
        *s += slope * p;
        *m = if *s > *m { *s } else { *m };
    }
    let max = max
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    // The exponentials and their sum in one pass.
    let mut acc = [0f32; LANES];
    let (chunks, tail) = row.as_chunks_mut::<LANES>();
    for chunk in chunks {
        for (a, s) in acc.iter_mut().zip(chunk.iter_mut()) {
            *s = exp_with::<FMA>(*s - max);
            *a += *s;
        }
    }
    let mut total = sum(&acc);
    for s in tail {
        *s = exp_with::<FMA>(*s - max);
        total += *s;
    }
    total
}

/// `out[q] += Σ_j p[q][j] · v[j]` for `bq` queries (`p` rows `ps` apart) over `rows` value rows of
/// `hd` (`vs` apart), several queries at a time so each value row is loaded once for several: the
/// register tiles of [`super::attention_tiles`] where there are fused multiply-adds, else 3 queries
/// × 32 columns, the head's two halves in turn.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn weighted_rows<const FMA: bool, const WIDE: bool>(
    p: &[f32],
    ps: usize,
    bq: usize,
    (v, vs): (&[f32], usize),
    rows: usize,
    hd: usize,
    out: &mut [f32],
) {
    if rows == 0 || bq == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if hd == 64 && FMA {
        // SAFETY: `FMA` is set only inside functions enabling AVX2 and FMA, `WIDE` only inside
        // ones enabling AVX-512F; the shapes are the caller's, checked on entry.
        unsafe {
            if WIDE {
                super::attention_tiles::weighted_avx512(p, ps, bq, (v, vs), rows, out)
            } else {
                super::attention_tiles::weighted_avx2(p, ps, bq, (v, vs), rows, out)
            }
        }
        return;
    }
    if hd == 64 {
        for half in [0, 32] {
            let mut q0 = 0;
            while q0 < bq {
                let (p, rest) = (&p[q0 * ps..], &mut out[q0 * hd + half..]);
                let v = (&v[half..], vs);
                match bq - q0 {
                    1 => weighted_rows_n::<32, 1, FMA>(p, ps, v, rows, rest, hd),
                    2 => weighted_rows_n::<32, 2, FMA>(p, ps, v, rows, rest, hd),
                    _ => weighted_rows_n::<32, 3, FMA>(p, ps, v, rows, rest, hd),
                }
                q0 += 3;
            }
        }
        return;
    }
    for q in 0..bq {
        let o = &mut out[q * hd..(q + 1) * hd];
        for j in 0..rows {
            let w = p[q * ps + j];
            for (a, x) in o.iter_mut().zip(&v[j * vs..j * vs + hd]) {
                *a += w * x;
            }
        }
    }
}

/// [`weighted_rows`] for `N` queries and `HD` columns known at compile time (output rows `os`
/// apart): the accumulators stay in registers.
#[inline(always)]
fn weighted_rows_n<const HD: usize, const N: usize, const FMA: bool>(
    p: &[f32],
    ps: usize,
    (v, vs): (&[f32], usize),
    rows: usize,
    out: &mut [f32],
    os: usize,
) {
    let mut acc = [[0f32; HD]; N];
    for j in 0..rows {
        let row: &[f32; HD] = match v[j * vs..j * vs + HD].try_into() {
            Ok(r) => r,
            Err(_) => unreachable!("a value row is HD long"),
        };
        for (q, a) in acc.iter_mut().enumerate() {
            let w = p[q * ps + j];
            for (a, x) in a.iter_mut().zip(row) {
                *a = if FMA { w.mul_add(*x, *a) } else { *a + w * x };
            }
        }
    }
    for (q, a) in acc.iter().enumerate() {
        for (o, x) in out[q * os..q * os + HD].iter_mut().zip(a) {
            *o += x;
        }
    }
}
