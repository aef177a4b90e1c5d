//! `y = x W^T + b` for a few rows of `x` (decoding: one row per sequence), f32 on the CPU.
//!
//! With one row the product is bound by reading `W` from memory, not by arithmetic: a GEMM's packing and blocking
//! only add traffic. Here each output row of `W` is read once, from start to end, and dotted with every row of
//! `x` while it sits in L1; rayon splits the output rows between threads so that all cores pull from memory.

use super::{contiguous_f32, f32_slice, simd};
use candle_core::{bail, Device, Result, Tensor};
use rayon::prelude::*;

/// At most this many rows of `x` take the GEMV path; more rows reuse each weight enough for a GEMM to win.
pub const MAX_ROWS: usize = 4;
/// Output rows per rayon task: 64 rows of a 512-wide weight are 128 KiB, enough to amortise a task.
const ROWS_PER_TASK: usize = 64;

/// Whether [`linear_gemv`] should compute `x2 [rows, in] W^T` for this layer: few rows, every tensor f32 on the
/// CPU without autograd, a contiguous weight.
pub fn gemv_applies(x2: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    let rows = x2.dims().first().copied().unwrap_or(0);
    let mut inputs = vec![x2, weight];
    inputs.extend(bias);
    (1..=MAX_ROWS).contains(&rows) && weight.is_contiguous() && super::applies(&inputs)
}

/// `x2 [rows, in] W^T + b` with `weight [out, in]`, `bias [out]`; returns `[rows, out]`.
pub fn linear_gemv(x2: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (rows, in_dim) = x2.dims2()?;
    let (out_dim, w_in) = weight.dims2()?;
    if w_in != in_dim {
        bail!(
            "gemv: x has {in_dim} columns but the weight {:?}",
            weight.dims()
        );
    }
    let x = contiguous_f32(x2, "gemv: x")?;
    let bias = match bias {
        Some(b) if b.dims() == [out_dim] => Some(contiguous_f32(b, "gemv: bias")?),
        Some(b) => bail!("gemv: bias {:?} does not match {out_dim} outputs", b.dims()),
        None => None,
    };
    let (ws, wl) = weight.storage_and_layout();
    let w = f32_slice(&ws, wl, "gemv: the weight")?;
    // Output-major: task t owns y_t[o][r] for its output rows o, so tasks write disjoint slices.
    let mut y_t = vec![0f32; out_dim * rows];
    y_t.par_chunks_mut(ROWS_PER_TASK * rows)
        .enumerate()
        .for_each(|(t, chunk)| {
            let o0 = t * ROWS_PER_TASK;
            for (i, ys) in chunk.chunks_mut(rows).enumerate() {
                let o = o0 + i;
                let w_row = &w[o * in_dim..(o + 1) * in_dim];
                let b = bias.as_ref().map_or(0.0, |b| b[o]);
                for (r, y) in ys.iter_mut().enumerate() {
                    *y = simd::dot(w_row, &x[r * in_dim..(r + 1) * in_dim]) + b;
                }
            }
        });
    drop(ws);
    let y = if rows == 1 {
        y_t
    } else {
        let mut y = vec![0f32; rows * out_dim];
        for (o, ys) in y_t.chunks(rows).enumerate() {
            for (r, &v) in ys.iter().enumerate() {
                y[r * out_dim + o] = v;
            }
        }
        y
    };
    Tensor::from_vec(y, (rows, out_dim), &Device::Cpu)
}
