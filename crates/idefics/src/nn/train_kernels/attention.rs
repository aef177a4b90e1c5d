//! The attention's softmax and the rotary position embedding with their backward passes.

use super::*;
use crate::nn::cpu_kernels::simd;

/// Softmax over the last dimension (`max`-shifted, as candle's composed `softmax`; values within a few ulp of it):
/// [`scaled_masked_softmax`] without scale or mask, for any rank.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(ScaledSoftmax { scale: 1.0 })
}

/// `y * (g - sum(g * y)) * scale` per row (the scale of [`scaled_masked_softmax`]; 1 for the plain softmax).
struct SoftmaxGrad {
    scale: f32,
}

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
                *o = y * (g - dot) * self.scale;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `softmax(scores * scale + mask)` over the last dimension of `scores [B, H, Lq, Lk]`, as one autograd node:
/// the composed form keeps the scaled and the masked scores alive until the backward pass ends (candle holds
/// every node's inputs), two `[B, H, Lq, Lk]` copies per attention layer (~310 MB of bench-150m's training
/// batch over its 24 layers). `mask` (no gradient: it must not take part in autograd) broadcasts over any of the
/// first three dimensions and has `Lk` columns; a lower rank is read with leading 1s.
pub fn scaled_masked_softmax(scores: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let (b, h, lq, lk) = scores.dims4()?;
    let op = ScaledSoftmax {
        scale: scale as f32,
    };
    let Some(mask) = mask else {
        return scores.contiguous()?.apply_op1(op);
    };
    if mask.track_op() {
        bail!("train-scaled-softmax: the mask must not take part in autograd");
    }
    let dims = mask.dims();
    if dims.len() > 4 {
        bail!(
            "train-scaled-softmax: mask of rank {} for scores [{b}, {h}, {lq}, {lk}]",
            dims.len()
        );
    }
    let mut full = vec![1usize; 4 - dims.len()];
    full.extend_from_slice(dims);
    let fits = |m: usize, s: usize| m == 1 || m == s;
    if !(fits(full[0], b) && fits(full[1], h) && fits(full[2], lq) && full[3] == lk) {
        bail!(
            "train-scaled-softmax: mask {dims:?} does not broadcast to scores [{b}, {h}, {lq}, {lk}]"
        );
    }
    scores
        .contiguous()?
        .apply_op2(&mask.reshape(full)?.contiguous()?, op)
}

#[derive(Clone, Copy)]
struct ScaledSoftmax {
    scale: f32,
}

impl ScaledSoftmax {
    const NAME: &'static str = "train-scaled-softmax";

    /// One row: `o = softmax(x * scale + m)`, with the vector loops of the inference attention
    /// (`cpu_kernels::simd`: exp within ~2 ulp of libm's, lane-parallel sums; libm's `expf`, a call per score, took
    /// ~2 % of a training step).
    fn row(self, x: &[f32], m: Option<&[f32]>, o: &mut [f32]) {
        o.iter_mut().zip(x).for_each(|(o, &x)| *o = x * self.scale);
        let max = simd::add_max(o, m);
        let sum = simd::exp_sub_sum(o, max);
        o.iter_mut().for_each(|o| *o /= sum);
    }
}

impl CustomOp1 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, Self::NAME)?;
        let (_, d) = rows_of(l, Self::NAME)?;
        let mut out = vec![0f32; x.len()];
        map_rows(x, d, &mut out, |x, o| self.row(x, None, o));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        grad_if(arg, || {
            res.detach()
                .apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad { scale: self.scale })
        })
    }
}

impl CustomOp2 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, Self::NAME)?;
        let mask = slice(s2, l2, Self::NAME)?;
        let (b, h, lq, lk) = l1.shape().dims4()?;
        let (mb, mh, mq, _) = l2.shape().dims4()?;
        // The mask row of score row (bi, hi, qi), each index 0 along a broadcast dimension.
        let mask_row = |r: usize| {
            let (bi, hi, qi) = (r / (h * lq), (r / lq) % h, r % lq);
            let pick = |i: usize, n: usize| if n == 1 { 0 } else { i };
            ((pick(bi, mb) * mh + pick(hi, mh)) * mq + pick(qi, mq)) * lk
        };
        let mut out = vec![0f32; x.len()];
        let row = |r: usize, o: &mut [f32]| {
            let m = mask_row(r);
            self.row(&x[r * lk..(r + 1) * lk], Some(&mask[m..m + lk]), o)
        };
        if x.len() >= PAR_MIN_ELEMS {
            out.par_chunks_mut(lk)
                .enumerate()
                .for_each(|(r, o)| row(r, o));
        } else {
            out.chunks_mut(lk).enumerate().for_each(|(r, o)| row(r, o));
        }
        debug_assert_eq!(out.len(), b * h * lq * lk);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((CustomOp1::bwd(self, arg, res, grad)?, None))
    }
}

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
