//! idefics: Idefics2 vision-language models on candle.
//!
//! Data flows one way: files -> [`processor`] -> [`model`] -> [`generate`] -> CLI / server, and
//! [`pipeline`] is where they meet. [`train`] and evaluation call the same processor and model.

pub mod bench;
pub mod config;
pub mod error;
pub mod eval_runner;
pub mod generate;
pub mod hub;
pub mod model;
pub mod nn;
pub mod pipeline;
pub mod train;
pub mod weights;

pub use config::Idefics2Config;
pub use error::{Error, Result};
pub use model::{
    Idefics2ForConditionalGeneration, KvCache, LoadOptions, ModelInputs, PositionIdRule,
};

pub use idefics_eval as eval_metrics;
pub use idefics_processor as processor;
