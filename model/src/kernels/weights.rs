//! A weight matrix `[rows, cols]` in the storage the kernels read.
//!
//! - **f32** and **bf16**: row-major libtorch tensors (an f32 one may be a view of the mapped
//!   checkpoint).
//! - **int8**: one scale per group of [`INT8_GROUP`] consecutive weights of a row (absmax,
//!   symmetric; the whole row is one group when the columns are not a multiple of it), kept as an
//!   IEEE half of `scale · 2¹⁰` ([`SCALE_UNIT`]: a group's absmax from 7.6e-6 to 8,128 stays a
//!   normal half) — 2 bytes per 32 weights where f32 took 4, the same 1.0625 bytes a weight as
//!   llama.cpp's q8_0, and decode streams weight bytes; the weights are rounded against the stored
//!   scale. Stored
//!   *packed* for the dot-product instructions: rows in blocks of [`ROW_BLOCK`], and within a block
//!   and a group, 64-byte vectors that hold 4 consecutive weights of each of the 16 rows. One
//!   `vpdpbusd` then multiplies 16 rows by the same 4 activations, and a group's 16 sums land in one
//!   register, ready for the 16 rows' scales (stored beside them, per block and group). Weights are
//!   kept offset by +128 (unsigned), as the instruction wants one unsigned operand; the activations
//!   are the signed one. Rows past the last are zero padding.

use std::sync::Arc;

use tch::{Kind, Tensor};

/// Weights per int8 scale, along a row.
pub const INT8_GROUP: usize = 32;
/// Rows per packed int8 block (one 512-bit vector of 32-bit lanes).
pub const ROW_BLOCK: usize = 16;
/// What a stored int8 scale is multiplied by to give the scale (2⁻¹⁰; see the module's note).
pub const SCALE_UNIT: f32 = 1.0 / 1024.0;

/// The stored form of `scale` (an f16, `scale / SCALE_UNIT`) and the scale it stands for; `None`
/// past the half's range.
fn store_scale(scale: f32) -> Option<(u16, f32)> {
    let h = half::f16::from_f32(scale / SCALE_UNIT);
    h.is_finite()
        .then(|| (h.to_bits(), h.to_f32() * SCALE_UNIT))
}

/// The scale a stored one stands for.
#[inline]
pub(crate) fn load_scale(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32() * SCALE_UNIT
}

/// How a matrix is stored.
#[derive(Debug)]
enum MatrixData {
    F32(Tensor),
    Bf16(Tensor),
    Int8 {
        /// Packed weights + 128 (see the module's documentation), `blocks × groups × 16 × group`.
        q: Vec<u8>,
        /// `blocks × groups × 16` halves (see [`load_scale`]).
        scales: Vec<u16>,
    },
}

/// Raw, read-only views for the kernels.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Raw {
    F32(*const f32),
    Bf16(*const u16),
    Int8 { q: *const u8, scales: *const u16 },
}

/// A weight matrix.
#[derive(Debug)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    /// Weights per scale along a row (int8); `cols` for the other kinds.
    group: usize,
    data: MatrixData,
    raw: Raw,
    /// What a view's memory belongs to (the mapped checkpoint), kept alive with it.
    _owner: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

// SAFETY: the storage is never written after construction; the raw pointers only read it.
unsafe impl Send for Matrix {}
unsafe impl Sync for Matrix {}

/// Why a matrix cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatrixError {
    #[error("a weight matrix must be 2-D, this one has shape {0:?}")]
    Shape(Vec<i64>),
    #[error("{cols} columns are not a multiple of {need}")]
    Columns { cols: usize, need: usize },
    #[error("libtorch: {0}")]
    Torch(String),
    #[error("a weight of magnitude {0} is beyond what int8 with half scales holds")]
    Range(String),
}

fn dims(t: &Tensor) -> Result<(usize, usize), MatrixError> {
    match t.size().as_slice() {
        [r, c] if *r >= 0 && *c >= 0 => Ok((*r as usize, *c as usize)),
        other => Err(MatrixError::Shape(other.to_vec())),
    }
}

impl Matrix {
    /// An f32 matrix (the tensor is used as is when it is contiguous f32).
    pub fn f32(t: &Tensor) -> Result<Matrix, MatrixError> {
        let (rows, cols) = dims(t)?;
        let t = t.to_kind(Kind::Float).contiguous();
        let raw = Raw::F32(t.data_ptr() as *const f32);
        Ok(Matrix {
            rows,
            cols,
            group: cols.max(1),
            data: MatrixData::F32(t),
            raw,
            _owner: None,
        })
    }

    /// A bf16 matrix (rounded to nearest even from wider kinds).
    pub fn bf16(t: &Tensor) -> Result<Matrix, MatrixError> {
        let (rows, cols) = dims(t)?;
        let t = t.to_kind(Kind::BFloat16).contiguous();
        let raw = Raw::Bf16(t.data_ptr() as *const u16);
        Ok(Matrix {
            rows,
            cols,
            group: cols.max(1),
            data: MatrixData::Bf16(t),
            raw,
            _owner: None,
        })
    }

    /// An int8 matrix quantized from `t` (any float kind): each group of [`INT8_GROUP`] weights of a
    /// row (the whole row when the columns are not a multiple of it) gets the scale `max |w| / 127`
    /// and `q = round(w / scale)`. The columns must be a multiple of 4.
    pub fn int8(t: &Tensor) -> Result<Matrix, MatrixError> {
        Self::int8_with(t, &mut |_, _| {})
    }

    /// [`int8`](Self::int8), calling `done(r0, r1)` once rows `r0..r1` of `t` have been read (so
    /// their source memory can be released while the rest is quantized).
    pub fn int8_with(
        t: &Tensor,
        done: &mut dyn FnMut(usize, usize),
    ) -> Result<Matrix, MatrixError> {
        let (rows, cols) = dims(t)?;
        if cols == 0 || cols % 4 != 0 {
            return Err(MatrixError::Columns { cols, need: 4 });
        }
        let group = if cols % INT8_GROUP == 0 {
            INT8_GROUP
        } else {
            cols
        };
        let groups = cols / group;
        let blocks = rows.div_ceil(ROW_BLOCK);
        // Padding rows: weight 0 (stored as 128), scale 1.
        let one = store_scale(1.0).map_or(0, |(bits, _)| bits);
        let mut q = vec![128u8; blocks * ROW_BLOCK * cols];
        let mut scales = vec![one; blocks * ROW_BLOCK * groups];
        // A block of rows in f32 at a time: bounded extra memory whatever the source kind.
        for b in 0..blocks {
            let r0 = b * ROW_BLOCK;
            let n = ROW_BLOCK.min(rows - r0);
            let src = t
                .narrow(0, r0 as i64, n as i64)
                .to_kind(Kind::Float)
                .contiguous();
            let mut buf = vec![0f32; n * cols];
            src.f_copy_data(&mut buf, n * cols)
                .map_err(|e| MatrixError::Torch(e.to_string()))?;
            drop(src);
            done(r0, r0 + n);
            for (i, row) in buf.chunks_exact(cols).enumerate() {
                for (g, w) in row.chunks_exact(group).enumerate() {
                    let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
                    let (bits, scale) =
                        store_scale(scale).ok_or_else(|| MatrixError::Range(max.to_string()))?;
                    let inv = 1.0 / scale;
                    let tile = (b * groups + g) * ROW_BLOCK;
                    scales[tile + i] = bits;
                    for (k, v) in w.iter().enumerate() {
                        let v = super::round_small((v * inv).clamp(-127.0, 127.0)) as i32;
                        q[tile * group + (k / 4) * 64 + i * 4 + k % 4] = (v + 128) as u8;
                    }
                }
            }
        }
        let raw = Raw::Int8 {
            q: q.as_ptr(),
            scales: scales.as_ptr(),
        };
        Ok(Matrix {
            rows,
            cols,
            group,
            data: MatrixData::Int8 { q, scales },
            raw,
            _owner: None,
        })
    }

    /// The same matrix, keeping `owner` alive as long as it: for a view of memory `owner` holds.
    pub(crate) fn keeping(mut self, owner: Arc<dyn std::any::Any + Send + Sync>) -> Matrix {
        self._owner = Some(owner);
        self
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Weights per scale along a row.
    pub fn group(&self) -> usize {
        self.group
    }

    /// Bytes the kernels stream per full pass over the matrix.
    pub fn bytes(&self) -> usize {
        match &self.data {
            MatrixData::F32(_) => self.rows * self.cols * 4,
            MatrixData::Bf16(_) => self.rows * self.cols * 2,
            MatrixData::Int8 { q, scales } => q.len() + scales.len() * 2,
        }
    }

    /// `f32`, `bf16` or `int8`.
    pub fn dtype(&self) -> &'static str {
        match &self.data {
            MatrixData::F32(_) => "f32",
            MatrixData::Bf16(_) => "bf16",
            MatrixData::Int8 { .. } => "int8",
        }
    }

    pub(crate) fn raw(&self) -> Raw {
        self.raw
    }

    /// Row `r`, widened to f32 (an embedding lookup).
    ///
    /// # Panics
    /// If `r` is out of range or `out` is not `cols` long.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        assert!(
            r < self.rows && out.len() == self.cols,
            "row {r} out of range"
        );
        let base = r * self.cols;
        match &self.data {
            MatrixData::F32(_) | MatrixData::Bf16(_) => {
                // SAFETY: row `r` lies within the matrix (checked above).
                unsafe {
                    match self.raw {
                        Raw::F32(p) => {
                            std::ptr::copy_nonoverlapping(p.add(base), out.as_mut_ptr(), self.cols)
                        }
                        Raw::Bf16(p) => {
                            for (k, o) in out.iter_mut().enumerate() {
                                *o = f32::from_bits(u32::from(*p.add(base + k)) << 16);
                            }
                        }
                        Raw::Int8 { .. } => unreachable!("int8 storage is packed"),
                    }
                }
            }
            MatrixData::Int8 { q, scales } => {
                let (b, i, group) = (r / ROW_BLOCK, r % ROW_BLOCK, self.group);
                let groups = self.cols / group;
                for (g, out) in out.chunks_exact_mut(group).enumerate() {
                    let tile = (b * groups + g) * ROW_BLOCK;
                    let scale = load_scale(scales[tile + i]);
                    let bytes = &q[tile * group..(tile + ROW_BLOCK) * group];
                    for (k, o) in out.iter_mut().enumerate() {
                        let v = bytes[(k / 4) * 64 + i * 4 + k % 4];
                        *o = f32::from(i16::from(v) - 128) * scale;
                    }
                }
            }
        }
    }

    /// The matrix as an f32 tensor (dequantized): for checks and for libtorch's own products.
    pub fn to_f32(&self) -> Tensor {
        match &self.data {
            MatrixData::F32(t) => t.shallow_clone(),
            MatrixData::Bf16(t) => t.to_kind(Kind::Float),
            MatrixData::Int8 { .. } => {
                let mut all = vec![0f32; self.rows * self.cols];
                for (r, row) in all.chunks_exact_mut(self.cols.max(1)).enumerate() {
                    self.row_f32(r, row);
                }
                Tensor::from_slice(&all).view([self.rows as i64, self.cols as i64])
            }
        }
    }
}
