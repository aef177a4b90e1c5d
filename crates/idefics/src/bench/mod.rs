//! What limits a benchmark figure: the machine's measured peak arithmetic and memory bandwidth ([`machine`]), and
//! the work each phase of `idefics bench` does for a given checkpoint ([`work`]), so a time becomes a fraction of
//! the bound that applies (arithmetic for the vision tower and prefill, bandwidth for decoding); the measuring run
//! of `idefics bench` itself ([`inference`]) over a checkpoint of any family ([`model`]), and the report parts it
//! shares with `idefics bench-quant` ([`report`]).

pub mod gemv;
pub mod inference;
pub mod machine;
pub mod model;
pub mod quant;
pub mod report;
pub mod work;

pub use inference::{run as run_inference, BenchError, BenchOptions, BenchReport, BenchRow};

pub use machine::{
    probe_bandwidth, probe_gemm_ceiling, probe_peak_flops, BandwidthProbe, GemmCeilingProbe,
    PeakFlopsProbe,
};
pub use model::{BenchModel, VisionWork};
pub use work::{
    decode_bytes_per_token, pixel_shuffle_vision_flops, prefill_flops, vision_connector_flops,
};

/// The measured limits the phases of a benchmark are compared with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineLimits {
    pub peak: PeakFlopsProbe,
    pub gemm: GemmCeilingProbe,
    pub bandwidth: BandwidthProbe,
}

impl MachineLimits {
    /// Probes on `threads` threads: FMA loops and cache-resident GEMMs of ~0.3 s (best of 3), copy and read
    /// passes over 256 MiB (8x the largest L3 of current desktop and server parts; best of 3).
    pub fn measure(threads: usize) -> Self {
        Self {
            peak: probe_peak_flops(threads, 0.3, 3),
            gemm: probe_gemm_ceiling(threads, 0.3, 3),
            bandwidth: probe_bandwidth(threads, 256 << 20, 3),
        }
    }

    /// Achieved FLOP/s of `flops` in `seconds`, as a fraction of the measured peak.
    pub fn compute_fraction(&self, flops: f64, seconds: f64) -> f64 {
        flops / seconds / self.peak.flops
    }

    /// Achieved FLOP/s of `flops` in `seconds`, as a fraction of the GEMM's measured ceiling.
    pub fn gemm_fraction(&self, flops: f64, seconds: f64) -> f64 {
        flops / seconds / self.gemm.flops
    }

    /// Achieved bytes/s of `bytes` in `seconds`, as a fraction of the measured bandwidth.
    pub fn bandwidth_fraction(&self, bytes: f64, seconds: f64) -> f64 {
        bytes / seconds / self.bandwidth.best()
    }
}
