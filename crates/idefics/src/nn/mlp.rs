//! Gated (SwiGLU-style) MLP `down(act(gate(x)) * up(x))`: Mistral's and Llama's MLP, the connector's modality
//! projection and the perceiver's MLP (`Idefics2MLP` / `MistralMLP` / `LlamaMLP`); biases only with Llama's `mlp_bias`.

use super::{Activation, Linear};
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
        Ok(Self {
            gate_proj: Linear::load(vb.pp("gate_proj"), in_dim, hidden, bias)?,
            up_proj: Linear::load(vb.pp("up_proj"), in_dim, hidden, bias)?,
            down_proj: Linear::load(vb.pp("down_proj"), hidden, out_dim, bias)?,
            act,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.act.forward(&self.gate_proj.forward(xs)?)?;
        let up = self.up_proj.forward(xs)?;
        self.down_proj.forward(&(gate * up)?)
    }
}

impl super::VisitParams for GatedMlp {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn super::ParamVisitor) -> Result<()> {
        use super::join_path;
        v.linear(&join_path(prefix, "gate_proj"), &mut self.gate_proj)?;
        v.linear(&join_path(prefix, "up_proj"), &mut self.up_proj)?;
        v.linear(&join_path(prefix, "down_proj"), &mut self.down_proj)
    }
}
