//! Gradient-flow check: every trainable tensor must receive a finite, non-zero gradient.
//!
//! Guards against candle's fused ops that silently drop the backward pass (candle 0.11's fused rms_norm /
//! softmax_last_dim / rope / QMatMul have no `bwd`: upstream parameters get no gradient while `backward()`
//! still succeeds) and against NaN/inf steps.

use super::TrainError;
use candle_core::backprop::GradStore;
use candle_core::{DType, Var};

/// Checks `grads` for each named variable; the error lists every offender with what is wrong.
pub fn check_gradient_flow(grads: &GradStore, vars: &[(String, Var)]) -> Result<(), TrainError> {
    let mut problems = Vec::new();
    for (name, var) in vars {
        let Some(g) = grads.get(var.as_tensor()) else {
            problems.push(format!("{name}: no gradient"));
            continue;
        };
        let abs_sum = g
            .to_dtype(DType::F32)?
            .abs()?
            .sum_all()?
            .to_scalar::<f32>()?;
        if !abs_sum.is_finite() {
            problems.push(format!("{name}: non-finite gradient"));
        } else if abs_sum == 0.0 {
            problems.push(format!("{name}: all-zero gradient"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(TrainError::Invalid(format!(
            "gradient flow broken for {} of {} trainable tensors: {}",
            problems.len(),
            vars.len(),
            problems.join("; ")
        )))
    }
}
