//! Causal language-model cross-entropy, as transformers' `ForCausalLMLoss` computes it.
//!
//! Logits are upcast to f32; labels are shifted left by one (position t predicts label t+1, the last
//! position predicts nothing); label `-100` is ignored; the loss is the mean over the remaining
//! tokens. `nll_i = logsumexp(z_i) - z_i[y_i]` with the row max subtracted for stability: for f32 on the CPU one
//! fused op with its own backward (`idefics::nn::train_kernels::token_nll`, which keeps no `[tokens, vocab]`
//! intermediate alive for the backward pass), elsewhere composed from differentiable candle ops (candle 0.11's
//! fused `softmax_last_dim` has no backward).
//!
//! When every label is ignored, torch returns NaN (0 / 0). We return [`TrainError::Invalid`]
//! instead, so a training loop can skip the batch knowingly; use [`causal_lm_loss_sum`] to
//! accumulate over micro-batches (transformers' `num_items_in_batch`).
//!
//! The trainer calls [`causal_lm_loss_sum_from_hidden`]: with answer-only labels most positions do not
//! count, and only the labelled ones need the `[*, vocab]` head output and its softmax.

use super::TrainError;
use candle_core::{DType, Tensor, D};

/// transformers' `ignore_index`.
pub const IGNORE_INDEX: i64 = -100;

/// Summed token losses and how many tokens contributed.
#[derive(Debug)]
pub struct LossSum {
    /// f32 scalar: the sum of the per-token negative log-likelihoods.
    pub sum: Tensor,
    /// Number of labels that were not `IGNORE_INDEX`.
    pub n_tokens: usize,
}

/// Labels shifted left by one, checked against the vocabulary: per predicting position `(row, pos)` with
/// `pos < t - 1`, in row-major order, the target and whether it counts.
struct ShiftedLabels {
    targets: Vec<u32>,
    keep: Vec<bool>,
}

impl ShiftedLabels {
    fn new(labels: &Tensor, b: usize, t: usize, v: usize) -> Result<Self, TrainError> {
        if labels.dims() != [b, t] {
            return Err(TrainError::Invalid(format!(
                "labels shape {:?} does not match [batch, seq] = [{b}, {t}]",
                labels.dims()
            )));
        }
        // Shift on the host: labels are small, and checking their range here gives a clear error where
        // torch would raise "Target n is out of bounds".
        let labels = labels.to_dtype(DType::I64)?.to_vec2::<i64>()?;
        let mut targets = Vec::with_capacity(b * t.saturating_sub(1));
        let mut keep = Vec::with_capacity(targets.capacity());
        for (row, ls) in labels.iter().enumerate() {
            for (pos, &l) in ls.iter().enumerate().skip(1) {
                if l == IGNORE_INDEX {
                    targets.push(0u32);
                    keep.push(false);
                } else if l < 0 || l as usize >= v {
                    return Err(TrainError::Invalid(format!(
                        "label {l} at [{row}, {pos}] is outside the vocabulary [0, {v}) and is not {IGNORE_INDEX}"
                    )));
                } else {
                    targets.push(l as u32);
                    keep.push(true);
                }
            }
        }
        Ok(Self { targets, keep })
    }

    fn n_tokens(&self) -> usize {
        self.keep.iter().filter(|&&k| k).count()
    }

    /// Per predicting position: 1 where the label counts, 0 where it is ignored.
    fn weights(&self) -> Vec<f32> {
        self.keep.iter().map(|&k| f32::from(u8::from(k))).collect()
    }
}

/// Sum over rows of `logits [n, v]` of `logsumexp(z) - z[target]`, each row weighted by `weight` (1 or 0).
fn nll_sum(z: &Tensor, targets: Vec<u32>, weight: Option<Vec<f32>>) -> Result<Tensor, TrainError> {
    let (n, _) = z.dims2()?;
    let dev = z.device();
    let z = z.to_dtype(DType::F32)?;
    if idefics::nn::train_kernels::applies(&[&z]) {
        // One fused op: no `[n, vocab]` intermediates kept for the backward pass (`token_nll`).
        let weight = weight.unwrap_or_else(|| vec![1.0; n]);
        return Ok(idefics::nn::train_kernels::token_nll(&z, targets, weight)?.sum_all()?);
    }
    // The max only stabilises exp(); it cancels in the gradient, so it is taken off the graph.
    let max = z.max_keepdim(D::Minus1)?.detach();
    let shifted = z.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?; // [n, 1]
    let targets = Tensor::from_vec(targets, (n, 1), dev)?;
    let picked = shifted.gather(&targets, D::Minus1)?; // [n, 1]
    let nll = (lse - picked)?.squeeze(1)?;
    Ok(match weight {
        Some(w) => (nll * Tensor::from_vec(w, n, dev)?)?.sum_all()?,
        None => nll.sum_all()?,
    })
}

/// Sum of the causal-LM token losses for `logits [b, t, v]` and `labels [b, t]` (integer dtype).
pub fn causal_lm_loss_sum(logits: &Tensor, labels: &Tensor) -> Result<LossSum, TrainError> {
    let (b, t, v) = logits.dims3().map_err(|_| {
        TrainError::Invalid(format!(
            "logits must be [batch, seq, vocab], got {:?}",
            logits.dims()
        ))
    })?;
    let shifted = ShiftedLabels::new(labels, b, t, v)?;
    let n_tokens = shifted.n_tokens();
    let n = shifted.targets.len();
    if n == 0 {
        return Ok(LossSum {
            sum: Tensor::zeros((), DType::F32, logits.device())?,
            n_tokens: 0,
        });
    }
    let z = logits.narrow(1, 0, t - 1)?.reshape((n, v))?;
    let weight = shifted.weights();
    let sum = nll_sum(&z, shifted.targets, Some(weight))?;
    Ok(LossSum { sum, n_tokens })
}

/// The same sum from the final hidden states `hidden [b, t, d]` and the output head `head` (`[k, d]` ->
/// `[k, v]`), with `vocab` its output width. When fewer than three quarters of the positions have a label
/// (answer-only fine-tuning, where most of a sequence is prompt and image tokens), only the labelled
/// positions go through the head and the softmax: the same token losses and gradients, without the
/// `[b, t, v]` logits of positions that do not count. Otherwise every position does, as
/// [`causal_lm_loss_sum`] (gathering rows would cost more than it saves).
pub fn causal_lm_loss_sum_from_hidden(
    hidden: &Tensor,
    head: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    vocab: usize,
    labels: &Tensor,
) -> Result<LossSum, TrainError> {
    let (b, t, d) = hidden.dims3().map_err(|_| {
        TrainError::Invalid(format!(
            "hidden states must be [batch, seq, hidden], got {:?}",
            hidden.dims()
        ))
    })?;
    let shifted = ShiftedLabels::new(labels, b, t, vocab)?;
    let n_tokens = shifted.n_tokens();
    let n = shifted.targets.len();
    // No label at all keeps the full path: its zero sum stays attached to the graph, as before.
    if n_tokens == 0 || t < 2 {
        return causal_lm_loss_sum(&head(hidden)?, labels);
    }
    if n_tokens * 4 >= n * 3 {
        // The last position predicts nothing: leaving it out before the head spares a copy of the logits in
        // the forward pass and a zero-padded one of their gradient in the backward pass.
        let z = head(&hidden.narrow(1, 0, t - 1)?)?;
        if z.dims() != [b, t - 1, vocab] {
            return Err(TrainError::Invalid(format!(
                "the output head gave {:?} for {b} x {} positions, expected [{b}, {}, {vocab}]",
                z.dims(),
                t - 1,
                t - 1
            )));
        }
        let weight = shifted.weights();
        let sum = nll_sum(&z.reshape((n, vocab))?, shifted.targets, Some(weight))?;
        return Ok(LossSum { sum, n_tokens });
    }
    // Predicting position `pos` of `row` is row `row * t + pos` of the flattened hidden states.
    let mut rows = Vec::with_capacity(n_tokens);
    let mut targets = Vec::with_capacity(n_tokens);
    for (i, (&keep, &target)) in shifted.keep.iter().zip(&shifted.targets).enumerate() {
        if keep {
            let (row, pos) = (i / (t - 1), i % (t - 1));
            rows.push((row * t + pos) as u32);
            targets.push(target);
        }
    }
    let rows = Tensor::from_vec(rows, n_tokens, hidden.device())?;
    let selected = hidden.reshape((b * t, d))?.index_select(&rows, 0)?;
    let z = head(&selected)?;
    if z.dims() != [n_tokens, vocab] {
        return Err(TrainError::Invalid(format!(
            "the output head gave {:?} for {n_tokens} positions, expected [{n_tokens}, {vocab}]",
            z.dims()
        )));
    }
    let sum = nll_sum(&z, targets, None)?;
    Ok(LossSum { sum, n_tokens })
}

/// Mean causal-LM loss over the non-ignored tokens (transformers' default `reduction="mean"`).
/// Errors when no token has a label.
pub fn causal_lm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor, TrainError> {
    let LossSum { sum, n_tokens } = causal_lm_loss_sum(logits, labels)?;
    if n_tokens == 0 {
        return Err(TrainError::Invalid(
            "every label is -100 (ignored): the loss is undefined for this batch".into(),
        ));
    }
    Ok((sum / n_tokens as f64)?)
}
