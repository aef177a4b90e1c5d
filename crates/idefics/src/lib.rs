//! idefics: Idefics2 vision-language models on candle.
//!
//! Data flows one way: files -> [`idefics_processor`] -> [`model`] -> generation -> CLI / server.

pub mod config;
pub mod error;
pub mod model;
pub mod nn;
pub mod weights;

pub use config::Idefics2Config;
pub use error::{Error, Result};
pub use model::{
    Idefics2ForConditionalGeneration, KvCache, LoadOptions, ModelInputs, PositionIdRule,
};

pub use idefics_eval as eval_metrics;
pub use idefics_processor as processor;
