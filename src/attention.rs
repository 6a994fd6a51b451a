//! Scaled dot-product attention with grouped key/value heads, in f32 and in query-row
//! blocks of bounded size: through the backend, or in host memory beside host weights.

use burn::tensor::{
    Bool, FloatDType, Tensor, TensorData, backend::Backend, module::attention,
    ops::AttentionModuleOptions,
};

use crate::cpu::{self, AttentionShape};
use crate::layers::to_host;

/// Where attention runs: the backend's kernels, or the crate's CPU kernels (layers with
/// host weights, whose activations pass through host memory anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernels {
    Backend,
    Host,
}

/// The keys and values one attention call reads: tensors, or a layer of a host KV
/// cache (already packed for the CPU kernels) up to `len` positions.
pub(crate) enum KeyValues<'a, B: Backend> {
    Tensors {
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    },
    Host {
        cache: &'a cpu::PackedKv,
        len: usize,
    },
}

/// Scaled dot-product attention with grouped key/value heads; `mask` is `true` where
/// attention is not allowed (`None`: every key visible).
///
/// The `heads / kv_heads` query heads that share a key/value head are folded into the
/// sequence axis, so keys and values are used as they are, never repeated. Scores and
/// softmax run in f32 whatever the compute dtype, as the reference keeps them.
pub(crate) fn grouped_attention<B: Backend>(
    q: Tensor<B, 4>,
    kv: KeyValues<'_, B>,
    mask: Option<&Tensor<B, 4, Bool>>,
    scale: f64,
    softcap: Option<f64>,
    kernels: Kernels,
) -> Tensor<B, 4> {
    let (k, v) = match kv {
        KeyValues::Tensors { k, v } if kernels == Kernels::Backend => (k, v),
        kv => return host_attention(q, kv, mask, scale, softcap),
    };
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

/// Keys and values in host memory for [`attend_host`]: plain `[batch, kv_heads, keys,
/// d]` row-major, or the first `len` positions of a host cache layer.
pub(crate) enum HostKv<'a> {
    Plain {
        k: &'a [f32],
        v: &'a [f32],
        kv_heads: usize,
    },
    Cache {
        cache: &'a cpu::PackedKv,
        len: usize,
    },
}

/// Grouped attention in host memory: `q` `[batch, heads, s, d]` row-major, `mask`
/// `[batch, s, keys]` (`true`: hidden); the output in `q`'s layout.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_host(
    q: &[f32],
    [b, heads, s, d]: [usize; 4],
    kv: HostKv<'_>,
    mask: Option<&[bool]>,
    scale: f64,
    softcap: Option<f64>,
) -> Vec<f32> {
    let (scale, softcap) = (scale as f32, softcap.map(|c| c as f32));
    let shape = |kv_heads: usize, keys: usize| AttentionShape {
        batch: b,
        heads: kv_heads,
        rows: heads / kv_heads * s,
        keys,
        d,
        mask_rows: s,
    };
    match kv {
        HostKv::Plain { k, v, kv_heads } => {
            let keys = k.len() / (b * kv_heads * d).max(1);
            let isa = cpu::Isa::detect();
            cpu::attention(isa, q, k, v, mask, shape(kv_heads, keys), scale, softcap)
        }
        HostKv::Cache { cache, len } => {
            let shape = shape(cache.heads() / b.max(1), len);
            cpu::cached_attention(q, cache, mask, shape, scale, softcap)
        }
    }
}

/// A bool tensor of a CPU backend in host memory.
pub(crate) fn mask_to_host<B: Backend>(mask: &Tensor<B, 4, Bool>) -> Vec<bool> {
    match mask.clone().into_data().to_vec::<bool>() {
        Ok(m) => m,
        Err(e) => unreachable!("a bool tensor reads back as bool: {e:?}"),
    }
}

/// `grouped_attention` by the CPU kernels: the query (and keys and values, unless they
/// come from a host cache) read into host memory once, the result written back as one
/// tensor (f32 activations, as host weights require).
fn host_attention<B: Backend>(
    q: Tensor<B, 4>,
    kv: KeyValues<'_, B>,
    mask: Option<&Tensor<B, 4, Bool>>,
    scale: f64,
    softcap: Option<f64>,
) -> Tensor<B, 4> {
    let dims = q.dims();
    let device = q.device();
    let mask = mask.map(mask_to_host);
    let q = to_host(q).0;
    let out = match kv {
        KeyValues::Tensors { k, v } => {
            let kv_heads = k.dims()[1];
            let (k, v) = (to_host(k).0, to_host(v).0);
            let plain = HostKv::Plain {
                k: &k,
                v: &v,
                kv_heads,
            };
            attend_host(&q, dims, plain, mask.as_deref(), scale, softcap)
        }
        KeyValues::Host { cache, len } => {
            let cached = HostKv::Cache { cache, len };
            attend_host(&q, dims, cached, mask.as_deref(), scale, softcap)
        }
    };
    Tensor::from_data(TensorData::new(out, dims), &device)
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

    use crate::prefix_lm::{RowLayout, prefix_lm_mask};

    type B = burn::backend::Flex;

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
}
