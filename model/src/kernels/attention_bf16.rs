//! The shared system prompt's keys and values in bf16, for models whose weights are bf16 or int8,
//! on CPUs with AVX512_BF16: `vdpbf16ps` multiplies 32 pairs per instruction where an f32
//! multiply-add does 16, and every decoding token reads half the bytes. Accumulation stays f32; the
//! queries and the probabilities are rounded to bf16 as they enter the products (as bf16 attention
//! kernels on accelerators do). f32 models keep the f32 layout, which `model-check` holds exact.
//!
//! The instruction sums products of *pairs* along the reduction, so the layouts pair it:
//! - keys, per head, tiles of [`KEY_TILE`] positions, each `head_dim / 2` rows of 64 positions ×
//!   2 dims: key `(h, j, d)` at `h·hd·stride + (j / 64)·hd·64 + (d / 2)·128 + (j % 64)·2 + d % 2`;
//! - values, per head, `positions / 2` (rounded up) rows of `head_dim` columns × 2 positions: value
//!   `(h, j, c)` at `h·hd·P + (j / 2)·hd·2 + c·2 + j % 2`, `P` the positions rounded up to even (the
//!   padding row zero).
//!
//! A query's pair `(q[d], q[d+1])` and a probability pair `(p[j], p[j+1])` are then one 32-bit lane,
//! broadcast.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::attention::KEY_TILE;
#[cfg(target_arch = "x86_64")]
use super::attention_tiles::{store_scores, tail_masks, tile_rows};
#[cfg(target_arch = "x86_64")]
use super::avx512_dot::bh;
use super::{far_keys, isa, Isa};

/// Rounds to bf16 (nearest even; NaN stays NaN), as `vcvtneps2bf16` does.
#[inline(always)]
pub(crate) fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    ((bits + round) >> 16) as u16
}

#[inline(always)]
fn from_bf16(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// Lays `len` key rows of `width` (heads of `head_dim`, even) out as
/// [`super::Keys::TransposedBf16`] in `kt` (`width × stride`, `stride` a multiple of [`KEY_TILE`]
/// not below `len`), rounded to bf16. The padding is zeroed.
///
/// # Panics
/// If the shapes do not agree (a bug of the caller).
pub fn transpose_keys_bf16(
    rows: &[f32],
    len: usize,
    (width, head_dim): (usize, usize),
    stride: usize,
    kt: &mut [u16],
) {
    assert!(stride.is_multiple_of(KEY_TILE) && stride >= len && kt.len() == width * stride);
    assert!(head_dim > 0 && head_dim.is_multiple_of(2) && width.is_multiple_of(head_dim));
    assert!(rows.len() >= len * width);
    kt.fill(0);
    for (j, row) in rows.chunks_exact(width.max(1)).enumerate().take(len) {
        let tile = (j / KEY_TILE) * head_dim * KEY_TILE + (j % KEY_TILE) * 2;
        for (c, x) in row.iter().enumerate() {
            let (h, d) = (c / head_dim, c % head_dim);
            kt[h * head_dim * stride + tile + (d / 2) * 2 * KEY_TILE + d % 2] = to_bf16(*x);
        }
    }
}

/// The largest key norm of each tile of [`KEY_TILE`] positions in keys laid out by
/// [`transpose_keys_bf16`] (`width × stride`), per head: `[width / head_dim][stride / KEY_TILE]`,
/// rounded up (see [`super::far_keys`], which reads them).
///
/// # Panics
/// If the shapes do not agree (a bug of the caller).
pub fn key_norms_bf16(kt: &[u16], head_dim: usize, stride: usize) -> Vec<f32> {
    assert!(head_dim > 0 && head_dim.is_multiple_of(2) && stride.is_multiple_of(KEY_TILE));
    assert!(kt.len().is_multiple_of(head_dim * stride));
    let tile_len = head_dim * KEY_TILE;
    kt.chunks_exact(tile_len)
        .map(|tile| {
            // Dims in pairs, each row of the tile a pair of dims for its KEY_TILE positions.
            let mut sq = [0f32; KEY_TILE];
            for row in tile.chunks_exact(2 * KEY_TILE) {
                for (s, pair) in sq.iter_mut().zip(row.chunks_exact(2)) {
                    let (a, b) = (from_bf16(pair[0]), from_bf16(pair[1]));
                    *s += a * a + b * b;
                }
            }
            far_keys::bound_from_squares(far_keys::largest(sq))
        })
        .collect()
}

/// Positions a bf16 value layout holds for `len`: rounded up to pairs.
pub fn paired(len: usize) -> usize {
    len.next_multiple_of(2)
}

/// Lays `len` value rows of `width` (heads of `head_dim`) out as [`super::Values::PerHeadBf16`] in
/// `out` (`paired(len) × width`), rounded to bf16; the padding row is zeroed.
///
/// # Panics
/// If the shapes do not agree (a bug of the caller).
pub fn values_per_head_bf16(
    rows: &[f32],
    len: usize,
    (width, head_dim): (usize, usize),
    out: &mut [u16],
) {
    let positions = paired(len);
    assert!(head_dim > 0 && width.is_multiple_of(head_dim));
    assert!(rows.len() >= len * width && out.len() == positions * width);
    out.fill(0);
    for (j, row) in rows.chunks_exact(width.max(1)).enumerate().take(len) {
        for (c, x) in row.iter().enumerate() {
            let (h, col) = (c / head_dim, c % head_dim);
            out[h * head_dim * positions + (j / 2) * head_dim * 2 + col * 2 + j % 2] = to_bf16(*x);
        }
    }
}

/// `bq` rows of `rows` from `src` (rows `ss` apart) rounded to bf16 into `dst`, rows `paired(rows)`
/// apart, each padded with a zero; returns that distance. The queries of a block, or the
/// probabilities of a prefix.
pub(super) fn round_rows(
    src: &[f32],
    ss: usize,
    bq: usize,
    rows: usize,
    dst: &mut Vec<u16>,
) -> usize {
    let ds = paired(rows);
    dst.clear();
    dst.resize(bq * ds, 0);
    for (t, d) in dst.chunks_exact_mut(ds.max(1)).enumerate().take(bq) {
        let s = &src[t * ss..t * ss + rows];
        #[cfg(target_arch = "x86_64")]
        if matches!(isa(), Isa::Avx512Dot) {
            // SAFETY: `isa()` names only instruction sets this CPU has.
            unsafe { round_row_avx512(s, &mut d[..rows]) };
            continue;
        }
        for (o, x) in d.iter_mut().zip(s) {
            *o = to_bf16(*x);
        }
    }
    ds
}

/// [`round_rows`]' row, 32 at a time with `vcvtne2ps2bf16`.
///
/// # Safety
/// The CPU has AVX-512F, BW and BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn round_row_avx512(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let mask = |from: usize| -> __mmask16 {
        let left = n.saturating_sub(from).min(16);
        ((1u32 << left) - 1) as __mmask16
    };
    let mut i = 0;
    while i < n {
        let (m0, m1) = (mask(i), mask(i + 16));
        // `wrapping_add`: past the row's end the pointer is out of bounds, and only the zero mask
        // keeps the load from touching it.
        let lo = _mm512_maskz_loadu_ps(m0, src.as_ptr().add(i));
        let hi = _mm512_maskz_loadu_ps(m1, src.as_ptr().wrapping_add(i + 16));
        let b: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        let m = u32::from(m0) | (u32::from(m1) << 16);
        _mm512_mask_storeu_epi16(dst.as_mut_ptr().add(i).cast(), m, b);
        i += 32;
    }
}

/// `out[t·os + j] = Σ_d q[t·hd + d] · k(d, j)` for `t < nq`, `j < len`: `nq` bf16 queries (`qb`,
/// rows `hd` apart) against one head's keys `kt` (`hd × stride`, laid out as
/// [`super::Keys::TransposedBf16`]).
///
/// # Panics
/// If the shapes do not agree (a bug of the caller).
#[allow(clippy::too_many_arguments)]
pub(super) fn scores_bf16(
    qb: &[u16],
    nq: usize,
    hd: usize,
    kt: &[u16],
    stride: usize,
    len: usize,
    out: &mut [f32],
    os: usize,
) {
    if nq == 0 || len == 0 {
        return;
    }
    assert!(hd.is_multiple_of(2) && stride.is_multiple_of(KEY_TILE) && stride >= len);
    assert!(kt.len() >= hd * stride && qb.len() >= nq * hd);
    assert!(os >= len && out.len() >= (nq - 1) * os + len);
    #[cfg(target_arch = "x86_64")]
    if matches!(isa(), Isa::Avx512Dot) {
        // SAFETY: `isa()` names only instruction sets this CPU has; the shapes are checked above.
        return unsafe { scores_avx512bf16(qb, nq, hd, kt, len, out, os) };
    }
    scores_portable(qb, nq, hd, kt, len, out, os)
}

/// [`scores_bf16`] position by position.
fn scores_portable(
    qb: &[u16],
    nq: usize,
    hd: usize,
    kt: &[u16],
    len: usize,
    out: &mut [f32],
    os: usize,
) {
    for t in 0..nq {
        let q = &qb[t * hd..(t + 1) * hd];
        for (j, o) in out[t * os..t * os + len].iter_mut().enumerate() {
            let tile = (j / KEY_TILE) * hd * KEY_TILE + (j % KEY_TILE) * 2;
            *o = q
                .iter()
                .enumerate()
                .map(|(d, w)| from_bf16(*w) * from_bf16(kt[tile + (d / 2) * 2 * KEY_TILE + d % 2]))
                .sum();
        }
    }
}

/// `out[t·hd + c] += Σ_j p[t·ps + j] · v(j, c)` for `t < bq`, `j < rows`: `bq` rows of bf16
/// probabilities (`pb`, `ps` apart, each with a zero after `rows` when `rows` is odd) times one
/// head's values `v` (laid out as [`super::Values::PerHeadBf16`], from the head's first pair).
///
/// # Panics
/// If the shapes do not agree (a bug of the caller).
pub(super) fn weighted_bf16(
    pb: &[u16],
    ps: usize,
    bq: usize,
    v: &[u16],
    rows: usize,
    hd: usize,
    out: &mut [f32],
) {
    if bq == 0 || rows == 0 {
        return;
    }
    let pairs = rows.div_ceil(2);
    assert!(ps >= 2 * pairs && pb.len() >= (bq - 1) * ps + 2 * pairs);
    assert!(v.len() >= pairs * hd * 2 && out.len() >= bq * hd);
    #[cfg(target_arch = "x86_64")]
    if hd == 64 && matches!(isa(), Isa::Avx512Dot) {
        // SAFETY: `isa()` names only instruction sets this CPU has; the shapes are checked above.
        return unsafe { weighted_avx512bf16(pb, ps, bq, v, pairs, out) };
    }
    weighted_portable(pb, ps, bq, v, pairs, hd, out)
}

/// [`weighted_bf16`] row by row.
fn weighted_portable(
    pb: &[u16],
    ps: usize,
    bq: usize,
    v: &[u16],
    pairs: usize,
    hd: usize,
    out: &mut [f32],
) {
    for t in 0..bq {
        let o = &mut out[t * hd..(t + 1) * hd];
        for j in 0..2 * pairs {
            let w = from_bf16(pb[t * ps + j]);
            let row = (j / 2) * hd * 2 + j % 2;
            for (c, a) in o.iter_mut().enumerate() {
                *a += w * from_bf16(v[row + c * 2]);
            }
        }
    }
}

/// Queries per tile: 6 × 4 accumulators of the 32 registers, as the f32 tiles.
#[cfg(target_arch = "x86_64")]
const QT: usize = 6;

/// Queries per tile for `n` queries: as few tiles as [`QT`] allows, of equal sizes, so no tile is
/// left with a query or two that would reload the keys for little work (20 queries: 4 tiles of 5,
/// not 6, 6, 6, 2).
#[cfg(target_arch = "x86_64")]
fn balanced(n: usize) -> usize {
    n.div_ceil(n.div_ceil(QT).max(1)).max(1)
}

/// [`scores_bf16`] in tiles of up to 6 queries × the 64 positions of a tile of keys.
///
/// # Safety
/// The CPU has AVX-512F, BW and BF16; the shapes are as [`scores_bf16`] checks them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn scores_avx512bf16(
    qb: &[u16],
    nq: usize,
    hd: usize,
    kt: &[u16],
    len: usize,
    out: &mut [f32],
    os: usize,
) {
    for j0 in (0..len).step_by(KEY_TILE) {
        let masks = tail_masks(len - j0);
        let k = kt.as_ptr().add(j0 * hd);
        let o = out.as_mut_ptr().add(j0);
        let tile = balanced(nq);
        for t0 in (0..nq).step_by(tile) {
            let (q, o) = (qb.as_ptr().add(t0 * hd), o.add(t0 * os));
            by_queries!(tile, nq, t0, score_tile(q, hd, k, o, os, masks));
        }
    }
}

/// One tile of [`scores_avx512bf16`]: `N` queries (rows `hd` apart from `q`) against the tile of
/// keys at `k`, stored at `o` (rows `os` apart) under `masks`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn score_tile<const N: usize>(
    q: *const u16,
    hd: usize,
    k: *const u16,
    o: *mut f32,
    os: usize,
    masks: [__mmask16; 4],
) {
    let qp = tile_rows::<_, N>(q, hd);
    let mut acc = [[_mm512_setzero_ps(); 4]; N];
    for dp in 0..hd / 2 {
        // 16 positions × the pair of dims per vector.
        let kd = k.add(dp * 2 * KEY_TILE);
        let kv: [__m512i; 4] =
            std::array::from_fn(|v| _mm512_loadu_si512(kd.add(32 * v) as *const _));
        for (a, p) in acc.iter_mut().zip(&qp) {
            let w = _mm512_set1_epi32((p.add(2 * dp) as *const i32).read_unaligned());
            for (a, kv) in a.iter_mut().zip(&kv) {
                *a = _mm512_dpbf16_ps(*a, bh(*kv), bh(w));
            }
        }
    }
    store_scores(&acc, o, os, masks);
}

/// [`weighted_bf16`] for heads of 64, in tiles of up to 6 queries × the 64 columns.
///
/// # Safety
/// The CPU has AVX-512F, BW and BF16; the shapes are as [`weighted_bf16`] checks them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn weighted_avx512bf16(
    pb: &[u16],
    ps: usize,
    bq: usize,
    v: &[u16],
    pairs: usize,
    out: &mut [f32],
) {
    let tile = balanced(bq);
    for t0 in (0..bq).step_by(tile) {
        let (p, o) = (pb.as_ptr().add(t0 * ps), out.as_mut_ptr().add(t0 * 64));
        by_queries!(tile, bq, t0, weighted_tile(p, ps, v.as_ptr(), pairs, o));
    }
}

/// One tile of [`weighted_avx512bf16`]: `N` rows of probabilities (`ps` apart from `p`) times
/// `pairs` pairs of value rows, added to the `N` rows of 64 at `o`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn weighted_tile<const N: usize>(
    p: *const u16,
    ps: usize,
    v: *const u16,
    pairs: usize,
    o: *mut f32,
) {
    let pp = tile_rows::<_, N>(p, ps);
    let mut acc = [[_mm512_setzero_ps(); 4]; N];
    for jp in 0..pairs {
        // 16 columns × the pair of positions per vector.
        let r = v.add(jp * 128);
        let x: [__m512i; 4] =
            std::array::from_fn(|c| _mm512_loadu_si512(r.add(32 * c) as *const _));
        for (a, p) in acc.iter_mut().zip(&pp) {
            let w = _mm512_set1_epi32((p.add(2 * jp) as *const i32).read_unaligned());
            for (a, x) in a.iter_mut().zip(&x) {
                *a = _mm512_dpbf16_ps(*a, bh(*x), bh(w));
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        for (c, a) in a.iter().enumerate() {
            let o = o.add(i * 64 + 16 * c);
            _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), *a));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn fill(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn round(x: &[f32]) -> Vec<f32> {
        x.iter().map(|v| from_bf16(to_bf16(*v))).collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to the even one, 1.
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        let (src, mut dst) = (fill(37, 9), Vec::new());
        // Rows of 17 from rows 20 apart: paired to 18, the pad zero; the vector path where the CPU
        // has it, the same bits as the scalar rounding.
        assert_eq!(round_rows(&src, 20, 2, 17, &mut dst), 18);
        for t in 0..2 {
            for j in 0..17 {
                assert_eq!(dst[t * 18 + j], to_bf16(src[t * 20 + j]), "{t}/{j}");
            }
            assert_eq!(dst[t * 18 + 17], 0);
        }
    }

    #[test]
    fn bf16_scores_match_the_product_of_the_rounded_values() {
        for (nq, hd, len) in [
            (1usize, 64usize, 1usize),
            (7, 64, 150),
            (20, 64, 1305),
            (13, 8, 64),
        ] {
            let stride = len.next_multiple_of(KEY_TILE);
            let width = 2 * hd;
            let (q, k) = (fill(nq * hd, 1), fill(len * width, 2));
            let mut kt = vec![0u16; width * stride];
            transpose_keys_bf16(&k, len, (width, hd), stride, &mut kt);
            let mut qb = Vec::new();
            round_rows(&q, hd, nq, hd, &mut qb);
            let (qr, kr) = (round(&q), round(&k));
            let os = len + 5;
            // Head 1 (its keys start `hd · stride` in): the dispatched kernel (the vector one
            // where the CPU has it) and the portable one.
            let head = &kt[hd * stride..];
            let mut got = vec![7f32; nq * os];
            scores_bf16(&qb, nq, hd, head, stride, len, &mut got, os);
            let mut portable = vec![7f32; nq * os];
            scores_portable(&qb, nq, hd, head, len, &mut portable, os);
            for (name, got) in [("dispatched", &got), ("portable", &portable)] {
                for t in 0..nq {
                    for j in 0..len {
                        let want: f32 = (0..hd)
                            .map(|d| qr[t * hd + d] * kr[j * width + hd + d])
                            .sum();
                        let g = got[t * os + j];
                        assert!(
                            (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{name} {nq}×{len} [{t}][{j}]: {g} vs {want}"
                        );
                    }
                    // Past `len` stays as it was (the next segment's scores live there).
                    assert!(got[t * os + len..(t + 1) * os].iter().all(|x| *x == 7.0));
                }
            }
        }
    }

    #[test]
    fn bf16_values_match_the_product_of_the_rounded_values() {
        // Odd lengths end on the zero padding; a query may see fewer rows than the segment holds.
        for (bq, len, rows, hd) in [
            (1usize, 1usize, 1usize, 64usize),
            (7, 151, 151, 64),
            (20, 1305, 1304, 64),
            (4, 9, 5, 8),
        ] {
            let width = 2 * hd;
            let (p, v) = (fill(bq * (rows + 3), 3), fill(len * width, 4));
            let mut vh = vec![0u16; paired(len) * width];
            values_per_head_bf16(&v, len, (width, hd), &mut vh);
            let mut pb = Vec::new();
            let ps = round_rows(&p, rows + 3, bq, rows, &mut pb);
            let (pr, vr) = (round(&p), round(&v));
            let base = fill(bq * hd, 5);
            let head = &vh[hd * paired(len)..];
            let mut got = base.clone();
            weighted_bf16(&pb, ps, bq, head, rows, hd, &mut got);
            let mut portable = base.clone();
            weighted_portable(&pb, ps, bq, head, rows.div_ceil(2), hd, &mut portable);
            for (name, got) in [("dispatched", &got), ("portable", &portable)] {
                for t in 0..bq {
                    for c in 0..hd {
                        let want = base[t * hd + c]
                            + (0..rows)
                                .map(|j| pr[t * (rows + 3) + j] * vr[j * width + hd + c])
                                .sum::<f32>();
                        let g = got[t * hd + c];
                        assert!(
                            (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{name} {bq}×{rows} [{t}][{c}]: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
