//! glibc malloc settings for tensor workloads.
//!
//! With its defaults, glibc returns the top of the heap to the kernel whenever more than 128 KiB is free there
//! (`M_TRIM_THRESHOLD`), and serves blocks above a moving threshold with fresh `mmap`s. A training step allocates
//! and frees hundreds of tensors of a few hundred KiB to a few MiB, so most of them land on pages the kernel
//! has to fault in and zero again: about a fifth of a tiny-model step went to page faults
//! (`perf record`, `idefics bench-train`). Keeping freed memory in the process and serving blocks up to
//! 256 MiB from the heap makes the step 1.3x faster at the same peak RSS (`tools/bench/malloc_bench.sh`).
//! The cost: memory freed after the peak stays with the process until it exits.

/// Blocks up to this size come from the heap instead of their own `mmap`: above the largest activation of the
/// models we train here (the logits of a 150M-parameter batch are ~80 MiB).
const MMAP_THRESHOLD: i32 = 256 << 20;

/// Environment variables through which a user already tunes glibc malloc; any of them set leaves it alone.
const USER_SETTINGS: [&str; 4] = [
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "GLIBC_TUNABLES",
];

/// What [`tune`] did, for the debug log.
#[derive(Debug, PartialEq, Eq)]
pub enum Tuning {
    Applied,
    /// `IDEFICS_MALLOC=system`, or the user tunes malloc through glibc's own variables.
    LeftToUser,
    /// glibc refused a setting (its return value was 0).
    Refused,
    /// Not glibc: nothing to do.
    #[cfg_attr(all(target_os = "linux", target_env = "gnu"), allow(dead_code))]
    Unsupported,
}

/// Applies the settings unless the environment says otherwise. Call once, at start-up, before threads exist.
pub fn tune() -> Tuning {
    let user_tunes = std::env::var("IDEFICS_MALLOC").is_ok_and(|v| v == "system")
        || USER_SETTINGS.iter().any(|k| std::env::var_os(k).is_some());
    if user_tunes {
        return Tuning::LeftToUser;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> Tuning {
    // SAFETY: mallopt only changes allocator parameters; it is called before any other thread starts.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
    };
    if ok {
        Tuning::Applied
    } else {
        Tuning::Refused
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> Tuning {
    let _ = MMAP_THRESHOLD;
    Tuning::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_both_settings() {
        assert_eq!(apply(), Tuning::Applied);
    }
}
