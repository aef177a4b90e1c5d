//! Walking a model's parameters by their checkpoint names.
//!
//! Every block implements [`VisitParams`]; the walk hands each linear layer (by module path, e.g.
//! `model.text_model.layers.0.self_attn.q_proj`) and each other parameter tensor (by checkpoint name, e.g.
//! `model.text_model.norm.weight`) to a [`ParamVisitor`]. Training uses it to decide what trains and how;
//! export uses it to write the weights back under the names transformers expects.

use super::Linear;
use crate::quant::QWeight;
use candle_core::{Result, Tensor};

/// Receives the parameters of a model, one at a time, and may replace them.
pub trait ParamVisitor {
    /// A linear layer at module path `path` (its weight is `{path}.weight`).
    fn linear(&mut self, path: &str, layer: &mut Linear) -> Result<()>;
    /// Any other parameter tensor under its checkpoint name.
    fn tensor(&mut self, name: &str, tensor: &mut Tensor) -> Result<()>;
    /// A quantized parameter that is not a linear layer's (quantized token embeddings) under its checkpoint
    /// name. Inference only; the default skips it.
    fn quantized(&mut self, _name: &str, _weight: &QWeight) -> Result<()> {
        Ok(())
    }
}

/// A block whose parameters can be walked.
pub trait VisitParams {
    /// Visits every parameter below `prefix` (the block's own module path).
    fn visit_params(&mut self, prefix: &str, visitor: &mut dyn ParamVisitor) -> Result<()>;
}

/// `prefix.name`, or `name` at the root.
pub fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
