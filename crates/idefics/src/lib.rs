//! idefics: Idefics2, Idefics3 and SmolVLM vision-language models on candle.
//!
//! Data flows one way: files -> [`processor`] -> [`model`] -> [`generate`] -> CLI / server, and
//! [`pipeline`] is where they meet. Training (`idefics-train`) and evaluation (`idefics-eval`'s runner) are
//! crates above this one and call the same processor and model.

pub mod bench;
pub mod config;
mod config_file;
pub mod error;
pub mod generate;
pub mod hub;
pub mod model;
pub mod nn;
pub mod pipeline;
pub mod quant;
pub mod weights;

pub use config::Idefics2Config;
pub use error::{Error, Result};
pub use model::{
    Idefics2ForConditionalGeneration, Idefics3ForConditionalGeneration, KvCache, LoadOptions,
    ModelFamily, ModelInputs, PositionIdRule, VlmModel,
};

pub use idefics_processor as processor;
