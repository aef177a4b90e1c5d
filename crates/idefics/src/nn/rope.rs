//! Rotary position embedding, "default" type, rotate-half (non-interleaved) layout (spec §7).

use super::Kernels;
use candle_core::{DType, Device, Result, Tensor, D};

/// Precomputed inverse frequencies of one head dimension.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    inv_freq: Tensor,
    head_dim: usize,
    kernels: Kernels,
}

/// cos / sin tables for a batch of position ids, each `[B, L, head_dim]` in the activation dtype.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl RotaryEmbedding {
    /// `inv_freq[i] = 1 / theta^(2i/d)` computed in f32, as transformers' `_compute_default_rope_parameters`.
    pub fn new(theta: f64, head_dim: usize, device: &Device, kernels: &Kernels) -> Result<Self> {
        let theta = theta as f32;
        let inv: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let inv_freq = Tensor::from_vec(inv, (1, 1, head_dim / 2), device)?;
        Ok(Self {
            inv_freq,
            head_dim,
            kernels: kernels.clone(),
        })
    }

    /// Tables for integer `position_ids [B, L]`: freqs in f32, `emb = cat(freqs, freqs)`, cos/sin in f32, then cast.
    pub fn tables(&self, position_ids: &Tensor, dtype: DType) -> Result<RopeTables> {
        let pos = position_ids.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        let freqs = pos.broadcast_mul(&self.inv_freq)?;
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?;
        Ok(RopeTables {
            cos: emb.cos()?.to_dtype(dtype)?,
            sin: emb.sin()?.to_dtype(dtype)?,
        })
    }

    /// `x * cos + rotate_half(x) * sin` for `x [B, H, L, head_dim]`.
    pub fn apply(&self, xs: &Tensor, t: &RopeTables) -> Result<Tensor> {
        let half = self.head_dim / 2;
        if self.kernels.use_fused(&[xs, &t.cos, &t.sin]) {
            // candle's kernel takes the first half of the (duplicated) tables, `[B, L, d/2]`.
            let cos = t.cos.narrow(D::Minus1, 0, half)?.contiguous()?;
            let sin = t.sin.narrow(D::Minus1, 0, half)?.contiguous()?;
            return candle_nn::rotary_emb::rope(&xs.contiguous()?, &cos, &sin);
        }
        if super::train_kernels::applies(&[xs, &t.cos, &t.sin])
            && !t.cos.track_op()
            && !t.sin.track_op()
        {
            return super::train_kernels::rope(xs, &t.cos, &t.sin);
        }
        let cos = t.cos.unsqueeze(1)?;
        let sin = t.sin.unsqueeze(1)?;
        let x1 = xs.narrow(D::Minus1, 0, half)?;
        let x2 = xs.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        xs.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }
}
