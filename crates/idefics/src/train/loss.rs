//! Causal language-model cross-entropy, as transformers' `ForCausalLMLoss` computes it.
//!
//! Logits are upcast to f32; labels are shifted left by one (position t predicts label t+1, the last
//! position predicts nothing); label `-100` is ignored; the loss is the mean over the remaining
//! tokens. Built from differentiable candle ops only (the fused `softmax_last_dim` has no backward,
//! rust-stack §1.3): `nll_i = logsumexp(z_i) - z_i[y_i]` with the row max subtracted for stability.
//!
//! When every label is ignored, torch returns NaN (0 / 0). We return [`TrainError::Invalid`]
//! instead, so a training loop can skip the batch knowingly; use [`causal_lm_loss_sum`] to
//! accumulate over micro-batches (transformers' `num_items_in_batch`).

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

/// Sum of the causal-LM token losses for `logits [b, t, v]` and `labels [b, t]` (integer dtype).
pub fn causal_lm_loss_sum(logits: &Tensor, labels: &Tensor) -> Result<LossSum, TrainError> {
    let (b, t, v) = logits.dims3().map_err(|_| {
        TrainError::Invalid(format!(
            "logits must be [batch, seq, vocab], got {:?}",
            logits.dims()
        ))
    })?;
    if labels.dims() != [b, t] {
        return Err(TrainError::Invalid(format!(
            "labels shape {:?} does not match logits [batch, seq] = [{b}, {t}]",
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
                keep.push(0f32);
            } else if l < 0 || l as usize >= v {
                return Err(TrainError::Invalid(format!(
                    "label {l} at [{row}, {pos}] is outside the vocabulary [0, {v}) and is not {IGNORE_INDEX}"
                )));
            } else {
                targets.push(l as u32);
                keep.push(1f32);
            }
        }
    }
    let n_tokens = keep.iter().filter(|&&k| k > 0.0).count();
    let n = targets.len();
    let dev = logits.device();
    if n == 0 {
        return Ok(LossSum {
            sum: Tensor::zeros((), DType::F32, dev)?,
            n_tokens: 0,
        });
    }
    let z = logits
        .narrow(1, 0, t - 1)?
        .to_dtype(DType::F32)?
        .reshape((n, v))?;
    // The max only stabilises exp(); it cancels in the gradient, so it is taken off the graph.
    let max = z.max_keepdim(D::Minus1)?.detach();
    let shifted = z.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?; // [n, 1]
    let targets = Tensor::from_vec(targets, (n, 1), dev)?;
    let picked = shifted.gather(&targets, D::Minus1)?; // [n, 1]
    let nll = (lse - picked)?.squeeze(1)?;
    let keep = Tensor::from_vec(keep, n, dev)?;
    let sum = (nll * keep)?.sum_all()?;
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
