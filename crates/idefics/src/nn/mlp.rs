//! Gated (SwiGLU-style) MLP `down(act(gate(x)) * up(x))`: Mistral's and Llama's MLP, the connector's modality
//! projection and the perceiver's MLP (`Idefics2MLP` / `MistralMLP` / `LlamaMLP`); biases only with Llama's `mlp_bias`.

use super::{Activation, Linear};
use crate::model::parts::{builders, visit_parts, Part};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// `gate_proj`, `up_proj`, `down_proj` with an activation on the gate.
#[derive(Debug, Clone)]
pub struct GatedMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl GatedMlp {
    /// Checkpoint names of the parts, in field order (loading and `visit_params` both use this list).
    const PARTS: [&'static str; 3] = ["gate_proj", "up_proj", "down_proj"];

    pub fn load(
        vb: VarBuilder,
        in_dim: usize,
        hidden: usize,
        out_dim: usize,
        act: Activation,
    ) -> Result<Self> {
        Self::load_with_bias(vb, in_dim, hidden, out_dim, act, false)
    }

    /// As [`Self::load`], with biases on all three projections when `bias` (Llama's `mlp_bias`).
    pub fn load_with_bias(
        vb: VarBuilder,
        in_dim: usize,
        hidden: usize,
        out_dim: usize,
        act: Activation,
        bias: bool,
    ) -> Result<Self> {
        let [gate, up, down] = builders(&vb, Self::PARTS);
        Ok(Self {
            gate_proj: Linear::load(gate, in_dim, hidden, bias)?,
            up_proj: Linear::load(up, in_dim, hidden, bias)?,
            down_proj: Linear::load(down, hidden, out_dim, bias)?,
            act,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?;
        let up = self.up_proj.forward(xs)?;
        if self.act == Activation::Silu && super::cpu_kernels::applies(&[&gate, &up]) {
            return self
                .down_proj
                .forward(&super::cpu_kernels::silu_mul(&gate, &up)?);
        }
        self.down_proj.forward(&(self.act.forward(&gate)? * up)?)
    }
}

impl super::VisitParams for GatedMlp {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn super::ParamVisitor) -> Result<()> {
        let parts = [
            Part::Linear(&mut self.gate_proj),
            Part::Linear(&mut self.up_proj),
            Part::Linear(&mut self.down_proj),
        ];
        visit_parts(prefix, v, Self::PARTS, parts)
    }
}
