//! One sequence being generated: its prompt, the tokens chosen so far, its own sampler
//! and stop rules. The batch loop and the continuous scheduler both drive rows; each
//! row carries its own rules so that rows of different requests can share a batch.

use super::options::GenerateOptions;
use super::output::{FinishReason, Generation, Timings};
use super::sampling::{Sampler, top_k};
use super::stream::{PieceFn, stream_safe_len};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// A sequence of a batch and the rules it stops by.
pub(super) struct Row {
    pub prompt: Vec<u32>,
    pub generated: Vec<u32>,
    pub finish: Option<FinishReason>,
    pub text: String,
    sampler: Sampler,
    tops: Option<Vec<Vec<(u32, f32)>>>,
    top_logits: Option<usize>,
    max_new_tokens: usize,
    stop_tokens: Vec<u32>,
    stop_strings: Vec<String>,
    streamed: usize,
}

impl Row {
    /// A row for `prompt` generated with `options` (whose budget the caller checked
    /// against the context); `seed_offset` is added to a sampling seed (the row's index
    /// in a batch).
    pub fn new(
        prompt: Vec<u32>,
        options: &GenerateOptions,
        tokenizer: &Tokenizer,
        seed_offset: usize,
    ) -> Row {
        let mut stop_tokens = options.stop_tokens.clone();
        if !options.diagnostics.ignore_eos {
            stop_tokens.push(tokenizer.eos_id);
        }
        Row {
            generated: Vec::with_capacity(options.max_new_tokens),
            prompt,
            finish: None,
            text: String::new(),
            sampler: Sampler::new(options.sampling, options.repetition_penalty, seed_offset),
            tops: options.diagnostics.top_logits.map(|_| Vec::new()),
            top_logits: options.diagnostics.top_logits,
            max_new_tokens: options.max_new_tokens,
            stop_tokens,
            stop_strings: options.stop_strings.clone(),
            streamed: 0,
        }
    }

    /// Tokens this row may still generate.
    pub fn remaining(&self) -> usize {
        self.max_new_tokens.saturating_sub(self.generated.len())
    }

    /// The last token chosen (the one to feed next).
    pub fn last(&self) -> Option<u32> {
        self.generated.last().copied()
    }

    /// Choose the next token from this row's logits (used as scratch space), then apply
    /// the stop rules and stream what became final through `on_text`. `index` names the
    /// row in a non-finite-logits error.
    pub fn step(
        &mut self,
        index: usize,
        logits: &mut [f32],
        tokenizer: &Tokenizer,
        on_text: Option<&mut PieceFn<'_>>,
    ) -> Result<u32> {
        if logits.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                row: index,
                step: self.generated.len(),
            });
        }
        if let (Some(t), Some(k)) = (self.tops.as_mut(), self.top_logits) {
            t.push(top_k(logits, k));
        }
        let history: Vec<u32> = if self.sampler.needs_history() {
            self.prompt.iter().chain(&self.generated).copied().collect()
        } else {
            Vec::new()
        };
        let token = self.sampler.next(logits, &history);
        self.generated.push(token);
        self.after_token(token, tokenizer, on_text)?;
        Ok(token)
    }

    /// Check the stop rules and stream what became final. The text is detokenized
    /// every step only when stop strings or a stream need it, else once at the end.
    fn after_token(
        &mut self,
        token: u32,
        tokenizer: &Tokenizer,
        on_text: Option<&mut PieceFn<'_>>,
    ) -> Result<()> {
        if self.stop_tokens.contains(&token) {
            self.finish = Some(FinishReason::StopToken);
        } else if self.generated.len() >= self.max_new_tokens {
            self.finish = Some(FinishReason::Length);
        }
        let every_step = on_text.is_some() || !self.stop_strings.is_empty();
        if !every_step && self.finish.is_none() {
            return Ok(());
        }
        self.text = tokenizer.detokenize(&self.generated)?;
        if let Some(cut) = self
            .stop_strings
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(cut);
            self.finish = Some(FinishReason::StopString);
        }
        let Some(on_text) = on_text else {
            return Ok(());
        };
        let safe = if self.finish.is_some() {
            self.text.len()
        } else {
            stream_safe_len(&self.text, &self.stop_strings)
        };
        if safe > self.streamed {
            if let Some(piece) = self.text.get(self.streamed..safe)
                && on_text(piece).is_break()
                && self.finish.is_none()
            {
                self.finish = Some(FinishReason::Cancelled);
            }
            self.streamed = safe;
        }
        Ok(())
    }

    /// Stop this row early (its reader went away), with the text of what it generated.
    pub fn cancel(&mut self, tokenizer: &Tokenizer) -> Result<()> {
        if self.finish.is_none() {
            self.finish = Some(FinishReason::Cancelled);
            self.text = tokenizer.detokenize(&self.generated)?;
        }
        Ok(())
    }

    /// The finished generation.
    pub fn into_generation(self, timings: Timings) -> Generation {
        Generation {
            timings,
            prompt_ids: self.prompt,
            generated_ids: self.generated,
            text: self.text,
            top_logits: self.tops,
            finish: self.finish.unwrap_or(FinishReason::Length),
        }
    }
}
