//! The token cross-entropy of a language-model loss with its backward pass.
//!
//! Composed from candle ops (`max`, `sub`, `exp`, `sum`, `log`, `gather`), the loss keeps three `[tokens, vocab]`
//! tensors of the forward pass alive until the backward pass ends and makes four more there (the broadcast of
//! the sum's gradient, the exp's, the gather's scatter and their sum): ~10 copies of the logits, 1.3 MB a token
//! with a 32k vocabulary. This op keeps none (the logits it reads are kept by their producer anyway) and its
//! backward writes one: `w (softmax(z) - onehot(y))`, as PyTorch's `cross_entropy` does.

use super::*;

/// Per row of `z [n, v]`: `w_i (logsumexp(z_i) - z_i[y_i])` (`[n]`), the max-shifted form of the composed loss.
/// `targets` and `weights` have `n` entries; every target must be below `v`.
pub fn token_nll(z: &Tensor, targets: Vec<u32>, weights: Vec<f32>) -> Result<Tensor> {
    let (n, v) = z.dims2()?;
    if targets.len() != n || weights.len() != n {
        bail!(
            "token-nll: {n} rows but {} targets and {} weights",
            targets.len(),
            weights.len()
        );
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= v) {
        bail!("token-nll: target {t} is outside the vocabulary of {v}");
    }
    z.contiguous()?.apply_op1(TokenNll {
        targets,
        weights,
        row_stats: std::sync::OnceLock::new(),
    })
}

struct TokenNll {
    targets: Vec<u32>,
    weights: Vec<f32>,
    /// Each row's `(max, logsumexp)` from the forward pass, so the backward pass reads the logits once.
    row_stats: std::sync::OnceLock<Vec<(f32, f32)>>,
}

/// `(max, log(sum(exp(z - max))))` of one row.
fn shifted_logsumexp(z: &[f32]) -> (f32, f32) {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = z.iter().map(|&x| (x - max).exp()).sum();
    (max, sum.ln())
}

impl CustomOp1 for TokenNll {
    fn name(&self) -> &'static str {
        "train-token-nll"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = slice(s, l, self.name())?;
        let (n, v) = rows_of(l, self.name())?;
        let row = |i: usize| shifted_logsumexp(&z[i * v..(i + 1) * v]);
        let stats: Vec<(f32, f32)> = if z.len() >= PAR_MIN_ELEMS {
            (0..n).into_par_iter().map(row).collect()
        } else {
            (0..n).map(row).collect()
        };
        let out = stats
            .iter()
            .enumerate()
            .map(|(i, &(max, lse))| {
                self.weights[i] * (lse - (z[i * v + self.targets[i] as usize] - max))
            })
            .collect();
        // `token_nll` makes a new op per call, and candle runs its forward pass once.
        let _ = self.row_stats.set(stats);
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        grad_if(arg, || {
            let z = arg.detach().contiguous()?;
            let (zs, zl) = z.storage_and_layout();
            let g = grad.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            let candle_core::Storage::Cpu(zs) = &*zs else {
                bail!("{}: the logits must be on the CPU", self.name());
            };
            let z = slice(zs, zl, self.name())?;
            let (n, v) = rows_of(zl, self.name())?;
            let Some(stats) = self.row_stats.get().filter(|s| s.len() == n) else {
                bail!("{}: backward pass without its forward pass", self.name());
            };
            let mut out = vec![0f32; n * v];
            let row = |(i, o): (usize, &mut [f32])| {
                let zi = &z[i * v..(i + 1) * v];
                let (max, lse) = stats[i];
                let scale = g[i] * self.weights[i];
                for (o, &x) in o.iter_mut().zip(zi) {
                    *o = scale * (x - max - lse).exp();
                }
                o[self.targets[i] as usize] -= scale;
            };
            if out.len() >= PAR_MIN_ELEMS {
                out.par_chunks_mut(v).enumerate().for_each(row);
            } else {
                out.chunks_mut(v).enumerate().for_each(row);
            }
            Tensor::from_vec(out, (n, v), &Device::Cpu)
        })
    }
}
