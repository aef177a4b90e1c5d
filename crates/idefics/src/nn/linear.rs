//! Dense layer `y = x W^T + b` with PyTorch's `[out, in]` weight layout.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// A PyTorch `nn.Linear`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Loads `weight [out, in]` (and `bias [out]` when `bias`) under `vb`.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `[.., in] -> [.., out]`: leading dims are flattened into one GEMM.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        let (lead, in_dim) = match dims.split_last() {
            Some((last, lead)) => (lead.to_vec(), *last),
            None => candle_core::bail!("linear: input must have at least one dimension"),
        };
        let rows: usize = lead.iter().product();
        let x2 = xs.reshape((rows, in_dim))?;
        let mut y = x2.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut out_dims = lead;
        out_dims.push(self.weight.dim(0)?);
        y.reshape(out_dims)
    }
}
