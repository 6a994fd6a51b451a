//! The Gemma / Gemma 2 decoder, one implementation with the differences switched by
//! [`TextConfig`]: Gemma 2 adds post-attention and post-MLP norms, attention and final
//! logit soft-capping, `query_pre_attn_scalar` and sliding-window layers.

use burn::module::Module;
use burn::tensor::{Bool, FloatDType, Tensor, backend::Backend};

use crate::attention::{HostKv, Kernels, KeyValues, attend_host, grouped_attention};
use crate::config::{TextArch, TextConfig};
use crate::cpu::HostMatrix;
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::layers::{Linear, RmsNorm, feed_forward, from_host, to_host};
use crate::precision::Dtype;
use crate::prefix_lm::{RowLayout, prefix_lm_hidden, prefix_lm_mask};
use crate::rope::{Rope, apply_rope, rotate_host};
use crate::weights::WeightStore;

const PREFIX: &str = "language_model.model";

/// One decoder block: attention and a GeGLU feed-forward, each pre-normed.
#[derive(Module, Debug)]
pub(crate) struct DecoderLayer<B: Backend> {
    input_norm: RmsNorm<B>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    o: Linear<B>,
    /// Gemma 2 only: norm of the attention output before the residual add.
    post_attn_norm: Option<RmsNorm<B>>,
    pre_mlp_norm: RmsNorm<B>,
    /// Gemma 2 only: norm of the MLP output before the residual add.
    post_mlp_norm: Option<RmsNorm<B>>,
    gate: Linear<B>,
    up: Linear<B>,
    down: Linear<B>,
    sliding: bool,
}

/// Gemma decoder with a tied output projection.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    config: TextConfig,
    /// The tied embedding table `[vocab, hidden]`, also the output projection.
    embed: Linear<B>,
    layers: Vec<DecoderLayer<B>>,
    norm: RmsNorm<B>,
    rope: Rope,
    dtype: Dtype,
}

/// The per-call inputs shared by every layer.
struct Step<'a, B: Backend> {
    inputs: Inputs<'a, B>,
    /// `None`: no cache, the keys and values of this call are all there is.
    cache: Option<&'a mut KvCache<B>>,
}

/// Rotary tables `[batch, 1, seq, head_dim]` and masks `[batch, 1, seq, keys]` (`T`
/// tables, `M` masks).
struct Tables<T, M> {
    cos: T,
    sin: T,
    full_mask: M,
    sliding_mask: Option<M>,
}

impl<T, M> Tables<T, M> {
    /// The mask of a layer with (`sliding`) or without a sliding window.
    fn mask(&self, sliding: bool) -> &M {
        match (&self.sliding_mask, sliding) {
            (Some(m), true) => m,
            _ => &self.full_mask,
        }
    }
}

/// The tables as tensors, or in host memory with every layer's q/k/v/o host weights
/// when all the attention blocks run on host weights from end to end.
enum Inputs<'a, B: Backend> {
    Backend(Tables<Tensor<B, 4>, Tensor<B, 4, Bool>>),
    Host {
        tables: Tables<Vec<f32>, Vec<bool>>,
        weights: Vec<[HostWeight<'a>; 4]>,
    },
}

impl<B: Backend> Decoder<B> {
    pub(crate) fn load(store: &WeightStore, c: &TextConfig, device: &B::Device) -> Result<Self> {
        let (h, eps) = (c.hidden_size, c.rms_norm_eps);
        let q_dim = c.num_attention_heads * c.head_dim;
        let kv_dim = c.num_key_value_heads * c.head_dim;
        let gemma2 = c.arch == TextArch::Gemma2;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let pre = format!("{PREFIX}.layers.{i}");
                let lin = |name: &str, din, dout| {
                    Linear::load(store, &format!("{pre}.{name}"), din, dout, false, device)
                };
                let norm =
                    |name: &str| RmsNorm::load(store, &format!("{pre}.{name}"), h, eps, device);
                Ok(DecoderLayer {
                    input_norm: norm("input_layernorm")?,
                    q: lin("self_attn.q_proj", h, q_dim)?,
                    k: lin("self_attn.k_proj", h, kv_dim)?,
                    v: lin("self_attn.v_proj", h, kv_dim)?,
                    o: lin("self_attn.o_proj", q_dim, h)?,
                    // Gemma names its pre-MLP norm `post_attention_layernorm`; Gemma 2
                    // uses that name for a true post-attention norm.
                    post_attn_norm: if gemma2 {
                        Some(norm("post_attention_layernorm")?)
                    } else {
                        None
                    },
                    pre_mlp_norm: if gemma2 {
                        norm("pre_feedforward_layernorm")?
                    } else {
                        norm("post_attention_layernorm")?
                    },
                    post_mlp_norm: if gemma2 {
                        Some(norm("post_feedforward_layernorm")?)
                    } else {
                        None
                    },
                    gate: lin("mlp.gate_proj", h, c.intermediate_size)?,
                    up: lin("mlp.up_proj", h, c.intermediate_size)?,
                    down: lin("mlp.down_proj", c.intermediate_size, h)?,
                    sliding: c.is_sliding(i),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Decoder {
            config: c.clone(),
            embed: Linear::load(
                store,
                &format!("{PREFIX}.embed_tokens"),
                h,
                c.vocab_size,
                false,
                device,
            )?,
            layers,
            norm: RmsNorm::load(store, &format!("{PREFIX}.norm"), h, eps, device)?,
            dtype: store.dtype(),
            rope: Rope::new(c.head_dim, c.rope_theta),
        })
    }

    /// The decoder's configuration.
    pub fn config(&self) -> &TextConfig {
        &self.config
    }

    /// Token embeddings `[batch, seq, hidden]`, scaled by `sqrt(hidden)` as Gemma does
    /// for text tokens (image features are not scaled).
    pub fn embed(&self, ids: &[Vec<u32>], device: &B::Device) -> Tensor<B, 3> {
        let b = ids.len();
        let s = ids.first().map_or(0, Vec::len);
        let hidden = self.config.hidden_size;
        // The reference rounds the scale to the compute dtype; so does burn, converting
        // the scalar to the tensor's element type.
        let scale = (hidden as f32).sqrt();
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        (self.embed.rows(&flat, device) * scale).reshape([b, s, hidden])
    }

    /// Run the decoder over `x` `[batch, seq, hidden]`, appending to `cache`, and return
    /// the final-normed hidden states.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rows: &[RowLayout],
        positions: &[Vec<usize>],
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        self.run(x, rows, positions, Some(cache))
    }

    /// [`Decoder::forward`] over a whole sequence with no cache (training, and logits at
    /// every position): keys and values are used as computed.
    pub fn forward_uncached(
        &self,
        x: Tensor<B, 3>,
        rows: &[RowLayout],
        positions: &[Vec<usize>],
    ) -> Tensor<B, 3> {
        self.run(x, rows, positions, None)
    }

    fn run(
        &self,
        x: Tensor<B, 3>,
        rows: &[RowLayout],
        positions: &[Vec<usize>],
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let device = x.device();
        let q_len = x.dims()[1];
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let kv_len = offset + q_len;
        let window = self
            .config
            .sliding_window
            .filter(|_| self.layers.iter().any(|l| l.sliding));
        let host: Option<Vec<_>> = self
            .layers
            .iter()
            .map(DecoderLayer::host_attention_weights)
            .collect();
        let inputs = match host {
            Some(weights) => {
                let (cos, sin) = self.rope.host_tables(positions);
                let mask = |w| prefix_lm_hidden(rows, offset, q_len, kv_len, w);
                Inputs::Host {
                    tables: Tables {
                        cos,
                        sin,
                        full_mask: mask(None),
                        sliding_mask: window.map(|w| mask(Some(w))),
                    },
                    weights,
                }
            }
            None => {
                let (cos, sin) = self.rope.tables::<B>(positions, &device, x.dtype());
                let mask = |w| prefix_lm_mask::<B>(rows, offset, q_len, kv_len, w, &device);
                Inputs::Backend(Tables {
                    cos,
                    sin,
                    full_mask: mask(None),
                    sliding_mask: window.map(|w| mask(Some(w))),
                })
            }
        };
        let mut step = Step {
            inputs,
            cache: cache.take(),
        };
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, i, &self.config, &mut step);
        }
        if let Some(cache) = step.cache.as_deref_mut() {
            cache.advance(q_len);
        }
        self.norm.forward(x)
    }

    /// Every layer's projections with their names (`q`, `k`, `v`, `o`, `gate`, `up`, `down`).
    pub(crate) fn projections(&self) -> Vec<(usize, &'static str, &Linear<B>)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                [
                    ("q", &l.q),
                    ("k", &l.k),
                    ("v", &l.v),
                    ("o", &l.o),
                    ("gate", &l.gate),
                    ("up", &l.up),
                    ("down", &l.down),
                ]
                .map(|(name, lin)| (i, name, lin))
            })
            .collect()
    }

    /// The decoder with `f(layer, name, projection)` applied to every projection.
    pub(crate) fn try_map_projections(
        self,
        mut f: impl FnMut(usize, &'static str, Linear<B>) -> Result<Linear<B>>,
    ) -> Result<Self> {
        let layers = self
            .layers
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                Ok(DecoderLayer {
                    q: f(i, "q", l.q)?,
                    k: f(i, "k", l.k)?,
                    v: f(i, "v", l.v)?,
                    o: f(i, "o", l.o)?,
                    gate: f(i, "gate", l.gate)?,
                    up: f(i, "up", l.up)?,
                    down: f(i, "down", l.down)?,
                    ..l
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Decoder { layers, ..self })
    }

    /// The decoder with `f` applied to every linear layer, the tied embedding included.
    pub(crate) fn try_map_linears(
        self,
        f: &mut impl FnMut(Linear<B>) -> Result<Linear<B>>,
    ) -> Result<Self> {
        let embed = f(self.embed)?;
        Decoder { embed, ..self }.try_map_projections(|_, _, l| f(l))
    }

    /// Where the layers' attention runs (all layers load their weights alike).
    pub(crate) fn attention_kernels(&self) -> Kernels {
        self.layers
            .first()
            .map_or(Kernels::Backend, |l| l.q.attention_kernels())
    }

    /// The compute dtype of weights and activations.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// f32 logits `[batch, seq, vocab]` from final hidden states, through the tied
    /// embedding and the final soft cap.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let logits = self.embed.forward(hidden).cast(FloatDType::F32);
        match self.config.final_logit_softcapping {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }
}

impl<B: Backend> DecoderLayer<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        index: usize,
        c: &TextConfig,
        step: &mut Step<'_, B>,
    ) -> Tensor<B, 3> {
        let normed = self.input_norm.forward(x.clone());
        let Step { inputs, cache } = step;
        let cache = cache.as_deref_mut();
        let attn = match inputs {
            Inputs::Backend(t) => {
                let mask = t.mask(self.sliding);
                self.attention(normed, index, c, (&t.cos, &t.sin), mask, cache)
            }
            Inputs::Host { tables: t, weights } => {
                let (tables, mask) = ((&t.cos[..], &t.sin[..]), t.mask(self.sliding));
                attention_on_host(normed, index, c, weights[index], tables, mask, cache)
            }
        };
        let attn = match &self.post_attn_norm {
            Some(n) => n.forward(attn),
            None => attn,
        };
        let h = x + attn;
        let m = self.pre_mlp_norm.forward(h.clone());
        let mlp = feed_forward(m, &self.gate, Some(&self.up), &self.down);
        let mlp = match &self.post_mlp_norm {
            Some(n) => n.forward(mlp),
            None => mlp,
        };
        h + mlp
    }

    /// The q/k/v/o host weights and biases, when the whole attention block has them
    /// without adapters.
    fn host_attention_weights(&self) -> Option<[HostWeight<'_>; 4]> {
        Some([
            self.q.host()?,
            self.k.host()?,
            self.v.host()?,
            self.o.host()?,
        ])
    }

    /// The attention block on backend tensors (or with host products and host
    /// attention between backend tensors).
    fn attention(
        &self,
        normed: Tensor<B, 3>,
        index: usize,
        c: &TextConfig,
        (cos, sin): (&Tensor<B, 4>, &Tensor<B, 4>),
        mask: &Tensor<B, 4, Bool>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [b, s, _] = normed.dims();
        let (heads, kv_heads, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let split = |t: Tensor<B, 3>, n: usize| t.reshape([b, s, n, hd]).swap_dims(1, 2);
        let q = apply_rope(split(self.q.forward(normed.clone()), heads), cos, sin);
        let k = apply_rope(split(self.k.forward(normed.clone()), kv_heads), cos, sin);
        let v = split(self.v.forward(normed), kv_heads);
        let kv = match cache {
            Some(cache) => cache.append(index, k, v),
            None => KeyValues::Tensors { k, v },
        };
        let scale = c.query_pre_attn_scalar.powf(-0.5);
        let softcap = c.attn_logit_softcapping;
        let kernels = self.q.attention_kernels();
        let attn = grouped_attention(q, kv, Some(mask), scale, softcap, kernels);
        self.o
            .forward(attn.swap_dims(1, 2).reshape([b, s, heads * hd]))
    }
}

/// The attention block in host memory, from the normed input to the output
/// projection: one read of the activations, the products, the rotary embedding,
/// attention over the host cache, one tensor back, for a layer with host weights
/// `[q, k, v, o]` ([`DecoderLayer::host_attention_weights`]).
#[allow(clippy::too_many_arguments)]
fn attention_on_host<B: Backend>(
    normed: Tensor<B, 3>,
    index: usize,
    c: &TextConfig,
    [wq, wk, wv, wo]: [HostWeight<'_>; 4],
    (cos, sin): (&[f32], &[f32]),
    mask: &[bool],
    cache: Option<&mut KvCache<B>>,
) -> Tensor<B, 3> {
    let [b, s, hidden] = normed.dims();
    let (heads, kv_heads, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let (x, _, device) = to_host(normed);
    let project = |(w, bias): HostWeight<'_>, x: &[f32]| w.matmul_t(x, b * s, bias);
    let (mut q, mut k) = (project(wq, &x), project(wk, &x));
    rotate_host(&mut q, cos, sin, hd);
    rotate_host(&mut k, cos, sin, hd);
    let q = swap_middle(&q, [b, s, heads, hd]);
    let k = swap_middle(&k, [b, s, kv_heads, hd]);
    let v = swap_middle(&project(wv, &x), [b, s, kv_heads, hd]);
    let scale = c.query_pre_attn_scalar.powf(-0.5);
    let softcap = c.attn_logit_softcapping;
    let dims = [b, heads, s, hd];
    let attend = |kv| attend_host(&q, dims, kv, Some(mask), scale, softcap);
    let out = match cache {
        None => attend(HostKv::Plain {
            k: &k,
            v: &v,
            kv_heads,
        }),
        Some(cache) => match cache.append_host(index, k, v, [b, kv_heads, s, hd], &device) {
            KeyValues::Host { cache, len } => attend(HostKv::Cache { cache, len }),
            KeyValues::Tensors { k, v } => {
                let (k, v) = (to_host(k).0, to_host(v).0);
                attend(HostKv::Plain {
                    k: &k,
                    v: &v,
                    kv_heads,
                })
            }
        },
    };
    let y = project(wo, &swap_middle(&out, [b, heads, s, hd]));
    from_host(y, [b, s, hidden], &device)
}

/// A host weight matrix and its bias.
type HostWeight<'a> = (&'a HostMatrix, Option<&'a [f32]>);

/// `[b, p, q, d]` to `[b, q, p, d]`, row-major: heads first (`[b, s, heads, d]` to
/// `[b, heads, s, d]`) and back.
fn swap_middle(x: &[f32], [b, p, q, d]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for bi in 0..b {
        for pi in 0..p {
            for qi in 0..q {
                let from = ((bi * p + pi) * q + qi) * d;
                let to = ((bi * q + qi) * p + pi) * d;
                out[to..to + d].copy_from_slice(&x[from..from + d]);
            }
        }
    }
    out
}
