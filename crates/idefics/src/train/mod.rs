//! Training building blocks: loss, optimizer, LR schedule, gradient accumulation, checkpoints and
//! PEFT adapter files. The loop over the whole model composes these.

// The frozen / adapter layers live in nn/, next to the model's other layers.
pub use crate::nn::{adapters, frozen};

pub mod accumulate;
pub mod atomic;
pub mod checkpoint;
mod error;
pub mod grad_check;
pub mod hf_checkpoint;
pub mod init;
pub mod loss;
pub mod optimizer;
pub mod peft;
pub mod rng;
pub mod schedule;
pub mod siglip;

pub use error::TrainError;
