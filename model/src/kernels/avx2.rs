//! AVX2 with FMA: the AVX-512 kernel's structure at 8 lanes (2 rows × 4 tokens per block, which fits
//! the 16 ymm registers).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::weights::Raw;
use super::{OutRows, Rows};

const F32: u8 = 0;
const BF16: u8 = 1;

#[derive(Clone, Copy)]
struct Ptrs {
    f: *const f32,
    h: *const u16,
    cols: usize,
    /// Elements from one weight row to the next.
    stride: usize,
    /// The weight row of output row `r` is `r - first`.
    first: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn load<const KIND: u8>(p: Ptrs, row: usize, k: usize) -> __m256 {
    let off = row * p.stride + k;
    match KIND {
        F32 => _mm256_loadu_ps(p.f.add(off)),
        _ => {
            let v = _mm_loadu_si128(p.h.add(off) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
        }
    }
}

#[inline]
unsafe fn scalar<const KIND: u8>(p: Ptrs, row: usize, k: usize) -> f32 {
    let off = row * p.stride + k;
    match KIND {
        F32 => *p.f.add(off),
        _ => f32::from_bits(u32::from(*p.h.add(off)) << 16),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<const KIND: u8, const R: usize, const TB: usize>(
    p: Ptrs,
    x: &[f32],
    bias: Option<&[f32]>,
    r: usize,
    t0: usize,
    y: &OutRows,
) {
    let cols = p.cols;
    let main = cols - cols % 8;
    let mut acc = [[_mm256_setzero_ps(); TB]; R];
    let xp = x.as_ptr().add(t0 * cols);
    let mut k = 0;
    while k < main {
        let mut xv = [_mm256_setzero_ps(); TB];
        for (t, v) in xv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(xp.add(t * cols + k));
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let w = load::<KIND>(p, r + i - p.first, k);
            for (t, a) in row.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(w, xv[t], *a);
            }
        }
        k += 8;
    }
    for (i, row) in acc.iter().enumerate() {
        for (t, a) in row.iter().enumerate() {
            let mut sum = hsum(*a);
            for kk in main..cols {
                sum += scalar::<KIND>(p, r + i - p.first, kk) * *xp.add(t * cols + kk);
            }
            if let Some(b) = bias {
                sum += b[r + i];
            }
            y.set(t0 + t, r + i, sum);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_kind<const KIND: u8>(
    p: Ptrs,
    x: &[f32],
    tokens: usize,
    bias: Option<&[f32]>,
    r0: usize,
    r1: usize,
    y: &OutRows,
) {
    macro_rules! tokens_for {
        ($rows:literal, $r:expr) => {{
            let mut t0 = 0;
            while t0 + 4 <= tokens {
                micro::<KIND, $rows, 4>(p, x, bias, $r, t0, y);
                t0 += 4;
            }
            match tokens - t0 {
                3 => micro::<KIND, $rows, 3>(p, x, bias, $r, t0, y),
                2 => micro::<KIND, $rows, 2>(p, x, bias, $r, t0, y),
                1 => micro::<KIND, $rows, 1>(p, x, bias, $r, t0, y),
                _ => {}
            }
        }};
    }
    let mut r = r0;
    while r + 2 <= r1 {
        tokens_for!(2, r);
        r += 2;
    }
    while r < r1 {
        tokens_for!(1, r);
        r += 1;
    }
}

/// Rows `r0..r1` of `x · Wᵀ + b` for every token.
///
/// # Safety
/// The CPU must have AVX2 and FMA; the shapes must match (checked by `super::matmul`).
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn block(
    x: &[f32],
    tokens: usize,
    w: Rows,
    bias: Option<&[f32]>,
    r0: usize,
    r1: usize,
    y: &OutRows,
) {
    let mut p = Ptrs {
        f: std::ptr::null(),
        h: std::ptr::null(),
        cols: w.cols,
        stride: w.stride,
        first: w.first,
    };
    match w.raw {
        Raw::F32(f) => {
            p.f = f;
            rows_kind::<F32>(p, x, tokens, bias, r0, r1, y)
        }
        Raw::Bf16(h) => {
            p.h = h;
            rows_kind::<BF16>(p, x, tokens, bias, r0, r1, y)
        }
        Raw::Int8 { .. } => unreachable!("int8 weights have their own kernels"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn block(
    _x: &[f32],
    _tokens: usize,
    _w: Rows,
    _bias: Option<&[f32]>,
    _r0: usize,
    _r1: usize,
    _y: &OutRows,
) {
    unreachable!("isa() selects x86 kernels only on x86_64")
}
