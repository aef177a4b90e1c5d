//! Vector loops of the inference kernels, written over fixed-width lane arrays so that LLVM vectorises them, and
//! compiled twice: with AVX2 + FMA (chosen at run time when the CPU has them) and for the baseline target.

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

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_grad(x: &[f32], g: &[f32], out: &mut [f32]) {
        super::silu_grad_impl::<true>(x, g, out)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn map_unary(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
        super::map_unary_impl(x, out, f)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn map_binary(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32) {
        super::map_binary_impl(a, b, out, f)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sum(a: &[f32]) -> f32 {
        super::sum_impl(a)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn add_max(s: &mut [f32], mask: Option<&[f32]>) -> f32 {
        super::add_max_impl(s, mask)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sub_sum(s: &mut [f32], m: f32) -> f32 {
        super::exp_sub_sum_impl::<true>(s, m)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        super::dot_impl::<true>(a, b)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn panel_gemv(panel: &[f32], x: &[f32], acc: &mut [f32]) {
        super::panel_gemv_impl::<true>(panel, x, acc)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        super::silu_mul_impl::<true>(gate, up, out)
    }
    #[target_feature(enable = "avx2,fma")]
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

#[inline]
fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // The standard library caches the detection; this is an atomic load.
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `s += mask` (when given), then `max(s)`.
pub fn add_max(s: &mut [f32], mask: Option<&[f32]>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { avx2::add_max(s, mask) };
    }
    add_max_impl(s, mask)
}

/// `s = exp(s - m)`; returns `sum(s)`.
pub fn exp_sub_sum(s: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { avx2::exp_sub_sum(s, m) };
    }
    exp_sub_sum_impl::<false>(s, m)
}

/// `exp(x)` of one value with the same approximation as [`exp_sub_sum`].
pub fn exp(x: f32) -> f32 {
    exp_lane::<false>(x)
}

/// Dot product of the common prefix of `a` and `b`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { avx2::dot(a, b) };
    }
    dot_impl::<false>(a, b)
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
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { avx2::gemv_t_rows(x, rows, in_dim, wt, out_dim, terms, acc) };
    }
    gemv_t_rows_impl::<false>(x, rows, in_dim, wt, out_dim, terms, acc)
}

/// `acc = x . panel` for one weight panel `[in][64]` (`acc`: 64 outputs, or fewer for the last panel).
pub fn panel_gemv(panel: &[f32], x: &[f32], acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { avx2::panel_gemv(panel, x, acc) };
    }
    panel_gemv_impl::<false>(panel, x, acc)
}

/// `out = silu(gate) * up` over the common length.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { avx2::silu_mul(gate, up, out) };
    }
    silu_mul_impl::<false>(gate, up, out)
}

/// `out = g * silu'(x)` over the common length: SiLU's backward pass.
pub fn silu_grad(x: &[f32], g: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { avx2::silu_grad(x, g, out) };
    }
    silu_grad_impl::<false>(x, g, out)
}

/// `out[i] = f(x[i])`, compiled with AVX2 when the CPU has it so that LLVM can vectorise `f` eight lanes wide.
/// `f` should be plain lane arithmetic that inlines (no calls); separate multiplies and adds are not fused, so
/// the values are those of the scalar loop.
pub fn map_unary(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { avx2::map_unary(x, out, f) };
    }
    map_unary_impl(x, out, f)
}

/// `out[i] = f(a[i], b[i])`, as [`map_unary`].
pub fn map_binary(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { avx2::map_binary(a, b, out, f) };
    }
    map_binary_impl(a, b, out, f)
}

/// Sum of `a` (partial sums: the order differs from a sequential loop).
pub fn sum(a: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { avx2::sum(a) };
    }
    sum_impl(a)
}

/// `xs *= c`.
pub fn scale(xs: &mut [f32], c: f32) {
    xs.iter_mut().for_each(|x| *x *= c);
}
