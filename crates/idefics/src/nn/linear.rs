//! Dense layer `y = x W^T + b` with PyTorch's `[out, in]` weight layout.
//!
//! At inference a layer is plain tensors. For training, [`crate::train::trainable`] turns each layer into
//! what its component needs: trainable tensors (full fine-tuning), a frozen op that gives no weight gradient,
//! or a LoRA / DoRA adapter over that frozen op.

use super::adapters::AdaptedLinear;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Shared "training" switch of a model's adapters (adapter dropout is active only while it is on).
#[derive(Debug, Clone, Default)]
pub struct TrainMode(Arc<AtomicBool>);

impl TrainMode {
    pub fn set(&self, training: bool) {
        self.0.store(training, Ordering::Relaxed)
    }
    pub fn is_training(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
enum Kind {
    /// Plain (or trainable `Var`-backed) tensors, differentiated by candle's matmul.
    Dense {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    /// Frozen base (gradient w.r.t. the input only), possibly with a LoRA / DoRA adapter.
    Adapted {
        layer: AdaptedLinear,
        mode: TrainMode,
    },
}

/// A PyTorch `nn.Linear`.
#[derive(Debug, Clone)]
pub struct Linear {
    kind: Kind,
    /// The weight's shape in the checkpoint when it is not `[out, in]` (the patch embedding is a conv).
    stored_shape: Option<Vec<usize>>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            kind: Kind::Dense { weight, bias },
            stored_shape: None,
        }
    }

    /// Loads `weight [out, in]` (and `bias [out]` when `bias`) under `vb`.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self::new(weight, bias))
    }

    /// Records that the checkpoint stores the weight as `shape` (e.g. a conv kernel `[out, c, p, p]`).
    pub fn with_stored_shape(mut self, shape: Vec<usize>) -> Self {
        self.stored_shape = Some(shape);
        self
    }

    /// The checkpoint shape of the weight when it differs from `[out, in]`.
    pub fn stored_shape(&self) -> Option<&[usize]> {
        self.stored_shape.as_deref()
    }

    /// The (base) weight `[out, in]`: without the adapter's update.
    pub fn weight(&self) -> &Tensor {
        match &self.kind {
            Kind::Dense { weight, .. } => weight,
            Kind::Adapted { layer, .. } => layer.base().weight(),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        match &self.kind {
            Kind::Dense { bias, .. } => bias.as_ref(),
            Kind::Adapted { layer, .. } => layer.base().bias(),
        }
    }

    /// The adapter view of this layer, when it has been converted for training.
    pub fn adapted(&self) -> Option<&AdaptedLinear> {
        match &self.kind {
            Kind::Adapted { layer, .. } => Some(layer),
            Kind::Dense { .. } => None,
        }
    }

    /// Replaces the layer by trainable / plain tensors.
    pub fn set_dense(&mut self, weight: Tensor, bias: Option<Tensor>) {
        self.kind = Kind::Dense { weight, bias };
    }

    /// Replaces the layer by a frozen or adapted one; `mode` switches its adapter dropout.
    pub fn set_adapted(&mut self, layer: AdaptedLinear, mode: TrainMode) {
        self.kind = Kind::Adapted { layer, mode };
    }

    /// The weight with any adapter merged, in f32 (peft's merge), `[out, in]`.
    pub fn merged_weight_f32(&self) -> Result<Tensor> {
        match &self.kind {
            Kind::Dense { weight, .. } => weight.detach().to_dtype(candle_core::DType::F32),
            Kind::Adapted { layer, .. } => layer.merged_weight_f32(),
        }
    }

    /// `[.., in] -> [.., out]`: leading dims are flattened into one GEMM.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (weight, bias) = match &self.kind {
            Kind::Dense { weight, bias } => (weight, bias),
            Kind::Adapted { layer, mode } => return layer.forward_t(xs, mode.is_training()),
        };
        let dims = xs.dims().to_vec();
        let (lead, in_dim) = match dims.split_last() {
            Some((last, lead)) => (lead.to_vec(), *last),
            None => candle_core::bail!("linear: input must have at least one dimension"),
        };
        let rows: usize = lead.iter().product();
        let x2 = xs.reshape((rows, in_dim))?;
        let y = if super::cpu_kernels::gemv_applies(&x2, weight, bias.as_ref()) {
            super::cpu_kernels::linear_gemv(&x2, weight, bias.as_ref())?
        } else {
            let y = x2.matmul(&weight.t()?)?;
            match bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            }
        };
        let mut out_dims = lead;
        out_dims.push(weight.dim(0)?);
        y.reshape(out_dims)
    }
}
