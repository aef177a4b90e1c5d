//! Measured limits of this machine: peak f32 FLOP/s (an FMA loop on every thread, the widest vectors the CPU has),
//! the f32 GEMM's own ceiling (the product every linear layer calls, on blocks that stay in cache) and memory
//! bandwidth (copy and read loops over buffers much larger than the caches).

use std::time::{Duration, Instant};

/// Peak f32 arithmetic measured by [`probe_peak_flops`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakFlopsProbe {
    /// f32 FLOP/s over all threads (an FMA counts 2).
    pub flops: f64,
    pub threads: usize,
    /// Vector width of the loop, in f32 lanes (16: AVX-512, 8: AVX2 + FMA, 1: scalar).
    pub lanes: usize,
}

/// The f32 GEMM's throughput on cache-resident blocks, measured by [`probe_gemm_ceiling`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmCeilingProbe {
    /// f32 FLOP/s over all threads.
    pub flops: f64,
    pub threads: usize,
    /// `(m, n, k)` of each thread's product.
    pub shape: (usize, usize, usize),
}

/// Memory bandwidth measured by [`probe_bandwidth`], in bytes per second over all threads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BandwidthProbe {
    /// STREAM's convention: a copy of n bytes counts 2n (read + write).
    pub copy: f64,
    /// A read-only pass (sum) over the buffer: what decoding does with its weights.
    pub read: f64,
    pub buffer_bytes: usize,
    pub threads: usize,
}

impl BandwidthProbe {
    /// The larger of the two: a phase's fraction of this is never overstated.
    pub fn best(&self) -> f64 {
        self.copy.max(self.read)
    }
}

/// FMA instructions per loop iteration: independent accumulators, more than latency x FMA ports on current cores.
const CHAINS: u64 = 12;

#[cfg(target_arch = "x86_64")]
mod fma_loops {
    use std::arch::asm;

    /// `iters` x 12 independent `vfmadd231ps` on zmm registers, in inline assembly so that the timed loop is
    /// exactly these instructions whatever the optimiser does.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[inline(never)]
    pub unsafe fn avx512(iters: u64) {
        asm!(
            "vxorps xmm0, xmm0, xmm0", "vxorps xmm1, xmm1, xmm1", "vxorps xmm2, xmm2, xmm2",
            "vxorps xmm3, xmm3, xmm3", "vxorps xmm4, xmm4, xmm4", "vxorps xmm5, xmm5, xmm5",
            "vxorps xmm6, xmm6, xmm6", "vxorps xmm7, xmm7, xmm7", "vxorps xmm8, xmm8, xmm8",
            "vxorps xmm9, xmm9, xmm9", "vxorps xmm10, xmm10, xmm10", "vxorps xmm11, xmm11, xmm11",
            "vxorps xmm12, xmm12, xmm12", "vxorps xmm13, xmm13, xmm13",
            "2:",
            "vfmadd231ps zmm0, zmm12, zmm13", "vfmadd231ps zmm1, zmm12, zmm13",
            "vfmadd231ps zmm2, zmm12, zmm13", "vfmadd231ps zmm3, zmm12, zmm13",
            "vfmadd231ps zmm4, zmm12, zmm13", "vfmadd231ps zmm5, zmm12, zmm13",
            "vfmadd231ps zmm6, zmm12, zmm13", "vfmadd231ps zmm7, zmm12, zmm13",
            "vfmadd231ps zmm8, zmm12, zmm13", "vfmadd231ps zmm9, zmm12, zmm13",
            "vfmadd231ps zmm10, zmm12, zmm13", "vfmadd231ps zmm11, zmm12, zmm13",
            "dec rcx",
            "jnz 2b",
            "vzeroupper",
            inout("rcx") iters => _,
            clobber_abi("C"),
            options(nostack),
        );
    }

    /// The same loop on ymm registers with FMA3.
    ///
    /// # Safety
    /// The CPU must support AVX and FMA.
    #[inline(never)]
    pub unsafe fn avx2(iters: u64) {
        asm!(
            "vxorps xmm0, xmm0, xmm0", "vxorps xmm1, xmm1, xmm1", "vxorps xmm2, xmm2, xmm2",
            "vxorps xmm3, xmm3, xmm3", "vxorps xmm4, xmm4, xmm4", "vxorps xmm5, xmm5, xmm5",
            "vxorps xmm6, xmm6, xmm6", "vxorps xmm7, xmm7, xmm7", "vxorps xmm8, xmm8, xmm8",
            "vxorps xmm9, xmm9, xmm9", "vxorps xmm10, xmm10, xmm10", "vxorps xmm11, xmm11, xmm11",
            "vxorps xmm12, xmm12, xmm12", "vxorps xmm13, xmm13, xmm13",
            "2:",
            "vfmadd231ps ymm0, ymm12, ymm13", "vfmadd231ps ymm1, ymm12, ymm13",
            "vfmadd231ps ymm2, ymm12, ymm13", "vfmadd231ps ymm3, ymm12, ymm13",
            "vfmadd231ps ymm4, ymm12, ymm13", "vfmadd231ps ymm5, ymm12, ymm13",
            "vfmadd231ps ymm6, ymm12, ymm13", "vfmadd231ps ymm7, ymm12, ymm13",
            "vfmadd231ps ymm8, ymm12, ymm13", "vfmadd231ps ymm9, ymm12, ymm13",
            "vfmadd231ps ymm10, ymm12, ymm13", "vfmadd231ps ymm11, ymm12, ymm13",
            "dec rcx",
            "jnz 2b",
            "vzeroupper",
            inout("rcx") iters => _,
            clobber_abi("C"),
            options(nostack),
        );
    }
}

/// Widest FMA loop this CPU runs: (lanes, loop).
fn fma_loop() -> (usize, fn(u64)) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is present.
            return (16, |n| unsafe { fma_loops::avx512(n) });
        }
        if std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: AVX and FMA are present.
            return (8, |n| unsafe { fma_loops::avx2(n) });
        }
    }
    (1, scalar_fma_loop)
}

/// Portable fallback: 12 dependent-free multiply-adds per iteration.
fn scalar_fma_loop(iters: u64) {
    let mut acc = [0f32; CHAINS as usize];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = std::hint::black_box(*a) * 0.999_999 + 1e-7;
        }
    }
    std::hint::black_box(acc);
}

/// Runs `work(thread)` on `threads` threads started together; returns the wall time from the common start.
fn run_threads(threads: usize, work: impl Fn(usize) + Sync) -> Duration {
    let barrier = std::sync::Barrier::new(threads);
    // Each thread times its own work, from the common start to its end: the span from the first start to the
    // last end. (Timing from the spawning thread instead failed when that thread was descheduled between the start
    // barrier and reading the clock: on 2 cores with 2 workers the copy then seemed to take a microsecond.)
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, work) = (&barrier, &work);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    work(t);
                    (start, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread panicked"))
            .collect()
    });
    let first = spans
        .iter()
        .map(|s| s.0)
        .min()
        .expect("at least one thread");
    let last = spans
        .iter()
        .map(|s| s.1)
        .max()
        .expect("at least one thread");
    last.duration_since(first)
}

/// How many repetitions make one call of `run` last about `seconds` on one thread: from `start`, four times more
/// until a call lasts over 20 ms (or passes `limit`), then scaled to `seconds`.
fn calibrate(start: u64, limit: u64, seconds: f64, run: impl Fn(u64)) -> u64 {
    let mut count = start;
    loop {
        let t = Instant::now();
        run(count);
        let dt = t.elapsed().as_secs_f64();
        if dt > 0.02 || count > limit {
            return ((count as f64) * seconds / dt.max(1e-9)).max(1.0) as u64;
        }
        count *= 4;
    }
}

/// The best of `trials` runs of `run(count)` on `threads` threads at once, in work per second over all threads
/// (`work` per repetition).
fn best_rate(
    threads: usize,
    trials: usize,
    count: u64,
    work: f64,
    run: impl Fn(u64) + Sync,
) -> f64 {
    (0..trials.max(1))
        .map(|_| {
            let dt = run_threads(threads, |_| run(count)).as_secs_f64();
            threads as f64 * count as f64 * work / dt
        })
        .fold(0f64, f64::max)
}

/// Peak f32 FLOP/s on `threads` threads: best of `trials` runs of about `seconds` each.
pub fn probe_peak_flops(threads: usize, seconds: f64, trials: usize) -> PeakFlopsProbe {
    let threads = threads.max(1);
    let (lanes, run) = fma_loop();
    let iters = calibrate(1 << 16, 1 << 40, seconds, run);
    let flops_per_iter = (CHAINS * 2 * lanes as u64) as f64;
    PeakFlopsProbe {
        flops: best_rate(threads, trials, iters, flops_per_iter, run),
        threads,
        lanes,
    }
}

/// f32 GEMM FLOP/s on `threads` threads, each repeating one single-threaded product of a column panel (64 weight
/// rows, `[k][64]`) with 96 rows of `x`, k = 256 (64 + 96 KB: in L2), through the call every f32 linear layer of
/// inference makes ([`crate::nn::cpu_kernels::gemm_f32`], panels read in place as the loaded model reads them):
/// best of `trials` runs of about `seconds` each. The FMA peak counts only arithmetic; a GEMM also loads its
/// operands, and on some CPUs (the Intel Xeon VM of `docs/benchmarks.md`: 73-75 % of the FMA peak, a hand-written
/// microkernel no faster in place) that caps every GEMM-bound phase below the peak. This is that cap, measured.
pub fn probe_gemm_ceiling(threads: usize, seconds: f64, trials: usize) -> GemmCeilingProbe {
    use crate::nn::cpu_kernels::{gemm_f32, read_panels_in_place, Strided};
    const PANEL: usize = crate::nn::cpu_kernels::panels::PANEL;
    let (m, n, k) = (PANEL, 96, 256);
    read_panels_in_place();
    let threads = threads.max(1);
    let product = |calls: u64| {
        let lhs: Vec<f32> = (0..k * PANEL).map(|i| (i % 7) as f32 * 0.1).collect();
        let rhs: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut dst = vec![0f32; n * m];
        for _ in 0..calls {
            // SAFETY: lhs is m x k column-major (column stride 64 = m), rhs k x n with column stride k, dst m x n
            // with column stride m: each covers its matrix, and the three buffers are distinct.
            unsafe {
                gemm_f32(
                    (m, n, k),
                    Strided {
                        ptr: dst.as_mut_ptr(),
                        rs: 1,
                        cs: m as isize,
                    },
                    false,
                    Strided {
                        ptr: lhs.as_ptr(),
                        rs: 1,
                        cs: PANEL as isize,
                    },
                    Strided {
                        ptr: rhs.as_ptr(),
                        rs: 1,
                        cs: k as isize,
                    },
                    1.0,
                    1,
                );
            }
            std::hint::black_box(&mut dst);
        }
    };
    let calls = calibrate(16, 1 << 30, seconds, product);
    GemmCeilingProbe {
        flops: best_rate(threads, trials, calls, (2 * m * n * k) as f64, product),
        threads,
        shape: (m, n, k),
    }
}

/// Memory bandwidth on `threads` threads over a `buffer_bytes` source (and as much destination): best of `trials`
/// copy passes and of `trials` read passes, each thread on its own slice.
pub fn probe_bandwidth(threads: usize, buffer_bytes: usize, trials: usize) -> BandwidthProbe {
    let threads = threads.max(1);
    let n = (buffer_bytes / 4).max(threads * 1024);
    let chunk = n.div_ceil(threads);
    // Pages are touched by their owning thread before timing (first-touch placement, no page faults timed).
    let mut src = vec![1f32; n];
    let mut dst = vec![0f32; n];
    let (mut copy_best, mut read_best) = (0f64, 0f64);
    for _ in 0..trials.max(1) {
        let pairs: Vec<(&[f32], &mut [f32])> =
            src.chunks(chunk).zip(dst.chunks_mut(chunk)).collect();
        let pairs: Vec<std::sync::Mutex<(&[f32], &mut [f32])>> =
            pairs.into_iter().map(std::sync::Mutex::new).collect();
        let dt = run_threads(pairs.len(), |t| {
            if let Ok(mut p) = pairs[t].lock() {
                let (s, d) = &mut *p;
                d.copy_from_slice(s);
            }
        });
        copy_best = copy_best.max(2.0 * (n * 4) as f64 / dt.as_secs_f64());
        let parts: Vec<&[f32]> = src.chunks(chunk).collect();
        let dt = run_threads(parts.len(), |t| {
            std::hint::black_box(read_sum(parts[t]));
        });
        read_best = read_best.max((n * 4) as f64 / dt.as_secs_f64());
        // Keep the passes from being optimised away across trials.
        src[0] = dst[n - 1];
    }
    BandwidthProbe {
        copy: copy_best,
        read: read_best,
        buffer_bytes: n * 4,
        threads,
    }
}

/// A vectorisable read of every element (16 partial sums).
fn read_sum(xs: &[f32]) -> f32 {
    crate::nn::cpu_kernels::sum(xs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_report_positive_plausible_figures() {
        let peak = probe_peak_flops(1, 0.01, 1);
        // Any machine that runs the tests does more than 100 MFLOP/s and less than 100 TFLOP/s on one thread.
        assert!(peak.flops > 1e8 && peak.flops < 1e14, "{peak:?}");
        // The GEMM does at most what the FMA units do (a margin for clock changes between the two probes).
        let gemm = probe_gemm_ceiling(1, 0.01, 1);
        assert!(
            gemm.flops > 1e8 && gemm.flops < 1.3 * peak.flops,
            "{gemm:?} vs {peak:?}"
        );
        let bw = probe_bandwidth(2, 8 << 20, 1);
        assert!(bw.copy > 1e8 && bw.read > 1e8 && bw.best() < 1e13, "{bw:?}");
        assert_eq!(bw.buffer_bytes, 8 << 20);
    }
}
