//! The decoding loop over a batch of sequences: prefill every prompt once, then one
//! cached step per new token for the whole batch, each row stopping on its own.
//!
//! Finished rows are fed padding until they are half the batch, then leave it
//! ([`DecodeState::regroup`]). A single prompt is a batch of one. The loop sees the model only through
//! [`Model::prompt_ids_with_images`], [`Model::prefill`], [`Model::extend`] and the tokenizer.

use std::time::Instant;

use burn::tensor::{Tensor, backend::Backend};

use super::options::GenerateOptions;
use super::output::{Generation, Timings};
use super::row::Row;
use super::stream::TextSink;
use crate::decode_state::DecodeState;
use crate::error::{Error, Result};
use crate::model::{ImageEmbedding, Model};

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
        let pad = self.tokenizer().padding_id();
        let mut step_times = Vec::new();
        // Rows of `state`, by index into `rows`; finished rows leave once they are half.
        let mut active: Vec<usize> = (0..rows.len()).collect();
        loop {
            let next = self.choose(&mut rows, &active, &mut logits, &mut on_text)?;
            if rows.iter().all(|r| r.finish.is_some()) {
                break;
            }
            let mut tokens: Vec<u32> = next.into_iter().map(|t| t.unwrap_or(pad)).collect();
            let done = active.iter().filter(|&&i| rows[i].finish.is_some()).count();
            if done * 2 >= active.len() {
                let keep: Vec<usize> = (0..active.len())
                    .filter(|&j| rows[active[j]].finish.is_none())
                    .collect();
                let room = keep
                    .iter()
                    .map(|&j| rows[active[j]].remaining())
                    .max()
                    .unwrap_or(0);
                state = DecodeState::regroup(&[(&state, &keep)], room)?;
                tokens = keep.iter().map(|&j| tokens[j]).collect();
                active = keep.iter().map(|&j| active[j]).collect();
            }
            logits = host_logits(self.extend(&mut state, &tokens)?)?;
            if options.diagnostics.step_times {
                step_times.push(decode_start.elapsed().as_secs_f64());
            }
        }
        let decode_s = decode_start.elapsed().as_secs_f64();
        Ok(rows
            .into_iter()
            .map(|row| {
                let tokens = row.generated.len();
                row.into_generation(Timings {
                    prefill_s,
                    decode_s,
                    tokens,
                    decode_elapsed_s: step_times.clone(),
                })
            })
            .collect())
    }

    /// Tokenize each prompt and check that it fits the context with the budget.
    fn start_rows(
        &self,
        inputs: &[(&ImageEmbedding<B>, &str)],
        options: &GenerateOptions,
    ) -> Result<Vec<Row>> {
        let mut rows = Vec::with_capacity(inputs.len());
        for (i, (embedding, prompt)) in inputs.iter().enumerate() {
            let ids = self.prompt_within_context(prompt, embedding.images(), options)?;
            rows.push(Row::new(ids, options, self.tokenizer(), i));
        }
        Ok(rows)
    }

    /// The prompt's ids, checked to leave room in the context for the token budget.
    pub(super) fn prompt_within_context(
        &self,
        prompt: &str,
        images: usize,
        options: &GenerateOptions,
    ) -> Result<Vec<u32>> {
        let context = self.config().text.max_position_embeddings;
        let ids = self.prompt_ids_with_images(prompt, images)?;
        // Saturating: a budget of usize::MAX is an error, not an overflow.
        if ids.len().saturating_add(options.max_new_tokens) > context {
            return Err(Error::Prompt(format!(
                "{} prompt tokens plus {} new tokens exceed the model's context of {context}",
                ids.len(),
                options.max_new_tokens
            )));
        }
        Ok(ids)
    }

    /// Pick the next token of each row of the batch (`active`: its rows' indices into
    /// `rows`, `None` for finished rows) and apply the stop rules.
    fn choose(
        &self,
        rows: &mut [Row],
        active: &[usize],
        logits: &mut [f32],
        on_text: &mut Option<TextSink<'_>>,
    ) -> Result<Vec<Option<u32>>> {
        let vocab = logits.len() / active.len().max(1);
        let mut next = Vec::with_capacity(active.len());
        for (&i, step) in active.iter().zip(logits.chunks_mut(vocab)) {
            let row = &mut rows[i];
            if row.finish.is_some() {
                next.push(None);
                continue;
            }
            let token = match on_text.as_deref_mut() {
                Some(sink) => row.step(i, step, self.tokenizer(), Some(&mut |t| sink(i, t)))?,
                None => row.step(i, step, self.tokenizer(), None)?,
            };
            next.push(Some(token));
        }
        Ok(next)
    }
}

/// Logits `[batch, vocab]` fetched to the host, row-major.
pub(super) fn host_logits<B: Backend>(logits: Tensor<B, 2>) -> Result<Vec<f32>> {
    logits
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| Error::Backend(format!("reading logits: {e:?}")))
}
