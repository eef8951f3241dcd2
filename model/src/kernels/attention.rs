//! Attention of one decoding token over its keys and values, which may lie in several segments (a
//! shared system-prompt prefix, then the conversation's own): BLOOM's `alibi + q·kᵀ/√d`, softmax in
//! f32, then the weighted sum of the values. Positions count from the first segment.
//!
//! Keys and values come in rows (a sequence's own, one row per position as the step writes them) or
//! laid out per head (the shared system prompt's, laid out once at boot): keys transposed in tiles
//! of [`KEY_TILE`] positions, so `q·kᵀ` over many positions runs along the positions in tiles of
//! accumulators held in registers instead of a 64-long dot product and a horizontal sum per
//! position, and each tile's keys are one contiguous block; values one contiguous block per head.
//! Rows put a head's 256 bytes 4 KiB apart: over a 1,305-token prefix, a page per position.

use super::attention_bf16::{paired, round_rows, scores_bf16, weighted_bf16};
use super::elementwise::{exp_with, sum};
use super::far_keys;
use super::{isa, Isa};

/// Positions per tile of transposed keys, and the multiple a transposed segment's stride is padded
/// to.
pub const KEY_TILE: usize = 64;

/// How a segment's keys are laid out.
#[derive(Debug, Clone, Copy)]
pub enum Keys<'a> {
    /// One row `[n_head, head_dim]` per position.
    Rows(&'a [f32]),
    /// Per head (`head_dim × stride` each), tiles of [`KEY_TILE`] positions, each tile `head_dim`
    /// rows of [`KEY_TILE`]: key `(h, j, d)` at `h·head_dim·stride + (j / T)·head_dim·T + d·T +
    /// j % T`. `stride` is a multiple of [`KEY_TILE`] at least the segment's length, the padding
    /// zero.
    Transposed { kt: &'a [f32], stride: usize },
    /// As `Transposed`, rounded to bf16, each tile's dims in pairs (see
    /// [`super::attention_bf16`]); `norms` are its tiles' largest key norms per head
    /// ([`super::key_norms_bf16`]), by which a query leaves out the keys ALiBi has silenced
    /// ([`super::far_keys`]).
    TransposedBf16 {
        kt: &'a [u16],
        stride: usize,
        norms: &'a [f32],
    },
}

/// How a segment's values are laid out.
#[derive(Debug, Clone, Copy)]
pub enum Values<'a> {
    /// One row `[n_head, head_dim]` per position.
    Rows(&'a [f32]),
    /// Per head, `positions` rows of `head_dim` (`[n_head][positions][head_dim]`); `positions` is
    /// the whole segment's, which a query may see only the start of.
    PerHead { v: &'a [f32], positions: usize },
    /// As `PerHead`, rounded to bf16, the positions in pairs (see [`super::attention_bf16`]).
    PerHeadBf16 { v: &'a [u16], positions: usize },
}

impl<'a> Values<'a> {
    /// Head `h`'s f32 values from the first position, and the distance from one position's to
    /// the next (nothing for a segment without positions); `None` for bf16 values.
    #[inline(always)]
    pub(super) fn head(
        self,
        h: usize,
        head_dim: usize,
        width: usize,
    ) -> Option<(&'a [f32], usize)> {
        let (v, start, step) = match self {
            Values::Rows(v) => (v, h * head_dim, width),
            Values::PerHead { v, positions } => (v, h * positions * head_dim, head_dim),
            Values::PerHeadBf16 { .. } => return None,
        };
        Some((v.get(start..).unwrap_or_default(), step))
    }

    /// Head `h`'s bf16 values from the first pair of positions; `None` for f32 values.
    #[inline(always)]
    pub(super) fn head_bf16(self, h: usize, head_dim: usize) -> Option<&'a [u16]> {
        match self {
            Values::PerHeadBf16 { v, positions } => Some(
                v.get(h * paired(positions) * head_dim..)
                    .unwrap_or_default(),
            ),
            Values::Rows(_) | Values::PerHead { .. } => None,
        }
    }

    /// Whether it holds `len` positions of `width`.
    fn holds(self, len: usize, width: usize) -> bool {
        match self {
            Values::Rows(v) => v.len() >= len * width,
            Values::PerHead { v, positions } => positions >= len && v.len() >= positions * width,
            Values::PerHeadBf16 { v, positions } => {
                positions >= len && v.len() >= paired(positions) * width
            }
        }
    }
}

/// `len` positions of keys and values.
#[derive(Debug, Clone, Copy)]
pub struct KvSegment<'a> {
    pub k: Keys<'a>,
    pub v: Values<'a>,
    pub len: usize,
}

/// Lays `len` key rows of `width` (heads of `head_dim`) out as [`Keys::Transposed`] in `kt`
/// (`width × stride`, `stride` a multiple of [`KEY_TILE`] not below `len`). The padding is zeroed.
///
/// # Panics
/// If the shapes do not agree (a bug of the caller).
pub fn transpose_keys(
    rows: &[f32],
    len: usize,
    (width, head_dim): (usize, usize),
    stride: usize,
    kt: &mut [f32],
) {
    assert!(stride.is_multiple_of(KEY_TILE) && stride >= len && kt.len() == width * stride);
    assert!(head_dim > 0 && width.is_multiple_of(head_dim) && rows.len() >= len * width);
    kt.fill(0.0);
    for (j, row) in rows.chunks_exact(width.max(1)).enumerate().take(len) {
        let tile = (j / KEY_TILE) * head_dim * KEY_TILE + j % KEY_TILE;
        for (c, x) in row.iter().enumerate() {
            let (h, d) = (c / head_dim, c % head_dim);
            kt[h * head_dim * stride + tile + d * KEY_TILE] = *x;
        }
    }
}

/// Lays `len` value rows of `width` (heads of `head_dim`) out as [`Values::PerHead`] in `out`
/// (`len × width`).
///
/// # Panics
/// If the shapes do not agree (a bug of the caller).
pub fn values_per_head(
    rows: &[f32],
    len: usize,
    (width, head_dim): (usize, usize),
    out: &mut [f32],
) {
    assert!(head_dim > 0 && width.is_multiple_of(head_dim));
    assert!(rows.len() >= len * width && out.len() == len * width);
    for (j, row) in rows.chunks_exact(width.max(1)).enumerate().take(len) {
        for (h, x) in row.chunks_exact(head_dim).enumerate() {
            out[(h * len + j) * head_dim..(h * len + j + 1) * head_dim].copy_from_slice(x);
        }
    }
}

/// `out[t·os + j] = Σ_d q[t·hd + d] · k(d, j)` for `t < nq`, `j < len`: the scores of `nq`
/// queries against one head's transposed keys `kt` (`hd × stride`, tiled as in
/// [`Keys::Transposed`]). Several queries: the register tiles of [`super::attention_tiles`] where
/// there are fused multiply-adds; otherwise, and for one query, query by query in tiles of 64
/// positions (`WIDE`: 512-bit registers) or 32, accumulated in registers.
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
    for t in 0..nq {
        let (q, out) = (&q[t * hd..(t + 1) * hd], &mut out[t * os..]);
        if WIDE {
            tile_row::<64, FMA>(q, kt, len, out)
        } else {
            tile_row::<32, FMA>(q, kt, len, out)
        }
    }
}

/// One query's scores, `P` positions per tile accumulated in registers (`P` divides
/// [`KEY_TILE`], so a tile lies within one tile of keys).
#[inline(always)]
fn tile_row<const P: usize, const FMA: bool>(q: &[f32], kt: &[f32], len: usize, out: &mut [f32]) {
    let hd = q.len();
    for j0 in (0..len).step_by(P) {
        let base = (j0 / KEY_TILE) * hd * KEY_TILE + j0 % KEY_TILE;
        let mut acc = [0f32; P];
        for (d, &w) in q.iter().enumerate() {
            let at = base + d * KEY_TILE;
            let k: &[f32; P] = match kt[at..at + P].try_into() {
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
    // The query and the probabilities rounded for bf16 segments.
    let (mut qb, mut pb) = (Vec::new(), Vec::new());
    for (h, o) in heads.clone().zip(out.chunks_exact_mut(hd)) {
        let q = &input.q[h * hd..(h + 1) * hd];
        let slope = input.slopes[h];
        let mut pos = 0;
        let mut max = f32::NEG_INFINITY;
        // Positions at the start left out (see `far_keys`).
        let mut skip = 0;
        for seg in input.segments {
            let start = pos;
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
                Keys::TransposedBf16 { kt, stride, .. } => {
                    // A first segment's far keys may be silent: left out, their weight zero.
                    if start == 0 {
                        skip = far_keys::left_out(seg, h, slope, || far_keys::norm(q) * inv);
                        pos = skip;
                    }
                    let (left_out, len) = (pos - start, seg.len - (pos - start));
                    round_rows(q, hd, 1, hd, &mut qb);
                    let row = &mut scores[pos..pos + len];
                    let kt = &kt[h * hd * stride + left_out * hd..(h + 1) * hd * stride];
                    scores_bf16(&qb, 1, hd, kt, stride - left_out, len, row, len);
                    for s in row.iter_mut() {
                        *s = *s * inv + slope * pos as f32;
                        max = max.max(*s);
                        pos += 1;
                    }
                }
            }
        }
        // Unnormalized, as the prompt chunk's: the sum divides the output instead, one pass fewer
        // over the scores, and bf16 segments see the same rounded values in both.
        scores[..skip].fill(0.0);
        for s in scores[skip..].iter_mut() {
            *s = exp_with::<FMA>(*s - max);
        }
        let norm = 1.0 / sum(scores);
        o.fill(0.0);
        let mut pos = 0;
        for seg in input.segments {
            let p = &scores[pos..pos + seg.len];
            if let Some((v, vs)) = seg.v.head(h, hd, width) {
                for (j, p) in p.iter().enumerate() {
                    for (a, b) in o.iter_mut().zip(&v[j * vs..j * vs + hd]) {
                        *a += p * b;
                    }
                }
            } else if let Some(v) = seg.v.head_bf16(h, hd) {
                // The positions left out (a first segment's, an even count) are not read.
                let left_out = if pos == 0 { skip } else { 0 };
                let (p, rows) = (&p[left_out..], seg.len - left_out);
                let ps = round_rows(p, rows, 1, rows, &mut pb);
                weighted_bf16(&pb, ps, 1, &v[left_out * hd..], rows, hd, o);
            }
            pos += seg.len;
        }
        for a in o.iter_mut() {
            *a *= norm;
        }
    }
}

/// Checks that every segment holds its `len` positions of keys and values of `width`: the register
/// tiles read them through raw pointers, so a malformed segment must stop here, not read past its
/// slices.
///
/// # Panics
/// If a segment's shapes do not agree (a bug of the caller).
pub(super) fn check_segments(segments: &[KvSegment<'_>], width: usize, head_dim: usize) {
    for s in segments {
        assert!(
            s.v.holds(s.len, width),
            "values are not len × n_head × head_dim"
        );
        match s.k {
            Keys::Rows(k) => assert!(k.len() >= s.len * width),
            Keys::Transposed { kt, stride } => assert!(
                stride.is_multiple_of(KEY_TILE) && stride >= s.len && kt.len() >= width * stride,
                "transposed keys are not n_head × head_dim × stride"
            ),
            Keys::TransposedBf16 { kt, stride, norms } => assert!(
                stride.is_multiple_of(KEY_TILE)
                    && stride >= s.len
                    && kt.len() >= width * stride
                    && norms.len() >= (width / head_dim.max(1)) * (stride / KEY_TILE),
                "transposed bf16 keys are not n_head × head_dim × stride, with a norm per tile"
            ),
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
    check_segments(input.segments, width, hd);
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
