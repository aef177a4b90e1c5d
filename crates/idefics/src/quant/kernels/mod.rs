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
//!   one row at a time (see [`TILE`]).

/// `rows_vnni` and `rows_avx2` of a block format's `x86` module: its `tile_vnni` / `tile_avx2` kernels over the
/// output rows by [`tiled_rows`], each compiled with the features (`$vnni`, `$avx2`) its tile kernel needs.
#[cfg(target_arch = "x86_64")]
macro_rules! row_kernels {
    ($block:ty, $row:ty, $vnni:literal, $avx2:literal) => {
        /// Output rows `out` of `w` with [`tile_vnni`].
        ///
        /// # Safety
        /// The CPU must have the features [`tile_vnni`] needs.
        #[target_feature(enable = $vnni)]
        pub unsafe fn rows_vnni(w: &[$block], nb: usize, x: &$row, out: &mut [f32]) {
            use $crate::quant::kernels::{tiled_rows, TILE};
            // SAFETY: the features are enabled here (the caller's contract); lengths are asserted inside.
            tiled_rows(
                w,
                nb,
                x,
                out,
                |w, nb, x| unsafe { tile_vnni::<TILE>(w, nb, x) },
                |w, nb, x| unsafe { tile_vnni::<1>(w, nb, x) },
            )
        }

        /// Output rows `out` of `w` with [`tile_avx2`].
        ///
        /// # Safety
        /// The CPU must have the features [`tile_avx2`] needs.
        #[target_feature(enable = $avx2)]
        pub unsafe fn rows_avx2(w: &[$block], nb: usize, x: &$row, out: &mut [f32]) {
            use $crate::quant::kernels::{tiled_rows, TILE};
            // SAFETY: as above.
            tiled_rows(
                w,
                nb,
                x,
                out,
                |w, nb, x| unsafe { tile_avx2::<TILE>(w, nb, x) },
                |w, nb, x| unsafe { tile_avx2::<1>(w, nb, x) },
            )
        }
    };
}

mod bf16;
mod q4k;
pub(crate) mod q5_0;
mod q6k;
mod q8_0;
#[cfg(test)]
mod tests;

use crate::quant::QuantType;
use candle_core::{bail, Result};
use half::f16;
use rayon::prelude::*;

/// The weight types these kernels cover (all of them).
pub const TYPES: [QuantType; 5] = QuantType::ALL;

/// An instruction set a kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 VNNI (`vpdpbusd`) on 256-bit registers, with AVX512BW (byte masks), AVX2, FMA and F16C.
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
        *DETECTED.get_or_init(|| Isa::available().into_iter().find(|&isa| isa != Isa::Scalar))
    }

    /// Every path this CPU can run, fastest first (always ends with [`Isa::Scalar`]).
    pub fn available() -> Vec<Isa> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            if avx2 && has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512vnni")
            {
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

/// How far ahead of the weight block being multiplied the kernels ask for the weights (`prefetcht0`). Reading one
/// weight row after another, the hardware prefetchers alone left these products at about half the memory's read
/// rate on a 2-core Intel Xeon VM: the q8_0 product of a 512 x 32003 head ran 1.8x faster with it, and 2048
/// bytes was the fastest of 256 ... 4096 (`idefics bench-gemv`, `docs/quantization.md`, "Prefetching"). The f32
/// panel GEMV gained nothing from the same hint (it already streams at the memory's rate).
#[cfg(target_arch = "x86_64")]
pub(crate) const PREFETCH_BYTES: usize = 2048;

/// Asks for the cache line [`PREFETCH_BYTES`] after `p`. A hint: it never faults, whatever the address.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: a prefetch reads nothing architecturally and cannot fault, even past the end of an allocation
    // (`wrapping_add` keeps the pointer arithmetic defined).
    unsafe { _mm_prefetch::<_MM_HINT_T0>((p as *const i8).wrapping_add(PREFETCH_BYTES)) }
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

/// One activation row quantized to q8k (super-blocks of 256: an f32 scale, 256 quants), the partner of the
/// k-quant formats, with the sums the kernels need.
pub(crate) struct Q8KRow {
    pub d: Vec<f32>,
    /// 256 quants per block.
    pub qs: Vec<i8>,
    /// Per block, the sums of each 32 consecutive quants (candle keeps sums of 16, `bsums`; q4k's mins are per 32).
    pub sums32: Vec<[i16; 8]>,
    /// 128 per block: `32 * (q[2p] + q[2p + 1])` for each pair `p` of quants (q6k's offset of 32, pairwise as
    /// `maddubs` forms it).
    pub pairs32: Vec<i16>,
}

impl Q8KRow {
    /// Quantizes `x` (a multiple of 256 long) exactly as candle's `BlockQ8K::from_float`: the scale from the
    /// first value of largest magnitude `max`, quants `round(-127 / max * x)` clamped to i8, `d = 1 / (-127 / max)`.
    pub fn quantize(x: &[f32]) -> Self {
        let nb = x.len() / 256;
        let mut row = Q8KRow {
            d: Vec::with_capacity(nb),
            qs: vec![0; nb * 256],
            sums32: Vec::with_capacity(nb),
            pairs32: vec![0; nb * 128],
        };
        for (xs, qs) in x.chunks_exact(256).zip(row.qs.chunks_exact_mut(256)) {
            let (mut max, mut amax) = (0f32, 0f32);
            for &v in xs {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                row.d.push(0.0);
                row.sums32.push([0; 8]);
                continue;
            }
            let iscale = -127f32 / max;
            for (q, &v) in qs.iter_mut().zip(xs) {
                *q = (iscale * v).round().clamp(-128.0, 127.0) as i8;
            }
            let mut sums = [0i16; 8];
            for (s, group) in sums.iter_mut().zip(qs.chunks_exact(32)) {
                *s = group.iter().map(|&q| q as i16).sum();
            }
            row.d.push(1.0 / iscale);
            row.sums32.push(sums);
        }
        for (p, q) in row.pairs32.iter_mut().zip(row.qs.chunks_exact(2)) {
            *p = 32 * (q[0] as i16 + q[1] as i16);
        }
        row
    }
}

/// Weight rows per call of a tile kernel. One: a task then reads its weight as a single sequential stream.
/// Four rows side by side (four streams, four independent accumulator chains, and each activation block loaded
/// once for four rows) streamed up to 2.7x (q8_0) and 3x (q6k) slower from memory (`idefics bench-gemv`,
/// docs/quantization.md, "One row at a time"); the kernels stay generic over the count.
pub(crate) const TILE: usize = 1;

/// A weight block format with its kernels.
pub(crate) trait Format {
    /// The stored block (`#[repr(C)]` plain data, valid for any bit pattern: see [`cast_blocks`]).
    type Block: Copy;
    /// One activation row quantized for the dot products.
    type Row: Sync;
    /// Weights per block.
    const BLOCK: usize;
    const NAME: &'static str;
    fn quantize(x: &[f32]) -> Self::Row;
    /// `out[o] = w[o] . x` for the `out.len()` rows of `w` (`nb` blocks each).
    fn dot_rows(isa: Isa, w: &[Self::Block], nb: usize, x: &Self::Row, out: &mut [f32]);
}

/// A block format: its block and activation types, and the dispatch of its row kernels to the instruction set.
/// `$module` provides `tile_scalar` and, on x86, `x86::rows_vnni` / `x86::rows_avx2`.
macro_rules! block_format {
    ($(#[$doc:meta])* $name:ident, $module:ident, $block:ty, $row:ty, $size:expr, $label:literal) => {
        $(#[$doc])*
        pub(crate) struct $name;

        impl Format for $name {
            type Block = $block;
            type Row = $row;
            const BLOCK: usize = $size;
            const NAME: &'static str = $label;
            fn quantize(x: &[f32]) -> $row {
                <$row>::quantize(x)
            }
            fn dot_rows(isa: Isa, w: &[$block], nb: usize, x: &$row, out: &mut [f32]) {
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512Vnni => {
                        // SAFETY: `Avx512Vnni` is only constructed by `Isa::available` after detecting every
                        // feature the module's `x86::rows_vnni` enables.
                        unsafe { $module::x86::rows_vnni(w, nb, x, out) }
                    }
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => {
                        // SAFETY: as above, for AVX2, FMA and F16C.
                        unsafe { $module::x86::rows_avx2(w, nb, x, out) }
                    }
                    _ => tiled_rows(
                        w,
                        nb,
                        x,
                        out,
                        $module::tile_scalar::<TILE>,
                        $module::tile_scalar::<1>,
                    ),
                }
            }
        }
    };
}

block_format!(
    /// The q8_0 format (`q8_0.rs`).
    Q8_0, q8_0, Q8Block, Q8Row, 32, "q8_0"
);
block_format!(
    /// The q5_0 format (`q5_0.rs`), with q8_0 activations.
    Q5_0, q5_0, q5_0::Q5Block, Q8Row, 32, "q5_0"
);
block_format!(
    /// The q4k format (`q4k.rs`), with q8k activations.
    Q4K, q4k, q4k::Q4KBlock, Q8KRow, 256, "q4k"
);
block_format!(
    /// The q6k format (`q6k.rs`), with q8k activations.
    Q6K, q6k, q6k::Q6KBlock, Q8KRow, 256, "q6k"
);

/// The row loop shared by every format and path: tiles of [`TILE`] rows, then single rows. Inlined into each
/// path's `#[target_feature]` wrapper so that the tile kernels inline with it.
#[inline(always)]
pub(crate) fn tiled_rows<B, R>(
    w: &[B],
    nb: usize,
    x: &R,
    out: &mut [f32],
    tile: impl Fn(&[B], usize, &R) -> [f32; TILE],
    one: impl Fn(&[B], usize, &R) -> [f32; 1],
) {
    let full = out.len() / TILE * TILE;
    for (t, ys) in out[..full].chunks_exact_mut(TILE).enumerate() {
        ys.copy_from_slice(&tile(&w[t * TILE * nb..(t + 1) * TILE * nb], nb, x));
    }
    for o in full..out.len() {
        out[o] = one(&w[o * nb..(o + 1) * nb], nb, x)[0];
    }
}

/// Weight bytes one rayon task reads at least: a few tens of microseconds of streaming, so that task dispatch
/// (~1-2 us) stays small, yet enough tasks for the threads to balance on the SmolVLM widths.
const BYTES_PER_TASK: usize = 64 << 10;

/// Block types that are plain data: `#[repr(C)]`, integer fields only, valid for any bit pattern.
pub(crate) trait PlainBlock: Copy {}
impl PlainBlock for Q8Block {}
impl PlainBlock for q5_0::Q5Block {}
impl PlainBlock for q4k::Q4KBlock {}
impl PlainBlock for q6k::Q6KBlock {}
impl PlainBlock for u16 {}

/// The stored bytes of a weight seen as blocks (length and alignment checked).
fn cast_blocks<'a, B: PlainBlock>(data: &'a [u8], name: &str) -> Result<&'a [B]> {
    let size = std::mem::size_of::<B>();
    if !data.len().is_multiple_of(size)
        || !(data.as_ptr() as usize).is_multiple_of(std::mem::align_of::<B>())
    {
        bail!(
            "{name} storage of {} bytes is not a whole, aligned number of blocks",
            data.len()
        );
    }
    // SAFETY: length and alignment checked above; `B` is plain data valid for any bit pattern (`PlainBlock`),
    // and the slice borrows `data`.
    Ok(unsafe { std::slice::from_raw_parts(data.as_ptr() as *const B, data.len() / size) })
}

/// A q5_0 weight's stored bytes as blocks, for [`dequantize_q5_0`].
pub(crate) fn q5_0_blocks(data: &[u8]) -> Result<&[q5_0::Q5Block]> {
    cast_blocks(data, "q5_0")
}

/// q5_0 blocks in f32 (32 values per block into `out`), value for value candle's `BlockQ5_0::to_float`, several
/// times faster (candle's unpacks bit by bit).
pub(crate) fn dequantize_q5_0(blocks: &[q5_0::Q5Block], out: &mut [f32]) {
    q5_0::dequantize(blocks, out)
}

/// `x [rows, in] W^T -> [rows, out]` for a weight `[out, in]` of type `ty` given as its stored bytes.
pub fn matmul(
    ty: QuantType,
    isa: Isa,
    x: &[f32],
    rows: usize,
    weight: &[u8],
    (out_dim, in_dim): (usize, usize),
) -> Result<Vec<f32>> {
    match ty {
        QuantType::Q8_0 => matmul_format::<Q8_0>(isa, x, rows, weight, out_dim, in_dim),
        QuantType::Q5_0 => matmul_format::<Q5_0>(isa, x, rows, weight, out_dim, in_dim),
        QuantType::Q4K => matmul_format::<Q4K>(isa, x, rows, weight, out_dim, in_dim),
        QuantType::Q6K => matmul_format::<Q6K>(isa, x, rows, weight, out_dim, in_dim),
        QuantType::Bf16 => matmul_format::<bf16::Bf16>(isa, x, rows, weight, out_dim, in_dim),
    }
}

/// `x [rows, in] W^T -> [rows, out]` for a weight `[out, in]` of format `F` given as its stored bytes.
fn matmul_format<F: Format>(
    isa: Isa,
    x: &[f32],
    rows: usize,
    weight: &[u8],
    out_dim: usize,
    in_dim: usize,
) -> Result<Vec<f32>>
where
    F::Block: PlainBlock + Sync,
{
    let name = F::NAME;
    if !in_dim.is_multiple_of(F::BLOCK) || x.len() != rows * in_dim {
        bail!(
            "{name} product: {} inputs for {rows} rows of {in_dim} (a multiple of {})",
            x.len(),
            F::BLOCK
        );
    }
    let w = cast_blocks::<F::Block>(weight, name)?;
    let nb = in_dim / F::BLOCK;
    if w.len() != out_dim * nb {
        bail!(
            "{name} product: {} blocks for a [{out_dim}, {in_dim}] weight",
            w.len()
        );
    }
    if !Isa::available().contains(&isa) {
        bail!(
            "{name} product: this CPU cannot run the {} kernels",
            isa.name()
        );
    }
    let xq: Vec<F::Row> = x.chunks_exact(in_dim).map(F::quantize).collect();
    let row_bytes = nb * std::mem::size_of::<F::Block>();
    let task_rows = (BYTES_PER_TASK / row_bytes.max(1))
        .max(TILE)
        .next_multiple_of(TILE);
    if rows == 1 {
        let mut y = vec![0f32; out_dim];
        y.par_chunks_mut(task_rows).enumerate().for_each(|(t, ys)| {
            let o0 = t * task_rows;
            F::dot_rows(isa, &w[o0 * nb..(o0 + ys.len()) * nb], nb, &xq[0], ys)
        });
        return Ok(y);
    }
    // Output-major: each task owns the outputs of its weight rows for every input row; the weight rows of a
    // task are read from memory for the first input row and from the caches for the others.
    let mut y_t = vec![0f32; rows * out_dim];
    y_t.par_chunks_mut(task_rows * rows)
        .enumerate()
        .for_each(|(t, chunk)| {
            let o0 = t * task_rows;
            let n = chunk.len() / rows;
            let w = &w[o0 * nb..(o0 + n) * nb];
            let mut y = vec![0f32; n];
            for (r, xr) in xq.iter().enumerate() {
                F::dot_rows(isa, w, nb, xr, &mut y);
                for (o, &v) in y.iter().enumerate() {
                    chunk[o * rows + r] = v;
                }
            }
        });
    let mut y = vec![0f32; rows * out_dim];
    for (o, ys) in y_t.chunks_exact(rows).enumerate() {
        for (r, &v) in ys.iter().enumerate() {
            y[r * out_dim + o] = v;
        }
    }
    Ok(y)
}
