//! A LoRA linear layer as one autograd node, for f32 training on the CPU.
//!
//! Composed of candle ops, an adapted layer `y = x W^T + b + s (x A^T) B^T` is five graph nodes (frozen product,
//! two matmuls, a scale, an add), and candle keeps every node's inputs alive until backward: three `[tokens, out]`
//! intermediates per layer. Backward then adds each gradient contribution into a fresh buffer (candle 0.11's
//! `Tensor::backward` accumulates with `add`), twice for the layer's input alone (base and adapter paths). On
//! bench-150m those adds and the buffers' memsets took about a tenth of a LoRA step (`perf record` on
//! `idefics bench-train --mode lora`), and the live intermediates most of the extra peak memory over torch + peft.
//!
//! [`LoraLinearOp`] computes the same layer as one custom op whose backward is
//!   `dx = dy W + s (dy B) A`, `dA = s (dy B)^T x_d`, `dB = s dy^T (x_d A^T)`,
//! with `x_d` the adapter's input (`x`, or `x` times the dropout mask as `candle_nn::ops::dropout` draws it). It
//! keeps alive only `x` (the graph holds it anyway), the small `x_d A^T [tokens, r]` and, with dropout, the mask.
//! The GEMMs accumulate in place (`gemm`'s `read_dst`): the bias, the base product and the low-rank product land
//! in one buffer forward, and both input-gradient terms in one buffer backward.
//!
//! DoRA without dropout uses this op for `x W^T + s B A x` and scales the columns afterwards (adapters.rs).
//! Scope as for the fused training kernels (`idefics::nn::train_kernels::applies`): f32 on the CPU, a dense f32 or
//! quantized frozen weight. `IDEFICS_TRAIN_KERNELS=composed` (or `bench-train --kernels composed`) keeps the
//! composed ops, which the tests compare against.

use crate::frozen::FrozenLinear;
use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};
use idefics::nn::cpu_kernels::{gemm_into, MatRef};
use idefics::quant::{QWeight, GEMM_MIN_ROWS};

/// Whether the fused op should run `base + s B A` on `x`: f32 on the CPU, a trainable adapter, the training
/// kernels chosen, and an input the base accepts (otherwise the composed path gives its own error).
pub(crate) fn applies(base: &FrozenLinear, x: &Tensor, a: &Tensor, b: &Tensor) -> bool {
    idefics::nn::train_kernels::applies(&[x, a, b])
        && base.dtype() == DType::F32
        && x.rank() > 0
        && x.dims()[x.rank() - 1] == base.in_dim()
        && (base.quantized_weight().is_some()
            || base
                .weight()
                .is_ok_and(|w| w.device().same_device(x.device())))
}

/// `x W^T (+ b) + s (x_d A^T) B^T` as one autograd node, `x_d = dropout(x, p)` when `dropout` is `Some(p)`.
/// The caller checked [`applies`].
pub(crate) fn forward(
    base: &FrozenLinear,
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scaling: f64,
    with_bias: bool,
    dropout: Option<f32>,
) -> Result<Tensor> {
    let mask = match dropout {
        Some(p) => Some(dropout_mask(x, p)?),
        None => None,
    };
    forward_with_mask(base, x, a, b, scaling, with_bias, mask)
}

/// The mask `candle_nn::ops::dropout` multiplies by (same draws from the device's generator, so a run is the same
/// whichever path computes it): `1 / (1 - p)` where a uniform draw is `>= p`, else 0.
fn dropout_mask(x: &Tensor, p: f32) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        bail!("dropout probability has to be in [0, 1), got {p}");
    }
    let rand = Tensor::rand(0f32, 1f32, x.shape(), x.device())?;
    let scale = 1.0 / (1.0 - p as f64);
    let p = Tensor::new(p, x.device())?.broadcast_as(x.shape())?;
    rand.ge(&p)?.to_dtype(x.dtype())? * scale
}

/// [`forward`] with a given dropout mask (`x_d = x * mask`).
pub(crate) fn forward_with_mask(
    base: &FrozenLinear,
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scaling: f64,
    with_bias: bool,
    mask: Option<Tensor>,
) -> Result<Tensor> {
    let (r, k) = a.dims2()?;
    let n = base.out_dim();
    if b.dims() != [n, r] || k != base.in_dim() {
        bail!(
            "fused LoRA: A {:?} and B {:?} do not fit a [{n}, {}] layer",
            a.dims(),
            b.dims(),
            base.in_dim()
        );
    }
    let x = x.contiguous()?;
    let m = x.elem_count() / k;
    // The adapter's input and its product with A, computed outside the graph: the op saves x_d A^T for dB.
    let mask = match mask {
        Some(mask) => Some(mask.detach().contiguous()?),
        None => None,
    };
    let xd = match &mask {
        Some(mask) => (x.detach() * mask)?,
        None => x.detach(),
    };
    let xa = xd.reshape((m, k))?.matmul(&a.detach().t()?)?;
    let weight = match base.quantized_weight() {
        Some(q) => FusedWeight::Quantized(q.clone()),
        None => FusedWeight::Dense(base.weight()?.clone()),
    };
    let bias = if with_bias {
        base.bias().cloned()
    } else {
        None
    };
    let op = LoraLinearOp {
        weight,
        bias,
        scaling: scaling as f32,
        xa,
        mask,
        out_dim: n,
    };
    x.apply_op3(&a.contiguous()?, &b.contiguous()?, op)
}

/// The frozen weight as the op multiplies it.
enum FusedWeight {
    Dense(Tensor),
    /// GGUF blocks: dequantized for one GEMM where the dense path would run one (QLoRA).
    Quantized(QWeight),
}

struct LoraLinearOp {
    weight: FusedWeight,
    bias: Option<Tensor>,
    scaling: f32,
    /// `x_d A^T`, `[m, r]`, detached: what `dB` needs.
    xa: Tensor,
    /// The dropout mask (values 0 or `1 / (1 - p)`) shaped like `x`, when the adapter input is dropped out.
    mask: Option<Tensor>,
    out_dim: usize,
}

/// A contiguous f32 tensor's values.
fn with_values<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<T>) -> Result<T> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("fused LoRA: tensors must be on the CPU");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("fused LoRA: tensor is not contiguous");
    };
    f(&cpu.as_slice::<f32>()?[start..end])
}

fn contiguous_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<f32>()?[start..end]),
        None => bail!("fused LoRA: {what} must be contiguous"),
    }
}

impl LoraLinearOp {
    /// `x W^T (+ b)` for `x [m, k]`, as a fresh `[m, n]` buffer.
    fn base_product(&self, x: &[f32], m: usize, k: usize) -> Result<Vec<f32>> {
        let n = self.out_dim;
        let mut y = match &self.bias {
            Some(bias) => with_values(bias, |b| Ok(b.repeat(m)))?,
            None => vec![0f32; m * n],
        };
        let accumulate = self.bias.is_some();
        match &self.weight {
            FusedWeight::Dense(w) => with_values(w, |w| {
                gemm_into(
                    &mut y,
                    (m, n, k),
                    MatRef::rows(x, k),
                    MatRef::transposed(w, k),
                    1.0,
                    accumulate,
                )
            })?,
            FusedWeight::Quantized(q) if m >= GEMM_MIN_ROWS => {
                // As `QWeight::matmul_t` does from this many rows on: dequantize for one f32 GEMM.
                let w = q.dequantize()?;
                with_values(&w, |w| {
                    gemm_into(
                        &mut y,
                        (m, n, k),
                        MatRef::rows(x, k),
                        MatRef::transposed(w, k),
                        1.0,
                        accumulate,
                    )
                })?
            }
            FusedWeight::Quantized(q) => {
                // Few rows: the product on the stored blocks.
                let xt = Tensor::from_slice(x, (m, k), &candle_core::Device::Cpu)?;
                let p = q.matmul_t(&xt)?.flatten_all()?.to_vec1::<f32>()?;
                y.iter_mut().zip(p).for_each(|(y, p)| *y += p);
            }
        }
        Ok(y)
    }

    /// `dy W` for `dy [m, n]`, as a fresh `[m, k]` buffer.
    fn base_grad_input(&self, dy: &[f32], m: usize, k: usize) -> Result<Vec<f32>> {
        let n = self.out_dim;
        let mut dx = vec![0f32; m * k];
        let w = match &self.weight {
            FusedWeight::Dense(w) => w.clone(),
            // bitsandbytes' `MatMul4Bit.backward` does the same: the input gradient through the dequantized weight.
            FusedWeight::Quantized(q) => q.dequantize()?,
        };
        with_values(&w, |w| {
            gemm_into(
                &mut dx,
                (m, k, n),
                MatRef::rows(dy, n),
                MatRef::rows(w, k),
                1.0,
                false,
            )
        })?;
        Ok(dx)
    }
}

impl CustomOp3 for LoraLinearOp {
    fn name(&self) -> &'static str {
        "fused-lora-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        _as: &CpuStorage,
        _al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_slice(xs, xl, "the input")?;
        let b = contiguous_slice(bs, bl, "lora_B")?;
        let (n, r) = bl.shape().dims2()?;
        let dims = xl.dims();
        let k = *dims.last().unwrap_or(&0);
        if k == 0 || n != self.out_dim {
            bail!("fused LoRA: input {dims:?} or lora_B [{n}, {r}] does not fit the layer");
        }
        let m = x.len() / k;
        let mut y = self.base_product(x, m, k)?;
        // y += s (x_d A^T) B^T, into the same buffer.
        with_values(&self.xa, |xa| {
            gemm_into(
                &mut y,
                (m, n, r),
                MatRef::rows(xa, r),
                MatRef::transposed(b, r),
                self.scaling,
                true,
            )
        })?;
        let mut out = dims[..dims.len() - 1].to_vec();
        out.push(n);
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Everything here is computed from detached tensors, so the gradients hold no part of the graph.
        let (r, k) = a.dims2()?;
        let n = self.out_dim;
        let m = x.elem_count() / k;
        let s = self.scaling as f64;
        let (a_tracked, b_tracked) = (a.track_op(), b.track_op());
        let dy = dy.detach().contiguous()?.reshape((m, n))?;
        let (a, b) = (a.detach(), b.detach());
        let dyb = dy.matmul(&b)?; // [m, r]
        let dx = if x.track_op() {
            let mut dx = with_values(&dy, |dy| self.base_grad_input(dy, m, k))?;
            match &self.mask {
                None => with_values(&dyb, |dyb| {
                    with_values(&a, |a| {
                        gemm_into(
                            &mut dx,
                            (m, k, r),
                            MatRef::rows(dyb, r),
                            MatRef::rows(a, k),
                            self.scaling,
                            true,
                        )
                    })
                })?,
                Some(mask) => {
                    // Through the dropout: the adapter's input gradient times the mask.
                    let adapter = (dyb.matmul(&a)? * s)?;
                    with_values(&adapter, |g| {
                        with_values(mask, |mask| {
                            dx.iter_mut()
                                .zip(g.iter().zip(mask))
                                .for_each(|(d, (g, m))| *d += g * m);
                            Ok(())
                        })
                    })?;
                }
            }
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        let da = if a_tracked {
            let xd = match &self.mask {
                Some(mask) => (x.detach() * mask)?,
                None => x.detach(),
            };
            Some((dyb.t()?.matmul(&xd.reshape((m, k))?)? * s)?)
        } else {
            None
        };
        let db = if b_tracked {
            Some((dy.t()?.matmul(&self.xa)? * s)?)
        } else {
            None
        };
        Ok((dx, da, db))
    }
}

/// `z * k + b` with `k [n]` broadcast over the rows of `z [.., n]` and a frozen bias `b [n]`: DoRA's column scale
/// and bias as one node, so that only `z` (for `dk`) stays alive where `scale_columns` then `add_frozen_bias`
/// would keep the scaled product too. Backward: `dz = dy * k`, `dk = sum over rows of dy * z`. f32 on the CPU
/// (the caller checked [`applies`]).
pub(crate) fn scale_columns_add_bias(
    z: &Tensor,
    k: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let n = z.dims().last().copied().unwrap_or(0);
    if k.dims() != [n] || bias.is_some_and(|b| b.dims() != [n]) {
        bail!(
            "DoRA column scale {:?} or bias {:?} does not fit an output {:?}",
            k.dims(),
            bias.map(|b| b.dims().to_vec()),
            z.dims()
        );
    }
    let bias = match bias {
        Some(b) => Some(b.detach().contiguous()?),
        None => None,
    };
    z.contiguous()?
        .apply_op2(&k.contiguous()?, ScaleColumnsAddBias { bias })
}

struct ScaleColumnsAddBias {
    bias: Option<Tensor>,
}

impl CustomOp2 for ScaleColumnsAddBias {
    fn name(&self) -> &'static str {
        "dora-scale-columns-add-bias"
    }

    fn cpu_fwd(
        &self,
        zs: &CpuStorage,
        zl: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let z = contiguous_slice(zs, zl, "the product")?;
        let k = contiguous_slice(ks, kl, "the scale")?;
        let n = k.len();
        let mut y = match &self.bias {
            Some(b) => with_values(b, |b| Ok(b.repeat(z.len() / n.max(1))))?,
            None => vec![0f32; z.len()],
        };
        for (y, z) in y.chunks_mut(n.max(1)).zip(z.chunks(n.max(1))) {
            for ((y, &z), &k) in y.iter_mut().zip(z).zip(k) {
                *y += z * k;
            }
        }
        Ok((CpuStorage::F32(y), zl.shape().clone()))
    }

    fn bwd(
        &self,
        z: &Tensor,
        k: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = k.elem_count();
        let dy = dy.detach().contiguous()?;
        let dz = if z.track_op() {
            Some(dy.broadcast_mul(&k.detach())?)
        } else {
            None
        };
        let dk = if k.track_op() {
            // Rows summed in order, one thread: the same bits on every run (an m * n pass, small next to the GEMMs).
            let sum = with_values(&dy, |g| {
                with_values(z, |z| {
                    let mut acc = vec![0f32; n];
                    for (g, z) in g.chunks(n.max(1)).zip(z.chunks(n.max(1))) {
                        for ((a, &g), &z) in acc.iter_mut().zip(g).zip(z) {
                            *a += g * z;
                        }
                    }
                    Ok(acc)
                })
            })?;
            Some(Tensor::from_vec(sum, n, k.device())?)
        } else {
            None
        };
        Ok((dz, dk))
    }
}

#[cfg(test)]
#[path = "fused_lora_tests.rs"]
mod tests;
