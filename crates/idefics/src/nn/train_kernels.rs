//! Fused CPU kernels that carry their own backward pass, for training.
//!
//! candle's fused kernels (`rms_norm`, `layer_norm`, `softmax_last_dim`) have no backward, so training used
//! the composed ops: an RMSNorm is eight tensor ops forward, more backward, each with its own buffer; candle's
//! tanh-GELU backward alone is fifteen. On the tiny model those element-wise ops and the sums that undo their
//! broadcasts took about half of a training step (`perf record` on `idefics bench-train`). Each kernel here is
//! one pass forward and one or two passes backward, written as candle custom ops so that autograd calls our
//! backward (`CustomOp*::bwd`). No crate provides differentiable fused CPU kernels for candle, hence these.
//!
//! Scope: contiguous f32 tensors on the CPU, where we train. Elsewhere (CUDA, half precision) the callers keep
//! the composed ops. Set `IDEFICS_TRAIN_KERNELS=composed` to force the composed ops (benchmarks, bisecting).
//! The backward passes are not differentiable again (no second-order gradients, as in candle).

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Rows smaller than this many elements in total are not worth rayon's dispatch.
const PAR_MIN_ELEMS: usize = 1 << 14;

/// Whether these kernels should replace the composed ops for `inputs`: every input is an f32 tensor on the
/// CPU, at least one takes part in autograd, and `IDEFICS_TRAIN_KERNELS` is not `composed`.
pub fn applies(inputs: &[&Tensor]) -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    let enabled = *ENABLED
        .get_or_init(|| std::env::var("IDEFICS_TRAIN_KERNELS").map_or(true, |v| v != "composed"));
    enabled
        && inputs
            .iter()
            .all(|t| t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu))
        && inputs.iter().any(|t| t.track_op())
}

fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: the input must be contiguous"),
    }
}

/// Splits `x` into rows of the last dimension's length.
fn rows_of(layout: &Layout, op: &str) -> Result<(usize, usize)> {
    let dims = layout.dims();
    match dims.last() {
        Some(&d) if d > 0 => Ok((layout.shape().elem_count() / d, d)),
        _ => bail!("{op}: expected a tensor with a non-empty last dimension, got {dims:?}"),
    }
}

fn check_vector(layout: &Layout, d: usize, op: &str, what: &str) -> Result<()> {
    if layout.dims() != [d] {
        bail!(
            "{op}: {what} must have shape [{d}], got {:?}",
            layout.dims()
        );
    }
    Ok(())
}

/// `f(row_in, row_out)` over every row, on rayon's threads when the tensor is large enough.
fn map_rows(input: &[f32], d: usize, out: &mut [f32], f: impl Fn(&[f32], &mut [f32]) + Sync) {
    if input.len() >= PAR_MIN_ELEMS {
        out.par_chunks_mut(d)
            .zip(input.par_chunks(d))
            .for_each(|(o, i)| f(i, o));
    } else {
        out.chunks_mut(d)
            .zip(input.chunks(d))
            .for_each(|(o, i)| f(i, o));
    }
}

/// `f(a_row, b_row, out_row)` over the rows of two same-shaped inputs.
fn map_rows2(
    a: &[f32],
    b: &[f32],
    d: usize,
    out: &mut [f32],
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) {
    if a.len() >= PAR_MIN_ELEMS {
        out.par_chunks_mut(d)
            .zip(a.par_chunks(d).zip(b.par_chunks(d)))
            .for_each(|(o, (x, y))| f(x, y, o));
    } else {
        out.chunks_mut(d)
            .zip(a.chunks(d).zip(b.chunks(d)))
            .for_each(|(o, (x, y))| f(x, y, o));
    }
}

/// Sums `f(a_row, b_row)` (each a length-`width` vector) over all rows: the parameter gradients of the norms.
fn sum_rows(
    a: &[f32],
    b: &[f32],
    d: usize,
    width: usize,
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let fold = |mut acc: Vec<f32>, (x, y): (&[f32], &[f32])| {
        f(x, y, &mut acc);
        acc
    };
    let add = |mut s: Vec<f32>, t: Vec<f32>| {
        s.iter_mut().zip(t).for_each(|(s, t)| *s += t);
        s
    };
    if a.len() >= PAR_MIN_ELEMS {
        a.par_chunks(d)
            .zip(b.par_chunks(d))
            .fold(|| vec![0f32; width], fold)
            .reduce(|| vec![0f32; width], add)
    } else {
        a.chunks(d).zip(b.chunks(d)).fold(vec![0f32; width], fold)
    }
}

fn grad_if(t: &Tensor, g: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
    if t.track_op() {
        g().map(Some)
    } else {
        Ok(None)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Element-wise activations

/// The tanh approximation of GELU, candle's `gelu` (transformers' `gelu_pytorch_tanh`).
pub fn gelu_tanh(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Activation::GeluTanh)
}

/// `x * sigmoid(x)`, candle's `silu`.
pub fn silu(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Activation::Silu)
}

#[allow(clippy::excessive_precision)]
const SQRT_TWO_OVER_PI: f32 = 0.797_884_560_802_865_4;
const GELU_CUBIC: f32 = 0.044_715;

/// `tanh(sqrt(2/pi) (x + 0.044715 x^3))`, the inner term of the tanh GELU.
fn gelu_tanh_inner(x: f32) -> f32 {
    fast_tanh(SQRT_TWO_OVER_PI * x * (1.0 + GELU_CUBIC * x * x))
}

/// `tanh` as a clamped rational function (the approximation Eigen uses for float, within a few ulp of libm's
/// `tanhf`). libm's `tanhf` is a call per element and took most of the tanh GELU's time forward and backward;
/// this one is branch-free arithmetic that the compiler vectorises.
#[allow(clippy::excessive_precision)]
fn fast_tanh(x: f32) -> f32 {
    // Past this bound tanh is 1 in f32.
    const CLAMP: f32 = 7.905_311_107_635_498_05;
    // Below this, tanh(x) == x in f32, and the rational form would lose that.
    const TINY: f32 = 0.000_4;
    const A: [f32; 7] = [
        4.893_524_558_917_86e-3,
        6.372_619_288_754_36e-4,
        1.485_722_357_179_79e-5,
        5.122_297_090_371_14e-8,
        -8.604_671_522_137_35e-11,
        2.000_187_904_824_77e-13,
        -2.760_768_477_423_55e-16,
    ];
    const B: [f32; 4] = [
        4.893_525_185_543_85e-3,
        2.268_434_632_439_00e-3,
        1.185_347_056_866_54e-4,
        1.198_258_394_667_02e-6,
    ];
    let xc = x.clamp(-CLAMP, CLAMP);
    let x2 = xc * xc;
    let p = A[6];
    let p = p * x2 + A[5];
    let p = p * x2 + A[4];
    let p = p * x2 + A[3];
    let p = p * x2 + A[2];
    let p = p * x2 + A[1];
    let p = (p * x2 + A[0]) * xc;
    let q = ((B[3] * x2 + B[2]) * x2 + B[1]) * x2 + B[0];
    if x.abs() < TINY {
        x
    } else {
        p / q
    }
}

#[derive(Clone, Copy)]
enum Activation {
    GeluTanh,
    Silu,
}

impl Activation {
    fn value(self, x: f32) -> f32 {
        match self {
            Self::GeluTanh => 0.5 * x * (1.0 + gelu_tanh_inner(x)),
            // Written as candle's CPU kernel writes it, so the forward pass matches it to the bit.
            Self::Silu => x / (1.0 + (-x).exp()),
        }
    }

    fn derivative(self, x: f32) -> f32 {
        match self {
            Self::GeluTanh => {
                let t = gelu_tanh_inner(x);
                0.5 * (1.0 + t)
                    + 0.5 * x * (1.0 - t * t) * SQRT_TWO_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x)
            }
            Self::Silu => {
                let s = 1.0 / (1.0 + (-x).exp());
                s * (1.0 + x * (1.0 - s))
            }
        }
    }
}

fn elementwise(input: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; input.len()];
    map_rows(input, 4096.min(input.len().max(1)), &mut out, |i, o| {
        o.iter_mut().zip(i).for_each(|(o, &x)| *o = f(x))
    });
    out
}

impl CustomOp1 for Activation {
    fn name(&self) -> &'static str {
        match self {
            Self::GeluTanh => "train-gelu-tanh",
            Self::Silu => "train-silu",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let act = *self;
        Ok((
            CpuStorage::F32(elementwise(x, |v| act.value(v))),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        grad_if(arg, || {
            arg.detach()
                .apply_op2_no_bwd(&grad.contiguous()?, &ActivationGrad(*self))
        })
    }
}

/// `grad * f'(x)` in one pass.
struct ActivationGrad(Activation);

impl CustomOp2 for ActivationGrad {
    fn name(&self) -> &'static str {
        "train-activation-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        if x.len() != g.len() {
            bail!("{}: gradient shape differs from the input's", self.name());
        }
        let act = self.0;
        let mut out = vec![0f32; x.len()];
        let chunk = 4096.min(x.len().max(1));
        map_rows2(x, g, chunk, &mut out, |x, g, o| {
            for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                *o = g * act.derivative(x);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Softmax over the last dimension

/// Softmax over the last dimension (`max`-shifted, as candle's composed `softmax`).
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Softmax)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "train-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let (_, d) = rows_of(l, self.name())?;
        let mut out = vec![0f32; x.len()];
        map_rows(x, d, &mut out, |x, o| {
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (v - max).exp();
                sum += *o;
            }
            o.iter_mut().for_each(|o| *o /= sum);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        grad_if(arg, || {
            res.detach()
                .apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)
        })
    }
}

/// `y * (g - sum(g * y))` per row.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "train-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let (_, d) = rows_of(l1, self.name())?;
        if y.len() != g.len() {
            bail!("{}: gradient shape differs from the output's", self.name());
        }
        let mut out = vec![0f32; y.len()];
        map_rows2(y, g, d, &mut out, |y, g, o| {
            let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
            for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                *o = y * (g - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------------------
// RMSNorm

/// `x / sqrt(mean(x^2) + eps) * w` over the last dimension, `w` of shape `[D]`.
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    xs.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })
}

#[derive(Clone, Copy)]
struct RmsNorm {
    eps: f32,
}

impl RmsNorm {
    fn inv_rms(&self, x: &[f32]) -> f32 {
        let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        1.0 / (mean_sq + self.eps).sqrt()
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "train-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let (_, d) = rows_of(l1, self.name())?;
        check_vector(l2, d, self.name(), "the weight")?;
        let mut out = vec![0f32; x.len()];
        map_rows(x, d, &mut out, |x, o| {
            let r = self.inv_rms(x);
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                *o = x * r * w;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (xd, wd, g) = (x.detach(), w.detach(), grad.contiguous()?);
        let gx = grad_if(x, || xd.apply_op3_no_bwd(&wd, &g, &RmsNormGradInput(*self)))?;
        let gw = grad_if(w, || xd.apply_op2_no_bwd(&g, &RmsNormGradWeight(*self)))?;
        Ok((gx, gw))
    }
}

/// `dL/dx = r * (g*w - n * mean(g*w*n))` with `n = x * r`.
struct RmsNormGradInput(RmsNorm);

impl CustomOp3 for RmsNormGradInput {
    fn name(&self) -> &'static str {
        "train-rms-norm-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let g = slice(s3, l3, self.name())?;
        let (_, d) = rows_of(l1, self.name())?;
        check_vector(l2, d, self.name(), "the weight")?;
        let mut out = vec![0f32; x.len()];
        map_rows2(x, g, d, &mut out, |x, g, o| {
            let r = self.0.inv_rms(x);
            let dot: f32 = x
                .iter()
                .zip(g)
                .zip(w)
                .map(|((x, g), w)| g * w * x * r)
                .sum();
            let mean = dot / d as f32;
            for (((o, &x), &g), &w) in o.iter_mut().zip(x).zip(g).zip(w) {
                *o = r * (g * w - x * r * mean);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `dL/dw = sum over rows of g * x * r`.
struct RmsNormGradWeight(RmsNorm);

impl CustomOp2 for RmsNormGradWeight {
    fn name(&self) -> &'static str {
        "train-rms-norm-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let (_, d) = rows_of(l1, self.name())?;
        let sum = sum_rows(x, g, d, d, |x, g, acc| {
            let r = self.0.inv_rms(x);
            for ((a, &x), &g) in acc.iter_mut().zip(x).zip(g) {
                *a += g * x * r;
            }
        });
        Ok((CpuStorage::F32(sum), Shape::from(d)))
    }
}

// ---------------------------------------------------------------------------------------------------------
// LayerNorm

/// `(x - mean) / sqrt(var + eps) * w + b` over the last dimension (biased variance), `w`, `b` of shape `[D]`.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    xs.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}

#[derive(Clone, Copy)]
struct LayerNorm {
    eps: f32,
}

impl LayerNorm {
    /// Mean and `1 / sqrt(var + eps)` of one row.
    fn stats(&self, x: &[f32]) -> (f32, f32) {
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        (mean, 1.0 / (var + self.eps).sqrt())
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "train-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let b = slice(s3, l3, self.name())?;
        let (_, d) = rows_of(l1, self.name())?;
        check_vector(l2, d, self.name(), "the weight")?;
        check_vector(l3, d, self.name(), "the bias")?;
        let mut out = vec![0f32; x.len()];
        map_rows(x, d, &mut out, |x, o| {
            let (mean, r) = self.stats(x);
            for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
                *o = (x - mean) * r * w + b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xd, wd, g) = (x.detach(), w.detach(), grad.contiguous()?);
        let gx = grad_if(x, || {
            xd.apply_op3_no_bwd(&wd, &g, &LayerNormGradInput(*self))
        })?;
        let params = if w.track_op() || b.track_op() {
            Some(xd.apply_op2_no_bwd(&g, &LayerNormGradParams(*self))?)
        } else {
            None
        };
        let row = |i: usize, t: &Tensor| -> Result<Option<Tensor>> {
            match &params {
                Some(p) if t.track_op() => Ok(Some(p.get(i)?)),
                _ => Ok(None),
            }
        };
        Ok((gx, row(0, w)?, row(1, b)?))
    }
}

/// `dL/dx = r * (gw - mean(gw) - n * mean(gw * n))` with `gw = g * w`, `n = (x - mean) * r`.
struct LayerNormGradInput(LayerNorm);

impl CustomOp3 for LayerNormGradInput {
    fn name(&self) -> &'static str {
        "train-layer-norm-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let g = slice(s3, l3, self.name())?;
        let (_, d) = rows_of(l1, self.name())?;
        check_vector(l2, d, self.name(), "the weight")?;
        let mut out = vec![0f32; x.len()];
        map_rows2(x, g, d, &mut out, |x, g, o| {
            let (mean, r) = self.0.stats(x);
            let (mut sum_gw, mut sum_gwn) = (0f32, 0f32);
            for ((&x, &g), &w) in x.iter().zip(g).zip(w) {
                sum_gw += g * w;
                sum_gwn += g * w * (x - mean) * r;
            }
            let (mean_gw, mean_gwn) = (sum_gw / d as f32, sum_gwn / d as f32);
            for (((o, &x), &g), &w) in o.iter_mut().zip(x).zip(g).zip(w) {
                *o = r * (g * w - mean_gw - (x - mean) * r * mean_gwn);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `[dL/dw, dL/db]` as a `[2, D]` tensor: sums over rows of `g * n` and of `g`.
struct LayerNormGradParams(LayerNorm);

impl CustomOp2 for LayerNormGradParams {
    fn name(&self) -> &'static str {
        "train-layer-norm-grad-params"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let (_, d) = rows_of(l1, self.name())?;
        let sum = sum_rows(x, g, d, 2 * d, |x, g, acc| {
            let (mean, r) = self.0.stats(x);
            let (gw, gb) = acc.split_at_mut(d);
            for (((gw, gb), &x), &g) in gw.iter_mut().zip(gb).zip(x).zip(g) {
                *gw += g * (x - mean) * r;
                *gb += g;
            }
        });
        Ok((CpuStorage::F32(sum), Shape::from((2, d))))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Per-column scale (DoRA's magnitude / norm factor)

/// `x * s` with `s` of shape `[D]` broadcast over the rows of `x [.., D]`. candle's `broadcast_mul` backward
/// computes both full-size products and then sums one of them back to `[D]`; this is one pass each.
pub fn scale_columns(xs: &Tensor, scale: &Tensor) -> Result<Tensor> {
    xs.contiguous()?
        .apply_op2(&scale.contiguous()?, ScaleColumns)
}

struct ScaleColumns;

impl CustomOp2 for ScaleColumns {
    fn name(&self) -> &'static str {
        "train-scale-columns"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let s = slice(s2, l2, self.name())?;
        let (_, d) = rows_of(l1, self.name())?;
        check_vector(l2, d, self.name(), "the scale")?;
        let mut out = vec![0f32; x.len()];
        map_rows(x, d, &mut out, |x, o| {
            for ((o, &x), &s) in o.iter_mut().zip(x).zip(s) {
                *o = x * s;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let gx = grad_if(x, || {
            g.apply_op2_no_bwd(&scale.detach(), &ScaleColumnsGradInput)
        })?;
        let gs = grad_if(scale, || {
            x.detach().apply_op2_no_bwd(&g, &ScaleColumnsGradScale)
        })?;
        Ok((gx, gs))
    }
}

/// `g * s` (the forward op without its backward).
struct ScaleColumnsGradInput;

impl CustomOp2 for ScaleColumnsGradInput {
    fn name(&self) -> &'static str {
        "train-scale-columns-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        ScaleColumns.cpu_fwd(s1, l1, s2, l2)
    }
}

/// `sum over rows of g * x`.
struct ScaleColumnsGradScale;

impl CustomOp2 for ScaleColumnsGradScale {
    fn name(&self) -> &'static str {
        "train-scale-columns-grad-scale"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let (_, d) = rows_of(l1, self.name())?;
        let sum = sum_rows(x, g, d, d, |x, g, acc| {
            for ((a, &x), &g) in acc.iter_mut().zip(x).zip(g) {
                *a += g * x;
            }
        });
        Ok((CpuStorage::F32(sum), Shape::from(d)))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Rotary position embedding

/// `x * cos + rotate_half(x) * sin` for `x [B, H, L, D]` and duplicated-half tables `cos, sin [B, L, D]`
/// (`RopeTables`). The tables get no gradient: callers must not pass tables that take part in autograd.
pub fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if cos.track_op() || sin.track_op() {
        bail!("train-rope: the cos / sin tables must not take part in autograd");
    }
    xs.contiguous()?.apply_op3(
        &cos.contiguous()?,
        &sin.contiguous()?,
        Rope { inverse: false },
    )
}

/// The same rotation, or with `inverse` its transpose (the backward: `g * cos + rotate_half^T(g * sin)`).
#[derive(Clone, Copy)]
struct Rope {
    inverse: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "train-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let cos = slice(s2, l2, self.name())?;
        let sin = slice(s3, l3, self.name())?;
        let (b, h, l, d) = l1.shape().dims4()?;
        if l2.dims() != [b, l, d] || l3.dims() != [b, l, d] || d % 2 != 0 {
            bail!(
                "{}: x {:?} needs cos / sin tables [{b}, {l}, {d}] and an even head size, got {:?} / {:?}",
                self.name(),
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let half = d / 2;
        let inverse = self.inverse;
        let mut out = vec![0f32; x.len()];
        let rotate = |row: usize, x: &[f32], o: &mut [f32]| {
            // Row `row` of the flattened [B, H, L] uses table row (b, l).
            let t = (row / (h * l)) * l + row % l;
            let (c, s) = (&cos[t * d..(t + 1) * d], &sin[t * d..(t + 1) * d]);
            for i in 0..half {
                let (x1, x2) = (x[i], x[i + half]);
                if inverse {
                    o[i] = x1 * c[i] + x2 * s[i + half];
                    o[i + half] = x2 * c[i + half] - x1 * s[i];
                } else {
                    o[i] = x1 * c[i] + -x2 * s[i];
                    o[i + half] = x2 * c[i + half] + x1 * s[i + half];
                }
            }
        };
        if x.len() >= PAR_MIN_ELEMS {
            out.par_chunks_mut(d)
                .zip(x.par_chunks(d))
                .enumerate()
                .for_each(|(r, (o, x))| rotate(r, x, o));
        } else {
            out.chunks_mut(d)
                .zip(x.chunks(d))
                .enumerate()
                .for_each(|(r, (o, x))| rotate(r, x, o));
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gx = grad_if(x, || {
            grad.contiguous()?.apply_op3_no_bwd(
                &cos.detach(),
                &sin.detach(),
                &Rope {
                    inverse: !self.inverse,
                },
            )
        })?;
        Ok((gx, None, None))
    }
}

#[cfg(test)]
#[path = "train_kernels_tests.rs"]
mod tests;
