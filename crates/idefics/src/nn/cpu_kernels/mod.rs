//! Forward-only CPU kernels for f32 inference: fused attention ([`flash_attention`]), the matrix-vector
//! product of decoding ([`gemv`]), the linear layer over a weight stored transposed ([`transposed`]: the vision
//! side) or in column panels ([`panels`]: the text decoder, which both prefills and decodes), and the gated MLP's
//! `silu(gate) * up` in one pass ([`silu_mul`]).
//!
//! candle composes attention from a score matmul, a mask add, a softmax and a second matmul, each pass writing a
//! `[heads, Lq, Lk]` tensor (1.15 GB a layer for a 980x980 image), and runs `x W^T` with one row as a GEMM. These
//! kernels replace both when no input takes part in autograd and every tensor is f32 on the CPU; elsewhere
//! (training, CUDA, half precision) the composed ops remain, and they stay the reference the tests compare to.
//! [`super::kernel_choice`] can force the composed ops (`idefics bench --kernels composed`; benchmarks, bisecting).
//!
//! The vector loops are plain Rust over fixed-width lane arrays, compiled once per instruction set (AVX-512,
//! AVX2 + FMA and the baseline) and chosen at run time, so the binary still runs on any x86-64 CPU ([`simd`]). The
//! GEMMs of the attention tiles and the linear layers are the `gemm` crate's (its `x86-v4` feature: AVX-512
//! microkernels); a hand-written microkernel for the column panels was no faster in place (`docs/benchmarks.md`,
//! "The GEMM ceiling").

pub mod flash_attention;
pub mod gemv;
pub mod panels;
pub(crate) mod simd;
pub mod transposed;

#[cfg(test)]
mod tests;

pub use flash_attention::flash_attention;
pub use gemv::{gemv_applies, linear_gemv};
pub(crate) use panels::read_panels_in_place;
pub use panels::PanelWeight;
pub use simd::sum;
pub use transposed::{
    is_transposed_layout, linear_transposed, to_transposed_layout, transposed_applies,
};

use super::kernel_choice::{kernels, KernelChoice, KernelFamily};
use candle_core::{bail, DType, Device, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// Whether these kernels are on ([`super::kernel_choice`], inference family).
pub fn enabled() -> bool {
    kernels(KernelFamily::Inference) == KernelChoice::Fused
}

/// True when the inference kernels may replace the composed ops for `inputs`: enabled, every input f32 on the CPU,
/// and none takes part in autograd (these kernels have no backward pass).
pub fn applies(inputs: &[&Tensor]) -> bool {
    enabled()
        && inputs
            .iter()
            .all(|t| t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu) && !t.track_op())
}

/// Runs `f` on one of rayon's threads, or in place when already on one. Every parallel op of inference (these
/// kernels, the quantized products, candle's GEMMs through the `gemm` crate) splits its work over rayon's pool.
/// Called from outside the pool, each op is queued and the caller sleeps until a worker has finished it, so both
/// workers must wake for every op; a decoding step runs hundreds of them. From a worker, the caller starts on the
/// first share itself and only the other worker wakes: f32 decoding 10-15 % faster on 2 cores
/// (`docs/benchmarks.md`).
pub fn on_compute_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// `rows` copies of `bias`, one after another: a GEMM's output pre-filled so that the product adds to it. Written
/// on rayon's threads in chunks of whole rows: on one thread the fill took 0.3-1.6 ms of a 6-20 ms vision-tower
/// projection (1,530 rows; `docs/benchmarks.md`, "The GEMM ceiling").
pub(crate) fn repeat_rows(bias: &[f32], rows: usize) -> Vec<f32> {
    let width = bias.len();
    let len = width * rows;
    if len <= ROWS_CHUNK_ELEMS {
        // One chunk's worth: a trip through rayon's pool would cost more than the copy.
        return bias.repeat(rows);
    }
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let rows_per_chunk = (ROWS_CHUNK_ELEMS / width).max(1);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(rows_per_chunk * width)
        .for_each(|chunk| {
            for row in chunk.chunks_mut(width) {
                for (dst, &b) in row.iter_mut().zip(bias) {
                    dst.write(b);
                }
            }
        });
    // SAFETY: the chunks above cover the first `len` elements and wrote every one of them.
    unsafe { y.set_len(len) };
    y
}

/// Elements per task of [`repeat_rows`] (256 KB).
const ROWS_CHUNK_ELEMS: usize = 1 << 16;

/// A strided f32 matrix operand of [`gemm_f32`]: element `(i, j)` at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub struct Strided<P> {
    pub ptr: P,
    pub rs: isize,
    pub cs: isize,
}

/// `dst (m x n) = [dst +] beta * lhs (m x k) rhs (k x n)`, `dst` read only when `accumulate`: the `gemm` crate's
/// f32 product (the one candle's CPU matmul calls) without its conjugation flags, on `threads` rayon threads
/// (1: on the calling thread). Every direct GEMM call of the workspace goes through here.
///
/// # Safety
/// Every pointer must cover its matrix under its strides, and `dst` must not overlap `lhs` or `rhs`.
pub unsafe fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    dst: Strided<*mut f32>,
    accumulate: bool,
    lhs: Strided<*const f32>,
    rhs: Strided<*const f32>,
    beta: f32,
    threads: usize,
) {
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst.ptr,
        dst.cs,
        dst.rs,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        if accumulate { 1.0 } else { 0.0 },
        beta,
        false,
        false,
        false,
        parallelism,
    )
}

/// A row-major matrix over a slice: element `(i, j)` at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major `[rows, cols]` matrix, read in place.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }

    fn covers(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// [`gemm_f32`] over slices, bounds-checked: `dst [m, n] = (accumulate ? dst : 0) + beta * lhs [m, k] rhs [k, n]`,
/// on candle's thread count.
pub fn gemm_into(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    lhs: MatRef,
    rhs: MatRef,
    beta: f32,
    accumulate: bool,
) -> Result<()> {
    if dst.len() != m * n || !lhs.covers(m, k) || !rhs.covers(k, n) {
        bail!(
            "gemm: buffers of {} / {} / {} values for a [{m}, {k}] x [{k}, {n}] product",
            lhs.data.len(),
            rhs.data.len(),
            dst.len()
        );
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return Ok(());
    }
    let operand = |a: MatRef| Strided {
        ptr: a.data.as_ptr(),
        rs: a.rs as isize,
        cs: a.cs as isize,
    };
    // SAFETY: every index the product touches is in bounds (checked above for lhs and rhs; dst is an exclusive
    // `[m, n]` row-major buffer, so it overlaps neither input).
    unsafe {
        gemm_f32(
            (m, n, k),
            Strided {
                ptr: dst.as_mut_ptr(),
                rs: n as isize,
                cs: 1,
            },
            accumulate,
            operand(lhs),
            operand(rhs),
            beta,
            candle_core::utils::get_num_threads(),
        );
    }
    Ok(())
}

/// The values of a contiguous f32 CPU tensor, borrowed from its storage (`let (storage, layout) =
/// t.storage_and_layout()`); `what` names the tensor in the error.
pub(crate) fn f32_slice<'a>(
    storage: &'a Storage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(s), Some((a, z))) if storage.dtype() == DType::F32 => {
            Ok(&s.as_slice::<f32>()?[a..z])
        }
        (Storage::Cpu(_), Some(_)) => bail!("{what} must be f32, not {:?}", storage.dtype()),
        (Storage::Cpu(_), None) => bail!("{what} must be contiguous"),
        _ => bail!("{what} must be a CPU tensor"),
    }
}

/// `silu(gate) * up`, the gated MLP's middle, in one vectorised pass over f32 CPU tensors of one shape (candle's
/// `silu` calls libm's `expf` per element, then `mul` makes a second pass). The `exp` is [`simd::exp_sub_sum`]'s,
/// within 2 ulp of libm's.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    /// Elements per rayon task: large enough that a decoding step's row stays on one thread.
    const CHUNK: usize = 16 * 1024;
    if gate.dims() != up.dims() {
        bail!(
            "silu_mul: gate {:?} and up {:?} differ",
            gate.dims(),
            up.dims()
        );
    }
    let (gate, up) = (gate.contiguous()?, up.contiguous()?);
    let (gs, gl) = gate.storage_and_layout();
    let (us, ul) = up.storage_and_layout();
    let (g, u) = (f32_slice(&gs, gl, "gate")?, f32_slice(&us, ul, "up")?);
    let mut out = vec![0f32; g.len()];
    out.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(o, (g, u))| simd::silu_mul(g, u, o));
    drop((gs, us));
    Tensor::from_vec(out, gate.dims(), &Device::Cpu)
}

/// The values of `t` as one contiguous f32 vector (copied); `what` names it in the error.
fn contiguous_f32(t: &Tensor, what: &str) -> Result<Vec<f32>> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    Ok(f32_slice(&storage, layout, what)?.to_vec())
}
