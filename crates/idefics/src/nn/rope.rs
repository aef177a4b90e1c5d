//! Rotary position embedding, rotate-half (non-interleaved) layout: the "default" type (Mistral, Idefics2) and
//! the frequency scalings of Llama checkpoints ("linear", "llama3"), as transformers'
//! `modeling_rope_utils.py` computes them.

use super::Kernels;
use candle_core::{DType, Device, Result, Tensor, D};
use serde::{Deserialize, Serialize};

/// How the inverse frequencies are rescaled (`rope_parameters.rope_type` of a config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// `inv_freq[i] = 1 / theta^(2i/d)`.
    #[default]
    Default,
    /// Default frequencies divided by `factor` (positions stretched by `factor`).
    Linear { factor: f64 },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth blend in between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

impl RopeScaling {
    /// The scaled inverse frequencies for `head_dim`, in f32 with transformers' operation order
    /// (`_compute_linear_scaling_rope_parameters`, `_compute_llama3_parameters`). PyTorch evaluates
    /// `scalar / tensor` as `tensor.reciprocal() * scalar`, which is reproduced here.
    pub fn inv_freq(&self, theta: f64, head_dim: usize) -> Vec<f32> {
        let base = default_inv_freq(theta, head_dim);
        match *self {
            Self::Default => base,
            Self::Linear { factor } => base.into_iter().map(|f| f / factor as f32).collect(),
            Self::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = original_max_position_embeddings as f64;
                let low_wavelen = (old / low_freq_factor) as f32;
                let high_wavelen = (old / high_freq_factor) as f32;
                let two_pi = (2.0 * std::f64::consts::PI) as f32;
                let factor = factor as f32;
                let low = low_freq_factor as f32;
                let span = (high_freq_factor - low_freq_factor) as f32;
                base.into_iter()
                    .map(|inv| {
                        let wavelen = inv.recip() * two_pi;
                        let scaled = if wavelen > low_wavelen {
                            inv / factor
                        } else {
                            inv
                        };
                        let is_medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if is_medium {
                            let smooth = (wavelen.recip() * old as f32 - low) / span;
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        }
    }
}

/// `1 / theta^(2i/d)` in f32, as transformers' `_compute_default_rope_parameters`.
fn default_inv_freq(theta: f64, head_dim: usize) -> Vec<f32> {
    let theta = theta as f32;
    (0..head_dim / 2)
        .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect()
}

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
        Self::with_scaling(theta, head_dim, &RopeScaling::Default, device, kernels)
    }

    /// Inverse frequencies rescaled by `scaling` (Llama checkpoints' `rope_parameters`).
    pub fn with_scaling(
        theta: f64,
        head_dim: usize,
        scaling: &RopeScaling,
        device: &Device,
        kernels: &Kernels,
    ) -> Result<Self> {
        let inv = scaling.inv_freq(theta, head_dim);
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
