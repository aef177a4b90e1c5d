//! `y = x W^T + b` for f32 inference on the CPU with the weight stored transposed: `W^T [in, out]` contiguous,
//! seen by the model as the usual `[out, in]` tensor through a strided view ([`to_transposed_layout`]).
//!
//! Why: the `gemm` crate runs its microkernel on a column-major left operand without repacking it. candle asks
//! for `x W^T` with `x` (row-major activations) on the left, so every call repacks `x` once per column panel
//! and thread. Asking for the transposed product `y^T = W x^T` instead, with `W` column-major (that is, `W^T`
//! stored row-major), puts a constant, already-laid-out operand on the left and the activations on the right,
//! where the crate reads them in place, with the same results bit for bit. Prefill on bench-150m runs ~1.25x
//! faster (`docs/benchmarks.md`, "Weights stored transposed").
//!
//! Decoding (1-4 rows) reads the weight once per token. With `W^T` rows the product is a sum of scaled weight
//! rows, `y += x[p] * W^T[p]`: each rayon task takes a fixed run of [`TERMS_PER_TASK`] consecutive weight rows,
//! one contiguous stretch of memory, into partial sums that are then added in task order (so the result does not
//! depend on the number of threads). Reading four rows at a time from four places, it streams at 0.65-1.0x the
//! row-major GEMV of [`super::gemv`], which reads each weight row start to end (`idefics bench-gemv` shows both;
//! `docs/benchmarks.md`, "Decoding over the transposed layout"), so the text decoder, which decodes, is stored in
//! column panels instead (`super::panels`, `crate::model::CpuWeightLayout`).

use super::{contiguous_f32, f32_slice, simd, Strided};
use candle_core::{bail, Device, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// At most this many rows take the streaming GEMV; more reuse each weight enough for the GEMM.
pub const MAX_GEMV_ROWS: usize = 4;
/// Weight rows (`W^T` rows, terms of the sum) of one GEMV task: at 512-3072 inputs, 4-24 tasks for two threads.
const TERMS_PER_TASK: usize = 256;

/// Whether `weight` (`[out, in]`) is the transposed view [`to_transposed_layout`] makes: strides `[1, out]`
/// over a contiguous `[in, out]` buffer.
pub fn is_transposed_layout(weight: &Tensor) -> bool {
    let layout = weight.layout();
    match (layout.dims(), layout.stride()) {
        (&[out, inp], &[1, so]) => out > 1 && inp > 1 && so == out,
        _ => false,
    }
}

/// Side of the square tiles the transpose copies: 16 x 16 f32 = 1 KiB read and written per tile, in L1 even
/// when a power-of-two row stride maps every row of a tile to the same cache sets.
const TRANSPOSE_TILE: usize = 16;

/// Whether [`linear_transposed`] should compute this layer: a transposed-layout weight, every tensor f32 on the
/// CPU without autograd (the twin of [`super::gemv_applies`] for the checkpoint layout).
pub fn transposed_applies(x2: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    is_transposed_layout(weight)
        && match bias {
            Some(b) => super::applies(&[x2, weight, b]),
            None => super::applies(&[x2, weight]),
        }
}

/// The same `[out, in]` weight stored as `W^T [in, out]` contiguous (one copy, the original is dropped by the
/// caller). Values are unchanged; only the memory order differs. A contiguous f32 CPU weight is copied by tiles
/// on rayon's threads (candle's strided copy takes ~3 s a GB); anything else through candle.
pub fn to_transposed_layout(weight: &Tensor) -> Result<Tensor> {
    let (out_dim, in_dim) = weight.dims2()?;
    let wt = {
        let (storage, layout) = weight.storage_and_layout();
        match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(s), Some((a, z))) if weight.dtype() == candle_core::DType::F32 => {
                transpose(&s.as_slice::<f32>()?[a..z], out_dim, in_dim)
            }
            _ => return weight.t()?.contiguous()?.t(),
        }
    };
    Tensor::from_vec(wt, (in_dim, out_dim), weight.device())?.t()
}

/// `w [rows, cols]` row-major to `[cols, rows]` row-major by square tiles (each read and written while in L1);
/// band `b` of the result (its rows `b * TILE ..`) is one task.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut wt = vec![0f32; w.len()];
    wt.par_chunks_mut(TRANSPOSE_TILE * rows)
        .enumerate()
        .for_each(|(band, dst)| {
            let c0 = band * TRANSPOSE_TILE;
            let width = dst.len() / rows;
            for r0 in (0..rows).step_by(TRANSPOSE_TILE) {
                let height = TRANSPOSE_TILE.min(rows - r0);
                for i in 0..width {
                    let out = &mut dst[i * rows + r0..i * rows + r0 + height];
                    for (j, v) in out.iter_mut().enumerate() {
                        *v = w[(r0 + j) * cols + c0 + i];
                    }
                }
            }
        });
    wt
}

/// The contiguous `W^T` buffer behind a transposed-layout weight.
fn transposed_slice<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    let n = layout.shape().elem_count();
    let start = layout.start_offset();
    match storage {
        Storage::Cpu(s) => {
            let data = s.as_slice::<f32>()?;
            data.get(start..start + n).ok_or_else(|| {
                candle_core::Error::Msg("transposed weight: storage too short".into())
            })
        }
        _ => bail!("transposed weight: must be on the CPU"),
    }
}

/// `x2 [rows, in] W^T + b` for a weight in the transposed layout; returns `[rows, out]`.
pub fn linear_transposed(x2: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (rows, in_dim) = x2.dims2()?;
    let (out_dim, w_in) = weight.dims2()?;
    if w_in != in_dim || !is_transposed_layout(weight) {
        bail!(
            "transposed linear: x {:?} and weight {:?} (strides {:?}) do not fit",
            x2.dims(),
            weight.dims(),
            weight.stride()
        );
    }
    let bias = match bias {
        Some(b) if b.dims() == [out_dim] => Some(contiguous_f32(b, "transposed linear: bias")?),
        Some(b) => bail!(
            "transposed linear: bias {:?} does not match {out_dim} outputs",
            b.dims()
        ),
        None => None,
    };
    // The activations are read in place when contiguous (the usual case), not copied on every call.
    let x2 = x2.contiguous()?;
    let (xs, xl) = x2.storage_and_layout();
    let x = f32_slice(&xs, xl, "transposed linear: x")?;
    let (ws, wl) = weight.storage_and_layout();
    let wt = transposed_slice(&ws, wl)?;
    let y = if rows <= MAX_GEMV_ROWS {
        gemv(x, rows, in_dim, wt, out_dim, bias.as_deref())
    } else {
        gemm_rows(x, rows, in_dim, wt, out_dim, bias.as_deref())
    };
    drop((ws, xs));
    Tensor::from_vec(y, (rows, out_dim), &Device::Cpu)
}

/// `y^T [out, rows] = W [out, in] x^T`, written straight into row-major `y [rows, out]` through the output
/// strides; the bias is placed in `y` first and the product added to it. Without a bias `y` is not zeroed first:
/// the GEMM overwrites every element.
fn gemm_rows(
    x: &[f32],
    rows: usize,
    in_dim: usize,
    wt: &[f32],
    out_dim: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let len = rows * out_dim;
    let mut y = match bias {
        Some(b) => super::repeat_rows(b, rows),
        None => Vec::with_capacity(len),
    };
    // SAFETY: the pointers cover `rows * out_dim` (y's capacity), `out_dim * in_dim` (wt) and `rows * in_dim` (x)
    // f32s, the strides stay inside them: y^T[o][r] = y[r * out + o], W[o][p] = wt[p * out + o],
    // x^T[p][r] = x[r * in + p]. With `read_dst` false (no bias) the GEMM only writes `y`, every element of it
    // (in_dim >= 1), so its length can be set afterwards.
    unsafe {
        super::gemm_f32(
            (out_dim, rows, in_dim),
            Strided {
                ptr: y.as_mut_ptr(),
                rs: 1,
                cs: out_dim as isize,
            },
            bias.is_some(),
            Strided {
                ptr: wt.as_ptr(),
                rs: 1,
                cs: out_dim as isize,
            },
            Strided {
                ptr: x.as_ptr(),
                rs: 1,
                cs: in_dim as isize,
            },
            1.0,
            rayon::current_num_threads(),
        );
        y.set_len(len);
    }
    y
}

/// Decoding rows: task `t` sums the terms `t * TERMS_PER_TASK ..` into its own `[rows, out]` partial sums.
fn gemv(
    x: &[f32],
    rows: usize,
    in_dim: usize,
    wt: &[f32],
    out_dim: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let n_tasks = in_dim.div_ceil(TERMS_PER_TASK);
    let mut partial = vec![0f32; n_tasks * rows * out_dim];
    partial
        .par_chunks_mut(rows * out_dim)
        .enumerate()
        .for_each(|(t, acc)| {
            let terms = (t * TERMS_PER_TASK, ((t + 1) * TERMS_PER_TASK).min(in_dim));
            simd::gemv_t_rows(x, rows, in_dim, wt, out_dim, terms, acc);
        });
    let mut parts = partial.chunks_exact(rows * out_dim);
    let mut y = match parts.next() {
        Some(first) => first.to_vec(),
        None => vec![0f32; rows * out_dim],
    };
    for part in parts {
        for (v, &p) in y.iter_mut().zip(part) {
            *v += p;
        }
    }
    if let Some(b) = bias {
        for yr in y.chunks_exact_mut(out_dim) {
            for (v, &bv) in yr.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }
    y
}
