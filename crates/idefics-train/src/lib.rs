//! idefics-train: training Idefics models on candle.
//!
//! Data (collate, packing, mixture stream), what trains (trainable: frozen / full / LoRA / DoRA per
//! component, plugged into the model's linear layers through `idefics::nn::LinearHook`), the loop (trainer),
//! loss, optimizer, schedule, accumulation, checkpoints, PEFT files, export, init, recipes and SigLIP
//! pre-training of the vision tower. The inference crates build without any of it.

pub mod accumulate;
pub mod adapters;
pub mod atomic;
pub mod checkpoint;
pub mod collate;
pub mod data;
mod error;
pub mod export;
pub mod frozen;
mod frozen_quant;
mod fused_lora;
pub mod grad_check;
pub mod hf_checkpoint;
pub mod init;
pub mod loss;
pub mod optimizer;
pub mod packing;
pub mod peft;
pub mod recipe;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod siglip;
mod threads;
pub mod train_loop;
pub mod trainable;
pub mod trainer;

pub use error::TrainError;
