//! libjpeg's "islow" inverse DCT (the default `JDCT_ISLOW` that Pillow decodes with), integer for
//! integer: 13-bit constants, 2 extra bits between the passes, as libjpeg-turbo's AVX2 kernel computes
//! it. References: libjpeg-turbo `jidctint.c` (`jpeg_idct_islow`) and `simd/x86_64/jidctint-avx2.asm`,
//! https://github.com/libjpeg-turbo/libjpeg-turbo.

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;

/// One 1-D 8-point pass of the AVX2 kernel on 16-bit inputs: products and sums in 32 bits, except the
/// four input sums the kernel forms with 16-bit adds (they wrap), and a descale that saturates to 16 bits.
#[inline(always)]
fn pass_16bit(v: [i16; 8], shift: u32) -> [i16; 8] {
    let i = |k: usize| i32::from(v[k]);
    let w = |a: i16, b: i16| i32::from(a.wrapping_add(b));
    let (f0298, f0390, f0541, f0765) = (2446, 3196, 4433, 6270);
    let (f0899, f1175, f1501, f1847) = (7373, 9633, 12299, 15137);
    let (f1961, f2053, f2562, f3072) = (16069, 16819, 20995, 25172);
    let tmp3 = i(2) * (f0541 + f0765) + i(6) * f0541;
    let tmp2 = i(6) * (f0541 - f1847) + i(2) * f0541;
    let tmp0 = w(v[0], v[4]) << CONST_BITS;
    let tmp1 = i32::from(v[0].wrapping_sub(v[4])) << CONST_BITS;
    let (tmp10, tmp13, tmp11, tmp12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
    let (s73, s51) = (w(v[7], v[3]), w(v[5], v[1]));
    let z3 = s73 * (f1175 - f1961) + s51 * f1175;
    let z4 = s51 * (f1175 - f0390) + s73 * f1175;
    let t0 = i(7) * (f0298 - f0899) - i(1) * f0899 + z3;
    let t1 = i(5) * (f2053 - f2562) - i(3) * f2562 + z4;
    let t3 = -i(7) * f0899 + i(1) * (f1501 - f0899) + z4;
    let t2 = -i(5) * f2562 + i(3) * (f3072 - f2562) + z3;
    let d = |x: i32| ((x + (1 << (shift - 1))) >> shift).clamp(-32768, 32767) as i16;
    [
        d(tmp10 + t3),
        d(tmp11 + t2),
        d(tmp12 + t1),
        d(tmp13 + t0),
        d(tmp13 - t0),
        d(tmp12 - t1),
        d(tmp11 - t2),
        d(tmp10 - t3),
    ]
}

/// Inverse-transforms one block of coefficients (natural order) with its quantisation table (natural
/// order, as libjpeg's 16-bit multiplier table) into 8 rows of `out` starting at `out[0]`, `stride`
/// bytes apart.
///
/// The arithmetic is that of `jsimd_idct_islow_avx2`, the kernel Pillow's libjpeg-turbo runs on x86-64
/// (simd/x86_64/jidctint-avx2.asm). It equals the C `jpeg_idct_islow` for every coefficient a real
/// encoder writes; on corrupt data the kernel's 16-bit lanes (wrapping dequantisation products and input
/// sums, saturating passes and output) give other bytes than the C code's 64-bit math and wrapping
/// range-limit table, and Pillow's bytes are the kernel's.
pub(super) fn idct_islow(coef: &[i16], quant: &[i16; 64], out: &mut [u8], stride: usize) {
    let deq: [i16; 64] = std::array::from_fn(|k| coef[k].wrapping_mul(quant[k]));
    let mut ws = [0i16; 64];
    if coef[8..64].iter().all(|&c| c == 0) {
        // The kernel's shortcut when only the first row is non-zero: columns are flat.
        for r in 0..8 {
            for c in 0..8 {
                ws[r * 8 + c] = ((deq[c] as u16) << PASS1_BITS) as i16;
            }
        }
    } else {
        for col in 0..8 {
            if (1..8).all(|r| deq[r * 8 + col] == 0) {
                // What the full pass gives for a lone DC term (no 16-bit sum can wrap): 4x, saturated.
                let v = (i32::from(deq[col]) << PASS1_BITS).clamp(-32768, 32767) as i16;
                for r in 0..8 {
                    ws[r * 8 + col] = v;
                }
                continue;
            }
            let o = pass_16bit(
                std::array::from_fn(|r| deq[r * 8 + col]),
                CONST_BITS - PASS1_BITS,
            );
            for r in 0..8 {
                ws[r * 8 + col] = o[r];
            }
        }
    }
    for row in 0..8 {
        let w = &ws[row * 8..row * 8 + 8];
        let dst = &mut out[row * stride..row * stride + 8];
        if w[1..].iter().all(|&v| v == 0) {
            // The full pass on a lone DC term: a rounded shift, never saturating at 16 bits.
            let v = (i32::from(w[0]) + (1 << (CONST_BITS + PASS1_BITS + 3 - CONST_BITS - 1)))
                >> (PASS1_BITS + 3);
            dst.fill((v.clamp(-128, 127) + 128) as u8);
            continue;
        }
        let o = pass_16bit(std::array::from_fn(|c| w[c]), CONST_BITS + PASS1_BITS + 3);
        for (d, v) in dst.iter_mut().zip(o) {
            *d = (v.clamp(-128, 127) + 128) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_blocks_and_saturation() {
        let mut coef = [0i16; 64];
        let quant = [1i16; 64];
        let mut out = [0u8; 64];
        idct_islow(&coef, &quant, &mut out, 8);
        assert!(out.iter().all(|&v| v == 128));
        // DC of 8 * 100 -> +100 everywhere (the DCT is scaled by 8).
        coef[0] = 800;
        idct_islow(&coef, &quant, &mut out, 8);
        assert!(out.iter().all(|&v| v == 228), "{out:?}");
        // Saturation where the C table wraps (C gives 0 here, then 255).
        coef[0] = 6000;
        idct_islow(&coef, &quant, &mut out, 8);
        assert!(out.iter().all(|&v| v == 255), "{out:?}");
        coef[0] = -6000;
        coef[9] = 5;
        idct_islow(&coef, &quant, &mut out, 8);
        assert!(out.iter().all(|&v| v == 0), "{out:?}");
    }
}
