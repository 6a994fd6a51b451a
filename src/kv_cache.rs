//! The decoder's key/value cache: preallocated once per generation and written in place.

use burn::tensor::{DType, Tensor, backend::Backend};

/// One layer's preallocated key/value cache, written in place.
#[derive(Debug)]
pub struct LayerCache<B: Backend> {
    k: Option<Tensor<B, 4>>,
    v: Option<Tensor<B, 4>>,
}

/// Key/value caches for every decoder layer, `[batch, kv_heads, capacity, head_dim]`.
#[derive(Debug)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
    len: usize,
    capacity: usize,
}

impl<B: Backend> KvCache<B> {
    /// Allocate a cache for `capacity` positions of `dtype` keys and values.
    pub fn new(
        layers: usize,
        batch: usize,
        kv_heads: usize,
        capacity: usize,
        head_dim: usize,
        device: &B::Device,
        dtype: DType,
    ) -> Self {
        let shape = [batch, kv_heads, capacity, head_dim];
        let zeros = || Some(Tensor::zeros(shape, (device, dtype)));
        KvCache {
            layers: (0..layers)
                .map(|_| LayerCache {
                    k: zeros(),
                    v: zeros(),
                })
                .collect(),
            len: 0,
            capacity,
        }
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forget every position from `len` on (they are overwritten by later appends):
    /// rewinds to a shared prefix, such as the image and prompt, to decode again.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Mark `n` more positions as written (after every layer has appended them).
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Write `k`/`v` `[batch, kv_heads, n, head_dim]` at the current length for layer
    /// `layer`, and return views of everything cached so far (the new entries included).
    pub fn append(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let start = self.len;
        let [b, h, n, d] = k.dims();
        let end = start + n;
        let entry = &mut self.layers[layer];
        // Taking the tensors out keeps them uniquely owned, so the backend can write
        // into the existing buffer instead of copying the whole cache.
        let write = |slot: &mut Option<Tensor<B, 4>>, new: Tensor<B, 4>| {
            if let Some(cache) = slot.take() {
                let cache = cache.slice_assign([0..b, 0..h, start..end, 0..d], new);
                let view = cache.clone().slice([0..b, 0..h, 0..end, 0..d]);
                *slot = Some(cache);
                view
            } else {
                new
            }
        };
        let k_all = write(&mut entry.k, k);
        let v_all = write(&mut entry.v, v);
        (k_all, v_all)
    }
}
