//! A quantized `[out, in]` weight and the two products inference needs from it: `x W^T` and row lookup.
//!
//! Storage is candle's [`QTensor`] (GGUF block layouts), so a weight can be written to and read from GGUF as it
//! is. The product does not go through candle's `QMatMul`: on x86 with AVX-512 VNNI that op builds a second,
//! repacked copy of every weight on first use and keeps both, which doubles the memory quantization is for.
//! Instead:
//! - few rows (decode): a matrix-vector product on the weight as stored, the activation quantized to the block
//!   type's dot-product partner (bf16: kept in f32): this crate's kernels ([`super::kernels`]: AVX-512 VNNI or
//!   AVX2, picked at run time) for q8_0, q5_0, bf16 and large q4k / q6k weights, candle's `k_quants::matmul` for
//!   small q4k / q6k ones, whichever decoded faster ([`DecodePath::best`]); memory-bound, so its speed follows the
//!   bytes per weight;
//! - many rows (prefill, images): the f32 GEMM of the dense model's panel split, each 64 rows of the weight
//!   dequantized by the task that multiplies them, into that thread's buffer; compute-bound, so it runs at the
//!   dense layer's speed plus the dequantization, and never holds a dequantized copy of the weight.

use super::{kernels, QuantType};
use crate::nn::cpu_kernels::f32_slice;
use crate::nn::cpu_kernels::panels::{gemm_by_panels, PanelLayout, PANEL};
use crate::nn::{KernelChoice, KernelFamily};
use candle_core::quantized::k_quants::{BlockQ4K, BlockQ5_0, BlockQ6K, BlockQ8_0, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor};
use half::bf16;
use std::sync::Arc;

/// From this many rows on, a product dequantizes and uses the f32 GEMM (see the module docs).
pub const GEMM_MIN_ROWS: usize = 16;

/// From this size on a q4k / q6k weight decodes with this crate's kernel ([`DecodePath::best`]). Below it (one
/// rayon task's worth of weight, `kernels::BYTES_PER_TASK`) ours runs on one thread, where candle's splits even
/// the smallest product over its spinning pool: the bundled model's 37-147 KB weights decode faster there.
pub const KERNEL_MIN_BYTES: usize = 64 << 10;

/// How a product with few rows runs on the stored blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodePath {
    /// candle's `k_quants::matmul` (its AVX2 / NEON / scalar dot products, rows split over its threads).
    Candle,
    /// This crate's kernels ([`kernels`]) on the given instruction set.
    Kernel(kernels::Isa),
}

impl DecodePath {
    /// The faster path for a weight of `ty` stored in `bytes` on this CPU, unless `IDEFICS_QUANT_KERNELS` (or the
    /// program) forces one. This crate's kernel for q8_0 (faster products than candle's from memory and from the
    /// caches, `docs/quantization.md`); for q4k and q6k this crate's kernel when the weight is at least
    /// [`KERNEL_MIN_BYTES`] (a q4k SmolVLM-256M decodes 1.15-1.2x faster than with candle's for its down
    /// projections, whose spinning pool also slows our q5_0 products; bench-150m ties or gains), candle's below.
    /// bf16 and q5_0 always run this crate's kernel (candle's bf16 product would round the activations to bf16,
    /// its q5_0 one is scalar), on any CPU.
    pub fn best(ty: QuantType, bytes: usize) -> Self {
        let isa = kernels::Isa::detect();
        if matches!(ty, QuantType::Bf16 | QuantType::Q5_0) {
            return DecodePath::Kernel(isa.unwrap_or(kernels::Isa::Scalar));
        }
        let ours = match crate::nn::kernel_choice::chosen(KernelFamily::Quantized) {
            Some(choice) => choice == KernelChoice::Fused,
            None => ty == QuantType::Q8_0 || bytes >= KERNEL_MIN_BYTES,
        };
        match isa {
            Some(isa) if ours && kernels::TYPES.contains(&ty) => DecodePath::Kernel(isa),
            _ => DecodePath::Candle,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DecodePath::Candle => "candle",
            DecodePath::Kernel(isa) => isa.name(),
        }
    }
}

/// A quantized `[out, in]` weight (shared: a tied head and the embedding use one copy).
#[derive(Debug, Clone)]
pub struct QWeight {
    tensor: Arc<QTensor>,
    out_dim: usize,
    in_dim: usize,
}

impl QWeight {
    /// Quantizes `weight [out, in]` (any float dtype, on the CPU) to `ty`. `in` must be a multiple of the type's
    /// block size ([`QuantType::fits`]).
    pub fn quantize(weight: &Tensor, ty: QuantType) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        Self::quantize_rows(out_dim, in_dim, ty, |start, n| {
            weight
                .narrow(0, start, n)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()
        })
    }

    /// Quantizes an `[out, in]` weight whose rows `read(start, n)` returns in f32 (`n * in` values), a few MB at
    /// a time, so that the whole weight is never held in f32.
    pub fn quantize_rows(
        out_dim: usize,
        in_dim: usize,
        ty: QuantType,
        read: impl FnMut(usize, usize) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        if !ty.fits(in_dim) {
            candle_core::bail!(
                "cannot quantize a [{out_dim}, {in_dim}] weight to {ty}: rows of {in_dim} are not a multiple of \
                 its block of {}",
                ty.block_size()
            );
        }
        let q = match ty {
            QuantType::Q8_0 => quantize_blocks::<BlockQ8_0>(out_dim, in_dim, read)?,
            QuantType::Q5_0 => quantize_blocks::<BlockQ5_0>(out_dim, in_dim, read)?,
            QuantType::Q4K => quantize_blocks::<BlockQ4K>(out_dim, in_dim, read)?,
            QuantType::Q6K => quantize_blocks::<BlockQ6K>(out_dim, in_dim, read)?,
            QuantType::Bf16 => quantize_blocks::<bf16>(out_dim, in_dim, read)?,
        };
        Self::from_qtensor(q)
    }

    /// Wraps a stored quantized tensor (from a GGUF file); it must be 2-D and of a supported type.
    pub fn from_qtensor(tensor: QTensor) -> Result<Self> {
        let (out_dim, in_dim) = tensor.shape().dims2()?;
        if QuantType::from_ggml(tensor.dtype()).is_none() {
            candle_core::bail!(
                "quantized weight of type {:?} is not supported (q8_0, q5_0, q4k, q6k, bf16)",
                tensor.dtype()
            );
        }
        if !matches!(tensor.device(), Device::Cpu) {
            candle_core::bail!("quantized weights are supported on the CPU only");
        }
        Ok(Self {
            tensor: Arc::new(tensor),
            out_dim,
            in_dim,
        })
    }

    pub fn qtensor(&self) -> &QTensor {
        &self.tensor
    }

    pub fn quant_type(&self) -> QuantType {
        QuantType::from_ggml(self.tensor.dtype()).expect("checked at construction")
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Bytes of the stored blocks.
    pub fn size_in_bytes(&self) -> usize {
        self.tensor.storage_size_in_bytes()
    }

    /// The weight in f32, `[out, in]`, rows dequantized in parallel (candle's `dequantize` runs on one thread,
    /// and prefill dequantizes every weight it multiplies).
    pub fn dequantize(&self) -> Result<Tensor> {
        self.dequantize_rows(0, self.out_dim)
    }

    /// Rows `start..start + n` of the weight in f32, `[n, in]`, dequantized in parallel.
    pub fn dequantize_rows(&self, start: usize, n: usize) -> Result<Tensor> {
        let mut out = vec![0f32; n * self.in_dim];
        self.dequantize_into(start, n, &mut out)?;
        Tensor::from_vec(out, (n, self.in_dim), &Device::Cpu)
    }

    /// Rows `start..start + n` of the weight in f32 into `dst` (`n * in` values), rows in parallel.
    fn dequantize_into(&self, start: usize, n: usize, dst: &mut [f32]) -> Result<()> {
        if start + n > self.out_dim || dst.len() != n * self.in_dim {
            candle_core::bail!(
                "quantized weight: rows {start}..{} of {} into {} values",
                start + n,
                self.out_dim,
                dst.len()
            );
        }
        let data = self.tensor.data()?;
        let per_row = self.in_dim / self.quant_type().block_size();
        let range = start * per_row..(start + n) * per_row;
        let in_dim = self.in_dim;
        match self.quant_type() {
            QuantType::Q8_0 => dequantize_blocks(&blocks::<BlockQ8_0>(&data)?[range], in_dim, dst),
            QuantType::Q5_0 => dequantize_blocks(&blocks::<BlockQ5_0>(&data)?[range], in_dim, dst),
            QuantType::Q4K => dequantize_blocks(&blocks::<BlockQ4K>(&data)?[range], in_dim, dst),
            QuantType::Q6K => dequantize_blocks(&blocks::<BlockQ6K>(&data)?[range], in_dim, dst),
            QuantType::Bf16 => dequantize_blocks(&blocks::<bf16>(&data)?[range], in_dim, dst),
        }
        Ok(())
    }

    /// `x [rows, in] -> [rows, out]` (f32). Below [`GEMM_MIN_ROWS`] rows, [`Self::matvec`] on the stored blocks;
    /// from there on the f32 GEMM split as for the panel layout (`crate::nn::cpu_kernels::panels`): each task
    /// dequantizes 64 weight rows into its thread's buffer (at most a few MB) and multiplies them with its rows of
    /// `x` in one GEMM call (the GEMM packs them once; writing them transposed into a panel instead scattered
    /// every value, and prefill ran at half the speed). No dequantized copy of the weight exists, and the sums are
    /// those of the f32 model with the dequantized weight stored in panels, bit for bit.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, in_dim) = x.dims2()?;
        if in_dim != self.in_dim {
            candle_core::bail!(
                "quantized linear: input has {in_dim} features, the weight expects {}",
                self.in_dim
            );
        }
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let xs = f32_slice(&storage, layout, "quantized linear: x")?;
        let out_dim = self.out_dim;
        let y = if rows < GEMM_MIN_ROWS {
            self.matvec(
                xs,
                rows,
                DecodePath::best(self.quant_type(), self.size_in_bytes()),
            )?
        } else {
            let data = self.tensor.data()?;
            let shape = (rows, in_dim, out_dim);
            match self.quant_type() {
                QuantType::Q8_0 => candle_panels(blocks::<BlockQ8_0>(&data)?, xs, shape),
                QuantType::Q5_0 => {
                    let blocks = kernels::q5_0_blocks(&data)?;
                    panel_product(blocks, 32, xs, shape, kernels::dequantize_q5_0)
                }
                QuantType::Q4K => candle_panels(blocks::<BlockQ4K>(&data)?, xs, shape),
                QuantType::Q6K => candle_panels(blocks::<BlockQ6K>(&data)?, xs, shape),
                QuantType::Bf16 => candle_panels(blocks::<bf16>(&data)?, xs, shape),
            }
        };
        drop(storage);
        Tensor::from_vec(y, (rows, out_dim), &Device::Cpu)
    }

    /// `x [rows, in]` (row-major f32) times the transposed weight on the blocks as stored, by `path`:
    /// `[rows, out]` row-major. Any number of rows; [`Self::matmul_t`] uses it below [`GEMM_MIN_ROWS`].
    pub fn matvec(&self, x: &[f32], rows: usize, path: DecodePath) -> Result<Vec<f32>> {
        if x.len() != rows * self.in_dim {
            candle_core::bail!(
                "quantized product: {} inputs for {rows} rows of {}",
                x.len(),
                self.in_dim
            );
        }
        let data = self.tensor.data()?;
        let (ty, out_dim, in_dim) = (self.quant_type(), self.out_dim, self.in_dim);
        if let DecodePath::Kernel(isa) = path {
            return kernels::matmul(ty, isa, x, rows, &data, (out_dim, in_dim));
        }
        let mut dst = vec![0f32; rows * out_dim];
        let mkn = (rows, in_dim, out_dim);
        match ty {
            QuantType::Q8_0 => candle_core::quantized::k_quants::matmul(
                mkn,
                x,
                blocks::<BlockQ8_0>(&data)?,
                &mut dst,
            )?,
            // candle's q5_0 dot product is scalar, and asserts an even block count (in debug builds).
            QuantType::Q5_0 if (in_dim / 32) % 2 == 1 => candle_core::bail!(
                "candle's q5_0 product needs rows of an even number of 32-blocks, not {in_dim}"
            ),
            QuantType::Q5_0 => candle_core::quantized::k_quants::matmul(
                mkn,
                x,
                blocks::<BlockQ5_0>(&data)?,
                &mut dst,
            )?,
            QuantType::Q4K => candle_core::quantized::k_quants::matmul(
                mkn,
                x,
                blocks::<BlockQ4K>(&data)?,
                &mut dst,
            )?,
            QuantType::Q6K => candle_core::quantized::k_quants::matmul(
                mkn,
                x,
                blocks::<BlockQ6K>(&data)?,
                &mut dst,
            )?,
            // candle's bf16 dot product rounds the activations to bf16 too.
            QuantType::Bf16 => {
                candle_core::quantized::k_quants::matmul(mkn, x, blocks::<bf16>(&data)?, &mut dst)?
            }
        }
        Ok(dst)
    }

    /// Rows `ids` of the weight, dequantized: `[n] -> [n, in]` (an embedding lookup).
    pub fn rows(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.out_dim) {
            candle_core::bail!(
                "token id {bad} is out of range (vocabulary of {})",
                self.out_dim
            );
        }
        let data = self.tensor.data()?;
        let mut out = vec![0f32; ids.len() * self.in_dim];
        match self.quant_type() {
            QuantType::Q8_0 => gather_rows(blocks::<BlockQ8_0>(&data)?, self.in_dim, ids, &mut out),
            QuantType::Q5_0 => gather_rows(blocks::<BlockQ5_0>(&data)?, self.in_dim, ids, &mut out),
            QuantType::Q4K => gather_rows(blocks::<BlockQ4K>(&data)?, self.in_dim, ids, &mut out),
            QuantType::Q6K => gather_rows(blocks::<BlockQ6K>(&data)?, self.in_dim, ids, &mut out),
            QuantType::Bf16 => gather_rows(blocks::<bf16>(&data)?, self.in_dim, ids, &mut out),
        }
        Tensor::from_vec(out, (ids.len(), self.in_dim), &Device::Cpu)
    }
}

/// Every row of a `[_, in_dim]` block matrix in f32 into `out`, rows in parallel.
fn dequantize_blocks<T: GgmlType + Sync>(blocks: &[T], in_dim: usize, out: &mut [f32]) {
    use rayon::prelude::*;
    let per_row = in_dim / T::BLCK_SIZE;
    out.par_chunks_mut(in_dim)
        .zip(blocks.par_chunks(per_row))
        .for_each(|(dst, row)| T::to_float(row, dst));
}

/// Dequantizes rows `ids` of a `[_, in_dim]` block matrix into `out` (`ids.len() * in_dim`).
fn gather_rows<T: GgmlType>(blocks: &[T], in_dim: usize, ids: &[u32], out: &mut [f32]) {
    let per_row = in_dim / T::BLCK_SIZE;
    for (slot, &id) in out.chunks_exact_mut(in_dim).zip(ids) {
        let start = id as usize * per_row;
        T::to_float(&blocks[start..start + per_row], slot);
    }
}

/// [`panel_product`] with candle's dequantization of `T`.
fn candle_panels<T: GgmlType + Sync>(
    blocks: &[T],
    x: &[f32],
    shape: (usize, usize, usize),
) -> Vec<f32> {
    panel_product(blocks, T::BLCK_SIZE, x, shape, T::to_float)
}

/// `x [rows, in] W^T` for a weight of blocks `B` (`block_size` weights each), by panels dequantized on the spot
/// with `to_float` ([`QWeight::matmul_t`]).
fn panel_product<B: Sync>(
    blocks: &[B],
    block_size: usize,
    x: &[f32],
    (rows, in_dim, out_dim): (usize, usize, usize),
    to_float: impl Fn(&[B], &mut [f32]) + Sync,
) -> Vec<f32> {
    thread_local! {
        /// 64 dequantized weight rows per thread, kept between products.
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let per_row = in_dim / block_size;
    let panels = out_dim.div_ceil(PANEL);
    // Enough tasks for every thread even where a projection has few panels (SmolVLM-256M's k / v: 3).
    let groups = (2 * rayon::current_num_threads()).div_ceil(panels);
    gemm_by_panels(x, (rows, in_dim, out_dim), None, groups, |p, use_panel| {
        SCRATCH.with_borrow_mut(|panel| {
            let o0 = p * PANEL;
            let m = PANEL.min(out_dim - o0);
            panel.resize(PANEL * in_dim, 0.0);
            to_float(
                &blocks[o0 * per_row..(o0 + m) * per_row],
                &mut panel[..m * in_dim],
            );
            use_panel(&panel[..m * in_dim], PanelLayout::Rows);
        })
    })
}

/// Elements read and quantized per step of [`QWeight::quantize_rows`] (4 MB of f32). The step's buffer outlives
/// the load in the process's heap (glibc keeps freed memory, `idefics-cli`'s `malloc.rs`), so it counts in the
/// quantized model's peak RSS: 16 MB steps left ~25 MB more than the weights after loading bench-150m.
const ROWS_STEP_ELEMS: usize = 1 << 20;

/// The blocks of an `[out, in]` weight, rows read a step at a time and quantized in parallel (the k-quants
/// search for scales is the slow part of loading; candle's `QTensor::quantize` runs on one thread). Each row is
/// quantized by `T::from_float` as `QTensor::quantize` does, so the blocks are the same.
fn quantize_blocks<T: GgmlType + Send + Sync + 'static>(
    out_dim: usize,
    in_dim: usize,
    mut read: impl FnMut(usize, usize) -> Result<Vec<f32>>,
) -> Result<QTensor> {
    use rayon::prelude::*;
    let per_row = in_dim / T::BLCK_SIZE;
    let mut blocks = vec![T::zeros(); out_dim * per_row];
    let step = (ROWS_STEP_ELEMS / in_dim).max(1);
    for start in (0..out_dim).step_by(step) {
        let n = step.min(out_dim - start);
        let src = read(start, n)?;
        if src.len() != n * in_dim {
            candle_core::bail!(
                "quantize: read {} values for {n} rows of {in_dim}",
                src.len()
            );
        }
        blocks[start * per_row..(start + n) * per_row]
            .par_chunks_mut(per_row)
            .zip(src.par_chunks(in_dim))
            .for_each(|(dst, row)| T::from_float(row, dst));
    }
    QTensor::new(
        candle_core::quantized::QStorage::Cpu(Box::new(blocks)),
        (out_dim, in_dim),
    )
}

/// The stored bytes of a CPU `QTensor` seen as its blocks. candle keeps CPU blocks in a `Vec<T>`, so the bytes
/// are aligned for `T`; both the alignment and the length are checked anyway.
pub(crate) fn blocks<T: GgmlType>(data: &[u8]) -> Result<&[T]> {
    let size = std::mem::size_of::<T>();
    if !data.len().is_multiple_of(size)
        || !(data.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        candle_core::bail!(
            "quantized storage of {} bytes is not a whole, aligned number of {:?} blocks",
            data.len(),
            T::DTYPE
        );
    }
    // SAFETY: length and alignment checked above; the block types are plain data (f16 scales and byte arrays)
    // valid for any bit pattern, and the slice borrows `data`.
    Ok(unsafe { std::slice::from_raw_parts(data.as_ptr() as *const T, data.len() / size) })
}

/// The GGUF type of a supported quant type.
pub(crate) fn ggml_of(ty: QuantType) -> GgmlDType {
    match ty {
        QuantType::Q8_0 => GgmlDType::Q8_0,
        QuantType::Q5_0 => GgmlDType::Q5_0,
        QuantType::Q4K => GgmlDType::Q4K,
        QuantType::Q6K => GgmlDType::Q6K,
        QuantType::Bf16 => GgmlDType::BF16,
    }
}
