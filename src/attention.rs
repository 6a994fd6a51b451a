//! Decoder attention: rotary embeddings, the prefix-LM mask and the KV cache.

use burn::tensor::{
    Bool, DType, FloatDType, Tensor, TensorData, backend::Backend, module::attention,
    ops::AttentionModuleOptions,
};

/// Half-split rotary embedding tables (`rotate_half` convention).
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// Frequencies `1 / theta^(2i / head_dim)`, computed in f32 as the reference does.
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let theta = theta as f32;
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        Rope { inv_freq }
    }

    /// `(cos, sin)` tables `[batch, 1, seq, head_dim]` for per-row positions, computed
    /// in f32 and stored in `dtype` (the dtype of the queries and keys they rotate).
    pub fn tables<B: Backend>(
        &self,
        positions: &[Vec<usize>],
        device: &B::Device,
        dtype: DType,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let b = positions.len();
        let s = positions.first().map_or(0, Vec::len);
        let half = self.inv_freq.len();
        let d = 2 * half;
        let mut cos = Vec::with_capacity(b * s * d);
        let mut sin = Vec::with_capacity(b * s * d);
        for row in positions {
            for &p in row {
                let angles: Vec<f32> = self.inv_freq.iter().map(|f| p as f32 * f).collect();
                for _ in 0..2 {
                    cos.extend(angles.iter().map(|a| a.cos()));
                    sin.extend(angles.iter().map(|a| a.sin()));
                }
            }
        }
        let shape = [b, 1, s, d];
        (
            Tensor::from_data(TensorData::new(cos, shape), (device, dtype)),
            Tensor::from_data(TensorData::new(sin, shape), (device, dtype)),
        )
    }
}

/// Rotate `x` `[batch, heads, seq, head_dim]` by the tables from [`Rope::tables`].
pub fn apply_rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, s, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..s, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// What each token of a batch row is, for building attention masks.
#[derive(Debug, Clone)]
pub struct RowLayout {
    /// Left padding before the first real token.
    pub pad: usize,
    /// Tokens (after padding) in the bidirectional prefix: image, `<bos>`, prompt, `\n`.
    pub prefix: usize,
}

/// Boolean mask `[batch, 1, q_len, kv_len]`, `true` where attention is NOT allowed.
///
/// Query `i` sits at cache position `offset + i`. A key is visible when it is causal
/// (and inside the sliding window, if any) or when query and key both lie in the
/// prefix block, which stays fully visible inside itself even on sliding layers;
/// padding is never visible. Padding queries see themselves so that no row is empty
/// (an empty row would give NaN that leaks through `0 * NaN` in later layers).
pub fn prefix_lm_mask<B: Backend>(
    rows: &[RowLayout],
    offset: usize,
    q_len: usize,
    kv_len: usize,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let mut masked = Vec::with_capacity(rows.len() * q_len * kv_len);
    for row in rows {
        let prefix_end = row.pad + row.prefix;
        for i in 0..q_len {
            let q = offset + i;
            for k in 0..kv_len {
                let causal = k <= q && window.is_none_or(|w| k + w > q);
                let in_prefix =
                    (row.pad..prefix_end).contains(&q) && (row.pad..prefix_end).contains(&k);
                let visible = if q < row.pad {
                    k == q
                } else {
                    k >= row.pad && (causal || in_prefix)
                };
                masked.push(!visible);
            }
        }
    }
    Tensor::from_data(
        TensorData::new(masked, [rows.len(), 1, q_len, kv_len]),
        device,
    )
}

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

/// Scaled dot-product attention with grouped key/value heads; `mask` is `true` where
/// attention is not allowed (`None`: every key visible).
///
/// The `heads / kv_heads` query heads that share a key/value head are folded into the
/// sequence axis, so keys and values are used as they are, never repeated. Scores and
/// softmax run in f32 whatever the compute dtype, as the reference keeps them.
pub fn grouped_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<&Tensor<B, 4, Bool>>,
    scale: f64,
    softcap: Option<f64>,
) -> Tensor<B, 4> {
    let [b, heads, s, d] = q.dims();
    let kv_heads = k.dims()[1];
    let group = heads / kv_heads;
    let dtype = q.dtype();
    let f32 = |t: Tensor<B, 4>| t.cast(FloatDType::F32);
    let q = f32(q.reshape([b, kv_heads, group * s, d]));
    let mask = mask.map(|mask| {
        if group == 1 {
            mask.clone()
        } else {
            // [b, 1, s, kv] -> [b, 1, group * s, kv], the same rows for every folded head.
            let [mb, _, ms, mk] = mask.dims();
            mask.clone()
                .unsqueeze_dim::<5>(1)
                .expand([mb, group, 1, ms, mk])
                .reshape([mb, 1, group * ms, mk])
        }
    });
    let options = AttentionModuleOptions {
        scale: Some(scale),
        softcap,
        is_causal: false,
    };
    let out = blocked_attention(q, f32(k), f32(v), mask, options, SCORE_BLOCK);
    out.cast(dtype).reshape([b, heads, s, d])
}

/// Most attention scores held at once (2^25 f32 values: 128 MiB).
const SCORE_BLOCK: usize = 1 << 25;

/// Attention over `q` `[b, h, rows, d]` in query-row blocks of at most `budget` scores.
fn blocked_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    options: AttentionModuleOptions,
    budget: usize,
) -> Tensor<B, 4> {
    let [b, kv_heads, rows, d] = q.dims();
    // Query rows are independent: long sequences (SigLIP at 896 px has 4096 tokens) run
    // in row blocks so that at most SCORE_BLOCK scores exist at once, whatever the
    // backend's attention materialises.
    let kv_len = k.dims()[2];
    let block = (budget / (b * kv_heads * kv_len).max(1)).max(1);
    if rows <= block {
        attention(q, k, v, mask, None, options)
    } else {
        let parts = (0..rows)
            .step_by(block)
            .map(|start| {
                let end = (start + block).min(rows);
                let q = q.clone().slice([0..b, 0..kv_heads, start..end, 0..d]);
                let mask = mask.as_ref().map(|m| {
                    let [mb, mh, _, mk] = m.dims();
                    m.clone().slice([0..mb, 0..mh, start..end, 0..mk])
                });
                attention(q, k.clone(), v.clone(), mask, None, options)
            })
            .collect();
        Tensor::cat(parts, 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

    fn mask_rows(
        rows: &[RowLayout],
        offset: usize,
        q: usize,
        kv: usize,
        w: Option<usize>,
    ) -> Vec<bool> {
        prefix_lm_mask::<B>(rows, offset, q, kv, w, &Default::default())
            .into_data()
            .to_vec::<bool>()
            .unwrap()
    }

    #[test]
    fn row_blocks_equal_one_pass() {
        use burn::tensor::Distribution;
        let device = Default::default();
        let q = Tensor::<B, 4>::random([2, 3, 10, 8], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<B, 4>::random([2, 3, 6, 8], Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<B, 4>::random([2, 3, 6, 8], Distribution::Normal(0.0, 1.0), &device);
        let mask = prefix_lm_mask::<B>(
            &[
                RowLayout { pad: 0, prefix: 3 },
                RowLayout { pad: 2, prefix: 2 },
            ],
            0,
            10,
            6,
            Some(4),
            &device,
        )
        .expand([2, 3, 10, 6]);
        let run = |budget| {
            let options = AttentionModuleOptions {
                scale: Some(0.3),
                softcap: Some(5.0),
                is_causal: false,
            };
            blocked_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                Some(mask.clone()),
                options,
                budget,
            )
            .into_data()
            .to_vec::<f32>()
            .unwrap()
        };
        // 2 * 3 * 6 scores per query row: budget 40 gives blocks of one row.
        let (whole, blocked) = (run(usize::MAX), run(40));
        let diff = whole
            .iter()
            .zip(&blocked)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-6, "blocked attention differs by {diff}");
    }

    #[test]
    fn prefix_is_bidirectional_suffix_causal() {
        // 3 prefix tokens then 2 generated ones, no padding.
        let m = mask_rows(&[RowLayout { pad: 0, prefix: 3 }], 0, 5, 5, None);
        let visible = |q: usize, k: usize| !m[q * 5 + k];
        assert!(visible(0, 2), "prefix sees later prefix tokens");
        assert!(!visible(0, 3), "prefix does not see the suffix");
        assert!(visible(3, 0) && visible(3, 3) && !visible(3, 4));
        assert!(visible(4, 4));
    }

    #[test]
    fn sliding_window_spares_the_prefix_block() {
        let m = mask_rows(&[RowLayout { pad: 0, prefix: 4 }], 0, 6, 6, Some(2));
        let visible = |q: usize, k: usize| !m[q * 6 + k];
        assert!(
            visible(0, 3) && visible(3, 0),
            "prefix block ignores the window"
        );
        assert!(
            visible(5, 4) && visible(5, 5) && !visible(5, 3),
            "window of 2 after it"
        );
    }

    #[test]
    fn padding_is_invisible() {
        let m = mask_rows(&[RowLayout { pad: 2, prefix: 2 }], 0, 4, 4, None);
        let visible = |q: usize, k: usize| !m[q * 4 + k];
        assert!(
            visible(0, 0) && !visible(0, 1),
            "pad rows only see themselves"
        );
        assert!(!visible(2, 0) && !visible(3, 1) && visible(2, 3));
    }
}
