//! Images: file bytes -> RGB pixels -> Idefics2 `pixel_values` / `pixel_attention_mask`, as transformers
//! computes them through `Idefics2Processor` with the PIL backend (idefics-spec.md §8).
//!
//! Pipeline: [`decode`] (format sniffing, limits, EXIF orientation, Pillow's conversion to RGB) ->
//! [`processor`] (split, Pillow-exact [`resize`], rescale/normalize, pad).

pub mod decode;
pub mod error;
pub mod processor;
pub mod resize;

pub use decode::{decode_image, decode_image_file, DecodeLimits, ImageFormatKind};
pub use error::ImageError;
pub use processor::{
    read_image_seq_len, Idefics2ImageProcessor, Idefics2ImageProcessorConfig, ImageBatch, ImageSize,
    NormalizeLut,
};
pub use resize::{resize, ResampleFilter};

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (`data.len() == height * width * 3`).
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl RgbImage {
    /// Wraps interleaved RGB bytes; fails if `data` does not hold exactly `height * width * 3` bytes.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self, ImageError> {
        let expected = width.checked_mul(height).and_then(|n| n.checked_mul(3));
        if expected != Some(data.len()) {
            return Err(ImageError::BufferSize { width, height, len: data.len() });
        }
        Ok(Self { width, height, data })
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Interleaved RGB bytes (HWC).
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// The bytes, consuming the image.
    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    /// The sub-image `[x0, x0 + w) x [y0, y0 + h)`; the caller keeps it inside the image.
    pub(crate) fn crop(&self, x0: usize, y0: usize, w: usize, h: usize) -> RgbImage {
        let mut data = Vec::with_capacity(w * h * 3);
        for y in y0..y0 + h {
            let start = (y * self.width + x0) * 3;
            data.extend_from_slice(&self.data[start..start + w * 3]);
        }
        RgbImage { width: w, height: h, data }
    }
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}
