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

/// Rows of one cache to copy into a new one by [`KvCache::gather`].
pub(crate) struct CacheRows<'a, B: Backend> {
    /// The source cache.
    pub cache: &'a KvCache<B>,
    /// Its rows to keep, in order.
    pub rows: &'a [usize],
    /// How far right (positive) or left (negative) every position moves.
    pub shift: isize,
}

impl<B: Backend> KvCache<B> {
    /// A new cache of `len` filled positions and room for `capacity`, holding the
    /// chosen rows of each source one after another, every source's positions moved by
    /// its shift. Positions shifted out on the left are dropped; new positions on the
    /// left are zeros (callers mark them as padding).
    pub(crate) fn gather(sources: &[CacheRows<'_, B>], len: usize, capacity: usize) -> Self {
        let batch: usize = sources.iter().map(|s| s.rows.len()).sum();
        let layers = sources.first().map_or(0, |s| s.cache.layers.len());
        let layers = (0..layers)
            .map(|layer| {
                let gather = |pick: fn(&LayerCache<B>) -> Option<&Tensor<B, 4>>| {
                    let mut out: Option<Tensor<B, 4>> = None;
                    let mut row = 0;
                    for source in sources {
                        let Some(t) = pick(&source.cache.layers[layer]) else {
                            continue;
                        };
                        let [b, h, _, d] = t.dims();
                        let dest = out.take().unwrap_or_else(|| {
                            Tensor::zeros([batch, h, capacity, d], (&t.device(), t.dtype()))
                        });
                        let from = source.shift.min(0).unsigned_abs();
                        let to = source.shift.max(0).unsigned_abs();
                        let end = source.cache.len;
                        let r = source.rows.len();
                        if end <= from || r == 0 {
                            out = Some(dest);
                            row += r;
                            continue;
                        }
                        let mut piece = t.clone();
                        if source.rows.len() != b
                            || source.rows.iter().enumerate().any(|(i, &j)| i != j)
                        {
                            let ids: Vec<i64> = source.rows.iter().map(|&i| i as i64).collect();
                            let ids = Tensor::<B, 1, burn::tensor::Int>::from_data(
                                burn::tensor::TensorData::new(ids, [r]),
                                &t.device(),
                            );
                            piece = piece.select(0, ids);
                        }
                        let piece = piece.slice([0..r, 0..h, from..end, 0..d]);
                        let n = end - from;
                        out =
                            Some(dest.slice_assign([row..row + r, 0..h, to..to + n, 0..d], piece));
                        row += r;
                    }
                    out
                };
                LayerCache {
                    k: gather(|l| l.k.as_ref()),
                    v: gather(|l| l.v.as_ref()),
                }
            })
            .collect();
        KvCache {
            layers,
            len,
            capacity,
        }
    }
}
