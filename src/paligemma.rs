//! The PaliGemma network: SigLIP image features, projected into Gemma's embedding space,
//! stand in for the `<image>` placeholders of the prompt, and the decoder runs over
//! image and text with the prefix-LM mask.
//!
//! Read top to bottom: image features, prompt embeddings (the merge), forward, logits,
//! then the two calls a decoding loop needs, [`PaliGemma::prefill`] (every prompt of a
//! batch at once, left-padded) and [`PaliGemma::extend`] (one token per row against
//! the cache). The loop itself lives in `generate/`.

use burn::module::Module;
use burn::tensor::{FloatDType, Tensor, backend::Backend};

use crate::attention::Kernels;
use crate::config::Config;
use crate::cpu;
pub use crate::decode_state::DecodeState;
use crate::error::{Error, Result};
use crate::gemma::Decoder;
use crate::kv_cache::KvCache;
use crate::layers::Linear;
use crate::prefix_lm::RowLayout;
use crate::siglip::VisionTower;
use crate::weights::WeightStore;

/// Vision tower, projector and decoder, as one burn [`Module`].
#[derive(Module, Debug)]
pub struct PaliGemma<B: Backend> {
    vision: VisionTower<B>,
    projector: Linear<B>,
    decoder: Decoder<B>,
    /// Id of the `<image>` placeholder.
    image_token: u32,
    /// Image tokens per image (patches of the vision tower).
    image_tokens: usize,
}

impl<B: Backend> PaliGemma<B> {
    pub(crate) fn load(
        store: &WeightStore,
        config: &Config,
        image_token: u32,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(PaliGemma {
            vision: VisionTower::load(store, &config.vision, device)?,
            projector: Linear::load(
                store,
                "multi_modal_projector.linear",
                config.vision.hidden_size,
                config.text.hidden_size,
                true,
                device,
            )?,
            decoder: Decoder::load(store, &config.text, device)?,
            image_token,
            image_tokens: config.num_image_tokens(),
        })
    }

    /// The vision tower.
    pub fn vision_tower(&self) -> &VisionTower<B> {
        &self.vision
    }

    /// The language decoder.
    pub fn decoder(&self) -> &Decoder<B> {
        &self.decoder
    }

    /// The network with `f` applied to every linear layer.
    pub(crate) fn try_map_linears(
        self,
        mut f: impl FnMut(Linear<B>) -> Result<Linear<B>>,
    ) -> Result<Self> {
        Ok(PaliGemma {
            vision: self.vision.try_map_linears(&mut f)?,
            projector: f(self.projector)?,
            decoder: self.decoder.try_map_linears(&mut f)?,
            ..self
        })
    }

    /// The network with its decoder replaced by `f(decoder)`.
    pub(crate) fn try_map_decoder(
        self,
        f: impl FnOnce(Decoder<B>) -> Result<Decoder<B>>,
    ) -> Result<Self> {
        Ok(PaliGemma {
            decoder: f(self.decoder)?,
            ..self
        })
    }

    /// Vision tower and projector: `[batch, 3, s, s]` pixels to `[batch, tokens, hidden]`
    /// features, unscaled (as transformers 5.x and big_vision feed them to the decoder).
    pub fn image_features(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        self.projector.forward(self.vision.forward(pixels))
    }

    /// Embeddings `[1, ids.len(), hidden]` of one prompt: the features
    /// `[1, images x tokens, hidden]` of its images in place of the leading `<image>`
    /// placeholders, the scaled token embeddings after them.
    pub fn embed(&self, features: &Tensor<B, 3>, ids: &[u32]) -> Result<Tensor<B, 3>> {
        let [_, image_rows, _] = features.dims();
        let n = self.image_tokens;
        if image_rows == 0 || image_rows % n.max(1) != 0 {
            return Err(Error::Prompt(format!(
                "{image_rows} image feature rows are not whole images of {n} tokens"
            )));
        }
        if ids.len() < image_rows || ids[..image_rows].iter().any(|&i| i != self.image_token) {
            return Err(Error::Prompt(format!(
                "expected {image_rows} <image> placeholders ({} images) at the start of the prompt ids",
                image_rows / n.max(1)
            )));
        }
        if ids[image_rows..].contains(&self.image_token) {
            return Err(Error::Prompt(
                "more <image> placeholders than image features".into(),
            ));
        }
        let device = features.device();
        let text = self.decoder.embed(&[ids[image_rows..].to_vec()], &device);
        let features = features.clone().cast(text.dtype());
        Ok(Tensor::cat(vec![features, text], 1))
    }

    /// [`PaliGemma::embed`] of a prompt with `before` and `after` `pad_id` tokens around
    /// it (batch rows of different lengths).
    pub(crate) fn embed_padded(
        &self,
        features: &Tensor<B, 3>,
        ids: &[u32],
        (before, after): (usize, usize),
        pad_id: u32,
    ) -> Result<Tensor<B, 3>> {
        let merged = self.embed(features, ids)?;
        if before == 0 && after == 0 {
            return Ok(merged);
        }
        let device = features.device();
        let pad = |n: usize| self.decoder.embed(&[vec![pad_id; n]], &device);
        let mut parts = Vec::with_capacity(3);
        if before > 0 {
            parts.push(pad(before));
        }
        parts.push(merged);
        if after > 0 {
            parts.push(pad(after));
        }
        Ok(Tensor::cat(parts, 1))
    }

    /// Run the decoder over embeddings `[batch, seq, hidden]` at per-row `positions`,
    /// appending to `cache`; returns the final-normed hidden states.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rows: &[RowLayout],
        positions: &[Vec<usize>],
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        self.decoder.forward(x, rows, positions, cache)
    }

    /// f32 logits `[batch, seq, vocab]` of hidden states (tied embedding, final soft cap).
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.decoder.logits(hidden)
    }

    /// The decoder over whole sequences without a cache (training): rows laid out by
    /// `rows`, at `positions`; returns the final-normed hidden states.
    pub fn forward_uncached(
        &self,
        x: Tensor<B, 3>,
        rows: &[RowLayout],
        positions: &[Vec<usize>],
    ) -> Tensor<B, 3> {
        self.decoder.forward_uncached(x, rows, positions)
    }

    /// Logits `[1, seq, vocab]` at every position of one prompt, without a cache kept:
    /// the reference comparison point.
    pub fn forward_logits(&self, features: &Tensor<B, 3>, ids: &[u32]) -> Result<Tensor<B, 3>> {
        let x = self.embed(features, ids)?;
        let len = ids.len();
        let rows = [RowLayout {
            pad: 0,
            prefix: len,
        }];
        let hidden = self.forward_uncached(x, &rows, &[(1..=len).collect()]);
        Ok(self.logits(hidden))
    }

    /// An empty KV cache for `batch` rows of up to `capacity` positions.
    pub fn new_cache(&self, batch: usize, capacity: usize, device: &B::Device) -> KvCache<B> {
        let t = self.decoder.config();
        if self.decoder.attention_kernels() == Kernels::Host {
            // Attention runs in host memory beside host weights: keep its keys and values
            // there, packed as its kernels read them.
            return KvCache::host(
                t.num_hidden_layers,
                batch,
                t.num_key_value_heads,
                capacity,
                t.head_dim,
                cpu::Isa::detect(),
            );
        }
        KvCache::new(
            t.num_hidden_layers,
            batch,
            t.num_key_value_heads,
            capacity,
            t.head_dim,
            device,
            self.decoder.dtype().burn_dtype(),
        )
    }

    /// Run every prompt of a batch at once and return the state to decode from and the
    /// f32 logits `[batch, vocab]` of each prompt's last position.
    ///
    /// `prompts` pairs image features `[1, images x tokens, hidden]` with prompt ids; shorter
    /// prompts are left-padded with `pad_id`. Padding is invisible to every real token
    /// and positions restart at 1 after it, as transformers numbers them, so a batched
    /// row computes what it would alone. The cache has room for `new_tokens` more.
    pub fn prefill(
        &self,
        prompts: &[(&Tensor<B, 3>, &[u32])],
        pad_id: u32,
        new_tokens: usize,
    ) -> Result<(DecodeState<B>, Tensor<B, 2>)> {
        let Some((first, _)) = prompts.first() else {
            return Err(Error::Prompt("no prompts to run".into()));
        };
        let device = first.device();
        let width = prompts.iter().map(|(_, ids)| ids.len()).max().unwrap_or(0);
        let mut rows = Vec::with_capacity(prompts.len());
        let mut positions = Vec::with_capacity(prompts.len());
        let mut embedded = Vec::with_capacity(prompts.len());
        for (features, ids) in prompts {
            let pad = width - ids.len();
            embedded.push(self.embed_padded(features, ids, (pad, 0), pad_id)?);
            rows.push(RowLayout {
                pad,
                prefix: ids.len(),
            });
            positions.push(
                (0..width)
                    .map(|i| (i + 1).saturating_sub(pad).max(1))
                    .collect(),
            );
        }
        let batch = prompts.len();
        let context = self.decoder.config().max_position_embeddings;
        let length = width.saturating_add(new_tokens);
        if length > context {
            return Err(Error::Prompt(format!(
                "{width} prompt tokens plus {new_tokens} new tokens exceed the model's context of {context}"
            )));
        }
        let mut cache = self.new_cache(batch, length, &device);
        let hidden = self.forward(Tensor::cat(embedded, 0), &rows, &positions, &mut cache);
        let [_, _, h] = hidden.dims();
        let last = hidden.slice([0..batch, width - 1..width, 0..h]);
        let next_position = prompts.iter().map(|(_, ids)| ids.len() + 1).collect();
        let state = DecodeState {
            cache,
            rows,
            next_position,
            device,
        };
        Ok((state, self.last_logits(last)))
    }

    /// Feed one token per row and return the f32 logits `[batch, vocab]` of the next.
    pub fn extend(&self, state: &mut DecodeState<B>, tokens: &[u32]) -> Result<Tensor<B, 2>> {
        if tokens.len() != state.rows.len() {
            return Err(Error::Prompt(format!(
                "{} tokens for a batch of {} rows",
                tokens.len(),
                state.rows.len()
            )));
        }
        if state.cache.len() >= state.cache.capacity() {
            return Err(Error::Prompt(format!(
                "the cache is full ({} positions)",
                state.cache.capacity()
            )));
        }
        let ids: Vec<Vec<u32>> = tokens.iter().map(|&t| vec![t]).collect();
        let x = self.decoder.embed(&ids, &state.device);
        let positions: Vec<Vec<usize>> = state.next_position.iter().map(|&p| vec![p]).collect();
        let hidden = self.forward(x, &state.rows, &positions, &mut state.cache);
        for p in &mut state.next_position {
            *p += 1;
        }
        Ok(self.last_logits(hidden))
    }

    /// `[batch, 1, hidden]` to f32 logits `[batch, vocab]`.
    fn last_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let logits = self.logits(hidden).cast(FloatDType::F32);
        let [b, _, v] = logits.dims();
        logits.reshape([b, v])
    }
}
