//! `Idefics3ForConditionalGeneration` / `SmolVLMForConditionalGeneration`: SigLIP tower -> pixel shuffle + linear
//! -> Llama decoder, image features scattered into the `<image>` token positions (transformers 5.24,
//! src/transformers/models/{idefics3,smolvlm}/modeling_*.py).
//!
//! Differences from Idefics2 ([`super::idefics2`]): a patch is valid when ANY of its pixels is; every patch of the
//! padded grid (valid or not) reaches the connector, so the tower runs the padded grid with a key mask instead of
//! each image at its valid size; no perceiver; a Llama decoder (rope scaling, optional biases, no sliding window).

use super::idefics2::{LoadOptions, ModelInputs};
use super::idefics3_config::{Idefics3Config, Idefics3Family};
use super::pixel_shuffle::PixelShuffleConnector;
use super::text::{KvCache, TextModel};
use super::vision::{patch_valid_mask_with, PatchRule, PositionIdRule, VisionTransformer};
use crate::error::{Error, Result};
use crate::nn::{join_path, Kernels, Linear, ParamVisitor, VisitParams};
use crate::quant::{
    build_in_situ, quantize_block, quantize_head, reborrow, QuantReport, QuantSource,
};
use crate::weights::ModelWeights;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use std::path::Path;

/// Images run through the tower together at most this many at a time (bounds the attention scores' memory:
/// a SmolVLM-256M tile has 1024 patches).
const VISION_CHUNK: usize = 4;

/// Image features of one batch, in image order (sample by sample, then slot by slot).
#[derive(Debug, Clone)]
pub struct Idefics3ImageFeatures {
    /// `(sample, slot)` of each image that went through the tower (padding images dropped, except SmolVLM's
    /// kept first image when all are padding).
    pub image_index: Vec<(usize, usize)>,
    /// Patch validity grid of each image (`[gh][gw]`, any-pixel rule).
    pub patch_valid: Vec<Vec<Vec<bool>>>,
    /// Vision tower output `[n_img, gh * gw, Dv]` over the whole padded grid.
    pub vision_hidden_states: Option<Tensor>,
    /// Connector output `[n_img, image_seq_len, Dt]`.
    pub features: Tensor,
}

/// The full Idefics3 / SmolVLM vision-language model.
#[derive(Debug, Clone)]
pub struct Idefics3ForConditionalGeneration {
    config: Idefics3Config,
    vision_model: VisionTransformer,
    connector: PixelShuffleConnector,
    text_model: TextModel,
    lm_head: Linear,
    /// The head is the embedding matrix (`tie_word_embeddings`, unless the checkpoint stores a different head).
    tied: bool,
    kernels: Kernels,
    position_id_rule: PositionIdRule,
    dtype: DType,
    device: Device,
    quant_report: Option<QuantReport>,
}

impl Idefics3ForConditionalGeneration {
    /// Loads `dir/config.json` and the safetensors weights of `dir` (or its saved quantized `model.gguf`).
    /// Fails on missing, unexpected or mis-shaped tensors with one line naming the tensor and file.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let config = Idefics3Config::from_file(&dir.join("config.json"))?;
        let mut weights = ModelWeights::open(dir, opts.dtype, &opts.device, opts.quant)?;
        let vb = weights.vb.clone();
        let quant_vision = weights.quant_vision;
        let mut model = Self::build(&config, vb.clone(), opts, weights.source(), quant_vision)
            .map_err(|e| weights.explain(e))?;
        if config.tie_word_embeddings && weights.contains("lm_head.weight") {
            // transformers ties only when a stored head equals the embeddings; a different stored head is used
            // as is (`PreTrainedModel.tie_weights` warns and leaves it untied).
            let t = &config.text_config;
            let head = weights.read_dense("lm_head.weight", vb.dtype())?;
            let embed = weights.read_dense("model.text_model.embed_tokens.weight", vb.dtype())?;
            if head.dims() != [t.vocab_size, t.hidden_size] {
                return Err(Error::Weights(format!(
                    "lm_head.weight has shape {:?}, the config expects [{}, {}]",
                    head.dims(),
                    t.vocab_size,
                    t.hidden_size
                )));
            }
            let same = head
                .eq(&embed)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .min(0)?
                .to_scalar::<f32>()?
                == 1.0;
            if !same {
                tracing::warn!(
                    "tie_word_embeddings is true but lm_head.weight differs from the embeddings: not tied"
                );
                model.lm_head = weights.separate_head("lm_head.weight", head)?;
                model.tied = false;
            }
        }
        weights.check_all_used(config.model_type.model_type())?;
        model.quant_report = weights.quant_report();
        if let Some(report) = &model.quant_report {
            tracing::info!("quantized: {}", report.summary());
        }
        tracing::info!(dir = %dir.display(), dtype = ?opts.dtype, family = config.model_type.model_type(),
            "loaded checkpoint");
        Ok(model)
    }

    /// Builds the model from any `VarBuilder` (checkpoint, `VarMap` for training, ...), quantized in place as
    /// `opts.quant` asks.
    pub fn new(config: &Idefics3Config, vb: VarBuilder, opts: &LoadOptions) -> Result<Self> {
        let (mut model, report) = build_in_situ(opts.quant, |source, vision| {
            Self::build(config, vb, opts, source, vision)
        })?;
        model.quant_report = report;
        Ok(model)
    }

    fn build(
        config: &Idefics3Config,
        vb: VarBuilder,
        opts: &LoadOptions,
        mut quant: Option<&mut dyn QuantSource>,
        quant_vision: bool,
    ) -> Result<Self> {
        config.validate()?;
        let kernels = Kernels::new(opts.use_fused_kernels);
        let m = vb.pp("model");
        let mut vision_model =
            VisionTransformer::load(&config.vision_config, m.pp("vision_model"), &kernels)?;
        let mut connector = PixelShuffleConnector::load(
            m.pp("connector"),
            config.vision_config.hidden_size,
            config.text_config.hidden_size,
            config.scale_factor,
        )?;
        if let (true, Some(source)) = (quant_vision, reborrow(&mut quant)) {
            quantize_block(&mut vision_model, "model.vision_model", source)?;
            quantize_block(&mut connector, "model.connector", source)?;
        }
        let text_model = TextModel::load_quantized(
            &config.text_config,
            m.pp("text_model"),
            &kernels,
            &config.decoder,
            reborrow(&mut quant),
        )?;
        let t = &config.text_config;
        let lm_head = if config.tie_word_embeddings {
            text_model.tied_head()
        } else {
            let mut head = Linear::load(vb.pp("lm_head"), t.hidden_size, t.vocab_size, false)?;
            if let Some(source) = quant {
                quantize_head(&mut head, "lm_head.weight", source)?;
            }
            head
        };
        Ok(Self {
            config: config.clone(),
            vision_model,
            connector,
            text_model,
            lm_head,
            tied: config.tie_word_embeddings,
            kernels,
            position_id_rule: opts.position_id_rule,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            quant_report: None,
        })
    }

    /// What was quantized at load (`None`: a dense model).
    pub fn quant_report(&self) -> Option<&QuantReport> {
        self.quant_report.as_ref()
    }

    pub fn config(&self) -> &Idefics3Config {
        &self.config
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// Whether the output head is the embedding matrix.
    pub fn is_tied(&self) -> bool {
        self.tied
    }
    pub fn position_id_rule(&self) -> PositionIdRule {
        self.position_id_rule
    }
    pub fn set_position_id_rule(&mut self, rule: PositionIdRule) {
        self.position_id_rule = rule;
    }
    /// Enables / disables candle's fused forward-only kernels for the whole model.
    pub fn set_use_fused_kernels(&self, fused: bool) {
        self.kernels.set_fused(fused)
    }
    pub fn vision_model(&self) -> &VisionTransformer {
        &self.vision_model
    }
    pub fn connector(&self) -> &PixelShuffleConnector {
        &self.connector
    }
    pub fn text_model(&self) -> &TextModel {
        &self.text_model
    }
    pub fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.text_model.num_layers())
    }

    /// Vision tower + connector for `pixel_values [B, M, C, H, W]` (`get_image_features`). All-zero images are
    /// padding and dropped; SmolVLM keeps the first image when every image is padding. `keep_vision` also
    /// returns the tower's output (for debugging / parity checks).
    pub fn image_features(
        &self,
        pixel_values: &Tensor,
        pixel_attention_mask: Option<&Tensor>,
        keep_vision: bool,
    ) -> Result<Idefics3ImageFeatures> {
        let (b, m, c, h, w) = pixel_values.dims5().map_err(|_| {
            Error::Input(format!(
                "pixel_values must be [B, M, C, H, W], got {:?}",
                pixel_values.dims()
            ))
        })?;
        let vc = &self.config.vision_config;
        if c != vc.num_channels {
            return Err(Error::Input(format!(
                "pixel_values has {c} channels, the model expects {}",
                vc.num_channels
            )));
        }
        let p = vc.patch_size;
        let (gh, gw) = (h / p, w / p);
        let pixels = pixel_values
            .to_dtype(self.dtype)?
            .reshape((b * m, c, h, w))?;
        let maxabs: Vec<f32> = pixels
            .flatten_from(1)?
            .abs()?
            .max(D::Minus1)?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        let mut real: Vec<usize> = (0..b * m).filter(|&i| maxabs[i] != 0.0).collect();
        if real.is_empty() && self.config.model_type == Idefics3Family::Smolvlm && b * m > 0 {
            // SmolVLMModel.get_image_features: "If no images, leave one empty image."
            real.push(0);
        }
        let image_index: Vec<(usize, usize)> = real.iter().map(|&i| (i / m, i % m)).collect();
        let n = real.len();
        let seq = self.config.image_seq_len();
        let dt = self.config.text_config.hidden_size;
        if n == 0 {
            return Ok(Idefics3ImageFeatures {
                image_index,
                patch_valid: vec![],
                vision_hidden_states: None,
                features: Tensor::zeros((0, seq, dt), self.dtype, &self.device)?,
            });
        }
        if gh == 0 || gw == 0 {
            return Err(Error::Input(format!(
                "images of {h}x{w} pixels are smaller than one {p}x{p} patch"
            )));
        }
        let real_idx = Tensor::from_vec(
            real.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            n,
            &self.device,
        )?;
        // The conv and the mask's unfold both drop trailing pixels that do not fill a patch.
        let pixels = pixels
            .index_select(&real_idx, 0)?
            .narrow(2, 0, gh * p)?
            .narrow(3, 0, gw * p)?;
        let patch_valid = match pixel_attention_mask {
            Some(mask) => {
                let dims = mask.dims();
                if dims != [b, m, h, w] {
                    return Err(Error::Input(format!(
                        "pixel_attention_mask has shape {dims:?}, expected [{b}, {m}, {h}, {w}] to match pixel_values"
                    )));
                }
                let mask = mask.reshape((b * m, h, w))?.index_select(&real_idx, 0)?;
                patch_valid_mask_with(&mask, p, PatchRule::AnyPixel)?
            }
            None => vec![vec![vec![true; gw]; gh]; n],
        };
        let mut vision_out = Vec::new();
        let mut feats = Vec::new();
        for start in (0..n).step_by(VISION_CHUNK) {
            let k = VISION_CHUNK.min(n - start);
            let chunk = pixels.narrow(0, start, k)?;
            let hidden = self
                .vision_model
                .forward_grid(
                    &chunk,
                    &patch_valid[start..start + k],
                    self.position_id_rule,
                )
                .map_err(|e| match e {
                    candle_core::Error::Msg(msg) => Error::Input(format!(
                        "images {start}..{}: pixel_attention_mask: {msg}",
                        start + k
                    )),
                    other => other.into(),
                })?;
            feats.push(self.connector.forward(&hidden).map_err(|e| {
                Error::Input(format!(
                    "images of {h}x{w} pixels ({gh}x{gw} patches of {p}): {e}"
                ))
            })?);
            if keep_vision {
                vision_out.push(hidden);
            }
        }
        let features = Tensor::cat(&feats, 0)?;
        if features.dim(1)? != seq {
            return Err(Error::Input(format!(
                "images of {h}x{w} pixels give {} tokens each, the prompt format expects {seq} \
                 (image_size {} / patch_size {p}, scale_factor {})",
                features.dim(1)?,
                vc.image_size,
                self.config.scale_factor
            )));
        }
        Ok(Idefics3ImageFeatures {
            image_index,
            patch_valid,
            vision_hidden_states: if keep_vision {
                Some(Tensor::cat(&vision_out, 0)?)
            } else {
                None
            },
            features,
        })
    }

    /// Final-normed hidden states `[B, L, Dt]` (before the lm head).
    pub fn forward_hidden(
        &self,
        inputs: &ModelInputs,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let step = super::step::StepInputs::check(
            inputs,
            cache.as_deref(),
            self.config.text_config.vocab_size,
        )?;
        let ids_u32 = step.ids.to_dtype(DType::U32)?;
        let mut embeds = match &inputs.inputs_embeds {
            Some(given) => {
                let (b, l, d) = (
                    step.batch,
                    step.ids.dim(1)?,
                    self.config.text_config.hidden_size,
                );
                if given.dims() != [b, l, d] {
                    return Err(Error::Input(format!(
                        "inputs_embeds has shape {:?}, expected [{b}, {l}, {d}]",
                        given.dims()
                    )));
                }
                given.to_dtype(self.dtype)?
            }
            None => self.text_model.embed(&ids_u32)?,
        };
        if let Some(pv) = &inputs.pixel_values {
            if pv.dim(0).ok() != Some(step.batch) {
                return Err(Error::Input(format!(
                    "pixel_values has batch size {:?}, input_ids has {}",
                    pv.dims().first(),
                    step.batch
                )));
            }
            let feats = self.image_features(pv, inputs.pixel_attention_mask.as_ref(), false)?;
            embeds = super::step::scatter_image_rows(
                &embeds,
                &step.ids_host,
                &feats.features,
                self.config.image_token_id,
                self.config.image_seq_len(),
            )?;
        }
        let ctx = self.text_model.step_context(
            &step.new_mask,
            inputs.position_ids.as_ref(),
            &step.past,
            self.dtype,
            &self.device,
        )?;
        match cache {
            Some(cache) => {
                let hidden = self.text_model.forward_embeds(&embeds, &ctx, Some(cache))?;
                TextModel::commit_mask(cache, &step.new_mask);
                Ok(hidden)
            }
            None => Ok(self.text_model.forward_embeds(&embeds, &ctx, None)?),
        }
    }
}

impl VisitParams for Idefics3ForConditionalGeneration {
    /// Checkpoint names: `model.vision_model.*`, `model.connector.modality_projection.proj`, `model.text_model.*`,
    /// `lm_head`. A tied head is visited as the linear `lm_head` whose weight is the (possibly just replaced)
    /// embedding matrix.
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor) -> candle_core::Result<()> {
        let m = join_path(prefix, "model");
        self.vision_model
            .visit_params(&join_path(&m, "vision_model"), v)?;
        self.connector
            .visit_params(&join_path(&m, "connector"), v)?;
        self.text_model
            .visit_params(&join_path(&m, "text_model"), v)?;
        if self.tied {
            self.lm_head = self.text_model.tied_head();
        }
        v.linear(&join_path(prefix, "lm_head"), &mut self.lm_head)
    }
}
