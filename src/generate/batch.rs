//! The decoding loop over a batch of sequences: prefill every prompt once, then one
//! cached step per new token for the whole batch, each row stopping on its own.
//!
//! A single prompt is a batch of one. The loop sees the model only through
//! [`Model::prompt_ids_with_images`], [`Model::prefill`], [`Model::extend`] and the tokenizer.

use std::time::Instant;

use burn::tensor::{Tensor, backend::Backend};

use super::options::GenerateOptions;
use super::output::{FinishReason, Generation, Timings};
use super::sampling::{Sampler, top_k};
use super::stream::{TextFn, TextSink, stream_safe_len};
use crate::error::{Error, Result};
use crate::model::{ImageEmbedding, Model};

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
    /// Generate for every `(image embedding, prompt)` pair, in input order. `start` is
    /// when the caller began (before encoding the images), for the prefill timing.
    pub(super) fn generate_rows(
        &self,
        inputs: &[(&ImageEmbedding<B>, &str)],
        options: &GenerateOptions,
        start: Instant,
        mut on_text: Option<TextSink<'_>>,
    ) -> Result<Vec<Generation>> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = self.start_rows(inputs, options)?;
        let prompts: Vec<(&Tensor<B, 3>, &[u32])> = inputs
            .iter()
            .zip(&rows)
            .map(|((e, _), row)| (&e.features, row.prompt.as_slice()))
            .collect();
        let (mut state, logits) = self.prefill(&prompts, options.max_new_tokens)?;
        let mut logits = host_logits(logits)?;
        let prefill_s = start.elapsed().as_secs_f64();

        let decode_start = Instant::now();
        let mut stops = options.stop_tokens.clone();
        if !options.diagnostics.ignore_eos {
            stops.push(self.tokenizer().eos_id);
        }
        let pad = self.tokenizer().padding_id();
        let mut step_times = Vec::new();
        loop {
            let next = self.choose(&mut rows, &mut logits, &stops, options, &mut on_text)?;
            if rows.iter().all(|r| r.finish.is_some()) {
                break;
            }
            let tokens: Vec<u32> = next.into_iter().map(|t| t.unwrap_or(pad)).collect();
            logits = host_logits(self.extend(&mut state, &tokens)?)?;
            if options.diagnostics.step_times {
                step_times.push(decode_start.elapsed().as_secs_f64());
            }
        }
        let decode_s = decode_start.elapsed().as_secs_f64();
        Ok(rows
            .into_iter()
            .map(|row| Generation {
                timings: Timings {
                    prefill_s,
                    decode_s,
                    tokens: row.generated.len(),
                    decode_elapsed_s: step_times.clone(),
                },
                prompt_ids: row.prompt,
                generated_ids: row.generated,
                text: row.text,
                top_logits: row.tops,
                finish: row.finish.unwrap_or(FinishReason::Length),
            })
            .collect())
    }

    /// Tokenize each prompt and check that it fits the context with the budget.
    fn start_rows(
        &self,
        inputs: &[(&ImageEmbedding<B>, &str)],
        options: &GenerateOptions,
    ) -> Result<Vec<Row>> {
        let context = self.config().text.max_position_embeddings;
        let mut rows = Vec::with_capacity(inputs.len());
        for (i, (embedding, prompt)) in inputs.iter().enumerate() {
            let ids = self.prompt_ids_with_images(prompt, embedding.images())?;
            // Saturating: a budget of usize::MAX is an error, not an overflow.
            if ids.len().saturating_add(options.max_new_tokens) > context {
                return Err(Error::Prompt(format!(
                    "{} prompt tokens plus {} new tokens exceed the model's context of {context}",
                    ids.len(),
                    options.max_new_tokens
                )));
            }
            rows.push(Row {
                prompt: ids,
                generated: Vec::with_capacity(options.max_new_tokens.min(context)),
                sampler: Sampler::new(options.sampling, options.repetition_penalty, i),
                tops: options.diagnostics.top_logits.map(|_| Vec::new()),
                finish: None,
                text: String::new(),
                streamed: 0,
            });
        }
        Ok(rows)
    }

    /// Pick each unfinished row's next token from its logits (`None` for finished rows)
    /// and apply the stop rules.
    fn choose(
        &self,
        rows: &mut [Row],
        logits: &mut [f32],
        stops: &[u32],
        options: &GenerateOptions,
        on_text: &mut Option<TextSink<'_>>,
    ) -> Result<Vec<Option<u32>>> {
        let vocab = logits.len() / rows.len();
        let mut next = Vec::with_capacity(rows.len());
        for (i, (row, step)) in rows.iter_mut().zip(logits.chunks_mut(vocab)).enumerate() {
            if row.finish.is_some() {
                next.push(None);
                continue;
            }
            if step.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    row: i,
                    step: row.generated.len(),
                });
            }
            if let (Some(t), Some(k)) = (row.tops.as_mut(), options.diagnostics.top_logits) {
                t.push(top_k(step, k));
            }
            let history: Vec<u32> = if row.sampler.needs_history() {
                row.prompt.iter().chain(&row.generated).copied().collect()
            } else {
                Vec::new()
            };
            let token = row.sampler.next(step, &history);
            row.generated.push(token);
            next.push(Some(token));
            self.after_token(i, row, token, stops, options, on_text.as_deref_mut())?;
        }
        Ok(next)
    }

    /// Check a row's stop rules and stream what became final. The text is detokenized
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
        row.text = self.tokenizer().detokenize(&row.generated)?;
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
}

/// Logits `[batch, vocab]` fetched to the host, row-major.
fn host_logits<B: Backend>(logits: Tensor<B, 2>) -> Result<Vec<f32>> {
    logits
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| Error::Backend(format!("reading logits: {e:?}")))
}
