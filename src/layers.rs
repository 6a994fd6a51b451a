//! Small building blocks shared by the vision tower and the decoder.

use std::sync::Arc;

use burn::tensor::{FloatDType, Int, Tensor, TensorData, TensorPrimitive, backend::Backend};

use crate::cpu::{self, HostMatrix};
use crate::error::Result;
use crate::weights::WeightStore;

/// A dense layer holding the checkpoint's `[out, in]` weight; it multiplies by a
/// transposed view, so loading needs no copy and the tied `lm_head` can share storage.
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    inner: Weight<B>,
}

/// Where a layer's weight and bias live: backend tensors, or host memory with the
/// weight in bf16/int8 ([`WeightFormat`](crate::WeightFormat)).
#[derive(Debug, Clone)]
enum Weight<B: Backend> {
    Tensor(Tensor<B, 2>, Option<Tensor<B, 1>>),
    Host(Arc<HostMatrix>, Option<Arc<[f32]>>),
}

impl<B: Backend> Linear<B> {
    /// Wrap an `[out, in]` weight.
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Linear {
            inner: Weight::Tensor(weight, bias),
        }
    }

    /// Load `{prefix}.weight` (and `{prefix}.bias` when `bias` is set).
    pub(crate) fn load(
        store: &WeightStore,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        device: &B::Device,
    ) -> Result<Self> {
        let weight = format!("{prefix}.weight");
        let bias_name = format!("{prefix}.bias");
        let inner = if store.format().is_host() {
            let bias = match bias {
                true => Some(store.values_f32(&bias_name, &[d_out])?.into()),
                false => None,
            };
            Weight::Host(Arc::new(store.host_matrix(&weight, d_out, d_in)?), bias)
        } else {
            let bias = match bias {
                true => Some(store.tensor::<B, 1>(&bias_name, [d_out], device)?),
                false => None,
            };
            Weight::Tensor(store.tensor::<B, 2>(&weight, [d_out, d_in], device)?, bias)
        };
        Ok(Linear { inner })
    }

    /// `x @ W^T + b` over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.inner {
            Weight::Tensor(w, bias) => {
                let y = matmul_transposed(x, w);
                match bias {
                    Some(b) => y + b.clone().unsqueeze::<D>(),
                    None => y,
                }
            }
            Weight::Host(w, bias) => {
                let (x, mut dims, device) = to_host(x);
                let y = w.matmul_t(&x, x.len() / w.cols().max(1), bias.as_deref());
                dims[D - 1] = w.rows();
                from_host(y, dims, &device)
            }
        }
    }

    /// Rows `ids` of the `[out, in]` weight as `[ids.len(), in]`: an embedding lookup,
    /// for the decoder's tied table (looked up by token, multiplied for the logits).
    pub fn rows(&self, ids: &[u32], device: &B::Device) -> Tensor<B, 2> {
        match &self.inner {
            Weight::Tensor(w, _) => {
                let idx: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
                let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [ids.len()]), device);
                w.clone().select(0, idx)
            }
            Weight::Host(w, _) => {
                let mut out = vec![0f32; ids.len() * w.cols()];
                for (row, &id) in out.chunks_mut(w.cols().max(1)).zip(ids) {
                    w.row_into(id as usize, row);
                }
                from_host(out, [ids.len(), w.cols()], device)
            }
        }
    }

    /// The host weight and bias, when this layer has them.
    fn host(&self) -> Option<(&HostMatrix, Option<&[f32]>)> {
        match &self.inner {
            Weight::Host(w, bias) => Some((w, bias.as_deref())),
            Weight::Tensor(..) => None,
        }
    }
}

/// The feed-forward block: `last(gelu_tanh(first(x)) * up(x))` (Gemma's GeGLU) or
/// `last(gelu_tanh(first(x)))` (SigLIP, `up` = `None`).
///
/// With host weights the whole block runs in host memory: one read of the activations,
/// the products and the GELU on all cores, one tensor back.
pub fn feed_forward<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    first: &Linear<B>,
    up: Option<&Linear<B>>,
    last: &Linear<B>,
) -> Tensor<B, D> {
    let up_host = up.map(Linear::host);
    if let (Some((w1, b1)), Some((w2, b2)), None | Some(Some(_))) =
        (first.host(), last.host(), up_host)
    {
        let (x, mut dims, device) = to_host(x);
        let rows = x.len() / w1.cols().max(1);
        let mut h = w1.matmul_t(&x, rows, b1);
        let u = up_host.flatten().map(|(w, b)| w.matmul_t(&x, rows, b));
        cpu::gelu_tanh_mul(&mut h, u.as_deref());
        let y = w2.matmul_t(&h, rows, b2);
        dims[D - 1] = w2.rows();
        return from_host(y, dims, &device);
    }
    let h = match up {
        Some(up) => gelu_tanh(first.forward(x.clone())) * up.forward(x),
        None => gelu_tanh(first.forward(x)),
    };
    last.forward(h)
}

/// A CPU backend tensor's values in f32 (one copy), its shape and device.
fn to_host<B: Backend, const D: usize>(x: Tensor<B, D>) -> (Vec<f32>, [usize; D], B::Device) {
    let (dims, device) = (x.dims(), x.device());
    // Host weights are only loaded with f32 activations, so the conversion is a no-op.
    let values = x
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data after conversion to f32");
    (values, dims, device)
}

fn from_host<B: Backend, const D: usize>(
    values: Vec<f32>,
    dims: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, dims), device)
}

/// `x @ W^T` for `x` `[..., in]` and `W` `[out, in]`.
///
/// The leading dimensions are flattened so the product is one 2-D matmul against a
/// transposed view of `W`: CPU backends then stream the weight as stored, while a
/// batched (3-D) product would first copy the whole weight into a contiguous buffer.
pub fn matmul_transposed<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: &Tensor<B, 2>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product();
    let y = x.reshape([rows, d_in]).matmul(w.clone().transpose());
    dims[D - 1] = w.dims()[0];
    y.reshape(dims)
}

/// LayerNorm with affine weight and bias (SigLIP).
#[derive(Debug, Clone)]
pub struct LayerNorm<B: Backend> {
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    pub(crate) fn load(
        store: &WeightStore,
        prefix: &str,
        dim: usize,
        eps: f64,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(LayerNorm {
            gamma: store.tensor_f32(&format!("{prefix}.weight"), [dim], device)?,
            beta: store.tensor_f32(&format!("{prefix}.bias"), [dim], device)?,
            eps,
        })
    }

    /// Normalise over the last dimension (in f32, returned in `x`'s dtype).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        in_f32(x, |x| {
            Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
                x.into_primitive().tensor(),
                self.gamma.clone().into_primitive().tensor(),
                Some(self.beta.clone().into_primitive().tensor()),
                self.eps,
            )))
        })
    }
}

/// Gemma's RMSNorm: `x / rms(x) * (1 + w)`, with `1 + w` folded in at load time.
#[derive(Debug, Clone)]
pub struct RmsNorm<B: Backend> {
    scale: Tensor<B, 1>,
    eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub(crate) fn load(
        store: &WeightStore,
        name: &str,
        dim: usize,
        eps: f64,
        device: &B::Device,
    ) -> Result<Self> {
        let w: Tensor<B, 1> = store.tensor_f32(&format!("{name}.weight"), [dim], device)?;
        Ok(RmsNorm {
            scale: w + 1.0,
            eps,
        })
    }

    /// Normalise over the last dimension (in f32, returned in `x`'s dtype).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        in_f32(x, |x| {
            let mean_sq = x.clone().powi_scalar(2).mean_dim(D - 1);
            let inv = (mean_sq + self.eps).sqrt().recip();
            x * inv * self.scale.clone().unsqueeze::<D>()
        })
    }
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`), used by both towers.
///
/// Computed in f32 and rounded once, as PyTorch's kernel does for half types.
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), with the cube as products: a
    // backend's powf may go through exp/log and lose precision.
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    in_f32(x, |x| {
        let cube = x.clone() * x.clone() * x.clone();
        let inner = (x.clone() + cube * 0.044715) * SQRT_2_OVER_PI;
        x * (inner.tanh() + 1.0) * 0.5
    })
}

/// Run `f` on `x` widened to f32 and return the result in `x`'s dtype (no-op casts
/// when the model computes in f32).
pub fn in_f32<B: Backend, const D: usize, const E: usize>(
    x: Tensor<B, D>,
    f: impl FnOnce(Tensor<B, D>) -> Tensor<B, E>,
) -> Tensor<B, E> {
    let dtype = x.dtype();
    f(x.cast(FloatDType::F32)).cast(dtype)
}
