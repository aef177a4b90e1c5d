//! Images: file bytes -> RGB pixels -> `pixel_values` / `pixel_attention_mask`, as transformers computes them
//! through `Idefics2Processor` / `Idefics3Processor` / `SmolVLMProcessor` with the PIL backend.
//!
//! Pipeline: [`decode`] (format sniffing, limits, EXIF orientation, Pillow's conversion to RGB) ->
//! [`processor`] (Idefics2: split, Pillow-exact [`resize`], rescale/normalize, pad) or [`idefics3`]
//! (Idefics3 / SmolVLM: longest-edge resize, tiles + global image, rescale/normalize, pad).

pub mod animation;
pub mod decode;
pub mod error;
pub mod idefics3;
mod jpeg;
pub mod processor;
pub mod resize;
mod transparency;
mod truncation;

pub use animation::{decode_animation, AnimationFrame};
pub use decode::{decode_image, decode_image_file, DecodeLimits, ImageFormatKind};
pub use error::ImageError;
pub use idefics3::{
    Idefics3ImageBatch, Idefics3ImageProcessor, Idefics3ImageProcessorConfig, TileGrid,
};
pub use processor::{
    read_image_seq_len, Idefics2ImageProcessor, Idefics2ImageProcessorConfig, ImageBatch,
    ImageSize, NormalizeLut,
};
pub use resize::{resize, ResampleFilter};

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (`data.len() == height * width * 3`).
///
/// `transparent_color` mirrors the `info["transparency"]` colour that Pillow keeps on an RGB image converted
/// from a palette / grey / RGB image with a single transparent colour (PNG tRNS, GIF): the image
/// processor's `convert_to_rgb` then turns every pixel of that colour white (see [`processor`]).
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    data: Vec<u8>,
    transparent_color: Option<[u8; 3]>,
}

impl RgbImage {
    /// Wraps interleaved RGB bytes; fails if `data` does not hold exactly `height * width * 3` bytes.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self, ImageError> {
        let expected = width.checked_mul(height).and_then(|n| n.checked_mul(3));
        if expected != Some(data.len()) {
            return Err(ImageError::BufferSize {
                width,
                height,
                len: data.len(),
            });
        }
        Ok(Self {
            width,
            height,
            data,
            transparent_color: None,
        })
    }

    /// The same pixels, with a transparent colour key (Pillow's `info["transparency"]` after `convert("RGB")`).
    pub fn with_transparent_color(mut self, color: Option<[u8; 3]>) -> Self {
        self.transparent_color = color;
        self
    }

    /// The transparent colour key, if the source format declared one.
    pub fn transparent_color(&self) -> Option<[u8; 3]> {
        self.transparent_color
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
        RgbImage {
            width: w,
            height: h,
            data,
            transparent_color: self.transparent_color,
        }
    }
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}
