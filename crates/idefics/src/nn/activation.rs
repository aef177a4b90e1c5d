//! Activation functions named as in Hugging Face configs (`hidden_act`).

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// The activations Idefics2 checkpoints use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(x)` (Mistral MLP, connector).
    Silu,
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` (SigLIP MLP).
    GeluPytorchTanh,
    /// Exact erf GELU (`nn.GELU()`).
    Gelu,
}

impl Activation {
    /// Maps a transformers `ACT2FN` name; `None` for names this crate does not implement.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "silu" | "swish" => Some(Self::Silu),
            "gelu_pytorch_tanh" => Some(Self::GeluPytorchTanh),
            "gelu" => Some(Self::Gelu),
            _ => None,
        }
    }

    /// Applies the activation (all three are differentiable in candle; on the CPU in f32, the two that the
    /// models use go through one fused pass, with its own backward pass in training). In inference the fused
    /// pass replaces candle's `gelu`, which calls libm's `tanhf` per element (13 % of a vision encode in a
    /// profile); its tanh is a rational approximation within a few ulp (`train_kernels::pointwise`).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if super::train_kernels::applies(&[xs]) || super::cpu_kernels::applies(&[xs]) {
            match self {
                Self::Silu => return super::train_kernels::silu(xs),
                Self::GeluPytorchTanh => return super::train_kernels::gelu_tanh(xs),
                Self::Gelu => {}
            }
        }
        match self {
            Self::Silu => xs.silu(),
            // candle's `gelu` is the tanh approximation; `gelu_erf` the exact one.
            Self::GeluPytorchTanh => xs.gelu(),
            Self::Gelu => xs.gelu_erf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Inference (no autograd) on the CPU takes the fused pass: SiLU bit for bit as candle's, the tanh GELU within
    /// 1e-6 (its tanh saturates a little earlier: GELU(-5.6) is -1.5e-7 in candle, -0 here).
    #[test]
    fn fused_inference_activations_match_candle() {
        if !super::super::cpu_kernels::enabled() {
            return;
        }
        let values: Vec<f32> = (0..4099).map(|i| (i as f32 - 2049.0) / 173.0).collect();
        let xs = Tensor::from_vec(values, (4099,), &Device::Cpu).unwrap();
        for (act, reference, tolerance) in [
            (Activation::GeluPytorchTanh, xs.gelu().unwrap(), 1e-6),
            (Activation::Silu, xs.silu().unwrap(), 0.0),
        ] {
            let ours: Vec<f32> = act.forward(&xs).unwrap().to_vec1().unwrap();
            let theirs: Vec<f32> = reference.to_vec1().unwrap();
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert!(
                    (a - b).abs() <= tolerance * b.abs().max(1.0),
                    "{act:?} at {i}: {a} vs {b}"
                );
            }
            if act == Activation::GeluPytorchTanh {
                // Not candle's op: the saturated tail shows which tanh ran.
                assert_ne!(ours, theirs, "inference GELU did not take the fused pass");
            }
        }
    }
}
