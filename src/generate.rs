//! The decoding loop: prefill the prompt once, then one cached step per new token.

use std::time::Instant;

use burn::tensor::{Tensor, backend::Backend};
use image::DynamicImage;
use serde::Serialize;

use crate::attention::RowLayout;
use crate::error::{Error, Result};
use crate::model::{ImageEmbedding, Model};

/// How to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most tokens to generate (the eos token, when produced, counts).
    pub max_new_tokens: usize,
    /// Keep generating past `<eos>` up to `max_new_tokens` (for benchmarks).
    pub ignore_eos: bool,
    /// Record the `k` largest final logits of every step (0 = off).
    pub top_logits: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            ignore_eos: false,
            top_logits: 0,
        }
    }
}

impl GenerateOptions {
    /// Options with a token budget.
    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = n;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            return Err(Error::Options("max_new_tokens must be at least 1".into()));
        }
        Ok(())
    }
}

/// Wall-clock time spent in each phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Vision tower, projector and prompt prefill, up to the first token's logits.
    pub prefill_s: f64,
    /// All decode steps after the first token.
    pub decode_s: f64,
    /// Tokens generated.
    pub tokens: usize,
}

/// The result of [`Model::generate`].
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// The prompt's input ids (image placeholders, `<bos>`, prompt, `\n`).
    pub prompt_ids: Vec<u32>,
    /// Generated ids, including the final `<eos>` when generation stopped on it.
    pub generated_ids: Vec<u32>,
    /// Generated text, special tokens skipped, `<loc>`/`<seg>` tokens kept.
    pub text: String,
    /// Per generated token, the `k` largest final logits as `(id, logit)`, when asked.
    pub top_logits: Option<Vec<Vec<(u32, f32)>>>,
    /// Where the time went.
    pub timings: Timings,
}

impl<B: Backend> Model<B> {
    /// Generate a continuation of `prompt` about `image`, greedily.
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// use paligemma::{GenerateOptions, Model, backend::Cpu};
    /// let device = Default::default();
    /// let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &device)?;
    /// let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// let out = model.generate(&image, "caption en", &GenerateOptions::default().max_new_tokens(8))?;
    /// assert!(!out.generated_ids.is_empty() && out.generated_ids.len() <= 8);
    /// # Ok(()) }
    /// ```
    pub fn generate(
        &self,
        image: &DynamicImage,
        prompt: &str,
        options: &GenerateOptions,
    ) -> Result<Generation> {
        options.validate()?;
        let start = Instant::now();
        let embedding = self.encode_image(image)?;
        self.generate_from_embedding(&embedding, prompt, options, start)
    }

    /// Generate from an image embedding computed earlier with [`Model::encode_image`].
    pub fn generate_with_embedding(
        &self,
        embedding: &ImageEmbedding<B>,
        prompt: &str,
        options: &GenerateOptions,
    ) -> Result<Generation> {
        options.validate()?;
        self.generate_from_embedding(embedding, prompt, options, Instant::now())
    }

    fn generate_from_embedding(
        &self,
        embedding: &ImageEmbedding<B>,
        prompt: &str,
        options: &GenerateOptions,
        start: Instant,
    ) -> Result<Generation> {
        let prompt_ids = self.prompt_ids(prompt)?;
        let len = prompt_ids.len();
        let context = self.config.text.max_position_embeddings;
        if len + options.max_new_tokens > context {
            return Err(Error::Prompt(format!(
                "{len} prompt tokens plus {} new tokens exceed the model's context of {context}",
                options.max_new_tokens
            )));
        }
        let x = self.merge(&embedding.features, &prompt_ids)?;
        let mut cache = self.new_cache(1, len + options.max_new_tokens);
        let rows = [RowLayout {
            pad: 0,
            prefix: len,
        }];
        let hidden = self
            .decoder
            .forward(x, &rows, &[(1..=len).collect()], &mut cache);
        let [_, _, h] = hidden.dims();
        let last = hidden.slice([0..1, len - 1..len, 0..h]);
        let mut logits = self.last_logits(last)?;
        let prefill_s = start.elapsed().as_secs_f64();

        let decode_start = Instant::now();
        let mut generated = Vec::with_capacity(options.max_new_tokens);
        let mut tops = (options.top_logits > 0).then(Vec::new);
        loop {
            let token = argmax(&logits);
            if let Some(t) = tops.as_mut() {
                t.push(top_k(&logits, options.top_logits));
            }
            generated.push(token);
            let stop = token == self.text.eos_id && !options.ignore_eos;
            if stop || generated.len() >= options.max_new_tokens {
                break;
            }
            let pos = cache.len() + 1;
            let x = self.decoder.embed(&[vec![token]], &self.device);
            let hidden = self.decoder.forward(x, &rows, &[vec![pos]], &mut cache);
            logits = self.last_logits(hidden)?;
        }
        let decode_s = decode_start.elapsed().as_secs_f64();
        Ok(Generation {
            text: self.text.decode(&generated)?,
            timings: Timings {
                prefill_s,
                decode_s,
                tokens: generated.len(),
            },
            prompt_ids,
            generated_ids: generated,
            top_logits: tops,
        })
    }

    /// Logits of a single position `[1, 1, hidden]`, fetched to the host.
    fn last_logits(&self, hidden: Tensor<B, 3>) -> Result<Vec<f32>> {
        self.decoder
            .logits(hidden)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| Error::Backend(format!("reading logits: {e:?}")))
    }
}

/// Index of the largest logit; the first one on ties, as torch's argmax. NaN never wins.
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// The `k` largest logits, largest first.
pub(crate) fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    let key = |i: &u32| logits[*i as usize];
    idx.select_nth_unstable_by(k - 1, |a, b| key(b).total_cmp(&key(a)));
    idx.truncate(k);
    idx.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.cmp(b)));
    idx.into_iter().map(|i| (i, logits[i as usize])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_and_top_k() {
        let l = [0.5, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(argmax(&l), 1);
        assert_eq!(top_k(&l, 3), vec![(1, 3.0), (3, 3.0), (4, 2.0)]);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }
}
