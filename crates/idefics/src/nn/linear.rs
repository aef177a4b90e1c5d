//! Dense layer `y = x W^T + b` with PyTorch's `[out, in]` weight layout.
//!
//! At inference a layer is plain tensors. Training (the `idefics-train` crate) plugs in what a component needs
//! through [`LinearHook`]: a frozen op that gives no weight gradient, or a LoRA / DoRA adapter over it; full
//! fine-tuning just swaps the tensors for trainable ones ([`Linear::set_dense`]). Quantized inference swaps the
//! weight for its GGUF-block form ([`Linear::set_quantized`], see `crate::quant`).

use super::cpu_kernels::PanelWeight;
use crate::quant::QWeight;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use std::any::Any;
use std::sync::Arc;

/// A forward pass that replaces a linear layer's own, plugged in from outside the model (the trainer's frozen
/// and adapted layers). The model keeps the layer's name and place; only the arithmetic changes.
pub trait LinearHook: std::fmt::Debug + Send + Sync + 'static {
    /// `[.., in] -> [.., out]`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor>;
    /// The base weight `[out, in]`, without any adapter update; an error when the base has no dense weight (a
    /// quantized base).
    fn weight(&self) -> Result<&Tensor>;
    /// Output features.
    fn out_dim(&self) -> usize;
    /// The base bias `[out]`.
    fn bias(&self) -> Option<&Tensor>;
    /// The weight with any adapter update merged, in f32, `[out, in]`.
    fn merged_weight_f32(&self) -> Result<Tensor>;
    /// The concrete hook, for its owner to downcast.
    fn as_any(&self) -> &dyn Any;
}

#[derive(Debug, Clone)]
enum Kind {
    /// Plain (or trainable `Var`-backed) tensors, differentiated by candle's matmul.
    Dense {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    /// A forward plugged in from outside (see [`LinearHook`]).
    Hooked(Arc<dyn LinearHook>),
    /// A quantized weight (inference only: no gradient flows through it).
    Quantized {
        weight: QWeight,
        bias: Option<Tensor>,
    },
    /// An f32 weight stored in column panels for CPU inference (`cpu_kernels::panels`).
    Panels {
        weight: Arc<PanelWeight>,
        bias: Option<Tensor>,
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

    /// The (base) weight `[out, in]`: without the adapter's update. A quantized layer has no dense weight
    /// (see [`Self::quantized`] and [`Self::merged_weight_f32`]).
    pub fn weight(&self) -> Result<&Tensor> {
        match &self.kind {
            Kind::Dense { weight, .. } => Ok(weight),
            Kind::Hooked(hook) => hook.weight(),
            Kind::Quantized { weight, .. } => candle_core::bail!(
                "this [{}, {}] layer is quantized ({}): it has no dense weight",
                weight.out_dim(),
                weight.in_dim(),
                weight.quant_type()
            ),
            Kind::Panels { weight, .. } => candle_core::bail!(
                "this [{}, {}] layer is stored in panels for CPU inference: load the model with \
                 CpuWeightLayout::Checkpoint for its dense weight",
                weight.out_dim(),
                weight.in_dim()
            ),
        }
    }

    /// The plain weight when the layer is dense (not hooked, not quantized).
    pub fn dense_weight(&self) -> Option<&Tensor> {
        match &self.kind {
            Kind::Dense { weight, .. } => Some(weight),
            Kind::Hooked(_) | Kind::Quantized { .. } | Kind::Panels { .. } => None,
        }
    }

    /// The quantized weight, when the layer is quantized.
    pub fn quantized(&self) -> Option<&QWeight> {
        match &self.kind {
            Kind::Quantized { weight, .. } => Some(weight),
            Kind::Dense { .. } | Kind::Hooked(_) | Kind::Panels { .. } => None,
        }
    }

    /// Output features.
    pub fn out_dim(&self) -> Result<usize> {
        match &self.kind {
            Kind::Dense { weight, .. } => weight.dim(0),
            Kind::Hooked(hook) => Ok(hook.out_dim()),
            Kind::Quantized { weight, .. } => Ok(weight.out_dim()),
            Kind::Panels { weight, .. } => Ok(weight.out_dim()),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        match &self.kind {
            Kind::Dense { bias, .. } | Kind::Quantized { bias, .. } | Kind::Panels { bias, .. } => {
                bias.as_ref()
            }
            Kind::Hooked(hook) => hook.bias(),
        }
    }

    /// The hook plugged into this layer, if any.
    pub fn hook(&self) -> Option<&dyn LinearHook> {
        match &self.kind {
            Kind::Hooked(hook) => Some(hook.as_ref()),
            Kind::Dense { .. } | Kind::Quantized { .. } | Kind::Panels { .. } => None,
        }
    }

    /// Replaces the weight by its quantized form `weight` (same `[out, in]`); the bias stays.
    pub fn set_quantized(&mut self, weight: QWeight) {
        let bias = self.bias().cloned();
        self.kind = Kind::Quantized { weight, bias };
    }

    /// A layer over a quantized weight (e.g. a head tied to quantized embeddings).
    pub fn from_quantized(weight: QWeight, bias: Option<Tensor>) -> Self {
        Self {
            kind: Kind::Quantized { weight, bias },
            stored_shape: None,
        }
    }

    /// Replaces the layer by trainable / plain tensors.
    pub fn set_dense(&mut self, weight: Tensor, bias: Option<Tensor>) {
        self.kind = Kind::Dense { weight, bias };
    }

    /// Replaces the layer's forward by `hook`'s.
    pub fn set_hook(&mut self, hook: Arc<dyn LinearHook>) {
        self.kind = Kind::Hooked(hook);
    }

    /// Stores a dense f32 CPU weight transposed, `W^T [in, out]` in memory behind the same `[out, in]` view, so
    /// that [`Self::forward`] runs the faster transposed product (`crate::nn::cpu_kernels::transposed`). For
    /// inference: a trainer's ops and anything that needs the checkpoint's memory order should get the layer as
    /// loaded. Layers that are hooked, quantized, trainable, not 2-D or stored in another shape (the conv patch
    /// embedding) are left alone. Returns whether the layer changed.
    pub fn use_transposed_layout(&mut self) -> Result<bool> {
        // A weight already transposed is not contiguous, so it is not transposed twice.
        let eligible = self
            .relayout_candidate()
            .is_some_and(|(w, _)| w.is_contiguous());
        if let (true, Kind::Dense { weight, .. }) = (eligible, &mut self.kind) {
            *weight = super::cpu_kernels::to_transposed_layout(weight)?;
        }
        Ok(eligible)
    }

    /// Stores a dense f32 CPU weight in column panels (`crate::nn::cpu_kernels::panels`): the layout that serves
    /// both the prefill GEMM and the decoding GEMV at full speed, for inference only (the layer then has no
    /// [`Self::weight`]; [`Self::merged_weight_f32`] rebuilds it). The same layers as
    /// [`Self::use_transposed_layout`] are eligible, while the CPU inference kernels are on (with candle's
    /// composed ops forced, `crate::nn::kernel_choice`, the layer stays as loaded). Returns whether it changed.
    pub fn use_panel_layout(&mut self) -> Result<bool> {
        if !super::cpu_kernels::enabled() {
            return Ok(false);
        }
        let Some((weight, bias)) = self.relayout_candidate() else {
            return Ok(false);
        };
        let (panels, bias) = (PanelWeight::from_weight(weight)?, bias.cloned());
        self.kind = Kind::Panels {
            weight: Arc::new(panels),
            bias,
        };
        Ok(true)
    }

    /// The weight and bias when the layer may be stored differently for CPU inference: dense, a 2-D f32 CPU
    /// weight in its `[out, in]` shape (not the conv patch embedding), nothing taking part in autograd.
    fn relayout_candidate(&self) -> Option<(&Tensor, Option<&Tensor>)> {
        let Kind::Dense { weight, bias } = &self.kind else {
            return None;
        };
        let eligible = self.stored_shape.is_none()
            && weight.rank() == 2
            && weight.dims().iter().all(|&d| d > 1)
            && weight.dtype() == candle_core::DType::F32
            && weight.device().is_cpu()
            && !weight.track_op()
            && bias.as_ref().is_none_or(|b| !b.track_op());
        eligible.then_some((weight, bias.as_ref()))
    }

    /// The weight with any adapter merged, in f32 (peft's merge), `[out, in]`.
    pub fn merged_weight_f32(&self) -> Result<Tensor> {
        match &self.kind {
            Kind::Dense { weight, .. } => weight.detach().to_dtype(candle_core::DType::F32),
            Kind::Hooked(hook) => hook.merged_weight_f32(),
            Kind::Quantized { weight, .. } => weight.dequantize(),
            Kind::Panels { weight, .. } => weight.to_tensor(),
        }
    }

    /// `[.., in] -> [.., out]`: leading dims are flattened into one GEMM.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (weight, bias) = match &self.kind {
            Kind::Dense { weight, bias } => (weight, bias.as_ref()),
            Kind::Hooked(hook) => return hook.forward(xs),
            Kind::Quantized { weight, bias } => {
                return over_rows(xs, weight.out_dim(), |x2| {
                    let y = weight.matmul_t(x2)?.to_dtype(xs.dtype())?;
                    match bias {
                        Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
                        None => Ok(y),
                    }
                })
            }
            Kind::Panels { weight, bias } => {
                if xs.track_op() {
                    candle_core::bail!(
                        "linear: this layer is stored in panels for CPU inference and has no backward pass"
                    );
                }
                return over_rows(xs, weight.out_dim(), |x2| weight.forward(x2, bias.as_ref()));
            }
        };
        over_rows(xs, weight.dim(0)?, |x2| {
            if super::cpu_kernels::transposed_applies(x2, weight, bias) {
                super::cpu_kernels::linear_transposed(x2, weight, bias)
            } else if super::cpu_kernels::gemv_applies(x2, weight, bias) {
                super::cpu_kernels::linear_gemv(x2, weight, bias)
            } else if train_linear_applies(x2, weight, bias) {
                super::train_kernels::linear(x2, weight, bias)
            } else {
                let y = x2.matmul(&weight.t()?)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        })
    }
}

/// Whether the product is part of autograd and should be one node with its own backward
/// ([`super::train_kernels::linear`]): f32 CPU tensors, the training kernels chosen, a tracked weight or bias
/// (a frozen layer's products need no weight gradient, and its owner gives it its own hook).
fn train_linear_applies(x2: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    let mut inputs = vec![x2, weight];
    inputs.extend(bias);
    (weight.track_op() || bias.is_some_and(|b| b.track_op()))
        && super::train_kernels::applies(&inputs)
}

/// `xs [.., in]` seen as `[rows, in]` for `product` (`[rows, in] -> [rows, out_dim]`), the result given back the
/// leading dims `[.., out_dim]`.
fn over_rows(
    xs: &Tensor,
    out_dim: usize,
    product: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let Some((&in_dim, lead)) = xs.dims().split_last() else {
        candle_core::bail!("linear: input must have at least one dimension")
    };
    let rows: usize = lead.iter().product();
    let y = product(&xs.reshape((rows, in_dim))?)?;
    let mut out_dims = lead.to_vec();
    out_dims.push(out_dim);
    y.reshape(out_dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn ramp(shape: &[usize], step: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|i| ((i * 37) % 101) as f32 * step - 1.0)
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu)
    }

    #[test]
    fn transposed_layout_gives_the_same_layer() -> Result<()> {
        let (w, b) = (ramp(&[24, 40], 0.02)?, ramp(&[24], 0.05)?);
        let x = ramp(&[2, 9, 40], 0.013)?;
        let plain = Linear::new(w.clone(), Some(b.clone()));
        let mut moved = plain.clone();
        assert!(moved.use_transposed_layout()?);
        let got = moved.weight()?;
        assert_eq!(got.dims(), w.dims());
        assert_eq!(got.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        let (want, have) = (plain.forward(&x)?, moved.forward(&x)?);
        assert_eq!(have.dims(), &[2, 9, 24]);
        let err = (want - have)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "max error {err}");
        // One row (decoding) as well.
        let x1 = ramp(&[1, 1, 40], 0.011)?;
        let err = (plain.forward(&x1)? - moved.forward(&x1)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(err < 1e-5, "max error {err}");
        Ok(())
    }

    #[test]
    fn panel_layout_gives_the_same_layer_for_inference_only() -> Result<()> {
        let (w, b) = (ramp(&[70, 24], 0.01)?, ramp(&[70], 0.02)?);
        let plain = Linear::new(w.clone(), Some(b.clone()));
        let mut packed = plain.clone();
        if !crate::nn::cpu_kernels::enabled() {
            // candle's composed ops forced: nothing is packed.
            assert!(!packed.use_panel_layout()?);
            return Ok(());
        }
        assert!(packed.use_panel_layout()?);
        assert!(!packed.use_panel_layout()?, "already packed");
        for rows in [1usize, 3, 9] {
            let x = ramp(&[rows, 24], 0.03)?;
            let diff = (packed.forward(&x)? - plain.forward(&x)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{rows} rows: {diff}");
        }
        assert_eq!(packed.out_dim()?, 70);
        assert!(packed.bias().is_some());
        assert!(packed.weight().is_err() && packed.dense_weight().is_none());
        let merged = packed.merged_weight_f32()?;
        assert_eq!(
            merged.flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?
        );
        // No backward pass: an input that takes part in autograd is refused with an error, not run.
        let tracked = Var::from_tensor(&ramp(&[2, 24], 0.03)?)?;
        assert!(packed.forward(tracked.as_tensor()).is_err());
        // Trainable weights stay as they are.
        let mut trainable = Linear::new(Var::from_tensor(&w)?.as_tensor().clone(), None);
        assert!(!trainable.use_panel_layout()?);
        Ok(())
    }

    #[test]
    fn transposed_layout_leaves_trainable_and_conv_weights_alone() -> Result<()> {
        let var = Var::from_tensor(&ramp(&[8, 6], 0.1)?)?;
        let mut trainable = Linear::new(var.as_tensor().clone(), None);
        assert!(!trainable.use_transposed_layout()?);
        assert!(trainable.weight()?.is_contiguous());
        let mut conv = Linear::new(ramp(&[8, 12], 0.1)?, None).with_stored_shape(vec![8, 3, 2, 2]);
        assert!(!conv.use_transposed_layout()?);
        assert!(conv.weight()?.is_contiguous());
        Ok(())
    }
}
