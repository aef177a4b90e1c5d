//! Errors of the data layer: every variant names the file / row / field at fault.

use std::path::PathBuf;

/// Result alias for the data layer.
pub type Result<T> = std::result::Result<T, DataError>;

/// What can go wrong while reading, validating, writing or generating data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: parquet: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: arrow: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow_schema::ArrowError,
    },
    /// The file's columns do not have the layout the reader expects.
    #[error("{path}: column `{column}`: {message}")]
    Schema {
        path: PathBuf,
        column: String,
        message: String,
    },
    /// One row is malformed (the stream continues with the next row).
    #[error("{path}: row {row}: {message}")]
    InvalidRow {
        path: PathBuf,
        row: usize,
        message: String,
    },
    /// Image bytes that no decoder accepts (training skips and counts these).
    #[error("image {origin}: cannot decode: {message}")]
    ImageDecode { origin: String, message: String },
    /// A saved cursor does not fit the dataset it is applied to.
    #[error("cursor does not match this dataset: {0}")]
    Cursor(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn schema(
        path: impl Into<PathBuf>,
        column: &str,
        message: impl Into<String>,
    ) -> Self {
        Self::Schema {
            path: path.into(),
            column: column.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn row(path: impl Into<PathBuf>, row: usize, message: impl Into<String>) -> Self {
        Self::InvalidRow {
            path: path.into(),
            row,
            message: message.into(),
        }
    }
}
