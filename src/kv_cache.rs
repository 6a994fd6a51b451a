//! The decoder's key/value cache: preallocated once per generation and written in place.

use burn::tensor::{DType, Tensor, backend::Backend};

use crate::attention::KeyValues;
use crate::cpu::{Isa, PackedKv};
use crate::error::{Error, Result};
use crate::layers::{from_host, to_host};

/// One layer's preallocated key/value cache, written in place.
#[derive(Debug)]
pub struct LayerCache<B: Backend> {
    k: Option<Tensor<B, 4>>,
    v: Option<Tensor<B, 4>>,
}

/// Where the cached keys and values live.
#[derive(Debug)]
enum Storage<B: Backend> {
    /// Backend tensors `[batch, kv_heads, capacity, head_dim]`.
    Backend(Vec<LayerCache<B>>),
    /// Host memory in the attention kernel's packed layout (layers with host weights,
    /// whose attention runs in host memory), `batch x kv_heads` heads per layer.
    Host {
        kv_heads: usize,
        layers: Vec<PackedKv>,
    },
}

/// Key/value caches for every decoder layer, `[batch, kv_heads, capacity, head_dim]`.
#[derive(Debug)]
pub struct KvCache<B: Backend> {
    storage: Storage<B>,
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
            storage: Storage::Backend(
                (0..layers)
                    .map(|_| LayerCache {
                        k: zeros(),
                        v: zeros(),
                    })
                    .collect(),
            ),
            len: 0,
            capacity,
        }
    }

    /// A cache in host memory, packed for the attention kernels of level `isa` (f32
    /// keys and values, as host-weight layers compute).
    pub(crate) fn host(
        layers: usize,
        batch: usize,
        kv_heads: usize,
        capacity: usize,
        head_dim: usize,
        isa: Isa,
    ) -> Self {
        let heads = batch * kv_heads;
        KvCache {
            storage: Storage::Host {
                kv_heads,
                layers: (0..layers)
                    .map(|_| PackedKv::new(isa, heads, capacity, head_dim))
                    .collect(),
            },
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
    /// `layer`, and return everything cached so far (the new entries included).
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> KeyValues<'_, B> {
        if let Storage::Backend(layers) = &mut self.storage {
            return layers[layer].append(self.len, k, v);
        }
        let (dims, device) = (k.dims(), k.device());
        self.append_host(layer, to_host(k).0, to_host(v).0, dims, &device)
    }

    /// [`KvCache::append`] from host memory: `k`/`v` `[batch, kv_heads, n, head_dim]`
    /// row-major (`dims`), written in place into a host cache, or as tensors on
    /// `device` into a backend one.
    pub(crate) fn append_host(
        &mut self,
        layer: usize,
        k: Vec<f32>,
        v: Vec<f32>,
        dims: [usize; 4],
        device: &B::Device,
    ) -> KeyValues<'_, B> {
        let start = self.len;
        match &mut self.storage {
            Storage::Host { layers, .. } => {
                let cache = &mut layers[layer];
                cache.write(start, dims[2], &k, &v);
                KeyValues::Host {
                    cache,
                    len: start + dims[2],
                }
            }
            Storage::Backend(layers) => {
                let (k, v) = (from_host(k, dims, device), from_host(v, dims, device));
                layers[layer].append(start, k, v)
            }
        }
    }
}

impl<B: Backend> LayerCache<B> {
    /// Write `k`/`v` at `start` and return views of positions `0..start + n`.
    fn append<'a>(&mut self, start: usize, k: Tensor<B, 4>, v: Tensor<B, 4>) -> KeyValues<'a, B> {
        let [b, h, n, d] = k.dims();
        let end = start + n;
        // Taking the tensors out keeps them uniquely owned, so the backend can write into
        // the existing buffer instead of copying the whole cache.
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
        let k = write(&mut self.k, k);
        let v = write(&mut self.v, v);
        KeyValues::Tensors { k, v }
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
    pub(crate) fn gather(
        sources: &[CacheRows<'_, B>],
        len: usize,
        capacity: usize,
    ) -> Result<Self> {
        let storage = match sources.first().map(|s| &s.cache.storage) {
            Some(Storage::Host { kv_heads, layers }) => {
                let hosts = sources
                    .iter()
                    .map(|s| match &s.cache.storage {
                        Storage::Host { layers, .. } => Ok(layers),
                        Storage::Backend(_) => Err(mixed_storage()),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Storage::Host {
                    kv_heads: *kv_heads,
                    layers: (0..layers.len())
                        .map(|layer| gather_host(sources, &hosts, layer, *kv_heads, capacity))
                        .collect(),
                }
            }
            Some(Storage::Backend(layers)) => {
                let backends = sources
                    .iter()
                    .map(|s| match &s.cache.storage {
                        Storage::Backend(layers) => Ok(layers),
                        Storage::Host { .. } => Err(mixed_storage()),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Storage::Backend(
                    (0..layers.len())
                        .map(|layer| LayerCache {
                            k: gather_tensors(sources, &backends, layer, capacity, |l| {
                                l.k.as_ref()
                            }),
                            v: gather_tensors(sources, &backends, layer, capacity, |l| {
                                l.v.as_ref()
                            }),
                        })
                        .collect(),
                )
            }
            None => Storage::Backend(Vec::new()),
        };
        Ok(KvCache {
            storage,
            len,
            capacity,
        })
    }
}

fn mixed_storage() -> Error {
    Error::Prompt("cannot regroup rows of host and backend KV caches into one batch".into())
}

/// Which positions of a source move where: `from..end` of the source to `to..` of the
/// new cache (`None`: nothing of it is kept).
fn moved_positions<B: Backend>(source: &CacheRows<'_, B>) -> Option<(usize, usize, usize)> {
    let from = source.shift.min(0).unsigned_abs();
    let to = source.shift.max(0).unsigned_abs();
    let end = source.cache.len;
    (end > from && !source.rows.is_empty()).then_some((from, to, end - from))
}

/// One layer of [`KvCache::gather`] for host caches.
fn gather_host<B: Backend>(
    sources: &[CacheRows<'_, B>],
    hosts: &[&Vec<PackedKv>],
    layer: usize,
    kv_heads: usize,
    capacity: usize,
) -> PackedKv {
    let batch: usize = sources.iter().map(|s| s.rows.len()).sum();
    let first = &hosts[0][layer];
    let mut out = PackedKv::new(first.isa(), batch * kv_heads, capacity, first.d());
    let mut row = 0;
    for (source, host) in sources.iter().zip(hosts) {
        if let Some((from, to, n)) = moved_positions(source) {
            for (i, &r) in source.rows.iter().enumerate() {
                for h in 0..kv_heads {
                    let (dst, src) = ((row + i) * kv_heads + h, r * kv_heads + h);
                    out.copy_positions(dst, to, &host[layer], src, from, n);
                }
            }
        }
        row += source.rows.len();
    }
    out
}

/// One tensor of one layer of [`KvCache::gather`] for backend caches.
fn gather_tensors<B: Backend>(
    sources: &[CacheRows<'_, B>],
    backends: &[&Vec<LayerCache<B>>],
    layer: usize,
    capacity: usize,
    pick: fn(&LayerCache<B>) -> Option<&Tensor<B, 4>>,
) -> Option<Tensor<B, 4>> {
    let batch: usize = sources.iter().map(|s| s.rows.len()).sum();
    let mut out: Option<Tensor<B, 4>> = None;
    let mut row = 0;
    for (source, layers) in sources.iter().zip(backends) {
        let Some(t) = pick(&layers[layer]) else {
            continue;
        };
        let [b, h, _, d] = t.dims();
        let dest = out
            .take()
            .unwrap_or_else(|| Tensor::zeros([batch, h, capacity, d], (&t.device(), t.dtype())));
        let r = source.rows.len();
        let Some((from, to, n)) = moved_positions(source) else {
            out = Some(dest);
            row += r;
            continue;
        };
        let mut piece = t.clone();
        if r != b || source.rows.iter().enumerate().any(|(i, &j)| i != j) {
            let ids: Vec<i64> = source.rows.iter().map(|&i| i as i64).collect();
            let ids = Tensor::<B, 1, burn::tensor::Int>::from_data(
                burn::tensor::TensorData::new(ids, [r]),
                &t.device(),
            );
            piece = piece.select(0, ids);
        }
        let piece = piece.slice([0..r, 0..h, from..from + n, 0..d]);
        out = Some(dest.slice_assign([row..row + r, 0..h, to..to + n, 0..d], piece));
        row += r;
    }
    out
}
