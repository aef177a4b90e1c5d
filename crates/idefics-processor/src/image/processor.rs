//! `Idefics2ImageProcessor` (PIL path, transformers 4.57 / 5.24 `Idefics2ImageProcessorPil`): RGB images ->
//! `pixel_values [B, M, 3, H, W]` and `pixel_attention_mask [B, M, H, W]` (transformers' `Idefics2ImageProcessorPil`, steps 1-7).
//!
//! Per image: the transparent-colour quirk of `convert_to_rgb` (see transparency.rs), optional split into
//! 4 crops + the full image (on the *original* pixels), the Idefics2 resize
//! rule (longest edge, then each side raised to the shortest edge independently), Pillow-exact resize,
//! rescale + normalize through a 256-entry table (the values transformers' float arithmetic produces),
//! then zero padding of every frame to the batch's largest height and width.

use std::path::Path;

use serde::Deserialize;

use super::resize::{resize, ResampleFilter};
use super::{ImageError, RgbImage};

/// `size` of the image processor config: Idefics2 uses `{shortest_edge, longest_edge}`; a fixed
/// `{height, width}` is accepted as transformers does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ImageSize {
    /// Each side is raised to at least this (378 for idefics2-8b).
    pub shortest_edge: Option<usize>,
    /// The longer side is brought down to this, keeping the aspect ratio (980 for idefics2-8b).
    pub longest_edge: Option<usize>,
    /// Fixed output height (used only without shortest/longest edge).
    pub height: Option<usize>,
    /// Fixed output width (used only without shortest/longest edge).
    pub width: Option<usize>,
}

/// A mean / std that configs write either as one number or one per channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum PerChannel {
    One(f64),
    Many(Vec<f64>),
}

impl PerChannel {
    /// The configured value of `field`, or `default` when the config does not set it.
    pub(crate) fn or(
        value: Option<&Self>,
        field: &'static str,
        default: [f64; 3],
    ) -> Result<[f64; 3], ImageError> {
        value.map_or(Ok(default), |v| v.to3(field))
    }

    pub(crate) fn to3(&self, field: &'static str) -> Result<[f64; 3], ImageError> {
        match self {
            Self::One(v) => Ok([*v; 3]),
            Self::Many(v) => <[f64; 3]>::try_from(v.as_slice()).map_err(|_| ImageError::Config {
                field,
                message: format!("expected 3 values (one per RGB channel), got {}", v.len()),
            }),
        }
    }
}

/// The settings of `Idefics2ImageProcessor`, as in `preprocessor_config.json`. Missing keys take the class
/// defaults (note: the class default `do_image_splitting` is false; idefics2-8b's file sets it true).
#[derive(Debug, Clone, PartialEq)]
pub struct Idefics2ImageProcessorConfig {
    pub do_convert_rgb: bool,
    pub do_resize: bool,
    pub size: ImageSize,
    pub resample: ResampleFilter,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub do_pad: bool,
    pub do_image_splitting: bool,
}

impl Default for Idefics2ImageProcessorConfig {
    fn default() -> Self {
        Self {
            do_convert_rgb: true,
            do_resize: true,
            size: ImageSize {
                shortest_edge: Some(378),
                longest_edge: Some(980),
                height: None,
                width: None,
            },
            resample: ResampleFilter::Bilinear,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            do_pad: true,
            do_image_splitting: false,
        }
    }
}

/// The raw JSON form; every key optional, unknown keys ignored (HF files carry many).
#[derive(Debug, Deserialize)]
struct RawConfig {
    image_processor_type: Option<String>,
    do_convert_rgb: Option<bool>,
    do_resize: Option<bool>,
    size: Option<ImageSize>,
    resample: Option<i64>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<PerChannel>,
    image_std: Option<PerChannel>,
    do_pad: Option<bool>,
    do_image_splitting: Option<bool>,
}

impl Idefics2ImageProcessorConfig {
    /// Parses a `preprocessor_config.json` document (the Hub's idefics2-8b layout).
    pub fn from_preprocessor_json(json: &str) -> Result<Self, ImageError> {
        let raw: RawConfig = serde_json::from_str(json).map_err(|e| ImageError::Config {
            field: "preprocessor_config.json",
            message: e.to_string(),
        })?;
        Self::from_raw(raw)
    }

    /// Parses the nested `image_processor` object of a `processor_config.json` (what transformers 5.x writes).
    pub fn from_processor_json(json: &str) -> Result<Self, ImageError> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| ImageError::Config {
                field: "processor_config.json",
                message: e.to_string(),
            })?;
        let nested = value
            .get("image_processor")
            .cloned()
            .ok_or(ImageError::Config {
                field: "image_processor",
                message: "processor_config.json has no `image_processor` object".into(),
            })?;
        let raw: RawConfig = serde_json::from_value(nested).map_err(|e| ImageError::Config {
            field: "image_processor",
            message: e.to_string(),
        })?;
        Self::from_raw(raw)
    }

    /// Loads the settings of a model directory: `preprocessor_config.json` if present, else the
    /// `image_processor` object of `processor_config.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Self, ImageError> {
        let found = SettingsFile::find(dir, SettingsFile::Preprocessor)?;
        let field = match found.file {
            SettingsFile::Preprocessor => "preprocessor_config.json",
            SettingsFile::ProcessorNested => "image_processor",
        };
        found.parse(|value| {
            let raw: RawConfig = serde_json::from_value(value).map_err(|e| ImageError::Config {
                field,
                message: e.to_string(),
            })?;
            Self::from_raw(raw)
        })
    }

    fn from_raw(raw: RawConfig) -> Result<Self, ImageError> {
        check_processor_type(
            raw.image_processor_type.as_deref(),
            &["Idefics2ImageProcessor"],
            "Idefics2",
        )?;
        let d = Self::default();
        let resample = resample_or(raw.resample, d.resample)?;
        let cfg = Self {
            do_convert_rgb: raw.do_convert_rgb.unwrap_or(d.do_convert_rgb),
            do_resize: raw.do_resize.unwrap_or(d.do_resize),
            size: raw.size.unwrap_or(d.size),
            resample,
            do_rescale: raw.do_rescale.unwrap_or(d.do_rescale),
            rescale_factor: raw.rescale_factor.unwrap_or(d.rescale_factor),
            do_normalize: raw.do_normalize.unwrap_or(d.do_normalize),
            image_mean: PerChannel::or(raw.image_mean.as_ref(), "image_mean", d.image_mean)?,
            image_std: PerChannel::or(raw.image_std.as_ref(), "image_std", d.image_std)?,
            do_pad: raw.do_pad.unwrap_or(d.do_pad),
            do_image_splitting: raw.do_image_splitting.unwrap_or(d.do_image_splitting),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values a model directory could get wrong.
    pub fn validate(&self) -> Result<(), ImageError> {
        let s = self.size;
        let edges_ok =
            matches!((s.shortest_edge, s.longest_edge), (Some(a), Some(b)) if a > 0 && b > 0);
        let fixed_ok = matches!((s.height, s.width), (Some(h), Some(w)) if h > 0 && w > 0);
        if self.do_resize && !edges_ok && !fixed_ok {
            return Err(ImageError::Config {
                field: "size",
                message: format!(
                    "need positive shortest_edge + longest_edge or height + width, got {s:?}"
                ),
            });
        }
        if self.image_std.iter().any(|&v| v == 0.0 || !v.is_finite()) {
            return Err(ImageError::Config {
                field: "image_std",
                message: format!("{:?} has a zero", self.image_std),
            });
        }
        if !self.rescale_factor.is_finite() {
            return Err(ImageError::Config {
                field: "rescale_factor",
                message: "not finite".into(),
            });
        }
        Ok(())
    }
}

/// Where a model directory keeps its image-processor settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SettingsFile {
    /// `preprocessor_config.json`, the whole document.
    Preprocessor,
    /// The `image_processor` object nested in `processor_config.json` (what transformers 5.x writes).
    ProcessorNested,
}

/// The settings object found in a model directory, with the file it came from.
pub(crate) struct FoundSettings {
    pub file: SettingsFile,
    pub path: std::path::PathBuf,
    pub value: serde_json::Value,
}

impl SettingsFile {
    /// Looks for the settings, trying `first` before the other file; errors name the file, and a directory with
    /// neither is [`ImageError::NoConfig`]. The families differ in which file wins when both exist.
    pub(crate) fn find(dir: &Path, first: SettingsFile) -> Result<FoundSettings, ImageError> {
        let order = match first {
            Self::Preprocessor => [Self::Preprocessor, Self::ProcessorNested],
            Self::ProcessorNested => [Self::ProcessorNested, Self::Preprocessor],
        };
        for file in order {
            let path = dir.join(match file {
                Self::Preprocessor => "preprocessor_config.json",
                Self::ProcessorNested => "processor_config.json",
            });
            if !path.is_file() {
                continue;
            }
            let value: serde_json::Value =
                serde_json::from_str(&read(&path)?).map_err(|e| file_err(&path, e))?;
            let value = match file {
                Self::Preprocessor => value,
                Self::ProcessorNested => match value.get("image_processor") {
                    Some(nested) => nested.clone(),
                    None => continue,
                },
            };
            return Ok(FoundSettings { file, path, value });
        }
        Err(ImageError::NoConfig {
            dir: dir.to_path_buf(),
        })
    }
}

impl FoundSettings {
    /// Parses the settings object; errors are prefixed with the file's path.
    pub(crate) fn parse<T>(
        self,
        parse: impl FnOnce(serde_json::Value) -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        let path = self.path;
        parse(self.value).map_err(|e| file_err(&path, e))
    }
}

/// `image_seq_len` (visual tokens per image, 64 for idefics2-8b) from a model directory's
/// `processor_config.json`; `None` when the file or key is absent.
pub fn read_image_seq_len(dir: &Path) -> Result<Option<usize>, ImageError> {
    let path = dir.join("processor_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let value: serde_json::Value =
        serde_json::from_str(&read(&path)?).map_err(|e| file_err(&path, e))?;
    match value.get("image_seq_len") {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| Some(n as usize))
            .ok_or_else(|| ImageError::ConfigFile {
                path,
                message: format!("image_seq_len must be a positive integer, got {v}"),
            }),
    }
}

/// Refuses an `image_processor_type` that names another family's processor (`expected`: the accepted class-name
/// prefixes, `family`: how the error names this one).
pub(crate) fn check_processor_type(
    found: Option<&str>,
    expected: &[&str],
    family: &str,
) -> Result<(), ImageError> {
    match found {
        Some(t) if !expected.iter().any(|e| t.starts_with(e)) => Err(ImageError::Config {
            field: "image_processor_type",
            message: format!(
                "{t} is not an {family} image processor (expected {})",
                expected
                    .iter()
                    .map(|e| format!("{e}*"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        }),
        _ => Ok(()),
    }
}

/// The configured PIL resampling code as a filter, or `default` when the config does not set one.
pub(crate) fn resample_or(
    code: Option<i64>,
    default: ResampleFilter,
) -> Result<ResampleFilter, ImageError> {
    match code {
        None => Ok(default),
        Some(code) => ResampleFilter::from_pil_code(code).ok_or(ImageError::Config {
            field: "resample",
            message: format!("{code} is not a PIL resampling code (0-5)"),
        }),
    }
}

pub(crate) fn read(path: &Path) -> Result<String, ImageError> {
    std::fs::read_to_string(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn file_err(path: &Path, e: impl std::fmt::Display) -> ImageError {
    ImageError::ConfigFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The float value of every uint8 sample after rescale + normalize, per channel, computed with
/// transformers' arithmetic: `y = f32(f64(v) * rescale_factor)` (numpy upcasts to f64, then casts down),
/// then `(y - f32(mean)) / f32(std)` in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizeLut {
    /// `table[channel][value]`: the float32 that transformers outputs for that uint8 sample.
    pub table: [[f32; 256]; 3],
}

impl NormalizeLut {
    /// The table for a config's `do_rescale` / `do_normalize` / factor / mean / std.
    pub fn new(cfg: &Idefics2ImageProcessorConfig) -> Self {
        Self::from_settings(
            cfg.do_rescale.then_some(cfg.rescale_factor),
            cfg.do_normalize.then_some((cfg.image_mean, cfg.image_std)),
        )
    }

    /// The table for a rescale factor (`None`: no rescale) and a per-channel mean / std (`None`: no normalize).
    pub fn from_settings(rescale: Option<f64>, normalize: Option<([f64; 3], [f64; 3])>) -> Self {
        let mut table = [[0f32; 256]; 3];
        for (c, row) in table.iter_mut().enumerate() {
            for (v, out) in row.iter_mut().enumerate() {
                let mut y = match rescale {
                    Some(factor) => (v as f64 * factor) as f32,
                    None => v as f32,
                };
                if let Some((mean, std)) = normalize {
                    y = (y - mean[c] as f32) / std[c] as f32;
                }
                *out = y;
            }
        }
        Self { table }
    }
}

/// The processor's output, candle-free. Layouts are row-major (C order), as transformers' numpy arrays.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBatch {
    /// `[B, M, 3, H, W]` float32; padding and missing frames are 0.0.
    pub pixel_values: Vec<f32>,
    /// `[B, M, 3, H, W]`: samples, frames per sample (max over samples), channels, height, width.
    pub pixel_values_shape: [usize; 5],
    /// `[B, M, H, W]`: 1 inside each real frame, 0 in padding and missing frames (transformers: int64).
    pub pixel_attention_mask: Vec<u8>,
    /// Real (non-padding) frames of each sample: 5 per image with splitting, 1 without.
    pub frames_per_sample: Vec<usize>,
    /// `(height, width)` of each real frame before padding, per sample.
    pub frame_sizes: Vec<Vec<(usize, usize)>>,
}

impl ImageBatch {
    /// `[B, M, H, W]`, the shape of `pixel_attention_mask`.
    pub fn mask_shape(&self) -> [usize; 4] {
        let [b, m, _, h, w] = self.pixel_values_shape;
        [b, m, h, w]
    }
}

/// `Idefics2ImageProcessor` with fixed settings.
#[derive(Debug, Clone)]
pub struct Idefics2ImageProcessor {
    config: Idefics2ImageProcessorConfig,
    lut: NormalizeLut,
}

impl Idefics2ImageProcessor {
    /// A processor for validated settings.
    pub fn new(config: Idefics2ImageProcessorConfig) -> Result<Self, ImageError> {
        config.validate()?;
        let lut = NormalizeLut::new(&config);
        Ok(Self { config, lut })
    }

    /// The processor of a model directory (see [`Idefics2ImageProcessorConfig::from_model_dir`]).
    pub fn from_model_dir(dir: &Path) -> Result<Self, ImageError> {
        Self::new(Idefics2ImageProcessorConfig::from_model_dir(dir)?)
    }

    /// The settings.
    pub fn config(&self) -> &Idefics2ImageProcessorConfig {
        &self.config
    }

    /// The rescale/normalize table in use.
    pub fn normalize_lut(&self) -> &NormalizeLut {
        &self.lut
    }

    /// The Idefics2 resize rule (f64 arithmetic, `int()` truncation): returns `(height, width)`.
    pub fn target_size(&self, height: usize, width: usize) -> (usize, usize) {
        let s = self.config.size;
        if let (Some(min_len), Some(max_len)) = (s.shortest_edge, s.longest_edge) {
            let (mut h, mut w) = (height, width);
            let aspect = width as f64 / height as f64;
            if w >= h && w > max_len {
                w = max_len;
                h = (w as f64 / aspect) as usize;
            } else if h > w && h > max_len {
                h = max_len;
                w = (h as f64 * aspect) as usize;
            }
            // Raised independently: the aspect ratio of thin images is not kept (reference behaviour).
            (h.max(min_len), w.max(min_len))
        } else {
            (s.height.unwrap_or(height), s.width.unwrap_or(width))
        }
    }

    /// Steps 3-4 for one image: the split crops (top-left, top-right, bottom-left, bottom-right, full) or the
    /// image alone, each resized; uint8, before rescale/normalize.
    pub fn frames(
        &self,
        image: &RgbImage,
        do_image_splitting: bool,
    ) -> Result<Vec<RgbImage>, ImageError> {
        let (w, h) = (image.width(), image.height());
        if w == 0 || h == 0 {
            return Err(ImageError::ZeroSize {
                width: w,
                height: h,
            });
        }
        let whitened;
        let image = match image.transparent_color() {
            Some(key) if self.config.do_convert_rgb => {
                whitened = whiten_color_key(image, key);
                &whitened
            }
            _ => image,
        };
        let parts = if do_image_splitting {
            if w < 2 || h < 2 {
                return Err(ImageError::TooSmallToSplit {
                    width: w,
                    height: h,
                });
            }
            let (mw, mh) = (w / 2, h / 2);
            vec![
                image.crop(0, 0, mw, mh),
                image.crop(mw, 0, w - mw, mh),
                image.crop(0, mh, mw, h - mh),
                image.crop(mw, mh, w - mw, h - mh),
                image.clone(),
            ]
        } else {
            vec![image.clone()]
        };
        if !self.config.do_resize {
            return Ok(parts);
        }
        parts
            .iter()
            .map(|p| {
                let (th, tw) = self.target_size(p.height(), p.width());
                resize(p, tw, th, self.config.resample)
            })
            .collect()
    }

    /// The whole pipeline on a batch: `samples[b]` are the images of sample `b` (already decoded, upright RGB).
    /// `do_image_splitting` overrides the config for this call when `Some`.
    pub fn preprocess(
        &self,
        samples: &[Vec<RgbImage>],
        do_image_splitting: Option<bool>,
    ) -> Result<ImageBatch, ImageError> {
        let split = do_image_splitting.unwrap_or(self.config.do_image_splitting);
        let mut frames = Vec::with_capacity(samples.len());
        for sample in samples {
            let mut per_sample = Vec::new();
            for image in sample {
                per_sample.extend(self.frames(image, split)?);
            }
            frames.push(per_sample);
        }
        self.pack(&frames)
    }

    /// Steps 5-7: rescale/normalize each uint8 frame, pad to the batch maximum, build the mask.
    pub fn pack(&self, frames: &[Vec<RgbImage>]) -> Result<ImageBatch, ImageError> {
        pack_frames(frames, &self.lut, self.config.do_pad)
    }
}

/// Rescale/normalize each uint8 frame through `lut`, zero-pad every frame to the batch's largest height and width
/// and every sample to the largest frame count, and build `pixel_attention_mask` (shared by the Idefics2 and
/// Idefics3 processors, whose `pad` steps are the same). Without padding, frames must already agree.
pub(crate) fn pack_frames(
    frames: &[Vec<RgbImage>],
    lut: &NormalizeLut,
    do_pad: bool,
) -> Result<ImageBatch, ImageError> {
    let b = frames.len();
    let m = frames.iter().map(Vec::len).max().unwrap_or(0);
    let all = || frames.iter().flatten();
    let hmax = all().map(RgbImage::height).max().unwrap_or(0);
    let wmax = all().map(RgbImage::width).max().unwrap_or(0);
    if !do_pad {
        let uneven = all().any(|f| f.height() != hmax || f.width() != wmax)
            || frames.iter().any(|s| s.len() != m);
        if uneven {
            return Err(ImageError::Unpadded {
                message: format!(
                    "frame sizes {:?}",
                    frames
                        .iter()
                        .map(|s| s
                            .iter()
                            .map(|f| (f.height(), f.width()))
                            .collect::<Vec<_>>())
                        .collect::<Vec<_>>()
                ),
            });
        }
    }
    let plane = hmax * wmax;
    let mut pixel_values = vec![0f32; b * m * 3 * plane];
    let mut mask = vec![0u8; b * m * plane];
    for (bi, sample) in frames.iter().enumerate() {
        for (mi, frame) in sample.iter().enumerate() {
            let base = (bi * m + mi) * 3 * plane;
            let mask_base = (bi * m + mi) * plane;
            let (fh, fw) = (frame.height(), frame.width());
            if fh == 0 || fw == 0 {
                continue;
            }
            for (y, row) in frame.as_bytes().chunks_exact(fw * 3).enumerate() {
                for (x, px) in row.chunks_exact(3).enumerate() {
                    let at = y * wmax + x;
                    pixel_values[base + at] = lut.table[0][px[0] as usize];
                    pixel_values[base + plane + at] = lut.table[1][px[1] as usize];
                    pixel_values[base + 2 * plane + at] = lut.table[2][px[2] as usize];
                }
                mask[mask_base + y * wmax..mask_base + y * wmax + fw].fill(1);
            }
        }
    }
    Ok(ImageBatch {
        pixel_values,
        pixel_values_shape: [b, m, 3, hmax, wmax],
        pixel_attention_mask: mask,
        frames_per_sample: frames.iter().map(Vec::len).collect(),
        frame_sizes: frames
            .iter()
            .map(|s| s.iter().map(|f| (f.height(), f.width())).collect())
            .collect(),
    })
}

/// `convert_to_rgb` of an RGB image that carries Pillow's `info["transparency"]` colour: RGBA with alpha 0 on
/// that colour, composited over opaque white, so those pixels become exactly white.
pub(crate) fn whiten_color_key(image: &RgbImage, key: [u8; 3]) -> RgbImage {
    let mut data = image.as_bytes().to_vec();
    for px in data.chunks_exact_mut(3) {
        if px == key {
            px.copy_from_slice(&[255, 255, 255]);
        }
    }
    // Same dimensions, so this cannot fail.
    RgbImage::new(image.width(), image.height(), data).unwrap_or_else(|_| image.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(cfg: Idefics2ImageProcessorConfig) -> Idefics2ImageProcessor {
        Idefics2ImageProcessor::new(cfg).unwrap()
    }

    #[test]
    fn resize_rule_matches_spec_examples() {
        let proc = p(Idefics2ImageProcessorConfig::default());
        assert_eq!(proc.target_size(700, 1000), (686, 980));
        assert_eq!(proc.target_size(350, 500), (378, 500));
        assert_eq!(proc.target_size(100, 100), (378, 378));
        assert_eq!(proc.target_size(250, 1000), (378, 980));
        assert_eq!(proc.target_size(1200, 1600), (735, 980));
        assert_eq!(proc.target_size(600, 800), (600, 800));
    }

    #[test]
    fn split_crops_are_in_reference_order() {
        let proc = p(Idefics2ImageProcessorConfig {
            do_resize: false,
            ..Default::default()
        });
        let img = RgbImage::new(5, 3, (0..45).collect()).unwrap();
        let f = proc.frames(&img, true).unwrap();
        let sizes: Vec<_> = f.iter().map(|f| (f.height(), f.width())).collect();
        assert_eq!(sizes, vec![(1, 2), (1, 3), (2, 2), (2, 3), (3, 5)]);
        assert_eq!(f[1].as_bytes()[..3], [6, 7, 8]); // top-right starts at x = 2
        assert_eq!(f[2].as_bytes()[..3], [15, 16, 17]); // bottom-left starts at y = 1
    }

    #[test]
    fn config_defaults_and_errors() {
        let c = Idefics2ImageProcessorConfig::from_preprocessor_json("{}").unwrap();
        assert_eq!(c, Idefics2ImageProcessorConfig::default());
        let e =
            Idefics2ImageProcessorConfig::from_preprocessor_json(r#"{"resample": 9}"#).unwrap_err();
        assert!(e.to_string().contains("resample"), "{e}");
        let e =
            Idefics2ImageProcessorConfig::from_preprocessor_json(r#"{"image_mean": [0.5, 0.5]}"#)
                .unwrap_err();
        assert!(e.to_string().contains("image_mean"), "{e}");
        let e = Idefics2ImageProcessorConfig::from_preprocessor_json(
            r#"{"image_processor_type": "Idefics3ImageProcessor"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("Idefics3ImageProcessor"), "{e}");
        let e = Idefics2ImageProcessorConfig::from_preprocessor_json(r#"{"image_std": 0}"#)
            .unwrap_err();
        assert!(e.to_string().contains("image_std"), "{e}");
    }

    #[test]
    fn hub_idefics2_8b_preprocessor_config() {
        // HuggingFaceM4/idefics2-8b preprocessor_config.json on the Hub.
        let json = r#"{
  "do_convert_rgb": true, "do_image_splitting": true, "do_normalize": true, "do_pad": true,
  "do_rescale": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5],
  "image_processor_type": "Idefics2ImageProcessor", "image_std": [0.5, 0.5, 0.5],
  "processor_class": "Idefics2Processor", "resample": 2, "rescale_factor": 0.00392156862745098,
  "size": {"longest_edge": 980, "shortest_edge": 378}
}"#;
        let c = Idefics2ImageProcessorConfig::from_preprocessor_json(json).unwrap();
        let expected = Idefics2ImageProcessorConfig {
            do_image_splitting: true,
            ..Default::default()
        };
        assert_eq!(c, expected);
        assert_eq!(c.rescale_factor, 1.0 / 255.0);
    }

    #[test]
    fn pack_skips_empty_frames() {
        let proc = p(Idefics2ImageProcessorConfig::default());
        let frames = vec![vec![
            RgbImage::new(0, 4, vec![]).unwrap(),
            RgbImage::new(2, 1, vec![255; 6]).unwrap(),
        ]];
        let out = proc.pack(&frames).unwrap();
        assert_eq!(out.pixel_values_shape, [1, 2, 3, 4, 2]);
        assert_eq!(
            out.pixel_attention_mask
                .iter()
                .map(|&v| v as usize)
                .sum::<usize>(),
            2
        );
    }

    #[test]
    fn nested_processor_config_is_read() {
        let json = r#"{"image_seq_len": 64, "image_processor": {"do_image_splitting": true, "size": {"shortest_edge": 10, "longest_edge": 20}}}"#;
        let c = Idefics2ImageProcessorConfig::from_processor_json(json).unwrap();
        assert!(c.do_image_splitting);
        assert_eq!(c.size.longest_edge, Some(20));
    }
}
