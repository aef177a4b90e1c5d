//! Animated GIF / WebP -> RGB frames with their timestamps, for SmolVLM2's video input (a GIF given where a video
//! is expected). transformers reads videos with torchcodec / PyAV, not Pillow, so there is no single reference for
//! GIF frames; frames here are the full composited canvas of each frame (what Pillow's `ImageSequence` yields),
//! converted to RGB by dropping alpha as `convert("RGB")` does. Checked against Pillow 12.3's `ImageSequence` on
//! the animated fixtures of tests/fixtures/images/files (crates/idefics-processor/tests/idefics3_parity.rs): GIF
//! frames are identical; lossy frames of an animated WebP differ by at most 1 per sample (image-webp's YUV -> RGB
//! rounding on the RGBA canvas path, not libwebp's).

use std::io::Cursor;

use ::image::codecs::gif::GifDecoder;
use ::image::codecs::webp::WebPDecoder;
use ::image::{AnimationDecoder, Frames, ImageDecoder};

use super::decode::{sniff_format, DecodeLimits, ImageFormatKind};
use super::{ImageError, RgbImage};

/// One frame of an animation.
#[derive(Debug, Clone, PartialEq)]
pub struct AnimationFrame {
    /// The composited canvas, alpha dropped.
    pub image: RgbImage,
    /// Seconds from the start of the animation at which the frame is shown (sum of the previous delays).
    pub timestamp: f64,
}

/// Every frame of an animated GIF or WebP (a still image gives one frame). The header's canvas size is checked
/// against `limits.max_pixels`, and so is the running total of decoded pixels, before each frame is kept.
pub fn decode_animation(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<Vec<AnimationFrame>, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooManyBytes {
            len: bytes.len(),
            max: limits.max_bytes,
        });
    }
    let format = sniff_format(bytes)?;
    let decode_err = |message: String| ImageError::Decode {
        format: format.name(),
        message,
    };
    let (frames, (w, h)): (Frames<'_>, (u32, u32)) = match format {
        ImageFormatKind::Gif => {
            let d = GifDecoder::new(Cursor::new(bytes)).map_err(|e| decode_err(e.to_string()))?;
            let dims = d.dimensions();
            check_pixels(dims, 1, limits)?;
            (d.into_frames(), dims)
        }
        ImageFormatKind::WebP => {
            let d = WebPDecoder::new(Cursor::new(bytes)).map_err(|e| decode_err(e.to_string()))?;
            let dims = d.dimensions();
            check_pixels(dims, 1, limits)?;
            if !d.has_animation() {
                let image = super::decode_image(bytes, limits)?;
                return Ok(vec![AnimationFrame {
                    image,
                    timestamp: 0.0,
                }]);
            }
            (d.into_frames(), dims)
        }
        _ => {
            let image = super::decode_image(bytes, limits)?;
            return Ok(vec![AnimationFrame {
                image,
                timestamp: 0.0,
            }]);
        }
    };
    let mut out = Vec::new();
    let mut t_ms = 0.0f64;
    for frame in frames {
        let frame = frame.map_err(|e| decode_err(e.to_string()))?;
        check_pixels((w, h), out.len() as u64 + 1, limits)?;
        let (numer, denom) = frame.delay().numer_denom_ms();
        let buffer = frame.into_buffer();
        let (fw, fh) = buffer.dimensions();
        let rgb: Vec<u8> = buffer
            .as_raw()
            .chunks_exact(4)
            .flat_map(|px| [px[0], px[1], px[2]])
            .collect();
        out.push(AnimationFrame {
            image: RgbImage::new(fw as usize, fh as usize, rgb)?,
            timestamp: t_ms / 1000.0,
        });
        if denom > 0 {
            t_ms += f64::from(numer) / f64::from(denom);
        }
    }
    if out.is_empty() {
        return Err(decode_err("the animation has no frames".into()));
    }
    Ok(out)
}

fn check_pixels((w, h): (u32, u32), frames: u64, limits: &DecodeLimits) -> Result<(), ImageError> {
    let pixels = u64::from(w) * u64::from(h) * frames;
    if w == 0 || h == 0 {
        return Err(ImageError::ZeroSize {
            width: w as usize,
            height: h as usize,
        });
    }
    if pixels > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            width: u64::from(w),
            height: u64::from(h) * frames,
            pixels,
            max_pixels: limits.max_pixels,
        });
    }
    Ok(())
}
