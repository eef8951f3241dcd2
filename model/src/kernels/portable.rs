//! Portable Rust for CPUs without AVX2: the same products, one weight at a time (the compiler
//! vectorizes what it can).

use super::weights::Matrix;
use super::OutRows;

/// Rows `r0..r1` of `x · Wᵀ + b` for every token.
pub(super) fn block(
    x: &[f32],
    tokens: usize,
    w: &Matrix,
    bias: Option<&[f32]>,
    r0: usize,
    r1: usize,
    y: &OutRows,
) {
    let cols = w.cols();
    let mut row = vec![0f32; cols];
    for r in r0..r1 {
        w.row_f32(r, &mut row);
        for t in 0..tokens {
            let xs = &x[t * cols..(t + 1) * cols];
            let mut sum: f32 = xs.iter().zip(&row).map(|(a, b)| a * b).sum();
            if let Some(b) = bias {
                sum += b[r];
            }
            // SAFETY: `(t, r)` is within this task's rows of `y` (see `super::matmul`).
            unsafe { y.set(t, r, sum) };
        }
    }
}
