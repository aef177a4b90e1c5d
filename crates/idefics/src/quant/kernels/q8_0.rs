//! q8_0 weight rows dotted with a q8_0 activation row, on the blocks as candle stores them.
//!
//! Every path computes exactly what candle's AVX2 `vec_dot_q8_0_q8_0` computes
//! (`candle-core-0.11.1/src/quantized/avx.rs`): per block, eight i32 lanes of four `w * x` products each, then
//! `acc[lane] = fma(dw * dx, lanes as f32, acc[lane])`, and at the end its 8-lane horizontal sum. Integer sums are
//! exact and the float steps are the same operations in the same order, so the paths agree bit for bit with each
//! other and with candle on a CPU with AVX2. What differs is how the eight lanes are made:
//! - AVX-512 VNNI: `vpdpbusd` (unsigned x signed bytes, four products summed into each i32 lane) in one
//!   instruction. The weight is made unsigned by flipping its sign bit (`w + 128`), and the accumulator starts at
//!   the precomputed `-128 * (sum of the four activations)` of each lane, which cancels the offset exactly.
//! - AVX2: `maddubs` (|w| x sign-adjusted x, pairs into i16) then `madd` with ones (pairs of i16 into i32), as
//!   candle does. A CPU with AVX512BW but no VNNI takes this path: a block is one 256-bit register either way.
//! - scalar: the same lanes in plain Rust, `mul_add` for the FMA.

use super::{Q8Block, Q8Row};
use half::f16;

/// The eight-lane horizontal sum of candle's `hsum_float_8`, in its order.
#[inline(always)]
pub(super) fn hsum8(a: [f32; 8]) -> f32 {
    let t = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (t[0] + t[2]) + (t[1] + t[3])
}

/// `NW` consecutive weight rows (`w`: `NW * nb` blocks, row-major) dotted with the activation row `x`.
pub(super) fn tile_scalar<const NW: usize>(w: &[Q8Block], nb: usize, x: &Q8Row) -> [f32; NW] {
    let mut out = [0f32; NW];
    for (i, o) in out.iter_mut().enumerate() {
        let mut acc = [0f32; 8];
        for (b, (wb, xb)) in w[i * nb..(i + 1) * nb].iter().zip(&x.blocks).enumerate() {
            let d = f16::from_bits(wb.d).to_f32() * x.scales[b];
            for (lane, a) in acc.iter_mut().enumerate() {
                let sum: i32 = (4 * lane..4 * lane + 4)
                    .map(|k| wb.qs[k] as i32 * xb.qs[k] as i32)
                    .sum();
                *a = d.mul_add(sum as f32, *a);
            }
        }
        *o = hsum8(acc);
    }
    out
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::super::prefetch;
    use super::{hsum8, Q8Block, Q8Row};
    use std::arch::x86_64::*;

    /// The f16 scale of a weight block in f32 (`vcvtph2ps`, exact like `half`'s conversion).
    #[inline]
    #[target_feature(enable = "f16c")]
    pub(in crate::quant::kernels) fn scale(bits: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    #[inline]
    #[target_feature(enable = "avx")]
    pub(in crate::quant::kernels) fn hsum(v: __m256) -> f32 {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` is 8 writable f32s; the store is unaligned.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        hsum8(lanes)
    }

    /// 32 bytes of a block's quants.
    #[inline]
    #[target_feature(enable = "avx")]
    pub(in crate::quant::kernels) fn load_qs(b: &Q8Block) -> __m256i {
        // SAFETY: `qs` is 32 readable bytes; the load is unaligned.
        unsafe { _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i) }
    }

    /// As [`super::tile_scalar`], with AVX-512 VNNI on 256-bit registers.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C, AVX512F, AVX512VL and AVX512VNNI; `w.len() >= NW * nb`,
    /// `x.blocks.len() >= nb`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub unsafe fn tile_vnni<const NW: usize>(w: &[Q8Block], nb: usize, x: &Q8Row) -> [f32; NW] {
        assert!(w.len() >= NW * nb && x.blocks.len() >= nb && x.vnni_bias.len() >= nb);
        let flip = _mm256_set1_epi8(i8::MIN);
        let mut acc = [_mm256_setzero_ps(); NW];
        for b in 0..nb {
            let xv = load_qs(&x.blocks[b]);
            // SAFETY: `vnni_bias[b]` is 8 readable i32s (length asserted above); the load is unaligned.
            let bias = unsafe { _mm256_loadu_si256(x.vnni_bias[b].as_ptr() as *const __m256i) };
            let dx = x.scales[b];
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `i * nb + b < NW * nb <= w.len()` (asserted above).
                let wb = unsafe { w.get_unchecked(i * nb + b) };
                prefetch(wb);
                let wv = _mm256_xor_si256(load_qs(wb), flip);
                let lanes = _mm256_dpbusd_epi32(bias, wv, xv);
                let d = _mm256_set1_ps(scale(wb.d) * dx);
                *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), *acc);
            }
        }
        acc.map(|a| hsum(a))
    }

    /// As [`super::tile_scalar`], with AVX2 (`maddubs` + `madd`, as candle's kernel).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `w.len() >= NW * nb`, `x.blocks.len() >= nb`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile_avx2<const NW: usize>(w: &[Q8Block], nb: usize, x: &Q8Row) -> [f32; NW] {
        assert!(w.len() >= NW * nb && x.blocks.len() >= nb);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); NW];
        for b in 0..nb {
            let xv = load_qs(&x.blocks[b]);
            let dx = x.scales[b];
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `i * nb + b < NW * nb <= w.len()` (asserted above).
                let wb = unsafe { w.get_unchecked(i * nb + b) };
                prefetch(wb);
                let wv = load_qs(wb);
                let pairs =
                    _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
                let lanes = _mm256_madd_epi16(ones, pairs);
                let d = _mm256_set1_ps(scale(wb.d) * dx);
                *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), *acc);
            }
        }
        acc.map(|a| hsum(a))
    }

    row_kernels!(
        Q8Block,
        Q8Row,
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
        "avx2,fma,f16c"
    );
}
