//! libjpeg's "islow" inverse DCT (the default `JDCT_ISLOW` that Pillow decodes with), integer for
//! integer: 13-bit constants, 2 extra bits between the passes, as libjpeg-turbo's AVX2 kernel computes
//! it. References: libjpeg-turbo `jidctint.c` (`jpeg_idct_islow`) and `simd/x86_64/jidctint-avx2.asm`,
//! https://github.com/libjpeg-turbo/libjpeg-turbo.

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;

/// Eight 1-D 8-point transforms side by side (`v[k][lane]` is input k of a lane), with the arithmetic of
/// one pass of the AVX2 kernel on 16-bit inputs: products and sums in 32 bits, except the four input
/// sums the kernel forms with 16-bit adds (they wrap), and a descale that saturates to 16 bits.
/// Plain loops over the lanes, so that the compiler vectorises them.
#[inline(always)]
fn pass_16bit(v: &[[i16; 8]; 8], shift: u32) -> [[i16; 8]; 8] {
    const F0298: i32 = 2446;
    const F0390: i32 = 3196;
    const F0541: i32 = 4433;
    const F0765: i32 = 6270;
    const F0899: i32 = 7373;
    const F1175: i32 = 9633;
    const F1501: i32 = 12299;
    const F1847: i32 = 15137;
    const F1961: i32 = 16069;
    const F2053: i32 = 16819;
    const F2562: i32 = 20995;
    const F3072: i32 = 25172;
    let round = 1i32 << (shift - 1);
    let mut out = [[0i16; 8]; 8];
    for l in 0..8 {
        let i = |k: usize| i32::from(v[k][l]);
        let tmp3 = i(2) * (F0541 + F0765) + i(6) * F0541;
        let tmp2 = i(6) * (F0541 - F1847) + i(2) * F0541;
        let tmp0 = i32::from(v[0][l].wrapping_add(v[4][l])) << CONST_BITS;
        let tmp1 = i32::from(v[0][l].wrapping_sub(v[4][l])) << CONST_BITS;
        let (tmp10, tmp13, tmp11, tmp12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
        let s73 = i32::from(v[7][l].wrapping_add(v[3][l]));
        let s51 = i32::from(v[5][l].wrapping_add(v[1][l]));
        let z3 = s73 * (F1175 - F1961) + s51 * F1175;
        let z4 = s51 * (F1175 - F0390) + s73 * F1175;
        let t0 = i(7) * (F0298 - F0899) - i(1) * F0899 + z3;
        let t1 = i(5) * (F2053 - F2562) - i(3) * F2562 + z4;
        let t3 = -i(7) * F0899 + i(1) * (F1501 - F0899) + z4;
        let t2 = -i(5) * F2562 + i(3) * (F3072 - F2562) + z3;
        let d = |x: i32| ((x + round) >> shift).clamp(-32768, 32767) as i16;
        out[0][l] = d(tmp10 + t3);
        out[7][l] = d(tmp10 - t3);
        out[1][l] = d(tmp11 + t2);
        out[6][l] = d(tmp11 - t2);
        out[2][l] = d(tmp12 + t1);
        out[5][l] = d(tmp12 - t1);
        out[3][l] = d(tmp13 + t0);
        out[4][l] = d(tmp13 - t0);
    }
    out
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
    let coef: &[i16; 64] = coef.try_into().expect("a block is 64 coefficients");
    let mut deq = [[0i16; 8]; 8];
    for r in 0..8 {
        for c in 0..8 {
            deq[r][c] = coef[r * 8 + c].wrapping_mul(quant[r * 8 + c]);
        }
    }
    // Pass 1 on the columns (lane = column); the kernel's shortcut when only the first row is non-zero
    // makes every column flat with a 16-bit (wrapping) shift.
    let ws = if coef[8..].iter().all(|&c| c == 0) {
        let mut row = [0i16; 8];
        for c in 0..8 {
            row[c] = ((deq[0][c] as u16) << PASS1_BITS) as i16;
        }
        [row; 8]
    } else {
        pass_16bit(&deq, CONST_BITS - PASS1_BITS)
    };
    // Pass 2 on the rows (lane = row): transpose, transform, saturate to a signed byte, recentre.
    let mut t = [[0i16; 8]; 8];
    for r in 0..8 {
        for c in 0..8 {
            t[c][r] = ws[r][c];
        }
    }
    let o = pass_16bit(&t, CONST_BITS + PASS1_BITS + 3);
    for r in 0..8 {
        let dst = &mut out[r * stride..r * stride + 8];
        for c in 0..8 {
            dst[c] = (o[c][r].clamp(-128, 127) + 128) as u8;
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
