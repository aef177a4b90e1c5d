//! q4k weight rows dotted with a q8k activation row, on the blocks as candle stores them.
//!
//! A q4k super-block is 256 weights: an f16 scale `d` and minimum scale `dmin`, eight 6-bit sub-block scales and
//! eight 6-bit mins packed in 12 bytes, and 128 bytes of 4-bit quants (bytes `32j..32j+32` hold sub-block `2j` in
//! their low nibbles and `2j+1` in their high nibbles). A weight is `d * scale * q - dmin * min`.
//!
//! Every path computes what candle's AVX2 `vec_dot_q4k_q8k` computes (`candle-core-0.11.1/src/quantized/avx.rs`),
//! in its order: per block eight i32 lanes (lane `k` sums, over the four 64-weight halves `j`, the products of
//! bytes `4k..4k+4` of each 32-byte chunk times their sub-block scale), `acc[k] = fma(d, lane, acc[k])`; and four
//! lanes of `mins . (sums of 32 activation quants)` into `acc_m = fma(dmin, ., acc_m)`. The integer parts are
//! exact, so the paths agree bit for bit. With VNNI, `vpdpwssd` multiplies the 16-bit pair sums by the scale and
//! accumulates in one instruction (candle: `madd` then `add`).

use super::Q8KRow;
use half::f16;

/// A q4k block as candle's `BlockQ4K` lays it out (`#[repr(C)]`, 144 bytes, align 2).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Q4KBlock {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<Q4KBlock>() == 144);

/// The eight sub-block scales and eight mins of a block (candle's `utmp` unpacking of the 12 packed bytes).
#[inline(always)]
fn scales_mins(b: &Q4KBlock) -> ([u8; 8], [u8; 8]) {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let word = |i: usize| {
        u32::from_le_bytes([
            b.scales[i],
            b.scales[i + 1],
            b.scales[i + 2],
            b.scales[i + 3],
        ])
    };
    let (u0, u1, u2) = (word(0), word(4), word(8));
    let u3 = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
    let m_lo = u1 & KMASK1;
    let s_hi = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
    let s_lo = u0 & KMASK1;
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    sc[..4].copy_from_slice(&s_lo.to_le_bytes());
    sc[4..].copy_from_slice(&s_hi.to_le_bytes());
    m[..4].copy_from_slice(&m_lo.to_le_bytes());
    m[4..].copy_from_slice(&u3.to_le_bytes());
    (sc, m)
}

/// candle's final sum: the 8-lane sum of `acc` plus `(m0 + m2) + (m1 + m3)`.
#[inline(always)]
fn finish(acc: [f32; 8], acc_m: [f32; 4]) -> f32 {
    super::q8_0::hsum8(acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]))
}

/// `NW` consecutive weight rows (`w`: `NW * nb` blocks) dotted with the activation row `x`.
pub(super) fn tile_scalar<const NW: usize>(w: &[Q4KBlock], nb: usize, x: &Q8KRow) -> [f32; NW] {
    let mut out = [0f32; NW];
    for (i, o) in out.iter_mut().enumerate() {
        let (mut acc, mut acc_m) = ([0f32; 8], [0f32; 4]);
        for (b, wb) in w[i * nb..(i + 1) * nb].iter().enumerate() {
            let xd = x.d[b];
            let d = xd * f16::from_bits(wb.d).to_f32();
            let dmin = -xd * f16::from_bits(wb.dmin).to_f32();
            let (sc, m) = scales_mins(wb);
            let sums = &x.sums32[b];
            for (l, a) in acc_m.iter_mut().enumerate() {
                let prod = m[2 * l] as i32 * sums[2 * l] as i32
                    + m[2 * l + 1] as i32 * sums[2 * l + 1] as i32;
                *a = dmin.mul_add(prod as f32, *a);
            }
            let q = &x.qs[b * 256..(b + 1) * 256];
            let mut lanes = [0i32; 8];
            for j in 0..4 {
                let (lo, hi) = (sc[2 * j] as i32, sc[2 * j + 1] as i32);
                for (k, lane) in lanes.iter_mut().enumerate() {
                    for t in 4 * k..4 * k + 4 {
                        let byte = wb.qs[32 * j + t];
                        *lane += lo * (byte & 15) as i32 * q[64 * j + t] as i32
                            + hi * (byte >> 4) as i32 * q[64 * j + 32 + t] as i32;
                    }
                }
            }
            for (a, &lane) in acc.iter_mut().zip(&lanes) {
                *a = d.mul_add(lane as f32, *a);
            }
        }
        *o = finish(acc, acc_m);
    }
    out
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::super::{tiled_rows, TILE};
    use super::{finish, scales_mins, Q4KBlock, Q8KRow};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "f16c")]
    fn scale(bits: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// Generates a tile kernel and its row loop for one instruction set; `$combine(sumi, scale, p16)` adds
    /// `scale * (pairs of p16)` to `sumi`.
    macro_rules! q4k_kernels {
        ($tile:ident, $rows:ident, $features:literal, $combine:expr) => {
            /// As [`super::tile_scalar`].
            ///
            /// # Safety
            /// The CPU must have the features this function enables; `w.len() >= NW * nb`, `x` of `nb` blocks.
            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn $tile<const NW: usize>(w: &[Q4KBlock], nb: usize, x: &Q8KRow) -> [f32; NW] {
                assert!(w.len() >= NW * nb && x.d.len() >= nb && x.qs.len() >= nb * 256 && x.sums32.len() >= nb);
                let m4 = _mm256_set1_epi8(0xF);
                let mut acc = [_mm256_setzero_ps(); NW];
                let mut acc_m = [_mm_setzero_ps(); NW];
                for b in 0..nb {
                    let xd = x.d[b];
                    // SAFETY: `sums32[b]` is 8 readable i16s (length asserted above); the load is unaligned.
                    let sums = unsafe { _mm_loadu_si128(x.sums32[b].as_ptr() as *const __m128i) };
                    let q8 = x.qs[b * 256..(b + 1) * 256].as_ptr();
                    for i in 0..NW {
                        // SAFETY: `i * nb + b < NW * nb <= w.len()` (asserted above).
                        let wb = unsafe { w.get_unchecked(i * nb + b) };
                        super::super::prefetch(wb);
                        let d = _mm256_set1_ps(xd * scale(wb.d));
                        let dmin = _mm_set1_ps(-xd * scale(wb.dmin));
                        let (sc, m) = scales_mins(wb);
                        // SAFETY: `m` is 8 readable bytes.
                        let mins = _mm_cvtepu8_epi16(unsafe { _mm_loadl_epi64(m.as_ptr() as *const __m128i) });
                        let prod = _mm_madd_epi16(mins, sums);
                        acc_m[i] = _mm_fmadd_ps(dmin, _mm_cvtepi32_ps(prod), acc_m[i]);
                        let mut sumi = _mm256_setzero_si256();
                        for j in 0..4 {
                            // SAFETY: bytes `32j..32j+32` of the 128 quants, and `64j..64j+64` of the block's 256
                            // activation quants, are readable; the loads are unaligned.
                            let (q4, q8l, q8h) = unsafe {
                                (
                                    _mm256_loadu_si256(wb.qs.as_ptr().add(32 * j) as *const __m256i),
                                    _mm256_loadu_si256(q8.add(64 * j) as *const __m256i),
                                    _mm256_loadu_si256(q8.add(64 * j + 32) as *const __m256i),
                                )
                            };
                            let q4l = _mm256_and_si256(q4, m4);
                            let q4h = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
                            let p16l = _mm256_maddubs_epi16(q4l, q8l);
                            let p16h = _mm256_maddubs_epi16(q4h, q8h);
                            sumi = $combine(sumi, _mm256_set1_epi16(sc[2 * j] as i16), p16l);
                            sumi = $combine(sumi, _mm256_set1_epi16(sc[2 * j + 1] as i16), p16h);
                        }
                        acc[i] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc[i]);
                    }
                }
                let mut out = [0f32; NW];
                for i in 0..NW {
                    let (mut a, mut m) = ([0f32; 8], [0f32; 4]);
                    // SAFETY: `a` and `m` are 8 and 4 writable f32s; the stores are unaligned.
                    unsafe {
                        _mm256_storeu_ps(a.as_mut_ptr(), acc[i]);
                        _mm_storeu_ps(m.as_mut_ptr(), acc_m[i]);
                    }
                    out[i] = finish(a, m);
                }
                out
            }

            /// Output rows `out` of `w` with the tile kernel above.
            ///
            /// # Safety
            /// The CPU must have the features this function enables.
            #[target_feature(enable = $features)]
            pub unsafe fn $rows(w: &[Q4KBlock], nb: usize, x: &Q8KRow, out: &mut [f32]) {
                tiled_rows(
                    w,
                    nb,
                    x,
                    out,
                    // SAFETY: the features are enabled here (the caller's contract); lengths are asserted inside.
                    |w, nb, x| unsafe { $tile::<TILE>(w, nb, x) },
                    |w, nb, x| unsafe { $tile::<1>(w, nb, x) },
                )
            }
        };
    }

    q4k_kernels!(
        tile_vnni,
        rows_vnni,
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
        |sumi, s, p| _mm256_dpwssd_epi32(sumi, s, p)
    );
    q4k_kernels!(tile_avx2, rows_avx2, "avx2,fma,f16c", |sumi, s, p| {
        _mm256_add_epi32(sumi, _mm256_madd_epi16(s, p))
    });
}
