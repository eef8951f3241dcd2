//! AVX-512 dot-product instructions for the narrow dtypes, where the CPU has them:
//!
//! - **bf16** (`vdpbf16ps`, AVX512_BF16): the tokens' activations are rounded to bf16 once per
//!   product, and each instruction multiplies 32 weights by 32 activations, accumulating in f32.
//! - **int8** (`vpdpbusd`, AVX512_VNNI): the activations are quantized per group (the weights'
//!   group) to int8 with their own scale. Over the packed weights (see `weights`), each instruction
//!   multiplies 4 weights of 16 rows by the same 4 activations (broadcast) into the rows' 16 int32
//!   sums; at the end of a group the sums are scaled by the rows' scales and the activations' scale
//!   into f32 accumulators. The weights' +128 offset is removed with `128 · Σ activations` per group.
//!
//! Widening each weight to f32 (the `avx512` kernel) costs several instructions per 16 weights and
//! leaves these dtypes compute-bound; these reach the memory bound.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::attention_bf16::to_bf16;
use super::weights::{Matrix, Raw, SCALE_UNIT};
use super::OutRows;

/// A token batch prepared for one product: activations in the form the instruction takes.
pub(crate) enum Prepared {
    /// `tokens × cols` bf16.
    Bf16(Vec<u16>),
    /// `tokens × cols` int8, and per token and group (`tokens × groups`) the scale and the offset
    /// `128 · Σ q` to subtract from each dot product.
    Int8 {
        xq: Vec<i8>,
        scales: Vec<f32>,
        offsets: Vec<i32>,
    },
}

/// The activations for `w`'s kind.
pub(crate) fn prepare(x: &[f32], tokens: usize, w: &Matrix) -> Option<Prepared> {
    use rayon::prelude::*;
    // Many tokens (a prompt): the rows in parallel, on the pool the product runs on.
    let rows = if tokens >= 16 {
        w.cols() * 16
    } else {
        x.len().max(1)
    };
    match w.raw() {
        Raw::F32(_) => None,
        Raw::Bf16(_) => {
            let mut xb = vec![0u16; x.len()];
            xb.par_chunks_mut(rows)
                .zip(x.par_chunks(rows))
                .for_each(|(o, x)| bf16_row(x, o));
            Some(Prepared::Bf16(xb))
        }
        Raw::Int8 { .. } => {
            let group = w.group();
            let groups = x.len() / group;
            let mut xq = vec![0i8; x.len()];
            let mut scales = vec![0f32; groups];
            let mut offsets = vec![0i32; groups];
            let per = rows / group;
            xq.par_chunks_mut(rows)
                .zip(x.par_chunks(rows))
                .zip(scales.par_chunks_mut(per).zip(offsets.par_chunks_mut(per)))
                .for_each(|((q, x), (s, o))| quantize_rows(x, q, group, s, o));
            Some(Prepared::Int8 {
                xq,
                scales,
                offsets,
            })
        }
    }
}

fn bf16_row(x: &[f32], out: &mut [u16]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = to_bf16(*v);
    }
}

/// Quantizes groups of activations, each with its scale and offset `128 · Σ q`.
fn quantize_rows(x: &[f32], out: &mut [i8], group: usize, scales: &mut [f32], offsets: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn wide(x: &[f32], out: &mut [i8], group: usize, s: &mut [f32], o: &mut [i32]) {
            each_group(x, out, group, s, o)
        }
        if matches!(super::isa(), super::Isa::Avx512Dot) {
            // SAFETY: `isa()` names only instruction sets this CPU has.
            return unsafe { wide(x, out, group, scales, offsets) };
        }
    }
    each_group(x, out, group, scales, offsets)
}

#[inline(always)]
fn each_group(x: &[f32], out: &mut [i8], group: usize, scales: &mut [f32], offsets: &mut [i32]) {
    for (((chunk, q), s), o) in x
        .chunks_exact(group)
        .zip(out.chunks_exact_mut(group))
        .zip(scales.iter_mut())
        .zip(offsets.iter_mut())
    {
        let (scale, sum) = quantize(chunk, q);
        *s = scale;
        *o = 128 * sum;
    }
}

/// Quantizes one group of activations (absmax, symmetric); returns the scale and `Σ q`.
#[inline(always)]
pub(crate) fn quantize(x: &[f32], out: &mut [i8]) -> (f32, i32) {
    // A select, not `f32::max`: it vectorizes.
    let max = x
        .iter()
        .fold(0f32, |m, v| if v.abs() > m { v.abs() } else { m });
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    let inv = 1.0 / scale;
    let mut sum = 0;
    for (o, v) in out.iter_mut().zip(x) {
        let q = super::round_small((v * inv).clamp(-127.0, 127.0)) as i8;
        sum += i32::from(q);
        *o = q;
    }
    (scale, sum)
}

#[derive(Clone, Copy)]
struct Ptrs {
    h: *const u16,
    q: *const u8,
    s: *const u16,
    cols: usize,
    group: usize,
    groups: usize,
    rows: usize,
}

/// The same 512 bits, as 32 bf16 values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn bh(v: __m512i) -> __m512bh {
    // SAFETY: both are plain 512-bit vectors of the same size; every bit pattern is valid in each.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn micro_bf16<const R: usize, const TB: usize>(
    p: Ptrs,
    x: &[u16],
    bias: Option<&[f32]>,
    y: &OutRows,
    r: usize,
    t0: usize,
) {
    let cols = p.cols;
    let main = cols - cols % 32;
    let mut acc = [[_mm512_setzero_ps(); TB]; R];
    let xp = x.as_ptr().add(t0 * cols);
    let mut k = 0;
    while k < main {
        let mut xv = [_mm512_setzero_si512(); TB];
        for (t, v) in xv.iter_mut().enumerate() {
            *v = _mm512_loadu_si512(xp.add(t * cols + k) as *const _);
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let w = _mm512_loadu_si512(p.h.add((r + i) * cols + k) as *const _);
            for (t, a) in row.iter_mut().enumerate() {
                *a = _mm512_dpbf16_ps(*a, bh(w), bh(xv[t]));
            }
        }
        k += 32;
    }
    if R == 4 && TB == 4 && main == cols {
        return super::avx512::store_4x4(&acc, bias, y, r, t0);
    }
    for (i, row) in acc.iter().enumerate() {
        for (t, a) in row.iter().enumerate() {
            let mut sum = _mm512_reduce_add_ps(*a);
            for kk in main..cols {
                let w = f32::from_bits(u32::from(*p.h.add((r + i) * cols + kk)) << 16);
                let xv = f32::from_bits(u32::from(*xp.add(t * cols + kk)) << 16);
                sum += w * xv;
            }
            if let Some(b) = bias {
                sum += b[r + i];
            }
            y.set(t0 + t, r + i, sum);
        }
    }
}

/// Row block `b` (16 rows) × `TB` tokens from `t0`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_int8<const TB: usize>(
    p: Ptrs,
    xq: &[i8],
    xs: &[f32],
    offsets: &[i32],
    bias: Option<&[f32]>,
    y: &OutRows,
    b: usize,
    t0: usize,
) {
    let (cols, group, groups) = (p.cols, p.group, p.groups);
    let steps = group / 4;
    let mut acc = [_mm512_setzero_ps(); TB];
    let xp = xq.as_ptr().add(t0 * cols);
    // Four activations as one broadcast 32-bit lane.
    let x4 = |t: usize, k: usize| {
        _mm512_set1_epi32((xp.add(t * cols + k) as *const i32).read_unaligned())
    };
    for g in 0..groups {
        let tile = p.q.add((b * groups + g) * 16 * group);
        // Two chains of sums per token, so consecutive instructions do not wait on each other.
        let mut s0 = [_mm512_setzero_si512(); TB];
        let mut s1 = [_mm512_setzero_si512(); TB];
        let k0 = g * group;
        let mut j = 0;
        while j + 2 <= steps {
            let w0 = _mm512_loadu_si512(tile.add(j * 64) as *const _);
            let w1 = _mm512_loadu_si512(tile.add(j * 64 + 64) as *const _);
            for t in 0..TB {
                s0[t] = _mm512_dpbusd_epi32(s0[t], w0, x4(t, k0 + j * 4));
                s1[t] = _mm512_dpbusd_epi32(s1[t], w1, x4(t, k0 + j * 4 + 4));
            }
            j += 2;
        }
        if j < steps {
            let w0 = _mm512_loadu_si512(tile.add(j * 64) as *const _);
            for (t, s) in s0.iter_mut().enumerate() {
                *s = _mm512_dpbusd_epi32(*s, w0, x4(t, k0 + j * 4));
            }
        }
        // The rows' 16 half scales (in units of SCALE_UNIT, folded into the activations' scale).
        let rs = _mm512_cvtph_ps(_mm256_loadu_si256(
            p.s.add((b * groups + g) * 16) as *const __m256i
        ));
        for t in 0..TB {
            let i = (t0 + t) * groups + g;
            let d = _mm512_sub_epi32(
                _mm512_add_epi32(s0[t], s1[t]),
                _mm512_set1_epi32(offsets[i]),
            );
            let scale = _mm512_mul_ps(rs, _mm512_set1_ps(xs[i] * SCALE_UNIT));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), scale, acc[t]);
        }
    }
    let r = b * 16;
    let mask: __mmask16 = if p.rows - r >= 16 {
        0xffff
    } else {
        (1u16 << (p.rows - r)) - 1
    };
    let bias = match bias {
        Some(bias) => _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(r)),
        None => _mm512_setzero_ps(),
    };
    for (t, a) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(y.ptr(t0 + t, r), mask, _mm512_add_ps(*a, bias));
    }
}

macro_rules! tokens_for {
    ($f:ident, $rows:literal, $tokens:expr, $r:expr, ($($arg:expr),*)) => {{
        let mut t0 = 0;
        while t0 + 4 <= $tokens {
            $f::<$rows, 4>($($arg,)* $r, t0);
            t0 += 4;
        }
        match $tokens - t0 {
            3 => $f::<$rows, 3>($($arg,)* $r, t0),
            2 => $f::<$rows, 2>($($arg,)* $r, t0),
            1 => $f::<$rows, 1>($($arg,)* $r, t0),
            _ => {}
        }
    }};
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_bf16(
    p: Ptrs,
    x: &[u16],
    tokens: usize,
    bias: Option<&[f32]>,
    r0: usize,
    r1: usize,
    y: &OutRows,
) {
    super::for_tiles(
        (r0, r1),
        tokens,
        (p.cols * 2, p.cols * 2),
        4,
        |rb, re, tt, te| {
            let (xt, n) = (&x[tt * p.cols..te * p.cols], te - tt);
            let yt = &y.offset_tokens(tt);
            let mut r = rb;
            while r + 4 <= re {
                tokens_for!(micro_bf16, 4, n, r, (p, xt, bias, yt));
                r += 4;
            }
            while r < re {
                tokens_for!(micro_bf16, 1, n, r, (p, xt, bias, yt));
                r += 1;
            }
        },
    );
}

/// Rows `r0..r1` (multiples of 16, or the end of the matrix) for every token.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_int8(
    p: Ptrs,
    xq: &[i8],
    xs: &[f32],
    offsets: &[i32],
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
            let (xs, offsets) = (
                &xs[tt * groups..te * groups],
                &offsets[tt * groups..te * groups],
            );
            let y = &y.offset_tokens(tt);
            let tokens = te - tt;
            for b in rb / 16..re.div_ceil(16) {
                let mut t0 = 0;
                while t0 + 8 <= tokens {
                    micro_int8::<8>(p, xq, xs, offsets, bias, y, b, t0);
                    t0 += 8;
                }
                match tokens - t0 {
                    7 => micro_int8::<7>(p, xq, xs, offsets, bias, y, b, t0),
                    6 => micro_int8::<6>(p, xq, xs, offsets, bias, y, b, t0),
                    5 => micro_int8::<5>(p, xq, xs, offsets, bias, y, b, t0),
                    4 => micro_int8::<4>(p, xq, xs, offsets, bias, y, b, t0),
                    3 => micro_int8::<3>(p, xq, xs, offsets, bias, y, b, t0),
                    2 => micro_int8::<2>(p, xq, xs, offsets, bias, y, b, t0),
                    1 => micro_int8::<1>(p, xq, xs, offsets, bias, y, b, t0),
                    _ => {}
                }
            }
        },
    );
}

/// Whether this kernel handles `w` (its dtype's instruction is present and its shape fits).
pub(crate) fn handles(w: &Matrix, bf16: bool, vnni: bool) -> bool {
    match w.raw() {
        Raw::F32(_) => false,
        Raw::Bf16(_) => bf16,
        Raw::Int8 { .. } => vnni,
    }
}

/// Rows `r0..r1` of `x · Wᵀ + b` for every token, from activations [`prepare`]d for `w`.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and the dtype's instruction (see [`handles`]).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn block(
    x: &Prepared,
    tokens: usize,
    w: &Matrix,
    bias: Option<&[f32]>,
    r0: usize,
    r1: usize,
    y: &OutRows,
) {
    let mut p = Ptrs {
        h: std::ptr::null(),
        q: std::ptr::null(),
        s: std::ptr::null(),
        cols: w.cols(),
        group: w.group(),
        groups: w.cols() / w.group(),
        rows: w.rows(),
    };
    match (w.raw(), x) {
        (Raw::Bf16(h), Prepared::Bf16(xb)) => {
            p.h = h;
            rows_bf16(p, xb, tokens, bias, r0, r1, y)
        }
        (
            Raw::Int8 { q, scales },
            Prepared::Int8 {
                xq,
                scales: xs,
                offsets,
            },
        ) => {
            p.q = q;
            p.s = scales;
            rows_int8(p, xq, xs, offsets, tokens, bias, r0, r1, y)
        }
        _ => unreachable!("activations prepared for another dtype"),
    }
}
