//! How candle's CPU work is split between its two thread pools.
//!
//! candle 0.11 runs its element-wise ops (adds, copies, the backward pass's gradient sums) and its quantized
//! products (`k_quants::matmul`, what `--quant q4k / q6k` decode with) on a pool of its own (`CANDLE_NUM_THREADS` threads,
//! by default as many as rayon's), whose workers spin up to 25,000 pause loops after each op before they park; its
//! GEMMs (the `gemm` crate) and this project's CPU kernels run on rayon's pool.
//!
//! Training: with both pools as wide as the machine, a candle worker spinning between ops takes a core from
//! rayon's workers in the middle of a GEMM. On the 2-core VM (three alternated pairs each, `idefics bench-train` on
//! bench-150m and the tiny model) running candle's element-wise ops on the calling thread alone made training
//! steps 7-13 % faster (bench-150m full and LoRA, tiny full: 9 of 9 pairs; tiny LoRA 1-3 %).
//!
//! Inference keeps candle's pool: a one-thread pool makes each of candle's quantized decode products
//! single-threaded (bench-150m decoding, when every type used them: q8_0 fell from 1.4-1.8x to 1.2x of f32, q4k
//! from 2.3-2.8x to 1.6-1.9x), and f32 inference moved within noise either way. A `CANDLE_NUM_THREADS` set by the
//! user is left alone.

/// The variable candle reads once, when its pool is first used.
const CANDLE_NUM_THREADS: &str = "CANDLE_NUM_THREADS";

/// What the command mostly runs, which decides the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Forward and backward passes with an optimizer (`train`, `bench-train`, `pretrain-vision`).
    Training,
    /// Everything else: generation, evaluation, benchmarks of inference, data tools.
    Inference,
}

/// What [`tune`] did, for the debug log.
#[derive(Debug, PartialEq, Eq)]
pub enum Tuning {
    /// candle's element-wise ops run on the calling thread.
    ElementwiseOnCaller,
    /// candle's pool keeps its default width (quantized products run on it).
    CandleDefault,
    /// The user chose (`CANDLE_NUM_THREADS` was set).
    LeftToUser,
}

/// The value to give `CANDLE_NUM_THREADS` for `workload` when the user's is `user`: none when the user set one
/// or when candle's default suits the workload.
fn decide(workload: Workload, user: Option<std::ffi::OsString>) -> Option<&'static str> {
    match (user, workload) {
        (Some(_), _) | (None, Workload::Inference) => None,
        (None, Workload::Training) => Some("1"),
    }
}

/// Applies the split. Call once, at start-up, before any thread exists and before candle's first op.
pub fn tune(workload: Workload) -> Tuning {
    let user = std::env::var_os(CANDLE_NUM_THREADS);
    let user_set = user.is_some();
    match decide(workload, user) {
        Some(value) => {
            // Start-up, single-threaded: no other thread reads the environment concurrently.
            std::env::set_var(CANDLE_NUM_THREADS, value);
            Tuning::ElementwiseOnCaller
        }
        None if user_set => Tuning::LeftToUser,
        None => Tuning::CandleDefault,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_runs_candle_ops_on_the_caller_and_a_users_setting_is_kept() {
        assert_eq!(decide(Workload::Training, None), Some("1"));
        assert_eq!(decide(Workload::Training, Some("4".into())), None);
        assert_eq!(decide(Workload::Training, Some("".into())), None);
    }

    #[test]
    fn inference_keeps_candles_pool_for_the_quantized_products() {
        assert_eq!(decide(Workload::Inference, None), None);
        assert_eq!(decide(Workload::Inference, Some("1".into())), None);
    }
}
