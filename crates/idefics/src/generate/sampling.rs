//! Choosing the next token from a row of logits, in the order transformers applies its processors:
//! repetition penalty, banned tokens, then (when sampling) temperature, top-k, top-p.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to pick the next token. `temperature == 0` (or `None`) means greedy decoding.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SamplingParams {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: u64,
}

/// Errors for sampling parameters a user gave us.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplingError {
    #[error("temperature must be a finite number >= 0, got {0}")]
    Temperature(f32),
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f32),
    #[error("top_k must be >= 1, got 0")]
    TopK,
    #[error("repetition_penalty must be a finite number > 0, got {0}")]
    RepetitionPenalty(f32),
    #[error("every token is banned or has probability zero: nothing can be sampled")]
    NothingToSample,
}

impl SamplingParams {
    /// Checks the values once, before any generation starts.
    pub fn validate(&self) -> Result<(), SamplingError> {
        if let Some(t) = self.temperature {
            if !t.is_finite() || t < 0.0 {
                return Err(SamplingError::Temperature(t));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(SamplingError::TopP(p));
            }
        }
        if self.top_k == Some(0) {
            return Err(SamplingError::TopK);
        }
        if let Some(r) = self.repetition_penalty {
            if !r.is_finite() || r <= 0.0 {
                return Err(SamplingError::RepetitionPenalty(r));
            }
        }
        Ok(())
    }

    /// Greedy when no positive temperature is set (transformers' `do_sample=False`).
    pub fn is_greedy(&self) -> bool {
        self.temperature.is_none_or(|t| t == 0.0)
    }
}

/// A seeded sampler: the same seed, logits and history give the same tokens.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self, SamplingError> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Self { params, rng })
    }

    /// Picks the next token for one sequence; `history` is every token id so far (prompt included, as
    /// transformers' repetition penalty sees it); `banned` ids can never be chosen.
    pub fn next_token(
        &mut self,
        logits: &[f32],
        history: &[u32],
        banned: &[u32],
    ) -> Result<u32, SamplingError> {
        let mut scores = logits.to_vec();
        if let Some(penalty) = self.params.repetition_penalty {
            apply_repetition_penalty(&mut scores, history, penalty);
        }
        for &id in banned {
            if let Some(s) = scores.get_mut(id as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
        if self.params.is_greedy() {
            return argmax(&scores).ok_or(SamplingError::NothingToSample);
        }
        let temperature = self.params.temperature.unwrap_or(1.0);
        for s in scores.iter_mut() {
            *s /= temperature;
        }
        let candidates = top_candidates(&scores, self.params.top_k, self.params.top_p);
        if candidates.is_empty() {
            return Err(SamplingError::NothingToSample);
        }
        let total: f64 = candidates.iter().map(|&(_, p)| p).sum();
        let mut draw = self.rng.random::<f64>() * total;
        for &(id, p) in &candidates {
            if draw < p {
                return Ok(id);
            }
            draw -= p;
        }
        Ok(candidates[candidates.len() - 1].0)
    }
}

/// transformers' RepetitionPenaltyLogitsProcessor: each distinct seen token's score is divided by the penalty when
/// positive and multiplied by it when negative.
fn apply_repetition_penalty(scores: &mut [f32], history: &[u32], penalty: f32) {
    let mut seen = std::collections::HashSet::new();
    for &id in history {
        if !seen.insert(id) {
            continue;
        }
        if let Some(s) = scores.get_mut(id as usize) {
            *s = if *s < 0.0 { *s * penalty } else { *s / penalty };
        }
    }
}

/// The first index of the maximum, as torch.argmax; `None` if every score is -inf or NaN.
pub fn argmax(scores: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &s) in scores.iter().enumerate() {
        if s.is_nan() || s == f32::NEG_INFINITY {
            continue;
        }
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i as u32)
}

/// Softmax probabilities of the tokens that survive top-k then top-p, highest first.
fn top_candidates(scores: &[f32], top_k: Option<usize>, top_p: Option<f32>) -> Vec<(u32, f64)> {
    let mut order: Vec<(u32, f32)> = scores
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_finite())
        .map(|(i, &s)| (i as u32, s))
        .collect();
    // Stable sort keeps the lower id first among equal scores.
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let Some(k) = top_k {
        order.truncate(k);
    }
    let Some(&(_, max)) = order.first() else {
        return Vec::new();
    };
    let mut probs: Vec<(u32, f64)> = order
        .iter()
        .map(|&(i, s)| (i, ((s - max) as f64).exp()))
        .collect();
    let sum: f64 = probs.iter().map(|p| p.1).sum();
    for p in probs.iter_mut() {
        p.1 /= sum;
    }
    if let Some(top_p) = top_p {
        // transformers keeps the smallest prefix whose mass reaches top_p (always at least one token).
        let mut mass = 0.0;
        let mut keep = 0;
        for (i, p) in probs.iter().enumerate() {
            keep = i + 1;
            mass += p.1;
            if mass >= top_p as f64 {
                break;
            }
        }
        probs.truncate(keep.max(1));
    }
    probs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum_and_skips_banned() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.next_token(&[0.0, 3.0, 5.0, 3.0], &[], &[2]).unwrap(), 1);
        assert_eq!(argmax(&[1.0, 4.0, 4.0]), Some(1));
    }

    #[test]
    fn all_banned_is_an_error_not_a_panic() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(
            s.next_token(&[1.0, 2.0], &[], &[0, 1]),
            Err(SamplingError::NothingToSample)
        );
    }

    #[test]
    fn repetition_penalty_matches_transformers_rule() {
        let mut scores = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut scores, &[0, 1, 1], 2.0);
        assert_eq!(scores, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn sampling_is_reproducible_from_the_seed_and_respects_top_k() {
        let params = SamplingParams {
            temperature: Some(1.0),
            top_k: Some(2),
            seed: 7,
            ..Default::default()
        };
        let logits = [0.0, 1.0, 1.1, -3.0];
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone()).unwrap();
            (0..50)
                .map(|_| s.next_token(&logits, &[], &[]).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(&params);
        assert_eq!(a, draw(&params));
        assert!(
            a.iter().all(|&t| t == 1 || t == 2),
            "top-k=2 must keep only ids 1 and 2: {a:?}"
        );
        assert!(a.contains(&1) && a.contains(&2));
    }

    #[test]
    fn top_p_keeps_smallest_prefix_reaching_mass() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]
        let scores = [3.0f32, 2.0, 1.0, 0.0];
        let kept = top_candidates(&scores, None, Some(0.8));
        assert_eq!(kept.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 1]);
        let kept = top_candidates(&scores, None, Some(0.5));
        assert_eq!(kept.len(), 1);
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        let bad = |p: SamplingParams| Sampler::new(p).err();
        assert!(bad(SamplingParams {
            temperature: Some(-1.0),
            ..Default::default()
        })
        .is_some());
        assert!(bad(SamplingParams {
            top_p: Some(0.0),
            ..Default::default()
        })
        .is_some());
        assert!(bad(SamplingParams {
            top_p: Some(1.5),
            ..Default::default()
        })
        .is_some());
        assert!(bad(SamplingParams {
            top_k: Some(0),
            ..Default::default()
        })
        .is_some());
        assert!(bad(SamplingParams {
            repetition_penalty: Some(f32::NAN),
            ..Default::default()
        })
        .is_some());
    }
}
