//! Is the `gemm` crate's f32 microkernel the limit of the GEMM-bound phases? One thread, one column panel
//! (`[k][64]`, as `idefics::nn::cpu_kernels::PanelWeight` stores a weight) times `rows` rows of `x`, three ways:
//! - the `gemm` crate, called as the panel layout calls it (the panel read in place, `x` packed by the crate);
//! - a hand-written AVX-512 microkernel of the same shape (64 outputs x 6 rows, 24 accumulators) that needs no
//!   packing at all: `x`'s rows are broadcast from where they lie, `k` unrolled by four;
//! - the bare loop such a microkernel runs (4 vector loads, 6 broadcasts and 24 FMAs per step) on a buffer that
//!   stays in L1, and the FMA peak (FMAs only).
//!
//! Then, on two threads, the `gemm` crate on the vision tower's whole products (`x [rows, in] W^T` for bench-150m's
//! projections, as the transposed layout calls it), to compare with PyTorch's `x @ w` of the same shapes (the
//! one-liner in `docs/benchmarks.md`).
//!
//!   cargo run --release --example panel_microkernel -p idefics -- [ROWS] [K] [REPEATS]
//!
//! Findings on the Intel Xeon VM are in `docs/benchmarks.md` ("The GEMM ceiling"): the hand-written kernel was
//! 6-9 % faster alone and no faster inside a prefill, and the bare loop itself stays at 70-80 % of the FMA peak.

// Register-blocked kernels index their accumulators by (vector, row); iterator chains over them are harder to
// read and to check for spills.
#![allow(clippy::needless_range_loop)]

use std::time::Instant;

fn main() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let arg = |i: usize, default: usize| {
            std::env::args()
                .nth(i)
                .and_then(|s| s.parse().ok())
                .unwrap_or(default)
        };
        avx512::run(arg(1, 128), arg(2, 768), arg(3, 300));
        whole_products();
        return;
    }
    println!("this comparison needs an x86-64 CPU with AVX-512F");
}

/// `y^T = W x^T` through the `gemm` crate on two threads, as `nn::cpu_kernels::transposed` calls it: best of 3
/// x 8 products per shape.
fn whole_products() {
    println!("two threads, whole products x [rows, in] W^T (the transposed layout's call), best of 3 x 8:");
    for (rows, in_dim, out_dim) in [
        (1530, 768, 768),
        (1530, 768, 3072),
        (1530, 3072, 768),
        (4900, 768, 3072),
    ] {
        let x: Vec<f32> = (0..rows * in_dim)
            .map(|i| (i % 997) as f32 / 997.0 - 0.5)
            .collect();
        let wt: Vec<f32> = (0..in_dim * out_dim)
            .map(|i| (i % 991) as f32 / 991.0 - 0.5)
            .collect();
        let mut y = vec![0f32; rows * out_dim];
        let mut product = || {
            // SAFETY: y^T is out x rows with column stride out (y row-major), W is out x in with column stride out
            // (W^T row-major), x^T is in x rows with column stride in; the buffers have exactly those sizes.
            unsafe {
                gemm::gemm(
                    out_dim,
                    rows,
                    in_dim,
                    y.as_mut_ptr(),
                    out_dim as isize,
                    1,
                    false,
                    wt.as_ptr(),
                    out_dim as isize,
                    1,
                    x.as_ptr(),
                    in_dim as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(2),
                )
            }
        };
        product();
        let gflops = (0..3)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..8 {
                    product();
                }
                (2 * rows * in_dim * out_dim * 8) as f64 / t.elapsed().as_secs_f64() / 1e9
            })
            .fold(0f64, f64::max);
        println!("  {rows} x {in_dim} -> {out_dim}: {gflops:7.1} GFLOP/s");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Instant;
    use std::arch::x86_64::*;

    const PANEL: usize = 64;

    pub fn run(rows: usize, k: usize, repeats: usize) {
        let panel: Vec<f32> = (0..k * PANEL)
            .map(|i| (i % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let x: Vec<f32> = (0..rows * k)
            .map(|i| (i * 7 % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let flops = (2 * PANEL * rows * k * repeats) as f64;
        let best_of_3 = |f: &mut dyn FnMut()| {
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..repeats {
                        f();
                    }
                    flops / t.elapsed().as_secs_f64() / 1e9
                })
                .fold(0f64, f64::max)
        };
        gemm::set_lhs_packing_threshold_single_thread(256);
        let mut y_crate = vec![0f32; rows * PANEL];
        let crate_gflops = best_of_3(&mut || {
            // SAFETY: dst is 64 x rows with column stride 64; the panel is 64 x k column-major (column stride
            // 64); x is k x rows with column stride k. All three buffers have exactly those sizes.
            unsafe {
                gemm::gemm(
                    PANEL,
                    rows,
                    k,
                    y_crate.as_mut_ptr(),
                    PANEL as isize,
                    1,
                    false,
                    panel.as_ptr(),
                    PANEL as isize,
                    1,
                    x.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        });
        let mut y_hand = vec![0f32; rows * PANEL];
        let full = rows / 6 * 6;
        let hand_gflops = best_of_3(&mut || {
            for r in (0..full).step_by(6) {
                // SAFETY: AVX-512F was detected; rows r..r+6 of x and y exist (r + 6 <= full <= rows).
                unsafe { microkernel(&panel, &x[r * k..], k, &mut y_hand[r * PANEL..]) }
            }
        }) * (full as f64 / rows as f64);
        let max_diff = y_hand[..full * PANEL]
            .iter()
            .zip(&y_crate)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // SAFETY: AVX-512F was detected.
        let (bare, peak) = unsafe { (bare_loop(20_000_000), fma_peak(20_000_000)) };
        println!("one thread, panel 64 x k {k}, {rows} rows of x, best of 3 x {repeats} products:");
        println!("  gemm crate (panel in place)       {crate_gflops:7.1} GFLOP/s");
        println!("  hand-written 64x6, no packing      {hand_gflops:7.1} GFLOP/s (max |diff| {max_diff:.1e}, {full} rows)");
        println!("  bare 64x6 loop, operands in L1     {bare:7.1} GFLOP/s");
        println!("  FMA peak (16 chains, no loads)     {peak:7.1} GFLOP/s");
    }

    /// `y[j][0..64] = Σ_k panel[k][0..64] x[j][k]` for six rows `j`.
    #[target_feature(enable = "avx512f")]
    unsafe fn microkernel(panel: &[f32], x: &[f32], k: usize, y: &mut [f32]) {
        assert!(panel.len() >= k * PANEL && x.len() >= 6 * k && y.len() >= 6 * PANEL);
        let mut acc = [[_mm512_setzero_ps(); 6]; 4];
        let (w, xp) = (panel.as_ptr(), x.as_ptr());
        macro_rules! step {
            ($kk:expr) => {{
                let kk = $kk;
                let wv = [
                    _mm512_loadu_ps(w.add(kk * PANEL)),
                    _mm512_loadu_ps(w.add(kk * PANEL + 16)),
                    _mm512_loadu_ps(w.add(kk * PANEL + 32)),
                    _mm512_loadu_ps(w.add(kk * PANEL + 48)),
                ];
                for j in 0..6 {
                    let b = _mm512_set1_ps(*xp.add(j * k + kk));
                    for i in 0..4 {
                        acc[i][j] = _mm512_fmadd_ps(wv[i], b, acc[i][j]);
                    }
                }
            }};
        }
        let mut kk = 0;
        while kk + 4 <= k {
            step!(kk);
            step!(kk + 1);
            step!(kk + 2);
            step!(kk + 3);
            kk += 4;
        }
        while kk < k {
            step!(kk);
            kk += 1;
        }
        for j in 0..6 {
            for i in 0..4 {
                _mm512_storeu_ps(y.as_mut_ptr().add(j * PANEL + 16 * i), acc[i][j]);
            }
        }
    }

    /// The microkernel's step without its memory traffic: 4 loads and 6 broadcasts from a 2 KB buffer, 24 FMAs.
    #[target_feature(enable = "avx512f")]
    unsafe fn bare_loop(iters: usize) -> f64 {
        let buf = vec![0.001f32; 1024];
        let b = buf.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); 6]; 4];
        let t = Instant::now();
        for it in 0..iters {
            let off = (it & 7) * PANEL;
            let wv = [
                _mm512_loadu_ps(b.add(off)),
                _mm512_loadu_ps(b.add(off + 16)),
                _mm512_loadu_ps(b.add(off + 32)),
                _mm512_loadu_ps(b.add(off + 48)),
            ];
            for j in 0..6 {
                let x = _mm512_set1_ps(*b.add(600 + j * 8 + (it & 7)));
                for i in 0..4 {
                    acc[i][j] = _mm512_fmadd_ps(wv[i], x, acc[i][j]);
                }
            }
        }
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(acc);
        (iters * 24 * 32) as f64 / dt / 1e9
    }

    /// 16 independent FMA chains in registers.
    #[target_feature(enable = "avx512f")]
    unsafe fn fma_peak(iters: usize) -> f64 {
        let mut a = [_mm512_set1_ps(1.0); 16];
        let (m, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let t = Instant::now();
        for _ in 0..iters {
            for v in a.iter_mut() {
                *v = _mm512_fmadd_ps(*v, m, c);
            }
        }
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(a);
        (iters * 16 * 32) as f64 / dt / 1e9
    }
}
