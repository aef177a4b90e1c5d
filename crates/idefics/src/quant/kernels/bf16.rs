//! bf16 weights (`[out, in]` as stored: the upper 16 bits of each f32): the weight widened exactly
//! (`bits << 16`), f32 activations, products and sums. candle's bf16 `vec_dot` rounds the activations to bf16
//! as well; here they stay f32, so the only rounding is the weights' own (made once, when they were stored).
//!
//! Decoding reads every weight once per token, so the product is memory-bound: half of f32's bytes. A row is read
//! start to end (one stream) into four accumulator registers; lane `l` of a register sums the terms
//! `k = l (mod width)`, and the lanes are added at the end of the row.

use super::{Format, Isa};

/// The bf16 format: a "block" is one weight (its 16 stored bits).
pub(crate) struct Bf16;

/// An activation row, unchanged.
pub(crate) struct F32Row(Vec<f32>);

impl Format for Bf16 {
    type Block = u16;
    type Row = F32Row;
    const BLOCK: usize = 1;
    const NAME: &'static str = "bf16";

    fn quantize(x: &[f32]) -> F32Row {
        F32Row(x.to_vec())
    }

    fn dot_rows(isa: Isa, w: &[u16], nb: usize, x: &F32Row, out: &mut [f32]) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                // SAFETY: `Avx512Vnni` is only constructed by `Isa::available` after detecting AVX-512F, AVX2
                // and FMA, the features `rows_avx512` enables.
                unsafe { x86::rows_avx512(w, nb, &x.0, out) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                // SAFETY: as above, for AVX2 and FMA.
                unsafe { x86::rows_avx2(w, nb, &x.0, out) }
            }
            _ => rows_scalar(w, nb, &x.0, out),
        }
    }
}

#[inline(always)]
fn widen(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// `out[o] = w[o] . x` for the rows of `w` (`nb` weights each), in plain Rust: the reference the SIMD paths are
/// tested against, and the path of CPUs without AVX2.
fn rows_scalar(w: &[u16], nb: usize, x: &[f32], out: &mut [f32]) {
    for (y, row) in out.iter_mut().zip(w.chunks_exact(nb)) {
        *y = row.iter().zip(x).map(|(&b, &xk)| xk * widen(b)).sum();
    }
}

/// Explicit SIMD (the compiler left a four-row tile of this loop scalar): one row at a time, four registers along
/// it. The AVX-512 and AVX2 functions differ only in register width.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Checks the slice lengths the raw loads below rely on.
    fn check(w: &[u16], nb: usize, x: &[f32], out: &[f32]) {
        assert!(
            x.len() >= nb && w.len() >= out.len() * nb,
            "bf16 rows: {} weights for {} rows of {nb}, {} inputs",
            w.len(),
            out.len(),
            x.len()
        );
    }

    /// Scalar tail of a row: terms `from..nb`.
    #[inline(always)]
    unsafe fn tail(row: *const u16, x: &[f32], from: usize, nb: usize, mut sum: f32) -> f32 {
        for (k, &xk) in x.iter().enumerate().take(nb).skip(from) {
            sum = xk.mul_add(super::widen(*row.add(k)), sum);
        }
        sum
    }

    #[target_feature(enable = "avx2,fma,avx512f")]
    pub unsafe fn rows_avx512(w: &[u16], nb: usize, x: &[f32], out: &mut [f32]) {
        check(w, nb, x, out);
        #[inline(always)]
        unsafe fn load(p: *const u16) -> __m512 {
            let bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bits))
        }
        // One row at a time (one stream), four accumulators along the row.
        let full = nb / 64 * 64;
        let full16 = nb / 16 * 16;
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        for (o, y) in out.iter_mut().enumerate() {
            let r = wp.add(o * nb);
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut k = 0;
            while k < full {
                super::super::prefetch(r.add(k));
                super::super::prefetch(r.add(k + 32));
                for (t, acc) in acc.iter_mut().enumerate() {
                    let kk = k + 16 * t;
                    *acc = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(kk)), load(r.add(kk)), *acc);
                }
                k += 64;
            }
            while k < full16 {
                acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(k)), load(r.add(k)), acc[0]);
                k += 16;
            }
            let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
            *y = tail(r, x, full16, nb, _mm512_reduce_add_ps(v));
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows_avx2(w: &[u16], nb: usize, x: &[f32], out: &mut [f32]) {
        check(w, nb, x, out);
        #[inline(always)]
        unsafe fn load(p: *const u16) -> __m256 {
            let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
        }
        #[inline(always)]
        unsafe fn sum(v: __m256) -> f32 {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), v);
            lanes.iter().sum()
        }
        let full = nb / 32 * 32;
        let full8 = nb / 8 * 8;
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        for (o, y) in out.iter_mut().enumerate() {
            let r = wp.add(o * nb);
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut k = 0;
            while k < full {
                super::super::prefetch(r.add(k));
                for (t, acc) in acc.iter_mut().enumerate() {
                    let kk = k + 8 * t;
                    *acc = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(kk)), load(r.add(kk)), *acc);
                }
                k += 32;
            }
            while k < full8 {
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(k)), load(r.add(k)), acc[0]);
                k += 8;
            }
            let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            *y = tail(r, x, full8, nb, sum(v));
        }
    }
}
