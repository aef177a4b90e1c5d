//! The checkpoint under test, whatever its family: the model ([`VlmModel`], chosen from `config.json`'s
//! `model_type`), the family's image processor, and what the vision side costs, so that `idefics bench` times
//! Idefics2, Idefics3 and SmolVLM with one code path.
//!
//! | family | image processor | frames of one image | `<image>` tokens a frame | vision FLOPs |
//! |---|---|---|---|---|
//! | Idefics2 | `Idefics2ImageProcessor` | 1, or 4 crops + the image when split | perceiver latents (64) | [`vision_connector_flops`] (valid patches only) |
//! | Idefics3, SmolVLM | `Idefics3ImageProcessor` | 1, or rows x cols tiles + the global image when split | `(image_size / patch)^2 / scale_factor^2` | [`pixel_shuffle_vision_flops`] (every patch of the grid) |

use super::work::{pixel_shuffle_vision_flops, vision_connector_flops};
use crate::config::TextConfig;
use crate::model::{LoadOptions, ModelFamily, VlmModel};
use crate::Result;
use candle_core::Tensor;
use idefics_processor::{
    Idefics2ImageProcessor, Idefics3ImageProcessor, ImageBatch, ImageError, RgbImage,
};
use std::path::Path;

/// The image processor of the checkpoint's family, with the checkpoint's settings.
#[derive(Debug, Clone)]
enum ImageProcessor {
    Idefics2(Idefics2ImageProcessor),
    /// Idefics3 and SmolVLM: longest-edge resize, tiling (`do_image_splitting`) and the global image.
    Idefics3(Idefics3ImageProcessor),
}

/// What the vision tower and the connector do for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionWork {
    /// Images that go through the tower (sub-images or tiles; padding frames are dropped).
    pub frames: usize,
    /// Patches the tower runs for each frame (Idefics2: the valid ones; Idefics3: the whole grid).
    pub patches: Vec<usize>,
    /// Valid patches over all frames (the family's rule: all pixels for Idefics2, any pixel for Idefics3).
    pub valid_patches: usize,
    /// `<image>` tokens the connector produces: what the prompt must hold.
    pub image_tokens: usize,
}

/// A loaded checkpoint of any family and its image processor.
pub struct BenchModel {
    pub model: VlmModel,
    images: ImageProcessor,
}

impl BenchModel {
    /// Loads the model in `dir` and the image processor of its family (from `processor_config.json` or
    /// `preprocessor_config.json`).
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let model = VlmModel::load(dir, opts)?;
        let images = Self::image_processor(model.family(), dir)
            .map_err(|e| crate::Error::Config(format!("image processor: {e}")))?;
        Ok(Self { model, images })
    }

    fn image_processor(
        family: ModelFamily,
        dir: &Path,
    ) -> std::result::Result<ImageProcessor, ImageError> {
        Ok(match family {
            ModelFamily::Idefics2 => {
                ImageProcessor::Idefics2(Idefics2ImageProcessor::from_model_dir(dir)?)
            }
            ModelFamily::Idefics3 | ModelFamily::SmolVlm => {
                ImageProcessor::Idefics3(Idefics3ImageProcessor::from_model_dir(dir)?)
            }
        })
    }

    pub fn family(&self) -> ModelFamily {
        self.model.family()
    }

    /// The text decoder's sizes.
    pub fn text_config(&self) -> &TextConfig {
        self.model.text_config()
    }

    /// One sample's images, processed as transformers' image processor does with `do_image_splitting = split`.
    pub fn preprocess(
        &self,
        images: Vec<RgbImage>,
        split: bool,
    ) -> std::result::Result<ImageBatch, ImageError> {
        let samples = [images];
        match &self.images {
            ImageProcessor::Idefics2(p) => p.preprocess(&samples, Some(split)),
            ImageProcessor::Idefics3(p) => Ok(p.preprocess(&samples, Some(split))?.images),
        }
    }

    /// The vision work of a processed batch, worked out from its shapes without running the model.
    pub fn planned_work(&self, batch: &ImageBatch) -> VisionWork {
        let patch = self.model.vision_config().patch_size;
        let frames: Vec<(usize, usize)> = batch.frame_sizes.iter().flatten().copied().collect();
        let patches: Vec<usize> = match &self.images {
            // Each sub-image runs alone at its own (valid) size.
            ImageProcessor::Idefics2(_) => frames
                .iter()
                .map(|&(h, w)| (h / patch) * (w / patch))
                .collect(),
            // Every frame runs over the batch's padded grid.
            ImageProcessor::Idefics3(_) => {
                let [_, _, _, h, w] = batch.pixel_values_shape;
                vec![(h / patch) * (w / patch); frames.len()]
            }
        };
        VisionWork {
            frames: frames.len(),
            valid_patches: match &self.images {
                ImageProcessor::Idefics2(_) => patches.iter().sum(),
                ImageProcessor::Idefics3(_) => frames
                    .iter()
                    .map(|&(h, w)| h.div_ceil(patch) * w.div_ceil(patch))
                    .sum(),
            },
            patches,
            image_tokens: frames.len() * self.model.image_seq_len(),
        }
    }

    /// Runs the vision tower and the connector (`get_image_features`) and reports what they did.
    pub fn encode_images(
        &self,
        pixel_values: &Tensor,
        pixel_attention_mask: &Tensor,
    ) -> Result<VisionWork> {
        match &self.model {
            VlmModel::Idefics2(m) => {
                let f = m.image_features(pixel_values, Some(pixel_attention_mask))?;
                let patches: Vec<usize> = f.patch_grids.iter().map(|(h, w)| h * w).collect();
                Ok(VisionWork {
                    frames: f.image_index.len(),
                    valid_patches: patches.iter().sum(),
                    patches,
                    image_tokens: f.features.dim(0)? * f.features.dim(1)?,
                })
            }
            VlmModel::Idefics3(m) => {
                let f = m.image_features(pixel_values, Some(pixel_attention_mask), false)?;
                let grid = |g: &Vec<Vec<bool>>| g.len() * g.first().map_or(0, Vec::len);
                Ok(VisionWork {
                    frames: f.image_index.len(),
                    patches: f.patch_valid.iter().map(grid).collect(),
                    valid_patches: f
                        .patch_valid
                        .iter()
                        .flatten()
                        .flatten()
                        .filter(|&&v| v)
                        .count(),
                    image_tokens: f.features.dim(0)? * f.features.dim(1)?,
                })
            }
        }
    }

    /// FLOPs of the vision tower and the connector for frames of `patches[i]` patches.
    pub fn vision_flops(&self, patches: &[usize]) -> f64 {
        match &self.model {
            VlmModel::Idefics2(m) => vision_connector_flops(m.config(), patches),
            VlmModel::Idefics3(m) => pixel_shuffle_vision_flops(m.config(), patches),
        }
    }

    /// `<image>` tokens in `input_ids`.
    pub fn count_image_tokens(&self, input_ids: &[u32]) -> usize {
        let id = self.model.image_token_id();
        input_ids.iter().filter(|&&t| t == id).count()
    }
}
