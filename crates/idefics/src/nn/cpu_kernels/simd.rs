//! Vector loops of the inference kernels, written over fixed-width lane arrays so that LLVM vectorises them, and
//! compiled three times: with AVX-512, with AVX2 + FMA (the widest the CPU has is chosen at run time) and for the
//! baseline target. The AVX-512 build gives the AVX2 build's values bit for bit (the same lane arithmetic in the
//! same order) and on the Intel Xeon VM runs decoding 7-24 % and the vision tower 0-11 % faster (the attention's
//! `exp`, GELU, the panel GEMV; `docs/benchmarks.md`, "The vector loops in 512 bits"); on a Zen 4 VM, which splits
//! 512-bit operations in two, it measured no faster.

/// Lanes per accumulator array: two AVX2 registers, enough independent chains to hide FMA latency.
const LANES: usize = 16;

/// `exp` is 0 below this (f32's smallest normal is `exp(-87.34)`), and is clamped above to stay finite.
const EXP_LO: f32 = -87.336_54;
const EXP_HI: f32 = 88.0;

#[inline(always)]
fn fma<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    // `mul_add` is one instruction with FMA and a slow library call without it.
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `exp(x)` to about 2 ulp (Cephes' `expf`: `2^k * exp(r)` with `|r| <= ln2 / 2` and a degree-6 polynomial),
/// branch-free so that it vectorises; 0 for `x < -87.34` and `-inf`.
#[inline(always)]
fn exp_lane<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that `k * LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(EXP_LO, EXP_HI);
    let k = (xc * LOG2E + 0.5).floor();
    let r = fma::<FMA>(k, -LN2_HI, xc);
    let r = fma::<FMA>(k, -LN2_LO, r);
    let mut p = 1.987_569_1e-4_f32;
    p = fma::<FMA>(p, r, 1.398_199_9e-3);
    p = fma::<FMA>(p, r, 8.333_452e-3);
    p = fma::<FMA>(p, r, 4.166_579_6e-2);
    p = fma::<FMA>(p, r, 1.666_666_5e-1);
    p = fma::<FMA>(p, r, 0.5); // the fitted coefficient 5.0000001e-1 rounds to 0.5 in f32
    let y = fma::<FMA>(p, r * r, r) + 1.0;
    // 2^k from its exponent bits. `k + 127` lies in 1..=254 after the clamp; adding 2^23 puts that integer in the
    // mantissa of a float whose other bits are 0x4B00_0000. Integer lane operations only: a saturating
    // `k as i32` is scalarised by LLVM (a compare and two conditional moves per lane, 16 % of a 980x980 vision
    // encode went to this loop); a NaN `x` stays NaN through `y`.
    let biased = (k + (127.0 + 8_388_608.0))
        .to_bits()
        .wrapping_sub(0x4B00_0000);
    let two_k = f32::from_bits(biased << 23);
    if x < EXP_LO {
        0.0
    } else {
        y * two_k
    }
}

#[inline(always)]
fn reduce_max(acc: [f32; LANES], tail: &[f32]) -> f32 {
    let mut m = f32::NEG_INFINITY;
    for &x in acc.iter().chain(tail) {
        if x > m {
            m = x;
        }
    }
    m
}

/// `s += mask` element-wise (when given), then the maximum of `s`.
#[inline(always)]
fn add_max_impl(s: &mut [f32], mask: Option<&[f32]>) -> f32 {
    if let Some(mask) = mask {
        for (x, m) in s.iter_mut().zip(mask) {
            *x += m;
        }
    }
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = s.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    reduce_max(acc, chunks.remainder())
}

/// `s = exp(s - m)` element-wise; returns the sum of the new values.
#[inline(always)]
fn exp_sub_sum_impl<const FMA: bool>(s: &mut [f32], m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = s.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let e = exp_lane::<FMA>(c[l] - m);
            c[l] = e;
            acc[l] += e;
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        *x = exp_lane::<FMA>(*x - m);
        sum += *x;
    }
    acc.iter().sum::<f32>() + sum
}

/// `sum_i a[i] * b[i]` with `LANES` partial sums (the summation order differs from a sequential loop).
#[inline(always)]
fn dot_impl<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 2 * LANES];
    let mut ca = a.chunks_exact(2 * LANES);
    let mut cb = b.chunks_exact(2 * LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..2 * LANES {
            acc[l] = fma::<FMA>(x[l], y[l], acc[l]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail = fma::<FMA>(*x, *y, tail);
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum_i a[i]` with `LANES` partial sums.
#[inline(always)]
fn sum_impl(a: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = a.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// The terms `p0 .. p1` of `y = x W^T` for `rows` rows of `x [rows, in]`, with `W^T [in, out]` row-major:
/// `acc [rows, out] += x[r][p] * W^T[p]` for p in order. Four weight rows per pass over `acc`, so it is loaded
/// and stored a quarter as often; each output still sums its terms sequentially in p.
#[inline(always)]
fn gemv_t_rows_impl<const FMA: bool>(
    x: &[f32],
    rows: usize,
    in_dim: usize,
    wt: &[f32],
    out_dim: usize,
    (p0, p1): (usize, usize),
    acc: &mut [f32],
) {
    let row = |p: usize| &wt[p * out_dim..(p + 1) * out_dim];
    let mut p = p0;
    while p + 4 <= p1 {
        let (w0, w1, w2, w3) = (row(p), row(p + 1), row(p + 2), row(p + 3));
        for r in 0..rows {
            let xr = &x[r * in_dim + p..r * in_dim + p + 4];
            let (a0, a1, a2, a3) = (xr[0], xr[1], xr[2], xr[3]);
            let ys = &mut acc[r * out_dim..(r + 1) * out_dim];
            // Zipped iterators carry no bounds checks, so the loop vectorises.
            for ((((y, &v0), &v1), &v2), &v3) in ys.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
                let v = fma::<FMA>(a0, v0, *y);
                let v = fma::<FMA>(a1, v1, v);
                let v = fma::<FMA>(a2, v2, v);
                *y = fma::<FMA>(a3, v3, v);
            }
        }
        p += 4;
    }
    while p < p1 {
        let w = row(p);
        for r in 0..rows {
            let a = x[r * in_dim + p];
            for (y, &wv) in acc[r * out_dim..(r + 1) * out_dim].iter_mut().zip(w) {
                *y = fma::<FMA>(a, wv, *y);
            }
        }
        p += 1;
    }
}

/// `acc[l] = sum_p x[p] * panel[p * 64 + l]`: one panel of [`super::panels`], read start to end into 64 lane
/// accumulators (each output sums its terms in p order).
#[inline(always)]
fn panel_gemv_impl<const FMA: bool>(panel: &[f32], x: &[f32], acc: &mut [f32]) {
    const P: usize = super::panels::PANEL;
    let mut a = [0f32; P];
    for (w, &xv) in panel.chunks_exact(P).zip(x) {
        let Ok(w) = <&[f32; P]>::try_from(w) else {
            continue;
        };
        for l in 0..P {
            a[l] = fma::<FMA>(xv, w[l], a[l]);
        }
    }
    acc.copy_from_slice(&a[..acc.len()]);
}

/// `out = silu(gate) * up` element-wise, `silu(g) = g / (1 + exp(-g))` with [`exp_lane`] (candle's formula, whose
/// libm `expf` is a call per element).
#[inline(always)]
fn silu_mul_impl<const FMA: bool>(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp_lane::<FMA>(-g)) * u;
    }
}

/// `out = g * silu'(x)`, `silu'(x) = s (1 + x (1 - s))` with `s = 1 / (1 + exp(-x))`.
#[inline(always)]
fn silu_grad_impl<const FMA: bool>(x: &[f32], g: &[f32], out: &mut [f32]) {
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(g) {
        let s = 1.0 / (1.0 + exp_lane::<FMA>(-v));
        *o = g * (s * (1.0 + v * (1.0 - s)));
    }
}

#[inline(always)]
fn map_unary_impl(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = f(v));
}

#[inline(always)]
fn map_binary_impl(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = f(x, y);
    }
}

/// One module of the loops above compiled for an instruction set (`$features`): the same lane arithmetic in the
/// same order, so every instruction set gives the same values bit for bit; only the vector width differs.
macro_rules! compiled_for {
    ($name:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            #[target_feature(enable = $features)]
            pub unsafe fn silu_grad(x: &[f32], g: &[f32], out: &mut [f32]) {
                super::silu_grad_impl::<true>(x, g, out)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn map_unary(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
                super::map_unary_impl(x, out, f)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn map_binary(
                a: &[f32],
                b: &[f32],
                out: &mut [f32],
                f: impl Fn(f32, f32) -> f32,
            ) {
                super::map_binary_impl(a, b, out, f)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn sum(a: &[f32]) -> f32 {
                super::sum_impl(a)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn add_max(s: &mut [f32], mask: Option<&[f32]>) -> f32 {
                super::add_max_impl(s, mask)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn exp_sub_sum(s: &mut [f32], m: f32) -> f32 {
                super::exp_sub_sum_impl::<true>(s, m)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
                super::dot_impl::<true>(a, b)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn panel_gemv(panel: &[f32], x: &[f32], acc: &mut [f32]) {
                super::panel_gemv_impl::<true>(panel, x, acc)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
                super::silu_mul_impl::<true>(gate, up, out)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn gemv_t_rows(
                x: &[f32],
                rows: usize,
                in_dim: usize,
                wt: &[f32],
                out_dim: usize,
                terms: (usize, usize),
                acc: &mut [f32],
            ) {
                super::gemv_t_rows_impl::<true>(x, rows, in_dim, wt, out_dim, terms, acc)
            }
        }
    };
}

compiled_for!(avx2, "avx2,fma");
compiled_for!(avx512, "avx512f,avx2,fma");

/// The widest instruction set the loops were compiled for that this CPU has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

#[inline]
fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        // The standard library caches the detection; these are atomic loads.
        // The AVX-512 module is compiled with AVX2 and FMA too: all three must be present.
        let avx2_fma = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        if avx2_fma && std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if avx2_fma {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// Calls `$f` from the module of the widest instruction set the CPU has, or `$fallback` (the baseline build).
macro_rules! dispatch {
    ($f:ident($($arg:expr),*), $fallback:expr) => {{
        match isa() {
            // SAFETY: the CPU has the features each module was compiled for.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::$f($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::$f($($arg),*) },
            _ => $fallback,
        }
    }};
}

/// `s += mask` (when given), then `max(s)`.
pub fn add_max(s: &mut [f32], mask: Option<&[f32]>) -> f32 {
    dispatch!(add_max(s, mask), add_max_impl(s, mask))
}

/// `s = exp(s - m)`; returns `sum(s)`.
pub fn exp_sub_sum(s: &mut [f32], m: f32) -> f32 {
    dispatch!(exp_sub_sum(s, m), exp_sub_sum_impl::<false>(s, m))
}

/// `exp(x)` of one value with the same approximation as [`exp_sub_sum`].
pub fn exp(x: f32) -> f32 {
    exp_lane::<false>(x)
}

/// Dot product of the common prefix of `a` and `b`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dispatch!(dot(a, b), dot_impl::<false>(a, b))
}

/// `acc [rows, out] += sum over p in terms.0 .. terms.1 of x[r][p] * W^T[p]`, with `x [rows, in]` and
/// `W^T [in, out]` row-major.
pub fn gemv_t_rows(
    x: &[f32],
    rows: usize,
    in_dim: usize,
    wt: &[f32],
    out_dim: usize,
    terms: (usize, usize),
    acc: &mut [f32],
) {
    dispatch!(
        gemv_t_rows(x, rows, in_dim, wt, out_dim, terms, acc),
        gemv_t_rows_impl::<false>(x, rows, in_dim, wt, out_dim, terms, acc)
    )
}

/// `acc = x . panel` for one weight panel `[in][64]` (`acc`: 64 outputs, or fewer for the last panel).
pub fn panel_gemv(panel: &[f32], x: &[f32], acc: &mut [f32]) {
    dispatch!(
        panel_gemv(panel, x, acc),
        panel_gemv_impl::<false>(panel, x, acc)
    )
}

/// `out = silu(gate) * up` over the common length.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    dispatch!(
        silu_mul(gate, up, out),
        silu_mul_impl::<false>(gate, up, out)
    )
}

/// `out = g * silu'(x)` over the common length: SiLU's backward pass.
pub fn silu_grad(x: &[f32], g: &[f32], out: &mut [f32]) {
    dispatch!(silu_grad(x, g, out), silu_grad_impl::<false>(x, g, out))
}

/// `out[i] = f(x[i])`, compiled with AVX2 when the CPU has it so that LLVM can vectorise `f` eight lanes wide.
/// `f` should be plain lane arithmetic that inlines (no calls); separate multiplies and adds are not fused, so
/// the values are those of the scalar loop.
pub fn map_unary(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
    dispatch!(map_unary(x, out, f), map_unary_impl(x, out, f))
}

/// `out[i] = f(a[i], b[i])`, as [`map_unary`].
pub fn map_binary(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    dispatch!(map_binary(a, b, out, f), map_binary_impl(a, b, out, f))
}

/// Sum of `a` (partial sums: the order differs from a sequential loop).
pub fn sum(a: &[f32]) -> f32 {
    dispatch!(sum(a), sum_impl(a))
}

/// `xs *= c`.
pub fn scale(xs: &mut [f32], c: f32) {
    xs.iter_mut().for_each(|x| *x *= c);
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // Deterministic spread over [-8, 8), with some exact zeros and large negatives for `exp`'s clamp.
        (0..n as u32)
            .map(|i| {
                let h = (i.wrapping_mul(2_654_435_761) ^ seed).wrapping_mul(2_246_822_519);
                match h % 97 {
                    0 => 0.0,
                    1 => -100.0,
                    _ => (h >> 8) as f32 / (1u32 << 24) as f32 * 16.0 - 8.0,
                }
            })
            .collect()
    }

    #[test]
    fn avx512_and_avx2_builds_give_the_same_bits() {
        if !(std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            eprintln!("skipped: this CPU lacks AVX-512F or AVX2 + FMA");
            return;
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // Lengths around the 16-lane chunks and the 64-wide panels, with remainders.
        for n in [1, 15, 16, 17, 63, 64, 200, 1001] {
            let (a, b) = (values(n, 1), values(n, 2));
            // SAFETY: the CPU has both feature sets (checked above).
            unsafe {
                let (mut s5, mut s2) = (a.clone(), a.clone());
                assert_eq!(
                    avx512::add_max(&mut s5, Some(&b)).to_bits(),
                    avx2::add_max(&mut s2, Some(&b)).to_bits()
                );
                assert_eq!(bits(&s5), bits(&s2), "add_max, {n}");
                assert_eq!(
                    avx512::exp_sub_sum(&mut s5, 1.5).to_bits(),
                    avx2::exp_sub_sum(&mut s2, 1.5).to_bits(),
                    "exp_sub_sum sum, {n}"
                );
                assert_eq!(bits(&s5), bits(&s2), "exp_sub_sum, {n}");
                assert_eq!(avx512::dot(&a, &b).to_bits(), avx2::dot(&a, &b).to_bits());
                assert_eq!(avx512::sum(&a).to_bits(), avx2::sum(&a).to_bits());
                let (mut o5, mut o2) = (vec![0f32; n], vec![0f32; n]);
                avx512::silu_mul(&a, &b, &mut o5);
                avx2::silu_mul(&a, &b, &mut o2);
                assert_eq!(bits(&o5), bits(&o2), "silu_mul, {n}");
                avx512::silu_grad(&a, &b, &mut o5);
                avx2::silu_grad(&a, &b, &mut o2);
                assert_eq!(bits(&o5), bits(&o2), "silu_grad, {n}");
                let gelu =
                    |x: f32| 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044_715 * x * x * x)).tanh());
                avx512::map_unary(&a, &mut o5, gelu);
                avx2::map_unary(&a, &mut o2, gelu);
                assert_eq!(bits(&o5), bits(&o2), "map_unary, {n}");
                avx512::map_binary(&a, &b, &mut o5, |x, y| x * y + x);
                avx2::map_binary(&a, &b, &mut o2, |x, y| x * y + x);
                assert_eq!(bits(&o5), bits(&o2), "map_binary, {n}");
                // One panel of 64 outputs over n inputs, and the transposed GEMV over 3 rows of x.
                let panel = values(n * 64, 3);
                let (mut p5, mut p2) = (vec![0f32; 64], vec![0f32; 64]);
                avx512::panel_gemv(&panel, &a, &mut p5);
                avx2::panel_gemv(&panel, &a, &mut p2);
                assert_eq!(bits(&p5), bits(&p2), "panel_gemv, {n}");
                let (rows, out_dim) = (3, 37);
                let x = values(rows * n, 4);
                let wt = values(n * out_dim, 5);
                let (mut g5, mut g2) = (vec![0.5f32; rows * out_dim], vec![0.5f32; rows * out_dim]);
                avx512::gemv_t_rows(&x, rows, n, &wt, out_dim, (0, n), &mut g5);
                avx2::gemv_t_rows(&x, rows, n, &wt, out_dim, (0, n), &mut g2);
                assert_eq!(bits(&g5), bits(&g2), "gemv_t_rows, {n}");
            }
        }
    }
}
