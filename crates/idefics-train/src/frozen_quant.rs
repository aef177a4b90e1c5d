//! The frozen product through a quantized weight (QLoRA's base path): `y = x W^T (+ b)` with `W` kept in its GGUF
//! blocks, and a backward that gives the input gradient `dL/dx = dL/dy W` only.
//!
//! The forward is [`QWeight::matmul_t`] (the quantized product on the stored blocks for few rows, the f32 GEMM
//! over 64-row panels of the weight dequantized on the spot from [`idefics::quant::GEMM_MIN_ROWS`] rows on). The backward dequantizes `W` for
//! one GEMM and drops it: nothing weight-sized outlives the op, and the `GradStore` gets no entry for `W` or `b`
//! (candle 0.11's `QMatMul` is applied with `apply_op*_no_bwd` and gives no gradient at all, not even to the
//! input; `Op::Matmul` would store a full gradient for the frozen weight, huggingface/candle PR #3773).
//! bitsandbytes' `MatMul4Bit.backward` does the same as this op: `grad_A = grad_output @ dequantize_4bit(B).t()`
//! and no gradient for the 4-bit weight.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use idefics::quant::QWeight;

/// `x W^T (+ b)` for a quantized `W [n, k]`, f32, on the CPU; gradient to `x` only.
pub(crate) struct QuantFrozenLinearOp {
    pub weight: QWeight,
    pub bias: Option<Tensor>,
}

impl CustomOp1 for QuantFrozenLinearOp {
    fn name(&self) -> &'static str {
        "quant-frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, k) = (self.weight.out_dim(), self.weight.in_dim());
        let dims = x_l.dims();
        if dims.last() != Some(&k) {
            candle_core::bail!(
                "quantized frozen linear: input shape {dims:?} does not end in {k} features"
            );
        }
        let m = x_l.shape().elem_count() / k;
        let Some((start, end)) = x_l.contiguous_offsets() else {
            candle_core::bail!("quantized frozen linear: input must be contiguous");
        };
        let data = match x {
            CpuStorage::F32(v) => &v[start..end],
            other => candle_core::bail!(
                "quantized frozen linear: input must be f32, got {:?}",
                other.dtype()
            ),
        };
        // One copy of the activation (m * k floats) into a tensor for QWeight's product: small against the
        // product's 2 * m * k * n operations.
        let xt = Tensor::from_slice(data, (m, k), &Device::Cpu)?;
        let y = self.weight.matmul_t(&xt)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let values = y.flatten_all()?.to_vec1::<f32>()?;
        let mut out_dims = dims[..dims.len() - 1].to_vec();
        out_dims.push(n);
        Ok((CpuStorage::F32(values), Shape::from(out_dims)))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        // dL/dx = dL/dy W with W dequantized for this one product; nothing for W or b.
        let (n, k) = (self.weight.out_dim(), self.weight.in_dim());
        let m = x.elem_count() / k.max(1);
        let w = self.weight.dequantize()?;
        let grad_x = grad_y.to_dtype(DType::F32)?.reshape((m, n))?.matmul(&w)?;
        Ok(Some(grad_x.reshape(x.shape())?))
    }
}

/// Checks that a quantized base can take `x`: f32 on the CPU, ending in the weight's input width.
pub(crate) fn check_quant_input(weight: &QWeight, x: &Tensor) -> Result<()> {
    if x.rank() == 0 || x.dims()[x.rank() - 1] != weight.in_dim() {
        candle_core::bail!(
            "quantized frozen linear: input shape {:?} does not end in {} features",
            x.dims(),
            weight.in_dim()
        );
    }
    if x.dtype() != DType::F32 {
        candle_core::bail!(
            "quantized frozen linear: input dtype {:?}; a quantized base trains in f32",
            x.dtype()
        );
    }
    if !matches!(x.device(), Device::Cpu) {
        candle_core::bail!("quantized frozen linear: quantized weights run on the CPU only");
    }
    Ok(())
}
