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
//! the composed ops. [`super::kernel_choice`] can force the composed ops (`idefics bench-train --kernels
//! composed`; benchmarks, bisecting).
//! The backward passes are not differentiable again (no second-order gradients, as in candle).

use super::kernel_choice::{kernels, KernelChoice, KernelFamily};
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

/// Rows smaller than this many elements in total are not worth rayon's dispatch.
const PAR_MIN_ELEMS: usize = 1 << 14;

/// Whether these kernels should replace the composed ops for `inputs`: every input is an f32 tensor on the
/// CPU, at least one takes part in autograd, and the training kernels are chosen ([`super::kernel_choice`]).
pub fn applies(inputs: &[&Tensor]) -> bool {
    kernels(KernelFamily::Training) == KernelChoice::Fused
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
/// Rows are summed in fixed blocks whose partial sums are added in order, so the result is the same bits
/// whatever the number of threads (training runs stay reproducible, `--resume` equal to an uninterrupted run).
fn sum_rows(
    a: &[f32],
    b: &[f32],
    d: usize,
    width: usize,
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    const BLOCK_ROWS: usize = 64;
    let block = BLOCK_ROWS * d;
    let partial = |(x, y): (&[f32], &[f32])| {
        let mut acc = vec![0f32; width];
        x.chunks(d)
            .zip(y.chunks(d))
            .for_each(|(x, y)| f(x, y, &mut acc));
        acc
    };
    let partials: Vec<Vec<f32>> = if a.len() >= PAR_MIN_ELEMS {
        a.par_chunks(block)
            .zip(b.par_chunks(block))
            .map(partial)
            .collect()
    } else {
        a.chunks(block).zip(b.chunks(block)).map(partial).collect()
    };
    let mut total = vec![0f32; width];
    for p in partials {
        total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
    }
    total
}

fn grad_if(t: &Tensor, g: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
    if t.track_op() {
        g().map(Some)
    } else {
        Ok(None)
    }
}

mod attention;
mod cross_entropy;
mod linear;
mod norm;
mod pointwise;

pub use attention::{rope, scaled_masked_softmax, softmax_last_dim};
pub use cross_entropy::token_nll;
pub use linear::linear;
pub use norm::{layer_norm, rms_norm};
pub use pointwise::{gelu_tanh, scale_columns, silu};

#[cfg(test)]
use pointwise::fast_tanh;

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
