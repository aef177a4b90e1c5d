//! Frozen linear layers that pass gradients to their input only.
//!
//! candle's `Op::Matmul` backward always computes and stores the gradient of BOTH operands
//! (candle-core 0.11.1 backprop.rs, `Op::Matmul`), so `x.matmul(&w.t())` with a frozen `w` still
//! allocates a full weight-sized gradient per layer: LoRA then costs as much memory as full
//! fine-tuning (huggingface/candle PR #3773). `FrozenLinear` runs `y = x W^T + b` as one custom op
//! whose backward returns only `dL/dx = dL/dy W`, so the `GradStore` never holds an entry for `W`
//! or `b`. The same trick adds a frozen bias without the zero-filled gradient buffer that
//! `broadcast_add` would leave behind for it.

use candle_core::backend::BackendStorage;
use candle_core::op::Add;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, DType, Layout, Module, Result, Shape, Storage, Tensor,
};

/// A linear layer `y = x W^T (+ b)` whose weight and bias never receive gradients.
#[derive(Clone, Debug)]
pub struct FrozenLinear {
    weight: Tensor,
    bias: Option<Tensor>,
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
        let bias = match bias {
            Some(b) => {
                if b.dims() != [out_dim] {
                    candle_core::bail!(
                        "FrozenLinear: bias shape {:?} does not match weight rows {out_dim}",
                        b.dims()
                    );
                }
                if b.dtype() != weight.dtype() {
                    candle_core::bail!(
                        "FrozenLinear: bias dtype {:?} differs from weight dtype {:?}",
                        b.dtype(),
                        weight.dtype()
                    );
                }
                Some(b.detach().contiguous()?)
            }
            None => None,
        };
        Ok(Self { weight, bias })
    }

    /// The `[out, in]` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The `[out]` bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Number of input features.
    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Number of output features.
    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        if x.rank() == 0 || x.dims()[x.rank() - 1] != self.in_dim() {
            candle_core::bail!(
                "FrozenLinear: input shape {:?} does not end in {} features",
                x.dims(),
                self.in_dim()
            );
        }
        if x.dtype() != self.weight.dtype() {
            candle_core::bail!(
                "FrozenLinear: input dtype {:?} differs from weight dtype {:?}",
                x.dtype(),
                self.weight.dtype()
            );
        }
        if !x.device().same_device(self.weight.device()) {
            candle_core::bail!("FrozenLinear: input and weight are on different devices");
        }
        Ok(())
    }

    /// `x W^T + b` with gradient flowing to `x` only.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        x.contiguous()?.apply_op1(FrozenLinearOp {
            weight: self.weight.clone(),
            bias: self.bias.clone(),
        })
    }

    /// `x W^T` without the bias (DoRA rescales this part only), gradient to `x` only.
    pub fn forward_no_bias(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        x.contiguous()?.apply_op1(FrozenLinearOp {
            weight: self.weight.clone(),
            bias: None,
        })
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
