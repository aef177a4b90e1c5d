//! Eager scaled-dot-product attention as transformers' `eager_attention_forward`: scores in the activation dtype,
//! additive mask with the dtype's most negative finite value, softmax in f32, grouped-query heads. [`attention`]
//! runs the fused CPU kernel instead ([`super::cpu_kernels::flash_attention`]) where it applies.

use super::Kernels;
use candle_core::{DType, Result, Tensor, D};

/// `finfo(dtype).min`: the additive mask value transformers uses. Masked keys get `exp(min - max) == 0` exactly,
/// and fully masked rows stay finite (uniform) instead of NaN.
pub fn mask_min_value(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => half::bf16::MIN.to_f64(),
        DType::F16 => half::f16::MIN.to_f64(),
        DType::F64 => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// [`eager_attention`]'s result, computed by the fused CPU kernel when fused kernels are enabled and every input
/// is f32 on the CPU without autograd (inference), and by [`eager_attention`] otherwise (training, CUDA, half
/// precision).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    kernels: &Kernels,
) -> Result<Tensor> {
    let mut inputs = vec![q, k, v];
    inputs.extend(mask);
    if kernels.use_fused(&inputs) && super::cpu_kernels::applies(&inputs) {
        super::cpu_kernels::flash_attention(q, k, v, mask, scale)
    } else {
        eager_attention(q, k, v, mask, scale, kernels)
    }
}

/// Attention for `q [B, H, Lq, D]`, `k, v [B, Hkv, Lk, D]` (H a multiple of Hkv; query head h uses kv head
/// h / (H/Hkv) like `repeat_kv`), optional additive `mask` broadcastable to `[B, H, Lq, Lk]`.
/// Returns `[B, Lq, H * D]`.
pub fn eager_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    kernels: &Kernels,
) -> Result<Tensor> {
    let (b, h, lq, d) = q.dims4()?;
    let (_, hkv, lk, _) = k.dims4()?;
    let n_rep = h / hkv;
    let dtype = q.dtype();
    // Grouped heads without copying the cache: fold the n_rep query heads of a group into its rows.
    let qg = q.contiguous()?.reshape((b, hkv, n_rep * lq, d))?;
    let scores = qg.matmul(&k.contiguous()?.t()?)?.reshape((b, h, lq, lk))?;
    // Training on the CPU: scale, mask and softmax as one node (see `train_kernels::scaled_masked_softmax`).
    let mask_is_constant = mask
        .is_none_or(|m| !m.track_op() && m.dtype() == DType::F32 && m.dims().last() == Some(&lk));
    if mask_is_constant
        && !kernels.use_fused(&[&scores])
        && super::train_kernels::applies(&[&scores])
    {
        let probs = super::train_kernels::scaled_masked_softmax(&scores, mask, scale)?
            .reshape((b, hkv, n_rep * lq, lk))?;
        let out = probs.matmul(&v.contiguous()?)?.reshape((b, h, lq, d))?;
        return out.transpose(1, 2)?.reshape((b, lq, h * d));
    }
    let mut scores = (scores * scale)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    let scores32 = scores.to_dtype(DType::F32)?;
    let probs = if kernels.use_fused(&[&scores32]) {
        candle_nn::ops::softmax_last_dim(&scores32)?
    } else if super::train_kernels::applies(&[&scores32]) {
        super::train_kernels::softmax_last_dim(&scores32)?
    } else {
        candle_nn::ops::softmax(&scores32, D::Minus1)?
    };
    let probs = probs.to_dtype(dtype)?.reshape((b, hkv, n_rep * lq, lk))?;
    let out = probs.matmul(&v.contiguous()?)?.reshape((b, h, lq, d))?;
    out.transpose(1, 2)?.reshape((b, lq, h * d))
}
