//! Small building blocks shared by the vision tower and the decoder.

use burn::tensor::{FloatDType, Tensor, TensorPrimitive, backend::Backend};

use crate::error::Result;
use crate::weights::WeightStore;

/// A dense layer holding the checkpoint's `[out, in]` weight; it multiplies by a
/// transposed view, so loading needs no copy and the tied `lm_head` can share storage.
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// Wrap an `[out, in]` weight.
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Linear { weight, bias }
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
        let weight = store.tensor::<B, 2>(&format!("{prefix}.weight"), [d_out, d_in], device)?;
        let bias = if bias {
            Some(store.tensor::<B, 1>(&format!("{prefix}.bias"), [d_out], device)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// `x @ W^T + b` over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let y = matmul_transposed(x, &self.weight);
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<D>(),
            None => y,
        }
    }

    /// The `[out, in]` weight.
    pub fn weight(&self) -> &Tensor<B, 2> {
        &self.weight
    }
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
