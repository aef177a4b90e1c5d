//! Frozen linear layers that pass gradients to their input only.
//!
//! candle's `Op::Matmul` backward always computes and stores the gradient of BOTH operands
//! (candle-core 0.11.1 backprop.rs, `Op::Matmul`), so `x.matmul(&w.t())` with a frozen `w` still
//! allocates a full weight-sized gradient per layer: LoRA then costs as much memory as full
//! fine-tuning (huggingface/candle PR #3773). `FrozenLinear` runs `y = x W^T + b` as one custom op
//! whose backward returns only `dL/dx = dL/dy W`, so the `GradStore` never holds an entry for `W`
//! or `b`. The same trick adds a frozen bias without the zero-filled gradient buffer that
//! `broadcast_add` would leave behind for it.
//!
//! A quantized base (QLoRA) goes through the same layer: `crate::frozen_quant` runs the product on the GGUF
//! blocks and gives the input gradient through the dequantized weight.

use crate::frozen_quant::{check_quant_input, QuantFrozenLinearOp};
use candle_core::backend::BackendStorage;
use candle_core::op::Add;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Module, Result, Shape, Storage,
    Tensor,
};
use idefics::quant::QWeight;

/// A linear layer `y = x W^T (+ b)` whose weight and bias never receive gradients. The weight is a dense tensor
/// or, for training on a quantized base (QLoRA), GGUF blocks ([`QWeight`], f32 activations on the CPU).
#[derive(Clone, Debug)]
pub struct FrozenLinear {
    weight: FrozenWeight,
    bias: Option<Tensor>,
}

#[derive(Clone, Debug)]
enum FrozenWeight {
    Dense(Tensor),
    Quantized(QWeight),
}

impl FrozenLinear {
    /// Wraps a `[out, in]` weight and an optional `[out]` bias. Both are detached and made contiguous.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, _in_dim) = weight.dims2().map_err(|_| {
            candle_core::Error::Msg(format!(
                "FrozenLinear: weight must be 2-D [out, in], got shape {:?}",
                weight.dims()
            ))
        })?;
        let weight = weight.detach().contiguous()?;
        let bias = Self::checked_bias(bias, out_dim, weight.dtype())?;
        Ok(Self {
            weight: FrozenWeight::Dense(weight),
            bias,
        })
    }

    /// Wraps a quantized `[out, in]` weight (kept in its blocks) and an optional `[out]` bias (made f32). The
    /// layer then takes f32 inputs on the CPU.
    pub fn quantized(weight: QWeight, bias: Option<Tensor>) -> Result<Self> {
        let bias = match bias {
            Some(b) => Some(b.detach().to_dtype(DType::F32)?),
            None => None,
        };
        let bias = Self::checked_bias(bias, weight.out_dim(), DType::F32)?;
        Ok(Self {
            weight: FrozenWeight::Quantized(weight),
            bias,
        })
    }

    fn checked_bias(bias: Option<Tensor>, out_dim: usize, dtype: DType) -> Result<Option<Tensor>> {
        let Some(b) = bias else {
            return Ok(None);
        };
        if b.dims() != [out_dim] {
            candle_core::bail!(
                "FrozenLinear: bias shape {:?} does not match weight rows {out_dim}",
                b.dims()
            );
        }
        if b.dtype() != dtype {
            candle_core::bail!(
                "FrozenLinear: bias dtype {:?} differs from weight dtype {dtype:?}",
                b.dtype(),
            );
        }
        Ok(Some(b.detach().contiguous()?))
    }

    /// The dense `[out, in]` weight; an error for a quantized layer (see [`Self::weight_f32`]).
    pub fn weight(&self) -> Result<&Tensor> {
        match &self.weight {
            FrozenWeight::Dense(w) => Ok(w),
            FrozenWeight::Quantized(q) => candle_core::bail!(
                "this frozen [{}, {}] layer is quantized ({}): it has no dense weight",
                q.out_dim(),
                q.in_dim(),
                q.quant_type()
            ),
        }
    }

    /// The quantized weight, when the layer is quantized.
    pub fn quantized_weight(&self) -> Option<&QWeight> {
        match &self.weight {
            FrozenWeight::Dense(_) => None,
            FrozenWeight::Quantized(q) => Some(q),
        }
    }

    /// The weight in f32, `[out, in]`, detached: converted, or dequantized (a fresh tensor each call).
    pub fn weight_f32(&self) -> Result<Tensor> {
        match &self.weight {
            FrozenWeight::Dense(w) => w.to_dtype(DType::F32),
            FrozenWeight::Quantized(q) => q.dequantize(),
        }
    }

    /// The `[out]` bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The dtype inputs must have (f32 for a quantized weight).
    pub fn dtype(&self) -> DType {
        match &self.weight {
            FrozenWeight::Dense(w) => w.dtype(),
            FrozenWeight::Quantized(_) => DType::F32,
        }
    }

    /// The device the layer runs on.
    pub fn device(&self) -> Device {
        match &self.weight {
            FrozenWeight::Dense(w) => w.device().clone(),
            FrozenWeight::Quantized(_) => Device::Cpu,
        }
    }

    /// Number of input features.
    pub fn in_dim(&self) -> usize {
        match &self.weight {
            FrozenWeight::Dense(w) => w.dims()[1],
            FrozenWeight::Quantized(q) => q.in_dim(),
        }
    }

    /// Number of output features.
    pub fn out_dim(&self) -> usize {
        match &self.weight {
            FrozenWeight::Dense(w) => w.dims()[0],
            FrozenWeight::Quantized(q) => q.out_dim(),
        }
    }

    fn check_input(weight: &Tensor, x: &Tensor) -> Result<()> {
        let in_dim = weight.dims()[1];
        if x.rank() == 0 || x.dims()[x.rank() - 1] != in_dim {
            candle_core::bail!(
                "FrozenLinear: input shape {:?} does not end in {in_dim} features",
                x.dims(),
            );
        }
        if x.dtype() != weight.dtype() {
            candle_core::bail!(
                "FrozenLinear: input dtype {:?} differs from weight dtype {:?}",
                x.dtype(),
                weight.dtype()
            );
        }
        if !x.device().same_device(weight.device()) {
            candle_core::bail!("FrozenLinear: input and weight are on different devices");
        }
        Ok(())
    }

    fn apply(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let bias = bias.cloned();
        match &self.weight {
            FrozenWeight::Dense(weight) => {
                Self::check_input(weight, x)?;
                x.contiguous()?.apply_op1(FrozenLinearOp {
                    weight: weight.clone(),
                    bias,
                })
            }
            FrozenWeight::Quantized(weight) => {
                check_quant_input(weight, x)?;
                x.contiguous()?.apply_op1(QuantFrozenLinearOp {
                    weight: weight.clone(),
                    bias,
                })
            }
        }
    }

    /// `x W^T + b` with gradient flowing to `x` only.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, self.bias.as_ref())
    }

    /// `x W^T` without the bias (DoRA rescales this part only), gradient to `x` only.
    pub fn forward_no_bias(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, None)
    }
}

impl Module for FrozenLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        FrozenLinear::forward(self, x)
    }
}

/// `y + b` (b broadcast over the last dim) where `b` is frozen: the gradient passes to `y` unchanged.
pub fn add_frozen_bias(y: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let last = y.dims().last().copied().unwrap_or(0);
    if bias.dims() != [last] || bias.dtype() != y.dtype() {
        candle_core::bail!(
            "add_frozen_bias: bias {:?} {:?} does not fit output {:?} {:?}",
            bias.dims(),
            bias.dtype(),
            y.dims(),
            y.dtype()
        );
    }
    y.contiguous()?.apply_op1(FrozenBiasOp {
        bias: bias.detach(),
    })
}

struct FrozenLinearOp {
    weight: Tensor,
    bias: Option<Tensor>,
}

/// `x [.., k]` (contiguous) times `W^T` for `W [n, k]`, plus an optional bias, on any backend.
fn linear_fwd<S: BackendStorage>(
    x: &S,
    x_l: &Layout,
    w: &S,
    w_l: &Layout,
    bias: Option<(&S, &Layout)>,
) -> Result<(S, Shape)> {
    let (n, k) = w_l.shape().dims2()?;
    let dims = x_l.dims();
    let m = x_l.shape().elem_count() / k.max(1);
    let Some((x_start, _)) = x_l.contiguous_offsets() else {
        candle_core::bail!("FrozenLinear: input must be contiguous");
    };
    // View x as a [m, k] matrix and W^T as [k, n] (a strided view, no copy).
    let lhs_l = Layout::contiguous_with_offset((m, k), x_start);
    let rhs_l = w_l.transpose(0, 1)?;
    let y = x.matmul(w, (1, m, n, k), &lhs_l, &rhs_l)?;
    let y = match bias {
        Some((b, b_l)) => {
            let y_l = Layout::contiguous((m, n));
            y.binary_impl::<Add>(b, &y_l, &b_l.broadcast_as((m, n))?)?
        }
        None => y,
    };
    let mut out_dims = dims[..dims.len() - 1].to_vec();
    out_dims.push(n);
    Ok((y, Shape::from(out_dims)))
}

/// The tensor's storage as the backend type `S`, or an error naming the mismatch.
macro_rules! storage_as {
    ($storage:expr, $variant:ident) => {
        match &*$storage {
            Storage::$variant(s) => s,
            _ => candle_core::bail!("FrozenLinear: weight is not on the input's device"),
        }
    };
}

impl CustomOp1 for FrozenLinearOp {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (w, w_l) = self.weight.storage_and_layout();
        let w = storage_as!(w, Cpu);
        match &self.bias {
            Some(b) => {
                let (bs, b_l) = b.storage_and_layout();
                linear_fwd(x, x_l, w, w_l, Some((storage_as!(bs, Cpu), b_l)))
            }
            None => linear_fwd(x, x_l, w, w_l, None),
        }
    }

    fn cuda_fwd(&self, x: &CudaStorage, x_l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (w, w_l) = self.weight.storage_and_layout();
        let w = storage_as!(w, Cuda);
        match &self.bias {
            Some(b) => {
                let (bs, b_l) = b.storage_and_layout();
                linear_fwd(x, x_l, w, w_l, Some((storage_as!(bs, Cuda), b_l)))
            }
            None => linear_fwd(x, x_l, w, w_l, None),
        }
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        // dL/dx = dL/dy W; nothing is returned (or stored) for W or b.
        let (n, k) = self.weight.dims2()?;
        let m = x.elem_count() / k.max(1);
        let grad_x = grad_y.reshape((m, n))?.matmul(&self.weight)?;
        Ok(Some(grad_x.reshape(x.shape())?))
    }
}

struct FrozenBiasOp {
    bias: Tensor,
}

fn bias_fwd<S: BackendStorage>(y: &S, y_l: &Layout, b: &S, b_l: &Layout) -> Result<(S, Shape)> {
    let b_l = b_l.broadcast_as(y_l.shape().clone())?;
    Ok((y.binary_impl::<Add>(b, y_l, &b_l)?, y_l.shape().clone()))
}

impl CustomOp1 for FrozenBiasOp {
    fn name(&self) -> &'static str {
        "frozen-bias"
    }

    fn cpu_fwd(&self, y: &CpuStorage, y_l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, b_l) = self.bias.storage_and_layout();
        bias_fwd(y, y_l, storage_as!(b, Cpu), b_l)
    }

    fn cuda_fwd(&self, y: &CudaStorage, y_l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (b, b_l) = self.bias.storage_and_layout();
        bias_fwd(y, y_l, storage_as!(b, Cuda), b_l)
    }

    fn bwd(&self, _y: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.clone()))
    }
}

/// Whether a dtype can be the weight of a [`FrozenLinear`] (the float dtypes candle multiplies).
pub fn is_linear_dtype(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn grads_only_for_input() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 4), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 5, &dev)?;
        let x = Var::randn(0f32, 1.0, (2, 3, 4), &dev)?;
        let lin = FrozenLinear::new(w.clone(), Some(b.clone()))?;
        let y = lin.forward(x.as_tensor())?;
        let y_ref = x.broadcast_matmul(&w.t()?)?.broadcast_add(&b)?;
        let diff = (&y - &y_ref)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "forward differs by {diff}");
        let grads = y.sqr()?.sum_all()?.backward()?;
        assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
        let grads_ref = y_ref.sqr()?.sum_all()?.backward()?;
        let g = grads.get(&x).expect("input grad");
        let g_ref = grads_ref.get(&x).expect("input grad");
        let diff = (g - g_ref)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "input grad differs by {diff}");
        Ok(())
    }
}
