//! Image bytes -> upright 8-bit RGB, as transformers' `load_image` produces it:
//! PIL open -> `ImageOps.exif_transpose` -> plain `convert("RGB")`.
//!
//! Pillow's conversion rules matched here: alpha is dropped (not composited over white: `load_image` does
//! a plain convert, so the image processor's composite never sees alpha); grey is replicated; palettes
//! are looked up (transparency ignored); 16-bit RGB(A)/LA samples keep their high byte; 16-bit grey
//! (PIL mode "I;16") is **clipped** to 255 (`min(v, 255)`, Pillow's I;16 -> RGB rule; a mid-grey
//! 16-bit PNG becomes white, exactly as in transformers); CMYK JPEGs use the Adobe-inverted
//! `c * k / 255` conversion that both Pillow and zune-jpeg apply.
//! Formats are sniffed from the bytes, the header's dimensions are checked against a pixel cap before any
//! pixel is decoded (decompression bombs), and every failure is an [`ImageError`], never a panic.

use std::io::Cursor;
use std::path::Path;

use ::image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use super::{jpeg, transparency, truncation, ImageError, RgbImage};

/// Guards applied before and during decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted `width * height`, checked on the header before decoding.
    /// Default: Pillow's `DecompressionBombError` threshold (2 x `Image.MAX_IMAGE_PIXELS` = 178,956,970),
    /// so every image transformers accepts is accepted.
    pub max_pixels: u64,
    /// Largest accepted encoded size in bytes. Default: 256 MiB.
    pub max_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 178_956_970,
            max_bytes: 256 << 20,
        }
    }
}

/// The container formats recognised from the first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormatKind {
    /// JPEG (baseline, progressive, grey, CMYK/YCCK), via the libjpeg-turbo port in `image::jpeg`.
    Jpeg,
    /// PNG (all colour types and bit depths, interlaced).
    Png,
    /// GIF (first frame).
    Gif,
    /// WebP (lossy, lossless, alpha; first frame of an animation).
    WebP,
    /// BMP.
    Bmp,
}

impl ImageFormatKind {
    /// The format's usual name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
            Self::Gif => "GIF",
            Self::WebP => "WebP",
            Self::Bmp => "BMP",
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            Self::Jpeg => ImageFormat::Jpeg,
            Self::Png => ImageFormat::Png,
            Self::Gif => ImageFormat::Gif,
            Self::WebP => ImageFormat::WebP,
            Self::Bmp => ImageFormat::Bmp,
        }
    }
}

/// Identifies the format from magic bytes: a supported one, or an error naming the unsupported one.
pub fn sniff_format(bytes: &[u8]) -> Result<ImageFormatKind, ImageError> {
    let starts = |m: &[u8]| bytes.starts_with(m);
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if starts(&[0xFF, 0xD8, 0xFF]) {
        return Ok(ImageFormatKind::Jpeg);
    }
    if starts(b"\x89PNG\r\n\x1a\n") {
        return Ok(ImageFormatKind::Png);
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return Ok(ImageFormatKind::Gif);
    }
    if starts(b"BM") && bytes.len() >= 14 {
        return Ok(ImageFormatKind::Bmp);
    }
    if starts(b"RIFF") {
        return match bytes.get(8..12) {
            Some(b"WEBP") => Ok(ImageFormatKind::WebP),
            Some(b"WAVE") => Err(ImageError::UnsupportedFormat {
                format: "RIFF/WAVE (audio, not an image)",
            }),
            Some(b"AVI ") => Err(ImageError::UnsupportedFormat {
                format: "RIFF/AVI (video, not an image)",
            }),
            _ => Err(ImageError::UnsupportedFormat {
                format: "RIFF container (not WebP)",
            }),
        };
    }
    let unsupported = |format| Err(ImageError::UnsupportedFormat { format });
    if starts(b"II*\0") || starts(b"MM\0*") || starts(b"II+\0") || starts(b"MM\0+") {
        return unsupported("TIFF");
    }
    if bytes.get(4..8) == Some(b"ftyp") {
        let brands = bytes.get(8..bytes.len().min(64)).unwrap_or_default();
        let has = |b: &[u8]| brands.windows(4).any(|w| w == b);
        if has(b"avif") || has(b"avis") {
            return unsupported("AVIF");
        }
        if has(b"heic")
            || has(b"heix")
            || has(b"hevc")
            || has(b"heim")
            || has(b"heis")
            || has(b"mif1")
        {
            return unsupported("HEIC/HEIF");
        }
        return unsupported("ISO media (MP4/MOV/HEIF family)");
    }
    if starts(&[0xFF, 0x0A]) || starts(b"\0\0\0\x0cJXL \r\n\x87\n") {
        return unsupported("JPEG XL");
    }
    if starts(b"\0\0\0\x0cjP  \r\n\x87\n") || starts(&[0xFF, 0x4F, 0xFF, 0x51]) {
        return unsupported("JPEG 2000");
    }
    if starts(&[0, 0, 1, 0]) {
        return unsupported("ICO");
    }
    if starts(b"qoif") {
        return unsupported("QOI");
    }
    if starts(b"8BPS") {
        return unsupported("PSD");
    }
    if starts(b"%PDF") {
        return unsupported("PDF");
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).to_ascii_lowercase();
    if text.contains("<svg") {
        return unsupported("SVG");
    }
    let head = bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    Err(ImageError::UnknownFormat { head })
}

/// Reads and decodes an image file (see [`decode_image`]).
pub fn decode_image_file(path: &Path, limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    let len = std::fs::metadata(path)
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if len > limits.max_bytes as u64 {
        return Err(ImageError::TooManyBytes {
            len: len as usize,
            max: limits.max_bytes,
        });
    }
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_image(&bytes, limits)
}

/// Decodes JPEG / PNG / WebP / GIF (first frame) / BMP bytes to upright RGB, as transformers' `load_image`.
pub fn decode_image(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooManyBytes {
            len: bytes.len(),
            max: limits.max_bytes,
        });
    }
    let kind = sniff_format(bytes)?;
    let format = kind.name();
    // Third-party decoders on hostile bytes: turn a panic into an error rather than take the caller down.
    std::panic::catch_unwind(|| decode_sniffed(bytes, kind, limits)).unwrap_or_else(|_| {
        Err(ImageError::Decode {
            format,
            message: "the decoder panicked on this data".into(),
        })
    })
}

fn decode_sniffed(
    bytes: &[u8],
    kind: ImageFormatKind,
    limits: &DecodeLimits,
) -> Result<RgbImage, ImageError> {
    let format = kind.name();
    let bytes = match kind {
        ImageFormatKind::Jpeg => return decode_jpeg(bytes, limits),
        ImageFormatKind::WebP => truncation::check_webp(bytes)?,
        ImageFormatKind::Gif => {
            truncation::check_gif(bytes, limits.max_pixels)?;
            bytes
        }
        ImageFormatKind::Png | ImageFormatKind::Bmp => bytes,
    };
    let reader = ImageReader::with_format(Cursor::new(bytes), kind.image_format());
    let mut decoder = reader.into_decoder().map_err(|e| map_err(format, e))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            width: width.into(),
            height: height.into(),
            pixels,
            max_pixels: limits.max_pixels,
        });
    }
    if pixels == 0 {
        return Err(ImageError::ZeroSize {
            width: width as usize,
            height: height as usize,
        });
    }
    let mut image_limits = ::image::Limits::default();
    // Up to 8 bytes per pixel (16-bit RGBA) plus decoder scratch; the pixel cap above is the real guard.
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    decoder
        .set_limits(image_limits)
        .map_err(|e| map_err(format, e))?;
    // Malformed EXIF must not fail the decode (Pillow would raise in some cases; we keep the pixels as stored).
    let orientation = decoder.orientation().unwrap_or_else(|e| {
        tracing::warn!("ignoring unreadable EXIF orientation in {format} image: {e}");
        ::image::metadata::Orientation::NoTransforms
    });
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| map_err(format, e))?;
    // `ImageOps.exif_transpose`: orientation 2-8 -> the matching flip / rotation, before RGB conversion.
    img.apply_orientation(orientation);
    let key = match kind {
        ImageFormatKind::Png => transparency::png_color_key(bytes),
        ImageFormatKind::Gif => transparency::gif_color_key(bytes),
        _ => None,
    };
    Ok(to_rgb_like_pillow(img, format)?.with_transparent_color(key))
}

/// JPEG through the libjpeg-turbo port of [`super::jpeg`] (bit-exact with Pillow), then EXIF orientation.
fn decode_jpeg(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    use super::jpeg::Fail;
    let format = "JPEG";
    let decoded = jpeg::decode(bytes, limits.max_pixels).map_err(|e| match e {
        Fail::Truncated => ImageError::Decode {
            format,
            message: "image file is truncated (the data ends before the image does)".into(),
        },
        Fail::Corrupt(message) => ImageError::Decode { format, message },
        Fail::Unsupported(message) => ImageError::UnsupportedFeature { format, message },
        Fail::ZeroSize(width, height) => ImageError::ZeroSize { width, height },
        Fail::TooManyPixels(width, height) => ImageError::TooManyPixels {
            width: width as u64,
            height: height as u64,
            pixels: width as u64 * height as u64,
            max_pixels: limits.max_pixels,
        },
    })?;
    if decoded.warnings > 0 {
        tracing::warn!(
            "JPEG data is corrupt ({} problems libjpeg decodes through); decoded as Pillow decodes it",
            decoded.warnings
        );
    }
    let (w, h) = (decoded.width, decoded.height);
    tracing::debug!("JPEG {w}x{h}, Pillow mode {:?}", decoded.mode);
    let orientation = jpeg::orientation(decoded.exif.as_deref(), decoded.xmp.as_deref())
        .and_then(::image::metadata::Orientation::from_exif)
        .unwrap_or(::image::metadata::Orientation::NoTransforms);
    if orientation == ::image::metadata::Orientation::NoTransforms {
        return RgbImage::new(w, h, decoded.rgb);
    }
    let buffer = ::image::RgbImage::from_raw(w as u32, h as u32, decoded.rgb)
        .expect("the decoder returns width * height * 3 bytes");
    let mut img = DynamicImage::ImageRgb8(buffer);
    img.apply_orientation(orientation);
    to_rgb_like_pillow(img, format)
}

/// PIL `convert("RGB")` semantics for every pixel layout the enabled decoders produce.
fn to_rgb_like_pillow(img: DynamicImage, format: &'static str) -> Result<RgbImage, ImageError> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data: Vec<u8> = match img {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => b
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        DynamicImage::ImageLuma8(b) => b.as_raw().iter().flat_map(|&v| [v, v, v]).collect(),
        DynamicImage::ImageLumaA8(b) => b
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        // PIL opens 16-bit grey PNGs as "I;16" and converts to RGB by clipping, not scaling.
        DynamicImage::ImageLuma16(b) => b
            .as_raw()
            .iter()
            .flat_map(|&v| {
                let c = v.min(255) as u8;
                [c, c, c]
            })
            .collect(),
        // PIL opens 16-bit LA / RGB / RGBA PNGs as 8-bit "RGBA"/"RGB" keeping the high byte of each sample.
        DynamicImage::ImageLumaA16(b) => b
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| {
                let c = (p[0] >> 8) as u8;
                [c, c, c]
            })
            .collect(),
        DynamicImage::ImageRgb16(b) => b.as_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(b) => b
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            .collect(),
        other => {
            return Err(ImageError::UnsupportedFeature {
                format,
                message: format!("pixel layout {:?}", other.color()),
            })
        }
    };
    RgbImage::new(w, h, data)
}

/// Maps the `image` crate's errors to ours, on one line (some decoder messages end in a newline).
fn map_err(format: &'static str, e: ::image::ImageError) -> ImageError {
    let one_line = |m: String| m.split_whitespace().collect::<Vec<_>>().join(" ");
    match e {
        ::image::ImageError::Limits(l) => ImageError::Decode {
            format,
            message: one_line(format!("limit exceeded: {l}")),
        },
        ::image::ImageError::Unsupported(u) => ImageError::UnsupportedFeature {
            format,
            message: one_line(u.to_string()),
        },
        ::image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Decode {
                format,
                message: "unexpected end of data (truncated file)".into(),
            }
        }
        other => ImageError::Decode {
            format,
            message: one_line(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_supported_and_unsupported() {
        assert_eq!(
            sniff_format(b"\x89PNG\r\n\x1a\nrest").unwrap(),
            ImageFormatKind::Png
        );
        assert_eq!(
            sniff_format(b"RIFF\0\0\0\0WEBPVP8 ").unwrap(),
            ImageFormatKind::WebP
        );
        assert!(matches!(
            sniff_format(b"II*\0abcd"),
            Err(ImageError::UnsupportedFormat { format: "TIFF" })
        ));
        assert!(matches!(sniff_format(b""), Err(ImageError::Empty)));
        assert!(matches!(
            sniff_format(b"hello world"),
            Err(ImageError::UnknownFormat { .. })
        ));
    }
}
