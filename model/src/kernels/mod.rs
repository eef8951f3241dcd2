//! The project's own kernels for the memory-bound products of decoding: `y = x · Wᵀ (+ b)` for a few
//! tokens at a time, over weights stored as f32, bf16 or int8 (per-group scales), and the attention of
//! decoding tokens over their KV caches.
//!
//! libtorch's matrix-vector product reaches about a third of this machine's memory bandwidth; these
//! kernels stream each weight once per step and use it for every token of the batch, so a batched
//! decode step costs about what one token does. Each weight vector is widened to f32 in registers and
//! multiplied against f32 activations, so every dtype keeps f32 activations and accumulation.
//!
//! Dispatch is at run time: AVX-512 where the CPU has it, else AVX2 with FMA, else portable Rust.
//! Work is split over a small pool of threads of our own (libtorch's are idle while they run: the
//! engine thread calls one or the other, never both at once).

#![allow(unsafe_code)]

/// Calls `$tile::<N>($args)` with `N` the queries left from `$t0` of `$n`, at most `$max` (6 or 3):
/// the attention's register tiles, whose last tile of queries is sized to those left.
macro_rules! by_queries {
    ($max:expr, $n:expr, $t0:expr, $tile:ident($($arg:expr),*)) => {
        match ($n - $t0).min($max) {
            1 => $tile::<1>($($arg),*),
            2 => $tile::<2>($($arg),*),
            3 => $tile::<3>($($arg),*),
            4 => $tile::<4>($($arg),*),
            5 => $tile::<5>($($arg),*),
            _ => $tile::<6>($($arg),*),
        }
    };
}

mod attention;
mod attention_bf16;
mod attention_tiles;
mod avx2;
mod avx2_int8;
mod avx512;
mod avx512_dot;
mod elementwise;
mod far_keys;
mod portable;
mod prefill;
mod weights;

use std::sync::OnceLock;

pub use attention::{
    decode_attention, decode_attention_heads, transpose_keys, values_per_head, AttentionInput,
    Keys, KvSegment, Values, KEY_TILE,
};
pub use attention_bf16::{key_norms_bf16, paired, transpose_keys_bf16, values_per_head_bf16};
pub use elementwise::{add, gelu, layer_norm};
pub use prefill::prefill_attention_heads;
use weights::Raw;
pub use weights::{Matrix, MatrixError, INT8_GROUP, ROW_BLOCK};

/// The instruction set the kernels run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 with the BF16 and VNNI dot products (bf16 and int8 weights use them).
    Avx512Dot,
    /// AVX-512 F and BW: every dtype widened to f32.
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Dot => "avx512+bf16+vnni",
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }
}

/// The best instruction set this CPU supports (detected once). `CONFIDANT_KERNELS=avx512|avx2|portable`
/// forces a lesser one (for comparisons).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let forced = std::env::var("CONFIDANT_KERNELS").ok();
        let detected = detect();
        let order = [Isa::Avx512Dot, Isa::Avx512, Isa::Avx2, Isa::Portable];
        let rank = |i: Isa| order.iter().position(|o| *o == i).unwrap_or(order.len());
        let wanted = match forced.as_deref() {
            Some("portable") => Isa::Portable,
            Some("avx2") => Isa::Avx2,
            Some("avx512") => Isa::Avx512,
            _ => detected,
        };
        if rank(wanted) >= rank(detected) {
            wanted
        } else {
            detected
        }
    })
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
            if std::is_x86_feature_detected!("avx512bf16")
                && std::is_x86_feature_detected!("avx512vnni")
            {
                return Isa::Avx512Dot;
            }
            return Isa::Avx512;
        }
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// `x` rounded to the nearest integer, ties to even, for `|x| < 2^22`: adding and removing
/// `1.5 · 2^23` leaves no fraction bits. Unlike `round`, it vectorizes on every x86-64 (no call).
#[inline(always)]
pub(crate) fn round_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// The kernels' threads.
pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("kernel-{i}"))
        .build()
        .unwrap_or_else(|_| {
            // Building a pool fails only if threads cannot be spawned at all; run on the caller.
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .use_current_thread()
                .build()
                .unwrap_or_else(|e| panic!("no thread for the kernels: {e}"))
        })
}

/// Whether the product of `w` on `isa` takes its activations prepared (rounded to bf16 or quantized
/// per group) rather than as f32: the dot-product instructions', and int8 on every SIMD set.
pub(crate) fn quantizes(isa: Isa, w: &Matrix) -> bool {
    match isa {
        Isa::Avx512Dot => avx512_dot::handles(w, true, true),
        Isa::Avx512 | Isa::Avx2 => matches!(w.raw(), Raw::Int8 { .. }),
        Isa::Portable => false,
    }
}

/// Rows per unit of work handed to a thread.
const ROWS_PER_TASK: usize = 16 * ROW_BLOCK;

/// `y[t][r] = Σ_k x[t][k] · W[r][k] + bias[r]` for the `tokens` rows of `x` (row-major
/// `tokens × cols`), into `y` (row-major `tokens × rows`).
///
/// # Panics
/// If the slices' lengths do not match the shapes (a bug of the caller).
pub fn matmul(
    pool: &rayon::ThreadPool,
    x: &[f32],
    tokens: usize,
    w: &Matrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    matmul_isa(isa(), pool, x, tokens, w, bias, y)
}

/// [`matmul`] with a given instruction set (which the CPU must have).
pub(crate) fn matmul_isa(
    isa: Isa,
    pool: &rayon::ThreadPool,
    x: &[f32],
    tokens: usize,
    w: &Matrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let (rows, cols) = (w.rows(), w.cols());
    assert_eq!(x.len(), tokens * cols, "x is not tokens × cols");
    assert_eq!(y.len(), tokens * rows, "y is not tokens × rows");
    if let Some(b) = bias {
        assert_eq!(b.len(), rows, "bias is not rows long");
    }
    if tokens == 0 || rows == 0 {
        return;
    }
    let out = OutRows {
        base: y.as_mut_ptr(),
        stride: rows,
    };
    // The narrow dtypes' dot-product instructions take their activations prepared once per product.
    let prepared = quantizes(isa, w)
        .then(|| avx512_dot::prepare(x, tokens, w))
        .flatten();
    let tasks = rows.div_ceil(ROWS_PER_TASK);
    let run = |task: usize| {
        let r0 = task * ROWS_PER_TASK;
        let r1 = (r0 + ROWS_PER_TASK).min(rows);
        let whole = Rows {
            raw: w.raw(),
            cols,
            stride: cols,
            first: 0,
        };
        match (isa, &prepared, w.raw()) {
            // SAFETY (all arms): `isa()` returns an instruction set only where the CPU has it; tasks
            // write disjoint rows of `y`, which outlives the pool's scope (it joins before `matmul`
            // returns); the shapes were checked above.
            (Isa::Avx512Dot, Some(p), _) => unsafe {
                avx512_dot::block(p, tokens, w, bias, r0, r1, &out)
            },
            (Isa::Portable, _, _) => portable::block(x, tokens, w, bias, r0, r1, &out),
            // int8 without VNNI: its own kernel (`quantizes` prepared the activations).
            (_, Some(avx512_dot::Prepared::Int8 { xq, scales, .. }), Raw::Int8 { .. }) => unsafe {
                avx2_int8::block(xq, scales, tokens, w, bias, r0, r1, &out)
            },
            _ => unsafe { widening(isa, x, tokens, whole, bias, r0, r1, &out) },
        }
    };
    if tasks == 1 || pool.current_num_threads() == 1 {
        (0..tasks).for_each(run);
    } else {
        pool.install(|| {
            use rayon::prelude::*;
            (0..tasks).into_par_iter().for_each(run);
        });
    }
}

/// `y = x · Wᵀ` for an f32 `W` held in a slice (`rows × cols`, rows `stride` apart), into `y`
/// (`tokens` rows `y_stride` apart), on the calling thread: the products inside attention, whose
/// operands are views of the KV caches.
///
/// # Panics
/// If the slices' lengths do not match the shapes.
pub(crate) fn matmul_local(
    x: &[f32],
    tokens: usize,
    (w, stride): (&[f32], usize),
    rows: usize,
    cols: usize,
    (y, y_stride): (&mut [f32], usize),
) {
    assert!(x.len() >= tokens * cols && cols <= stride && rows <= y_stride);
    assert!(rows == 0 || w.len() >= (rows - 1) * stride + cols);
    assert!(tokens == 0 || y.len() >= (tokens - 1) * y_stride + rows);
    if tokens == 0 || rows == 0 {
        return;
    }
    let out = OutRows {
        base: y.as_mut_ptr(),
        stride: y_stride,
    };
    match isa() {
        Isa::Portable => {
            for t in 0..tokens {
                for r in 0..rows {
                    let sum = x[t * cols..(t + 1) * cols]
                        .iter()
                        .zip(&w[r * stride..r * stride + cols])
                        .map(|(a, b)| a * b)
                        .sum();
                    y[t * y_stride + r] = sum;
                }
            }
        }
        isa => {
            let rows_view = Rows {
                raw: Raw::F32(w.as_ptr()),
                cols,
                stride,
                first: 0,
            };
            // SAFETY: `isa()` names an instruction set this CPU has; the shapes were checked.
            unsafe {
                widening(
                    isa,
                    &x[..tokens * cols],
                    tokens,
                    rows_view,
                    None,
                    0,
                    rows,
                    &out,
                )
            }
        }
    }
}

/// Walks rows `r0..r1` × `tokens` in tiles that stay in L2 (1 MB here, 256 KiB at least on any
/// AVX-512 part): a block of rows is reused across a tile of tokens. Without it, many tokens'
/// activations would stream from L3 again for every few rows. `align`: rows per kernel block
/// (tiles start at multiples of it relative to `r0`).
#[inline(always)]
pub(crate) fn for_tiles(
    (r0, r1): (usize, usize),
    tokens: usize,
    (row_bytes, token_bytes): (usize, usize),
    align: usize,
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    let rows_per_tile = ((128 << 10) / row_bytes.max(1)).clamp(align, 256) / align * align;
    let tokens_per_tile = ((256 << 10) / token_bytes.max(1)).max(4) / 4 * 4;
    let mut rb = r0;
    while rb < r1 {
        let re = (rb + rows_per_tile).min(r1);
        let mut tt = 0;
        while tt < tokens {
            let te = (tt + tokens_per_tile).min(tokens);
            f(rb, re, tt, te);
            tt = te;
        }
        rb = re;
    }
}

/// The widening (f32-accumulating) kernel of `isa` over f32 or bf16 rows.
///
/// # Safety
/// As the kernels' `block`: the CPU has `isa`, and `rows` covers `r0..r1`.
#[allow(clippy::too_many_arguments)]
unsafe fn widening(
    isa: Isa,
    x: &[f32],
    tokens: usize,
    rows: Rows,
    bias: Option<&[f32]>,
    r0: usize,
    r1: usize,
    out: &OutRows,
) {
    match isa {
        Isa::Avx512Dot | Isa::Avx512 => avx512::block(x, tokens, rows, bias, r0, r1, out),
        _ => avx2::block(x, tokens, rows, bias, r0, r1, out),
    }
}

/// f32 or bf16 weight rows for the widening kernels: output row `r` reads row `r - first` of `raw`
/// (`first` is non-zero for a block dequantized into scratch memory).
#[derive(Clone, Copy)]
pub(crate) struct Rows {
    raw: Raw,
    cols: usize,
    /// Elements from one row to the next (`cols` for a matrix).
    stride: usize,
    first: usize,
}

/// Where the tasks of one product write: element `(t, r)` at `base[t × stride + r]`, each task its
/// own rows.
#[derive(Clone, Copy)]
pub(crate) struct OutRows {
    base: *mut f32,
    stride: usize,
}

// SAFETY: tasks write disjoint elements through it (see `matmul`).
unsafe impl Send for OutRows {}
unsafe impl Sync for OutRows {}

impl OutRows {
    /// Writes `(t, r)`.
    ///
    /// # Safety
    /// `(t, r)` within the output and within the calling task's rows.
    #[inline(always)]
    pub(crate) unsafe fn set(&self, t: usize, r: usize, v: f32) {
        *self.base.add(t * self.stride + r) = v;
    }

    /// The same output seen from token `t0` on (for a tile of tokens).
    ///
    /// # Safety
    /// `t0` within the output's tokens.
    #[inline(always)]
    pub(crate) unsafe fn offset_tokens(&self, t0: usize) -> OutRows {
        OutRows {
            base: self.base.add(t0 * self.stride),
            stride: self.stride,
        }
    }

    /// The address of `(t, r)`, for vector stores of consecutive rows.
    ///
    /// # Safety
    /// As [`set`](Self::set), for every element stored through it.
    #[inline(always)]
    pub(crate) unsafe fn ptr(&self, t: usize, r: usize) -> *mut f32 {
        self.base.add(t * self.stride + r)
    }
}

#[cfg(test)]
mod tests;

/// Measured read bandwidth of this machine with the kernels' threads, bytes per second: every thread
/// sums its share of a buffer far larger than the caches (the roofline the products are held to).
pub fn read_bandwidth(pool: &rayon::ThreadPool, bytes: usize, rounds: usize) -> f64 {
    use rayon::prelude::*;
    let n = bytes / 4;
    let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let chunk = n.div_ceil(pool.current_num_threads().max(1) * 8).max(1024);
    let mut best = 0f64;
    for _ in 0..rounds.max(1) {
        let started = std::time::Instant::now();
        let sum: f32 = pool.install(|| {
            buf.par_chunks(chunk)
                .map(|c| {
                    // Eight independent sums, so the adds do not chain.
                    let mut acc = [0f32; 16];
                    for block in c.chunks_exact(16) {
                        for (a, v) in acc.iter_mut().zip(block) {
                            *a += v;
                        }
                    }
                    acc.iter().sum::<f32>()
                })
                .sum()
        });
        std::hint::black_box(sum);
        best = best.max(bytes as f64 / started.elapsed().as_secs_f64());
    }
    best
}
