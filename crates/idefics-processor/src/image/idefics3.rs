//! `Idefics3ImageProcessor` / `SmolVLMImageProcessor` (PIL path, transformers 5.24 `Idefics3ImageProcessorPil` and
//! `SmolVLMImageProcessorPil`, which are the same code): RGB images -> tiles + global image ->
//! `pixel_values [B, M, 3, T, T]`, `pixel_attention_mask [B, M, T, T]`, and the tile grid of each image that the
//! prompt expansion needs (transformers src/transformers/models/idefics3/image_processing_pil_idefics3.py).
//!
//! Per image, in transformers' order:
//! 1. `convert_to_rgb` first (5.24 `PilBackend.process_image`; the 4.x code resized before converting): an RGB
//!    image decoded as transformers' `load_image` does, with Pillow's transparent-colour quirk (see processor.rs).
//! 2. resize so that the longest edge is `size.longest_edge`, up or down (`int()` truncation of the other side,
//!    raised to the next even number), then capped at 4096; Pillow LANCZOS.
//! 3. with splitting: resize again so that both sides are multiples of the tile `T = max_image_size.longest_edge`
//!    (`math.ceil`, the short side through `int()` of the aspect ratio), cut row-major `T x T` tiles and append the
//!    whole image resized to `T x T` as the global image; an image that is one tile gets no grid (rows = cols = 0).
//!    Without splitting: resize to `T x T` (aspect ratio not kept), rows = cols = 0.
//! 4. rescale / normalize through the 256-entry table and pad as Idefics2 does.
//!
//! Two options leave parity with transformers and are off by default: [`Idefics3ImageProcessorConfig::max_tiles`]
//! and [`Idefics3ImageProcessorConfig::upscale`] = false (a 386-px image otherwise becomes 16 tiles + global on
//! SmolVLM-256M, https://github.com/huggingface/smollm/issues/146).

use std::path::Path;

use serde::Deserialize;

use super::processor::{
    check_processor_type, pack_frames, resample_or, whiten_color_key, ImageBatch, ImageSize,
    NormalizeLut, PerChannel, SettingsFile,
};
use super::resize::{resize, ResampleFilter};
use super::{ImageError, RgbImage};

/// transformers' `MAX_IMAGE_SIZE`: the resized image's long side never exceeds this.
pub const MAX_IMAGE_SIZE: usize = 4096;

/// How one image was cut: `rows x cols` tiles plus the global image, or `0 x 0` for a single frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TileGrid {
    /// Tile rows (0 when the image is a single frame).
    pub rows: usize,
    /// Tile columns (0 when the image is a single frame).
    pub cols: usize,
}

impl TileGrid {
    /// Frames this image contributes to `pixel_values`: the tiles and the global image, or 1.
    pub fn frames(&self) -> usize {
        if self.rows == 0 && self.cols == 0 {
            1
        } else {
            self.rows * self.cols + 1
        }
    }
}

/// The settings of the Idefics3 / SmolVLM image processor, as in `preprocessor_config.json` or the nested
/// `image_processor` of `processor_config.json`; missing keys take the class defaults (4 x 364 / 364, LANCZOS,
/// splitting on).
#[derive(Debug, Clone, PartialEq)]
pub struct Idefics3ImageProcessorConfig {
    pub do_convert_rgb: bool,
    pub do_resize: bool,
    /// `{longest_edge}` (every checkpoint) or a fixed `{height, width}`.
    pub size: ImageSize,
    /// The tile side `T` (`max_image_size.longest_edge`): the vision encoder's image size.
    pub max_image_size: usize,
    pub resample: ResampleFilter,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub do_pad: bool,
    pub do_image_splitting: bool,
    /// Not in transformers (leaves parity when set): at most this many tiles per image. The longest-edge target
    /// is lowered by whole tiles until the grid fits; `Some(0)` means one frame per image.
    pub max_tiles: Option<usize>,
    /// `true` (transformers): step 2 scales every image to `size.longest_edge`, small ones up. `false` (leaves
    /// parity): images whose long side is already at most `size.longest_edge` keep their size in step 2.
    pub upscale: bool,
}

impl Default for Idefics3ImageProcessorConfig {
    fn default() -> Self {
        Self {
            do_convert_rgb: true,
            do_resize: true,
            size: ImageSize {
                shortest_edge: None,
                longest_edge: Some(4 * 364),
                height: None,
                width: None,
            },
            max_image_size: 364,
            resample: ResampleFilter::Lanczos,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            do_pad: true,
            do_image_splitting: true,
            max_tiles: None,
            upscale: true,
        }
    }
}

#[derive(Debug, Deserialize)]
struct MaxImageSize {
    longest_edge: usize,
}

/// The raw JSON form; every key optional, unknown keys (e.g. SmolVLM2's `video_sampling`) ignored.
#[derive(Debug, Deserialize)]
struct RawConfig {
    image_processor_type: Option<String>,
    do_convert_rgb: Option<bool>,
    do_resize: Option<bool>,
    size: Option<ImageSize>,
    max_image_size: Option<MaxImageSize>,
    resample: Option<i64>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<PerChannel>,
    image_std: Option<PerChannel>,
    do_pad: Option<bool>,
    do_image_splitting: Option<bool>,
}

impl Idefics3ImageProcessorConfig {
    /// Parses the image-processor object (a `preprocessor_config.json` document or the nested `image_processor`).
    pub fn from_json_value(value: &serde_json::Value) -> Result<Self, ImageError> {
        let raw: RawConfig =
            serde_json::from_value(value.clone()).map_err(|e| ImageError::Config {
                field: "image_processor",
                message: e.to_string(),
            })?;
        Self::from_raw(raw)
    }

    /// Loads the settings of a model directory with transformers 5.24's precedence
    /// (image_processing_base.py): the `image_processor` object nested in `processor_config.json`, else
    /// `preprocessor_config.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Self, ImageError> {
        SettingsFile::find(dir, SettingsFile::ProcessorNested)?
            .parse(|value| Self::from_json_value(&value))
    }

    fn from_raw(raw: RawConfig) -> Result<Self, ImageError> {
        check_processor_type(
            raw.image_processor_type.as_deref(),
            &["Idefics3ImageProcessor", "SmolVLMImageProcessor"],
            "Idefics3 / SmolVLM",
        )?;
        let d = Self::default();
        let resample = resample_or(raw.resample, d.resample)?;
        let cfg = Self {
            do_convert_rgb: raw.do_convert_rgb.unwrap_or(d.do_convert_rgb),
            do_resize: raw.do_resize.unwrap_or(d.do_resize),
            size: raw.size.unwrap_or(d.size),
            max_image_size: raw
                .max_image_size
                .map(|m| m.longest_edge)
                .unwrap_or(d.max_image_size),
            resample,
            do_rescale: raw.do_rescale.unwrap_or(d.do_rescale),
            rescale_factor: raw.rescale_factor.unwrap_or(d.rescale_factor),
            do_normalize: raw.do_normalize.unwrap_or(d.do_normalize),
            image_mean: PerChannel::or(raw.image_mean.as_ref(), "image_mean", d.image_mean)?,
            image_std: PerChannel::or(raw.image_std.as_ref(), "image_std", d.image_std)?,
            do_pad: raw.do_pad.unwrap_or(d.do_pad),
            do_image_splitting: raw.do_image_splitting.unwrap_or(d.do_image_splitting),
            max_tiles: None,
            upscale: true,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values a model directory could get wrong.
    pub fn validate(&self) -> Result<(), ImageError> {
        let s = self.size;
        let longest_ok = s.longest_edge.is_some_and(|l| l > 0);
        let fixed_ok = matches!((s.height, s.width), (Some(h), Some(w)) if h > 0 && w > 0);
        if self.do_resize && !longest_ok && !fixed_ok {
            return Err(ImageError::Config {
                field: "size",
                message: format!("need a positive longest_edge or height + width, got {s:?}"),
            });
        }
        if self.max_image_size == 0 {
            return Err(ImageError::Config {
                field: "max_image_size",
                message: "longest_edge must be positive".into(),
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

/// `_resize_output_size_rescale_to_max_len` then `_resize_output_size_scale_below_upper_bound`: `(height, width)`
/// with the long side scaled to `longest_edge` (f64 arithmetic, `int()` truncation, odd short side + 1), then
/// capped at [`MAX_IMAGE_SIZE`].
pub fn longest_edge_size(height: usize, width: usize, longest_edge: usize) -> (usize, usize) {
    let aspect = width as f64 / height as f64;
    let (mut h, mut w);
    if width >= height {
        w = longest_edge;
        h = (w as f64 / aspect) as usize;
        if h % 2 != 0 {
            h += 1;
        }
    } else {
        h = longest_edge;
        w = (h as f64 * aspect) as usize;
        if w % 2 != 0 {
            w += 1;
        }
    }
    let (h, w) = (h.max(1), w.max(1));
    let aspect = w as f64 / h as f64;
    let (h, w) = if w >= h && w > MAX_IMAGE_SIZE {
        ((MAX_IMAGE_SIZE as f64 / aspect) as usize, MAX_IMAGE_SIZE)
    } else if h > w && h > MAX_IMAGE_SIZE {
        (MAX_IMAGE_SIZE, (MAX_IMAGE_SIZE as f64 * aspect) as usize)
    } else {
        (h, w)
    };
    (h.max(1), w.max(1))
}

/// `resize_for_vision_encoder`: `(height, width)` rounded up to multiples of `tile` (the long side directly, the
/// short side after `int()` of the aspect ratio), so the aspect ratio can change.
pub fn vision_encoder_size(height: usize, width: usize, tile: usize) -> (usize, usize) {
    let aspect = width as f64 / height as f64;
    let up = |v: f64| (v / tile as f64).ceil() as usize * tile;
    if width >= height {
        let w = up(width as f64);
        let h = up(((w as f64 / aspect) as usize) as f64);
        (h, w)
    } else {
        let h = up(height as f64);
        let w = up(((h as f64 * aspect) as usize) as f64);
        (h, w)
    }
}

/// The tile grid of a `(height, width)` image after [`vision_encoder_size`] (`split_images`).
pub fn grid_for(height: usize, width: usize, tile: usize) -> TileGrid {
    if height > tile || width > tile {
        TileGrid {
            rows: (height - tile) / tile + 1,
            cols: (width - tile) / tile + 1,
        }
    } else {
        TileGrid::default()
    }
}

/// The processor's output: `pixel_values` / `pixel_attention_mask` and each image's tile grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Idefics3ImageBatch {
    /// `[B, M, 3, T, T]` and `[B, M, T, T]`, padded as transformers pads.
    pub images: ImageBatch,
    /// `grids[b][i]`: rows / cols of image `i` of sample `b` (what `return_row_col_info` reports).
    pub grids: Vec<Vec<TileGrid>>,
}

/// The Idefics3 / SmolVLM image processor with fixed settings.
#[derive(Debug, Clone)]
pub struct Idefics3ImageProcessor {
    config: Idefics3ImageProcessorConfig,
    lut: NormalizeLut,
}

impl Idefics3ImageProcessor {
    /// A processor for validated settings.
    pub fn new(config: Idefics3ImageProcessorConfig) -> Result<Self, ImageError> {
        config.validate()?;
        let lut = NormalizeLut::from_settings(
            config.do_rescale.then_some(config.rescale_factor),
            config
                .do_normalize
                .then_some((config.image_mean, config.image_std)),
        );
        Ok(Self { config, lut })
    }

    /// The processor of a model directory (see [`Idefics3ImageProcessorConfig::from_model_dir`]).
    pub fn from_model_dir(dir: &Path) -> Result<Self, ImageError> {
        Self::new(Idefics3ImageProcessorConfig::from_model_dir(dir)?)
    }

    /// The settings.
    pub fn config(&self) -> &Idefics3ImageProcessorConfig {
        &self.config
    }

    /// The rescale/normalize table in use.
    pub fn normalize_lut(&self) -> &NormalizeLut {
        &self.lut
    }

    /// Step 2's target `(height, width)` for an image, honouring the two non-parity options.
    pub fn resize_target(&self, height: usize, width: usize, split: bool) -> (usize, usize) {
        let s = self.config.size;
        let Some(mut longest) = s.longest_edge else {
            return (s.height.unwrap_or(height), s.width.unwrap_or(width));
        };
        let native = height.max(width);
        let keep_native = !self.config.upscale && native <= longest;
        if keep_native {
            longest = native;
        }
        let size_for = |l: usize| {
            if keep_native && l == native {
                (height, width)
            } else {
                longest_edge_size(height, width, l)
            }
        };
        let Some(max_tiles) = self.config.max_tiles.filter(|_| split) else {
            return size_for(longest);
        };
        let tile = self.config.max_image_size;
        loop {
            let (h, w) = size_for(longest);
            let (vh, vw) = vision_encoder_size(h, w, tile);
            let g = grid_for(vh, vw, tile);
            if g.rows * g.cols <= max_tiles || longest <= tile {
                return (h, w);
            }
            longest = longest.saturating_sub(tile).max(tile);
        }
    }

    /// Steps 1-3 for one image: its uint8 frames (row-major tiles then the global image, or the single frame) and
    /// its grid.
    pub fn frames(
        &self,
        image: &RgbImage,
        do_image_splitting: bool,
    ) -> Result<(Vec<RgbImage>, TileGrid), ImageError> {
        let (w, h) = (image.width(), image.height());
        if w == 0 || h == 0 {
            return Err(ImageError::ZeroSize {
                width: w,
                height: h,
            });
        }
        let filter = self.config.resample;
        let tile = self.config.max_image_size;
        let mut img = match image.transparent_color() {
            Some(key) if self.config.do_convert_rgb => whiten_color_key(image, key),
            _ => image.clone(),
        };
        if self.config.do_resize {
            let (th, tw) = self.resize_target(h, w, do_image_splitting);
            img = resize(&img, tw, th, filter)?;
        }
        if !do_image_splitting {
            return Ok((vec![resize(&img, tile, tile, filter)?], TileGrid::default()));
        }
        let (vh, vw) = vision_encoder_size(img.height(), img.width(), tile);
        img = resize(&img, vw, vh, filter)?;
        let grid = grid_for(vh, vw, tile);
        if grid == TileGrid::default() {
            return Ok((vec![img], grid));
        }
        let mut frames = Vec::with_capacity(grid.frames());
        for r in 0..grid.rows {
            for c in 0..grid.cols {
                frames.push(img.crop(c * tile, r * tile, tile, tile));
            }
        }
        frames.push(resize(&img, tile, tile, filter)?);
        Ok((frames, grid))
    }

    /// One video frame as SmolVLM's video processor prepares it: never split, the long side scaled to
    /// `longest_edge` (the video processor's `size`), then squared to `tile` (its `max_image_size`).
    /// transformers runs this step with torchvision; here it is Pillow's LANCZOS like the image path, so video
    /// pixels are not bit-exact.
    pub fn video_frame(
        &self,
        image: &RgbImage,
        longest_edge: usize,
        tile: usize,
    ) -> Result<RgbImage, ImageError> {
        let (w, h) = (image.width(), image.height());
        if w == 0 || h == 0 {
            return Err(ImageError::ZeroSize {
                width: w,
                height: h,
            });
        }
        if longest_edge == 0 || tile == 0 {
            return Err(ImageError::ResizeTarget {
                width: longest_edge,
                height: tile,
            });
        }
        let (th, tw) = longest_edge_size(h, w, longest_edge.min(MAX_IMAGE_SIZE));
        let img = resize(image, tw, th, self.config.resample)?;
        resize(&img, tile, tile, self.config.resample)
    }

    /// The whole pipeline on a batch: `samples[b]` are the images of sample `b` (decoded, upright RGB).
    /// `do_image_splitting` overrides the config for this call when `Some`.
    pub fn preprocess(
        &self,
        samples: &[Vec<RgbImage>],
        do_image_splitting: Option<bool>,
    ) -> Result<Idefics3ImageBatch, ImageError> {
        let split = do_image_splitting.unwrap_or(self.config.do_image_splitting);
        let mut frames = Vec::with_capacity(samples.len());
        let mut grids = Vec::with_capacity(samples.len());
        for sample in samples {
            let mut per_sample = Vec::new();
            let mut sample_grids = Vec::with_capacity(sample.len());
            for image in sample {
                let (f, g) = self.frames(image, split)?;
                per_sample.extend(f);
                sample_grids.push(g);
            }
            frames.push(per_sample);
            grids.push(sample_grids);
        }
        Ok(Idefics3ImageBatch {
            images: self.pack(&frames)?,
            grids,
        })
    }

    /// Step 4 on uint8 frames: rescale/normalize, pad to the batch's frame count (and size), build the mask.
    pub fn pack(&self, frames: &[Vec<RgbImage>]) -> Result<ImageBatch, ImageError> {
        pack_frames(frames, &self.lut, self.config.do_pad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_transformers_examples() {
        // SmolVLM-256M (2048 / 512): 640x480 -> 2048x1536 -> 4x3 tiles; 300x1000 -> 614x2048 -> 1024x2048;
        // 100x100 -> 2048x2048 (checked against transformers 5.24).
        assert_eq!(longest_edge_size(480, 640, 2048), (1536, 2048));
        assert_eq!(vision_encoder_size(1536, 2048, 512), (1536, 2048));
        assert_eq!(grid_for(1536, 2048, 512), TileGrid { rows: 3, cols: 4 });
        assert_eq!(longest_edge_size(1000, 300, 2048), (2048, 614));
        assert_eq!(vision_encoder_size(2048, 614, 512), (2048, 1024));
        assert_eq!(longest_edge_size(100, 100, 2048), (2048, 2048));
        assert_eq!(grid_for(512, 512, 512), TileGrid::default());
        // Odd short side rounds up to even; the 4096 cap keeps the aspect with truncation.
        assert_eq!(longest_edge_size(700, 1000, 128), (90, 128));
        assert_eq!(longest_edge_size(1000, 3000, 8192), (1365, 4096));
    }

    #[test]
    fn tiles_are_row_major_then_global() {
        let cfg = Idefics3ImageProcessorConfig {
            size: ImageSize {
                shortest_edge: None,
                longest_edge: Some(8),
                height: None,
                width: None,
            },
            max_image_size: 4,
            ..Default::default()
        };
        let p = Idefics3ImageProcessor::new(cfg).unwrap();
        let data = (0..4 * 8 * 3).map(|i| i as u8).collect();
        let img = RgbImage::new(8, 4, data).unwrap();
        let (frames, grid) = p.frames(&img, true).unwrap();
        assert_eq!(grid, TileGrid { rows: 1, cols: 2 });
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[1].as_bytes()[..3], img.as_bytes()[12..15]);
        assert_eq!((frames[2].width(), frames[2].height()), (4, 4));
    }

    #[test]
    fn options_cap_tiles_and_keep_small_images() {
        let base = Idefics3ImageProcessorConfig {
            size: ImageSize {
                shortest_edge: None,
                longest_edge: Some(2048),
                height: None,
                width: None,
            },
            max_image_size: 512,
            ..Default::default()
        };
        let parity = Idefics3ImageProcessor::new(base.clone()).unwrap();
        assert_eq!(parity.resize_target(386, 386, true), (2048, 2048));
        let no_up = Idefics3ImageProcessor::new(Idefics3ImageProcessorConfig {
            upscale: false,
            ..base.clone()
        })
        .unwrap();
        assert_eq!(no_up.resize_target(386, 386, true), (386, 386));
        assert_eq!(no_up.resize_target(3000, 1000, true), (2048, 682));
        let capped = Idefics3ImageProcessor::new(Idefics3ImageProcessorConfig {
            max_tiles: Some(4),
            ..base
        })
        .unwrap();
        let (h, w) = capped.resize_target(480, 640, true);
        let (vh, vw) = vision_encoder_size(h, w, 512);
        let g = grid_for(vh, vw, 512);
        assert!(g.rows * g.cols <= 4, "{g:?}");
        assert_eq!((h, w), (768, 1024));
        assert_eq!(capped.resize_target(480, 640, false), (1536, 2048));
    }

    #[test]
    fn config_parsing_and_errors() {
        let c = Idefics3ImageProcessorConfig::from_json_value(&serde_json::json!({})).unwrap();
        assert_eq!(c, Idefics3ImageProcessorConfig::default());
        let c = Idefics3ImageProcessorConfig::from_json_value(&serde_json::json!({
            "image_processor_type": "SmolVLMImageProcessor", "size": {"longest_edge": 2048},
            "max_image_size": {"longest_edge": 512}, "resample": 1,
            "video_sampling": {"fps": 1, "max_frames": 64, "video_size": {"longest_edge": 512}}
        }))
        .unwrap();
        assert_eq!((c.size.longest_edge, c.max_image_size), (Some(2048), 512));
        let e = Idefics3ImageProcessorConfig::from_json_value(
            &serde_json::json!({"image_processor_type": "Idefics2ImageProcessor"}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("Idefics2ImageProcessor"), "{e}");
        let e = Idefics3ImageProcessorConfig::from_json_value(
            &serde_json::json!({"max_image_size": {"longest_edge": 0}}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_image_size"), "{e}");
    }
}
