//! Keys that ALiBi has already silenced, so the attention over a long shared prefix can leave them
//! out without changing its result beyond f32's own rounding.
//!
//! BLOOM adds `slope · j` to a query's score for key `j`. For any key `r` the query sees, the
//! softmax's largest term is at least `s_r + slope · r`, and by Cauchy–Schwarz `s_j - s_r ≤
//! |q| · (|k_j| + |k_r|)`. So key `j < r` gets at most `e^-T` of the largest weight when
//!
//! ```text
//! slope · (r - j) ≥ T + |q| · (|k_j| + |k_r|)
//! ```
//!
//! With `r` the prefix's last key and `T = ln(len) + 30 ln 2`, the keys left out hold together at
//! most 2⁻³⁰ of the weight: an output moves by at most 2⁻²⁹ of its largest value's size, a 32nd of one
//! f32 rounding of a sum of such values (and 2²¹ times less than bf16 rounds the probabilities).
//! The bound is checked per tile of [`KEY_TILE`] keys, with the largest key norm of the tile, so the
//! cost is one comparison per tile. It holds for any weights; how much it leaves out depends on them
//! (steep slopes and small query and key norms leave out most).

use super::attention::{Keys, KvSegment, KEY_TILE};

/// `ln 2`, for the margin `T`.
const LN_2: f32 = std::f32::consts::LN_2;

/// Slack on `|q| · |k|` for the rounding of the query to bf16 (relative 2⁻⁹ per element) and of the
/// dot product's f32 sum: far more than either can add.
const SLACK: f32 = 1.0 + 1.0 / 64.0;

/// Leading positions of `seg`'s keys that head `h` (of `slope`) leaves out for queries whose
/// scaled norms are at most `q_norm()` (called only where it can matter), when they see the whole
/// segment: a multiple of [`KEY_TILE`] for bf16 keys with their tile norms, 0 for other layouts.
pub(super) fn left_out(
    seg: &KvSegment<'_>,
    h: usize,
    slope: f32,
    q_norm: impl FnOnce() -> f32,
) -> usize {
    let Keys::TransposedBf16 { stride, norms, .. } = seg.k else {
        return 0;
    };
    let tiles = stride / KEY_TILE;
    norms.get(h * tiles..(h + 1) * tiles).map_or(0, |norms| {
        silent_tiles(norms, seg.len, slope, q_norm()) * KEY_TILE
    })
}

/// The largest of `values` and 0, or NaN if any is NaN (which no bound admits).
pub(super) fn largest(values: impl IntoIterator<Item = f32>) -> f32 {
    values
        .into_iter()
        .fold(0f32, |m, v| if v > m || v.is_nan() { v } else { m })
}

/// Leading tiles of a segment's `len` keys (`norms`: the largest key norm of each of this head's
/// tiles) that every query of norm at most `q_norm` (the scaled query, as its scores use it) can
/// leave out under `slope`, when the query sees the whole segment. Never the tile holding the last
/// key, which the bound measures from; 0 when any input is not finite.
pub(super) fn silent_tiles(norms: &[f32], len: usize, slope: f32, q_norm: f32) -> usize {
    if len == 0 || !(slope > 0.0 && slope.is_finite() && q_norm.is_finite()) {
        return 0;
    }
    let last_tile = (len - 1) / KEY_TILE;
    let Some(&last_norm) = norms.get(last_tile) else {
        return 0;
    };
    // One more than the bound needs, for the f32 rounding of the biased scores and their maximum.
    let t = (len as f32).ln() + 30.0 * LN_2 + 1.0;
    let mut silent = 0;
    for (tile, &norm) in norms[..last_tile].iter().enumerate() {
        // The tile's nearest key to the last one.
        let distance = (len - 1 - (tile * KEY_TILE + KEY_TILE - 1)) as f32;
        let bound = t + SLACK * q_norm * (norm + last_norm);
        // Compared so that a NaN norm (hence bound) fails it and stops here.
        let silenced = slope * distance >= bound;
        if !silenced {
            break;
        }
        silent = tile + 1;
    }
    silent
}

/// The Euclidean norm of `x`, rounded up so it bounds the exact one (NaN if `x` holds one).
pub(super) fn norm(x: &[f32]) -> f32 {
    bound_from_squares(x.iter().map(|v| v * v).sum())
}

/// `√sq` rounded up by a relative 2⁻¹⁴: more than the f32 sum of a few hundred squares can be off.
pub(super) fn bound_from_squares(sq: f32) -> f32 {
    sq.sqrt() * (1.0 + 1.0 / 16_384.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steep_slopes_and_small_norms_leave_out_far_tiles() {
        // 1,305 keys: 21 tiles, the last partial. T = ln 1305 + 30 ln 2 + 1 ≈ 29.0.
        let (len, norms) = (1305, vec![4.0f32; 21]);
        // Slope 1/√2, |q| 0.6: bound ≈ 29.0 + 1.016 · 0.6 · 8 ≈ 33.9, so keys 48 or more behind
        // the last are silent: the tile ending at 1279 is 25 behind, the one ending at 1215 is 89.
        assert_eq!(silent_tiles(&norms, len, 0.707, 0.6), 19);
        // A shallow slope: nothing is far enough.
        assert_eq!(silent_tiles(&norms, len, 0.0039, 0.6), 0);
        // A large query: the same slope leaves fewer out.
        let big = silent_tiles(&norms, len, 0.707, 60.0);
        assert!(0 < big && big < 19, "{big}");
        // A tile with a large key stops the count there, even if later ones are small.
        let mut spiky = norms.clone();
        spiky[3] = 1e4;
        assert_eq!(silent_tiles(&spiky, len, 0.707, 0.6), 3);
    }

    #[test]
    fn the_bound_holds_at_the_tile_it_stops_before() {
        // Every tile it leaves out meets the bound at its nearest key; the next one does not.
        let (len, slope, q) = (1000usize, 0.25f32, 1.3f32);
        let norms: Vec<f32> = (0..16).map(|t| 2.0 + (t % 5) as f32).collect();
        let n = silent_tiles(&norms, len, slope, q);
        assert!(n > 0 && n < 15, "{n}");
        let t = (len as f32).ln() + 30.0 * LN_2 + 1.0;
        let last = norms[(len - 1) / KEY_TILE];
        let meets = |tile: usize| {
            let d = (len - 1 - (tile * KEY_TILE + KEY_TILE - 1)) as f32;
            slope * d >= t + SLACK * q * (norms[tile] + last)
        };
        assert!((0..n).all(meets));
        assert!(!meets(n));
    }

    #[test]
    fn nothing_is_left_out_on_odd_inputs() {
        let norms = vec![1.0f32; 4];
        assert_eq!(silent_tiles(&norms, 0, 0.5, 1.0), 0);
        assert_eq!(silent_tiles(&norms, 200, 0.0, 1.0), 0);
        assert_eq!(silent_tiles(&norms, 200, -0.5, 1.0), 0);
        assert_eq!(silent_tiles(&norms, 200, f32::NAN, 1.0), 0);
        assert_eq!(silent_tiles(&norms, 200, 0.5, f32::INFINITY), 0);
        assert_eq!(silent_tiles(&[f32::NAN; 4], 200, 0.5, 1.0), 0);
        // Fewer norms than tiles: nothing, rather than a bound without the last key's.
        assert_eq!(silent_tiles(&norms[..2], 200, 0.5, 1.0), 0);
        // One tile: it holds the last key.
        assert_eq!(silent_tiles(&norms, 64, 100.0, 0.0), 0);
    }

    #[test]
    fn the_largest_keeps_a_nan() {
        assert_eq!(largest([1.0, 3.0, 2.0]), 3.0);
        assert_eq!(largest([]), 0.0);
        assert!(largest([1.0, f32::NAN, 2.0]).is_nan());
    }

    #[test]
    fn the_norm_bounds_the_exact_one() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let exact = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        assert!(f64::from(norm(&x)) >= exact);
        assert!(f64::from(norm(&x)) <= exact * (1.0 + 1e-4));
        assert!(norm(&[1.0, f32::NAN]).is_nan());
    }
}
