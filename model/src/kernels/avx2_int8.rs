//! int8 weights on AVX2 (and AVX-512 without VNNI): the same packed weights and per-group quantized
//! activations as the VNNI kernel (`avx512_dot`), multiplied with the pre-VNNI idiom. `vpmaddubsw`
//! takes one unsigned and one signed operand and saturates its 16-bit pair sums, so the weights are
//! made signed (`q − 128`) and the sign moved onto the activations (`|w| · sign(w)·x`, at most
//! 2 · 127 · 127 per pair: no saturation); `vpmaddwd` by ones then sums pairs into 32 bits. A
//! 64-byte weight vector is two 256-bit halves, rows 0–7 and 8–15 of the block, each lane 4 weights
//! of one row against the same 4 activations (broadcast). At the end of a group the 32-bit sums are
//! scaled by the rows' scales (halves, widened with F16C) and the activations' scale.
//!
//! Widening every weight to f32 instead (what these CPUs did before) made int8 several times slower
//! than f32; this streams a byte per weight and keeps int8 near the memory bound.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::weights::{Matrix, Raw, SCALE_UNIT};
use super::OutRows;

#[derive(Clone, Copy)]
struct Ptrs {
    q: *const u8,
    s: *const u16,
    cols: usize,
    group: usize,
    groups: usize,
    rows: usize,
}

/// The 32-bit sums of one half-vector of weights (8 rows × 4 weights, already signed, with their
/// absolute values) against 4 activations broadcast to every lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn dot4(abs_w: __m256i, signed_w: __m256i, x4: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(x4, signed_w));
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// Row block `b` (16 rows) × `TB` tokens from `t0`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<const TB: usize>(
    p: Ptrs,
    xq: &[i8],
    xs: &[f32],
    bias: Option<&[f32]>,
    y: &OutRows,
    b: usize,
    t0: usize,
) {
    let (cols, group, groups) = (p.cols, p.group, p.groups);
    let mut lo = [_mm256_setzero_ps(); TB];
    let mut hi = [_mm256_setzero_ps(); TB];
    let xp = xq.as_ptr().add(t0 * cols);
    let flip = _mm256_set1_epi8(-128);
    for g in 0..groups {
        let tile = p.q.add((b * groups + g) * 16 * group);
        let mut sl = [_mm256_setzero_si256(); TB];
        let mut sh = [_mm256_setzero_si256(); TB];
        let k0 = g * group;
        for j in 0..group / 4 {
            let w = tile.add(j * 64);
            // Stored +128: flipping the top bit gives the signed weight.
            let wl = _mm256_xor_si256(_mm256_loadu_si256(w as *const __m256i), flip);
            let wh = _mm256_xor_si256(_mm256_loadu_si256(w.add(32) as *const __m256i), flip);
            let (al, ah) = (_mm256_sign_epi8(wl, wl), _mm256_sign_epi8(wh, wh));
            for t in 0..TB {
                let x4 = _mm256_set1_epi32(
                    (xp.add(t * cols + k0 + j * 4) as *const i32).read_unaligned(),
                );
                sl[t] = _mm256_add_epi32(sl[t], dot4(al, wl, x4));
                sh[t] = _mm256_add_epi32(sh[t], dot4(ah, wh, x4));
            }
        }
        let scales = p.s.add((b * groups + g) * 16);
        let rl = _mm256_cvtph_ps(_mm_loadu_si128(scales as *const __m128i));
        let rh = _mm256_cvtph_ps(_mm_loadu_si128(scales.add(8) as *const __m128i));
        for t in 0..TB {
            let xscale = _mm256_set1_ps(xs[(t0 + t) * groups + g] * SCALE_UNIT);
            lo[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sl[t]), _mm256_mul_ps(rl, xscale), lo[t]);
            hi[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sh[t]), _mm256_mul_ps(rh, xscale), hi[t]);
        }
    }
    let r = b * 16;
    let n = (p.rows - r).min(16);
    for t in 0..TB {
        let mut out = [0f32; 16];
        _mm256_storeu_ps(out.as_mut_ptr(), lo[t]);
        _mm256_storeu_ps(out.as_mut_ptr().add(8), hi[t]);
        for (i, v) in out.iter().enumerate().take(n) {
            let v = v + bias.map_or(0.0, |bias| bias[r + i]);
            y.set(t0 + t, r + i, v);
        }
    }
}

/// Rows `r0..r1` (multiples of 16, or the end of the matrix) for every token.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows(
    p: Ptrs,
    xq: &[i8],
    xs: &[f32],
    tokens: usize,
    bias: Option<&[f32]>,
    r0: usize,
    r1: usize,
    y: &OutRows,
) {
    let groups = p.groups;
    super::for_tiles(
        (r0, r1),
        tokens,
        (16 * p.cols, p.cols),
        16,
        |rb, re, tt, te| {
            let xq = &xq[tt * p.cols..te * p.cols];
            let xs = &xs[tt * groups..te * groups];
            let y = &y.offset_tokens(tt);
            let tokens = te - tt;
            for b in rb / 16..re.div_ceil(16) {
                let mut t0 = 0;
                while t0 + 2 <= tokens {
                    micro::<2>(p, xq, xs, bias, y, b, t0);
                    t0 += 2;
                }
                if t0 < tokens {
                    micro::<1>(p, xq, xs, bias, y, b, t0);
                }
            }
        },
    );
}

/// Rows `r0..r1` of `x · Wᵀ + b` for every token, `w` int8 and `xq`/`xs` its activations quantized
/// per group (`avx512_dot::prepare`).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` must be int8.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn block(
    xq: &[i8],
    xs: &[f32],
    tokens: usize,
    w: &Matrix,
    bias: Option<&[f32]>,
    r0: usize,
    r1: usize,
    y: &OutRows,
) {
    let Raw::Int8 { q, scales } = w.raw() else {
        unreachable!("the int8 kernel is given an int8 matrix")
    };
    let p = Ptrs {
        q,
        s: scales,
        cols: w.cols(),
        group: w.group(),
        groups: w.cols() / w.group(),
        rows: w.rows(),
    };
    rows(p, xq, xs, tokens, bias, r0, r1, y)
}
