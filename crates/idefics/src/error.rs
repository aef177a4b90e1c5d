//! Library error type: every user-facing failure is one line naming the field, tensor or file.

/// Errors of the idefics library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// config.json is unreadable, of another model, or holds an unsupported value.
    #[error("config: {0}")]
    Config(String),
    /// A checkpoint file or tensor is missing, mis-shaped, of a wrong dtype or truncated.
    #[error("weights: {0}")]
    Weights(String),
    /// Model inputs are inconsistent (shapes, image-token counts, masks).
    #[error("inputs: {0}")]
    Input(String),
    /// The tokenizer, chat template or processor configuration refused the prompt.
    #[error("prompt: {0}")]
    Prompt(#[from] idefics_processor::PromptError),
    /// An image could not be decoded or processed.
    #[error("image: {0}")]
    Image(#[from] idefics_processor::ImageError),
    /// The checkpoint's processor could not be built or refused a prompt (family-level errors).
    #[error("processor: {0}")]
    Processor(#[from] idefics_processor::ProcessorError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Reading a file failed.
    // The io error is part of the message, not a `source`, so that `{:#}` chains do not print it twice.
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
}

/// Result with the library [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O failure on `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            err: source,
        }
    }
}
