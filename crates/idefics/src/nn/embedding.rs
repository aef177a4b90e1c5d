//! Token embeddings `[V, D]`: a dense matrix, or GGUF blocks whose looked-up rows are dequantized.

use crate::quant::QWeight;
use candle_core::{DType, Result, Tensor};

#[derive(Debug, Clone)]
pub enum Embedding {
    Dense(Tensor),
    /// Inference only: the rows are dequantized on lookup and carry no gradient.
    Quantized(QWeight),
}

impl Embedding {
    /// `ids [..] -> [.., D]`, in `dtype` for a quantized table (a dense one keeps its own dtype).
    pub fn forward(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        let mut out_dims = ids.dims().to_vec();
        match self {
            Embedding::Dense(table) => {
                out_dims.push(table.dim(1)?);
                table
                    .index_select(&ids.flatten_all()?, 0)?
                    .reshape(out_dims)
            }
            Embedding::Quantized(q) => {
                out_dims.push(q.in_dim());
                let ids = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                q.rows(&ids)?.to_dtype(dtype)?.reshape(out_dims)
            }
        }
    }

    /// `(V, D)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        match self {
            Embedding::Dense(t) => t.dims2(),
            Embedding::Quantized(q) => Ok((q.out_dim(), q.in_dim())),
        }
    }

    /// The dense matrix, when not quantized.
    pub fn dense(&self) -> Option<&Tensor> {
        match self {
            Embedding::Dense(t) => Some(t),
            Embedding::Quantized(_) => None,
        }
    }
}
