//! q6k weight rows dotted with a q8k activation row, on the blocks as candle stores them.
//!
//! A q6k super-block is 256 weights: 128 bytes of low 4 bits (`ql`), 64 bytes of high 2 bits (`qh`), sixteen i8
//! scales (one per 16 weights) and an f16 scale `d`; a weight is `d * scale * (q - 32)` with `q` in `0..64`.
//! In each half `j` of 128 weights, chunk `c` (32 weights) takes its low bits from `ql[64j + 32(c % 2)..]`
//! (low nibbles for `c < 2`, high for `c >= 2`) and its high bits from bits `2c..2c+2` of `qh[32j..32j + 32]`.
//!
//! Every path computes what candle's AVX2 `vec_dot_q6k_q8k` computes (`candle-core-0.11.1/src/quantized/avx.rs`),
//! in its order: per block eight i32 lanes (lane `k`: bytes `4k..4k+4` of every chunk, `scale * (q x - 32 x)`),
//! then `acc[k] = fma(d, lane, acc[k])` and the 8-lane sum. The `32 x` pair sums depend on the activation only,
//! so they are computed once per call (`Q8KRow::pairs32`) instead of once per weight row. With VNNI,
//! `vpdpwssd` multiplies the 16-bit pair sums by the scales and accumulates in one instruction.

use super::Q8KRow;
use half::f16;

/// A q6k block as candle's `BlockQ6K` lays it out (`#[repr(C)]`, 210 bytes, align 2).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Q6KBlock {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: u16,
}
const _: () = assert!(std::mem::size_of::<Q6KBlock>() == 210);

/// The 6-bit quant (`0..64`) of weight `t` (0..32) of chunk `c` (0..4) in half `j` (0..2).
#[inline(always)]
fn quant(b: &Q6KBlock, j: usize, c: usize, t: usize) -> i32 {
    let low = b.ql[64 * j + 32 * (c % 2) + t];
    let low = if c < 2 { low & 15 } else { low >> 4 };
    let high = (b.qh[32 * j + t] >> (2 * c)) & 3;
    (low | (high << 4)) as i32
}

/// `NW` consecutive weight rows (`w`: `NW * nb` blocks) dotted with the activation row `x`.
pub(super) fn tile_scalar<const NW: usize>(w: &[Q6KBlock], nb: usize, x: &Q8KRow) -> [f32; NW] {
    let mut out = [0f32; NW];
    for (i, o) in out.iter_mut().enumerate() {
        let mut acc = [0f32; 8];
        for (b, wb) in w[i * nb..(i + 1) * nb].iter().enumerate() {
            let d = x.d[b] * f16::from_bits(wb.d).to_f32();
            let q8 = &x.qs[b * 256..(b + 1) * 256];
            let mut lanes = [0i32; 8];
            for j in 0..2 {
                for c in 0..4 {
                    let xs = &q8[128 * j + 32 * c..128 * j + 32 * c + 32];
                    for (k, lane) in lanes.iter_mut().enumerate() {
                        let scale = wb.scales[8 * j + 2 * c + k / 4] as i32;
                        let p: i32 = (4 * k..4 * k + 4)
                            .map(|t| (quant(wb, j, c, t) - 32) * xs[t] as i32)
                            .sum();
                        *lane += scale * p;
                    }
                }
            }
            for (a, &lane) in acc.iter_mut().zip(&lanes) {
                *a = d.mul_add(lane as f32, *a);
            }
        }
        *o = super::q8_0::hsum8(acc);
    }
    out
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::super::{tiled_rows, TILE};
    use super::{Q6KBlock, Q8KRow};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "f16c")]
    fn scale(bits: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// Generates a tile kernel and its row loop for one instruction set; `$combine(sumi, scales, p16)` adds
    /// `scales * (pairs of p16)` to `sumi`.
    macro_rules! q6k_kernels {
        ($tile:ident, $rows:ident, $features:literal, $combine:expr) => {
            /// As [`super::tile_scalar`].
            ///
            /// # Safety
            /// The CPU must have the features this function enables; `w.len() >= NW * nb`, `x` of `nb` blocks.
            #[inline]
            #[target_feature(enable = $features)]
            pub unsafe fn $tile<const NW: usize>(w: &[Q6KBlock], nb: usize, x: &Q8KRow) -> [f32; NW] {
                assert!(w.len() >= NW * nb && x.d.len() >= nb && x.qs.len() >= nb * 256);
                assert!(x.pairs32.len() >= nb * 128);
                let m4 = _mm256_set1_epi8(0xF);
                let m2 = _mm256_set1_epi8(3);
                let mut acc = [_mm256_setzero_ps(); NW];
                for b in 0..nb {
                    let q8 = x.qs[b * 256..(b + 1) * 256].as_ptr();
                    let m32 = x.pairs32[b * 128..(b + 1) * 128].as_ptr();
                    for i in 0..NW {
                        // SAFETY: `i * nb + b < NW * nb <= w.len()` (asserted above).
                        let wb = unsafe { w.get_unchecked(i * nb + b) };
                        super::super::prefetch(wb);
                        let d = _mm256_set1_ps(x.d[b] * scale(wb.d));
                        // SAFETY: `scales` is 16 readable bytes.
                        let scales = unsafe { _mm_loadu_si128(wb.scales.as_ptr() as *const __m128i) };
                        let mut sumi = _mm256_setzero_si256();
                        for j in 0..2 {
                            // SAFETY: `ql[64j..64j + 64]`, `qh[32j..32j + 32]`, activation quants
                            // `128j..128j + 128` and pair sums `64j..64j + 64` are in bounds; unaligned loads.
                            let (l1, l2, h) = unsafe {
                                (
                                    _mm256_loadu_si256(wb.ql.as_ptr().add(64 * j) as *const __m256i),
                                    _mm256_loadu_si256(wb.ql.as_ptr().add(64 * j + 32) as *const __m256i),
                                    _mm256_loadu_si256(wb.qh.as_ptr().add(32 * j) as *const __m256i),
                                )
                            };
                            let hbits = |shift: i32| {
                                let h = match shift {
                                    0 => h,
                                    2 => _mm256_srli_epi16(h, 2),
                                    4 => _mm256_srli_epi16(h, 4),
                                    _ => _mm256_srli_epi16(h, 6),
                                };
                                _mm256_slli_epi16(_mm256_and_si256(h, m2), 4)
                            };
                            let q = [
                                _mm256_or_si256(_mm256_and_si256(l1, m4), hbits(0)),
                                _mm256_or_si256(_mm256_and_si256(l2, m4), hbits(2)),
                                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), hbits(4)),
                                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l2, 4), m4), hbits(6)),
                            ];
                            for (c, &qc) in q.iter().enumerate() {
                                // SAFETY: as above.
                                let (xs, x32) = unsafe {
                                    (
                                        _mm256_loadu_si256(q8.add(128 * j + 32 * c) as *const __m256i),
                                        _mm256_loadu_si256(m32.add(64 * j + 16 * c) as *const __m256i),
                                    )
                                };
                                let p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(qc, xs), x32);
                                // SAFETY: `SCALE_PICK[4j + c]` is 16 readable bytes.
                                let pick = unsafe {
                                    _mm_loadu_si128(SCALE_PICK[4 * j + c].as_ptr() as *const __m128i)
                                };
                                let s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick));
                                sumi = $combine(sumi, s, p16);
                            }
                        }
                        acc[i] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc[i]);
                    }
                }
                let mut out = [0f32; NW];
                for i in 0..NW {
                    let mut a = [0f32; 8];
                    // SAFETY: `a` is 8 writable f32s; the store is unaligned.
                    unsafe { _mm256_storeu_ps(a.as_mut_ptr(), acc[i]) };
                    out[i] = super::super::q8_0::hsum8(a);
                }
                out
            }

            /// Output rows `out` of `w` with the tile kernel above.
            ///
            /// # Safety
            /// The CPU must have the features this function enables.
            #[target_feature(enable = $features)]
            pub unsafe fn $rows(w: &[Q6KBlock], nb: usize, x: &Q8KRow, out: &mut [f32]) {
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

    /// Byte shuffles picking, for chunk `r = 4j + c`, scale `2r` into bytes 0..8 and `2r + 1` into bytes 8..16
    /// (the scales of the chunk's two halves of 16 weights), as candle's `get_scale_shuffle`.
    const SCALE_PICK: [[u8; 16]; 8] = {
        let mut out = [[0u8; 16]; 8];
        let mut r = 0;
        while r < 8 {
            let mut i = 0;
            while i < 16 {
                out[r][i] = (2 * r + i / 8) as u8;
                i += 1;
            }
            r += 1;
        }
        out
    };

    q6k_kernels!(
        tile_vnni,
        rows_vnni,
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
        |sumi, s, p| _mm256_dpwssd_epi32(sumi, s, p)
    );
    q6k_kernels!(tile_avx2, rows_avx2, "avx2,fma,f16c", |sumi, s, p| {
        _mm256_add_epi32(sumi, _mm256_madd_epi16(s, p))
    });
}
