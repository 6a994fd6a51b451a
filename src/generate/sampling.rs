//! Choosing the next token from logits: greedy, or sampling with temperature, top-k,
//! top-p and a repetition penalty, from a seeded generator so that the same seed gives
//! the same output on the same backend.
//!
//! The processors run in transformers' order: repetition penalty, temperature, top-k,
//! top-p, then a draw from the softmax.

use super::options::Sampling;

/// SplitMix64: tiny, fast and fully determined by its seed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks tokens for one sequence (settings validated by `GenerateOptions`).
#[derive(Debug, Clone)]
pub(crate) struct Sampler {
    sampling: Sampling,
    repetition_penalty: Option<f32>,
    rng: Rng,
}

impl Sampler {
    /// The sampler of batch row `row`: its generator is seeded with `seed + row`.
    pub fn new(sampling: Sampling, repetition_penalty: Option<f32>, row: usize) -> Self {
        let seed = match sampling {
            Sampling::Random { seed, .. } => seed.wrapping_add(row as u64),
            Sampling::Greedy => 0,
        };
        Sampler {
            sampling,
            repetition_penalty,
            rng: Rng(seed),
        }
    }

    /// Whether the penalty needs the ids seen so far.
    pub fn needs_history(&self) -> bool {
        self.repetition_penalty.is_some()
    }

    /// The next token given this step's logits and the ids seen so far (prompt and
    /// generated, for the repetition penalty). `logits` is used as scratch space.
    pub fn next(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        if let Some(penalty) = self.repetition_penalty {
            // Each id once, however often it occurred.
            let mut seen: Vec<u32> = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
                }
            }
        }
        let Sampling::Random {
            temperature,
            top_k,
            top_p,
            ..
        } = self.sampling
        else {
            return argmax(logits);
        };
        // Candidates sorted by logit, largest first (stable on ties: lower id first).
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let key = |i: &u32| logits[*i as usize];
        let keep = top_k.unwrap_or(order.len()).clamp(1, order.len().max(1));
        if keep < order.len() {
            order.select_nth_unstable_by(keep - 1, |a, b| key(b).total_cmp(&key(a)).then(a.cmp(b)));
            order.truncate(keep);
        }
        order.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.cmp(b)));
        let max = order.first().map_or(0.0, |&i| logits[i as usize]);
        let t = f64::from(temperature);
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| ((f64::from(logits[i as usize]) - f64::from(max)) / t).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(top_p) = top_p.filter(|&p| p < 1.0) {
            // Smallest prefix whose probability reaches top_p (at least one token).
            let mut cum = 0.0;
            let mut cut = probs.len();
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= f64::from(top_p) {
                    cut = i + 1;
                    break;
                }
            }
            probs.truncate(cut);
            order.truncate(cut);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let u = self.rng.next_f64();
        let mut cum = 0.0;
        for (&id, p) in order.iter().zip(&probs) {
            cum += p;
            if u < cum {
                return id;
            }
        }
        order.last().copied().unwrap_or(0)
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

    fn random(temperature: f32, top_k: Option<usize>, top_p: Option<f32>, seed: u64) -> Sampler {
        let sampling = Sampling::Random {
            temperature,
            top_k,
            top_p,
            seed,
        };
        Sampler::new(sampling, None, 0)
    }

    #[test]
    fn argmax_and_top_k() {
        let l = [0.5, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(argmax(&l), 1);
        assert_eq!(top_k(&l, 3), vec![(1, 3.0), (3, 3.0), (4, 2.0)]);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_varies() {
        let logits = [1.0, 1.2, 0.9, 1.1, 0.0];
        let draw = |seed| {
            let mut s = random(1.0, None, None, seed);
            (0..64)
                .map(|_| s.next(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let a = draw(7);
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 2);
    }

    #[test]
    fn top_k_one_and_greedy_pick_the_argmax() {
        let logits = [0.5, 3.0, 2.9, -1.0];
        let mut s = random(5.0, Some(1), None, 1);
        let mut g = Sampler::new(Sampling::Greedy, None, 0);
        for _ in 0..20 {
            assert_eq!(s.next(&mut logits.clone(), &[]), 1);
            assert_eq!(g.next(&mut logits.clone(), &[]), 1);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_sufficient_set() {
        // Probabilities about 0.84, 0.11, 0.04, ...: top_p 0.8 leaves only the first.
        let logits = [4.0, 2.0, 1.0, 0.0];
        let mut s = random(1.0, None, Some(0.8), 3);
        assert!((0..50).all(|_| s.next(&mut logits.clone(), &[]) == 0));
    }

    #[test]
    fn repetition_penalty_discourages_seen_tokens() {
        let logits = [2.0, 1.9, -1.0];
        let mut s = Sampler::new(Sampling::Greedy, Some(1.5), 0);
        assert_eq!(s.next(&mut logits.clone(), &[0, 0]), 1);
        let mut l = logits;
        s.next(&mut l, &[2]);
        assert_eq!(l[2], -1.5);
    }
}
