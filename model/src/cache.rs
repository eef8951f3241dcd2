//! The key/value cache: per layer, keys and values of every position seen so far.
//!
//! A [`KvCache`] is what a conversation keeps between session turns: the next turn's tokens are run
//! after the cached prefix instead of recomputing it.

use tch::Tensor;

/// Keys and values `[n_head, len, head_dim]` per layer. Grows by concatenation; a conversation's cache
/// is dropped with its session.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model of `layers` blocks.
    pub fn new(layers: usize) -> KvCache {
        KvCache {
            layers: (0..layers).map(|_| None).collect(),
            len: 0,
        }
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Layers this cache was made for.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// Appends `k`, `v` of the new positions to layer `i`, returning the full keys and values.
    pub(crate) fn append(&mut self, i: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        let slot = &mut self.layers[i];
        let (k, v) = match slot.take() {
            None => (k.contiguous(), v.contiguous()),
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 1), Tensor::cat(&[pv, v], 1)),
        };
        *slot = Some((k.shallow_clone(), v.shallow_clone()));
        (k, v)
    }

    /// Records that `n` positions were appended to every layer.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Forgets everything (for `/reset`).
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            *l = None;
        }
        self.len = 0;
    }
}
