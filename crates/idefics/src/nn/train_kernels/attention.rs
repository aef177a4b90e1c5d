//! The attention's softmax and the rotary position embedding with their backward passes.

use super::*;

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
