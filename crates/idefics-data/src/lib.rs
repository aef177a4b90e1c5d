//! idefics-data: the data layer for training and evaluation (candle-free).
//!
//! files -> samples: [`readers`] stream The Cauldron conversations, image-text pairs and OBELICS-shaped
//! interleaved documents from parquet / JSONL, in a deterministic shuffled order with a resumable [`Cursor`].
//! [`writer`] writes the same layouts, and [`synth`] generates a synthetic dataset (shapes, OCR, documents,
//! charts) with short exact answers, so that training and evaluation can run without downloads.

pub mod error;
pub mod eval_rows;
pub mod plot;
pub mod readers;
pub mod rng;
pub mod sample;
pub mod synth;
pub mod writer;

pub use error::{DataError, Result};
pub use readers::{
    CauldronReader, Cursor, DatasetReader, ObelicsReader, PairReader, ReaderOptions, SampleKind,
};
pub use sample::{ChatSample, DocItem, ImageSource, ImageTextPair, InterleavedDocument, Turn};
pub use writer::{write_parquet, ParquetWriter, WriteKind};
