//! From an `image_url` to a checked RGB image: data URIs, http(s) fetching, operator-allowed local files,
//! then decoding with the limits enforced before any pixel buffer is allocated.
//!
//! Every failure is a 400 naming the image index (`image 2: ...`), never a dropped part or an empty answer
//! (Rapid-MLX#457, term-llm#458). Remote fetching follows ollama#15355: timeout, status, content type, byte cap;
//! and, as an SSRF guard, no private / loopback targets unless the operator allows them.

#[cfg(test)]
use std::io::Cursor;
use std::io::Read;
use std::path::Path;

use base64::Engine as _;
use idefics_processor::RgbImage;
#[cfg(test)]
use image::ImageFormat;

use crate::config::ServerConfig;
use crate::error::ApiError;
#[cfg(test)]
use crate::fetch::is_public;
use crate::fetch::{fetch_url, FetchCancel};

fn bad(index: usize, code: &'static str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(code, format!("image {index}: {msg}"))
}

/// Where an image's bytes came from: remote bytes are never quoted in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A data URI or an operator-allowed local file.
    Client,
    /// An `http(s)://` URL.
    Remote,
}

/// Whether `url` is fetched over the network (such images are loaded without holding a decoding slot).
pub fn is_remote(url: &str) -> bool {
    let lower = url.trim().get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// Get the encoded bytes behind an `image_url.url` (blocking: run it off the async threads). `cancel` aborts a
/// network fetch from another thread.
pub fn load_image_bytes(
    url: &str,
    index: usize,
    cfg: &ServerConfig,
    cancel: &FetchCancel,
) -> Result<Vec<u8>, ApiError> {
    let url = url.trim();
    if url.is_empty() {
        return Err(bad(index, "invalid_image_url", "image_url.url is empty"));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("data:") {
        decode_data_uri(url, index, cfg.max_image_bytes)
    } else if lower.starts_with("http://") || lower.starts_with("https://") {
        fetch_url(url, index, cfg, cancel)
    } else if lower.starts_with("file://") || url.starts_with('/') || url.starts_with("./") {
        read_local(url.strip_prefix("file://").unwrap_or(url), index, cfg)
    } else {
        Err(bad(
            index,
            "invalid_image_url",
            "image_url.url must be a data URI (data:image/png;base64,...) or an http(s) URL",
        ))
    }
}

/// `data:image/<fmt>;base64,<payload>`; newlines in the payload and the URL-safe alphabet are accepted.
fn decode_data_uri(url: &str, index: usize, max_bytes: usize) -> Result<Vec<u8>, ApiError> {
    let Some((head, payload)) = url.split_once(',') else {
        return Err(bad(
            index,
            "invalid_image_url",
            "data URI has no ',' before its payload",
        ));
    };
    let head = &head[5..]; // after "data:"
    let mut parts = head.split(';');
    let media_type = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    if !parts.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err(bad(
            index,
            "invalid_image_url",
            "data URI must be base64-encoded (data:image/<fmt>;base64,...)",
        ));
    }
    if !media_type.is_empty()
        && !media_type.starts_with("image/")
        && media_type != "application/octet-stream"
    {
        return Err(bad(
            index,
            "invalid_image",
            format!("data URI media type '{media_type}' is not an image"),
        ));
    }
    let cleaned: Vec<u8> = payload
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if cleaned.is_empty() {
        return Err(bad(index, "invalid_image", "data URI payload is empty"));
    }
    if cleaned.len() / 4 * 3 > max_bytes + 3 {
        return Err(too_large(index, cleaned.len() / 4 * 3, max_bytes));
    }
    let url_safe = cleaned.iter().any(|&b| b == b'-' || b == b'_');
    let trimmed: &[u8] = {
        let end = cleaned
            .iter()
            .rposition(|&b| b != b'=')
            .map_or(0, |p| p + 1);
        &cleaned[..end]
    };
    let engine = if url_safe {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
    } else {
        base64::engine::general_purpose::STANDARD_NO_PAD
    };
    let bytes = engine.decode(trimmed).map_err(|e| {
        bad(
            index,
            "invalid_image",
            format!("data URI payload is not valid base64 ({e})"),
        )
    })?;
    if bytes.len() > max_bytes {
        return Err(too_large(index, bytes.len(), max_bytes));
    }
    Ok(bytes)
}

fn too_large(index: usize, got: usize, max: usize) -> ApiError {
    bad(
        index,
        "image_too_large",
        format!("{got} bytes is over the limit of {max} bytes per image"),
    )
}

fn read_local(path: &str, index: usize, cfg: &ServerConfig) -> Result<Vec<u8>, ApiError> {
    let Some(dir) = &cfg.allowed_local_dir else {
        return Err(bad(
            index,
            "image_url_not_allowed",
            "local file paths are refused (the operator can allow a directory with --allow-local-images DIR)",
        ));
    };
    let not_allowed = || {
        bad(
            index,
            "image_url_not_allowed",
            format!("'{path}' is not inside the allowed image directory"),
        )
    };
    let dir = dir.canonicalize().map_err(|_| not_allowed())?;
    let full = Path::new(path).canonicalize().map_err(|e| {
        bad(
            index,
            "invalid_image_url",
            format!("cannot open '{path}': {e}"),
        )
    })?;
    if !full.starts_with(&dir) {
        return Err(not_allowed());
    }
    let file = std::fs::File::open(&full).map_err(|e| {
        bad(
            index,
            "invalid_image_url",
            format!("cannot open '{path}': {e}"),
        )
    })?;
    let mut bytes = Vec::new();
    file.take(cfg.max_image_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            bad(
                index,
                "invalid_image_url",
                format!("cannot read '{path}': {e}"),
            )
        })?;
    if bytes.len() > cfg.max_image_bytes {
        return Err(too_large(index, bytes.len(), cfg.max_image_bytes));
    }
    Ok(bytes)
}

/// Decode to RGB8 with the processor's decoder, so a served image becomes exactly the pixels `idefics ask` and
/// transformers' `load_image` would see: format sniffed from the bytes (never trusted from the MIME type), pixel
/// count checked from the header before decoding, EXIF orientation applied, then a plain RGB conversion.
pub fn decode_image(bytes: &[u8], index: usize, max_pixels: u64) -> Result<RgbImage, ApiError> {
    decode_from(bytes, index, max_pixels, Source::Client)
}

/// [`decode_image`], with error messages that quote nothing from `bytes` when they came from the network
/// (decoders name first bytes, chunk types and the like).
pub fn decode_from(
    bytes: &[u8],
    index: usize,
    max_pixels: u64,
    source: Source,
) -> Result<RgbImage, ApiError> {
    use idefics_processor::ImageError as E;
    if source == Source::Remote {
        return decode_from(bytes, index, max_pixels, Source::Client).map_err(|e| {
            let what = match e.code {
                "image_too_large" => "the image has more pixels than the limit".to_string(),
                "unsupported_image_format" => {
                    "unsupported image format (supported: JPEG, PNG, WebP, GIF, BMP)".to_string()
                }
                _ => {
                    "cannot decode image: not a valid JPEG, PNG, WebP, GIF or BMP file".to_string()
                }
            };
            ApiError {
                message: format!("image {index}: {what}"),
                ..e
            }
        });
    }
    let limits = idefics_processor::DecodeLimits {
        max_pixels,
        max_bytes: usize::MAX,
    };
    let decoded = idefics_processor::decode_image(bytes, &limits).map_err(|e| match e {
        E::TooManyPixels { .. } | E::TooManyBytes { .. } => bad(index, "image_too_large", e),
        // Containers of other media (audio, video) are not images at all.
        E::UnsupportedFormat { format }
            if format.contains("not an image") || format.contains("not WebP") =>
        {
            bad(
                index,
                "invalid_image",
                format!("not a recognised image: {e}"),
            )
        }
        E::UnsupportedFormat { .. } | E::UnsupportedFeature { .. } => {
            bad(index, "unsupported_image_format", e)
        }
        E::UnknownFormat { .. } => bad(
            index,
            "invalid_image",
            format!("not a recognised image: {e}"),
        ),
        E::Empty => bad(index, "invalid_image", "image data is empty"),
        other => bad(
            index,
            "invalid_image",
            format!("cannot decode image: {other}"),
        ),
    })?;
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn data_uri_variants() {
        let bytes = png(3, 2);
        let std = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        let wrapped: String = std
            .as_bytes()
            .chunks(10)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        for uri in [
            format!("data:image/png;base64,{std}"),
            format!("data:image/png;base64,{safe}"),
            format!("data:image/jpeg;base64,{wrapped}"),
        ] {
            assert_eq!(decode_data_uri(&uri, 0, 1 << 20).unwrap(), bytes, "{uri}");
        }
        assert!(decode_data_uri("data:image/png,abc", 0, 100)
            .unwrap_err()
            .message
            .contains("base64"));
        assert!(decode_data_uri("data:text/plain;base64,aGk=", 1, 100)
            .unwrap_err()
            .message
            .starts_with("image 1:"));
        assert!(decode_data_uri("data:image/png;base64,", 0, 100)
            .unwrap_err()
            .message
            .contains("empty"));
        assert_eq!(
            decode_data_uri(&format!("data:image/png;base64,{std}"), 0, 10)
                .unwrap_err()
                .code,
            "image_too_large"
        );
    }

    #[test]
    fn decode_checks_format_and_size() {
        let img = decode_image(&png(3, 2), 0, 100).unwrap();
        assert_eq!((img.width(), img.height()), (3, 2));
        assert_eq!(img.as_bytes()[..3], [10, 20, 30]);
        let err = decode_image(&png(20, 20), 2, 399).unwrap_err();
        assert_eq!(
            (err.code, err.message.starts_with("image 2:")),
            ("image_too_large", true)
        );
        let truncated = &png(8, 8)[..40];
        assert_eq!(
            decode_image(truncated, 0, 1000).unwrap_err().code,
            "invalid_image"
        );
        assert_eq!(
            decode_image(b"RIFF\x24\0\0\0WAVEfmt ", 0, 1000)
                .unwrap_err()
                .code,
            "invalid_image"
        );
        let tiff = b"II*\0\x08\0\0\0\0\0";
        assert_eq!(
            decode_image(tiff, 0, 1000).unwrap_err().code,
            "unsupported_image_format"
        );
    }

    #[test]
    fn alpha_is_dropped_as_the_reference_loader_does() {
        // transformers' load_image does a plain convert("RGB"): the colour channels stay, alpha is discarded.
        let rgba = image::RgbaImage::from_pixel(1, 1, image::Rgba([0, 100, 255, 128]));
        let mut buf = Vec::new();
        image::DynamicImage::ImageRgba8(rgba)
            .write_to(&mut Cursor::new(&mut buf), ImageFormat::Png)
            .unwrap();
        let rgb = decode_image(&buf, 0, 100).unwrap();
        assert_eq!(rgb.as_bytes()[..3], [0, 100, 255]);
    }

    #[test]
    fn private_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(&ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(&ip.parse().unwrap()), "{ip}");
        }
    }
}
