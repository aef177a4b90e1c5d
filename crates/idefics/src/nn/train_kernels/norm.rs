//! RMSNorm (Mistral) and LayerNorm (SigLIP) with their backward passes.

use super::*;

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
