//! Which implementation runs where this crate has CPU kernels of its own: the forward-only inference kernels
//! ([`super::cpu_kernels`]: fused attention, decoding GEMV) and the training kernels with their own backward
//! ([`super::train_kernels`]: norms, activations, rope, softmax), and the quantized matrix-vector products of
//! decoding ([`crate::quant::kernels`]). The first two default to the kernels; `Composed` runs candle's composed
//! ops, which the kernels are tested against (benchmarks, bisecting a numerical difference). The quantized products
//! default per type to whichever decoded faster on an idle machine (docs/quantization.md: ours for q8_0 and bf16,
//! candle's `k_quants::matmul` for q4k and q6k); `fused` or `composed` forces one for every type.
//!
//! The choice is made by the program (`idefics bench --kernels`, `idefics bench-train --kernels`) through
//! [`set_kernels`], and read here only. It is one setting for the process, not a model option, because the ops
//! that consult it (`Linear`, `RmsNorm`, `Activation`, ...) carry no per-model handle.
//!
//! Debugging override: the environment variables `IDEFICS_CPU_KERNELS=composed|fused`,
//! `IDEFICS_TRAIN_KERNELS=composed|fused` and `IDEFICS_QUANT_KERNELS=composed|fused`, read once here, win over the program's choice (other values are
//! ignored). They exist to switch a process that has no `--kernels` flag (a test, the server).

use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// Our own kernels or candle's composed ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelChoice {
    #[default]
    Fused,
    Composed,
}

impl FromStr for KernelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fused" => Ok(Self::Fused),
            "composed" => Ok(Self::Composed),
            other => Err(format!(
                "kernels {other:?}: use fused (this crate's CPU kernels) or composed (candle's ops)"
            )),
        }
    }
}

/// Which kernel family a choice applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFamily {
    /// [`super::cpu_kernels`] (inference, no autograd).
    Inference,
    /// [`super::train_kernels`] (autograd on the CPU).
    Training,
    /// [`crate::quant::kernels`] (`Composed`: candle's `k_quants::matmul`).
    Quantized,
}

impl KernelFamily {
    fn env_var(self) -> &'static str {
        match self {
            Self::Inference => "IDEFICS_CPU_KERNELS",
            Self::Training => "IDEFICS_TRAIN_KERNELS",
            Self::Quantized => "IDEFICS_QUANT_KERNELS",
        }
    }

    fn slot(self) -> &'static AtomicU8 {
        static INFERENCE: AtomicU8 = AtomicU8::new(FUSED);
        static TRAINING: AtomicU8 = AtomicU8::new(FUSED);
        // Per quant type unless chosen (`crate::quant::DecodePath::best`).
        static QUANTIZED: AtomicU8 = AtomicU8::new(UNSET);
        match self {
            Self::Inference => &INFERENCE,
            Self::Training => &TRAINING,
            Self::Quantized => &QUANTIZED,
        }
    }

    /// The environment override, read once per family.
    fn env_override(self) -> Option<KernelChoice> {
        static INFERENCE: OnceLock<Option<KernelChoice>> = OnceLock::new();
        static TRAINING: OnceLock<Option<KernelChoice>> = OnceLock::new();
        static QUANTIZED: OnceLock<Option<KernelChoice>> = OnceLock::new();
        let cell = match self {
            Self::Inference => &INFERENCE,
            Self::Training => &TRAINING,
            Self::Quantized => &QUANTIZED,
        };
        *cell.get_or_init(|| {
            std::env::var(self.env_var())
                .ok()
                .and_then(|v| v.parse().ok())
        })
    }
}

const FUSED: u8 = 0;
const COMPOSED: u8 = 1;
/// Neither the program nor the environment chose (only the quantized family starts so).
const UNSET: u8 = 2;

/// Chooses the implementation of one kernel family for this process (the environment override still wins).
pub fn set_kernels(family: KernelFamily, choice: KernelChoice) {
    let v = match choice {
        KernelChoice::Fused => FUSED,
        KernelChoice::Composed => COMPOSED,
    };
    family.slot().store(v, Ordering::Relaxed);
}

/// The implementation in force for a kernel family: the environment override, else the program's choice, else
/// [`KernelChoice::Fused`].
pub fn kernels(family: KernelFamily) -> KernelChoice {
    chosen(family).unwrap_or(KernelChoice::Fused)
}

/// The environment override, else the program's choice; `None` where neither chose (the quantized family's
/// default, decided per type by its caller).
pub fn chosen(family: KernelFamily) -> Option<KernelChoice> {
    if let Some(forced) = family.env_override() {
        return Some(forced);
    }
    match family.slot().load(Ordering::Relaxed) {
        COMPOSED => Some(KernelChoice::Composed),
        FUSED => Some(KernelChoice::Fused),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_names_and_refuses_others() {
        assert_eq!("fused".parse(), Ok(KernelChoice::Fused));
        assert_eq!("composed".parse(), Ok(KernelChoice::Composed));
        assert!("fast"
            .parse::<KernelChoice>()
            .unwrap_err()
            .contains("fused"));
    }
}
