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

    /// Applies the activation (all three are differentiable in candle; in training on the CPU, the two that
    /// the Idefics2 models use go through fused kernels with their own backward pass).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if super::train_kernels::applies(&[xs]) {
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
