//! A dense linear layer `y = x W^T + b` as one autograd node.
//!
//! candle differentiates `x.matmul(&w.t())` through two nodes. The matmul's backward writes the weight's
//! gradient as `x^T dy`, `[in, out]`; the transpose node's backward then adds that, transposed, into a zeroed
//! `[out, in]` buffer, and candle 0.11's binary map walks a transposed operand element by element across its
//! stride. On bench-150m, full fine-tuning spent ~10 % of a step in those adds (`perf record` on `idefics
//! bench-train --mode full`). Here the backward writes `dW = dy^T x` straight in the weight's layout (one GEMM
//! reading `dy` transposed in place), `dx = dy W` and `db` = the column sums of `dy`, so each parameter
//! receives one contiguous gradient. The forward product is the one candle's matmul runs (same `gemm` call, the
//! bias written into the output first).

use super::*;
use crate::nn::cpu_kernels::{gemm_into, MatRef};

/// `x2 [m, k] W^T + b` with `weight [n, k]` and `bias [n]`: `[m, n]`. The caller checked [`applies`] for the
/// inputs.
pub fn linear(x2: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (_, k) = x2.dims2()?;
    let (n, w_in) = weight.dims2()?;
    if w_in != k {
        bail!("train-linear: input has {k} features, the weight [{n}, {w_in}] expects {w_in}");
    }
    if let Some(b) = bias {
        if b.dims() != [n] {
            bail!(
                "train-linear: bias must have shape [{n}], got {:?}",
                b.dims()
            );
        }
    }
    let (x2, weight) = (x2.contiguous()?, weight.contiguous()?);
    match bias {
        Some(b) => x2.apply_op3(&weight, &b.contiguous()?, Linear),
        None => x2.apply_op2(&weight, Linear),
    }
}

struct Linear;

impl Linear {
    fn forward(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let name = "train-linear";
        let (xs, ws) = (slice(x.0, x.1, name)?, slice(w.0, w.1, name)?);
        let (m, k) = x.1.shape().dims2()?;
        let (n, _) = w.1.shape().dims2()?;
        let mut y = match b {
            Some((bs, bl)) => {
                let b = slice(bs, bl, name)?;
                check_vector(bl, n, name, "the bias")?;
                b.repeat(m)
            }
            None => vec![0f32; m * n],
        };
        gemm_into(
            &mut y,
            (m, n, k),
            MatRef::rows(xs, k),
            MatRef::transposed(ws, k),
            1.0,
            b.is_some(),
        )?;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    /// `(dx, dW)` for the tracked ones among `x`, `w`.
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Tensor)> {
        let (xd, wd, dy) = (x.detach(), w.detach(), grad.contiguous()?);
        let dx = grad_if(x, || dy.apply_op2_no_bwd(&wd, &LinearGrad::Input))?;
        let dw = grad_if(w, || dy.apply_op2_no_bwd(&xd, &LinearGrad::Weight))?;
        Ok((dx, dw, dy))
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "train-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(x, w, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "train-linear"
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
        self.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, dy) = self.grads(x, w, grad)?;
        let db = grad_if(b, || dy.apply_op1_no_bwd(&ColumnSums))?;
        Ok((dx, dw, db))
    }
}

/// The gradients that are products with `dy [m, n]`: the input's, `dy W [n, k]` (`[m, k]`), or the weight's,
/// `dy^T x [m, k]` (`[n, k]`, in the weight's `[out, in]` layout).
#[derive(Clone, Copy)]
enum LinearGrad {
    Input,
    Weight,
}

impl CustomOp2 for LinearGrad {
    fn name(&self) -> &'static str {
        match self {
            Self::Input => "train-linear-grad-input",
            Self::Weight => "train-linear-grad-weight",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (dy, other) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let (m, n) = l1.shape().dims2()?;
        let (_, k) = l2.shape().dims2()?;
        // (output rows, the product's inner dimension, dy or its transpose)
        let (rows, inner, lhs) = match self {
            Self::Input => (m, n, MatRef::rows(dy, n)),
            Self::Weight => (n, m, MatRef::transposed(dy, n)),
        };
        let mut out = vec![0f32; rows * k];
        gemm_into(
            &mut out,
            (rows, k, inner),
            lhs,
            MatRef::rows(other, k),
            1.0,
            false,
        )?;
        Ok((CpuStorage::F32(out), Shape::from((rows, k))))
    }
}

/// The column sums of `dy [m, n]`: the bias's gradient, summed in fixed row blocks (the same bits on any
/// number of threads).
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "train-linear-grad-bias"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dy = slice(s, l, self.name())?;
        let (_, n) = rows_of(l, self.name())?;
        let sums = sum_rows(dy, dy, n, n, |row, _, acc| {
            acc.iter_mut().zip(row).for_each(|(a, &r)| *a += r)
        });
        Ok((CpuStorage::F32(sums), Shape::from(n)))
    }
}
