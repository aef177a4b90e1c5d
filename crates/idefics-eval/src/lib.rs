//! Benchmark metrics, each computed as its official scorer computes it, plus what an evaluation run needs
//! around them: benchmark data readers, the paper's prompts, the predictions file and the report.
//!
//! Pipeline place: data readers -> [`prompt`] -> (generation, in `idefics`) -> [`predictions`] ->
//! [`scoring`] -> [`report`]. Candle-free by default, so scores can be recomputed without a model
//! (`idefics eval --rescore`); the `runner` feature adds `runner`, which drives an `idefics` pipeline over a
//! data set.
//!
//! One file per official scorer: [`vqa`] (GT-Vision-Lab/VQA), [`anls`] (RRC ANLS), [`relaxed`]
//! (pix2struct ChartQA), [`choice`] (MMMU letter extraction), [`open`] (MMMU free-form answers), [`exact`],
//! [`cider`] (pycocoevalcap CIDEr-D) with its tokeniser [`ptb`].

pub mod anls;
pub mod choice;
pub mod cider;
pub mod circular;
pub mod control;
pub mod data;
pub mod exact;
pub mod metric;
pub mod open;
pub mod predictions;
pub mod prompt;
pub mod ptb;
pub mod pytext;
pub mod relaxed;
pub mod report;
#[cfg(feature = "runner")]
pub mod runner;
pub mod scoring;
pub mod vqa;

pub use data::{EvalSample, ImageSource};
pub use metric::Metric;
pub use predictions::{read_predictions, vqa_results_json, Prediction, PredictionWriter};
pub use report::{Baseline, GroupReport, Report, RunInfo, TaskReport};
pub use scoring::{build_report, rescore, score_groups, score_predictions};

use std::path::PathBuf;

/// Errors of this crate: each names the file (and line) or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl EvalError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, EvalError>;
