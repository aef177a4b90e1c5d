//! RMSNorm (Mistral / Idefics2) and LayerNorm (SigLIP).

use super::{train_kernels, Kernels};
use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

/// `w * cast_back(x32 * rsqrt(mean(x32^2) + eps))`: statistics in f32, cast back to the activation dtype BEFORE
/// the weight multiply (transformers' `Idefics2RMSNorm` / `MistralRMSNorm`).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    kernels: Kernels,
}

impl RmsNorm {
    pub fn load(vb: VarBuilder, dim: usize, eps: f64, kernels: &Kernels) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
            kernels: kernels.clone(),
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // The fused kernel multiplies by the weight inside the f32 computation, which equals the reference only
        // when activations are f32.
        if xs.dtype() == DType::F32 && self.kernels.use_fused(&[xs, &self.weight]) {
            return candle_nn::ops::rms_norm(&xs.contiguous()?, &self.weight, self.eps as f32);
        }
        if train_kernels::applies(&[xs, &self.weight]) {
            return train_kernels::rms_norm(xs, &self.weight, self.eps);
        }
        let dtype = xs.dtype();
        let x32 = xs.to_dtype(DType::F32)?;
        let var = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (var + self.eps)?.sqrt()?.recip()?;
        x32.broadcast_mul(&inv)?
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)
    }
}

/// `(x - mean) / sqrt(var + eps) * w + b` over the last dim (biased variance), computed in f32.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    kernels: Kernels,
}

impl LayerNorm {
    pub fn load(vb: VarBuilder, dim: usize, eps: f64, kernels: &Kernels) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
            kernels: kernels.clone(),
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if xs.dtype() == DType::F32 && self.kernels.use_fused(&[xs, &self.weight, &self.bias]) {
            return candle_nn::ops::layer_norm(
                &xs.contiguous()?,
                &self.weight,
                &self.bias,
                self.eps as f32,
            );
        }
        if train_kernels::applies(&[xs, &self.weight, &self.bias]) {
            return train_kernels::layer_norm(xs, &self.weight, &self.bias, self.eps);
        }
        let dtype = xs.dtype();
        let x32 = xs.to_dtype(DType::F32)?;
        let mean = x32.mean_keepdim(D::Minus1)?;
        let centered = x32.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let w = self.weight.to_dtype(DType::F32)?;
        let b = self.bias.to_dtype(DType::F32)?;
        normed.broadcast_mul(&w)?.broadcast_add(&b)?.to_dtype(dtype)
    }
}

impl super::VisitParams for RmsNorm {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn super::ParamVisitor) -> Result<()> {
        v.tensor(&super::join_path(prefix, "weight"), &mut self.weight)
    }
}

impl super::VisitParams for LayerNorm {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn super::ParamVisitor) -> Result<()> {
        v.tensor(&super::join_path(prefix, "weight"), &mut self.weight)?;
        v.tensor(&super::join_path(prefix, "bias"), &mut self.bias)
    }
}
