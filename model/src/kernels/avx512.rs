//! AVX-512: a block of 4 weight rows is loaded 16 weights at a time, widened to f32 in a register and
//! multiplied against up to 4 tokens at once (16 accumulators); the rows' weights stay in L1 while the
//! next groups of tokens use them, so the matrix streams from memory once per step.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::weights::Raw;
use super::{OutRows, Rows};

const F32: u8 = 0;
const BF16: u8 = 1;

/// The matrix's pointers and shape, copied into the kernel.
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

/// Weights `k..k+16` of `row`, as f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn load<const KIND: u8>(p: Ptrs, row: usize, k: usize) -> __m512 {
    let off = row * p.stride + k;
    match KIND {
        F32 => _mm512_loadu_ps(p.f.add(off)),
        _ => {
            let v = _mm256_loadu_si256(p.h.add(off) as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
        }
    }
}

/// Weight `(row, k)` as f32 (the scalar tail).
#[inline]
unsafe fn scalar<const KIND: u8>(p: Ptrs, row: usize, k: usize) -> f32 {
    let off = row * p.stride + k;
    match KIND {
        F32 => *p.f.add(off),
        _ => f32::from_bits(u32::from(*p.h.add(off)) << 16),
    }
}

/// Lane `j` of the result is the sum of the lanes of `v[j]`: a tree of in-lane then cross-lane
/// shuffles, 15 additions in all.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
pub(super) unsafe fn reduce16(v: &[__m512; 16]) -> __m512 {
    // Pairs: per 128-bit lane, [a0+a2, b0+b2, a1+a3, b1+b3].
    let mut w = [_mm512_setzero_ps(); 8];
    for (j, w) in w.iter_mut().enumerate() {
        let (a, b) = (v[2 * j], v[2 * j + 1]);
        *w = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    }
    // Quads: per 128-bit lane, the lane's partial sum of each of 4 vectors, in order.
    let mut x = [_mm512_setzero_ps(); 4];
    for (j, x) in x.iter_mut().enumerate() {
        let (a, b) = (w[2 * j], w[2 * j + 1]);
        *x = _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xEE>(a, b),
        );
    }
    // Across 128-bit lanes, twice.
    let half = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        )
    };
    let (y, z) = (half(x[0], x[1]), half(x[2], x[3]));
    half(y, z)
}

/// Stores the sums of a 4 rows × 4 tokens block of accumulators (plus the rows' biases): the 16
/// sums at once (lane 4t + i holds row i, token t), then 4 rows per token stored together, which is
/// cheaper than 16 horizontal reductions when rows are short.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
pub(super) unsafe fn store_4x4<const R: usize, const TB: usize>(
    acc: &[[__m512; TB]; R],
    bias: Option<&[f32]>,
    y: &OutRows,
    r: usize,
    t0: usize,
) {
    let mut v = [_mm512_setzero_ps(); 16];
    for (i, row) in acc.iter().enumerate().take(4) {
        for (t, a) in row.iter().enumerate().take(4) {
            v[4 * t + i] = *a;
        }
    }
    let mut sums = reduce16(&v);
    if let Some(b) = bias {
        sums = _mm512_add_ps(
            sums,
            _mm512_broadcast_f32x4(_mm_loadu_ps(b.as_ptr().add(r))),
        );
    }
    _mm_storeu_ps(y.ptr(t0, r), _mm512_extractf32x4_ps::<0>(sums));
    _mm_storeu_ps(y.ptr(t0 + 1, r), _mm512_extractf32x4_ps::<1>(sums));
    _mm_storeu_ps(y.ptr(t0 + 2, r), _mm512_extractf32x4_ps::<2>(sums));
    _mm_storeu_ps(y.ptr(t0 + 3, r), _mm512_extractf32x4_ps::<3>(sums));
}

/// `R` rows × `TB` tokens, starting at row `r` and token `t0`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<const KIND: u8, const R: usize, const TB: usize, const PREFETCH: bool>(
    p: Ptrs,
    x: &[f32],
    bias: Option<&[f32]>,
    r: usize,
    t0: usize,
    y: &OutRows,
) {
    let cols = p.cols;
    let main = cols - cols % 16;
    let mut acc = [[_mm512_setzero_ps(); TB]; R];
    let xp = x.as_ptr().add(t0 * cols);
    let mut k = 0;
    while k < main {
        let mut xv = [_mm512_setzero_ps(); TB];
        for (t, v) in xv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(xp.add(t * cols + k));
        }
        if PREFETCH {
            // The next block of rows, while this one is computed: when many tokens make the
            // product compute-bound, memory would otherwise stall each new block.
            for i in 0..R {
                let off = (r + R + i - p.first) * p.stride + k;
                let addr = match KIND {
                    F32 => p.f.wrapping_add(off) as *const i8,
                    _ => p.h.wrapping_add(off) as *const i8,
                };
                _mm_prefetch::<_MM_HINT_T0>(addr);
            }
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let w = load::<KIND>(p, r + i - p.first, k);
            for (t, a) in row.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(w, xv[t], *a);
            }
        }
        k += 16;
    }
    if R == 4 && TB == 4 && main == cols {
        // The 16 sums at once (lane 4t + i holds row i, token t), then 4 rows per token stored
        // together: cheaper than 16 horizontal reductions when rows are short.
        store_4x4(&acc, bias, y, r, t0);
        return;
    }
    for (i, row) in acc.iter().enumerate() {
        for (t, a) in row.iter().enumerate() {
            let mut sum = _mm512_reduce_add_ps(*a);
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
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn rows_kind<const KIND: u8>(
    p: Ptrs,
    x: &[f32],
    tokens: usize,
    bias: Option<&[f32]>,
    r0: usize,
    r1: usize,
    y: &OutRows,
) {
    // Rows outer, tokens inner: a block of rows is fetched from memory once and reused from cache
    // (its first pass prefetches the next block when more passes follow).
    macro_rules! tokens_for {
        ($rows:literal, $r:expr, $x:expr, $tokens:expr, $y:expr) => {{
            let (x, tokens, y) = ($x, $tokens, $y);
            let mut t0 = 0;
            if tokens > 4 {
                micro::<KIND, $rows, 4, true>(p, x, bias, $r, t0, y);
                t0 += 4;
            }
            while t0 + 4 <= tokens {
                micro::<KIND, $rows, 4, false>(p, x, bias, $r, t0, y);
                t0 += 4;
            }
            match tokens - t0 {
                3 => micro::<KIND, $rows, 3, false>(p, x, bias, $r, t0, y),
                2 => micro::<KIND, $rows, 2, false>(p, x, bias, $r, t0, y),
                1 => micro::<KIND, $rows, 1, false>(p, x, bias, $r, t0, y),
                _ => {}
            }
        }};
    }
    let row_bytes = p.cols * if KIND == F32 { 4 } else { 2 };
    super::for_tiles(
        (r0, r1),
        tokens,
        (row_bytes, p.cols * 4),
        4,
        |rb, re, tt, te| {
            let (xt, n) = (&x[tt * p.cols..te * p.cols], te - tt);
            let yt = &y.offset_tokens(tt);
            let mut r = rb;
            while r + 4 <= re {
                tokens_for!(4, r, xt, n, yt);
                r += 4;
            }
            while r < re {
                tokens_for!(1, r, xt, n, yt);
                r += 1;
            }
        },
    );
}

/// Rows `r0..r1` of `x · Wᵀ + b` for every token.
///
/// # Safety
/// The CPU must have AVX-512 F and BW; the shapes must match (checked by `super::matmul`).
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
