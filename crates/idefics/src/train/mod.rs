//! Training: data (collate, packing, mixture stream), what trains (trainable: frozen / full / LoRA / DoRA per
//! component), the loop (trainer), loss, optimizer, schedule, accumulation, checkpoints, PEFT files, export
//! and recipes.

// The frozen / adapter layers live in nn/, next to the model's other layers.
pub use crate::nn::{adapters, frozen};

pub mod accumulate;
pub mod atomic;
pub mod checkpoint;
pub mod collate;
pub mod data;
mod error;
pub mod export;
pub mod grad_check;
pub mod hf_checkpoint;
pub mod init;
pub mod loss;
pub mod optimizer;
pub mod packing;
pub mod peft;
pub mod recipe;
pub mod rng;
pub mod schedule;
pub mod siglip;
mod threads;
pub mod trainable;
pub mod trainer;

pub use error::TrainError;
