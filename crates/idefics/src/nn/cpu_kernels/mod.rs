//! Forward-only CPU kernels for f32 inference: fused attention ([`flash_attention`]), the matrix-vector
//! product of decoding ([`gemv`]), and the linear layer over a weight stored transposed ([`transposed`]: the vision
//! side) or in column panels ([`panels`]: the text decoder, which both prefills and decodes).
//!
//! candle composes attention from a score matmul, a mask add, a softmax and a second matmul, each pass writing a
//! `[heads, Lq, Lk]` tensor (1.15 GB a layer for a 980x980 image), and runs `x W^T` with one row as a GEMM. These
//! kernels replace both when no input takes part in autograd and every tensor is f32 on the CPU; elsewhere
//! (training, CUDA, half precision) the composed ops remain, and they stay the reference the tests compare to.
//! [`super::kernel_choice`] can force the composed ops (`idefics bench --kernels composed`; benchmarks, bisecting).
//!
//! The vector loops are plain Rust over fixed-width lane arrays, compiled once per instruction set (AVX2 + FMA
//! and the baseline) and chosen at run time, so the binary still runs on any x86-64 CPU. AVX-512 is left to the
//! `gemm` crate (its `x86-v4` feature), which the attention tiles and the linear layers call: 512-bit builds of
//! these loops measured no faster on a Zen 4 VM (`docs/benchmarks.md`).

pub mod flash_attention;
pub mod gemv;
pub mod panels;
mod simd;
pub mod transposed;

#[cfg(test)]
mod tests;

pub use flash_attention::flash_attention;
pub use gemv::{gemv_applies, linear_gemv};
pub use panels::PanelWeight;
pub use simd::sum;
pub use transposed::{
    is_transposed_layout, linear_transposed, to_transposed_layout, transposed_applies,
};

use super::kernel_choice::{kernels, KernelChoice, KernelFamily};
use candle_core::{bail, DType, Device, Result, Storage, Tensor};

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

/// A strided f32 matrix operand of [`gemm_f32`]: element `(i, j)` at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
struct Strided<P> {
    ptr: P,
    rs: isize,
    cs: isize,
}

/// `dst (m x n) = [dst +] beta * lhs (m x k) rhs (k x n)`, `dst` read only when `accumulate`: the `gemm` crate's
/// f32 product without its conjugation flags.
///
/// # Safety
/// Every pointer must cover its matrix under its strides, and `dst` must not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    dst: Strided<*mut f32>,
    accumulate: bool,
    lhs: Strided<*const f32>,
    rhs: Strided<*const f32>,
    beta: f32,
    parallelism: gemm::Parallelism,
) {
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

/// The values of `t` as one contiguous f32 vector (copied); `what` names it in the error.
fn contiguous_f32(t: &Tensor, what: &str) -> Result<Vec<f32>> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(s), Some((a, z))) => Ok(s.as_slice::<f32>()?[a..z].to_vec()),
        _ => bail!("{what} must be an f32 CPU tensor"),
    }
}
