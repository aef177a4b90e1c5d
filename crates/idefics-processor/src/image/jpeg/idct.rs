//! libjpeg's "islow" inverse DCT (the default `JDCT_ISLOW` that Pillow decodes with), integer for
//! integer: 13-bit constants, 2 extra bits between the passes, 64-bit intermediates, the same
//! all-zero-AC shortcuts and the same wrapping range limit (`& 1023` into `sample_range_limit`).
//! Reference: libjpeg-turbo `jidctint.c` (`jpeg_idct_islow`) and `jdmaster.c`
//! (`prepare_range_limit_table`), https://github.com/libjpeg-turbo/libjpeg-turbo.

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;

const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

#[inline(always)]
fn descale(x: i64, n: u32) -> i64 {
    (x + (1i64 << (n - 1))) >> n
}

/// `range_limit[x & RANGE_MASK]` of the IDCT: clamps x + 128 to 0..=255 for x in -512..=511 and wraps
/// outside (libjpeg's table layout), so corrupt coefficients give the same bytes as libjpeg's C code.
#[inline(always)]
fn range_limit(x: i64) -> u8 {
    let t = (x & 1023) as u32;
    if t < 128 {
        (t + 128) as u8
    } else if t < 512 {
        255
    } else if t < 896 {
        0
    } else {
        (t - 896) as u8
    }
}

/// The even and odd halves of one 1-D 8-point IDCT, shared by both passes.
#[inline(always)]
fn butterfly(v: [i64; 8]) -> [i64; 8] {
    let (z2, z3) = (v[2], v[6]);
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 + z3 * -FIX_1_847759065;
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let tmp0 = (v[0] + v[4]).wrapping_shl(CONST_BITS);
    let tmp1 = (v[0] - v[4]).wrapping_shl(CONST_BITS);
    let (tmp10, tmp13, tmp11, tmp12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);

    let (mut t0, mut t1, mut t2, mut t3) = (v[7], v[5], v[3], v[1]);
    let (mut z1, mut z2, mut z3, mut z4) = (t0 + t3, t1 + t2, t0 + t2, t1 + t3);
    let z5 = (z3 + z4) * FIX_1_175875602;
    t0 *= FIX_0_298631336;
    t1 *= FIX_2_053119869;
    t2 *= FIX_3_072711026;
    t3 *= FIX_1_501321110;
    z1 *= -FIX_0_899976223;
    z2 *= -FIX_2_562915447;
    z3 *= -FIX_1_961570560;
    z4 *= -FIX_0_390180644;
    z3 += z5;
    z4 += z5;
    t0 += z1 + z3;
    t1 += z2 + z4;
    t2 += z2 + z3;
    t3 += z1 + z4;
    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

/// Inverse-transforms one block of coefficients (natural order) with its quantisation table (natural
/// order, as libjpeg's 16-bit multiplier table) into 8 rows of `out` starting at `out[0]`, `stride`
/// bytes apart.
pub(super) fn idct_islow(coef: &[i16], quant: &[i16; 64], out: &mut [u8], stride: usize) {
    let mut ws = [0i32; 64];
    for col in 0..8 {
        let c = |r: usize| i64::from(coef[r * 8 + col]) * i64::from(quant[r * 8 + col]);
        if (1..8).all(|r| coef[r * 8 + col] == 0) {
            let dc = (c(0) << PASS1_BITS) as i32;
            for r in 0..8 {
                ws[r * 8 + col] = dc;
            }
            continue;
        }
        let o = butterfly([c(0), c(1), c(2), c(3), c(4), c(5), c(6), c(7)]);
        for r in 0..8 {
            ws[r * 8 + col] = descale(o[r], CONST_BITS - PASS1_BITS) as i32;
        }
    }
    for row in 0..8 {
        let w = &ws[row * 8..row * 8 + 8];
        let dst = &mut out[row * stride..row * stride + 8];
        if w[1..].iter().all(|&v| v == 0) {
            let v = range_limit(descale(i64::from(w[0]), PASS1_BITS + 3));
            dst.fill(v);
            continue;
        }
        let o = butterfly(std::array::from_fn(|i| i64::from(w[i])));
        for (d, v) in dst.iter_mut().zip(o) {
            *d = range_limit(descale(v, CONST_BITS + PASS1_BITS + 3));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_blocks_and_range_limit() {
        let mut coef = [0i16; 64];
        let quant = [1i16; 64];
        let mut out = [0u8; 64];
        idct_islow(&coef, &quant, &mut out, 8);
        assert!(out.iter().all(|&v| v == 128));
        // DC of 8 * 100 -> +100 everywhere (the DCT is scaled by 8).
        coef[0] = 800;
        idct_islow(&coef, &quant, &mut out, 8);
        assert!(out.iter().all(|&v| v == 228), "{out:?}");
        assert_eq!(range_limit(127), 255);
        assert_eq!(range_limit(-129), 0);
        assert_eq!(range_limit(511), 255);
        assert_eq!(range_limit(-512), 0);
        // libjpeg's table wraps outside -512..=511.
        assert_eq!(range_limit(600), 0);
        assert_eq!(range_limit(1024 + 5), 133);
    }
}
