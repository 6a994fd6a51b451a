//! The decoding loop: prefill the prompts once, then one cached step per new token for
//! every sequence of the batch, each stopping on its own.
//!
//! A single prompt is a batch of one. Prompts of different lengths are left-padded;
//! padding is invisible to every real token and positions restart at 1 after it, as
//! transformers numbers them, so batched greedy outputs equal single-prompt ones.

use std::ops::ControlFlow;
use std::time::Instant;

use burn::tensor::{Tensor, backend::Backend};
use image::DynamicImage;
use serde::Serialize;

use crate::attention::RowLayout;
use crate::error::{Error, Result};
use crate::model::{ImageEmbedding, Model};
use crate::sampling::{Sampler, SamplerConfig};

/// How to generate. Greedy by default; set `temperature` above 0 to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate (a stop token, when produced, counts).
    pub max_new_tokens: usize,
    /// Keep generating past `<eos>` up to `max_new_tokens` (for benchmarks).
    pub ignore_eos: bool,
    /// Record the `k` largest final logits of every step (0 = off).
    pub top_logits: usize,
    /// Sampling temperature; 0 is greedy decoding.
    pub temperature: f32,
    /// Sample only among the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities sum to `top_p`
    /// (in (0, 1]; 1 = off).
    pub top_p: f32,
    /// Seed of the sampler: the same seed gives the same output on the same backend.
    /// Sequence `i` of a batch uses `seed + i`.
    pub seed: u64,
    /// Divide positive (multiply negative) logits of tokens already in the prompt or
    /// the output by this (1 = off), as transformers does.
    pub repetition_penalty: f32,
    /// Extra token ids that end generation (included in the output, like `<eos>`).
    pub stop_tokens: Vec<u32>,
    /// Strings that end generation; the text is cut before the first occurrence.
    pub stop_strings: Vec<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            ignore_eos: false,
            top_logits: 0,
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
            seed: 0,
            repetition_penalty: 1.0,
            stop_tokens: Vec::new(),
            stop_strings: Vec::new(),
        }
    }
}

impl GenerateOptions {
    /// Options with a token budget.
    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = n;
        self
    }

    /// Sample with a temperature, optional top-k and top-p, and a seed.
    pub fn sample(mut self, temperature: f32, top_k: Option<usize>, top_p: f32, seed: u64) -> Self {
        self.temperature = temperature;
        self.top_k = top_k;
        self.top_p = top_p;
        self.seed = seed;
        self
    }

    /// Stop at any of these strings.
    pub fn stop_strings<S: Into<String>>(mut self, stops: impl IntoIterator<Item = S>) -> Self {
        self.stop_strings = stops.into_iter().map(Into::into).collect();
        self
    }

    /// Check every value; invalid ones are errors, not panics.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Options(m));
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1".into());
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return bad("stop strings must not be empty".into());
        }
        Ok(())
    }

    fn sampler(&self, row: usize) -> Sampler {
        let config = SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
        };
        Sampler::new(config, self.seed.wrapping_add(row as u64))
    }
}

/// Wall-clock time spent in each phase (for a batch: of the whole batch).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Vision tower, projector and prompt prefill, up to the first token's logits.
    pub prefill_s: f64,
    /// All decode steps after the first token.
    pub decode_s: f64,
    /// Tokens generated.
    pub tokens: usize,
    /// Seconds from the end of the prefill to each later token's logits
    /// (cumulative, one entry per decode step), for cost-per-length curves.
    pub decode_elapsed_s: Vec<f64>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FinishReason {
    /// `<eos>` or one of the extra stop tokens.
    StopToken,
    /// One of the stop strings appeared.
    StopString,
    /// `max_new_tokens` were generated.
    Length,
    /// The streaming callback asked to stop.
    Cancelled,
}

/// The result of [`Model::generate`].
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// The prompt's input ids (image placeholders, `<bos>`, prompt, `\n`).
    pub prompt_ids: Vec<u32>,
    /// Generated ids, including the final stop token when generation stopped on one.
    pub generated_ids: Vec<u32>,
    /// Generated text, special tokens skipped, `<loc>`/`<seg>` tokens kept, cut before
    /// a stop string.
    pub text: String,
    /// Per generated token, the `k` largest final logits as `(id, logit)`, when asked.
    pub top_logits: Option<Vec<Vec<(u32, f32)>>>,
    /// Why generation ended.
    pub finish: FinishReason,
    /// Where the time went.
    pub timings: Timings,
}

/// Where streamed text goes: `(row, piece)`.
type TextSink<'a> = &'a mut TextFn<'a>;
type TextFn<'a> = dyn FnMut(usize, &str) -> ControlFlow<()> + 'a;

/// One sequence being generated.
struct Row {
    prompt: Vec<u32>,
    generated: Vec<u32>,
    sampler: Sampler,
    tops: Option<Vec<Vec<(u32, f32)>>>,
    finish: Option<FinishReason>,
    text: String,
    streamed: usize,
}

impl<B: Backend> Model<B> {
    /// Generate a continuation of `prompt` about `image`.
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
        self.generate_one(&embedding, prompt, options, start, None)
    }

    /// Generate, calling `on_text` with each new piece of text as soon as it is final
    /// (never half a UTF-8 character, never the start of a stop string that may still
    /// complete). Return `ControlFlow::Break(())` to stop early. The pieces concatenate
    /// to the returned text.
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// # use paligemma::{GenerateOptions, Model, backend::Cpu};
    /// # let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?;
    /// # let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// use std::ops::ControlFlow;
    /// let mut shown = String::new();
    /// let out = model.generate_stream(&image, "caption en", &GenerateOptions::default(), |piece| {
    ///     shown.push_str(piece);
    ///     ControlFlow::Continue(())
    /// })?;
    /// assert_eq!(shown, out.text);
    /// # Ok(()) }
    /// ```
    pub fn generate_stream(
        &self,
        image: &DynamicImage,
        prompt: &str,
        options: &GenerateOptions,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        options.validate()?;
        let start = Instant::now();
        let embedding = self.encode_image(image)?;
        self.generate_one(
            &embedding,
            prompt,
            options,
            start,
            Some(&mut |_, t| on_text(t)),
        )
    }

    /// Generate from an image embedding computed earlier with [`Model::encode_image`]:
    /// several prompts about one image cost one vision pass.
    pub fn generate_with_embedding(
        &self,
        embedding: &ImageEmbedding<B>,
        prompt: &str,
        options: &GenerateOptions,
    ) -> Result<Generation> {
        options.validate()?;
        self.generate_one(embedding, prompt, options, Instant::now(), None)
    }

    fn generate_one(
        &self,
        embedding: &ImageEmbedding<B>,
        prompt: &str,
        options: &GenerateOptions,
        start: Instant,
        on_text: Option<TextSink<'_>>,
    ) -> Result<Generation> {
        self.decode(&[(embedding, prompt)], options, start, on_text)?
            .pop()
            .ok_or_else(|| Error::Backend("no generation produced".into()))
    }

    /// Generate for several (image, prompt) pairs in one forward pass per step.
    /// Results come back in input order; greedy results equal one-by-one generation.
    pub fn generate_batch(
        &self,
        inputs: &[(&DynamicImage, &str)],
        options: &GenerateOptions,
    ) -> Result<Vec<Generation>> {
        options.validate()?;
        let start = Instant::now();
        let embeddings = inputs
            .iter()
            .map(|(image, _)| self.encode_image(image))
            .collect::<Result<Vec<_>>>()?;
        let pairs: Vec<(&ImageEmbedding<B>, &str)> = embeddings
            .iter()
            .zip(inputs)
            .map(|(e, (_, p))| (e, *p))
            .collect();
        self.decode(&pairs, options, start, None)
    }

    fn decode(
        &self,
        inputs: &[(&ImageEmbedding<B>, &str)],
        options: &GenerateOptions,
        start: Instant,
        mut on_text: Option<TextSink<'_>>,
    ) -> Result<Vec<Generation>> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let context = self.config.text.max_position_embeddings;
        let mut rows = Vec::with_capacity(inputs.len());
        for (i, (_, prompt)) in inputs.iter().enumerate() {
            let ids = self.prompt_ids(prompt)?;
            if ids.len() + options.max_new_tokens > context {
                return Err(Error::Prompt(format!(
                    "{} prompt tokens plus {} new tokens exceed the model's context of {context}",
                    ids.len(),
                    options.max_new_tokens
                )));
            }
            rows.push(Row {
                prompt: ids,
                generated: Vec::with_capacity(options.max_new_tokens),
                sampler: options.sampler(i),
                tops: (options.top_logits > 0).then(Vec::new),
                finish: None,
                text: String::new(),
                streamed: 0,
            });
        }
        let width = rows.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
        let pad_id = self.text.pad_id.unwrap_or(0);
        let mut layouts = Vec::with_capacity(rows.len());
        let mut positions = Vec::with_capacity(rows.len());
        let mut embedded = Vec::with_capacity(rows.len());
        for ((embedding, _), row) in inputs.iter().zip(&rows) {
            let pad = width - row.prompt.len();
            let merged = self.merge(&embedding.features, &row.prompt)?;
            embedded.push(if pad > 0 {
                let padding = self.decoder.embed(&[vec![pad_id; pad]], &self.device);
                Tensor::cat(vec![padding, merged], 1)
            } else {
                merged
            });
            layouts.push(RowLayout {
                pad,
                prefix: row.prompt.len(),
            });
            positions.push(
                (0..width)
                    .map(|i| (i + 1).saturating_sub(pad).max(1))
                    .collect(),
            );
        }
        let batch = rows.len();
        let mut cache = self.new_cache(batch, width + options.max_new_tokens);
        let hidden =
            self.decoder
                .forward(Tensor::cat(embedded, 0), &layouts, &positions, &mut cache);
        let h = self.config.text.hidden_size;
        let last = hidden.slice([0..batch, width - 1..width, 0..h]);
        let mut logits = self.host_logits(last)?;
        let prefill_s = start.elapsed().as_secs_f64();

        let decode_start = Instant::now();
        let vocab = logits.len() / batch;
        let mut stops = options.stop_tokens.clone();
        if !options.ignore_eos {
            stops.push(self.text.eos_id);
        }
        let mut elapsed = Vec::with_capacity(options.max_new_tokens);
        loop {
            let mut next = Vec::with_capacity(batch);
            for (i, row) in rows.iter_mut().enumerate() {
                if row.finish.is_some() {
                    next.push(vec![pad_id]);
                    continue;
                }
                let step = &mut logits[i * vocab..(i + 1) * vocab];
                if let Some(t) = row.tops.as_mut() {
                    t.push(top_k(step, options.top_logits));
                }
                let history: Vec<u32> = if options.repetition_penalty != 1.0 {
                    row.prompt.iter().chain(&row.generated).copied().collect()
                } else {
                    Vec::new()
                };
                let token = row.sampler.next(step, &history);
                row.generated.push(token);
                next.push(vec![token]);
                self.after_token(i, row, token, &stops, options, on_text.as_deref_mut())?;
            }
            if rows.iter().all(|r| r.finish.is_some()) {
                break;
            }
            let x = self.decoder.embed(&next, &self.device);
            let pos: Vec<Vec<usize>> = rows
                .iter()
                .map(|r| vec![r.prompt.len() + r.generated.len()])
                .collect();
            let hidden = self.decoder.forward(x, &layouts, &pos, &mut cache);
            logits = self.host_logits(hidden)?;
            elapsed.push(decode_start.elapsed().as_secs_f64());
        }
        let decode_s = decode_start.elapsed().as_secs_f64();
        Ok(rows
            .into_iter()
            .map(|row| Generation {
                timings: Timings {
                    prefill_s,
                    decode_s,
                    tokens: row.generated.len(),
                    decode_elapsed_s: elapsed.clone(),
                },
                prompt_ids: row.prompt,
                generated_ids: row.generated,
                text: row.text,
                top_logits: row.tops,
                finish: row.finish.unwrap_or(FinishReason::Length),
            })
            .collect())
    }

    /// Check a row's stop rules and stream what became final. The text is decoded
    /// every step only when stop strings or a stream need it, else once at the end.
    fn after_token(
        &self,
        index: usize,
        row: &mut Row,
        token: u32,
        stops: &[u32],
        options: &GenerateOptions,
        on_text: Option<&mut TextFn<'_>>,
    ) -> Result<()> {
        if stops.contains(&token) {
            row.finish = Some(FinishReason::StopToken);
        } else if row.generated.len() >= options.max_new_tokens {
            row.finish = Some(FinishReason::Length);
        }
        if on_text.is_none() && options.stop_strings.is_empty() && row.finish.is_none() {
            return Ok(());
        }
        row.text = self.text.decode(&row.generated)?;
        if let Some(cut) = options
            .stop_strings
            .iter()
            .filter_map(|s| row.text.find(s.as_str()))
            .min()
        {
            row.text.truncate(cut);
            row.finish = Some(FinishReason::StopString);
        }
        let Some(on_text) = on_text else {
            return Ok(());
        };
        let safe = if row.finish.is_some() {
            row.text.len()
        } else {
            stream_safe_len(&row.text, &options.stop_strings)
        };
        if safe > row.streamed {
            if let Some(piece) = row.text.get(row.streamed..safe)
                && on_text(index, piece).is_break()
                && row.finish.is_none()
            {
                row.finish = Some(FinishReason::Cancelled);
            }
            row.streamed = safe;
        }
        Ok(())
    }

    /// Logits of one position per row `[batch, 1, hidden]`, fetched to the host.
    fn host_logits(&self, hidden: Tensor<B, 3>) -> Result<Vec<f32>> {
        self.decoder
            .logits(hidden)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| Error::Backend(format!("reading logits: {e:?}")))
    }
}

/// How much of `text` can be shown: not a trailing replacement character (a UTF-8
/// sequence split across byte tokens) and not a suffix that may grow into a stop string.
fn stream_safe_len(text: &str, stops: &[String]) -> usize {
    let mut end = text.len();
    while text[..end].ends_with('\u{FFFD}') {
        end -= '\u{FFFD}'.len_utf8();
    }
    let held = stops
        .iter()
        .flat_map(|s| {
            s.char_indices()
                .skip(1)
                .map(move |(i, _)| &s[..i])
                .filter(|prefix| text[..end].ends_with(prefix))
                .map(str::len)
        })
        .max()
        .unwrap_or(0);
    end - held
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

    #[test]
    fn streaming_holds_back_partial_characters_and_stop_prefixes() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(stream_safe_len("abc", &stops), 3);
        assert_eq!(stream_safe_len("abc\u{FFFD}", &stops), 3);
        assert_eq!(stream_safe_len("abc\n", &stops), 3);
        assert_eq!(stream_safe_len("abcEN", &stops), 3);
        assert_eq!(stream_safe_len("abcE", &[]), 4);
    }

    #[test]
    fn invalid_options_are_errors() {
        let bad = [
            GenerateOptions::default().max_new_tokens(0),
            GenerateOptions::default().sample(-1.0, None, 1.0, 0),
            GenerateOptions::default().sample(f32::NAN, None, 1.0, 0),
            GenerateOptions::default().sample(1.0, None, 0.0, 0),
            GenerateOptions::default().sample(1.0, None, 1.5, 0),
            GenerateOptions::default().sample(1.0, Some(0), 1.0, 0),
            GenerateOptions {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            GenerateOptions::default().stop_strings([""]),
        ];
        for o in bad {
            assert!(matches!(o.validate(), Err(Error::Options(_))), "{o:?}");
        }
        assert!(
            GenerateOptions::default()
                .sample(0.7, Some(40), 0.9, 1)
                .validate()
                .is_ok()
        );
    }
}
