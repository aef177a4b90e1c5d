//! Errors of the image pipeline: one line each, naming the file / format / field at fault.

use std::path::PathBuf;

/// Everything that can go wrong between image bytes and `pixel_values`.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image data is empty (0 bytes)")]
    Empty,
    #[error("image data is {len} bytes, more than the limit of {max} bytes")]
    TooManyBytes { len: usize, max: usize },
    #[error("unsupported image format {format}; supported formats: JPEG, PNG, WebP, GIF, BMP")]
    UnsupportedFormat { format: &'static str },
    #[error("unrecognised image data (not JPEG, PNG, WebP, GIF or BMP; first bytes {head})")]
    UnknownFormat { head: String },
    #[error("image is {width}x{height} = {pixels} pixels, more than the limit of {max_pixels} pixels (decompression bomb guard)")]
    TooManyPixels {
        width: u64,
        height: u64,
        pixels: u64,
        max_pixels: u64,
    },
    #[error("image has zero width or height ({width}x{height})")]
    ZeroSize { width: usize, height: usize },
    #[error("corrupt or truncated {format} data: {message}")]
    Decode {
        format: &'static str,
        message: String,
    },
    #[error("unsupported {format} feature: {message}")]
    UnsupportedFeature {
        format: &'static str,
        message: String,
    },
    #[error("RGB buffer of {len} bytes does not match {width}x{height}x3")]
    BufferSize {
        width: usize,
        height: usize,
        len: usize,
    },
    #[error("cannot resize to {width}x{height}: target sides must be at least 1 pixel")]
    ResizeTarget { width: usize, height: usize },
    #[error("image {width}x{height} is too small to split into 4 crops (do_image_splitting needs both sides >= 2 pixels; transformers fails with ZeroDivisionError here)")]
    TooSmallToSplit { width: usize, height: usize },
    #[error("invalid image processor config: {field}: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    #[error("cannot parse {path}: {message}")]
    ConfigFile { path: PathBuf, message: String },
    #[error("no image processor settings in {dir} (looked for preprocessor_config.json and the `image_processor` object of processor_config.json)")]
    NoConfig { dir: PathBuf },
    #[error("padding is off (do_pad=false) but the frames differ in size or count: {message}")]
    Unpadded { message: String },
}
