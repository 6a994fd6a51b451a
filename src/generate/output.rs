//! What a generation returns.

use serde::Serialize;

/// Wall-clock time spent in each phase (for a batch: of the whole batch).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Vision tower, projector and prompt prefill, up to the first token's logits.
    pub prefill_s: f64,
    /// All decode steps after the first token.
    pub decode_s: f64,
    /// Tokens generated.
    pub tokens: usize,
    /// Seconds from the end of the prefill to each later token's logits (cumulative,
    /// one entry per decode step), for cost-per-length curves; recorded when
    /// [`Diagnostics::step_times`](crate::Diagnostics::step_times) is set.
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

/// The result of [`Model::generate`](crate::Model::generate).
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// The prompt's input ids (image placeholders, `<bos>`, prompt, `\n`).
    pub prompt_ids: Vec<u32>,
    /// Generated ids, including the final stop token when generation stopped on one.
    pub generated_ids: Vec<u32>,
    /// Generated text, special tokens skipped, `<loc>`/`<seg>` tokens kept, cut before
    /// a stop string.
    pub text: String,
    /// Per generated token, the `k` largest final logits as `(id, logit)`, when
    /// [`Diagnostics::top_logits`](crate::Diagnostics::top_logits) asks for them.
    pub top_logits: Option<Vec<Vec<(u32, f32)>>>,
    /// Why generation ended.
    pub finish: FinishReason,
    /// Where the time went.
    pub timings: Timings,
}
