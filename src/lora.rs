//! A low-rank adapter on a linear layer, as PEFT's LoRA: `y = W x + (alpha / r) B A x`
//! with `A` `[r, in]` and `B` `[out, r]`; merging folds `(alpha / r) B A` into `W`.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::matmul::matmul_transposed;

/// The adapter of one layer.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    /// `[r, in]`.
    a: Param<Tensor<B, 2>>,
    /// `[out, r]`.
    b: Param<Tensor<B, 2>>,
    /// `alpha / r`.
    scale: f64,
}

impl<B: Backend> Lora<B> {
    /// A fresh adapter as PEFT initialises one: `A` Kaiming-uniform (bound
    /// `1 / sqrt(in)`), `B` zero, so the layer starts out unchanged. `seed` fixes `A`.
    pub fn new(
        d_in: usize,
        d_out: usize,
        rank: usize,
        alpha: f32,
        seed: u64,
        device: &B::Device,
    ) -> Self {
        let bound = 1.0 / (d_in.max(1) as f64).sqrt();
        let mut state = seed;
        let a: Vec<f32> = (0..rank * d_in)
            .map(|_| {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                let u = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
                ((2.0 * u - 1.0) * bound) as f32
            })
            .collect();
        Self::from_weights(
            Tensor::from_data(TensorData::new(a, [rank, d_in]), device),
            Tensor::zeros([d_out, rank], device),
            alpha,
        )
    }

    /// An adapter from its weights (`A` `[r, in]`, `B` `[out, r]`) and `alpha`.
    pub fn from_weights(a: Tensor<B, 2>, b: Tensor<B, 2>, alpha: f32) -> Self {
        let rank = a.dims()[0];
        Lora {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            scale: f64::from(alpha) / rank.max(1) as f64,
        }
    }

    /// `(alpha / r) B A x` over the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let low = matmul_transposed(x, &self.a.val());
        matmul_transposed(low, &self.b.val()) * self.scale
    }

    /// `(alpha / r) B A`, `[out, in]`: what merging adds to the weight.
    pub fn delta(&self) -> Tensor<B, 2> {
        self.b.val().matmul(self.a.val()) * self.scale
    }

    /// `A` and `B`.
    pub fn weights(&self) -> (Tensor<B, 2>, Tensor<B, 2>) {
        (self.a.val(), self.b.val())
    }

    /// `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }
}
