//! `Idefics2ForConditionalGeneration`: vision tower + connector + Mistral, with image features scattered into
//! the `<image>` token positions (transformers' `Idefics2Model.forward`, `inputs_merger`).

use super::connector::Connector;
use super::text::{KvCache, TextModel};
use super::vision::{patch_valid_mask, PositionIdRule, VisionTransformer};
use crate::config::Idefics2Config;
use crate::error::{Error, Result};
use crate::nn::{join_path, Kernels, Linear, ParamVisitor, VisitParams};
use crate::quant::{
    build_in_situ, quantize_block, quantize_head, reborrow, QuantConfig, QuantReport, QuantSource,
};
use crate::weights::ModelWeights;
use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::VarBuilder;
use std::path::Path;

/// How to load a checkpoint.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Activation / weight dtype; stored weights of any float dtype are converted. f32 for parity.
    pub dtype: DType,
    /// Vision position-id rule (which transformers version to match).
    pub position_id_rule: PositionIdRule,
    /// Allow candle's fused forward-only kernels (never used where a gradient is needed).
    pub use_fused_kernels: bool,
    /// Quantize the text decoder (and optionally the vision side) while loading; CPU only.
    pub quant: Option<QuantConfig>,
    /// How to store the dense f32 linear weights for CPU inference ([`CpuWeightLayout`]). The checkpoint's order by
    /// default: training and export want it; the inference commands choose. Ignored off the CPU and for other
    /// dtypes.
    pub cpu_weight_layout: CpuWeightLayout,
}

/// How inference stores the dense f32 linear weights in memory on the CPU. The values are the same either way;
/// only speed differs (`docs/benchmarks.md`, "Weights stored transposed" and "Weights in column panels").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuWeightLayout {
    /// As the checkpoint stores them (`[out, in]` row-major): what training and export need.
    #[default]
    Checkpoint,
    /// Every linear layer transposed (`W^T` in memory, [`crate::nn::Linear::use_transposed_layout`]): the
    /// fastest prefill and image encoding, slower decoding (0.63-0.92x per product).
    Transposed,
    /// The vision tower and connector transposed, the text decoder and an untied head in column panels
    /// ([`crate::nn::Linear::use_panel_layout`]): the transposed layout's prefill and image encoding with the
    /// fastest decoding. What the inference commands load.
    Panels,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            position_id_rule: PositionIdRule::Hf5,
            use_fused_kernels: true,
            quant: None,
            cpu_weight_layout: CpuWeightLayout::Checkpoint,
        }
    }
}

/// Inputs of one forward call, as the processor produces them (transformers' names and layouts).
#[derive(Debug, Clone, Default)]
pub struct ModelInputs {
    /// `[B, L]` token ids (u32 or i64) of the NEW tokens.
    pub input_ids: Option<Tensor>,
    /// `[B, L]`, 1 = real token, 0 = padding, for the NEW tokens only (the cache remembers earlier ones).
    /// `None` = all real.
    pub attention_mask: Option<Tensor>,
    /// `[B, L]` explicit rotary positions; `None` = `generate()`'s rule (count of real tokens so far - 1).
    pub position_ids: Option<Tensor>,
    /// `[B, M, C, H, W]` f32; all-zero images are padding and are dropped.
    pub pixel_values: Option<Tensor>,
    /// `[B, M, H, W]`, nonzero = valid pixel; `None` = every pixel valid.
    pub pixel_attention_mask: Option<Tensor>,
    /// `[B, L, Dt]` token embeddings to use instead of looking up `input_ids` (transformers'
    /// `inputs_embeds`); `input_ids` still say where the `<image>` rows go. Training passes NEFTune's noisy
    /// embeddings here.
    pub inputs_embeds: Option<Tensor>,
}

/// Image features of one batch, in image order (sample by sample, then slot by slot; padding images dropped).
#[derive(Debug, Clone)]
pub struct ImageFeatures {
    /// `(sample, slot)` of each real image.
    pub image_index: Vec<(usize, usize)>,
    /// Valid patch grid `(nb_h, nb_w)` of each image.
    pub patch_grids: Vec<(usize, usize)>,
    /// Vision tower output per image, valid patches only, `[nb_h * nb_w, Dv]` row-major.
    pub vision_hidden_states: Vec<Tensor>,
    /// Connector output `[n_img, n_latents, Dt]`.
    pub features: Tensor,
}

/// The full vision-language model.
#[derive(Debug, Clone)]
pub struct Idefics2ForConditionalGeneration {
    config: Idefics2Config,
    vision_model: VisionTransformer,
    connector: Connector,
    text_model: TextModel,
    lm_head: Linear,
    kernels: Kernels,
    position_id_rule: PositionIdRule,
    dtype: DType,
    device: Device,
    quant_report: Option<QuantReport>,
}

impl Idefics2ForConditionalGeneration {
    /// Loads `dir/config.json` and the safetensors weights of `dir` (or its saved quantized `model.gguf`).
    /// Fails on missing, unexpected or mis-shaped tensors with one line naming the tensor and file.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let config = Idefics2Config::from_file(&dir.join("config.json"))?;
        let mut weights = ModelWeights::open(dir, opts.dtype, &opts.device, opts.quant)?;
        let vb = weights.vb.clone();
        let quant_vision = weights.quant_vision;
        let mut model = Self::build(&config, vb, opts, weights.source(), quant_vision)
            .map_err(|e| weights.explain(e))?;
        if config.tie_word_embeddings {
            // The tied head may also be stored; it is the embedding matrix either way.
            weights.mark_used("lm_head.weight");
        }
        weights.check_all_used("Idefics2")?;
        model.quant_report = weights.quant_report();
        if let Some(report) = &model.quant_report {
            tracing::info!("quantized: {}", report.summary());
        }
        tracing::info!(dir = %dir.display(), dtype = ?opts.dtype, "loaded Idefics2 checkpoint");
        Ok(model)
    }

    /// Builds the model from any `VarBuilder` (checkpoint, `VarMap` for training, ...), quantized in place as
    /// `opts.quant` asks.
    pub fn new(config: &Idefics2Config, vb: VarBuilder, opts: &LoadOptions) -> Result<Self> {
        let (mut model, report) = build_in_situ(opts.quant, |source, vision| {
            Self::build(config, vb, opts, source, vision)
        })?;
        model.quant_report = report;
        Ok(model)
    }

    fn build(
        config: &Idefics2Config,
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
        let mut connector = Connector::load(config, m.pp("connector"), &kernels)?;
        if let (true, Some(source)) = (quant_vision, reborrow(&mut quant)) {
            quantize_block(&mut vision_model, "model.vision_model", source)?;
            quantize_block(&mut connector, "model.connector", source)?;
        }
        let text_model = TextModel::load_quantized(
            &config.text_config,
            m.pp("text_model"),
            &kernels,
            &Default::default(),
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

    pub fn config(&self) -> &Idefics2Config {
        &self.config
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
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
    pub fn connector(&self) -> &Connector {
        &self.connector
    }
    /// The output head (hidden states -> vocabulary logits).
    pub fn lm_head(&self) -> &Linear {
        &self.lm_head
    }
    pub fn text_model(&self) -> &TextModel {
        &self.text_model
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.text_model.num_layers())
    }

    /// Vision tower + connector for `pixel_values [B, M, C, H, W]` (transformers' `Idefics2Model.get_image_features`). Padding images (all 0.0)
    /// are dropped; each remaining image runs at its valid patch size.
    pub fn image_features(
        &self,
        pixel_values: &Tensor,
        pixel_attention_mask: Option<&Tensor>,
    ) -> Result<ImageFeatures> {
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
        let pixels = pixel_values
            .to_dtype(self.dtype)?
            .reshape((b * m, c, h, w))?;
        let maxabs: Vec<f32> = pixels
            .flatten_from(1)?
            .abs()?
            .max(D::Minus1)?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        let real: Vec<usize> = (0..b * m).filter(|&i| maxabs[i] != 0.0).collect();
        let image_index: Vec<(usize, usize)> = real.iter().map(|&i| (i / m, i % m)).collect();
        let n = real.len();
        if n == 0 {
            return Ok(ImageFeatures {
                image_index,
                patch_grids: vec![],
                vision_hidden_states: vec![],
                features: Tensor::zeros(
                    (
                        0,
                        self.config.image_seq_len(),
                        self.config.text_config.hidden_size,
                    ),
                    self.dtype,
                    &self.device,
                )?,
            });
        }
        let real_idx = Tensor::from_vec(
            real.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            n,
            &self.device,
        )?;
        let pixels = pixels.index_select(&real_idx, 0)?;
        let patch_valid = match pixel_attention_mask {
            Some(mask) => {
                let dims = mask.dims();
                if dims != [b, m, h, w] {
                    return Err(Error::Input(format!(
                        "pixel_attention_mask has shape {dims:?}, expected [{b}, {m}, {h}, {w}] to match pixel_values"
                    )));
                }
                let mask = mask.reshape((b * m, h, w))?.index_select(&real_idx, 0)?;
                patch_valid_mask(&mask, p)?
            }
            None => vec![vec![vec![true; w / p]; h / p]; n],
        };
        // Valid patches must form a top-left rectangle (transformers assumes it when assigning position ids).
        let mut grids = Vec::with_capacity(n);
        for (k, grid) in patch_valid.iter().enumerate() {
            let nb_h = grid
                .iter()
                .take_while(|row| row.first().copied().unwrap_or(false))
                .count();
            let nb_w = grid
                .first()
                .map_or(0, |row| row.iter().take_while(|&&v| v).count());
            let total: usize = grid
                .iter()
                .map(|row| row.iter().filter(|&&v| v).count())
                .sum();
            let (sample, slot) = image_index[k];
            if nb_h == 0 || nb_w == 0 {
                return Err(Error::Input(format!(
                    "image {slot} of sample {sample} has no valid {p}x{p} patch (image or pixel mask too small)"
                )));
            }
            if total != nb_h * nb_w {
                return Err(Error::Input(format!(
                    "pixel_attention_mask of image {slot} of sample {sample} is not a top-left rectangle"
                )));
            }
            grids.push((nb_h, nb_w));
        }
        // Group images of equal valid size into one batch each.
        let mut vision_out: Vec<Option<Tensor>> = vec![None; n];
        let mut feats_out: Vec<Option<Tensor>> = vec![None; n];
        let mut done = vec![false; n];
        for k in 0..n {
            if done[k] {
                continue;
            }
            let members: Vec<usize> = (k..n)
                .filter(|&j| !done[j] && grids[j] == grids[k])
                .collect();
            let (nb_h, nb_w) = grids[k];
            let idx = Tensor::from_vec(
                members.iter().map(|&j| j as u32).collect::<Vec<_>>(),
                members.len(),
                &self.device,
            )?;
            let group = pixels
                .index_select(&idx, 0)?
                .narrow(2, 0, nb_h * p)?
                .narrow(3, 0, nb_w * p)?;
            let hidden = self.vision_model.forward(&group, self.position_id_rule)?;
            let feats = self.connector.forward(&hidden, None)?;
            for (g, &j) in members.iter().enumerate() {
                vision_out[j] = Some(hidden.i(g)?);
                feats_out[j] = Some(feats.i(g)?);
                done[j] = true;
            }
        }
        let vision_hidden_states: Vec<Tensor> = vision_out.into_iter().flatten().collect();
        let feats: Vec<Tensor> = feats_out.into_iter().flatten().collect();
        Ok(ImageFeatures {
            image_index,
            patch_grids: grids,
            vision_hidden_states,
            features: Tensor::stack(&feats, 0)?,
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
        let (b, l) = (step.batch, step.ids.dim(1)?);
        let ids_u32 = step.ids.to_dtype(DType::U32)?;
        let mut embeds = match &inputs.inputs_embeds {
            Some(given) => {
                let d = self.config.text_config.hidden_size;
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
            if pv.dim(0).ok() != Some(b) {
                return Err(Error::Input(format!(
                    "pixel_values has batch size {:?}, input_ids has {b}",
                    pv.dims().first()
                )));
            }
            let feats = self.image_features(pv, inputs.pixel_attention_mask.as_ref())?;
            embeds = self.merge_image_features(&embeds, &step.ids_host, &feats.features)?;
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

    /// Replaces the embeddings of `<image>` tokens, row-major over the batch, with the feature rows in order
    /// (transformers' `masked_scatter`). Done as one `index_select` over `[text rows; feature rows]` so that it is
    /// differentiable for both.
    pub fn merge_image_features(
        &self,
        embeds: &Tensor,
        ids: &[Vec<i64>],
        features: &Tensor,
    ) -> Result<Tensor> {
        super::step::scatter_image_rows(
            embeds,
            ids,
            features,
            self.config.image_token_id,
            self.config.image_seq_len(),
        )
    }
}

impl VisitParams for Idefics2ForConditionalGeneration {
    /// Checkpoint names: `model.vision_model.*`, `model.connector.*`, `model.text_model.*`, `lm_head`. A tied
    /// head is visited as the linear `lm_head` whose weight is the (possibly just replaced) embedding matrix.
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor) -> candle_core::Result<()> {
        let m = join_path(prefix, "model");
        self.vision_model
            .visit_params(&join_path(&m, "vision_model"), v)?;
        self.connector
            .visit_params(&join_path(&m, "connector"), v)?;
        self.text_model
            .visit_params(&join_path(&m, "text_model"), v)?;
        if self.config.tie_word_embeddings {
            self.lm_head = self.text_model.tied_head();
        }
        v.linear(&join_path(prefix, "lm_head"), &mut self.lm_head)
    }
}
