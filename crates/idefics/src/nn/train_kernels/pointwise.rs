//! Element-wise kernels: the activations (tanh GELU, SiLU) and DoRA's per-column scale.

use super::*;
use crate::nn::cpu_kernels::simd;

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
#[inline(always)]
fn gelu_tanh_inner(x: f32) -> f32 {
    fast_tanh(SQRT_TWO_OVER_PI * x * (1.0 + GELU_CUBIC * x * x))
}

/// `tanh` as a clamped rational function (the approximation Eigen uses for float, within a few ulp of libm's
/// `tanhf`). libm's `tanhf` is a call per element and took most of the tanh GELU's time forward and backward;
/// this one is a few multiply-adds and a division, with no call.
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub(super) fn fast_tanh(x: f32) -> f32 {
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
    /// `out = f(x)` over one chunk; GELU vectorised (`cpu_kernels::simd`, the scalar loop's values).
    fn values(self, x: &[f32], out: &mut [f32]) {
        match self {
            Self::GeluTanh => simd::map_unary(x, out, |v| 0.5 * v * (1.0 + gelu_tanh_inner(v))),
            // Written as candle's CPU kernel writes it (libm `expf`), so the forward pass matches it to the bit.
            Self::Silu => out
                .iter_mut()
                .zip(x)
                .for_each(|(o, &v)| *o = v / (1.0 + (-v).exp())),
        }
    }

    /// `out = g * f'(x)` over one chunk, vectorised (SiLU's `exp` is the vector one, ~2 ulp).
    fn grads(self, x: &[f32], g: &[f32], out: &mut [f32]) {
        match self {
            Self::GeluTanh => simd::map_binary(x, g, out, |x, g| {
                let t = gelu_tanh_inner(x);
                g * (0.5 * (1.0 + t)
                    + 0.5 * x * (1.0 - t * t) * SQRT_TWO_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x))
            }),
            Self::Silu => simd::silu_grad(x, g, out),
        }
    }
}

/// Chunks of this many elements are the unit of rayon's split.
const CHUNK: usize = 4096;

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
            CpuStorage::F32({
                let mut out = vec![0f32; x.len()];
                map_rows(x, CHUNK.min(x.len().max(1)), &mut out, |x, o| {
                    act.values(x, o)
                });
                out
            }),
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
        map_rows2(x, g, CHUNK.min(x.len().max(1)), &mut out, |x, g, o| {
            act.grads(x, g, o)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

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
