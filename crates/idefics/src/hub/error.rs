//! Errors of Hub resolution and download.

use std::path::Path;

/// Errors of Hub resolution and download. Each names the model / file / path concerned.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The model id is not `name` or `org/name` made of letters, digits, `-`, `_`, `.`.
    #[error("invalid model id {0:?}: expected \"org/name\" (or a local directory)")]
    InvalidModelId(String),
    /// Offline mode and the cache lacks something.
    #[error("{repo}@{revision}: {missing} not in the cache at {cache} and HF_HUB_OFFLINE=1 is set (download it once online)")]
    Offline {
        /// Model id.
        repo: String,
        /// Requested revision.
        revision: String,
        /// Cache root.
        cache: String,
        /// What is missing.
        missing: String,
    },
    /// A required file does not exist in the repository (or the repository does not).
    #[error("{repo}@{revision}: required file {file} not found on the Hub ({url})")]
    NotFound {
        /// Model id.
        repo: String,
        /// Requested revision.
        revision: String,
        /// File name.
        file: String,
        /// URL asked.
        url: String,
    },
    /// 401 / 403: private or gated repository.
    #[error("{repo}: access denied (HTTP {status}) for {file}; the model may be gated or private: accept its terms on the Hub and set HF_TOKEN")]
    Unauthorized {
        /// Model id.
        repo: String,
        /// File name.
        file: String,
        /// HTTP status.
        status: u16,
    },
    /// Any other unexpected HTTP status.
    #[error("HTTP {status} for {url}")]
    Http {
        /// URL asked.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// Connection / transfer failure (a partial download is kept for resuming).
    #[error("network error for {url}: {message}")]
    Network {
        /// URL asked.
        url: String,
        /// Cause.
        message: String,
    },
    /// The Hub's answer lacks something we need (etag, commit).
    #[error("unexpected Hub response for {url}: {message}")]
    BadResponse {
        /// URL asked.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// Downloaded size differs from the announced size (the partial file is removed).
    #[error("{file}: downloaded {actual} bytes, the Hub announced {expected}")]
    SizeMismatch {
        /// File name.
        file: String,
        /// Announced size.
        expected: u64,
        /// Received size.
        actual: u64,
    },
    /// sha256 of the downloaded bytes differs from the Hub's etag (the partial file is removed).
    #[error(
        "{file}: sha256 {actual} does not match the Hub's {expected}; the download was discarded"
    )]
    HashMismatch {
        /// File name.
        file: String,
        /// sha256 announced.
        expected: String,
        /// sha256 received.
        actual: String,
    },
    /// A cache file could not be read / written.
    #[error("{path}: {source}")]
    Io {
        /// Path concerned.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// model.safetensors.index.json is not valid.
    #[error("{file}: {message}")]
    BadIndex {
        /// File name.
        file: String,
        /// What was wrong.
        message: String,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |source| HubError::Io {
        path: path.display().to_string(),
        source,
    }
}
