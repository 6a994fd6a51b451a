//! Rotary position embeddings, half-split (`rotate_half`) as Gemma applies them.

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};

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
        let d = 2 * self.inv_freq.len();
        let (cos, sin) = self.host_tables(positions);
        let shape = [b, 1, s, d];
        (
            Tensor::from_data(TensorData::new(cos, shape), (device, dtype)),
            Tensor::from_data(TensorData::new(sin, shape), (device, dtype)),
        )
    }

    /// [`Rope::tables`] in host memory as f32, `[batch, seq, head_dim]` row-major.
    pub(crate) fn host_tables(&self, positions: &[Vec<usize>]) -> (Vec<f32>, Vec<f32>) {
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
        (cos, sin)
    }
}

/// [`apply_rope`] in host memory: rotate every head of `x` `[rows, heads, head_dim]`
/// in place by row `r` of `cos`/`sin` `[rows, head_dim]`, with the same operations and
/// rounding (`x cos + rotate_half(x) sin`, no fused multiply-add).
pub(crate) fn rotate_host(x: &mut [f32], cos: &[f32], sin: &[f32], head_dim: usize) {
    let half = head_dim / 2;
    let rows = cos.len() / head_dim.max(1);
    let per_row = x.len() / rows.max(1);
    for (r, row) in x.chunks_mut(per_row.max(1)).enumerate() {
        let (cos, sin) = (
            &cos[r * head_dim..][..head_dim],
            &sin[r * head_dim..][..head_dim],
        );
        for head in row.chunks_mut(head_dim) {
            for i in 0..half {
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos[i] + -b * sin[i];
                head[i + half] = b * cos[i + half] + a * sin[i + half];
            }
        }
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
