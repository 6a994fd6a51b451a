//! Small building blocks shared by the vision tower and the decoder.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::tensor::{FloatDType, Int, Tensor, TensorData, TensorPrimitive, backend::Backend};

use crate::attention::Kernels;
use crate::cpu::{self, HostMatrix};
use crate::error::Result;
use crate::lora::Lora;
use crate::matmul::matmul_transposed;
use crate::weights::WeightStore;

/// A dense layer holding the checkpoint's `[out, in]` weight; it multiplies by a
/// transposed view, so loading needs no copy and the tied `lm_head` can share storage.
///
/// The weight is either a trainable backend parameter or, for inference with
/// [`WeightFormat`](crate::WeightFormat) other than `Backend`, a matrix in host memory
/// multiplied by the crate's CPU kernels (not a parameter: it never trains).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    weight: Option<Param<Tensor<B, 2>>>,
    bias: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    host: Option<HostWeight>,
    /// A low-rank adapter added to the output (fine-tuning with LoRA).
    lora: Option<Lora<B>>,
}

/// A host-memory weight and its f32 bias.
#[derive(Debug, Clone)]
struct HostWeight {
    matrix: Arc<HostMatrix>,
    bias: Option<Arc<[f32]>>,
}

impl<B: Backend> Linear<B> {
    /// Wrap an `[out, in]` weight.
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Linear {
            weight: Some(Param::from_tensor(weight)),
            bias: bias.map(Param::from_tensor),
            host: None,
            lora: None,
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
        if store.format().is_host() {
            let bias = match bias {
                true => Some(store.values_f32(&bias_name, &[d_out])?.into()),
                false => None,
            };
            let matrix = Arc::new(store.host_matrix(&weight, d_out, d_in)?);
            return Ok(Linear {
                weight: None,
                bias: None,
                host: Some(HostWeight { matrix, bias }),
                lora: None,
            });
        }
        let bias = match bias {
            true => Some(store.tensor::<B, 1>(&bias_name, [d_out], device)?),
            false => None,
        };
        Ok(Self::new(
            store.tensor::<B, 2>(&weight, [d_out, d_in], device)?,
            bias,
        ))
    }

    /// `x @ W^T + b` over the last dimension, plus the adapter's output when there is one.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.lora {
            Some(lora) => {
                let delta = lora.forward(x.clone());
                self.base(x) + delta
            }
            None => self.base(x),
        }
    }

    /// The layer without its adapter.
    fn base<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if let Some(h) = &self.host {
            let (x, mut dims, device) = to_host(x);
            let w = &h.matrix;
            let y = w.matmul_t(&x, x.len() / w.cols().max(1), h.bias.as_deref());
            dims[D - 1] = w.rows();
            return from_host(y, dims, &device);
        }
        let y = matmul_transposed(x, &self.weight_tensor());
        match &self.bias {
            Some(b) => y + b.val().unsqueeze::<D>(),
            None => y,
        }
    }

    /// Rows `ids` of the `[out, in]` weight as `[ids.len(), in]`: an embedding lookup,
    /// for the decoder's tied table (looked up by token, multiplied for the logits).
    pub fn rows(&self, ids: &[u32], device: &B::Device) -> Tensor<B, 2> {
        if let Some(h) = &self.host {
            let w = &h.matrix;
            let mut out = vec![0f32; ids.len() * w.cols()];
            for (row, &id) in out.chunks_mut(w.cols().max(1)).zip(ids) {
                w.row_into(id as usize, row);
            }
            return from_host(out, [ids.len(), w.cols()], device);
        }
        let idx: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [ids.len()]), device);
        self.weight_tensor().select(0, idx)
    }

    /// The backend weight; every constructor sets either it or the host weight.
    fn weight_tensor(&self) -> Tensor<B, 2> {
        match &self.weight {
            Some(w) => w.val(),
            None => unreachable!("a Linear holds a backend or a host weight"),
        }
    }

    /// `[out, in]`: outputs and inputs.
    pub fn dims(&self) -> [usize; 2] {
        match &self.host {
            Some(h) => [h.matrix.rows(), h.matrix.cols()],
            None => self.weight_tensor().dims(),
        }
    }

    /// The layer with `lora` added. Over a host-memory weight the adapter runs on the
    /// backend beside the host product (inference: host weights never train).
    pub(crate) fn with_lora(self, lora: Lora<B>) -> Result<Self> {
        Ok(Linear {
            lora: Some(lora),
            ..self
        })
    }

    /// The adapter, when there is one.
    pub(crate) fn lora(&self) -> Option<&Lora<B>> {
        self.lora.as_ref()
    }

    /// The adapter folded into the weight: the same function as a plain layer. A host
    /// weight becomes an f32 host matrix `W + delta`, whatever format it had.
    pub(crate) fn merged(self) -> Self {
        match (&self.lora, &self.weight, &self.host) {
            (Some(lora), Some(w), _) => Linear {
                weight: Some(Param::from_tensor((w.val() + lora.delta()).detach())),
                lora: None,
                ..self
            },
            (Some(lora), None, Some(h)) => {
                let (rows, cols) = (h.matrix.rows(), h.matrix.cols());
                let (delta, _, _) = to_host(lora.delta());
                let mut values = h.matrix.to_f32();
                values.iter_mut().zip(&delta).for_each(|(v, d)| *v += d);
                let host = HostWeight {
                    matrix: Arc::new(HostMatrix::f32(rows, cols, values)),
                    bias: h.bias.clone(),
                };
                Linear {
                    host: Some(host),
                    lora: None,
                    ..self
                }
            }
            _ => self,
        }
    }

    /// The layer with a host weight turned into a backend parameter (f32 and int8/int4
    /// values as f32, bf16 as bf16), the same values; other layers unchanged.
    pub(crate) fn into_backend(self, device: &B::Device) -> Self {
        match self.host {
            Some(h) => Linear {
                weight: Some(Param::from_tensor(Tensor::from_data(
                    h.matrix.to_data(),
                    device,
                ))),
                bias: h
                    .bias
                    .map(|b| Param::from_tensor(from_host(b.to_vec(), [b.len()], device))),
                host: None,
                lora: self.lora,
            },
            None => self,
        }
    }

    /// Where the attention beside this projection runs: in host memory when the
    /// weights are there (its activations already are), else through the backend.
    pub(crate) fn attention_kernels(&self) -> Kernels {
        match self.host {
            Some(_) => Kernels::Host,
            None => Kernels::Backend,
        }
    }

    /// The host weight and bias, when this layer has them and no adapter (with one,
    /// the layer runs through [`Linear::forward`]).
    pub(crate) fn host(&self) -> Option<(&HostMatrix, Option<&[f32]>)> {
        match self.lora {
            Some(_) => None,
            None => self
                .host
                .as_ref()
                .map(|h| (h.matrix.as_ref(), h.bias.as_deref())),
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
pub(crate) fn to_host<B: Backend, const D: usize>(
    x: Tensor<B, D>,
) -> (Vec<f32>, [usize; D], B::Device) {
    let (dims, device) = (x.dims(), x.device());
    // Host weights are only loaded with f32 activations, so the conversion is a no-op.
    let values = x
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data after conversion to f32");
    (values, dims, device)
}

/// Host values as a tensor of shape `dims` on `device`.
pub(crate) fn from_host<B: Backend, const D: usize>(
    values: Vec<f32>,
    dims: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, dims), device)
}

/// LayerNorm with affine weight and bias (SigLIP), parameters in f32.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    gamma: Param<Tensor<B, 1>>,
    beta: Param<Tensor<B, 1>>,
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
            gamma: Param::from_tensor(store.tensor_f32(
                &format!("{prefix}.weight"),
                [dim],
                device,
            )?),
            beta: Param::from_tensor(store.tensor_f32(&format!("{prefix}.bias"), [dim], device)?),
            eps,
        })
    }

    /// Normalise over the last dimension (in f32, returned in `x`'s dtype).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        in_f32(x, |x| {
            Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
                x.into_primitive().tensor(),
                self.gamma.val().into_primitive().tensor(),
                Some(self.beta.val().into_primitive().tensor()),
                self.eps,
            )))
        })
    }
}

/// Gemma's RMSNorm: `x / rms(x) * (1 + w)`, `w` in f32 as the checkpoint stores it
/// (the parameter a fine-tune updates and saves).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    weight: Param<Tensor<B, 1>>,
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
        Ok(RmsNorm {
            weight: Param::from_tensor(store.tensor_f32(
                &format!("{name}.weight"),
                [dim],
                device,
            )?),
            eps,
        })
    }

    /// Normalise over the last dimension (in f32, returned in `x`'s dtype).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        in_f32(x, |x| {
            let mean_sq = x.clone().powi_scalar(2).mean_dim(D - 1);
            let inv = (mean_sq + self.eps).sqrt().recip();
            x * inv * (self.weight.val() + 1.0).unsqueeze::<D>()
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
