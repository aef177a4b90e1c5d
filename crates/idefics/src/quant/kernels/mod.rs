//! Quantized matrix-vector products for decoding (`x W^T` with 1..15 rows of `x`), on the weight blocks as
//! candle stores them, with no second copy of the weight.
//!
//! Decoding streams every weight from memory once per token, so the product should run at memory bandwidth.
//! candle's `k_quants::matmul` does not (~8 GB/s of weight bytes where the f32 GEMV reads ~29 GB/s on a 2-core
//! AVX-512 VM, `docs/quantization.md`), and its AVX-512 VNNI path (`QMatMul`) keeps a repacked copy of every
//! weight. These kernels:
//! - quantize each activation row once per call, as candle and llama.cpp do (q8_0 blocks for a q8_0 weight), so
//!   the results are candle's;
//! - pick the instruction set at run time ([`Isa::detect`]): AVX-512 VNNI, else AVX2, else candle's own kernels
//!   (which have NEON and WASM paths); a scalar path with the same arithmetic serves as reference in tests;
//! - split the output rows over rayon's threads, each task reading its rows of the weight once, front to back,
//!   four rows side by side (four independent FMA chains).

mod q8_0;
#[cfg(test)]
mod tests;

use candle_core::{bail, Result};
use half::f16;
use rayon::prelude::*;

/// An instruction set a kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 VNNI (`vpdpbusd`) on 256-bit registers, with AVX2, FMA and F16C.
    Avx512Vnni,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// Plain Rust; the reference the others are tested against.
    Scalar,
}

impl Isa {
    /// The fastest path this CPU runs; `None` where candle's kernels should be used instead (no AVX2).
    pub fn detect() -> Option<Isa> {
        static DETECTED: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            Isa::available()
                .into_iter()
                .find(|&isa| isa != Isa::Scalar)
        })
    }

    /// Every path this CPU can run, fastest first (always ends with [`Isa::Scalar`]).
    pub fn available() -> Vec<Isa> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            if avx2 && has!("avx512f") && has!("avx512vl") && has!("avx512vnni") {
                out.push(Isa::Avx512Vnni);
            }
            if avx2 {
                out.push(Isa::Avx2);
            }
        }
        out.push(Isa::Scalar);
        out
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Avx2 => "avx2",
            Isa::Scalar => "scalar",
        }
    }
}

/// A q8_0 block as candle's `BlockQ8_0` lays it out (`#[repr(C)]`: f16 scale, 32 quants; 34 bytes, align 2).
/// Mirrored here because candle keeps the fields crate-private; the layout is checked against candle's
/// quantize / dequantize in the tests.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Q8Block {
    /// f16 bits of the scale.
    pub d: u16,
    pub qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<Q8Block>() == 34);

/// One activation row quantized to q8_0, with what the kernels need beside the blocks.
pub(crate) struct Q8Row {
    pub blocks: Vec<Q8Block>,
    /// The blocks' scales in f32.
    pub scales: Vec<f32>,
    /// Per block, per group of four quants: `-128 *` their sum (see `q8_0.rs`: cancels VNNI's weight offset).
    pub vnni_bias: Vec<[i32; 8]>,
}

impl Q8Row {
    /// Quantizes `x` (a multiple of 32 long) exactly as candle's `BlockQ8_0::from_float`: scale `max|x| / 127`
    /// stored in f16, quants `round(x / scale)` with the unrounded f32 scale.
    pub fn quantize(x: &[f32]) -> Self {
        let nb = x.len() / 32;
        let mut row = Q8Row {
            blocks: Vec::with_capacity(nb),
            scales: Vec::with_capacity(nb),
            vnni_bias: Vec::with_capacity(nb),
        };
        for xs in x.chunks_exact(32) {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut qs = [0i8; 32];
            for (q, &v) in qs.iter_mut().zip(xs) {
                *q = (v * id).round() as i8;
            }
            let d = f16::from_f32(d);
            let mut bias = [0i32; 8];
            for (b, group) in bias.iter_mut().zip(qs.chunks_exact(4)) {
                *b = -128 * group.iter().map(|&q| q as i32).sum::<i32>();
            }
            row.blocks.push(Q8Block { d: d.to_bits(), qs });
            row.scales.push(d.to_f32());
            row.vnni_bias.push(bias);
        }
        row
    }
}

/// Weight rows per tile: four independent accumulator chains, and four sequential streams for the prefetcher.
const TILE: usize = 4;

/// Output rows of one task, all tiles of [`TILE`] but the last of the matrix.
fn dot_rows(isa: Isa, w: &[Q8Block], nb: usize, x: &Q8Row, out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            // SAFETY: `Avx512Vnni` is only constructed by `Isa::available` after detecting every feature
            // `dot_rows_vnni` enables.
            unsafe { dot_rows_vnni(w, nb, x, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: as above, for AVX2, FMA and F16C.
            unsafe { dot_rows_avx2(w, nb, x, out) }
        }
        _ => dot_rows_with(w, nb, x, out, q8_0::tile_scalar::<TILE>, q8_0::tile_scalar::<1>),
    }
}

/// The row loop shared by every path: tiles of [`TILE`] rows, then single rows.
#[inline(always)]
fn dot_rows_with(
    w: &[Q8Block],
    nb: usize,
    x: &Q8Row,
    out: &mut [f32],
    tile: impl Fn(&[Q8Block], usize, &Q8Row) -> [f32; TILE],
    one: impl Fn(&[Q8Block], usize, &Q8Row) -> [f32; 1],
) {
    let full = out.len() / TILE * TILE;
    for (t, ys) in out[..full].chunks_exact_mut(TILE).enumerate() {
        ys.copy_from_slice(&tile(&w[t * TILE * nb..(t + 1) * TILE * nb], nb, x));
    }
    for o in full..out.len() {
        out[o] = one(&w[o * nb..(o + 1) * nb], nb, x)[0];
    }
}

/// # Safety
/// The CPU must have the features `q8_0::x86::tile_vnni` needs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn dot_rows_vnni(w: &[Q8Block], nb: usize, x: &Q8Row, out: &mut [f32]) {
    dot_rows_with(
        w,
        nb,
        x,
        out,
        // SAFETY: the features are enabled on this function (the caller's contract); lengths are asserted inside.
        |w, nb, x| unsafe { q8_0::x86::tile_vnni::<TILE>(w, nb, x) },
        |w, nb, x| unsafe { q8_0::x86::tile_vnni::<1>(w, nb, x) },
    )
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_avx2(w: &[Q8Block], nb: usize, x: &Q8Row, out: &mut [f32]) {
    dot_rows_with(
        w,
        nb,
        x,
        out,
        // SAFETY: the features are enabled on this function (the caller's contract); lengths are asserted inside.
        |w, nb, x| unsafe { q8_0::x86::tile_avx2::<TILE>(w, nb, x) },
        |w, nb, x| unsafe { q8_0::x86::tile_avx2::<1>(w, nb, x) },
    )
}

/// Weight bytes one rayon task reads at least: a few tens of microseconds of streaming, so that task dispatch
/// (~1-2 us) stays small, yet enough tasks for the threads to balance on the SmolVLM widths.
const BYTES_PER_TASK: usize = 64 << 10;

/// The stored bytes of a q8_0 weight seen as blocks (length and alignment checked).
fn q8_blocks(data: &[u8]) -> Result<&[Q8Block]> {
    let size = std::mem::size_of::<Q8Block>();
    if !data.len().is_multiple_of(size)
        || !(data.as_ptr() as usize).is_multiple_of(std::mem::align_of::<Q8Block>())
    {
        bail!(
            "q8_0 storage of {} bytes is not a whole, aligned number of blocks",
            data.len()
        );
    }
    // SAFETY: length and alignment checked above; `Q8Block` is plain data valid for any bit pattern, and the
    // slice borrows `data`.
    Ok(unsafe { std::slice::from_raw_parts(data.as_ptr() as *const Q8Block, data.len() / size) })
}

/// `x [rows, in] W^T -> [rows, out]` for a q8_0 weight `[out, in]` given as its stored bytes.
pub fn matmul_q8_0(
    isa: Isa,
    x: &[f32],
    rows: usize,
    weight: &[u8],
    out_dim: usize,
    in_dim: usize,
) -> Result<Vec<f32>> {
    if !in_dim.is_multiple_of(32) || x.len() != rows * in_dim {
        bail!("q8_0 product: {} inputs for {rows} rows of {in_dim} (a multiple of 32)", x.len());
    }
    let w = q8_blocks(weight)?;
    let nb = in_dim / 32;
    if w.len() != out_dim * nb {
        bail!("q8_0 product: {} blocks for a [{out_dim}, {in_dim}] weight", w.len());
    }
    if !Isa::available().contains(&isa) {
        bail!("q8_0 product: this CPU cannot run the {} kernels", isa.name());
    }
    let xq: Vec<Q8Row> = x.chunks_exact(in_dim).map(Q8Row::quantize).collect();
    let row_bytes = nb * std::mem::size_of::<Q8Block>();
    let task_rows = (BYTES_PER_TASK / row_bytes.max(1)).max(TILE).next_multiple_of(TILE);
    // Output-major: each task owns the outputs of its weight rows for every input row.
    let mut y_t = vec![0f32; rows * out_dim];
    y_t.par_chunks_mut(task_rows * rows)
        .enumerate()
        .for_each(|(t, chunk)| {
            let o0 = t * task_rows;
            let n = chunk.len() / rows;
            let w = &w[o0 * nb..(o0 + n) * nb];
            let mut y = vec![0f32; n];
            for (r, xr) in xq.iter().enumerate() {
                dot_rows(isa, w, nb, xr, &mut y);
                for (o, &v) in y.iter().enumerate() {
                    chunk[o * rows + r] = v;
                }
            }
        });
    if rows == 1 {
        return Ok(y_t);
    }
    let mut y = vec![0f32; rows * out_dim];
    for (o, ys) in y_t.chunks_exact(rows).enumerate() {
        for (r, &v) in ys.iter().enumerate() {
            y[r * out_dim + o] = v;
        }
    }
    Ok(y)
}
