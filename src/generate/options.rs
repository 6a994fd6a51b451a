//! How to generate: the token budget, how the next token is chosen, when to stop, and
//! what to record for debugging and benchmarks.

use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Sampling {
    /// The most likely token (the first one on ties, as torch's argmax).
    #[default]
    Greedy,
    /// A draw from the softmax of `logits / temperature`, optionally restricted to the
    /// `top_k` most likely tokens and to the smallest set whose probability reaches
    /// `top_p`, in transformers' order (temperature, top-k, top-p).
    Random {
        /// Above 0; lower is closer to greedy.
        temperature: f32,
        /// Keep only this many candidates (at least 1).
        top_k: Option<usize>,
        /// Keep the most likely candidates whose probabilities sum to this (in (0, 1]).
        top_p: Option<f32>,
        /// The same seed gives the same output on the same backend; row `i` of a batch
        /// uses `seed + i`.
        seed: u64,
    },
}

/// What to record or change for debugging and benchmarks; the defaults record nothing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Diagnostics {
    /// Keep generating past `<eos>` up to the budget (fixed-length benchmark runs).
    pub ignore_eos: bool,
    /// Record the `k` largest final logits of every step.
    pub top_logits: Option<usize>,
    /// Record the time of every decode step ([`Timings::decode_elapsed_s`](crate::Timings::decode_elapsed_s)).
    pub step_times: bool,
}

/// How to generate. Greedy with a budget of 64 tokens by default.
///
/// ```
/// use paligemma::{GenerateOptions, Sampling};
/// let greedy = GenerateOptions::default().max_new_tokens(32);
/// let sampled = GenerateOptions::default()
///     .sample(0.7, 42)
///     .top_k(40)
///     .top_p(0.95)
///     .stop_strings(["."]);
/// assert!(matches!(sampled.sampling, Sampling::Random { top_k: Some(40), .. }));
/// assert!(greedy.validate().is_ok() && sampled.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate (a stop token, when produced, counts).
    pub max_new_tokens: usize,
    /// How each token is chosen.
    pub sampling: Sampling,
    /// Divide positive (multiply negative) logits of tokens already in the prompt or
    /// the output by this (above 0), as transformers does.
    pub repetition_penalty: Option<f32>,
    /// Extra token ids that end generation (included in the output, like `<eos>`).
    pub stop_tokens: Vec<u32>,
    /// Strings that end generation; the text is cut before the first occurrence.
    pub stop_strings: Vec<String>,
    /// Debugging and benchmark knobs.
    pub diagnostics: Diagnostics,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            sampling: Sampling::Greedy,
            repetition_penalty: None,
            stop_tokens: Vec::new(),
            stop_strings: Vec::new(),
            diagnostics: Diagnostics::default(),
        }
    }
}

impl GenerateOptions {
    /// Options with a token budget.
    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = n;
        self
    }

    /// Sample at `temperature` from a generator seeded with `seed` (no top-k or top-p
    /// restriction unless added with [`GenerateOptions::top_k`] / [`GenerateOptions::top_p`]).
    pub fn sample(mut self, temperature: f32, seed: u64) -> Self {
        self.sampling = Sampling::Random {
            temperature,
            top_k: None,
            top_p: None,
            seed,
        };
        self
    }

    /// Restrict sampling to the `k` most likely tokens (no effect when greedy).
    pub fn top_k(mut self, k: usize) -> Self {
        if let Sampling::Random { top_k, .. } = &mut self.sampling {
            *top_k = Some(k);
        }
        self
    }

    /// Restrict sampling to the most likely tokens covering probability `p` (no effect
    /// when greedy).
    pub fn top_p(mut self, p: f32) -> Self {
        if let Sampling::Random { top_p, .. } = &mut self.sampling {
            *top_p = Some(p);
        }
        self
    }

    /// Stop at any of these strings.
    pub fn stop_strings<S: Into<String>>(mut self, stops: impl IntoIterator<Item = S>) -> Self {
        self.stop_strings = stops.into_iter().map(Into::into).collect();
        self
    }

    /// Record the `k` largest logits of every step.
    pub fn top_logits(mut self, k: usize) -> Self {
        self.diagnostics.top_logits = Some(k);
        self
    }

    /// Check every value; invalid ones are errors, not panics.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Options(m));
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        if let Sampling::Random {
            temperature,
            top_k,
            top_p,
            ..
        } = self.sampling
        {
            if !(temperature > 0.0 && temperature.is_finite()) {
                return bad(format!(
                    "temperature must be above 0 (use Sampling::Greedy for greedy decoding), got {temperature}"
                ));
            }
            if let Some(p) = top_p
                && !(p > 0.0 && p <= 1.0)
            {
                return bad(format!("top_p must be in (0, 1], got {p}"));
            }
            if top_k == Some(0) {
                return bad("top_k must be at least 1".into());
            }
        }
        if let Some(r) = self.repetition_penalty
            && !(r > 0.0 && r.is_finite())
        {
            return bad(format!("repetition_penalty must be > 0, got {r}"));
        }
        if self.diagnostics.top_logits == Some(0) {
            return bad("top_logits must be at least 1".into());
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return bad("stop strings must not be empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_options_are_errors() {
        let random = |temperature, top_k, top_p| GenerateOptions {
            sampling: Sampling::Random {
                temperature,
                top_k,
                top_p,
                seed: 0,
            },
            ..Default::default()
        };
        let bad = [
            GenerateOptions::default().max_new_tokens(0),
            random(-1.0, None, None),
            random(0.0, None, None),
            random(f32::NAN, None, None),
            random(1.0, None, Some(0.0)),
            random(1.0, None, Some(1.5)),
            random(1.0, Some(0), None),
            GenerateOptions {
                repetition_penalty: Some(0.0),
                ..Default::default()
            },
            GenerateOptions::default().top_logits(0),
            GenerateOptions::default().stop_strings([""]),
        ];
        for o in bad {
            assert!(matches!(o.validate(), Err(Error::Options(_))), "{o:?}");
        }
        assert!(
            GenerateOptions::default()
                .sample(0.7, 1)
                .top_k(40)
                .top_p(0.9)
                .validate()
                .is_ok()
        );
    }
}
