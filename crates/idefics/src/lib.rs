//! idefics: Idefics2 vision-language models on candle.
//!
//! Data flows one way: files -> [`idefics_processor`] -> [`model`] -> generation -> CLI / server.

pub use idefics_eval as eval_metrics;
pub use idefics_processor as processor;
pub mod train;
