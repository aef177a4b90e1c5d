//! Building blocks shared by the vision tower, the connector and the text decoder.
//!
//! Every block has a differentiable path made of ordinary candle ops. candle's fused kernels (`rms_norm`,
//! `layer_norm`, `rope`, `softmax_last_dim`) have no backward pass in candle 0.11, so they are used only
//! when [`Kernels`] allows them AND no input takes part in autograd. When an input does, f32 tensors on the CPU
//! go through [`train_kernels`], fused kernels with their own backward pass.

pub mod activation;
pub mod attention;
pub mod cpu_kernels;
pub mod embedding;
pub mod kernel_choice;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod params;
pub mod rope;
pub mod train_kernels;

pub use activation::Activation;
pub use attention::{attention, eager_attention, mask_min_value};
pub use embedding::Embedding;
pub use kernel_choice::{set_kernels, KernelChoice, KernelFamily};
pub use linear::{Linear, LinearHook};
pub use mlp::GatedMlp;
pub use norm::{LayerNorm, RmsNorm};
pub use params::{join_path, ParamVisitor, VisitParams};
pub use rope::{RopeScaling, RotaryEmbedding};

use candle_core::Tensor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Shared switch for candle's fused (forward-only) kernels; one handle is cloned into every block of a model.
#[derive(Debug, Clone)]
pub struct Kernels(Arc<AtomicBool>);

impl Kernels {
    /// `fused = true` lets inference use the fused kernels; they are still skipped whenever a gradient is needed.
    pub fn new(fused: bool) -> Self {
        Self(Arc::new(AtomicBool::new(fused)))
    }
    pub fn set_fused(&self, fused: bool) {
        self.0.store(fused, Ordering::Relaxed)
    }
    pub fn fused_enabled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    /// True when a fused kernel may replace the composed ops for these inputs: fused kernels are enabled and no
    /// input is a variable or depends on one (a fused op would silently cut the gradient).
    pub fn use_fused(&self, inputs: &[&Tensor]) -> bool {
        self.fused_enabled() && inputs.iter().all(|t| !t.track_op())
    }
}

impl Default for Kernels {
    fn default() -> Self {
        Self::new(true)
    }
}
