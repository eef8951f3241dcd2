//! The key/value cache of one sequence: per layer, the keys and values of every position seen so
//! far, in f32 whatever the weights' dtype (the attention reads them at full precision).
//!
//! A cache may start with a shared [`Prefix`]: the system prompt's keys and values, computed once at
//! boot and read (never copied) by every conversation that starts with it. It is laid out per head
//! ([`Keys::Transposed`], [`Values::PerHead`]): the layout in which every question's attention over
//! the long prompt is a register-blocked product over contiguous memory rather than a dot product
//! per position over rows 4 KiB apart. The sequence's own
//! positions follow in its own [`KvBlock`], whose memory is reserved up front for the whole turn
//! (so a failed allocation fails that sequence before any model work, not the process later).

use std::sync::Arc;

use zeroize::Zeroize;

use super::ModelError;
use crate::kernels::{transpose_keys, values_per_head, Keys, Values, KEY_TILE};

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

/// The system prompt's keys and values, shared by every conversation that starts with it.
#[derive(Debug)]
pub struct Prefix {
    tokens: Vec<i64>,
    /// In place of the rows of keys and values, the keys transposed and the values per head (see
    /// [`Prefix::layer`]).
    kv: KvBlock,
    /// Positions per row of transposed keys (the length rounded up to [`KEY_TILE`]).
    stride: usize,
}

impl Drop for Prefix {
    fn drop(&mut self) {
        self.tokens.zeroize();
    }
}

impl Prefix {
    /// The tokens it holds.
    pub fn tokens(&self) -> &[i64] {
        &self.tokens
    }

    pub fn len(&self) -> usize {
        self.kv.len
    }

    pub fn is_empty(&self) -> bool {
        self.kv.len == 0
    }

    /// Keys (transposed per head, in tiles) and values (per head) of layer `i`.
    pub fn layer(&self, i: usize) -> (Keys<'_>, Values<'_>) {
        let (kt, v) = &self.kv.layers[i];
        (
            Keys::Transposed {
                kt,
                stride: self.stride,
            },
            Values::PerHead {
                v: &v[..self.kv.len * self.kv.width],
                positions: self.kv.len,
            },
        )
    }

    /// Bytes its keys and values take.
    pub fn bytes(&self) -> u64 {
        ((self.stride + self.kv.len) * self.kv.width * 4 * self.kv.layers.len()) as u64
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
        let own = KvBlock::new(prefix.kv.layers.len(), prefix.kv.width);
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
    /// `n_head`).
    pub fn into_prefix(mut self, tokens: Vec<i64>, n_head: usize) -> Result<Prefix, ModelError> {
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
        self.shrink();
        let stride = len.div_ceil(KEY_TILE) * KEY_TILE;
        let shape = (width, width / n_head);
        let no_memory =
            || ModelError::Memory("no memory for the system prompt's keys and values".into());
        for (k, v) in &mut self.own.layers {
            let mut kt = Vec::new();
            kt.try_reserve_exact(width * stride)
                .map_err(|_| no_memory())?;
            kt.resize(width * stride, 0.0);
            transpose_keys(k, len, shape, stride, &mut kt);
            k.zeroize();
            *k = kt;
            let mut vh = Vec::new();
            vh.try_reserve_exact(len * width).map_err(|_| no_memory())?;
            vh.resize(len * width, 0.0);
            values_per_head(v, len, shape, &mut vh);
            v.zeroize();
            *v = vh;
        }
        Ok(Prefix {
            tokens,
            kv: std::mem::take(&mut self.own),
            stride,
        })
    }
}
