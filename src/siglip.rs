//! The SigLIP vision tower: patch embedding, learned positions, a pre-LN transformer
//! encoder and a final LayerNorm. PaliGemma uses no pooling head.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

use crate::attention::{KeyValues, grouped_attention};
use crate::config::VisionConfig;
use crate::error::Result;
use crate::layers::{LayerNorm, Linear, feed_forward};
use crate::weights::WeightStore;

const PREFIX: &str = "vision_tower.vision_model";

/// One pre-LN transformer block.
#[derive(Module, Debug)]
pub(crate) struct EncoderLayer<B: Backend> {
    ln1: LayerNorm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    out: Linear<B>,
    ln2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

/// SigLIP image encoder.
#[derive(Module, Debug)]
pub struct VisionTower<B: Backend> {
    config: VisionConfig,
    /// The patch convolution as a linear map over flattened `(channel, row, col)` patches.
    patch_embed: Linear<B>,
    positions: Param<Tensor<B, 2>>,
    layers: Vec<EncoderLayer<B>>,
    post_ln: LayerNorm<B>,
}

impl<B: Backend> VisionTower<B> {
    pub(crate) fn load(store: &WeightStore, c: &VisionConfig, device: &B::Device) -> Result<Self> {
        let (h, p, ch) = (c.hidden_size, c.patch_size, c.num_channels);
        let conv: Tensor<B, 4> = store.tensor(
            &format!("{PREFIX}.embeddings.patch_embedding.weight"),
            [h, ch, p, p],
            device,
        )?;
        let conv_bias = store.tensor(
            &format!("{PREFIX}.embeddings.patch_embedding.bias"),
            [h],
            device,
        )?;
        let patch_embed = Linear::new(conv.reshape([h, ch * p * p]), Some(conv_bias));
        let positions: Tensor<B, 2> = store.tensor(
            &format!("{PREFIX}.embeddings.position_embedding.weight"),
            [c.num_patches(), h],
            device,
        )?;
        let eps = c.layer_norm_eps;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let pre = format!("{PREFIX}.encoder.layers.{i}");
                let lin = |name: &str, din, dout| {
                    Linear::load(store, &format!("{pre}.{name}"), din, dout, true, device)
                };
                Ok(EncoderLayer {
                    ln1: LayerNorm::load(store, &format!("{pre}.layer_norm1"), h, eps, device)?,
                    q: lin("self_attn.q_proj", h, h)?,
                    k: lin("self_attn.k_proj", h, h)?,
                    v: lin("self_attn.v_proj", h, h)?,
                    out: lin("self_attn.out_proj", h, h)?,
                    ln2: LayerNorm::load(store, &format!("{pre}.layer_norm2"), h, eps, device)?,
                    fc1: lin("mlp.fc1", h, c.intermediate_size)?,
                    fc2: lin("mlp.fc2", c.intermediate_size, h)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let post_ln = LayerNorm::load(store, &format!("{PREFIX}.post_layernorm"), h, eps, device)?;
        Ok(VisionTower {
            config: c.clone(),
            patch_embed,
            positions: Param::from_tensor(positions),
            layers,
            post_ln,
        })
    }

    /// The tower with `f` applied to every linear layer.
    pub(crate) fn try_map_linears(
        self,
        f: &mut impl FnMut(Linear<B>) -> Result<Linear<B>>,
    ) -> Result<Self> {
        let layers = self
            .layers
            .into_iter()
            .map(|l| {
                Ok(EncoderLayer {
                    q: f(l.q)?,
                    k: f(l.k)?,
                    v: f(l.v)?,
                    out: f(l.out)?,
                    fc1: f(l.fc1)?,
                    fc2: f(l.fc2)?,
                    ..l
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(VisionTower {
            patch_embed: f(self.patch_embed)?,
            layers,
            ..self
        })
    }

    /// Encode normalised pixels `[batch, 3, size, size]` into `[batch, patches, hidden]`.
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        let c = &self.config;
        let [b, ch, height, width] = pixels.dims();
        // Pixels arrive in f32; the tower runs in the weights' dtype.
        let positions = self.positions.val();
        let pixels = pixels.cast(positions.dtype());
        let p = c.patch_size;
        let (gh, gw) = (height / p, width / p);
        // Non-overlapping patches flattened in the conv weight's (channel, row, col)
        // order, numbered row-major over the grid like the conv output.
        let patches = pixels
            .reshape([b, ch, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, gh * gw, ch * p * p]);
        let mut x = self.patch_embed.forward(patches) + positions.unsqueeze::<3>();
        for layer in &self.layers {
            x = layer.forward(x, c.num_attention_heads);
        }
        self.post_ln.forward(x)
    }
}

impl<B: Backend> EncoderLayer<B> {
    fn forward(&self, x: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
        let [b, n, h] = x.dims();
        let hd = h / heads;
        let normed = self.ln1.forward(x.clone());
        let split = |t: Tensor<B, 3>| t.reshape([b, n, heads, hd]).swap_dims(1, 2);
        let q = split(self.q.forward(normed.clone()));
        let k = split(self.k.forward(normed.clone()));
        let v = split(self.v.forward(normed));
        let scale = (hd as f64).powf(-0.5);
        let kv = KeyValues::Tensors { k, v };
        let attn = grouped_attention(q, kv, None, scale, None, self.q.attention_kernels());
        let attn = attn.swap_dims(1, 2).reshape([b, n, h]);
        let x = x + self.out.forward(attn);
        let mlp = feed_forward(self.ln2.forward(x.clone()), &self.fc1, None, &self.fc2);
        x + mlp
    }
}
