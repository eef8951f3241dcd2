//! Register tiles for a prompt chunk's attention over a long shared prefix: the scores of several
//! queries against transposed keys, and the probabilities times the value rows. Both are small
//! matrix products (queries × positions × 64); written with explicit vectors so that a tile of
//! queries × lanes stays in registers — the compiler spilled the same tiles written over arrays,
//! and the chunk then ran at a quarter of the cores' multiply-add rate.
//!
//! Partial tiles of queries recompute the last query in the missing rows and store only the real
//! ones, so callers need no padding.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

// The score tiles read a tile of keys as 4 vectors of 16 or 8 of 8.
const _: () = assert!(super::KEY_TILE == 64);

/// Queries per tile: with 4 vectors of positions or columns each, 24 accumulators of the 32
/// 512-bit registers. The last tile of a chunk has as many queries as are left: no work is wasted.
#[cfg(target_arch = "x86_64")]
const QT512: usize = 6;

/// Queries per AVX2 tile (16 registers): 6 × 2 accumulators for the scores, 3 × 4 for the values.
#[cfg(target_arch = "x86_64")]
const QT256: usize = 6;
#[cfg(target_arch = "x86_64")]
const QV256: usize = 3;

/// Pointers to `N` rows `stride` apart from `base`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn tile_rows<T, const N: usize>(base: *const T, stride: usize) -> [*const T; N] {
    std::array::from_fn(|i| base.wrapping_add(i * stride))
}

/// `out[t·os + j] = Σ_d q[t·hd + d] · k(d, j)` for `t < nq`, `j < len`, `kt` one head's keys tiled
/// as in [`super::Keys::Transposed`], with 512-bit vectors: tiles of up to 6 queries × the 64
/// positions of a tile of keys (16 KiB, contiguous).
///
/// # Safety
/// The CPU has AVX-512F; `stride` is a multiple of 64 not below `len`, `kt` holds `hd × stride`,
/// `q` holds `nq × hd`, `out` holds `(nq - 1) · os + len` with `os ≥ len`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn scores_avx512(
    q: &[f32],
    nq: usize,
    hd: usize,
    kt: &[f32],
    stride: usize,
    len: usize,
    out: &mut [f32],
    os: usize,
) {
    debug_assert!(stride.is_multiple_of(64) && stride >= len && kt.len() >= hd * stride);
    debug_assert!(nq > 0 && q.len() >= nq * hd && os >= len && out.len() >= (nq - 1) * os + len);
    for j0 in (0..len).step_by(64) {
        let masks = tail_masks(len - j0);
        let k = kt.as_ptr().add(j0 * hd);
        let o = out.as_mut_ptr().add(j0);
        for t0 in (0..nq).step_by(QT512) {
            let qp = q.as_ptr().add(t0 * hd);
            let o = o.add(t0 * os);
            by_queries!(QT512, nq, t0, score_tile_512(qp, hd, k, o, os, masks));
        }
    }
}

/// One tile of [`scores_avx512`]: `N` queries (rows `hd` apart from `q`) against the 64 positions
/// of one tile of keys at `k`, stored at `o` (rows `os` apart) under `masks`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn score_tile_512<const N: usize>(
    q: *const f32,
    hd: usize,
    k: *const f32,
    o: *mut f32,
    os: usize,
    masks: [__mmask16; 4],
) {
    let qp = tile_rows::<_, N>(q, hd);
    let mut acc = [[_mm512_setzero_ps(); 4]; N];
    for d in 0..hd {
        let kd = k.add(d * 64);
        let kv: [__m512; 4] = std::array::from_fn(|v| _mm512_loadu_ps(kd.add(16 * v)));
        for (a, p) in acc.iter_mut().zip(&qp) {
            let w = _mm512_set1_ps(*p.add(d));
            for (a, kv) in a.iter_mut().zip(&kv) {
                *a = _mm512_fmadd_ps(w, *kv, *a);
            }
        }
    }
    store_scores(&acc, o, os, masks);
}

/// The four 16-lane masks of a tile of 64 positions of which `rem` remain (all set past 64).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn tail_masks(rem: usize) -> [__mmask16; 4] {
    std::array::from_fn(|v| {
        let n = rem.saturating_sub(16 * v).min(16);
        ((1u32 << n) - 1) as __mmask16
    })
}

/// Stores `N` rows of 64 scores (rows `os` apart from `o`) under `masks`, a tile's last positions
/// past the segment's end left unwritten.
///
/// # Safety
/// The CPU has AVX-512F; each row holds the positions its masks name.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn store_scores<const N: usize>(
    acc: &[[__m512; 4]; N],
    o: *mut f32,
    os: usize,
    masks: [__mmask16; 4],
) {
    for (i, a) in acc.iter().enumerate() {
        let o = o.add(i * os);
        for (v, (a, m)) in a.iter().zip(masks).enumerate() {
            if m != 0 {
                // Masked-off lanes are not written (nor touched).
                _mm512_mask_storeu_ps(o.wrapping_add(16 * v), m, *a);
            }
        }
    }
}

/// [`scores_avx512`] with 256-bit vectors: tiles of up to 6 queries × 16 positions.
///
/// # Safety
/// As [`scores_avx512`], the CPU having AVX2 and FMA instead.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn scores_avx2(
    q: &[f32],
    nq: usize,
    hd: usize,
    kt: &[f32],
    stride: usize,
    len: usize,
    out: &mut [f32],
    os: usize,
) {
    debug_assert!(stride.is_multiple_of(64) && stride >= len && kt.len() >= hd * stride);
    debug_assert!(nq > 0 && q.len() >= nq * hd && os >= len && out.len() >= (nq - 1) * os + len);
    for j0 in (0..len).step_by(16) {
        let n = (len - j0).min(16);
        let k = kt.as_ptr().add((j0 / 64) * hd * 64 + j0 % 64);
        let o = out.as_mut_ptr().add(j0);
        for t0 in (0..nq).step_by(QT256) {
            let qp = q.as_ptr().add(t0 * hd);
            let o = o.add(t0 * os);
            by_queries!(QT256, nq, t0, score_tile_256(qp, hd, k, o, os, n));
        }
    }
}

/// One tile of [`scores_avx2`]: `N` queries against 16 positions of a tile of keys, of which the
/// first `n` are stored.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn score_tile_256<const N: usize>(
    q: *const f32,
    hd: usize,
    k: *const f32,
    o: *mut f32,
    os: usize,
    n: usize,
) {
    let qp = tile_rows::<_, N>(q, hd);
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for d in 0..hd {
        let kd = k.add(d * 64);
        let kv = [_mm256_loadu_ps(kd), _mm256_loadu_ps(kd.add(8))];
        for (a, p) in acc.iter_mut().zip(&qp) {
            let w = _mm256_set1_ps(*p.add(d));
            a[0] = _mm256_fmadd_ps(w, kv[0], a[0]);
            a[1] = _mm256_fmadd_ps(w, kv[1], a[1]);
        }
    }
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mask =
        |v: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(n.saturating_sub(8 * v) as i32), lane);
    for (i, a) in acc.iter().enumerate() {
        let o = o.add(i * os);
        if n == 16 {
            _mm256_storeu_ps(o, a[0]);
            _mm256_storeu_ps(o.add(8), a[1]);
        } else {
            _mm256_maskstore_ps(o, mask(0), a[0]);
            if n > 8 {
                _mm256_maskstore_ps(o.add(8), mask(1), a[1]);
            }
        }
    }
}

/// `out[t·64 + c] += Σ_j p[t·ps + j] · v[j·vs + c]` for `t < bq`, `j < rows`, `c < 64`, with
/// 512-bit vectors: tiles of up to 6 queries × the head's 64 columns.
///
/// # Safety
/// The CPU has AVX-512F; `p` holds `(bq - 1) · ps + rows`, `v` holds `(rows - 1) · vs + 64`, `out`
/// holds `bq × 64`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn weighted_avx512(
    p: &[f32],
    ps: usize,
    bq: usize,
    (v, vs): (&[f32], usize),
    rows: usize,
    out: &mut [f32],
) {
    debug_assert!(bq > 0 && rows > 0 && p.len() >= (bq - 1) * ps + rows);
    debug_assert!(v.len() >= (rows - 1) * vs + 64 && out.len() >= bq * 64);
    for t0 in (0..bq).step_by(QT512) {
        let (p, o) = (p.as_ptr().add(t0 * ps), out.as_mut_ptr().add(t0 * 64));
        by_queries!(
            QT512,
            bq,
            t0,
            weighted_tile_512(p, ps, v.as_ptr(), vs, rows, o)
        );
    }
}

/// One tile of [`weighted_avx512`]: `N` rows of probabilities (`ps` apart from `p`) times `rows`
/// value rows (`vs` apart from `v`), added to the `N` rows of 64 at `o`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn weighted_tile_512<const N: usize>(
    p: *const f32,
    ps: usize,
    v: *const f32,
    vs: usize,
    rows: usize,
    o: *mut f32,
) {
    let pp = tile_rows::<_, N>(p, ps);
    let mut acc = [[_mm512_setzero_ps(); 4]; N];
    for j in 0..rows {
        let r = v.add(j * vs);
        let x: [__m512; 4] = std::array::from_fn(|c| _mm512_loadu_ps(r.add(16 * c)));
        for (a, p) in acc.iter_mut().zip(&pp) {
            let w = _mm512_set1_ps(*p.add(j));
            for (a, x) in a.iter_mut().zip(&x) {
                *a = _mm512_fmadd_ps(w, *x, *a);
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

/// [`weighted_avx512`] with 256-bit vectors: tiles of up to 3 queries × 32 columns, the head's two
/// halves in turn.
///
/// # Safety
/// As [`weighted_avx512`], the CPU having AVX2 and FMA instead.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn weighted_avx2(
    p: &[f32],
    ps: usize,
    bq: usize,
    (v, vs): (&[f32], usize),
    rows: usize,
    out: &mut [f32],
) {
    debug_assert!(bq > 0 && rows > 0 && p.len() >= (bq - 1) * ps + rows);
    debug_assert!(v.len() >= (rows - 1) * vs + 64 && out.len() >= bq * 64);
    for half in [0, 32] {
        for t0 in (0..bq).step_by(QV256) {
            let (p, o) = (
                p.as_ptr().add(t0 * ps),
                out.as_mut_ptr().add(t0 * 64 + half),
            );
            let v = v.as_ptr().add(half);
            by_queries!(QV256, bq, t0, weighted_tile_256(p, ps, v, vs, rows, o));
        }
    }
}

/// One tile of [`weighted_avx2`]: as [`weighted_tile_512`], over 32 columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn weighted_tile_256<const N: usize>(
    p: *const f32,
    ps: usize,
    v: *const f32,
    vs: usize,
    rows: usize,
    o: *mut f32,
) {
    let pp = tile_rows::<_, N>(p, ps);
    let mut acc = [[_mm256_setzero_ps(); 4]; N];
    for j in 0..rows {
        let r = v.add(j * vs);
        let x: [__m256; 4] = std::array::from_fn(|c| _mm256_loadu_ps(r.add(8 * c)));
        for (a, p) in acc.iter_mut().zip(&pp) {
            let w = _mm256_set1_ps(*p.add(j));
            for (a, x) in a.iter_mut().zip(&x) {
                *a = _mm256_fmadd_ps(w, *x, *a);
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        for (c, a) in a.iter().enumerate() {
            let o = o.add(i * 64 + 8 * c);
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), *a));
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    /// Deterministic values in [-1, 1).
    fn fill(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    #[test]
    fn score_tiles_match_the_plain_product() {
        let (avx512, avx2) = (
            is_x86_feature_detected!("avx512f"),
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        );
        // Queries not a multiple of the tile, lengths not a multiple of a vector, one query.
        for (nq, hd, len) in [
            (1usize, 64usize, 1usize),
            (7, 64, 150),
            (20, 64, 1305),
            (13, 8, 64),
        ] {
            let stride = len.next_multiple_of(64);
            let (q, kt) = (fill(nq * hd, 1), fill(hd * stride, 2));
            let os = len + 5;
            let mut want = vec![7f32; nq * os];
            for t in 0..nq {
                for j in 0..len {
                    let tile = (j / 64) * hd * 64 + j % 64;
                    want[t * os + j] = (0..hd).map(|d| q[t * hd + d] * kt[tile + d * 64]).sum();
                }
            }
            type Scores = unsafe fn(&[f32], usize, usize, &[f32], usize, usize, &mut [f32], usize);
            let kernels: [(bool, Scores, &str); 2] = [
                (avx512, super::scores_avx512, "avx512"),
                (avx2, super::scores_avx2, "avx2"),
            ];
            for (has, f, name) in kernels {
                if !has {
                    continue;
                }
                // Past `len` in each row stays as it was (the next segment's scores live there).
                let mut got = vec![7f32; nq * os];
                // SAFETY: the CPU has the features; the shapes are as the kernels require.
                unsafe { f(&q, nq, hd, &kt, stride, len, &mut got, os) };
                close(&got, &want, &format!("{name} scores {nq}×{len}"));
            }
        }
    }

    #[test]
    fn value_tiles_match_the_plain_product() {
        let (avx512, avx2) = (
            is_x86_feature_detected!("avx512f"),
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        );
        for (bq, rows) in [(1usize, 1usize), (7, 150), (20, 1305), (4, 3)] {
            let (ps, vs) = (rows + 3, 64 * 3);
            let (p, v) = (fill(bq * ps, 3), fill(rows * vs, 4));
            let base = fill(bq * 64, 5);
            let mut want = base.clone();
            for t in 0..bq {
                for c in 0..64 {
                    want[t * 64 + c] += (0..rows)
                        .map(|j| p[t * ps + j] * v[j * vs + c])
                        .sum::<f32>();
                }
            }
            type Weighted = unsafe fn(&[f32], usize, usize, (&[f32], usize), usize, &mut [f32]);
            let kernels: [(bool, Weighted, &str); 2] = [
                (avx512, super::weighted_avx512, "avx512"),
                (avx2, super::weighted_avx2, "avx2"),
            ];
            for (has, f, name) in kernels {
                if !has {
                    continue;
                }
                let mut got = base.clone();
                // SAFETY: the CPU has the features; the shapes are as the kernels require.
                unsafe { f(&p, ps, bq, (&v, vs), rows, &mut got) };
                close(&got, &want, &format!("{name} values {bq}×{rows}"));
            }
        }
    }
}
