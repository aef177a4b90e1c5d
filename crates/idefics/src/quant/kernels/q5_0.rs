//! q5_0 weight rows dotted with a q8_0 activation row, on the blocks as candle stores them.
//!
//! A q5_0 block is 32 weights: an f16 scale `d`, 32 high bits `qh` (bit `i` is weight `i`'s fifth bit) and 16
//! bytes of low nibbles (byte `j` holds weight `j` in its low and weight `j + 16` in its high nibble); a weight is
//! `d * (q - 16)` for its 5-bit `q`. It is what llama.cpp stores instead of q4k where rows fit no 256-block.
//!
//! candle has no SIMD product for this type (its generic one sums block by block in scalar code), so these
//! kernels set the order, the q8_0 kernel's: per block, eight i32 lanes of four `(q - 16) * x` products each,
//! `acc[lane] = fma(dw * dx, lane as f32, acc[lane])`, then the 8-lane horizontal sum. Integer sums are exact, so
//! every path agrees with the scalar one bit for bit (and with candle's to rounding). The 5-bit values are
//! unsigned, so both SIMD paths multiply `q` as is and start the lanes at `-16 *` the sum of their four
//! activations (the q8_0 row's VNNI bias `-128 * sum`, shifted right by 3):
//! - AVX-512 VNNI: the fifth bits expanded by a byte mask (`vmovdqu8` under `qh`), then `vpdpbusd`;
//! - AVX2: the fifth bits expanded by a byte shuffle and compare (as llama.cpp's `bytes_from_bits_32`), then
//!   `maddubs` + `madd` (pair sums reach 2 * 31 * 128, far from i16 saturation).

use super::q8_0::hsum8;
use super::Q8Row;
use half::f16;

/// A q5_0 block as candle's `BlockQ5_0` lays it out (`#[repr(C)]`: f16 scale, 4 bytes of fifth bits, 16 bytes
/// of nibbles; 22 bytes, align 2).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Q5Block {
    /// f16 bits of the scale.
    pub d: u16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<Q5Block>() == 22);

/// The 32 unsigned 5-bit values of a block, in weight order.
#[inline(always)]
fn unpack(b: &Q5Block) -> [u8; 32] {
    let qh = u32::from_le_bytes(b.qh);
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (b.qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        q[j + 16] = (b.qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

/// The blocks in f32, `d * (q - 16)` per weight: candle's `BlockQ5_0::to_float` value for value (the same int ->
/// f32 conversion and one multiply), in a loop the compiler vectorises (candle's extracts bit by bit).
#[inline(always)]
fn dequantize_impl(blocks: &[Q5Block], out: &mut [f32]) {
    for (b, ys) in blocks.iter().zip(out.chunks_exact_mut(32)) {
        let d = f16::from_bits(b.d).to_f32();
        let q = unpack(b);
        for (y, &q) in ys.iter_mut().zip(&q) {
            *y = (q as i32 - 16) as f32 * d;
        }
    }
}

/// [`dequantize_impl`] compiled for AVX2 where the CPU has it.
pub(crate) fn dequantize(blocks: &[Q5Block], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c") {
        #[target_feature(enable = "avx2,f16c")]
        fn avx2(blocks: &[Q5Block], out: &mut [f32]) {
            dequantize_impl(blocks, out)
        }
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { avx2(blocks, out) };
    }
    dequantize_impl(blocks, out)
}

/// `NW` consecutive weight rows (`w`: `NW * nb` blocks, row-major) dotted with the activation row `x`.
pub(super) fn tile_scalar<const NW: usize>(w: &[Q5Block], nb: usize, x: &Q8Row) -> [f32; NW] {
    let mut out = [0f32; NW];
    for (i, o) in out.iter_mut().enumerate() {
        let mut acc = [0f32; 8];
        for (b, (wb, xb)) in w[i * nb..(i + 1) * nb].iter().zip(&x.blocks).enumerate() {
            let q = unpack(wb);
            let d = f16::from_bits(wb.d).to_f32() * x.scales[b];
            for (lane, a) in acc.iter_mut().enumerate() {
                let sum: i32 = (4 * lane..4 * lane + 4)
                    .map(|k| (q[k] as i32 - 16) * xb.qs[k] as i32)
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
    use super::super::q8_0::x86::{hsum, load_qs, scale};
    use super::{Q5Block, Q8Row};
    use std::arch::x86_64::*;

    /// The low four bits of the block's weights, in weight order (weights 0..16 from the bytes' low nibbles, 16..32
    /// from their high nibbles).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn nibbles(b: &Q5Block) -> __m256i {
        // SAFETY: `qs` is 16 readable bytes; the load is unaligned.
        let qs = unsafe { _mm_loadu_si128(b.qs.as_ptr() as *const __m128i) };
        let low = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(qs, low);
        let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), low);
        _mm256_set_m128i(hi, lo)
    }

    /// The block's 5-bit values with AVX-512: the fifth bits set under the `qh` byte mask.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw")]
    fn unpack_avx512(b: &Q5Block) -> __m256i {
        let high = _mm256_maskz_mov_epi8(u32::from_le_bytes(b.qh), _mm256_set1_epi8(0x10));
        _mm256_or_si256(nibbles(b), high)
    }

    /// The block's 5-bit values with AVX2: `qh` broadcast, byte `i` shuffled from `qh` byte `i / 8` and tested
    /// against bit `i % 8`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn unpack_avx2(b: &Q5Block) -> __m256i {
        let qh = _mm256_set1_epi32(i32::from_le_bytes(b.qh));
        let spread = _mm256_shuffle_epi8(
            qh,
            _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
        _mm256_or_si256(nibbles(b), _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
    }

    /// The activation block's offset lanes: `-16 *` the sum of each lane's four quants.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn offset(x: &Q8Row, b: usize) -> __m256i {
        // SAFETY: `vnni_bias[b]` is 8 readable i32s (callers check `b < vnni_bias.len()`); unaligned load.
        let bias = unsafe { _mm256_loadu_si256(x.vnni_bias[b].as_ptr() as *const __m256i) };
        _mm256_srai_epi32(bias, 3)
    }

    /// As [`super::tile_scalar`], with AVX-512 VNNI on 256-bit registers.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA, F16C, AVX512F, AVX512VL, AVX512BW and AVX512VNNI.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    pub unsafe fn tile_vnni<const NW: usize>(w: &[Q5Block], nb: usize, x: &Q8Row) -> [f32; NW] {
        assert!(w.len() >= NW * nb && x.blocks.len() >= nb && x.vnni_bias.len() >= nb);
        let mut acc = [_mm256_setzero_ps(); NW];
        for b in 0..nb {
            let xv = load_qs(&x.blocks[b]);
            let off = offset(x, b);
            let dx = x.scales[b];
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `i * nb + b < NW * nb <= w.len()` (asserted above).
                let wb = unsafe { w.get_unchecked(i * nb + b) };
                prefetch(wb);
                let lanes = _mm256_dpbusd_epi32(off, unpack_avx512(wb), xv);
                let d = _mm256_set1_ps(scale(wb.d) * dx);
                *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), *acc);
            }
        }
        acc.map(|a| hsum(a))
    }

    /// As [`super::tile_scalar`], with AVX2.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile_avx2<const NW: usize>(w: &[Q5Block], nb: usize, x: &Q8Row) -> [f32; NW] {
        assert!(w.len() >= NW * nb && x.blocks.len() >= nb && x.vnni_bias.len() >= nb);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); NW];
        for b in 0..nb {
            let xv = load_qs(&x.blocks[b]);
            let off = offset(x, b);
            let dx = x.scales[b];
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `i * nb + b < NW * nb <= w.len()` (asserted above).
                let wb = unsafe { w.get_unchecked(i * nb + b) };
                prefetch(wb);
                let pairs = _mm256_maddubs_epi16(unpack_avx2(wb), xv);
                let lanes = _mm256_add_epi32(_mm256_madd_epi16(ones, pairs), off);
                let d = _mm256_set1_ps(scale(wb.d) * dx);
                *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), *acc);
            }
        }
        acc.map(|a| hsum(a))
    }

    row_kernels!(
        Q5Block,
        Q8Row,
        "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni",
        "avx2,fma,f16c"
    );
}
