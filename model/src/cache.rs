//! The key/value cache of one sequence: per layer, the keys and values of every position seen so
//! far, its own in f32 whatever the weights' dtype (the attention reads them at full precision).
//!
//! A cache may start with a shared [`Prefix`]: the system prompt's keys and values, computed once at
//! boot and read (never copied) by every conversation that starts with it. It is laid out per head
//! ([`Keys::Transposed`], [`Values::PerHead`]): the layout in which every question's attention over
//! the long prompt is a register-blocked product over contiguous memory rather than a dot product
//! per position over rows 4 KiB apart. For models narrower than f32 it may be kept in bf16
//! ([`KvPrecision`]), which halves its bytes and doubles the rate of its products on CPUs that
//! multiply bf16 pairs. The sequence's own positions follow in its own [`KvBlock`], whose memory is reserved up front for the whole turn
//! (so a failed allocation fails that sequence before any model work, not the process later).

use std::sync::Arc;

use zeroize::Zeroize;

use super::ModelError;
use crate::kernels::{
    key_norms_bf16, paired, transpose_keys, transpose_keys_bf16, values_per_head,
    values_per_head_bf16, Keys, Values, KEY_TILE,
};

/// `v` moved into an allocation of exactly `capacity` elements (or an error when the memory is not
/// there); the old allocation is wiped before it is freed. Keys and values are derived from the
/// prompts, so no copy of them is left behind in freed memory.
fn reallocate(v: &mut Vec<f32>, capacity: usize) -> Result<(), ModelError> {
    let mut new = Vec::new();
    new.try_reserve_exact(capacity).map_err(|_| {
        ModelError::Memory(format!("no memory for {capacity} values of the KV cache"))
    })?;
    new.extend_from_slice(&v[..v.len().min(capacity)]);
    v.zeroize();
    *v = new;
    Ok(())
}

/// Keys and values of a run of positions, per layer: rows of `width` (= `n_head × head_dim`,
/// heads in order) one per position.
#[derive(Debug, Default)]
pub struct KvBlock {
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    len: usize,
    width: usize,
}

impl KvBlock {
    fn new(layers: usize, width: usize) -> KvBlock {
        KvBlock {
            layers: (0..layers).map(|_| (Vec::new(), Vec::new())).collect(),
            len: 0,
            width,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys and values of layer `i`, `len × width` each.
    pub fn layer(&self, i: usize) -> (&[f32], &[f32]) {
        let (k, v) = &self.layers[i];
        (&k[..self.len * self.width], &v[..self.len * self.width])
    }

    /// Layer `i` with `extra` positions written after those held (by the running step).
    pub(crate) fn layer_with(&self, i: usize, extra: usize) -> (&[f32], &[f32]) {
        let (k, v) = &self.layers[i];
        let end = (self.len + extra) * self.width;
        (&k[..end], &v[..end])
    }

    /// Room for `positions` in all, or an error when the memory is not there.
    fn reserve(&mut self, positions: usize) -> Result<(), ModelError> {
        let want = positions * self.width;
        for (k, v) in &mut self.layers {
            for x in [k, v] {
                if x.capacity() < want {
                    reallocate(x, want)?;
                }
            }
        }
        Ok(())
    }

    /// Positions reserved.
    fn capacity(&self) -> usize {
        self.layers
            .iter()
            .map(|(k, v)| k.capacity().min(v.capacity()))
            .min()
            .unwrap_or(0)
            / self.width.max(1)
    }
}

impl Drop for KvBlock {
    fn drop(&mut self) {
        for (k, v) in &mut self.layers {
            k.zeroize();
            v.zeroize();
        }
    }
}

/// The precision a shared prefix's keys and values are kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvPrecision {
    F32,
    /// Rounded to bf16 (see [`crate::kernels::transpose_keys_bf16`]): for models whose weights
    /// are narrower than f32, where the CPU multiplies bf16 pairs natively.
    Bf16,
}

/// A prefix's keys (transposed per head, in tiles) and values (per head), per layer.
#[derive(Debug)]
enum PrefixKv {
    F32(Vec<(Vec<f32>, Vec<f32>)>),
    /// With the keys' tile norms ([`crate::kernels::key_norms_bf16`]).
    Bf16(Vec<(Vec<u16>, Vec<u16>, Vec<f32>)>),
}

/// The system prompt's keys and values, shared by every conversation that starts with it.
#[derive(Debug)]
pub struct Prefix {
    tokens: Vec<i64>,
    kv: PrefixKv,
    len: usize,
    width: usize,
    /// Positions per row of transposed keys (the length rounded up to [`KEY_TILE`]).
    stride: usize,
}

impl Drop for Prefix {
    fn drop(&mut self) {
        self.tokens.zeroize();
        match &mut self.kv {
            PrefixKv::F32(layers) => layers.iter_mut().for_each(|(k, v)| {
                k.zeroize();
                v.zeroize();
            }),
            PrefixKv::Bf16(layers) => layers.iter_mut().for_each(|(k, v, norms)| {
                k.zeroize();
                v.zeroize();
                norms.zeroize();
            }),
        }
    }
}

impl Prefix {
    /// The tokens it holds.
    pub fn tokens(&self) -> &[i64] {
        &self.tokens
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The precision its keys and values are kept in.
    pub fn precision(&self) -> KvPrecision {
        match self.kv {
            PrefixKv::F32(_) => KvPrecision::F32,
            PrefixKv::Bf16(_) => KvPrecision::Bf16,
        }
    }

    fn layers(&self) -> usize {
        match &self.kv {
            PrefixKv::F32(l) => l.len(),
            PrefixKv::Bf16(l) => l.len(),
        }
    }

    /// Keys (transposed per head, in tiles) and values (per head) of layer `i`.
    pub fn layer(&self, i: usize) -> (Keys<'_>, Values<'_>) {
        let (stride, positions) = (self.stride, self.len);
        match &self.kv {
            PrefixKv::F32(layers) => {
                let (kt, v) = &layers[i];
                (
                    Keys::Transposed { kt, stride },
                    Values::PerHead { v, positions },
                )
            }
            PrefixKv::Bf16(layers) => {
                let (kt, v, norms) = &layers[i];
                (
                    Keys::TransposedBf16 { kt, stride, norms },
                    Values::PerHeadBf16 { v, positions },
                )
            }
        }
    }

    /// Bytes its keys and values take.
    pub fn bytes(&self) -> u64 {
        let (positions, size) = match self.kv {
            PrefixKv::F32(_) => (self.stride + self.len, 4),
            PrefixKv::Bf16(_) => (self.stride + paired(self.len), 2),
        };
        (positions * self.width * size * self.layers()) as u64
    }
}

/// One sequence's cache: an optional shared prefix, then its own positions.
#[derive(Debug)]
pub struct KvCache {
    prefix: Option<Arc<Prefix>>,
    own: KvBlock,
}

impl KvCache {
    /// An empty cache for a model of `layers` blocks whose attention is `width` wide.
    pub fn new(layers: usize, width: usize) -> KvCache {
        KvCache {
            prefix: None,
            own: KvBlock::new(layers, width),
        }
    }

    /// A cache that starts after `prefix` (whose memory it shares).
    pub fn with_prefix(prefix: Arc<Prefix>) -> KvCache {
        let own = KvBlock::new(prefix.layers(), prefix.width);
        KvCache {
            prefix: Some(prefix),
            own,
        }
    }

    /// Positions cached, the prefix's included.
    pub fn len(&self) -> usize {
        self.prefix_len() + self.own.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Positions of the shared prefix.
    pub fn prefix_len(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| p.len())
    }

    /// Layers this cache was made for.
    pub fn layers(&self) -> usize {
        self.own.layers.len()
    }

    /// Width of a key (and of a value).
    pub fn width(&self) -> usize {
        self.own.width
    }

    /// The shared prefix, if any.
    pub fn prefix(&self) -> Option<&Arc<Prefix>> {
        self.prefix.as_ref()
    }

    /// This sequence's own positions.
    pub fn own(&self) -> &KvBlock {
        &self.own
    }

    /// Makes sure `more` positions can be appended without allocating.
    pub fn reserve(&mut self, more: usize) -> Result<(), ModelError> {
        self.own.reserve(self.own.len + more)
    }

    /// Bytes of memory this sequence's own positions take (its reservation included).
    pub fn bytes(&self) -> u64 {
        (self.own.capacity() * self.own.width * 2 * 4 * self.own.layers.len()) as u64
    }

    /// Gives back memory reserved beyond what is held.
    pub fn shrink(&mut self) {
        let keep = self.own.len * self.own.width;
        for (k, v) in &mut self.own.layers {
            for x in [k, v] {
                if x.capacity() > keep {
                    // Shrinking never needs more memory than it frees; should it fail, the
                    // reservation simply stays.
                    let _ = reallocate(x, keep);
                }
            }
        }
    }

    /// Layer `i`'s own keys and values with room for `n` more positions after those held, to be
    /// written by the step that then [`advance`](Self::advance)s.
    pub(crate) fn append_slots(&mut self, i: usize, n: usize) -> (&mut [f32], &mut [f32]) {
        let (w, len) = (self.own.width, self.own.len);
        let (k, v) = &mut self.own.layers[i];
        let end = (len + n) * w;
        // Within the reservation (the step reserved): no allocation.
        if k.len() < end {
            k.resize(end, 0.0);
        }
        if v.len() < end {
            v.resize(end, 0.0);
        }
        (&mut k[len * w..end], &mut v[len * w..end])
    }

    /// Records that `n` positions were written to every layer.
    pub(crate) fn advance(&mut self, n: usize) {
        self.own.len += n;
    }

    /// Forgets the sequence's own positions (the prefix stays).
    pub fn clear(&mut self) {
        for (k, v) in &mut self.own.layers {
            k.zeroize();
            v.zeroize();
        }
        self.own.len = 0;
    }

    /// Turns a cache that ran `tokens` from empty into a shareable prefix, laid out per head (of
    /// `n_head`) in `precision`.
    pub fn into_prefix(
        mut self,
        tokens: Vec<i64>,
        n_head: usize,
        precision: KvPrecision,
    ) -> Result<Prefix, ModelError> {
        if self.prefix.is_some() || tokens.len() != self.own.len {
            return Err(ModelError::Input(
                "a prefix is made from a cache that ran exactly its tokens from empty".into(),
            ));
        }
        let (len, width) = (self.own.len, self.own.width);
        if n_head == 0 || !width.is_multiple_of(n_head) {
            return Err(ModelError::Input(format!(
                "{n_head} heads do not divide a key of {width}"
            )));
        }
        let shape = (width, width / n_head);
        if precision == KvPrecision::Bf16 && !shape.1.is_multiple_of(2) {
            return Err(ModelError::Input(format!(
                "bf16 keys pair the dimensions of a head, and heads of {} do not pair",
                shape.1
            )));
        }
        self.shrink();
        let stride = len.div_ceil(KEY_TILE) * KEY_TILE;
        // Filled layer by layer; on an error both drop, and both wipe what they hold.
        let mut prefix = Prefix {
            tokens,
            kv: match precision {
                KvPrecision::F32 => PrefixKv::F32(Vec::new()),
                KvPrecision::Bf16 => PrefixKv::Bf16(Vec::new()),
            },
            len,
            width,
            stride,
        };
        for (k, v) in &mut self.own.layers {
            // Both allocated before either is filled, so a failure leaves nothing unwiped.
            match &mut prefix.kv {
                PrefixKv::F32(layers) => {
                    let (mut kt, mut vh) = (zeroed(width * stride)?, zeroed(len * width)?);
                    transpose_keys(k, len, shape, stride, &mut kt);
                    values_per_head(v, len, shape, &mut vh);
                    layers.push((kt, vh));
                }
                PrefixKv::Bf16(layers) => {
                    let (mut kt, mut vh) = (zeroed(width * stride)?, zeroed(paired(len) * width)?);
                    transpose_keys_bf16(k, len, shape, stride, &mut kt);
                    values_per_head_bf16(v, len, shape, &mut vh);
                    let norms = key_norms_bf16(&kt, shape.1, stride);
                    layers.push((kt, vh, norms));
                }
            }
            // The rows are not needed past here: free them as we go.
            k.zeroize();
            *k = Vec::new();
            v.zeroize();
            *v = Vec::new();
        }
        Ok(prefix)
    }
}

/// `n` zeros, or an error when the memory is not there.
fn zeroed<T: Default + Clone>(n: usize) -> Result<Vec<T>, ModelError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        ModelError::Memory("no memory for the system prompt's keys and values".into())
    })?;
    v.resize(n, T::default());
    Ok(v)
}
