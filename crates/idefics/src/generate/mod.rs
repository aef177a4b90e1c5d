//! Generation: the decoding loop over the model, with sampling, stopping and streaming.

pub mod config;
pub mod detokenize;
pub mod engine;
pub mod sampling;
pub mod stopping;

pub use config::GenerationConfig;
pub use detokenize::IncrementalDecoder;
pub use sampling::{Sampler, SamplingError, SamplingParams};
pub use stopping::StopStrings;

pub use engine::{
    left_padded_batch, FinishReason, GeneratedSequence, GenerationRequest, Generator, RowResult,
};
