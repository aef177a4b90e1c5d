//! How candle's CPU work is split between its two thread pools.
//!
//! candle 0.11 runs its element-wise ops (adds, copies, the backward pass's gradient sums) on a pool of its own
//! (`CANDLE_NUM_THREADS` threads, by default as many as rayon's), whose workers spin up to 25,000 pause loops after
//! each op before they park; its GEMMs (the `gemm` crate) and this project's CPU kernels run on rayon's pool. With
//! both pools as wide as the machine, a candle worker spinning between ops takes a core from rayon's workers in the
//! middle of a GEMM. On the 2-core VM (three alternated pairs each, `idefics bench-train` on bench-150m and the
//! tiny model, `idefics bench` on bench-150m and the SmolVLM-256M shape), running candle's element-wise ops on the
//! calling thread alone made training steps 7-13 % faster (bench-150m full and LoRA, tiny full: 9 of 9 pairs;
//! tiny LoRA 1-3 %) and left inference within noise. A `CANDLE_NUM_THREADS` set by the user is left alone.

/// The variable candle reads once, when its pool is first used.
const CANDLE_NUM_THREADS: &str = "CANDLE_NUM_THREADS";

/// What [`tune`] did, for the debug log.
#[derive(Debug, PartialEq, Eq)]
pub enum Tuning {
    /// candle's element-wise ops run on the calling thread.
    ElementwiseOnCaller,
    /// The user chose (`CANDLE_NUM_THREADS` was set).
    LeftToUser,
}

/// The value to give `CANDLE_NUM_THREADS` when the user's is `user`: none when the user set one.
fn decide(user: Option<std::ffi::OsString>) -> Option<&'static str> {
    match user {
        Some(_) => None,
        None => Some("1"),
    }
}

/// Applies the split. Call once, at start-up, before any thread exists and before candle's first op.
pub fn tune() -> Tuning {
    match decide(std::env::var_os(CANDLE_NUM_THREADS)) {
        Some(value) => {
            // Start-up, single-threaded: no other thread reads the environment concurrently.
            std::env::set_var(CANDLE_NUM_THREADS, value);
            Tuning::ElementwiseOnCaller
        }
        None => Tuning::LeftToUser,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_setting_is_kept() {
        assert_eq!(decide(None), Some("1"));
        assert_eq!(decide(Some("4".into())), None);
        assert_eq!(decide(Some("".into())), None);
    }
}
